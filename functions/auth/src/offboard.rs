//! Off-boarding: `DELETE /v1/tenants/{id}` removes everything of a tenant
//! (every item of its partition, every object and object version under its
//! prefix, its issuer claim, this process's cached state) and keeps a
//! receipt in the platform's own partition.
//!
//! The tenant is suspended first, so no request of it is served while its
//! data goes; the receipt is written before anything is deleted, so a
//! deletion that fails half-way can be run again (its record may be gone by
//! then). Warm functions elsewhere may hold the tenant for up to the tenant
//! cache's TTL: running the deletion again after it sweeps whatever a
//! request in flight wrote meanwhile, and queue consumers drop a deleted
//! tenant's messages.

use crate::Auth;
use keel_core::auth::Caller;
use keel_core::http::ApiResponse;
use keel_core::ids::TenantId;
use keel_core::ports::{get_record, Condition, Write};
use keel_core::tenants::TenantStatus;
use keel_core::time::now_rfc3339;
use keel_core::{keys, KeelError};
use serde::{Deserialize, Serialize};

/// Earlier runs a receipt remembers (a tenant id may be reused and deleted again).
const RECEIPT_HISTORY: usize = 20;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeletionState {
    Deleting,
    Deleted,
}

/// What was deleted, when and by whom: the platform's record of it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct DeletionReceipt {
    pub tenant: TenantId,
    pub state: DeletionState,
    pub requested_by: String,
    pub started_at: String,
    pub finished_at: Option<String>,
    /// Table items removed (the tenant's record, keys, documents' index, decisions, counters …).
    pub items: usize,
    /// Objects and object versions removed.
    pub objects: usize,
    #[serde(default)]
    pub earlier: Vec<DeletionReceipt>,
}

impl Auth {
    pub(crate) async fn delete_tenant(&self, caller: &Caller, id: TenantId) -> Result<ApiResponse, KeelError> {
        crate::require_platform_admin(caller)?;
        let previous = self.deletion_receipt(&id).await?;
        let tenant = self.tenants.get(&id).await?;
        let mut receipt = match (tenant, previous) {
            (Some(_), previous) => DeletionReceipt {
                tenant: id.clone(),
                state: DeletionState::Deleting,
                requested_by: caller.principal.clone(),
                started_at: now_rfc3339(),
                finished_at: None,
                items: 0,
                objects: 0,
                earlier: previous.map(remembered).unwrap_or_default(),
            },
            // Run again: sweep what is left, add to the same receipt.
            (None, Some(previous)) => DeletionReceipt { state: DeletionState::Deleting, finished_at: None, ..previous },
            (None, None) => return Err(KeelError::NotFound(format!("tenant {id} does not exist"))),
        };
        self.write_receipt(&receipt).await?;
        if let Some((mut tenant, version)) = self.tenants.get(&id).await? {
            tenant.status = TenantStatus::Suspended;
            self.tenants.update(&tenant, version).await?;
            self.release_issuer(&id, tenant.identity.as_ref(), None).await?;
        }
        self.tenants.forget(&id);
        for key in self.keys.store().list(&id).await? {
            self.keys.forget(&key.hash);
        }
        receipt.objects += self.blobs.purge_prefix(&keys::blob_prefix(&id)).await?;
        receipt.items += self.table.purge_partition(&id.pk()).await?;
        self.tenants.forget(&id);
        receipt.state = DeletionState::Deleted;
        receipt.finished_at = Some(now_rfc3339());
        self.write_receipt(&receipt).await?;
        tracing::info!(tenant = %id, items = receipt.items, objects = receipt.objects, "tenant deleted");
        Ok(ApiResponse::json(200, &receipt))
    }

    /// A deleted tenant's id may be given to a new tenant once every warm
    /// function's cache has let go of the old one (`KEEL_TENANT_CACHE_SECS`
    /// after the deletion finished), never while a deletion runs: so no
    /// container anywhere takes the new tenant's requests for the old one's.
    pub(crate) async fn id_reusable(&self, id: &TenantId) -> Result<(), KeelError> {
        let Some(receipt) = self.deletion_receipt(id).await? else { return Ok(()) };
        let finished = receipt.finished_at.as_deref().and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok());
        let Some(finished) = finished.filter(|_| receipt.state == DeletionState::Deleted) else {
            return Err(KeelError::Conflict(format!("tenant {id} is being deleted; create it again once the deletion has finished")));
        };
        // A second more than the caches' TTL, for the clocks of other containers.
        let ttl = self.config.tenant_cache_secs as i64;
        let free_at = finished + chrono::Duration::seconds(ttl + ttl.min(1));
        if chrono::Utc::now() < free_at {
            let secs = (free_at.with_timezone(&chrono::Utc) - chrono::Utc::now()).num_seconds().max(1);
            return Err(KeelError::Conflict(format!(
                "tenant id {id} was deleted moments ago; it can be used again in {secs} s, once no warm function holds the old tenant"
            )));
        }
        Ok(())
    }

    async fn deletion_receipt(&self, id: &TenantId) -> Result<Option<DeletionReceipt>, KeelError> {
        Ok(get_record(self.table.as_ref(), keys::PLATFORM, &keys::deletion_receipt(id)).await?.map(|(r, _)| r))
    }

    async fn write_receipt(&self, receipt: &DeletionReceipt) -> Result<(), KeelError> {
        let data = serde_json::to_value(receipt)?;
        let write = Write { pk: keys::PLATFORM.into(), sk: keys::deletion_receipt(&receipt.tenant), data, expires_at: None, condition: Condition::Always };
        self.table.put(write).await?;
        Ok(())
    }
}

/// An earlier receipt with its own history folded in, newest first, bounded.
fn remembered(mut previous: DeletionReceipt) -> Vec<DeletionReceipt> {
    let mut earlier = std::mem::take(&mut previous.earlier);
    earlier.insert(0, previous);
    earlier.truncate(RECEIPT_HISTORY);
    earlier
}
