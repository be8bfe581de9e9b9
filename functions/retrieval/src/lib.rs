//! retrieval: documents in, chunks with anchors, a per-tenant BM25 index with
//! ACL filtering, `POST /v1/search`, and the ingest-queue consumer.
//!
//! Durable state lives in the table (document manifests and chunks, an index
//! version counter per tenant) and the blob store (document sources). A warm
//! function keeps each tenant's index in memory and rebuilds it when the
//! tenant's index version moves, so a document is searchable on the next query.

mod index;
mod ingest;

pub use index::SearchHit;

use index::TenantIndex;
use keel_core::auth::Caller;
use keel_core::chunking::{chunk_document, Chunk};
use keel_core::http::{not_found, ApiRequest, ApiResponse, DEFAULT_BODY_LIMIT};
use keel_core::ids::{parse_path_id, TenantId};
use keel_core::ports::{BlobStore, Condition, QueryOptions, Table, Write};
use keel_core::time::now_rfc3339;
use keel_core::KeelError;
use serde::{Deserialize, Serialize};
use serde_json::json;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// Most results one search may ask for.
pub const MAX_K: usize = 50;
/// Sort key of the per-tenant index version counter.
const INDEX_VERSION_SK: &str = "INDEX";
/// The ACL group every principal has: documents without an ACL carry it.
const PUBLIC_GROUP: &str = "__public";

/// A document as `PUT /v1/documents/{id}` and producers send it.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DocumentInput {
    #[serde(default)]
    pub title: Option<String>,
    pub text: String,
    #[serde(default)]
    pub acl: Option<Acl>,
    #[serde(default)]
    pub source: Option<String>,
    #[serde(default)]
    pub updated_at: Option<String>,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Acl {
    #[serde(default)]
    pub groups: Vec<String>,
}

/// What the table holds for a document.
#[derive(Clone, Debug, Deserialize, Serialize)]
struct Manifest {
    doc_id: String,
    title: Option<String>,
    acl_groups: Vec<String>,
    source: Option<String>,
    updated_at: String,
    chunks: usize,
}

/// What the table holds for a chunk (enough to rebuild the index).
#[derive(Clone, Debug, Deserialize, Serialize)]
pub(crate) struct ChunkRecord {
    pub chunk: Chunk,
    pub title: Option<String>,
    pub acl_groups: Vec<String>,
}

pub struct Retrieval {
    table: Arc<dyn Table>,
    blobs: Arc<dyn BlobStore>,
    document_body_limit: usize,
    indexes: Mutex<HashMap<TenantId, Arc<TenantIndex>>>,
}

fn doc_sk(doc_id: &str) -> String {
    format!("DOC#{doc_id}")
}

fn chunk_sk(doc_id: &str, index: usize) -> String {
    format!("CHUNK#{doc_id}#{index:06}")
}

impl Retrieval {
    pub fn new(table: Arc<dyn Table>, blobs: Arc<dyn BlobStore>, document_body_limit: usize) -> Self {
        Self { table, blobs, document_body_limit, indexes: Mutex::new(HashMap::new()) }
    }

    /// HTTP routes: `/v1/documents/{id}` and `/v1/search`.
    pub async fn handle(&self, req: ApiRequest) -> Result<ApiResponse, KeelError> {
        let caller = req.caller()?;
        let tenant = caller.tenant()?;
        match (req.method.as_str(), req.segments().as_slice()) {
            ("PUT", ["v1", "documents", id]) => {
                let doc_id = parse_path_id("document", id)?;
                let input: DocumentInput = req.json(self.document_body_limit)?;
                let (version, chunks) = self.put_document(tenant, &doc_id, input).await?;
                Ok(ApiResponse::ok(&json!({"doc_id": doc_id, "version": version, "chunks": chunks})))
            }
            ("GET", ["v1", "documents", id]) => {
                let doc_id = parse_path_id("document", id)?;
                let m = self.manifest(tenant, &doc_id).await?.filter(|(m, _)| visible(caller, &m.acl_groups));
                let (m, version) = m.ok_or_else(|| document_not_found(&doc_id))?;
                Ok(ApiResponse::ok(&json!({"doc_id": m.doc_id, "title": m.title, "version": version,
                    "chunks": m.chunks, "updated_at": m.updated_at, "acl": {"groups": m.acl_groups}})))
            }
            ("DELETE", ["v1", "documents", id]) => {
                let doc_id = parse_path_id("document", id)?;
                self.delete_document(tenant, &doc_id).await?;
                Ok(ApiResponse::ok(&json!({"doc_id": doc_id, "deleted": true})))
            }
            ("POST", ["v1", "search"]) => {
                let body: SearchRequest = req.json(DEFAULT_BODY_LIMIT)?;
                let k = body.k.unwrap_or(10);
                if !(1..=MAX_K).contains(&k) {
                    return Err(KeelError::BadRequest(format!("k must be between 1 and {MAX_K}")));
                }
                if body.query.trim().is_empty() {
                    return Err(KeelError::BadRequest("query must not be empty".into()));
                }
                let results = self.search(caller, &body.query, k).await?;
                Ok(ApiResponse::ok(&json!({"results": results})))
            }
            _ => Err(not_found(&req)),
        }
    }

    async fn manifest(&self, tenant: &TenantId, doc_id: &str) -> Result<Option<(Manifest, u64)>, KeelError> {
        match self.table.get(&tenant.pk(), &doc_sk(doc_id)).await? {
            Some(item) => Ok(Some((serde_json::from_value(item.data)?, item.version))),
            None => Ok(None),
        }
    }

