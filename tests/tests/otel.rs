// Test-only code: helpers outside #[test] functions may unwrap and panic too.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

//! OpenTelemetry spans: with an exporter installed, a request, the saga
//! steps of the action it approves and the connector calls they make are
//! spans of the trace the caller's `traceparent` named. (One test in this
//! binary: the subscriber is process-wide.)

use keel_tests::{config, start_stack, tenant, Client};
use opentelemetry_sdk::trace::InMemorySpanExporter;
use serde_json::json;
use std::time::Duration;
use tracing_subscriber::layer::SubscriberExt;

const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";

#[tokio::test]
async fn a_requests_work_is_exported_as_spans_of_its_callers_trace() {
    let exporter = InMemorySpanExporter::default();
    let provider = keel_lambda::otel::provider(exporter.clone());
    tracing::subscriber::set_global_default(tracing_subscriber::registry().with(keel_lambda::otel::layer(&provider))).unwrap();

    let dir = tempfile::tempdir().unwrap();
    let stack = start_stack(dir.path(), config(&[])).await;
    let c = Client::new(stack.url());
    let t = tenant(&c, "spanned", json!({"autonomy": "unattended"})).await;
    let connector = keel_emulator::demo::start_connector().await.unwrap();
    let tool = json!({"description": "refund", "risk": "low", "input_schema": {}, "connector": {"url": format!("{}/refunds", connector.url)},
        "compensation": {"url": format!("{}/refunds/cancel", connector.url)}});
    let (s, b) = c.call("PUT", "/v1/tools/refund", &t.admin, Some(tool)).await.unwrap();
    assert_eq!(s, 200, "{b}");
    let parent = format!("00-{TRACE}-00f067aa0ba902b7-01");
    let proposal = json!({"tool": "refund", "args": {}, "idempotency_key": "o-1"});
    let (s, _, a) = c.call_with_headers("POST", "/v1/actions", &t.member, Some(proposal), &[("traceparent", &parent)]).await.unwrap();
    assert!((200..300).contains(&s), "{a}");
    keel_tests::wait_for_action(&c, &t.member, a["action_id"].as_str().unwrap(), "executed").await;
    assert!(stack.settle(Duration::from_secs(10)).await);
    stack.stop().await;

    let spans = exporter.get_finished_spans().unwrap();
    let ours: Vec<String> = spans.iter().filter(|s| s.span_context.trace_id().to_string() == TRACE).map(|s| s.name.to_string()).collect();
    assert!(ours.contains(&"POST /v1/actions".to_string()), "{ours:?}");
    assert!(ours.iter().any(|n| n == "saga.execute"), "the saga's step continues the trace: {ours:?}");
    assert!(ours.iter().any(|n| n == "connector.call"), "{ours:?}");
    assert!(spans.iter().any(|s| s.name == "PUT /v1/tools/{name}" && s.span_context.trace_id().to_string() != TRACE), "other requests are traces of their own");
}
