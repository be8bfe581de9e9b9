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
mod documents;
mod ingest;
mod manifest;
pub mod pii;
pub mod routes;
pub mod segment;
mod store;

pub use index::Tuning;
pub use ingest::DocumentChange;

use index::TenantIndex;
use keel_core::keys;
use keel_core::auth::Caller;
use keel_core::chunking::{chunk_document, Anchor};
use keel_core::http::ApiResponse;
use keel_core::ids::{new_token, parse_path_id, TenantId};
use keel_core::ports::{BlobStore, Condition, QueryOptions, Table, Write};
use keel_core::tenants::require_active;
use keel_core::KeelError;
use keel_ml::Embedder;
use manifest::IndexCache;
use pii::{PiiKind, PiiSpan};
use segment::{SegmentChunk, SegmentData};
use serde::{Deserialize, Serialize};
use serde_json::json;
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

/// Most results one search may ask for.
pub const MAX_K: usize = 50;
/// How many chunks one embedding call takes.
const EMBED_BATCH: usize = 32;
/// How long the changed-documents feed remembers a change.
const CHANGE_TTL_SECS: i64 = 30 * 24 * 3600;
/// Most changes one feed page returns.
const MAX_CHANGES: usize = 1000;
/// How long a feed cursor can be used.
const CURSOR_TTL_SECS: i64 = 7 * 24 * 3600;

/// A document as `PUT /v1/documents/{id}` and producers send it.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
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
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
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
}

/// One entry of the changed-documents feed.
#[derive(Clone, Debug, Deserialize, Serialize)]
struct ChangeRecord {
    doc_id: String,
    op: String,
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
}

pub struct Retrieval {
    table: Arc<dyn Table>,
    blobs: Arc<dyn BlobStore>,
    embedder: Option<Arc<Embedder>>,
    settings: RetrievalSettings,
    cache: Mutex<IndexCache>,
}


/// Change-feed keys sort by time: fixed-width UTC microseconds.
fn change_time(t: chrono::DateTime<chrono::Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
}

fn parse_time(field: &str, value: &str) -> Result<chrono::DateTime<chrono::Utc>, KeelError> {
    chrono::DateTime::parse_from_rfc3339(value)
        .map(|t| t.with_timezone(&chrono::Utc))
        .map_err(|_| KeelError::BadRequest(format!("{field} must be an RFC 3339 time, e.g. 2026-01-31T12:00:00Z")))
}

impl Retrieval {
    pub fn new(
        table: Arc<dyn Table>,
        blobs: Arc<dyn BlobStore>,
        embedder: Option<Arc<Embedder>>,
        settings: RetrievalSettings,
    ) -> Self {
        let cache = Mutex::new(IndexCache::new(settings.cache_chunks));
        Self { table, blobs, embedder, settings, cache }
    }

    /// The service as configured: loads the embedding model when one is set.
    pub fn from_config(table: Arc<dyn Table>, blobs: Arc<dyn BlobStore>, config: &keel_core::config::Config) -> Result<Self, KeelError> {
        let embedder = match &config.embedding {
            Some(files) => Some(Arc::new(
                Embedder::load(&keel_ml::EmbedderConfig {
                    model_dir: files.model_dir.clone(),
                    runtime_library: files.runtime_library.clone(),
                    intra_threads: files.intra_threads,
                })
                .map_err(|e| KeelError::Internal(format!("embedding model: {e}")))?,
            )),
            None => None,
        };
        let settings = RetrievalSettings {
            document_body_limit: config.document_body_limit,
            cache_chunks: config.index_cache_chunks,
            max_segments: config.index_max_segments,
            tuning: Tuning::default(),
        };
        Ok(Self::new(table, blobs, embedder, settings))
    }

    /// Whether an embedding model is loaded (`embed` returns nothing without one).
    pub fn embeds(&self) -> bool {
        self.embedder.is_some()
    }

