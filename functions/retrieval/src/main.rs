//! `keel-retrieval`: document and search routes, and the ingest-queue consumer.

use keel_core::config::Config;
use keel_core::http::dispatch;
use keel_lambda::{batch_response, http_response, queue_messages, serve, to_json, unsupported, Incoming};
use keel_retrieval::Retrieval;
use std::sync::Arc;

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    keel_lambda::init_tracing();
    let config = Config::from_env()?;
    let aws = keel_aws::Adapters::from_env().await?;
    let retrieval = Arc::new(Retrieval::from_config(aws.table, aws.blobs, &config)?);
    serve(|incoming| {
        let retrieval = retrieval.clone();
        async move {
            match incoming {
                Incoming::Http(req) => Ok(http_response(dispatch(req, |r| retrieval.handle(r)).await)),
                Incoming::Queue(batch) => to_json(&batch_response(retrieval.ingest(&queue_messages(batch)).await)),
                other => Err(unsupported(&other)),
            }
        }
    })
    .await
}
