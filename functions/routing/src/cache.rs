//! The answer cache: content-addressed by tenant and its incarnation (an
//! answer cached for a deleted tenant is never an address of the tenant
//! created again under its id, even if written after the deletion by a
//! request that was still running), the exact question (any
//! character of it can change an answer: "2+2" and "2-2" are two questions),
//! evidence version (a hash of the evidence chunks' ids and text, so any
//! change to the evidence is a new address) and model. Entries live in the
//! tenant's own partition with a TTL; no key can reach another tenant's.

use keel_core::ids::TenantId;
use keel_core::ports::{Condition, Table, Write};
use keel_core::tenants::Tenant;
use keel_core::time::now_secs;
use keel_core::KeelError;
use serde::de::DeserializeOwned;
use serde::Serialize;
use sha2::{Digest, Sha256};
use std::sync::Arc;

/// The address of an answer. Parts are length-prefixed so no two part lists collide.
pub fn key(tenant: &Tenant, parts: &[&str]) -> String {
    let mut h = Sha256::new();
    for p in [tenant.id.as_str(), tenant.incarnation()].into_iter().chain(parts.iter().copied()) {
        h.update((p.len() as u64).to_le_bytes());
        h.update(p.as_bytes());
    }
    hex::encode(h.finalize())
}


/// Answers in the tenant's own partition, each with a TTL.
#[derive(Clone)]
pub struct AnswerCache {
    table: Arc<dyn Table>,
}

impl AnswerCache {
    pub fn new(table: Arc<dyn Table>) -> Self {
        Self { table }
    }

    /// The answer at `key`; `None` when absent, expired or of another shape.
    pub async fn get<T: DeserializeOwned>(&self, tenant: &TenantId, key: &str) -> Result<Option<T>, KeelError> {
        match self.table.get(&tenant.pk(), &keel_core::keys::answer_cache(key)).await? {
            Some(item) => Ok(serde_json::from_value(item.data).ok()),
            None => Ok(None),
        }
    }

    pub async fn put<T: Serialize>(&self, tenant: &TenantId, key: &str, value: &T, ttl_secs: u64) -> Result<(), KeelError> {
        let write = Write {
            pk: tenant.pk(),
            sk: keel_core::keys::answer_cache(key),
            data: serde_json::to_value(value)?,
            expires_at: Some(now_secs().saturating_add(i64::try_from(ttl_secs).unwrap_or(i64::MAX))),
            condition: Condition::Always,
        };
        self.table.put(write).await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tenant(id: &str, incarnation: &str) -> Tenant {
        serde_json::from_value(serde_json::json!({"id": id, "name": id, "plan": "standard", "status": "active",
            "rate_limit_per_minute": 60, "autonomy": "one_click", "created_at": "2026-01-01T00:00:00Z", "incarnation": incarnation}))
        .unwrap()
    }

    #[test]
    fn keys_separate_tenants_their_incarnations_and_parts() {
        let a = tenant("acme", "i1");
        let b = tenant("beta", "i1");
        assert_ne!(key(&a, &["q", "m"]), key(&tenant("acme", "i2"), &["q", "m"]), "the id created again");
        assert_ne!(key(&a, &["chat", "2+2"]), key(&a, &["chat", "2-2"]));
        assert_ne!(key(&a, &["ask", "What is X?"]), key(&a, &["ask", "what is x"]));
        assert_ne!(key(&a, &["q", "m"]), key(&b, &["q", "m"]));
        assert_ne!(key(&a, &["ab", "c"]), key(&a, &["a", "bc"]));
        assert_eq!(key(&a, &["q", "m"]), key(&a, &["q", "m"]));
    }
}
