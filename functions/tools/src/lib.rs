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
pub mod routes;
pub mod policy;
pub mod schema;
mod schema_cost;
mod steps;

use connector::Connectors;
use keel_core::keys;
use keel_core::auth::Caller;
use keel_core::chain::{send_decision, DecisionEvent};
use keel_core::config::Config;
use keel_core::ids::{new_id, parse_path_id, TenantId};
use keel_core::limits::{parse_json, MAX_QUEUE_MESSAGE_BYTES};
use keel_core::ports::{Condition, QueueMessage, Saga, Table, WorkQueue, Write};
use keel_core::resilience::{BreakerSettings, RetryPolicy};
use keel_core::tenants::{require_active, Autonomy};
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

/// How long an idempotency key is remembered.
const IDEMPOTENCY_TTL_SECS: i64 = 7 * 24 * 3600;
/// How long daily counters are kept (a little over a day).
const DAILY_COUNTER_TTL_SECS: i64 = 2 * 24 * 3600;
const MAX_STEPS: usize = 10;
const MAX_IDEMPOTENCY_KEY_CHARS: usize = 128;
/// Largest value of a tool's metered argument in one proposal.
const MAX_METERED_VALUE: f64 = 1e9;

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ConnectorSpec {
    pub url: String,
    #[serde(default = "default_method")]
    pub method: String,
}

fn default_method() -> String {
    "POST".into()
}

#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Risk {
    Low,
    High,
}

impl Risk {
    fn as_str(self) -> &'static str {
        match self {
            Risk::Low => "low",
            Risk::High => "high",
        }
    }
}

/// One step of a tool: what it calls, and how to take it back.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ToolStep {
    pub name: String,
    pub connector: ConnectorSpec,
    #[serde(default)]
    pub compensation: Option<ConnectorSpec>,
}

#[derive(Deserialize)]
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
}

#[derive(Clone, Debug, Serialize, Deserialize)]
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
    pub version: u64,
    pub updated_at: String,
}

#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
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

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Approval {
    pub principal: String,
    pub decision: String,
    pub at: String,
}

/// What one step of an action did, and what its compensation did.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
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
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ProposeRequest {
    tool: String,
    args: Value,
    idempotency_key: String,
}

/// A proposal dropped on the actions queue by a trusted producer. It proposes
/// as `principal` with the member role only: approvals go through the API.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct QueuedProposal {
    tenant: String,
    principal: String,
    #[serde(default)]
    groups: Vec<String>,
    tool: String,
    args: Value,
    idempotency_key: String,
}

#[derive(Deserialize)]
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
}

impl ToolsOptions {
    pub fn from_config(config: &Config) -> Self {
        Self {
            connector_timeout: Duration::from_millis(config.connector_timeout_ms),
            connector_retry: RetryPolicy::default(),
            connector_breakers: BreakerSettings::default(),
            approval_timeout_secs: config.approval_timeout_secs,
        }
    }
}

pub struct Tools {
    table: Arc<dyn Table>,
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
    pub fn new(table: Arc<dyn Table>, queue: Arc<dyn WorkQueue>, saga: Arc<dyn Saga>, options: ToolsOptions) -> Result<Self, KeelError> {
        let connectors = Connectors::new(options.connector_timeout, options.connector_retry, options.connector_breakers)?;
        Ok(Self {
            table,
            queue,
            saga,
            gate: Arc::new(PolicyGate::default_policies()?),
            connectors,
            schemas: schema::Compiled::default(),
            policies: WarmCache::new(None, 1_000),
            approval_timeout_secs: options.approval_timeout_secs,
        })
    }