    /// `hybrid` with an embedder, `lexical` without.
    pub fn mode(&self) -> &'static str {
        if self.embedder.is_some() {
            "hybrid"
        } else {
            "lexical"
        }
    }

    pub(crate) async fn document(&self, tenant: &TenantId, doc_id: &str) -> Result<Option<(DocumentRecord, u64)>, KeelError> {
        match self.table.get(&tenant.pk(), &keys::document(doc_id)).await? {
            Some(item) => Ok(Some((serde_json::from_value(item.data)?, item.version))),
            None => Ok(None),
        }
    }

    pub(crate) async fn apply_one(&self, tenant: &TenantId, change: DocumentChange) -> Result<ChangeOutcome, KeelError> {
        self.apply_changes(tenant, vec![change]).await?.pop().ok_or_else(|| KeelError::Internal("no outcome".into()))?
    }

    /// Applies a batch of document changes for one tenant: every put is
    /// chunked, PII-tagged (and redacted when the tenant asks), and all new
    /// chunks are embedded in batches and written as one segment. Returns one
    /// result per change, in order; `Err` for the whole batch means nothing
    /// was indexed. Unchanged documents (same content hash) are not rewritten,
    /// so redelivered messages are harmless.
    pub async fn apply_changes(
        &self,
        tenant: &TenantId,
        changes: Vec<DocumentChange>,
    ) -> Result<Vec<Result<ChangeOutcome, KeelError>>, KeelError> {
        let redact = require_active(self.table.as_ref(), tenant).await?.redact_pii;
        let now = chrono::Utc::now();
        let indexed_at = change_time(now);
        let mut results: Vec<Result<ChangeOutcome, KeelError>> = Vec::with_capacity(changes.len());
        // The last change of a document in the batch wins.
        let mut puts: HashMap<String, PreparedDocument> = HashMap::new();
        let mut deletes: HashMap<String, Option<DocumentRecord>> = HashMap::new();
        for change in changes {
            let result = match change {
                DocumentChange::Put { doc_id, document } => {
                    match self.prepare(tenant, &doc_id, document, redact, &indexed_at).await {
                        Ok(Prepared::Unchanged(outcome)) => Ok(outcome),
                        Ok(Prepared::New(p)) => {
                            deletes.remove(&doc_id);
                            let chunks = p.chunks.len();
                            puts.insert(doc_id.clone(), *p);
                            // The version is known after the write; filled in below.
                            Ok(ChangeOutcome::Indexed { doc_id, version: 0, chunks })
                        }
                        Err(e) => Err(e),
                    }
                }
                DocumentChange::Delete { doc_id } => match self.document(tenant, &doc_id).await {
                    Ok(existing) => {
                        let put_in_batch = puts.remove(&doc_id).is_some();
                        let outcome = if existing.is_some() || put_in_batch {
                            ChangeOutcome::Deleted { doc_id: doc_id.clone() }
                        } else {
                            ChangeOutcome::NotFound { doc_id: doc_id.clone() }
                        };
                        deletes.insert(doc_id, existing.map(|(d, _)| d));
                        Ok(outcome)
                    }
                    Err(e) => Err(e),
                },
            };
            results.push(result);
        }
        if puts.is_empty() && deletes.values().all(Option::is_none) {
            return Ok(results);
        }

        let mut segment = SegmentData::new();
        let mut docs: Vec<PreparedDocument> = puts.into_values().collect();
        docs.sort_by(|a, b| a.record.doc_id.cmp(&b.record.doc_id));
        let texts: Vec<String> = docs.iter().flat_map(|d| d.chunks.iter().map(embedding_text)).collect();
        let mut vectors = self.embed(texts).await?.into_iter();
        for d in &mut docs {
            for c in std::mem::take(&mut d.chunks) {
                let v = vectors.next();
                segment.push(c, v.as_deref());
            }
        }
        segment.deleted_docs = deletes.keys().cloned().collect();
        segment.deleted_docs.sort();
        for d in &docs {
            self.blobs.put(&keys::document_source(tenant, &d.record.doc_id), serde_json::to_vec(&d.source)?).await?;
        }
        self.commit_segment(tenant, &segment).await?;

        let mut versions: HashMap<String, u64> = HashMap::new();
        for d in &docs {
            let write = Write {
                pk: tenant.pk(),
                sk: keys::document(&d.record.doc_id),
                data: serde_json::to_value(&d.record)?,
                expires_at: None,
                condition: Condition::Always,
            };
            versions.insert(d.record.doc_id.clone(), self.table.put(write).await?);
            self.record_change(tenant, &d.record.doc_id, "put", now, &d.record.acl_groups).await?;
        }
        for (doc_id, existing) in &deletes {
            if let Some(record) = existing {
                self.table.delete(&tenant.pk(), &keys::document(doc_id)).await?;
                self.blobs.delete(&keys::document_source(tenant, doc_id)).await?;
                self.record_change(tenant, doc_id, "delete", now, &record.acl_groups).await?;
            }
        }
        for r in results.iter_mut() {
            if let Ok(ChangeOutcome::Indexed { doc_id, version, .. }) = r {
                *version = versions.get(doc_id.as_str()).copied().unwrap_or(*version);
            }
        }
        tracing::info!(tenant = %tenant, documents = docs.len(), deletes = deletes.len(), chunks = segment.chunks.len(), "segment written");
        if let Err(e) = self.compact(tenant, self.settings.max_segments).await {
            tracing::warn!(tenant = %tenant, error = %e, "compaction failed; the next write retries it");
        }
        Ok(results)
    }

    /// Validates, redacts, chunks and analyzes one document (no embedding yet).
    async fn prepare(
        &self,
        tenant: &TenantId,
        doc_id: &str,
        input: DocumentInput,
        redact: bool,
        indexed_at: &str,
    ) -> Result<Prepared, KeelError> {
        let doc_id = parse_path_id("document", doc_id)?;
        if input.text.trim().is_empty() {
            return Err(KeelError::BadRequest("text must not be empty".into()));
        }
        let acl_groups = input.acl.as_ref().map(|a| a.groups.clone()).unwrap_or_default();
        if acl_groups.iter().any(|g| g.is_empty() || g.starts_with("__")) {
            return Err(KeelError::BadRequest("ACL group names must be non-empty and not start with '__'".into()));
        }
        let updated_at = match &input.updated_at {
            Some(t) => change_time(parse_time("updated_at", t)?),
            None => indexed_at.to_string(),
        };
        let content_hash = hex::encode(Sha256::digest(serde_json::to_vec(&(&input, redact))?));
        if let Some((existing, version)) = self.document(tenant, &doc_id).await? {
            if existing.content_hash == content_hash {
                return Ok(Prepared::Unchanged(ChangeOutcome::Unchanged { doc_id, version, chunks: existing.chunks }));
            }
        }
        // Redaction happens before chunking, so anchors point into the stored (redacted) text.
        let found = pii::detect(&input.text);
        let mut counts: BTreeMap<PiiKind, usize> = BTreeMap::new();
        for s in &found {
            *counts.entry(s.kind).or_default() += 1;
        }
        let (text, spans) = if redact { pii::redact(&input.text, &found) } else { (input.text.clone(), found) };
        let chunks: Vec<SegmentChunk> = chunk_document(&doc_id, &text)
            .into_iter()
            .map(|c| {
                let (terms, length) = analyzer::term_frequencies(&format!("{}\n{}", input.title.as_deref().unwrap_or(""), c.text));
                let pii = spans
                    .iter()
                    .filter(|s| s.start >= c.anchor.start && s.end <= c.anchor.end)
                    .map(|s| PiiSpan { kind: s.kind, start: s.start - c.anchor.start, end: s.end - c.anchor.start })
                    .collect();
                SegmentChunk {
                    chunk_id: c.chunk_id,
                    doc_id: doc_id.clone(),
                    anchor: c.anchor,
                    title: input.title.clone(),
                    text: c.text,
                    acl_groups: acl_groups.clone(),
                    source: input.source.clone(),
                    updated_at: updated_at.clone(),
                    pii,
                    terms,
                    length,
                }
            })
            .collect();
        let record = DocumentRecord {
            doc_id: doc_id.clone(),
            title: input.title.clone(),
            acl_groups,
            source: input.source.clone(),
            updated_at,
            indexed_at: indexed_at.to_string(),
            chunks: chunks.len(),
            content_hash,
            pii: counts,
            redacted: redact,
        };
        let source = DocumentInput { text, ..input };
        Ok(Prepared::New(Box::new(PreparedDocument { record, chunks, source })))
    }

    /// Embeds texts in batches off the async workers; empty without an
    /// embedder. The gateway uses it too, for labels and rankings.
    pub async fn embed(&self, texts: Vec<String>) -> Result<Vec<Vec<f32>>, KeelError> {
        let Some(embedder) = self.embedder.clone() else { return Ok(vec![]) };
        tokio::task::spawn_blocking(move || {
            let mut out = Vec::with_capacity(texts.len());
            for batch in texts.chunks(EMBED_BATCH) {
                let refs: Vec<&str> = batch.iter().map(String::as_str).collect();
                out.extend(embedder.embed(&refs).map_err(|e| KeelError::Unavailable(format!("embedding: {e}")))?);
            }
            Ok(out)
        })
        .await
        .map_err(|e| KeelError::Internal(format!("embedding task: {e}")))?
    }

    async fn record_change(
        &self,
        tenant: &TenantId,
        doc_id: &str,
        op: &str,
        at: chrono::DateTime<chrono::Utc>,
        acl_groups: &[String],
    ) -> Result<(), KeelError> {
        let at = change_time(at);
        let record = ChangeRecord { doc_id: doc_id.into(), op: op.into(), at: at.clone(), acl_groups: acl_groups.to_vec() };
        self.table
            .put(Write {
                pk: tenant.pk(),
                sk: keys::change(&at, doc_id),
                data: serde_json::to_value(&record)?,
                expires_at: Some(keel_core::time::now_secs() + CHANGE_TTL_SECS),
                condition: Condition::Always,
            })
            .await?;
        Ok(())
    }

    /// `GET /v1/changes?since=<RFC 3339>&limit=N` (or `cursor=` from the last
    /// page): documents put or deleted after that time, oldest first, only
    /// those the caller may see.
    pub(crate) async fn changes(&self, caller: &Caller, query: &HashMap<String, String>) -> Result<ApiResponse, KeelError> {
        let tenant = caller.tenant()?;
        let limit = match query.get("limit") {
            Some(l) => l.parse::<usize>().ok().filter(|l| (1..=MAX_CHANGES).contains(l)).ok_or_else(|| {
                KeelError::BadRequest(format!("limit must be between 1 and {MAX_CHANGES}"))
            })?,
            None => 100,
        };
        let after = match (query.get("cursor"), query.get("since")) {
            (Some(cursor), _) => self.open_cursor(caller, cursor).await?,
            (None, Some(since)) => keys::changes_after(&change_time(parse_time("since", since)?)),
            (None, None) => return Err(KeelError::BadRequest("give since (RFC 3339) or cursor".into())),
        };
        let items = self
            .table
            .query(&tenant.pk(), keys::CHANGES, QueryOptions { limit: Some(limit), after: Some(after), ..Default::default() })
            .await?;
        let cursor = match items.last() {
            Some(last) => Some(self.seal_cursor(caller, &last.sk).await?),
            None => None,
        };
        let changes: Vec<ChangeRecord> = items
            .into_iter()
            .map(|i| serde_json::from_value::<ChangeRecord>(i.data))
            .collect::<Result<Vec<_>, _>>()?
            .into_iter()
            .filter(|c| visible(caller, &c.acl_groups))
            .collect();
        let out: Vec<_> = changes.iter().map(|c| json!({"doc_id": c.doc_id, "op": c.op, "at": c.at})).collect();
        Ok(ApiResponse::ok(&json!({"changes": out, "cursor": cursor})))
    }

    /// A feed position as the caller gets it: a random token naming a record
    /// that holds the position (the last change key read, which names a
    /// document the caller may not see) and whose cursor it is.
    async fn seal_cursor(&self, caller: &Caller, after: &str) -> Result<String, KeelError> {
        let token = new_token("cur");
        let write = Write {
            pk: caller.tenant()?.pk(),
            sk: keys::feed_cursor(&token),
            data: json!({"after": after, "principal": caller.principal}),
            expires_at: Some(keel_core::time::now_secs() + CURSOR_TTL_SECS),
            condition: Condition::NotExists,
        };
        self.table.put(write).await?;
        Ok(token)
    }

    /// The position behind a cursor this feed gave this caller.
    async fn open_cursor(&self, caller: &Caller, token: &str) -> Result<String, KeelError> {
        let refused = || KeelError::BadRequest("cursor is not one this feed returned to you, or it expired; start again with since".into());
        let token = parse_path_id("cursor", token).map_err(|_| refused())?;
        let item = self.table.get(&caller.tenant()?.pk(), &keys::feed_cursor(&token)).await?.ok_or_else(refused)?;
        if item.data["principal"].as_str() != Some(caller.principal.as_str()) {
            return Err(refused());
        }
        item.data["after"].as_str().map(str::to_string).ok_or_else(refused)
    }

    /// Hybrid search over the caller's tenant, only over chunks the caller may see.
    pub async fn search(&self, caller: &Caller, query: &str, k: usize) -> Result<Vec<SearchHit>, KeelError> {
        self.search_tuned(caller, query, k, &self.settings.tuning).await
    }

    /// Search with explicit ranking knobs (for tuning on a train split).
    pub async fn search_tuned(&self, caller: &Caller, query: &str, k: usize, tuning: &Tuning) -> Result<Vec<SearchHit>, KeelError> {
        let tenant = caller.tenant()?;
        let index = self.tenant_index(tenant).await?;
        let query_vector = self.embed(vec![query.to_string()]).await?.pop();
        let terms = analyzer::analyze(query);
        let acl = |groups: &[String]| visible(caller, groups);
        let ranked = index.search(&terms, query_vector.as_deref(), &acl, k, tuning);
        Ok(ranked.iter().map(|r| hit(&index, r)).collect())
    }

    /// Drops every warm index (benchmarks measure cold loads with it).
    pub fn clear_cache(&self) {
        if let Ok(mut c) = self.cache.lock() {
            *c = IndexCache::new(self.settings.cache_chunks);
        }
    }
}

