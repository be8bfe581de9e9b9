//! Segment storage: writing a segment and committing it to the manifest,
//! loading a tenant's index (reusing the segments a warm function already
//! holds), and size-tiered compaction.

use crate::index::TenantIndex;
use crate::manifest::{IndexManifest, SegmentRef};
use crate::segment::{decisive, LoadedSegment, SegmentData};
use crate::Retrieval;
use keel_core::ids::{new_id, TenantId};
use keel_core::KeelError;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;

impl Retrieval {
    /// Writes a segment to the blob store and appends it to the manifest.
    pub(crate) async fn commit_segment(&self, tenant: &TenantId, data: &SegmentData) -> Result<(), KeelError> {
        let id = new_id("seg");
        self.blobs.put(&IndexManifest::segment_key(tenant, &id), data.to_bytes()?).await?;
        let chunks = data.chunks.len();
        self.manifests.update(tenant, |m| {
            m.segments.push(SegmentRef { id: id.clone(), generation: m.next_generation, chunks });
            m.next_generation += 1;
            true
        })
        .await?;
        Ok(())
    }

    /// Every segment of a tenant's index, oldest first (backups, migrations,
    /// benchmarks).
    pub async fn export_segments(&self, tenant: &TenantId) -> Result<Vec<SegmentData>, KeelError> {
        let index = self.tenant_index(tenant).await?;
        Ok(index.segments.iter().map(|s| s.data.clone()).collect())
    }

    /// Adds a segment written elsewhere (see `export_segments`) to a tenant's index.
    pub async fn import_segment(&self, tenant: &TenantId, data: &SegmentData) -> Result<(), KeelError> {
        self.commit_segment(tenant, data).await
    }

    /// The tenant's index as of the manifest's current version: from the
    /// cache when it is current, otherwise assembled from the segments the
    /// cached index already holds plus the new ones from the blob store.
    pub(crate) async fn tenant_index(&self, tenant: &TenantId) -> Result<Arc<TenantIndex>, KeelError> {
        // A compaction may delete a segment between reading the manifest and
        // loading it: read the manifest again then.
        for _ in 0..3 {
            let (read, incarnation) = tokio::join!(self.manifests.read(tenant), self.tenants.incarnation(tenant));
            let ((manifest, version), incarnation) = (read?, incarnation?.unwrap_or_default());
            let version = version.unwrap_or(0);
            let cached = self.cache.lock().ok().and_then(|mut c| c.get(tenant, &incarnation));
            if let Some(index) = cached.as_ref().filter(|i| i.version == version) {
                return Ok(index.clone());
            }
            match self.load_segments(tenant, &manifest.segments, cached.as_deref()).await {
                Ok(segments) => {
                    let index = Arc::new(TenantIndex::new(version, manifest, segments));
                    if let Ok(mut c) = self.cache.lock() {
                        c.insert(tenant.clone(), &incarnation, index.clone());
                    }
                    return Ok(index);
                }
                Err(KeelError::NotFound(missing)) => {
                    tracing::info!(tenant = %tenant, missing, "segment gone (compacted); reloading the manifest");
                }
                Err(e) => return Err(e),
            }
        }
        Err(KeelError::Unavailable("the index is being compacted; retry".into()))
    }

    /// The segments `refs` names: those `held` already has are reused, the
    /// others are loaded from the blob store.
    async fn load_segments(
        &self,
        tenant: &TenantId,
        refs: &[SegmentRef],
        held: Option<&TenantIndex>,
    ) -> Result<Vec<Arc<LoadedSegment>>, KeelError> {
        let held: HashMap<&str, &Arc<LoadedSegment>> =
            held.iter().flat_map(|i| i.segments.iter().map(|s| (s.id.as_str(), s))).collect();
        let mut out = Vec::with_capacity(refs.len());
        for r in refs {
            match held.get(r.id.as_str()) {
                Some(s) => out.push(Arc::clone(s)),
                None => out.push(Arc::new(self.load_segment(tenant, &r.id).await?)),
            }
        }
        Ok(out)
    }

    async fn load_segment(&self, tenant: &TenantId, id: &str) -> Result<LoadedSegment, KeelError> {
        let bytes = self
            .blobs
            .get(&IndexManifest::segment_key(tenant, id))
            .await?
            .ok_or_else(|| KeelError::NotFound(id.to_string()))?;
        let data = tokio::task::spawn_blocking(move || SegmentData::from_bytes(&bytes))
            .await
            .map_err(|e| KeelError::Internal(format!("segment load task: {e}")))??;
        Ok(LoadedSegment::new(id.to_string(), data))
    }

