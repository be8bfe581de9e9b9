//! The HTTP edge every function shares, on axum: each function declares its
//! routes once (`Routes`), and the Lambda binary and the local stack both
//! serve that declaration behind `api` (request id, rate limit, errors as
//! `{"error":{"code","message","request_id"}}` here and nowhere else).

use crate::auth::Caller;
use crate::error::KeelError;
use axum::body::{Body, Bytes};
use axum::extract::{FromRequestParts, Request};
use axum::handler::Handler;
use axum::http::request::Parts;
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{on, MethodFilter};
use axum::Router;
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::{json, Value};
use crate::rate::{Admission, RateLimiter};
use std::collections::HashMap;
use std::sync::Arc;

/// Default body limit for JSON requests (documents have their own).
pub const DEFAULT_BODY_LIMIT: usize = 64 * 1024;

/// The request's id: API Gateway's in Lambda, a fresh one locally. Every
/// response carries it as `x-request-id`, and every error body names it.
#[derive(Clone, Debug)]
pub struct RequestId(pub String);

impl RequestId {
    pub fn new() -> Self {
        Self(uuid::Uuid::new_v4().to_string())
    }
}

impl Default for RequestId {
    fn default() -> Self {
        Self::new()
    }
}

/// Parses a JSON body of type `T`, refusing bodies over `limit` bytes or
/// nested deeper than `limits::MAX_JSON_DEPTH`.
pub fn parse_body<T: DeserializeOwned>(body: &Bytes, limit: usize) -> Result<T, KeelError> {
    crate::limits::parse_json(body, limit, "request body")
}

/// A list's page size when `?limit=` is absent, and its largest.
pub const LIST_DEFAULT_LIMIT: usize = 50;
pub const LIST_MAX_LIMIT: usize = 200;

/// A list's `?limit=`: a whole number from 1 to `LIST_MAX_LIMIT`, by default `LIST_DEFAULT_LIMIT`.
pub fn list_limit(query: &HashMap<String, String>) -> Result<usize, KeelError> {
    match query.get("limit") {
        None => Ok(LIST_DEFAULT_LIMIT),
        Some(l) => l
            .parse()
            .ok()
            .filter(|n| (1..=LIST_MAX_LIMIT).contains(n))
            .ok_or_else(|| KeelError::BadRequest(format!("limit must be a whole number from 1 to {LIST_MAX_LIMIT}"))),
    }
}

/// The caller the authorizer let in (the edge puts it in the request's
/// extensions); a request without one is refused.
impl<S: Send + Sync> FromRequestParts<S> for Caller {
    type Rejection = KeelError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        parts
            .extensions
            .get::<Caller>()
            .cloned()
            .ok_or_else(|| KeelError::Unauthorized("missing credentials".into()))
    }
}

/// The query string's parameters; an unparsable query reads as none.
pub struct QueryMap(pub HashMap<String, String>);

impl<S: Send + Sync> FromRequestParts<S> for QueryMap {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        let query = axum::extract::Query::<HashMap<String, String>>::try_from_uri(&parts.uri).map(|q| q.0);
        Ok(Self(query.unwrap_or_default()))
    }
}

/// A handler's answer: a status, headers and a body.
#[derive(Clone, Debug, PartialEq)]
pub struct ApiResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl ApiResponse {
    pub fn json(status: u16, value: &impl Serialize) -> Self {
        let body = serde_json::to_vec(value).unwrap_or_else(|_| b"{}".to_vec());
        Self { status, headers: vec![("content-type".into(), "application/json".into())], body }
    }

    pub fn ok(value: &impl Serialize) -> Self {
        Self::json(200, value)
    }

    pub fn text(status: u16, content_type: &str, body: String) -> Self {
        Self { status, headers: vec![("content-type".into(), content_type.into())], body: body.into_bytes() }
    }
}

impl IntoResponse for ApiResponse {
    fn into_response(self) -> Response {
        let mut out = Response::new(Body::from(self.body));
        *out.status_mut() = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        for (k, v) in self.headers {
            if let (Ok(k), Ok(v)) = (header::HeaderName::try_from(k), HeaderValue::try_from(v)) {
                out.headers_mut().insert(k, v);
            }
        }
        out
    }
}

/// An error on its way out: `api` writes its body once it knows the request id.
#[derive(Clone, Debug)]
struct Failed(std::sync::Arc<KeelError>);

impl IntoResponse for KeelError {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut out = status.into_response();
        out.extensions_mut().insert(Failed(std::sync::Arc::new(self)));
        out
    }
}

/// The body of an error response.
pub fn error_body(error: &KeelError, request_id: &str) -> Value {
    let message = match error {
        // Internal details stay in the log.
        KeelError::Internal(_) | KeelError::Config(_) => "internal error".to_string(),
        other => other.to_string(),
    };
    let mut body = json!({"error": {"code": error.code(), "message": message, "request_id": request_id}});
    if let KeelError::Unprocessable { path, .. } = error {
        body["error"]["path"] = Value::String(path.clone());
    }
    body
}

