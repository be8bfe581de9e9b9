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

    let (s, slo) = c.call("GET", "/v1/slo", &t.admin, None).await.unwrap();
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

/// A handler that fails (5xx) makes no decision; the API counts it against its surface anyway.
#[tokio::test]
async fn a_failed_request_counts_against_its_surfaces_success() {
    use keel_core::ports::{QueueName, WorkQueue};
    use std::sync::Arc;
    let dir = tempfile::tempdir().unwrap();
    let db = keel_emulator::store::Db::open(&dir.path().join("t.sqlite3")).unwrap();
    let queue = Arc::new(keel_emulator::queue::SqliteQueue::new(db.clone(), Duration::from_secs(30), 3));
    let table = Arc::new(keel_emulator::table::SqliteTable::new(db));
    let caller = keel_tests::member("acme", "ann");
    let broken = axum::Router::new()
        .route("/v1/ask", axum::routing::post(|| async { keel_core::KeelError::Internal("the store is down".into()) }))
        .route("/v1/search", axum::routing::post(|| async { keel_core::KeelError::Internal("not a measured route".into()) }));
    let app = keel_core::http::api_counting_failures(broken, queue.clone()).layer(axum::Extension(caller.clone()));
    let c = Client::new(format!("http://{}", keel_tests::serve_on_loopback(app).await));
    for path in ["/v1/ask", "/v1/ask", "/v1/search"] {
        assert_eq!(c.call("POST", path, "k", Some(json!({}))).await.unwrap().0, 500);
    }

    let messages = queue.receive(QueueName::Audit, 10).await.unwrap();
    assert_eq!(messages.len(), 2, "only the measured route's failures");
    let blobs = Arc::new(keel_emulator::blobs::DirBlobs::new(dir.path().join("blobs")));
    let tenants = Arc::new(keel_tests::config(&[]).tenant_store(table.clone()));
    let audit = Arc::new(keel_audit::Audit::new(table, blobs, tenants));
    assert!(audit.consume(&messages).await.is_empty());
    // Objectives are read by those who oversee: an admin of the tenant.
    let admin = keel_core::auth::Caller { roles: vec!["admin".into()], ..caller };
    let slo_api = keel_core::http::api(keel_audit::routes::routes().with_state(audit)).layer(axum::Extension(admin));
    let c = Client::new(format!("http://{}", keel_tests::serve_on_loopback(slo_api).await));
    let (_, slo) = c.call("GET", "/v1/slo", "k", None).await.unwrap();
    let asks = &surface(&slo, "asks")["windows"]["1h"];
    assert_eq!(asks["requests"], 2, "{slo}");
    assert_eq!(asks["success"]["attainment"], 0.0);
}
