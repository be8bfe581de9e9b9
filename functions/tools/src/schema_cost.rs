//! How much work a JSON Schema can make validation do, found before it is
//! registered. References let a 2 KB schema reach one subschema along
//! exponentially many paths (`anyOf` of two `$ref`s to the next level, twenty
//! levels deep), and a validator follows every path for each value.
//!
//! The bound is the most subschema evaluations at any one value of an
//! instance nested at most `MAX_JSON_DEPTH` deep (the edge refuses deeper
//! input): applicators that stay at the same value (`allOf`, `anyOf`, `$ref`,
//! `if`, …) add up; those that descend into a child (`items`, `properties`, …)
//! are followed one child kind at a time, since a value is an array or an
//! object, not both. A reference cycle that never descends would never end,
//! and is refused too.

use keel_core::limits::MAX_JSON_DEPTH;
use serde_json::Value;
use std::collections::HashMap;

/// Most subschema evaluations at one value of an instance.
pub const MAX_EVALUATIONS_PER_VALUE: u64 = 1_000;
/// Deepest chain of references followed while measuring.
const MAX_REFERENCE_CHAIN: usize = 256;

/// Applicators evaluated at the same value.
const SAME_ONE: [&str; 5] = ["not", "if", "then", "else", "$ref"];
const SAME_MANY: [&str; 3] = ["allOf", "anyOf", "oneOf"];
const SAME_MAP: [&str; 2] = ["dependentSchemas", "dependencies"];
/// Applicators evaluated at an array's items.
const ITEMS_ONE: [&str; 4] = ["items", "additionalItems", "contains", "unevaluatedItems"];
/// Applicators evaluated at an object's members (or their names).
const MEMBERS_ONE: [&str; 3] = ["additionalProperties", "unevaluatedProperties", "propertyNames"];

#[derive(Clone, Copy, PartialEq, Eq, Hash)]
enum Child {
    Item,
    Member,
}

struct Measure<'a> {
    root: &'a Value,
    memo: HashMap<Key, u64>,
    /// Keys being measured: meeting one again is a cycle at the same value.
    open: Vec<Key>,
}

/// A subschema (by pointer), how many levels below it the value is, and the
/// kind of the first step down (`None` at the value itself, or the worse kind).
type Key = (String, usize, Option<Child>);

/// Refuses a schema whose worst case passes `MAX_EVALUATIONS_PER_VALUE`.
pub fn check(schema: &Value) -> Result<(), String> {
    let mut m = Measure { root: schema, memo: HashMap::new(), open: Vec::new() };
    for depth in 0..=MAX_JSON_DEPTH {
        let cost = m.worst("", schema, depth)?;
        if cost > MAX_EVALUATIONS_PER_VALUE {
            return Err(format!(
                "validating one value could take {cost} or more subschema evaluations (through $ref, allOf, anyOf …); the limit is {MAX_EVALUATIONS_PER_VALUE}"
            ));
        }
    }
    Ok(())
}

impl<'a> Measure<'a> {
    /// Evaluations at one value `depth` levels below where `node` applies,
    /// whatever the kinds of the steps down.
    fn worst(&mut self, pointer: &str, node: &'a Value, depth: usize) -> Result<u64, String> {
        if depth == 0 {
            return self.cost(pointer, node, 0, None);
        }
        let items = self.cost(pointer, node, depth, Some(Child::Item))?;
        Ok(items.max(self.cost(pointer, node, depth, Some(Child::Member))?))
    }

    /// Evaluations at one value `depth` levels below, the first step down of kind `first`.
    fn cost(&mut self, pointer: &str, node: &'a Value, depth: usize, first: Option<Child>) -> Result<u64, String> {
        let key = (pointer.to_string(), depth, first);
        if let Some(c) = self.memo.get(&key) {
            return Ok(*c);
        }
        if self.open.contains(&key) {
            return Err(format!("the reference cycle through {:?} never descends into the value", display(pointer)));
        }
        if self.open.len() >= MAX_REFERENCE_CHAIN {
            return Err(format!("references chain more than {MAX_REFERENCE_CHAIN} deep"));
        }
        self.open.push(key.clone());
        let cost = self.cost_open(pointer, node, depth, first);
        self.open.pop();
        let cost = cost?;
        self.memo.insert(key, cost);
        Ok(cost)
    }

