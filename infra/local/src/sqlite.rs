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
use std::cell::Cell;
use std::sync::atomic::{AtomicI64, AtomicU32, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock, PoisonError, TryLockError, Weak};
use std::time::Duration;

pub(crate) fn backend(e: impl std::fmt::Display) -> StoreError {
    StoreError::Backend(e.to_string())
}

/// Work for the database: it runs inside a transaction and returns how to
/// deliver its result once that transaction has committed (or failed).
pub(crate) type Job = Box<dyn FnOnce(&mut Connection) -> Deliver + Send>;
/// Gets the commit outcome.
type Deliver = Box<dyn FnOnce(Result<(), String>) + Send>;

/// Jobs committed together at most.
const MAX_BATCH: usize = 64;

thread_local! {
    /// Whether this thread may run jobs itself when the connection is free.
    static RUNS_JOBS: Cell<bool> = const { Cell::new(true) };
}

/// Jobs submitted from this thread are background work: they always go to
/// the database thread, and first wait for a moment with no request in
/// flight (`Requests`). For low-priority threads: holding the connection
/// there would make every request wait whenever the scheduler sets that
/// thread aside.
pub fn never_hold_the_connection_here() {
    RUNS_JOBS.with(|r| r.set(false));
}

/// One SQLite connection shared by the embedded adapters. A job runs on the
/// caller's thread when the connection is free: a transaction takes about
/// 10 µs there, while handing it to another thread and back costs two
/// wake-ups (about 60 µs on the 2-core build machine). When the connection
/// is busy, the job goes to the database thread instead of blocking the
/// caller, so a request waiting for the database never holds up the async
/// workers serving other requests. Jobs that queue up meanwhile are
/// committed together (group commit), as are the jobs one poll of a
/// request submits (`Db::commit_per_poll`, in `per_poll`). Each job's
/// writes are all-or-nothing on their own (one statement, or a savepoint
/// around several), so one job's failure undoes only that job's writes,
/// and no result is delivered before its transaction has committed.
///
/// Durability: `synchronous=OFF`. A crash of the process loses nothing
/// committed, but an OS crash or power cut may lose the last transactions
/// or damage the file: a trade made for a development store, because WAL
/// appends stalled for tens of milliseconds behind every checkpoint's fsync
/// on the build machine's disk (README, gateway benchmarks). Checkpoints
/// run in the background (`Checkpoints`); with no other connection
/// writing meanwhile they finish, and the WAL starts over instead of
/// growing.
///
/// The connection holds the file exclusively (`locking_mode=EXCLUSIVE`),
/// which spares every transaction its file-lock system calls and keeps the
/// WAL index in memory; savepoints journal to memory too. So one process
/// serves a data directory at a time: a second one waits `busy_timeout`,
/// then fails, saying the store is in use by another process.
#[derive(Clone)]
pub struct Db {
    conn: Arc<Mutex<Connection>>,
    queued: Arc<Sender<Job>>,
    pub(crate) requests: Arc<Requests>,
    checkpoints: Arc<Checkpoints>,
}

/// How long a background job waits at most for a moment with no request in
/// flight: short, so that the queues still drain under continuous load.
const BACKGROUND_DEFERRAL: Duration = Duration::from_millis(1);

/// The requests in flight on this database (`Db::commit_per_poll`). A
/// background job (a queue consumer's receive, ack or group write) holds
/// the connection for up to a few hundred microseconds; a request whose
/// store call arrives meanwhile waits that long. Started in a moment when
/// no request is in flight, it mostly finishes before the next one needs
/// the store (README, gateway benchmarks).
#[derive(Default)]
pub(crate) struct Requests {
    state: Mutex<InFlight>,
    quiet: Condvar,
}

#[derive(Default)]
struct InFlight {
    requests: usize,
    /// Background threads waiting for no request in flight.
    waiting: usize,
}

impl Requests {
    /// Counts a request in flight until the guard drops.
    pub(crate) fn serving(self: &Arc<Self>) -> Serving {
        self.state.lock().unwrap_or_else(PoisonError::into_inner).requests += 1;
        Serving(self.clone())
    }

    /// Blocks until no request is in flight, or `max` has passed; `true` if quiet.
    fn wait_quiet(&self, max: Duration) -> bool {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        state.waiting += 1;
        let (mut state, waited) =
            self.quiet.wait_timeout_while(state, max, |s| s.requests > 0).unwrap_or_else(PoisonError::into_inner);
        state.waiting -= 1;
        !waited.timed_out()
    }
}

