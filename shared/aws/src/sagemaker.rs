//! `ModelProvider` over SageMaker `InvokeEndpoint`: GPU endpoints serving the
//! OpenAI-style messages API (TGI and vLLM both do), so the payload is
//! `keel_core::openai`'s.

use crate::sdk_message;
use async_trait::async_trait;
use aws_sdk_sagemakerruntime::operation::invoke_endpoint::InvokeEndpointError;
use aws_sdk_sagemakerruntime::primitives::Blob;
use aws_sdk_sagemakerruntime::Client;
use keel_core::openai::{parse_response, request_body};
use keel_core::ports::{ModelError, ModelProvider, ModelRequest, ModelResponse};

#[derive(Clone)]
pub struct SageMakerProvider {
    client: Client,
}

impl SageMakerProvider {
    pub fn new(client: Client) -> Self {
        Self { client }
    }
}

#[async_trait]
impl ModelProvider for SageMakerProvider {
    /// `request.model` is the endpoint name.
    async fn generate(&self, request: ModelRequest) -> Result<ModelResponse, ModelError> {
        let body = serde_json::to_vec(&request_body(&request, false)).map_err(|e| ModelError::Rejected(e.to_string()))?;
        let out = self
            .client
            .invoke_endpoint()
            .endpoint_name(&request.model)
            .content_type("application/json")
            .accept("application/json")
            .body(Blob::new(body))
            .send()
            .await
            .map_err(|e| match e.as_service_error() {
                Some(InvokeEndpointError::ValidationError(_)) => ModelError::Rejected(sdk_message(&e)),
                Some(InvokeEndpointError::ModelNotReadyException(_) | InvokeEndpointError::ServiceUnavailable(_)) => {
                    ModelError::Throttled(sdk_message(&e))
                }
                _ => ModelError::Unavailable(sdk_message(&e)),
            })?;
        parse_response(out.body().map(|b| b.as_ref()).unwrap_or_default())
    }
}
