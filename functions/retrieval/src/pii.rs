//! PII detection at ingest: e-mail addresses, phone numbers, payment card
//! numbers (Luhn-checked), IBANs (mod-97-checked), national ids (US SSN with
//! its validity rules) and IP addresses (v4 and v6). Patterns find
//! candidates; checksums and range rules keep the precision up. Spans are
//! character offsets, like chunk anchors.

use regex::Regex;
use serde::{Deserialize, Serialize};
use std::sync::OnceLock;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, PartialOrd, Ord)]
#[serde(rename_all = "snake_case")]
pub enum PiiKind {
    Email,
    Phone,
    Card,
    Iban,
    NationalId,
    IpAddress,
}

impl PiiKind {
    pub const ALL: [PiiKind; 6] =
        [PiiKind::Email, PiiKind::Phone, PiiKind::Card, PiiKind::Iban, PiiKind::NationalId, PiiKind::IpAddress];

    pub fn placeholder(self) -> &'static str {
        match self {
            PiiKind::Email => "[EMAIL]",
            PiiKind::Phone => "[PHONE]",
            PiiKind::Card => "[CARD]",
            PiiKind::Iban => "[IBAN]",
            PiiKind::NationalId => "[NATIONAL_ID]",
            PiiKind::IpAddress => "[IP_ADDRESS]",
        }
    }
}

/// One detected entity: kind and character offsets (end exclusive).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PiiSpan {
    pub kind: PiiKind,
    pub start: usize,
    pub end: usize,
}

struct Patterns {
    email: Regex,
    card: Regex,
    iban: Regex,
    ssn: Regex,
    ipv4: Regex,
    ipv6: Regex,
    phone: Regex,
    phone_words: Regex,
    date: Regex,
}

#[allow(clippy::expect_used)] // constant patterns, covered by the tests
fn patterns() -> &'static Patterns {
    static P: OnceLock<Patterns> = OnceLock::new();
    P.get_or_init(|| {
        let re = |p: &str| Regex::new(p).expect("valid PII pattern");
        Patterns {
            email: re(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}"),
            card: re(r"\b\d(?:[ -]?\d){11,18}\b"),
            iban: re(r"(?i)\b[a-z]{2}\d{2}(?: ?[a-z0-9]{4}){2,7}(?: ?[a-z0-9]{1,4})?\b"),
            ssn: re(r"\b(\d{3})[- ](\d{2})[- ](\d{4})\b"),
            ipv4: re(r"\b(?:\d{1,3}\.){3}\d{1,3}\b"),
            ipv6: re(r"(?i)\b[0-9a-f]{0,4}(?::[0-9a-f]{0,4}){2,7}\b"),
            phone_words: re(r"(?i)\b(?:phone|call|tel|telephone|mobile|cell|fax|contact|number|no\.|reach|text|whatsapp|dial)\b"),
            date: re(r"^\d{4}-\d{2}-\d{2}"),
            phone: re(r"(?:\+\d{1,3}[ .-]?)?(?:\(\d{1,4}\)[ .-]?)?\d{2,5}(?:[ .-]\d{2,5}){1,4}(?: ?(?:x|ext\.?) ?\d{1,5})?\b"),
        }
    })
}

pub fn luhn_valid(digits: &str) -> bool {
    let mut sum = 0;
    for (i, c) in digits.chars().rev().enumerate() {
        let Some(mut d) = c.to_digit(10) else { return false };
        if i % 2 == 1 {
            d *= 2;
            if d > 9 {
                d -= 9;
            }
        }
        sum += d;
    }
    !digits.is_empty() && sum % 10 == 0
}

pub fn iban_valid(compact: &str) -> bool {
    let upper = compact.to_ascii_uppercase();
    if !(15..=34).contains(&upper.len()) || !upper.chars().all(|c| c.is_ascii_alphanumeric()) {
        return false;
    }
    let (head, tail) = upper.split_at(4);
    let mut remainder: u32 = 0;
    for c in tail.chars().chain(head.chars()) {
        let value = c.to_digit(36).unwrap_or(0);
        for digit in if value >= 10 { vec![value / 10, value % 10] } else { vec![value] } {
            remainder = (remainder * 10 + digit) % 97;
        }
    }
    remainder == 1
}

/// US SSN rules: area not 000, 666 or 9xx; group not 00; serial not 0000.
fn ssn_valid(area: &str, group: &str, serial: &str) -> bool {
    area != "000" && area != "666" && !area.starts_with('9') && group != "00" && serial != "0000"
}

/// The length of the valid IBAN a match starts with: the last group may be a
/// following word, so it is tried without it too.
fn iban_length(matched: &str) -> Option<usize> {
    let mut candidate = matched;
    loop {
        if iban_valid(&candidate.replace(' ', "")) {
            return Some(candidate.len());
        }
        candidate = &candidate[..candidate.rfind(' ')?];
    }
}

/// Whether a phone-shaped match at `start` is a phone number. Short numbers
/// look like addresses and codes: they need a phone-like format (+,
/// parentheses) or a phone word just before them.
fn is_phone(text: &str, start: usize, matched: &str) -> bool {
    let p = patterns();
    let n = matched.chars().filter(char::is_ascii_digit).count();
    let context = &text[text[..start].char_indices().rev().nth(40).map_or(0, |(i, _)| i)..start];
    let marked = matched.contains(['+', '(']) || p.phone_words.is_match(context);
    (7..=15).contains(&n) && !p.date.is_match(matched) && (n >= 10 || marked)
}

