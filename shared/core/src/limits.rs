//! Input limits every edge applies before it parses: how deep JSON may nest.
//!
//! serde_json refuses to read JSON nested deeper than 128 levels, and every
//! stored record wraps what a client sent in a few levels of its own (an
//! action's arguments sit four levels down in its audit chain entry). So a
//! body that parses at the edge could become a record nobody can read back.
//! The edge therefore accepts at most `MAX_JSON_DEPTH` levels, far inside what
//! any later reader accepts, and stores refuse to write a record deeper than
//! `MAX_STORED_DEPTH`, so nothing accepted can turn unreadable later.

use crate::error::KeelError;
use serde::de::DeserializeOwned;
use serde_json::Value;

/// Deepest nesting of arrays and objects accepted in a request body, a queue
/// message or a connector's answer.
pub const MAX_JSON_DEPTH: usize = 32;

/// Largest queue message read (SQS's own limit is 1 MiB).
pub const MAX_QUEUE_MESSAGE_BYTES: usize = 1024 * 1024;

/// Deepest nesting a store writes (serde_json reads at most 128).
pub const MAX_STORED_DEPTH: usize = 100;

/// The deepest nesting of arrays and objects in JSON text, found by a scan
/// that never recurses (strings and their escapes are skipped).
pub fn text_depth(bytes: &[u8]) -> usize {
    let (mut depth, mut deepest, mut in_string, mut escaped) = (0usize, 0usize, false, false);
    for &b in bytes {
        if in_string {
            match b {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                deepest = deepest.max(depth);
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    deepest
}

/// The deepest nesting of arrays and objects in a value, without recursion.
pub fn value_depth(value: &Value) -> usize {
    let mut deepest = 0;
    let mut stack = vec![(value, 0usize)];
    while let Some((v, depth)) = stack.pop() {
        let children: Box<dyn Iterator<Item = &Value>> = match v {
            Value::Array(items) => Box::new(items.iter()),
            Value::Object(map) => Box::new(map.values()),
            _ => continue,
        };
        deepest = deepest.max(depth + 1);
        stack.extend(children.map(|c| (c, depth + 1)));
    }
    deepest
}

/// Parses untrusted JSON (`what` names it in the error) after checking its
/// size and nesting: 413 over `max_bytes`, 400 when empty, too deep or malformed.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8], max_bytes: usize, what: &str) -> Result<T, KeelError> {
    if bytes.len() > max_bytes {
        return Err(KeelError::PayloadTooLarge(format!("{what} is {} bytes; the limit is {max_bytes}", bytes.len())));
    }
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(KeelError::BadRequest(format!("{what} is empty; expected JSON")));
    }
    let depth = text_depth(bytes);
    if depth > MAX_JSON_DEPTH {
        return Err(KeelError::BadRequest(format!(
            "{what} nests arrays and objects {depth} levels deep; the limit is {MAX_JSON_DEPTH}"
        )));
    }
    serde_json::from_slice(bytes).map_err(|e| KeelError::BadRequest(format!("malformed JSON in {what}: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn depth_counts_arrays_and_objects_but_not_brackets_in_strings() {
        assert_eq!(text_depth(b"1"), 0);
        assert_eq!(text_depth(br#"{"a":[1,{"b":[]}]}"#), 4);
        assert_eq!(text_depth(br#"{"a":"[[[[\"[["}"#), 1);
        assert_eq!(value_depth(&json!(1)), 0);
        assert_eq!(value_depth(&json!({"a": [1, {"b": []}]})), 4);
        assert_eq!(value_depth(&json!([[], [[[]]]])), 4);
    }

    #[test]
    fn too_deep_bodies_are_refused_with_the_limit_named() {
        let deep = format!("{}{}", "[".repeat(MAX_JSON_DEPTH + 1), "]".repeat(MAX_JSON_DEPTH + 1));
        let e = parse_json::<Value>(deep.as_bytes(), 1 << 20, "request body").unwrap_err();
        assert!(matches!(&e, KeelError::BadRequest(m) if m.contains("the limit is 32")), "{e:?}");
        let ok = format!("{}{}", "[".repeat(MAX_JSON_DEPTH), "]".repeat(MAX_JSON_DEPTH));
        assert!(parse_json::<Value>(ok.as_bytes(), 1 << 20, "request body").is_ok());
        assert!(matches!(parse_json::<Value>(b"[1]", 2, "x"), Err(KeelError::PayloadTooLarge(_))));
        assert!(matches!(parse_json::<Value>(b" ", 2, "x"), Err(KeelError::BadRequest(_))));
    }

    use proptest::prelude::*;

    /// Any JSON value, nested up to `depth` levels of arrays and objects.
    fn value(depth: u32) -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![Just(Value::Null), any::<bool>().prop_map(Value::from), any::<i64>().prop_map(Value::from), ".{0,8}".prop_map(Value::from)];
        leaf.prop_recursive(depth, 256, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                prop::collection::btree_map("[a-z\\[{\"]{1,4}", inner, 0..4).prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    /// A chain of `n` arrays around `inner`, as an attacker nests it.
    fn chain(n: usize, inner: Value) -> Value {
        (0..n).fold(inner, |v, _| json!([v]))
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

        /// Every body is accepted exactly when it is small and shallow
        /// enough, and whatever is accepted still reads back once a stored
        /// record wraps it (an audit entry adds a handful of levels).
        #[test]
        fn bodies_are_accepted_exactly_within_the_limits_and_stay_readable(v in value(6), extra in 0usize..160, limit in 1usize..4096) {
            let body = chain(extra, v);
            let text = body.to_string();
            let depth = value_depth(&body);
            prop_assert_eq!(text_depth(text.as_bytes()), depth);
            match parse_json::<Value>(text.as_bytes(), limit, "request body") {
                Ok(parsed) => {
                    prop_assert!(depth <= MAX_JSON_DEPTH && text.len() <= limit);
                    let stored = json!({"event": {"input": {"args": parsed}}, "seq": 1});
                    prop_assert!(value_depth(&stored) <= MAX_STORED_DEPTH);
                    prop_assert!(serde_json::from_str::<Value>(&stored.to_string()).is_ok());
                }
                Err(KeelError::PayloadTooLarge(_)) => prop_assert!(text.len() > limit),
                Err(KeelError::BadRequest(m)) => prop_assert!(depth > MAX_JSON_DEPTH, "{}", m),
                Err(other) => prop_assert!(false, "unexpected {:?}", other),
            }
        }

        /// Arbitrary bytes never panic the parser and never pass the limits.
        #[test]
        fn arbitrary_bytes_get_a_clear_answer(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
            if let Ok(v) = parse_json::<Value>(&bytes, 1024, "request body") {
                prop_assert!(value_depth(&v) <= MAX_JSON_DEPTH);
            }
        }
    }
}
