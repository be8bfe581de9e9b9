//! `keel-retrieval`: document and search routes, and the ingest-queue consumer.

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    keel_lambda::init_tracing();
    let aws = keel_aws::Adapters::from_env().await?;
    let config = aws.config().await?;
    keel_retrieval::lambda::function(aws, config)?.run().await
}
