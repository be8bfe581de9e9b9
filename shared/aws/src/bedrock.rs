//! `ModelProvider` over Bedrock `Converse`, and `ConverseStream` when the
//! caller streams (text deltas are passed on as Bedrock sends them).

use crate::sdk_message;
use async_trait::async_trait;
use aws_sdk_bedrockruntime::operation::converse::ConverseError;
use aws_sdk_bedrockruntime::operation::converse_stream::ConverseStreamError;
use aws_sdk_bedrockruntime::types::error::ConverseStreamOutputError;
use aws_sdk_bedrockruntime::types::{
    ContentBlock, ConversationRole, ConverseOutput, ConverseStreamOutput, InferenceConfiguration, Message, SystemContentBlock,
    TokenUsage,
};
use aws_sdk_bedrockruntime::Client;
use keel_core::ports::{Deltas, ModelError, ModelProvider, ModelRequest, ModelResponse, Role};

#[derive(Clone)]
pub struct BedrockProvider {
    client: Client,
}

impl BedrockProvider {
    pub fn new(client: Client) -> Self {
        Self { client }
    }
}

/// A request in Converse's terms, shared by `Converse` and `ConverseStream`.
struct Conversation {
    system: Option<Vec<SystemContentBlock>>,
    messages: Vec<Message>,
    config: InferenceConfiguration,
}

impl Conversation {
    fn of(request: ModelRequest) -> Result<Self, ModelError> {
        let system = (!request.system.is_empty()).then(|| vec![SystemContentBlock::Text(request.system)]);
        let messages = request
            .messages
            .into_iter()
            .map(|m| {
                let role = match m.role {
                    Role::User => ConversationRole::User,
                    Role::Assistant => ConversationRole::Assistant,
                };
                Message::builder()
                    .role(role)
                    .content(ContentBlock::Text(m.content))
                    .build()
                    .map_err(|e| ModelError::Rejected(e.to_string()))
            })
            .collect::<Result<_, _>>()?;
        let config = InferenceConfiguration::builder()
            .max_tokens(request.max_tokens as i32)
            .set_temperature(request.temperature)
            .build();
        Ok(Self { system, messages, config })
    }
}

/// Sends a `Converse` or `ConverseStream` call (`$call`, an operation
/// builder) for `Conversation` `$c`, mapping the operation's errors (`$error`).
macro_rules! send {
    ($call:expr, $c:expr, $error:ident) => {
        $call
            .set_system($c.system)
            .set_messages(Some($c.messages))
            .inference_config($c.config)
            .send()
            .await
            .map_err(|e| match e.as_service_error() {
                Some($error::ThrottlingException(_)) => ModelError::Throttled(sdk_message(&e)),
                Some($error::ValidationException(_) | $error::AccessDeniedException(_) | $error::ResourceNotFoundException(_)) => {
                    ModelError::Rejected(sdk_message(&e))
                }
                _ => ModelError::Unavailable(sdk_message(&e)),
            })
    };
}

fn tokens(usage: Option<&TokenUsage>) -> (u64, u64) {
    usage.map(|u| (u.input_tokens().max(0) as u64, u.output_tokens().max(0) as u64)).unwrap_or((0, 0))
}

#[async_trait]
impl ModelProvider for BedrockProvider {
    async fn generate(&self, request: ModelRequest) -> Result<ModelResponse, ModelError> {
        let model = request.model.clone();
        let c = Conversation::of(request)?;
        let out = send!(self.client.converse().model_id(model), c, ConverseError)?;
        let text = match out.output() {
            Some(ConverseOutput::Message(m)) => {
                m.content().iter().filter_map(|b| b.as_text().ok().cloned()).collect::<Vec<_>>().join("")
            }
            _ => return Err(ModelError::Unavailable("Converse returned no message".into())),
        };
        let (input_tokens, output_tokens) = tokens(out.usage());
        Ok(ModelResponse { text, input_tokens, output_tokens })
    }

    async fn generate_streaming(&self, request: ModelRequest, deltas: Deltas<'_>) -> Result<ModelResponse, ModelError> {
        let model = request.model.clone();
        let c = Conversation::of(request)?;
        let mut out = send!(self.client.converse_stream().model_id(model), c, ConverseStreamError)?;
        let mut response = ModelResponse::default();
        loop {
            let event = out.stream.recv().await.map_err(|e| match e.as_service_error() {
                Some(ConverseStreamOutputError::ThrottlingException(_)) => ModelError::Throttled(sdk_message(&e)),
                Some(ConverseStreamOutputError::ValidationException(_)) => ModelError::Rejected(sdk_message(&e)),
                // A stream cut mid-answer (model error, service error, broken connection) may work on retry.
                _ => ModelError::Unavailable(sdk_message(&e)),
            })?;
            match event {
                Some(ConverseStreamOutput::ContentBlockDelta(d)) => {
                    if let Some(Ok(text)) = d.delta().map(|d| d.as_text()) {
                        deltas(text);
                        response.text.push_str(text);
                    }
                }
                Some(ConverseStreamOutput::Metadata(m)) => {
                    (response.input_tokens, response.output_tokens) = tokens(m.usage());
                }
                Some(_) => {}
                None => return Ok(response),
            }
        }
    }
}
