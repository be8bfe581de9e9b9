//! `keel-audit`: the audit-queue consumer and the decision, audit and usage routes.

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    keel_lambda::init_tracing();
    let aws = keel_aws::Adapters::from_env().await?;
    let config = aws.config().await?;
    keel_audit::lambda::function(aws, config)?.run().await
}
