//! `keel-routing`: `POST /v1/ask`, `POST /v1/chat/completions`, `POST /v1/classify`
//! and `POST /v1/rank`. Behind API Gateway it answers whole (a streamed request
//! gets its events in one body); behind its function URL (response streaming)
//! it authenticates the caller itself and streams server-sent events as they
//! are produced.

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    keel_lambda::init_tracing();
    let aws = keel_aws::Adapters::from_env().await?;
    let config = aws.config().await?;
    keel_routing::lambda::function(aws, config).await?.run().await
}
