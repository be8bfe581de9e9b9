//! API keys: the store that holds them, and the one authenticator that
//! turns a key into a caller, for the HTTP authorizer and for producers'
//! queue messages alike.

use crate::auth::{api_key_tenant, groups_of, hash_api_key, ApiKeyRecord, Caller};
use crate::error::KeelError;
use crate::ids::TenantId;
use crate::ports::{Condition, Table, Write};
use crate::tenants::{TenantStatus, TenantStore};
use crate::warm_cache::WarmCache;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

/// Most API key records held by one warm container.
const KEY_CACHE_ENTRIES: usize = 10_000;
/// How often a key's last use is written, at most, per warm function.
const LAST_USED_EVERY_SECS: i64 = 60;
/// The queue message attribute a producer puts its key in (`Bearer keel_…`).
pub const PRODUCER_ATTRIBUTE: &str = "authorization";

/// A tenant's API keys, stored by the hash of the secret.
pub struct ApiKeyStore {
    table: Arc<dyn Table>,
}

/// A stored key: the hash of its secret, its record, and the record's version.
pub struct StoredKey {
    pub hash: String,
    pub record: ApiKeyRecord,
    pub version: u64,
}

impl ApiKeyStore {
    pub fn new(table: Arc<dyn Table>) -> Self {
        Self { table }
    }

    pub async fn create(&self, tenant: &TenantId, key: &str, record: &ApiKeyRecord) -> Result<(), KeelError> {
        let (pk, sk) = (tenant.pk(), crate::keys::api_key(&hash_api_key(key)));
        let data = serde_json::to_value(record)?;
        self.table.put(Write { pk, sk, data, expires_at: None, condition: Condition::NotExists }).await?;
        Ok(())
    }

    /// The key's record, by the key itself.
    pub async fn get(&self, tenant: &TenantId, key: &str) -> Result<Option<StoredKey>, KeelError> {
        let hash = hash_api_key(key);
        let record = crate::ports::get_record(self.table.as_ref(), &tenant.pk(), &crate::keys::api_key(&hash)).await?;
        Ok(record.map(|(record, version)| StoredKey { hash, record, version }))
    }

    /// Every key of the tenant.
    pub async fn list(&self, tenant: &TenantId) -> Result<Vec<StoredKey>, KeelError> {
        self.query(tenant, crate::keys::API_KEYS.to_string()).await
    }

    /// The key whose id (`api_key_id`) is `key_id`.
    pub async fn find(&self, tenant: &TenantId, key_id: &str) -> Result<Option<StoredKey>, KeelError> {
        let valid = key_id.len() == crate::auth::API_KEY_ID_CHARS && key_id.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        if !valid {
            return Ok(None);
        }
        Ok(self.query(tenant, crate::keys::api_key(key_id)).await?.pop())
    }

    async fn query(&self, tenant: &TenantId, prefix: String) -> Result<Vec<StoredKey>, KeelError> {
        let items = self.table.query(&tenant.pk(), &prefix, Default::default()).await?;
        items
            .into_iter()
            .map(|item| {
                let hash = item.sk.trim_start_matches(crate::keys::API_KEYS).to_string();
                Ok(StoredKey { hash, record: serde_json::from_value(item.data)?, version: item.version })
            })
            .collect()
    }

    /// Replaces the record if it is still at `key.version`; `Conflict` when it
    /// moved or the key was revoked meanwhile.
    pub async fn update(&self, tenant: &TenantId, key: &StoredKey) -> Result<(), KeelError> {
        let (pk, sk) = (tenant.pk(), crate::keys::api_key(&key.hash));
        let data = serde_json::to_value(&key.record)?;
        self.table.put(Write { pk, sk, data, expires_at: None, condition: Condition::Version(key.version) }).await?;
        Ok(())
    }

    /// The write that activates a key created pending (`ApiKeyRecord::pending`),
    /// for the change request that waits for its approval.
    pub fn pending_activation(&self, key: &str, record: &ApiKeyRecord) -> Result<crate::change_requests::PendingWrite, KeelError> {
        let active = ApiKeyRecord { pending: None, ..record.clone() };
        Ok(crate::change_requests::PendingWrite { sk: crate::keys::api_key(&hash_api_key(key)), data: serde_json::to_value(active)?, base_version: Some(1) })
    }

    pub async fn delete(&self, tenant: &TenantId, hash: &str) -> Result<(), KeelError> {
        Ok(self.table.delete(&tenant.pk(), &crate::keys::api_key(hash)).await?)
    }
}

/// Turns an API key into its caller. Valid keys' records are kept warm for
/// the tenant cache's TTL (a store read less per request); unknown keys are
/// not cached, so guessing fills nothing. Expiry is checked on every use.
pub struct KeyAuthenticator {
    tenants: Arc<TenantStore>,
    keys: ApiKeyStore,
    warm: WarmCache<String, ApiKeyRecord>,
    /// Producers' messages count against their tenant's rate limit, as HTTP requests do.
    rate: crate::rate::RateLimiter,
}

