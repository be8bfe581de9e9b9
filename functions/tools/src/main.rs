//! `keel-tools`: tool and action routes, and the saga's task steps.

use keel_core::config::Config;
use keel_core::http::dispatch;
use keel_lambda::{http_response, serve, task_error, unsupported, Incoming};
use keel_tools::{StepInput, Tools};
use std::sync::Arc;
use std::time::Duration;

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    keel_lambda::init_tracing();
    let config = Config::from_env()?;
    let aws = keel_aws::Adapters::from_env().await?;
    let tools = Arc::new(Tools::new(aws.table, aws.queue, aws.saga, Duration::from_millis(config.connector_timeout_ms))?);
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
                other => Err(unsupported(&other)),
            }
        }
    })
    .await
}
