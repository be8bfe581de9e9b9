//! Erasure: a replaced or deleted document's old chunks (its text among
//! them) leave the index at the next compaction, not only when a size-tiered
//! merge happens to take the segment that holds them. Each segment holding
//! chunks that a newer segment overrides is rewritten without them (or
//! dropped when nothing is left); the old segment's blob is deleted.

use crate::manifest::{IndexManifest, SegmentRef};
use crate::segment::{decisive, LoadedSegment, SegmentData};
use crate::Retrieval;
use keel_core::ids::{new_id, TenantId};
use keel_core::KeelError;

impl Retrieval {
    /// Rewrites every segment that holds overridden chunks; returns how many.
    pub(crate) async fn scrub(&self, tenant: &TenantId) -> Result<usize, KeelError> {
        let index = self.tenant_index(tenant).await?;
        let verdicts = decisive(&index.segments);
        let mut scrubbed = 0;
        for (position, (segment, (live, _))) in index.segments.iter().zip(&verdicts).enumerate() {
            if live.iter().all(|keep| *keep) {
                continue;
            }
            let kept = without_overridden(segment, live, position == 0);
            if self.replace_segment(tenant, &segment.id, kept).await? {
                scrubbed += 1;
            }
        }
        if scrubbed > 0 {
            tracing::info!(tenant = %tenant, segments = scrubbed, "overridden chunks erased");
        }
        Ok(scrubbed)
    }

    /// Puts `data` in the place of segment `old` (or removes `old` when
    /// `data` holds nothing), if `old` is still in the manifest.
    async fn replace_segment(&self, tenant: &TenantId, old: &str, data: SegmentData) -> Result<bool, KeelError> {
        let empty = data.chunks.is_empty() && data.deleted_docs.is_empty();
        let id = new_id("seg");
        if !empty {
            self.blobs.put(&IndexManifest::segment_key(tenant, &id), data.to_bytes()?).await?;
        }
        let chunks = data.chunks.len();
        let committed = self
            .manifests
            .update(tenant, |m| {
                let Some(at) = m.segments.iter().position(|s| s.id == old) else { return false };
                if empty {
                    m.segments.remove(at);
                } else {
                    m.segments[at] = SegmentRef { id: id.clone(), generation: m.segments[at].generation, chunks };
                }
                true
            })
            .await?
            .is_some();
        let obsolete = if committed { old.to_string() } else { id };
        if committed || !empty {
            self.blobs.delete(&IndexManifest::segment_key(tenant, &obsolete)).await?;
        }
        Ok(committed)
    }
}

/// The segment without the chunks `live` marks overridden. Its deletes stay
/// (an older segment may still name the document) unless it is the oldest.
fn without_overridden(segment: &LoadedSegment, live: &[bool], oldest: bool) -> SegmentData {
    let data = &segment.data;
    let mut out = SegmentData::new();
    if !oldest {
        out.deleted_docs = data.deleted_docs.clone();
    }
    for (i, chunk) in data.chunks.iter().enumerate().filter(|(i, _)| live[*i]) {
        out.push_quantized(chunk.clone(), data.vector(i).map(|v| (v, data.scales[i])));
    }
    out
}
