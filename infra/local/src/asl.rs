//! An in-process executor of the Amazon States Language subset Keel's saga
//! uses: Pass, Task (`lambda:invoke` and `lambda:invoke.waitForTaskToken`,
//! with Retry, Catch and TimeoutSeconds(Path)), Choice, Succeed and Fail;
//! Parameters with `.$` paths (`$$.Task.Token` from the context object),
//! InputPath, ResultPath, OutputPath.
//! `LocalSaga` runs `infra/statemachines/*.asl.json` with it, durably: every
//! execution is recorded in SQLite and resumed after a restart (steps are
//! idempotent, so re-running one is safe).

use crate::sqlite::{backend, Db};
use async_trait::async_trait;
use keel_core::ports::{ExecutionStatus, Saga};
use keel_core::StoreError;
use rusqlite::{params, OptionalExtension};
use serde_json::{json, Map, Value};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use tokio::task::JoinSet;
use tokio::sync::oneshot;
use std::time::Duration;

/// A task failure as Step Functions names it.
#[derive(Clone, Debug, PartialEq)]
pub struct TaskFailure {
    pub error: String,
    pub cause: String,
}

/// Runs a Task state's resource (a Lambda function, locally in-process).
#[async_trait]
pub trait TaskRunner: Send + Sync {
    async fn invoke(&self, function: &str, payload: Value) -> Result<Value, TaskFailure>;
}

fn fail(error: &str, cause: impl Into<String>) -> TaskFailure {
    TaskFailure { error: error.into(), cause: cause.into() }
}

/// Reads `$`, `$.a.b` from a document.
fn read_path(doc: &Value, path: &str) -> Result<Value, TaskFailure> {
    if path.starts_with("$$") {
        return Err(fail("States.Runtime", format!("context path {path} outside Parameters")));
    }
    let rest = path.strip_prefix('$').ok_or_else(|| fail("States.Runtime", format!("bad path {path}")))?;
    let mut cur = doc;
    for part in rest.split('.').filter(|p| !p.is_empty()) {
        cur = cur.get(part).ok_or_else(|| fail("States.Runtime", format!("path {path} not found in input")))?;
    }
    Ok(cur.clone())
}

/// Writes `value` at `$.a.b` into `doc` (`$` replaces it).
fn write_path(doc: Value, path: &str, value: Value) -> Result<Value, TaskFailure> {
    let parts: Vec<&str> = path.trim_start_matches('$').split('.').filter(|p| !p.is_empty()).collect();
    if parts.is_empty() {
        return Ok(value);
    }
    let mut doc = if doc.is_object() { doc } else { json!({}) };
    let mut cur = &mut doc;
    for (i, part) in parts.iter().enumerate() {
        let obj = cur.as_object_mut().ok_or_else(|| fail("States.Runtime", format!("cannot write {path}")))?;
        if i == parts.len() - 1 {
            obj.insert((*part).to_string(), value);
            break;
        }
        cur = obj.entry((*part).to_string()).or_insert_with(|| json!({}));
    }
    Ok(doc)
}

/// Resolves a Parameters template: keys ending in `.$` take their value from
/// the input (`$…`) or the context object (`$$…`).
fn resolve(template: &Value, input: &Value, context: &Value) -> Result<Value, TaskFailure> {
    match template {
        Value::Object(m) => {
            let mut out = Map::new();
            for (k, v) in m {
                let value = match (k.strip_suffix(".$"), v.as_str()) {
                    (Some(_), Some(path)) => match path.strip_prefix('$') {
                        Some(rest) if rest.starts_with('$') => read_path(context, rest)?,
                        _ => read_path(input, path)?,
                    },
                    _ => resolve(v, input, context)?,
                };
                out.insert(k.strip_suffix(".$").unwrap_or(k).to_string(), value);
            }
            Ok(Value::Object(out))
        }
        other => Ok(other.clone()),
    }
}

fn matches_error(list: &Value, error: &str) -> bool {
    list.as_array()
        .is_some_and(|l| l.iter().any(|e| e == "States.ALL" || e.as_str() == Some(error) || (e == "States.TaskFailed" && !error.starts_with("States."))))
}

fn choice_matches(rule: &Value, input: &Value) -> bool {
    let Some(var) = rule.get("Variable").and_then(Value::as_str) else { return false };
    let Ok(value) = read_path(input, var) else { return false };
    if let Some(s) = rule.get("StringEquals") {
        return &value == s;
    }
    if let Some(b) = rule.get("BooleanEquals") {
        return &value == b;
    }
    if let Some(n) = rule.get("NumericEquals") {
        return value.as_f64() == n.as_f64();
    }
    false
}

