//! Framework-neutral HTTP request and response. The Lambda glue converts API
//! Gateway events to and from these; the local stack converts hyper's. Errors
//! become `{"error":{"code","message","request_id"}}` here and nowhere else.

use crate::auth::Caller;
use crate::error::KeelError;
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::{json, Value};
use std::collections::HashMap;

/// Default body limit for JSON requests (documents have their own).
pub const DEFAULT_BODY_LIMIT: usize = 64 * 1024;

#[derive(Clone, Debug, Default)]
pub struct ApiRequest {
    pub method: String,
    pub path: String,
    pub query: HashMap<String, String>,
    /// Lower-case header names.
    pub headers: HashMap<String, String>,
    pub body: Vec<u8>,
    pub request_id: String,
    /// Set by the authorizer; `None` only before it ran.
    pub caller: Option<Caller>,
}

impl ApiRequest {
    /// Path segments after the leading `/`, e.g. `["v1", "documents", "a"]`.
    pub fn segments(&self) -> Vec<&str> {
        self.path.trim_matches('/').split('/').filter(|s| !s.is_empty()).collect()
    }

    /// Parses the body as JSON of type `T`, refusing bodies over `limit` bytes
    /// or nested deeper than `limits::MAX_JSON_DEPTH`.
    pub fn json<T: DeserializeOwned>(&self, limit: usize) -> Result<T, KeelError> {
        crate::limits::parse_json(&self.body, limit, "request body")
    }

    pub fn caller(&self) -> Result<&Caller, KeelError> {
        self.caller
            .as_ref()
            .ok_or_else(|| KeelError::Unauthorized("missing credentials".into()))
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct ApiResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl ApiResponse {
    pub fn json(status: u16, value: &impl Serialize) -> Self {
        let body = serde_json::to_vec(value).unwrap_or_else(|_| b"{}".to_vec());
        Self {
            status,
            headers: vec![("content-type".into(), "application/json".into())],
            body,
        }
    }

    pub fn ok(value: &impl Serialize) -> Self {
        Self::json(200, value)
    }

    pub fn text(status: u16, content_type: &str, body: String) -> Self {
        Self {
            status,
            headers: vec![("content-type".into(), content_type.into())],
            body: body.into_bytes(),
        }
    }

    pub fn from_error(error: &KeelError, request_id: &str) -> Self {
        if error.status() >= 500 {
            tracing::error!(%error, request_id, "request failed");
        }
        let message = match error {
            // Internal details stay in the log.
            KeelError::Internal(_) => "internal error".to_string(),
            other => other.to_string(),
        };
        let mut body = json!({"error": {"code": error.code(), "message": message, "request_id": request_id}});
        if let KeelError::Unprocessable { path, .. } = error {
            body["error"]["path"] = Value::String(path.clone());
        }
        Self::json(error.status(), &body)
    }

    /// Adds `x-request-id` (every response carries it).
    pub fn with_request_id(mut self, request_id: &str) -> Self {
        self.headers.retain(|(k, _)| k != "x-request-id");
        self.headers.push(("x-request-id".into(), request_id.into()));
        self
    }

    pub fn json_body(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }
}

/// Turns a handler result into a response carrying the request id.
pub fn respond(result: Result<ApiResponse, KeelError>, request_id: &str) -> ApiResponse {
    match result {
        Ok(r) => r,
        Err(e) => ApiResponse::from_error(&e, request_id),
    }
    .with_request_id(request_id)
}

pub fn not_found(req: &ApiRequest) -> KeelError {
    KeelError::NotFound(format!("no route for {} {}", req.method, req.path))
}

/// Runs one HTTP handler the same way in Lambda and locally: a caller the
/// authorizer marked as over its rate limit gets 429, errors become JSON, and
/// the response carries `x-request-id`.
pub async fn dispatch<F, Fut>(req: ApiRequest, handler: F) -> ApiResponse
where
    F: FnOnce(ApiRequest) -> Fut,
    Fut: std::future::Future<Output = Result<ApiResponse, KeelError>>,
{
    let request_id = req.request_id.clone();
    let result = match &req.caller {
        Some(c) if c.throttled => Err(KeelError::TooManyRequests(
            "rate limit exceeded for this tenant; retry in a minute".into(),
        )),
        _ => handler(req).await,
    };
    respond(result, &request_id)
}