#[cfg(test)]
impl Requests {
    pub(crate) fn in_flight(&self) -> usize {
        self.state.lock().unwrap_or_else(PoisonError::into_inner).requests
    }
}

pub(crate) struct Serving(Arc<Requests>);

impl Drop for Serving {
    fn drop(&mut self) {
        let mut state = self.0.state.lock().unwrap_or_else(PoisonError::into_inner);
        state.requests -= 1;
        // Only a waiting background thread needs the system call.
        if state.requests == 0 && state.waiting > 0 {
            self.0.quiet.notify_all();
        }
    }
}

/// Commits that wrote after which the WAL is checkpointed: a few hundred
/// pages, so that each checkpoint stays short.
const CHECKPOINT_AFTER: u32 = 64;
/// WAL pages (4 KiB) past which SQLite checkpoints in the commit that
/// crosses them: a backstop, should the checkpoint thread fall behind.
const WAL_PAGES_LIMIT: u32 = 4096;

/// WAL checkpoints, off the requests' path. SQLite's own checkpoint runs
/// inside the commit that takes the WAL past its limit, which was mostly a
/// request's: at 1,000 rps, one request in 25 paid a few hundred
/// microseconds for it (README, gateway benchmarks). So a thread of the
/// database's own checkpoints after every `CHECKPOINT_AFTER` commits that
/// wrote, in a moment with no request in flight, as background jobs wait.
#[derive(Default)]
struct Checkpoints {
    /// Commits that wrote since the last checkpoint.
    commits: AtomicU32,
    thread: OnceLock<std::thread::Thread>,
}

impl Checkpoints {
    /// Counts a commit that wrote, and wakes the checkpoint thread when one is due.
    fn committed(&self) {
        if self.commits.fetch_add(1, Ordering::Relaxed) + 1 == CHECKPOINT_AFTER {
            if let Some(thread) = self.thread.get() {
                thread.unpark();
            }
        }
    }
}

/// The checkpoint thread: it ends soon after the connection is closed.
fn checkpoint(conn: &Weak<Mutex<Connection>>, requests: &Requests, checkpoints: &Checkpoints) {
    loop {
        std::thread::park_timeout(Duration::from_millis(100));
        let Some(conn) = conn.upgrade() else { return };
        if checkpoints.commits.load(Ordering::Relaxed) < CHECKPOINT_AFTER {
            continue;
        }
        requests.wait_quiet(BACKGROUND_DEFERRAL);
        let conn = conn.lock().unwrap_or_else(PoisonError::into_inner);
        checkpoints.commits.store(0, Ordering::Relaxed);
        if let Err(e) = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(())) {
            tracing::warn!(error = %e, "WAL checkpoint failed; SQLite's own will run at the limit");
        }
    }
}

