//! The routing decision: the lowest tier that can answer, and the fallback
//! chain of hosted models after it, each choice with its reason. Pure and
//! allocation-light, so it costs microseconds (see benches/router.rs).

use keel_core::models::{ModelSpec, RoutingPolicy, Tier};

/// What the router knows about one request.
pub struct RouteInput<'a> {
    pub policy: &'a RoutingPolicy,
    pub catalog: &'a [ModelSpec],
    pub plan: &'a str,
    /// The tenant's kill switch for hosted models.
    pub kill_switch: bool,
    /// Confidence (0..=1) in the in-function answer: the evidence's for
    /// grounded answers, the classifier's for labels; None when nothing
    /// in-function can answer (plain chat).
    pub confidence: Option<f32>,
    /// What `confidence` measures, for the reasons.
    pub signal: &'a str,
    /// A model the caller named (`/v1/chat/completions`); None or "auto" lets the router pick.
    pub requested: Option<&'a str>,
    pub prompt_tokens: u64,
    /// Whether a model's circuit breaker is open.
    pub open: &'a dyn Fn(&str) -> bool,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Decision {
    /// The tier that will answer unless every hosted candidate fails.
    pub tier: Tier,
    /// In-function, or the hosted models to try.
    pub answerer: Answerer,
    /// Whether an in-function answer is acceptable when the candidates fail.
    pub in_function_fallback: bool,
    pub reasons: Vec<String>,
}

/// Who answers a request the router decided.
#[derive(Clone, Debug, PartialEq)]
pub enum Answerer {
    /// The in-function tier (T1).
    InFunction,
    /// Hosted models, tried in order (catalog indexes): there is always a first.
    Hosted(Hosted),
}

#[derive(Clone, Debug, PartialEq)]
pub struct Hosted {
    pub first: usize,
    pub fallbacks: Vec<usize>,
}

impl Hosted {
    /// The models to try, in order.
    pub fn candidates(&self) -> impl Iterator<Item = usize> + '_ {
        std::iter::once(self.first).chain(self.fallbacks.iter().copied())
    }
}

impl Decision {
    /// The hosted models to try, if the request goes hosted.
    pub fn hosted(&self) -> Option<&Hosted> {
        match &self.answerer {
            Answerer::Hosted(h) => Some(h),
            Answerer::InFunction => None,
        }
    }

    /// The hosted models to try, in order; none for the in-function tier.
    pub fn candidates(&self) -> Vec<usize> {
        self.hosted().map(|h| h.candidates().collect()).unwrap_or_default()
    }
}

#[derive(Debug, PartialEq)]
pub enum RouteError {
    /// The caller named a model this tenant may not use.
    NotAllowed(String),
    /// Nothing can answer (plain chat with no usable hosted model).
    NoModel(String),
}

/// Models the tenant may use: in its policy's order, else cheapest first.
fn usable<'a>(input: &'a RouteInput<'a>) -> Vec<usize> {
    let mut out: Vec<usize> = if input.policy.models.is_empty() {
        (0..input.catalog.len()).collect()
    } else {
        input.policy.models.iter().filter_map(|n| input.catalog.iter().position(|m| &m.name == n)).collect()
    };
    out.retain(|&i| input.catalog[i].entitled(input.plan) && input.policy.allows(input.catalog[i].tier));
    if input.policy.models.is_empty() {
        out.sort_by(|&a, &b| {
            let price = |m: &ModelSpec| m.usd_per_1k_input + m.usd_per_1k_output;
            price(&input.catalog[a]).total_cmp(&price(&input.catalog[b]))
        });
    }
    out
}

/// The hosted tier to start with, and the model the caller named (if it may use it).
fn first_choice(input: &RouteInput, models: &[usize], reasons: &mut Vec<String>) -> Result<(Tier, Vec<usize>), RouteError> {
    let policy = input.policy;
    match input.requested.filter(|r| !r.is_empty() && *r != "auto") {
        Some(name) => match input.catalog.iter().position(|m| m.name == name) {
            Some(i) if models.contains(&i) => {
                reasons.push(format!("caller asked for {name}"));
                Ok((input.catalog[i].tier, vec![i]))
            }
            _ => Err(RouteError::NotAllowed(format!("model {name:?} is not available to this tenant"))),
        },
        None => {
            let large = input.prompt_tokens > policy.large_prompt_tokens;
            let want = if large { Tier::T3 } else { Tier::T2 };
            let tier = if models.iter().any(|&i| input.catalog[i].tier == want) {
                want
            } else if large {
                Tier::T2
            } else {
                Tier::T3
            };
            reasons.push(match (large, tier == want) {
                (true, true) => format!("prompt of ~{} tokens is large: t3", input.prompt_tokens),
                (false, true) => "small model first: t2".into(),
                _ => format!("no usable {} model: {}", want.as_str(), tier.as_str()),
            });
            Ok((tier, vec![]))
        }
    }
}

