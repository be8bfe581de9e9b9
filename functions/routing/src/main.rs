//! `keel-routing`: `POST /v1/ask`, `POST /v1/chat/completions`, `POST /v1/classify`
//! and `POST /v1/rank`. Behind API Gateway it answers whole (a streamed request
//! gets its events in one body); behind its function URL (response streaming)
//! it authenticates the caller itself and streams server-sent events as they
//! are produced.

use axum::middleware::from_fn_with_state;
use keel_auth::edge::authenticate;
use keel_auth::Auth;
use keel_core::http::api_counting_failures;
use keel_retrieval::{Backends, Retrieval};
use keel_routing::providers::hosted_models;
use keel_routing::{routes::routes, Routing, RoutingOptions};
use std::sync::Arc;

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    keel_lambda::init_tracing();
    let aws = keel_aws::Adapters::from_env().await?;
    let config = Arc::new(aws.config().await?);
    let tenants = Arc::new(config.tenant_store(aws.table.clone()));
    let keys = Arc::new(config.key_authenticator(aws.table.clone(), tenants.clone()));
    let backends = Backends { table: aws.table.clone(), blobs: aws.blobs.clone(), queue: aws.queue.clone(), tenants: tenants.clone(), keys: keys.clone() };
    let retrieval = Arc::new(Retrieval::from_config(backends, &config)?);
    let models = hosted_models(&config.models).await;
    let routing = Routing::new(retrieval, aws.table.clone(), aws.queue.clone(), tenants.clone(), models, RoutingOptions::from_config(&config));
    // A function URL has no API Gateway authorizer in front of it.
    let auth = Arc::new(Auth::new(aws.table, aws.blobs.clone(), aws.queue.clone(), config, tenants, keys)?);
    let app = api_counting_failures(routes().with_state(Arc::new(routing)), aws.queue).layer(from_fn_with_state(auth, authenticate));
    keel_lambda::run(Some(app), |event| async move { Err(event.unsupported()) }).await
}
