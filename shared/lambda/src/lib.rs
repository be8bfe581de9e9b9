//! keel-lambda: runtime glue shared by every function's binary. A function
//! is one binary that serves its declared routes (an axum `Router`, through
//! `lambda_http`'s typed API Gateway events) and whatever other events it
//! takes: authorizer requests, SQS batches, saga tasks.

use aws_lambda_events::apigw::{ApiGatewayV2CustomAuthorizerV2Request, ApiGatewayV2httpRequest, ApiGatewayV2httpResponse};
use aws_lambda_events::encodings::Body as EventBody;
use axum::body::Body;
use axum::http::{header, Request};
use axum::Router;
use keel_core::auth::Caller;
use keel_core::http::RequestId;
use keel_core::KeelError;
use lambda_http::request::LambdaRequest;
use lambda_runtime::{Diagnostic, FunctionResponse, LambdaEvent, MetadataPrelude, StreamResponse};
use serde_json::{json, Value};
use std::future::Future;
use tower::ServiceExt;

pub use aws_lambda_events::sqs::{BatchItemFailure, SqsBatchResponse, SqsEvent, SqsMessage};

pub mod emf;
pub mod otel;

/// Logs as JSON lines at `RUST_LOG` (default info). Never log secrets, prompts
/// or document text at info.
pub fn init_tracing() {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let logs = tracing_subscriber::fmt::layer().json().without_time();
    // The provider lives as long as the process: spans are exported as they end.
    let spans = otel::from_env().map(otel::layer);
    let _ = tracing_subscriber::registry().with(filter).with(logs).with(spans).try_init();
}

/// The events other than HTTP requests that Keel's functions receive.
#[derive(Debug)]
pub enum Event {
    /// An HTTP API Lambda authorizer request (payload v2).
    Authorize(Box<ApiGatewayV2CustomAuthorizerV2Request>),
    /// An SQS batch.
    Queue(SqsEvent),
    /// A saga task input from Step Functions.
    Task(Value),
}

/// What a function answers: a buffered payload, or (to a function URL
/// request answered with server-sent events) a stream.
pub type Answer = FunctionResponse<Value, axum::body::BodyDataStream>;

/// The handler of a function's non-HTTP events.
pub type Handle = std::sync::Arc<dyn Fn(Event) -> std::pin::Pin<Box<dyn Future<Output = Result<Value, Diagnostic>> + Send>> + Send + Sync>;

/// A function as Lambda runs it: its HTTP API (if it has routes) and its
/// other events' handler. Built once at init by the function's crate, so a
/// test can invoke exactly what Lambda invokes.
pub struct Function {
    pub api: Option<Router>,
    pub handle: Handle,
}

impl Function {
    pub fn new<F, Fut>(api: Option<Router>, handle: F) -> Self
    where
        F: Fn(Event) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Value, Diagnostic>> + Send + 'static,
    {
        Self { api, handle: std::sync::Arc::new(move |event| Box::pin(handle(event))) }
    }

    /// One invocation with `payload` (a Lambda event's JSON), as the runtime would make it.
    pub async fn invoke(&self, payload: Value) -> Result<Answer, Diagnostic> {
        let handle = |event| (self.handle)(event);
        invoke(&self.api, &handle, None, payload, "local", std::io::sink()).await
    }

    /// The Lambda runtime loop for this function.
    pub async fn run(self) -> Result<(), lambda_runtime::Error> {
        let handle = self.handle;
        run(self.api, move |event| handle(event)).await
    }
}

/// Runs the Lambda runtime loop: HTTP API requests (and function URL
/// requests) go to `api`, every other event to `handle`.
pub async fn run<F, Fut>(api: Option<Router>, handle: F) -> Result<(), lambda_runtime::Error>
where
    F: Fn(Event) -> Fut,
    Fut: Future<Output = Result<Value, Diagnostic>>,
{
    let function = std::env::var("AWS_LAMBDA_FUNCTION_NAME").unwrap_or_else(|_| "local".into());
    let emf = emf::Emf::install(&function);
    let (answered, received) = tokio::sync::mpsc::unbounded_channel::<()>();
    let extension = match after_response_extension(received).await {
        Ok(extension) => {
            keel_core::after::enable();
            Some(extension)
        }
        // Where no Extensions API answers, the final writes are made before the response.
        Err(error) => {
            tracing::warn!(%error, "no internal extension: writes are made before each response");
            None
        }
    };
    let (api, handle, emf, answered) = (&api, &handle, &emf, &answered);
    let runtime = lambda_runtime::run(lambda_runtime::service_fn(move |event: LambdaEvent<Value>| async move {
        let answer = invoke(api, handle, emf.as_ref(), event.payload, &event.context.request_id, std::io::stdout()).await;
        Ok::<_, Diagnostic>(signal_when_sent(answer?, answered.clone()))
    }));
    match extension {
        Some(extension) => tokio::try_join!(runtime, extension).map(|_| ()),
        None => runtime.await,
    }
}

