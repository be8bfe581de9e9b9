//! The consumers of the two queues documents arrive on:
//! - the ingest queue: producers' document changes,
//!   `{"op":"put","doc_id","document":{…}}` or `{"op":"delete","doc_id"}`,
//!   signed with a key of the tenant in the `authorization` message attribute
//!   (`Bearer keel_…`); the change is made as that key's principal, with its
//!   roles and groups, as over HTTP. An S3-shaped body here is refused: anyone
//!   who may send to the queue could forge one;
//! - the inbox queue, which only the bucket may send to: its notifications
//!   for `tenants/<tenant>/inbox/<doc_id>.json|.txt` (the tenant comes from
//!   the key, never from the object). A removal deletes the document only if
//!   the object is really gone and the document came from that inbox object.
//!
//! Each message succeeds or fails alone; failed ones are retried by the queue
//! and land in its DLQ past the redrive limit. A producer without a valid
//! key, or without the right to the document, goes to the DLQ at once, with
//! the reason in its `keel_rejected` attribute. Re-delivery is harmless: a put
//! of unchanged content is recognized by its hash and not rewritten, and a
//! delete of a missing document is a no-op.

use crate::{DocumentInput, Retrieval};
use keel_core::ids::{parse_path_id, TenantId};
use keel_core::limits::{parse_json, MAX_QUEUE_MESSAGE_BYTES};
use keel_core::ports::{dropped, is_rejection, reject, QueueMessage, QueueName};
use keel_core::KeelError;
use serde::Deserialize;
use serde_json::Value;
use std::collections::BTreeMap;

/// A producer's document change (the message body).
#[derive(Clone, Debug, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum DocumentChange {
    Put { doc_id: String, document: DocumentInput },
    Delete { doc_id: String },
}

/// Which queue a batch came from: what its messages may be.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Arrival {
    /// The ingest queue: producers' signed changes and Keel's own tasks.
    Producers,
    /// The inbox queue: the bucket's notifications.
    Bucket,
}

impl Retrieval {
    /// Processes a batch of the ingest queue; returns the message ids that
    /// failed (to be retried). Each tenant's changes are embedded together and
    /// written as one segment; a message that cannot be read fails alone.
    pub async fn ingest(&self, messages: &[QueueMessage]) -> Vec<String> {
        self.consume(messages, Arrival::Producers).await
    }

    /// Processes a batch of the inbox queue, as `ingest` does.
    pub async fn ingest_inbox(&self, messages: &[QueueMessage]) -> Vec<String> {
        self.consume(messages, Arrival::Bucket).await
    }

    async fn consume(&self, messages: &[QueueMessage], arrival: Arrival) -> Vec<String> {
        let queue = match arrival {
            Arrival::Producers => QueueName::Ingest,
            Arrival::Bucket => QueueName::Inbox,
        };
        let mut failed = Vec::new();
        let mut by_tenant: BTreeMap<TenantId, Vec<(String, DocumentChange)>> = BTreeMap::new();
        for m in messages {
            match self.read_message(m, arrival).await {
                Ok(changes) => {
                    for (tenant, change) in changes {
                        by_tenant.entry(tenant).or_default().push((m.message_id.clone(), change));
                    }
                }
                Err(KeelError::TenantGone(tenant)) => dropped(queue, m, &tenant),
                Err(e) if is_rejection(&e) && reject(self.queue.as_ref(), queue, m, &e.to_string()).await => {}
                Err(e) => {
                    tracing::warn!(message_id = %m.message_id, error = %e, "ingest message failed");
                    failed.push(m.message_id.clone());
                }
            }
        }
        for (tenant, changes) in by_tenant {
            let (ids, changes): (Vec<String>, Vec<DocumentChange>) = changes.into_iter().unzip();
            match self.apply_in_slot(&tenant, changes).await {
                Ok(results) => {
                    for (id, r) in ids.into_iter().zip(results) {
                        if let Err(e) = r {
                            tracing::warn!(message_id = %id, tenant = %tenant, error = %e, "document change failed");
                            failed.push(id);
                        }
                    }
                }
                Err(e) => {
                    tracing::warn!(tenant = %tenant, error = %e, "ingest batch failed");
                    failed.extend(ids);
                }
            }
        }
        failed.sort();
        failed.dedup();
        failed
    }

    /// `apply_changes` holding one of the tenant's ingest slots, as a document
    /// write over HTTP does; with every slot taken, `RetryLater`, and the
    /// batch's messages come back later.
    async fn apply_in_slot(&self, tenant: &TenantId, changes: Vec<DocumentChange>) -> Result<Vec<Result<crate::ChangeOutcome, KeelError>>, KeelError> {
        let slot = self.concurrency.enter(tenant, keel_core::concurrency::Expensive::Ingest).await?;
        let applied = self.apply_changes(tenant, changes).await;
        if let Some(slot) = slot {
            slot.leave().await;
        }
        applied
    }

