//! tools: governed actions. A tool is registered with a JSON Schema for its
//! input, one or more steps (each an HTTP connector with an optional
//! compensation), an optional dry-run connector, a risk level and an optional
//! autonomy cap. A proposed action (over HTTP or the actions queue) is
//! validated, gated by Cedar (Keel's defaults plus the tenant's policies),
//! previewed, and either run at once (policy and autonomy allow it) or held
//! for approval by a different principal. The saga (Step Functions in AWS, the
//! same ASL locally) waits for that approval on a task token, runs the steps
//! through `run_step` and compensates completed steps in reverse order when
//! one fails; every connector call carries an idempotency key.

mod connector;
mod listing;
mod view;
mod preview;
mod propose;
mod registry;
mod review;
pub mod lambda;
pub mod routes;
pub mod policy;
pub mod schema;
mod schema_cost;
mod steps;
mod store;

use connector::Connectors;
use keel_core::auth::Caller;
use keel_core::chain::{DecisionEvent, DecisionKind};
use keel_core::decisions::{admin_change_event, send_decision, send_decision_in, AdminChange};
use keel_core::config::Config;
use keel_core::ids::{new_id, parse_path_id, TenantId};
use keel_core::limits::{parse_json, MAX_QUEUE_MESSAGE_BYTES};
use keel_core::ports::{QueueMessage, Saga, Table, WorkQueue};
use keel_core::resilience::{BreakerSettings, RetryPolicy};
use keel_core::api_keys::KeyAuthenticator;
use keel_core::change_requests::{submit, ChangeRequest, ChangeRequestStore, Requester};
use keel_core::tenants::{Autonomy, TenantStore};
use keel_core::time::{now_rfc3339, now_secs};
use keel_core::warm_cache::WarmCache;
use keel_core::{KeelError, StoreError};
use policy::{decimal_units, PolicyDecision, PolicyGate, Subject, TenantPolicies, Today, Verb};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use std::sync::Arc;
use std::time::Duration;

pub use steps::StepInput;
pub(crate) use view::{action_view, ActionPage, ActionView};

/// How long daily counters are kept (a little over a day).
const DAILY_COUNTER_TTL_SECS: i64 = 2 * 24 * 3600;
const MAX_STEPS: usize = 10;
const MAX_IDEMPOTENCY_KEY_CHARS: usize = 128;
/// Largest value of a tool's metered argument in one proposal.
const MAX_METERED_VALUE: f64 = 1e9;

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ConnectorSpec {
    pub url: String,
    #[serde(default = "default_method")]
    pub method: String,
}

fn default_method() -> String {
    "POST".into()
}

#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Risk {
    Low,
    High,
}

impl Risk {
    pub fn as_str(self) -> &'static str {
        match self {
            Risk::Low => "low",
            Risk::High => "high",
        }
    }
}

/// One step of a tool: what it calls, and how to take it back.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ToolStep {
    pub name: String,
    pub connector: ConnectorSpec,
    #[serde(default)]
    pub compensation: Option<ConnectorSpec>,
}

#[derive(Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
struct ToolInput {
    description: String,
    input_schema: Value,
    /// A one-step tool: `connector` (and `compensation`)...
    #[serde(default)]
    connector: Option<ConnectorSpec>,
    #[serde(default)]
    compensation: Option<ConnectorSpec>,
    /// ...or several steps, run in order and compensated in reverse.
    #[serde(default)]
    steps: Option<Vec<ToolStep>>,
    /// Called with the arguments and `dry_run: true` to preview a change, when the system offers it.
    #[serde(default)]
    dry_run: Option<ConnectorSpec>,
    risk: Risk,
    /// Caps the tenant's autonomy for this tool.
    #[serde(default)]
    autonomy: Option<Autonomy>,
    /// The numeric argument whose daily total policies see as `context.today.total`.
    #[serde(default)]
    metered_arg: Option<String>,
    /// What one execution costs (the connector's own price), for cost per successful action.
    #[serde(default)]
    cost_usd: Option<f64>,
}

#[derive(Clone, Debug, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Tool {
    pub name: String,
    pub description: String,
    pub input_schema: Value,
    pub steps: Vec<ToolStep>,
    pub dry_run: Option<ConnectorSpec>,
    pub risk: Risk,
    /// A tool is reversible when every step has a compensation.
    pub reversible: bool,
    pub autonomy: Option<Autonomy>,
    pub metered_arg: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cost_usd: Option<f64>,
    pub version: u64,
    pub updated_at: String,
}

