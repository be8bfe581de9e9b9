//! Proposing an action, over HTTP or the actions queue: validated, counted,
//! gated by policy and autonomy, previewed, then run or held for approval;
//! exactly once per idempotency key.

use keel_core::chain::DecisionKind;
use keel_core::ports::{dropped, is_rejection, reject, QueueName};
use keel_core::rate::Admission;
use super::*;

/// What a proposal decided, before it becomes an action.
struct Draft {
    action_id: String,
    status: ActionStatus,
    policy: Vec<PolicyDecision>,
    preview: Value,
    counted: Counted,
}

impl Tools {
    /// `POST /v1/actions` (and the actions queue): returns (HTTP status, action).
    /// The reads it needs (the tool, the idempotency claim, the policies) run
    /// beside the rate-limit count (`admission`), before anything is written.
    pub(crate) async fn propose(&self, caller: &Caller, req: ProposeRequest, admission: &Admission) -> Result<(u16, Action), KeelError> {
        let tenant = caller.tenant()?;
        check_idempotency_key(&req.idempotency_key)?;
        if req.workflow.as_deref().is_some_and(|w| !keel_core::models::Budgets::is_workflow_name(w)) {
            return Err(KeelError::BadRequest("workflow must be 1 to 64 letters, digits, '-', '_' or '.'".into()));
        }
        let tool_name = parse_path_id("tool", &req.tool)?;
        let (admitted, tool, claim, policies) = tokio::join!(
            admission.admit(),
            self.tool(tenant, &tool_name),
            self.actions.claim_of(tenant, &req.idempotency_key),
            self.tenant_policies(tenant)
        );
        admitted?;
        let (tool, _) = tool?;
        let fingerprint = args_fingerprint(&tool.name, &req.args);
        // A replay is answered before anything is counted or decided again.
        if claim?.is_some() {
            return self.replay(tenant, &req.idempotency_key, &fingerprint).await;
        }
        let policies = policies?;
        let incarnation = self.tenants.incarnation(tenant).await?.unwrap_or_default();
        let validator = self.schemas.get(&format!("{tenant}#{incarnation}/{}@{}", tool.name, tool.version), &tool.input_schema)?;
        let checked = schema::validate_off_workers(validator, req.args.clone()).await;
        keel_core::telemetry::tool_arguments(checked.is_ok());
        checked?;
        let autonomy = self.autonomy(tenant, &tool).await?;
        let units = metered_units(&tool, &req.args)?;
        let (today, counted) = self.count_today(tenant, &tool, units).await?;
        let action_id = new_id("act");
        let subject = Subject {
            action_id: &action_id,
            tool: &tool.name,
            risk: tool.risk,
            reversible: tool.reversible,
            proposer: &caller.principal,
            autonomy,
            args: &req.args,
            today,
            now: chrono::Utc::now(),
        };
        let (propose, auto) = match self.gate_proposal(&policies, caller, &subject).await {
            Ok(decisions) => decisions,
            Err(e) => {
                self.uncount(tenant, &tool.name, Some(&counted)).await?;
                return Err(e);
            }
        };
        let status = match autonomy {
            Autonomy::SuggestOnly => ActionStatus::Suggested,
            _ if auto.allowed => ActionStatus::Running,
            _ => ActionStatus::PendingApproval,
        };
        let preview = self.preview(tenant, &tool, &req.args, &req.idempotency_key).await;
        let draft = Draft { action_id, status, policy: vec![propose, auto], preview, counted: counted.clone() };
        let action = self.new_action(&tool, caller, req, draft);
        if status == ActionStatus::Suggested {
            self.uncount(tenant, &tool.name, Some(&counted)).await?;
        }
        if !self.actions.create(tenant, &action, &fingerprint).await? {
            // Claimed concurrently by the same key: this attempt's count goes back.
            self.uncount(tenant, &tool.name, action.counted.as_ref()).await?;
            return self.replay(tenant, &action.idempotency_key, &fingerprint).await;
        }
        self.announce(tenant, &action).await?;
        Ok((201, action))
    }

