//! The saga's task steps (`infra/statemachines/action.asl.json`). Each is
//! idempotent: it reloads the action, does only what is not yet recorded on
//! it, and saves with a version check, so Step Functions retries, duplicate
//! deliveries and re-runs after a restart change nothing twice. A lost race
//! answers a retryable error and the saga's Retry runs the step again.

use keel_core::chain::DecisionKind;
use crate::{lost_race, Action, ACTION_CHANGED, ActionStatus, StepRun, Tools};
use keel_core::ids::TenantId;
use keel_core::KeelError;
use serde::Deserialize;
use serde_json::{json, Value};

/// What the saga hands to `run_step`.
#[derive(Debug, Deserialize)]
pub struct StepInput {
    pub step: String,
    pub tenant: String,
    pub action_id: String,
    #[serde(default)]
    pub operation: Option<String>,
    /// `await_approval`: the token the saga waits on.
    #[serde(default)]
    pub task_token: Option<String>,
    /// `fail`: the execution's state, with the caught `error` and `compensation_error`.
    #[serde(default)]
    pub execution_input: Option<Value>,
}

/// A lost race with another writer of the action: retry the step.
fn retry_on_conflict(e: KeelError) -> KeelError {
    match e {
        KeelError::Conflict(m) => KeelError::Unavailable(format!("{m} (the saga retries this step)")),
        other => other,
    }
}

impl Tools {
    pub async fn run_step(&self, input: StepInput) -> Result<Value, KeelError> {
        let tenant = TenantId::parse(&input.tenant)?;
        let (action, version) = self.action(&tenant, &input.action_id).await?;
        let undo = input.operation.as_deref() == Some("compensate");
        // A step continues the trace of the request that last moved the action.
        let context = action.trace.clone();
        let work = async move {
            // Made inside the action's context: an exporter takes the trace id from it.
            let span = tracing::info_span!("saga.step", otel.name = %format!("saga.{}", input.step), keel.action_id = %input.action_id);
            tracing::Instrument::instrument(self.step(&tenant, input, action, version, undo), span).await
        };
        let result = match context {
            Some(context) => keel_core::trace::scope(context, work).await,
            None => work.await,
        };
        result.map_err(retry_on_conflict)
    }

    async fn step(&self, tenant: &TenantId, input: StepInput, action: Action, version: u64, undo: bool) -> Result<Value, KeelError> {
        let tenant = tenant.clone();
        match input.step.as_str() {
            "await_approval" => {
                let token = input.task_token.ok_or_else(|| KeelError::BadRequest("await_approval needs task_token".into()))?;
                self.await_approval(&tenant, action, version, token).await
            }
            "expire" => self.expire(&tenant, action, version).await,
            "execute" => self.execute_next(&tenant, action, version).await,
            "compensate" => self.compensate_last(&tenant, action, version, undo).await,
            "fail" => self.fail(&tenant, action, version, undo, input.execution_input.unwrap_or(Value::Null)).await,
            other => Err(KeelError::BadRequest(format!("unknown saga step {other:?}"))),
        }
    }

    /// Stores the saga's task token on a pending action; completes the task
    /// itself when the review came first.
    async fn await_approval(&self, tenant: &TenantId, mut action: Action, version: u64, token: String) -> Result<Value, KeelError> {
        let sent = match action.status {
            ActionStatus::PendingApproval => {
                action.approval_token = Some(token);
                // Bookkeeping, not a change a reviewer must see: `updated_at` stays
                // as the reviewer loaded it (a review sends it back as `seen_updated_at`).
                self.actions.save(tenant, &action, version).await.map_err(lost_race(ACTION_CHANGED))?;
                return Ok(json!({"waiting": true}));
            }
            ActionStatus::Rejected | ActionStatus::Expired | ActionStatus::Suggested => {
                self.saga.send_task_failure(&token, "Keel.Rejected", "the action was not approved").await
            }
            _ => self.saga.send_task_success(&token, json!({"approved": true})).await,
        };
        sent?;
        Ok(json!({"waiting": false}))
    }