impl Db {
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let conn = Connection::open(path).map_err(backend)?;
        conn.execute_batch(&format!(
            "PRAGMA locking_mode=EXCLUSIVE; PRAGMA temp_store=MEMORY; PRAGMA busy_timeout=5000;
             PRAGMA journal_mode=WAL; PRAGMA synchronous=OFF;
             PRAGMA wal_autocheckpoint={WAL_PAGES_LIMIT};
             CREATE TABLE IF NOT EXISTS items (pk TEXT NOT NULL, sk TEXT NOT NULL, data TEXT NOT NULL,
                 ver INTEGER NOT NULL DEFAULT 0, n INTEGER, ttl INTEGER, PRIMARY KEY (pk, sk)) WITHOUT ROWID;
             CREATE TABLE IF NOT EXISTS messages (id INTEGER PRIMARY KEY, queue TEXT NOT NULL,
                 message_id TEXT NOT NULL, body TEXT NOT NULL, attributes TEXT NOT NULL,
                 receives INTEGER NOT NULL DEFAULT 0, visible_at INTEGER NOT NULL, dead INTEGER NOT NULL DEFAULT 0);
             CREATE INDEX IF NOT EXISTS messages_ready ON messages (queue, dead, visible_at);
             CREATE TABLE IF NOT EXISTS executions (name TEXT PRIMARY KEY, input TEXT NOT NULL,
                 status TEXT NOT NULL, output TEXT, error TEXT, cause TEXT);"
        ))
        .map_err(|e| match e.sqlite_error_code() {
            Some(rusqlite::ErrorCode::DatabaseBusy) => {
                backend(format!("{} is in use by another process (one keel-local per data directory)", path.display()))
            }
            _ => backend(e),
        })?;
        conn.set_prepared_statement_cache_capacity(64);
        let conn = Arc::new(Mutex::new(conn));
        let (jobs, queued) = std::sync::mpsc::channel::<Job>();
        let (requests, checkpoints) = (Arc::<Requests>::default(), Arc::<Checkpoints>::default());
        let (shared, counted) = (conn.clone(), checkpoints.clone());
        std::thread::Builder::new()
            .name("keel-sqlite".into())
            .spawn(move || serve(&shared, queued, &counted))
            .map_err(backend)?;
        let (weak, quiet, due) = (Arc::downgrade(&conn), requests.clone(), checkpoints.clone());
        let checkpointer = std::thread::Builder::new()
            .name("keel-checkpoint".into())
            .spawn(move || checkpoint(&weak, &quiet, &due))
            .map_err(backend)?;
        let _ = checkpoints.thread.set(checkpointer.thread().clone());
        Ok(Self { conn, queued: Arc::new(jobs), requests, checkpoints })
    }

    /// Runs `f` at once if the connection is free, else queues it for the
    /// database thread; `reply` gets its result once committed. If
    /// `may_hold`, inside `Db::commit_per_poll`, `f` waits for the end of
    /// the current poll instead, to commit with the poll's other jobs.
    fn submit<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Connection) -> Result<T, StoreError> + Send + 'static,
        reply: impl FnOnce(Result<T, StoreError>) + Send + 'static,
        may_hold: bool,
    ) -> Result<(), StoreError> {
        let job: Job = Box::new(move |c| {
            let out = f(c);
            Box::new(move |committed: Result<(), String>| reply(committed.map_err(backend).and(out)))
        });
        let job = match may_hold {
            true => match crate::per_poll::hold(self, job) {
                Some(job) => job,
                None => return Ok(()),
            },
            false => job,
        };
        self.run_or_queue(vec![job]).map(drop)
    }

    /// Whether both handles use the same connection.
    pub(crate) fn same(&self, other: &Db) -> bool {
        Arc::ptr_eq(&self.conn, &other.conn)
    }

    /// Runs `jobs` in one transaction now if the connection is free (`true`),
    /// else hands them to the database thread (`false`).
    pub(crate) fn run_or_queue(&self, jobs: Vec<Job>) -> Result<bool, StoreError> {
        let free = match RUNS_JOBS.with(Cell::get) {
            true => self.conn.try_lock(),
            false => {
                self.requests.wait_quiet(BACKGROUND_DEFERRAL);
                Err(TryLockError::WouldBlock)
            }
        };
        let mut conn = match free {
            Ok(conn) => conn,
            Err(TryLockError::Poisoned(p)) => p.into_inner(),
            Err(TryLockError::WouldBlock) => {
                self.queued.send(all_in_one(jobs)).map_err(|_| stopped())?;
                return Ok(false);
            }
        };
        run_batch(&mut conn, jobs, &self.checkpoints);
        Ok(true)
    }

    /// Runs `f` against the database and awaits its committed result.
    /// Writes that must be all-or-nothing go in a `savepoint()`.
    pub async fn call<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Connection) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let (done, result) = tokio::sync::oneshot::channel();
        self.submit(f, move |r| drop(done.send(r)), true)?;
        result.await.map_err(|_| stopped())?
    }

    /// `call` for synchronous callers: blocks this thread until `f` has run.
    /// Never held: the poll it blocks would not end.
    pub fn with<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Connection) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let (done, result) = std::sync::mpsc::sync_channel(1);
        self.submit(f, move |r| drop(done.send(r)), false)?;
        result.recv().map_err(|_| stopped())?
    }
}

/// Several jobs as one, so that the database thread cannot split them
/// between batches: they commit together there too.
fn all_in_one(mut jobs: Vec<Job>) -> Job {
    if jobs.len() == 1 {
        if let Some(job) = jobs.pop() {
            return job;
        }
    }
    Box::new(move |c| {
        let deliveries: Vec<Deliver> = jobs.into_iter().map(|job| job(c)).collect();
        Box::new(move |committed: Result<(), String>| {
            for deliver in deliveries {
                deliver(committed.clone());
            }
        })
    })
}

