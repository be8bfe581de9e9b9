//! Tenant sessions: per-tenant work runs with credentials scoped to that
//! tenant by IAM, not only by the keys Keel builds.
//!
//! A function assumes the tenant-access role (`KEEL_TENANT_ROLE_ARN`) with
//! the session tag `tenant=<id>`; that role's policy reaches only the
//! partition `T#<id>` and the objects under `tenants/<id>/`. Each call is
//! routed by the key it names: a tenant's partition or prefix goes through
//! that tenant's session, anything else (the `PLATFORM` partition, queues,
//! the saga) through the function's own role. So a bug that builds another
//! tenant's key still meets IAM's refusal. Sessions are cached per tenant in
//! a warm function and refreshed shortly before they expire.

use aws_config::identity::IdentityCache;
use aws_config::SdkConfig;
use aws_sdk_dynamodb::config::SharedCredentialsProvider;
use keel_core::ids::TenantId;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

/// The session tag every tenant-access policy condition reads.
pub const TENANT_TAG: &str = "tenant";

/// How long before expiry a tenant session is renewed.
const RENEW_BEFORE: Duration = Duration::from_secs(300);

/// Warm functions keep at most this many tenants' clients; past it the cache starts again.
const MAX_CACHED_TENANTS: usize = 1000;

/// The tenant a table partition key belongs to (`T#<tenant>`), if any.
pub fn tenant_of_partition(pk: &str) -> Option<TenantId> {
    pk.strip_prefix("T#").and_then(|t| TenantId::parse(t).ok())
}

/// The tenant an object key or listing prefix lies under
/// (`tenants/<tenant>/…`), if any: only a complete tenant segment counts.
pub fn tenant_of_object(key: &str) -> Option<TenantId> {
    let (tenant, _) = key.strip_prefix("tenants/")?.split_once('/')?;
    TenantId::parse(tenant).ok()
}

/// Builds SDK configs for tenant sessions from the function's own config.
pub struct TenantSessions {
    base: SdkConfig,
    role_arn: Option<String>,
}

impl TenantSessions {
    /// Sessions of `role_arn`; `None` (the local stack, moto tests of other
    /// things) uses the function's own credentials for every tenant.
    pub fn new(base: SdkConfig, role_arn: Option<String>) -> Self {
        Self { base, role_arn: role_arn.filter(|r| !r.is_empty()) }
    }

    pub fn base(&self) -> &SdkConfig {
        &self.base
    }

    pub fn is_scoped(&self) -> bool {
        self.role_arn.is_some()
    }

    /// The SDK config a tenant's calls use: the tenant-access role assumed
    /// with `tenant=<id>` as a session tag, its credentials cached until
    /// shortly before expiry.
    pub async fn config_for(&self, tenant: &TenantId) -> SdkConfig {
        let Some(role) = &self.role_arn else { return self.base.clone() };
        let provider = aws_config::sts::AssumeRoleProvider::builder(role)
            .session_name(tenant.as_str())
            .tags([(TENANT_TAG, tenant.as_str())])
            .configure(&self.base)
            .build()
            .await;
        self.base
            .to_builder()
            .credentials_provider(SharedCredentialsProvider::new(provider))
            .identity_cache(IdentityCache::lazy().buffer_time(RENEW_BEFORE).build())
            .build()
    }
}

/// Builds an SDK client from a config.
type MakeClient<C> = fn(&SdkConfig) -> C;

/// One SDK client per tenant session, plus the function's own, built on
/// first use and kept while the function is warm.
pub struct ScopedClients<C> {
    /// The sessions tenants' clients are made from, and how; `None`: the function's own for all.
    sessions: Option<(std::sync::Arc<TenantSessions>, MakeClient<C>)>,
    own: C,
    by_tenant: Mutex<HashMap<TenantId, C>>,
}

impl<C: Clone> ScopedClients<C> {
    /// Every call with `client`, whatever its tenant.
    pub fn fixed(client: C) -> Self {
        Self { sessions: None, own: client, by_tenant: Mutex::new(HashMap::new()) }
    }

    pub fn new(sessions: std::sync::Arc<TenantSessions>, make: MakeClient<C>) -> Self {
        let own = make(sessions.base());
        let sessions = sessions.is_scoped().then_some((sessions, make));
        Self { sessions, own, by_tenant: Mutex::new(HashMap::new()) }
    }

    /// The client for a call on `tenant`'s data, or the function's own for `None`.
    pub async fn client(&self, tenant: Option<&TenantId>) -> C {
        let (Some((sessions, make)), Some(tenant)) = (&self.sessions, tenant) else { return self.own.clone() };
        if let Some(c) = self.cached(tenant) {
            return c;
        }
        let client = make(&sessions.config_for(tenant).await);
        let mut map = self.by_tenant.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() >= MAX_CACHED_TENANTS {
            map.clear();
        }
        map.entry(tenant.clone()).or_insert(client).clone()
    }

    fn cached(&self, tenant: &TenantId) -> Option<C> {
        self.by_tenant.lock().unwrap_or_else(|p| p.into_inner()).get(tenant).cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_partition_names_its_tenant_and_nothing_else_does() {
        assert_eq!(tenant_of_partition("T#acme").map(|t| t.as_str().to_string()), Some("acme".into()));
        assert!(tenant_of_partition("PLATFORM").is_none());
        assert!(tenant_of_partition("T#").is_none());
        assert!(tenant_of_partition("T#acme#x").is_none(), "not a tenant id: the function's own role, which has no tenant data");
    }

    #[test]
    fn only_a_whole_tenant_segment_picks_a_session() {
        let t = |k: &str| tenant_of_object(k).map(|t| t.as_str().to_string());
        assert_eq!(t("tenants/acme/documents/a.json"), Some("acme".into()));
        assert_eq!(t("tenants/acme/"), Some("acme".into()));
        assert_eq!(t("tenants/acme"), None, "a prefix that would also list acme2's objects");
        assert_eq!(t("tenants/"), None);
        assert_eq!(t("other/acme/x"), None);
    }
}
