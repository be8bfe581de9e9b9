//! `keel-auth`: the authorizer and the admin routes, in one Lambda.

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    keel_lambda::init_tracing();
    let aws = keel_aws::Adapters::from_env().await?;
    let config = aws.config().await?;
    keel_auth::lambda::function(aws, config)?.run().await
}
