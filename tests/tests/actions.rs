// Test-only code: helpers outside #[test] functions may unwrap and panic too.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

//! Governed actions end to end against the local stack: the saga's approval
//! wait, reverse compensation, exactly-once delivery from the actions queue,
//! the DLQ and its replay, tenant policies (limits, daily caps, shadow mode),
//! per-tool autonomy, dry-run previews and undo.

use keel_core::ports::{QueueName, WorkQueue};
use keel_tests::{config, decision_entries, start_stack, tenant, wait_for_action, wait_for_events, Client, Tenant, ADMIN_KEY};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// A system the tools change, on loopback. It records every call (path,
/// idempotency key) and answers by path: `/refuse…` 400, `/down…` 503,
/// `/dry-run` a computed diff, anything else 200.
struct Service {
    url: String,
    calls: Arc<Mutex<Vec<(String, String)>>>,
}

impl Service {
    async fn start() -> Self {
        let calls: Arc<Mutex<Vec<(String, String)>>> = Arc::default();
        let recorded = calls.clone();
        let app = axum::Router::new().fallback(move |req: axum::extract::Request| {
            let recorded = recorded.clone();
            async move {
                let key = req.headers().get("idempotency-key").and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
                let path = req.uri().path().to_string();
                let body: Value = serde_json::from_slice(&axum::body::to_bytes(req.into_body(), 1 << 20).await.unwrap()).unwrap();
                recorded.lock().unwrap().push((path.clone(), key.clone()));
                let (status, answer) = if path.starts_with("/refuse") {
                    (400, json!({"error": "order is closed"}))
                } else if path.starts_with("/down") {
                    (503, json!({"error": "maintenance"}))
                } else if path == "/dry-run" {
                    (200, json!({"would_change": {"order": body["args"]["order_id"], "balance": {"from": 100, "to": 100.0 - body["args"]["amount"].as_f64().unwrap()}}}))
                } else {
                    (200, json!({"ok": true, "path": path}))
                };
                (axum::http::StatusCode::from_u16(status).unwrap(), axum::Json(answer))
            }
        });
        let url = format!("http://{}", keel_tests::serve_on_loopback(app).await);
        Self { url, calls }
    }

    fn paths(&self) -> Vec<String> {
        self.calls.lock().unwrap().iter().map(|(p, _)| p.clone()).collect()
    }

    fn keys(&self) -> Vec<String> {
        self.calls.lock().unwrap().iter().map(|(_, k)| k.clone()).collect()
    }
}

const SCHEMA: &str = r#"{"type": "object", "required": ["order_id", "amount"], "additionalProperties": false,
    "properties": {"order_id": {"type": "string"}, "amount": {"type": "number", "minimum": 0}}}"#;

fn tool(risk: &str, steps: Value, extra: Value) -> Value {
    let mut t = json!({"description": "test tool", "risk": risk, "input_schema": serde_json::from_str::<Value>(SCHEMA).unwrap(), "steps": steps});
    t.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
    t
}

fn step(name: &str, url: &str, path: &str) -> Value {
    json!({"name": name, "connector": {"url": format!("{url}/{path}")}, "compensation": {"url": format!("{url}/{path}/undo")}})
}

fn proposal(tool: &str, amount: f64, key: &str) -> Value {
    json!({"tool": tool, "args": {"order_id": "A-1", "amount": amount}, "idempotency_key": key})
}

/// The decision events of one action in the tenant's audit export, by kind.
async fn events(c: &Client, key: &str, action_id: &str) -> Vec<String> {
    decision_entries(c, key, action_id).await.iter().map(|e| e["event"]["kind"].as_str().unwrap().to_string()).collect()
}

async fn put(c: &Client, key: &str, path: &str, body: Value) -> Value {
    let (s, r) = c.call("PUT", path, key, Some(body)).await.unwrap();
    assert_eq!(s, 200, "{path}: {r}");
    r
}