    /// Stores, chunks and indexes a document; returns (version, chunk count).
    pub async fn put_document(&self, tenant: &TenantId, doc_id: &str, input: DocumentInput) -> Result<(u64, usize), KeelError> {
        if input.text.trim().is_empty() {
            return Err(KeelError::BadRequest("text must not be empty".into()));
        }
        let acl_groups = input.acl.as_ref().map(|a| a.groups.clone()).unwrap_or_default();
        if acl_groups.iter().any(|g| g.is_empty() || g.starts_with("__")) {
            return Err(KeelError::BadRequest("ACL group names must be non-empty and not start with '__'".into()));
        }
        let existing = self.manifest(tenant, doc_id).await?;
        let chunks = chunk_document(doc_id, &input.text);
        self.blobs
            .put(&tenant.blob_key(&format!("documents/{doc_id}.json")), serde_json::to_vec(&input)?)
            .await?;
        for chunk in &chunks {
            let record = ChunkRecord { chunk: chunk.clone(), title: input.title.clone(), acl_groups: acl_groups.clone() };
            self.table
                .put(Write {
                    pk: tenant.pk(),
                    sk: chunk_sk(doc_id, chunk.anchor.chunk),
                    data: serde_json::to_value(&record)?,
                    expires_at: None,
                    condition: Condition::Always,
                })
                .await?;
        }
        let old_chunks = existing.as_ref().map_or(0, |(m, _)| m.chunks);
        for stale in chunks.len()..old_chunks {
            self.table.delete(&tenant.pk(), &chunk_sk(doc_id, stale)).await?;
        }
        let manifest = Manifest {
            doc_id: doc_id.to_string(),
            title: input.title,
            acl_groups,
            source: input.source,
            updated_at: input.updated_at.unwrap_or_else(now_rfc3339),
            chunks: chunks.len(),
        };
        let condition = existing.map_or(Condition::NotExists, |(_, v)| Condition::Version(v));
        let version = self
            .table
            .put(Write { pk: tenant.pk(), sk: doc_sk(doc_id), data: serde_json::to_value(&manifest)?, expires_at: None, condition })
            .await
            .map_err(|e| match e {
                keel_core::StoreError::ConditionFailed => {
                    KeelError::Conflict(format!("document {doc_id} was changed concurrently; retry"))
                }
                other => other.into(),
            })?;
        self.bump_index_version(tenant).await?;
        tracing::info!(tenant = %tenant, doc_id, chunks = chunks.len(), "document indexed");
        Ok((version, chunks.len()))
    }

    pub async fn delete_document(&self, tenant: &TenantId, doc_id: &str) -> Result<(), KeelError> {
        let (manifest, _) = self.manifest(tenant, doc_id).await?.ok_or_else(|| document_not_found(doc_id))?;
        self.table.delete(&tenant.pk(), &doc_sk(doc_id)).await?;
        for i in 0..manifest.chunks {
            self.table.delete(&tenant.pk(), &chunk_sk(doc_id, i)).await?;
        }
        self.blobs.delete(&tenant.blob_key(&format!("documents/{doc_id}.json"))).await?;
        self.bump_index_version(tenant).await
    }

    async fn bump_index_version(&self, tenant: &TenantId) -> Result<(), KeelError> {
        self.table.increment(&tenant.pk(), INDEX_VERSION_SK, 1, None, None).await?;
        Ok(())
    }

    /// BM25 search over the caller's tenant, only over chunks the caller may see.
    pub async fn search(&self, caller: &Caller, query: &str, k: usize) -> Result<Vec<SearchHit>, KeelError> {
        let tenant = caller.tenant()?;
        let index = self.tenant_index(tenant).await?;
        let mut groups: Vec<&str> = caller.groups.iter().map(String::as_str).collect();
        groups.push(PUBLIC_GROUP);
        index.search(query, &groups, k)
    }

    /// The tenant's in-memory index, rebuilt if the stored version moved on.
    async fn tenant_index(&self, tenant: &TenantId) -> Result<Arc<TenantIndex>, KeelError> {
        let version = self.table.get(&tenant.pk(), INDEX_VERSION_SK).await?.map_or(0, |i| i.counter);
        let cached = self.indexes.lock().ok().and_then(|c| c.get(tenant).cloned());
        if let Some(index) = cached.filter(|i| i.version == version) {
            return Ok(index);
        }
        let items = self.table.query(&tenant.pk(), "CHUNK#", QueryOptions::default()).await?;
        let records = items
            .into_iter()
            .map(|i| serde_json::from_value::<ChunkRecord>(i.data))
            .collect::<Result<Vec<_>, _>>()?;
        let index = Arc::new(TenantIndex::build(version, records)?);
        if let Ok(mut c) = self.indexes.lock() {
            c.insert(tenant.clone(), index.clone());
        }
        Ok(index)
    }
}

/// Whether a caller may see a document with these ACL groups.
fn visible(caller: &Caller, acl_groups: &[String]) -> bool {
    acl_groups.is_empty() || acl_groups.iter().any(|g| caller.groups.contains(g))
}

fn document_not_found(doc_id: &str) -> KeelError {
    KeelError::NotFound(format!("document {doc_id} not found"))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SearchRequest {
    query: String,
    k: Option<usize>,
}
