//! `Saga` over a Step Functions state machine. Execution names are
//! idempotency keys: starting a name that exists returns that execution.

use crate::sdk_message;
use async_trait::async_trait;
use aws_sdk_sfn::types::ExecutionStatus as SfnStatus;
use aws_sdk_sfn::Client;
use keel_core::ports::{ExecutionStatus, Saga};
use keel_core::StoreError;
use serde_json::Value;

#[derive(Clone)]
pub struct StepFunctionsSaga {
    client: Client,
    state_machine_arn: String,
}

impl StepFunctionsSaga {
    pub fn new(client: Client, state_machine_arn: impl Into<String>) -> Self {
        Self { client, state_machine_arn: state_machine_arn.into() }
    }

    /// `arn:…:stateMachine:M` → `arn:…:execution:M:name`.
    fn execution_arn(&self, name: &str) -> String {
        format!("{}:{name}", self.state_machine_arn.replacen(":stateMachine:", ":execution:", 1))
    }
}

#[async_trait]
impl Saga for StepFunctionsSaga {
    async fn start(&self, name: &str, input: Value) -> Result<String, StoreError> {
        let out = self
            .client
            .start_execution()
            .state_machine_arn(&self.state_machine_arn)
            .name(name)
            .input(input.to_string())
            .send()
            .await;
        match out {
            Ok(o) => Ok(o.execution_arn().to_string()),
            Err(e) if e.as_service_error().is_some_and(|se| se.is_execution_already_exists()) => {
                Ok(self.execution_arn(name))
            }
            Err(e) => Err(StoreError::Backend(sdk_message(&e))),
        }
    }

    async fn status(&self, execution_id: &str) -> Result<ExecutionStatus, StoreError> {
        let out = self
            .client
            .describe_execution()
            .execution_arn(execution_id)
            .send()
            .await
            .map_err(|e| StoreError::Backend(sdk_message(&e)))?;
        Ok(match out.status() {
            SfnStatus::Running | SfnStatus::PendingRedrive => ExecutionStatus::Running,
            SfnStatus::Succeeded => ExecutionStatus::Succeeded(
                out.output().and_then(|o| serde_json::from_str(o).ok()).unwrap_or(Value::Null),
            ),
            other => ExecutionStatus::Failed {
                error: out.error().unwrap_or(other.as_str()).to_string(),
                cause: out.cause().unwrap_or_default().to_string(),
            },
        })
    }

    async fn send_task_success(&self, token: &str, output: Value) -> Result<(), StoreError> {
        let out = self.client.send_task_success().task_token(token).output(output.to_string()).send().await;
        out.map(|_| ()).map_err(|e| {
            let gone = e.as_service_error().is_some_and(|se| se.is_task_timed_out() || se.is_invalid_token() || se.is_task_does_not_exist());
            task_gone_or(gone, sdk_message(&e))
        })
    }

    async fn send_task_failure(&self, token: &str, error: &str, cause: &str) -> Result<(), StoreError> {
        let out = self.client.send_task_failure().task_token(token).error(error).cause(cause).send().await;
        out.map(|_| ()).map_err(|e| {
            let gone = e.as_service_error().is_some_and(|se| se.is_task_timed_out() || se.is_invalid_token() || se.is_task_does_not_exist());
            task_gone_or(gone, sdk_message(&e))
        })
    }
}

/// A task that no longer waits (timed out, done, or never was) is a lost race
/// for the caller (`ConditionFailed`), not a backend failure.
fn task_gone_or(gone: bool, message: String) -> StoreError {
    if gone {
        StoreError::ConditionFailed
    } else {
        StoreError::Backend(message)
    }
}