#[tokio::test]
async fn a_failed_step_compensates_the_completed_steps_in_reverse_order() {
    let dir = tempfile::tempdir().unwrap();
    let stack = start_stack(dir.path(), config(&[])).await;
    let c = Client::new(stack.url());
    let t = tenant(&c, "saga", json!({"autonomy": "unattended"})).await;
    let svc = Service::start().await;
    let steps = json!([step("reserve", &svc.url, "reserve"), step("charge", &svc.url, "charge"), step("ship", &svc.url, "refuse-ship"), step("notify", &svc.url, "notify")]);
    put(&c, &t.admin, "/v1/tools/fulfil", tool("low", steps, json!({}))).await;

    let (s, a) = c.call("POST", "/v1/actions", &t.member, Some(proposal("fulfil", 10.0, "f-1"))).await.unwrap();
    assert_eq!((s, a["status"].as_str()), (201, Some("running")), "{a}");
    let id = a["action_id"].as_str().unwrap();
    let failed = wait_for_action(&c, &t.member, id, "failed").await;
    // The refused step is final (a 400 is not retried); what ran is taken back newest first; the last step never ran.
    assert_eq!(svc.paths(), ["/reserve", "/charge", "/refuse-ship", "/charge/undo", "/reserve/undo"]);
    assert!(failed["error"].as_str().unwrap().contains("400"), "{failed}");
    assert!(failed["steps"][2]["outcome"].is_null() && failed["steps"][3]["outcome"].is_null());
    assert!(failed["steps"][0]["compensation"]["status"] == 200 && failed["steps"][1]["compensation"]["status"] == 200);
    // Each step has its own idempotency key, and its compensation another.
    let keys = svc.keys();
    assert_eq!(keys[0], "saga:f-1:reserve");
    assert_eq!(keys[4], "saga:f-1:reserve:undo");
    wait_for_events(&c, &t.admin, id, &["action.proposed", "action.failed"]).await;

    // A connector that keeps answering 503 is retried, then the action fails and nothing is left applied.
    let steps = json!([step("reserve", &svc.url, "reserve"), step("charge", &svc.url, "down-charge")]);
    put(&c, &t.admin, "/v1/tools/flaky", tool("low", steps, json!({}))).await;
    let (_, a) = c.call("POST", "/v1/actions", &t.member, Some(proposal("flaky", 10.0, "f-2"))).await.unwrap();
    wait_for_action(&c, &t.member, a["action_id"].as_str().unwrap(), "failed").await;
    let tail: Vec<String> = svc.paths().into_iter().skip(5).collect();
    assert_eq!(tail.first().map(String::as_str), Some("/reserve"));
    assert_eq!(tail.last().map(String::as_str), Some("/reserve/undo"));
    assert!(tail.iter().filter(|p| *p == "/down-charge").count() >= 2, "retried: {tail:?}");
    stack.stop().await;
}

#[tokio::test]
async fn a_review_right_after_the_proposal_is_not_refused_for_the_saga_storing_its_token() {
    let dir = tempfile::tempdir().unwrap();
    let stack = start_stack(dir.path(), config(&[])).await;
    let c = Client::new(stack.url());
    let t = tenant(&c, "quick", json!({})).await;
    let svc = Service::start().await;
    put(&c, &t.admin, "/v1/tools/refund", tool("high", json!([step("refund", &svc.url, "refund")]), json!({}))).await;
    // Each review races the saga's first step, which writes its task token onto the action.
    for i in 0..40 {
        let (s, a) = c.call("POST", "/v1/actions", &t.member, Some(proposal("refund", 1.0, &format!("q-{i}")))).await.unwrap();
        assert_eq!((s, &a["status"]), (201, &json!("pending_approval")), "{a}");
        let verb = if i % 4 == 0 { "approve" } else { "reject" };
        let (s, r) = c.call("POST", &format!("/v1/actions/{}/{verb}", a["action_id"].as_str().unwrap()), &t.approver, None).await.unwrap();
        assert_eq!(s, 200, "{verb} #{i}: {r}");
    }
    assert!(stack.settle(Duration::from_secs(20)).await);
    assert_eq!(svc.paths().len(), 10, "each approved action ran once");
    stack.stop().await;
}

