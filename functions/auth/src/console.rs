//! The operator's console: a page and its scripts, embedded in the binary
//! and served by the API itself at `/console` (no authorizer: the page holds
//! no data, and everything it shows it fetches from the public API with the
//! key or token it is signed in with). Served from the API rather than from
//! S3 behind CloudFront so that the page and the API share one origin (no
//! CORS, the credential is only ever sent to the API that issued it), one
//! deploy ships both, and the console's version is always the API's.

use axum::extract::Path;
use keel_core::access::Access;
use axum::http::Method;
use keel_core::http::{error_body, ApiResponse, Routes};
use keel_core::openapi::{object, text, RouteDoc};
use keel_core::KeelError;

/// The console's files, by name.
const FILES: [(&str, &str, &str); 11] = [
    ("index.html", "text/html; charset=utf-8", include_str!("../console/index.html")),
    ("app.css", "text/css; charset=utf-8", include_str!("../console/app.css")),
    ("app.js", "text/javascript; charset=utf-8", include_str!("../console/app.js")),
    ("api.js", "text/javascript; charset=utf-8", include_str!("../console/api.js")),
    ("ui.js", "text/javascript; charset=utf-8", include_str!("../console/ui.js")),
    ("actions.js", "text/javascript; charset=utf-8", include_str!("../console/actions.js")),
    ("explain.js", "text/javascript; charset=utf-8", include_str!("../console/explain.js")),
    ("ask.js", "text/javascript; charset=utf-8", include_str!("../console/ask.js")),
    ("usage.js", "text/javascript; charset=utf-8", include_str!("../console/usage.js")),
    ("audit.js", "text/javascript; charset=utf-8", include_str!("../console/audit.js")),
    ("controls.js", "text/javascript; charset=utf-8", include_str!("../console/controls.js")),
];

/// Scripts and styles from this origin only, no inline script, no framing.
const SECURITY_HEADERS: [(&str, &str); 3] = [
    ("content-security-policy", "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"),
    ("x-content-type-options", "nosniff"),
    ("referrer-policy", "no-referrer"),
];

/// The console's routes; they need no credentials.
pub fn routes<S: Clone + Send + Sync + 'static>() -> Routes<S> {
    Routes::new()
        .route(Method::GET, "/console", index)
        .access(Access::Public, "")
        .doc(RouteDoc::new("The console's page").public().reply(200, "text/html", text))
        .route(Method::GET, "/console/{file}", file)
        .access(Access::Public, "")
        .doc(RouteDoc::new("The console's scripts and styles").public().reply(200, "text/javascript", text).reply(200, "text/css", text))
        .route(Method::GET, "/openapi.json", openapi)
        .access(Access::Public, "")
        .doc(RouteDoc::new("This document").public().json(200, object))
}

/// The API's OpenAPI document, generated from the route tables into
/// docs/openapi.json (a test holds the file to the code).
const OPENAPI: &str = include_str!("../../../docs/openapi.json");

async fn openapi() -> ApiResponse {
    ApiResponse::text(200, "application/json", OPENAPI.to_string())
}

async fn index() -> ApiResponse {
    serve("index.html")
}

async fn file(Path(name): Path<String>) -> ApiResponse {
    serve(&name)
}

/// A file, or the API's JSON error (these routes may be served outside the API's error layer).
fn serve(name: &str) -> ApiResponse {
    let Some((_, content_type, body)) = FILES.iter().find(|(file, _, _)| *file == name) else {
        let missing = KeelError::NotFound(format!("the console has no file {name:?}"));
        return ApiResponse::json(404, &error_body(&missing, ""));
    };
    let mut response = ApiResponse::text(200, content_type, (*body).to_string());
    response.headers.extend(SECURITY_HEADERS.iter().map(|(n, v)| (n.to_string(), v.to_string())));
    response
}
