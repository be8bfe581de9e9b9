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
    keel_aws::provision::local_sdk_config(endpoint).await
}


/// The table as template.yaml defines it (keel_aws::provision, as `scripts/dev.sh` makes it).
pub async fn create_table(sdk: &aws_config::SdkConfig, table_name: &str) {
    keel_aws::provision::create_table(sdk, table_name).await.expect("table created");
}

/// A bucket with versioning on, as template.yaml's.
pub async fn create_versioned_bucket(sdk: &aws_config::SdkConfig, bucket: &str) {
    keel_aws::provision::create_versioned_bucket(sdk, bucket).await.expect("bucket created");
}
