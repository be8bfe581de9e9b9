//! audit: appends decision events to each tenant's hash chain (a conditional
//! write per entry, so the chain can neither fork nor gap, and a replayed
//! event is appended once), serves decisions, verifies and exports the chain,
//! and reports usage.

pub mod lambda;
pub mod routes;
mod alerts;
mod listing;
mod report;
mod store;

use keel_core::auth::Caller;
use keel_core::chain::{next_entry, verify_chain, with_prompts_hashed, ChainEntry, DecisionEvent};
use keel_core::http::ApiResponse;
use keel_core::ids::TenantId;
use keel_core::limits::{parse_json, MAX_QUEUE_MESSAGE_BYTES};
use keel_core::ports::{dropped, Add, BlobStore, QueueMessage, QueueName, Table};
use keel_core::keys;
use keel_core::tenants::TenantStore;
use keel_core::time::{current_month, now_rfc3339, now_secs};
use keel_core::KeelError;
use serde_json::{json, Value};
use std::sync::Arc;
use store::{DecisionChain, UsageCounters};

/// Chain entries per archived block.
const ARCHIVE_BLOCK: usize = 1_000;
/// Attempts to win the next sequence number against concurrent appenders.
const APPEND_ATTEMPTS: usize = 20;
/// Events of one tenant appended in one write at most: a whole SQS batch,
/// whose two items per event and usage counters stay well inside a
/// DynamoDB transaction's 100 items.
const GROUP_EVENTS: usize = 10;

pub struct Audit {
    /// The tenant records (for their budgets).
    tenants: Arc<TenantStore>,
    chain: DecisionChain,
    usage: UsageCounters,
    blobs: Arc<dyn BlobStore>,
    table: Arc<dyn Table>,
    /// The guarded client alert webhooks are called through; none, none are called.
    egress: Option<keel_egress::Egress>,
    /// The operators' topic budget alerts are also published to.
    notifier: Option<Arc<dyn keel_core::ports::Notifier>>,
    slos: Vec<keel_core::slo::SloSpec>,
}

fn message_tenant(m: &QueueMessage) -> Result<TenantId, KeelError> {
    TenantId::parse(m.attributes.get("tenant").map(String::as_str).unwrap_or(""))
}

/// An audit-queue message: the tenant it belongs to and its decision event.
fn parse_message(m: &QueueMessage) -> Result<(TenantId, DecisionEvent), KeelError> {
    let tenant = message_tenant(m)?;
    let event = parse_json(m.body.as_bytes(), MAX_QUEUE_MESSAGE_BYTES, "decision event")?;
    Ok((tenant, event))
}

impl Audit {
    pub fn new(table: Arc<dyn Table>, blobs: Arc<dyn BlobStore>, tenants: Arc<TenantStore>) -> Self {
        Self { chain: DecisionChain::new(table.clone()), usage: UsageCounters::new(table.clone()), tenants, blobs, table, egress: None, notifier: None, slos: keel_core::slo::default_slos() }
    }

    /// Delivers budget alerts to tenants' webhooks through the egress guard
    /// `config` opens, and measures its objectives (`KEEL_SLOS`).
    pub fn with_config(mut self, config: &keel_core::config::Config) -> Result<Self, KeelError> {
        let timeout = std::time::Duration::from_millis(config.connector_timeout_ms);
        self.egress = Some(keel_egress::Egress::new(timeout, config.egress.clone())?);
        self.slos = config.slos.clone();
        Ok(self)
    }

    /// Publishes budget alerts to the operators' topic as well.
    pub fn with_notifier(mut self, notifier: Option<Arc<dyn keel_core::ports::Notifier>>) -> Self {
        self.notifier = notifier;
        self
    }

