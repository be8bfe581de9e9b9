//! Embedded adapters over one SQLite file: the table (`Table`) and the
//! durable queues (`WorkQueue`, with visibility timeout and a dead-letter
//! state after `max_receives`, as SQS with a redrive policy).

use async_trait::async_trait;
use keel_core::ports::{Add, Condition, Item, QueryOptions, QueueMessage, QueueName, Table, WorkQueue, Write};
use keel_core::time::now_secs;
use keel_core::StoreError;
use rusqlite::{params, Connection, OptionalExtension};
use std::collections::HashMap;
use std::path::Path;
use std::sync::mpsc::{Receiver, Sender};
use std::sync::Arc;
use std::time::Duration;

pub(crate) fn backend(e: impl std::fmt::Display) -> StoreError {
    StoreError::Backend(e.to_string())
}

/// Work for the database thread: it runs inside a batch's transaction and
/// returns how to deliver its result once the batch's commit has succeeded
/// (or failed).
type Job = Box<dyn FnOnce(&mut Connection) -> Deliver + Send>;
/// Gets the batch's commit outcome.
type Deliver = Box<dyn FnOnce(Result<(), String>) + Send>;

/// Jobs committed together at most.
const MAX_BATCH: usize = 64;

/// One SQLite connection shared by the embedded adapters, owned by its own
/// thread: callers queue work and await the result, so a request waiting for
/// the database never holds up the async workers serving other requests.
/// Jobs that queue up meanwhile are committed together (group commit: one
/// WAL append for the batch); each job's writes sit in a savepoint of their
/// own, so one job's failure undoes only that job's writes, and no result
/// is delivered before the batch is committed.
#[derive(Clone)]
pub struct Db(Arc<Sender<Job>>);

impl Db {
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let conn = Connection::open(path).map_err(backend)?;
        conn.execute_batch(
            "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL; PRAGMA busy_timeout=5000;
             PRAGMA wal_autocheckpoint=0;
             CREATE TABLE IF NOT EXISTS items (pk TEXT NOT NULL, sk TEXT NOT NULL, data TEXT NOT NULL,
                 ver INTEGER NOT NULL DEFAULT 0, n INTEGER, ttl INTEGER, PRIMARY KEY (pk, sk)) WITHOUT ROWID;
             CREATE TABLE IF NOT EXISTS messages (id INTEGER PRIMARY KEY AUTOINCREMENT, queue TEXT NOT NULL,
                 message_id TEXT NOT NULL, body TEXT NOT NULL, attributes TEXT NOT NULL,
                 receives INTEGER NOT NULL DEFAULT 0, visible_at INTEGER NOT NULL, dead INTEGER NOT NULL DEFAULT 0);
             CREATE INDEX IF NOT EXISTS messages_ready ON messages (queue, dead, visible_at);
             CREATE TABLE IF NOT EXISTS executions (name TEXT PRIMARY KEY, input TEXT NOT NULL,
                 status TEXT NOT NULL, output TEXT, error TEXT, cause TEXT);",
        )
        .map_err(backend)?;
        conn.set_prepared_statement_cache_capacity(64);
        let (jobs, queued) = std::sync::mpsc::channel::<Job>();
        std::thread::Builder::new().name("keel-sqlite".into()).spawn(move || serve(conn, queued)).map_err(backend)?;
        let db = Self(Arc::new(jobs));
        checkpoint_in_background(path, Arc::downgrade(&db.0))?;
        Ok(db)
    }

    /// Queues `f`; `reply` gets its result once committed.
    fn queue<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Connection) -> Result<T, StoreError> + Send + 'static,
        reply: impl FnOnce(Result<T, StoreError>) + Send + 'static,
    ) -> Result<(), StoreError> {
        let job: Job = Box::new(move |c| {
            let out = f(c);
            Box::new(move |committed: Result<(), String>| reply(committed.map_err(backend).and(out)))
        });
        self.0.send(job).map_err(|_| stopped())
    }

    /// Runs `f` on the database thread and awaits its committed result.
    /// Writes that must be all-or-nothing go in a `savepoint()`.
    pub async fn call<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Connection) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let (done, result) = tokio::sync::oneshot::channel();
        self.queue(f, move |r| drop(done.send(r)))?;
        result.await.map_err(|_| stopped())?
    }

    /// `call` for synchronous callers: blocks this thread until `f` has run.
    pub fn with<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Connection) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let (done, result) = std::sync::mpsc::sync_channel(1);
        self.queue(f, move |r| drop(done.send(r)))?;
        result.recv().map_err(|_| stopped())?
    }
}

