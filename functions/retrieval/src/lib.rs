//! retrieval: documents in (chunked with anchors, PII-tagged and optionally
//! redacted, embedded in batches), a per-tenant hybrid index in immutable
//! segments, `POST /v1/search` with ACL filtering before ranking, freshness
//! flags, a changed-documents feed, and the ingest-queue consumer.
//!
//! Durable state: the table holds a record per document, a change feed and
//! the index manifest; the blob store holds document sources and segments. A
//! warm function keeps tenant indexes in an LRU cache and checks the manifest
//! version on every search, so a document is searchable on the next query
//! after its ingest completes.

pub mod analyzer;
pub mod index;
mod changes;
mod documents;
mod erasure;
mod indexing;
mod search;
mod ingest;
mod manifest;
mod redaction;
pub mod pii;
pub mod lambda;
pub mod routes;
pub mod segment;
mod index_files;
mod store;

pub use index::Tuning;
pub use ingest::DocumentChange;

use index::TenantIndex;
use keel_core::keys;
use keel_core::auth::Caller;
use keel_core::chunking::{chunk_document, Anchor};
use keel_core::http::ApiResponse;
use keel_core::ids::{parse_path_id, TenantId};
use keel_core::api_keys::KeyAuthenticator;
use keel_core::ports::{BlobStore, Table, WorkQueue};
use keel_core::tenants::TenantStore;
use keel_core::KeelError;
use keel_ml::{Feeding, LoadingEmbedder};
use manifest::IndexCache;
use pii::{PiiKind, PiiSpan};
use store::{ChangeFeed, DocumentStore, ManifestStore};
use segment::{SegmentChunk, SegmentData};
use serde::{Deserialize, Serialize};
use serde_json::json;
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

/// Most results one search may ask for.
pub const MAX_K: usize = 50;
/// Most changes one feed page returns.
const MAX_CHANGES: usize = 1000;

/// A document as `PUT /v1/documents/{id}` and producers send it.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DocumentInput {
    #[serde(default)]
    pub title: Option<String>,
    pub text: String,
    #[serde(default)]
    pub acl: Option<Acl>,
    #[serde(default)]
    pub source: Option<String>,
    /// When the source last changed (RFC 3339); defaults to ingest time.
    #[serde(default)]
    pub updated_at: Option<String>,
    /// The inbox object the document came from (set by the inbox consumer
    /// alone; never read from a body, never part of the content's hash).
    #[serde(skip)]
    pub inbox_key: Option<String>,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Acl {
    #[serde(default)]
    pub groups: Vec<String>,
}

/// What the table holds for a document.
#[derive(Clone, Debug, Deserialize, Serialize)]
struct DocumentRecord {
    doc_id: String,
    title: Option<String>,
    acl_groups: Vec<String>,
    source: Option<String>,
    updated_at: String,
    indexed_at: String,
    chunks: usize,
    /// SHA-256 of the input and the redaction setting: an identical re-ingest is a no-op.
    content_hash: String,
    pii: BTreeMap<PiiKind, usize>,
    redacted: bool,
    /// The inbox object it came from: only that object's removal deletes it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    inbox_key: Option<String>,
}

/// What happened to a document.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
enum ChangeOp {
    Put,
    Delete,
}

/// One entry of the changed-documents feed.
#[derive(Clone, Debug, Deserialize, Serialize)]
struct ChangeRecord {
    doc_id: String,
    op: ChangeOp,
    at: String,
    acl_groups: Vec<String>,
}

/// The result of one document change.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum ChangeOutcome {
    Indexed { doc_id: String, version: u64, chunks: usize },
    Unchanged { doc_id: String, version: u64, chunks: usize },
    Deleted { doc_id: String },
    NotFound { doc_id: String },
}

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct SearchHit {
    pub doc_id: String,
    pub chunk_id: String,
    /// The fused score (higher is better; comparable within one search).
    pub score: f32,
    /// BM25 and cosine similarity behind it.
    pub lexical_score: f32,
    pub similarity: Option<f32>,
    pub text: String,
    pub title: Option<String>,
    pub anchor: Anchor,
    pub source: Option<String>,
    pub updated_at: String,
    /// Older than its source's freshness SLA.
    pub stale: bool,
    pub pii: Vec<PiiKind>,
}

#[derive(Clone, Debug)]
pub struct RetrievalSettings {
    pub document_body_limit: usize,
    /// Bound of the warm index cache, in chunks across tenants.
    pub cache_chunks: usize,
    /// Segments a tenant may have before a compaction merges some.
    pub max_segments: usize,
    pub tuning: Tuning,
    /// Ingest batches a tenant may have running at once (`KEEL_TENANT_CONCURRENCY`; 0: no limit).
    pub tenant_concurrency: u32,
}