/// Tasks waiting for their token (`.waitForTaskToken`), by token.
#[derive(Default)]
pub struct Callbacks {
    waiting: Mutex<HashMap<String, oneshot::Sender<Result<Value, TaskFailure>>>>,
}

impl Callbacks {
    fn wait(&self) -> (String, oneshot::Receiver<Result<Value, TaskFailure>>) {
        let (token, (tx, rx)) = (uuid::Uuid::new_v4().simple().to_string(), oneshot::channel());
        self.waiting.lock().unwrap_or_else(|p| p.into_inner()).insert(token.clone(), tx);
        (token, rx)
    }

    fn forget(&self, token: &str) {
        self.waiting.lock().unwrap_or_else(|p| p.into_inner()).remove(token);
    }

    /// Completes the task waiting for `token`; `ConditionFailed` when none is (timed out, or done).
    pub fn complete(&self, token: &str, result: Result<Value, TaskFailure>) -> Result<(), StoreError> {
        let waiting = self.waiting.lock().unwrap_or_else(|p| p.into_inner()).remove(token);
        waiting.ok_or(StoreError::ConditionFailed)?.send(result).map_err(|_| StoreError::ConditionFailed)
    }
}

/// Runs a state machine definition to its end.
pub async fn execute(
    definition: &Value,
    input: Value,
    tasks: &dyn TaskRunner,
    interval_scale: f64,
    callbacks: &Callbacks,
) -> Result<Value, TaskFailure> {
    let states = definition.get("States").ok_or_else(|| fail("States.Runtime", "definition has no States"))?;
    let mut name = definition["StartAt"].as_str().unwrap_or_default().to_string();
    let mut data = input;
    for _ in 0..1_000 {
        let state = states.get(&name).ok_or_else(|| fail("States.Runtime", format!("no state {name}")))?;
        let kind = state["Type"].as_str().unwrap_or_default();
        let effective = match state.get("InputPath").and_then(Value::as_str) {
            Some(p) => read_path(&data, p)?,
            None => data.clone(),
        };
        let next = |state: &Value| state.get("Next").and_then(Value::as_str).map(str::to_string);
        let result = match kind {
            "Pass" => Ok(match state.get("Result") {
                Some(r) => r.clone(),
                None => match state.get("Parameters") {
                    Some(p) => resolve(p, &effective, &Value::Null)?,
                    None => effective.clone(),
                },
            }),
            "Succeed" => return Ok(effective),
            "Fail" => {
                return Err(fail(
                    state["Error"].as_str().unwrap_or("States.Fail"),
                    state["Cause"].as_str().unwrap_or_default(),
                ))
            }
            "Choice" => {
                let rules = state["Choices"].as_array().cloned().unwrap_or_default();
                let target = rules
                    .iter()
                    .find(|r| choice_matches(r, &effective))
                    .and_then(|r| r["Next"].as_str())
                    .or_else(|| state["Default"].as_str())
                    .ok_or_else(|| fail("States.NoChoiceMatched", format!("in state {name}")))?;
                name = target.to_string();
                continue;
            }
            "Task" => run_task(state, &effective, tasks, interval_scale, callbacks).await,
            other => return Err(fail("States.Runtime", format!("state type {other} is not supported locally"))),
        };
        match result {
            Ok(result) => {
                data = match state.get("ResultPath") {
                    Some(Value::Null) => data,
                    Some(Value::String(p)) => write_path(data, p, result)?,
                    _ => result,
                };
                if let Some(p) = state.get("OutputPath").and_then(Value::as_str) {
                    data = read_path(&data, p)?;
                }
            }
            Err(failure) => {
                let catcher = state["Catch"]
                    .as_array()
                    .and_then(|c| c.iter().find(|c| matches_error(&c["ErrorEquals"], &failure.error)));
                let Some(catcher) = catcher else { return Err(failure) };
                let error = json!({"Error": failure.error, "Cause": failure.cause});
                data = match catcher.get("ResultPath").and_then(Value::as_str) {
                    Some(p) => write_path(data, p, error)?,
                    None => error,
                };
                name = catcher["Next"].as_str().unwrap_or_default().to_string();
                continue;
            }
        }
        if state.get("End").and_then(Value::as_bool) == Some(true) {
            return Ok(data);
        }
        name = next(state).ok_or_else(|| fail("States.Runtime", format!("state {name} has neither Next nor End")))?;
    }
    Err(fail("States.Runtime", "too many transitions"))
}