#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ActionStatus {
    /// Proposed while the tool's autonomy is suggest-only (the tenant's, the
    /// tool's, or the kill switch): recorded and previewed, never run by Keel.
    Suggested,
    PendingApproval,
    /// Nobody approved it in time.
    Expired,
    Running,
    Executed,
    /// A step failed for good; the completed steps are being compensated.
    Compensating,
    Failed,
    Rejected,
    Undoing,
    Undone,
}

#[derive(Clone, Debug, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Approval {
    pub principal: String,
    pub decision: String,
    pub at: String,
    /// Why, in the reviewer's words (a rejection's reason).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// The body of `POST /v1/actions/{id}/approve|reject` (it may be empty).
#[derive(Default, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct ReviewRequest {
    #[serde(default)]
    pub(crate) reason: Option<String>,
    /// The action's `updated_at` as the reviewer saw it: a review of an
    /// action that moved since is refused instead of applied to what the
    /// reviewer never saw.
    #[serde(default)]
    pub(crate) seen_updated_at: Option<String>,
}

const MAX_REASON_CHARS: usize = 1000;

/// What one step of an action did, and what its compensation did.
#[derive(Clone, Debug, Default, Serialize, Deserialize, schemars::JsonSchema)]
pub struct StepRun {
    pub name: String,
    pub outcome: Option<Value>,
    pub compensation: Option<Value>,
}

/// The daily counters an action holds, given back if it never runs.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Counted {
    pub day: String,
    pub units: i64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Action {
    pub action_id: String,
    pub tool: String,
    pub tool_version: u64,
    pub args: Value,
    pub idempotency_key: String,
    pub proposer: String,
    pub status: ActionStatus,
    pub preview: Value,
    pub policy: Vec<PolicyDecision>,
    pub approvals: Vec<Approval>,
    /// Set when the saga waits for an approval, for this long.
    pub approval_timeout_seconds: Option<u64>,
    /// The saga's task token while it waits for the approval (never shown to clients).
    pub approval_token: Option<String>,
    pub steps: Vec<StepRun>,
    pub counted: Option<Counted>,
    /// Undo requests so far (each runs its own saga execution).
    pub undo_requests: u32,
    pub error: Option<String>,
    pub created_at: String,
    pub updated_at: String,
    /// The request that last moved the action: its saga steps, events and
    /// connector calls continue that request's trace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace: Option<keel_core::trace::RequestContext>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workflow: Option<String>,
    /// What executing it costs, from its tool's version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cost_usd: Option<f64>,
}

#[derive(Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
struct ProposeRequest {
    tool: String,
    args: Value,
    idempotency_key: String,
    /// The workflow the action belongs to, for cost per successful action.
    #[serde(default)]
    workflow: Option<String>,
}


#[derive(Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct PolicyInput {
    pub(crate) policies: String,
}

/// The tools function's settings.
#[derive(Clone, Debug)]
pub struct ToolsOptions {
    pub connector_timeout: Duration,
    pub connector_retry: RetryPolicy,
    pub connector_breakers: BreakerSettings,
    pub approval_timeout_secs: u64,
    pub egress: keel_core::egress::EgressPolicy,
}

impl ToolsOptions {
    pub fn from_config(config: &Config) -> Self {
        Self {
            connector_timeout: Duration::from_millis(config.connector_timeout_ms),
            connector_retry: RetryPolicy::default(),
            connector_breakers: BreakerSettings::default(),
            approval_timeout_secs: config.approval_timeout_secs,
            egress: config.egress.clone(),
        }
    }
}

pub struct Tools {
    tenants: Arc<TenantStore>,
    change_requests: ChangeRequestStore,
    /// Producers' keys, for proposals dropped on the actions queue.
    keys: Arc<KeyAuthenticator>,
    tools: store::ToolStore,
    policy_sets: store::PolicyStore,
    actions: store::ActionStore,
    daily: store::DailyCounters,
    queue: Arc<dyn WorkQueue>,
    saga: Arc<dyn Saga>,
    gate: Arc<PolicyGate>,
    connectors: Connectors,
    schemas: schema::Compiled,
    /// Compiled tenant policies, by tenant and the versions of its policy records.
    policies: WarmCache<String, Arc<TenantPolicies>>,
    approval_timeout_secs: u64,
}

