//! Work one function hands another over a queue, beside producers' messages.

use crate::ids::TenantId;
use crate::ports::{QueueName, WorkQueue};
use crate::KeelError;
use serde_json::json;

/// The ingest-queue task that redacts what a tenant already stored
/// (`{"task": "redact_stored", "after": <doc id>?}`, the tenant in an attribute).
pub const REDACT_STORED: &str = "redact_stored";

/// Asks the retrieval function to redact `tenant`'s stored documents, after
/// `after`; the task is for the tenant's `incarnation` alone.
pub async fn request_redaction(queue: &dyn WorkQueue, tenant: &TenantId, incarnation: &str, after: Option<&str>) -> Result<(), KeelError> {
    let body = json!({"task": REDACT_STORED, "after": after});
    let attributes = crate::decisions::tenant_attributes(tenant, Some(incarnation));
    queue.send(QueueName::Ingest, body.to_string(), attributes).await?;
    Ok(())
}