    /// The proposal's decision event and the saga's start: independent, so
    /// one wait for both, and both safe to repeat (one event id; the
    /// execution is named for the action), so a replay finishes a proposal
    /// whose first request failed after its save.
    async fn announce(&self, tenant: &TenantId, action: &Action) -> Result<(), KeelError> {
        let proposed = json!({"status": status_when_proposed(action)});
        let recorded = self.record(tenant, action, DecisionKind::ActionProposed, &action.proposer, proposed);
        let (recorded, started) = tokio::join!(recorded, self.start_saga(tenant, action, "execute"));
        recorded.and(started)
    }

    /// The policies' answers to proposing the action and to running it
    /// without a human click; a denied proposal is refused.
    async fn gate_proposal(
        &self,
        policies: &Arc<TenantPolicies>,
        caller: &Caller,
        subject: &Subject<'_>,
    ) -> Result<(PolicyDecision, PolicyDecision), KeelError> {
        let propose = self.gate.decide_off_workers(policies, caller, Verb::Propose, subject).await?;
        if !propose.allowed {
            let ids = propose.policies.join(", ");
            return Err(KeelError::Forbidden(format!("policy denies proposing {} (policies: {ids})", subject.tool)));
        }
        let auto = self.gate.decide_off_workers(policies, caller, Verb::AutoExecute, subject).await?;
        Ok((propose, auto))
    }

    fn new_action(&self, tool: &Tool, caller: &Caller, req: ProposeRequest, draft: Draft) -> Action {
        let Draft { action_id, status, policy, preview, counted } = draft;
        let now = now_rfc3339();
        Action {
            action_id,
            tool: tool.name.clone(),
            tool_version: tool.version,
            preview,
            args: req.args,
            idempotency_key: req.idempotency_key,
            proposer: caller.principal.clone(),
            status,
            policy,
            approvals: vec![],
            approval_timeout_seconds: (status == ActionStatus::PendingApproval).then_some(self.approval_timeout_secs),
            approval_token: None,
            steps: tool.steps.iter().map(|s| StepRun { name: s.name.clone(), ..Default::default() }).collect(),
            // A suggestion never runs, so it holds no daily count.
            counted: (status != ActionStatus::Suggested).then_some(counted),
            undo_requests: 0,
            error: None,
            created_at: now.clone(),
            updated_at: now,
            trace: keel_core::trace::current(),
            workflow: req.workflow,
            cost_usd: tool.cost_usd,
        }
    }

    /// A reused idempotency key: the same request gets the same action back; other arguments get 409.
    pub(crate) async fn replay(&self, tenant: &TenantId, key: &str, fingerprint: &str) -> Result<(u16, Action), KeelError> {
        let claim = self.actions.claim_of(tenant, key).await?;
        let claim = claim.ok_or_else(|| KeelError::Conflict("idempotency key is being claimed concurrently; retry".into()))?;
        if claim.fingerprint != fingerprint {
            return Err(KeelError::Conflict(format!(
                "idempotency key {key:?} was already used with other arguments"
            )));
        }
        let action_id = claim.action_id;
        let (action, _) = self.action(tenant, &action_id).await?;
        // The first attempt may have died before recording it or starting the saga.
        self.announce(tenant, &action).await?;
        Ok((200, action))
    }

    /// The autonomy in force for a tool: the tenant's (it must be active), capped by the tool's.
    pub(crate) async fn autonomy(&self, tenant: &TenantId, tool: &Tool) -> Result<Autonomy, KeelError> {
        Ok(effective_autonomy(self.tenants.require_active(tenant).await?.autonomy, tool.autonomy))
    }

