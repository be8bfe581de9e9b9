//! The model catalog (which hosted models exist, their prices and limits) and
//! each tenant's routing policy and budgets. The catalog comes from config
//! (`KEEL_MODELS`); policies and budgets live on the tenant record and are
//! validated against the catalog when the platform admin sets them.

use crate::error::KeelError;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The gateway's tiers, cheapest first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Tier {
    /// Rules and the answer cache: no model at all.
    T0,
    /// In-function: extractive answers from evidence, small ONNX models.
    T1,
    /// A small hosted model.
    T2,
    /// A large hosted model.
    T3,
}

impl Tier {
    pub fn as_str(self) -> &'static str {
        match self {
            Tier::T0 => "t0",
            Tier::T1 => "t1",
            Tier::T2 => "t2",
            Tier::T3 => "t3",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProviderKind {
    /// Bedrock `Converse`; `model_id` is the Bedrock model id.
    Bedrock,
    /// SageMaker `InvokeEndpoint` with an OpenAI-style messages payload
    /// (TGI and vLLM serve it); `model_id` is the endpoint name.
    Sagemaker,
    /// An OpenAI-compatible HTTP server (`base_url` + `/chat/completions`).
    Openai,
}

/// One hosted model of the catalog, with its price (the price table is the catalog).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSpec {
    /// The name tenants' policies and `/v1/chat/completions` requests use.
    pub name: String,
    pub provider: ProviderKind,
    pub model_id: String,
    /// T2 (small) or T3 (large).
    pub tier: Tier,
    pub usd_per_1k_input: f64,
    pub usd_per_1k_output: f64,
    /// One attempt's time limit.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    /// Base URL of an `openai` provider, e.g. `http://127.0.0.1:8000/v1`.
    #[serde(default)]
    pub base_url: Option<String>,
    /// Name of the environment variable holding an `openai` provider's API key.
    #[serde(default)]
    pub api_key_env: Option<String>,
    /// Plans entitled to this model; absent means every plan.
    #[serde(default)]
    pub plans: Option<Vec<String>>,
}

fn default_timeout_ms() -> u64 {
    10_000
}

impl ModelSpec {
    /// Cost in micro-USD of a call with these token counts.
    pub fn cost_micro_usd(&self, input_tokens: u64, output_tokens: u64) -> i64 {
        ((input_tokens as f64 * self.usd_per_1k_input + output_tokens as f64 * self.usd_per_1k_output) * 1000.0).round() as i64
    }

    pub fn entitled(&self, plan: &str) -> bool {
        self.plans.as_ref().is_none_or(|p| p.iter().any(|x| x == plan))
    }
}

/// Parses and validates `KEEL_MODELS` (a JSON array of `ModelSpec`).
pub fn parse_catalog(json: &str) -> Result<Vec<ModelSpec>, KeelError> {
    let bad = |m: String| KeelError::BadRequest(format!("KEEL_MODELS: {m}"));
    let catalog: Vec<ModelSpec> = serde_json::from_str(json).map_err(|e| bad(e.to_string()))?;
    for (i, m) in catalog.iter().enumerate() {
        if m.name.is_empty() || catalog[..i].iter().any(|o| o.name == m.name) {
            return Err(bad(format!("model names must be non-empty and unique ({:?})", m.name)));
        }
        if !matches!(m.tier, Tier::T2 | Tier::T3) {
            return Err(bad(format!("{}: hosted models are tier t2 or t3", m.name)));
        }
        let price_ok = |p: f64| p.is_finite() && p >= 0.0;
        if !price_ok(m.usd_per_1k_input) || !price_ok(m.usd_per_1k_output) {
            return Err(bad(format!("{}: prices must be finite and not negative", m.name)));
        }
        if m.timeout_ms == 0 {
            return Err(bad(format!("{}: timeout_ms must be positive", m.name)));
        }
        if m.provider == ProviderKind::Openai && m.base_url.as_deref().is_none_or(|u| !u.starts_with("http")) {
            return Err(bad(format!("{}: an openai provider needs base_url (http or https)", m.name)));
        }
    }
    Ok(catalog)
}

/// Longest a cached answer may live.
pub const MAX_CACHE_TTL_SECS: u64 = 30 * 24 * 3600;

/// A tenant's routing policy.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct RoutingPolicy {
    /// Tiers the gateway may use for this tenant.
    pub tiers: Vec<Tier>,
    /// Catalog models the tenant may use, in order of preference; empty means
    /// every model its plan is entitled to, cheapest first.
    pub models: Vec<String>,
    /// Cap on one hosted call, retries included.
    pub max_latency_ms: Option<u64>,
    /// Evidence confidence below which an in-function answer escalates to a hosted model.
    pub escalate_below: f32,
    /// Prompts estimated above this many tokens go to T3 when `model` is `auto`.
    pub large_prompt_tokens: u64,
    /// Share of a generated answer's sentences that must cite evidence; below
    /// it the answer is not repaired but replaced (escalated or extractive).
    pub min_groundedness: f32,
    /// Over budget: answer from a cheaper tier (true) or with 429 (false).
    pub allow_downgrade: bool,
    /// How long a cached answer lives; 0 turns the cache off.
    pub cache_ttl_secs: u64,
}

