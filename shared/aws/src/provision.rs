//! Creates what template.yaml declares for the data path — the table, the
//! versioned bucket, the three queues with their dead-letter queues and the
//! saga's state machine — on an AWS endpoint: moto server, for
//! `scripts/dev.sh` (testing one function with cargo lambda) and the tests
//! that run the sample events. A real account gets these from `sam deploy`.

use crate::{s3_client, sdk_message, AwsResources};
use aws_sdk_dynamodb::types::{AttributeDefinition, BillingMode, KeySchemaElement, KeyType, ScalarAttributeType};
use aws_sdk_s3::types::{BucketVersioningStatus, VersioningConfiguration};
use aws_sdk_sqs::types::QueueAttributeName;
use keel_core::ports::QueueName;
use keel_core::KeelError;
use std::collections::HashMap;

/// The SDK's configuration for a local stand-in at `endpoint` (moto server):
/// its region and the test credentials it accepts.
pub async fn local_sdk_config(endpoint: &str) -> aws_config::SdkConfig {
    aws_config::defaults(aws_config::BehaviorVersion::latest())
        .endpoint_url(endpoint)
        .region(aws_config::Region::new("us-east-1"))
        .credentials_provider(aws_sdk_sqs::config::Credentials::new("testing", "testing", None, None, "local"))
        .load()
        .await
}

/// Redeliveries before a message is dead-lettered (the template's maxReceiveCount).
const MAX_RECEIVES: u32 = 5;

fn failed(what: &str) -> impl Fn(String) -> KeelError + '_ {
    move |e| KeelError::Unavailable(format!("creating {what}: {e}"))
}

/// The table, keyed as the template keys it.
pub async fn create_table(sdk: &aws_config::SdkConfig, name: &str) -> Result<(), KeelError> {
    let attr = |n: &str| AttributeDefinition::builder().attribute_name(n).attribute_type(ScalarAttributeType::S).build();
    let key = |n: &str, t: KeyType| KeySchemaElement::builder().attribute_name(n).key_type(t).build();
    let bad = |e: aws_sdk_dynamodb::error::BuildError| KeelError::Internal(e.to_string());
    aws_sdk_dynamodb::Client::new(sdk)
        .create_table()
        .table_name(name)
        .attribute_definitions(attr("pk").map_err(bad)?)
        .attribute_definitions(attr("sk").map_err(bad)?)
        .key_schema(key("pk", KeyType::Hash).map_err(bad)?)
        .key_schema(key("sk", KeyType::Range).map_err(bad)?)
        .billing_mode(BillingMode::PayPerRequest)
        .send()
        .await
        .map_err(|e| failed("the table")(sdk_message(&e)))?;
    Ok(())
}

/// A bucket with versioning on, as the template's.
pub async fn create_versioned_bucket(sdk: &aws_config::SdkConfig, bucket: &str) -> Result<(), KeelError> {
    let s3 = s3_client(sdk);
    s3.create_bucket().bucket(bucket).send().await.map_err(|e| failed("the bucket")(sdk_message(&e)))?;
    let enabled = VersioningConfiguration::builder().status(BucketVersioningStatus::Enabled).build();
    s3.put_bucket_versioning().bucket(bucket).versioning_configuration(enabled).send().await.map_err(|e| failed("versioning")(sdk_message(&e)))?;
    Ok(())
}

