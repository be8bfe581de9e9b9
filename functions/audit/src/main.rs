//! `keel-audit`: the audit-queue consumer and the decision, audit and usage routes.

use keel_audit::Audit;
use keel_core::http::dispatch;
use keel_lambda::{batch_response, http_response, queue_messages, serve, to_json, unsupported, Incoming};
use std::sync::Arc;

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    keel_lambda::init_tracing();
    let aws = keel_aws::Adapters::from_env().await?;
    let audit = Arc::new(Audit::new(aws.table, aws.blobs));
    serve(|incoming| {
        let audit = audit.clone();
        async move {
            match incoming {
                Incoming::Http(req) => Ok(http_response(dispatch(req, |r| audit.handle(r)).await)),
                Incoming::Queue(batch) => to_json(&batch_response(audit.consume(&queue_messages(batch)).await)),
                other => Err(unsupported(&other)),
            }
        }
    })
    .await
}