    /// The approval wait timed out: expire the action unless it was approved meanwhile.
    async fn expire(&self, tenant: &TenantId, mut action: Action, version: u64) -> Result<Value, KeelError> {
        match action.status {
            ActionStatus::PendingApproval | ActionStatus::Expired => {
                // Expired already: a retry after the record failed (the log keeps one, same event id).
                if action.status == ActionStatus::PendingApproval {
                    action.status = ActionStatus::Expired;
                    action.approval_token = None;
                    self.save(tenant, &mut action, version).await?;
                    self.uncount(tenant, &action.tool, action.counted.as_ref()).await?;
                }
                self.record(tenant, &action, DecisionKind::ActionExpired, "saga", json!({"status": action.status})).await?;
                Ok(json!({"expired": true}))
            }
            // Reviewed in time: the review's request may have failed before its event or signal.
            ActionStatus::Running | ActionStatus::Rejected => {
                self.complete_review(tenant, &action).await?;
                Ok(json!({"expired": action.status == ActionStatus::Rejected}))
            }
            _ => Ok(json!({"expired": true})),
        }
    }

    /// Runs the first step not yet done; `done` after the last.
    async fn execute_next(&self, tenant: &TenantId, mut action: Action, version: u64) -> Result<Value, KeelError> {
        if action.status == ActionStatus::Executed {
            // Recorded again in case the first record was lost: the log keeps one (same event id).
            self.record_outcome(tenant, &action, DecisionKind::ActionExecuted).await?;
            return Ok(json!({"done": true}));
        }
        if action.status != ActionStatus::Running {
            return Err(KeelError::Conflict(format!("action is {:?}, not running", action.status)));
        }
        let tool = self.tool_at(tenant, &action.tool, action.tool_version).await?;
        let Some(i) = action.steps.iter().position(|s| s.outcome.is_none()) else {
            return self.finish(tenant, action, version).await;
        };
        let spec = tool
            .steps
            .iter()
            .find(|s| s.name == action.steps[i].name)
            .ok_or_else(|| KeelError::Internal(format!("tool {} has no step {}", tool.name, action.steps[i].name)))?;
        let key = step_key(tenant, &action, &action.steps[i]);
        let body = json!({"action_id": action.action_id, "tool": action.tool, "step": spec.name, "args": action.args});
        let outcome = self.call_connector(tenant, &spec.connector, &key, &body).await?;
        action.steps[i].outcome = Some(outcome);
        if i + 1 < action.steps.len() {
            self.save(tenant, &mut action, version).await?;
            return Ok(json!({"done": false, "step": spec.name}));
        }
        self.finish(tenant, action, version).await
    }

    async fn finish(&self, tenant: &TenantId, mut action: Action, version: u64) -> Result<Value, KeelError> {
        action.status = ActionStatus::Executed;
        self.save(tenant, &mut action, version).await?;
        self.record_outcome(tenant, &action, DecisionKind::ActionExecuted).await?;
        Ok(json!({"done": true}))
    }

