//! `keel-retrieval`: document and search routes, and the ingest-queue consumer.

use keel_core::http::api;
use keel_lambda::{batch_response, queue_messages, to_json, Event};
use keel_retrieval::{routes::routes, Retrieval, Backends};
use std::sync::Arc;

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    keel_lambda::init_tracing();
    let aws = keel_aws::Adapters::from_env().await?;
    let config = aws.config().await?;
    let tenants = Arc::new(config.tenant_store(aws.table.clone()));
    let keys = Arc::new(config.key_authenticator(aws.table.clone(), tenants.clone()));
    let backends = Backends { table: aws.table, blobs: aws.blobs, queue: aws.queue, tenants, keys };
    let retrieval = Arc::new(Retrieval::from_config(backends, &config)?);
    let app = api(routes().with_state(retrieval.clone()));
    keel_lambda::run(Some(app), |event| {
        let retrieval = retrieval.clone();
        async move {
            match event {
                Event::Queue(batch) => to_json(&batch_response(retrieval.ingest(&queue_messages(batch)).await)),
                other => Err(other.unsupported()),
            }
        }
    })
    .await
}
