//! Ports: the small traits every function talks to storage, queues, the saga
//! and models through. Each has an AWS adapter (keel-aws) and an embedded one
//! (keel-local), and one contract test suite (tests/) runs against both.

use crate::error::StoreError;
use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::HashMap;

/// One item of the single table. `data` is the record, `version` counts its
/// writes (optimistic concurrency), `counter` is an atomic counter.
#[derive(Clone, Debug, PartialEq)]
pub struct Item {
    pub pk: String,
    pub sk: String,
    pub data: Value,
    pub version: u64,
    pub counter: i64,
    /// Epoch seconds after which the item is gone (TTL).
    pub expires_at: Option<i64>,
}

/// What must hold for a write to happen.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Condition {
    Always,
    /// The item must not exist (create only).
    NotExists,
    /// The item must exist at exactly this version.
    Version(u64),
}

/// One write of an atomic group.
#[derive(Clone, Debug)]
pub struct Write {
    pub pk: String,
    pub sk: String,
    pub data: Value,
    pub expires_at: Option<i64>,
    pub condition: Condition,
}

impl Write {
    /// `data` as the text a store keeps, refused when it nests deeper than
    /// any reader could read back (`limits::MAX_STORED_DEPTH`).
    pub fn data_text(&self) -> Result<String, StoreError> {
        let depth = crate::limits::value_depth(&self.data);
        if depth > crate::limits::MAX_STORED_DEPTH {
            return Err(StoreError::Invalid(format!(
                "the record nests {depth} levels deep; at most {} can be stored",
                crate::limits::MAX_STORED_DEPTH
            )));
        }
        Ok(self.data.to_string())
    }
}

/// An addition to an item's counter (as `Table::increment` makes, without a
/// limit), as part of an atomic group.
#[derive(Clone, Debug)]
pub struct Add {
    pub pk: String,
    pub sk: String,
    pub by: i64,
}

#[derive(Clone, Debug, Default)]
pub struct QueryOptions {
    pub limit: Option<usize>,
    /// Newest-first order of sort keys.
    pub descending: bool,
    /// Only sort keys greater than this one (ascending feeds: "what changed since").
    pub after: Option<String>,
    /// Only sort keys less than this one (newest-first pages: "older than the last one seen").
    pub before: Option<String>,
}

/// The single table (DynamoDB in AWS, a SQLite file locally). Every `pk`
/// begins with `T#<tenant>` but the platform's own (`keys::PLATFORM`);
/// expired items are never returned.
#[async_trait]
pub trait Table: Send + Sync {
    async fn get(&self, pk: &str, sk: &str) -> Result<Option<Item>, StoreError>;
    /// Writes `data` and bumps the version; returns the new version.
    async fn put(&self, write: Write) -> Result<u64, StoreError>;
    /// Applies all writes or none; any failed condition fails the group.
    async fn put_all(&self, writes: Vec<Write>) -> Result<(), StoreError> {
        self.put_all_adding(writes, vec![]).await
    }
    /// `put_all` with counter additions in the same all-or-nothing group: a
    /// counter moves exactly when the writes land (a missing counter counts as 0).
    async fn put_all_adding(&self, writes: Vec<Write>, adds: Vec<Add>) -> Result<(), StoreError>;
    async fn delete(&self, pk: &str, sk: &str) -> Result<(), StoreError>;
    /// Deletes every item of `pk`, expired ones included; returns how many.
    async fn purge_partition(&self, pk: &str) -> Result<usize, StoreError>;
    /// Items of `pk` whose sort key begins with `sk_prefix`, in sort-key order.
    async fn query(&self, pk: &str, sk_prefix: &str, options: QueryOptions) -> Result<Vec<Item>, StoreError>;
    /// Atomically adds `by` to the item's counter and returns the new value.
    /// With `max`, fails with `ConditionFailed` instead of passing it.
    async fn increment(
        &self,
        pk: &str,
        sk: &str,
        by: i64,
        max: Option<i64>,
        expires_at: Option<i64>,
    ) -> Result<i64, StoreError>;
}

/// The item at `pk`/`sk` decoded as a `T`, with its version; `None` when absent.
pub async fn get_record<T: serde::de::DeserializeOwned>(table: &dyn Table, pk: &str, sk: &str) -> Result<Option<(T, u64)>, crate::KeelError> {
    match table.get(pk, sk).await? {
        Some(item) => Ok(Some((serde_json::from_value(item.data)?, item.version))),
        None => Ok(None),
    }
}

