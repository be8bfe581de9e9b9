//! Calling something that can fail: retries with jittered exponential
//! backoff, and circuit breakers that stop calls to a failing dependency for
//! a while. Breakers live in the warm function (each instance learns on its
//! own). The gateway keys them by model, the tools function by connector host.

use rand::Rng;
use std::collections::HashMap;
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

/// Circuit breakers, by name (a model, a connector host).
pub struct Breakers {
    settings: BreakerSettings,
    states: Mutex<HashMap<String, State>>,
}

impl Breakers {
    pub fn new(settings: BreakerSettings) -> Self {
        Self { settings, states: Mutex::new(HashMap::new()) }
    }

    fn with<R>(&self, name: &str, f: impl FnOnce(&mut State) -> R) -> R {
        let mut states = self.states.lock().unwrap_or_else(|p| p.into_inner());
        f(states.entry(name.to_string()).or_insert(State::Closed { failures: 0 }))
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
        self.try_acquire_all(&[model])
    }

    /// May a call that every one of `names` guards go out? All or none: a
    /// breaker's probe is taken only when the others let the call through too.
    pub fn try_acquire_all(&self, names: &[&str]) -> bool {
        let mut states = self.states.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        let passes = |s: Option<&State>| match s {
            None | Some(State::Closed { .. }) => true,
            Some(State::Open { until }) => now >= *until,
            Some(State::HalfOpen) => false,
        };
        if !names.iter().all(|n| passes(states.get(*n))) {
            return false;
        }
        for name in names {
            if let Some(s) = states.get_mut(*name) {
                if matches!(s, State::Open { .. }) {
                    *s = State::HalfOpen;
                }
            }
        }
        true
    }

    /// A call that says nothing of `name`'s health: a probe it took is given
    /// back unused (the next call may probe), other states are kept.
    pub fn release(&self, name: &str) {
        self.with(name, |s| {
            if *s == State::HalfOpen {
                *s = State::Open { until: Instant::now() };
            }
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