    /// Consumes audit-queue messages; returns the ids of those to retry.
    /// A tenant's events in the batch are appended together in one
    /// conditional write; if that fails (another appender moved the head, an
    /// event was already recorded, or the store failed), they are appended
    /// one by one, each with its own retries.
    pub async fn consume(&self, messages: &[QueueMessage]) -> Vec<String> {
        let mut failed = Vec::new();
        let mut groups: Vec<(TenantId, Vec<(&str, DecisionEvent)>)> = Vec::new();
        for m in messages {
            if let Ok(tenant) = message_tenant(m) {
                if self.is_gone(&tenant, m).await {
                    dropped(QueueName::Audit, m, tenant.as_str());
                    continue;
                }
            }
            if m.attributes.get("keel_kind").map(String::as_str) == Some(keel_core::slo::FAILURE_MESSAGE) {
                if let Err(e) = self.count_failure(m).await {
                    tracing::warn!(message_id = %m.message_id, error = %e, "failure sample not counted");
                    failed.push(m.message_id.clone());
                }
                continue;
            }
            match parse_message(m) {
                Ok((tenant, event)) => match groups.iter_mut().find(|(t, g)| *t == tenant && g.len() < GROUP_EVENTS) {
                    Some((_, group)) => group.push((&m.message_id, event)),
                    None => groups.push((tenant, vec![(&m.message_id, event)])),
                },
                Err(e) => {
                    tracing::warn!(message_id = %m.message_id, error = %e, "audit message failed");
                    failed.push(m.message_id.clone());
                }
            }
        }
        for (tenant, group) in groups {
            let events: Vec<&DecisionEvent> = group.iter().map(|(_, e)| e).collect();
            if let Ok(Some(_)) = self.append_after_head(&tenant, &events).await {
                self.deliver_alerts(&tenant, &events).await;
                continue;
            }
            for (message_id, event) in group {
                match self.append(&tenant, event.clone()).await {
                    Ok(Some(_)) => self.deliver_alerts(&tenant, &[&event]).await,
                    Ok(None) => {}
                    Err(e) => {
                        tracing::warn!(message_id = %message_id, error = %e, "audit message failed");
                        failed.push(message_id.to_string());
                    }
                }
            }
        }
        failed
    }

    /// A request that failed before it made a decision, against its surface's
    /// objective (a redelivered sample counts again: failures are rare, and
    /// the count errs towards alarming).
    async fn count_failure(&self, m: &QueueMessage) -> Result<(), KeelError> {
        let tenant = message_tenant(m)?;
        let body: Value = parse_json(m.body.as_bytes(), MAX_QUEUE_MESSAGE_BYTES, "failure sample")?;
        let surface: keel_core::slo::Surface = serde_json::from_value(body["surface"].clone())
            .map_err(|e| KeelError::BadRequest(format!("failure sample without a surface: {e}")))?;
        self.usage.count_failure(&tenant, surface).await
    }

    /// A deleted tenant's events still in flight are dropped, and so are an
    /// earlier incarnation's under a re-created id (a store error is not
    /// "gone": the message is retried).
    async fn is_gone(&self, tenant: &TenantId, m: &QueueMessage) -> bool {
        matches!(self.tenants.outlived(tenant, &m.attributes).await, Ok(true))
    }

    /// Appends one event, and adds a gateway decision's usage to the month's
    /// counters in the same atomic write: usage counts exactly when the
    /// event lands, so a replayed event (not appended again) is not counted
    /// twice, and a failed append counts nothing until its retry.
    pub async fn append(&self, tenant: &TenantId, event: DecisionEvent) -> Result<Option<u64>, KeelError> {
        for _ in 0..APPEND_ATTEMPTS {
            if self.chain.is_recorded(tenant, &event).await? {
                return Ok(None);
            }
            match self.append_after_head(tenant, &[&event]).await? {
                Some(seq) => return Ok(Some(seq)),
                // Another writer took this sequence number (or recorded this event): look again.
                None => continue,
            }
        }
        Err(KeelError::Unavailable("audit chain is contended; retry".into()))
    }

    /// Chains `events` after the current head in one all-or-nothing write
    /// (entries, the pointers that make each event's id unique, and the
    /// usage counters). Returns the last sequence number, or `None` when a
    /// condition failed: the head moved or an event was already recorded.
    async fn append_after_head(&self, tenant: &TenantId, events: &[&DecisionEvent]) -> Result<Option<u64>, KeelError> {
        let mut prev = self.chain.head(tenant).await?;
        let retention = self.tenants.cached(tenant).await?.map(|t| t.retention).unwrap_or_default();
        let retain_until = retention.expiry(now_secs());
        let mut entries = Vec::with_capacity(events.len());
        let mut adds: Vec<Add> = Vec::new();
        for &event in events {
            let logged = if retention.store_prompts { event.clone() } else { with_prompts_hashed(event.clone()) };
            let entry = next_entry(prev.as_ref(), now_rfc3339(), logged, retain_until);
            // One addition per counter: a transaction may touch an item once.
            for add in UsageCounters::additions(tenant, event, &self.slos) {
                match adds.iter_mut().find(|a| a.sk == add.sk) {
                    Some(a) => a.by += add.by,
                    None => adds.push(add),
                }
            }
            prev = Some(entry.clone());
            entries.push(entry);
        }
        let appended = self.chain.append(tenant, &entries, adds).await?;
        Ok(if appended { prev.map(|e| e.seq) } else { None })
    }

