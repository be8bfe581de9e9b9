//! Grounding of generated answers: every sentence must cite the evidence it
//! comes from as `[n]`. Groundedness is the share of sentences with a valid
//! citation; uncited sentences are cut (repair) or, when too few are left,
//! the answer is replaced.

use keel_core::text::sentence_spans;

/// Evidence indexes cited as `[n]` (1-based, within range), in first-seen order.
pub fn parse_citations(text: &str, evidence_len: usize) -> Vec<usize> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(open) = rest.find('[') {
        rest = &rest[open + 1..];
        if let Some(close) = rest.find(']') {
            if let Ok(n) = rest[..close].trim().parse::<usize>() {
                if (1..=evidence_len).contains(&n) && !out.contains(&(n - 1)) {
                    out.push(n - 1);
                }
            }
        }
    }
    out
}

#[derive(Clone, Debug, PartialEq)]
pub struct Grounding {
    pub sentences: usize,
    pub grounded: usize,
    /// `grounded / sentences` (0 for an empty answer).
    pub groundedness: f32,
    /// The answer with only its cited sentences.
    pub kept: String,
}

/// The sentences of `text`. Citation markers that open a piece (`Done. [1] Next.`)
/// belong to the sentence before them.
pub fn sentences(text: &str) -> Vec<String> {
    sentences_at(text).into_iter().map(|(_, s)| s).collect()
}

/// `sentences`, each with the byte offset in `text` where it starts.
pub fn sentences_at(text: &str) -> Vec<(usize, String)> {
    let mut sentences: Vec<(usize, String)> = Vec::new();
    for (s, e) in sentence_spans(text) {
        let piece = &text[s..e];
        let lead = leading_markers(piece);
        let rest = match sentences.last_mut() {
            Some((_, last)) if lead > 0 => {
                last.push(' ');
                last.push_str(piece[..lead].trim());
                piece[lead..].trim_start()
            }
            _ => piece,
        };
        // Punctuation left over after the markers ("[1]." ) is not a sentence.
        if rest.chars().any(char::is_alphanumeric) {
            sentences.push((e - rest.len(), rest.to_string()));
        } else if let Some((_, last)) = sentences.last_mut() {
            last.push_str(rest);
        }
    }
    sentences
}

/// Length of the `[n]` markers (and spaces) at the start of `piece`.
fn leading_markers(piece: &str) -> usize {
    let bytes = piece.as_bytes();
    let (mut i, mut end) = (0, 0);
    loop {
        while i < bytes.len() && bytes[i].is_ascii_whitespace() {
            i += 1;
        }
        let digits = bytes.get(i + 1..).map_or(0, |b| b.iter().take_while(|c| c.is_ascii_digit()).count());
        if bytes.get(i) == Some(&b'[') && digits > 0 && bytes.get(i + 1 + digits) == Some(&b']') {
            i += digits + 2;
            end = i;
        } else {
            return end;
        }
    }
}

/// Whether a sentence cites valid evidence.
pub fn is_cited(sentence: &str, evidence_len: usize) -> bool {
    !parse_citations(sentence, evidence_len).is_empty()
}

/// Counts the sentences that cite valid evidence and keeps only those.
pub fn check(text: &str, evidence_len: usize) -> Grounding {
    let sentences = sentences(text);
    let kept: Vec<&String> = sentences.iter().filter(|s| is_cited(s, evidence_len)).collect();
    Grounding {
        sentences: sentences.len(),
        grounded: kept.len(),
        groundedness: if sentences.is_empty() { 0.0 } else { kept.len() as f32 / sentences.len() as f32 },
        kept: kept.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(" "),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groundedness_counts_sentences_with_valid_citations() {
        assert_eq!(parse_citations("x [2] y [1] [2] [9] [a]", 3), vec![1, 0]);
        let g = check("Refunds take 5 days [1]. Receipts are needed. [2] The moon is cheese. Ask [7].", 2);
        assert_eq!((g.sentences, g.grounded), (4, 2));
        assert!((g.groundedness - 0.5).abs() < 1e-6);
        assert_eq!(g.kept, "Refunds take 5 days [1]. Receipts are needed. [2]");
        assert_eq!(check("", 2).groundedness, 0.0);
        assert_eq!(check("All cited [1]. Also [1].", 1).groundedness, 1.0);
    }
}
