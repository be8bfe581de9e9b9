//! Calling one hosted model safely: a time limit per attempt, retries with
//! jittered exponential backoff on retryable errors only, and circuit
//! breakers that stop calls to a failing provider for a while (`ModelBreakers`).
//! Breakers live in the warm function (each instance learns on its own).

use keel_core::ids::TenantId;
use keel_core::models::ModelSpec;
use keel_core::ports::{Deltas, ModelError, ModelProvider, ModelRequest, ModelResponse};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

pub use keel_core::resilience::{BreakerSettings, Breakers, RetryPolicy};

/// The gateway's breakers, so that one tenant's requests cannot open a
/// breaker for every tenant. The provider's own failures (errors, throttling,
/// unreachable) open the model's breaker, which every tenant shares. A
/// timeout may be the tenant's doing (a large `max_tokens`, a long prompt, a
/// tight `max_latency_ms`), so timeouts open only that tenant's breaker for
/// the model. A call goes out only when both let it.
pub struct ModelBreakers {
    breakers: Breakers,
}

/// What a call's outcome says, and of whom.
enum Health {
    Healthy,
    /// The provider failed: the model's breaker counts it.
    ProviderFailed,
    /// The call ran out of time: the tenant's breaker for the model counts it.
    TimedOut,
}

impl ModelBreakers {
    pub fn new(settings: BreakerSettings) -> Self {
        Self { breakers: Breakers::new(settings) }
    }

    fn tenant_key(tenant: &TenantId, model: &str) -> String {
        format!("{tenant}/{model}")
    }

    /// Whether the router should skip `model` for `tenant` now.
    pub fn is_open(&self, tenant: &TenantId, model: &str) -> bool {
        self.breakers.is_open(model) || self.breakers.is_open(&Self::tenant_key(tenant, model))
    }

    /// `"closed"`, `"open"` or `"half_open"`: the model's breaker, as every tenant shares it.
    pub fn state(&self, model: &str) -> &'static str {
        self.breakers.state(model)
    }

    fn try_acquire(&self, tenant: &TenantId, model: &str) -> bool {
        self.breakers.try_acquire_all(&[model, &Self::tenant_key(tenant, model)])
    }

    fn record(&self, tenant: &TenantId, model: &str, health: Health) {
        let own = Self::tenant_key(tenant, model);
        match health {
            Health::Healthy => {
                self.breakers.record(model, true);
                self.breakers.record(&own, true);
            }
            Health::ProviderFailed => {
                self.breakers.record(model, false);
                self.breakers.release(&own);
            }
            Health::TimedOut => {
                self.breakers.record(&own, false);
                self.breakers.release(model);
            }
        }
    }
}

/// What one model call took.
#[derive(Debug)]
pub struct CallReport {
    pub attempts: u32,
    pub errors: Vec<String>,
}

