//! `keel-audit`: the audit-queue consumer and the decision, audit and usage routes.

use keel_audit::{routes::routes, Audit};
use keel_core::http::api;
use keel_lambda::{batch_response, queue_messages, to_json, Event};
use std::sync::Arc;

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    keel_lambda::init_tracing();
    let aws = keel_aws::Adapters::from_env().await?;
    let config = aws.config().await?;
    let notifier = aws.notifier().map(|n| n as Arc<dyn keel_core::ports::Notifier>);
    let audit = Arc::new(Audit::new(aws.table.clone(), aws.blobs, Arc::new(config.tenant_store(aws.table.clone()))).with_config(&config)?.with_notifier(notifier));
    let app = api(routes().with_state(audit.clone()));
    keel_lambda::run(Some(app), |event| {
        let audit = audit.clone();
        async move {
            match event {
                Event::Queue(batch) => to_json(&batch_response(audit.consume(&queue_messages(batch)).await)),
                other => Err(other.unsupported()),
            }
        }
    })
    .await
}
