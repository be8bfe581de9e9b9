//! What the tools function keeps in the table, one store per thing it holds:
//! tools (every version), policy sets, actions with their idempotency
//! claims, and each tool's daily counters. Use cases call these; only these
//! touch the table.

use crate::{Action, Tool};
use keel_core::ids::TenantId;
use keel_core::keys;
use keel_core::change_requests::PendingWrite;
use keel_core::ports::{Condition, Item, QueryOptions, Table, Write};
use keel_core::{KeelError, StoreError};
use serde_json::{json, Value};
use std::sync::Arc;

/// How long an idempotency key is remembered.
const IDEMPOTENCY_TTL_SECS: i64 = 7 * 24 * 3600;

fn write(tenant: &TenantId, sk: String, data: Value, condition: Condition) -> Write {
    Write { pk: tenant.pk(), sk, data, expires_at: None, condition }
}

/// Registered tools: the latest version of each, and an immutable copy of every version.
pub(crate) struct ToolStore {
    table: Arc<dyn Table>,
}

impl ToolStore {
    pub(crate) fn new(table: Arc<dyn Table>) -> Self {
        Self { table }
    }

    /// The latest version and the record's version for a conditional write.
    pub(crate) async fn latest(&self, tenant: &TenantId, name: &str) -> Result<Option<(Tool, u64)>, KeelError> {
        keel_core::ports::get_record(self.table.as_ref(), &tenant.pk(), &keys::tool(name)).await
    }

    /// The latest version of every tool, by name.
    pub(crate) async fn all_latest(&self, tenant: &TenantId) -> Result<Vec<Tool>, KeelError> {
        let items = self.table.query(&tenant.pk(), &keys::tool(""), QueryOptions::default()).await?;
        items.into_iter().map(|i| serde_json::from_value(i.data).map_err(KeelError::from)).collect()
    }

    /// The tool as one of its versions was registered.
    pub(crate) async fn version(&self, tenant: &TenantId, name: &str, version: u64) -> Result<Option<Tool>, KeelError> {
        Ok(keel_core::ports::get_record(self.table.as_ref(), &tenant.pk(), &keys::tool_version(name, version)).await?.map(|(record, _)| record))
    }

    /// Writes a new version as the latest, if the latest is still `replacing`
    /// (`None`: there was none). `ConditionFailed` when it moved meanwhile.
    /// The writes `put` would make, for a change that waits for a second admin:
    /// the latest version, then its immutable copy.
    pub(crate) fn pending_put(&self, tool: &Tool, replacing: Option<u64>) -> Result<(PendingWrite, PendingWrite), KeelError> {
        let data = serde_json::to_value(tool)?;
        let latest = PendingWrite { sk: keys::tool(&tool.name), data: data.clone(), base_version: replacing };
        Ok((latest, PendingWrite { sk: keys::tool_version(&tool.name, tool.version), data, base_version: None }))
    }

    pub(crate) async fn put(&self, tenant: &TenantId, tool: &Tool, replacing: Option<u64>) -> Result<(), StoreError> {
        let data = serde_json::to_value(tool).map_err(|e| StoreError::Invalid(e.to_string()))?;
        let condition = replacing.map_or(Condition::NotExists, Condition::Version);
        let copy = write(tenant, keys::tool_version(&tool.name, tool.version), data.clone(), Condition::NotExists);
        self.table.put_all(vec![write(tenant, keys::tool(&tool.name), data, condition), copy]).await
    }
}

/// A tenant's Cedar policy sets, `enforced` and `shadow`.
pub(crate) struct PolicyStore {
    table: Arc<dyn Table>,
}

/// One stored policy set.
pub(crate) struct PolicySet {
    pub mode: String,
    pub text: String,
    pub version: u64,
    pub updated_at: Value,
}

impl PolicyStore {
    pub(crate) fn new(table: Arc<dyn Table>) -> Self {
        Self { table }
    }

    /// The sets the tenant has stored (none, one or both).
    pub(crate) async fn sets(&self, tenant: &TenantId) -> Result<Vec<PolicySet>, KeelError> {
        let items: Vec<Item> = self.table.query(&tenant.pk(), keys::POLICY_SETS, Default::default()).await?;
        Ok(items
            .into_iter()
            .map(|item| PolicySet {
                mode: item.sk.trim_start_matches(keys::POLICY_SETS).to_string(),
                text: item.data["policies"].as_str().unwrap_or_default().to_string(),
                version: item.version,
                updated_at: item.data["updated_at"].clone(),
            })
            .collect())
    }

