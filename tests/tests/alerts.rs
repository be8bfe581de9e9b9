// Test-only code: helpers outside #[test] functions may unwrap and panic too.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

//! Budget alerts: under concurrent spend each threshold fires exactly once
//! a month, into the decision log, `GET /v1/alerts` and the tenant's signed
//! webhook.

use keel_tests::gateway::{chat, gateway};
use keel_tests::stub::StubModels;
use keel_tests::tenant;
use serde_json::{json, Value};
use std::sync::{Arc, Mutex};
use std::time::Duration;

type Deliveries = Arc<Mutex<Vec<(String, String)>>>;

/// A webhook receiver that keeps each delivery's signature header and body.
async fn receiver() -> (String, Deliveries) {
    let got: Deliveries = Arc::default();
    let kept = got.clone();
    let app = axum::Router::new().fallback(move |req: axum::extract::Request| {
        let kept = kept.clone();
        async move {
            let signature = req.headers().get("keel-signature").and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
            let body = String::from_utf8(axum::body::to_bytes(req.into_body(), 1 << 20).await.unwrap().to_vec()).unwrap();
            kept.lock().unwrap().push((signature, body));
            "ok"
        }
    });
    (format!("http://{}/hooks/keel", keel_tests::serve_on_loopback(app).await), got)
}

/// Whether `header` (`t=…,v1=…`) signs `body` with `secret`.
fn signed(secret: &str, header: &str, body: &str) -> bool {
    let part = |p: &str| header.split(',').find_map(|kv| kv.strip_prefix(p)).unwrap_or("");
    let key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, secret.as_bytes());
    let expected = hex::encode(aws_lc_rs::hmac::sign(&key, format!("{}.{body}", part("t=")).as_bytes()).as_ref());
    !part("t=").is_empty() && part("v1=") == expected
}

#[tokio::test]
async fn each_threshold_alerts_once_under_concurrent_spend() {
    let stub = StubModels::start().await;
    let (_dir, stack, c) = gateway(&stub.catalog(&[("small", "t2", 2.0, 5_000)])).await;
    let t = tenant(&c, "spender", json!({"budgets": {"monthly_usd": 5.0, "alert_thresholds": [0.05, 0.1]}})).await;
    let (url, deliveries) = receiver().await;
    let (s, hook) = c.call("PUT", "/v1/alerts/webhook", &t.admin, Some(json!({"url": url}))).await.unwrap();
    assert_eq!(s, 200, "{hook}");
    let secret = hook["secret"].as_str().unwrap().to_string();
    let (s, _) = c.call("PUT", "/v1/alerts/webhook", &t.member, Some(json!({"url": url}))).await.unwrap();
    assert_eq!(s, 403, "only an admin registers where alerts go");
    let (s, b) = c.call("PUT", "/v1/alerts/webhook", &t.admin, Some(json!({"url": "http://169.254.169.254/latest"}))).await.unwrap();
    assert_eq!(s, 422, "through the egress guard: {b}");

    // Many requests reserve and settle at once: the spend crosses each line many times.
    let c = Arc::new(c);
    for burst in 0..2 {
        let calls: Vec<_> = (0..12)
            .map(|i| {
                let (c, key) = (c.clone(), t.member.clone());
                tokio::spawn(async move {
                    chat(&c, &key, json!({"model": "auto", "messages": [{"role": "user", "content": format!("burst {burst} question {i}")}]})).await.0
                })
            })
            .collect();
        let mut statuses = Vec::new();
        for call in calls {
            statuses.push(call.await.unwrap());
        }
        assert!(statuses.iter().all(|s| *s == 200 || *s == 429), "{statuses:?}");
        assert!(statuses.contains(&200));
    }
    assert!(stack.settle(Duration::from_secs(10)).await);

    assert_eq!(c.call("GET", "/v1/alerts", &t.member, None).await.unwrap().0, 403, "alerts are for admins and auditors");
    let (_, listed) = c.call("GET", "/v1/alerts", &t.admin, None).await.unwrap();
    let mut thresholds: Vec<f64> = listed["alerts"].as_array().unwrap().iter().map(|a| a["threshold"].as_f64().unwrap()).collect();
    thresholds.sort_by(f64::total_cmp);
    assert_eq!(thresholds, [0.05, 0.1], "{listed}");
    assert_eq!(listed["webhook"], json!({"host": "127.0.0.1"}), "the host only: the URL's path may carry a token, and the secret is not shown again");

    let (_, export) = c.call("GET", "/v1/audit/export", &t.admin, None).await.unwrap();
    let logged = export.as_str().unwrap().lines().filter(|l| serde_json::from_str::<Value>(l).unwrap()["event"]["kind"] == "budget.alert").count();
    assert_eq!(logged, 2, "one decision event per threshold");

    let got = deliveries.lock().unwrap().clone();
    assert_eq!(got.len(), 2, "one delivery per alert: {got:?}");
    for (signature, body) in &got {
        assert!(signed(&secret, signature, body), "{signature}");
        assert!(!signed("whsec_wrong", signature, body));
        let body: Value = serde_json::from_str(body).unwrap();
        assert_eq!((body["type"].as_str(), body["tenant"].as_str()), (Some("budget.alert"), Some("spender")));
    }
    stack.stop().await;
}

/// Records what the audit consumer publishes (a stand-in for the SNS topic, whose adapter
/// `contract.rs` runs against moto).
#[derive(Default)]
struct Published(Mutex<Vec<(String, String)>>);

#[async_trait::async_trait]
impl keel_core::ports::Notifier for Published {
    async fn notify(&self, subject: &str, message: &str, _: std::collections::HashMap<String, String>) -> Result<(), keel_core::StoreError> {
        self.0.lock().unwrap().push((subject.to_string(), message.to_string()));
        Ok(())
    }
}

#[tokio::test]
async fn a_chained_alert_is_published_to_the_operators_topic_once_however_often_it_is_delivered() {
    let dir = tempfile::tempdir().unwrap();
    let db = keel_emulator::store::Db::open(&dir.path().join("t.sqlite3")).unwrap();
    let table = Arc::new(keel_emulator::table::SqliteTable::new(db));
    let blobs = Arc::new(keel_emulator::blobs::DirBlobs::new(dir.path().join("blobs")));
    let tenants = Arc::new(keel_tests::config(&[]).tenant_store(table.clone()));
    let published = Arc::new(Published::default());
    let audit = keel_audit::Audit::new(table, blobs, tenants).with_notifier(Some(published.clone()));
    let alert = json!({"event_id": "alert_1", "decision_id": "alert_1", "kind": "budget.alert", "principal": "budget", "at": "2026-12-06T00:00:00Z",
        "outcome": {"budget": "monthly", "threshold": 0.8, "limit_usd": 10.0, "spent_usd": 8.1}});
    let message = keel_core::ports::QueueMessage {
        message_id: "m1".into(), receipt: "r1".into(), body: alert.to_string(),
        attributes: std::collections::HashMap::from([("tenant".to_string(), "acme".to_string())]), receive_count: 1,
    };
    assert!(audit.consume(std::slice::from_ref(&message)).await.is_empty());
    assert!(audit.consume(&[message]).await.is_empty(), "delivered again (a lost ack)");
    let got = published.0.lock().unwrap().clone();
    assert_eq!(got.len(), 1, "{got:?}");
    assert!(got[0].0.contains("acme") && got[0].0.contains("monthly"));
    assert_eq!(serde_json::from_str::<Value>(&got[0].1).unwrap()["data"]["threshold"], 0.8);
}