/// Tells the extension when an invocation's answer is out: at once for a
/// buffered answer, at the end of its stream for a streamed one.
fn signal_when_sent(answer: Answer, answered: tokio::sync::mpsc::UnboundedSender<()>) -> Answer {
    match answer {
        FunctionResponse::BufferedResponse(v) => {
            let _ = answered.send(());
            FunctionResponse::BufferedResponse(v)
        }
        FunctionResponse::StreamingResponse(s) => {
            use tokio_stream::StreamExt;
            let tail = tokio_stream::once(Ok(axum::body::Bytes::new())).map(move |b: Result<_, axum::Error>| {
                let _ = answered.send(());
                b
            });
            let stream = Body::from_stream(s.stream.chain(tail)).into_data_stream();
            FunctionResponse::StreamingResponse(StreamResponse { metadata_prelude: s.metadata_prelude, stream })
        }
    }
}

/// An internal Lambda extension that holds the execution environment after
/// each invocation until the work it handed off (`keel_core::after`) has
/// finished: Lambda freezes an environment only once the runtime and every
/// extension have asked for the next event. `answered` says when an
/// invocation's answer is out. Registered here, at init; run beside the runtime.
async fn after_response_extension(
    answered: tokio::sync::mpsc::UnboundedReceiver<()>,
) -> Result<std::pin::Pin<Box<dyn Future<Output = Result<(), lambda_extension::Error>>>>, lambda_extension::Error> {
    let answered = std::sync::Arc::new(tokio::sync::Mutex::new(answered));
    let registered = lambda_extension::Extension::new()
        .with_extension_name("keel-after-response")
        .with_events(&["INVOKE"])
        .with_events_processor(lambda_extension::service_fn(move |event: lambda_extension::LambdaEvent| {
            let answered = answered.clone();
            async move {
                if event.next.is_invoke() {
                    answered.lock().await.recv().await;
                    keel_core::after::settled().await;
                }
                Ok::<(), lambda_extension::Error>(())
            }
        }))
        .register()
        .await?;
    Ok(Box::pin(registered.run()))
}

/// One invocation: the event served, then what it recorded written as EMF to `metrics_out`.
pub async fn invoke<F, Fut>(
    api: &Option<Router>,
    handle: &F,
    emf: Option<&emf::Emf>,
    payload: Value,
    request_id: &str,
    metrics_out: impl std::io::Write,
) -> Result<Answer, Diagnostic>
where
    F: Fn(Event) -> Fut,
    Fut: Future<Output = Result<Value, Diagnostic>>,
{
    if let Some(emf) = emf {
        emf.invocation_started();
    }
    let tenant = emf::event_tenant(&payload).map(str::to_string);
    let answer = if payload.pointer("/requestContext/http").is_some() && payload.get("routeArn").is_none() {
        match api {
            Some(api) => serve_http(api.clone(), payload).await,
            None => Err(unsupported("HTTP request")),
        }
    } else {
        match recognize(payload) {
            Ok(event) => handle(event).await.map(FunctionResponse::BufferedResponse),
            Err(e) => Err(bad_event(&e)),
        }
    };
    if let Some(emf) = emf {
        emf.flush(request_id, tenant.as_deref(), metrics_out);
    }
    otel::flush().await;
    answer
}

