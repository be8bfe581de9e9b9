//! How many expensive requests one tenant may have running at once, per
//! surface, across every warm container: so that a tenant within its
//! per-minute rate still cannot hold every Lambda instance the account has.
//! A request takes a slot (a conditional increment of the tenant's counter
//! for the surface, which cannot pass the limit) beside its rate-limit count,
//! and gives it back once its response is sent. Past the limit: 429 with
//! `Retry-After`.
//!
//! A slot lost to a crash (the decrement never ran) would hold forever, so
//! counters are kept per minute: a request leaves the minute's counter it
//! entered, and a leaked slot is gone when the minute turns. The price is
//! that, for the length of one request, up to twice the limit may run across
//! the turn of a minute.
//!
//! Over HTTP a route declared `Routes::expensive` asks for its slot in
//! `hold_slot`, before anything waits for the admission, and `release_slot`
//! gives it back after the response.

use crate::auth::Caller;
use crate::ids::TenantId;
use crate::ports::Table;
use crate::rate::{Admission, RateLimiter};
use axum::body::Body;
use axum::extract::Request;
use axum::http::header;
use axum::middleware::Next;
use axum::response::Response;
use crate::time::now_secs;
use crate::{KeelError, StoreError};
use std::sync::Arc;

/// The surfaces with a concurrency limit: a closed set.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Expensive {
    Ask,
    Chat,
    Classify,
    Rank,
    /// Document writes (`PUT /v1/documents/{id}`) and producers' ingest batches: embedding.
    Ingest,
}

impl Expensive {
    pub fn as_str(self) -> &'static str {
        match self {
            Expensive::Ask => "ask",
            Expensive::Chat => "chat",
            Expensive::Classify => "classify",
            Expensive::Rank => "rank",
            Expensive::Ingest => "ingest",
        }
    }
}

/// Takes and gives back tenants' slots.
pub struct ConcurrencyLimiter {
    table: Arc<dyn Table>,
    /// Slots per tenant and surface; 0: no limit.
    limit: u32,
}

impl ConcurrencyLimiter {
    pub fn new(table: Arc<dyn Table>, limit: u32) -> Self {
        Self { table, limit }
    }

    /// A slot of `surface` for `tenant`; `RetryLater` when the tenant already
    /// has `limit` such requests running. `None` when there is no limit.
    pub async fn enter(&self, tenant: &TenantId, surface: Expensive) -> Result<Option<Slot>, KeelError> {
        if self.limit == 0 {
            return Ok(None);
        }
        let minute = now_secs() / 60;
        let (pk, sk, expires_at) = (tenant.pk(), crate::keys::in_flight(surface.as_str(), minute), Some((minute + 2) * 60));
        match self.table.increment(&pk, &sk, 1, Some(i64::from(self.limit)), expires_at).await {
            Ok(_) => Ok(Some(Slot { table: self.table.clone(), pk, sk, expires_at })),
            Err(StoreError::ConditionFailed) => Err(KeelError::RetryLater {
                message: format!("this tenant already has {} {} requests running, its limit; retry shortly", self.limit, surface.as_str()),
                retry_after_secs: 1,
            }),
            Err(e) => Err(e.into()),
        }
    }
}

/// A slot a running request holds; `leave` gives it back.
pub struct Slot {
    table: Arc<dyn Table>,
    pk: String,
    sk: String,
    expires_at: Option<i64>,
}

impl Slot {
    /// Gives the slot back (a failure is logged: the minute's turn frees it).
    pub async fn leave(self) {
        if let Err(e) = self.table.increment(&self.pk, &self.sk, -1, None, self.expires_at).await {
            tracing::warn!(error = %e, slot = %self.sk, "a concurrency slot was not given back; it frees at the minute's turn");
        }
    }
}

/// An expensive route's request asks for its concurrency slot, beside its count.
pub(crate) async fn hold_slot(surface: Expensive, request: Request, next: Next) -> Response {
    let extensions = request.extensions();
    if let (Some(admission), Some(limiter), Some(tenant)) =
        (extensions.get::<Admission>(), extensions.get::<Arc<RateLimiter>>(), extensions.get::<Caller>().and_then(|c| c.tenant.clone()))
    {
        admission.hold(limiter, tenant, surface);
    }
    next.run(request).await
}

/// Gives an expensive request's concurrency slot back once its response is
/// sent: at once for a whole answer, when the stream ends (or its client
/// leaves) for a streamed one.
pub(crate) async fn release_slot(admission: &Admission, response: Response) -> Response {
    let Some(slot) = admission.take_slot() else { return response };
    let streamed = response.headers().get(header::CONTENT_TYPE).is_some_and(|v| v.as_bytes().starts_with(b"text/event-stream"));
    if !streamed {
        crate::after::hand_off(slot.leave()).await;
        return response;
    }
    let (parts, body) = response.into_parts();
    let guard = SlotGuard(Some(slot));
    let stream = tokio_stream::StreamExt::map(body.into_data_stream(), move |chunk| {
        let _held = &guard;
        chunk
    });
    Response::from_parts(parts, Body::from_stream(stream))
}

/// Holds a streamed answer's slot; dropped with the stream, it gives it back.
struct SlotGuard(Option<Slot>);

impl Drop for SlotGuard {
    fn drop(&mut self) {
        if let Some(slot) = self.0.take() {
            crate::after::spawn_after(slot.leave());
        }
    }
}
