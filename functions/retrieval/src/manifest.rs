//! The per-tenant index manifest (one table item, versioned) and the warm
//! function's LRU cache of tenant indexes.
//!
//! The manifest lists the tenant's segments in generation order and the
//! freshness SLA of each source. Every change to it (a new segment, a
//! compaction, an SLA) is one conditional write, so concurrent writers never
//! lose each other's segments, and a warm function that sees a new version
//! reloads only the segments it does not hold yet.

use crate::index::TenantIndex;
use keel_core::ids::TenantId;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

/// Sort key of the manifest item.

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct IndexManifest {
    /// Oldest generation first.
    pub segments: Vec<SegmentRef>,
    pub next_generation: u64,
    /// Freshness SLA per source name, in seconds.
    #[serde(default)]
    pub freshness_sla: BTreeMap<String, u64>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct SegmentRef {
    pub id: String,
    pub generation: u64,
    pub chunks: usize,
}

impl IndexManifest {
    pub fn segment_key(tenant: &TenantId, id: &str) -> String {
        keel_core::keys::index_segment(tenant, id)
    }

    /// The run of adjacent segments to merge when there are more than
    /// `max_segments`: of all runs of half that many, the one with the fewest
    /// chunks. Small segments merge with each other and big ones are left
    /// alone, so each chunk is rewritten O(log n) times. Runs are contiguous
    /// in generation order, which keeps "the newest segment decides" true.
    pub fn compaction_run(&self, max_segments: usize) -> Option<std::ops::Range<usize>> {
        let n = self.segments.len();
        if n <= max_segments.max(2) {
            return None;
        }
        let width = (max_segments / 2).clamp(2, n);
        (0..=n - width)
            .min_by_key(|&start| self.segments[start..start + width].iter().map(|s| s.chunks).sum::<usize>())
            .map(|start| start..start + width)
    }
}

/// Warm tenant indexes, bounded by the chunks they hold; the least recently
/// used tenant goes first. Each is held for one incarnation of its tenant:
/// asked for another (the id deleted and created again), it is dropped,
/// never served, whatever the manifests' versions say.
pub struct IndexCache {
    capacity_chunks: usize,
    tick: u64,
    entries: HashMap<TenantId, Entry>,
}

struct Entry {
    incarnation: String,
    index: Arc<TenantIndex>,
    used: u64,
}

impl IndexCache {
    pub fn new(capacity_chunks: usize) -> Self {
        Self { capacity_chunks, tick: 0, entries: HashMap::new() }
    }

    pub fn get(&mut self, tenant: &TenantId, incarnation: &str) -> Option<Arc<TenantIndex>> {
        self.tick += 1;
        if self.entries.get(tenant).is_some_and(|e| e.incarnation != incarnation) {
            self.entries.remove(tenant);
        }
        let tick = self.tick;
        self.entries.get_mut(tenant).map(|e| {
            e.used = tick;
            e.index.clone()
        })
    }

    pub fn insert(&mut self, tenant: TenantId, incarnation: &str, index: Arc<TenantIndex>) {
        self.tick += 1;
        self.entries.insert(tenant.clone(), Entry { incarnation: incarnation.to_string(), index, used: self.tick });
        while self.resident_chunks() > self.capacity_chunks && self.entries.len() > 1 {
            let oldest = self.entries.iter().filter(|(t, _)| **t != tenant).min_by_key(|(_, e)| e.used).map(|(t, _)| t.clone());
            match oldest {
                Some(t) => {
                    self.entries.remove(&t);
                }
                None => break,
            }
        }
    }

    pub fn resident_chunks(&self) -> usize {
        self.entries.values().map(|e| e.index.resident_chunks()).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest(sizes: &[usize]) -> IndexManifest {
        IndexManifest {
            segments: sizes
                .iter()
                .enumerate()
                .map(|(i, &chunks)| SegmentRef { id: format!("s{i}"), generation: i as u64, chunks })
                .collect(),
            next_generation: sizes.len() as u64,
            freshness_sla: BTreeMap::new(),
        }
    }

    #[test]
    fn compaction_merges_the_small_newest_run() {
        assert_eq!(manifest(&[100, 1, 1]).compaction_run(8), None);
        assert_eq!(manifest(&[100, 40, 20, 10, 5, 3, 1, 1, 1]).compaction_run(8), Some(5..9));
        assert_eq!(manifest(&[1; 9]).compaction_run(8), Some(0..4));
        // A big segment is left alone, wherever it is.
        assert_eq!(manifest(&[30, 30, 30, 30, 30, 30, 30, 2000, 30]).compaction_run(8), Some(0..4));
        assert_eq!(manifest(&[2000, 120, 120, 30, 30, 120, 30, 30, 30]).compaction_run(8), Some(3..7));
    }

    #[test]
    fn cache_evicts_the_least_recently_used_tenant() {
        let index = |n: usize| {
            let mut data = crate::segment::SegmentData::new();
            for i in 0..n {
                data.push(crate::segment::tests::chunk(&format!("d{i}")), None);
            }
            Arc::new(TenantIndex::new(1, IndexManifest::default(), vec![Arc::new(crate::segment::LoadedSegment::new("s".into(), data))]))
        };
        let (a, b, c) = (TenantId::parse("ta").unwrap(), TenantId::parse("tb").unwrap(), TenantId::parse("tc").unwrap());
        let mut cache = IndexCache::new(10);
        cache.insert(a.clone(), "i1", index(4));
        cache.insert(b.clone(), "i1", index(4));
        assert!(cache.get(&a, "i1").is_some());
        cache.insert(c.clone(), "i1", index(4));
        assert!(cache.get(&b, "i1").is_none(), "b was least recently used");
        assert!(cache.get(&a, "i1").is_some() && cache.get(&c, "i1").is_some());
        assert_eq!(cache.resident_chunks(), 8);
    }

    #[test]
    fn an_index_is_never_served_to_another_incarnation_of_its_tenant() {
        let data = crate::segment::SegmentData::new();
        let index = Arc::new(TenantIndex::new(1, IndexManifest::default(), vec![Arc::new(crate::segment::LoadedSegment::new("s".into(), data))]));
        let td = TenantId::parse("td").unwrap();
        let mut cache = IndexCache::new(10);
        cache.insert(td.clone(), "old", index);
        assert!(cache.get(&td, "new").is_none());
        assert!(cache.get(&td, "old").is_none(), "the old incarnation's index was dropped, not kept beside");
    }
}
