//! `keel-tools`: tool and action routes, and the saga's task steps.

use keel_core::config::Config;
use keel_core::http::dispatch;
use keel_lambda::{batch_response, http_response, queue_messages, serve, task_error, to_json, unsupported, Incoming};
use keel_tools::{StepInput, Tools, ToolsOptions};
use std::sync::Arc;

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    keel_lambda::init_tracing();
    let config = Config::from_env()?;
    let aws = keel_aws::Adapters::from_env().await?;
    let tools = Arc::new(Tools::new(aws.table, aws.queue, aws.saga, ToolsOptions::from_config(&config))?);
    serve(|incoming| {
        let tools = tools.clone();
        async move {
            match incoming {
                Incoming::Http(req) => Ok(http_response(dispatch(req, |r| tools.handle(r)).await)),
                Incoming::Task(input) => {
                    let input: StepInput = serde_json::from_value(input)
                        .map_err(|e| task_error(&keel_core::KeelError::BadRequest(e.to_string())))?;
                    tools.run_step(input).await.map_err(|e| task_error(&e))
                }
                Incoming::Queue(batch) => to_json(&batch_response(tools.consume(&queue_messages(batch)).await)),
                other => Err(unsupported(&other)),
            }
        }
    })
    .await
}