impl Default for RoutingPolicy {
    fn default() -> Self {
        Self {
            tiers: vec![Tier::T0, Tier::T1, Tier::T2, Tier::T3],
            models: vec![],
            max_latency_ms: None,
            escalate_below: 0.6,
            large_prompt_tokens: 4_000,
            min_groundedness: 0.5,
            allow_downgrade: true,
            cache_ttl_secs: 3_600,
        }
    }
}

impl RoutingPolicy {
    pub fn validate(&self, catalog: &[ModelSpec]) -> Result<(), KeelError> {
        let bad = |m: String| Err(KeelError::BadRequest(format!("routing policy: {m}")));
        if let Some(unknown) = self.models.iter().find(|n| !catalog.iter().any(|m| &m.name == *n)) {
            let known: Vec<&str> = catalog.iter().map(|m| m.name.as_str()).collect();
            return bad(format!("model {unknown:?} is not in the catalog (known: {known:?})"));
        }
        if !(0.0..=1.0).contains(&self.escalate_below) || !(0.0..=1.0).contains(&self.min_groundedness) {
            return bad("escalate_below and min_groundedness are between 0 and 1".into());
        }
        if self.max_latency_ms == Some(0) {
            return bad("max_latency_ms must be positive".into());
        }
        if self.cache_ttl_secs > MAX_CACHE_TTL_SECS {
            return bad(format!("cache_ttl_secs is at most {MAX_CACHE_TTL_SECS} (30 days)"));
        }
        Ok(())
    }

    pub fn allows(&self, tier: Tier) -> bool {
        self.tiers.contains(&tier)
    }
}

/// Monthly spending limits in USD; absent means unlimited.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct Budgets {
    pub monthly_usd: Option<f64>,
    /// Per workflow (the `workflow` a request names).
    pub workflows: BTreeMap<String, f64>,
    /// The workflow a request that names none is charged to; without one, a
    /// tenant with workflow budgets requires every paid request to name one.
    pub default_workflow: Option<String>,
    /// Shares of each budget whose first crossing in a month raises an alert
    /// (default 50%, 80% and 100%).
    pub alert_thresholds: Option<Vec<f64>>,
}


/// The alert thresholds of a budget that sets none.
pub const DEFAULT_ALERT_THRESHOLDS: [f64; 3] = [0.5, 0.8, 1.0];

impl Budgets {
    /// Whether `after` removes or raises a budget this one sets.
    pub fn weakened_by(&self, after: &Budgets) -> bool {
        let looser = |before: Option<f64>, after: Option<f64>| before.is_some_and(|b| after.is_none_or(|a| a > b));
        looser(self.monthly_usd, after.monthly_usd) || self.workflows.iter().any(|(w, b)| looser(Some(*b), after.workflows.get(w).copied()))
    }

    pub fn validate(&self) -> Result<(), KeelError> {
        let ok = |v: f64| v.is_finite() && v >= 0.0;
        if self.monthly_usd.is_some_and(|v| !ok(v)) || self.workflows.values().any(|v| !ok(*v)) {
            return Err(KeelError::BadRequest("budgets must be finite and not negative".into()));
        }
        if self.alert_thresholds.as_ref().is_some_and(|t| t.len() > 10 || t.iter().any(|x| !(x.is_finite() && *x > 0.0 && *x <= 1.0))) {
            return Err(KeelError::BadRequest("budgets: alert_thresholds are at most 10 shares, each above 0 and at most 1".into()));
        }
        if let Some(w) = self.default_workflow.as_ref().filter(|w| !self.workflows.contains_key(*w)) {
            return Err(KeelError::BadRequest(format!("budgets: default_workflow {w:?} has no budget in workflows")));
        }
        Ok(())
    }

