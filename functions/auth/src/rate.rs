//! Each tenant's request counter per minute, the rate limit's store.

use keel_core::ids::TenantId;
use keel_core::ports::Table;
use keel_core::{KeelError, StoreError};
use std::sync::Arc;

pub(crate) struct RateCounters {
    table: Arc<dyn Table>,
}

impl RateCounters {
    pub(crate) fn new(table: Arc<dyn Table>) -> Self {
        Self { table }
    }

    /// Counts one request in `minute` (seconds since the epoch / 60); `false`
    /// once the count would pass `limit`. The counter expires after the minute.
    pub(crate) async fn take(&self, tenant: &TenantId, minute: i64, limit: i64) -> Result<bool, KeelError> {
        let (sk, expires_at) = (keel_core::keys::rate(minute), Some((minute + 2) * 60));
        match self.table.increment(&tenant.pk(), &sk, 1, Some(limit), expires_at).await {
            Ok(_) => Ok(true),
            Err(StoreError::ConditionFailed) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }
}