fn stopped() -> StoreError {
    backend("database thread has stopped")
}

/// The database thread: takes whatever jobs are queued, runs them in one
/// transaction, commits, then delivers their results. It ends when the last
/// `Db` handle is dropped.
fn serve(mut conn: Connection, queued: Receiver<Job>) {
    while let Ok(first) = queued.recv() {
        let batch: Vec<Job> = std::iter::once(first).chain(queued.try_iter().take(MAX_BATCH - 1)).collect();
        // Without the outer transaction (BEGIN failed) each job's savepoint commits on its own.
        // IMMEDIATE: a deferred transaction that read before a truncating checkpoint
        // could not become a writer (SQLITE_BUSY_SNAPSHOT, no busy wait).
        let outer = conn.execute_batch("BEGIN IMMEDIATE").is_ok();
        let deliveries: Vec<Deliver> = batch.into_iter().map(|job| job(&mut conn)).collect();
        let committed = match outer {
            true => conn.execute_batch("COMMIT").map_err(|e| {
                let _ = conn.execute_batch("ROLLBACK");
                format!("commit failed: {e}")
            }),
            false => Ok(()),
        };
        for deliver in deliveries {
            deliver(committed.clone());
        }
    }
}

/// How often the WAL is copied back into the database file.
const CHECKPOINT_EVERY: Duration = Duration::from_millis(500);
/// WAL frames (4 KiB pages: 1 GiB) past which a checkpoint also truncates
/// the WAL. Large, because truncating stalls writers (seconds for a full
/// WAL): a bound on disk use under endless load, not a routine step.
const WAL_FRAMES_LIMIT: i64 = 262_144;

/// Checkpoints the WAL from a second connection on its own thread, so the
/// fsync a checkpoint needs never stalls a request holding the main
/// connection (SQLite's automatic checkpoint would run inside whichever
/// commit crosses the threshold). A passive checkpoint takes no write lock,
/// though its disk writes still compete with the WAL's (README, gateway
/// benchmarks). The WAL restarts from its start only when a checkpoint has
/// copied every frame before the next write, which steady traffic prevents;
/// so past `WAL_FRAMES_LIMIT` the checkpoint waits for the writer and
/// truncates it: a rare stall instead of a WAL that grows without end.
/// The thread ends with the last handle on the database.
fn checkpoint_in_background(path: &Path, db: std::sync::Weak<Sender<Job>>) -> Result<(), StoreError> {
    let conn = Connection::open(path).map_err(backend)?;
    conn.busy_timeout(Duration::from_secs(5)).map_err(backend)?;
    std::thread::Builder::new()
        .name("keel-sqlite-checkpoint".into())
        .spawn(move || loop {
            std::thread::sleep(CHECKPOINT_EVERY);
            if db.strong_count() == 0 {
                return;
            }
            if let Err(e) = checkpoint(&conn, WAL_FRAMES_LIMIT) {
                tracing::warn!(error = %e, "WAL checkpoint failed");
            }
        })
        .map_err(backend)?;
    Ok(())
}

/// One passive checkpoint, then a truncating one if the WAL has grown past
/// `limit` frames. Returns the WAL's length in frames afterwards.
fn checkpoint(conn: &Connection, limit: i64) -> rusqlite::Result<i64> {
    let frames = |mode: &str| conn.query_row(&format!("PRAGMA wal_checkpoint({mode})"), [], |r| r.get::<_, i64>(1));
    match frames("PASSIVE")? {
        n if n > limit => frames("TRUNCATE"),
        n => Ok(n),
    }
}

#[derive(Clone)]
pub struct SqliteTable {
    db: Db,
}

impl SqliteTable {
    pub fn new(db: Db) -> Self {
        Self { db }
    }
}

/// Runs one statement, prepared once per connection.
fn run(c: &Connection, sql: &str, params: impl rusqlite::Params) -> Result<usize, StoreError> {
    c.prepare_cached(sql).and_then(|mut s| s.execute(params)).map_err(backend)
}