    /// Counts a proposal into the tool's daily counters (atomically) and
    /// returns the counters with it included.
    pub(crate) async fn count_today(&self, tenant: &TenantId, tool: &Tool, units: i64) -> Result<(Today, Counted), KeelError> {
        let day = chrono::Utc::now().format("%Y-%m-%d").to_string();
        let expires = Some(now_secs() + DAILY_COUNTER_TTL_SECS);
        let count = self.daily.add(tenant, &tool.name, &day, "count", 1, expires).await?;
        let total_units = match tool.metered_arg {
            Some(_) => match self.daily.add(tenant, &tool.name, &day, "total", units, expires).await {
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
    pub(crate) async fn uncount(&self, tenant: &TenantId, tool: &str, counted: Option<&Counted>) -> Result<(), KeelError> {
        let Some(c) = counted else { return Ok(()) };
        self.daily.add(tenant, tool, &c.day, "count", -1, None).await?;
        if c.units != 0 {
            self.daily.add(tenant, tool, &c.day, "total", -c.units, None).await?;
        }
        Ok(())
    }

    /// Consumes the actions queue: each message proposes an action, exactly
    /// once per idempotency key however often it is delivered. Returns the ids
    /// of the messages that failed (they come back, then go to the DLQ).
    /// A proposal a producer dropped on the actions queue, signed with a key
    /// of the tenant (`authorization` attribute): it proposes as that key's
    /// principal, with its roles and groups, exactly as over HTTP.
    async fn propose_queued(&self, m: &QueueMessage) -> Result<(u16, Action), KeelError> {
        let caller = self.keys.producer(&m.attributes).await?;
        let body: Value = parse_json(m.body.as_bytes(), MAX_QUEUE_MESSAGE_BYTES, "action proposal")?;
        if let Some(field) = ["tenant", "principal", "groups", "roles"].into_iter().find(|f| body.get(f).is_some()) {
            return Err(KeelError::Forbidden(format!("a message may not name its own {field}: it comes from the key in the authorization attribute")));
        }
        let request: ProposeRequest = serde_json::from_value(body).map_err(|e| KeelError::BadRequest(format!("not an action proposal: {e}")))?;
        // The action and its saga's events belong to the producer's tenant incarnation.
        let mut context = keel_core::trace::current().unwrap_or_else(|| keel_core::trace::RequestContext::from_headers(None, None, &m.message_id));
        context.incarnation = caller.incarnation.clone();
        context.actor = Some(keel_core::chain::Actor::of(&caller));
        keel_core::trace::scope(context, self.propose(&caller, request, &Admission::none())).await
    }

    pub async fn consume(&self, messages: &[QueueMessage]) -> Vec<String> {
        let mut failed = Vec::new();
        for m in messages {
            // A producer's message continues the producer's trace when it names one.
            let attribute = |name: &str| m.attributes.get(name).map(String::as_str);
            let context = keel_core::trace::RequestContext::from_headers(attribute("request_id"), attribute("traceparent"), &m.message_id);
            match keel_core::trace::scope(context, self.propose_queued(m)).await {
                Ok(_) => {}
                Err(KeelError::TenantGone(tenant)) => dropped(QueueName::Actions, m, &tenant),
                Err(e) if is_rejection(&e) && reject(self.queue.as_ref(), QueueName::Actions, m, &e.to_string()).await => {}
                Err(e) => {
                    tracing::warn!(message_id = %m.message_id, error = %e, "action message failed");
                    failed.push(m.message_id.clone());
                }
            }
        }
        failed
    }
}

/// The tenant's autonomy, capped by the tool's (suggest-only < one-click < unattended).
pub(crate) fn effective_autonomy(tenant: Autonomy, tool: Option<Autonomy>) -> Autonomy {
    match tool {
        Some(t) if t.rank() < tenant.rank() => t,
        _ => tenant,
    }
}

/// The tool's metered argument in Cedar decimal units: a number from 0 to
/// `MAX_METERED_VALUE` (0 when the arguments leave it out), so daily totals
/// can neither go down nor overflow.
pub(crate) fn metered_units(tool: &Tool, args: &Value) -> Result<i64, KeelError> {
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
pub(crate) fn check_idempotency_key(key: &str) -> Result<(), KeelError> {
    if (1..=MAX_IDEMPOTENCY_KEY_CHARS).contains(&key.len()) && key.bytes().all(|b| b.is_ascii_graphic()) {
        return Ok(());
    }
    Err(KeelError::BadRequest(format!(
        "idempotency_key must be 1 to {MAX_IDEMPOTENCY_KEY_CHARS} visible ASCII characters (no spaces or control characters)"
    )))
}

/// The tool and canonical arguments, hashed: what an idempotency key is bound to.
pub(crate) fn args_fingerprint(tool: &str, args: &Value) -> String {
    hex::encode(Sha256::digest(format!("{tool}\n{args}").as_bytes()))
}

/// The status an action was proposed with, read from where it went since:
/// a replay records the proposal as it was.
fn status_when_proposed(action: &Action) -> ActionStatus {
    use ActionStatus::*;
    match action.status {
        Suggested => Suggested,
        PendingApproval | Expired | Rejected => PendingApproval,
        _ if !action.approvals.is_empty() => PendingApproval,
        _ => Running,
    }
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