    pub(crate) async fn put_tool(&self, tenant: &TenantId, name: &str, input: ToolInput) -> Result<Tool, KeelError> {
        schema::check_schema(&input.input_schema)?;
        let steps = match (input.steps, input.connector) {
            (Some(steps), None) if input.compensation.is_none() => steps,
            (None, Some(connector)) => vec![ToolStep { name: "main".into(), connector, compensation: input.compensation }],
            _ => return Err(KeelError::BadRequest("give either connector (and compensation) or steps".into())),
        };
        if steps.is_empty() || steps.len() > MAX_STEPS {
            return Err(KeelError::BadRequest(format!("a tool has 1 to {MAX_STEPS} steps")));
        }
        for (i, step) in steps.iter().enumerate() {
            parse_path_id("step", &step.name)?;
            if steps[..i].iter().any(|s| s.name == step.name) {
                return Err(KeelError::BadRequest(format!("step name {:?} is used twice", step.name)));
            }
            for c in std::iter::once(&step.connector).chain(&step.compensation) {
                connector::check_spec(c)?;
            }
        }
        if let Some(c) = &input.dry_run {
            connector::check_spec(c)?;
        }
        let existing = self.tool(tenant, name).await.ok();
        let tool = Tool {
            name: name.to_string(),
            description: input.description,
            input_schema: input.input_schema,
            reversible: steps.iter().all(|s| s.compensation.is_some()),
            steps,
            dry_run: input.dry_run,
            risk: input.risk,
            autonomy: input.autonomy,
            metered_arg: input.metered_arg,
            version: existing.as_ref().map_or(1, |(t, _)| t.version + 1),
            updated_at: now_rfc3339(),
        };
        let condition = existing.map_or(Condition::NotExists, |(_, v)| Condition::Version(v));
        let data = serde_json::to_value(&tool)?;
        // The latest version, and an immutable copy of this one: an action runs the version it was approved with.
        let version = Write { pk: tenant.pk(), sk: keys::tool_version(name, tool.version), data: data.clone(), expires_at: None, condition: Condition::NotExists };
        let latest = Write { pk: tenant.pk(), sk: keys::tool(name), data, expires_at: None, condition };
        self.table.put_all(vec![latest, version]).await.map_err(lost_race(&format!("tool {name} changed meanwhile; retry")))?;
        Ok(tool)
    }

    /// The tool as it was when the action was proposed.
    async fn tool_at(&self, tenant: &TenantId, name: &str, version: u64) -> Result<Tool, KeelError> {
        let item = self.table.get(&tenant.pk(), &keys::tool_version(name, version)).await?;
        let item = item.ok_or_else(|| KeelError::NotFound(format!("tool {name} v{version} is not registered")))?;
        Ok(serde_json::from_value(item.data)?)
    }

    pub(crate) async fn tool(&self, tenant: &TenantId, name: &str) -> Result<(Tool, u64), KeelError> {
        let item = self.table.get(&tenant.pk(), &keys::tool(name)).await?;
        let item = item.ok_or_else(|| KeelError::NotFound(format!("tool {name} is not registered")))?;
        Ok((serde_json::from_value(item.data)?, item.version))
    }

    pub(crate) async fn action(&self, tenant: &TenantId, id: &str) -> Result<(Action, u64), KeelError> {
        let item = self.table.get(&tenant.pk(), &keys::action(id)).await?;
        let item = item.ok_or_else(|| KeelError::NotFound(format!("action {id} not found")))?;
        Ok((serde_json::from_value(item.data)?, item.version))
    }

    pub(crate) async fn action_by_key(&self, tenant: &TenantId, key: &str) -> Result<Action, KeelError> {
        let record = self.table.get(&tenant.pk(), &keys::idempotency(key)).await?;
        let record = record.ok_or_else(|| KeelError::NotFound(format!("no action with idempotency key {key:?}")))?;
        Ok(self.action(tenant, record.data["action_id"].as_str().unwrap_or_default()).await?.0)
    }