/// (version, ttl) of a live-or-expired row.
fn current(tx: &Connection, pk: &str, sk: &str) -> Result<Option<(u64, Option<i64>)>, StoreError> {
    tx.prepare_cached("SELECT ver, ttl FROM items WHERE pk = ?1 AND sk = ?2")
        .and_then(|mut s| s.query_row(params![pk, sk], |r| Ok((r.get::<_, i64>(0)? as u64, r.get::<_, Option<i64>>(1)?))).optional())
        .map_err(backend)
}

/// Adds `by` to a counter (a missing one counts as 0) unless that passes
/// `max`; returns the new value.
fn add(tx: &Connection, pk: &str, sk: &str, by: i64, max: Option<i64>, expires_at: Option<i64>) -> Result<i64, StoreError> {
    let old: Option<Option<i64>> = tx
        .prepare_cached("SELECT n FROM items WHERE pk = ?1 AND sk = ?2")
        .and_then(|mut s| s.query_row(params![pk, sk], |r| r.get(0)).optional())
        .map_err(backend)?;
    let new = old.flatten().unwrap_or(0) + by;
    if max.is_some_and(|max| new > max) {
        return Err(StoreError::ConditionFailed);
    }
    run(
        tx,
        "INSERT INTO items (pk, sk, data, ver, n, ttl) VALUES (?1, ?2, 'null', 0, ?3, ?4)
         ON CONFLICT (pk, sk) DO UPDATE SET n = excluded.n, ttl = coalesce(excluded.ttl, items.ttl)",
        params![pk, sk, new, expires_at],
    )?;
    Ok(new)
}

/// Checks a write's condition and performs it; returns the new version.
fn apply(tx: &Connection, w: &Write) -> Result<u64, StoreError> {
    let now = now_secs();
    let row = current(tx, &w.pk, &w.sk)?;
    let live = row.filter(|(_, ttl)| ttl.is_none_or(|t| t > now));
    let ok = match w.condition {
        Condition::Always => true,
        Condition::NotExists => live.is_none(),
        Condition::Version(v) => live.is_some_and(|(ver, _)| ver == v),
    };
    if !ok {
        return Err(StoreError::ConditionFailed);
    }
    let version = row.map_or(0, |(v, _)| v) + 1;
    run(
        tx,
        "INSERT INTO items (pk, sk, data, ver, ttl) VALUES (?1, ?2, ?3, ?4, ?5)
         ON CONFLICT (pk, sk) DO UPDATE SET data = excluded.data, ver = excluded.ver, ttl = excluded.ttl",
        params![w.pk, w.sk, w.data.to_string(), version as i64, w.expires_at],
    )?;
    Ok(version)
}

/// pk, sk, data, ver, n, ttl.
type ItemRow = (String, String, String, i64, Option<i64>, Option<i64>);

fn row_to_item(r: &rusqlite::Row<'_>) -> rusqlite::Result<ItemRow> {
    Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?))
}

fn to_item(row: ItemRow) -> Result<Item, StoreError> {
    let (pk, sk, data, ver, n, ttl) = row;
    Ok(Item {
        pk,
        sk,
        data: serde_json::from_str(&data).map_err(backend)?,
        version: ver as u64,
        counter: n.unwrap_or(0),
        expires_at: ttl,
    })
}

macro_rules! select_items {
    ($rest:literal) => {
        concat!("SELECT pk, sk, data, ver, n, ttl FROM items ", $rest)
    };
}

/// The smallest string above every string that starts with `prefix`; keys
/// never contain U+10FFFF, so `prefix <= sk < upper` is exactly "starts
/// with `prefix`", and SQLite seeks the primary key instead of scanning the
/// whole partition (where cache entries and pointers pile up).
fn prefix_upper_bound(prefix: &str) -> String {
    format!("{prefix}\u{10FFFF}")
}

#[async_trait]
impl Table for SqliteTable {
    async fn get(&self, pk: &str, sk: &str) -> Result<Option<Item>, StoreError> {
        let (pk, sk) = (pk.to_owned(), sk.to_owned());
        self.db.call(move |c| {
            let row = c
                .prepare_cached(select_items!("WHERE pk = ?1 AND sk = ?2 AND (ttl IS NULL OR ttl > ?3)"))
                .and_then(|mut s| s.query_row(params![pk, sk, now_secs()], row_to_item).optional())
                .map_err(backend)?;
            row.map(to_item).transpose()
        })
        .await
    }

