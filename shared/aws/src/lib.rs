//! keel-aws: the production adapters of Keel's ports, over the AWS SDK.
//! Tested over the wire against moto server (tests/; SageMaker runtime
//! included), Bedrock against a stub.

mod bedrock;
mod dynamodb;
mod s3;
mod sagemaker;
mod secrets;
pub mod sessions;
mod sfn;
mod sns;
mod sqs;

pub use bedrock::BedrockProvider;
pub use dynamodb::DynamoTable;
pub use s3::S3Blobs;
pub use sagemaker::SageMakerProvider;
pub use secrets::{config_from_env, read_secrets};
pub mod provision;
pub use sessions::TenantSessions;
pub use sfn::StepFunctionsSaga;
pub use sns::SnsNotifier;
pub use sqs::SqsQueue;

use keel_core::ports::QueueName;
use keel_core::KeelError;
use std::collections::HashMap;

/// The AWS resources a function works on, named by the template's environment.
#[derive(Clone, Debug)]
pub struct AwsResources {
    pub table: String,
    pub bucket: String,
    pub queue_urls: HashMap<QueueName, String>,
    pub dead_letter_urls: HashMap<QueueName, String>,
    pub saga_arn: String,
    /// The tenant-access role assumed per tenant (`KEEL_TENANT_ROLE_ARN`);
    /// unset, tenant data is reached with the function's own credentials.
    pub tenant_role_arn: Option<String>,
    /// The queue the bucket notifies of inbox objects (`KEEL_INBOX_QUEUE_ARN`):
    /// the retrieval function takes S3 notifications from it alone.
    pub inbox_queue_arn: Option<String>,
}

impl AwsResources {
    pub fn from_env() -> Result<Self, KeelError> {
        let var = |k: &str| std::env::var(k).map_err(|_| KeelError::Config(format!("{k} must be set")));
        let mut queue_urls = HashMap::new();
        queue_urls.insert(QueueName::Ingest, var("KEEL_INGEST_QUEUE_URL")?);
        queue_urls.insert(QueueName::Audit, var("KEEL_AUDIT_QUEUE_URL")?);
        queue_urls.insert(QueueName::Actions, var("KEEL_ACTIONS_QUEUE_URL")?);
        // Only the bucket sends to the inbox queue: a function needs its URL only where it is provisioned by hand.
        if let Some(url) = std::env::var("KEEL_INBOX_QUEUE_URL").ok().filter(|u| !u.is_empty()) {
            queue_urls.insert(QueueName::Inbox, url);
        }
        let mut dead_letter_urls = HashMap::new();
        dead_letter_urls.insert(QueueName::Ingest, var("KEEL_INGEST_DLQ_URL")?);
        dead_letter_urls.insert(QueueName::Audit, var("KEEL_AUDIT_DLQ_URL")?);
        dead_letter_urls.insert(QueueName::Actions, var("KEEL_ACTIONS_DLQ_URL")?);
        let (table, bucket, saga_arn) = (var("KEEL_TABLE")?, var("KEEL_BUCKET")?, var("KEEL_SAGA_ARN")?);
        let tenant_role_arn = std::env::var("KEEL_TENANT_ROLE_ARN").ok().filter(|r| !r.is_empty());
        let inbox_queue_arn = std::env::var("KEEL_INBOX_QUEUE_ARN").ok().filter(|a| !a.is_empty());
        Ok(Self { table, bucket, queue_urls, dead_letter_urls, saga_arn, tenant_role_arn, inbox_queue_arn })
    }
}

/// Loads the SDK config once (region, credentials and `AWS_ENDPOINT_URL` from the environment).
pub async fn load_sdk_config() -> aws_config::SdkConfig {
    aws_config::load_defaults(aws_config::BehaviorVersion::latest()).await
}

/// An S3 client; path-style addressing when a custom endpoint (moto) is set.
pub fn s3_client(sdk: &aws_config::SdkConfig) -> aws_sdk_s3::Client {
    let conf = aws_sdk_s3::config::Builder::from(sdk)
        .force_path_style(sdk.endpoint_url().is_some())
        .build();
    aws_sdk_s3::Client::from_conf(conf)
}

/// Flattens an SDK error, with its service error details, into a message.
pub(crate) fn sdk_message<E: std::fmt::Debug>(e: &E) -> String {
    let s = format!("{e:?}");
    s.chars().take(400).collect()
}

/// Every AWS adapter a function may need, built once in `main`.
pub struct Adapters {
    pub sdk: aws_config::SdkConfig,
    pub table: std::sync::Arc<DynamoTable>,
    pub blobs: std::sync::Arc<S3Blobs>,
    pub queue: std::sync::Arc<SqsQueue>,
    pub saga: std::sync::Arc<StepFunctionsSaga>,
    /// The queue the bucket alone notifies of inbox objects (`AwsResources::inbox_queue_arn`).
    pub inbox_queue_arn: Option<String>,
}

impl Adapters {
    pub async fn from_env() -> Result<Self, KeelError> {
        Ok(Self::new(load_sdk_config().await, AwsResources::from_env()?))
    }

    /// The adapters of `resources`, through `sdk`'s endpoint and credentials.
    pub fn new(sdk: aws_config::SdkConfig, resources: AwsResources) -> Self {
        let sessions = std::sync::Arc::new(TenantSessions::new(sdk.clone(), resources.tenant_role_arn));
        Self {
            table: std::sync::Arc::new(DynamoTable::with_sessions(sessions.clone(), resources.table)),
            blobs: std::sync::Arc::new(S3Blobs::with_sessions(sessions, resources.bucket)),
            queue: std::sync::Arc::new(SqsQueue::new(aws_sdk_sqs::Client::new(&sdk), resources.queue_urls, resources.dead_letter_urls)),
            saga: std::sync::Arc::new(StepFunctionsSaga::new(aws_sdk_sfn::Client::new(&sdk), resources.saga_arn)),
            inbox_queue_arn: resources.inbox_queue_arn,
            sdk,
        }
    }

    /// The operators' topic (`KEEL_ALERT_TOPIC_ARN`), when the function is given one.
    pub fn notifier(&self) -> Option<std::sync::Arc<SnsNotifier>> {
        let topic = std::env::var("KEEL_ALERT_TOPIC_ARN").ok().filter(|t| !t.is_empty())?;
        Some(std::sync::Arc::new(SnsNotifier::new(aws_sdk_sns::Client::new(&self.sdk), topic)))
    }

    /// The function's config, with its secrets read from Secrets Manager.
    pub async fn config(&self) -> Result<keel_core::config::Config, KeelError> {
        config_from_env(&self.sdk).await
    }
}
