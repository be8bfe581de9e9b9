//! `WorkQueue` over SQS. Redelivery and dead-lettering are SQS's own
//! (visibility timeout and the redrive policy in template.yaml).

use crate::sdk_message;
use async_trait::async_trait;
use aws_sdk_sqs::types::{MessageAttributeValue, MessageSystemAttributeName};
use aws_sdk_sqs::Client;
use keel_core::ports::{rejected_attributes, QueueMessage, QueueName, WorkQueue};
use keel_core::StoreError;
use std::collections::HashMap;

#[derive(Clone)]
pub struct SqsQueue {
    client: Client,
    urls: HashMap<QueueName, String>,
    dead_letter_urls: HashMap<QueueName, String>,
}

impl SqsQueue {
    pub fn new(client: Client, urls: HashMap<QueueName, String>, dead_letter_urls: HashMap<QueueName, String>) -> Self {
        Self { client, urls, dead_letter_urls }
    }

    fn url(&self, queue: QueueName) -> Result<&str, StoreError> {
        self.urls
            .get(&queue)
            .map(String::as_str)
            .ok_or_else(|| StoreError::Backend(format!("no URL configured for the {} queue", queue.as_str())))
    }
}

impl SqsQueue {
    /// Moves every message of a dead-letter queue back to `to_url` (its
    /// attributes kept), deleting each from the DLQ once it is re-sent: the
    /// replay after the cause of the failures is fixed. Returns how many moved.
    pub async fn redrive(&self, dead_letter_url: &str, to_url: &str) -> Result<usize, StoreError> {
        let mut moved = 0;
        loop {
            let batch = self.receive_from(dead_letter_url, 10).await?;
            if batch.is_empty() {
                return Ok(moved);
            }
            for m in batch {
                self.send_to(to_url, m.body, m.attributes).await?;
                self.delete_from(dead_letter_url, &m.receipt).await?;
                moved += 1;
            }
        }
    }

    async fn send_to(&self, url: &str, body: String, attributes: HashMap<String, String>) -> Result<String, StoreError> {
        let mut req = self.client.send_message().queue_url(url).message_body(body);
        for (k, v) in attributes {
            let value = MessageAttributeValue::builder()
                .data_type("String")
                .string_value(v)
                .build()
                .map_err(|e| StoreError::Backend(e.to_string()))?;
            req = req.message_attributes(k, value);
        }
        let out = req.send().await.map_err(|e| StoreError::Backend(sdk_message(&e)))?;
        Ok(out.message_id().unwrap_or_default().to_string())
    }

    async fn receive_from(&self, url: &str, max: usize) -> Result<Vec<QueueMessage>, StoreError> {
        let out = self
            .client
            .receive_message()
            .queue_url(url)
            .max_number_of_messages(max.clamp(1, 10) as i32)
            .message_system_attribute_names(MessageSystemAttributeName::ApproximateReceiveCount)
            .message_attribute_names("All")
            .send()
            .await
            .map_err(|e| StoreError::Backend(sdk_message(&e)))?;
        Ok(out
            .messages()
            .iter()
            .map(|m| QueueMessage {
                message_id: m.message_id().unwrap_or_default().to_string(),
                receipt: m.receipt_handle().unwrap_or_default().to_string(),
                body: m.body().unwrap_or_default().to_string(),
                attributes: m
                    .message_attributes()
                    .map(|a| {
                        a.iter()
                            .filter_map(|(k, v)| v.string_value().map(|s| (k.clone(), s.to_string())))
                            .collect()
                    })
                    .unwrap_or_default(),
                receive_count: m
                    .attributes()
                    .and_then(|a| a.get(&MessageSystemAttributeName::ApproximateReceiveCount))
                    .and_then(|c| c.parse().ok())
                    .unwrap_or(1),
            })
            .collect())
    }

    async fn delete_from(&self, url: &str, receipt: &str) -> Result<(), StoreError> {
        self.client
            .delete_message()
            .queue_url(url)
            .receipt_handle(receipt)
            .send()
            .await
            .map_err(|e| StoreError::Backend(sdk_message(&e)))?;
        Ok(())
    }
}

#[async_trait]
impl WorkQueue for SqsQueue {
    async fn send(&self, queue: QueueName, body: String, attributes: HashMap<String, String>) -> Result<String, StoreError> {
        self.send_to(self.url(queue)?, body, attributes).await
    }

    async fn receive(&self, queue: QueueName, max: usize) -> Result<Vec<QueueMessage>, StoreError> {
        self.receive_from(self.url(queue)?, max).await
    }

    async fn ack(&self, queue: QueueName, receipt: &str) -> Result<(), StoreError> {
        self.delete_from(self.url(queue)?, receipt).await
    }

    async fn dead_letter(&self, queue: QueueName, message: &QueueMessage, reason: &str) -> Result<(), StoreError> {
        let url = self
            .dead_letter_urls
            .get(&queue)
            .ok_or_else(|| StoreError::Backend(format!("no dead-letter URL configured for the {} queue", queue.as_str())))?;
        self.send_to(url, message.body.clone(), rejected_attributes(message, reason)).await.map(drop)
    }
}
