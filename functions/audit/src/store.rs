//! What audit keeps in the table: each tenant's decision chain (entries and
//! the pointers from decisions to them) and its usage counters. Only these
//! touch the table.

use keel_core::chain::{CacheOutcome, ChainEntry, DecisionEvent};
use keel_core::ids::TenantId;
use keel_core::keys;
use keel_core::ports::{Add, Condition, QueryOptions, Table, Write};
use keel_core::time::current_month;
use keel_core::{KeelError, StoreError};
use serde_json::{json, Value};
use std::sync::Arc;

/// A tenant's hash chain.
pub(crate) struct DecisionChain {
    table: Arc<dyn Table>,
}

/// A decision event's pointer to its chain entry.
pub(crate) struct Pointer {
    pub seq: u64,
    pub event_id: String,
}

impl DecisionChain {
    pub(crate) fn new(table: Arc<dyn Table>) -> Self {
        Self { table }
    }

    /// The last entry, if any.
    pub(crate) async fn head(&self, tenant: &TenantId) -> Result<Option<ChainEntry>, KeelError> {
        let newest = QueryOptions { limit: Some(1), descending: true, ..Default::default() };
        let last = self.table.query(&tenant.pk(), keys::AUDIT_ENTRIES, newest).await?;
        last.into_iter().next().map(|i| serde_json::from_value(i.data).map_err(KeelError::from)).transpose()
    }

    /// Every entry, in sequence order.
    pub(crate) async fn entries(&self, tenant: &TenantId) -> Result<Vec<ChainEntry>, KeelError> {
        let items = self.table.query(&tenant.pk(), keys::AUDIT_ENTRIES, QueryOptions::default()).await?;
        items.into_iter().map(|i| serde_json::from_value(i.data).map_err(KeelError::from)).collect()
    }

    pub(crate) async fn entry(&self, tenant: &TenantId, seq: u64) -> Result<Option<ChainEntry>, KeelError> {
        Ok(keel_core::ports::get_record(self.table.as_ref(), &tenant.pk(), &keys::audit_entry(seq)).await?.map(|(record, _)| record))
    }

    /// Whether an event is already in the chain.
    pub(crate) async fn is_recorded(&self, tenant: &TenantId, event: &DecisionEvent) -> Result<bool, KeelError> {
        Ok(self.table.get(&tenant.pk(), &keys::decision_pointer(&event.decision_id, &event.event_id)).await?.is_some())
    }

    /// The pointers of one decision (`Some`) or of every decision (`None`).
    pub(crate) async fn pointers(&self, tenant: &TenantId, decision: Option<&str>) -> Result<Vec<Pointer>, KeelError> {
        let prefix = decision.map_or(keys::DECISION_POINTERS.to_string(), keys::decision_pointers);
        let items = self.table.query(&tenant.pk(), &prefix, QueryOptions::default()).await?;
        Ok(items
            .into_iter()
            .map(|p| Pointer {
                seq: p.data["seq"].as_u64().unwrap_or(0),
                event_id: p.sk.rsplit('#').next().unwrap_or("").to_string(),
            })
            .collect())
    }

    /// The decisions a request made events of.
    pub(crate) async fn decisions_of_request(&self, tenant: &TenantId, request_id: &str) -> Result<Vec<String>, KeelError> {
        let items = self.table.query(&tenant.pk(), &keys::request_pointers(request_id), QueryOptions::default()).await?;
        Ok(items.into_iter().filter_map(|i| i.data["decision_id"].as_str().map(str::to_string)).collect())
    }

    /// Writes `entries` and their pointers, and adds `usage`, all or nothing;
    /// `false` when an entry's sequence number or an event was taken meanwhile.
    pub(crate) async fn append(&self, tenant: &TenantId, entries: &[ChainEntry], usage: Vec<Add>) -> Result<bool, KeelError> {
        // An entry and its pointer expire together, when the tenant's retention says.
        let new = |sk: String, data: Value, expires_at| Write { pk: tenant.pk(), sk, data, expires_at, condition: Condition::NotExists };
        let mut writes = Vec::with_capacity(entries.len() * 3);
        let mut requests = Vec::new();
        for entry in entries {
            let pointer = keys::decision_pointer(&entry.event.decision_id, &entry.event.event_id);
            writes.push(new(keys::audit_entry(entry.seq), serde_json::to_value(entry)?, entry.retain_until));
            writes.push(new(pointer, json!({"seq": entry.seq}), entry.retain_until));
            if let Some(request_id) = &entry.event.request_id {
                let sk = keys::request_pointer(request_id, &entry.event.decision_id);
                // One write per item in a transaction; a later event of the same pair rewrites it.
                if !requests.contains(&sk) {
                    requests.push(sk.clone());
                    let data = json!({"decision_id": entry.event.decision_id});
                    writes.push(Write { pk: tenant.pk(), sk, data, expires_at: entry.retain_until, condition: Condition::Always });
                }
            }
        }
        match self.table.put_all_adding(writes, usage).await {
            Ok(()) => Ok(true),
            Err(StoreError::ConditionFailed) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }
}

/// A tenant's monthly usage and spend counters.
pub(crate) struct UsageCounters {
    table: Arc<dyn Table>,
}

impl UsageCounters {
    pub(crate) fn new(table: Arc<dyn Table>) -> Self {
        Self { table }
    }

    /// What a gateway decision adds to its tenant's counters this month
    /// (nothing for other events).
    pub(crate) fn additions(tenant: &TenantId, event: &DecisionEvent) -> Vec<Add> {
        let (Some(usage), true) = (&event.usage, event.kind.is_gateway()) else {
            return vec![];
        };
        let month = current_month();
        let counters = [
            (format!("{}_requests", event.kind.as_str()), 1),
            ("input_tokens".into(), usage.input_tokens as i64),
            ("output_tokens".into(), usage.output_tokens as i64),
            ("cost_micro_usd".into(), usage.cost_micro_usd),
            ("cache_hits".into(), i64::from(usage.cache == CacheOutcome::Hit)),
            ("cache_misses".into(), i64::from(usage.cache == CacheOutcome::Miss)),
        ];
        counters
            .into_iter()
            .filter(|(_, by)| *by != 0)
            .map(|(name, by)| Add { pk: tenant.pk(), sk: keys::usage(&month, &name), by })
            .collect()
    }

    /// A month's counters by name.
    pub(crate) async fn month(&self, tenant: &TenantId, month: &str) -> Result<serde_json::Map<String, Value>, KeelError> {
        let items = self.table.query(&tenant.pk(), &keys::usage_prefix(month), QueryOptions::default()).await?;
        Ok(items.into_iter().filter_map(|item| Some((item.sk.rsplit('#').next()?.to_string(), Value::from(item.counter)))).collect())
    }

    /// A month's spend (USD, reservations included): the tenant's, or a workflow's.
    pub(crate) async fn spent(&self, tenant: &TenantId, month: &str, workflow: Option<&str>) -> Result<f64, KeelError> {
        let item = self.table.get(&tenant.pk(), &keys::spend(month, workflow)).await?;
        Ok(item.map(|i| i.counter).unwrap_or(0) as f64 / 1e6)
    }
}