/// Calls `provider` for `spec` within `deadline`, retrying retryable errors.
/// With `deltas`, streams; a stream that already sent text is not retried.
#[allow(clippy::too_many_arguments)]
pub async fn call_model(
    provider: &dyn ModelProvider,
    tenant: &TenantId,
    spec: &ModelSpec,
    request: &ModelRequest,
    breakers: &ModelBreakers,
    retry: &RetryPolicy,
    deadline: Instant,
    deltas: Option<Deltas<'_>>,
) -> (Result<ModelResponse, ModelError>, CallReport) {
    let mut report = CallReport { attempts: 0, errors: vec![] };
    let sent = AtomicBool::new(false);
    let mut last = ModelError::Unavailable("no attempt was made".into());
    for attempt in 0..retry.attempts.max(1) {
        if !breakers.try_acquire(tenant, &spec.name) {
            last = ModelError::Unavailable(format!("circuit breaker for {} is open", spec.name));
            break;
        }
        let remaining = deadline.saturating_duration_since(Instant::now());
        let limit = remaining.min(Duration::from_millis(spec.timeout_ms));
        if limit.is_zero() {
            last = ModelError::Timeout(0);
            break;
        }
        report.attempts += 1;
        let forward = |d: &str| {
            sent.store(true, Ordering::Relaxed);
            if let Some(f) = deltas {
                f(d)
            }
        };
        let call = async {
            match deltas {
                Some(_) => provider.generate_streaming(request.clone(), &forward).await,
                None => provider.generate(request.clone()).await,
            }
        };
        let started = Instant::now();
        let span = tracing::info_span!("model.call", otel.name = "model.call", model = %spec.name, attempt = report.attempts);
        let result = match tokio::time::timeout(limit, tracing::Instrument::instrument(call, span)).await {
            Ok(r) => r,
            Err(_) => Err(ModelError::Timeout(limit.as_millis() as u64)),
        };
        let outcome = match &result {
            Ok(_) => "ok",
            Err(ModelError::Timeout(_)) => "timeout",
            Err(e) if e.is_retryable() => "error",
            Err(_) => "rejected",
        };
        keel_core::telemetry::model_call(&spec.name, outcome, started.elapsed().as_secs_f64());
        // A rejected request says nothing about the provider's health.
        let health = match &result {
            Err(ModelError::Timeout(_)) => Health::TimedOut,
            Err(e) if e.is_retryable() => Health::ProviderFailed,
            _ => Health::Healthy,
        };
        breakers.record(tenant, &spec.name, health);
        match result {
            Ok(out) => return (Ok(out), report),
            Err(e) => {
                report.errors.push(format!("{}: {e}", spec.name));
                let stop = !e.is_retryable() || sent.load(Ordering::Relaxed) || attempt + 1 == retry.attempts;
                last = e;
                if stop {
                    break;
                }
                let pause = retry.backoff(attempt).min(deadline.saturating_duration_since(Instant::now()));
                tokio::time::sleep(pause).await;
            }
        }
    }
    (Err(last), report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn breaker_opens_half_opens_and_closes() {
        let b = Breakers::new(BreakerSettings { failures_to_open: 2, cool_down: Duration::from_millis(20) });
        assert!(b.try_acquire("m"));
        b.record("m", false);
        assert_eq!(b.state("m"), "closed");
        b.record("m", false);
        assert_eq!(b.state("m"), "open");
        assert!(!b.try_acquire("m") && b.is_open("m"));
        std::thread::sleep(Duration::from_millis(25));
        assert!(b.try_acquire("m"), "one probe after the cool-down");
        assert!(!b.try_acquire("m"), "only one probe at a time");
        b.record("m", false);
        assert_eq!(b.state("m"), "open", "a failed probe opens it again");
        std::thread::sleep(Duration::from_millis(25));
        assert!(b.try_acquire("m"));
        b.record("m", true);
        assert_eq!(b.state("m"), "closed");
        assert_eq!(b.state("other"), "closed");
    }

    #[test]
    fn a_tenants_timeouts_open_its_own_breaker_and_provider_errors_everyones() {
        let b = ModelBreakers::new(BreakerSettings { failures_to_open: 2, cool_down: Duration::from_secs(60) });
        let (slow, other) = (TenantId::parse("slow").unwrap(), TenantId::parse("other").unwrap());
        for _ in 0..2 {
            assert!(b.try_acquire(&slow, "m"));
            b.record(&slow, "m", Health::TimedOut);
        }
        assert!(b.is_open(&slow, "m") && !b.try_acquire(&slow, "m"), "the tenant's own timeouts stop its calls");
        assert!(!b.is_open(&other, "m") && b.try_acquire(&other, "m"), "another tenant's calls go out");
        b.record(&other, "m", Health::Healthy);
        for _ in 0..2 {
            assert!(b.try_acquire(&other, "m"));
            b.record(&other, "m", Health::ProviderFailed);
        }
        assert!(b.is_open(&other, "m") && b.is_open(&TenantId::parse("third").unwrap(), "m"), "the provider failing stops everyone's");
        assert_eq!(b.state("m"), "open");
    }

    #[test]
    fn a_probe_is_taken_only_when_every_breaker_lets_the_call_through() {
        let b = Breakers::new(BreakerSettings { failures_to_open: 1, cool_down: Duration::from_millis(10) });
        b.record("model", false);
        b.record("tenant/model", false);
        std::thread::sleep(Duration::from_millis(15));
        b.record("tenant/model", false);
        assert!(!b.try_acquire_all(&["model", "tenant/model"]), "the tenant's breaker is open again");
        assert!(b.try_acquire("model"), "the model's probe was not used up by the refused call");
        b.release("model");
        assert!(b.try_acquire("model"), "a probe given back unused may be taken again");
    }

    #[test]
    fn backoff_is_jittered_and_capped() {
        let r = RetryPolicy { attempts: 5, base: Duration::from_millis(100), cap: Duration::from_millis(300) };
        let samples: Vec<Duration> = (0..200).map(|_| r.backoff(4)).collect();
        assert!(samples.iter().all(|d| *d <= Duration::from_millis(300)));
        let distinct: std::collections::HashSet<_> = samples.iter().collect();
        assert!(distinct.len() > 100, "jitter spreads retries");
    }
}