    async fn put(&self, write: Write) -> Result<u64, StoreError> {
        self.db.call(move |c| {
            let tx = c.savepoint().map_err(backend)?;
            let v = apply(&tx, &write)?;
            tx.commit().map_err(backend)?;
            Ok(v)
        })
        .await
    }

    async fn put_all_adding(&self, writes: Vec<Write>, adds: Vec<Add>) -> Result<(), StoreError> {
        self.db.call(move |c| {
            let tx = c.savepoint().map_err(backend)?;
            for w in &writes {
                apply(&tx, w)?; // dropping `tx` on error rolls everything back
            }
            for a in &adds {
                add(&tx, &a.pk, &a.sk, a.by, None, None)?;
            }
            tx.commit().map_err(backend)
        })
        .await
    }

    async fn delete(&self, pk: &str, sk: &str) -> Result<(), StoreError> {
        let (pk, sk) = (pk.to_owned(), sk.to_owned());
        self.db.call(move |c| {
            run(c, "DELETE FROM items WHERE pk = ?1 AND sk = ?2", params![pk, sk])?;
            Ok(())
        })
        .await
    }

    async fn query(&self, pk: &str, sk_prefix: &str, options: QueryOptions) -> Result<Vec<Item>, StoreError> {
        let (pk, sk_prefix) = (pk.to_owned(), sk_prefix.to_owned());
        self.db.call(move |c| {
            let sql = match options.descending {
                true => select_items!(
                    "WHERE pk = ?1 AND sk >= ?2 AND sk < ?6 AND (ttl IS NULL OR ttl > ?3) AND (?5 IS NULL OR sk > ?5) ORDER BY sk DESC LIMIT ?4"
                ),
                false => select_items!(
                    "WHERE pk = ?1 AND sk >= ?2 AND sk < ?6 AND (ttl IS NULL OR ttl > ?3) AND (?5 IS NULL OR sk > ?5) ORDER BY sk ASC LIMIT ?4"
                ),
            };
            let limit = options.limit.map_or(-1, |l| l as i64);
            let mut stmt = c.prepare_cached(sql).map_err(backend)?;
            let rows = stmt
                .query_map(params![pk, sk_prefix, now_secs(), limit, options.after, prefix_upper_bound(&sk_prefix)], row_to_item)
                .map_err(backend)?
                .collect::<Result<Vec<_>, _>>()
                .map_err(backend)?;
            rows.into_iter().map(to_item).collect()
        })
        .await
    }

    async fn increment(&self, pk: &str, sk: &str, by: i64, max: Option<i64>, expires_at: Option<i64>) -> Result<i64, StoreError> {
        let (pk, sk) = (pk.to_owned(), sk.to_owned());
        self.db.call(move |c| {
            let tx = c.savepoint().map_err(backend)?;
            let new = add(&tx, &pk, &sk, by, max, expires_at)?;
            tx.commit().map_err(backend)?;
            Ok(new)
        })
        .await
    }
}

/// Durable local queues in the same SQLite file.
#[derive(Clone)]
pub struct SqliteQueue {
    db: Db,
    visibility: Duration,
    max_receives: u32,
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
            let mut stmt = c
                .prepare("SELECT body FROM messages WHERE queue = ?1 AND dead = 1 ORDER BY id")
                .map_err(backend)?;
            let rows = stmt.query_map(params![queue.as_str()], |r| r.get(0)).map_err(backend)?;
            rows.collect::<Result<Vec<String>, _>>().map_err(backend)
        })
    }

    /// Moves the queue's dead letters back, as new deliveries: the replay
    /// after the cause of the failures is fixed. Returns how many moved.
    pub fn redrive(&self, queue: QueueName) -> Result<usize, StoreError> {
        self.db.with(move |c| {
            run(
                c,
                "UPDATE messages SET dead = 0, receives = 0, visible_at = ?2 WHERE queue = ?1 AND dead = 1",
                params![queue.as_str(), now_ms()],
            )
        })
    }

    /// Messages not yet acked (in flight or waiting), dead letters excluded.
    pub fn pending(&self, queue: QueueName) -> Result<usize, StoreError> {
        self.db.with(move |c| {
            c.query_row("SELECT count(*) FROM messages WHERE queue = ?1 AND dead = 0", params![queue.as_str()], |r| {
                r.get::<_, i64>(0)
            })
            .map(|n| n as usize)
            .map_err(backend)
        })
    }
}

