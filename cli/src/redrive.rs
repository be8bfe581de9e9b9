//! `keel dlq redrive`: dead letters back to their queue, on the local stack
//! (its SQLite file) or in AWS (SQS, with the usual credentials).

use crate::api::CliError;
use crate::args::{QueueArg, Redrive};
use crate::output::{done, Printed};
use keel_core::ports::QueueName;
use serde_json::json;
use std::time::Duration;

pub async fn redrive(r: Redrive) -> Result<Printed, CliError> {
    let queue = match r.queue {
        QueueArg::Ingest => QueueName::Ingest,
        QueueArg::Audit => QueueName::Audit,
        QueueArg::Actions => QueueName::Actions,
    };
    match (r.data_dir, r.from, r.to) {
        (Some(dir), None, None) => {
            let db = keel_emulator::store::Db::open(&dir.join("keel.sqlite3")).map_err(|e| CliError::Other(format!("{}: {e}", dir.display())))?;
            let moved = keel_emulator::queue::SqliteQueue::new(db, Duration::from_secs(5), 3).redrive(queue).map_err(|e| CliError::Other(e.to_string()))?;
            Ok(done(json!({"queue": queue.as_str(), "moved": moved}), format!("moved {moved} message(s) from the {} dead-letter queue back", queue.as_str())))
        }
        (None, Some(from), Some(to)) => {
            let sdk = keel_aws::load_sdk_config().await;
            let sqs = keel_aws::SqsQueue::new(aws_sdk_sqs::Client::new(&sdk), Default::default(), Default::default());
            let moved = sqs.redrive(&from, &to).await.map_err(|e| CliError::Other(e.to_string()))?;
            Ok(done(json!({"queue": queue.as_str(), "moved": moved, "from": from, "to": to}), format!("moved {moved} message(s) from {from} to {to}")))
        }
        _ => Err(CliError::Usage("give --data-dir for the local stack, or --from and --to for AWS".into())),
    }
}
