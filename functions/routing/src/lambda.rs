//! `keel-routing` as Lambda runs it: the gateway's routes, behind API Gateway
//! (answered whole) or its function URL (authenticated here, streamed).

use crate::providers::hosted_models;
use crate::{routes::routes, Routing, RoutingOptions};
use axum::middleware::from_fn_with_state;
use keel_auth::edge::authenticate;
use keel_auth::Auth;
use keel_core::config::Config;
use keel_core::http::{api_counting_failures, rate_limited};
use keel_core::KeelError;
use keel_lambda::Function;
use keel_retrieval::{Backends, Retrieval};
use std::sync::Arc;

pub async fn function(aws: keel_aws::Adapters, config: Config) -> Result<Function, KeelError> {
    let config = Arc::new(config);
    let tenants = Arc::new(config.tenant_store(aws.table.clone()));
    let keys = Arc::new(config.key_authenticator(aws.table.clone(), tenants.clone()));
    let backends = Backends { table: aws.table.clone(), blobs: aws.blobs.clone(), queue: aws.queue.clone(), tenants: tenants.clone(), keys: keys.clone() };
    let retrieval = Arc::new(Retrieval::from_config(backends, &config)?);
    let models = hosted_models(&config.models).await;
    let limiter = Arc::new(config.rate_limiter(aws.table.clone(), tenants.clone()));
    let routing = Routing::new(retrieval, aws.table.clone(), aws.queue.clone(), tenants.clone(), models, RoutingOptions::from_config(&config));
    // A function URL has no API Gateway authorizer in front of it.
    let auth = Arc::new(Auth::new(aws.table, aws.blobs.clone(), aws.queue.clone(), config, tenants, keys)?);
    let app = rate_limited(api_counting_failures(routes().with_state(Arc::new(routing)), aws.queue), limiter).layer(from_fn_with_state(auth, authenticate));
    Ok(Function::new(Some(app), |event: keel_lambda::Event| async move { Err(event.unsupported()) }))
}
