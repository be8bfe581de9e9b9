//! `Table` over one DynamoDB table: `pk`, `sk` strings, the record in `data`
//! (JSON string), a write counter `ver`, an atomic counter `n`, TTL in `ttl`.

use crate::sdk_message;
use crate::sessions::{tenant_of_partition, ScopedClients, TenantSessions};
use async_trait::async_trait;
use aws_sdk_dynamodb::types::{AttributeValue, ReturnValue, TransactWriteItem, Update};
use aws_sdk_dynamodb::Client;
use keel_core::ports::{Add, Condition, Item, QueryOptions, Table, Write};
use keel_core::time::now_secs;
use keel_core::StoreError;
use std::collections::HashMap;
use std::sync::Arc;

#[derive(Clone)]
pub struct DynamoTable {
    clients: Arc<ScopedClients<Client>>,
    table: String,
}

type Attrs = HashMap<String, AttributeValue>;

fn s(v: &str) -> AttributeValue {
    AttributeValue::S(v.to_string())
}

fn n(v: impl ToString) -> AttributeValue {
    AttributeValue::N(v.to_string())
}

/// The pieces of an UpdateItem that performs a `Write`.
struct UpdateParts {
    key: Attrs,
    expression: String,
    condition: Option<String>,
    names: HashMap<String, String>,
    values: Attrs,
}

fn update_parts(w: &Write) -> Result<UpdateParts, StoreError> {
    let mut names = HashMap::from([("#d".to_string(), "data".to_string()), ("#t".to_string(), "ttl".to_string())]);
    let mut values = Attrs::from([(":d".into(), s(&w.data_text()?)), (":one".into(), n(1))]);
    let mut expression = "SET #d = :d".to_string();
    match w.expires_at {
        Some(t) => {
            expression.push_str(", #t = :t");
            values.insert(":t".into(), n(t));
        }
        None => expression.push_str(" REMOVE #t"),
    }
    expression.push_str(" ADD ver :one");
    let condition = match w.condition {
        Condition::Always => None,
        Condition::NotExists => {
            values.insert(":now".into(), n(now_secs()));
            Some("attribute_not_exists(pk) OR (attribute_exists(#t) AND #t <= :now)".to_string())
        }
        Condition::Version(v) => {
            names.insert("#v".into(), "ver".into());
            values.insert(":v".into(), n(v));
            Some("#v = :v".to_string())
        }
    };
    Ok(UpdateParts {
        key: Attrs::from([("pk".into(), s(&w.pk)), ("sk".into(), s(&w.sk))]),
        expression,
        condition,
        names,
        values,
    })
}

/// Named bound values of a counter condition (`:hi`, `:lo`).
type CounterBounds = Vec<(&'static str, i64)>;

/// The condition under which adding `by` keeps a counter at or under `max`
/// and inside i64 (DynamoDB's numbers go further, but Keel reads counters as
/// i64, and a counter must never change type), with its bound values. A
/// missing counter counts as 0. `ConditionFailed` when no counter could take it.
fn counter_condition(by: i64, max: Option<i64>) -> Result<(String, CounterBounds), StoreError> {
    let mut parts = Vec::new();
    let mut bounds = Vec::new();
    let ceiling = max.unwrap_or(i64::MAX);
    match ceiling.checked_sub(by) {
        Some(hi) => {
            // A new counter starts at `by`: it may only if `by` fits.
            parts.push(if by <= ceiling { "(attribute_not_exists(n) OR n <= :hi)" } else { "n <= :hi" });
            bounds.push((":hi", hi));
        }
        // Only a negative `by` overflows here: every i64 counter stays under the ceiling.
        None if by < 0 => {}
        None => return Err(StoreError::ConditionFailed),
    }
    if by < 0 {
        parts.push("(attribute_not_exists(n) OR n >= :lo)");
        bounds.push((":lo", i64::MIN - by));
    }
    Ok((parts.join(" AND "), bounds))
}

fn num(attrs: &Attrs, name: &str) -> Option<i64> {
    attrs.get(name).and_then(|v| v.as_n().ok()).and_then(|v| v.parse().ok())
}

fn to_item(attrs: &Attrs) -> Result<Option<Item>, StoreError> {
    let expires_at = num(attrs, "ttl");
    if expires_at.is_some_and(|t| t <= now_secs()) {
        return Ok(None);
    }
    let text = |k: &str| attrs.get(k).and_then(|v| v.as_s().ok()).cloned().unwrap_or_default();
    let data = match attrs.get("data").and_then(|v| v.as_s().ok()) {
        Some(d) => serde_json::from_str(d).map_err(|e| StoreError::Backend(format!("corrupt item data: {e}")))?,
        None => serde_json::Value::Null,
    };
    Ok(Some(Item {
        pk: text("pk"),
        sk: text("sk"),
        data,
        version: num(attrs, "ver").unwrap_or(0) as u64,
        counter: num(attrs, "n").unwrap_or(0),
        expires_at,
    }))
}

impl DynamoTable {
    /// Every call with `client`'s credentials.
    pub fn new(client: Client, table: impl Into<String>) -> Self {
        Self { clients: Arc::new(ScopedClients::fixed(client)), table: table.into() }
    }

    /// Each tenant partition's calls through that tenant's session.
    pub fn with_sessions(sessions: Arc<TenantSessions>, table: impl Into<String>) -> Self {
        Self { clients: Arc::new(ScopedClients::new(sessions, Client::new)), table: table.into() }
    }

    async fn client(&self, pk: &str) -> Client {
        self.clients.client(tenant_of_partition(pk).as_ref()).await
    }

    /// A transaction runs in a tenant's session only when every item is that tenant's.
    async fn client_for_all<'a>(&self, mut pks: impl Iterator<Item = &'a str>) -> Client {
        let first = pks.next().and_then(tenant_of_partition);
        let same = first.is_some() && pks.all(|pk| tenant_of_partition(pk) == first);
        self.clients.client(if same { first.as_ref() } else { None }).await
    }
}

