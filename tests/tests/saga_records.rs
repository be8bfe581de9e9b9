// Test-only code: helpers outside #[test] functions may unwrap and panic too.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

//! An action's decisions reach the chain, and its saga goes on, even when
//! queueing an event fails after the decision was saved: a retried saga step
//! records it (undone, expired); a saga that exhausted its retries on an
//! executed action records it executed instead of marking it failed; a review
//! or undo answered 503 is finished by repeating it, a review nobody
//! repeats by the saga when its approval wait ends, and a proposal by
//! replaying its idempotency key.

use async_trait::async_trait;
use keel_core::ports::{QueueMessage, QueueName, WorkQueue};
use keel_core::StoreError;
use keel_emulator::Stack;
use keel_tests::{config, recording_connector, stack_options, tenant, wait_for_action, wait_for_events, Client, Tenant};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// The tools function's queue, failing the first `times` sends of a
/// decision event of `kind`, as SQS may refuse a send.
struct RefusesEvents {
    inner: Arc<dyn WorkQueue>,
    kind: &'static str,
    left: AtomicUsize,
}

#[async_trait]
impl WorkQueue for RefusesEvents {
    async fn send(&self, queue: QueueName, body: String, attributes: HashMap<String, String>) -> Result<String, StoreError> {
        let ours = serde_json::from_str::<Value>(&body).is_ok_and(|b| b["kind"] == self.kind);
        if ours && self.left.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1)).is_ok() {
            return Err(StoreError::Backend("injected: the queue refused the send".into()));
        }
        self.inner.send(queue, body, attributes).await
    }
    async fn receive(&self, queue: QueueName, max: usize) -> Result<Vec<QueueMessage>, StoreError> {
        self.inner.receive(queue, max).await
    }
    async fn ack(&self, queue: QueueName, receipt: &str) -> Result<(), StoreError> {
        self.inner.ack(queue, receipt).await
    }
    async fn dead_letter(&self, queue: QueueName, message: &QueueMessage, reason: &str) -> Result<(), StoreError> {
        self.inner.dead_letter(queue, message, reason).await
    }
}

/// A local stack whose tools function fails `times` sends of `kind` events.
async fn stack_refusing(dir: &std::path::Path, env: &[(&str, &str)], kind: &'static str, times: usize) -> Stack {
    let mut options = stack_options(dir, config(env));
    options.tools_queue = Some(Arc::new(move |inner| Arc::new(RefusesEvents { inner, kind, left: AtomicUsize::new(times) })));
    Stack::start(options).await.expect("stack starts")
}

fn refund(url: &str, risk: &str) -> Value {
    json!({"description": "refund", "risk": risk, "input_schema": {"type": "object"},
        "connector": {"url": format!("{url}/refund")}, "compensation": {"url": format!("{url}/undo")}})
}

/// Registers the refund tool and proposes it; the action's id.
async fn propose(c: &Client, t: &Tenant, url: &str, risk: &str) -> String {
    let (s, r) = c.call("PUT", "/v1/tools/refund", &t.admin, Some(refund(url, risk))).await.unwrap();
    assert_eq!(s, 200, "{r}");
    let (s, a) = c.call("POST", "/v1/actions", &t.member, Some(json!({"tool": "refund", "args": {}, "idempotency_key": "r-1"}))).await.unwrap();
    assert_eq!(s, 201, "{a}");
    a["action_id"].as_str().unwrap().to_string()
}

#[tokio::test]
async fn an_undo_whose_event_could_not_be_queued_is_recorded_by_the_retried_step() {
    let dir = tempfile::tempdir().unwrap();
    let stack = stack_refusing(dir.path(), &[], "action.undone", 1).await;
    let c = Client::new(stack.url());
    let t = tenant(&c, "undo", json!({"autonomy": "unattended"})).await;
    let (url, calls) = recording_connector().await;
    let id = propose(&c, &t, &url, "low").await;
    wait_for_action(&c, &t.member, &id, "executed").await;
    let (s, r) = c.call("POST", &format!("/v1/actions/{id}/undo"), &t.member, None).await.unwrap();
    assert_eq!(s, 200, "{r}");
    wait_for_action(&c, &t.member, &id, "undone").await;
    wait_for_events(&c, &t.admin, &id, &["action.proposed", "action.executed", "action.undo_requested", "action.undone"]).await;
    assert_eq!(*calls.lock().unwrap(), ["/refund", "/undo"], "the compensation ran once");
    stack.stop().await;
}

#[tokio::test]
async fn an_executed_action_whose_event_kept_failing_stays_executed_and_is_recorded() {
    let dir = tempfile::tempdir().unwrap();
    // Every attempt of the last step's record fails (the first and its three retries).
    let stack = stack_refusing(dir.path(), &[], "action.executed", 4).await;
    let c = Client::new(stack.url());
    let t = tenant(&c, "exec", json!({"autonomy": "unattended"})).await;
    let (url, calls) = recording_connector().await;
    let id = propose(&c, &t, &url, "low").await;
    wait_for_events(&c, &t.admin, &id, &["action.proposed", "action.executed"]).await;
    assert!(stack.settle(std::time::Duration::from_secs(10)).await);
    let (_, a) = c.call("GET", &format!("/v1/actions/{id}"), &t.member, None).await.unwrap();
    assert_eq!((&a["status"], &a["error"]), (&json!("executed"), &Value::Null), "{a}");
    assert_eq!(*calls.lock().unwrap(), ["/refund"], "ran once, nothing compensated");
    stack.stop().await;
}

