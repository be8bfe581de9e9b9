//! `keel-auth` as Lambda runs it: the admin routes and the console, and the
//! HTTP API's authorizer requests.

use crate::{routes::routes, Auth};
use keel_core::config::Config;
use keel_core::http::{api, rate_limited};
use keel_core::KeelError;
use keel_lambda::{authorizer_response, Event, Function};
use std::sync::Arc;

pub fn function(aws: keel_aws::Adapters, config: Config) -> Result<Function, KeelError> {
    let config = Arc::new(config);
    config.require_admin_key()?;
    let tenants = Arc::new(config.tenant_store(aws.table.clone()));
    let keys = Arc::new(config.key_authenticator(aws.table.clone(), tenants.clone()));
    let limiter = Arc::new(config.rate_limiter(aws.table.clone(), tenants.clone()));
    let auth = Arc::new(Auth::new(aws.table, aws.blobs, aws.queue, config, tenants, keys)?);
    let app = rate_limited(api(routes().with_state(auth.clone()).merge(crate::console::routes().with_state(()))), limiter);
    Ok(Function::new(Some(app), move |event| {
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
    }))
}
