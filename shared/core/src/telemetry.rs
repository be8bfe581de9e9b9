//! Metrics, through the `metrics` facade: one set of names whatever the
//! backend (Prometheus text on `keel-local serve`'s `/metrics`, CloudWatch
//! Embedded Metric Format in Lambda). Labels stay low-cardinality (route,
//! tier, outcome); the tenant is a label only where the backend keeps it
//! cheap (Prometheus), and in Lambda a property of the invocation's record.
//!
//! Most business metrics are read off the decision event a function emits
//! anyway (`record_decision`), so each is counted exactly where it is logged.

use crate::chain::{CacheOutcome, DecisionEvent, DecisionKind};
use metrics::{counter, gauge, histogram, Label};
use serde_json::Value;
use std::sync::atomic::{AtomicBool, Ordering};

static TENANT_LABELS: AtomicBool = AtomicBool::new(false);

/// Whether metrics carry a `tenant` label (Prometheus locally); off, the
/// tenant is left to the backend's per-invocation properties (EMF).
pub fn set_tenant_labels(on: bool) {
    TENANT_LABELS.store(on, Ordering::Relaxed);
}

/// `labels`, with the tenant's when tenants are labels here.
fn with_tenant(tenant: &str, mut labels: Vec<Label>) -> Vec<Label> {
    if TENANT_LABELS.load(Ordering::Relaxed) {
        labels.push(Label::new("tenant", tenant.to_string()));
    }
    labels
}

/// One HTTP request: its declared route (the template, never the raw path), status and time.
pub fn http_request(route: &str, status: u16, seconds: f64) {
    counter!("keel_http_requests_total", "route" => route.to_string(), "status" => status.to_string()).increment(1);
    histogram!("keel_http_request_duration_seconds", "route" => route.to_string()).record(seconds);
}

/// One hosted model call: its outcome (`ok`, `error`, `timeout` …) and time.
pub fn model_call(model: &str, outcome: &str, seconds: f64) {
    counter!("keel_model_calls_total", "model" => model.to_string(), "outcome" => outcome.to_string()).increment(1);
    histogram!("keel_model_call_duration_seconds", "model" => model.to_string()).record(seconds);
}

/// A tool call's arguments against its schema (JSON validity).
pub fn tool_arguments(valid: bool) {
    counter!("keel_tool_arguments_total", "result" => if valid { "valid" } else { "invalid" }).increment(1);
}

/// A Cedar decision, enforced or in shadow.
pub fn policy_decision(allowed: bool, mode: &'static str) {
    counter!("keel_policy_decisions_total", "effect" => if allowed { "allow" } else { "deny" }, "mode" => mode).increment(1);
}

/// A budget's use, as a share of its limit.
pub fn budget_used(tenant: &str, budget: &str, ratio: f64) {
    gauge!("keel_budget_used_ratio", with_tenant(tenant, vec![Label::new("budget", budget.to_string())])).set(ratio);
}

/// Messages waiting in a queue and in its dead-letter queue.
pub fn queue_depth(queue: &str, waiting: usize, dead: usize) {
    gauge!("keel_queue_depth", "queue" => queue.to_string()).set(waiting as f64);
    gauge!("keel_dead_letters", "queue" => queue.to_string()).set(dead as f64);
}

/// What a decision event says about routing, caching, models, answers and actions.
pub fn record_decision(tenant: &str, event: &DecisionEvent) {
    let out = &event.outcome;
    if event.kind.is_gateway() {
        let tier = out.get("tier").and_then(Value::as_str).unwrap_or("none").to_string();
        counter!("keel_router_decisions_total", "route" => event.kind.as_str(), "tier" => tier).increment(1);
    }
    if let Some(usage) = &event.usage {
        if usage.cache != CacheOutcome::NotCacheable {
            let result = if usage.cache == CacheOutcome::Hit { "hit" } else { "miss" };
            counter!("keel_cache_requests_total", "cache" => "answers", "result" => result).increment(1);
        }
        let model = out.get("model").and_then(Value::as_str).unwrap_or("none").to_string();
        counter!("keel_model_tokens_total", "model" => model.clone(), "direction" => "input").increment(usage.input_tokens);
        counter!("keel_model_tokens_total", "model" => model, "direction" => "output").increment(usage.output_tokens);
        if usage.cost_micro_usd > 0 {
            // Fractional dollars: a gauge that only grows, read as a counter (Prometheus, per tenant)...
            gauge!("keel_cost_usd_total", with_tenant(tenant, vec![])).increment(usage.cost_micro_usd as f64 / 1e6);
            // ...and whole micro-dollars as a counter, which sums across Lambda containers.
            counter!("keel_cost_micro_usd_total").increment(usage.cost_micro_usd as u64);
        }
    }
    if event.kind == DecisionKind::Ask {
        let outcome = if out.get("refused").and_then(Value::as_bool) == Some(true) {
            "refused"
        } else if out.get("degraded").and_then(Value::as_bool) == Some(true) {
            "degraded"
        } else {
            "answered"
        };
        counter!("keel_answers_total", "outcome" => outcome).increment(1);
        if let Some(g) = out.get("groundedness").and_then(Value::as_f64) {
            histogram!("keel_answer_groundedness").record(g);
        }
    }
    if let Some(status) = event.kind.as_str().strip_prefix("action.") {
        counter!("keel_actions_total", "status" => status).increment(1);
        let own_cost = event.input.get("cost_usd").and_then(Value::as_f64).filter(|c| *c > 0.0 && status == "executed");
        if let Some(cost) = own_cost {
            counter!("keel_action_cost_micro_usd_total").increment((cost * 1e6).round() as u64);
        }
    }
}