    /// Writes an action's new state, only if nobody changed it meanwhile.
    async fn save(&self, tenant: &TenantId, action: &mut Action, version: u64) -> Result<(), KeelError> {
        action.updated_at = now_rfc3339();
        self.table
            .put(Write {
                pk: tenant.pk(),
                sk: keys::action(&action.action_id),
                data: serde_json::to_value(&*action)?,
                expires_at: None,
                condition: Condition::Version(version),
            })
            .await
            .map_err(lost_race("the action changed meanwhile; reload it"))?;
        Ok(())
    }

    /// The tenant's policy texts and their versions.
    pub(crate) async fn policy_texts(&self, tenant: &TenantId) -> Result<Value, KeelError> {
        let items = self.table.query(&tenant.pk(), keys::POLICY_SETS, Default::default()).await?;
        let mut out = json!({"enforced": {"policies": "", "version": 0}, "shadow": {"policies": "", "version": 0}});
        for item in items {
            let mode = item.sk.trim_start_matches(keys::POLICY_SETS).to_string();
            out[mode] = json!({"policies": item.data["policies"], "version": item.version, "updated_at": item.data["updated_at"]});
        }
        Ok(out)
    }

    pub(crate) async fn put_policies(&self, tenant: &TenantId, mode: &str, text: String) -> Result<(), KeelError> {
        let current = self.policy_texts(tenant).await?;
        // Parsed (and checked) as the sets will be evaluated: together, so they must combine.
        let other = if mode == "enforced" { "shadow" } else { "enforced" };
        let other_text = current[other]["policies"].as_str().unwrap_or_default();
        let (enforced, shadow) = if mode == "enforced" { (text.as_str(), other_text) } else { (other_text, text.as_str()) };
        TenantPolicies::compile(enforced.to_string(), shadow.to_string()).await?;
        let condition = match current[mode]["version"].as_u64() {
            Some(0) | None => Condition::NotExists,
            Some(v) => Condition::Version(v),
        };
        let data = json!({"policies": text, "updated_at": now_rfc3339()});
        let write = Write { pk: tenant.pk(), sk: keys::policy_set(mode), data, expires_at: None, condition };
        self.table.put(write).await.map_err(lost_race("the policies changed meanwhile; retry"))?;
        Ok(())
    }

    /// The tenant's compiled policies: one read, compiled once per version.
    async fn tenant_policies(&self, tenant: &TenantId) -> Result<Arc<TenantPolicies>, KeelError> {
        let items = self.table.query(&tenant.pk(), keys::POLICY_SETS, Default::default()).await?;
        if items.is_empty() {
            return Ok(self.gate.defaults());
        }
        let key = items.iter().fold(tenant.to_string(), |k, i| format!("{k}/{}@{}", i.sk, i.version));
        if let Some(compiled) = self.policies.get(key.as_str()) {
            return Ok(compiled);
        }
        let text = |mode: &str| {
            let item = items.iter().find(|i| i.sk == keys::policy_set(mode));
            item.and_then(|i| i.data["policies"].as_str()).unwrap_or_default().to_string()
        };
        let compiled = Arc::new(TenantPolicies::compile(text("enforced"), text("shadow")).await?);
        self.policies.insert(key, compiled.clone());
        Ok(compiled)
    }

    /// The autonomy in force for a tool: the tenant's (it must be active), capped by the tool's.
    async fn autonomy(&self, tenant: &TenantId, tool: &Tool) -> Result<Autonomy, KeelError> {
        Ok(effective_autonomy(require_active(self.table.as_ref(), tenant).await?.autonomy, tool.autonomy))
    }

