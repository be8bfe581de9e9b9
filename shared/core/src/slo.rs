//! Service level objectives per surface, measured from the decision log:
//! each request-path decision records its latency, and the audit consumer
//! counts, per tenant and hour, how many requests of a surface there were,
//! how many were slower than the objective and how many failed to deliver
//! what the surface is for. `GET /v1/slo` turns those into attainment,
//! error budget left and burn rate over 1 hour, 24 hours and 30 days.

use crate::chain::{DecisionEvent, DecisionKind};
use crate::KeelError;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// What users experience as one kind of request.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Surface {
    /// Inline hints: classify and rank.
    Hints,
    /// Drafts and asks: ask and chat.
    Asks,
    /// Action bundles: proposing an action (with its preview).
    Actions,
}

impl Surface {
    pub fn as_str(self) -> &'static str {
        match self {
            Surface::Hints => "hints",
            Surface::Asks => "asks",
            Surface::Actions => "actions",
        }
    }

    /// The surface a declared route serves, if it is one that is measured.
    pub fn of_route(route: &str) -> Option<Self> {
        match route {
            "POST /v1/classify" | "POST /v1/rank" => Some(Surface::Hints),
            "POST /v1/ask" | "POST /v1/chat/completions" => Some(Surface::Asks),
            "POST /v1/actions" => Some(Surface::Actions),
            _ => None,
        }
    }

    /// The surface a decision event measures, if it is a request's own.
    pub fn of(event: &DecisionEvent) -> Option<Self> {
        match event.kind {
            DecisionKind::Classify | DecisionKind::Rank => Some(Surface::Hints),
            DecisionKind::Ask | DecisionKind::Chat => Some(Surface::Asks),
            DecisionKind::ActionProposed => Some(Surface::Actions),
            _ => None,
        }
    }
}

/// One surface's objectives: `latency_ms` at the 95th percentile, and the
/// share of requests that must deliver.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SloSpec {
    pub surface: Surface,
    pub p95_ms: u64,
    pub success: f64,
}

/// How an hour is written in the service-level counters' keys (UTC).
pub const HOUR_FORMAT: &str = "%Y-%m-%dT%H";

/// The share of requests the latency objective covers (a p95).
pub const LATENCY_TARGET: f64 = 0.95;

/// The seeds' objectives: hints p95 ≤ 150 ms, asks ≤ 3 s, action bundles ≤ 5 s; 99.9% success.
pub fn default_slos() -> Vec<SloSpec> {
    [(Surface::Hints, 150), (Surface::Asks, 3_000), (Surface::Actions, 5_000)]
        .into_iter()
        .map(|(surface, p95_ms)| SloSpec { surface, p95_ms, success: 0.999 })
        .collect()
}

/// `KEEL_SLOS`: a JSON array of `{surface, p95_ms, success}`; surfaces left out keep their defaults.
pub fn parse_slos(json: &str) -> Result<Vec<SloSpec>, KeelError> {
    let given: Vec<SloSpec> = serde_json::from_str(json).map_err(|e| KeelError::Config(format!("KEEL_SLOS: {e}")))?;
    if given.iter().any(|s| !(s.success > 0.0 && s.success < 1.0)) {
        return Err(KeelError::Config("KEEL_SLOS: success is a share between 0 and 1 (exclusive)".into()));
    }
    let mut slos = default_slos();
    for spec in given {
        match slos.iter_mut().find(|s| s.surface == spec.surface) {
            Some(s) => *s = spec,
            None => slos.push(spec),
        }
    }
    Ok(slos)
}

/// Whether the request failed to deliver what its surface is for: an ask
/// or chat answered degraded (the models it was routed to failed) or not at
/// all, a hint without a result.
pub fn failed(event: &DecisionEvent) -> bool {
    let out = &event.outcome;
    let degraded = out.get("degraded").is_some_and(|d| !d.is_null() && d != &Value::Bool(false));
    match event.kind {
        DecisionKind::Ask => degraded,
        DecisionKind::Chat => degraded || out.get("answered") == Some(&Value::Bool(false)),
        DecisionKind::Classify => degraded || out.get("label").is_none_or(Value::is_null),
        _ => false,
    }
}

/// The audit-queue message kind (`keel_kind` attribute) of a request that
/// failed before making a decision: it counts against its surface's success.
pub const FAILURE_MESSAGE: &str = "slo_failure";

/// Reports a handler failure (5xx) of a measured route to the audit queue.
pub async fn report_failure(queue: &dyn crate::ports::WorkQueue, tenant: &crate::TenantId, incarnation: Option<&str>, surface: Surface) {
    let body = serde_json::json!({"surface": surface, "at": crate::time::now_rfc3339()}).to_string();
    let mut attributes = crate::decisions::tenant_attributes(tenant, incarnation);
    attributes.insert("keel_kind".to_string(), FAILURE_MESSAGE.to_string());
    if let Err(e) = queue.send(crate::ports::QueueName::Audit, body, attributes).await {
        tracing::warn!(error = %e, "a failed request was not counted against its objective");
    }
}

/// A window's counts and what they mean against `spec`.
pub fn report(spec: &SloSpec, total: i64, slow: i64, failed: i64) -> Value {
    let share = |n: i64| (total > 0).then(|| n as f64 / total as f64);
    let budget = |bad: Option<f64>, target: f64| {
        bad.map(|b| serde_json::json!({"attainment": 1.0 - b, "target": target, "error_budget_left": 1.0 - b / (1.0 - target), "burn_rate": b / (1.0 - target)}))
    };
    serde_json::json!({
        "requests": total,
        "latency": budget(share(slow), LATENCY_TARGET),
        "success": budget(share(failed), spec.success),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burn_rate_is_the_bad_share_over_what_the_target_allows() {
        let spec = SloSpec { surface: Surface::Asks, p95_ms: 3000, success: 0.99 };
        let r = report(&spec, 1000, 100, 20);
        assert!((r["success"]["burn_rate"].as_f64().unwrap() - 2.0).abs() < 1e-9, "2% failed where 1% is allowed: {r}");
        assert!((r["success"]["error_budget_left"].as_f64().unwrap() + 1.0).abs() < 1e-9, "overspent by one budget");
        assert!((r["latency"]["burn_rate"].as_f64().unwrap() - 2.0).abs() < 1e-9, "10% slow where 5% may be");
        assert_eq!(report(&spec, 0, 0, 0)["success"], Value::Null, "no requests, no attainment");
    }

    #[test]
    fn configured_objectives_replace_the_defaults_surface_by_surface() {
        let slos = parse_slos(r#"[{"surface": "asks", "p95_ms": 1000, "success": 0.99}]"#).unwrap();
        assert_eq!(slos.len(), 3);
        assert_eq!(slos.iter().find(|s| s.surface == Surface::Asks).map(|s| s.p95_ms), Some(1000));
        assert!(parse_slos(r#"[{"surface": "asks", "p95_ms": 1, "success": 1.5}]"#).is_err());
        assert!(parse_slos(r#"[{"surface": "dreams", "p95_ms": 1, "success": 0.9}]"#).is_err());
    }
}