async fn run_task(
    state: &Value,
    input: &Value,
    tasks: &dyn TaskRunner,
    interval_scale: f64,
    callbacks: &Callbacks,
) -> Result<Value, TaskFailure> {
    let resource = state["Resource"].as_str().unwrap_or_default();
    let Some(resource) = resource.strip_suffix(".waitForTaskToken") else {
        return invoke_with_retries(state, resource, input, &Value::Null, tasks, interval_scale).await;
    };
    // Registered before the invocation: the function may complete its own task.
    let (token, result) = callbacks.wait();
    let context = json!({"Task": {"Token": token}});
    if let Err(f) = invoke_with_retries(state, resource, input, &context, tasks, interval_scale).await {
        callbacks.forget(&token);
        return Err(f);
    }
    let timeout = match (state.get("TimeoutSeconds"), state.get("TimeoutSecondsPath").and_then(Value::as_str)) {
        (Some(t), _) => t.as_f64(),
        (None, Some(path)) => read_path(input, path)?.as_f64(),
        (None, None) => Some(365.0 * 24.0 * 3600.0),
    }
    .ok_or_else(|| fail("States.Runtime", "TimeoutSeconds is not a number"))?;
    match tokio::time::timeout(Duration::from_secs_f64(timeout), result).await {
        Ok(Ok(outcome)) => outcome,
        Ok(Err(_)) => Err(fail("States.Runtime", "the task's callback was dropped")),
        Err(_) => {
            callbacks.forget(&token);
            Err(fail("States.Timeout", "no task success or failure before TimeoutSeconds"))
        }
    }
}

async fn invoke_with_retries(
    state: &Value,
    resource: &str,
    input: &Value,
    context: &Value,
    tasks: &dyn TaskRunner,
    interval_scale: f64,
) -> Result<Value, TaskFailure> {
    let params = match state.get("Parameters") {
        Some(p) => resolve(p, input, context)?,
        None => input.clone(),
    };
    let (function, payload, wrap) = if resource == "arn:aws:states:::lambda:invoke" {
        (params["FunctionName"].as_str().unwrap_or_default().to_string(), params["Payload"].clone(), true)
    } else {
        (resource.to_string(), params, false)
    };
    let retriers = state["Retry"].as_array().cloned().unwrap_or_default();
    let mut attempts = vec![0u32; retriers.len()];
    loop {
        match tasks.invoke(&function, payload.clone()).await {
            Ok(out) => return Ok(if wrap { json!({"Payload": out, "StatusCode": 200}) } else { out }),
            Err(failure) => {
                let Some(i) = retriers.iter().position(|r| matches_error(&r["ErrorEquals"], &failure.error)) else {
                    return Err(failure);
                };
                let r = &retriers[i];
                let max = r["MaxAttempts"].as_u64().unwrap_or(3) as u32;
                if attempts[i] >= max {
                    return Err(failure);
                }
                let wait = r["IntervalSeconds"].as_f64().unwrap_or(1.0)
                    * r["BackoffRate"].as_f64().unwrap_or(2.0).powi(attempts[i] as i32);
                attempts[i] += 1;
                tokio::time::sleep(Duration::from_secs_f64(wait * interval_scale)).await;
            }
        }
    }
}

/// The runner of a saga nobody connected: any Task state fails.
struct NoTasks;

#[async_trait]
impl TaskRunner for NoTasks {
    async fn invoke(&self, function: &str, _payload: Value) -> Result<Value, TaskFailure> {
        Err(fail("States.Runtime", format!("no task runner connected for {function}")))
    }
}

/// The saga port locally: the ASL file, run in-process, recorded in SQLite.
#[derive(Clone)]
pub struct LocalSaga(Arc<SagaInner>);

struct SagaInner {
    db: Db,
    definition: Value,
    runner: OnceLock<Arc<dyn TaskRunner>>,
    interval_scale: f64,
    callbacks: Callbacks,
    /// Executions in flight, so that `stop` can end them.
    executions: Mutex<JoinSet<()>>,
    /// Where executions run, whoever starts them: the runtime that made the
    /// saga (the local stack's), not a queue consumer's, whose background
    /// thread would make every step wait for a quiet moment, and whose end
    /// would end them.
    runtime: Option<tokio::runtime::Handle>,
}

impl LocalSaga {
    pub fn new(db: Db, definition: Value, interval_scale: f64) -> Self {
        let (executions, runtime) = (Mutex::default(), tokio::runtime::Handle::try_current().ok());
        let callbacks = Callbacks::default();
        Self(Arc::new(SagaInner { db, definition, runner: OnceLock::new(), interval_scale, callbacks, executions, runtime }))
    }

