//! Re-redaction: when a tenant turns `redact_pii` on, the documents it
//! already stored are redacted too. The auth function drops a task on the
//! ingest queue; each task message re-ingests one page of documents not yet
//! redacted from their stored sources (redaction happens on the way in,
//! and the old chunks leave the index by erasure) and hands the rest of the
//! work to the next message. A task only ever redacts more, and only while
//! the tenant's record asks for it, so a forged one can do no harm.

use crate::ingest::DocumentChange;
use crate::{DocumentInput, Retrieval};
use keel_core::ids::TenantId;
use keel_core::ports::QueueMessage;
use keel_core::tasks::request_redaction;
use keel_core::{keys, KeelError};
use serde_json::Value;

/// Documents one task message re-redacts.
const PAGE: usize = 100;

impl Retrieval {
    /// The changes that redact the next page of the tenant's unredacted documents.
    pub(crate) async fn redaction_page(&self, m: &QueueMessage, body: &Value) -> Result<Vec<(TenantId, DocumentChange)>, KeelError> {
        let tenant = TenantId::parse(m.attributes.get("tenant").map(String::as_str).unwrap_or(""))?;
        if self.tenants.outlived(&tenant, &m.attributes).await? {
            return Err(KeelError::TenantGone(tenant.to_string()));
        }
        let Some(record) = self.tenants.cached(&tenant).await?.filter(|t| t.redact_pii) else { return Ok(vec![]) };
        let after = body.get("after").and_then(Value::as_str);
        let mut records = self.documents.page(&tenant, after, PAGE + 1).await?;
        if records.len() > PAGE {
            records.truncate(PAGE);
            let last = records.last().map(|r| r.doc_id.as_str());
            request_redaction(self.queue.as_ref(), &tenant, record.incarnation(), last).await?;
        }
        let mut changes = Vec::new();
        for record in records.into_iter().filter(|r| !r.redacted) {
            let Some(bytes) = self.blobs.get(&keys::document_source(&tenant, &record.doc_id)).await? else { continue };
            let document = DocumentInput { inbox_key: record.inbox_key.clone(), ..serde_json::from_slice(&bytes)? };
            changes.push((tenant.clone(), DocumentChange::Put { doc_id: record.doc_id, document }));
        }
        tracing::info!(tenant = %tenant, documents = changes.len(), "re-redacting stored documents");
        Ok(changes)
    }
}
