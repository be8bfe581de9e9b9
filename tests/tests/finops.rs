// Test-only code: helpers outside #[test] functions may unwrap and panic too.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

//! Cost per successful action in `GET /v1/usage`, against a value computed
//! by hand from what the log says each request cost and what the tool says
//! each execution costs.

use keel_tests::gateway::{chat, gateway};
use keel_tests::stub::StubModels;
use keel_tests::{tenant, wait_for_action};
use serde_json::{json, Value};
use std::time::Duration;

const EXECUTION_COST: f64 = 0.25;

#[tokio::test]
async fn cost_per_successful_action_is_model_and_action_cost_over_actions_kept() {
    let stub = StubModels::start().await;
    let (_dir, stack, c) = gateway(&stub.catalog(&[("small", "t2", 1.0, 5_000)])).await;
    let t = tenant(&c, "costly", json!({"autonomy": "unattended"})).await;
    let connector = keel_emulator::demo::start_connector().await.unwrap();
    let tool = json!({"description": "refund", "risk": "low", "input_schema": {}, "cost_usd": EXECUTION_COST,
        "connector": {"url": format!("{}/refunds", connector.url)}, "compensation": {"url": format!("{}/refunds/cancel", connector.url)}});
    let (s, b) = c.call("PUT", "/v1/tools/refund", &t.admin, Some(tool)).await.unwrap();
    assert_eq!(s, 200, "{b}");

    for (prompt, workflow) in [("Draft a reply to the refund request", Some("support")), ("Summarise the ticket", Some("support")), ("Write a haiku", None)] {
        let mut body = json!({"model": "auto", "messages": [{"role": "user", "content": prompt}]});
        if let Some(w) = workflow {
            body["workflow"] = json!(w);
        }
        let (s, b) = chat(&c, &t.member, body).await;
        assert_eq!(s, 200, "{b}");
    }
    let mut support = Vec::new();
    for (i, workflow) in [Some("support"), Some("support"), Some("support"), None].into_iter().enumerate() {
        let mut proposal = json!({"tool": "refund", "args": {"n": i}, "idempotency_key": format!("f-{i}")});
        if let Some(w) = workflow {
            proposal["workflow"] = json!(w);
        }
        let (s, a) = c.call("POST", "/v1/actions", &t.member, Some(proposal)).await.unwrap();
        assert!((200..300).contains(&s), "{a}");
        let id = a["action_id"].as_str().unwrap().to_string();
        wait_for_action(&c, &t.member, &id, "executed").await;
        if workflow.is_some() {
            support.push(id);
        }
    }
    let (s, r) = c.call("POST", &format!("/v1/actions/{}/undo", support[0]), &t.member, None).await.unwrap();
    assert_eq!(s, 200, "{r}");
    wait_for_action(&c, &t.member, &support[0], "undone").await;
    let (s, _) = c.call("POST", "/v1/actions", &t.member, Some(json!({"tool": "refund", "args": {}, "idempotency_key": "f-x", "workflow": "no spaces"}))).await.unwrap();
    assert_eq!(s, 400, "a workflow name must fit a counter");
    assert!(stack.settle(Duration::from_secs(10)).await);

    // By hand: what the log says each chat cost, by workflow.
    let (_, export) = c.call("GET", "/v1/audit/export", &t.admin, None).await.unwrap();
    let chats: Vec<Value> = export.as_str().unwrap().lines().map(|l| serde_json::from_str::<Value>(l).unwrap()["event"].clone()).filter(|e| e["kind"] == "chat").collect();
    assert_eq!(chats.len(), 3);
    let cost = |e: &Value| e["usage"]["cost_micro_usd"].as_i64().unwrap() as f64 / 1e6;
    let all_chats: f64 = chats.iter().map(cost).sum();
    let support_chats: f64 = chats.iter().filter(|e| e["input"]["workflow"] == "support").map(cost).sum();
    assert!(all_chats > support_chats && support_chats > 0.0, "the stub's prices make each call cost something");
    let tenant_expected = (all_chats + 4.0 * EXECUTION_COST) / 3.0; // 4 executed, 1 undone
    let support_expected = (support_chats + 3.0 * EXECUTION_COST) / 2.0; // 3 executed, 1 undone

    let (s, usage) = c.call("GET", "/v1/usage", &t.admin, None).await.unwrap();
    assert_eq!(s, 200, "{usage}");
    let report = &usage["report"];
    let close = |v: &Value, want: f64| (v.as_f64().unwrap() - want).abs() < 1e-6;
    assert!(close(&report["totals"]["cost_per_successful_action_usd"], tenant_expected), "{report}");
    assert!(close(&report["workflows"]["support"]["cost_per_successful_action_usd"], support_expected), "{report}");
    assert_eq!(report["totals"]["actions"]["executed"], 4);
    assert_eq!(report["totals"]["actions"]["undone"], 1);
    assert_eq!(report["totals"]["reversal_rate"], 0.25);
    assert_eq!(report["totals"]["router_mix"]["t2"], 3);
    assert!(close(&report["totals"]["cost_by_model_usd"]["small"], all_chats));
    assert_eq!(report["totals"]["requests"], 3);
    let today = chrono::Utc::now().format("%Y-%m-%d").to_string();
    assert_eq!(report["daily"].as_array().unwrap().last().unwrap()["day"], today);

    let (s, _) = c.call("GET", "/v1/usage?from=2026-12-09&to=2026-12-01", &t.admin, None).await.unwrap();
    assert_eq!(s, 400);
    let (_, before) = c.call("GET", "/v1/usage?from=2000-01-01&to=2000-01-31", &t.admin, None).await.unwrap();
    assert_eq!(before["report"]["totals"]["cost_per_successful_action_usd"], Value::Null, "nothing was executed then");
    stack.stop().await;
}