#[tokio::test]
async fn an_expiry_whose_event_could_not_be_queued_is_recorded_by_the_retried_step() {
    let dir = tempfile::tempdir().unwrap();
    let stack = stack_refusing(dir.path(), &[("KEEL_APPROVAL_TIMEOUT_SECS", "1")], "action.expired", 1).await;
    let c = Client::new(stack.url());
    let t = tenant(&c, "expiry", json!({})).await;
    let (url, calls) = recording_connector().await;
    let id = propose(&c, &t, &url, "high").await;
    wait_for_action(&c, &t.member, &id, "expired").await;
    wait_for_events(&c, &t.admin, &id, &["action.proposed", "action.expired"]).await;
    assert!(calls.lock().unwrap().is_empty());
    stack.stop().await;
}

/// Approves `id` as the tenant's approver; the answer's status.
async fn approve(c: &Client, t: &Tenant, id: &str) -> u16 {
    c.call("POST", &format!("/v1/actions/{id}/approve"), &t.approver, None).await.unwrap().0
}

#[tokio::test]
async fn an_approval_answered_503_is_finished_by_repeating_it() {
    let dir = tempfile::tempdir().unwrap();
    let stack = stack_refusing(dir.path(), &[], "action.approved", 1).await;
    let c = Client::new(stack.url());
    let t = tenant(&c, "again", json!({})).await;
    let (url, calls) = recording_connector().await;
    let id = propose(&c, &t, &url, "high").await;
    assert_eq!(approve(&c, &t, &id).await, 503, "the event could not be queued");
    // Saved, so the repeat is a conflict; but it queues the event and signals the waiting saga.
    assert_eq!(approve(&c, &t, &id).await, 409);
    wait_for_action(&c, &t.member, &id, "executed").await;
    wait_for_events(&c, &t.admin, &id, &["action.proposed", "action.approved", "action.executed"]).await;
    // Once more after all went through (the token spent, the event kept once), and a different review: refused as before.
    assert_eq!(approve(&c, &t, &id).await, 409);
    let (s, _) = c.call("POST", &format!("/v1/actions/{id}/reject"), &t.approver, None).await.unwrap();
    assert_eq!(s, 409);
    assert!(stack.settle(std::time::Duration::from_secs(10)).await);
    wait_for_events(&c, &t.admin, &id, &["action.proposed", "action.approved", "action.executed"]).await;
    assert_eq!(*calls.lock().unwrap(), ["/refund"]);
    stack.stop().await;
}

#[tokio::test]
async fn an_approval_nobody_repeats_is_finished_when_the_approval_wait_ends() {
    let dir = tempfile::tempdir().unwrap();
    let stack = stack_refusing(dir.path(), &[("KEEL_APPROVAL_TIMEOUT_SECS", "1")], "action.approved", 1).await;
    let c = Client::new(stack.url());
    let t = tenant(&c, "late", json!({})).await;
    let (url, calls) = recording_connector().await;
    let id = propose(&c, &t, &url, "high").await;
    assert_eq!(approve(&c, &t, &id).await, 503);
    wait_for_action(&c, &t.member, &id, "executed").await;
    wait_for_events(&c, &t.admin, &id, &["action.proposed", "action.approved", "action.executed"]).await;
    assert_eq!(*calls.lock().unwrap(), ["/refund"]);
    stack.stop().await;
}

#[tokio::test]
async fn an_undo_answered_503_is_finished_by_repeating_it() {
    let dir = tempfile::tempdir().unwrap();
    let stack = stack_refusing(dir.path(), &[], "action.undo_requested", 1).await;
    let c = Client::new(stack.url());
    let t = tenant(&c, "redo", json!({"autonomy": "unattended"})).await;
    let (url, calls) = recording_connector().await;
    let id = propose(&c, &t, &url, "low").await;
    wait_for_action(&c, &t.member, &id, "executed").await;
    let undo = format!("/v1/actions/{id}/undo");
    assert_eq!(c.call("POST", &undo, &t.member, None).await.unwrap().0, 503);
    assert_eq!(c.call("POST", &undo, &t.member, None).await.unwrap().0, 409, "one undo, already under way");
    wait_for_action(&c, &t.member, &id, "undone").await;
    wait_for_events(&c, &t.admin, &id, &["action.proposed", "action.executed", "action.undo_requested", "action.undone"]).await;
    assert_eq!(*calls.lock().unwrap(), ["/refund", "/undo"]);
    stack.stop().await;
}

#[tokio::test]
async fn a_proposal_answered_503_is_recorded_when_its_key_is_replayed() {
    let dir = tempfile::tempdir().unwrap();
    let stack = stack_refusing(dir.path(), &[], "action.proposed", 1).await;
    let c = Client::new(stack.url());
    let t = tenant(&c, "replay", json!({})).await;
    let (url, _) = recording_connector().await;
    let (s, r) = c.call("PUT", "/v1/tools/refund", &t.admin, Some(refund(&url, "high"))).await.unwrap();
    assert_eq!(s, 200, "{r}");
    let proposal = json!({"tool": "refund", "args": {}, "idempotency_key": "p-1"});
    let (s, r) = c.call("POST", "/v1/actions", &t.member, Some(proposal.clone())).await.unwrap();
    assert_eq!(s, 503, "{r}");
    let (s, a) = c.call("POST", "/v1/actions", &t.member, Some(proposal)).await.unwrap();
    assert_eq!((s, &a["status"]), (200, &json!("pending_approval")), "{a}");
    let id = a["action_id"].as_str().unwrap();
    let chain = wait_for_events(&c, &t.admin, id, &["action.proposed"]).await;
    assert_eq!(chain[0]["event"]["outcome"]["status"], "pending_approval");
    assert_eq!(chain[0]["event"]["principal"], "ann");
    // Approved, it runs as any other.
    assert_eq!(approve(&c, &t, id).await, 200);
    wait_for_action(&c, &t.member, id, "executed").await;
    stack.stop().await;
}
