//! A tenant's own identity provider (OIDC): what the platform admin sets on
//! the tenant, and the platform-wide index from an issuer to the one tenant
//! it signs in. A token's `iss` picks the tenant through this index.

use crate::error::KeelError;
use crate::ids::TenantId;
use crate::ports::{Condition, Table, Write};
use crate::warm_cache::WarmCache;
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::time::Duration;

/// Longest issuer, JWKS address, audience or claim name accepted.
pub const MAX_IDENTITY_FIELD_CHARS: usize = 512;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct IdentityProvider {
    /// The `iss` its tokens carry; unique across the platform.
    pub issuer: String,
    /// Where its signing keys are published (a JWKS document).
    pub jwks_uri: String,
    /// The `aud` its tokens must name.
    pub audience: String,
    /// The claim that names the principal.
    #[serde(default = "default_principal_claim")]
    pub principal_claim: String,
    /// The claim with Keel roles (a list, or a space- or comma-separated string).
    #[serde(default = "default_roles_claim")]
    pub roles_claim: String,
    /// The claim with ACL groups.
    #[serde(default = "default_groups_claim")]
    pub groups_claim: String,
}

fn default_principal_claim() -> String {
    "sub".into()
}

fn default_roles_claim() -> String {
    "roles".into()
}

fn default_groups_claim() -> String {
    "groups".into()
}

impl IdentityProvider {
    pub fn validate(&self) -> Result<(), KeelError> {
        let fields = [
            ("issuer", &self.issuer),
            ("jwks_uri", &self.jwks_uri),
            ("audience", &self.audience),
            ("principal_claim", &self.principal_claim),
            ("roles_claim", &self.roles_claim),
            ("groups_claim", &self.groups_claim),
        ];
        for (name, value) in fields {
            if value.trim().is_empty() || value.len() > MAX_IDENTITY_FIELD_CHARS {
                return Err(KeelError::BadRequest(format!("identity.{name} must be 1-{MAX_IDENTITY_FIELD_CHARS} characters")));
            }
        }
        if !self.jwks_uri.starts_with("https://") && !self.jwks_uri.starts_with("http://") {
            return Err(KeelError::BadRequest("identity.jwks_uri must be an http(s) address".into()));
        }
        Ok(())
    }
}

/// Which tenant each issuer signs in. One item per issuer, claimed with a
/// conditional write, so two tenants can never share an issuer. Answers are
/// kept warm for the cache's TTL, unknown issuers too (negatively), so a
/// stream of tokens from an issuer no tenant has costs one read per TTL.
pub struct IssuerIndex {
    table: Arc<dyn Table>,
    cache: WarmCache<String, Option<TenantId>>,
}

/// What claiming an issuer found.
#[derive(Debug, PartialEq)]
pub enum Claim {
    Claimed,
    AlreadyHeld,
    /// Another tenant's, at this version of the index item.
    HeldBy(TenantId, u64),
}

#[derive(Serialize, Deserialize)]
struct IssuerRecord {
    issuer: String,
    tenant: TenantId,
}

impl IssuerIndex {
    pub fn new(table: Arc<dyn Table>, cache_ttl: Duration) -> Self {
        Self { table, cache: WarmCache::new(Some(cache_ttl), 10_000) }
    }

    /// Gives `issuer` to `tenant` unless another tenant holds it.
    pub async fn claim(&self, issuer: &str, tenant: &TenantId) -> Result<Claim, KeelError> {
        self.cache.remove(issuer);
        match self.write(issuer, tenant, Condition::NotExists).await {
            Ok(()) => Ok(Claim::Claimed),
            Err(KeelError::Conflict(_)) => match self.read_versioned(issuer).await? {
                Some((owner, _)) if owner == *tenant => Ok(Claim::AlreadyHeld),
                Some((owner, version)) => Ok(Claim::HeldBy(owner, version)),
                // Released in between: try once more.
                None => self.write(issuer, tenant, Condition::NotExists).await.map(|()| Claim::Claimed),
            },
            Err(e) => Err(e),
        }
    }

    /// Moves `issuer` to `tenant` from a holder that no longer uses it, if
    /// the index item is still at `version`.
    pub async fn take_over(&self, issuer: &str, tenant: &TenantId, version: u64) -> Result<(), KeelError> {
        self.write(issuer, tenant, Condition::Version(version)).await?;
        self.cache.remove(issuer);
        Ok(())
    }

    async fn write(&self, issuer: &str, tenant: &TenantId, condition: Condition) -> Result<(), KeelError> {
        let data = serde_json::to_value(IssuerRecord { issuer: issuer.into(), tenant: tenant.clone() })?;
        self.table.put(Write { pk: crate::keys::PLATFORM.into(), sk: crate::keys::issuer(issuer), data, expires_at: None, condition }).await?;
        Ok(())
    }

