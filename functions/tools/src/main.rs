//! `keel-tools`: tool and action routes, the actions-queue consumer and the saga's task steps.

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    keel_lambda::init_tracing();
    let aws = keel_aws::Adapters::from_env().await?;
    let config = aws.config().await?;
    keel_tools::lambda::function(aws, config)?.run().await
}