#[async_trait]
impl Table for DynamoTable {
    async fn get(&self, pk: &str, sk: &str) -> Result<Option<Item>, StoreError> {
        let out = self
            .client(pk)
            .await
            .get_item()
            .table_name(&self.table)
            .key("pk", s(pk))
            .key("sk", s(sk))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| StoreError::Backend(sdk_message(&e)))?;
        match out.item() {
            Some(attrs) => to_item(attrs),
            None => Ok(None),
        }
    }

    async fn put(&self, write: Write) -> Result<u64, StoreError> {
        let p = update_parts(&write)?;
        let out = self
            .client(&write.pk)
            .await
            .update_item()
            .table_name(&self.table)
            .set_key(Some(p.key))
            .update_expression(p.expression)
            .set_condition_expression(p.condition)
            .set_expression_attribute_names(Some(p.names))
            .set_expression_attribute_values(Some(p.values))
            .return_values(ReturnValue::UpdatedNew)
            .send()
            .await
            .map_err(|e| match e.as_service_error() {
                Some(se) if se.is_conditional_check_failed_exception() => StoreError::ConditionFailed,
                _ => StoreError::Backend(sdk_message(&e)),
            })?;
        Ok(out.attributes().and_then(|a| num(a, "ver")).unwrap_or(1) as u64)
    }

    async fn put_all_adding(&self, writes: Vec<Write>, adds: Vec<Add>) -> Result<(), StoreError> {
        let mut items = Vec::with_capacity(writes.len() + adds.len());
        for w in &writes {
            let p = update_parts(w)?;
            let update = Update::builder()
                .table_name(&self.table)
                .set_key(Some(p.key))
                .update_expression(p.expression)
                .set_condition_expression(p.condition)
                .set_expression_attribute_names(Some(p.names))
                .set_expression_attribute_values(Some(p.values))
                .build()
                .map_err(|e| StoreError::Backend(e.to_string()))?;
            items.push(TransactWriteItem::builder().update(update).build());
        }
        for a in &adds {
            let (condition, bounds) = counter_condition(a.by, None)?;
            let mut values = Attrs::from([(":by".to_string(), n(a.by))]);
            values.extend(bounds.into_iter().map(|(name, v)| (name.to_string(), n(v))));
            let update = Update::builder()
                .table_name(&self.table)
                .key("pk", s(&a.pk))
                .key("sk", s(&a.sk))
                .update_expression("ADD n :by")
                .condition_expression(condition)
                .set_expression_attribute_values(Some(values))
                .build()
                .map_err(|e| StoreError::Backend(e.to_string()))?;
            items.push(TransactWriteItem::builder().update(update).build());
        }
        let pks = writes.iter().map(|w| w.pk.as_str()).chain(adds.iter().map(|a| a.pk.as_str()));
        self.client_for_all(pks)
            .await
            .transact_write_items()
            .set_transact_items(Some(items))
            .send()
            .await
            .map_err(|e| match e.as_service_error() {
                Some(se) if se.is_transaction_canceled_exception() => StoreError::ConditionFailed,
                _ => StoreError::Backend(sdk_message(&e)),
            })?;
        Ok(())
    }

    async fn delete(&self, pk: &str, sk: &str) -> Result<(), StoreError> {
        self.client(pk)
            .await
            .delete_item()
            .table_name(&self.table)
            .key("pk", s(pk))
            .key("sk", s(sk))
            .send()
            .await
            .map_err(|e| StoreError::Backend(sdk_message(&e)))?;
        Ok(())
    }

    async fn purge_partition(&self, pk: &str) -> Result<usize, StoreError> {
        let client = self.client(pk).await;
        let mut deleted = 0;
        // Expired items too (TTL deletes lazily), so keys only, no expiry filter.
        loop {
            let page = client
                .query()
                .table_name(&self.table)
                .consistent_read(true)
                .key_condition_expression("pk = :pk")
                .expression_attribute_values(":pk", s(pk))
                .projection_expression("pk, sk")
                .send()
                .await
                .map_err(|e| StoreError::Backend(sdk_message(&e)))?;
            if page.items().is_empty() {
                return Ok(deleted);
            }
            for key in page.items() {
                client
                    .delete_item()
                    .table_name(&self.table)
                    .set_key(Some(key.clone()))
                    .send()
                    .await
                    .map_err(|e| StoreError::Backend(sdk_message(&e)))?;
                deleted += 1;
            }
        }
    }

    async fn query(&self, pk: &str, sk_prefix: &str, options: QueryOptions) -> Result<Vec<Item>, StoreError> {
        let mut out = Vec::new();
        let mut start: Option<Attrs> = None;
        let client = self.client(pk).await;
        loop {
            let mut q = client
                .query()
                .table_name(&self.table)
                .consistent_read(true)
                .scan_index_forward(!options.descending)
                .expression_attribute_values(":pk", s(pk))
                .set_exclusive_start_key(start.take());
            q = if let Some(before) = &options.before {
                // BETWEEN includes `before` itself; it is dropped below.
                q.key_condition_expression("pk = :pk AND sk BETWEEN :lo AND :hi")
                    .expression_attribute_values(":lo", s(options.after.as_deref().map_or(sk_prefix, |a| a)))
                    .expression_attribute_values(":hi", s(before))
            } else if let Some(after) = &options.after {
                // The smallest key above `after` up to the last key with the prefix.
                q.key_condition_expression("pk = :pk AND sk BETWEEN :lo AND :hi")
                    .expression_attribute_values(":lo", s(&format!("{after}\u{1}")))
                    .expression_attribute_values(":hi", s(&format!("{sk_prefix}\u{10FFFF}")))
            } else if sk_prefix.is_empty() {
                q.key_condition_expression("pk = :pk")
            } else {
                q.key_condition_expression("pk = :pk AND begins_with(sk, :p)")
                    .expression_attribute_values(":p", s(sk_prefix))
            };
            if let Some(limit) = options.limit {
                q = q.limit((limit - out.len()).clamp(1, 1000) as i32);
            }
            let page = q.send().await.map_err(|e| StoreError::Backend(sdk_message(&e)))?;
            for attrs in page.items() {
                let in_range = |i: &Item| {
                    i.sk.starts_with(sk_prefix)
                        && options.before.as_ref().is_none_or(|b| &i.sk < b)
                        && options.after.as_ref().is_none_or(|a| &i.sk > a)
                };
                if let Some(item) = to_item(attrs)?.filter(in_range) {
                    out.push(item);
                }
            }
            let done = options.limit.is_some_and(|l| out.len() >= l);
            match page.last_evaluated_key() {
                Some(k) if !done => start = Some(k.clone()),
                _ => break,
            }
        }
        if let Some(l) = options.limit {
            out.truncate(l);
        }
        Ok(out)
    }

    async fn increment(
        &self,
        pk: &str,
        sk: &str,
        by: i64,
        max: Option<i64>,
        expires_at: Option<i64>,
    ) -> Result<i64, StoreError> {
        let mut req = self
            .client(pk)
            .await
            .update_item()
            .table_name(&self.table)
            .key("pk", s(pk))
            .key("sk", s(sk))
            .expression_attribute_values(":by", n(by))
            .return_values(ReturnValue::UpdatedNew);
        req = match expires_at {
            Some(t) => req
                .update_expression("ADD n :by SET #t = :t")
                .expression_attribute_names("#t", "ttl")
                .expression_attribute_values(":t", n(t)),
            None => req.update_expression("ADD n :by"),
        };
        let (condition, bounds) = counter_condition(by, max)?;
        req = req.condition_expression(condition);
        for (name, value) in bounds {
            req = req.expression_attribute_values(name, n(value));
        }
        let out = req.send().await.map_err(|e| match e.as_service_error() {
            Some(se) if se.is_conditional_check_failed_exception() => StoreError::ConditionFailed,
            _ => StoreError::Backend(sdk_message(&e)),
        })?;
        out.attributes()
            .and_then(|a| num(a, "n"))
            .ok_or_else(|| StoreError::Backend("counter missing from UpdateItem result".into()))
    }
}
