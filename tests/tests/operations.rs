// Test-only code: helpers outside #[test] functions may unwrap and panic too.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

//! What an operator gets from the template: every alarm notifies the
//! operator's topic, and the dashboard is valid JSON that charts the
//! metrics the functions publish.

use serde_yaml_ng::Value;

fn template() -> Value {
    serde_yaml_ng::from_str(include_str!("../../template.yaml")).unwrap()
}

fn tagged<'a>(v: &'a Value, tag: &str) -> Option<&'a Value> {
    match v {
        Value::Tagged(t) if t.tag == tag => Some(&t.value),
        _ => None,
    }
}

#[test]
fn every_alarm_notifies_the_operators_topic() {
    let template = template();
    let alarms: Vec<(&Value, &Value)> = template["Resources"]
        .as_mapping()
        .unwrap()
        .iter()
        .filter(|(_, r)| r["Type"].as_str() == Some("AWS::CloudWatch::Alarm"))
        .collect();
    assert!(alarms.len() >= 7, "DLQs, saga, API errors and latency, budget burn");
    for (name, alarm) in alarms {
        let actions = alarm["Properties"]["AlarmActions"].as_sequence().unwrap_or_else(|| panic!("{name:?} notifies nobody"));
        assert!(actions.iter().any(|a| tagged(a, "Ref").and_then(Value::as_str) == Some("AlarmTopic")), "{name:?}");
    }
    assert_eq!(template["Resources"]["AlarmEmailSubscription"]["Properties"]["Protocol"].as_str(), Some("email"));
}

#[test]
fn the_dashboard_is_json_and_charts_the_published_metrics() {
    let template = template();
    let body = tagged(&template["Resources"]["Dashboard"]["Properties"]["DashboardBody"], "Sub").and_then(Value::as_str).unwrap();
    let body = body.replace("${AWS::Region}", "us-east-1").replace("${Api}", "abc").replace(".QueueName}", "").replace("${", "");
    let dashboard: serde_json::Value = serde_json::from_str(&body).expect("the dashboard body is JSON");
    let text = dashboard.to_string();
    for metric in ["keel_http_request_duration_seconds", "keel_router_decisions_total", "keel_cache_requests_total", "keel_answers_total",
        "keel_answer_groundedness", "keel_tool_arguments_total", "keel_cost_micro_usd_total", "keel_action_cost_micro_usd_total", "keel_actions_total", "keel_budget_used_ratio", "ApproximateNumberOfMessagesVisible"] {
        assert!(text.contains(metric), "no chart of {metric}");
    }
    // A dashboard's SEARCH must name the namespace and the exact dimension set the EMF documents carry.
    for search in text.split("SEARCH(").skip(1) {
        assert!(search.starts_with("'{Keel,function"), "{search}");
    }
}