/// Every resource, named `<prefix>-…`; `tools_function_arn` is what the saga's tasks invoke.
pub async fn provision(sdk: &aws_config::SdkConfig, prefix: &str, tools_function_arn: &str) -> Result<AwsResources, KeelError> {
    let table = format!("{prefix}-table");
    create_table(sdk, &table).await?;
    let bucket = format!("{prefix}-bucket");
    create_versioned_bucket(sdk, &bucket).await?;
    let sqs = aws_sdk_sqs::Client::new(sdk);
    let (mut queue_urls, mut dead_letter_urls) = (HashMap::new(), HashMap::new());
    for queue in QueueName::ALL {
        let dlq = sqs.create_queue().queue_name(format!("{prefix}-{}-dlq", queue.as_str())).send().await.map_err(|e| failed("a queue")(sdk_message(&e)))?;
        let dlq_url = dlq.queue_url().unwrap_or_default().to_string();
        let arn = sqs.get_queue_attributes().queue_url(&dlq_url).attribute_names(QueueAttributeName::QueueArn).send().await.map_err(|e| failed("a queue")(sdk_message(&e)))?;
        let dlq_arn = arn.attributes().and_then(|a| a.get(&QueueAttributeName::QueueArn)).cloned().unwrap_or_default();
        let redrive = format!(r#"{{"deadLetterTargetArn":"{dlq_arn}","maxReceiveCount":"{MAX_RECEIVES}"}}"#);
        let main = sqs
            .create_queue()
            .queue_name(format!("{prefix}-{}", queue.as_str()))
            .attributes(QueueAttributeName::RedrivePolicy, redrive)
            .send()
            .await
            .map_err(|e| failed("a queue")(sdk_message(&e)))?;
        queue_urls.insert(queue, main.queue_url().unwrap_or_default().to_string());
        dead_letter_urls.insert(queue, dlq_url);
    }
    let inbox = queue_urls.get(&QueueName::Inbox).cloned().unwrap_or_default();
    let arn = sqs.get_queue_attributes().queue_url(&inbox).attribute_names(QueueAttributeName::QueueArn).send().await.map_err(|e| failed("a queue")(sdk_message(&e)))?;
    let inbox_queue_arn = arn.attributes().and_then(|a| a.get(&QueueAttributeName::QueueArn)).cloned();
    let definition = include_str!("../../../infra/statemachines/action.asl.json").replace("${ToolsFunctionArn}", tools_function_arn);
    let machine = aws_sdk_sfn::Client::new(sdk)
        .create_state_machine()
        .name(format!("{prefix}-action-saga"))
        .definition(definition)
        .role_arn("arn:aws:iam::123456789012:role/keel-saga")
        .send()
        .await
        .map_err(|e| failed("the saga")(sdk_message(&e)))?;
    let saga_arn = machine.state_machine_arn().to_string();
    Ok(AwsResources { table, bucket, queue_urls, dead_letter_urls, saga_arn, tenant_role_arn: None, inbox_queue_arn })
}

impl AwsResources {
    /// The environment variables the functions read these resources from (AwsResources::from_env).
    pub fn environment(&self) -> Vec<(String, String)> {
        let mut env = vec![("KEEL_TABLE".to_string(), self.table.clone()), ("KEEL_BUCKET".into(), self.bucket.clone()), ("KEEL_SAGA_ARN".into(), self.saga_arn.clone())];
        for queue in QueueName::ALL {
            let name = queue.as_str().to_uppercase();
            env.push((format!("KEEL_{name}_QUEUE_URL"), self.queue_urls.get(&queue).cloned().unwrap_or_default()));
            env.push((format!("KEEL_{name}_DLQ_URL"), self.dead_letter_urls.get(&queue).cloned().unwrap_or_default()));
        }
        env.push(("KEEL_INBOX_QUEUE_ARN".into(), self.inbox_queue_arn.clone().unwrap_or_default()));
        env
    }
}

/// The key every sample event in events/ that needs one carries (queue
/// batches' `authorization` attribute, the authorizer request, the function
/// URL request), for tenant `acme`. Seeded only on a development endpoint.
pub const SAMPLE_KEY: &str = "keel_acme_SampleProducerKeyFromTheEvents0";

/// What the samples expect besides the tenant that events/auth/create-tenant.json
/// creates: the sample key (principal `billing-service`, member, group `staff`)
/// and the inbox object events/retrieval/inbox-batch.json names, in any
/// table and blob store (the AWS adapters for `keel dev`, the embedded ones in tests).
pub async fn seed_samples(
    table: std::sync::Arc<dyn keel_core::ports::Table>,
    blobs: &dyn keel_core::ports::BlobStore,
    config: &keel_core::config::Config,
) -> Result<(), KeelError> {
    let acme = keel_core::TenantId::parse("acme")?;
    let tenants = std::sync::Arc::new(config.tenant_store(table.clone()));
    let keys = config.key_authenticator(table, tenants);
    let record = keel_core::auth::ApiKeyRecord {
        principal: "billing-service".into(),
        roles: vec![keel_core::auth::ROLE_MEMBER.into()],
        attributes: HashMap::from([("groups".to_string(), serde_json::json!(["staff"]))]),
        created_at: keel_core::time::now_rfc3339(),
        prefix: SAMPLE_KEY[..16].to_string(),
        expires_at: None,
        last_used_at: None,
        issued_by: Some(keel_core::auth::ROLE_PLATFORM_ADMIN.into()),
        pending: None,
    };
    keys.store().create(&acme, SAMPLE_KEY, &record).await?;
    blobs.put(&acme.blob_key("inbox/faq.txt"), b"Gift cards never expire.".to_vec()).await.map_err(KeelError::from)
}