fn stopped() -> StoreError {
    backend("database thread has stopped")
}

/// The database thread: takes whatever jobs are queued and runs them as one
/// batch. It ends when the last `Db` handle is dropped.
fn serve(conn: &Mutex<Connection>, queued: Receiver<Job>, checkpoints: &Checkpoints) {
    while let Ok(first) = queued.recv() {
        let batch: Vec<Job> = std::iter::once(first).chain(queued.try_iter().take(MAX_BATCH - 1)).collect();
        run_batch(&mut conn.lock().unwrap_or_else(PoisonError::into_inner), batch, checkpoints);
    }
}

/// Runs jobs in one transaction, commits, then delivers their results.
fn run_batch(conn: &mut Connection, batch: Vec<Job>, checkpoints: &Checkpoints) {
    let changes = conn.total_changes();
    // Without the outer transaction (BEGIN failed) each job commits on its own.
    let outer = statement(conn, "BEGIN IMMEDIATE").is_ok();
    let deliver = all_in_one(batch)(conn);
    let committed = match outer {
        true => statement(conn, "COMMIT").map(drop).map_err(|e| {
            let _ = statement(conn, "ROLLBACK");
            format!("commit failed: {e}")
        }),
        false => Ok(()),
    };
    if conn.total_changes() > changes {
        checkpoints.committed();
    }
    deliver(committed);
}