/// Recognizes a non-HTTP event by its shape.
pub fn recognize(event: Value) -> Result<Event, KeelError> {
    let unreadable = |kind: &str, e: serde_json::Error| KeelError::BadRequest(format!("unreadable {kind}: {e}"));
    if event.get("Records").is_some() {
        return serde_json::from_value(event).map(Event::Queue).map_err(|e| unreadable("SQS event", e));
    }
    if event.get("type").and_then(Value::as_str) == Some("REQUEST") && event.get("routeArn").is_some() {
        return serde_json::from_value(event).map(|r| Event::Authorize(Box::new(r))).map_err(|e| unreadable("authorizer request", e));
    }
    if event.get("step").is_some() {
        return Ok(Event::Task(event));
    }
    Err(KeelError::BadRequest("unrecognized event shape".into()))
}

/// An API Gateway (payload v2) or function URL event as an HTTP request,
/// with the authorizer's caller and API Gateway's request id in its
/// extensions; `true` when it came through a function URL.
pub fn http_request(payload: Value) -> Result<(Request<Body>, bool), KeelError> {
    let event: ApiGatewayV2httpRequest = serde_json::from_value(payload)?;
    let from_url = event.request_context.domain_name.as_deref().is_some_and(|d| d.contains(".lambda-url."));
    let request_id = event.request_context.request_id.clone().map(RequestId).unwrap_or_default();
    let caller = match event.request_context.authorizer.as_ref().filter(|a| !a.fields.is_empty()) {
        Some(authorizer) => Some(Caller::from_context(&authorizer.fields)?),
        None => None,
    };
    let stage = event.request_context.stage.clone().filter(|s| s != "$default");
    let (mut parts, body) = to_http_request(event)?.into_parts();
    // A named stage prefixes the path (lambda_http adds it where the event
    // lacks it); routes are declared without it.
    if let Some(stage) = stage {
        let prefix = format!("/{stage}");
        if let Some(rest) = parts.uri.path_and_query().and_then(|pq| pq.as_str().strip_prefix(&prefix)) {
            if rest.starts_with('/') {
                parts.uri = rest.parse().map_err(|_| KeelError::BadRequest("unreadable request path".into()))?;
            }
        }
    }
    parts.extensions.insert(request_id);
    if let Some(caller) = caller {
        parts.extensions.insert(caller);
    }
    Ok((Request::from_parts(parts, Body::from(body.to_vec())), from_url))
}

/// lambda_http's conversion, which panics on what it cannot turn into a URI
/// (a host or domain name that is no host name, a path or query no URI may
/// hold): such an event is refused here instead, whatever part is at fault.
fn to_http_request(event: ApiGatewayV2httpRequest) -> Result<lambda_http::Request, KeelError> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| lambda_http::Request::from(LambdaRequest::ApiGatewayV2(event))))
        .map_err(|_| KeelError::BadRequest("unreadable request: its host, path or query is no URI".into()))
}

