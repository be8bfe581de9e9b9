//! `ModelProvider` over Bedrock `Converse`.

use crate::sdk_message;
use async_trait::async_trait;
use aws_sdk_bedrockruntime::operation::converse::ConverseError;
use aws_sdk_bedrockruntime::types::{ContentBlock, ConversationRole, ConverseOutput, InferenceConfiguration, Message, SystemContentBlock};
use aws_sdk_bedrockruntime::Client;
use keel_core::ports::{ModelError, ModelProvider, ModelRequest, ModelResponse, Role};

#[derive(Clone)]
pub struct BedrockProvider {
    client: Client,
}

impl BedrockProvider {
    pub fn new(client: Client) -> Self {
        Self { client }
    }
}

#[async_trait]
impl ModelProvider for BedrockProvider {
    async fn generate(&self, request: ModelRequest) -> Result<ModelResponse, ModelError> {
        let mut call = self.client.converse().model_id(&request.model);
        if !request.system.is_empty() {
            call = call.system(SystemContentBlock::Text(request.system));
        }
        for m in request.messages {
            let role = match m.role {
                Role::User => ConversationRole::User,
                Role::Assistant => ConversationRole::Assistant,
            };
            let message = Message::builder()
                .role(role)
                .content(ContentBlock::Text(m.content))
                .build()
                .map_err(|e| ModelError::Rejected(e.to_string()))?;
            call = call.messages(message);
        }
        let config = InferenceConfiguration::builder()
            .max_tokens(request.max_tokens as i32)
            .set_temperature(request.temperature)
            .build();
        let out = call
            .inference_config(config)
            .send()
            .await
            .map_err(|e| match e.as_service_error() {
                Some(ConverseError::ThrottlingException(_)) => ModelError::Throttled(sdk_message(&e)),
                Some(
                    ConverseError::ValidationException(_)
                    | ConverseError::AccessDeniedException(_)
                    | ConverseError::ResourceNotFoundException(_),
                ) => ModelError::Rejected(sdk_message(&e)),
                Some(ConverseError::ModelTimeoutException(_)) => ModelError::Unavailable(sdk_message(&e)),
                _ => ModelError::Unavailable(sdk_message(&e)),
            })?;
        let text = match out.output() {
            Some(ConverseOutput::Message(m)) => m
                .content()
                .iter()
                .filter_map(|b| b.as_text().ok().cloned())
                .collect::<Vec<_>>()
                .join(""),
            _ => return Err(ModelError::Unavailable("Converse returned no message".into())),
        };
        let (input_tokens, output_tokens) = out
            .usage()
            .map(|u| (u.input_tokens().max(0) as u64, u.output_tokens().max(0) as u64))
            .unwrap_or((0, 0));
        Ok(ModelResponse { text, input_tokens, output_tokens })
    }
}