/// A statement without parameters, parsed once per connection.
fn statement(conn: &Connection, sql: &str) -> rusqlite::Result<usize> {
    conn.prepare_cached(sql)?.execute([])
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

/// A write statement with and without `RETURNING column`. RETURNING makes
/// a statement about a third dearer (SQLite gathers the returned rows in a
/// table of their own), so writes whose result nobody reads go without it.
macro_rules! returning {
    ($sql:literal, $column:literal) => {
        [concat!($sql, " RETURNING ", $column), $sql]
    };
}

/// Runs a write from `returning!`: the returned column if `wanted` (else
/// 0), or `None` when the statement wrote no row (its condition failed).
fn write(c: &Connection, sql: [&str; 2], params: impl rusqlite::Params, wanted: bool) -> Result<Option<i64>, StoreError> {
    match wanted {
        true => c.prepare_cached(sql[0]).and_then(|mut s| s.query_row(params, |r| r.get(0)).optional()),
        false => c.prepare_cached(sql[1]).and_then(|mut s| s.execute(params)).map(|n| (n > 0).then_some(0)),
    }
    .map_err(backend)
}

/// Adds `by` to a counter (a missing one counts as 0) unless that passes
/// `max`; returns the new value (0 unless `wanted`). One statement: the
/// check and the write cannot be split by another writer, and a statement
/// that fails changes nothing, so callers need no savepoint of their own.
/// A sum that would leave i64 fails too (SQLite would make it a REAL, and a
/// counter never changes type).
fn add(c: &Connection, a: &Add, max: Option<i64>, expires_at: Option<i64>, wanted: bool) -> Result<i64, StoreError> {
    let sql = match max.is_some_and(|max| a.by > max) {
        // A new counter would start past the limit: only an existing (negative) one may take it.
        true => returning!(
            "UPDATE items SET n = coalesce(n, 0) + ?3, ttl = coalesce(?4, ttl)
             WHERE pk = ?1 AND sk = ?2 AND coalesce(n, 0) + ?3 <= ?5 AND typeof(coalesce(n, 0) + ?3) = 'integer'",
            "n"
        ),
        false => returning!(
            "INSERT INTO items (pk, sk, data, ver, n, ttl) VALUES (?1, ?2, 'null', 0, ?3, ?4)
             ON CONFLICT (pk, sk) DO UPDATE SET n = coalesce(items.n, 0) + excluded.n, ttl = coalesce(excluded.ttl, items.ttl)
             WHERE (?5 IS NULL OR coalesce(items.n, 0) + excluded.n <= ?5)
               AND typeof(coalesce(items.n, 0) + excluded.n) = 'integer'",
            "n"
        ),
    };
    write(c, sql, params![a.pk, a.sk, a.by, expires_at, max], wanted)?.ok_or(StoreError::ConditionFailed)
}

/// Checks a write's condition and performs it in one statement; returns
/// the new version (one past the old row's, expired or not; 0 unless
/// `wanted`). `data` is `w.data` serialized, done before taking the
/// connection.
fn apply(c: &Connection, w: &Write, data: &str, wanted: bool) -> Result<u64, StoreError> {
    let version = match w.condition {
        Condition::Always => write(
            c,
            returning!(
                "INSERT INTO items (pk, sk, data, ver, ttl) VALUES (?1, ?2, ?3, 1, ?4)
                 ON CONFLICT (pk, sk) DO UPDATE SET data = excluded.data, ver = items.ver + 1, ttl = excluded.ttl",
                "ver"
            ),
            params![w.pk, w.sk, data, w.expires_at],
            wanted,
        ),
        // An expired row counts as absent.
        Condition::NotExists => write(
            c,
            returning!(
                "INSERT INTO items (pk, sk, data, ver, ttl) VALUES (?1, ?2, ?3, 1, ?4)
                 ON CONFLICT (pk, sk) DO UPDATE SET data = excluded.data, ver = items.ver + 1, ttl = excluded.ttl
                 WHERE items.ttl IS NOT NULL AND items.ttl <= ?5",
                "ver"
            ),
            params![w.pk, w.sk, data, w.expires_at, now_secs()],
            wanted,
        ),
        Condition::Version(expected) => write(
            c,
            returning!(
                "UPDATE items SET data = ?3, ver = ver + 1, ttl = ?4
                 WHERE pk = ?1 AND sk = ?2 AND ver = ?6 AND (ttl IS NULL OR ttl > ?5)",
                "ver"
            ),
            params![w.pk, w.sk, data, w.expires_at, now_secs(), expected as i64],
            wanted,
        ),
    }?;
    version.map(|v| v as u64).ok_or(StoreError::ConditionFailed)
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

// Neither statement binds its limit: SQLite plans with the value bound to a
// `LIMIT ?`, so it would prepare the statement again on every run.

/// A partition's items from a key prefix, in key order. They come straight
/// off the primary key, so taking the first `limit` rows reads no more than
/// a LIMIT would.
fn query_sql(descending: bool) -> &'static str {
    macro_rules! ordered {
        ($order:literal) => {
            concat!(
                select_items!("WHERE pk = ?1 AND sk >= ?2 AND sk < ?5 AND (ttl IS NULL OR ttl > ?3) AND (?4 IS NULL OR sk > ?4) ORDER BY sk "),
                $order
            )
        };
    }
    match descending {
        true => ordered!("DESC"),
        false => ordered!("ASC"),
    }
}

/// When the first message not dead comes back (or is new), if any.
const NEXT_VISIBLE_SQL: &str = "SELECT min(visible_at) FROM messages WHERE queue = ?1 AND dead = 0";

/// Claims up to `max` visible messages, oldest first.
fn receive_sql(max: usize) -> String {
    format!(
        "UPDATE messages SET receives = receives + 1, visible_at = ?3
         WHERE id IN (SELECT id FROM messages WHERE queue = ?1 AND dead = 0 AND visible_at <= ?2 ORDER BY id LIMIT {max})
         RETURNING id, message_id, body, attributes, receives"
    )
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
        let data = write.data_text()?;
        self.db.call(move |c| apply(c, &write, &data, true)).await
    }

    async fn put_all_adding(&self, writes: Vec<Write>, adds: Vec<Add>) -> Result<(), StoreError> {
        let data: Vec<String> = writes.iter().map(Write::data_text).collect::<Result<_, _>>()?;
        self.db.call(move |c| {
            let tx = c.savepoint().map_err(backend)?;
            for (w, data) in writes.iter().zip(&data) {
                apply(&tx, w, data, false)?; // dropping `tx` on error rolls everything back
            }
            for a in &adds {
                add(&tx, a, None, None, false)?;
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
            let mut stmt = c.prepare_cached(query_sql(options.descending)).map_err(backend)?;
            let rows = stmt
                .query_map(params![pk, sk_prefix, now_secs(), options.after, prefix_upper_bound(&sk_prefix)], row_to_item)
                .map_err(backend)?
                .take(options.limit.unwrap_or(usize::MAX))
                .collect::<Result<Vec<_>, _>>()
                .map_err(backend)?;
            rows.into_iter().map(to_item).collect()
        })
        .await
    }

    async fn increment(&self, pk: &str, sk: &str, by: i64, max: Option<i64>, expires_at: Option<i64>) -> Result<i64, StoreError> {
        let counter = Add { pk: pk.to_owned(), sk: sk.to_owned(), by };
        self.db.call(move |c| add(c, &counter, max, expires_at, true)).await
    }

    async fn increment_without_result(
        &self,
        pk: &str,
        sk: &str,
        by: i64,
        max: Option<i64>,
        expires_at: Option<i64>,
    ) -> Result<(), StoreError> {
        let counter = Add { pk: pk.to_owned(), sk: sk.to_owned(), by };
        self.db.call(move |c| add(c, &counter, max, expires_at, false).map(drop)).await
    }
}

/// Durable local queues in the same SQLite file.
#[derive(Clone)]
pub struct SqliteQueue {
    db: Db,
    visibility: Duration,
    max_receives: u32,
    /// Per queue (`QueueName::ALL`'s order), when a receive may next find a
    /// message (ms): an idle consumer's polls, every 20 ms per queue, then
    /// skip the store, where each was a write transaction that a request
    /// arriving meanwhile waited for. Sends and redrives bring it forward;
    /// both run in this process, which holds the file exclusively (`Db`).
    /// Only a receive's job moves it later, and jobs hold the connection:
    /// a send's and a receive's cannot interleave, so a receive that finds
    /// the queue empty cannot hide a message sent meanwhile.
    next_visible: [Arc<AtomicI64>; QueueName::ALL.len()],
}

/// A receipt names the message's row and the message: without
/// AUTOINCREMENT (which would write its counter on every send) a row id
/// comes back once the newest message is deleted, and a late ack of the old
/// message must not delete the new one.
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
        Self { db, visibility, max_receives, next_visible: Default::default() }
    }

    /// The queue's "may next find a message" time, shared with the jobs that move it.
    fn next_visible(&self, queue: QueueName) -> Arc<AtomicI64> {
        let index = QueueName::ALL.iter().position(|q| *q == queue).unwrap_or(0);
        self.next_visible[index].clone()
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
        let next_visible = self.next_visible(queue);
        self.db.with(move |c| {
            let now = now_ms();
            next_visible.fetch_min(now, Ordering::SeqCst);
            run(c, "UPDATE messages SET dead = 0, receives = 0, visible_at = ?2 WHERE queue = ?1 AND dead = 1", params![queue.as_str(), now])
        })
    }

    /// Acks several received messages in one transaction (SQS's DeleteMessageBatch).
    pub async fn ack_all(&self, queue: QueueName, receipts: Vec<String>) -> Result<(), StoreError> {
        let messages = receipts.iter().map(|r| parse_receipt(r)).collect::<Result<Vec<_>, _>>()?;
        self.db
            .call(move |c| {
                for (id, message_id) in messages {
                    run(c, "DELETE FROM messages WHERE id = ?1 AND message_id = ?2 AND queue = ?3", params![id, message_id, queue.as_str()])?;
                }
                Ok(())
            })
            .await
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
        let (id, next_visible) = (message_id.clone(), self.next_visible(queue));
        self.db
            .call(move |c| {
                let now = now_ms();
                next_visible.fetch_min(now, Ordering::SeqCst);
                run(
                    c,
                    "INSERT INTO messages (queue, message_id, body, attributes, visible_at) VALUES (?1, ?2, ?3, ?4, ?5)",
                    params![queue.as_str(), id, body, attrs, now],
                )
            })
            .await?;
        Ok(message_id)
    }

    async fn receive(&self, queue: QueueName, max: usize) -> Result<Vec<QueueMessage>, StoreError> {
        let (visibility, max_receives) = (self.visibility.as_millis() as i64, self.max_receives);
        let max = max.clamp(1, 10); // as SQS's ReceiveMessage
        let next_visible = self.next_visible(queue);
        if now_ms() < next_visible.load(Ordering::SeqCst) {
            return Ok(Vec::new());
        }
        let learned = next_visible.clone();
        let claimed = self
            .db
            .call(move |c| {
                let now = now_ms();
                // Past the redrive limit: to the dead-letter state, as SQS moves them to the DLQ.
                // (Were the next statement to fail, these would still be right to keep.)
                run(
                    c,
                    "UPDATE messages SET dead = 1 WHERE queue = ?1 AND dead = 0 AND visible_at <= ?2 AND receives >= ?3",
                    params![queue.as_str(), now, max_receives],
                )?;
                let mut stmt = c.prepare_cached(&receive_sql(max)).map_err(backend)?;
                let rows = stmt
                    .query_map(params![queue.as_str(), now, now + visibility], |r| {
                        Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?, r.get::<_, String>(2)?, r.get::<_, String>(3)?, r.get::<_, i64>(4)?))
                    })
                    .map_err(backend)?
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(backend)?;
                // Fewer than asked for: every visible message was claimed, so
                // none can be found before the earliest one left comes back.
                let at = match rows.len() < max {
                    true => c
                        .prepare_cached(NEXT_VISIBLE_SQL)
                        .and_then(|mut s| s.query_row(params![queue.as_str()], |r| r.get::<_, Option<i64>>(0)))
                        .map_err(backend)?
                        .unwrap_or(i64::MAX),
                    false => now,
                };
                learned.store(at, Ordering::SeqCst);
                Ok(rows)
            })
            .await;
        // Claims that did not commit are still visible.
        let mut rows = claimed.inspect_err(|_| next_visible.store(0, Ordering::SeqCst))?;
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
}

