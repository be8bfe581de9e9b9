//! Reaching moto server, the AWS stand-in scripts/test.sh starts (test-only code).
#![allow(clippy::panic)]

/// The moto endpoint, or `None` (and the AWS tests are skipped) when it is not
/// set; scripts/test.sh sets it and `KEEL_REQUIRE_MOTO=1`, which turns a
/// missing endpoint into a failure.
pub fn moto() -> Option<String> {
    match std::env::var("KEEL_MOTO_ENDPOINT") {
        Ok(url) => Some(url),
        Err(_) if std::env::var("KEEL_REQUIRE_MOTO").is_ok() => panic!("KEEL_REQUIRE_MOTO is set but KEEL_MOTO_ENDPOINT is not"),
        Err(_) => {
            eprintln!("KEEL_MOTO_ENDPOINT not set: skipping the AWS adapter contract tests (scripts/test.sh runs them)");
            None
        }
    }
}

pub async fn sdk_config(endpoint: &str) -> aws_config::SdkConfig {
    aws_config::defaults(aws_config::BehaviorVersion::latest())
        .endpoint_url(endpoint)
        .region(aws_config::Region::new("us-east-1"))
        .credentials_provider(aws_sdk_dynamodb::config::Credentials::new("testing", "testing", None, None, "test"))
        .load()
        .await
}


/// The table as template.yaml defines it.
pub async fn create_table(ddb: &aws_sdk_dynamodb::Client, table_name: &str) {
    use aws_sdk_dynamodb::types::{AttributeDefinition, BillingMode, KeySchemaElement, KeyType, ScalarAttributeType};
    let attr = |n: &str| AttributeDefinition::builder().attribute_name(n).attribute_type(ScalarAttributeType::S).build().expect("attribute");
    let key = |n: &str, t: KeyType| KeySchemaElement::builder().attribute_name(n).key_type(t).build().expect("key");
    ddb.create_table()
        .table_name(table_name)
        .attribute_definitions(attr("pk"))
        .attribute_definitions(attr("sk"))
        .key_schema(key("pk", KeyType::Hash))
        .key_schema(key("sk", KeyType::Range))
        .billing_mode(BillingMode::PayPerRequest)
        .send()
        .await
        .expect("table created");
}

/// A bucket with versioning on, as template.yaml's.
pub async fn create_versioned_bucket(s3: &aws_sdk_s3::Client, bucket: &str) {
    use aws_sdk_s3::types::{BucketVersioningStatus, VersioningConfiguration};
    s3.create_bucket().bucket(bucket).send().await.expect("bucket created");
    let enabled = VersioningConfiguration::builder().status(BucketVersioningStatus::Enabled).build();
    s3.put_bucket_versioning().bucket(bucket).versioning_configuration(enabled).send().await.expect("versioning on");
}