    /// Counts a proposal into the tool's daily counters (atomically) and
    /// returns the counters with it included.
    async fn count_today(&self, tenant: &TenantId, tool: &Tool, units: i64) -> Result<(Today, Counted), KeelError> {
        let day = chrono::Utc::now().format("%Y-%m-%d").to_string();
        let expires = Some(now_secs() + DAILY_COUNTER_TTL_SECS);
        let count = self.table.increment(&tenant.pk(), &keys::daily(&tool.name, &day, "count"), 1, None, expires).await?;
        let total_units = match tool.metered_arg {
            Some(_) => match self.table.increment(&tenant.pk(), &keys::daily(&tool.name, &day, "total"), units, None, expires).await {
                Ok(total) => total,
                Err(e) => {
                    // The total did not move: only the count goes back.
                    self.uncount(tenant, &tool.name, Some(&Counted { day, units: 0 })).await?;
                    return Err(match e {
                        StoreError::ConditionFailed => {
                            KeelError::Conflict(format!("the daily total of {} cannot count this proposal", tool.name))
                        }
                        other => other.into(),
                    });
                }
            },
            None => 0,
        };
        Ok((Today { count, total_units }, Counted { day, units }))
    }

    /// Gives an action's daily counts back (it was refused, rejected, expired or failed).
    async fn uncount(&self, tenant: &TenantId, tool: &str, counted: Option<&Counted>) -> Result<(), KeelError> {
        let Some(c) = counted else { return Ok(()) };
        self.table.increment(&tenant.pk(), &keys::daily(tool, &c.day, "count"), -1, None, None).await?;
        if c.units != 0 {
            self.table.increment(&tenant.pk(), &keys::daily(tool, &c.day, "total"), -c.units, None, None).await?;
        }
        Ok(())
    }

    /// `POST /v1/actions` (and the actions queue): returns (HTTP status, action).
    pub(crate) async fn propose(&self, caller: &Caller, req: ProposeRequest) -> Result<(u16, Action), KeelError> {
        let tenant = caller.tenant()?;
        check_idempotency_key(&req.idempotency_key)?;
        let (tool, _) = self.tool(tenant, &parse_path_id("tool", &req.tool)?).await?;
        let fingerprint = args_fingerprint(&tool.name, &req.args);
        // A replay is answered before anything is counted or decided again.
        if self.table.get(&tenant.pk(), &keys::idempotency(&req.idempotency_key)).await?.is_some() {
            return self.replay(tenant, &req.idempotency_key, &fingerprint).await;
        }
        let validator = self.schemas.get(&format!("{tenant}/{}@{}", tool.name, tool.version), &tool.input_schema)?;
        schema::validate_off_workers(validator, req.args.clone()).await?;
        let autonomy = self.autonomy(tenant, &tool).await?;
        let policies = self.tenant_policies(tenant).await?;
        let units = metered_units(&tool, &req.args)?;
        let (today, counted) = self.count_today(tenant, &tool, units).await?;
        let action_id = new_id("act");
        let subject = Subject {
            action_id: &action_id,
            tool: &tool.name,
            risk: tool.risk.as_str(),
            reversible: tool.reversible,
            proposer: &caller.principal,
            autonomy: autonomy_name(autonomy),
            args: &req.args,
            today,
            now: chrono::Utc::now(),
        };
        let propose = self.gate.decide_off_workers(&policies, caller, Verb::Propose, &subject).await?;
        if !propose.allowed {
            self.uncount(tenant, &tool.name, Some(&counted)).await?;
            return Err(KeelError::Forbidden(format!("policy denies proposing {} (policies: {})", tool.name, propose.policies.join(", "))));
        }
        let auto = self.gate.decide_off_workers(&policies, caller, Verb::AutoExecute, &subject).await?;
        let status = match autonomy {
            Autonomy::SuggestOnly => ActionStatus::Suggested,
            _ if auto.allowed => ActionStatus::Running,
            _ => ActionStatus::PendingApproval,
        };
        let now = now_rfc3339();
        let action = Action {
            action_id: action_id.clone(),
            tool: tool.name.clone(),
            tool_version: tool.version,
            preview: self.preview(tenant, &tool, &req.args, &req.idempotency_key).await,
            args: req.args,
            idempotency_key: req.idempotency_key,
            proposer: caller.principal.clone(),
            status,
            policy: vec![propose, auto],
            approvals: vec![],
            approval_timeout_seconds: (status == ActionStatus::PendingApproval).then_some(self.approval_timeout_secs),
            approval_token: None,
            steps: tool.steps.iter().map(|s| StepRun { name: s.name.clone(), ..Default::default() }).collect(),
            // A suggestion never runs, so it holds no daily count.
            counted: (status != ActionStatus::Suggested).then_some(counted.clone()),
            undo_requests: 0,
            error: None,
            created_at: now.clone(),
            updated_at: now,
        };
        if status == ActionStatus::Suggested {
            self.uncount(tenant, &tool.name, Some(&counted)).await?;
        }
        let claimed = self
            .table
            .put_all(vec![
                Write {
                    pk: tenant.pk(),
                    sk: keys::idempotency(&action.idempotency_key),
                    data: json!({"action_id": action_id, "fingerprint": fingerprint}),
                    expires_at: Some(now_secs() + IDEMPOTENCY_TTL_SECS),
                    condition: Condition::NotExists,
                },
                Write {
                    pk: tenant.pk(),
                    sk: keys::action(&action_id),
                    data: serde_json::to_value(&action)?,
                    expires_at: None,
                    condition: Condition::NotExists,
                },
            ])
            .await;
        match claimed {
            Ok(()) => {}
            Err(StoreError::ConditionFailed) => {
                // Claimed concurrently by the same key: this attempt's count goes back.
                self.uncount(tenant, &tool.name, action.counted.as_ref()).await?;
                return self.replay(tenant, &action.idempotency_key, &fingerprint).await;
            }
            Err(e) => return Err(e.into()),
        }
        self.record(tenant, &action, "action.proposed", &caller.principal, json!({"status": action.status})).await?;
        self.start_saga(tenant, &action, "execute").await?;
        Ok((201, action))
    }

