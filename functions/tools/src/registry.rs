//! The tenant's tools (versioned registrations) and its Cedar policy sets.

use super::*;

impl Tools {
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
    pub(crate) async fn tool_at(&self, tenant: &TenantId, name: &str, version: u64) -> Result<Tool, KeelError> {
        let item = self.table.get(&tenant.pk(), &keys::tool_version(name, version)).await?;
        let item = item.ok_or_else(|| KeelError::NotFound(format!("tool {name} v{version} is not registered")))?;
        Ok(serde_json::from_value(item.data)?)
    }

    pub(crate) async fn tool(&self, tenant: &TenantId, name: &str) -> Result<(Tool, u64), KeelError> {
        let item = self.table.get(&tenant.pk(), &keys::tool(name)).await?;
        let item = item.ok_or_else(|| KeelError::NotFound(format!("tool {name} is not registered")))?;
        Ok((serde_json::from_value(item.data)?, item.version))
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
    pub(crate) async fn tenant_policies(&self, tenant: &TenantId) -> Result<Arc<TenantPolicies>, KeelError> {
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
}
