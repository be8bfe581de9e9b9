//! `keel-audit` as Lambda runs it: decision, audit and usage routes, and the audit queue.

use crate::{routes::routes, Audit};
use keel_core::config::Config;
use keel_core::http::{api, rate_limited};
use keel_core::KeelError;
use keel_lambda::{batch_response, queue_messages, to_json, Event, Function};
use std::sync::Arc;

pub fn function(aws: keel_aws::Adapters, config: Config) -> Result<Function, KeelError> {
    let notifier = aws.notifier().map(|n| n as Arc<dyn keel_core::ports::Notifier>);
    let tenants = Arc::new(config.tenant_store(aws.table.clone()));
    let limiter = Arc::new(config.rate_limiter(aws.table.clone(), tenants.clone()));
    let audit = Arc::new(Audit::new(aws.table.clone(), aws.blobs, tenants).with_config(&config)?.with_notifier(notifier));
    let app = rate_limited(api(routes().with_state(audit.clone())), limiter);
    Ok(Function::new(Some(app), move |event| {
        let audit = audit.clone();
        async move {
            match event {
                Event::Queue(batch) => to_json(&batch_response(audit.consume(&queue_messages(batch)).await)),
                other => Err(other.unsupported()),
            }
        }
    }))
}
