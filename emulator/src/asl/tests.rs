use super::interpreter::fail;
use super::*;
use crate::store::Db;
use async_trait::async_trait;
use keel_core::ports::{ExecutionStatus, Saga};
use keel_core::StoreError;
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::Duration;
use std::sync::Mutex;

type Respond = dyn Fn(&str, usize, &Value) -> Result<Value, TaskFailure> + Send + Sync;

/// Plays the tools function: records each step it is asked for and
/// answers with `respond(step, how often that step was asked before, payload)`.
struct Script {
    calls: Mutex<Vec<String>>,
    respond: Box<Respond>,
}

impl Script {
    fn new(respond: impl Fn(&str, usize, &Value) -> Result<Value, TaskFailure> + Send + Sync + 'static) -> Self {
        Self { calls: Mutex::new(vec![]), respond: Box::new(respond) }
    }
    fn calls(&self) -> Vec<String> {
        self.calls.lock().unwrap().clone()
    }
}

#[async_trait]
impl TaskRunner for Script {
    async fn invoke(&self, _function: &str, payload: Value) -> Result<Value, TaskFailure> {
        let step = payload["step"].as_str().unwrap_or_default().to_string();
        let nth = {
            let mut calls = self.calls.lock().unwrap();
            let nth = calls.iter().filter(|c| **c == step).count();
            calls.push(step.clone());
            nth
        };
        (self.respond)(&step, nth, &payload)
    }
}

fn saga() -> Value {
    serde_json::from_str(include_str!("../../../infra/statemachines/action.asl.json")).unwrap()
}

fn input(operation: &str, approval_timeout: Option<f64>) -> Value {
    json!({"tenant": "acme", "action_id": "a1", "operation": operation,
        "approval": approval_timeout.is_some(), "approval_timeout_seconds": approval_timeout.unwrap_or(0.0)})
}

/// Three steps; the second fails once with a retryable error.
fn three_steps(step: &str, nth: usize, _: &Value) -> Result<Value, TaskFailure> {
    match (step, nth) {
        ("execute", 1) => Err(fail("Keel.Retryable", "connector answered 503")),
        ("execute", n) => Ok(json!({"done": n >= 3})),
        _ => Err(fail("Keel.Failed", format!("unexpected step {step}"))),
    }
}

#[tokio::test]
async fn runs_each_step_in_turn_retrying_transient_failures() {
    let script = Script::new(three_steps);
    let out = execute(&saga(), input("execute", None), &script, 0.0, &Callbacks::default()).await.unwrap();
    assert_eq!(script.calls(), vec!["execute"; 4]);
    assert_eq!(out["progress"]["Payload"]["done"], true);
}

#[tokio::test]
async fn a_step_failing_for_good_compensates_the_completed_steps_then_fails() {
    // Step 1 runs, step 2 fails for good; two compensations run before `done`.
    let script = Script::new(|step, nth, _| match (step, nth) {
        ("execute", 0) => Ok(json!({"done": false})),
        ("execute", _) => Err(fail("Keel.Failed", "connector refused the action: 400")),
        ("compensate", n) => Ok(json!({"done": n >= 2})),
        ("fail", _) => Ok(json!({"recorded": true})),
        _ => Err(fail("Keel.Failed", "unexpected")),
    });
    let err = execute(&saga(), input("execute", None), &script, 0.0, &Callbacks::default()).await.unwrap_err();
    assert_eq!(err.error, "Keel.ActionFailed");
    assert_eq!(script.calls(), vec!["execute", "execute", "compensate", "compensate", "compensate", "fail"]);
}

#[tokio::test]
async fn undo_runs_only_the_reverse_compensation() {
    let script = Script::new(|step, nth, _| match step {
        "compensate" => Ok(json!({"done": nth >= 1})),
        _ => Err(fail("Keel.Failed", "unexpected")),
    });
    execute(&saga(), input("compensate", None), &script, 0.0, &Callbacks::default()).await.unwrap();
    assert_eq!(script.calls(), vec!["compensate", "compensate"]);
}

