//! The tenant's tools (versioned registrations) and its Cedar policy sets.

use super::*;
use keel_core::http::ApiResponse;

/// Why `after` lets a tool run with less review than `before`: a lower
/// risk, a higher autonomy of its own, or steps that can no longer be undone.
fn loosened(before: &Tool, after: &Tool) -> Option<&'static str> {
    let autonomy = |t: &Tool| t.autonomy.map_or(0, |a| a.rank() + 1);
    if before.risk == Risk::High && after.risk == Risk::Low {
        Some("it lowers the tool's risk")
    } else if autonomy(after) > autonomy(before) {
        Some("it raises the tool's autonomy")
    } else if before.reversible && !after.reversible {
        Some("its steps can no longer be undone")
    } else {
        None
    }
}

/// The most one execution of a tool may be declared to cost.
const MAX_EXECUTION_COST_USD: f64 = 1_000_000.0;

impl Tools {
    /// Registers a new version of a tool (recorded in the tenant's chain); the
    /// answer is the tool, or (a weakening under two-person changes) the change
    /// request that waits for a second admin, for a 202.
    pub(crate) async fn put_tool(&self, caller: &Caller, name: &str, input: ToolInput) -> Result<ApiResponse, KeelError> {
        let tenant = caller.tenant()?;
        schema::check_schema(&input.input_schema)?;
        let steps = match (input.steps, input.connector) {
            (Some(steps), None) if input.compensation.is_none() => steps,
            (None, Some(connector)) => vec![ToolStep { name: "main".into(), connector, compensation: input.compensation }],
            _ => return Err(KeelError::BadRequest("give either connector (and compensation) or steps".into())),
        };
        if steps.is_empty() || steps.len() > MAX_STEPS {
            return Err(KeelError::BadRequest(format!("a tool has 1 to {MAX_STEPS} steps")));
        }
        let pins = self.egress_pins(tenant).await?;
        for (i, step) in steps.iter().enumerate() {
            parse_path_id("step", &step.name)?;
            if steps[..i].iter().any(|s| s.name == step.name) {
                return Err(KeelError::BadRequest(format!("step name {:?} is used twice", step.name)));
            }
            for (field, c) in std::iter::once(("connector", &step.connector)).chain(step.compensation.iter().map(|c| ("compensation", c))) {
                self.connectors.check(c, pins.as_ref(), format!("/steps/{i}/{field}/url")).await?;
            }
        }
        if let Some(c) = &input.dry_run {
            self.connectors.check(c, pins.as_ref(), "/dry_run/url".into()).await?;
        }
        if input.cost_usd.is_some_and(|c| !(0.0..=MAX_EXECUTION_COST_USD).contains(&c)) {
            return Err(KeelError::BadRequest(format!("cost_usd must be a number from 0 to {MAX_EXECUTION_COST_USD}")));
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
            cost_usd: input.cost_usd,
            version: existing.as_ref().map_or(1, |(t, _)| t.version + 1),
            updated_at: now_rfc3339(),
        };
        // The latest version, and an immutable copy of this one: an action runs the version it was approved with.
        let before = existing.as_ref().map(|(t, _)| serde_json::to_value(t)).transpose()?.unwrap_or_default();
        let weakened = existing.as_ref().and_then(|(old, _)| loosened(old, &tool));
        let replacing = existing.map(|(_, v)| v);
        let target = format!("tool {name}");
        if let Some(why) = weakened {
            if self.tenants.require_active(tenant).await?.governance.two_person_changes {
                let reason = format!("{why}, and tenant {tenant} asks for two-person changes");
                let (latest, copy) = self.tools.pending_put(&tool, replacing)?;
                let mut request = ChangeRequest::new(AdminChange::ToolRegistered, target, reason, Requester::of(caller), before, serde_json::to_value(&tool)?, latest);
                request.also = vec![copy];
                return submit(&self.change_requests, self.queue.as_ref(), tenant, request).await;
            }
        }
        self.tools.put(tenant, &tool, replacing).await.map_err(lost_race(&format!("tool {name} changed meanwhile; retry")))?;
        let event = admin_change_event(&caller.principal, AdminChange::ToolRegistered, &target, before, serde_json::to_value(&tool)?);
        send_decision(self.queue.as_ref(), tenant, &event).await?;
        Ok(ApiResponse::ok(&tool))
    }