/// `error` as the response a client sees.
pub fn error_response(error: &KeelError, request_id: &str) -> Response {
    if error.status() >= 500 {
        tracing::error!(%error, request_id, "request failed");
    }
    let mut out = ApiResponse::json(error.status(), &error_body(error, request_id)).into_response();
    set_request_id(&mut out, request_id);
    if let Some(secs) = error.retry_after() {
        out.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(secs));
    }
    out
}

fn set_request_id(response: &mut Response, request_id: &str) {
    if let Ok(v) = HeaderValue::try_from(request_id) {
        response.headers_mut().insert("x-request-id", v);
    }
}

/// A function's routes, declared once: the router that serves them and the
/// list of what it serves (which a test holds against `template.yaml`).
pub struct Routes<S> {
    declared: Vec<Declared<S>>,
}

/// One declared route: what serves it, its documentation, and whether its
/// handler waits for the rate limit itself.
struct Declared<S> {
    method: Method,
    path: &'static str,
    serve: axum::routing::MethodRouter<S>,
    doc: Option<crate::openapi::RouteDoc>,
    admits_itself: bool,
    expensive: Option<crate::concurrency::Expensive>,
    /// Who may call it, and what of its objects each caller sees.
    access: Option<(crate::access::Access, &'static str)>,
}

impl<S: Clone + Send + Sync + 'static> Default for Routes<S> {
    fn default() -> Self {
        Self { declared: Vec::new() }
    }
}

impl<S: Clone + Send + Sync + 'static> Routes<S> {
    pub fn new() -> Self {
        Self::default()
    }

    /// Serves `method path` (axum's `{name}` captures, as in `template.yaml`) with `handler`.
    pub fn route<H, T>(mut self, method: Method, path: &'static str, handler: H) -> Self
    where
        H: Handler<T, S>,
        T: 'static,
    {
        let filter = MethodFilter::try_from(method.clone()).unwrap_or(MethodFilter::GET);
        self.declared.push(Declared { method, path, serve: on(filter, handler), doc: None, admits_itself: false, expensive: None, access: None });
        self
    }

    /// Documents the route declared last, for the OpenAPI document.
    pub fn doc(mut self, doc: crate::openapi::RouteDoc) -> Self {
        if let Some(last) = self.declared.last_mut() {
            last.doc = Some(doc);
        }
        self
    }

    /// The route declared last waits for its rate-limit count itself (an
    /// `Admission` argument), beside its first store calls, and before any
    /// side effect; every other route waits before its handler runs.
    pub fn admits_itself(mut self) -> Self {
        if let Some(last) = self.declared.last_mut() {
            last.admits_itself = true;
        }
        self
    }

    /// The route declared last is expensive: each request also takes one of
    /// its tenant's concurrency slots for `surface` (`concurrency`), beside
    /// its rate-limit count, and gives it back once its response is sent.
    pub fn expensive(mut self, surface: crate::concurrency::Expensive) -> Self {
        if let Some(last) = self.declared.last_mut() {
            last.expensive = Some(surface);
        }
        self
    }

    /// Who may call the route declared last (enforced before anything else of
    /// it runs), and `scope`: what of its objects each caller sees, which its
    /// handler decides (`""` when there is nothing more to say).
    pub fn access(mut self, access: crate::access::Access, scope: &'static str) -> Self {
        if let Some(last) = self.declared.last_mut() {
            last.access = Some((access, scope));
        }
        self
    }

    /// Every route with its declared access and scope (`None`: undeclared, which a test refuses).
    pub fn accesses(&self) -> Vec<crate::access::RouteAccess> {
        self.declared.iter().map(|d| (d.method.to_string(), d.path.to_string(), d.access)).collect()
    }

    /// `(method, path)` of every route, in declaration order.
    pub fn declared(&self) -> Vec<(String, String)> {
        self.declared.iter().map(|d| (d.method.to_string(), d.path.to_string())).collect()
    }

    /// Every route with its documentation (`None`: undocumented, which a test refuses).
    pub fn documented(&self) -> Vec<crate::openapi::DocumentedRoute> {
        self.declared.iter().map(|d| (d.method.to_string(), d.path.to_string(), d.doc.clone())).collect()
    }

    pub fn with_state(self, state: S) -> Router {
        let mut router = Router::new();
        for d in self.declared {
            let mut serve = if d.admits_itself { d.serve } else { d.serve.layer(axum::middleware::from_fn(admit_first)) };
            if let Some(surface) = d.expensive {
                // The slot is asked for before anything waits for the admission.
                serve = serve.layer(axum::middleware::from_fn(move |request: Request, next: Next| crate::concurrency::hold_slot(surface, request, next)));
            }
            // Outermost: a caller the route does not admit reaches nothing of it.
            let access = d.access.map_or(crate::access::Access::Platform, |(a, _)| a);
            serve = serve.layer(axum::middleware::from_fn(move |request: Request, next: Next| crate::access::enforce(access, request, next)));
            router = router.route(d.path, serve);
        }
        router.with_state(state)
    }
}

