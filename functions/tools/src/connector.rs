//! HTTP connectors: where a governed action actually changes something.
//! Every call carries the action's idempotency key, has a timeout, is retried
//! with jittered backoff on transient failures, and goes through a circuit
//! breaker per tenant and connector host, so a failing system is left alone
//! for a while instead of being hammered by every action and retry, and one
//! tenant's calls can never open the breaker another tenant's calls go
//! through. Redirects are not followed (a 3xx is the connector's answer), and
//! what is kept of an answer is bounded in size and nesting.

use crate::ConnectorSpec;
use keel_core::ids::TenantId;
use keel_core::egress::{EgressPins, EgressPolicy};
use keel_egress::{read_bounded, Egress, EgressError};
use keel_core::limits::{text_depth, MAX_JSON_DEPTH};
use keel_core::resilience::{BreakerSettings, Breakers, RetryPolicy};
use keel_core::KeelError;
use serde_json::{json, Value};
use std::time::Duration;

/// Most bytes of a connector's answer kept (in the action record, the
/// preview and the audit log); the rest is dropped and the answer says so.
pub const MAX_RESPONSE_BYTES: usize = 16 * 1024;

fn check_spec(spec: &ConnectorSpec) -> Result<(), KeelError> {
    if !(spec.url.starts_with("https://") || spec.url.starts_with("http://")) {
        return Err(KeelError::BadRequest(format!("connector url {:?} must be http(s)", spec.url)));
    }
    if !matches!(spec.method.as_str(), "POST" | "PUT" | "PATCH" | "DELETE") {
        return Err(KeelError::BadRequest("connector method must be POST, PUT, PATCH or DELETE".into()));
    }
    Ok(())
}

pub struct Connectors {
    http: Egress,
    retry: RetryPolicy,
    breakers: Breakers,
}

/// The connector's scheme, host and port.
fn host_of(url: &str) -> &str {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let end = rest.find('/').unwrap_or(rest.len());
    &url[..url.len() - rest.len() + end]
}

/// A breaker's name: the tenant and the connector host.
fn breaker_name(tenant: &TenantId, url: &str) -> String {
    format!("{tenant} {}", host_of(url))
}

/// Why one attempt failed: only the remote system's failures count against its breaker.
enum Failure {
    /// Unreachable, timed out, 429 or 5xx: retried, and counted.
    Remote(KeelError),
    /// The connector refused it (4xx, 3xx), or the egress rules did: final,
    /// and nothing says the host is failing.
    Refused(KeelError),
}

impl Connectors {
    pub fn new(timeout: Duration, egress: EgressPolicy, retry: RetryPolicy, breakers: BreakerSettings) -> Result<Self, KeelError> {
        Ok(Self { http: Egress::new(timeout, egress)?, retry, breakers: Breakers::new(breakers) })
    }

    /// Checks a connector at registration: its method and scheme (400), then
    /// where it points (422 naming the egress rule, at `path`, the field that
    /// holds the URL).
    pub async fn check(&self, spec: &ConnectorSpec, pins: Option<&EgressPins>, path: String) -> Result<(), KeelError> {
        check_spec(spec)?;
        self.http.vet(&spec.url, pins).await.map_err(|r| KeelError::Unprocessable { path, message: r.to_string() })
    }

    /// Calls the connector, retrying transient failures (timeouts, connection
    /// errors, 429, 5xx) with backoff; other answers are final. An open
    /// breaker fails fast with a retryable error: the saga tries again later.
    /// A target the egress rules refuse (`pins`: the tenant's allowed hosts)
    /// fails at once, never retried.
    pub async fn call(&self, tenant: &TenantId, pins: Option<&EgressPins>, spec: &ConnectorSpec, idempotency_key: &str, body: &Value) -> Result<Value, KeelError> {
        let breaker = breaker_name(tenant, &spec.url);
        let mut last = KeelError::Unavailable("no attempt was made".into());
        for attempt in 0..self.retry.attempts.max(1) {
            if attempt > 0 {
                tokio::time::sleep(self.retry.backoff(attempt - 1)).await;
            }
            // Built before the breaker is asked: a request that cannot be built never reaches the host.
            let request = self.request(spec, idempotency_key, body)?;
            if !self.breakers.try_acquire(&breaker) {
                return Err(KeelError::Unavailable(format!("connector {} is failing; its circuit breaker is open", host_of(&spec.url))));
            }
            match self.call_once(request, pins).await {
                Ok(answer) => {
                    self.breakers.record(&breaker, true);
                    return Ok(answer);
                }
                Err(Failure::Remote(e)) => {
                    self.breakers.record(&breaker, false);
                    last = e;
                }
                Err(Failure::Refused(e)) => {
                    // The host answered: it is not failing.
                    self.breakers.record(&breaker, true);
                    return Err(e);
                }
            }
        }
        Err(last)
    }

