//! HTTP connectors: where a governed action actually changes something.

use crate::ConnectorSpec;
use keel_core::KeelError;
use serde_json::{json, Value};
use std::time::Duration;

/// Longest connector response kept in the action record.
const MAX_RESPONSE_CHARS: usize = 4_000;

pub fn check_spec(spec: &ConnectorSpec) -> Result<(), KeelError> {
    if !(spec.url.starts_with("https://") || spec.url.starts_with("http://")) {
        return Err(KeelError::BadRequest(format!("connector url {:?} must be http(s)", spec.url)));
    }
    if !matches!(spec.method.as_str(), "POST" | "PUT" | "PATCH" | "DELETE") {
        return Err(KeelError::BadRequest("connector method must be POST, PUT, PATCH or DELETE".into()));
    }
    Ok(())
}

pub struct Connectors {
    http: reqwest::Client,
}

impl Connectors {
    pub fn new(timeout: Duration) -> Result<Self, KeelError> {
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .build()
            .map_err(|e| KeelError::Internal(format!("http client: {e}")))?;
        Ok(Self { http })
    }

    /// Calls the connector with the idempotency key. Timeouts, connection
    /// errors, 429 and 5xx are retryable; other 4xx are not.
    pub async fn call(&self, spec: &ConnectorSpec, idempotency_key: &str, body: &Value) -> Result<Value, KeelError> {
        let method = reqwest::Method::from_bytes(spec.method.as_bytes())
            .map_err(|_| KeelError::BadRequest("bad connector method".into()))?;
        let response = self
            .http
            .request(method, &spec.url)
            .header("Idempotency-Key", idempotency_key)
            .json(body)
            .send()
            .await
            .map_err(|e| KeelError::Unavailable(format!("connector unreachable: {e}")))?;
        let status = response.status();
        let text = response.text().await.unwrap_or_default();
        let body: Value = serde_json::from_str(&text)
            .unwrap_or_else(|_| Value::String(text.chars().take(MAX_RESPONSE_CHARS).collect()));
        if status.is_success() {
            Ok(json!({"status": status.as_u16(), "body": body}))
        } else if status.as_u16() == 429 || status.is_server_error() {
            Err(KeelError::Unavailable(format!("connector answered {status}")))
        } else {
            Err(KeelError::BadRequest(format!("connector refused the action: {status} {body}")))
        }
    }
}