/// Waits on the task token: the approver's call (or the function itself) completes it.
async fn with_approval(answer: Option<Result<Value, TaskFailure>>, timeout: f64) -> (Result<Value, TaskFailure>, Vec<String>) {
    let callbacks = Arc::new(Callbacks::default());
    let tokens: Arc<Mutex<Vec<String>>> = Arc::default();
    let seen = tokens.clone();
    let script = Script::new(move |step, nth, payload| match step {
        "await_approval" => {
            seen.lock().unwrap().push(payload["task_token"].as_str().unwrap().to_string());
            Ok(json!({"waiting": true}))
        }
        "expire" => Ok(json!({"expired": true})),
        "execute" => three_steps(step, nth + 2, payload),
        _ => Err(fail("Keel.Failed", "unexpected")),
    });
    let approver = {
        let (callbacks, tokens) = (callbacks.clone(), tokens.clone());
        tokio::spawn(async move {
            let Some(answer) = answer else { return };
            loop {
                let token = tokens.lock().unwrap().first().cloned();
                if let Some(token) = token {
                    callbacks.complete(&token, answer).unwrap();
                    return;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    };
    let out = execute(&saga(), input("execute", Some(timeout)), &script, 0.0, &callbacks).await;
    approver.await.unwrap();
    (out, script.calls())
}

#[tokio::test]
async fn an_approval_sends_the_waiting_task_on() {
    let (out, calls) = with_approval(Some(Ok(json!({"approved_by": "bob"}))), 5.0).await;
    assert_eq!(out.unwrap()["approved"], json!({"approved_by": "bob"}));
    assert_eq!(calls, vec!["await_approval", "execute", "execute"]);
}

#[tokio::test]
async fn a_rejection_closes_the_saga_without_running_anything() {
    let (out, calls) = with_approval(Some(Err(fail("Keel.Rejected", "rejected by bob"))), 5.0).await;
    assert_eq!(out.unwrap()["error"]["Error"], "Keel.Rejected");
    assert_eq!(calls, vec!["await_approval"]);
}

#[tokio::test]
async fn an_approval_that_never_comes_times_out_and_expires() {
    let (out, calls) = with_approval(None, 0.05).await;
    assert_eq!(out.unwrap()["error"]["Error"], "States.Timeout");
    assert_eq!(calls, vec!["await_approval", "expire"]);
}

#[tokio::test]
async fn executions_run_on_the_sagas_runtime_whoever_starts_them() {
    let dir = tempfile::tempdir().unwrap();
    let saga = LocalSaga::new(Db::open(&dir.path().join("keel.sqlite")).unwrap(), saga(), 0.0);
    let threads: Arc<Mutex<Vec<Option<String>>>> = Arc::default();
    let seen = threads.clone();
    saga.connect(Arc::new(Script::new(move |_, _, _| {
        seen.lock().unwrap().push(std::thread::current().name().map(str::to_string));
        Ok(json!({"done": true}))
    })));
    // Started from a background thread with a runtime of its own, as the
    // queue consumers' is; that runtime ends with the thread.
    let starter = saga.clone();
    std::thread::Builder::new()
        .name("starter".into())
        .spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            runtime.block_on(starter.start("x1", input("execute", None))).unwrap();
        })
        .unwrap()
        .join()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while matches!(saga.status("x1").await.unwrap(), ExecutionStatus::Running) {
        assert!(std::time::Instant::now() < deadline, "the execution died with its starter's runtime");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(matches!(saga.status("x1").await.unwrap(), ExecutionStatus::Succeeded(_)));
    assert!(!threads.lock().unwrap().is_empty());
    assert!(threads.lock().unwrap().iter().all(|t| t.as_deref() != Some("starter")));
}

#[tokio::test]
async fn completing_an_unknown_or_finished_task_is_refused() {
    assert!(matches!(Callbacks::default().complete("nope", Ok(json!({}))), Err(StoreError::ConditionFailed)));
}