impl Tools {
    pub fn new(table: Arc<dyn Table>, tenants: Arc<TenantStore>, keys: Arc<KeyAuthenticator>, queue: Arc<dyn WorkQueue>, saga: Arc<dyn Saga>, options: ToolsOptions) -> Result<Self, KeelError> {
        let connectors = Connectors::new(options.connector_timeout, options.egress, options.connector_retry, options.connector_breakers)?;
        Ok(Self {
            tools: store::ToolStore::new(table.clone()),
            policy_sets: store::PolicyStore::new(table.clone()),
            actions: store::ActionStore::new(table.clone()),
            change_requests: ChangeRequestStore::new(table.clone()),
            daily: store::DailyCounters::new(table),
            tenants,
            keys,
            queue,
            saga,
            gate: Arc::new(PolicyGate::default_policies()?),
            connectors,
            schemas: schema::Compiled::default(),
            policies: WarmCache::new(None, 1_000),
            approval_timeout_secs: options.approval_timeout_secs,
        })
    }

    /// The hosts the tenant's connectors are pinned to, if the platform pinned
    /// it (through the warm cache, like every other tenant setting).
    pub(crate) async fn egress_pins(&self, tenant: &TenantId) -> Result<Option<keel_core::egress::EgressPins>, KeelError> {
        Ok(self.tenants.cached(tenant).await?.and_then(|t| t.egress))
    }

    /// Calls a connector of the tenant's, held to its pinned hosts.
    pub(crate) async fn call_connector(&self, tenant: &TenantId, spec: &ConnectorSpec, idempotency_key: &str, body: &Value) -> Result<Value, KeelError> {
        let pins = self.egress_pins(tenant).await?;
        self.connectors.call(tenant, pins.as_ref(), spec, idempotency_key, body).await
    }

    pub(crate) async fn action(&self, tenant: &TenantId, id: &str) -> Result<(Action, u64), KeelError> {
        self.actions.get(tenant, id).await?.ok_or_else(|| KeelError::NotFound(format!("action {id} not found")))
    }

    pub(crate) async fn action_by_key(&self, tenant: &TenantId, key: &str) -> Result<Action, KeelError> {
        let claim = self.actions.claim_of(tenant, key).await?;
        let claim = claim.ok_or_else(|| KeelError::NotFound(format!("no action with idempotency key {key:?}")))?;
        Ok(self.action(tenant, &claim.action_id).await?.0)
    }

    /// Writes an action's new state, only if nobody changed it meanwhile.
    async fn save(&self, tenant: &TenantId, action: &mut Action, version: u64) -> Result<(), KeelError> {
        action.updated_at = now_rfc3339();
        if let Some(context) = keel_core::trace::current() {
            action.trace = Some(context);
        }
        self.actions.save(tenant, action, version).await.map_err(lost_race(ACTION_CHANGED))
    }

    async fn record(&self, tenant: &TenantId, action: &Action, kind: DecisionKind, principal: &str, outcome: Value) -> Result<(), KeelError> {
        let event = DecisionEvent {
            event_id: format!("{}:{}:{}", action.action_id, kind.as_str(), action.undo_requests),
            decision_id: action.action_id.clone(),
            kind,
            principal: principal.into(),
            at: now_rfc3339(),
            input: json!({"tool": action.tool, "tool_version": action.tool_version, "args": action.args,
                "idempotency_key": action.idempotency_key, "workflow": action.workflow, "cost_usd": action.cost_usd}),
            evidence: json!({"policy": action.policy}),
            action: action.preview.clone(),
            outcome,
            usage: None,
            request_id: None,
            trace_id: None,
            latency_ms: None,
            actor: None,
        };
        let context = keel_core::trace::current().or_else(|| action.trace.clone());
        send_decision_in(self.queue.as_ref(), tenant, &event, context.as_ref()).await
    }

}

/// The 409 of a write that lost to another writer of the action.
const ACTION_CHANGED: &str = "the action changed meanwhile; reload it";

/// A conditional write that lost to another writer, as the 409 `message`; other store errors as they are.
fn lost_race(message: &str) -> impl Fn(StoreError) -> KeelError + '_ {
    move |e| match e {
        StoreError::ConditionFailed => KeelError::Conflict(message.into()),
        other => other.into(),
    }
}