#[tokio::test]
async fn approvals_wait_in_the_saga_and_expire_when_nobody_decides() {
    let dir = tempfile::tempdir().unwrap();
    let stack = start_stack(dir.path(), config(&[("KEEL_APPROVAL_TIMEOUT_SECS", "1")])).await;
    let c = Client::new(stack.url());
    let t = tenant(&c, "wait", json!({})).await;
    let svc = Service::start().await;
    put(&c, &t.admin, "/v1/tools/refund", tool("high", json!([step("refund", &svc.url, "refund")]), json!({}))).await;

    // Approved in time: the waiting saga runs it.
    let (_, a) = c.call("POST", "/v1/actions", &t.member, Some(proposal("refund", 5.0, "w-1"))).await.unwrap();
    assert_eq!(a["status"], "pending_approval", "{a}");
    let id = a["action_id"].as_str().unwrap();
    // The tool changes while the action waits: it still runs the version it was proposed (and approved) with.
    let v2 = put(&c, &t.admin, "/v1/tools/refund", tool("high", json!([step("refund", &svc.url, "refund-v2")]), json!({}))).await;
    assert_eq!(v2["version"], 2);
    let (s, r) = c.call("POST", &format!("/v1/actions/{id}/approve"), &t.approver, None).await.unwrap();
    assert_eq!(s, 200, "{r}");
    wait_for_action(&c, &t.member, id, "executed").await;

    // Rejected: the saga closes and nothing runs.
    let (_, a) = c.call("POST", "/v1/actions", &t.member, Some(proposal("refund", 6.0, "w-2"))).await.unwrap();
    let rejected = a["action_id"].as_str().unwrap().to_string();
    assert_eq!(c.call("POST", &format!("/v1/actions/{rejected}/reject"), &t.approver, None).await.unwrap().0, 200);

    // Nobody decides: after the timeout the action expires and can no longer be approved.
    let (_, a) = c.call("POST", "/v1/actions", &t.member, Some(proposal("refund", 7.0, "w-3"))).await.unwrap();
    let id = a["action_id"].as_str().unwrap();
    wait_for_action(&c, &t.member, id, "expired").await;
    assert_eq!(c.call("POST", &format!("/v1/actions/{id}/approve"), &t.approver, None).await.unwrap().0, 409);
    assert_eq!(svc.paths(), ["/refund"], "only the approved action ran, at its proposed version");
    wait_for_events(&c, &t.admin, id, &["action.proposed", "action.expired"]).await;
    assert_eq!(events(&c, &t.admin, &rejected).await, ["action.proposed", "action.rejected"]);
    stack.stop().await;
}

#[tokio::test]
async fn an_action_waiting_for_approval_when_the_stack_stops_runs_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let stack = start_stack(dir.path(), config(&[])).await;
    let c = Client::new(stack.url());
    let t = tenant(&c, "restart", json!({})).await;
    let svc = Service::start().await;
    put(&c, &t.admin, "/v1/tools/refund", tool("high", json!([step("refund", &svc.url, "refund")]), json!({}))).await;
    let (_, a) = c.call("POST", "/v1/actions", &t.member, Some(proposal("refund", 5.0, "r-1"))).await.unwrap();
    assert_eq!(a["status"], "pending_approval", "{a}");
    let id = a["action_id"].as_str().unwrap().to_string();
    stack.stop().await;

    // The saga's wait ended with the stack and left nothing holding the store: the same directory opens again.
    let stack = start_stack(dir.path(), config(&[])).await;
    let c = Client::new(stack.url());
    let (s, r) = c.call("POST", &format!("/v1/actions/{id}/approve"), &t.approver, None).await.unwrap();
    assert_eq!(s, 200, "{r}");
    wait_for_action(&c, &t.member, &id, "executed").await;
    assert_eq!(svc.paths(), ["/refund"]);
    stack.stop().await;
}

