//! Mutations: byte edits, splices of two corpus inputs, and insertions of
//! tokens that break parsers (JSON structure, numbers at the edges, escapes)
//! and text code (combining marks, right-to-left and zero-width characters,
//! four-byte characters, invalid UTF-8).

/// A small deterministic generator (xorshift64*): a run is reproducible from its seed.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed.max(1))
    }

    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// A number in `0..n` (`0` when `n` is 0).
    pub fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next_u64() % n as u64) as usize
        }
    }
}

const TOKENS: &[&str] = &[
    "{", "}", "[", "]", ",", ":", "\"", "null", "true", "false", "0", "-0", "1e999", "-1e999", "18446744073709551616",
    "-9223372036854775809", "0.0000001", "\\u0000", "\\ud800", "\\udfff", "\\\"", "\\\\", "[[[[[[[[[[[[[[[[", "]]]]]]]]",
    "{\"a\":", "\"$ref\":\"#\"", "\"type\":", "\"pattern\":\"(a+)+$\"", "\"Records\":[", "\"body\":", "\"headers\":{",
    "\"requestContext\":{", "\"authorization\":", "Bearer ", "keel_acme_", "eyJhbGciOiJub25lIn0", ".", "..", "==",
    "permit(", "forbid(", "principal", "action ==", "resource", "when {", "unless {", "context.", "};", "//", "/*",
    "\u{0301}", "\u{202E}", "\u{200B}", "\u{200D}", "\u{FEFF}", "\u{1F600}", "\u{10FFFF}", "\u{0130}", "ß", "ﬃ", "\u{0345}",
    "4111 1111 1111 1111", "DE89 3704 0044 0532 0130 00", "078-05-1120", "a@b.co", "+1 (555) 010-9999", "\r\n", "\t", " ",
];

const INVALID_UTF8: &[&[u8]] = &[b"\xff", b"\xc0\x80", b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"\xe2\x82"];

/// Changes `input` once, sometimes borrowing from `other`.
pub fn mutate(input: &mut Vec<u8>, other: &[u8], rng: &mut Rng) {
    let at = rng.below(input.len() + 1);
    match rng.below(9) {
        0 if !input.is_empty() => {
            let i = rng.below(input.len());
            input[i] ^= 1 << rng.below(8);
        }
        1 if !input.is_empty() => {
            let i = rng.below(input.len());
            input[i] = rng.next_u64() as u8;
        }
        2 if !input.is_empty() => {
            let len = 1 + rng.below(input.len().min(32));
            let start = rng.below(input.len() - len + 1);
            input.drain(start..start + len);
        }
        3 if !input.is_empty() => {
            let len = 1 + rng.below(input.len().min(64));
            let start = rng.below(input.len() - len + 1);
            let copy = input[start..start + len].to_vec();
            input.splice(at..at, copy);
        }
        4 if !other.is_empty() => {
            // Splice: this input's head with the other's tail.
            let cut = rng.below(other.len());
            input.truncate(at);
            input.extend_from_slice(&other[cut..]);
        }
        5 => {
            let bad = INVALID_UTF8[rng.below(INVALID_UTF8.len())];
            input.splice(at..at, bad.iter().copied());
        }
        6 => {
            // The same token many times: deep nesting, long runs.
            let token = TOKENS[rng.below(TOKENS.len())].as_bytes();
            let times = 1 + rng.below(200);
            input.splice(at..at, token.iter().copied().cycle().take(token.len() * times));
        }
        _ => {
            let token = TOKENS[rng.below(TOKENS.len())].as_bytes();
            input.splice(at..at, token.iter().copied());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_seed_makes_the_same_mutations() {
        let run = |seed| {
            let mut rng = Rng::new(seed);
            let mut input = b"{\"a\": [1, 2, 3]}".to_vec();
            for _ in 0..50 {
                mutate(&mut input, b"other input", &mut rng);
            }
            input
        };
        assert_eq!(run(42), run(42));
        assert_ne!(run(42), run(43));
    }
}
