//! tools: governed actions. A tool is registered with a JSON Schema for its
//! input, an HTTP connector and an optional compensation. A proposed action
//! is validated, gated by Cedar, previewed, and either run at once (policy
//! and autonomy allow it) or held for approval by a different principal. It
//! runs through the saga (Step Functions in AWS, the same ASL locally), which
//! calls back into `run_step`; the connector receives the idempotency key.

mod connector;
pub mod policy;
pub mod schema;

use connector::Connectors;
use keel_core::auth::{Caller, ROLE_ADMIN};
use keel_core::chain::{send_decision, DecisionEvent};
use keel_core::http::{not_found, ApiRequest, ApiResponse, DEFAULT_BODY_LIMIT};
use keel_core::ids::{new_id, parse_path_id, TenantId};
use keel_core::ports::{Condition, Saga, Table, WorkQueue, Write};
use keel_core::tenants::{require_active, Autonomy};
use keel_core::time::now_rfc3339;
use keel_core::{KeelError, StoreError};
use policy::{PolicyDecision, PolicyGate, Subject, Verb};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use std::sync::Arc;
use std::time::Duration;

/// How long an idempotency key is remembered.
const IDEMPOTENCY_TTL_SECS: i64 = 7 * 24 * 3600;

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

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ToolInput {
    description: String,
    input_schema: Value,
    connector: ConnectorSpec,
    #[serde(default)]
    compensation: Option<ConnectorSpec>,
    risk: Risk,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Tool {
    pub name: String,
    pub description: String,
    pub input_schema: Value,
    pub connector: ConnectorSpec,
    pub compensation: Option<ConnectorSpec>,
    pub risk: Risk,
    /// A tool is reversible when it has a compensation.
    pub reversible: bool,
    pub version: u64,
    pub updated_at: String,
}

#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ActionStatus {
    /// Proposed while the tenant is suggest-only (its autonomy, or the kill
    /// switch): recorded and previewed, never run by Keel.
    Suggested,
    PendingApproval,
    Running,
    Executed,
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
    pub outcome: Option<Value>,
    pub undo_outcome: Option<Value>,
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

/// What the saga hands to `run_step`.
#[derive(Debug, Deserialize)]
pub struct StepInput {
    pub step: String,
    pub tenant: String,
    pub action_id: String,
    #[serde(default)]
    pub operation: Option<String>,
    #[serde(default)]
    pub error: Option<Value>,
}

pub struct Tools {
    table: Arc<dyn Table>,
    queue: Arc<dyn WorkQueue>,
    saga: Arc<dyn Saga>,
    gate: PolicyGate,
    connectors: Connectors,
    schemas: schema::Compiled,
}

fn tool_sk(name: &str) -> String {
    format!("TOOL#{name}")
}
fn action_sk(id: &str) -> String {
    format!("ACTION#{id}")
}
fn idempotency_sk(key: &str) -> String {
    format!("IDEM#{key}")
}

impl Tools {
    pub fn new(table: Arc<dyn Table>, queue: Arc<dyn WorkQueue>, saga: Arc<dyn Saga>, connector_timeout: Duration) -> Result<Self, KeelError> {
        let (gate, connectors) = (PolicyGate::default_policies()?, Connectors::new(connector_timeout)?);
        Ok(Self { table, queue, saga, gate, connectors, schemas: schema::Compiled::default() })
    }

    pub async fn handle(&self, req: ApiRequest) -> Result<ApiResponse, KeelError> {
        let caller = req.caller()?;
        let tenant = caller.tenant()?;
        match (req.method.as_str(), req.segments().as_slice()) {
            ("PUT", ["v1", "tools", name]) => {
                caller.require_role(ROLE_ADMIN)?;
                let tool = self.put_tool(tenant, &parse_path_id("tool", name)?, req.json(DEFAULT_BODY_LIMIT)?).await?;
                Ok(ApiResponse::ok(&tool))
            }
            ("GET", ["v1", "tools", name]) => Ok(ApiResponse::ok(&self.tool(tenant, &parse_path_id("tool", name)?).await?.0)),
            ("POST", ["v1", "actions"]) => {
                let (status, action) = self.propose(caller, req.json(DEFAULT_BODY_LIMIT)?).await?;
                Ok(ApiResponse::json(status, &action_view(&action)))
            }
            ("GET", ["v1", "actions", id]) => {
                Ok(ApiResponse::ok(&self.action(tenant, &parse_path_id("action", id)?).await?.0))
            }
            ("POST", ["v1", "actions", id, verb]) => {
                let id = parse_path_id("action", id)?;
                let action = match *verb {
                    "approve" => self.review(caller, &id, true).await?,
                    "reject" => self.review(caller, &id, false).await?,
                    "undo" => self.undo(caller, &id).await?,
                    _ => return Err(not_found(&req)),
                };
                Ok(ApiResponse::ok(&action_view(&action)))
            }
            _ => Err(not_found(&req)),
        }
    }

    async fn put_tool(&self, tenant: &TenantId, name: &str, input: ToolInput) -> Result<Tool, KeelError> {
        schema::check_schema(&input.input_schema)?;
        for c in std::iter::once(&input.connector).chain(input.compensation.as_ref()) {
            connector::check_spec(c)?;
        }
        let existing = self.tool(tenant, name).await.ok();
        let tool = Tool {
            name: name.to_string(),
            description: input.description,
            input_schema: input.input_schema,
            reversible: input.compensation.is_some(),
            connector: input.connector,
            compensation: input.compensation,
            risk: input.risk,
            version: existing.as_ref().map_or(1, |(t, _)| t.version + 1),
            updated_at: now_rfc3339(),
        };
        let condition = existing.map_or(Condition::NotExists, |(_, v)| Condition::Version(v));
        self.table
            .put(Write { pk: tenant.pk(), sk: tool_sk(name), data: serde_json::to_value(&tool)?, expires_at: None, condition })
            .await?;
        Ok(tool)
    }

    async fn tool(&self, tenant: &TenantId, name: &str) -> Result<(Tool, u64), KeelError> {
        let item = self.table.get(&tenant.pk(), &tool_sk(name)).await?;
        let item = item.ok_or_else(|| KeelError::NotFound(format!("tool {name} is not registered")))?;
        Ok((serde_json::from_value(item.data)?, item.version))
    }

    async fn action(&self, tenant: &TenantId, id: &str) -> Result<(Action, u64), KeelError> {
        let item = self.table.get(&tenant.pk(), &action_sk(id)).await?;
        let item = item.ok_or_else(|| KeelError::NotFound(format!("action {id} not found")))?;
        Ok((serde_json::from_value(item.data)?, item.version))
    }

    /// Writes an action's new state, only if nobody changed it meanwhile.
    async fn save(&self, tenant: &TenantId, action: &mut Action, version: u64) -> Result<(), KeelError> {
        action.updated_at = now_rfc3339();
        self.table
            .put(Write {
                pk: tenant.pk(),
                sk: action_sk(&action.action_id),
                data: serde_json::to_value(&*action)?,
                expires_at: None,
                condition: Condition::Version(version),
            })
            .await
            .map_err(|e| match e {
                StoreError::ConditionFailed => KeelError::Conflict("the action changed meanwhile; reload it".into()),
                other => other.into(),
            })?;
        Ok(())
    }

    /// `POST /v1/actions`: returns (HTTP status, action).
    async fn propose(&self, caller: &Caller, req: ProposeRequest) -> Result<(u16, Action), KeelError> {
        let tenant = caller.tenant()?;
        if req.idempotency_key.is_empty() || req.idempotency_key.len() > 128 {
            return Err(KeelError::BadRequest("idempotency_key must be 1-128 characters".into()));
        }
        let (tool, _) = self.tool(tenant, &parse_path_id("tool", &req.tool)?).await?;
        let action_id = new_id("act");
        let tenant_autonomy = require_active(self.table.as_ref(), tenant).await?.autonomy;
        let autonomy = autonomy_name(tenant_autonomy);
        let subject = Subject {
            action_id: &action_id,
            tool: &tool.name,
            risk: tool.risk.as_str(),
            reversible: tool.reversible,
            proposer: &caller.principal,
            autonomy,
        };
        let propose = self.gate.decide(caller, Verb::Propose, &subject)?;
        if !propose.allowed {
            return Err(KeelError::Forbidden(format!("policy denies proposing {}", tool.name)));
        }
        let validator = self.schemas.get(&format!("{tenant}/{}@{}", tool.name, tool.version), &tool.input_schema)?;
        schema::validate(&validator, &req.args)?;
        let auto = self.gate.decide(caller, Verb::AutoExecute, &subject)?;
        let now = now_rfc3339();
        let action = Action {
            action_id: action_id.clone(),
            tool: tool.name.clone(),
            tool_version: tool.version,
            preview: preview(tenant, &tool, &req.args, &req.idempotency_key),
            args: req.args,
            idempotency_key: req.idempotency_key,
            proposer: caller.principal.clone(),
            status: match tenant_autonomy {
                Autonomy::SuggestOnly => ActionStatus::Suggested,
                _ if auto.allowed => ActionStatus::Running,
                _ => ActionStatus::PendingApproval,
            },
            policy: vec![propose, auto],
            approvals: vec![],
            outcome: None,
            undo_outcome: None,
            error: None,
            created_at: now.clone(),
            updated_at: now,
        };
        let fingerprint = args_fingerprint(&action.tool, &action.args);
        let claimed = self
            .table
            .put_all(vec![
                Write {
                    pk: tenant.pk(),
                    sk: idempotency_sk(&action.idempotency_key),
                    data: json!({"action_id": action_id, "fingerprint": fingerprint}),
                    expires_at: Some(keel_core::time::now_secs() + IDEMPOTENCY_TTL_SECS),
                    condition: Condition::NotExists,
                },
                Write {
                    pk: tenant.pk(),
                    sk: action_sk(&action_id),
                    data: serde_json::to_value(&action)?,
                    expires_at: None,
                    condition: Condition::NotExists,
                },
            ])
            .await;
        match claimed {
            Ok(()) => {}
            Err(StoreError::ConditionFailed) => return self.replay(tenant, &action.idempotency_key, &fingerprint).await,
            Err(e) => return Err(e.into()),
        }
        self.record(tenant, &action, "action.proposed", &caller.principal, json!({"status": action.status})).await?;
        if action.status == ActionStatus::Running {
            self.start_saga(tenant, &action_id, "execute").await?;
        }
        Ok((201, action))
    }

    /// A reused idempotency key: the same request gets the same action back; other arguments get 409.
    async fn replay(&self, tenant: &TenantId, key: &str, fingerprint: &str) -> Result<(u16, Action), KeelError> {
        let item = self.table.get(&tenant.pk(), &idempotency_sk(key)).await?;
        let record = item.ok_or_else(|| KeelError::Conflict("idempotency key is being claimed concurrently; retry".into()))?;
        if record.data["fingerprint"].as_str() != Some(fingerprint) {
            return Err(KeelError::Conflict(format!(
                "idempotency key {key:?} was already used with other arguments"
            )));
        }
        let action_id = record.data["action_id"].as_str().unwrap_or_default().to_string();
        let (action, _) = self.action(tenant, &action_id).await?;
        if action.status == ActionStatus::Running {
            // The first attempt may have died before starting the saga; starting is idempotent.
            self.start_saga(tenant, &action_id, "execute").await?;
        }
        Ok((200, action))
    }

    /// Approve or reject a pending action (maker-checker).
    async fn review(&self, caller: &Caller, id: &str, approve: bool) -> Result<Action, KeelError> {
        let tenant = caller.tenant()?;
        let (mut action, version) = self.action(tenant, id).await?;
        if action.status != ActionStatus::PendingApproval {
            return Err(KeelError::Conflict(format!("action {id} is not pending approval")));
        }
        // The kill switch takes effect at once: nothing pending runs while the tenant is suggest-only.
        if approve && require_active(self.table.as_ref(), tenant).await?.autonomy == Autonomy::SuggestOnly {
            return Err(KeelError::Conflict(format!(
                "action {id} cannot run: the tenant is suggest-only (its autonomy or the kill switch); reject it, or approve once actions are resumed"
            )));
        }
        let (tool, _) = self.tool(tenant, &action.tool).await?;
        let decision = self.gate.decide(caller, Verb::Approve, &self.subject(&action, &tool, "one_click"))?;
        if !decision.allowed {
            return Err(KeelError::Forbidden(
                "policy denies this review: it needs the approver role and someone other than the proposer".into(),
            ));
        }
        action.policy.push(decision);
        action.approvals.push(Approval {
            principal: caller.principal.clone(),
            decision: if approve { "approved" } else { "rejected" }.into(),
            at: now_rfc3339(),
        });
        action.status = if approve { ActionStatus::Running } else { ActionStatus::Rejected };
        self.save(tenant, &mut action, version).await?;
        let kind = if approve { "action.approved" } else { "action.rejected" };
        self.record(tenant, &action, kind, &caller.principal, json!({"status": action.status})).await?;
        if approve {
            self.start_saga(tenant, id, "execute").await?;
        }
        Ok(action)
    }

    async fn undo(&self, caller: &Caller, id: &str) -> Result<Action, KeelError> {
        let tenant = caller.tenant()?;
        let (mut action, version) = self.action(tenant, id).await?;
        let (tool, _) = self.tool(tenant, &action.tool).await?;
        if action.status != ActionStatus::Executed {
            return Err(KeelError::Conflict(format!("action {id} is not executed, so it cannot be undone")));
        }
        let decision = self.gate.decide(caller, Verb::Undo, &self.subject(&action, &tool, "one_click"))?;
        if !decision.allowed {
            return Err(KeelError::Forbidden("policy denies undoing this action".into()));
        }
        action.policy.push(decision);
        action.status = ActionStatus::Undoing;
        self.save(tenant, &mut action, version).await?;
        self.record(tenant, &action, "action.undo_requested", &caller.principal, json!({"status": action.status})).await?;
        self.start_saga(tenant, id, "compensate").await?;
        Ok(action)
    }

    fn subject<'a>(&self, action: &'a Action, tool: &'a Tool, autonomy: &'a str) -> Subject<'a> {
        Subject {
            action_id: &action.action_id,
            tool: &action.tool,
            risk: tool.risk.as_str(),
            reversible: tool.reversible,
            proposer: &action.proposer,
            autonomy,
        }
    }

    async fn start_saga(&self, tenant: &TenantId, action_id: &str, operation: &str) -> Result<(), KeelError> {
        let input = json!({"tenant": tenant, "action_id": action_id, "operation": operation});
        self.saga.start(&format!("{action_id}-{operation}"), input).await?;
        Ok(())
    }

    async fn record(&self, tenant: &TenantId, action: &Action, kind: &str, principal: &str, outcome: Value) -> Result<(), KeelError> {
        let event = DecisionEvent {
            event_id: format!("{}:{kind}", action.action_id),
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

    /// One saga step (`execute`, `compensate` or `fail`). Idempotent: a step
    /// whose work is already recorded returns that record again.
    pub async fn run_step(&self, input: StepInput) -> Result<Value, KeelError> {
        let tenant = TenantId::parse(&input.tenant)?;
        let (mut action, version) = self.action(&tenant, &input.action_id).await?;
        let (tool, _) = self.tool(&tenant, &action.tool).await?;
        let key = format!("{}:{}", tenant, action.idempotency_key);
        match input.step.as_str() {
            "execute" => {
                if action.status == ActionStatus::Executed {
                    return Ok(action_view(&action));
                }
                if action.status != ActionStatus::Running {
                    return Err(KeelError::Conflict(format!("action is {:?}, not running", action.status)));
                }
                let body = json!({"action_id": action.action_id, "tool": action.tool, "args": action.args});
                let outcome = self.connectors.call(&tool.connector, &key, &body).await?;
                action.status = ActionStatus::Executed;
                action.outcome = Some(outcome.clone());
                self.save(&tenant, &mut action, version).await?;
                self.record(&tenant, &action, "action.executed", "saga", outcome).await?;
            }
            "compensate" => {
                if action.status == ActionStatus::Undone {
                    return Ok(action_view(&action));
                }
                let compensation = tool
                    .compensation
                    .as_ref()
                    .ok_or_else(|| KeelError::Conflict(format!("tool {} has no compensation", tool.name)))?;
                let body = json!({"action_id": action.action_id, "tool": action.tool, "args": action.args,
                    "outcome": action.outcome});
                let outcome = self.connectors.call(compensation, &format!("{key}:undo"), &body).await?;
                action.status = ActionStatus::Undone;
                action.undo_outcome = Some(outcome.clone());
                self.save(&tenant, &mut action, version).await?;
                self.record(&tenant, &action, "action.undone", "saga", outcome).await?;
            }
            "fail" => {
                let error = input.error.unwrap_or(Value::Null);
                action.error = Some(error.get("Cause").and_then(Value::as_str).map_or_else(|| error.to_string(), str::to_string));
                // A failed undo leaves the action executed; a failed execution fails it.
                action.status = if input.operation.as_deref() == Some("compensate") {
                    ActionStatus::Executed
                } else {
                    ActionStatus::Failed
                };
                self.save(&tenant, &mut action, version).await?;
                self.record(&tenant, &action, "action.failed", "saga", json!({"error": action.error})).await?;
            }
            other => return Err(KeelError::BadRequest(format!("unknown saga step {other:?}"))),
        }
        Ok(action_view(&action))
    }
}

fn autonomy_name(a: Autonomy) -> &'static str {
    match a {
        Autonomy::SuggestOnly => "suggest_only",
        Autonomy::OneClick => "one_click",
        Autonomy::Unattended => "unattended",
    }
}

/// The tool and canonical arguments, hashed: what an idempotency key is bound to.
fn args_fingerprint(tool: &str, args: &Value) -> String {
    hex::encode(Sha256::digest(format!("{tool}\n{args}").as_bytes()))
}

/// What will change, its impact and how to roll it back, before anything runs.
fn preview(tenant: &TenantId, tool: &Tool, args: &Value, idempotency_key: &str) -> Value {
    json!({
        "request": {"method": tool.connector.method, "url": tool.connector.url,
            "headers": {"Idempotency-Key": format!("{tenant}:{idempotency_key}")}, "body": {"tool": tool.name, "args": args}},
        "impact": {"risk": tool.risk, "reversible": tool.reversible, "description": tool.description},
        "rollback": match &tool.compensation {
            Some(c) => json!({"method": c.method, "url": c.url, "note": "POST /v1/actions/{id}/undo runs it once"}),
            None => json!("none: this tool cannot be undone"),
        },
    })
}

fn action_view(action: &Action) -> Value {
    json!({"action_id": action.action_id, "status": action.status, "preview": action.preview,
        "approvals": action.approvals, "outcome": action.outcome, "undo_outcome": action.undo_outcome,
        "error": action.error, "policy": action.policy})
}