    /// A reused idempotency key: the same request gets the same action back; other arguments get 409.
    async fn replay(&self, tenant: &TenantId, key: &str, fingerprint: &str) -> Result<(u16, Action), KeelError> {
        let item = self.table.get(&tenant.pk(), &keys::idempotency(key)).await?;
        let record = item.ok_or_else(|| KeelError::Conflict("idempotency key is being claimed concurrently; retry".into()))?;
        if record.data["fingerprint"].as_str() != Some(fingerprint) {
            return Err(KeelError::Conflict(format!(
                "idempotency key {key:?} was already used with other arguments"
            )));
        }
        let action_id = record.data["action_id"].as_str().unwrap_or_default().to_string();
        let (action, _) = self.action(tenant, &action_id).await?;
        // The first attempt may have died before starting the saga; starting is idempotent.
        self.start_saga(tenant, &action, "execute").await?;
        Ok((200, action))
    }

    /// Approve or reject a pending action (maker-checker). The saga waits on
    /// a task token; the decision is saved first, then the token completed, so
    /// a saga that stores its token late still finds the decision.
    pub(crate) async fn review(&self, caller: &Caller, id: &str, approve: bool) -> Result<Action, KeelError> {
        let tenant = caller.tenant()?;
        let (mut action, version) = self.action(tenant, id).await?;
        if action.status != ActionStatus::PendingApproval {
            return Err(KeelError::Conflict(format!("action {id} is not pending approval")));
        }
        let tool = self.tool_at(tenant, &action.tool, action.tool_version).await?;
        let autonomy = self.autonomy(tenant, &tool).await?;
        // The kill switch takes effect at once: nothing pending runs while the tenant is suggest-only.
        if approve && autonomy == Autonomy::SuggestOnly {
            return Err(KeelError::Conflict(format!(
                "action {id} cannot run: the tenant is suggest-only (its autonomy or the kill switch); reject it, or approve once actions are resumed"
            )));
        }
        let policies = self.tenant_policies(tenant).await?;
        let decision = self.gate.decide_off_workers(&policies, caller, Verb::Approve, &self.subject(&action, &tool, autonomy)).await?;
        if !decision.allowed {
            return Err(KeelError::Forbidden(format!(
                "policy denies this review (policies: {}): it needs the approver role, someone other than the proposer, and the tenant's conditions",
                decision.policies.join(", ")
            )));
        }
        action.policy.push(decision);
        action.approvals.push(Approval {
            principal: caller.principal.clone(),
            decision: if approve { "approved" } else { "rejected" }.into(),
            at: now_rfc3339(),
        });
        action.status = if approve { ActionStatus::Running } else { ActionStatus::Rejected };
        self.save(tenant, &mut action, version).await?;
        if !approve {
            self.uncount(tenant, &action.tool, action.counted.as_ref()).await?;
        }
        let kind = if approve { "action.approved" } else { "action.rejected" };
        self.record(tenant, &action, kind, &caller.principal, json!({"status": action.status})).await?;
        if let Some(token) = &action.approval_token {
            let sent = if approve {
                self.saga.send_task_success(token, json!({"approved_by": caller.principal})).await
            } else {
                self.saga.send_task_failure(token, "Keel.Rejected", &format!("rejected by {}", caller.principal)).await
            };
            match sent {
                // The wait already ended (timed out): the saga's expire step reads the decision saved above.
                Ok(()) | Err(StoreError::ConditionFailed) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(action)
    }

    pub(crate) async fn undo(&self, caller: &Caller, id: &str) -> Result<Action, KeelError> {
        let tenant = caller.tenant()?;
        let (mut action, version) = self.action(tenant, id).await?;
        let tool = self.tool_at(tenant, &action.tool, action.tool_version).await?;
        if action.status != ActionStatus::Executed {
            return Err(KeelError::Conflict(format!("action {id} is not executed, so it cannot be undone")));
        }
        let policies = self.tenant_policies(tenant).await?;
        let autonomy = self.autonomy(tenant, &tool).await?;
        let decision = self.gate.decide_off_workers(&policies, caller, Verb::Undo, &self.subject(&action, &tool, autonomy)).await?;
        if !decision.allowed {
            return Err(KeelError::Forbidden(format!("policy denies undoing this action (policies: {})", decision.policies.join(", "))));
        }
        action.policy.push(decision);
        action.status = ActionStatus::Undoing;
        action.undo_requests += 1;
        action.error = None;
        self.save(tenant, &mut action, version).await?;
        self.record(tenant, &action, "action.undo_requested", &caller.principal, json!({"status": action.status})).await?;
        self.start_saga(tenant, &action, "compensate").await?;
        Ok(action)
    }

    fn subject<'a>(&self, action: &'a Action, tool: &'a Tool, autonomy: Autonomy) -> Subject<'a> {
        Subject {
            action_id: &action.action_id,
            tool: &action.tool,
            risk: tool.risk.as_str(),
            reversible: tool.reversible,
            proposer: &action.proposer,
            autonomy: autonomy_name(autonomy),
            args: &action.args,
            today: Today::default(),
            now: chrono::Utc::now(),
        }
    }

    /// Starts the action's saga execution: `execute` once per action (it
    /// waits for the approval when one is needed), `compensate` once per undo
    /// request. The input follows from the action alone, so a retried start
    /// is the same execution.
    async fn start_saga(&self, tenant: &TenantId, action: &Action, operation: &str) -> Result<(), KeelError> {
        let (name, approval) = match operation {
            "compensate" => (format!("{}-undo-{}", action.action_id, action.undo_requests), None),
            _ if matches!(action.status, ActionStatus::Running | ActionStatus::PendingApproval) => {
                (format!("{}-execute", action.action_id), action.approval_timeout_seconds)
            }
            _ => return Ok(()),
        };
        let input = json!({"tenant": tenant, "action_id": action.action_id, "operation": operation,
            "approval": approval.is_some(), "approval_timeout_seconds": approval.unwrap_or(0)});
        self.saga.start(&name, input).await?;
        Ok(())
    }

    async fn record(&self, tenant: &TenantId, action: &Action, kind: &str, principal: &str, outcome: Value) -> Result<(), KeelError> {
        let event = DecisionEvent {
            event_id: format!("{}:{kind}:{}", action.action_id, action.undo_requests),
            decision_id: action.action_id.clone(),
            kind: kind.into(),
            principal: principal.into(),
            at: now_rfc3339(),
            input: json!({"tool": action.tool, "tool_version": action.tool_version, "args": action.args,
                "idempotency_key": action.idempotency_key}),
            evidence: json!({"policy": action.policy}),
            action: action.preview.clone(),
            outcome,
            usage: json!(null),
        };
        send_decision(self.queue.as_ref(), tenant, &event).await
    }

    /// Consumes the actions queue: each message proposes an action, exactly
    /// once per idempotency key however often it is delivered. Returns the ids
    /// of the messages that failed (they come back, then go to the DLQ).
    pub async fn consume(&self, messages: &[QueueMessage]) -> Vec<String> {
        let mut failed = Vec::new();
        for m in messages {
            let result = async {
                let p: QueuedProposal = parse_json(m.body.as_bytes(), MAX_QUEUE_MESSAGE_BYTES, "action proposal")?;
                let caller = Caller {
                    tenant: Some(TenantId::parse(&p.tenant)?),
                    principal: p.principal,
                    roles: vec![keel_core::auth::ROLE_MEMBER.into()],
                    groups: p.groups,
                    throttled: false,
                };
                self.propose(&caller, ProposeRequest { tool: p.tool, args: p.args, idempotency_key: p.idempotency_key }).await
            }
            .await;
            if let Err(e) = result {
                tracing::warn!(message_id = %m.message_id, error = %e, "action message failed");
                failed.push(m.message_id.clone());
            }
        }
        failed
    }

    /// What will change, its impact and how to roll it back, before anything
    /// runs: the connector's own dry run where the tool has one, and always
    /// the requests Keel will send.
    async fn preview(&self, tenant: &TenantId, tool: &Tool, args: &Value, idempotency_key: &str) -> Value {
        let key = format!("{tenant}:{idempotency_key}");
        let dry_run = match &tool.dry_run {
            None => json!(null),
            Some(spec) => {
                let body = json!({"tool": tool.name, "args": args, "dry_run": true});
                match self.connectors.call(tenant, spec, &format!("{key}:dry-run"), &body).await {
                    Ok(result) => result,
                    Err(e) => json!({"error": e.to_string()}),
                }
            }
        };
        let requests: Vec<Value> = tool
            .steps
            .iter()
            .map(|s| {
                json!({"step": s.name, "method": s.connector.method, "url": s.connector.url,
                    "headers": {"Idempotency-Key": format!("{key}:{}", s.name)}, "body": {"tool": tool.name, "args": args}})
            })
            .collect();
        let rollback: Vec<Value> = tool
            .steps
            .iter()
            .rev()
            .map(|s| match &s.compensation {
                Some(c) => json!({"step": s.name, "method": c.method, "url": c.url}),
                None => json!({"step": s.name, "note": "no compensation: this step cannot be undone"}),
            })
            .collect();
        json!({
            "dry_run": dry_run,
            "requests": requests,
            "impact": {"risk": tool.risk, "reversible": tool.reversible, "steps": tool.steps.len(), "description": tool.description},
            "rollback": {"order": "reverse", "steps": rollback,
                "note": if tool.reversible { "POST /v1/actions/{id}/undo runs it once" } else { "not every step can be undone" }},
        })
    }
}

/// A conditional write that lost to another writer, as the 409 `message`; other store errors as they are.
fn lost_race(message: &str) -> impl Fn(StoreError) -> KeelError + '_ {
    move |e| match e {
        StoreError::ConditionFailed => KeelError::Conflict(message.into()),
        other => other.into(),
    }
}

/// The tenant's autonomy, capped by the tool's (suggest-only < one-click < unattended).
fn effective_autonomy(tenant: Autonomy, tool: Option<Autonomy>) -> Autonomy {
    let rank = |a: Autonomy| match a {
        Autonomy::SuggestOnly => 0,
        Autonomy::OneClick => 1,
        Autonomy::Unattended => 2,
    };
    match tool {
        Some(t) if rank(t) < rank(tenant) => t,
        _ => tenant,
    }
}

fn autonomy_name(a: Autonomy) -> &'static str {
    match a {
        Autonomy::SuggestOnly => "suggest_only",
        Autonomy::OneClick => "one_click",
        Autonomy::Unattended => "unattended",
    }
}

