//! JSON Schema validation of tool arguments (draft 2020-12 by default).

use keel_core::KeelError;
use serde_json::Value;

/// Checks that a tool's input schema compiles.
pub fn check_schema(schema: &Value) -> Result<(), KeelError> {
    jsonschema::validator_for(schema)
        .map(|_| ())
        .map_err(|e| KeelError::BadRequest(format!("input_schema is not a valid JSON Schema: {e}")))
}

/// Validates `args`; the error names the JSON pointer of the first failing value.
pub fn validate_args(schema: &Value, args: &Value) -> Result<(), KeelError> {
    let validator = jsonschema::validator_for(schema)
        .map_err(|e| KeelError::Internal(format!("stored schema does not compile: {e}")))?;
    let first = validator.iter_errors(args).next().map(|e| (e.instance_path().to_string(), e.to_string()));
    match first {
        None => Ok(()),
        Some((path, message)) => Err(KeelError::Unprocessable {
            path: if path.is_empty() { "/".into() } else { path },
            message: format!("arguments do not match the tool's input schema: {message}"),
        }),
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
}
