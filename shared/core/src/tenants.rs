//! The tenant registry and API keys, stored in the single table.

use crate::error::KeelError;
use crate::ids::TenantId;
use crate::models::{Budgets, RoutingPolicy};
use crate::ports::{Condition, Table, Write};
use crate::warm_cache::WarmCache;
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::time::Duration;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum TenantStatus {
    Active,
    Suspended,
}

/// How far actions may run without a human click (the kill switch drops to `SuggestOnly`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Autonomy {
    SuggestOnly,
    OneClick,
    Unattended,
}

impl Autonomy {
    /// How much an action may do without a click: higher is weaker control.
    pub fn rank(self) -> u8 {
        match self {
            Autonomy::SuggestOnly => 0,
            Autonomy::OneClick => 1,
            Autonomy::Unattended => 2,
        }
    }

    /// The name policies and records use (as serialized).
    pub fn as_str(self) -> &'static str {
        match self {
            Autonomy::SuggestOnly => "suggest_only",
            Autonomy::OneClick => "one_click",
            Autonomy::Unattended => "unattended",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Tenant {
    pub id: TenantId,
    pub name: String,
    pub plan: String,
    #[serde(default)]
    pub region: Option<String>,
    pub status: TenantStatus,
    /// Requests per minute across the tenant.
    pub rate_limit_per_minute: i64,
    pub autonomy: Autonomy,
    /// Redact PII from stored text and answers.
    #[serde(default)]
    pub redact_pii: bool,
    /// How the model gateway answers for this tenant.
    #[serde(default)]
    pub routing: RoutingPolicy,
    #[serde(default)]
    pub budgets: Budgets,
    /// The kill switch: stops every hosted model call at once (answers stay
    /// in-function); turning it on also drops autonomy to suggest-only.
    #[serde(default, alias = "models_off")]
    pub kill_switch: bool,
    #[serde(default)]
    pub governance: Governance,
    /// The tenant's own OIDC identity provider, whose tokens sign its people in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity: Option<crate::identity::IdentityProvider>,
    /// The hosts its connectors may call, when the platform pins it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub egress: Option<crate::egress::EgressPins>,
    /// How long its decision log is kept, and whether it keeps questions' text.
    #[serde(default)]
    pub retention: Retention,
    pub created_at: String,
    /// This life of the tenant id: written at creation, never reused. A
    /// tenant deleted and created again under the same id is a new
    /// incarnation, and nothing cached, stored or queued for the old one is
    /// served to it (`docs/isolation.md`).
    #[serde(default)]
    pub incarnation: String,
}

/// What the decision log keeps, and for how long.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Retention {
    /// Entries expire this many days after they are recorded; `None` keeps them.
    #[serde(default)]
    pub decision_days: Option<u32>,
    /// `false`: a question or prompt is logged as its SHA-256, not its text.
    #[serde(default = "keep")]
    pub store_prompts: bool,
}

fn keep() -> bool {
    true
}

impl Default for Retention {
    fn default() -> Self {
        Self { decision_days: None, store_prompts: true }
    }
}

/// The longest decision log retention a tenant may set (ten years).
pub const MAX_DECISION_DAYS: u32 = 3650;

impl Retention {
    pub fn validate(&self) -> Result<(), KeelError> {
        match self.decision_days {
            Some(d) if !(1..=MAX_DECISION_DAYS).contains(&d) => {
                Err(KeelError::BadRequest(format!("retention.decision_days must be from 1 to {MAX_DECISION_DAYS}")))
            }
            _ => Ok(()),
        }
    }

    /// Whether `after` keeps less of the log (fewer days) or turns the text of questions back on.
    pub fn weakened_by(&self, after: &Retention) -> bool {
        let days = |r: &Retention| r.decision_days.map_or(u32::MAX, |d| d);
        days(after) < days(self) || (!self.store_prompts && after.store_prompts)
    }

    /// When an entry recorded at `recorded_at` (epoch seconds) expires, if it does.
    pub fn expiry(&self, recorded_at: i64) -> Option<i64> {
        self.decision_days.map(|d| recorded_at + i64::from(d) * 86_400)
    }
}

/// How the tenant's own controls may be changed.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Governance {
    /// A change that weakens a control waits for a second admin's approval.
    #[serde(default)]
    pub two_person_changes: bool,
}

/// Most requests per minute a tenant may be given.
pub const MAX_RATE_LIMIT_PER_MINUTE: i64 = 1_000_000;

/// Whether `after` lets connectors reach hosts `before` did not: unpinned, or a host added.
fn pins_widened(before: Option<&crate::egress::EgressPins>, after: Option<&crate::egress::EgressPins>) -> bool {
    match (before, after) {
        (None, _) => false,
        (Some(_), None) => true,
        (Some(b), Some(a)) => a.hosts.iter().any(|h| !b.hosts.contains(h)),
    }
}

/// A fresh incarnation for a tenant being created.
pub fn new_incarnation() -> String {
    crate::ids::new_token("inc")
}

impl Tenant {
    /// The tenant's incarnation; a record from before incarnations were kept
    /// is told apart by its creation time.
    pub fn incarnation(&self) -> &str {
        if self.incarnation.is_empty() {
            &self.created_at
        } else {
            &self.incarnation
        }
    }