    /// Compensates the latest completed step not yet compensated (reverse
    /// order); `done` when none is left. For an undo that ends the action undone.
    async fn compensate_last(&self, tenant: &TenantId, mut action: Action, version: u64, undo: bool) -> Result<Value, KeelError> {
        match (undo, action.status) {
            (true, ActionStatus::Undone) => {
                // A retry after the record failed: the log keeps one (same event id).
                self.record_outcome(tenant, &action, DecisionKind::ActionUndone).await?;
                return Ok(json!({"done": true}));
            }
            (false, ActionStatus::Failed) => return Ok(json!({"done": true})),
            (true, ActionStatus::Undoing) | (false, ActionStatus::Compensating) => {}
            (false, ActionStatus::Running) => {
                // The first compensation after a failed step: no approval or retry may run it on.
                action.status = ActionStatus::Compensating;
                self.save(tenant, &mut action, version).await?;
                return Ok(json!({"done": false}));
            }
            (_, status) => return Err(KeelError::Conflict(format!("action is {status:?}; nothing to compensate"))),
        }
        let tool = self.tool_at(tenant, &action.tool, action.tool_version).await?;
        let last = action.steps.iter().rposition(|s| s.outcome.is_some() && s.compensation.is_none());
        let Some(i) = last else {
            if undo {
                action.status = ActionStatus::Undone;
                self.save(tenant, &mut action, version).await?;
                self.record_outcome(tenant, &action, DecisionKind::ActionUndone).await?;
            }
            return Ok(json!({"done": true}));
        };
        let spec = tool.steps.iter().find(|s| s.name == action.steps[i].name);
        action.steps[i].compensation = Some(match spec.and_then(|s| s.compensation.as_ref()) {
            None => json!({"skipped": "this step has no compensation"}),
            Some(compensation) => {
                let key = format!("{}:undo", step_key(tenant, &action, &action.steps[i]));
                let body = json!({"action_id": action.action_id, "tool": action.tool, "step": action.steps[i].name,
                    "args": action.args, "outcome": action.steps[i].outcome});
                self.call_connector(tenant, compensation, &key, &body).await?
            }
        });
        self.save(tenant, &mut action, version).await?;
        Ok(json!({"done": false, "compensated": action.steps[i].name}))
    }

    /// Records an operation the saga finished, with what each step returned.
    async fn record_outcome(&self, tenant: &TenantId, action: &Action, kind: DecisionKind) -> Result<(), KeelError> {
        self.record(tenant, action, kind, "saga", json!({"steps": action.steps})).await
    }

    /// Records what failed for good. A failed execution ends failed (its
    /// completed steps compensated); a failed undo leaves the action executed.
    /// An operation that finished and failed only to queue its decision
    /// event keeps its status and records the event now.
    async fn fail(&self, tenant: &TenantId, mut action: Action, version: u64, undo: bool, state: Value) -> Result<Value, KeelError> {
        let finished = if undo { (ActionStatus::Undone, DecisionKind::ActionUndone) } else { (ActionStatus::Executed, DecisionKind::ActionExecuted) };
        if action.status == finished.0 {
            self.record_outcome(tenant, &action, finished.1).await?;
            return Ok(json!({"recorded": true}));
        }
        let cause = |key: &str| {
            let e = &state[key];
            e.get("Cause").and_then(Value::as_str).map(str::to_string).or_else(|| (!e.is_null()).then(|| e.to_string()))
        };
        let errors: Vec<String> = [cause("error"), cause("compensation_error").map(|c| format!("compensation failed: {c}"))]
            .into_iter()
            .flatten()
            .collect();
        let recorded = if undo { action.status == ActionStatus::Executed } else { action.status == ActionStatus::Failed };
        if !recorded {
            action.error = Some(if errors.is_empty() { "the saga failed".into() } else { errors.join("; ") });
            action.status = if undo { ActionStatus::Executed } else { ActionStatus::Failed };
            self.save(tenant, &mut action, version).await?;
            if !undo {
                self.uncount(tenant, &action.tool, action.counted.as_ref()).await?;
            }
        }
        // Recorded again on a retry: the log keeps one (same event id).
        let kind = if undo { DecisionKind::ActionUndoFailed } else { DecisionKind::ActionFailed };
        self.record(tenant, &action, kind, "saga", json!({"error": action.error, "steps": action.steps})).await?;
        Ok(json!({"recorded": true}))
    }
}

/// The idempotency key a connector gets for one step of one action.
fn step_key(tenant: &TenantId, action: &Action, step: &StepRun) -> String {
    format!("{tenant}:{}:{}", action.idempotency_key, step.name)
}
