//! What retrieval keeps in the table, one store per thing it holds: the
//! documents' records, the changed-documents feed with its cursors, and each
//! tenant's index manifest. Only these touch the table; sources and
//! segments live in the blob store.

use crate::manifest::IndexManifest;
use crate::{ChangeRecord, DocumentRecord};
use keel_core::ids::{new_token, TenantId};
use keel_core::keys;
use keel_core::ports::{Condition, QueryOptions, Table, Write};
use keel_core::time::now_secs;
use keel_core::{KeelError, StoreError};
use serde_json::json;
use std::sync::Arc;

/// How long the changed-documents feed remembers a change.
const CHANGE_TTL_SECS: i64 = 30 * 24 * 3600;
/// How long a feed cursor can be used.
const CURSOR_TTL_SECS: i64 = 7 * 24 * 3600;
/// Attempts at a conditional manifest write before giving up (each one lost
/// a race to another writer, which made progress).
const COMMIT_ATTEMPTS: usize = 50;

fn write(tenant: &TenantId, sk: String, data: serde_json::Value, expires_at: Option<i64>, condition: Condition) -> Write {
    Write { pk: tenant.pk(), sk, data, expires_at, condition }
}

/// One record per indexed document (what it is, who may see it, its hash).
pub(crate) struct DocumentStore {
    table: Arc<dyn Table>,
}

impl DocumentStore {
    pub(crate) fn new(table: Arc<dyn Table>) -> Self {
        Self { table }
    }

    pub(crate) async fn get(&self, tenant: &TenantId, doc_id: &str) -> Result<Option<(DocumentRecord, u64)>, KeelError> {
        keel_core::ports::get_record(self.table.as_ref(), &tenant.pk(), &keys::document(doc_id)).await
    }

    /// Writes the record; returns its new version.
    pub(crate) async fn put(&self, tenant: &TenantId, record: &DocumentRecord) -> Result<u64, KeelError> {
        let data = serde_json::to_value(record)?;
        Ok(self.table.put(write(tenant, keys::document(&record.doc_id), data, None, Condition::Always)).await?)
    }

    pub(crate) async fn delete(&self, tenant: &TenantId, doc_id: &str) -> Result<(), KeelError> {
        Ok(self.table.delete(&tenant.pk(), &keys::document(doc_id)).await?)
    }

    /// Up to `limit` records in document id order, after `after` when given.
    pub(crate) async fn page(&self, tenant: &TenantId, after: Option<&str>, limit: usize) -> Result<Vec<DocumentRecord>, KeelError> {
        let options = QueryOptions { limit: Some(limit), after: after.map(keys::document), ..Default::default() };
        let items = self.table.query(&tenant.pk(), keys::DOCUMENTS, options).await?;
        items.into_iter().map(|i| serde_json::from_value(i.data).map_err(KeelError::from)).collect()
    }
}

/// The changed-documents feed, ordered by time, and the cursors its pages hand out.
pub(crate) struct ChangeFeed {
    table: Arc<dyn Table>,
}

impl ChangeFeed {
    pub(crate) fn new(table: Arc<dyn Table>) -> Self {
        Self { table }
    }

    pub(crate) async fn record(&self, tenant: &TenantId, change: &ChangeRecord) -> Result<(), KeelError> {
        let sk = keys::change(&change.at, &change.doc_id);
        let expires_at = Some(now_secs() + CHANGE_TTL_SECS);
        self.table.put(write(tenant, sk, serde_json::to_value(change)?, expires_at, Condition::Always)).await?;
        Ok(())
    }

    /// The feed position after every change recorded at `at` (a change time) or before.
    pub(crate) fn position_at(at: &str) -> String {
        keys::changes_after(at)
    }

    /// Up to `limit` changes after the feed position `after`, oldest first,
    /// each with its own position.
    pub(crate) async fn page(&self, tenant: &TenantId, after: String, limit: usize) -> Result<Vec<(String, ChangeRecord)>, KeelError> {
        let options = QueryOptions { limit: Some(limit), after: Some(after), ..Default::default() };
        let items = self.table.query(&tenant.pk(), keys::CHANGES, options).await?;
        items.into_iter().map(|i| Ok((i.sk, serde_json::from_value(i.data)?))).collect()
    }

    /// Stores a feed position for `principal` behind a new random token.
    pub(crate) async fn seal_cursor(&self, tenant: &TenantId, principal: &str, after: &str) -> Result<String, KeelError> {
        let token = new_token("cur");
        let data = json!({"after": after, "principal": principal});
        let expires_at = Some(now_secs() + CURSOR_TTL_SECS);
        self.table.put(write(tenant, keys::feed_cursor(&token), data, expires_at, Condition::NotExists)).await?;
        Ok(token)
    }

    /// The position behind `token`, if this principal was given it and it has not expired.
    pub(crate) async fn open_cursor(&self, tenant: &TenantId, principal: &str, token: &str) -> Result<Option<String>, KeelError> {
        let Some(item) = self.table.get(&tenant.pk(), &keys::feed_cursor(token)).await? else { return Ok(None) };
        if item.data["principal"].as_str() != Some(principal) {
            return Ok(None);
        }
        Ok(item.data["after"].as_str().map(str::to_string))
    }
}

/// Each tenant's index manifest: the segments that make its index, versioned.
pub(crate) struct ManifestStore {
    table: Arc<dyn Table>,
}

impl ManifestStore {
    pub(crate) fn new(table: Arc<dyn Table>) -> Self {
        Self { table }
    }

    /// The manifest and its version (`None`: the tenant has no index yet).
    pub(crate) async fn read(&self, tenant: &TenantId) -> Result<(IndexManifest, Option<u64>), KeelError> {
        match keel_core::ports::get_record(self.table.as_ref(), &tenant.pk(), keys::INDEX_MANIFEST).await? {
            Some((manifest, version)) => Ok((manifest, Some(version))),
            None => Ok((IndexManifest::default(), None)),
        }
    }

    /// Applies `change` with optimistic concurrency, retrying on a lost race.
    /// `change` returns false to give up (nothing written); `Some(version)` once written.
    pub(crate) async fn update(
        &self,
        tenant: &TenantId,
        mut change: impl FnMut(&mut IndexManifest) -> bool,
    ) -> Result<Option<u64>, KeelError> {
        for _ in 0..COMMIT_ATTEMPTS {
            let (mut manifest, version) = self.read(tenant).await?;
            if !change(&mut manifest) {
                return Ok(None);
            }
            let condition = version.map_or(Condition::NotExists, Condition::Version);
            let data = serde_json::to_value(&manifest)?;
            match self.table.put(write(tenant, keys::INDEX_MANIFEST.into(), data, None, condition)).await {
                Ok(v) => return Ok(Some(v)),
                Err(StoreError::ConditionFailed) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(KeelError::Unavailable("the index manifest is too busy; retry".into()))
    }
}