    /// The decisions one request made, each with its events, as `decision` shows them.
    pub(crate) async fn decisions_of_request(&self, caller: &Caller, request_id: &str) -> Result<ApiResponse, KeelError> {
        if !keel_core::trace::well_formed_request_id(request_id) {
            return Err(KeelError::BadRequest("request_id must be 1 to 128 letters, digits, '-', '_', '.' or ':'".into()));
        }
        let tenant = caller.tenant()?;
        let mut decisions = Vec::new();
        for id in self.chain.decisions_of_request(tenant, request_id).await? {
            if let Some(events) = self.readable_events(caller, &id).await? {
                decisions.push(json!({"decision_id": id, "events": events}));
            }
        }
        Ok(ApiResponse::ok(&json!({"request_id": request_id, "decisions": decisions})))
    }

    /// One decision's events. Admins and auditors read any; other principals
    /// only their own (they made its first event), and 404 for the rest.
    pub(crate) async fn decision(&self, caller: &Caller, id: &str) -> Result<ApiResponse, KeelError> {
        let events = self.readable_events(caller, id).await?.ok_or_else(|| KeelError::NotFound(format!("decision {id} not found")))?;
        Ok(ApiResponse::ok(&listing::Decision { decision_id: id.to_string(), events }))
    }

    /// A decision's entries, if the caller may read them.
    async fn readable_events(&self, caller: &Caller, id: &str) -> Result<Option<Vec<ChainEntry>>, KeelError> {
        let tenant = caller.tenant()?;
        let mut seqs: Vec<u64> = self.chain.pointers(tenant, Some(id)).await?.iter().map(|p| p.seq).collect();
        seqs.sort_unstable();
        let mut events = Vec::new();
        for seq in seqs {
            events.extend(self.chain.entry(tenant, seq).await?);
        }
        let own = events.first().is_some_and(|e| e.event.principal == caller.principal);
        Ok((!events.is_empty() && (own || caller.reads_all_decisions())).then_some(events))
    }

    /// Verifies the chain and that every recorded decision still has its entry
    /// (which catches a deleted last entry too).
    pub(crate) async fn verify(&self, tenant: &TenantId) -> Result<ApiResponse, KeelError> {
        let entries = self.chain.entries(tenant).await?;
        let mut problems = verify_chain(&entries);
        for p in self.chain.pointers(tenant, None).await? {
            let found = entries.iter().any(|e| e.seq == p.seq && e.event.event_id == p.event_id);
            if !found {
                let problem = format!("entry of event {} is missing or replaced", p.event_id);
                problems.push(keel_core::chain::ChainProblem { seq: p.seq, problem });
            }
        }
        // Entries before the first kept one were pruned by the tenant's retention.
        let pruned = entries.first().map_or(0, |e| e.seq - 1);
        Ok(ApiResponse::ok(&json!({
            "ok": problems.is_empty(),
            "entries": entries.len(),
            "pruned": pruned,
            "head": entries.last().map(|e| &e.hash),
            "problems": problems,
        })))
    }

    /// JSON Lines of the entries recorded in `[from, to)` (RFC 3339), also archived to the blob store.
    pub(crate) async fn export(&self, tenant: &TenantId, from: Option<&str>, to: Option<&str>) -> Result<ApiResponse, KeelError> {
        for bound in [from, to].into_iter().flatten() {
            chrono::DateTime::parse_from_rfc3339(bound)
                .map_err(|_| KeelError::BadRequest(format!("{bound:?} is not an RFC 3339 timestamp")))?;
        }
        let entries = self.chain.entries(tenant).await?;
        self.archive(tenant, &entries).await?;
        let mut lines = String::new();
        for e in entries {
            if from.is_some_and(|f| e.recorded_at.as_str() < f) || to.is_some_and(|t| e.recorded_at.as_str() >= t) {
                continue;
            }
            lines.push_str(&serde_json::to_string(&e)?);
            lines.push('\n');
        }
        Ok(ApiResponse::text(200, "application/x-ndjson", lines))
    }

