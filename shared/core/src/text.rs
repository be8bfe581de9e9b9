//! Small text helpers shared by chunking, refusal and extractive answers.

/// Words too common to count as evidence.
const STOPWORDS: &[&str] = &[
    "a", "about", "after", "all", "also", "an", "and", "any", "are", "as", "at", "be", "been", "but", "by", "can",
    "could", "did", "do", "does", "for", "from", "had", "has", "have", "how", "i", "if", "in", "into", "is", "it",
    "its", "me", "more", "my", "no", "not", "of", "on", "or", "our", "should", "so", "than", "that", "the", "their",
    "them", "then", "there", "these", "they", "this", "to", "us", "was", "we", "were", "what", "when", "where",
    "which", "who", "whom", "why", "will", "with", "would", "you", "your",
];

/// Lower-case alphanumeric terms.
pub fn terms(text: &str) -> Vec<String> {
    text.split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(str::to_lowercase)
        .collect()
}

/// Terms that carry meaning (no stopwords, no single letters).
pub fn content_terms(text: &str) -> Vec<String> {
    let mut out: Vec<String> = terms(text)
        .into_iter()
        .filter(|t| t.chars().count() > 1 && !STOPWORDS.contains(&t.as_str()))
        .collect();
    out.sort();
    out.dedup();
    out
}

/// Sentence spans `(start, end)` in byte offsets: a sentence ends after `.`,
/// `!` or `?` followed by whitespace, or at a blank line.
pub fn sentence_spans(text: &str) -> Vec<(usize, usize)> {
    let mut spans = Vec::new();
    let mut start = 0;
    let bytes = text.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let end_here = match bytes[i] {
            b'.' | b'!' | b'?' => bytes.get(i + 1).is_none_or(|b| b.is_ascii_whitespace()),
            b'\n' => bytes.get(i + 1) == Some(&b'\n'),
            _ => false,
        };
        if end_here {
            push_trimmed(text, start, i + 1, &mut spans);
            start = i + 1;
        }
        i += 1;
    }
    push_trimmed(text, start, text.len(), &mut spans);
    spans
}

fn push_trimmed(text: &str, start: usize, end: usize, spans: &mut Vec<(usize, usize)>) {
    let piece = &text[start..end];
    let lead = piece.len() - piece.trim_start().len();
    let trail = piece.len() - piece.trim_end().len();
    if lead + trail < piece.len() {
        spans.push((start + lead, end - trail));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sentences_and_terms() {
        let t = "Refunds take 5 days. Ask support! Version 1.2 is out\n\nNew para";
        let s: Vec<&str> = sentence_spans(t).into_iter().map(|(a, b)| &t[a..b]).collect();
        assert_eq!(s, vec!["Refunds take 5 days.", "Ask support!", "Version 1.2 is out", "New para"]);
        assert_eq!(content_terms("How do I get a refund for the Refund?"), vec!["get", "refund"]);
    }
}