/// All entities in `text`, sorted by position, without overlaps.
pub fn detect(text: &str) -> Vec<PiiSpan> {
    let p = patterns();
    let mut found: Vec<(usize, usize, PiiKind)> = Vec::new();
    let digits_of = |s: &str| s.chars().filter(char::is_ascii_digit).collect::<String>();
    for m in p.email.find_iter(text) {
        found.push((m.start(), m.end(), PiiKind::Email));
    }
    for m in p.card.find_iter(text) {
        let d = digits_of(m.as_str());
        if (13..=19).contains(&d.len()) && luhn_valid(&d) {
            found.push((m.start(), m.end(), PiiKind::Card));
        }
    }
    for m in p.iban.find_iter(text) {
        if let Some(len) = iban_length(m.as_str()) {
            found.push((m.start(), m.start() + len, PiiKind::Iban));
        }
    }
    for c in p.ssn.captures_iter(text) {
        if ssn_valid(&c[1], &c[2], &c[3]) {
            if let Some(m) = c.get(0) {
                found.push((m.start(), m.end(), PiiKind::NationalId));
            }
        }
    }
    for m in p.ipv4.find_iter(text) {
        if m.as_str().parse::<std::net::Ipv4Addr>().is_ok() {
            found.push((m.start(), m.end(), PiiKind::IpAddress));
        }
    }
    for m in p.ipv6.find_iter(text) {
        if m.as_str().parse::<std::net::Ipv6Addr>().is_ok() {
            found.push((m.start(), m.end(), PiiKind::IpAddress));
        }
    }
    for m in p.phone.find_iter(text) {
        if is_phone(text, m.start(), m.as_str()) {
            found.push((m.start(), m.end(), PiiKind::Phone));
        }
    }
    // Checked kinds claim contested characters first; the loose phone pattern last.
    let priority = |k: PiiKind| [PiiKind::Email, PiiKind::Card, PiiKind::Iban, PiiKind::NationalId, PiiKind::IpAddress, PiiKind::Phone]
        .iter()
        .position(|x| *x == k);
    found.sort_by_key(|&(s, e, k)| (priority(k), s, e));
    let mut kept: Vec<(usize, usize, PiiKind)> = Vec::new();
    for f in found {
        if kept.iter().all(|k| f.1 <= k.0 || f.0 >= k.1) {
            kept.push(f);
        }
    }
    kept.sort();
    kept.into_iter()
        .map(|(s, e, kind)| PiiSpan { kind, start: text[..s].chars().count(), end: text[..e].chars().count() })
        .collect()
}

/// The text with every span (sorted, not overlapping) replaced by its kind's
/// placeholder, and the placeholders' spans in the new text.
pub fn redact(text: &str, spans: &[PiiSpan]) -> (String, Vec<PiiSpan>) {
    let chars: Vec<char> = text.chars().collect();
    let mut out = String::with_capacity(text.len());
    let mut placed = Vec::with_capacity(spans.len());
    let mut at = 0;
    let mut out_chars = 0;
    for s in spans {
        let keep = &chars[at.min(s.start)..s.start];
        out.extend(keep);
        out_chars += keep.len();
        let placeholder = s.kind.placeholder();
        out.push_str(placeholder);
        placed.push(PiiSpan { kind: s.kind, start: out_chars, end: out_chars + placeholder.len() });
        out_chars += placeholder.len();
        at = s.end;
    }
    out.extend(&chars[at.min(chars.len())..]);
    (out, placed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kinds(text: &str) -> Vec<(PiiKind, String)> {
        let chars: Vec<char> = text.chars().collect();
        detect(text).into_iter().map(|s| (s.kind, chars[s.start..s.end].iter().collect())).collect()
    }

    #[test]
    fn finds_each_kind_with_checks() {
        let text = "Mail jane.doe@example.co.uk or call +1 (415) 555-0132. Card 4111 1111 1111 1111, \
                    IBAN DE89 3704 0044 0532 0130 00 today, SSN 123-45-6789, from 192.168.10.4 and 2001:db8::1.";
        assert_eq!(
            kinds(text),
            [
                (PiiKind::Email, "jane.doe@example.co.uk".into()),
                (PiiKind::Phone, "+1 (415) 555-0132".into()),
                (PiiKind::Card, "4111 1111 1111 1111".into()),
                (PiiKind::Iban, "DE89 3704 0044 0532 0130 00".into()),
                (PiiKind::NationalId, "123-45-6789".into()),
                (PiiKind::IpAddress, "192.168.10.4".into()),
                (PiiKind::IpAddress, "2001:db8::1".into()),
            ]
        );
    }

    #[test]
    fn checksums_reject_lookalikes() {
        assert!(kinds("order 4111 1111 1111 1112").iter().all(|(k, _)| *k != PiiKind::Card));
        assert!(kinds("ref DE89 3704 0044 0532 0130 01").iter().all(|(k, _)| *k != PiiKind::Iban));
        assert!(kinds("ssn 666-12-3456").iter().all(|(k, _)| *k != PiiKind::NationalId));
        assert!(kinds("version 300.1.2.999").is_empty());
        assert!(kinds("in 2019 we had 42 cases").is_empty());
    }

    #[test]
    fn redacts_by_character_offsets() {
        let text = "Héllo ünïcode: bob@example.com!";
        let spans = detect(text);
        let (redacted, placed) = redact(text, &spans);
        assert_eq!(redacted, "Héllo ünïcode: [EMAIL]!");
        assert_eq!(placed, [PiiSpan { kind: PiiKind::Email, start: 15, end: 22 }]);
        assert!(luhn_valid("79927398713") && !luhn_valid("79927398710"));
        assert!(iban_valid("GB82WEST12345698765432"));
    }
}
