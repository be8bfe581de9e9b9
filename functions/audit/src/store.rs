//! What audit keeps in the table: each tenant's decision chain (entries and
//! the pointers from decisions to them) and its usage counters. Only these
//! touch the table.

use keel_core::chain::{CacheOutcome, ChainEntry, DecisionEvent};
use keel_core::ids::TenantId;
use keel_core::keys;
use keel_core::ports::{Add, Condition, QueryOptions, Table, Write};
use keel_core::models::Budgets;
use keel_core::slo::{self, SloSpec, Surface};
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

    /// Up to `limit` entries, newest first, before sequence number `before`.
    pub(crate) async fn older_than(&self, tenant: &TenantId, before: Option<u64>, limit: usize) -> Result<Vec<ChainEntry>, KeelError> {
        let options = QueryOptions { limit: Some(limit), descending: true, before: before.map(keys::audit_entry), ..Default::default() };
        let items = self.table.query(&tenant.pk(), keys::AUDIT_ENTRIES, options).await?;
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

    /// What a decision adds to its tenant's counters: a gateway decision to
    /// this month's; every decision to its day's (see `daily`).
    pub(crate) fn additions(tenant: &TenantId, event: &DecisionEvent, slos: &[SloSpec]) -> Vec<Add> {
        let month = current_month();
        let monthly = Self::monthly(event).into_iter().map(|(name, by)| Add { pk: tenant.pk(), sk: keys::usage(&month, &name), by });
        let day = event_day(event);
        let daily = Self::daily(event).into_iter().map(|(name, by)| Add { pk: tenant.pk(), sk: keys::daily_usage(&day, &name), by });
        let slo = Self::service_levels(event, slos).into_iter().map(|(sk, by)| Add { pk: tenant.pk(), sk, by });
        monthly.chain(daily).chain(slo).filter(|a| a.by != 0).collect()
    }

    /// A request's decision against its surface's objectives, in its hour.
    fn service_levels(event: &DecisionEvent, slos: &[SloSpec]) -> Vec<(String, i64)> {
        let (Some(surface), Some(latency)) = (Surface::of(event), event.latency_ms) else { return vec![] };
        let Some(spec) = slos.iter().find(|s| s.surface == surface) else { return vec![] };
        let hour = event.at.get(..13).filter(|h| h.len() == 13).map(str::to_string).unwrap_or_else(|| chrono::Utc::now().format(slo::HOUR_FORMAT).to_string());
        let counter = |name: &str| keys::slo_counter(surface.as_str(), &hour, name);
        vec![(counter("total"), 1), (counter("slow"), i64::from(latency > spec.p95_ms)), (counter("failed"), i64::from(slo::failed(event)))]
    }

    /// One failed request of `surface` in the current hour.
    pub(crate) async fn count_failure(&self, tenant: &TenantId, surface: Surface) -> Result<(), KeelError> {
        let hour = chrono::Utc::now().format(slo::HOUR_FORMAT).to_string();
        for name in ["total", "failed"] {
            self.table.increment(&tenant.pk(), &keys::slo_counter(surface.as_str(), &hour, name), 1, None, None).await?;
        }
        Ok(())
    }

    /// A surface's counters from `since_hour` on: `(total, slow, failed)` per hour.
    pub(crate) async fn service_levels_since(&self, tenant: &TenantId, surface: Surface, since_hour: &str) -> Result<Vec<(String, i64, i64, i64)>, KeelError> {
        let prefix = keys::slo_counters(surface.as_str());
        let options = QueryOptions { after: Some(format!("{prefix}{since_hour}")), ..Default::default() };
        let mut hours: std::collections::BTreeMap<String, (i64, i64, i64)> = std::collections::BTreeMap::new();
        for item in self.table.query(&tenant.pk(), &prefix, options).await? {
            let Some((hour, name)) = item.sk.strip_prefix(&prefix).and_then(|r| r.split_once('#')) else { continue };
            let entry = hours.entry(hour.to_string()).or_default();
            match name {
                "total" => entry.0 += item.counter,
                "slow" => entry.1 += item.counter,
                "failed" => entry.2 += item.counter,
                _ => {}
            }
        }
        Ok(hours.into_iter().map(|(h, (t, s, f))| (h, t, s, f)).collect())
    }

    fn monthly(event: &DecisionEvent) -> Vec<(String, i64)> {
        let (Some(usage), true) = (&event.usage, event.kind.is_gateway()) else {
            return vec![];
        };
        vec![
            (format!("{}_requests", event.kind.as_str()), 1),
            ("input_tokens".into(), usage.input_tokens as i64),
            ("output_tokens".into(), usage.output_tokens as i64),
            ("cost_micro_usd".into(), usage.cost_micro_usd),
            ("cache_hits".into(), i64::from(usage.cache == CacheOutcome::Hit)),
            ("cache_misses".into(), i64::from(usage.cache == CacheOutcome::Miss)),
        ]
    }

    /// A day's counters: the monthly ones, the router tier, cost and tokens by
    /// model, action statuses and executed actions' own cost; requests and
    /// actions of a workflow also under `wf:<workflow>:`.
    fn daily(event: &DecisionEvent) -> Vec<(String, i64)> {
        let mut out = Self::monthly(event);
        let text = |v: &serde_json::Value, k: &str| v.get(k).and_then(serde_json::Value::as_str).map(str::to_string);
        if let Some(usage) = event.usage.as_ref().filter(|_| event.kind.is_gateway()) {
            out.push((format!("tier:{}", text(&event.outcome, "tier").unwrap_or_else(|| "none".into())), 1));
            if let Some(model) = text(&event.outcome, "model").filter(|m| Budgets::is_workflow_name(m)) {
                out.push((format!("model_cost:{model}"), usage.cost_micro_usd));
                out.push((format!("model_tokens:{model}"), (usage.input_tokens + usage.output_tokens) as i64));
            }
        }
        if let Some(status) = event.kind.as_str().strip_prefix("action.") {
            out.push((format!("actions:{status}"), 1));
            if status == "executed" {
                let cost = event.input.get("cost_usd").and_then(serde_json::Value::as_f64).unwrap_or(0.0);
                out.push(("action_cost_micro_usd".into(), (cost * 1e6).round() as i64));
            }
        }
        // Names a tenant chose count per workflow only when they fit a key.
        let workflow = text(&event.input, "workflow").map(|w| if Budgets::is_workflow_name(&w) { w } else { "other".into() });
        if let Some(w) = workflow {
            let own: Vec<(String, i64)> = out
                .iter()
                .filter(|(n, _)| n == "cost_micro_usd" || n == "action_cost_micro_usd" || n.starts_with("actions:") || n.ends_with("_requests"))
                .map(|(n, by)| (format!("wf:{w}:{n}"), *by))
                .collect();
            out.extend(own);
        }
        out
    }

    /// Every daily counter of the days from `from` to `to` (inclusive, `YYYY-MM-DD`), by day.
    pub(crate) async fn days(&self, tenant: &TenantId, from: &str, to: &str) -> Result<Vec<(String, String, i64)>, KeelError> {
        let after = keys::daily_usage(from, "").trim_end_matches('#').to_string();
        let options = QueryOptions { after: Some(after), ..Default::default() };
        let items = self.table.query(&tenant.pk(), keys::DAILY_USAGE, options).await?;
        let mut out = Vec::new();
        for item in items {
            let Some((day, name)) = item.sk.strip_prefix(keys::DAILY_USAGE).and_then(|rest| rest.split_once('#')) else { continue };
            if day > to {
                break;
            }
            if day >= from {
                out.push((day.to_string(), name.to_string(), item.counter));
            }
        }
        Ok(out)
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

/// The day an event happened (`YYYY-MM-DD`), today when its time is unreadable.
fn event_day(event: &DecisionEvent) -> String {
    match chrono::DateTime::parse_from_rfc3339(&event.at) {
        Ok(t) => t.with_timezone(&chrono::Utc).format("%Y-%m-%d").to_string(),
        Err(_) => chrono::Utc::now().format("%Y-%m-%d").to_string(),
    }
}
