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

/// The dot product of two quantized vectors, compiled for the widest SIMD
/// this CPU has (AVX2 on x86_64, checked at run time; NEON on aarch64), since
/// a search computes one per chunk. `pulp` does the dispatch without unsafe code here.
pub fn dot_i8(a: &[i8], b: &[i8]) -> i32 {
    pulp::Arch::new().dispatch(|| dot_i8_portable(a, b))
}

/// Sixteen lanes at a time, each product and its sum widened first, a shape
/// the auto-vectorizer turns into multiply-add instructions.
#[inline(always)]
fn dot_i8_portable(a: &[i8], b: &[i8]) -> i32 {
    let mut lanes = [0i32; 16];
    let (a16, b16) = (a.chunks_exact(16), b.chunks_exact(16));
    let tail: i32 = a16.remainder().iter().zip(b16.remainder()).map(|(&x, &y)| i32::from(x) * i32::from(y)).sum();
    for (x, y) in a16.zip(b16) {
        for i in 0..16 {
            lanes[i] += i32::from(i16::from(x[i]) * i16::from(y[i]));
        }
    }
    lanes.iter().sum::<i32>() + tail
}

/// A vector's 1-bit sketch: whether each component is positive, 64 to a
/// word. Vectors that point alike share most signs, so the bits that differ
/// (`hamming`) rank them roughly at an eighth of the int8 vectors' bytes.
pub fn signs(v: &[i8]) -> Vec<u64> {
    v.chunks(64).map(|part| part.iter().enumerate().fold(0u64, |w, (i, &x)| if x > 0 { w | 1 << i } else { w })).collect()
}

/// How many signs two sketches disagree on.
pub fn hamming(a: &[u64], b: &[u64]) -> u32 {
    a.iter().zip(b).map(|(x, y)| (x ^ y).count_ones()).sum()
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
    /// Each vector's signs, `words` to a vector (`signs`).
    sketches: Vec<u64>,
    words: usize,
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
        let words = (data.dimensions as usize).div_ceil(64);
        let sketches = if words == 0 { vec![] } else { data.vectors.chunks_exact(data.dimensions as usize).flat_map(signs).collect() };
        Self { id, data, postings, total_length, sketches, words }
    }

    /// Chunk `i`'s vector as signs, 64 to a word (empty without vectors).
    pub fn sketch(&self, i: usize) -> &[u64] {
        self.sketches.get(i * self.words..(i + 1) * self.words).unwrap_or(&[])
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
    fn the_vectorized_dot_equals_the_plain_sum_at_any_length_and_the_extremes() {
        for len in [0usize, 1, 15, 16, 17, 384, 385] {
            let a: Vec<i8> = (0..len).map(|i| if i % 5 == 0 { -128 } else { (i as i32 * 37 % 255 - 127) as i8 }).collect();
            let b: Vec<i8> = (0..len).map(|i| if i % 7 == 0 { -128 } else { (i as i32 * 91 % 255 - 127) as i8 }).collect();
            let plain: i32 = a.iter().zip(&b).map(|(&x, &y)| i32::from(x) * i32::from(y)).sum();
            assert_eq!(dot_i8(&a, &b), plain, "length {len}");
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