    /// Why `after` weakens a control this tenant (as it stands) has, if it does.
    pub fn weakened_by(&self, after: &Tenant) -> Option<&'static str> {
        let weakenings: [(bool, &'static str); 8] = [
            (self.kill_switch && !after.kill_switch, "it turns the kill switch off"),
            (after.autonomy.rank() > self.autonomy.rank(), "it raises autonomy"),
            (self.governance.two_person_changes && !after.governance.two_person_changes, "it turns two-person changes off"),
            (self.identity != after.identity, "it changes who signs in (the identity provider)"),
            (self.redact_pii && !after.redact_pii, "it turns PII redaction off"),
            (pins_widened(self.egress.as_ref(), after.egress.as_ref()), "it removes or widens the egress pin"),
            (self.retention.weakened_by(&after.retention), "it keeps less of the decision log, or keeps questions' text again"),
            (self.budgets.weakened_by(&after.budgets), "it removes or raises a budget"),
        ];
        weakenings.into_iter().find(|(weakens, _)| *weakens).map(|(_, why)| why)
    }

    /// Checks every setting a create or an update can set, in one place.
    pub fn validate_settings(&self, catalog: &[crate::models::ModelSpec]) -> Result<(), KeelError> {
        if self.name.trim().is_empty() {
            return Err(KeelError::BadRequest("name must not be empty".into()));
        }
        if !(1..=MAX_RATE_LIMIT_PER_MINUTE).contains(&self.rate_limit_per_minute) {
            return Err(KeelError::BadRequest(format!("rate_limit_per_minute must be from 1 to {MAX_RATE_LIMIT_PER_MINUTE}")));
        }
        if let Some(identity) = &self.identity {
            identity.validate()?;
        }
        if let Some(pins) = &self.egress {
            pins.validate()?;
        }
        self.retention.validate()?;
        self.routing.validate(catalog)?;
        self.budgets.validate()
    }
}

/// The tenant registry: one record per tenant, read through a warm cache.
/// The cache's TTL bounds how long a change (suspension, kill switch,
/// autonomy) takes to reach another warm function; within one process (the
/// local stack shares one store) an update invalidates the entry at once.
pub struct TenantStore {
    table: Arc<dyn Table>,
    cache: WarmCache<TenantId, Tenant>,
}

impl TenantStore {
    pub fn new(table: Arc<dyn Table>, cache_ttl: Duration) -> Self {
        Self { table, cache: WarmCache::new(Some(cache_ttl), usize::MAX) }
    }

    /// The stored record and its version, read fresh (for an update).
    pub async fn get(&self, id: &TenantId) -> Result<Option<(Tenant, u64)>, KeelError> {
        crate::ports::get_record(self.table.as_ref(), &id.pk(), crate::keys::TENANT).await
    }

    /// The record through the warm cache.
    pub async fn cached(&self, id: &TenantId) -> Result<Option<Tenant>, KeelError> {
        if let Some(t) = self.cache.get(id) {
            return Ok(Some(t));
        }
        let fresh = self.get(id).await?.map(|(t, _)| t);
        if let Some(t) = &fresh {
            self.cache.insert(id.clone(), t.clone());
        }
        Ok(fresh)
    }

    /// The incarnation of the tenant the running work is for: the running
    /// request's (its caller's, checked against the record by the rate
    /// limiter), else the record's through the cache; `None` when it is gone.
    pub async fn incarnation(&self, id: &TenantId) -> Result<Option<String>, KeelError> {
        if let Some(incarnation) = crate::trace::current().and_then(|c| c.incarnation) {
            return Ok(Some(incarnation));
        }
        Ok(self.cached(id).await?.map(|t| t.incarnation().to_string()))
    }

    /// The tenant, if it is still the one `incarnation` names: `None` when
    /// the tenant was deleted (whatever was created under its id since). A
    /// cached record of another incarnation is read again before the answer.
    /// Messages and credentials made for an incarnation are checked so.
    pub async fn of_incarnation(&self, id: &TenantId, incarnation: &str) -> Result<Option<Tenant>, KeelError> {
        match self.cached(id).await? {
            Some(t) if t.incarnation() == incarnation => return Ok(Some(t)),
            None => return Ok(None),
            Some(_) => self.forget(id),
        }
        Ok(self.cached(id).await?.filter(|t| t.incarnation() == incarnation))
    }

    /// Whether a queued message for the tenant outlived it: the tenant was
    /// deleted, or the message names an incarnation (its
    /// `decisions::INCARNATION_ATTRIBUTE`) the tenant no longer has. Such a
    /// message is dropped, never applied to whatever has the id now.
    pub async fn outlived(&self, id: &TenantId, attributes: &std::collections::HashMap<String, String>) -> Result<bool, KeelError> {
        match attributes.get(crate::decisions::INCARNATION_ATTRIBUTE) {
            Some(incarnation) => Ok(self.of_incarnation(id, incarnation).await?.is_none()),
            None => self.is_deleted(id).await,
        }
    }

