//! `keel-retrieval` as Lambda runs it: document and search routes, and the ingest queue.

use crate::{routes::routes, Backends, Retrieval};
use keel_core::config::Config;
use keel_core::http::{api, rate_limited};
use keel_core::KeelError;
use keel_lambda::{batch_response, queue_messages, to_json, Event, Function};
use std::sync::Arc;

pub fn function(aws: keel_aws::Adapters, config: Config) -> Result<Function, KeelError> {
    let tenants = Arc::new(config.tenant_store(aws.table.clone()));
    let keys = Arc::new(config.key_authenticator(aws.table.clone(), tenants.clone()));
    let limiter = Arc::new(keel_core::rate::RateLimiter::new(aws.table.clone(), tenants.clone()));
    let backends = Backends { table: aws.table, blobs: aws.blobs, queue: aws.queue, tenants, keys };
    let retrieval = Arc::new(Retrieval::from_config(backends, &config)?);
    let app = rate_limited(api(routes().with_state(retrieval.clone())), limiter);
    Ok(Function::new(Some(app), move |event| {
        let retrieval = retrieval.clone();
        async move {
            match event {
                Event::Queue(batch) => to_json(&batch_response(retrieval.ingest(&queue_messages(batch)).await)),
                other => Err(other.unsupported()),
            }
        }
    }))
}
