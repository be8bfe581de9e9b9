//! Hybrid search over the caller's visible documents.

use super::*;
use keel_core::rate::Admission;

impl Retrieval {
    /// Hybrid search over the caller's tenant, only over chunks the caller may see.
    pub async fn search(&self, caller: &Caller, query: &str, k: usize) -> Result<Vec<SearchHit>, KeelError> {
        self.search_tuned(caller, query, k, &self.settings.tuning).await
    }

    /// `search` for a request counted against its tenant's rate limit: the
    /// index is read beside the count, and the query is embedded and ranked
    /// (the search's CPU) only once the count admits the request, so a
    /// refused request costs a store read at most.
    pub async fn search_admitted(&self, caller: &Caller, admission: &Admission, query: &str, k: usize) -> Result<Vec<SearchHit>, KeelError> {
        let (admitted, index) = tokio::join!(admission.admit(), self.tenant_index(caller.tenant()?));
        admitted?;
        let index = index?;
        let query_vector = self.embed_query(query).await?;
        Ok(self.rank(caller, &index, query, query_vector.as_deref(), k, &self.settings.tuning))
    }

    /// The query's vector; `None` (keyword search only) where the model
    /// could not load in this container, which `degraded` then says.
    async fn embed_query(&self, query: &str) -> Result<Option<Vec<f32>>, KeelError> {
        match self.embed(vec![query.to_string()]).await {
            Ok(mut vectors) => Ok(vectors.pop()),
            Err(_) if self.degraded().is_some() => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Why searches here are keyword-only though hybrid was configured: the
    /// embedding model failed to load in this container (writes, which
    /// would index without vectors, are refused with 503 instead).
    pub fn degraded(&self) -> Option<String> {
        let why = self.embedder.as_ref()?.load_error()?;
        Some(format!("keyword search only: the embedding model could not load ({why})"))
    }

    /// Search with explicit ranking knobs (for tuning on a train split).
    /// The query is embedded while the index's manifest is read.
    pub async fn search_tuned(&self, caller: &Caller, query: &str, k: usize, tuning: &Tuning) -> Result<Vec<SearchHit>, KeelError> {
        let tenant = caller.tenant()?;
        let (index, query_vector) = tokio::join!(self.tenant_index(tenant), self.embed_query(query));
        let (index, query_vector) = (index?, query_vector?);
        Ok(self.rank(caller, &index, query, query_vector.as_deref(), k, tuning))
    }

    fn rank(&self, caller: &Caller, index: &TenantIndex, query: &str, query_vector: Option<&[f32]>, k: usize, tuning: &Tuning) -> Vec<SearchHit> {
        let terms = analyzer::analyze(query);
        let acl = |groups: &[String]| visible(caller, groups);
        let ranked = index.search(&terms, query_vector, &acl, k, tuning);
        ranked.iter().map(|r| hit(index, r)).collect()
    }

    /// Drops every warm index (benchmarks measure cold loads with it).
    pub fn clear_cache(&self) {
        if let Ok(mut c) = self.cache.lock() {
            *c = IndexCache::new(self.settings.cache_chunks);
        }
    }
}

pub(crate) fn hit(index: &TenantIndex, r: &index::Ranked) -> SearchHit {
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
