//! `Notifier` over one SNS topic: the operators' (the template's `AlarmTopic`).

use crate::sdk_message;
use async_trait::async_trait;
use aws_sdk_sns::types::MessageAttributeValue;
use aws_sdk_sns::Client;
use keel_core::ports::Notifier;
use keel_core::StoreError;
use std::collections::HashMap;

/// SNS subjects are at most 100 characters.
const MAX_SUBJECT: usize = 100;

pub struct SnsNotifier {
    client: Client,
    topic_arn: String,
}

impl SnsNotifier {
    pub fn new(client: Client, topic_arn: impl Into<String>) -> Self {
        Self { client, topic_arn: topic_arn.into() }
    }
}

#[async_trait]
impl Notifier for SnsNotifier {
    async fn notify(&self, subject: &str, message: &str, attributes: HashMap<String, String>) -> Result<(), StoreError> {
        let mut publish = self.client.publish().topic_arn(&self.topic_arn).subject(subject.chars().take(MAX_SUBJECT).collect::<String>()).message(message);
        for (name, value) in attributes {
            let value = MessageAttributeValue::builder().data_type("String").string_value(value).build().map_err(|e| StoreError::Backend(e.to_string()))?;
            publish = publish.message_attributes(name, value);
        }
        publish.send().await.map_err(|e| StoreError::Backend(sdk_message(&e)))?;
        Ok(())
    }
}