    /// The request the connector gets; one that cannot be built (say, a header
    /// value HTTP forbids) is the caller's error, final.
    fn request(&self, spec: &ConnectorSpec, idempotency_key: &str, body: &Value) -> Result<reqwest::Request, KeelError> {
        let method = reqwest::Method::from_bytes(spec.method.as_bytes()).map_err(|_| KeelError::BadRequest("bad connector method".into()))?;
        let mut request = self.http.request(method, &spec.url).header("Idempotency-Key", idempotency_key);
        if let Some(context) = keel_core::trace::current() {
            request = request.header("traceparent", context.child()).header("x-request-id", context.request_id);
        }
        request
            .json(body)
            .build()
            .map_err(|e| KeelError::BadRequest(format!("connector request cannot be built: {e}")))
    }

    async fn call_once(&self, request: reqwest::Request, pins: Option<&EgressPins>) -> Result<Value, Failure> {
        let span = tracing::info_span!("connector.call", otel.name = "connector.call", http.host = %request.url().host_str().unwrap_or(""));
        let mut response = tracing::Instrument::instrument(self.http.execute(request, pins), span).await.map_err(|e| match e {
            EgressError::Refused(r) => Failure::Refused(r.into()),
            EgressError::Failed(e) => Failure::Remote(KeelError::Unavailable(format!("connector unreachable: {e}"))),
        })?;
        let status = response.status();
        let (bytes, truncated) = read_bounded(&mut response, MAX_RESPONSE_BYTES).await.map_err(Failure::Remote)?;
        let answer = kept_answer(&bytes, truncated);
        if status.is_success() {
            let mut out = json!({"status": status.as_u16(), "body": answer});
            if truncated {
                out["truncated"] = json!(true);
            }
            Ok(out)
        } else if status.as_u16() == 429 || status.is_server_error() {
            Err(Failure::Remote(KeelError::Unavailable(format!("connector answered {status}"))))
        } else {
            Err(Failure::Refused(KeelError::BadRequest(format!("connector refused the action: {status} {answer}"))))
        }
    }
}

/// What is kept of an answer: its JSON when it is whole and nests within
/// `MAX_JSON_DEPTH`, else its text (cut at a character boundary).
fn kept_answer(bytes: &[u8], truncated: bool) -> Value {
    if !truncated && text_depth(bytes) <= MAX_JSON_DEPTH {
        if let Ok(v) = serde_json::from_slice::<Value>(bytes) {
            return v;
        }
    }
    Value::String(String::from_utf8_lossy(bytes).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn breakers_are_per_tenant_and_connector_host() {
        assert_eq!(host_of("https://api.example.com:8443/v1/refunds?x=1"), "https://api.example.com:8443");
        assert_eq!(host_of("http://127.0.0.1:9000"), "http://127.0.0.1:9000");
        let (acme, beta) = (TenantId::parse("acme").unwrap(), TenantId::parse("beta").unwrap());
        assert_ne!(breaker_name(&acme, "http://h:1/a"), breaker_name(&beta, "http://h:1/a"));
        assert_eq!(breaker_name(&acme, "http://h:1/a"), breaker_name(&acme, "http://h:1/b"));
    }

    #[test]
    fn kept_answers_are_whole_json_or_text() {
        assert_eq!(kept_answer(br#"{"a":1}"#, false), json!({"a": 1}));
        assert_eq!(kept_answer(br#"{"a":1"#, true), json!(r#"{"a":1"#));
        let deep = format!("{}{}", "[".repeat(40), "]".repeat(40));
        assert_eq!(kept_answer(deep.as_bytes(), false), json!(deep));
    }
}
