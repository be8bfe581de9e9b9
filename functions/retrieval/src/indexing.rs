//! Applying document changes: each put chunked, redacted where the tenant
//! asks, embedded and written as a new index segment; each delete recorded;
//! identical re-puts are no-ops.

use super::*;

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


impl Retrieval {
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
        let redact = self.tenants.require_active(tenant).await?.redact_pii;
        let now = chrono::Utc::now();
        let Batch { mut results, puts, deletes } = self.sort_changes(tenant, changes, redact, &change_time(now)).await;
        if puts.is_empty() && deletes.values().all(Option::is_none) {
            return Ok(results);
        }
        let mut docs: Vec<PreparedDocument> = puts.into_values().collect();
        docs.sort_by(|a, b| a.record.doc_id.cmp(&b.record.doc_id));
        let chunks = self.write_segment(tenant, &mut docs, &deletes).await?;
        let versions = self.write_records(tenant, &docs, &deletes, now).await?;
        for r in results.iter_mut() {
            if let Ok(ChangeOutcome::Indexed { doc_id, version, .. }) = r {
                *version = versions.get(doc_id.as_str()).copied().unwrap_or(*version);
            }
        }
        tracing::info!(tenant = %tenant, documents = docs.len(), deletes = deletes.len(), chunks, "segment written");
        if let Err(e) = self.compact(tenant, self.settings.max_segments).await {
            tracing::warn!(tenant = %tenant, error = %e, "compaction failed; the next write retries it");
        }
        if let Err(e) = self.scrub(tenant).await {
            tracing::warn!(tenant = %tenant, error = %e, "erasing overridden chunks failed; the next write retries it");
        }
        Ok(results)
    }

    /// One result per change, in order; the puts to index and the deletes
    /// to record (the last change of a document in the batch wins).
    async fn sort_changes(&self, tenant: &TenantId, changes: Vec<DocumentChange>, redact: bool, indexed_at: &str) -> Batch {
        let mut batch = Batch { results: Vec::with_capacity(changes.len()), puts: HashMap::new(), deletes: HashMap::new() };
        for change in changes {
            let result = match change {
                DocumentChange::Put { doc_id, document } => match self.prepare(tenant, &doc_id, document, redact, indexed_at).await {
                    Ok(Prepared::Unchanged(outcome)) => Ok(outcome),
                    Ok(Prepared::New(p)) => {
                        batch.deletes.remove(&doc_id);
                        let chunks = p.chunks.len();
                        batch.puts.insert(doc_id.clone(), *p);
                        // The version is known after the write; filled in then.
                        Ok(ChangeOutcome::Indexed { doc_id, version: 0, chunks })
                    }
                    Err(e) => Err(e),
                },
                DocumentChange::Delete { doc_id } => self.documents.get(tenant, &doc_id).await.map(|existing| {
                    let put_in_batch = batch.puts.remove(&doc_id).is_some();
                    let outcome = if existing.is_some() || put_in_batch {
                        ChangeOutcome::Deleted { doc_id: doc_id.clone() }
                    } else {
                        ChangeOutcome::NotFound { doc_id: doc_id.clone() }
                    };
                    batch.deletes.insert(doc_id, existing.map(|(d, _)| d));
                    outcome
                }),
            };
            batch.results.push(result);
        }
        batch
    }

    /// Embeds the documents' chunks and writes them, with the deletes, as one
    /// new segment (after the documents' sources); returns the chunk count.
    async fn write_segment(
        &self,
        tenant: &TenantId,
        docs: &mut [PreparedDocument],
        deletes: &HashMap<String, Option<DocumentRecord>>,
    ) -> Result<usize, KeelError> {
        let mut segment = SegmentData::new();
        let texts: Vec<String> = docs.iter().flat_map(|d| d.chunks.iter().map(embedding_text)).collect();
        let mut vectors = self.embed(texts).await?.into_iter();
        for d in docs.iter_mut() {
            for c in std::mem::take(&mut d.chunks) {
                let v = vectors.next();
                segment.push(c, v.as_deref());
            }
        }
        segment.deleted_docs = deletes.keys().cloned().collect();
        segment.deleted_docs.sort();
        for d in docs.iter() {
            self.blobs.put(&keys::document_source(tenant, &d.record.doc_id), serde_json::to_vec(&d.source)?).await?;
        }
        self.commit_segment(tenant, &segment).await?;
        Ok(segment.chunks.len())
    }

    /// The documents' records and the feed's entries; returns each put's version.
    async fn write_records(
        &self,
        tenant: &TenantId,
        docs: &[PreparedDocument],
        deletes: &HashMap<String, Option<DocumentRecord>>,
        now: chrono::DateTime<chrono::Utc>,
    ) -> Result<HashMap<String, u64>, KeelError> {
        let mut versions: HashMap<String, u64> = HashMap::new();
        for d in docs {
            versions.insert(d.record.doc_id.clone(), self.documents.put(tenant, &d.record).await?);
            self.record_change(tenant, &d.record.doc_id, ChangeOp::Put, now, &d.record.acl_groups).await?;
        }
        for (doc_id, existing) in deletes {
            if let Some(record) = existing {
                self.documents.delete(tenant, doc_id).await?;
                self.blobs.delete(&keys::document_source(tenant, doc_id)).await?;
                self.record_change(tenant, doc_id, ChangeOp::Delete, now, &record.acl_groups).await?;
            }
        }
        Ok(versions)
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
        if let Some((existing, version)) = self.documents.get(tenant, &doc_id).await? {
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
        let meta = ChunkMeta { doc_id: &doc_id, input: &input, acl_groups: &acl_groups, updated_at: &updated_at };
        let chunks = segment_chunks(&meta, &text, &spans);
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
            inbox_key: input.inbox_key.clone(),
        };
        let source = DocumentInput { text, ..input };
        Ok(Prepared::New(Box::new(PreparedDocument { record, chunks, source })))
    }

    /// Embeds texts one at a time off the async workers; empty without an
    /// embedder. The gateway uses it too, for labels and rankings.
    pub async fn embed(&self, texts: Vec<String>) -> Result<Vec<Vec<f32>>, KeelError> {
        let Some(embedder) = self.embedder.clone() else { return Ok(vec![]) };
        self.embedded.fetch_add(texts.len() as u64, std::sync::atomic::Ordering::Relaxed);
        tokio::task::spawn_blocking(move || {
            let embedder = embedder.get().map_err(|e| KeelError::Unavailable(format!("embedding model: {e}")))?;
            let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
            embedder.embed_all(&refs, Feeding::ONE_AT_A_TIME).map_err(|e| KeelError::Unavailable(format!("embedding: {e}")))
        })
        .await
        .map_err(|e| KeelError::Internal(format!("embedding task: {e}")))?
    }
}