    /// Ends every execution in flight without recording a result, as a
    /// process exit would (they are still RUNNING, and the next start
    /// resumes them), and returns once none holds the database any more.
    pub async fn stop(&self) {
        let mut executions = std::mem::take(&mut *self.0.executions.lock().unwrap_or_else(PoisonError::into_inner));
        executions.abort_all();
        while executions.join_next().await.is_some() {}
    }

    /// Connects the task runner (the tools function), which itself needs the saga.
    pub fn connect(&self, runner: Arc<dyn TaskRunner>) {
        let _ = self.0.runner.set(runner);
    }

    /// Restarts executions a previous process left running.
    pub fn resume(&self) -> Result<usize, StoreError> {
        let running: Vec<(String, String)> = self.0.db.with(|c| {
            let mut stmt = c
                .prepare("SELECT name, input FROM executions WHERE status = 'RUNNING'")
                .map_err(backend)?;
            let rows = stmt
                .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
                .map_err(backend)?;
            rows.collect::<Result<Vec<_>, _>>().map_err(backend)
        })?;
        for (name, input) in &running {
            self.spawn(name.clone(), serde_json::from_str(input).unwrap_or(Value::Null));
        }
        Ok(running.len())
    }

    fn spawn(&self, name: String, input: Value) {
        let saga = self.0.clone();
        let mut executions = self.0.executions.lock().unwrap_or_else(PoisonError::into_inner);
        while executions.try_join_next().is_some() {} // forget the finished ones
        let execution = async move {
            let runner: Arc<dyn TaskRunner> = saga.runner.get().cloned().unwrap_or_else(|| Arc::new(NoTasks));
            let result = execute(&saga.definition, input, runner.as_ref(), saga.interval_scale, &saga.callbacks).await;
            let (status, output, error, cause) = match result {
                Ok(out) => ("SUCCEEDED", Some(out.to_string()), None, None),
                Err(f) => ("FAILED", None, Some(f.error), Some(f.cause)),
            };
            let execution = name.clone();
            let saved = saga
                .db
                .call(move |c| {
                    c.execute(
                        "UPDATE executions SET status = ?2, output = ?3, error = ?4, cause = ?5 WHERE name = ?1",
                        params![execution, status, output, error, cause],
                    )
                    .map_err(backend)
                })
                .await;
            if let Err(e) = saved {
                tracing::error!(error = %e, execution = %name, "could not record saga result");
            }
        };
        match &self.0.runtime {
            Some(runtime) => executions.spawn_on(execution, runtime),
            None => executions.spawn(execution),
        };
    }
}

#[async_trait]
impl Saga for LocalSaga {
    async fn start(&self, name: &str, input: Value) -> Result<String, StoreError> {
        let (execution, saved_input) = (name.to_string(), input.to_string());
        let inserted = self
            .0
            .db
            .call(move |c| {
                c.execute(
                    "INSERT OR IGNORE INTO executions (name, input, status) VALUES (?1, ?2, 'RUNNING')",
                    params![execution, saved_input],
                )
                .map_err(backend)
            })
            .await?;
        if inserted == 1 {
            self.spawn(name.to_string(), input);
        }
        Ok(name.to_string())
    }

    async fn status(&self, execution_id: &str) -> Result<ExecutionStatus, StoreError> {
        let execution = execution_id.to_string();
        let row: Option<(String, Option<String>, Option<String>, Option<String>)> = self
            .0
            .db
            .call(move |c| {
                c.query_row(
                    "SELECT status, output, error, cause FROM executions WHERE name = ?1",
                    params![execution],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
                )
                .optional()
                .map_err(backend)
            })
            .await?;
        match row {
            None => Err(StoreError::Backend(format!("no execution {execution_id}"))),
            Some((status, output, error, cause)) => Ok(match status.as_str() {
                "RUNNING" => ExecutionStatus::Running,
                "SUCCEEDED" => ExecutionStatus::Succeeded(output.and_then(|o| serde_json::from_str(&o).ok()).unwrap_or(Value::Null)),
                _ => ExecutionStatus::Failed { error: error.unwrap_or_default(), cause: cause.unwrap_or_default() },
            }),
        }
    }

    async fn send_task_success(&self, token: &str, output: Value) -> Result<(), StoreError> {
        self.0.callbacks.complete(token, Ok(output))
    }

    async fn send_task_failure(&self, token: &str, error: &str, cause: &str) -> Result<(), StoreError> {
        self.0.callbacks.complete(token, Err(fail(error, cause)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
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
        serde_json::from_str(include_str!("../../statemachines/action.asl.json")).unwrap()
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
                crate::sqlite::never_hold_the_connection_here();
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
}