/// The tool's metered argument in Cedar decimal units: a number from 0 to
/// `MAX_METERED_VALUE` (0 when the arguments leave it out), so daily totals
/// can neither go down nor overflow.
fn metered_units(tool: &Tool, args: &Value) -> Result<i64, KeelError> {
    let Some(name) = &tool.metered_arg else { return Ok(0) };
    let Some(value) = args.get(name) else { return Ok(0) };
    let units = value.as_f64().filter(|x| (0.0..=MAX_METERED_VALUE).contains(x)).and_then(decimal_units);
    units.ok_or_else(|| KeelError::Unprocessable {
        path: format!("/{name}"),
        message: format!("the metered argument {name} must be a number from 0 to {MAX_METERED_VALUE}"),
    })
}

/// An idempotency key travels as an HTTP header to connectors: 1 to 128
/// visible ASCII characters (no spaces or control characters).
fn check_idempotency_key(key: &str) -> Result<(), KeelError> {
    if (1..=MAX_IDEMPOTENCY_KEY_CHARS).contains(&key.len()) && key.bytes().all(|b| b.is_ascii_graphic()) {
        return Ok(());
    }
    Err(KeelError::BadRequest(format!(
        "idempotency_key must be 1 to {MAX_IDEMPOTENCY_KEY_CHARS} visible ASCII characters (no spaces or control characters)"
    )))
}

