//! The local HTTP API: every function's declared routes merged behind the
//! authorizer, as API Gateway serves them in AWS.

use axum::body::Body;
use axum::extract::State;
use axum::http::{Request, Response};
use axum::middleware::from_fn_with_state;
use axum::Router;
use keel_auth::edge::authenticate;
use keel_auth::Auth;
use keel_audit::Audit;
use keel_core::http::{api_counting_failures, error_response, rate_limited, RequestId};
use keel_core::openapi::DocumentedRoute;
use keel_core::KeelError;
use keel_retrieval::Retrieval;
use keel_routing::Routing;
use keel_tools::Tools;
use std::sync::Arc;
use tower::ServiceExt;

/// The largest request body the local API reads (API Gateway's own limit is 10 MB).
const MAX_REQUEST_BYTES: usize = 10 * 1024 * 1024;

/// The functions whose routes the local API serves.
pub struct Functions {
    pub auth: Arc<Auth>,
    pub retrieval: Arc<Retrieval>,
    pub routing: Arc<Routing>,
    pub tools: Arc<Tools>,
    pub audit: Arc<Audit>,
    /// Each tenant's rate limit, counted as every function counts it in AWS.
    pub rate: Arc<keel_core::rate::RateLimiter>,
}

/// The local API, ready to serve: each request runs as a task of its own.
pub fn router(functions: &Functions, queue: Arc<dyn keel_core::ports::WorkQueue>) -> Router {
    let routes = Router::new()
        .merge(keel_auth::routes::routes().with_state(functions.auth.clone()))
        .merge(keel_retrieval::routes::routes().with_state(functions.retrieval.clone()))
        .merge(keel_routing::routes::routes().with_state(functions.routing.clone()))
        .merge(keel_tools::routes::routes().with_state(functions.tools.clone()))
        .merge(keel_audit::routes::routes().with_state(functions.audit.clone()));
    let api = rate_limited(api_counting_failures(routes, queue), functions.rate.clone())
        .layer(from_fn_with_state(functions.auth.clone(), authenticate));
    Router::new().fallback(serve).with_state(api).merge(keel_auth::console::routes().with_state(()))
}

/// One function's route table as the documents read it: each route's
/// documentation and declared access.
struct RouteTable {
    /// The function `template.yaml` routes it to.
    function: &'static str,
    documented: Vec<DocumentedRoute>,
    access: Vec<keel_core::access::RouteAccess>,
}

fn table<S: Clone + Send + Sync + 'static>(function: &'static str, routes: keel_core::http::Routes<S>) -> RouteTable {
    RouteTable { function, documented: routes.documented(), access: routes.accesses() }
}

/// Every function's route table, by the function `template.yaml` routes it
/// to: the one list behind the declared routes, the OpenAPI document and the
/// authorization table.
fn route_tables() -> Vec<RouteTable> {
    vec![
        table("AuthFunction", keel_auth::routes::routes()),
        table("RetrievalFunction", keel_retrieval::routes::routes()),
        table("RoutingFunction", keel_routing::routes::routes()),
        table("ToolsFunction", keel_tools::routes::routes()),
        table("AuditFunction", keel_audit::routes::routes()),
        table("AuthFunction", keel_auth::console::routes::<()>()),
    ]
}

/// Every function's declared routes, `(function, method, path)`: what the
/// local API serves, and what `template.yaml` must route in AWS.
pub fn declared_routes() -> Vec<(&'static str, String, String)> {
    route_tables().into_iter().flat_map(|t| t.documented.into_iter().map(move |(m, p, _)| (t.function, m, p))).collect()
}

/// Every function's routes with their documentation, `(method, path, doc)`.
pub fn documented_routes() -> Vec<DocumentedRoute> {
    route_tables().into_iter().flat_map(|t| t.documented).collect()
}

/// The OpenAPI document of the whole HTTP API, as `docs/openapi.json` holds it.
pub fn openapi_document() -> String {
    let document = keel_core::openapi::document(env!("CARGO_PKG_VERSION"), &documented_routes());
    let mut text = serde_json::to_string_pretty(&document).unwrap_or_default();
    text.push('\n');
    text
}

/// Who may call each route, as `docs/authorization.md` holds it: generated
/// from the route tables' declarations, which the router enforces.
pub fn authorization_document() -> String {
    use keel_core::access::{Access, Party};
    let mut out = String::from(
        "# Who may call each route\n\n\
         Generated from the route tables' declarations (`Routes::access`) by `keel-local authorization`;\n\
         `tests/tests/openapi.rs` holds this file to them and `tests/tests/boundaries.rs` walks every\n\
         route with each party. The router refuses a party a route does not admit with 403 before\n\
         anything of the route runs; *what* a route shows an admitted caller of its objects is its\n\
         handler's (the last column). Every route but the public ones answers 401 without valid\n\
         credentials, and 403 for a suspended tenant; a tenant's principals reach only their own\n\
         tenant.\n\n",
    );
    let parties = Party::ALL.map(Party::name);
    out.push_str(&format!("| Route | {} | What it shows |\n|---|{}---|\n", parties.join(" | "), "---|".repeat(parties.len())));
    for (method, path, declared) in route_access() {
        let (access, scope) = declared.unwrap_or((Access::Platform, "(undeclared)"));
        let cells: Vec<&str> = match access {
            Access::Public => vec!["no credentials needed"; parties.len()],
            _ => Party::ALL.iter().map(|p| if access.admits_party(*p) { "yes" } else { "403" }).collect(),
        };
        out.push_str(&format!("| `{method} {path}` | {} | {scope} |\n", cells.join(" | ")));
    }
    out
}

/// Every declared route with its access: `(method, path, access)`; `None` where undeclared.
pub fn route_access() -> Vec<keel_core::access::RouteAccess> {
    route_tables().into_iter().flat_map(|t| t.access).collect()
}

/// The routes served without credentials (the console's page and scripts),
/// `(method, path)`: the template routes these without the authorizer.
pub fn public_routes() -> Vec<(String, String)> {
    keel_auth::console::routes::<()>().declared()
}

/// A request runs to its end even if its caller hangs up, as a Lambda
/// invocation does: a model call already paid for still has its budget
/// reservation settled and its decision recorded.
async fn serve(State(api): State<Router>, request: Request<Body>) -> Response<Body> {
    let request_id = RequestId::new();
    let (mut parts, body) = request.into_parts();
    let body = match axum::body::to_bytes(body, MAX_REQUEST_BYTES).await {
        Ok(b) => b,
        Err(_) => {
            let e = KeelError::PayloadTooLarge(format!("request body exceeds {MAX_REQUEST_BYTES} bytes"));
            return error_response(&e, &request_id.0);
        }
    };
    parts.extensions.insert(request_id.clone());
    let request = Request::from_parts(parts, Body::from(body));
    match tokio::spawn(api.oneshot(request)).await {
        Ok(Ok(response)) => response,
        Ok(Err(never)) => match never {},
        Err(e) => error_response(&KeelError::Internal(format!("request handler failed: {e}")), &request_id.0),
    }
}