#[tokio::test]
async fn each_message_delivered_one_to_five_times_in_any_order_runs_once() {
    let dir = tempfile::tempdir().unwrap();
    let stack = start_stack(dir.path(), config(&[])).await;
    let c = Client::new(stack.url());
    let t = tenant(&c, "queue", json!({"autonomy": "unattended"})).await;
    let svc = Service::start().await;
    put(&c, &t.admin, "/v1/tools/credit", tool("low", json!([step("credit", &svc.url, "credit")]), json!({}))).await;

    // Message i is delivered i+1 times; the deliveries are shuffled (a fixed permutation).
    let message = |i: usize| {
        json!({"tool": "credit", "args": {"order_id": format!("O-{i}"), "amount": i}, "idempotency_key": format!("q-{i}")}).to_string()
    };
    let signed = HashMap::from([("authorization".to_string(), format!("Bearer {}", t.member))]);
    let mut deliveries: Vec<usize> = (0..5).flat_map(|i| std::iter::repeat_n(i, i + 1)).collect();
    let mut seed = 7u64;
    for i in (1..deliveries.len()).rev() {
        seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        deliveries.swap(i, (seed >> 33) as usize % (i + 1));
    }
    for i in &deliveries {
        stack.queue.send(QueueName::Actions, message(*i), signed.clone()).await.unwrap();
    }
    // Bad messages: not JSON, unsigned, naming its own principal, a tool not
    // registered yet. They end in the DLQ, nothing applied; the unsigned and
    // self-naming ones at once, with their reasons.
    stack.queue.send(QueueName::Actions, "{not json".into(), signed.clone()).await.unwrap();
    let unsigned = json!({"tool": "credit", "args": {"order_id": "X", "amount": 1}, "idempotency_key": "x"});
    stack.queue.send(QueueName::Actions, unsigned.to_string(), HashMap::from([("tenant".into(), "queue".into())])).await.unwrap();
    let forged = json!({"principal": "bob", "tool": "credit", "args": {"order_id": "Y", "amount": 1}, "idempotency_key": "y"});
    stack.queue.send(QueueName::Actions, forged.to_string(), signed.clone()).await.unwrap();
    let early = json!({"tool": "debit", "args": {"order_id": "E", "amount": 1}, "idempotency_key": "e-1"});
    stack.queue.send(QueueName::Actions, early.to_string(), signed.clone()).await.unwrap();
    assert!(stack.settle(Duration::from_secs(20)).await, "queue never drained");

    for i in 0..5 {
        let (s, a) = c.call("GET", &format!("/v1/actions?idempotency_key=q-{i}"), &t.member, None).await.unwrap();
        assert_eq!(s, 200, "{a}");
        let id = a["action_id"].as_str().unwrap();
        wait_for_action(&c, &t.member, id, "executed").await;
        // One audit trail for each.
        wait_for_events(&c, &t.admin, id, &["action.proposed", "action.executed"]).await;
    }
    let mut keys = svc.keys();
    keys.sort();
    assert_eq!(keys, (0..5).map(|i| format!("queue:q-{i}:credit")).collect::<Vec<_>>(), "one connector call per action");
    assert_eq!(stack.queue.dead_letters(QueueName::Actions).unwrap().len(), 4);
    let reasons: Vec<String> = stack.queue.rejections(QueueName::Actions).unwrap().into_iter().map(|(_, r)| r).collect();
    assert_eq!(reasons.len(), 2, "{reasons:?}");
    assert!(reasons[0].contains("without an 'authorization' attribute") && reasons[1].contains("may not name its own principal"), "{reasons:?}");

    // Once the tool exists, replaying the DLQ runs the early message; the three bad ones go dead again.
    put(&c, &t.admin, "/v1/tools/debit", tool("low", json!([step("debit", &svc.url, "debit")]), json!({}))).await;
    assert_eq!(stack.queue.redrive(QueueName::Actions).unwrap(), 4);
    assert!(stack.settle(Duration::from_secs(20)).await);
    let (s, a) = c.call("GET", "/v1/actions?idempotency_key=e-1", &t.member, None).await.unwrap();
    assert_eq!(s, 200, "{a}");
    wait_for_action(&c, &t.member, a["action_id"].as_str().unwrap(), "executed").await;
    assert_eq!(stack.queue.dead_letters(QueueName::Actions).unwrap().len(), 3);
    stack.stop().await;
}

