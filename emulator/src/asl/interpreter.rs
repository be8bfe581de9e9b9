//! The ASL interpreter: states, paths, retries, catches and task tokens.

use async_trait::async_trait;
use keel_core::StoreError;
use serde_json::{json, Map, Value};
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;
use tokio::sync::oneshot;

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

pub(crate) fn fail(error: &str, cause: impl Into<String>) -> TaskFailure {
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
                name = choose(state, &effective).ok_or_else(|| fail("States.NoChoiceMatched", format!("in state {name}")))?;
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
                (data, name) = catch(state, failure, data)?;
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

/// The state a Choice state goes to next, if any rule (or its Default) takes it.
fn choose(state: &Value, input: &Value) -> Option<String> {
    let rules = state["Choices"].as_array().map(Vec::as_slice).unwrap_or_default();
    let matched = rules.iter().find(|r| choice_matches(r, input)).and_then(|r| r["Next"].as_str());
    matched.or_else(|| state["Default"].as_str()).map(str::to_string)
}

/// A failure a Catch of `state` takes: the data with the error at its
/// ResultPath, and the state to go to; the failure itself when none does.
fn catch(state: &Value, failure: TaskFailure, data: Value) -> Result<(Value, String), TaskFailure> {
    let catcher = state["Catch"].as_array().and_then(|c| c.iter().find(|c| matches_error(&c["ErrorEquals"], &failure.error)));
    let Some(catcher) = catcher else { return Err(failure) };
    let error = json!({"Error": failure.error, "Cause": failure.cause});
    let data = match catcher.get("ResultPath").and_then(Value::as_str) {
        Some(p) => write_path(data, p, error)?,
        None => error,
    };
    Ok((data, catcher["Next"].as_str().unwrap_or_default().to_string()))
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

