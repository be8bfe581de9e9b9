//! Splits a document into chunks on sentence boundaries. Each chunk carries
//! an anchor (document, chunk index, character offsets into the text) so a
//! citation points at the exact passage.

use crate::text::sentence_spans;
use serde::{Deserialize, Serialize};

/// Chunks aim for this many characters and never exceed `MAX_CHUNK_CHARS`.
pub const TARGET_CHUNK_CHARS: usize = 600;
pub const MAX_CHUNK_CHARS: usize = 1200;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Anchor {
    pub doc_id: String,
    pub chunk: usize,
    /// Character (not byte) offsets into the document text, end exclusive.
    pub start: usize,
    pub end: usize,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Chunk {
    pub chunk_id: String,
    pub text: String,
    pub anchor: Anchor,
}

pub fn chunk_id(doc_id: &str, index: usize) -> String {
    format!("{doc_id}#{index}")
}

pub fn chunk_document(doc_id: &str, text: &str) -> Vec<Chunk> {
    // Byte spans of pieces no longer than MAX_CHUNK_CHARS.
    let mut pieces = Vec::new();
    for (s, e) in sentence_spans(text) {
        let mut start = s;
        while text[start..e].chars().count() > MAX_CHUNK_CHARS {
            let cut = text[start..e]
                .char_indices()
                .nth(MAX_CHUNK_CHARS)
                .map_or(e, |(i, _)| start + i);
            pieces.push((start, cut));
            start = cut;
        }
        pieces.push((start, e));
    }
    // Greedily join pieces up to the target size.
    let mut spans: Vec<(usize, usize)> = Vec::new();
    for (s, e) in pieces {
        match spans.last_mut() {
            Some(last) if text[last.0..e].chars().count() <= TARGET_CHUNK_CHARS => last.1 = e,
            _ => spans.push((s, e)),
        }
    }
    spans
        .into_iter()
        .enumerate()
        .map(|(i, (s, e))| Chunk {
            chunk_id: chunk_id(doc_id, i),
            text: text[s..e].to_string(),
            anchor: Anchor {
                doc_id: doc_id.to_string(),
                chunk: i,
                start: text[..s].chars().count(),
                end: text[..e].chars().count(),
            },
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn anchors_point_at_the_chunk_text() {
        let text = "Ünïcode first sentence. ".repeat(80) + &"x".repeat(3000);
        let chunks = chunk_document("d1", &text);
        assert!(chunks.len() > 3);
        let chars: Vec<char> = text.chars().collect();
        for (i, c) in chunks.iter().enumerate() {
            assert_eq!(c.anchor.chunk, i);
            assert_eq!(c.chunk_id, format!("d1#{i}"));
            assert!(c.text.chars().count() <= MAX_CHUNK_CHARS);
            let from_anchor: String = chars[c.anchor.start..c.anchor.end].iter().collect();
            assert_eq!(from_anchor, c.text);
        }
        assert!(chunk_document("d", "   ").is_empty());
    }
}
