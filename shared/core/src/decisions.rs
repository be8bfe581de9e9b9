//! Recording decisions: the events a function sends to the audit queue
//! (with the running request's ids and latency), and an admin's change as an
//! event. The audit function appends what arrives to the tenant's chain (`chain`).

use crate::chain::{DecisionEvent, DecisionKind};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// What an admin changed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AdminChange {
    TenantCreated,
    /// Settings, status, autonomy and the kill switch.
    TenantUpdated,
    KeyCreated,
    KeyRevoked,
    KeyRotated,
    ToolRegistered,
    PoliciesReplaced,
    /// A change that waits for a second admin (two-person changes).
    ChangeRequested,
    ChangeApproved,
    ChangeRejected,
    /// Where budget alerts are delivered (the webhook's host, never its secret).
    WebhookChanged,
}

/// An admin's change as the tenant's chain records it: who, what, on which
/// target, the state before and after. Callers leave secrets out of both.
pub fn admin_change_event(principal: &str, change: AdminChange, target: &str, before: Value, after: Value) -> DecisionEvent {
    let id = crate::ids::new_id("adm");
    DecisionEvent {
        event_id: id.clone(),
        decision_id: id,
        kind: DecisionKind::AdminChange,
        principal: principal.into(),
        at: crate::time::now_rfc3339(),
        input: serde_json::json!({"change": change, "target": target}),
        evidence: Value::Null,
        action: Value::Null,
        outcome: serde_json::json!({"before": before, "after": after}),
        usage: None,
        request_id: None,
        trace_id: None,
        latency_ms: None,
        actor: None,
    }
}

/// The message attribute naming the tenant incarnation a message was made
/// for: its consumer drops it when the tenant no longer has that incarnation.
pub const INCARNATION_ATTRIBUTE: &str = "incarnation";

/// The attributes every internal message for a tenant carries: the tenant,
/// and the incarnation it was made for, where known (`tenants::TenantStore::outlived`).
pub fn tenant_attributes(tenant: &crate::TenantId, incarnation: Option<&str>) -> std::collections::HashMap<String, String> {
    let mut attributes = std::collections::HashMap::from([("tenant".to_string(), tenant.to_string())]);
    if let Some(incarnation) = incarnation {
        attributes.insert(INCARNATION_ATTRIBUTE.into(), incarnation.into());
    }
    attributes
}

/// Sends a decision event to the audit queue, the tenant in a message attribute.
pub async fn send_decision(
    queue: &dyn crate::ports::WorkQueue,
    tenant: &crate::TenantId,
    event: &DecisionEvent,
) -> Result<(), crate::KeelError> {
    send_decision_in(queue, tenant, event, crate::trace::current().as_ref()).await
}

/// `send_decision` for work outside a request's scope (a saga step): the
/// event carries the ids of the request `context` names.
pub async fn send_decision_in(
    queue: &dyn crate::ports::WorkQueue,
    tenant: &crate::TenantId,
    event: &DecisionEvent,
    context: Option<&crate::trace::RequestContext>,
) -> Result<(), crate::KeelError> {
    let mut event = event.clone();
    let mut attributes = tenant_attributes(tenant, context.and_then(|c| c.incarnation.as_deref()));
    if let Some(c) = context {
        // Latency is the running request's own, not that of the request an action step continues.
        let running = crate::trace::current().is_some_and(|now| now.request_id == c.request_id && now.traceparent == c.traceparent);
        if running && c.started_ms > 0 && crate::slo::Surface::of(&event).is_some() {
            event.latency_ms.get_or_insert((chrono::Utc::now().timestamp_millis() - c.started_ms).max(0) as u64);
        }
        if event.actor.is_none() {
            event.actor = c.actor.clone();
        }
        event.request_id.get_or_insert_with(|| c.request_id.clone());
        event.trace_id.get_or_insert_with(|| c.trace_id().to_string());
        attributes.insert("request_id".into(), c.request_id.clone());
        attributes.insert("traceparent".into(), c.child());
    }
    queue.send(crate::ports::QueueName::Audit, serde_json::to_string(&event)?, attributes).await?;
    crate::telemetry::record_decision(tenant.as_str(), &event);
    Ok(())
}