/// The blob store (S3 in AWS, a directory locally). Keys begin `tenants/<tenant>/`.
#[async_trait]
pub trait BlobStore: Send + Sync {
    async fn put(&self, key: &str, bytes: Vec<u8>) -> Result<(), StoreError>;
    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError>;
    async fn delete(&self, key: &str) -> Result<(), StoreError>;
    /// Keys under `prefix`, sorted.
    async fn list(&self, prefix: &str) -> Result<Vec<String>, StoreError>;
    /// Deletes every object under `prefix` with every stored version of it
    /// (a versioned bucket keeps old versions of an overwritten or deleted
    /// object); returns how many objects and versions were removed.
    async fn purge_prefix(&self, prefix: &str) -> Result<usize, StoreError>;
}

/// The queues Keel's functions are chained by: a closed set.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum QueueName {
    /// Document changes for `retrieval` (producers and S3 events).
    Ingest,
    /// Decision events for `audit`.
    Audit,
    /// Action proposals from producers, for `tools`.
    Actions,
    /// The bucket's notifications of objects dropped into or removed from a
    /// tenant's inbox, for `retrieval`: no one but the bucket may send to it
    /// (its queue policy in AWS; the local stack's inbox watcher locally).
    Inbox,
}

impl QueueName {
    pub const ALL: [QueueName; 4] = [QueueName::Ingest, QueueName::Audit, QueueName::Actions, QueueName::Inbox];

    pub fn as_str(self) -> &'static str {
        match self {
            QueueName::Ingest => "ingest",
            QueueName::Audit => "audit",
            QueueName::Actions => "actions",
            QueueName::Inbox => "inbox",
        }
    }
}

#[derive(Clone, Debug)]
pub struct QueueMessage {
    pub message_id: String,
    pub receipt: String,
    pub body: String,
    pub attributes: HashMap<String, String>,
    /// How often this message has been received, this time included.
    pub receive_count: u32,
}

/// A durable work queue (SQS in AWS, a SQLite table locally).
#[async_trait]
pub trait WorkQueue: Send + Sync {
    async fn send(&self, queue: QueueName, body: String, attributes: HashMap<String, String>) -> Result<String, StoreError>;
    /// Up to `max` visible messages; they stay hidden until acked or their visibility times out.
    async fn receive(&self, queue: QueueName, max: usize) -> Result<Vec<QueueMessage>, StoreError>;
    async fn ack(&self, queue: QueueName, receipt: &str) -> Result<(), StoreError>;
    /// Sends a copy of `message` to the queue's dead-letter queue at once,
    /// with `reason` in its `REJECTED_ATTRIBUTE`: for a message no retry can
    /// mend (a producer without a valid key). The consumer then reports the
    /// original done, and it is deleted.
    async fn dead_letter(&self, queue: QueueName, message: &QueueMessage, reason: &str) -> Result<(), StoreError>;
}

/// Dead-letters a message no retry can mend, logging why; `false` when
/// that failed too, and the message should be retried instead.
pub async fn reject(queue: &dyn WorkQueue, name: QueueName, message: &QueueMessage, reason: &str) -> bool {
    tracing::warn!(queue = name.as_str(), message_id = %message.message_id, reason, "message rejected to the dead-letter queue");
    match queue.dead_letter(name, message, reason).await {
        Ok(()) => true,
        Err(e) => {
            tracing::error!(error = %e, "could not dead-letter a rejected message; it will be retried");
            false
        }
    }
}

/// A message for a tenant that no longer exists: acknowledged and dropped,
/// so nothing of a deleted tenant waits in a queue or a dead-letter queue.
pub fn dropped(name: QueueName, message: &QueueMessage, tenant: &str) {
    tracing::info!(queue = name.as_str(), message_id = %message.message_id, tenant, "message for a deleted tenant dropped");
}

/// Whether a consumer's error is one no retry can mend: the producer's
/// credentials or rights. Such messages go to the dead-letter queue at once.
pub fn is_rejection(error: &crate::KeelError) -> bool {
    matches!(error, crate::KeelError::Unauthorized(_) | crate::KeelError::Forbidden(_))
}

