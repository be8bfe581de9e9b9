//! keel-lambda: runtime glue shared by every function's binary: tracing init,
//! API Gateway HTTP API (payload v2) events ↔ `ApiRequest`/`ApiResponse`,
//! authorizer responses, SQS partial batch failures and saga task errors.
//! Each function is one binary that recognizes the shape of its event.

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use keel_core::auth::Caller;
use keel_core::http::{ApiRequest, ApiResponse};
use keel_core::KeelError;
use lambda_runtime::Diagnostic;
use serde_json::{json, Map, Value};
use std::collections::HashMap;

pub use aws_lambda_events::sqs::{BatchItemFailure, SqsBatchResponse, SqsEvent, SqsMessage};

/// Logs as JSON lines at `RUST_LOG` (default info). Never log secrets, prompts
/// or document text at info.
pub fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt().json().with_env_filter(filter).without_time().try_init();
}

/// The kinds of event Keel's functions receive.
#[derive(Debug)]
pub enum Incoming {
    /// An HTTP API request (payload v2) behind the authorizer.
    Http(ApiRequest),
    /// An HTTP API Lambda authorizer request (payload v2).
    Authorize(ApiRequest),
    /// An SQS batch.
    Queue(SqsEvent),
    /// A saga task input from Step Functions.
    Task(Value),
}

/// Recognizes an event by its shape.
pub fn classify(event: Value) -> Result<Incoming, KeelError> {
    if event.get("Records").is_some() {
        let batch: SqsEvent = serde_json::from_value(event)
            .map_err(|e| KeelError::BadRequest(format!("unreadable SQS event: {e}")))?;
        return Ok(Incoming::Queue(batch));
    }
    if event.get("type").and_then(Value::as_str) == Some("REQUEST") && event.get("routeArn").is_some() {
        return Ok(Incoming::Authorize(api_request(&event)?));
    }
    if event.pointer("/requestContext/http").is_some() {
        return Ok(Incoming::Http(api_request(&event)?));
    }
    if event.get("step").is_some() {
        return Ok(Incoming::Task(event));
    }
    Err(KeelError::BadRequest("unrecognized event shape".into()))
}

fn api_request(event: &Value) -> Result<ApiRequest, KeelError> {
    let text = |p: &str| event.pointer(p).and_then(Value::as_str).unwrap_or("").to_string();
    let strings = |p: &str| -> HashMap<String, String> {
        event
            .pointer(p)
            .and_then(Value::as_object)
            .map(|m| {
                m.iter()
                    .filter_map(|(k, v)| v.as_str().map(|s| (k.to_ascii_lowercase(), s.to_string())))
                    .collect()
            })
            .unwrap_or_default()
    };
    let body = match event.get("body").and_then(Value::as_str) {
        None => Vec::new(),
        Some(b) if event.get("isBase64Encoded").and_then(Value::as_bool) == Some(true) => STANDARD
            .decode(b)
            .map_err(|_| KeelError::BadRequest("body is not valid base64".into()))?,
        Some(b) => b.as_bytes().to_vec(),
    };
    let caller = match event.pointer("/requestContext/authorizer/lambda").and_then(Value::as_object) {
        Some(ctx) => Some(Caller::from_context(&ctx.iter().map(|(k, v)| (k.clone(), v.clone())).collect())?),
        None => None,
    };
    // Query names keep their case; headers are lower-cased.
    let query = event
        .get("queryStringParameters")
        .and_then(Value::as_object)
        .map(|m| m.iter().filter_map(|(k, v)| v.as_str().map(|s| (k.clone(), s.to_string()))).collect())
        .unwrap_or_default();
    Ok(ApiRequest {
        method: text("/requestContext/http/method"),
        path: text("/rawPath"),
        query,
        headers: strings("/headers"),
        body,
        request_id: text("/requestContext/requestId"),
        caller,
    })
}

/// An `ApiResponse` as the HTTP API payload v2 response.
pub fn http_response(response: ApiResponse) -> Value {
    let headers: Map<String, Value> = response.headers.into_iter().map(|(k, v)| (k, Value::String(v))).collect();
    match String::from_utf8(response.body) {
        Ok(text) => json!({"statusCode": response.status, "headers": headers, "body": text, "isBase64Encoded": false}),
        Err(e) => json!({
            "statusCode": response.status,
            "headers": headers,
            "body": STANDARD.encode(e.into_bytes()),
            "isBase64Encoded": true
        }),
    }
}

/// The authorizer's simple response: allow with the caller as context, or deny.
pub fn authorizer_response(caller: Option<&Caller>) -> Value {
    match caller {
        Some(c) => json!({"isAuthorized": true, "context": c.to_context()}),
        None => json!({"isAuthorized": false}),
    }
}