#[cfg(test)]
pub(crate) mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn insert(db: &Db, i: usize) {
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
        // 3,000 commits of at least one 4 KiB page each: 12 MB through the
        // WAL, with pauses such as requests leave, in which the checkpoint
        // thread runs (SQLite's own would only at 16 MiB).
        for i in 0..3_000 {
            insert(&db, i);
            if i % 50 == 49 {
                std::thread::sleep(Duration::from_millis(2));
            }
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
    fn jobs_run_on_the_callers_thread_unless_it_must_never_hold_the_connection() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(&dir.path().join("keel.sqlite")).unwrap();
        let runner = |db: &Db| db.with(|_| Ok(std::thread::current().name().map(str::to_string))).unwrap();
        let caller = std::thread::current().name().map(str::to_string);
        assert_eq!(runner(&db), caller, "a free connection runs the job at once");
        let background = db.clone();
        let ran_on = std::thread::spawn(move || {
            never_hold_the_connection_here();
            insert(&background, 1);
            runner(&background)
        })
        .join()
        .unwrap();
        assert_eq!(ran_on.as_deref(), Some("keel-sqlite"));
        assert_eq!(count_items(&db), 1);
    }

    #[test]
    fn background_jobs_wait_for_a_moment_without_requests_but_not_for_long() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(&dir.path().join("keel.sqlite")).unwrap();
        let requests = db.requests.clone();
        assert!(requests.wait_quiet(Duration::from_secs(10)), "no request in flight: quiet at once");
        let serving = requests.serving();
        let waiting = requests.clone();
        let waiter = std::thread::spawn(move || waiting.wait_quiet(Duration::from_secs(10)));
        std::thread::sleep(Duration::from_millis(50));
        assert!(!waiter.is_finished(), "waits while a request is in flight");
        drop(serving);
        assert!(waiter.join().unwrap(), "quiet once the request has ended");
        // Under continuous load, background jobs still run: after the deferral.
        let _busy = requests.serving();
        assert!(!requests.wait_quiet(Duration::from_millis(20)));
        let background = db.clone();
        std::thread::spawn(move || {
            never_hold_the_connection_here();
            insert(&background, 1);
        })
        .join()
        .unwrap();
        assert_eq!(count_items(&db), 1);
    }

    /// Transactions committed so far, before the reading job's own.
    pub(crate) fn commits(db: &Db) -> i32 {
        db.with(|c| Ok(c.prepare_cached("COMMIT").map_err(backend)?.get_status(rusqlite::StatementStatus::Run))).unwrap()
    }

    #[tokio::test]
    async fn jobs_submitted_in_one_poll_commit_together_and_fail_alone() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(&dir.path().join("keel.sqlite")).unwrap();
        let table = SqliteTable::new(db.clone());
        let add = |sk: &'static str, max: i64| table.increment("T", sk, 1, Some(max), None);
        let three = || async { tokio::join!(add("a", 10), add("b", 10), add("full", 0)) };

        let before = commits(&db);
        let apart = three().await;
        let commits_apart = commits(&db) - before - 1;
        let before = commits(&db);
        let together = db.commit_per_poll(three()).await;
        let commits_together = commits(&db) - before - 1;

        assert_eq!((commits_apart, commits_together), (3, 1));
        for (round, (a, b, full)) in [(1, apart), (2, together)] {
            assert_eq!((a.unwrap(), b.unwrap()), (round, round));
            assert!(matches!(full, Err(StoreError::ConditionFailed)), "{full:?}");
        }
        // A blocking call is never held: its poll would not end.
        assert_eq!(db.commit_per_poll(async { count_items(&db) }).await, 2);
    }

    #[tokio::test]
    async fn queries_and_receives_run_without_being_prepared_again() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(&dir.path().join("keel.sqlite")).unwrap();
        let (table, queue) = (SqliteTable::new(db.clone()), SqliteQueue::new(db.clone(), Duration::from_secs(30), 5));
        for i in 0..3 {
            insert(&db, i);
            queue.send(QueueName::Audit, format!("m{i}"), HashMap::new()).await.unwrap();
            for descending in [false, true] {
                let options = QueryOptions { limit: Some(i + 1), descending, ..Default::default() };
                assert_eq!(table.query("T", "item-", options).await.unwrap().len(), i + 1);
            }
            assert_eq!(queue.receive(QueueName::Audit, 10).await.unwrap().len(), 1);
        }
        let reprepared = |sql: String| {
            db.with(move |c| Ok(c.prepare_cached(&sql).map_err(backend)?.get_status(rusqlite::StatementStatus::RePrepare))).unwrap()
        };
        for sql in [query_sql(false).to_string(), query_sql(true).to_string(), receive_sql(10)] {
            assert_eq!(reprepared(sql.clone()), 0, "{sql}");
        }
    }

    /// Holds the connection on a thread of its own until the returned sender drops.
    fn hold_the_connection(db: &Db) -> std::sync::mpsc::Sender<()> {
        let (conn, (release, released), (locked, is_locked)) = (db.conn.clone(), std::sync::mpsc::channel(), std::sync::mpsc::channel());
        std::thread::spawn(move || {
            let _held = conn.lock().unwrap();
            locked.send(()).unwrap();
            let _ = released.recv();
        });
        is_locked.recv().unwrap();
        release
    }

    #[tokio::test]
    async fn an_idle_queue_is_polled_without_the_store_yet_nothing_is_missed() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(&dir.path().join("keel.sqlite")).unwrap();
        let (visibility, q) = (Duration::from_millis(500), QueueName::Ingest);
        let queue = SqliteQueue::new(db.clone(), visibility, 2);
        let bodies = |m: Vec<QueueMessage>| m.into_iter().map(|m| (m.body, m.receive_count)).collect::<Vec<_>>();
        // A receive that would reach the store waits here until the store is let go.
        let receive_without_the_store = |q: QueueName| {
            let (db, queue) = (&db, &queue);
            async move {
                let _held = hold_the_connection(db);
                tokio::time::timeout(Duration::from_millis(200), queue.receive(q, 10)).await.map(|r| r.unwrap().len())
            }
        };
        assert!(queue.receive(q, 10).await.unwrap().is_empty());
        assert_eq!(receive_without_the_store(q).await, Ok(0), "known to be empty");

        queue.send(q, "a".into(), HashMap::new()).await.unwrap();
        assert_eq!(bodies(queue.receive(q, 10).await.unwrap()), [("a".to_string(), 1)], "a send is seen at once");
        assert_eq!(receive_without_the_store(q).await, Ok(0), "in flight");
        tokio::time::sleep(visibility + Duration::from_millis(100)).await;
        assert_eq!(bodies(queue.receive(q, 10).await.unwrap()), [("a".to_string(), 2)], "back after the visibility timeout");

        tokio::time::sleep(visibility + Duration::from_millis(100)).await;
        assert!(queue.receive(q, 10).await.unwrap().is_empty(), "past max_receives");
        assert_eq!(queue.dead_letters(q).unwrap(), ["a"]);
        assert_eq!(receive_without_the_store(q).await, Ok(0), "only a dead letter left");
        assert_eq!(queue.redrive(q).unwrap(), 1);
        assert_eq!(bodies(queue.receive(q, 10).await.unwrap()), [("a".to_string(), 1)], "a redrive is seen at once");
        // The other queues were never told they are empty.
        assert!(receive_without_the_store(QueueName::Audit).await.is_err());
    }

    #[tokio::test]
    async fn a_late_ack_deletes_only_its_own_message() {
        let dir = tempfile::tempdir().unwrap();
        let queue = SqliteQueue::new(Db::open(&dir.path().join("keel.sqlite")).unwrap(), Duration::from_secs(30), 5);
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
}
