//! Calling hosted models: the decision's candidates in order, each under a
//! budget reservation, through retries and breakers, until one gives an
//! answer the caller accepts.

use crate::budget::{Refused, Reservation};
use crate::providers::HostedModel;
use crate::resilience::call_model;
use crate::router::Hosted;
use crate::{over_budget_error, sse, Routing, Trail};
use keel_core::models::ModelSpec;
use keel_core::ports::{Deltas, ModelRequest, ModelResponse};
use keel_core::tenants::Tenant;
use keel_core::KeelError;
use std::time::{Duration, Instant};

/// Receives streamed text with the name of the catalog model sending it
/// (a fallback model streams under its own name).
pub(crate) type ModelDeltas<'a> = &'a (dyn Fn(&str, &str) + Send + Sync);

/// Checks a model's answer: what the caller makes of it (a grounding
/// check, a label), or why it is rejected and the next model is tried.
pub(crate) type Accept<'a, T> = &'a (dyn Fn(&ModelResponse) -> Result<T, String> + Sync);

/// One request to the hosted models.
pub(crate) struct Generation<'a> {
    pub tenant: &'a Tenant,
    pub workflow: Option<&'a str>,
    pub hosted: &'a Hosted,
    pub request: &'a ModelRequest,
    /// Streamed text, where the caller streams.
    pub deltas: Option<ModelDeltas<'a>>,
    /// The sentence gate of a streamed answer: reset when an answer is rejected.
    pub gate: Option<&'a sse::SentenceGate>,
}

/// A hosted answer that was accepted, with what `accept` made of it.
pub(crate) struct Generated<T> {
    pub model: usize,
    pub response: ModelResponse,
    pub accepted: T,
}

/// The first candidate's budget reservation, made before the request knows
/// it needs a call: beside the cache read, so a miss waits for neither twice.
pub(crate) struct FirstHold {
    model: usize,
    outcome: Result<Option<Reservation>, Refused>,
}

/// Whether a candidate may be called under the tenant's budgets.
enum Budgeted {
    /// Called, holding this reservation (none without budgets).
    Call(Option<Reservation>),
    /// Skipped: it could pass a budget.
    Skip,
}

impl Routing {
    /// Tries the decision's hosted candidates in order: budget reserved before
    /// each call and settled after, a rejected answer moving on to the next
    /// candidate. `None` when none answered.
    pub(crate) async fn generate<T>(
        &self,
        generation: &Generation<'_>,
        accept: Accept<'_, T>,
        trail: &mut Trail,
        mut first: Option<FirstHold>,
    ) -> Result<Option<Generated<T>>, KeelError> {
        // Once a model is over budget, only cheaper ones are worth trying.
        let mut budget_ceiling: Option<i64> = None;
        for i in generation.hosted.candidates() {
            let HostedModel { spec, provider } = &self.models[i];
            let request = ModelRequest { model: spec.model_id.clone(), ..generation.request.clone() };
            let worst_case = worst_case(spec, &request);
            if budget_ceiling.is_some_and(|c| worst_case >= c) {
                continue;
            }
            let outcome = match first.take().filter(|f| f.model == i) {
                Some(held) => held.outcome,
                None => self.hold(generation, worst_case).await,
            };
            let held = match judge(generation.tenant, spec, worst_case, outcome, trail)? {
                Budgeted::Call(held) => held,
                Budgeted::Skip => {
                    budget_ceiling = Some(worst_case);
                    continue;
                }
            };
            let cap = generation.tenant.routing.max_latency_ms;
            let deadline = Instant::now() + Duration::from_millis(cap.unwrap_or(spec.timeout_ms * u64::from(self.options.retry.attempts) + 1_000));
            // Streamed text goes out under the name of the model sending it.
            let named = |d: &str| {
                if let Some(f) = generation.deltas {
                    f(&spec.name, d)
                }
            };
            let named: Option<Deltas> = generation.deltas.map(|_| &named as Deltas);
            let (result, report) = call_model(provider.as_ref(), &generation.tenant.id, spec, &request, &self.breakers, &self.options.retry, deadline, named).await;
            trail.usage.attempts += report.attempts;
            let cost = result.as_ref().map(|r| spec.cost_micro_usd(r.input_tokens, r.output_tokens)).unwrap_or(0);
            let rejected = match result {
                Ok(r) => {
                    trail.usage.input_tokens += r.input_tokens;
                    trail.usage.output_tokens += r.output_tokens;
                    trail.usage.cost_micro_usd += cost;
                    match accept(&r) {
                        Ok(accepted) => {
                            trail.reasons.push(format!("answered by {} ({})", spec.name, spec.tier.as_str()));
                            // Settled at the end, beside the decision event (`finish`).
                            trail.pending.settlement = held.map(|h| (h, cost));
                            return Ok(Some(Generated { model: i, response: r, accepted }));
                        }
                        Err(why) => (format!("{}: {why}; trying the next model", spec.name), format!("{}: {why}", spec.name)),
                    }
                }
                Err(e) => (format!("{} failed after {} attempt(s): {e}", spec.name, report.attempts), format!("{}: {e}", spec.name)),
            };
            let (reason, failure) = rejected;
            trail.reasons.push(reason);
            trail.failures.push(failure);
            if let Some(g) = generation.gate {
                g.reset();
            }
            if let Some(h) = &held {
                self.budgets.settle(h, cost).await?;
            }
        }
        Ok(None)
    }

