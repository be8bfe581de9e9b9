//! Calling one hosted model safely: a time limit per attempt, retries with
//! jittered exponential backoff on retryable errors only, and a circuit
//! breaker per model that stops calls to a failing provider for a while.
//! Breakers live in the warm function (each instance learns on its own).

use keel_core::models::ModelSpec;
use keel_core::ports::{Deltas, ModelError, ModelProvider, ModelRequest, ModelResponse};
use rand::Rng;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

#[derive(Clone, Debug)]
pub struct RetryPolicy {
    /// Attempts per model, the first included.
    pub attempts: u32,
    pub base: Duration,
    pub cap: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self { attempts: 3, base: Duration::from_millis(50), cap: Duration::from_secs(1) }
    }
}

impl RetryPolicy {
    /// "Full jitter": uniform in [0, min(cap, base·2^retry)], so retries of
    /// many clients spread out instead of arriving together.
    pub fn backoff(&self, retry: u32) -> Duration {
        let ceiling = self.base.saturating_mul(1u32 << retry.min(16)).min(self.cap);
        ceiling.mul_f64(rand::thread_rng().gen::<f64>())
    }
}

#[derive(Clone, Debug)]
pub struct BreakerSettings {
    /// Consecutive failures that open the breaker.
    pub failures_to_open: u32,
    /// How long it stays open before one probe call may pass (half-open).
    pub cool_down: Duration,
}

impl Default for BreakerSettings {
    fn default() -> Self {
        Self { failures_to_open: 5, cool_down: Duration::from_secs(30) }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Closed { failures: u32 },
    Open { until: Instant },
    HalfOpen,
}

/// The breakers of every model, by catalog name.
pub struct Breakers {
    settings: BreakerSettings,
    states: Mutex<HashMap<String, State>>,
}

impl Breakers {
    pub fn new(settings: BreakerSettings) -> Self {
        Self { settings, states: Mutex::new(HashMap::new()) }
    }

    fn with<R>(&self, model: &str, f: impl FnOnce(&mut State) -> R) -> R {
        let mut states = self.states.lock().unwrap_or_else(|p| p.into_inner());
        f(states.entry(model.to_string()).or_insert(State::Closed { failures: 0 }))
    }

    /// "closed", "open" or "half_open", for decisions and health.
    pub fn state(&self, model: &str) -> &'static str {
        self.with(model, |s| match s {
            State::Closed { .. } => "closed",
            State::Open { until } if Instant::now() < *until => "open",
            State::Open { .. } | State::HalfOpen => "half_open",
        })
    }

    /// Whether the router should skip this model now (open, or half-open with its probe out).
    pub fn is_open(&self, model: &str) -> bool {
        self.with(model, |s| match s {
            State::Closed { .. } => false,
            State::Open { until } => Instant::now() < *until,
            State::HalfOpen => true,
        })
    }

    /// May a call go out? An open breaker past its cool-down lets exactly one probe through.
    pub fn try_acquire(&self, model: &str) -> bool {
        self.with(model, |s| match *s {
            State::Closed { .. } => true,
            State::Open { until } if Instant::now() >= until => {
                *s = State::HalfOpen;
                true
            }
            State::Open { .. } | State::HalfOpen => false,
        })
    }

    pub fn record(&self, model: &str, healthy: bool) {
        let settings = &self.settings;
        self.with(model, |s| {
            *s = match (*s, healthy) {
                (_, true) => State::Closed { failures: 0 },
                (State::Closed { failures }, false) if failures + 1 < settings.failures_to_open => {
                    State::Closed { failures: failures + 1 }
                }
                (_, false) => State::Open { until: Instant::now() + settings.cool_down },
            }
        })
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
        let result = match tokio::time::timeout(limit, call).await {
            Ok(r) => r,
            Err(_) => Err(ModelError::Timeout(limit.as_millis() as u64)),
        };
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