pub fn decide(input: &RouteInput) -> Result<Decision, RouteError> {
    let policy = input.policy;
    let grounded = input.confidence.is_some();
    let in_function = grounded && policy.allows(Tier::T1);
    let signal = input.signal;
    let mut reasons = Vec::new();
    let t1 = |reasons: Vec<String>| Decision { tier: Tier::T1, answerer: Answerer::InFunction, in_function_fallback: true, reasons };

    if input.kill_switch {
        reasons.push("kill switch: hosted models are off for this tenant".into());
        return if grounded { Ok(t1(reasons)) } else { Err(RouteError::NoModel(reasons.remove(0))) };
    }
    if let (Some(c), true) = (input.confidence, in_function) {
        if c >= policy.escalate_below {
            reasons.push(format!("{signal} {c:.2} >= {:.2}: answered in-function", policy.escalate_below));
            return Ok(t1(reasons));
        }
        reasons.push(format!("{signal} {c:.2} < {:.2}: escalate to a hosted model", policy.escalate_below));
    }

    let models = usable(input);
    let (first_tier, mut chain) = first_choice(input, &models, &mut reasons)?;
    // The chosen tier's models, then the other hosted tier as fallback.
    for tier in [first_tier, if first_tier == Tier::T2 { Tier::T3 } else { Tier::T2 }] {
        for &i in &models {
            if input.catalog[i].tier == tier && !chain.contains(&i) {
                chain.push(i);
            }
        }
    }
    let skipped: Vec<&str> =
        chain.iter().filter(|&&i| (input.open)(&input.catalog[i].name)).map(|&i| input.catalog[i].name.as_str()).collect();
    if !skipped.is_empty() {
        reasons.push(format!("circuit open, skipped: {}", skipped.join(", ")));
        chain.retain(|&i| !(input.open)(&input.catalog[i].name));
    }
    match chain.split_first() {
        Some((&first, fallbacks)) => {
            reasons.push(format!("model {} then {} fallback(s)", input.catalog[first].name, fallbacks.len()));
            let answerer = Answerer::Hosted(Hosted { first, fallbacks: fallbacks.to_vec() });
            Ok(Decision { tier: input.catalog[first].tier, answerer, in_function_fallback: in_function, reasons })
        }
        None if in_function => {
            reasons.push("no hosted model is usable: answered in-function".into());
            Ok(t1(reasons))
        }
        None => Err(RouteError::NoModel(format!(
            "no hosted model is usable for this tenant ({})",
            if skipped.is_empty() { "none configured or entitled" } else { "all circuits open" }
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use keel_core::models::ProviderKind;

    fn spec(name: &str, tier: Tier, price: f64) -> ModelSpec {
        ModelSpec {
            name: name.into(),
            provider: ProviderKind::Bedrock,
            model_id: name.into(),
            tier,
            usd_per_1k_input: price,
            usd_per_1k_output: price,
            timeout_ms: 1000,
            base_url: None,
            api_key_env: None,
            plans: None,
        }
    }

    fn input<'a>(policy: &'a RoutingPolicy, catalog: &'a [ModelSpec], confidence: Option<f32>) -> RouteInput<'a> {
        RouteInput {
            policy,
            catalog,
            plan: "standard",
            kill_switch: false,
            confidence,
            signal: "evidence confidence",
            requested: None,
            prompt_tokens: 100,
            open: &|_| false,
        }
    }

    #[test]
    fn lowest_tier_first_with_reasons() {
        let catalog = vec![spec("big", Tier::T3, 0.01), spec("small", Tier::T2, 0.001), spec("small2", Tier::T2, 0.002)];
        let policy = RoutingPolicy::default();
        let d = decide(&input(&policy, &catalog, Some(0.9))).unwrap();
        assert_eq!((d.tier, d.candidates().len()), (Tier::T1, 0));
        assert!(d.reasons[0].contains("in-function"));
        let d = decide(&input(&policy, &catalog, Some(0.4))).unwrap();
        assert_eq!((d.tier, d.candidates()), (Tier::T2, vec![1, 2, 0]), "cheapest t2, then t2, then escalate to t3");
        assert!(d.in_function_fallback);
        let mut large = input(&policy, &catalog, None);
        large.prompt_tokens = 10_000;
        assert_eq!(decide(&large).unwrap().candidates(), vec![0, 1, 2]);
        let open = |m: &str| m == "small";
        let mut broken = input(&policy, &catalog, None);
        broken.open = &open;
        let d = decide(&broken).unwrap();
        assert_eq!(d.candidates(), vec![2, 0]);
        assert!(d.reasons.iter().any(|r| r.contains("circuit open, skipped: small")));
    }

    #[test]
    fn policy_entitlements_kill_switch_and_named_models() {
        let mut catalog = vec![spec("small", Tier::T2, 0.001), spec("big", Tier::T3, 0.01)];
        catalog[1].plans = Some(vec!["enterprise".into()]);
        let policy = RoutingPolicy::default();
        let chat = input(&policy, &catalog, None);
        assert_eq!(decide(&chat).unwrap().candidates(), vec![0], "standard plan is not entitled to big");
        let mut named = input(&policy, &catalog, None);
        named.requested = Some("big");
        assert!(matches!(decide(&named), Err(RouteError::NotAllowed(_))));
        named.requested = Some("small");
        assert_eq!(decide(&named).unwrap().reasons[0], "caller asked for small");
        let mut off = input(&policy, &catalog, Some(0.1));
        off.kill_switch = true;
        assert_eq!(decide(&off).unwrap().tier, Tier::T1);
        off.confidence = None;
        assert!(matches!(decide(&off), Err(RouteError::NoModel(_))));
        let t1_only = RoutingPolicy { tiers: vec![Tier::T0, Tier::T1], ..Default::default() };
        let d = decide(&input(&t1_only, &catalog, Some(0.1))).unwrap();
        assert_eq!(d.tier, Tier::T1);
        assert!(matches!(decide(&input(&t1_only, &catalog, None)), Err(RouteError::NoModel(_))));
    }
}
