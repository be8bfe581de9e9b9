// Test-only code: helpers outside #[test] functions may unwrap and panic too.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

//! The request path on AWS, simulated (`keel_tests::aws_path`): the real
//! handlers against moto with a round trip added to every AWS call. Holds
//! the critical path to its round trips: a warm key's authorizer makes no
//! call, a chat completion waits twice before its model call (the count
//! beside the cache read, then the reservation) and never after it, and an
//! ask waits at most twice. A refused request holds no budget.

use keel_tests::aws_path::{authorizer_event, http_event, member, member_of, AwsPath, KEY};
use keel_tests::stub::Behavior;
use std::sync::Arc;
use serde_json::json;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_request_path_waits_on_at_most_two_round_trips_before_the_model_and_none_after() {
    let Some(moto) = keel_tests::aws::moto() else { return };
    let path = AwsPath::start(&moto, Duration::from_millis(20), Duration::ZERO).await;

    path.measure(&path.auth, authorizer_event(KEY)).await;
    let warm = path.measure(&path.auth, authorizer_event(KEY)).await;
    assert_eq!(warm.calls.len(), 0, "a warm key's authorizer reads nothing: {:?}", warm.operations());

    let chat = |prompt: &str| {
        let body = json!({"model": "auto", "temperature": 0, "messages": [{"role": "user", "content": prompt}]});
        http_event("POST", "/v1/chat/completions", &body, &member())
    };
    // The first request of a container also reads the tenant record.
    path.measure(&path.routing, chat("Warm up.")).await;
    let miss = path.measure(&path.routing, chat("Summarize our refund policy.")).await;
    assert_eq!(miss.status, 200);
    assert!(miss.model.is_some(), "the stub model answered");
    assert_eq!(miss.before_model, 2, "count and cache read at once, then the reservation: {:?}", miss.operations());
    assert_eq!(miss.after_model, 0, "the final writes are handed off: {:?}", miss.operations());
    let hit = path.measure(&path.routing, chat("Summarize our refund policy.")).await;
    assert_eq!((hit.status, hit.model.is_none(), hit.before_model), (200, true, 1), "{:?}", hit.operations());
    let hot = json!({"model": "auto", "temperature": 0.7, "messages": [{"role": "user", "content": "Write a haiku."}]});
    let uncached = path.measure(&path.routing, http_event("POST", "/v1/chat/completions", &hot, &member())).await;
    assert_eq!((uncached.status, uncached.before_model, uncached.after_model), (200, 2, 0), "{:?}", uncached.operations());

    let ask = |question: &str| http_event("POST", "/v1/ask", &json!({"question": question}), &member());
    // The first search of a container loads the index.
    path.measure(&path.routing, ask("When do orders ship?")).await;
    let ask = path.measure(&path.routing, ask("Are refunds paid to my card quickly?")).await;
    assert_eq!(ask.status, 200);
    assert!(ask.model.is_some(), "a hosted answer: {:?} {}", ask.operations(), ask.body);
    assert!(ask.before_model <= 2, "search beside the count, then cache read and reservation: {:?}", ask.operations());
    assert_eq!(ask.after_model, 0, "{:?}", ask.operations());
    // Every write still happens, after the response: usage is settled and recorded.
    assert!(miss.calls.iter().any(|c| c.what.contains("SendMessage")), "the decision event was sent: {:?}", miss.operations());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_on_aws_never_pass_a_budget_or_a_rate_limit() {
    let Some(moto) = keel_tests::aws::moto() else { return };
    let path = Arc::new(AwsPath::start(&moto, Duration::from_millis(5), Duration::from_millis(2)).await);
    // Each call reserves its worst case (the prompt and 500 output tokens, about 255
    // micro-dollars) and the stub answers with all 500, so settling gives nothing back:
    // a budget of 800 pays for three, however the calls interleave.
    path.stub.set("small", Behavior::Answer("word ".repeat(400)));
    path.create_tenant(json!({"id": "tight", "name": "Tight", "rate_limit_per_minute": 1_000_000,
        "routing": {"escalate_below": 1.0, "allow_downgrade": false, "cache_ttl_secs": 0}, "budgets": {"monthly_usd": 0.0008}})).await;
    path.create_tenant(json!({"id": "limited", "name": "Limited", "rate_limit_per_minute": 5, "routing": {"escalate_below": 1.0}})).await;
    keel_tests::inside_one_minute(Duration::from_secs(20)).await;
    let chat = |tenant: &str, i: usize| {
        let body = json!({"model": "auto", "max_tokens": 500, "messages": [{"role": "user", "content": format!("Say {i}.")}]});
        http_event("POST", "/v1/chat/completions", &body, &member_of(tenant))
    };
    let mut paid = 0.0;
    for tenant in ["tight", "limited"] {
        let calls: Vec<_> = (0..12)
            .map(|i| {
                let (path, event) = (path.clone(), chat(tenant, i));
                tokio::spawn(async move { path.measure(&path.routing, event).await })
            })
            .collect();
        let mut statuses = Vec::new();
        for call in calls {
            let sample = call.await.unwrap();
            if tenant == "tight" && sample.status == 200 {
                paid += sample.body["keel"]["cost"].as_f64().unwrap();
            }
            statuses.push(sample.status);
        }
        let ok = statuses.iter().filter(|s| **s == 200).count();
        assert_eq!(ok + statuses.iter().filter(|s| **s == 429).count(), 12, "{tenant}: {statuses:?}");
        match tenant {
            "tight" => assert_eq!(ok, 3, "a budget for three calls paid for {ok}"),
            _ => assert_eq!(ok, 5, "a limit of five a minute let {ok} through"),
        }
    }
    keel_core::after::settled().await;
    // The spend counter holds what the answered calls cost, never more than the budget.
    let tight = keel_core::TenantId::parse("tight").unwrap();
    let month = keel_core::time::current_month();
    let spent = path.table.get(&tight.pk(), &keel_core::keys::spend(&month, None)).await.unwrap().map_or(0, |i| i.counter);
    assert!(spent <= 800, "spent {spent} micro-dollars of 800");
    assert!((spent as f64 - paid * 1e6).abs() <= 3.0, "the counter holds what the answered calls cost: {spent} vs {paid}");
}

/// API Gateway may keep an authorizer's answer past the deletion of the
/// tenant it let in. The answer names the tenant's incarnation, and the
/// function refuses one its tenant no longer has, so a cached answer for a
/// deleted tenant never reaches a tenant created again under its id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_authorizer_answer_for_another_incarnation_of_the_tenant_is_refused() {
    let Some(moto) = keel_tests::aws::moto() else { return };
    let path = AwsPath::start(&moto, Duration::ZERO, Duration::ZERO).await;
    let allowed = keel_tests::aws_path::answer(path.auth.invoke(authorizer_event(KEY)).await.unwrap()).await;
    let context = allowed["context"].clone();
    assert!(context["incarnation"].as_str().is_some_and(|i| i.starts_with("inc_")), "{allowed}");
    let search = |context: &serde_json::Value| http_event("POST", "/v1/search", &json!({"query": "refunds"}), context);
    let served = path.measure(&path.retrieval, search(&context)).await;
    assert_eq!(served.status, 200, "{}", served.body);
    let mut stale = context.clone();
    stale["incarnation"] = json!("inc_of_a_deleted_tenant");
    let refused = path.measure(&path.retrieval, search(&stale)).await;
    assert_eq!(refused.status, 401, "{}", refused.body);
}

