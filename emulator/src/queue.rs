//! Durable queues (`WorkQueue`) in the store's `messages`: a visibility
//! timeout, and a dead-letter state after `max_receives`, as SQS with a
//! redrive policy.

use crate::store::{backend, run, Db};
use async_trait::async_trait;
use keel_core::ports::{rejected_attributes, QueueMessage, QueueName, WorkQueue, REJECTED_ATTRIBUTE};
use keel_core::StoreError;
use rusqlite::params;
use std::collections::HashMap;
use std::time::Duration;

/// Claims up to `max` visible messages, oldest first. The limit is written
/// into the statement: SQLite would prepare it again on every run for a bound one.
fn receive_sql(max: usize) -> String {
    format!(
        "UPDATE messages SET receives = receives + 1, visible_at = ?3
         WHERE id IN (SELECT id FROM messages WHERE queue = ?1 AND dead = 0 AND visible_at <= ?2 ORDER BY id LIMIT {max})
         RETURNING id, message_id, body, attributes, receives"
    )
}

#[derive(Clone)]
pub struct SqliteQueue {
    db: Db,
    visibility: Duration,
    max_receives: u32,
}

/// A receipt names the message's row and the message: a row id comes back
/// once the newest message is deleted, and a late ack of the old message
/// must not delete the new one.
fn parse_receipt(receipt: &str) -> Result<(i64, String), StoreError> {
    receipt
        .split_once('/')
        .and_then(|(id, message_id)| Some((id.parse().ok()?, message_id.to_string())))
        .ok_or_else(|| backend(format!("bad receipt {receipt:?}")))
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

impl SqliteQueue {
    pub fn new(db: Db, visibility: Duration, max_receives: u32) -> Self {
        Self { db, visibility, max_receives }
    }

    /// Bodies of the messages that went to the dead-letter state.
    pub fn dead_letters(&self, queue: QueueName) -> Result<Vec<String>, StoreError> {
        self.db.with(move |c| {
            let mut stmt = c.prepare("SELECT body FROM messages WHERE queue = ?1 AND dead = 1 ORDER BY id").map_err(backend)?;
            let rows = stmt.query_map(params![queue.as_str()], |r| r.get(0)).map_err(backend)?;
            rows.collect::<Result<Vec<String>, _>>().map_err(backend)
        })
    }

    /// The dead letters a consumer rejected, each body with its reason.
    pub fn rejections(&self, queue: QueueName) -> Result<Vec<(String, String)>, StoreError> {
        self.db.with(move |c| {
            let mut stmt = c.prepare("SELECT body, attributes FROM messages WHERE queue = ?1 AND dead = 1 ORDER BY id").map_err(backend)?;
            let rows = stmt.query_map(params![queue.as_str()], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?))).map_err(backend)?;
            let mut out = Vec::new();
            for row in rows {
                let (body, attributes) = row.map_err(backend)?;
                let attributes: HashMap<String, String> = serde_json::from_str(&attributes).map_err(backend)?;
                if let Some(reason) = attributes.get(REJECTED_ATTRIBUTE) {
                    out.push((body, reason.clone()));
                }
            }
            Ok(out)
        })
    }

    /// Moves the queue's dead letters back, as new deliveries: the replay
    /// after the cause of the failures is fixed. Returns how many moved.
    pub fn redrive(&self, queue: QueueName) -> Result<usize, StoreError> {
        self.db.with(move |c| {
            let sql = "UPDATE messages SET dead = 0, receives = 0, visible_at = ?2 WHERE queue = ?1 AND dead = 1";
            run(c, sql, params![queue.as_str(), now_ms()])
        })
    }

    /// Acks several received messages in one transaction (SQS's DeleteMessageBatch).
    pub async fn ack_all(&self, queue: QueueName, receipts: Vec<String>) -> Result<(), StoreError> {
        let messages = receipts.iter().map(|r| parse_receipt(r)).collect::<Result<Vec<_>, _>>()?;
        self.db
            .call(move |c| {
                for (id, message_id) in messages {
                    let sql = "DELETE FROM messages WHERE id = ?1 AND message_id = ?2 AND queue = ?3";
                    run(c, sql, params![id, message_id, queue.as_str()])?;
                }
                Ok(())
            })
            .await
    }

    /// Messages not yet acked (in flight or waiting), dead letters excluded.
    pub fn pending(&self, queue: QueueName) -> Result<usize, StoreError> {
        self.db.with(move |c| {
            c.query_row("SELECT count(*) FROM messages WHERE queue = ?1 AND dead = 0", params![queue.as_str()], |r| r.get::<_, i64>(0))
                .map(|n| n as usize)
                .map_err(backend)
        })
    }
}

type MessageRow = (i64, String, String, String, i64);

#[async_trait]
impl WorkQueue for SqliteQueue {
    async fn send(&self, queue: QueueName, body: String, attributes: HashMap<String, String>) -> Result<String, StoreError> {
        let message_id = uuid::Uuid::new_v4().to_string();
        let attrs = serde_json::to_string(&attributes).map_err(backend)?;
        let id = message_id.clone();
        self.db
            .call(move |c| {
                let sql = "INSERT INTO messages (queue, message_id, body, attributes, visible_at) VALUES (?1, ?2, ?3, ?4, ?5)";
                run(c, sql, params![queue.as_str(), id, body, attrs, now_ms()])
            })
            .await?;
        Ok(message_id)
    }

