//! `keel-auth`: the authorizer and the admin routes, in one Lambda.

use keel_auth::{routes::routes, Auth};
use keel_core::http::api;
use keel_lambda::{authorizer_response, Event};
use std::sync::Arc;

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    keel_lambda::init_tracing();
    let aws = keel_aws::Adapters::from_env().await?;
    let config = Arc::new(aws.config().await?);
    config.require_admin_key()?;
    let tenants = Arc::new(config.tenant_store(aws.table.clone()));
    let keys = Arc::new(config.key_authenticator(aws.table.clone(), tenants.clone()));
    let auth = Arc::new(Auth::new(aws.table, aws.blobs, aws.queue, config, tenants, keys)?);
    let app = api(routes().with_state(auth.clone()).merge(keel_auth::console::routes().with_state(())));
    keel_lambda::run(Some(app), |event| {
        let auth = auth.clone();
        async move {
            match event {
                Event::Authorize(req) => {
                    let header = req.headers.get("authorization").and_then(|v| v.to_str().ok());
                    Ok(authorizer_response(auth.authorize(header).await.ok().as_ref()))
                }
                other => Err(other.unsupported()),
            }
        }
    })
    .await
}