fn hit(index: &TenantIndex, r: &index::Ranked) -> SearchHit {
    let c = index.chunk(r);
    let mut pii: Vec<PiiKind> = c.pii.iter().map(|s| s.kind).collect();
    pii.sort();
    pii.dedup();
    SearchHit {
        doc_id: c.doc_id.clone(),
        chunk_id: c.chunk_id.clone(),
        score: r.score,
        lexical_score: r.lexical,
        similarity: r.similarity,
        text: c.text.clone(),
        title: c.title.clone(),
        anchor: c.anchor.clone(),
        source: c.source.clone(),
        updated_at: c.updated_at.clone(),
        stale: is_stale(&index.manifest.freshness_sla, c.source.as_deref(), &c.updated_at),
        pii,
    }
}

/// The text a chunk is embedded as: its title gives the model context.
fn embedding_text(c: &SegmentChunk) -> String {
    match &c.title {
        Some(t) => format!("{t}. {}", c.text),
        None => c.text.clone(),
    }
}

/// Past its source's SLA (sources without one are never stale).
pub(crate) fn is_stale(slas: &BTreeMap<String, u64>, source: Option<&str>, updated_at: &str) -> bool {
    let Some(sla) = source.and_then(|s| slas.get(s)) else { return false };
    chrono::DateTime::parse_from_rfc3339(updated_at)
        .map(|t| (chrono::Utc::now() - t.with_timezone(&chrono::Utc)).num_seconds() > *sla as i64)
        .unwrap_or(false)
}

enum Prepared {
    Unchanged(ChangeOutcome),
    New(Box<PreparedDocument>),
}

struct PreparedDocument {
    record: DocumentRecord,
    chunks: Vec<SegmentChunk>,
    /// The document as stored in the blob store (redacted when asked).
    source: DocumentInput,
}

/// Whether a caller may see a document with these ACL groups.
pub(crate) fn visible(caller: &Caller, acl_groups: &[String]) -> bool {
    acl_groups.is_empty() || acl_groups.iter().any(|g| caller.groups.contains(g))
}

pub(crate) fn document_not_found(doc_id: &str) -> KeelError {
    KeelError::NotFound(format!("document {doc_id} not found"))
}