    /// Merges the smallest run of adjacent segments when there are too many
    /// (`IndexManifest::compaction_run`). Returns
    /// whether it merged. A concurrent compaction of the same run wins; this
    /// one then discards its output.
    pub async fn compact(&self, tenant: &TenantId, max_segments: usize) -> Result<bool, KeelError> {
        let (manifest, _) = self.manifests.read(tenant).await?;
        let Some(run) = manifest.compaction_run(max_segments) else { return Ok(false) };
        let refs: Vec<SegmentRef> = manifest.segments[run.clone()].to_vec();
        let from_oldest = run.start == 0;
        let index = self.tenant_index(tenant).await?;
        let segments = self.load_segments(tenant, &refs, Some(&index)).await?;
        let merged = merge(&segments, from_oldest);
        let id = new_id("seg");
        self.blobs.put(&IndexManifest::segment_key(tenant, &id), merged.to_bytes()?).await?;
        let generation = refs.last().map_or(0, |r| r.generation);
        let chunks = merged.chunks.len();
        let committed = self
            .manifests.update(tenant, |m| {
                // Only if the run is still there, unchanged and contiguous.
                let Some(start) = m.segments.iter().position(|s| refs.first().is_some_and(|f| f.id == s.id)) else { return false };
                if m.segments.get(start..start + refs.len()) != Some(refs.as_slice()) {
                    return false;
                }
                m.segments.splice(start..start + refs.len(), [SegmentRef { id: id.clone(), generation, chunks }]);
                true
            })
            .await?;
        let obsolete: Vec<&str> = if committed.is_some() { refs.iter().map(|r| r.id.as_str()).collect() } else { vec![id.as_str()] };
        for old in obsolete {
            self.blobs.delete(&IndexManifest::segment_key(tenant, old)).await?;
        }
        tracing::info!(tenant = %tenant, merged = refs.len(), chunks, committed = committed.is_some(), "compaction");
        Ok(committed.is_some())
    }
}

/// One segment equal to `segments` (oldest first): each document as the
/// newest of them has it. Deletes are kept unless the run starts at the
/// oldest segment, where nothing older can hold the document.
fn merge(segments: &[Arc<LoadedSegment>], from_oldest: bool) -> SegmentData {
    let mut kept: Vec<(usize, usize)> = Vec::new();
    let mut deletes: Vec<String> = Vec::new();
    for (s, (chunks, deleted)) in decisive(segments).into_iter().enumerate() {
        kept.extend(chunks.iter().enumerate().filter(|(_, keep)| **keep).map(|(c, _)| (s, c)));
        if !from_oldest {
            let docs = &segments[s].data.deleted_docs;
            deletes.extend(docs.iter().zip(&deleted).filter(|(_, keep)| **keep).map(|(d, _)| d.clone()));
        }
    }
    kept.sort_unstable();
    // Vectors only when every merged segment has them at one width (an
    // embedder added or changed later leaves older segments without).
    let widths: HashSet<u32> = segments.iter().filter(|s| !s.is_empty()).map(|s| s.data.dimensions).collect();
    let with_vectors = widths.len() == 1 && !widths.contains(&0);
    let mut out = SegmentData::new();
    out.deleted_docs = deletes;
    for (s, c) in kept {
        let data = &segments[s].data;
        let vector = data.vector(c).filter(|_| with_vectors).map(|v| (v, data.scales[c]));
        out.push_quantized(data.chunks[c].clone(), vector);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::segment::tests::chunk;

    fn segment(id: &str, docs: &[&str], deletes: &[&str]) -> Arc<LoadedSegment> {
        let mut data = SegmentData::new();
        for d in docs {
            data.push(chunk(d), Some(&[1.0, 0.0]));
        }
        data.deleted_docs = deletes.iter().map(|d| d.to_string()).collect();
        Arc::new(LoadedSegment::new(id.into(), data))
    }

    #[test]
    fn merge_keeps_the_newest_version_and_needed_deletes() {
        let segs = [segment("a", &["x", "y"], &[]), segment("b", &["y"], &["z"]), segment("c", &[], &["x"])];
        let merged = merge(&segs, false);
        let docs: Vec<&str> = merged.chunks.iter().map(|c| c.doc_id.as_str()).collect();
        assert_eq!(docs, ["y"]);
        assert_eq!(merged.vectors.len(), 2);
        let mut deletes = merged.deleted_docs.clone();
        deletes.sort();
        assert_eq!(deletes, ["x", "z"]);
        assert!(merge(&segs, true).deleted_docs.is_empty());
    }

    #[test]
    fn liveness_follows_the_newest_segment() {
        let segs = vec![segment("a", &["x", "y"], &[]), segment("b", &["y"], &["x"])];
        let masks = decisive(&segs);
        assert_eq!(masks[0], (vec![false, false], vec![]));
        assert_eq!(masks[1], (vec![true], vec![true]));
        let index = TenantIndex::new(1, IndexManifest::default(), segs);
        // By vector alone: only live chunks are scored at all.
        let hits = index.search(&[], Some(&[1.0, 0.0]), &|_| true, 10, &crate::Tuning::default());
        let docs: Vec<&str> = hits.iter().map(|r| index.chunk(r).doc_id.as_str()).collect();
        assert_eq!(docs, ["y"]);
    }
}
