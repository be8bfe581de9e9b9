//! The lexical analyzer for BM25: lower-cased alphanumeric words, English
//! stopwords dropped, Snowball (Porter 2) stems. Index and query use the same
//! function, so a term matches whatever inflection either side used.

use rust_stemmers::{Algorithm, Stemmer};
use std::collections::HashMap;
use std::sync::OnceLock;

/// Lucene's English stopword list plus a few question words.
const STOPWORDS: &[&str] = &[
    "a", "an", "and", "are", "as", "at", "be", "but", "by", "for", "if", "in", "into", "is", "it", "no", "not", "of",
    "on", "or", "such", "that", "the", "their", "then", "there", "these", "they", "this", "to", "was", "will", "with",
    "what", "which", "who", "how", "does", "do", "did",
];

fn stemmer() -> &'static Stemmer {
    static STEMMER: OnceLock<Stemmer> = OnceLock::new();
    STEMMER.get_or_init(|| Stemmer::create(Algorithm::English))
}

/// The analyzed terms of a text, in order (repeats kept).
pub fn analyze(text: &str) -> Vec<String> {
    let stemmer = stemmer();
    text.split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(str::to_lowercase)
        .filter(|w| !STOPWORDS.contains(&w.as_str()))
        .map(|w| stemmer.stem(&w).into_owned())
        .collect()
}

/// Term frequencies of a text, sorted by term, and the text's length in terms.
pub fn term_frequencies(text: &str) -> (Vec<(String, u16)>, u32) {
    let terms = analyze(text);
    let length = terms.len() as u32;
    let mut counts: HashMap<String, u16> = HashMap::new();
    for t in terms {
        let c = counts.entry(t).or_default();
        *c = c.saturating_add(1);
    }
    let mut tf: Vec<(String, u16)> = counts.into_iter().collect();
    tf.sort();
    (tf, length)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stems_and_drops_stopwords() {
        assert_eq!(analyze("The Running runners ran, of course!"), ["run", "runner", "ran", "cours"]);
        let (tf, len) = term_frequencies("cells cell Cell-based");
        assert_eq!(tf, [("base".to_string(), 1), ("cell".to_string(), 3)]);
        assert_eq!(len, 4);
    }
}