    /// Whether the tenant was deleted: its record is gone and the platform
    /// keeps a deletion receipt (an id that never existed is not "deleted").
    pub async fn is_deleted(&self, id: &TenantId) -> Result<bool, KeelError> {
        if self.cached(id).await?.is_some() {
            return Ok(false);
        }
        Ok(self.table.get(crate::keys::PLATFORM, &crate::keys::deletion_receipt(id)).await?.is_some())
    }

    /// The tenant through the cache; fails unless it exists and is active.
    pub async fn require_active(&self, id: &TenantId) -> Result<Tenant, KeelError> {
        match self.cached(id).await? {
            Some(t) if t.status == TenantStatus::Active => Ok(t),
            Some(_) => Err(KeelError::Forbidden(format!("tenant {id} is suspended"))),
            None => Err(KeelError::NotFound(format!("tenant {id} does not exist"))),
        }
    }

    /// Writes a new tenant; `Conflict` when the id is taken.
    pub async fn create(&self, tenant: &Tenant) -> Result<(), KeelError> {
        self.put(tenant, Condition::NotExists).await.map_err(|e| match e {
            KeelError::Conflict(_) => KeelError::Conflict(format!("tenant {} already exists", tenant.id)),
            other => other,
        })
    }

    /// Replaces the record if it is still at `version`; `Conflict` when it moved.
    pub async fn update(&self, tenant: &Tenant, version: u64) -> Result<(), KeelError> {
        self.put(tenant, Condition::Version(version)).await?;
        self.cache.remove(&tenant.id);
        Ok(())
    }

    /// The write `update` would make, for a change that waits for a second admin.
    pub fn pending_update(&self, tenant: &Tenant, version: u64) -> Result<crate::change_requests::PendingWrite, KeelError> {
        Ok(crate::change_requests::PendingWrite { sk: crate::keys::TENANT.into(), data: serde_json::to_value(tenant)?, base_version: Some(version) })
    }

    /// Drops the tenant from this process's cache (changed by another path).
    pub fn forget(&self, id: &TenantId) {
        self.cache.remove(id);
    }

    async fn put(&self, tenant: &Tenant, condition: Condition) -> Result<(), KeelError> {
        let data = serde_json::to_value(tenant)?;
        self.table.put(Write { pk: tenant.id.pk(), sk: crate::keys::TENANT.into(), data, expires_at: None, condition }).await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_loosened_control_is_a_weakening_and_tightening_none() {
        let base: Tenant = serde_json::from_value(serde_json::json!({"id": "acme", "name": "Acme", "plan": "standard", "status": "active",
            "rate_limit_per_minute": 60, "autonomy": "one_click", "redact_pii": true, "created_at": "2026-01-01T00:00:00Z",
            "egress": {"hosts": ["api.stripe.com"]}, "retention": {"decision_days": 90, "store_prompts": false},
            "budgets": {"monthly_usd": 100.0, "workflows": {"support": 10.0}}})).unwrap();
        let changed = |f: &dyn Fn(&mut Tenant)| {
            let mut t = base.clone();
            f(&mut t);
            base.weakened_by(&t)
        };
        assert!(changed(&|t| t.redact_pii = false).is_some_and(|w| w.contains("redaction")));
        assert!(changed(&|t| t.egress = None).is_some_and(|w| w.contains("egress")));
        assert!(changed(&|t| t.egress.as_mut().unwrap().hosts.push("evil.example".into())).is_some());
        assert!(changed(&|t| t.retention.decision_days = Some(1)).is_some_and(|w| w.contains("decision log")));
        assert!(changed(&|t| t.retention.store_prompts = true).is_some());
        assert!(changed(&|t| t.budgets.monthly_usd = None).is_some_and(|w| w.contains("budget")));
        assert!(changed(&|t| t.budgets.workflows.clear()).is_some());
        assert!(changed(&|t| { t.budgets.monthly_usd = Some(1_000.0); }).is_some());
        assert!(changed(&|t| t.identity = serde_json::from_value(serde_json::json!({"issuer": "https://i", "jwks_uri": "https://i/j", "audience": "a"})).ok()).is_some());
        // Tightening is never held.
        assert_eq!(changed(&|t| t.egress.as_mut().unwrap().hosts.clear()), None);
        assert_eq!(changed(&|t| t.retention.decision_days = Some(365)), None);
        assert_eq!(changed(&|t| t.budgets.monthly_usd = Some(50.0)), None);
        assert_eq!(changed(&|t| t.name = "Acme Ltd".into()), None);
    }

    #[test]
    fn a_tenant_stored_with_the_old_models_off_name_reads_its_kill_switch() {
        let stored = serde_json::json!({"id": "acme", "name": "Acme", "plan": "standard", "status": "active",
            "rate_limit_per_minute": 60, "autonomy": "one_click", "models_off": true, "created_at": "2026-01-01T00:00:00Z"});
        let tenant: Tenant = serde_json::from_value(stored).unwrap();
        assert!(tenant.kill_switch);
        let written = serde_json::to_value(&tenant).unwrap();
        assert_eq!((written["kill_switch"].clone(), written.get("models_off")), (serde_json::json!(true), None));
    }
}