    /// The workflow a paid request is charged to. Where workflows have
    /// budgets, it must be one of them (a request naming none gets the
    /// default): otherwise leaving it out or misspelling it would skip them.
    /// Whether `name` can name a workflow in counters and reports: 1 to 64
    /// letters, digits, `-`, `_` or `.`.
    pub fn is_workflow_name(name: &str) -> bool {
        (1..=64).contains(&name.len()) && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
    }

    pub fn workflow_for<'a>(&'a self, requested: Option<&'a str>) -> Result<Option<&'a str>, KeelError> {
        if self.workflows.is_empty() {
            return Ok(requested);
        }
        let known = || self.workflows.keys().map(String::as_str).collect::<Vec<_>>().join(", ");
        match requested.or(self.default_workflow.as_deref()) {
            Some(w) if self.workflows.contains_key(w) => Ok(Some(w)),
            Some(w) => Err(KeelError::BadRequest(format!("workflow {w:?} has no budget; this tenant budgets workflows {}", known()))),
            None => Err(KeelError::BadRequest(format!("workflow is required: this tenant budgets workflows {}", known()))),
        }
    }

    /// The shares whose crossing raises an alert.
    pub fn thresholds(&self) -> Vec<f64> {
        self.alert_thresholds.clone().unwrap_or_else(|| DEFAULT_ALERT_THRESHOLDS.to_vec())
    }

    pub fn is_empty(&self) -> bool {
        self.monthly_usd.is_none() && self.workflows.is_empty()
    }
}

/// Tokens a text is estimated to take (about four characters a token).
pub fn estimate_tokens(text: &str) -> u64 {
    (text.len() as u64).div_ceil(4)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn catalog_validation_names_the_problem() {
        let ok = r#"[{"name":"small","provider":"bedrock","model_id":"m","tier":"t2","usd_per_1k_input":0.001,"usd_per_1k_output":0.002}]"#;
        let c = parse_catalog(ok).unwrap();
        assert_eq!(c[0].timeout_ms, 10_000);
        assert_eq!(c[0].cost_micro_usd(1000, 500), 2000);
        let dup = r#"[{"name":"a","provider":"bedrock","model_id":"m","tier":"t2","usd_per_1k_input":0,"usd_per_1k_output":0},
                      {"name":"a","provider":"bedrock","model_id":"m","tier":"t3","usd_per_1k_input":0,"usd_per_1k_output":0}]"#;
        assert!(parse_catalog(dup).unwrap_err().to_string().contains("unique"));
        let t1 = r#"[{"name":"a","provider":"bedrock","model_id":"m","tier":"t1","usd_per_1k_input":0,"usd_per_1k_output":0}]"#;
        assert!(parse_catalog(t1).unwrap_err().to_string().contains("t2 or t3"));
        let no_url = r#"[{"name":"a","provider":"openai","model_id":"m","tier":"t2","usd_per_1k_input":0,"usd_per_1k_output":0}]"#;
        assert!(parse_catalog(no_url).unwrap_err().to_string().contains("base_url"));
        let policy = RoutingPolicy { models: vec!["nope".into()], ..Default::default() };
        assert!(policy.validate(&c).unwrap_err().to_string().contains("nope"));
        assert!(Budgets { monthly_usd: Some(-1.0), ..Default::default() }.validate().is_err());
    }

    #[test]
    fn a_tenant_with_workflow_budgets_charges_every_paid_request_to_one() {
        let mut b = Budgets { workflows: BTreeMap::from([("support".to_string(), 5.0)]), ..Default::default() };
        assert!(b.workflow_for(None).is_err(), "leaving the workflow out would skip its budget");
        assert!(b.workflow_for(Some("suport")).is_err());
        assert_eq!(b.workflow_for(Some("support")).unwrap(), Some("support"));
        b.default_workflow = Some("support".into());
        assert_eq!(b.workflow_for(None).unwrap(), Some("support"));
        assert!(Budgets { default_workflow: Some("x".into()), ..Default::default() }.validate().is_err());
        assert_eq!(Budgets::default().workflow_for(None).unwrap(), None);
    }
}
