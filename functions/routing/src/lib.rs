//! routing: the model gateway behind `POST /v1/ask` (grounded answers over
//! the tenant's documents) and `POST /v1/chat/completions` (OpenAI-compatible,
//! no retrieval), plus `POST /v1/classify` and `POST /v1/rank`, which the
//! embedding model answers in-function (`classify`). For each request it
//! picks the lowest tier that can answer (`router`), serves repeats from the
//! cache (`cache`), reserves budget before a hosted call (`budget`), calls
//! models with timeouts, retries, breakers and a fallback chain
//! (`resilience`), checks that answers cite their evidence (`grounding`) and
//! keeps instructions inside documents away from the model (`guard`). Every
//! request ends in one decision event with its usage.

pub mod answer;
mod ask;
pub mod budget;
pub mod cache;
mod chat;
mod generate;
pub mod classify;
pub mod in_function;
pub mod rank;
pub mod lambda;
pub mod routes;
pub mod grounding;
pub mod guard;
pub mod providers;
pub mod resilience;
pub mod router;
pub mod sse;

use answer::{evidence_coverage, extractive_answer, Answer};
use budget::{BudgetCounters, Reservation};
use cache::AnswerCache;
use generate::{Generated, Generation, ModelDeltas};
use keel_core::auth::Caller;
use keel_core::chain::{CacheOutcome, DecisionEvent, DecisionKind, Usage};
use keel_core::decisions::send_decision;
use keel_core::ids::{new_id, TenantId};
use keel_core::rate::Admission;
use keel_core::models::{ModelSpec, Tier};
use keel_core::ports::{ChatMessage, ModelRequest, ModelResponse, Table, WorkQueue};
use keel_core::tenants::{Tenant, TenantStore};
use keel_core::time::now_rfc3339;
use keel_core::KeelError;
use keel_retrieval::{Retrieval, SearchHit};
use providers::HostedModel;
use resilience::{BreakerSettings, ModelBreakers, RetryPolicy};
use router::{decide, Decision, RouteError, RouteInput};
use serde::{Deserialize, Serialize};
use serde_json::json;
use sha2::{Digest, Sha256};
use sse::Events;
use std::sync::Arc;

/// Longest question accepted, in characters.
pub const MAX_QUESTION_CHARS: usize = 2_000;
/// Evidence chunks retrieved per question.
const EVIDENCE_K: usize = 5;

pub struct RoutingOptions {
    /// Refusal thresholds (see `keel_core::config`).
    pub min_coverage: f32,
    pub min_similarity: f32,
    /// What a call asks for when the request names nothing, and the most any may ask for.
    pub max_tokens: u32,
    /// Lower caps by plan.
    pub plan_max_tokens: std::collections::BTreeMap<String, u32>,
    pub retry: RetryPolicy,
    pub breakers: BreakerSettings,
}

impl RoutingOptions {
    pub fn from_config(config: &keel_core::config::Config) -> Self {
        Self {
            min_coverage: config.min_evidence_coverage,
            min_similarity: config.min_evidence_similarity,
            max_tokens: config.model_max_tokens,
            plan_max_tokens: config.plan_max_tokens.clone(),
            retry: RetryPolicy::default(),
            breakers: BreakerSettings::default(),
        }
    }
}

pub struct Routing {
    retrieval: Arc<Retrieval>,
    answers: AnswerCache,
    budgets: BudgetCounters,
    queue: Arc<dyn WorkQueue>,
    tenants: Arc<TenantStore>,
    models: Vec<HostedModel>,
    /// The models' specs, side by side for the router.
    catalog: Vec<ModelSpec>,
    breakers: ModelBreakers,
    /// The embedding model for in-function labels and rankings.
    in_function: in_function::InFunction,
    options: RoutingOptions,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, schemars::JsonSchema)]
pub struct Citation {
    pub doc_id: String,
    pub chunk_id: String,
    pub anchor: keel_core::chunking::Anchor,
}

