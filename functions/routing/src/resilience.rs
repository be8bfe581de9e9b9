//! Calling one hosted model safely: a time limit per attempt, retries with
//! jittered exponential backoff on retryable errors only, and a circuit
//! breaker per model that stops calls to a failing provider for a while.
//! Breakers live in the warm function (each instance learns on its own).

use keel_core::models::ModelSpec;
use keel_core::ports::{Deltas, ModelError, ModelProvider, ModelRequest, ModelResponse};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

pub use keel_core::resilience::{BreakerSettings, Breakers, RetryPolicy};

/// What one model call took.
#[derive(Debug)]
pub struct CallReport {
    pub attempts: u32,
    pub errors: Vec<String>,
}

/// Calls `provider` for `spec` within `deadline`, retrying retryable errors.
/// With `deltas`, streams; a stream that already sent text is not retried.
pub async fn call_model(
    provider: &dyn ModelProvider,
    spec: &ModelSpec,
    request: &ModelRequest,
    breakers: &Breakers,
    retry: &RetryPolicy,
    deadline: Instant,
    deltas: Option<Deltas<'_>>,
) -> (Result<ModelResponse, ModelError>, CallReport) {
    let mut report = CallReport { attempts: 0, errors: vec![] };
    let sent = AtomicBool::new(false);
    let mut last = ModelError::Unavailable("no attempt was made".into());
    for attempt in 0..retry.attempts.max(1) {
        if !breakers.try_acquire(&spec.name) {
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
        breakers.record(&spec.name, !matches!(result, Err(ref e) if e.is_retryable()));
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
    fn backoff_is_jittered_and_capped() {
        let r = RetryPolicy { attempts: 5, base: Duration::from_millis(100), cap: Duration::from_millis(300) };
        let samples: Vec<Duration> = (0..200).map(|_| r.backoff(4)).collect();
        assert!(samples.iter().all(|d| *d <= Duration::from_millis(300)));
        let distinct: std::collections::HashSet<_> = samples.iter().collect();
        assert!(distinct.len() > 100, "jitter spreads retries");
    }
}
