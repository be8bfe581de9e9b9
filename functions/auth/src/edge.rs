//! Authentication in front of routes that no API Gateway authorizer guards:
//! the local stack's, and the routing function's URL (response streaming).

use crate::Auth;
use axum::extract::{Request, State};
use axum::http::header::AUTHORIZATION;
use axum::middleware::Next;
use axum::response::Response;
use keel_core::auth::Caller;
use keel_core::http::{error_response, RequestId};
use std::sync::Arc;

/// Lets a request through with its `Caller` (one an authorizer already
/// found stays), or answers the denial as the authorizer would.
pub async fn authenticate(State(auth): State<Arc<Auth>>, mut request: Request, next: Next) -> Response {
    let request_id = request.extensions().get::<RequestId>().cloned().unwrap_or_default();
    request.extensions_mut().insert(request_id.clone());
    if request.extensions().get::<Caller>().is_none() {
        let header = request.headers().get(AUTHORIZATION).and_then(|v| v.to_str().ok());
        match auth.authorize(header).await {
            Ok(caller) => {
                request.extensions_mut().insert(caller);
            }
            Err(e) => return error_response(&e, &request_id.0),
        }
    }
    next.run(request).await
}
