//! `ModelProvider` over SageMaker `InvokeEndpoint`: GPU endpoints serving the
//! OpenAI-style messages API (TGI and vLLM both do), so the payload is
//! `keel_core::openai`'s. A streaming caller gets
//! `InvokeEndpointWithResponseStream`: the server-sent events arrive in
//! payload parts and their text is passed on as it comes.

use crate::sdk_message;
use async_trait::async_trait;
use aws_sdk_sagemakerruntime::operation::invoke_endpoint::InvokeEndpointError;
use aws_sdk_sagemakerruntime::operation::invoke_endpoint_with_response_stream::InvokeEndpointWithResponseStreamError;
use aws_sdk_sagemakerruntime::primitives::Blob;
use aws_sdk_sagemakerruntime::types::ResponseStream;
use aws_sdk_sagemakerruntime::Client;
use keel_core::openai::{parse_response, request_body, StreamReader};
use keel_core::ports::{Deltas, ModelError, ModelProvider, ModelRequest, ModelResponse};

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
        let body = body(&request, false)?;
        let out = self
            .client
            .invoke_endpoint()
            .endpoint_name(&request.model)
            .content_type("application/json")
            .accept("application/json")
            .body(body)
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

    async fn generate_streaming(&self, request: ModelRequest, deltas: Deltas<'_>) -> Result<ModelResponse, ModelError> {
        let mut out = self
            .client
            .invoke_endpoint_with_response_stream()
            .endpoint_name(&request.model)
            .content_type("application/json")
            .accept("text/event-stream")
            .body(body(&request, true)?)
            .send()
            .await
            .map_err(|e| match e.as_service_error() {
                Some(InvokeEndpointWithResponseStreamError::ValidationError(_)) => ModelError::Rejected(sdk_message(&e)),
                Some(InvokeEndpointWithResponseStreamError::ServiceUnavailable(_)) => ModelError::Throttled(sdk_message(&e)),
                _ => ModelError::Unavailable(sdk_message(&e)),
            })?;
        let mut reader = StreamReader::default();
        while !reader.is_done() {
            // A stream cut mid-answer (model or internal stream error) may work on retry.
            match out.body.recv().await.map_err(|e| ModelError::Unavailable(sdk_message(&e)))? {
                Some(ResponseStream::PayloadPart(part)) => reader.feed(part.bytes().map(|b| b.as_ref()).unwrap_or_default(), deltas),
                Some(_) => {}
                None => break,
            }
        }
        Ok(reader.finish())
    }
}

fn body(request: &ModelRequest, stream: bool) -> Result<Blob, ModelError> {
    serde_json::to_vec(&request_body(request, stream)).map(Blob::new).map_err(|e| ModelError::Rejected(e.to_string()))
}
