//! HTTP connectors: where a governed action actually changes something.
//! Every call carries the action's idempotency key, has a timeout, is retried
//! with jittered backoff on transient failures, and goes through a circuit
//! breaker per connector host, so a failing system is left alone for a while
//! instead of being hammered by every action and retry.

use crate::ConnectorSpec;
use keel_core::resilience::{BreakerSettings, Breakers, RetryPolicy};
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
    retry: RetryPolicy,
    breakers: Breakers,
}

/// The breaker's name for a connector: its scheme, host and port.
fn host_of(url: &str) -> &str {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let end = rest.find('/').unwrap_or(rest.len());
    &url[..url.len() - rest.len() + end]
}

impl Connectors {
    pub fn new(timeout: Duration, retry: RetryPolicy, breakers: BreakerSettings) -> Result<Self, KeelError> {
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .build()
            .map_err(|e| KeelError::Internal(format!("http client: {e}")))?;
        Ok(Self { http, retry, breakers: Breakers::new(breakers) })
    }

    /// Calls the connector, retrying transient failures (timeouts, connection
    /// errors, 429, 5xx) with backoff; other 4xx are final. An open breaker
    /// fails fast with a retryable error: the saga tries again later.
    pub async fn call(&self, spec: &ConnectorSpec, idempotency_key: &str, body: &Value) -> Result<Value, KeelError> {
        let host = host_of(&spec.url);
        let mut last = KeelError::Unavailable("no attempt was made".into());
        for attempt in 0..self.retry.attempts.max(1) {
            if attempt > 0 {
                tokio::time::sleep(self.retry.backoff(attempt - 1)).await;
            }
            if !self.breakers.try_acquire(host) {
                return Err(KeelError::Unavailable(format!("connector {host} is failing; its circuit breaker is open")));
            }
            let result = self.call_once(spec, idempotency_key, body).await;
            self.breakers.record(host, !matches!(&result, Err(e) if e.is_retryable()));
            match result {
                Err(e) if e.is_retryable() => last = e,
                other => return other,
            }
        }
        Err(last)
    }

    async fn call_once(&self, spec: &ConnectorSpec, idempotency_key: &str, body: &Value) -> Result<Value, KeelError> {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn breakers_are_per_connector_host() {
        assert_eq!(host_of("https://api.example.com:8443/v1/refunds?x=1"), "https://api.example.com:8443");
        assert_eq!(host_of("http://127.0.0.1:9000"), "http://127.0.0.1:9000");
    }
}
