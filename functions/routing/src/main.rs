//! `keel-routing`: `POST /v1/ask`.

use keel_core::config::{Config, ModelChoice};
use keel_core::http::dispatch;
use keel_lambda::{http_response, serve, unsupported, Incoming};
use keel_retrieval::Retrieval;
use keel_routing::{HostedModel, Routing};
use std::sync::Arc;

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    keel_lambda::init_tracing();
    let config = Config::from_env()?;
    let aws = keel_aws::Adapters::from_env().await?;
    let hosted = match &config.model {
        ModelChoice::Extractive => None,
        ModelChoice::Bedrock { model_id, usd_per_1k_input, usd_per_1k_output } => Some(HostedModel {
            provider: Arc::new(keel_aws::BedrockProvider::new(aws_sdk_bedrockruntime::Client::new(&aws.sdk))),
            model_id: model_id.clone(),
            usd_per_1k_input: *usd_per_1k_input,
            usd_per_1k_output: *usd_per_1k_output,
        }),
    };
    let retrieval = Arc::new(Retrieval::from_config(aws.table.clone(), aws.blobs, &config)?);
    let routing = Arc::new(Routing::new(
        retrieval,
        aws.table,
        aws.queue,
        hosted,
        config.min_evidence_coverage,
        config.min_evidence_similarity,
        config.model_max_tokens,
    ));
    serve(|incoming| {
        let routing = routing.clone();
        async move {
            match incoming {
                Incoming::Http(req) => Ok(http_response(dispatch(req, |r| routing.handle(r)).await)),
                other => Err(unsupported(&other)),
            }
        }
    })
    .await
}
