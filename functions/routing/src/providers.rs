//! The hosted model providers: an OpenAI-compatible HTTP client (a local
//! model server, vLLM, TGI, or any OpenAI-style API), and the catalog wiring
//! that gives every catalog model its provider.

use async_trait::async_trait;
use keel_core::models::{ModelSpec, ProviderKind};
use keel_core::openai::{parse_response, request_body, StreamReader};
use keel_core::ports::{Deltas, ModelError, ModelProvider, ModelRequest, ModelResponse};
use std::sync::Arc;

/// A catalog model with the provider that serves it.
#[derive(Clone)]
pub struct HostedModel {
    pub spec: ModelSpec,
    pub provider: Arc<dyn ModelProvider>,
}

/// Builds the providers for a catalog. AWS clients are made only when a
/// catalog model needs them.
pub async fn hosted_models(catalog: &[ModelSpec]) -> Vec<HostedModel> {
    let needs_aws = catalog.iter().any(|m| m.provider != ProviderKind::Openai);
    let sdk = if needs_aws { Some(keel_aws::load_sdk_config().await) } else { None };
    let http = reqwest::Client::new();
    catalog
        .iter()
        .map(|spec| {
            let provider: Arc<dyn ModelProvider> = match (spec.provider, &sdk) {
                (ProviderKind::Bedrock, Some(sdk)) => {
                    Arc::new(keel_aws::BedrockProvider::new(aws_sdk_bedrockruntime::Client::new(sdk)))
                }
                (ProviderKind::Sagemaker, Some(sdk)) => {
                    Arc::new(keel_aws::SageMakerProvider::new(aws_sdk_sagemakerruntime::Client::new(sdk)))
                }
                _ => Arc::new(OpenAiProvider::new(
                    http.clone(),
                    spec.base_url.clone().unwrap_or_default(),
                    spec.api_key_env.as_deref().and_then(|v| std::env::var(v).ok()),
                )),
            };
            HostedModel { spec: spec.clone(), provider }
        })
        .collect()
}

/// An OpenAI-compatible `POST {base_url}/chat/completions`.
pub struct OpenAiProvider {
    http: reqwest::Client,
    url: String,
    api_key: Option<String>,
}

impl OpenAiProvider {
    pub fn new(http: reqwest::Client, base_url: String, api_key: Option<String>) -> Self {
        Self { http, url: format!("{}/chat/completions", base_url.trim_end_matches('/')), api_key }
    }

    async fn send(&self, request: &ModelRequest, stream: bool) -> Result<reqwest::Response, ModelError> {
        let mut call = self.http.post(&self.url).json(&request_body(request, stream));
        if let Some(context) = keel_core::trace::current() {
            call = call.header("traceparent", context.child());
        }
        if let Some(key) = &self.api_key {
            call = call.bearer_auth(key);
        }
        let response = call.send().await.map_err(|e| ModelError::Unavailable(format!("{}: {e}", self.url)))?;
        let status = response.status();
        if status.is_success() {
            return Ok(response);
        }
        let body = response.text().await.unwrap_or_default();
        let message = format!("{status}: {}", body.chars().take(300).collect::<String>());
        Err(match status.as_u16() {
            429 => ModelError::Throttled(message),
            408 | 500..=599 => ModelError::Unavailable(message),
            _ => ModelError::Rejected(message),
        })
    }
}

#[async_trait]
impl ModelProvider for OpenAiProvider {
    async fn generate(&self, request: ModelRequest) -> Result<ModelResponse, ModelError> {
        let response = self.send(&request, false).await?;
        let body = response.bytes().await.map_err(|e| ModelError::Unavailable(e.to_string()))?;
        parse_response(&body)
    }

    /// Reads the server-sent events as they arrive.
    async fn generate_streaming(&self, request: ModelRequest, deltas: Deltas<'_>) -> Result<ModelResponse, ModelError> {
        let mut response = self.send(&request, true).await?;
        let mut reader = StreamReader::default();
        while !reader.is_done() {
            match response.chunk().await.map_err(|e| ModelError::Unavailable(format!("stream broke: {e}")))? {
                Some(chunk) => reader.feed(&chunk, deltas),
                None => break,
            }
        }
        Ok(reader.finish())
    }
}
