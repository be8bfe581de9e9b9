//! Each tenant's rate limit, counted by the function a request reaches (the
//! HTTP API's authorizer caches its answers, so it cannot count). The count
//! starts as soon as the request arrives (`Admission`) and runs beside the
//! request's first work: a route that has no side effects before its first
//! store calls waits for it together with them (`admits_itself` in
//! `http::Routes`); every other route waits for it before its handler runs.
//! A route declared expensive (`Routes::expensive`) also takes a concurrency
//! slot (`concurrency`) beside the count, in the same wait.

use crate::concurrency::{ConcurrencyLimiter, Expensive, Slot};
use crate::ids::TenantId;
use crate::ports::Table;
use crate::tenants::{TenantStatus, TenantStore};
use crate::time::now_secs;
use crate::{KeelError, StoreError};
use std::sync::Arc;
use tokio::sync::{Mutex, OnceCell};
use tokio::task::JoinHandle;

/// Counts requests per tenant and minute against the tenant's limit, and
/// holds expensive requests to the tenant's concurrency limit.
pub struct RateLimiter {
    table: Arc<dyn Table>,
    tenants: Arc<TenantStore>,
    concurrency: ConcurrencyLimiter,
}

impl RateLimiter {
    /// A limiter without a concurrency limit (`with_concurrency` sets one).
    pub fn new(table: Arc<dyn Table>, tenants: Arc<TenantStore>) -> Self {
        Self { concurrency: ConcurrencyLimiter::new(table.clone(), 0), table, tenants }
    }

    /// Expensive requests a tenant may have running at once, per surface (0: no limit).
    pub fn with_concurrency(self, slots: u32) -> Self {
        Self { concurrency: ConcurrencyLimiter::new(self.table.clone(), slots), ..self }
    }

    /// Counts one request of `tenant`: `RetryLater` (429 with `Retry-After`)
    /// once this minute's count would pass the tenant's limit, `Forbidden` for a suspended tenant,
    /// `Unauthorized` for a caller of another `incarnation` of the tenant (its
    /// credential outlived the tenant it was made for: an authorizer answer
    /// cached across a deletion). The tenant record comes through the warm
    /// cache, so the one store call is the counter's conditional increment,
    /// which expires after the minute.
    pub async fn take(&self, tenant: &TenantId, incarnation: Option<&str>) -> Result<(), KeelError> {
        let invalid = || KeelError::Unauthorized("invalid credentials".into());
        let record = match incarnation {
            Some(incarnation) => self.tenants.of_incarnation(tenant, incarnation).await?,
            None => self.tenants.cached(tenant).await?,
        };
        let record = record.ok_or_else(invalid)?;
        if record.status != TenantStatus::Active {
            return Err(KeelError::Forbidden(format!("tenant {tenant} is suspended")));
        }
        let minute = now_secs() / 60;
        let (sk, expires_at) = (crate::keys::rate(minute), Some((minute + 2) * 60));
        match self.table.increment(&tenant.pk(), &sk, 1, Some(record.rate_limit_per_minute), expires_at).await {
            Ok(_) => Ok(()),
            Err(StoreError::ConditionFailed) => Err(KeelError::RetryLater {
                message: "rate limit exceeded for this tenant; retry in a minute".into(),
                retry_after_secs: (60 - now_secs() % 60).max(1) as u64,
            }),
            Err(e) => Err(e.into()),
        }
    }

    /// Starts counting `tenant`'s request now; the answer waits in the `Admission`.
    pub fn start(self: &Arc<Self>, tenant: TenantId, incarnation: Option<String>) -> Admission {
        let limiter = self.clone();
        let task = tokio::spawn(async move { limiter.take(&tenant, incarnation.as_deref()).await });
        Admission(Arc::new(Pending { task: Mutex::new(Some(task)), outcome: OnceCell::new(), ..Pending::default() }))
    }
}

/// A request's rate-limit count, started when the request arrived: `admit`
/// waits for it (any number of times; the count is taken once).
#[derive(Clone)]
pub struct Admission(Arc<Pending>);

/// The taking of a concurrency slot, running beside the count.
type SlotTask = JoinHandle<Result<Option<Slot>, KeelError>>;

#[derive(Default)]
struct Pending {
    task: Mutex<Option<JoinHandle<Result<(), KeelError>>>>,
    /// The concurrency slot being taken beside the count, for an expensive route.
    slot_task: std::sync::Mutex<Option<SlotTask>>,
    /// The slot an admitted request holds until its response is sent.
    slot: std::sync::Mutex<Option<Slot>>,
    outcome: OnceCell<Result<(), Arc<KeelError>>>,
}

impl Admission {
    /// Nothing to wait for: the function counts no rate limit.
    pub fn none() -> Self {
        Admission(Arc::new(Pending::default()))
    }

    /// Also takes a concurrency slot of `surface` for `tenant`, beside the
    /// count: `admit` waits for both, and a request the count refuses gives
    /// its slot back at once.
    pub fn hold(&self, limiter: &Arc<RateLimiter>, tenant: TenantId, surface: Expensive) {
        let limiter = limiter.clone();
        let task = tokio::spawn(async move { limiter.concurrency.enter(&tenant, surface).await });
        if let Ok(mut slot_task) = self.0.slot_task.lock() {
            *slot_task = Some(task);
        }
    }

    /// `Ok` once the request is within its tenant's limits; the refusal otherwise.
    pub async fn admit(&self) -> Result<(), KeelError> {
        let outcome = self
            .0
            .outcome
            .get_or_init(|| async {
                let task = self.0.task.lock().await.take();
                let counted = match task {
                    Some(task) => task.await.unwrap_or_else(|e| Err(KeelError::Internal(format!("rate limit count failed: {e}")))),
                    None => Ok(()),
                };
                let slot_task = self.0.slot_task.lock().ok().and_then(|mut t| t.take());
                let slot = match slot_task {
                    Some(task) => task.await.unwrap_or_else(|e| Err(KeelError::Internal(format!("concurrency slot failed: {e}")))),
                    None => Ok(None),
                };
                match (counted, slot) {
                    (Ok(()), Ok(slot)) => {
                        if let Ok(mut held) = self.0.slot.lock() {
                            *held = slot;
                        }
                        Ok(())
                    }
                    (Err(e), slot) => {
                        if let Ok(Some(slot)) = slot {
                            slot.leave().await;
                        }
                        Err(Arc::new(e))
                    }
                    (Ok(()), Err(e)) => Err(Arc::new(e)),
                }
            })
            .await;
        outcome.as_ref().map(|_| ()).map_err(|e| same_error(e))
    }

    /// The concurrency slot the admitted request holds, to give back once
    /// its response is sent (`None` for a route without one).
    pub fn take_slot(&self) -> Option<Slot> {
        self.0.slot.lock().ok().and_then(|mut s| s.take())
    }
}

/// A refusal again, for another wait on the same count (`KeelError` is not `Clone`).
fn same_error(e: &KeelError) -> KeelError {
    let message = e.to_string();
    match e {
        KeelError::Unauthorized(_) => KeelError::Unauthorized(message),
        KeelError::Forbidden(_) => KeelError::Forbidden(message),
        KeelError::TooManyRequests(_) => KeelError::TooManyRequests(message),
        KeelError::RetryLater { retry_after_secs, .. } => KeelError::RetryLater { message, retry_after_secs: *retry_after_secs },
        KeelError::Unavailable(_) => KeelError::Unavailable(message),
        KeelError::NotFound(_) | KeelError::TenantGone(_) => KeelError::NotFound(message),
        _ => KeelError::Internal(message),
    }
}