/// The text a chunk is embedded as: its title gives the model context.
pub(crate) fn embedding_text(c: &SegmentChunk) -> String {
    match &c.title {
        Some(t) => format!("{t}. {}", c.text),
        None => c.text.clone(),
    }
}

/// A batch of changes, sorted.
struct Batch {
    results: Vec<Result<ChangeOutcome, KeelError>>,
    puts: HashMap<String, PreparedDocument>,
    deletes: HashMap<String, Option<DocumentRecord>>,
}

/// What every chunk of a document carries.
struct ChunkMeta<'a> {
    doc_id: &'a str,
    input: &'a DocumentInput,
    acl_groups: &'a [String],
    updated_at: &'a str,
}

/// A document's (possibly redacted) text as analyzed chunks, each with the
/// PII spans that fall inside it.
fn segment_chunks(meta: &ChunkMeta<'_>, text: &str, spans: &[PiiSpan]) -> Vec<SegmentChunk> {
    let title = meta.input.title.as_deref().unwrap_or("");
    chunk_document(meta.doc_id, text)
        .into_iter()
        .map(|c| {
            let (terms, length) = analyzer::term_frequencies(&format!("{title}\n{}", c.text));
            let pii = spans
                .iter()
                .filter(|s| s.start >= c.anchor.start && s.end <= c.anchor.end)
                .map(|s| PiiSpan { kind: s.kind, start: s.start - c.anchor.start, end: s.end - c.anchor.start })
                .collect();
            SegmentChunk {
                chunk_id: c.chunk_id,
                doc_id: meta.doc_id.to_string(),
                anchor: c.anchor,
                title: meta.input.title.clone(),
                text: c.text,
                acl_groups: meta.acl_groups.to_vec(),
                source: meta.input.source.clone(),
                updated_at: meta.updated_at.to_string(),
                pii,
                terms,
                length,
            }
        })
        .collect()
}
