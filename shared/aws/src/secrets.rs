//! Secrets read from Secrets Manager once at init, never from the
//! environment in AWS: the template gives a function the ARN of each secret
//! it needs (`KEEL_ADMIN_KEY_SECRET_ARN`, `KEEL_JWT_SECRET_ARN`) and IAM lets
//! only that function read it. The values stay in the function's memory.

use crate::sdk_message;
use keel_core::config::Config;
use keel_core::KeelError;
use std::collections::HashMap;

/// Each setting a secret provides, with the variable naming the secret's ARN.
const SECRET_SETTINGS: [(&str, &str); 2] = [("KEEL_ADMIN_KEY", "KEEL_ADMIN_KEY_SECRET_ARN"), ("KEEL_JWT_SECRET", "KEEL_JWT_SECRET_ARN")];

/// Reads the secrets named by `lookup` (`…_SECRET_ARN`) into their settings.
pub async fn read_secrets(
    client: &aws_sdk_secretsmanager::Client,
    lookup: impl Fn(&str) -> Option<String>,
) -> Result<HashMap<&'static str, String>, KeelError> {
    let mut values = HashMap::new();
    for (setting, arn_variable) in SECRET_SETTINGS {
        let Some(arn) = lookup(arn_variable).filter(|a| !a.is_empty()) else { continue };
        let out = client
            .get_secret_value()
            .secret_id(&arn)
            .send()
            .await
            .map_err(|e| KeelError::Config(format!("{arn_variable}: cannot read the secret: {}", sdk_message(&e))))?;
        let value = out
            .secret_string()
            .ok_or_else(|| KeelError::Config(format!("{arn_variable}: the secret has no string value")))?;
        values.insert(setting, value.to_string());
    }
    Ok(values)
}

/// The function's config: the environment, with each secret read from Secrets Manager.
pub async fn config_from_env(sdk: &aws_config::SdkConfig) -> Result<Config, KeelError> {
    let env = |k: &str| std::env::var(k).ok();
    let secrets = read_secrets(&aws_sdk_secretsmanager::Client::new(sdk), env).await?;
    for setting in secrets.keys() {
        if env(setting).is_some_and(|v| !v.is_empty()) {
            return Err(KeelError::Config(format!("{setting} is read from its secret; do not set it in the environment as well")));
        }
    }
    Config::from_lookup(|k| secrets.get(k).cloned().or_else(|| env(k)))
}
