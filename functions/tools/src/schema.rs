//! JSON Schema validation of tool arguments (draft 2020-12 by default).

use jsonschema::Validator;
use keel_core::warm_cache::WarmCache;
use keel_core::KeelError;
use serde_json::Value;
use std::sync::Arc;

/// How tool input schemas are compiled: draft 2020-12 unless the schema's
/// `$schema` names another (the crate's default; forcing the draft would
/// ignore a custom meta-schema's vocabularies); `format` is an annotation,
/// as 2020-12 says; and a `$ref` outside the schema and the standard
/// meta-schemas fails to compile, so a schema can never make Keel fetch a URL.
pub fn options() -> jsonschema::ValidationOptions<'static> {
    jsonschema::options()
}

/// Checks that a tool's input schema compiles and that validating against it
/// stays cheap (`schema_cost`).
pub fn check_schema(schema: &Value) -> Result<(), KeelError> {
    options()
        .build(schema)
        .map_err(|e| KeelError::BadRequest(format!("input_schema is not a valid JSON Schema: {e}")))?;
    crate::schema_cost::check(schema).map_err(|m| KeelError::BadRequest(format!("input_schema is refused: {m}")))
}

/// Validates `args`; the error names the JSON pointer of the first failing value.
pub fn validate_args(schema: &Value, args: &Value) -> Result<(), KeelError> {
    validate(&compile(schema)?, args)
}

fn compile(schema: &Value) -> Result<Validator, KeelError> {
    options().build(schema).map_err(|e| KeelError::Internal(format!("stored schema does not compile: {e}")))
}

/// `validate_args` with a compiled schema.
pub fn validate(validator: &Validator, args: &Value) -> Result<(), KeelError> {
    let first = validator.iter_errors(args).next().map(|e| (e.instance_path().to_string(), e.to_string()));
    match first {
        None => Ok(()),
        Some((path, message)) => Err(KeelError::Unprocessable {
            path: if path.is_empty() { "/".into() } else { path },
            message: format!("arguments do not match the tool's input schema: {message}"),
        }),
    }
}

/// `validate` on the blocking pool, so a costly validation holds no async
/// worker other tenants' requests wait for.
pub async fn validate_off_workers(validator: Arc<Validator>, args: Value) -> Result<(), KeelError> {
    tokio::task::spawn_blocking(move || validate(&validator, &args))
        .await
        .map_err(|e| KeelError::Internal(format!("validation task: {e}")))?
}

/// Compiled input schemas of the tool versions a warm function has seen:
/// compiling a schema costs far more than validating against it, and a
/// tool version's schema never changes.
pub struct Compiled {
    validators: WarmCache<String, Arc<Validator>>,
}

/// Tool versions kept compiled at most.
const COMPILED_VERSIONS: usize = 1_000;

impl Default for Compiled {
    fn default() -> Self {
        Self { validators: WarmCache::new(None, COMPILED_VERSIONS) }
    }
}

impl Compiled {
    /// The compiled schema of a tool version; `key` names the tenant's
    /// incarnation, the tool and its version (versions start again at 1 in
    /// a tenant created again under a deleted one's id).
    pub fn get(&self, key: &str, schema: &Value) -> Result<Arc<Validator>, KeelError> {
        if let Some(v) = self.validators.get(key) {
            return Ok(v);
        }
        let compiled = Arc::new(compile(schema)?);
        self.validators.insert(key.to_string(), compiled.clone());
        Ok(compiled)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn names_the_failing_path() {
        let schema = json!({"type": "object", "required": ["amount"], "additionalProperties": false,
            "properties": {"amount": {"type": "number", "maximum": 100}, "order": {"type": "object",
            "properties": {"id": {"type": "string"}}}}});
        assert!(validate_args(&schema, &json!({"amount": 5})).is_ok());
        let e = validate_args(&schema, &json!({"amount": 500})).unwrap_err();
        assert!(matches!(e, KeelError::Unprocessable { ref path, .. } if path == "/amount"), "{e:?}");
        let e = validate_args(&schema, &json!({"amount": 1, "order": {"id": 7}})).unwrap_err();
        assert!(matches!(e, KeelError::Unprocessable { ref path, .. } if path == "/order/id"), "{e:?}");
        let e = validate_args(&schema, &json!({})).unwrap_err();
        assert!(matches!(e, KeelError::Unprocessable { ref path, .. } if path == "/"), "{e:?}");
        assert!(check_schema(&json!({"type": "nope"})).is_err());
    }

    #[test]
    fn a_schema_cannot_make_keel_fetch_a_url() {
        // A listener that would see the fetch: nothing may connect to it.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let url = format!("http://127.0.0.1:{}/schema.json", listener.local_addr().unwrap().port());
        assert!(check_schema(&json!({"$ref": url})).is_err());
        assert!(listener.accept().is_err(), "the schema's $ref was fetched");
        // The standard meta-schemas are known without fetching.
        assert!(check_schema(&json!({"$ref": "https://json-schema.org/draft/2020-12/schema"})).is_ok());
    }
}