    /// The tool as it was when the action was proposed.
    pub(crate) async fn tool_at(&self, tenant: &TenantId, name: &str, version: u64) -> Result<Tool, KeelError> {
        let tool = self.tools.version(tenant, name, version).await?;
        tool.ok_or_else(|| KeelError::NotFound(format!("tool {name} v{version} is not registered")))
    }

    pub(crate) async fn tool(&self, tenant: &TenantId, name: &str) -> Result<(Tool, u64), KeelError> {
        self.tools.latest(tenant, name).await?.ok_or_else(|| KeelError::NotFound(format!("tool {name} is not registered")))
    }

    /// The latest version of each of the tenant's tools.
    pub(crate) async fn tools(&self, tenant: &TenantId) -> Result<Vec<Tool>, KeelError> {
        self.tools.all_latest(tenant).await
    }

    /// The tenant's policy texts and their versions.
    pub(crate) async fn policy_texts(&self, tenant: &TenantId) -> Result<Value, KeelError> {
        let mut out = json!({"enforced": {"policies": "", "version": 0}, "shadow": {"policies": "", "version": 0}});
        for set in self.policy_sets.sets(tenant).await? {
            out[set.mode] = json!({"policies": set.text, "version": set.version, "updated_at": set.updated_at});
        }
        Ok(out)
    }

    /// Replaces a policy set (recorded in the tenant's chain). Replacing the
    /// enforced set of a tenant with two-person changes only files a change
    /// request: returned, for a 202.
    pub(crate) async fn put_policies(&self, caller: &Caller, mode: &str, text: String) -> Result<Option<ApiResponse>, KeelError> {
        let tenant = caller.tenant()?;
        let current = self.policy_texts(tenant).await?;
        // Parsed (and checked) as the sets will be evaluated: together, so they must combine.
        let other = if mode == "enforced" { "shadow" } else { "enforced" };
        let other_text = current[other]["policies"].as_str().unwrap_or_default();
        let (enforced, shadow) = if mode == "enforced" { (text.as_str(), other_text) } else { (other_text, text.as_str()) };
        TenantPolicies::compile(enforced.to_string(), shadow.to_string()).await?;
        let version = current[mode]["version"].as_u64().unwrap_or(0);
        let (before, target) = (current[mode]["policies"].clone(), format!("policies {mode}"));
        if mode == "enforced" && self.tenants.require_active(tenant).await?.governance.two_person_changes {
            let write = self.policy_sets.pending_put(mode, &text, version, now_rfc3339());
            let reason = format!("it replaces the enforced policy set, and tenant {tenant} asks for two-person changes");
            let request = ChangeRequest::new(AdminChange::PoliciesReplaced, target, reason, Requester::of(caller), before, json!(text), write);
            return submit(&self.change_requests, self.queue.as_ref(), tenant, request).await.map(Some);
        }
        let put = self.policy_sets.put(tenant, mode, text.clone(), version, now_rfc3339()).await;
        put.map_err(lost_race("the policies changed meanwhile; retry"))?;
        let event = admin_change_event(&caller.principal, AdminChange::PoliciesReplaced, &target, before, json!(text));
        send_decision(self.queue.as_ref(), tenant, &event).await?;
        Ok(None)
    }

    /// The tenant's compiled policies: one read, compiled once per version
    /// of this incarnation of the tenant.
    pub(crate) async fn tenant_policies(&self, tenant: &TenantId) -> Result<Arc<TenantPolicies>, KeelError> {
        let sets = self.policy_sets.sets(tenant).await?;
        if sets.is_empty() {
            return Ok(self.gate.defaults());
        }
        // Versions start again at 1 for a tenant created again under a deleted one's id: the incarnation tells them apart.
        let incarnation = self.tenants.incarnation(tenant).await?.unwrap_or_default();
        let key = sets.iter().fold(format!("{tenant}#{incarnation}"), |k, set| format!("{k}/{}@{}", set.mode, set.version));
        if let Some(compiled) = self.policies.get(key.as_str()) {
            return Ok(compiled);
        }
        let text = |mode: &str| sets.iter().find(|set| set.mode == mode).map(|set| set.text.clone()).unwrap_or_default();
        let compiled = Arc::new(TenantPolicies::compile(text("enforced"), text("shadow")).await?);
        self.policies.insert(key, compiled.clone());
        Ok(compiled)
    }
}
