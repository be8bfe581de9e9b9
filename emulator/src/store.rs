//! The emulator's one SQLite file: the table's items, the queues' messages
//! and the saga's executions. One connection, behind a mutex: a job runs on
//! the blocking pool in a transaction of its own, and its result is
//! delivered once that transaction has committed.
//!
//! Durability: `synchronous=OFF`. A crash of the process loses nothing
//! committed; an OS crash or power cut may lose the last transactions. A
//! development store makes that trade: with fsync on, every WAL checkpoint
//! stalled the requests behind it on a slow disk.
//!
//! The connection holds the file exclusively (`locking_mode=EXCLUSIVE`): one
//! process serves a data directory at a time, and a second one is refused
//! with a clear error.

use keel_core::StoreError;
use rusqlite::Connection;
use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};

/// WAL pages (4 KiB) after which a commit checkpoints: the WAL starts over
/// instead of growing.
const WAL_PAGES: u32 = 256;

const SCHEMA: &str = "
    CREATE TABLE IF NOT EXISTS items (pk TEXT NOT NULL, sk TEXT NOT NULL, data TEXT NOT NULL,
        ver INTEGER NOT NULL DEFAULT 0, n INTEGER, ttl INTEGER, PRIMARY KEY (pk, sk)) WITHOUT ROWID;
    CREATE TABLE IF NOT EXISTS messages (id INTEGER PRIMARY KEY, queue TEXT NOT NULL,
        message_id TEXT NOT NULL, body TEXT NOT NULL, attributes TEXT NOT NULL,
        receives INTEGER NOT NULL DEFAULT 0, visible_at INTEGER NOT NULL, dead INTEGER NOT NULL DEFAULT 0);
    CREATE INDEX IF NOT EXISTS messages_ready ON messages (queue, dead, visible_at);
    CREATE TABLE IF NOT EXISTS executions (name TEXT PRIMARY KEY, input TEXT NOT NULL,
        status TEXT NOT NULL, output TEXT, error TEXT, cause TEXT);";

pub(crate) fn backend(e: impl std::fmt::Display) -> StoreError {
    StoreError::Backend(e.to_string())
}

/// The shared connection; clones are handles to the same one.
#[derive(Clone)]
pub struct Db {
    conn: Arc<Mutex<Connection>>,
}

impl Db {
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let conn = Connection::open(path).map_err(backend)?;
        conn.execute_batch(&format!(
            "PRAGMA locking_mode=EXCLUSIVE; PRAGMA temp_store=MEMORY; PRAGMA busy_timeout=5000;
             PRAGMA journal_mode=WAL; PRAGMA synchronous=OFF; PRAGMA wal_autocheckpoint={WAL_PAGES}; {SCHEMA}"
        ))
        .map_err(|e| match e.sqlite_error_code() {
            Some(rusqlite::ErrorCode::DatabaseBusy) => {
                backend(format!("{} is in use by another process (one keel-local per data directory)", path.display()))
            }
            _ => backend(e),
        })?;
        conn.set_prepared_statement_cache_capacity(64);
        Ok(Self { conn: Arc::new(Mutex::new(conn)) })
    }

    /// Runs `f` in a transaction of its own and returns its committed
    /// result. A failing `f` rolls back everything it wrote.
    pub fn with<T>(&self, f: impl FnOnce(&mut Connection) -> Result<T, StoreError>) -> Result<T, StoreError> {
        let mut conn = self.conn.lock().unwrap_or_else(PoisonError::into_inner);
        statement(&conn, "BEGIN IMMEDIATE").map_err(backend)?;
        let out = f(&mut conn);
        let end = if out.is_ok() { "COMMIT" } else { "ROLLBACK" };
        if let Err(e) = statement(&conn, end) {
            let _ = statement(&conn, "ROLLBACK");
            return Err(backend(format!("{end} failed: {e}")));
        }
        out
    }

    /// `with` for async callers, on the blocking pool: a request's worker
    /// never blocks on the connection, which would hold up every other
    /// request waiting for that worker.
    pub async fn call<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Connection) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let db = self.clone();
        tokio::task::spawn_blocking(move || db.with(f)).await.map_err(|e| backend(format!("store job failed: {e}")))?
    }
}

/// A statement without parameters, prepared once per connection.
fn statement(conn: &Connection, sql: &str) -> rusqlite::Result<usize> {
    conn.prepare_cached(sql)?.execute([])
}

/// Runs one statement, prepared once per connection.
pub(crate) fn run(c: &Connection, sql: &str, params: impl rusqlite::Params) -> Result<usize, StoreError> {
    c.prepare_cached(sql).and_then(|mut s| s.execute(params)).map_err(backend)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use rusqlite::params;

    pub(crate) fn insert(db: &Db, i: usize) {
        let sk = format!("item-{i}");
        db.with(move |c| run(c, "INSERT INTO items (pk, sk, data) VALUES ('T', ?1, '{}')", params![sk])).unwrap();
    }

    fn count_items(db: &Db) -> i64 {
        db.with(|c| c.query_row("SELECT count(*) FROM items", [], |r| r.get::<_, i64>(0)).map_err(backend)).unwrap()
    }

    #[test]
    fn the_wal_starts_over_instead_of_growing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keel.sqlite");
        let db = Db::open(&path).unwrap();
        // 3,000 commits of at least one 4 KiB page each: 12 MB through the WAL.
        for i in 0..3_000 {
            insert(&db, i);
        }
        let wal = std::fs::metadata(path.with_extension("sqlite-wal")).unwrap().len();
        assert!(wal < 2 * 1024 * 1024, "the WAL grew to {wal} bytes");
        assert_eq!(count_items(&db), 3_000);
    }

    #[test]
    fn a_store_in_use_is_refused_with_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keel.sqlite");
        let _serving = Db::open(&path).unwrap();
        // Another connection, as another process would open it: it waits `busy_timeout`, then gives up.
        let refused = Db::open(&path).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(refused.contains("is in use by another process"), "{refused}");
    }

    #[test]
    fn a_failing_job_leaves_nothing_written() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(&dir.path().join("keel.sqlite")).unwrap();
        let failed = db.with(|c| {
            run(c, "INSERT INTO items (pk, sk, data) VALUES ('T', 'a', '{}')", [])?;
            Err::<(), _>(StoreError::ConditionFailed)
        });
        assert!(matches!(failed, Err(StoreError::ConditionFailed)));
        assert_eq!(count_items(&db), 0);
        insert(&db, 1);
        assert_eq!(count_items(&db), 1);
    }
}