#[tokio::test]
async fn tenant_policies_set_limits_and_daily_caps_and_shadow_policies_only_record() {
    let dir = tempfile::tempdir().unwrap();
    let stack = start_stack(dir.path(), config(&[])).await;
    let c = Client::new(stack.url());
    let a = tenant(&c, "pol-a", json!({})).await;
    let b = tenant(&c, "pol-b", json!({})).await;
    let svc = Service::start().await;
    for t in [&a, &b] {
        put(&c, &t.admin, "/v1/tools/refund", tool("high", json!([step("refund", &svc.url, "refund")]), json!({"metered_arg": "amount"}))).await;
    }
    let limits = r#"
        @id("refund-limit")
        forbid (principal, action == Keel::Action::"propose", resource)
        when { resource.tool == "refund" && context.args.amount.greaterThan(decimal("500.00")) };
        @id("refund-daily-cap")
        forbid (principal, action == Keel::Action::"propose", resource)
        when { resource.tool == "refund" && context.today.count > 3 };
    "#;
    let shadow = r#"
        @id("refund-limit-100")
        forbid (principal, action == Keel::Action::"propose", resource)
        when { resource.tool == "refund" && context.args.amount.greaterThan(decimal("100.00")) };
    "#;
    // Only a tenant admin sets policies, and only valid Cedar with @ids is accepted.
    assert_eq!(c.call("PUT", "/v1/policies/enforced", &a.member, Some(json!({"policies": limits}))).await.unwrap().0, 403);
    let (s, r) = c.call("PUT", "/v1/policies/enforced", &a.admin, Some(json!({"policies": "permit (principal, action, resource);"}))).await.unwrap();
    assert_eq!(s, 400, "{r}");
    put(&c, &a.admin, "/v1/policies/enforced", json!({"policies": limits})).await;
    let r = put(&c, &a.admin, "/v1/policies/shadow", json!({"policies": shadow})).await;
    assert_eq!(r["shadow"]["version"], 1);

    // Per-call limit, with the deciding policy named.
    let (s, r) = c.call("POST", "/v1/actions", &a.member, Some(proposal("refund", 600.0, "p-1"))).await.unwrap();
    assert_eq!(s, 403, "{r}");
    assert!(r["error"]["message"].as_str().unwrap().contains("refund-limit"), "{r}");
    // Allowed by the enforced policies; the shadow policy would have refused and says so, without effect.
    let (s, r) = c.call("POST", "/v1/actions", &a.member, Some(proposal("refund", 200.0, "p-2"))).await.unwrap();
    assert_eq!((s, r["status"].as_str()), (201, Some("pending_approval")), "{r}");
    assert_eq!(r["policy"][0]["shadow"], json!({"allowed": false, "policies": ["refund-limit-100"]}));

    // The daily cap is counted atomically: of six concurrent proposals, exactly two more fit under 3 a day.
    let mut calls = tokio::task::JoinSet::new();
    for i in 0..6 {
        let (c, key) = (Client::new(stack.url()), a.member.clone());
        calls.spawn(async move { c.call("POST", "/v1/actions", &key, Some(proposal("refund", 10.0, &format!("cap-{i}")))).await.unwrap().0 });
    }
    let statuses: Vec<u16> = calls.join_all().await;
    assert_eq!(statuses.iter().filter(|s| **s == 201).count(), 2, "{statuses:?}");
    assert_eq!(statuses.iter().filter(|s| **s == 403).count(), 4, "{statuses:?}");
    // A rejected action gives its count back.
    let (_, pending) = c.call("GET", "/v1/actions?idempotency_key=p-2", &a.member, None).await.unwrap();
    let id = pending["action_id"].as_str().unwrap();
    assert_eq!(c.call("POST", &format!("/v1/actions/{id}/reject"), &a.approver, None).await.unwrap().0, 200);
    assert_eq!(c.call("POST", "/v1/actions", &a.member, Some(proposal("refund", 10.0, "p-3"))).await.unwrap().0, 201);

    // Another tenant's policies are its own: B has none, so B's 600 is proposed.
    let (s, r) = c.call("POST", "/v1/actions", &b.member, Some(proposal("refund", 600.0, "p-1"))).await.unwrap();
    assert_eq!((s, r["status"].as_str()), (201, Some("pending_approval")), "{r}");
    let (_, bp) = c.call("GET", "/v1/policies", &b.admin, None).await.unwrap();
    assert_eq!(bp["enforced"]["policies"], "", "B cannot see A's policies: {bp}");
    stack.stop().await;
}

