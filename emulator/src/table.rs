//! The table (`Table`) over the store's `items`: DynamoDB's semantics on
//! one SQLite table (conditional writes, atomic counters, TTL, key-ordered
//! queries of one partition).

use crate::store::{backend, run, Db};
use async_trait::async_trait;
use keel_core::ports::{Add, Condition, Item, QueryOptions, Table, Write};
use keel_core::time::now_secs;
use keel_core::StoreError;
use rusqlite::{params, Connection, OptionalExtension};

#[derive(Clone)]
pub struct SqliteTable {
    db: Db,
}

impl SqliteTable {
    pub fn new(db: Db) -> Self {
        Self { db }
    }
}

/// Runs a write that returns one column, or `None` when it wrote no row
/// (its condition failed).
fn write(c: &Connection, sql: &str, params: impl rusqlite::Params) -> Result<Option<i64>, StoreError> {
    c.prepare_cached(sql).and_then(|mut s| s.query_row(params, |r| r.get(0)).optional()).map_err(backend)
}

/// Adds `by` to a counter (a missing one counts as 0) unless that passes
/// `max`; returns the new value. One statement: the check and the write
/// cannot be split by another writer, and a statement that fails changes
/// nothing, so callers need no savepoint of their own.
/// A sum that would leave i64 fails too (SQLite would make it a REAL, and a
/// counter never changes type).
fn add(c: &Connection, a: &Add, max: Option<i64>, expires_at: Option<i64>) -> Result<i64, StoreError> {
    let sql = match max.is_some_and(|max| a.by > max) {
        // A new counter would start past the limit: only an existing (negative) one may take it.
        true => {
            "UPDATE items SET n = coalesce(n, 0) + ?3, ttl = coalesce(?4, ttl)
             WHERE pk = ?1 AND sk = ?2 AND coalesce(n, 0) + ?3 <= ?5 AND typeof(coalesce(n, 0) + ?3) = 'integer'
             RETURNING n"
        }
        false => {
            "INSERT INTO items (pk, sk, data, ver, n, ttl) VALUES (?1, ?2, 'null', 0, ?3, ?4)
             ON CONFLICT (pk, sk) DO UPDATE SET n = coalesce(items.n, 0) + excluded.n, ttl = coalesce(excluded.ttl, items.ttl)
             WHERE (?5 IS NULL OR coalesce(items.n, 0) + excluded.n <= ?5)
               AND typeof(coalesce(items.n, 0) + excluded.n) = 'integer'
             RETURNING n"
        }
    };
    write(c, sql, params![a.pk, a.sk, a.by, expires_at, max])?.ok_or(StoreError::ConditionFailed)
}

/// Checks a write's condition and performs it in one statement; returns
/// the new version (one past the old row's, expired or not). `data` is
/// `w.data` serialized, done before taking the connection.
fn apply(c: &Connection, w: &Write, data: &str) -> Result<u64, StoreError> {
    let version = match w.condition {
        Condition::Always => write(
            c,
            "INSERT INTO items (pk, sk, data, ver, ttl) VALUES (?1, ?2, ?3, 1, ?4)
             ON CONFLICT (pk, sk) DO UPDATE SET data = excluded.data, ver = items.ver + 1, ttl = excluded.ttl
             RETURNING ver",
            params![w.pk, w.sk, data, w.expires_at],
        ),
        // An expired row counts as absent.
        Condition::NotExists => write(
            c,
            "INSERT INTO items (pk, sk, data, ver, ttl) VALUES (?1, ?2, ?3, 1, ?4)
             ON CONFLICT (pk, sk) DO UPDATE SET data = excluded.data, ver = items.ver + 1, ttl = excluded.ttl
             WHERE items.ttl IS NOT NULL AND items.ttl <= ?5
             RETURNING ver",
            params![w.pk, w.sk, data, w.expires_at, now_secs()],
        ),
        Condition::Version(expected) => write(
            c,
            "UPDATE items SET data = ?3, ver = ver + 1, ttl = ?4
             WHERE pk = ?1 AND sk = ?2 AND ver = ?6 AND (ttl IS NULL OR ttl > ?5)
             RETURNING ver",
            params![w.pk, w.sk, data, w.expires_at, now_secs(), expected as i64],
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
                select_items!("WHERE pk = ?1 AND sk >= ?2 AND sk < ?5 AND (ttl IS NULL OR ttl > ?3) AND (?4 IS NULL OR sk > ?4) AND (?6 IS NULL OR sk < ?6) ORDER BY sk "),
                $order
            )
        };
    }
    match descending {
        true => ordered!("DESC"),
        false => ordered!("ASC"),
    }
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
        self.db.call(move |c| apply(c, &write, &data)).await
    }

    async fn put_all_adding(&self, writes: Vec<Write>, adds: Vec<Add>) -> Result<(), StoreError> {
        let data: Vec<String> = writes.iter().map(Write::data_text).collect::<Result<_, _>>()?;
        // One job, one transaction: a failing write or add undoes them all.
        self.db
            .call(move |c| {
                for (w, data) in writes.iter().zip(&data) {
                    apply(c, w, data)?;
                }
                adds.iter().try_for_each(|a| add(c, a, None, None).map(drop))
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

    async fn purge_partition(&self, pk: &str) -> Result<usize, StoreError> {
        let pk = pk.to_owned();
        self.db.call(move |c| c.execute("DELETE FROM items WHERE pk = ?1", params![pk]).map_err(backend)).await
    }

    async fn query(&self, pk: &str, sk_prefix: &str, options: QueryOptions) -> Result<Vec<Item>, StoreError> {
        let (pk, sk_prefix) = (pk.to_owned(), sk_prefix.to_owned());
        self.db.call(move |c| {
            let mut stmt = c.prepare_cached(query_sql(options.descending)).map_err(backend)?;
            let rows = stmt
                .query_map(params![pk, sk_prefix, now_secs(), options.after, prefix_upper_bound(&sk_prefix), options.before], row_to_item)
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
        self.db.call(move |c| add(c, &counter, max, expires_at)).await
    }
}


#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[tokio::test]
    async fn queries_run_without_being_prepared_again() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(&dir.path().join("keel.sqlite")).unwrap();
        let table = SqliteTable::new(db.clone());
        for i in 0..3 {
            let write = Write { pk: "T".into(), sk: format!("item-{i}"), data: serde_json::json!({}), expires_at: None, condition: Condition::Always };
            table.put(write).await.unwrap();
            for descending in [false, true] {
                let options = QueryOptions { limit: Some(i + 1), descending, ..Default::default() };
                assert_eq!(table.query("T", "item-", options).await.unwrap().len(), i + 1);
            }
        }
        for descending in [false, true] {
            let sql = query_sql(descending);
            let reprepared = db.with(|c| Ok(c.prepare_cached(sql).map_err(backend)?.get_status(rusqlite::StatementStatus::RePrepare)));
            assert_eq!(reprepared.unwrap(), 0, "{sql}");
        }
    }
}
