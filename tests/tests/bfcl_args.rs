// Test-only code: helpers outside #[test] functions may unwrap and panic too.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

//! Tool arguments derived from the BFCL function-calling cases
//! (`../shared/evaldata/bfcl-function-calling`, every file with answers),
//! through the validation tool calls get (`keel_tools::schema`). Each
//! function's BFCL parameters become a draft 2020-12 input schema; the first
//! acceptable ground-truth value of every argument makes a valid call, which
//! must be accepted (bar under 1% of BFCL answers that contradict their own
//! schema, listed in the output); four mutations of it (a wrong type, a
//! missing required argument, an extra property, a value outside an enum)
//! must be rejected with the JSON pointer of what failed.

use keel_core::KeelError;
use keel_tools::schema::{check_schema, validate_args};
use serde_json::{json, Map, Value};
use std::collections::HashMap;
use std::path::PathBuf;


fn lines(path: PathBuf) -> Vec<Value> {
    std::fs::read_to_string(path).unwrap().lines().filter(|l| !l.trim().is_empty()).map(|l| serde_json::from_str(l).unwrap()).collect()
}

/// BFCL's JSON-Schema-like parameters as JSON Schema: `dict` is `object`,
/// `float` is `number`, `tuple` is `array`, `any` has no type; BFCL's own
/// keys are dropped. A tool's top-level arguments admit no unknown property.
fn to_json_schema(p: &Value) -> Value {
    let Some(obj) = p.as_object() else { return p.clone() };
    let mut out = Map::new();
    for (k, v) in obj {
        match k.as_str() {
            "type" => match v.as_str() {
                Some("dict") => drop(out.insert(k.clone(), json!("object"))),
                Some("float") => drop(out.insert(k.clone(), json!("number"))),
                Some("tuple") => drop(out.insert(k.clone(), json!("array"))),
                Some("any") => {}
                _ => drop(out.insert(k.clone(), v.clone())),
            },
            "properties" => {
                let props = v.as_object().unwrap().iter().map(|(n, s)| (n.clone(), to_json_schema(s))).collect();
                out.insert(k.clone(), Value::Object(props));
            }
            "items" | "additionalProperties" => drop(out.insert(k.clone(), to_json_schema(v))),
            // `"default": null` is how BFCL marks an argument that may be null.
            "default" if v.is_null() => drop(out.insert("keel_nullable".into(), json!(true))),
            "optional" | "default" | "format" | "description" => {}
            _ => drop(out.insert(k.clone(), v.clone())),
        }
    }
    if out.remove("keel_nullable").is_some() {
        if let Some(t) = out.get("type").cloned() {
            out.insert("type".into(), json!([t, "null"]));
        }
    }
    Value::Object(out)
}

/// BFCL lists the acceptable values of each argument, and of each field of
/// an object-valued argument (in arrays too): the first of each, guided by
/// the schema. "" means it may be left out: `None` when that comes first,
/// unless the field is required.
fn first_choice(options: &Value, schema: &Value, required: bool) -> Option<Value> {
    let options = options.as_array().cloned().unwrap_or_else(|| vec![options.clone()]);
    let first = options.iter().find(|o| !required || **o != json!(""))?;
    (*first != json!("")).then(|| choose(first, schema))
}

fn choose(value: &Value, schema: &Value) -> Value {
    match (value, schema.get("type").and_then(Value::as_str)) {
        (Value::Object(fields), Some("object")) => {
            let props = schema.get("properties").cloned().unwrap_or(json!({}));
            let required = |k: &str| schema.get("required").and_then(Value::as_array).is_some_and(|r| r.contains(&json!(k)));
            let chosen = fields.iter().filter_map(|(k, o)| first_choice(o, &props[k], required(k)).map(|v| (k.clone(), v))).collect();
            Value::Object(chosen)
        }
        (Value::Array(items), Some("array")) => {
            let item = schema.get("items").cloned().unwrap_or(json!({}));
            Value::Array(items.iter().map(|v| choose(v, &item)).collect())
        }
        _ => value.clone(),
    }
}

/// A JSON pointer token (RFC 6901).
fn token(name: &str) -> String {
    name.replace('~', "~0").replace('/', "~1")
}

fn rejected_at(schema: &Value, args: &Value) -> Option<String> {
    match validate_args(schema, args) {
        Ok(()) => None,
        Err(KeelError::Unprocessable { path, .. }) => Some(path),
        Err(other) => panic!("not a 422: {other:?}"),
    }
}

