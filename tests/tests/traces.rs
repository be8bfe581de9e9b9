// Test-only code: helpers outside #[test] functions may unwrap and panic too.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

//! One trace from an ask through a proposed, approved, executed and undone
//! action: a client that continues its trace on each request finds that
//! trace id on every decision event (the saga's steps included), in the
//! `traceparent` its connector receives, and its request ids lead back to
//! the decisions they made.

use keel_tests::{config, start_stack, tenant, wait_for_action, wait_for_events, Client};
use serde_json::{json, Value};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const TRACE: &str = "0af7651916cd43dd8448eb211c80319c";

fn traceparent() -> String {
    format!("00-{TRACE}-b7ad6b7169203331-01")
}

/// A connector that records the `traceparent` each call brings, by path.
async fn connector() -> (String, Arc<Mutex<Vec<(String, String)>>>) {
    let seen: Arc<Mutex<Vec<(String, String)>>> = Arc::default();
    let recorded = seen.clone();
    let app = axum::Router::new().fallback(move |req: axum::extract::Request| {
        let recorded = recorded.clone();
        async move {
            let parent = req.headers().get("traceparent").and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
            recorded.lock().unwrap().push((req.uri().path().to_string(), parent));
            axum::Json(json!({"ok": true}))
        }
    });
    (format!("http://{}", keel_tests::serve_on_loopback(app).await), seen)
}

async fn traced(c: &Client, method: &str, path: &str, key: &str, body: Option<Value>, request_id: &str) -> (u16, Value) {
    let headers = [("traceparent", traceparent()), ("x-request-id", request_id.to_string())];
    let headers: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let (s, h, b) = c.call_with_headers(method, path, key, body, &headers).await.unwrap();
    assert_eq!(h["x-request-id"], request_id, "the caller's request id is kept");
    let answered = h["traceparent"].to_str().unwrap();
    assert!(answered.starts_with(&format!("00-{TRACE}-")) && answered != traceparent(), "the same trace, the request's own span: {answered}");
    (s, b)
}

#[tokio::test]
async fn one_trace_runs_from_an_ask_through_an_action_and_its_undo() {
    let dir = tempfile::tempdir().unwrap();
    let stack = start_stack(dir.path(), config(&[])).await;
    let c = Client::new(stack.url());
    let t = tenant(&c, "traced", json!({})).await;
    let (url, seen) = connector().await;
    let (s, _) = c.call("PUT", "/v1/documents/policy", &t.admin, Some(json!({"text": "Refunds over 100 need approval."}))).await.unwrap();
    assert_eq!(s, 200);
    let tool = json!({"description": "refund", "risk": "high", "input_schema": {},
        "connector": {"url": format!("{url}/refund")}, "compensation": {"url": format!("{url}/refund/undo")}});
    let (s, b) = c.call("PUT", "/v1/tools/refund", &t.admin, Some(tool)).await.unwrap();
    assert_eq!(s, 200, "{b}");

    let (s, ask) = traced(&c, "POST", "/v1/ask", &t.member, Some(json!({"question": "When do refunds need approval?"})), "t-ask").await;
    assert_eq!(s, 200, "{ask}");
    let (s, a) = traced(&c, "POST", "/v1/actions", &t.member, Some(json!({"tool": "refund", "args": {"amount": 150}, "idempotency_key": "t-1"})), "t-propose").await;
    assert_eq!(a["status"], "pending_approval", "{s} {a}");
    let id = a["action_id"].as_str().unwrap().to_string();
    let (s, r) = traced(&c, "POST", &format!("/v1/actions/{id}/approve"), &t.approver, None, "t-approve").await;
    assert_eq!(s, 200, "{r}");
    wait_for_action(&c, &t.member, &id, "executed").await;
    let (s, r) = traced(&c, "POST", &format!("/v1/actions/{id}/undo"), &t.member, None, "t-undo").await;
    assert_eq!(s, 200, "{r}");
    wait_for_action(&c, &t.member, &id, "undone").await;
    wait_for_events(&c, &t.admin, &id, &["action.proposed", "action.approved", "action.executed", "action.undo_requested", "action.undone"]).await;
    assert!(stack.settle(Duration::from_secs(10)).await);

    // Every event of the ask and of the action carries the trace.
    let (_, export) = c.call("GET", "/v1/audit/export", &t.admin, None).await.unwrap();
    let events: Vec<Value> = export.as_str().unwrap().lines().map(|l| serde_json::from_str::<Value>(l).unwrap()["event"].clone()).collect();
    let ours: Vec<&Value> = events.iter().filter(|e| e["decision_id"] == ask["decision_id"] || e["decision_id"] == id.as_str()).collect();
    let kinds: Vec<&str> = ours.iter().map(|e| e["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["ask", "action.proposed", "action.approved", "action.executed", "action.undo_requested", "action.undone"]);
    for e in &ours {
        assert_eq!(e["trace_id"], TRACE, "{e}");
    }
    let request_of = |kind: &str| ours.iter().find(|e| e["kind"] == kind).unwrap()["request_id"].clone();
    assert_eq!((request_of("ask"), request_of("action.executed"), request_of("action.undone")), (json!("t-ask"), json!("t-approve"), json!("t-undo")));
    assert!(events.iter().any(|e| e["kind"] == "admin.change" && e["trace_id"] != TRACE), "other requests have traces of their own");

    // The connector's calls continue the trace, the compensation too.
    let calls = seen.lock().unwrap().clone();
    assert_eq!(calls.iter().map(|(p, _)| p.as_str()).collect::<Vec<_>>(), ["/refund", "/refund/undo"]);
    for (_, parent) in &calls {
        assert!(parent.starts_with(&format!("00-{TRACE}-")), "{parent}");
    }

    // A request id leads to what it decided; another principal's request shows nothing of it.
    let (s, found) = c.call("GET", "/v1/decisions?request_id=t-ask", &t.member, None).await.unwrap();
    assert_eq!(s, 200);
    assert_eq!(found["decisions"][0]["decision_id"], ask["decision_id"]);
    let (_, theirs) = c.call("GET", "/v1/decisions?request_id=t-ask", &t.approver, None).await.unwrap();
    assert_eq!(theirs["decisions"], json!([]), "ann asked: bob does not read ann's decisions");
    let (_, all) = c.call("GET", "/v1/decisions?request_id=t-approve", &t.admin, None).await.unwrap();
    assert_eq!(all["decisions"][0]["decision_id"], id.as_str());
    let (s, _) = c.call("GET", "/v1/decisions?request_id=bad%20id", &t.admin, None).await.unwrap();
    assert_eq!(s, 400);

    // A malformed request id is replaced, not echoed.
    let (_, h, _) = c.call_with_headers("GET", "/v1/usage", &t.admin, None, &[("x-request-id", "bad id\"")]).await.unwrap();
    assert!(!h["x-request-id"].to_str().unwrap().contains("bad"));
    stack.stop().await;
}