#[derive(Clone, Debug, Serialize, Deserialize, schemars::JsonSchema)]
pub struct AskResponse {
    pub answer: String,
    pub citations: Vec<Citation>,
    pub refused: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    pub tier: Tier,
    pub model: String,
    pub cost: f64,
    pub decision_id: String,
    /// Share of the answer's sentences that cite evidence, as generated (before repair).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub groundedness: Option<f32>,
    /// Set when hosted models failed and the answer came from a degraded mode.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub degraded: Option<String>,
    pub cached: bool,
    /// Why the gateway answered the way it did, step by step.
    pub route: Vec<String>,
}

#[derive(Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AskRequest {
    pub question: String,
    /// The budgeted workflow this question belongs to.
    #[serde(default)]
    pub workflow: Option<String>,
    #[serde(default)]
    pub stream: bool,
}

/// A question with its evidence, as the gateway sees it once retrieved.
#[derive(Clone, Copy)]
struct Grounded<'a> {
    question: &'a str,
    evidence: &'a [SearchHit],
    /// `guard::scan` of each passage.
    flags: &'a [Vec<guard::Flag>],
    strength: &'a Strength,
}


/// The running account of one request: usage and reasons.
#[derive(Default)]
struct Trail {
    usage: Usage,
    reasons: Vec<String>,
    /// A candidate was skipped for budget (as opposed to failing).
    over_budget: Option<String>,
    failures: Vec<String>,
    /// Writes left for the end of the request, beside its decision event.
    pending: Pending,
}

/// The writes a request leaves for its end (`Routing::finish`).
#[derive(Default)]
struct Pending {
    /// A fresh answer for the cache.
    cache_write: Option<CacheWrite>,
    /// The accepted model call's budget reservation, and what the call really cost.
    settlement: Option<(Reservation, i64)>,
}

struct CacheWrite {
    key: String,
    value: serde_json::Value,
    ttl: u64,
}

impl Trail {
    fn new(reasons: Vec<String>) -> Self {
        Self { reasons, ..Default::default() }
    }

    /// Every candidate was skipped for budget.
    fn budget_only(&self) -> bool {
        self.failures.is_empty() && self.over_budget.is_some()
    }

    /// Notes why an in-function answer stands in for a hosted one; returns
    /// the degraded mode (`None` when the hosted models were only over budget).
    fn downgrade(&mut self, answer: &str, mode: &str) -> Option<String> {
        if self.budget_only() {
            self.reasons.push(format!("over budget: downgraded to {answer}"));
            None
        } else {
            self.reasons.push(format!("hosted models failed: degraded to {answer}"));
            Some(mode.to_string())
        }
    }

    /// The error when no hosted model answered and nothing in-function may.
    fn no_answer(&self) -> KeelError {
        match &self.over_budget {
            Some(scope) if self.budget_only() => over_budget_error(scope),
            _ => KeelError::Unavailable(format!("no hosted model could answer: {}", self.failures.join("; "))),
        }
    }
}

/// How well the evidence matches the question.
struct Strength {
    /// Best cosine similarity (absent in lexical-only mode).
    similarity: Option<f32>,
    /// Share of the question's terms in the top evidence.
    coverage: f32,
}

impl Strength {
    fn of(question: &str, evidence: &[SearchHit]) -> Self {
        Self {
            similarity: evidence.iter().filter_map(|h| h.similarity).reduce(f32::max),
            coverage: evidence_coverage(question, evidence),
        }
    }

    /// Similarity in hybrid mode, term coverage in lexical-only mode.
    fn confidence(&self) -> f32 {
        self.similarity.unwrap_or(self.coverage)
    }
}

#[derive(Serialize, Deserialize)]
struct CachedAnswer {
    text: String,
    cited_chunks: Vec<String>,
    groundedness: Option<f32>,
    model: String,
}

/// What a gateway request's decision event holds besides its usage.
struct Record {
    input: serde_json::Value,
    evidence: serde_json::Value,
    outcome: serde_json::Value,
}

impl Routing {
    pub fn new(
        retrieval: Arc<Retrieval>,
        table: Arc<dyn Table>,
        queue: Arc<dyn WorkQueue>,
        tenants: Arc<TenantStore>,
        models: Vec<HostedModel>,
        options: RoutingOptions,
    ) -> Self {
        let catalog = models.iter().map(|m| m.spec.clone()).collect();
        let breakers = ModelBreakers::new(options.breakers.clone());
        let (answers, budgets) = (AnswerCache::new(table.clone()), BudgetCounters::new(table, queue.clone(), tenants.clone()));
        Self { retrieval, answers, budgets, queue, tenants, models, catalog, breakers, in_function: in_function::InFunction::new(), options }
    }