impl KeyAuthenticator {
    pub fn new(table: Arc<dyn Table>, tenants: Arc<TenantStore>, cache_ttl: Duration) -> Self {
        let rate = crate::rate::RateLimiter::new(table.clone(), tenants.clone());
        Self { tenants, keys: ApiKeyStore::new(table), warm: WarmCache::new(Some(cache_ttl), KEY_CACHE_ENTRIES), rate }
    }

    pub fn store(&self) -> &ApiKeyStore {
        &self.keys
    }

    /// Drops a key from the warm cache (revoked, or its expiry changed).
    pub fn forget(&self, key_hash: &str) {
        self.warm.remove(key_hash);
    }

    /// The caller a tenant's key stands for. `Unauthorized` for an unknown,
    /// malformed or expired key; `Forbidden` when its tenant is suspended.
    pub async fn caller(&self, key: &str) -> Result<Caller, KeelError> {
        let invalid = || KeelError::Unauthorized("invalid credentials".into());
        let tenant = api_key_tenant(key).ok_or_else(invalid)?;
        let record = self.record(&tenant, key).await?.ok_or_else(invalid)?;
        if record.expired(chrono::Utc::now()) {
            return Err(KeelError::Unauthorized("this key has expired".into()));
        }
        if record.pending.is_some() {
            return Err(KeelError::Unauthorized("this key waits for a second admin's approval".into()));
        }
        let incarnation = match self.tenants.cached(&tenant).await? {
            Some(t) if t.status == TenantStatus::Active => t.incarnation().to_string(),
            Some(_) => return Err(KeelError::Forbidden(format!("tenant {tenant} is suspended"))),
            None => return Err(invalid()),
        };
        Ok(Caller {
            tenant: Some(tenant),
            principal: record.principal,
            groups: groups_of(&record.attributes),
            roles: record.roles,
            incarnation: Some(incarnation),
            credential: crate::auth::Credential {
                key_id: Some(crate::auth::api_key_id(&hash_api_key(key))),
                issued_by: record.issued_by,
                issued_at: Some(record.created_at),
            },
        })
    }

    /// The caller a producer's queue message names in its `authorization`
    /// attribute (`Bearer keel_…`): a key of the tenant, nothing else. The
    /// message counts against the tenant's rate limit like an HTTP request:
    /// past it, `RetryLater`, and the consumer leaves the message for
    /// the queue to deliver again later (it is neither done nor dead-lettered).
    pub async fn producer(&self, attributes: &HashMap<String, String>) -> Result<Caller, KeelError> {
        let value = attributes
            .get(PRODUCER_ATTRIBUTE)
            .ok_or_else(|| KeelError::Unauthorized(format!("producer message without an '{PRODUCER_ATTRIBUTE}' attribute (Bearer <tenant key>)")))?;
        let key = value
            .strip_prefix("Bearer ")
            .map(str::trim)
            .filter(|k| k.starts_with("keel_"))
            .ok_or_else(|| KeelError::Unauthorized(format!("the '{PRODUCER_ATTRIBUTE}' attribute must be 'Bearer <tenant key>'")))?;
        // A deleted tenant's messages still in flight are dropped, not dead-lettered.
        if let Some(tenant) = crate::auth::api_key_tenant(key) {
            if self.tenants.is_deleted(&tenant).await? {
                return Err(KeelError::TenantGone(tenant.to_string()));
            }
        }
        let caller = self.caller(key).await?;
        let tenant = caller.tenant()?;
        if let Some(named) = attributes.get("tenant") {
            if named != tenant.as_str() {
                return Err(KeelError::Forbidden(format!("the message names tenant {named:?} but its key is {tenant}'s")));
            }
        }
        self.rate.take(tenant, caller.incarnation.as_deref()).await?;
        Ok(caller)
    }

    async fn record(&self, tenant: &TenantId, key: &str) -> Result<Option<ApiKeyRecord>, KeelError> {
        let hash = hash_api_key(key);
        if let Some(record) = self.warm.get(&hash) {
            return Ok(Some(record));
        }
        let Some(mut fresh) = self.keys.get(tenant, key).await? else { return Ok(None) };
        // A key waiting for approval is not used: its record stays as the approval expects it.
        if fresh.record.pending.is_none() {
            self.note_use(tenant, &mut fresh).await;
        }
        self.warm.insert(hash, fresh.record.clone());
        Ok(Some(fresh.record))
    }

    /// Notes the key's use, at most once a minute (a lost race or a revoked
    /// key writes nothing).
    async fn note_use(&self, tenant: &TenantId, key: &mut StoredKey) {
        let now = chrono::Utc::now();
        let last = key.record.last_used_at.as_deref().and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok());
        if last.is_some_and(|t| (now - t.with_timezone(&chrono::Utc)).num_seconds() < LAST_USED_EVERY_SECS) {
            return;
        }
        key.record.last_used_at = Some(now.to_rfc3339_opts(chrono::SecondsFormat::Secs, true));
        if let Err(e) = self.keys.update(tenant, key).await {
            tracing::debug!(error = %e, "last use of a key not recorded");
        }
    }
}
