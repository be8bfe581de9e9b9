//! The local stack's inbox watcher: what S3's event notifications are in
//! AWS. It watches every tenant's `tenants/<tenant>/inbox/` in the blob
//! directory and tells the inbox queue of each object dropped, changed or
//! removed, in S3's own notification shape. Like the bucket in AWS, it is the
//! only sender to that queue; a producer's message on the ingest queue can
//! never pass for one of its notices.

use keel_core::ports::{QueueName, WorkQueue};
use serde_json::json;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio::sync::watch;

/// How often the inbox directories are looked at.
const EVERY: Duration = Duration::from_millis(200);

/// What an object looked like when last seen: when it was written and its size.
type Seen = HashMap<String, (SystemTime, u64)>;

/// Watches `blobs` (the blob directory) until `stopped`; objects already there
/// when it starts are taken as notified.
pub async fn watch(blobs: PathBuf, queue: Arc<dyn WorkQueue>, mut stopped: watch::Receiver<bool>) {
    let mut seen = scan(&blobs);
    while !*stopped.borrow() {
        tokio::select! {
            _ = tokio::time::sleep(EVERY) => {}
            _ = stopped.changed() => return,
        }
        let now = scan(&blobs);
        for (key, state) in &now {
            if seen.get(key) != Some(state) {
                notify(queue.as_ref(), "ObjectCreated:Put", key).await;
            }
        }
        for key in seen.keys().filter(|k| !now.contains_key(*k)) {
            notify(queue.as_ref(), "ObjectRemoved:Delete", key).await;
        }
        seen = now;
    }
}

async fn notify(queue: &dyn WorkQueue, event: &str, key: &str) {
    let body = json!({"Records": [{"eventVersion": "2.1", "eventSource": "aws:s3", "eventName": event,
        "s3": {"bucket": {"name": "keel-local"}, "object": {"key": key}}}]});
    if let Err(e) = queue.send(QueueName::Inbox, body.to_string(), HashMap::new()).await {
        tracing::warn!(key, error = %e, "an inbox notification was not sent");
    }
}

/// Every object under `<blobs>/tenants/*/inbox/`, by its key.
fn scan(blobs: &Path) -> Seen {
    let mut out = Seen::new();
    let Ok(tenants) = std::fs::read_dir(blobs.join("tenants")) else { return out };
    for tenant in tenants.flatten() {
        let Ok(files) = std::fs::read_dir(tenant.path().join("inbox")) else { continue };
        for file in files.flatten() {
            let (Ok(meta), Some(name)) = (file.metadata(), file.file_name().to_str().map(str::to_string)) else { continue };
            // As the bucket's notification filters: .json and .txt only (a file
            // DirBlobs is still writing has a temporary name of another ending).
            if !meta.is_file() || !(name.ends_with(".json") || name.ends_with(".txt")) {
                continue;
            }
            let key = format!("tenants/{}/inbox/{name}", tenant.file_name().to_string_lossy());
            out.insert(key, (meta.modified().unwrap_or(SystemTime::UNIX_EPOCH), meta.len()));
        }
    }
    out
}