/// A request refused by its tenant's rate limit holds no budget: the
/// reservation waits for the count, so a refused chat makes the count's
/// write alone (no reservation to give back after the response).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chat_the_rate_limit_refuses_holds_no_budget() {
    let Some(moto) = keel_tests::aws::moto() else { return };
    let path = AwsPath::start(&moto, Duration::ZERO, Duration::ZERO).await;
    path.create_tenant(json!({"id": "once", "name": "Once", "rate_limit_per_minute": 1, "routing": {"escalate_below": 1.0, "cache_ttl_secs": 0},
        "budgets": {"monthly_usd": 100.0}})).await;
    keel_tests::inside_one_minute(Duration::from_secs(20)).await;
    let chat = || http_event("POST", "/v1/chat/completions", &json!({"model": "auto", "messages": [{"role": "user", "content": "Hi."}]}), &member_of("once"));
    let admitted = path.measure(&path.routing, chat()).await;
    assert_eq!(admitted.status, 200, "{}", admitted.body);
    let refused = path.measure(&path.routing, chat()).await;
    assert_eq!(refused.status, 429, "{}", refused.body);
    let items: Vec<&str> = refused.calls.iter().filter_map(|c| c.item.as_deref()).collect();
    assert!(items.iter().any(|i| i.starts_with("RATE#")), "the count: {items:?}");
    assert!(!items.iter().any(|i| i.starts_with("SPEND#")), "no budget held or given back: {items:?}");
    assert!(items.iter().filter(|i| i.starts_with("INFLIGHT#")).count() == 2, "the slot taken beside the count and given back: {items:?}");
    assert!(refused.model.is_none());
}