    async fn receive(&self, queue: QueueName, max: usize) -> Result<Vec<QueueMessage>, StoreError> {
        let (visibility, max_receives) = (self.visibility.as_millis() as i64, self.max_receives);
        let max = max.clamp(1, 10); // as SQS's ReceiveMessage
        let mut rows: Vec<MessageRow> = self
            .db
            .call(move |c| {
                let now = now_ms();
                // Past the redrive limit: to the dead-letter state, as SQS moves them to the DLQ.
                let dead = "UPDATE messages SET dead = 1 WHERE queue = ?1 AND dead = 0 AND visible_at <= ?2 AND receives >= ?3";
                run(c, dead, params![queue.as_str(), now, max_receives])?;
                let mut stmt = c.prepare_cached(&receive_sql(max)).map_err(backend)?;
                let rows = stmt
                    .query_map(params![queue.as_str(), now, now + visibility], |r| {
                        Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
                    })
                    .map_err(backend)?;
                rows.collect::<Result<Vec<_>, _>>().map_err(backend)
            })
            .await?;
        rows.sort_unstable_by_key(|r| r.0); // RETURNING's order is unspecified
        rows.into_iter()
            .map(|(id, message_id, body, attrs, receives)| {
                Ok(QueueMessage {
                    receipt: format!("{id}/{message_id}"),
                    message_id,
                    body,
                    attributes: serde_json::from_str(&attrs).map_err(backend)?,
                    receive_count: receives as u32,
                })
            })
            .collect()
    }

    async fn ack(&self, queue: QueueName, receipt: &str) -> Result<(), StoreError> {
        self.ack_all(queue, vec![receipt.to_string()]).await
    }

    /// A copy in the dead-letter state, as SQS's own dead-letter queue holds one.
    async fn dead_letter(&self, queue: QueueName, message: &QueueMessage, reason: &str) -> Result<(), StoreError> {
        let attrs = serde_json::to_string(&rejected_attributes(message, reason)).map_err(backend)?;
        let (id, body) = (uuid::Uuid::new_v4().to_string(), message.body.clone());
        self.db
            .call(move |c| {
                let sql = "INSERT INTO messages (queue, message_id, body, attributes, visible_at, dead) VALUES (?1, ?2, ?3, ?4, ?5, 1)";
                run(c, sql, params![queue.as_str(), id, body, attrs, now_ms()])
            })
            .await
            .map(drop)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn queue(dir: &tempfile::TempDir, visibility: Duration, max_receives: u32) -> SqliteQueue {
        SqliteQueue::new(Db::open(&dir.path().join("keel.sqlite")).unwrap(), visibility, max_receives)
    }

    #[tokio::test]
    async fn a_message_comes_back_after_its_visibility_timeout_then_goes_dead_and_redrives() {
        let dir = tempfile::tempdir().unwrap();
        let (visibility, q) = (Duration::from_millis(300), QueueName::Ingest);
        let queue = queue(&dir, visibility, 2);
        let bodies = |m: Vec<QueueMessage>| m.into_iter().map(|m| (m.body, m.receive_count)).collect::<Vec<_>>();
        assert!(queue.receive(q, 10).await.unwrap().is_empty());
        queue.send(q, "a".into(), HashMap::new()).await.unwrap();
        assert_eq!(bodies(queue.receive(q, 10).await.unwrap()), [("a".to_string(), 1)], "a send is seen at once");
        assert!(queue.receive(q, 10).await.unwrap().is_empty(), "in flight");
        tokio::time::sleep(visibility + Duration::from_millis(100)).await;
        assert_eq!(bodies(queue.receive(q, 10).await.unwrap()), [("a".to_string(), 2)], "back after the visibility timeout");
        tokio::time::sleep(visibility + Duration::from_millis(100)).await;
        assert!(queue.receive(q, 10).await.unwrap().is_empty(), "past max_receives");
        assert_eq!(queue.dead_letters(q).unwrap(), ["a"]);
        assert_eq!(queue.pending(q).unwrap(), 0);
        assert_eq!(queue.redrive(q).unwrap(), 1);
        assert_eq!(bodies(queue.receive(q, 10).await.unwrap()), [("a".to_string(), 1)], "a redrive is seen at once");
        assert!(queue.receive(QueueName::Audit, 10).await.unwrap().is_empty(), "queues are apart");
    }

    #[tokio::test]
    async fn a_late_ack_deletes_only_its_own_message() {
        let dir = tempfile::tempdir().unwrap();
        let queue = queue(&dir, Duration::from_secs(30), 5);
        queue.send(QueueName::Audit, "first".into(), HashMap::new()).await.unwrap();
        let first = queue.receive(QueueName::Audit, 10).await.unwrap().remove(0);
        queue.ack(QueueName::Audit, &first.receipt).await.unwrap();
        // The newest row is gone, so the next message may take its row id.
        queue.send(QueueName::Audit, "second".into(), HashMap::new()).await.unwrap();
        queue.ack(QueueName::Audit, &first.receipt).await.unwrap();
        let second = queue.receive(QueueName::Audit, 10).await.unwrap();
        assert_eq!(second.iter().map(|m| m.body.as_str()).collect::<Vec<_>>(), ["second"]);
        assert!(queue.ack(QueueName::Audit, "not a receipt").await.is_err());
    }

    #[tokio::test]
    async fn receives_run_without_being_prepared_again() {
        let dir = tempfile::tempdir().unwrap();
        let queue = queue(&dir, Duration::from_secs(30), 5);
        for i in 0..3 {
            queue.send(QueueName::Audit, format!("m{i}"), HashMap::new()).await.unwrap();
            assert_eq!(queue.receive(QueueName::Audit, 10).await.unwrap().len(), 1);
        }
        let reprepared = queue
            .db
            .with(|c| Ok(c.prepare_cached(&receive_sql(10)).map_err(backend)?.get_status(rusqlite::StatementStatus::RePrepare)))
            .unwrap();
        assert_eq!(reprepared, 0);
    }
}