#[tokio::test]
async fn tool_autonomy_dry_run_previews_and_undo_once() {
    let dir = tempfile::tempdir().unwrap();
    let stack = start_stack(dir.path(), config(&[])).await;
    let c = Client::new(stack.url());
    let t: Tenant = tenant(&c, "undo", json!({"autonomy": "unattended"})).await;
    let (s, eve) = c
        .call("POST", "/v1/tenants/undo/keys", ADMIN_KEY, Some(json!({"principal": "eve", "roles": ["member"]})))
        .await
        .unwrap();
    assert_eq!(s, 201);
    let eve = eve["key"].as_str().unwrap().to_string();
    let svc = Service::start().await;
    // Low risk and reversible, but the tool caps autonomy at one-click: it waits for an approver.
    let extra = json!({"autonomy": "one_click", "dry_run": {"url": format!("{}/dry-run", svc.url)}});
    put(&c, &t.admin, "/v1/tools/adjust", tool("low", json!([step("adjust", &svc.url, "adjust")]), extra)).await;
    let (s, a) = c.call("POST", "/v1/actions", &t.member, Some(proposal("adjust", 30.0, "u-1"))).await.unwrap();
    assert_eq!((s, a["status"].as_str()), (201, Some("pending_approval")), "{a}");
    // The preview shows the connector's own dry run, the request Keel will send and the rollback plan.
    assert_eq!(a["preview"]["dry_run"]["body"]["would_change"]["balance"], json!({"from": 100, "to": 70.0}), "{a}");
    assert_eq!(a["preview"]["requests"][0]["headers"]["Idempotency-Key"], "undo:u-1:adjust");
    assert_eq!(a["preview"]["rollback"]["steps"][0]["url"], format!("{}/adjust/undo", svc.url));
    let id = a["action_id"].as_str().unwrap();
    assert_eq!(c.call("POST", &format!("/v1/actions/{id}/approve"), &t.approver, None).await.unwrap().0, 200);
    wait_for_action(&c, &t.member, id, "executed").await;

    // Undo: not by another member; by the proposer, once; the undo is audited.
    assert_eq!(c.call("POST", &format!("/v1/actions/{id}/undo"), &eve, None).await.unwrap().0, 403);
    let (s, r) = c.call("POST", &format!("/v1/actions/{id}/undo"), &t.member, None).await.unwrap();
    assert_eq!((s, r["status"].as_str()), (200, Some("undoing")), "{r}");
    assert_eq!(c.call("POST", &format!("/v1/actions/{id}/undo"), &t.member, None).await.unwrap().0, 409);
    let undone = wait_for_action(&c, &t.member, id, "undone").await;
    assert_eq!(undone["steps"][0]["compensation"]["status"], 200);
    assert_eq!(c.call("POST", &format!("/v1/actions/{id}/undo"), &t.approver, None).await.unwrap().0, 409);
    assert_eq!(svc.paths(), ["/dry-run", "/adjust", "/adjust/undo"]);
    let chain = ["action.proposed", "action.approved", "action.executed", "action.undo_requested", "action.undone"];
    wait_for_events(&c, &t.admin, id, &chain).await;

    // A tool without compensation cannot be undone.
    put(&c, &t.admin, "/v1/tools/send", tool("low", json!([{"name": "send", "connector": {"url": format!("{}/send", svc.url)}}]), json!({}))).await;
    let (_, a) = c.call("POST", "/v1/actions", &t.member, Some(proposal("send", 1.0, "u-2"))).await.unwrap();
    let id = a["action_id"].as_str().unwrap();
    assert_eq!(a["status"], "pending_approval", "irreversible tools never run unattended: {a}");
    assert_eq!(c.call("POST", &format!("/v1/actions/{id}/approve"), &t.approver, None).await.unwrap().0, 200);
    wait_for_action(&c, &t.member, id, "executed").await;
    assert_eq!(c.call("POST", &format!("/v1/actions/{id}/undo"), &t.member, None).await.unwrap().0, 403);
    stack.stop().await;
}
