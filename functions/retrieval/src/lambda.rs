//! `keel-retrieval` as Lambda runs it: document and search routes, the
//! ingest queue (producers' signed changes) and the inbox queue (the
//! bucket's notifications), told apart by each record's event source.

use crate::{routes::routes, Backends, Retrieval};
use keel_core::config::Config;
use keel_core::http::{api, rate_limited};
use keel_core::KeelError;
use keel_lambda::{batch_response, records_as_messages, to_json, Event, Function};
use std::sync::Arc;

pub fn function(aws: keel_aws::Adapters, config: Config) -> Result<Function, KeelError> {
    let tenants = Arc::new(config.tenant_store(aws.table.clone()));
    let keys = Arc::new(config.key_authenticator(aws.table.clone(), tenants.clone()));
    let limiter = Arc::new(config.rate_limiter(aws.table.clone(), tenants.clone()));
    let inbox_queue = aws.inbox_queue_arn.clone();
    let backends = Backends { table: aws.table, blobs: aws.blobs, queue: aws.queue, tenants, keys };
    let retrieval = Arc::new(Retrieval::from_config(backends, &config)?);
    let app = rate_limited(api(routes().with_state(retrieval.clone())), limiter);
    Ok(Function::new(Some(app), move |event| {
        let (retrieval, inbox_queue) = (retrieval.clone(), inbox_queue.clone());
        async move {
            match event {
                Event::Queue(batch) => {
                    // An S3-shaped body is trusted only from the inbox queue, which the bucket alone may send to.
                    let (inbox, ingest): (Vec<_>, Vec<_>) =
                        batch.records.into_iter().partition(|r| inbox_queue.is_some() && r.event_source_arn == inbox_queue);
                    let mut failed = retrieval.ingest(&records_as_messages(ingest)).await;
                    failed.extend(retrieval.ingest_inbox(&records_as_messages(inbox)).await);
                    to_json(&batch_response(failed))
                }
                other => Err(other.unsupported()),
            }
        }
    }))
}
