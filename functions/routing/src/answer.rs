//! Evidence sufficiency and extractive (T1, in-function) answers.

use keel_core::text::{content_terms, sentence_spans, terms};
use keel_retrieval::SearchHit;
use std::collections::HashSet;

/// Sentences an extractive answer quotes at most.
const MAX_SENTENCES: usize = 3;

pub struct Answer {
    pub text: String,
    /// Indexes into the evidence list, in citation order ([1] is `cited[0]`).
    pub cited: Vec<usize>,
}

/// Share of the question's content terms found in the top evidence (0..=1).
pub fn evidence_coverage(question: &str, evidence: &[SearchHit]) -> f32 {
    let wanted = content_terms(question);
    if wanted.is_empty() {
        return 0.0;
    }
    let present: HashSet<String> = evidence.iter().take(3).flat_map(|h| terms(&h.text)).collect();
    wanted.iter().filter(|t| present.contains(*t)).count() as f32 / wanted.len() as f32
}

/// The evidence sentences that share the most terms with the question, each
/// followed by its citation marker `[n]`.
pub fn extractive_answer(question: &str, evidence: &[SearchHit]) -> Answer {
    let wanted: HashSet<String> = content_terms(question).into_iter().collect();
    // A sentence must share a third of the question's terms (at least one) to be quoted.
    let min_overlap = (wanted.len() / 3).max(1);
    let mut scored = Vec::new();
    for (ei, hit) in evidence.iter().enumerate() {
        for (pos, (s, e)) in sentence_spans(&hit.text).into_iter().enumerate() {
            let sentence = &hit.text[s..e];
            let overlap = content_terms(sentence).iter().filter(|t| wanted.contains(*t)).count();
            if overlap >= min_overlap {
                // Better overlap first, then better-ranked evidence, then reading order.
                scored.push((std::cmp::Reverse(overlap), ei, pos, sentence.to_string()));
            }
        }
    }
    scored.sort();
    scored.truncate(MAX_SENTENCES);
    let mut cited: Vec<usize> = Vec::new();
    let mut parts = Vec::new();
    for (_, ei, _, sentence) in scored {
        let n = match cited.iter().position(|c| *c == ei) {
            Some(p) => p + 1,
            None => {
                cited.push(ei);
                cited.len()
            }
        };
        parts.push(format!("{sentence} [{n}]"));
    }
    Answer { text: parts.join(" "), cited }
}

#[cfg(test)]
mod tests {
    use super::*;
    use keel_core::chunking::Anchor;

    fn hit(doc: &str, text: &str) -> SearchHit {
        SearchHit {
            doc_id: doc.into(),
            chunk_id: format!("{doc}#0"),
            score: 1.0,
            lexical_score: 1.0,
            similarity: None,
            text: text.into(),
            title: None,
            anchor: Anchor { doc_id: doc.into(), chunk: 0, start: 0, end: text.len() },
            source: None,
            updated_at: "2026-01-01T00:00:00Z".into(),
            stale: false,
            pii: vec![],
        }
    }

    #[test]
    fn every_sentence_of_an_extractive_answer_is_cited() {
        let ev = vec![
            hit("refunds", "Refunds are paid within 5 days. The office has plants."),
            hit("policy", "A refund needs a receipt. Lunch is at noon."),
        ];
        let a = extractive_answer("How are refunds paid, and is a receipt needed for a refund?", &ev);
        assert_eq!(a.cited.len(), 2);
        for sentence in a.text.split_inclusive(']') {
            assert!(sentence.trim_end().ends_with(']'), "uncited: {sentence}");
        }
        assert!(!a.text.contains("plants") && !a.text.contains("Lunch"));
    }

    #[test]
    fn coverage() {
        let ev = vec![hit("a", "Refunds are paid within 5 days.")];
        assert!(evidence_coverage("refunds paid", &ev) > 0.99);
        assert!(evidence_coverage("quantum chromodynamics lattice", &ev) < 0.01);
    }
}