/// The tool and canonical arguments, hashed: what an idempotency key is bound to.
fn args_fingerprint(tool: &str, args: &Value) -> String {
    hex::encode(Sha256::digest(format!("{tool}\n{args}").as_bytes()))
}

/// An action as clients see it (the saga's task token stays inside).
pub(crate) fn action_view(action: &Action) -> Value {
    json!({"action_id": action.action_id, "tool": action.tool, "tool_version": action.tool_version, "args": action.args,
        "idempotency_key": action.idempotency_key, "proposer": action.proposer, "status": action.status,
        "preview": action.preview, "approvals": action.approvals, "steps": action.steps, "error": action.error,
        "policy": action.policy, "created_at": action.created_at, "updated_at": action.updated_at})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idempotency_keys_are_visible_ascii_and_bounded() {
        assert!(check_idempotency_key("refund-A-1001").is_ok());
        assert!(check_idempotency_key(&"k".repeat(128)).is_ok());
        for bad in ["", "bad\u{1}x", "a b", "caf\u{e9}", "x\n", &"k".repeat(129)] {
            assert!(matches!(check_idempotency_key(bad), Err(KeelError::BadRequest(_))), "{bad:?}");
        }
    }

    #[test]
    fn a_tool_caps_the_tenants_autonomy_but_never_raises_it() {
        use Autonomy::*;
        assert_eq!(effective_autonomy(Unattended, Some(OneClick)), OneClick);
        assert_eq!(effective_autonomy(Unattended, None), Unattended);
        assert_eq!(effective_autonomy(SuggestOnly, Some(Unattended)), SuggestOnly);
        assert_eq!(effective_autonomy(OneClick, Some(SuggestOnly)), SuggestOnly);
    }
}
