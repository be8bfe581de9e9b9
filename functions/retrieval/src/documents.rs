//! Documents by id: put, read, delete, and a source's freshness SLA.

use crate::{document_not_found, is_stale, visible, ChangeOutcome, DocumentChange, DocumentInput, Retrieval};
use keel_core::auth::{Caller, ROLE_ADMIN};
use keel_core::KeelError;
use serde_json::{json, Value};

impl Retrieval {
    /// Indexes a document (a no-op when nothing changed).
    pub(crate) async fn put_document(&self, caller: &Caller, doc_id: String, input: DocumentInput) -> Result<Value, KeelError> {
        self.require_writable(caller, &doc_id).await?;
        let outcome = self.apply_one(caller.tenant()?, DocumentChange::Put { doc_id, document: input }).await?;
        let (ChangeOutcome::Indexed { doc_id, version, chunks } | ChangeOutcome::Unchanged { doc_id, version, chunks }) = &outcome else {
            return Err(KeelError::Internal("a put did not index".into()));
        };
        let unchanged = matches!(outcome, ChangeOutcome::Unchanged { .. });
        Ok(json!({"doc_id": doc_id, "version": version, "chunks": chunks, "unchanged": unchanged}))
    }

    /// A document's record, if the caller may see it (404 otherwise).
    pub(crate) async fn read_document(&self, caller: &Caller, doc_id: &str) -> Result<Value, KeelError> {
        let tenant = caller.tenant()?;
        let found = self.documents.get(tenant, doc_id).await?.filter(|(d, _)| visible(caller, &d.acl_groups));
        let (d, version) = found.ok_or_else(|| document_not_found(doc_id))?;
        let (manifest, _) = self.manifests.read(tenant).await?;
        let stale = is_stale(&manifest.freshness_sla, d.source.as_deref(), &d.updated_at);
        Ok(json!({"doc_id": d.doc_id, "title": d.title, "version": version,
            "chunks": d.chunks, "updated_at": d.updated_at, "indexed_at": d.indexed_at, "source": d.source,
            "stale": stale, "acl": {"groups": d.acl_groups}, "pii": d.pii, "redacted": d.redacted}))
    }

    pub(crate) async fn delete_document(&self, caller: &Caller, doc_id: String) -> Result<Value, KeelError> {
        self.require_writable(caller, &doc_id).await?;
        match self.apply_one(caller.tenant()?, DocumentChange::Delete { doc_id: doc_id.clone() }).await? {
            ChangeOutcome::NotFound { .. } => Err(document_not_found(&doc_id)),
            _ => Ok(json!({"doc_id": doc_id, "deleted": true})),
        }
    }

    /// Sets how old a source's documents may grow before answers mark them
    /// stale (the route lets only admins in).
    pub(crate) async fn set_freshness_sla(&self, caller: &Caller, source: String, seconds: u64) -> Result<Value, KeelError> {
        self.manifests.update(caller.tenant()?, |m| {
            m.freshness_sla.insert(source.clone(), seconds);
            true
        })
        .await?;
        Ok(json!({"source": source, "freshness_sla_seconds": seconds}))
    }

    /// Writing a document takes what reading it takes (or the tenant admin):
    /// one the caller may not see answers 404, as a read does.
    pub(crate) async fn require_writable(&self, caller: &Caller, doc_id: &str) -> Result<(), KeelError> {
        if caller.has_role(ROLE_ADMIN) {
            return Ok(());
        }
        match self.documents.get(caller.tenant()?, doc_id).await? {
            Some((d, _)) if !visible(caller, &d.acl_groups) => Err(document_not_found(doc_id)),
            _ => Ok(()),
        }
    }
}