/// A value of another JSON type than `schema`'s.
fn wrong_type(schema: &Value) -> Option<Value> {
    let t = schema.get("type")?;
    let t = t.as_str().or_else(|| t.get(0).and_then(Value::as_str))?;
    Some(match t {
        "string" => json!(12345),
        "integer" | "number" => json!("not a number"),
        "boolean" => json!("yes"),
        "array" => json!("not a list"),
        "object" => json!([1, 2]),
        _ => return None,
    })
}

#[derive(Default, Debug)]
struct Tally {
    calls: usize,
    accepted: usize,
    /// BFCL answers that contradict their own function's schema.
    contradictions: Vec<String>,
    mutations: HashMap<&'static str, (usize, usize)>,
    failures: Vec<String>,
}

impl Tally {
    fn mutation(&mut self, kind: &'static str, id: &str, schema: &Value, args: Value, want_path: &str) {
        let entry = self.mutations.entry(kind).or_default();
        entry.0 += 1;
        match rejected_at(schema, &args) {
            Some(path) if path == want_path => entry.1 += 1,
            got => self.failures.push(format!("{id} {kind}: want rejection at {want_path}, got {got:?} for {args}")),
        }
    }
}

#[test]
fn bfcl_calls_are_accepted_and_their_mutations_rejected_at_the_failing_path() {
    let Some(bfcl) = keel_tests::evaldata("bfcl-function-calling") else { return };
    let mut tally = Tally::default();
    let mut files: Vec<PathBuf> = std::fs::read_dir(bfcl.join("possible_answer")).unwrap().map(|e| e.unwrap().path()).collect();
    files.sort();
    for answers in &files {
        let name = answers.file_name().unwrap();
        let cases: HashMap<String, Value> = lines(bfcl.join(name)).into_iter().map(|c| (c["id"].as_str().unwrap().to_string(), c)).collect();
        for answer in lines(answers.clone()) {
            let id = answer["id"].as_str().unwrap();
            let functions = cases[id]["function"].as_array().unwrap();
            for call in answer["ground_truth"].as_array().unwrap() {
                let (function, arguments) = call.as_object().unwrap().iter().next().unwrap();
                let spec = functions.iter().find(|f| f["name"] == *function).unwrap();
                let mut schema = to_json_schema(&spec["parameters"]);
                schema["additionalProperties"] = json!(false);
                check_schema(&schema).unwrap_or_else(|e| panic!("{id}: {e}"));

                // The first acceptable value of each argument.
                let valid = choose(arguments, &schema);
                tally.calls += 1;
                if let Some(path) = rejected_at(&schema, &valid) {
                    tally.contradictions.push(format!("{id} at {path}: {}", valid.pointer(&path).unwrap_or(&valid)));
                    continue;
                }
                tally.accepted += 1;

                let props = schema["properties"].as_object().cloned().unwrap_or_default();
                if let Some((arg, wrong)) = valid.as_object().unwrap().keys().find_map(|a| props.get(a).and_then(wrong_type).map(|w| (a.clone(), w))) {
                    let mut args = valid.clone();
                    args[&arg] = wrong;
                    tally.mutation("wrong type", id, &schema, args, &format!("/{}", token(&arg)));
                }
                if let Some(required) = schema["required"].as_array().and_then(|r| r.first()).and_then(Value::as_str) {
                    let mut args = valid.clone();
                    args.as_object_mut().unwrap().remove(required);
                    tally.mutation("missing required", id, &schema, args, "/");
                }
                let mut args = valid.clone();
                args["keel_unexpected_argument"] = json!(1);
                tally.mutation("extra property", id, &schema, args, "/");
                if let Some(arg) = valid.as_object().unwrap().keys().find(|a| props.get(*a).is_some_and(|p| p.get("enum").is_some())) {
                    let mut args = valid.clone();
                    args[arg] = json!("keel-not-in-the-enum");
                    tally.mutation("out of enum", id, &schema, args, &format!("/{}", token(arg)));
                }
            }
        }
    }
    println!("BFCL calls: {} of {} accepted; the other {} answers contradict their own schema:", tally.accepted, tally.calls, tally.contradictions.len());
    for c in &tally.contradictions {
        println!("  {c}");
    }
    let mut kinds: Vec<_> = tally.mutations.iter().collect();
    kinds.sort();
    for (kind, (tried, rejected)) in kinds {
        println!("  {kind}: {rejected} of {tried} rejected at the failing path");
    }
    assert!(tally.calls > 1_500, "BFCL data not found or incomplete: {} calls", tally.calls);
    // Those BFCL answers (a boolean for a string enum, a genre outside the enum,
    // a required argument left out, …) are rightly rejected; they stay rare.
    assert!(tally.contradictions.len() * 100 <= tally.calls, "{} answers rejected", tally.contradictions.len());
    assert!(tally.failures.is_empty(), "{} failures:\n{}", tally.failures.len(), tally.failures.join("\n"));
}