    async fn tenant(&self, id: &TenantId) -> Result<Tenant, KeelError> {
        self.tenants.require_active(id).await
    }

    /// The most output tokens `tenant`'s calls may ask for, and what sets it:
    /// the platform's `KEEL_MODEL_MAX_TOKENS`, or the tenant's plan's lower cap.
    fn max_tokens_for(&self, tenant: &Tenant) -> (u32, &'static str) {
        match self.options.plan_max_tokens.get(&tenant.plan) {
            Some(&plan) if plan < self.options.max_tokens => (plan, "plan"),
            _ => (self.options.max_tokens, "platform"),
        }
    }

    fn route_input<'a>(
        &'a self,
        tenant: &'a Tenant,
        confidence: Option<f32>,
        requested: Option<&'a str>,
        prompt_tokens: u64,
        open: &'a dyn Fn(&str) -> bool,
    ) -> RouteInput<'a> {
        RouteInput {
            policy: &tenant.routing,
            catalog: &self.catalog,
            plan: &tenant.plan,
            kill_switch: tenant.kill_switch,
            confidence,
            signal: "evidence confidence",
            requested,
            prompt_tokens,
            open,
        }
    }

    /// Ends a request: its fresh cache entry, the settlement of its budget
    /// reservation and its decision event are independent writes, issued
    /// together after the response (`keel_core::after`): the caller waits
    /// for none of them. The reservation already holds the call's worst case,
    /// so a settlement that never lands can only overstate spend. A write
    /// that fails is logged.
    async fn finish(&self, tenant: &TenantId, pending: Pending, record: impl std::future::Future<Output = Result<(), KeelError>> + Send + 'static) {
        let (answers, budgets, tenant) = (self.answers.clone(), self.budgets.clone(), tenant.clone());
        keel_core::after::hand_off(async move {
            let store = async {
                match &pending.cache_write {
                    Some(w) => answers.put(&tenant, &w.key, &w.value, w.ttl).await,
                    None => Ok(()),
                }
            };
            let settled = async {
                match &pending.settlement {
                    Some((held, cost)) => budgets.settle(held, *cost).await,
                    None => Ok(()),
                }
            };
            let (stored, settled, recorded) = tokio::join!(store, settled, record);
            if let Err(error) = stored.and(settled).and(recorded) {
                tracing::error!(%tenant, %error, "a gateway request's final writes failed");
            }
        })
        .await
    }

    /// A gateway request's decision event (one per request, with its usage),
    /// to be sent to the audit queue by the future this returns.
    fn record_decision(&self, caller: &Caller, id: &str, kind: DecisionKind, record: Record, usage: &Usage) -> impl std::future::Future<Output = Result<(), KeelError>> + Send + 'static {
        let Record { input, evidence, outcome } = record;
        let event = DecisionEvent {
            event_id: id.into(),
            decision_id: id.into(),
            kind,
            principal: caller.principal.clone(),
            at: now_rfc3339(),
            input,
            evidence,
            action: json!(null),
            outcome,
            usage: Some(usage.clone()),
            request_id: None,
            trace_id: None,
            latency_ms: None,
            actor: None,
        };
        let (queue, tenant) = (self.queue.clone(), caller.tenant().cloned());
        async move { send_decision(queue.as_ref(), &tenant?, &event).await }
    }
}

fn over_budget_error(scope: &str) -> KeelError {
    KeelError::TooManyRequests(format!(
        "budget exhausted: this request could exceed {scope}; raise the budget or allow downgrades in the routing policy"
    ))
}

fn route_error(e: RouteError, what: &str) -> KeelError {
    match e {
        RouteError::NotAllowed(m) => KeelError::NotFound(m),
        RouteError::NoModel(m) => KeelError::Unavailable(format!("cannot {what}: {m}")),
    }
}

