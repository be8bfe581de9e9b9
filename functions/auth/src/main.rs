//! `keel-auth`: the authorizer and the admin routes, in one Lambda.

use keel_auth::Auth;
use keel_core::config::Config;
use keel_core::http::dispatch;
use keel_core::tenants::TenantCache;
use keel_lambda::{authorizer_response, http_response, serve, unsupported, Incoming};
use std::sync::Arc;
use std::time::Duration;

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    keel_lambda::init_tracing();
    let config = Arc::new(Config::from_env()?);
    let aws = keel_aws::Adapters::from_env().await?;
    let tenants = Arc::new(TenantCache::new(Duration::from_secs(config.tenant_cache_secs)));
    let auth = Arc::new(Auth::new(aws.table, config, tenants));
    serve(|incoming| {
        let auth = auth.clone();
        async move {
            match incoming {
                Incoming::Authorize(req) => Ok(authorizer_response(auth.authorize(&req).await.ok().as_ref())),
                Incoming::Http(req) => Ok(http_response(dispatch(req, |r| auth.handle(r)).await)),
                other => Err(unsupported(&other)),
            }
        }
    })
    .await
}