    /// The changes one message carries: a producer's change (tenant from its
    /// key), Keel's own redaction task, or the bucket's S3 records (tenant from
    /// each object key) where the message came from the inbox queue.
    async fn read_message(&self, m: &QueueMessage, arrival: Arrival) -> Result<Vec<(TenantId, DocumentChange)>, KeelError> {
        let body: Value = parse_json(m.body.as_bytes(), MAX_QUEUE_MESSAGE_BYTES, "message body")?;
        let notification = body.get("Event").and_then(Value::as_str) == Some("s3:TestEvent") || body.get("Records").is_some();
        if arrival == Arrival::Bucket {
            if !notification {
                return Err(KeelError::Forbidden("the inbox queue takes only the bucket's S3 notifications".into()));
            }
            let mut out = Vec::new();
            for r in body.get("Records").and_then(Value::as_array).into_iter().flatten() {
                out.extend(self.read_s3_record(r).await?);
            }
            return Ok(out);
        }
        if notification {
            return Err(KeelError::Forbidden(
                "S3 notifications are taken only from the inbox queue, which the bucket alone may send to; \
                 a producer's message is a signed document change"
                    .into(),
            ));
        }
        if body.get("task").and_then(Value::as_str) == Some(keel_core::tasks::REDACT_STORED) {
            return self.redaction_page(m, &body).await;
        }
        let producer = self.keys.producer(&m.attributes).await?;
        let change: DocumentChange = serde_json::from_value(body)
            .map_err(|e| KeelError::BadRequest(format!("not a document change: {e}")))?;
        let doc_id = match &change {
            DocumentChange::Put { doc_id, .. } | DocumentChange::Delete { doc_id } => doc_id,
        };
        self.require_writable(&producer, doc_id).await.map_err(|e| match e {
            KeelError::NotFound(_) => KeelError::Forbidden(format!("{} may not write document {doc_id:?}", producer.principal)),
            other => other,
        })?;
        Ok(vec![(producer.tenant()?.clone(), change)])
    }

    /// None for keys outside an inbox: the bucket notification also fires
    /// for the sources and exports Keel writes itself.
    async fn read_s3_record(&self, record: &Value) -> Result<Option<(TenantId, DocumentChange)>, KeelError> {
        let raw_key = record
            .pointer("/s3/object/key")
            .and_then(Value::as_str)
            .ok_or_else(|| KeelError::BadRequest("S3 record without an object key".into()))?;
        let key = percent_decode(raw_key);
        if key.split('/').nth(2).is_none_or(|part| part != "inbox") {
            tracing::debug!(key, "not an inbox object; ignored");
            return Ok(None);
        }
        let (tenant, doc_id, ext) = parse_inbox_key(&key)?;
        // Deleting a tenant removes its objects, and S3 reports each removal here.
        if self.tenants.is_deleted(&tenant).await? {
            return Err(KeelError::TenantGone(tenant.to_string()));
        }
        let event = record.get("eventName").and_then(Value::as_str).unwrap_or("");
        if event.starts_with("ObjectRemoved") {
            return self.inbox_removal(tenant, doc_id, &key).await;
        }
        let bytes = self
            .blobs
            .get(&key)
            .await?
            .ok_or_else(|| KeelError::Unavailable(format!("object {key} not found (yet)")))?;
        let document = if ext == "json" {
            parse_json(&bytes, self.settings.document_body_limit, &format!("object {key}"))?
        } else {
            let text = String::from_utf8(bytes).map_err(|_| KeelError::BadRequest(format!("{key}: not UTF-8 text")))?;
            DocumentInput { title: None, text, acl: None, source: Some("s3".into()), updated_at: None, inbox_key: None }
        };
        let document = DocumentInput { inbox_key: Some(key), ..document };
        Ok(Some((tenant, DocumentChange::Put { doc_id, document })))
    }

    /// The delete an inbox object's removal makes: only when the object is
    /// really gone (S3 reports each removal once it happened; a notice for an
    /// object still there is not one) and the document came from that very
    /// inbox object, not from a producer or the API.
    async fn inbox_removal(&self, tenant: TenantId, doc_id: String, key: &str) -> Result<Option<(TenantId, DocumentChange)>, KeelError> {
        if self.blobs.get(key).await?.is_some() {
            tracing::warn!(key, "a removal notice for an object that is still there; ignored");
            return Ok(None);
        }
        let from_inbox = self.documents.get(&tenant, &doc_id).await?.is_some_and(|(d, _)| d.inbox_key.as_deref() == Some(key));
        if !from_inbox {
            tracing::info!(key, doc_id, "an inbox removal for a document that did not come from that object; kept");
            return Ok(None);
        }
        Ok(Some((tenant, DocumentChange::Delete { doc_id })))
    }
}

/// `tenants/<tenant>/inbox/<doc_id>.<json|txt>` → its parts.
fn parse_inbox_key(key: &str) -> Result<(TenantId, String, String), KeelError> {
    let bad = || KeelError::BadRequest(format!("object key {key:?} is not tenants/<tenant>/inbox/<doc_id>.json|.txt"));
    let rest = key.strip_prefix("tenants/").ok_or_else(bad)?;
    let (tenant, file) = rest.split_once("/inbox/").ok_or_else(bad)?;
    let (doc_id, ext) = file.rsplit_once('.').ok_or_else(bad)?;
    if !matches!(ext, "json" | "txt") {
        return Err(bad());
    }
    Ok((TenantId::parse(tenant)?, parse_path_id("document", doc_id)?, ext.to_string()))
}

/// S3 event keys are URL-encoded, with `+` for spaces.
fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                match std::str::from_utf8(&bytes[i + 1..i + 3]).ok().and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    Some(b) => {
                        out.push(b);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inbox_keys() {
        let (t, d, e) = parse_inbox_key("tenants/acme/inbox/hand-book.json").unwrap();
        assert_eq!((t.as_str(), d.as_str(), e.as_str()), ("acme", "hand-book", "json"));
        assert!(parse_inbox_key("tenants/acme/other/x.json").is_err());
        assert!(parse_inbox_key("tenants/acme/inbox/x.exe").is_err());
        assert_eq!(percent_decode("a%2Fb+c%"), "a/b c%");
    }
}
