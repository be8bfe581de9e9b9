// Test-only code: helpers outside #[test] functions may unwrap and panic too.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

//! `GET /v1/slo`: each surface's requests, counted from the decision log
//! against its objectives, over 1 hour, 24 hours and 30 days.

use keel_tests::{config, start_stack, tenant, Client};
use serde_json::{json, Value};
use std::time::Duration;

fn surface<'a>(slo: &'a Value, name: &str) -> &'a Value {
    slo["slos"].as_array().unwrap().iter().find(|s| s["surface"] == name).unwrap()
}

#[tokio::test]
async fn requests_count_against_their_surfaces_objectives() {
    let dir = tempfile::tempdir().unwrap();
    // Asks must answer in 0 ms (none can); hints keep the default 150 ms.
    let stack = start_stack(dir.path(), config(&[("KEEL_SLOS", r#"[{"surface": "asks", "p95_ms": 0, "success": 0.99}]"#)])).await;
    let c = Client::new(stack.url());
    let t = tenant(&c, "measured", json!({})).await;
    let (s, _) = c.call("PUT", "/v1/documents/faq", &t.admin, Some(json!({"text": "Refunds take five days."}))).await.unwrap();
    assert_eq!(s, 200);
    for q in ["How long do refunds take?", "Are refunds slow?", "What about refunds?"] {
        let (s, _) = c.call("POST", "/v1/ask", &t.member, Some(json!({"question": q}))).await.unwrap();
        assert_eq!(s, 200);
    }
    let (s, b) = c.call("POST", "/v1/rank", &t.member, Some(json!({"query": "refunds", "documents": ["refunds take days", "lunch"]}))).await.unwrap();
    assert_eq!(s, 200, "{b}");
    assert!(stack.settle(Duration::from_secs(10)).await);

    let (s, slo) = c.call("GET", "/v1/slo", &t.member, None).await.unwrap();
    assert_eq!(s, 200, "{slo}");
    let asks = surface(&slo, "asks");
    assert_eq!(asks["objectives"], json!({"p95_ms": 0, "success": 0.99}));
    for window in ["1h", "24h", "30d"] {
        let w = &asks["windows"][window];
        assert_eq!(w["requests"], 3, "{window}: {w}");
        assert_eq!(w["latency"]["attainment"], 0.0, "every ask is slower than 0 ms");
        assert!((w["latency"]["burn_rate"].as_f64().unwrap() - 20.0).abs() < 1e-9, "all slow where 5% may be: {w}");
        assert_eq!(w["success"]["attainment"], 1.0, "in-function answers are not degraded");
    }
    let hints = &surface(&slo, "hints")["windows"]["24h"];
    assert_eq!(hints["requests"], 1);
    assert_eq!(hints["latency"]["attainment"], 1.0, "a rank in-function is within 150 ms: {hints}");
    let actions = &surface(&slo, "actions")["windows"]["30d"];
    assert_eq!((actions["requests"].clone(), actions["latency"].clone()), (json!(0), Value::Null), "nothing measured, nothing claimed");
    stack.stop().await;
}