    /// Reserves the first candidate's worst-case cost, to be used by `generate`
    /// or given back with `release_later`.
    pub(crate) async fn hold_first(&self, generation: &Generation<'_>) -> FirstHold {
        let model = generation.hosted.first;
        let request = ModelRequest { model: self.models[model].spec.model_id.clone(), ..generation.request.clone() };
        FirstHold { model, outcome: self.hold(generation, worst_case(&self.models[model].spec, &request)).await }
    }

    /// Gives back a first reservation no call used, after the response.
    pub(crate) async fn release_later(&self, first: FirstHold) {
        if let Ok(Some(held)) = first.outcome {
            let budgets = self.budgets.clone();
            keel_core::after::hand_off(async move { budgets.release(&held).await }).await;
        }
    }

    /// Reserves `worst_case` against the tenant's budgets (none without budgets).
    async fn hold(&self, generation: &Generation<'_>, worst_case: i64) -> Result<Option<Reservation>, Refused> {
        let tenant = generation.tenant;
        if tenant.budgets.is_empty() {
            return Ok(None);
        }
        self.budgets.reserve(tenant, generation.workflow, worst_case).await.map(Some)
    }
}

/// A call's most it can cost: the whole prompt and every token it may write.
fn worst_case(spec: &ModelSpec, request: &ModelRequest) -> i64 {
    spec.cost_micro_usd(request.prompt_tokens(), request.max_tokens as u64)
}

/// Whether a candidate is called, given its reservation: over a budget, it is
/// skipped where the tenant allows a downgrade, and the request refused where
/// it does not.
fn judge(
    tenant: &Tenant,
    spec: &ModelSpec,
    worst_case: i64,
    outcome: Result<Option<Reservation>, Refused>,
    trail: &mut Trail,
) -> Result<Budgeted, KeelError> {
    match outcome {
        Ok(held) => Ok(Budgeted::Call(held)),
        Err(Refused::OverBudget { scope, limit_usd }) => {
            let scope = format!("{scope} (${limit_usd:.2})");
            if !tenant.routing.allow_downgrade {
                return Err(over_budget_error(&scope));
            }
            trail.reasons.push(format!("{}: up to ${:.6} would exceed {scope}", spec.name, worst_case as f64 / 1e6));
            trail.over_budget = Some(scope);
            Ok(Budgeted::Skip)
        }
        Err(Refused::Store(e)) => Err(e),
    }
}
