//! The preview of an action before it runs.

use super::*;

impl Tools {
    /// What will change, its impact and how to roll it back, before anything
    /// runs: the connector's own dry run where the tool has one, and always
    /// the requests Keel will send.
    pub(crate) async fn preview(&self, tenant: &TenantId, tool: &Tool, args: &Value, idempotency_key: &str) -> Value {
        let key = format!("{tenant}:{idempotency_key}");
        let dry_run = match &tool.dry_run {
            None => json!(null),
            Some(spec) => {
                let body = json!({"tool": tool.name, "args": args, "dry_run": true});
                match self.call_connector(tenant, spec, &format!("{key}:dry-run"), &body).await {
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
