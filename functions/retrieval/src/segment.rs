//! Immutable index segments. A segment holds the chunks of the documents one
//! ingest (or one compaction) wrote: text, anchor, ACL, freshness fields, PII
//! tags, BM25 term frequencies and an int8 embedding per chunk, plus the ids of
//! documents it deletes. It is written once to the blob store (postcard
//! bytes) and loaded into memory with its postings built.
//!
//! Liveness across segments: for each document, the segment with the highest
//! generation that mentions it (chunks or a delete) decides.

use crate::pii::PiiSpan;
use keel_core::chunking::Anchor;
use keel_core::KeelError;
use serde::{Deserialize, Serialize};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;

/// Bumped when the byte layout changes; older segments are refused clearly.
const FORMAT: u32 = 1;

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct SegmentChunk {
    pub chunk_id: String,
    pub doc_id: String,
    pub anchor: Anchor,
    pub title: Option<String>,
    pub text: String,
    pub acl_groups: Vec<String>,
    pub source: Option<String>,
    pub updated_at: String,
    pub pii: Vec<PiiSpan>,
    /// BM25 term frequencies (title and text) and the length in terms.
    pub terms: Vec<(String, u16)>,
    pub length: u32,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct SegmentData {
    pub format: u32,
    pub chunks: Vec<SegmentChunk>,
    /// Documents this segment removes (explicit deletes).
    pub deleted_docs: Vec<String>,
    /// Embedding width; 0 when the segment was written without an embedder.
    pub dimensions: u32,
    /// `chunks.len() * dimensions` int8 components and one scale per chunk.
    pub vectors: Vec<i8>,
    pub scales: Vec<f32>,
}

impl SegmentData {
    pub fn new() -> Self {
        Self { format: FORMAT, ..Default::default() }
    }

    pub fn push(&mut self, chunk: SegmentChunk, vector: Option<&[f32]>) {
        let quantized = vector.map(quantize);
        self.push_quantized(chunk, quantized.as_ref().map(|(q, scale)| (q.as_slice(), *scale)));
    }

    /// Adds a chunk whose vector is already quantized (compaction).
    pub fn push_quantized(&mut self, chunk: SegmentChunk, vector: Option<(&[i8], f32)>) {
        if let Some((v, scale)) = vector {
            self.dimensions = v.len() as u32;
            self.vectors.extend_from_slice(v);
            self.scales.push(scale);
        }
        self.chunks.push(chunk);
    }

    pub fn vector(&self, i: usize) -> Option<&[i8]> {
        let d = self.dimensions as usize;
        (d > 0).then(|| &self.vectors[i * d..(i + 1) * d])
    }

    pub fn to_bytes(&self) -> Result<Vec<u8>, KeelError> {
        postcard::to_stdvec(self).map_err(|e| KeelError::Internal(format!("segment encoding: {e}")))
    }

    pub fn from_bytes(bytes: &[u8]) -> Result<Self, KeelError> {
        let data: Self = postcard::from_bytes(bytes).map_err(|e| KeelError::Internal(format!("segment decoding: {e}")))?;
        if data.format != FORMAT {
            return Err(KeelError::Internal(format!("segment format {} is not {FORMAT}", data.format)));
        }
        let d = data.dimensions as usize;
        if data.vectors.len() != data.chunks.len() * d || (d > 0 && data.scales.len() != data.chunks.len()) {
            return Err(KeelError::Internal("segment vectors do not match its chunks".into()));
        }
        Ok(data)
    }
}

/// Symmetric int8 quantization: components scaled so the largest is ±127.
pub fn quantize(v: &[f32]) -> (Vec<i8>, f32) {
    let max = v.iter().fold(0f32, |m, x| m.max(x.abs()));
    if max == 0.0 {
        return (vec![0; v.len()], 0.0);
    }
    let scale = max / 127.0;
    (v.iter().map(|x| (x / scale).round().clamp(-127.0, 127.0) as i8).collect(), scale)
}

pub fn dot_i8(a: &[i8], b: &[i8]) -> i32 {
    a.iter().zip(b).map(|(&x, &y)| i32::from(x) * i32::from(y)).sum()
}

/// Which chunks and deletes of `segments` (oldest first) decide their
/// document: for each document, the newest segment that mentions it. Returns
/// per segment a mask over its chunks and one over its deleted documents (a
/// delete beside the same document's chunks never decides: the chunks do).
pub fn decisive(segments: &[Arc<LoadedSegment>]) -> Vec<(Vec<bool>, Vec<bool>)> {
    let mut decided: HashSet<&str> = HashSet::new();
    let mut out = vec![(Vec::new(), Vec::new()); segments.len()];
    for (s, seg) in segments.iter().enumerate().rev() {
        let own: HashSet<&str> = seg.data.chunks.iter().map(|c| c.doc_id.as_str()).collect();
        let chunks = seg.data.chunks.iter().map(|c| !decided.contains(c.doc_id.as_str())).collect();
        let deletes = seg.data.deleted_docs.iter().map(|d| !decided.contains(d.as_str()) && !own.contains(d.as_str())).collect();
        decided.extend(own);
        decided.extend(seg.data.deleted_docs.iter().map(String::as_str));
        out[s] = (chunks, deletes);
    }
    out
}

/// A segment in memory, with its inverted index.
pub struct LoadedSegment {
    pub id: String,
    pub data: SegmentData,
    /// term → (chunk position, term frequency)
    pub postings: HashMap<String, Vec<(u32, u16)>>,
    pub total_length: u64,
}

impl LoadedSegment {
    pub fn new(id: String, data: SegmentData) -> Self {
        let mut postings: HashMap<String, Vec<(u32, u16)>> = HashMap::new();
        let mut total_length = 0;
        for (i, c) in data.chunks.iter().enumerate() {
            total_length += u64::from(c.length);
            for (term, tf) in &c.terms {
                postings.entry(term.clone()).or_default().push((i as u32, *tf));
            }
        }
        Self { id, data, postings, total_length }
    }

    pub fn len(&self) -> usize {
        self.data.chunks.len()
    }

    pub fn is_empty(&self) -> bool {
        self.data.chunks.is_empty()
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn chunk(doc_id: &str) -> SegmentChunk {
        SegmentChunk {
            chunk_id: format!("{doc_id}#0"),
            doc_id: doc_id.into(),
            anchor: Anchor { doc_id: doc_id.into(), chunk: 0, start: 0, end: 5 },
            title: None,
            text: "hello".into(),
            acl_groups: vec![],
            source: None,
            updated_at: "2026-01-01T00:00:00Z".into(),
            pii: vec![],
            terms: vec![("hello".into(), 1)],
            length: 1,
        }
    }

    #[test]
    fn quantized_dot_tracks_the_float_dot() {
        let a = [0.6f32, -0.8, 0.0];
        let b = [0.6f32, 0.8, 0.0];
        let (qa, sa) = quantize(&a);
        let (qb, sb) = quantize(&b);
        let approx = dot_i8(&qa, &qb) as f32 * sa * sb;
        assert!((approx - (0.36 - 0.64)).abs() < 0.01, "{approx}");
    }

    #[test]
    fn bytes_round_trip_and_bad_bytes_are_refused() {
        let mut s = SegmentData::new();
        s.deleted_docs.push("gone".into());
        s.push(chunk("d"), Some(&[1.0, 0.0]));
        let back = SegmentData::from_bytes(&s.to_bytes().unwrap()).unwrap();
        assert_eq!(back, s);
        assert!(SegmentData::from_bytes(b"not a segment").is_err());
    }
}