    /// Archives each full block of `ARCHIVE_BLOCK` entries to the blob store
    /// once (`tenants/<t>/audit/archive/<first seq>.jsonl`, or
    /// `<first seq>-until-<epoch>.jsonl` when its entries expire): the archive
    /// grows with the chain, however often it is exported, and a block
    /// whose entries have all expired is deleted with them.
    async fn archive(&self, tenant: &TenantId, entries: &[ChainEntry]) -> Result<(), KeelError> {
        let prefix = keys::audit_archive(tenant);
        let archived: std::collections::HashSet<String> = self.blobs.list(&prefix).await?.into_iter().collect();
        for key in archived.iter().filter(|k| archive_expiry(k).is_some_and(|t| t <= now_secs())) {
            self.blobs.delete(key).await?;
        }
        for block in entries.chunks_exact(ARCHIVE_BLOCK) {
            let key = match block.iter().filter_map(|e| e.retain_until).max() {
                Some(until) => format!("{prefix}{:012}-until-{until}.jsonl", block[0].seq),
                None => format!("{prefix}{:012}.jsonl", block[0].seq),
            };
            if archived.contains(&key) {
                continue;
            }
            let mut lines = String::new();
            for e in block {
                lines.push_str(&serde_json::to_string(e)?);
                lines.push('\n');
            }
            self.blobs.put(&key, lines.into_bytes()).await?;
        }
        Ok(())
    }

    pub(crate) async fn usage(&self, tenant: &TenantId, from: Option<&str>, to: Option<&str>) -> Result<ApiResponse, KeelError> {
        let period = report::Period::parse(from, to)?;
        let rows = self.usage.days(tenant, &period.from, &period.to).await?;
        let month = current_month();
        let usage = self.usage.month(tenant, &month).await?;
        let count = |k: &str| usage.get(k).and_then(Value::as_i64).unwrap_or(0);
        let cost = count("cost_micro_usd") as f64 / 1e6;
        let lookups = count("cache_hits") + count("cache_misses");
        let hit_rate = (lookups > 0).then(|| count("cache_hits") as f64 / lookups as f64);
        Ok(ApiResponse::ok(&json!({"period": month, "counters": usage, "cost_usd": cost, "cache_hit_rate": hit_rate,
            "budget": self.budget(tenant, &month).await?, "report": report::report(&period, &rows)})))
    }

    /// Budgets and what is spent against them this month (reserved spend included).
    async fn budget(&self, tenant: &TenantId, month: &str) -> Result<Value, KeelError> {
        let budgets = self.tenants.cached(tenant).await?.map(|t| t.budgets).unwrap_or_default();
        let spent = |wf: Option<String>| async move { self.usage.spent(tenant, month, wf.as_deref()).await };
        let total = spent(None).await?;
        let mut workflows = serde_json::Map::new();
        for (w, limit) in &budgets.workflows {
            let s = spent(Some(w.clone())).await?;
            workflows.insert(w.clone(), json!({"limit_usd": limit, "spent_usd": s, "left_usd": (limit - s).max(0.0)}));
        }
        Ok(json!({"monthly_usd": budgets.monthly_usd, "spent_usd": total,
            "left_usd": budgets.monthly_usd.map(|l| (l - total).max(0.0)), "workflows": workflows}))
    }
}

/// When an archived block's entries have all expired (from its key), if they do.
fn archive_expiry(key: &str) -> Option<i64> {
    key.strip_suffix(".jsonl")?.rsplit_once("-until-")?.1.parse().ok()
}

/// The windows `GET /v1/slo` reports, by whole hours back from the current one.
const SLO_WINDOWS: [(&str, i64); 3] = [("1h", 1), ("24h", 24), ("30d", 720)];

impl Audit {
    /// Each surface's objectives and how the tenant's requests met them, per window.
    pub(crate) async fn slo(&self, tenant: &TenantId) -> Result<ApiResponse, KeelError> {
        let now = chrono::Utc::now();
        let hour = |back: i64| (now - chrono::Duration::hours(back)).format(keel_core::slo::HOUR_FORMAT).to_string();
        let mut surfaces = Vec::new();
        for spec in &self.slos {
            let rows = self.usage.service_levels_since(tenant, spec.surface, &hour(SLO_WINDOWS[2].1)).await?;
            let mut windows = serde_json::Map::new();
            for (name, back) in SLO_WINDOWS {
                let since = hour(back);
                let (t, s, f) = rows.iter().filter(|r| r.0 >= since).fold((0, 0, 0), |acc, r| (acc.0 + r.1, acc.1 + r.2, acc.2 + r.3));
                windows.insert(name.to_string(), keel_core::slo::report(spec, t, s, f));
            }
            surfaces.push(json!({"surface": spec.surface, "objectives": {"p95_ms": spec.p95_ms, "success": spec.success}, "windows": windows}));
        }
        Ok(ApiResponse::ok(&json!({"slos": surfaces})))
    }
}
