//! `keel-tools` as Lambda runs it: tool and action routes, the actions queue
//! and the saga's task steps.

use crate::{routes::routes, StepInput, Tools, ToolsOptions};
use keel_core::config::Config;
use keel_core::http::{api_counting_failures, rate_limited};
use keel_core::KeelError;
use keel_lambda::{batch_response, queue_messages, task_error, to_json, Event, Function};
use std::sync::Arc;

pub fn function(aws: keel_aws::Adapters, config: Config) -> Result<Function, KeelError> {
    let tenants = Arc::new(config.tenant_store(aws.table.clone()));
    let keys = Arc::new(config.key_authenticator(aws.table.clone(), tenants.clone()));
    let limiter = Arc::new(config.rate_limiter(aws.table.clone(), tenants.clone()));
    let tools = Arc::new(Tools::new(aws.table.clone(), tenants, keys, aws.queue.clone(), aws.saga, ToolsOptions::from_config(&config))?);
    let app = rate_limited(api_counting_failures(routes().with_state(tools.clone()), aws.queue), limiter);
    Ok(Function::new(Some(app), move |event| {
        let tools = tools.clone();
        async move {
            match event {
                Event::Task(input) => {
                    let input: StepInput = serde_json::from_value(input).map_err(|e| task_error(&KeelError::BadRequest(e.to_string())))?;
                    tools.run_step(input).await.map_err(|e| task_error(&e))
                }
                Event::Queue(batch) => to_json(&batch_response(tools.consume(&queue_messages(batch)).await)),
                other => Err(other.unsupported()),
            }
        }
    }))
}
