//! Each tenant's rate limit, counted by the function a request reaches (the
//! HTTP API's authorizer caches its answers, so it cannot count). The count
//! starts as soon as the request arrives (`Admission`) and runs beside the
//! request's first work: a route that has no side effects before its first
//! store calls waits for it together with them (`admits_itself` in
//! `http::Routes`); every other route waits for it before its handler runs.

use crate::ids::TenantId;
use crate::ports::Table;
use crate::tenants::{TenantStatus, TenantStore};
use crate::time::now_secs;
use crate::{KeelError, StoreError};
use std::sync::Arc;
use tokio::sync::{Mutex, OnceCell};
use tokio::task::JoinHandle;

/// Counts requests per tenant and minute against the tenant's limit.
pub struct RateLimiter {
    table: Arc<dyn Table>,
    tenants: Arc<TenantStore>,
}

impl RateLimiter {
    pub fn new(table: Arc<dyn Table>, tenants: Arc<TenantStore>) -> Self {
        Self { table, tenants }
    }

    /// Counts one request of `tenant`: `TooManyRequests` once this minute's
    /// count would pass the tenant's limit, `Forbidden` for a suspended tenant,
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
            Err(StoreError::ConditionFailed) => Err(KeelError::TooManyRequests("rate limit exceeded for this tenant; retry in a minute".into())),
            Err(e) => Err(e.into()),
        }
    }

    /// Starts counting `tenant`'s request now; the answer waits in the `Admission`.
    pub fn start(self: &Arc<Self>, tenant: TenantId, incarnation: Option<String>) -> Admission {
        let limiter = self.clone();
        let task = tokio::spawn(async move { limiter.take(&tenant, incarnation.as_deref()).await });
        Admission(Arc::new(Pending { task: Mutex::new(Some(task)), outcome: OnceCell::new() }))
    }
}

/// A request's rate-limit count, started when the request arrived: `admit`
/// waits for it (any number of times; the count is taken once).
#[derive(Clone)]
pub struct Admission(Arc<Pending>);

struct Pending {
    task: Mutex<Option<JoinHandle<Result<(), KeelError>>>>,
    outcome: OnceCell<Result<(), Arc<KeelError>>>,
}

impl Admission {
    /// Nothing to wait for: the function counts no rate limit.
    pub fn none() -> Self {
        Admission(Arc::new(Pending { task: Mutex::new(None), outcome: OnceCell::new() }))
    }

    /// `Ok` once the request is within its tenant's limit; the refusal otherwise.
    pub async fn admit(&self) -> Result<(), KeelError> {
        let outcome = self
            .0
            .outcome
            .get_or_init(|| async {
                let task = self.0.task.lock().await.take();
                let result = match task {
                    Some(task) => task.await.unwrap_or_else(|e| Err(KeelError::Internal(format!("rate limit count failed: {e}")))),
                    None => Ok(()),
                };
                result.map_err(Arc::new)
            })
            .await;
        outcome.as_ref().map(|_| ()).map_err(|e| same_error(e))
    }
}

/// A refusal again, for another wait on the same count (`KeelError` is not `Clone`).
fn same_error(e: &KeelError) -> KeelError {
    let message = e.to_string();
    match e {
        KeelError::Unauthorized(_) => KeelError::Unauthorized(message),
        KeelError::Forbidden(_) => KeelError::Forbidden(message),
        KeelError::TooManyRequests(_) => KeelError::TooManyRequests(message),
        KeelError::Unavailable(_) => KeelError::Unavailable(message),
        KeelError::NotFound(_) | KeelError::TenantGone(_) => KeelError::NotFound(message),
        _ => KeelError::Internal(message),
    }
}
