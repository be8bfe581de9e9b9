//! `keel dev`: the AWS resources of the template on moto server, seeded for
//! the sample events, and the environment `cargo lambda watch` needs.

use crate::api::CliError;
use crate::output::Printed;
use serde_json::json;

/// The platform admin key of a development stack (never of a deployed one).
const DEV_ADMIN_KEY: &str = "keel_admin_local_0123456789";
/// What the saga's tasks would invoke; moto keeps it, nothing runs it (invoke
/// events/tools/saga-step.json by hand instead).
const TOOLS_FUNCTION_ARN: &str = "arn:aws:lambda:us-east-1:123456789012:function:keel-tools";

fn is_loopback(endpoint: &str) -> bool {
    url::Url::parse(endpoint).ok().and_then(|u| u.host_str().map(str::to_string)).is_some_and(|h| {
        h == "localhost" || h.trim_matches(['[', ']']).parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
    })
}

pub async fn provision(endpoint: &str, prefix: &str) -> Result<Printed, CliError> {
    if !is_loopback(endpoint) {
        return Err(CliError::Usage(format!("{endpoint} is not a loopback address: keel dev only provisions a local stand-in (sam deploy creates the real resources)")));
    }
    let sdk = keel_aws::provision::local_sdk_config(endpoint).await;
    let resources = keel_aws::provision::provision(&sdk, prefix, TOOLS_FUNCTION_ARN).await.map_err(|e| CliError::Other(e.to_string()))?;
    let config = keel_core::config::Config::from_lookup(|k| (k == "KEEL_ADMIN_KEY").then(|| DEV_ADMIN_KEY.to_string())).map_err(|e| CliError::Other(e.to_string()))?;
    let adapters = keel_aws::Adapters::new(sdk, resources.clone());
    keel_aws::provision::seed_samples(adapters.table.clone(), adapters.blobs.as_ref(), &config).await.map_err(|e| CliError::Other(e.to_string()))?;
    let mut env = vec![
        ("AWS_ENDPOINT_URL".to_string(), endpoint.to_string()),
        ("AWS_REGION".into(), "us-east-1".into()),
        ("AWS_ACCESS_KEY_ID".into(), "testing".into()),
        ("AWS_SECRET_ACCESS_KEY".into(), "testing".into()),
        ("KEEL_ADMIN_KEY".into(), DEV_ADMIN_KEY.into()),
    ];
    env.extend(resources.environment());
    let text = env.iter().map(|(k, v)| format!("export {k}={v}")).collect::<Vec<_>>().join("\n");
    Ok(Printed { json: json!(env.into_iter().collect::<std::collections::BTreeMap<_, _>>()), text })
}
