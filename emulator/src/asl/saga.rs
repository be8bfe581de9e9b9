//! `LocalSaga`: executions of one state machine, recorded in the store and
//! resumed after a restart.

use super::interpreter::{execute, fail, Callbacks, TaskFailure, TaskRunner};
use crate::store::{backend, Db};
use async_trait::async_trait;
use keel_core::ports::{ExecutionStatus, Saga};
use keel_core::StoreError;
use rusqlite::{params, OptionalExtension};
use serde_json::Value;
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use tokio::task::JoinSet;

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