    fn cost_open(&mut self, pointer: &str, node: &'a Value, depth: usize, first: Option<Child>) -> Result<u64, String> {
        let Value::Object(map) = node else { return Ok(u64::from(depth == 0)) };
        let mut total = u64::from(depth == 0);
        for (p, s) in self.same_value(pointer, map)? {
            total = total.saturating_add(self.cost(&p, s, depth, first)?);
        }
        if let Some(child) = first.filter(|_| depth > 0) {
            total = total.saturating_add(self.descend(pointer, map, child, depth - 1)?);
        }
        Ok(total)
    }

    /// The subschemas that apply at the same value as this one, references resolved.
    fn same_value(&self, pointer: &str, map: &'a serde_json::Map<String, Value>) -> Result<Vec<(String, &'a Value)>, String> {
        let mut same: Vec<(String, &'a Value)> = Vec::new();
        for (k, v) in map {
            let at = format!("{pointer}/{}", escape(k));
            if k == "$ref" || k == "$dynamicRef" || k == "$recursiveRef" {
                if let Some(target) = self.resolve(v.as_str().unwrap_or_default())? {
                    same.push(target);
                }
            } else if SAME_ONE.contains(&k.as_str()) {
                same.push((at, v));
            } else if SAME_MANY.contains(&k.as_str()) {
                same.extend(v.as_array().into_iter().flatten().enumerate().map(|(i, s)| (format!("{at}/{i}"), s)));
            } else if SAME_MAP.contains(&k.as_str()) {
                let schemas = v.as_object().into_iter().flatten().filter(|(_, s)| s.is_object() || s.is_boolean());
                same.extend(schemas.map(|(name, s)| (format!("{at}/{}", escape(name)), s)));
            }
        }
        Ok(same)
    }

    /// Evaluations at one child value (of this kind) `depth` levels down.
    fn descend(&mut self, pointer: &str, map: &'a serde_json::Map<String, Value>, child: Child, depth: usize) -> Result<u64, String> {
        let (every, lists): (&[&str], &[&str]) = match child {
            Child::Item => (&ITEMS_ONE, &["prefixItems", "items"]),
            Child::Member => (&MEMBERS_ONE, &["properties"]),
        };
        let mut total = 0u64;
        for k in every {
            if let Some(s) = map.get(*k).filter(|s| s.is_object() || s.is_boolean()) {
                total = total.saturating_add(self.worst(&format!("{pointer}/{k}"), s, depth)?);
            }
        }
        // `items` as an array (older drafts) lists per-position schemas, as `prefixItems` does.
        let mut positional: Vec<(String, &'a Value)> = Vec::new();
        for &k in lists {
            match map.get(k) {
                Some(Value::Array(list)) => positional.extend(list.iter().enumerate().map(|(i, s)| (format!("{pointer}/{k}/{i}"), s))),
                Some(Value::Object(props)) if k == "properties" => {
                    positional.extend(props.iter().map(|(name, s)| (format!("{pointer}/{k}/{}", escape(name)), s)))
                }
                _ => {}
            }
        }
        // One member matches one named property at most, but any pattern.
        let mut worst = 0u64;
        for (p, s) in positional {
            worst = worst.max(self.worst(&p, s, depth)?);
        }
        if child == Child::Member {
            for (name, s) in map.get("patternProperties").and_then(Value::as_object).into_iter().flatten() {
                total = total.saturating_add(self.worst(&format!("{pointer}/patternProperties/{}", escape(name)), s, depth)?);
            }
        }
        Ok(total.saturating_add(worst))
    }

    /// A reference's target inside this schema, with its pointer; `None` for
    /// the standard meta-schemas, which are known and bounded.
    fn resolve(&self, reference: &str) -> Result<Option<(String, &'a Value)>, String> {
        if reference.starts_with("https://json-schema.org/") || reference.starts_with("http://json-schema.org/") {
            return Ok(None);
        }
        let unresolved = || format!("$ref {reference:?} cannot be followed inside this schema");
        let fragment = reference.strip_prefix('#').ok_or_else(unresolved)?;
        if fragment.is_empty() || fragment.starts_with('/') {
            let pointer = percent_decode(fragment);
            let target = self.root.pointer(&pointer).ok_or_else(unresolved)?;
            return Ok(Some((pointer, target)));
        }
        find_anchor(self.root, "", fragment).map(Some).ok_or_else(unresolved)
    }
}

/// The subschema whose `$anchor` (or `$dynamicAnchor`) is `name`.
fn find_anchor<'a>(node: &'a Value, pointer: &str, name: &str) -> Option<(String, &'a Value)> {
    match node {
        Value::Object(map) => {
            if ["$anchor", "$dynamicAnchor"].iter().any(|k| map.get(*k).and_then(Value::as_str) == Some(name)) {
                return Some((pointer.to_string(), node));
            }
            map.iter().find_map(|(k, v)| find_anchor(v, &format!("{pointer}/{}", escape(k)), name))
        }
        Value::Array(items) => items.iter().enumerate().find_map(|(i, v)| find_anchor(v, &format!("{pointer}/{i}"), name)),
        _ => None,
    }
}

fn escape(key: &str) -> String {
    key.replace('~', "~0").replace('/', "~1")
}

fn display(pointer: &str) -> String {
    format!("#{pointer}")
}

/// `%XX` escapes of a URI fragment, decoded.
fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = (bytes[i] == b'%').then(|| s.get(i + 1..i + 3)).flatten().and_then(|h| u8::from_str_radix(h, 16).ok());
        match hex {
            Some(b) => {
                out.push(b);
                i += 3;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// `$defs` d0…d{n-1}, each reaching the next along two paths.
    fn doubling(n: usize) -> Value {
        let mut defs = serde_json::Map::new();
        for i in 0..n {
            let next = format!("#/$defs/d{}", i + 1);
            defs.insert(format!("d{i}"), json!({"anyOf": [{"$ref": next}, {"allOf": [{"$ref": next}]}]}));
        }
        defs.insert(format!("d{n}"), json!({"type": "integer"}));
        json!({"$defs": defs, "$ref": "#/$defs/d0"})
    }

    #[test]
    fn exponential_reference_graphs_are_refused() {
        assert!(check(&doubling(5)).is_ok());
        let e = check(&doubling(20)).unwrap_err();
        assert!(e.contains("the limit is 1000"), "{e}");
    }

    #[test]
    fn recursive_schemas_that_descend_are_accepted() {
        // A tree, and any JSON value: recursion through items and members is bounded by the value's depth.
        let tree = json!({"type": "object", "properties": {"name": {"type": "string"},
            "children": {"type": "array", "items": {"$ref": "#"}}}});
        assert!(check(&tree).is_ok());
        let any = json!({"$defs": {"v": {"anyOf": [{"type": "string"}, {"type": "array", "items": {"$ref": "#/$defs/v"}},
            {"type": "object", "additionalProperties": {"$ref": "#/$defs/v"}}]}}, "$ref": "#/$defs/v"});
        assert!(check(&any).is_ok());
        let anchored = json!({"$defs": {"n": {"$anchor": "node", "type": "array", "items": {"$ref": "#node"}}}, "$ref": "#node"});
        assert!(check(&anchored).is_ok());
    }

    #[test]
    fn recursion_at_the_same_value_and_branching_recursion_are_refused() {
        assert!(check(&json!({"$ref": "#"})).unwrap_err().contains("never descends"));
        let branching = json!({"type": "array", "items": {"anyOf": [{"$ref": "#"}, {"allOf": [{"$ref": "#"}]}]}});
        assert!(check(&branching).is_err());
        assert!(check(&json!({"$ref": "other.json"})).unwrap_err().contains("cannot be followed"));
    }
}