/// `api(routes)` that also counts each handler failure (5xx) of a measured
/// route against its surface's objective, through the audit queue.
pub fn api_counting_failures(routes: Router, queue: std::sync::Arc<dyn crate::ports::WorkQueue>) -> Router {
    api(routes).layer(axum::middleware::from_fn_with_state(queue, count_failures))
}

async fn count_failures(
    axum::extract::State(queue): axum::extract::State<std::sync::Arc<dyn crate::ports::WorkQueue>>,
    request: Request,
    next: Next,
) -> Response {
    let route = request.extensions().get::<axum::extract::MatchedPath>().map(|p| format!("{} {}", request.method(), p.as_str()));
    let caller = request.extensions().get::<Caller>().cloned();
    let response = next.run(request).await;
    if response.status().is_server_error() {
        let surface = route.as_deref().and_then(crate::slo::Surface::of_route);
        if let (Some(surface), Some(caller)) = (surface, caller) {
            let Some(tenant) = caller.tenant else { return response };
            crate::slo::report_failure(queue.as_ref(), &tenant, caller.incarnation.as_deref(), surface).await;
        }
    }
    response
}

/// Starts counting the request against its tenant's rate limit, where the
/// function has a limiter (`rate_limited`) and the caller a tenant.
fn start_admission(request: &mut Request) -> Option<Admission> {
    let limiter = request.extensions().get::<Arc<RateLimiter>>()?;
    let caller = request.extensions().get::<Caller>()?;
    let admission = limiter.start(caller.tenant.clone()?, caller.incarnation.clone());
    request.extensions_mut().insert(admission.clone());
    Some(admission)
}

/// `api` with each tenant's rate limit: wrap the router `api` made.
pub fn rate_limited(api: Router, limiter: Arc<RateLimiter>) -> Router {
    api.layer(axum::Extension(limiter))
}

/// Where a route has not said it waits for the rate limit itself
/// (`Routes::admits_itself`), it waits here, before its handler runs.
async fn admit_first(request: Request, next: Next) -> Response {
    if let Some(admission) = request.extensions().get::<Admission>().cloned() {
        if let Err(refused) = admission.admit().await {
            return refused.into_response();
        }
    }
    next.run(request).await
}

/// The request's rate-limit count, for a handler that waits for it itself
/// (none where the function counts no rate limit).
impl<S: Send + Sync> FromRequestParts<S> for Admission {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(parts.extensions.get::<Admission>().cloned().unwrap_or_else(Admission::none))
    }
}

/// Routes merged and made an API: unknown routes get 404, a tenant over its
/// rate limit 429 (with `rate_limited`), and every response its request id
/// (errors in their body too). The edge in front puts the `RequestId` and
/// the `Caller` into the request's extensions.
pub fn api(routes: Router) -> Router {
    routes
        .fallback(no_route)
        .method_not_allowed_fallback(no_route)
        .layer(axum::middleware::from_fn(envelope))
        .layer(axum::extract::DefaultBodyLimit::disable())
}

async fn no_route(method: Method, uri: axum::http::Uri) -> KeelError {
    KeelError::NotFound(format!("no route for {method} {}", uri.path()))
}

async fn envelope(request: Request, next: Next) -> Response {
    let started = std::time::Instant::now();
    let route = match request.extensions().get::<axum::extract::MatchedPath>() {
        Some(path) => format!("{} {}", request.method(), path.as_str()),
        None => "unmatched".to_string(),
    };
    let response = answer(request, next, &route).await;
    crate::telemetry::http_request(&route, response.status().as_u16(), started.elapsed().as_secs_f64());
    response
}

async fn answer(mut request: Request, next: Next, route: &str) -> Response {
    let gateway_id = request.extensions().get::<RequestId>().cloned().unwrap_or_default();
    let mut context = {
        let header = |name: &str| request.headers().get(name).and_then(|v| v.to_str().ok());
        crate::trace::RequestContext::from_headers(header("x-request-id"), header("traceparent"), &gateway_id.0)
    };
    if let Some(caller) = request.extensions().get::<Caller>() {
        context.incarnation = caller.incarnation.clone();
        context.actor = Some(crate::chain::Actor::of(caller));
    }
    let request_id = RequestId(context.request_id.clone());
    request.extensions_mut().insert(request_id.clone());
    request.extensions_mut().insert(context.clone());
    let admission = start_admission(&mut request);
    // The request's span is made inside its context: an exporter takes the trace id from it.
    let work = async {
        use tracing::Instrument;
        let span = tracing::info_span!("http.request", otel.name = %route, http.route = %route, keel.request_id = %request_id.0);
        next.run(request).instrument(span).await
    };
    let mut response = crate::trace::scope(context.clone(), work).await;
    // A handler that failed before it waited for the count still counts.
    if let Some(admission) = admission {
        let _ = admission.admit().await;
        response = crate::concurrency::release_slot(&admission, response).await;
    }
    let mut response = match response.extensions_mut().remove::<Failed>() {
        Some(Failed(error)) => error_response(&error, &request_id.0),
        None => {
            set_request_id(&mut response, &request_id.0);
            response
        }
    };
    if let Ok(v) = HeaderValue::try_from(context.traceparent.as_str()) {
        response.headers_mut().insert("traceparent", v);
    }
    response
}
