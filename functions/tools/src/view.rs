//! Actions as clients see them: every field but the saga's task token.

use crate::policy::PolicyDecision;
use crate::{Action, ActionStatus, Approval, StepRun};
use serde::Serialize;
use serde_json::Value;

/// An action, as `GET /v1/actions/{id}` and every action route answer it.
#[derive(Serialize, schemars::JsonSchema)]
pub(crate) struct ActionView {
    pub action_id: String,
    pub tool: String,
    pub tool_version: u64,
    pub args: Value,
    pub idempotency_key: String,
    pub proposer: String,
    pub status: ActionStatus,
    /// The dry run's answer, the requests each step will send, impact and rollback plan.
    pub preview: Value,
    pub approvals: Vec<Approval>,
    pub steps: Vec<StepRun>,
    pub error: Option<String>,
    pub policy: Vec<PolicyDecision>,
    pub workflow: Option<String>,
    pub created_at: String,
    pub updated_at: String,
}

/// A page of actions, newest first.
#[derive(Serialize, schemars::JsonSchema)]
pub(crate) struct ActionPage {
    pub actions: Vec<ActionView>,
    /// The cursor of the next page; absent on the last.
    pub next_cursor: Option<String>,
}

pub(crate) fn action_view(action: &Action) -> ActionView {
    let a = action.clone();
    ActionView {
        action_id: a.action_id,
        tool: a.tool,
        tool_version: a.tool_version,
        args: a.args,
        idempotency_key: a.idempotency_key,
        proposer: a.proposer,
        status: a.status,
        preview: a.preview,
        approvals: a.approvals,
        steps: a.steps,
        error: a.error,
        policy: a.policy,
        workflow: a.workflow,
        created_at: a.created_at,
        updated_at: a.updated_at,
    }
}