    /// The write `put` would make, for a change that waits for a second admin.
    pub(crate) fn pending_put(&self, mode: &str, text: &str, version: u64, at: String) -> PendingWrite {
        let base_version = (version != 0).then_some(version);
        PendingWrite { sk: keys::policy_set(mode), data: json!({"policies": text, "updated_at": at}), base_version }
    }

    /// Replaces a set if it is still at `version` (0: it did not exist).
    pub(crate) async fn put(&self, tenant: &TenantId, mode: &str, text: String, version: u64, at: String) -> Result<(), StoreError> {
        let condition = if version == 0 { Condition::NotExists } else { Condition::Version(version) };
        self.table.put(write(tenant, keys::policy_set(mode), json!({"policies": text, "updated_at": at}), condition)).await.map(drop)
    }
}

/// Actions, and the idempotency keys that claimed them.
pub(crate) struct ActionStore {
    table: Arc<dyn Table>,
}

/// What an idempotency key claimed: the action, and the request's fingerprint.
pub(crate) struct Claim {
    pub action_id: String,
    pub fingerprint: String,
}

impl ActionStore {
    pub(crate) fn new(table: Arc<dyn Table>) -> Self {
        Self { table }
    }

    pub(crate) async fn get(&self, tenant: &TenantId, id: &str) -> Result<Option<(Action, u64)>, KeelError> {
        keel_core::ports::get_record(self.table.as_ref(), &tenant.pk(), &keys::action(id)).await
    }

    pub(crate) async fn claim_of(&self, tenant: &TenantId, key: &str) -> Result<Option<Claim>, KeelError> {
        Ok(self.table.get(&tenant.pk(), &keys::idempotency(key)).await?.map(|item| Claim {
            action_id: item.data["action_id"].as_str().unwrap_or_default().to_string(),
            fingerprint: item.data["fingerprint"].as_str().unwrap_or_default().to_string(),
        }))
    }

    /// Writes a new action and claims its idempotency key together; `false`
    /// when another request claimed the key first.
    pub(crate) async fn create(&self, tenant: &TenantId, action: &Action, fingerprint: &str) -> Result<bool, KeelError> {
        let mut claim = write(
            tenant,
            keys::idempotency(&action.idempotency_key),
            json!({"action_id": action.action_id, "fingerprint": fingerprint}),
            Condition::NotExists,
        );
        claim.expires_at = Some(keel_core::time::now_secs() + IDEMPOTENCY_TTL_SECS);
        let record = write(tenant, keys::action(&action.action_id), serde_json::to_value(action)?, Condition::NotExists);
        match self.table.put_all(vec![claim, record]).await {
            Ok(()) => Ok(true),
            Err(StoreError::ConditionFailed) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// Up to `limit` actions, newest first, older than the action `before`.
    pub(crate) async fn older_than(&self, tenant: &TenantId, before: Option<&str>, limit: usize) -> Result<Vec<Action>, KeelError> {
        let options = QueryOptions { limit: Some(limit), descending: true, before: before.map(keys::action), ..Default::default() };
        let items = self.table.query(&tenant.pk(), &keys::action(""), options).await?;
        items.into_iter().map(|i| serde_json::from_value(i.data).map_err(KeelError::from)).collect()
    }

    /// Writes an action's new state if it is still at `version`.
    pub(crate) async fn save(&self, tenant: &TenantId, action: &Action, version: u64) -> Result<(), StoreError> {
        let data = serde_json::to_value(action).map_err(|e| StoreError::Invalid(e.to_string()))?;
        self.table.put(write(tenant, keys::action(&action.action_id), data, Condition::Version(version))).await.map(drop)
    }
}

/// Each tool's daily counters: proposals and the metered total, per UTC day.
pub(crate) struct DailyCounters {
    table: Arc<dyn Table>,
}

impl DailyCounters {
    pub(crate) fn new(table: Arc<dyn Table>) -> Self {
        Self { table }
    }

    /// Adds to a counter (`count` or `total`) and returns its new value.
    pub(crate) async fn add(&self, tenant: &TenantId, tool: &str, day: &str, what: &str, by: i64, expires_at: Option<i64>) -> Result<i64, StoreError> {
        self.table.increment(&tenant.pk(), &keys::daily(tool, day, what), by, None, expires_at).await
    }
}