    /// Lets go of `issuer` if `tenant` holds it.
    pub async fn release(&self, issuer: &str, tenant: &TenantId) -> Result<(), KeelError> {
        if self.read(issuer).await?.as_ref() == Some(tenant) {
            self.table.delete(crate::keys::PLATFORM, &crate::keys::issuer(issuer)).await?;
        }
        self.cache.remove(issuer);
        Ok(())
    }

    /// The tenant `issuer` signs in, through the warm cache. The caller still
    /// checks that tenant's own setting names the issuer: the index only routes.
    pub async fn tenant_of(&self, issuer: &str) -> Result<Option<TenantId>, KeelError> {
        if let Some(known) = self.cache.get(issuer) {
            return Ok(known);
        }
        let tenant = self.read(issuer).await?;
        self.cache.insert(issuer.to_string(), tenant.clone());
        Ok(tenant)
    }

    async fn read(&self, issuer: &str) -> Result<Option<TenantId>, KeelError> {
        Ok(self.read_versioned(issuer).await?.map(|(t, _)| t))
    }

    async fn read_versioned(&self, issuer: &str) -> Result<Option<(TenantId, u64)>, KeelError> {
        let record: Option<(IssuerRecord, u64)> = crate::ports::get_record(self.table.as_ref(), crate::keys::PLATFORM, &crate::keys::issuer(issuer)).await?;
        Ok(record.filter(|(r, _)| r.issuer == issuer).map(|(r, v)| (r.tenant, v)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn provider() -> IdentityProvider {
        serde_json::from_value(serde_json::json!({"issuer": "https://idp.acme.test", "jwks_uri": "https://idp.acme.test/jwks", "audience": "keel"})).unwrap()
    }

    /// A table that counts its reads and holds nothing.
    struct EmptyTable(std::sync::atomic::AtomicUsize);

    #[async_trait::async_trait]
    impl Table for EmptyTable {
        async fn get(&self, _: &str, _: &str) -> Result<Option<crate::ports::Item>, crate::StoreError> {
            self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            Ok(None)
        }
        async fn put(&self, _: Write) -> Result<u64, crate::StoreError> {
            Ok(1)
        }
        async fn put_all_adding(&self, _: Vec<Write>, _: Vec<crate::ports::Add>) -> Result<(), crate::StoreError> {
            Ok(())
        }
        async fn delete(&self, _: &str, _: &str) -> Result<(), crate::StoreError> {
            Ok(())
        }
        async fn purge_partition(&self, _: &str) -> Result<usize, crate::StoreError> {
            Ok(0)
        }
        async fn query(&self, _: &str, _: &str, _: crate::ports::QueryOptions) -> Result<Vec<crate::ports::Item>, crate::StoreError> {
            Ok(vec![])
        }
        async fn increment(&self, _: &str, _: &str, _: i64, _: Option<i64>, _: Option<i64>) -> Result<i64, crate::StoreError> {
            Ok(0)
        }
    }

    #[tokio::test]
    async fn an_unknown_issuer_is_remembered_as_unknown_until_one_claims_it() {
        let table = Arc::new(EmptyTable(Default::default()));
        let index = IssuerIndex::new(table.clone(), Duration::from_secs(60));
        for _ in 0..5 {
            assert_eq!(index.tenant_of("https://nobody.test").await.unwrap(), None);
        }
        assert_eq!(table.0.load(std::sync::atomic::Ordering::SeqCst), 1, "one read for five tokens of an unknown issuer");
        index.claim("https://nobody.test", &TenantId::parse("acme").unwrap()).await.unwrap();
        index.tenant_of("https://nobody.test").await.unwrap();
        assert_eq!(table.0.load(std::sync::atomic::Ordering::SeqCst), 2, "a claim in this process forgets the negative answer");
    }

    #[test]
    fn claims_default_to_sub_roles_and_groups() {
        let p = provider();
        assert_eq!((p.principal_claim.as_str(), p.roles_claim.as_str(), p.groups_claim.as_str()), ("sub", "roles", "groups"));
        assert!(p.validate().is_ok());
    }

    #[test]
    fn an_identity_with_a_blank_field_or_a_non_http_jwks_address_is_refused() {
        assert!(IdentityProvider { audience: " ".into(), ..provider() }.validate().is_err());
        assert!(IdentityProvider { jwks_uri: "file:///etc/passwd".into(), ..provider() }.validate().is_err());
        assert!(IdentityProvider { issuer: "x".repeat(MAX_IDENTITY_FIELD_CHARS + 1), ..provider() }.validate().is_err());
        let unknown = serde_json::json!({"issuer": "i", "jwks_uri": "https://j", "audience": "a", "jku": "https://evil"});
        assert!(serde_json::from_value::<IdentityProvider>(unknown).is_err());
    }
}