/// Names the failed messages: SQS redelivers only those (and, past
/// maxReceiveCount, moves them to the DLQ); the rest of the batch is done.
pub fn batch_response(failed_message_ids: Vec<String>) -> SqsBatchResponse {
    let mut response = SqsBatchResponse::default();
    response.batch_item_failures = failed_message_ids
        .into_iter()
        .map(|id| {
            let mut f = BatchItemFailure::default();
            f.item_identifier = id;
            f
        })
        .collect();
    response
}

/// A saga task error as Step Functions sees it: the error name drives the
/// state machine's Retry (`Keel.Retryable`) and Catch (`Keel.Failed`).
pub fn task_error(error: &KeelError) -> Diagnostic {
    Diagnostic {
        error_type: if error.is_retryable() { "Keel.Retryable" } else { "Keel.Failed" }.into(),
        error_message: error.to_string(),
    }
}

/// Runs the Lambda runtime loop with one handler for every event shape.
pub async fn serve<F, Fut>(handler: F) -> Result<(), lambda_runtime::Error>
where
    F: Fn(Incoming) -> Fut,
    Fut: std::future::Future<Output = Result<Value, Diagnostic>>,
{
    let handler = &handler;
    lambda_runtime::run(lambda_runtime::service_fn(move |event: lambda_runtime::LambdaEvent<Value>| async move {
        match classify(event.payload) {
            Ok(incoming) => handler(incoming).await,
            Err(e) => Err(Diagnostic { error_type: "Keel.BadEvent".into(), error_message: e.to_string() }),
        }
    }))
    .await
}

/// The error for an event this function has no handler for.
pub fn unsupported(incoming: &Incoming) -> Diagnostic {
    let kind = match incoming {
        Incoming::Http(_) => "HTTP request",
        Incoming::Authorize(_) => "authorizer request",
        Incoming::Queue(_) => "SQS batch",
        Incoming::Task(_) => "saga task",
    };
    Diagnostic { error_type: "Keel.BadEvent".into(), error_message: format!("this function does not take a {kind}") }
}

/// SQS messages as the queue-neutral `QueueMessage` the consumers take.
pub fn queue_messages(batch: SqsEvent) -> Vec<keel_core::ports::QueueMessage> {
    batch
        .records
        .into_iter()
        .map(|m| keel_core::ports::QueueMessage {
            message_id: m.message_id.unwrap_or_default(),
            receipt: m.receipt_handle.unwrap_or_default(),
            body: m.body.unwrap_or_default(),
            attributes: m
                .message_attributes
                .into_iter()
                .filter_map(|(k, v)| v.string_value.map(|s| (k, s)))
                .collect(),
            receive_count: m.attributes.get("ApproximateReceiveCount").and_then(|c| c.parse().ok()).unwrap_or(1),
        })
        .collect()
}

/// Serializes a handler's result for the runtime.
pub fn to_json<T: serde::Serialize>(value: &T) -> Result<Value, Diagnostic> {
    serde_json::to_value(value).map_err(|e| Diagnostic { error_type: "Keel.Internal".into(), error_message: e.to_string() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_event_round_trip() {
        let event = json!({
            "version": "2.0", "rawPath": "/v1/search", "rawQueryString": "",
            "headers": {"Content-Type": "application/json"},
            "queryStringParameters": {"from": "2026-01-01"},
            "requestContext": {"http": {"method": "POST"}, "requestId": "r1",
                "authorizer": {"lambda": {"tenant": "acme", "principal": "ann", "roles": "member", "groups": "", "throttled": false}}},
            "body": "eyJxdWVyeSI6ImEifQ==", "isBase64Encoded": true
        });
        let Incoming::Http(req) = classify(event).unwrap() else { panic!("not http") };
        assert_eq!((req.method.as_str(), req.path.as_str()), ("POST", "/v1/search"));
        assert_eq!(req.body, br#"{"query":"a"}"#);
        assert_eq!(req.headers.get("content-type").map(String::as_str), Some("application/json"));
        assert_eq!(req.query.get("from").map(String::as_str), Some("2026-01-01"));
        assert_eq!(req.caller.unwrap().principal, "ann");
        let out = http_response(ApiResponse::ok(&json!({"a": 1})).with_request_id("r1"));
        assert_eq!(out["statusCode"], 200);
        assert_eq!(out["headers"]["x-request-id"], "r1");
        assert!(classify(json!({"what": 1})).is_err());
    }

    #[test]
    fn batch_failures_name_only_failed_messages() {
        let r = batch_response(vec!["m2".into()]);
        let v = serde_json::to_value(r).unwrap();
        assert_eq!(v, json!({"batchItemFailures": [{"itemIdentifier": "m2"}]}));
    }
}
