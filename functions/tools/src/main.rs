//! `keel-tools`: tool and action routes, the actions-queue consumer and the saga's task steps.

use keel_core::http::api_counting_failures;
use keel_lambda::{batch_response, queue_messages, task_error, to_json, Event};
use keel_tools::{routes::routes, StepInput, Tools, ToolsOptions};
use std::sync::Arc;

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    keel_lambda::init_tracing();
    let aws = keel_aws::Adapters::from_env().await?;
    let config = aws.config().await?;
    let tenants = Arc::new(config.tenant_store(aws.table.clone()));
    let keys = Arc::new(config.key_authenticator(aws.table.clone(), tenants.clone()));
    let tools = Arc::new(Tools::new(aws.table.clone(), tenants, keys, aws.queue.clone(), aws.saga, ToolsOptions::from_config(&config))?);
    let app = api_counting_failures(routes().with_state(tools.clone()), aws.queue);
    keel_lambda::run(Some(app), |event| {
        let tools = tools.clone();
        async move {
            match event {
                Event::Task(input) => {
                    let input: StepInput = serde_json::from_value(input)
                        .map_err(|e| task_error(&keel_core::KeelError::BadRequest(e.to_string())))?;
                    tools.run_step(input).await.map_err(|e| task_error(&e))
                }
                Event::Queue(batch) => to_json(&batch_response(tools.consume(&queue_messages(batch)).await)),
                other => Err(other.unsupported()),
            }
        }
    })
    .await
}