/// Serves an HTTP event with `api`, answering as the event's origin expects.
async fn serve_http(api: Router, payload: Value) -> Result<Answer, Diagnostic> {
    let (request, from_url) = http_request(payload).map_err(|e| bad_event(&e))?;
    let response = match api.oneshot(request).await {
        Ok(r) => r,
        Err(never) => match never {},
    };
    let (parts, body) = response.into_parts();
    let streams = parts.headers.get(header::CONTENT_TYPE).is_some_and(|v| v.as_bytes().starts_with(b"text/event-stream"));
    if from_url && streams {
        let metadata_prelude = MetadataPrelude { status_code: parts.status, headers: parts.headers, cookies: vec![] };
        return Ok(FunctionResponse::StreamingResponse(StreamResponse { metadata_prelude, stream: body.into_data_stream() }));
    }
    let bytes = axum::body::to_bytes(body, usize::MAX).await.map_err(|e| bad_event(&KeelError::Internal(e.to_string())))?;
    let mut out = ApiGatewayV2httpResponse::default();
    out.status_code = i64::from(parts.status.as_u16());
    out.headers = parts.headers;
    (out.body, out.is_base64_encoded) = match String::from_utf8(bytes.to_vec()) {
        Ok(text) => (Some(EventBody::Text(text)), false),
        Err(e) => (Some(EventBody::Binary(e.into_bytes())), true),
    };
    let value = serde_json::to_value(out).map_err(|e| bad_event(&KeelError::from(e)))?;
    Ok(FunctionResponse::BufferedResponse(value))
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

fn bad_event(error: &KeelError) -> Diagnostic {
    Diagnostic { error_type: "Keel.BadEvent".into(), error_message: error.to_string() }
}

/// The error for an event this function has no handler for.
pub fn unsupported(kind: &str) -> Diagnostic {
    Diagnostic { error_type: "Keel.BadEvent".into(), error_message: format!("this function does not take a {kind}") }
}

impl Event {
    /// The error for this event when the function has no handler for it.
    pub fn unsupported(&self) -> Diagnostic {
        unsupported(match self {
            Event::Authorize(_) => "authorizer request",
            Event::Queue(_) => "SQS batch",
            Event::Task(_) => "saga task",
        })
    }
}

/// SQS messages as the queue-neutral `QueueMessage` the consumers take.
pub fn queue_messages(batch: SqsEvent) -> Vec<keel_core::ports::QueueMessage> {
    records_as_messages(batch.records)
}

/// SQS records (some of a batch) as `QueueMessage`s.
pub fn records_as_messages(records: Vec<SqsMessage>) -> Vec<keel_core::ports::QueueMessage> {
    records
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
    use axum::routing::post;
    use axum::Extension;

    async fn echo(Extension(caller): Extension<Caller>, Extension(id): Extension<RequestId>, body: String) -> String {
        format!("{} {} {body}", caller.principal, id.0)
    }

    #[tokio::test]
    async fn an_api_gateway_event_reaches_the_router_with_its_caller_and_request_id() {
        let event = json!({
            "version": "2.0", "routeKey": "POST /v1/search", "rawPath": "/v1/search", "rawQueryString": "from=2026-01-01",
            "headers": {"Content-Type": "application/json", "host": "api.example.com"},
            "requestContext": {"http": {"method": "POST", "path": "/v1/search", "protocol": "HTTP/1.1", "sourceIp": "10.0.0.1", "userAgent": "t"},
                "requestId": "r1", "timeEpoch": 0, "stage": "dev",
                "authorizer": {"lambda": {"tenant": "acme", "principal": "ann", "roles": "member", "groups": ""}}},
            "body": "eyJxdWVyeSI6ImEifQ==", "isBase64Encoded": true
        });
        let api = Router::new().route("/v1/search", post(echo));
        let FunctionResponse::BufferedResponse(out) = serve_http(api, event).await.unwrap() else { panic!("streamed") };
        assert_eq!(out["statusCode"], 200);
        assert_eq!(out["body"], r#"ann r1 {"query":"a"}"#);
    }

    /// Found by `keel-fuzz` (lambda_events): lambda_http panicked on these.
    #[test]
    fn an_event_lambda_http_cannot_turn_into_a_uri_is_refused_not_a_crash() {
        let event = |host: &str, domain: &str, query: &str| json!({
            "version": "2.0", "routeKey": "GET /v1/search", "rawPath": "/v1/search", "rawQueryString": query,
            "headers": if host.is_empty() { json!({}) } else { json!({"host": host}) },
            "requestContext": {"http": {"method": "GET", "path": "/v1/search"}, "domainName": domain, "requestId": "r"}, "isBase64Encoded": false
        });
        for (host, domain, query) in [("", "api.exam\u{200d}ple.com", ""), ("", "api.example.com2:00:00 +", ""), ("api.exam ple.com", "a", ""), ("", "api.example.com", "a=\"{}|")] {
            assert!(matches!(http_request(event(host, domain, query)), Err(KeelError::BadRequest(_))), "{host:?} {domain:?} {query:?}");
        }
        assert!(http_request(event("api.example.com", "api.example.com", "a=1")).is_ok());
    }

    #[test]
    fn events_are_recognized_by_shape() {
        assert!(matches!(recognize(json!({"Records": []})).unwrap(), Event::Queue(_)));
        assert!(matches!(recognize(json!({"step": "run", "action_id": "a"})).unwrap(), Event::Task(_)));
        assert!(recognize(json!({"what": 1})).is_err());
    }

    #[test]
    fn batch_failures_name_only_failed_messages() {
        let r = batch_response(vec!["m2".into()]);
        let v = serde_json::to_value(r).unwrap();
        assert_eq!(v, json!({"batchItemFailures": [{"itemIdentifier": "m2"}]}));
    }
}