#[async_trait]
impl WorkQueue for SqliteQueue {
    async fn send(&self, queue: QueueName, body: String, attributes: HashMap<String, String>) -> Result<String, StoreError> {
        let message_id = uuid::Uuid::new_v4().to_string();
        let attrs = serde_json::to_string(&attributes).map_err(backend)?;
        let id = message_id.clone();
        self.db
            .call(move |c| {
                run(
                    c,
                    "INSERT INTO messages (queue, message_id, body, attributes, visible_at) VALUES (?1, ?2, ?3, ?4, ?5)",
                    params![queue.as_str(), id, body, attrs, now_ms()],
                )
            })
            .await?;
        Ok(message_id)
    }

    async fn receive(&self, queue: QueueName, max: usize) -> Result<Vec<QueueMessage>, StoreError> {
        let (visibility, max_receives) = (self.visibility.as_millis() as i64, self.max_receives);
        self.db.call(move |c| {
            let tx = c.savepoint().map_err(backend)?;
            let now = now_ms();
            let rows = {
                let mut stmt = tx
                    .prepare_cached(
                        "SELECT id, message_id, body, attributes, receives FROM messages
                         WHERE queue = ?1 AND dead = 0 AND visible_at <= ?2 ORDER BY id LIMIT ?3",
                    )
                    .map_err(backend)?;
                let rows = stmt
                    .query_map(params![queue.as_str(), now, max as i64], |r| {
                        Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?, r.get::<_, String>(2)?, r.get::<_, String>(3)?, r.get::<_, i64>(4)?))
                    })
                    .map_err(backend)?
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(backend)?;
                rows
            };
            let mut out = Vec::new();
            for (id, message_id, body, attrs, receives) in rows {
                if receives as u32 >= max_receives {
                    // Past the redrive limit: to the dead-letter state, as SQS moves it to the DLQ.
                    run(&tx, "UPDATE messages SET dead = 1 WHERE id = ?1", params![id])?;
                    continue;
                }
                run(&tx, "UPDATE messages SET receives = receives + 1, visible_at = ?2 WHERE id = ?1", params![id, now + visibility])?;
                out.push(QueueMessage {
                    message_id,
                    receipt: id.to_string(),
                    body,
                    attributes: serde_json::from_str(&attrs).map_err(backend)?,
                    receive_count: receives as u32 + 1,
                });
            }
            tx.commit().map_err(backend)?;
            Ok(out)
        })
        .await
    }

    async fn ack(&self, queue: QueueName, receipt: &str) -> Result<(), StoreError> {
        let id: i64 = receipt.parse().map_err(|_| backend("bad receipt"))?;
        self.db
            .call(move |c| {
                run(c, "DELETE FROM messages WHERE id = ?1 AND queue = ?2", params![id, queue.as_str()])?;
                Ok(())
            })
            .await
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_checkpoint_truncates_a_wal_past_its_limit() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keel.sqlite");
        let db = Db::open(&path).unwrap();
        for i in 0..20 {
            db.with(move |c| c.execute("INSERT INTO items (pk, sk, data) VALUES ('T', ?1, '{}')", [i]).map_err(backend)).unwrap();
        }
        let conn = Connection::open(&path).unwrap();
        let wal = path.with_extension("sqlite-wal");
        assert!(checkpoint(&conn, 1_000).unwrap() > 0, "under the limit the WAL keeps its frames");
        assert!(std::fs::metadata(&wal).unwrap().len() > 0);
        assert_eq!(checkpoint(&conn, 5).unwrap(), 0);
        assert_eq!(std::fs::metadata(&wal).unwrap().len(), 0, "past the limit the WAL is truncated");
        assert_eq!(db.with(|c| c.query_row("SELECT count(*) FROM items", [], |r| r.get::<_, i64>(0)).map_err(backend)).unwrap(), 20);
    }
}