/// What retrieval works on: the table (through its stores), the blob
/// store, the ingest queue (to dead-letter what producers may not do), and
/// the tenant registry and key authenticator (shared with the other
/// functions of a process).
pub struct Backends {
    pub table: Arc<dyn Table>,
    pub blobs: Arc<dyn BlobStore>,
    pub queue: Arc<dyn WorkQueue>,
    pub tenants: Arc<TenantStore>,
    pub keys: Arc<KeyAuthenticator>,
}

pub struct Retrieval {
    tenants: Arc<TenantStore>,
    keys: Arc<KeyAuthenticator>,
    queue: Arc<dyn WorkQueue>,
    documents: DocumentStore,
    changes: ChangeFeed,
    manifests: ManifestStore,
    blobs: Arc<dyn BlobStore>,
    embedder: Option<Arc<LoadingEmbedder>>,
    settings: RetrievalSettings,
    cache: Mutex<IndexCache>,
    /// Texts embedded since start: the function's heaviest CPU work.
    embedded: std::sync::atomic::AtomicU64,
    /// Producers' ingest batches take a tenant's concurrency slot, as document writes over HTTP do.
    concurrency: keel_core::concurrency::ConcurrencyLimiter,
}

impl Retrieval {
    pub fn new(backends: Backends, embedder: Option<Arc<LoadingEmbedder>>, settings: RetrievalSettings) -> Self {
        let Backends { table, blobs, queue, tenants, keys } = backends;
        let cache = Mutex::new(IndexCache::new(settings.cache_chunks));
        Self {
            tenants,
            keys,
            queue,
            concurrency: keel_core::concurrency::ConcurrencyLimiter::new(table.clone(), settings.tenant_concurrency),
            documents: DocumentStore::new(table.clone()),
            changes: ChangeFeed::new(table.clone()),
            manifests: ManifestStore::new(table),
            blobs,
            embedder,
            settings,
            cache,
            embedded: Default::default(),
        }
    }

    /// How many texts this function has embedded since it started.
    pub fn embedded_texts(&self) -> u64 {
        self.embedded.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The service as configured: starts loading the embedding model when
    /// one is set, on a thread of its own, so init does not wait for it (the
    /// first request that embeds does; a model that fails to load fails those
    /// requests with 503, and the log says why).
    pub fn from_config(backends: Backends, config: &keel_core::config::Config) -> Result<Self, KeelError> {
        let embedder = config.embedding.as_ref().map(|files| {
            Arc::new(LoadingEmbedder::start(keel_ml::EmbedderConfig {
                model_dir: files.model_dir.clone(),
                runtime_library: files.runtime_library.clone(),
                intra_threads: files.intra_threads,
            }))
        });
        let settings = RetrievalSettings {
            document_body_limit: config.document_body_limit,
            cache_chunks: config.index_cache_chunks,
            max_segments: config.index_max_segments,
            tuning: Tuning::default(),
            tenant_concurrency: config.tenant_concurrency,
        };
        Ok(Self::new(backends, embedder, settings))
    }

    /// Whether an embedding model is loaded (`embed` returns nothing without one).
    pub fn embeds(&self) -> bool {
        self.embedder.is_some()
    }

    /// `hybrid` with an embedder that loaded (or is loading), `lexical` without.
    pub fn mode(&self) -> &'static str {
        if self.embedder.is_some() && self.degraded().is_none() {
            "hybrid"
        } else {
            "lexical"
        }
    }

    pub(crate) async fn apply_one(&self, tenant: &TenantId, change: DocumentChange) -> Result<ChangeOutcome, KeelError> {
        self.apply_changes(tenant, vec![change]).await?.pop().ok_or_else(|| KeelError::Internal("no outcome".into()))?
    }

}

/// Past its source's SLA (sources without one are never stale).
pub(crate) fn is_stale(slas: &BTreeMap<String, u64>, source: Option<&str>, updated_at: &str) -> bool {
    let Some(sla) = source.and_then(|s| slas.get(s)) else { return false };
    chrono::DateTime::parse_from_rfc3339(updated_at)
        .map(|t| (chrono::Utc::now() - t.with_timezone(&chrono::Utc)).num_seconds() > *sla as i64)
        .unwrap_or(false)
}

/// Whether a caller may see a document with these ACL groups.
pub(crate) fn visible(caller: &Caller, acl_groups: &[String]) -> bool {
    acl_groups.is_empty() || acl_groups.iter().any(|g| caller.groups.contains(g))
}

pub(crate) fn document_not_found(doc_id: &str) -> KeelError {
    KeelError::NotFound(format!("document {doc_id} not found"))
}

/// Change-feed keys sort by time: fixed-width UTC microseconds.
pub(crate) fn change_time(t: chrono::DateTime<chrono::Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
}

pub(crate) fn parse_time(field: &str, value: &str) -> Result<chrono::DateTime<chrono::Utc>, KeelError> {
    chrono::DateTime::parse_from_rfc3339(value)
        .map(|t| t.with_timezone(&chrono::Utc))
        .map_err(|_| KeelError::BadRequest(format!("{field} must be an RFC 3339 time, e.g. 2026-01-31T12:00:00Z")))
}