/// The attribute a dead-lettered message carries its rejection reason in.
pub const REJECTED_ATTRIBUTE: &str = "keel_rejected";

/// A message's attributes with the rejection reason added (SQS allows ten
/// attributes; a producer's eleventh is dropped for the reason).
pub fn rejected_attributes(message: &QueueMessage, reason: &str) -> HashMap<String, String> {
    let mut attributes: HashMap<String, String> =
        message.attributes.iter().filter(|(k, _)| k.as_str() != REJECTED_ATTRIBUTE).take(9).map(|(k, v)| (k.clone(), v.clone())).collect();
    attributes.insert(REJECTED_ATTRIBUTE.into(), reason.chars().take(256).collect());
    attributes
}

#[derive(Clone, Debug, PartialEq)]
pub enum ExecutionStatus {
    Running,
    Succeeded(Value),
    Failed { error: String, cause: String },
}

/// The action saga (Step Functions in AWS, an in-process ASL executor locally).
/// Where the platform's operators hear of events (an SNS topic in AWS).
#[async_trait]
pub trait Notifier: Send + Sync {
    /// Publishes `message` (JSON) with a one-line `subject` and string attributes.
    async fn notify(&self, subject: &str, message: &str, attributes: HashMap<String, String>) -> Result<(), StoreError>;
}

#[async_trait]
pub trait Saga: Send + Sync {
    /// Starts an execution named `name`. Starting the same name again with the
    /// same input returns the same execution: a retry never runs a saga twice.
    async fn start(&self, name: &str, input: Value) -> Result<String, StoreError>;
    async fn status(&self, execution_id: &str) -> Result<ExecutionStatus, StoreError>;
    /// Completes a task that waits for its token (`.waitForTaskToken`) with `output`.
    /// `ConditionFailed` when the task is no longer waiting (timed out, or done).
    async fn send_task_success(&self, token: &str, output: Value) -> Result<(), StoreError>;
    /// Fails a waiting task with `error` (what a Catch matches) and `cause`.
    async fn send_task_failure(&self, token: &str, error: &str, cause: &str) -> Result<(), StoreError>;
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    User,
    Assistant,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ChatMessage {
    pub role: Role,
    pub content: String,
}

impl ChatMessage {
    pub fn user(content: impl Into<String>) -> Self {
        Self { role: Role::User, content: content.into() }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ModelRequest {
    /// The provider's own model id (Bedrock model id, endpoint name, …).
    pub model: String,
    pub system: String,
    pub messages: Vec<ChatMessage>,
    pub max_tokens: u32,
    pub temperature: Option<f32>,
}

impl ModelRequest {
    /// The prompt's estimated size in tokens (system and messages).
    pub fn prompt_tokens(&self) -> u64 {
        crate::models::estimate_tokens(&self.system) + self.messages.iter().map(|m| crate::models::estimate_tokens(&m.content)).sum::<u64>()
    }
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ModelResponse {
    pub text: String,
    pub input_tokens: u64,
    pub output_tokens: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("model throttled: {0}")]
    Throttled(String),
    #[error("model unavailable: {0}")]
    Unavailable(String),
    #[error("model timed out after {0} ms")]
    Timeout(u64),
    #[error("model rejected the request: {0}")]
    Rejected(String),
}

impl ModelError {
    /// Throttling, outages and timeouts may pass; a rejected request will not.
    pub fn is_retryable(&self) -> bool {
        !matches!(self, ModelError::Rejected(_))
    }
}

/// Receives generated text as it arrives.
pub type Deltas<'a> = &'a (dyn Fn(&str) + Send + Sync);

/// A hosted text generator (Bedrock `Converse`, SageMaker, OpenAI-compatible).
#[async_trait]
pub trait ModelProvider: Send + Sync {
    async fn generate(&self, request: ModelRequest) -> Result<ModelResponse, ModelError>;

    /// Generates while passing text to `deltas` as it comes; providers that
    /// cannot stream pass the whole text once.
    async fn generate_streaming(&self, request: ModelRequest, deltas: Deltas<'_>) -> Result<ModelResponse, ModelError> {
        let out = self.generate(request).await?;
        deltas(&out.text);
        Ok(out)
    }
}
