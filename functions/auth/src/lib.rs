//! auth: the HTTP API Lambda authorizer (API keys, tenants' identity
//! providers' tokens and the platform's HS256 tokens, tenant status) and
//! the admin routes (tenants and keys).

mod changes;
pub mod console;
pub mod edge;
pub mod identity;
pub mod jwks;
mod keys;
mod offboard;
pub mod oidc;
pub mod lambda;
pub mod routes;

use keel_core::api_keys::KeyAuthenticator;
use keel_core::auth::{secrets_equal, Caller, ROLE_ADMIN};
use keel_core::egress::EgressPins;
use keel_core::identity::{IdentityProvider, IssuerIndex};
use keel_core::config::Config;
use keel_core::http::ApiResponse;
use keel_core::ids::TenantId;
use keel_core::models::{Budgets, RoutingPolicy};
use keel_core::decisions::{admin_change_event, AdminChange};
use keel_core::change_requests::{submit, ChangeRequest, ChangeRequestStore, Requester};
use keel_core::ports::{BlobStore, Table, WorkQueue};
use serde_json::Value;
use keel_core::tenants::{Autonomy, Governance, Retention, Tenant, TenantStatus, TenantStore};
use keel_core::time::now_rfc3339;
use keel_core::KeelError;
use serde::Deserialize;
use std::sync::Arc;

pub struct Auth {
    config: Arc<Config>,
    table: Arc<dyn Table>,
    blobs: Arc<dyn BlobStore>,
    tenants: Arc<TenantStore>,
    keys: Arc<KeyAuthenticator>,
    /// The audit queue: admin changes land in the tenant's decision chain.
    queue: Arc<dyn WorkQueue>,
    change_requests: ChangeRequestStore,
    issuers: Arc<IssuerIndex>,
    provider_tokens: oidc::ProviderTokens,
}

impl Auth {
    /// `tenants` and `keys` may be shared with other functions of the same
    /// process (the local stack), so that a change reaches them at once.
    pub fn new(table: Arc<dyn Table>, blobs: Arc<dyn BlobStore>, queue: Arc<dyn WorkQueue>, config: Arc<Config>, tenants: Arc<TenantStore>, keys: Arc<KeyAuthenticator>) -> Result<Self, KeelError> {
        let change_requests = ChangeRequestStore::new(table.clone());
        let issuers = Arc::new(IssuerIndex::new(table.clone(), std::time::Duration::from_secs(config.tenant_cache_secs)));
        let jwks = jwks::JwksCache::new(config.egress.clone())?;
        let provider_tokens = oidc::ProviderTokens::new(issuers.clone(), tenants.clone(), jwks);
        Ok(Self { config, table, blobs, tenants, keys, queue, change_requests, issuers, provider_tokens })
    }

    /// Records an admin's change in the tenant's decision chain (secrets left out by the caller).
    pub(crate) async fn record(&self, caller: &Caller, tenant: &TenantId, change: AdminChange, target: &str, before: Value, after: Value) -> Result<(), KeelError> {
        let event = admin_change_event(&caller.principal, change, target, before, after);
        // The platform admin's request names no incarnation: the event is for the tenant's current one.
        let mut context = keel_core::trace::current();
        if let Some(c) = context.as_mut().filter(|c| c.incarnation.is_none()) {
            c.incarnation = self.tenants.cached(tenant).await?.map(|t| t.incarnation().to_string());
        }
        keel_core::decisions::send_decision_in(self.queue.as_ref(), tenant, &event, context.as_ref()).await
    }

    /// Authenticates a request. `Err` is a denial (401 no/invalid credentials,
    /// 403 suspended tenant). It makes no store call for a key or tenant this
    /// container trusts (`KEEL_TENANT_CACHE_SECS`), so the HTTP API may cache
    /// its answer as long; the rate limit is counted where the request goes
    /// (`keel_core::rate`).
    pub async fn authorize(&self, authorization: Option<&str>) -> Result<Caller, KeelError> {
        let token = authorization
            .unwrap_or("")
            .strip_prefix("Bearer ")
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| KeelError::Unauthorized("missing credentials: send 'Authorization: Bearer <key>'".into()))?;
        if self.config.admin_key.as_deref().is_some_and(|admin| secrets_equal(token, admin)) {
            return Ok(Caller::platform_admin());
        }
        let mut caller = if token.starts_with("keel_") {
            self.keys.caller(token).await?
        } else if token.contains('.') {
            self.authenticate_jwt(token).await?
        } else {
            return Err(KeelError::Unauthorized("invalid credentials".into()));
        };
        let tenant = self.active_tenant(caller.tenant()?).await?;
        caller.incarnation = Some(tenant.incarnation().to_string());
        Ok(caller)
    }

    async fn active_tenant(&self, id: &TenantId) -> Result<Tenant, KeelError> {
        let tenant = self
            .tenants
            .cached(id)
            .await?
            .ok_or_else(|| KeelError::Unauthorized("invalid credentials".into()))?;
        if tenant.status != TenantStatus::Active {
            return Err(KeelError::Forbidden(format!("tenant {id} is suspended")));
        }
        Ok(tenant)
    }

    /// Admin routes: `/v1/tenants…`.
    pub(crate) async fn create_tenant(&self, caller: &Caller, body: NewTenant) -> Result<ApiResponse, KeelError> {
        require_platform_admin(caller)?;
        let tenant = Tenant {
            id: TenantId::parse(&body.id)?,
            name: body.name,
            plan: body.plan.unwrap_or_else(|| "standard".into()),
            region: body.region,
            status: TenantStatus::Active,
            rate_limit_per_minute: body.rate_limit_per_minute.unwrap_or(self.config.default_rate_limit_per_minute),
            autonomy: body.autonomy.unwrap_or(Autonomy::OneClick),
            redact_pii: body.redact_pii.unwrap_or(false),
            routing: body.routing.unwrap_or_default(),
            budgets: body.budgets.unwrap_or_default(),
            kill_switch: false,
            governance: body.governance.unwrap_or_default(),
            identity: body.identity,
            egress: body.egress,
            retention: body.retention.unwrap_or_default(),
            created_at: now_rfc3339(),
            incarnation: keel_core::tenants::new_incarnation(),
        };
        tenant.validate_settings(&self.config.models)?;
        self.id_reusable(&tenant.id).await?;
        if let Some(identity) = &tenant.identity {
            self.provider_tokens.jwks().vet(&identity.jwks_uri).await?;
        }
        let claimed = self.claim_issuer(&tenant.id, None, tenant.identity.as_ref()).await?;
        if let Err(e) = self.tenants.create(&tenant).await {
            self.unclaim_issuer(&tenant.id, claimed).await;
            return Err(e);
        }
        self.record(caller, &tenant.id, AdminChange::TenantCreated, "tenant", Value::Null, serde_json::to_value(&tenant)?).await?;
        Ok(ApiResponse::json(201, &tenant))
    }

    pub(crate) async fn tenant(&self, caller: &Caller, id: TenantId) -> Result<ApiResponse, KeelError> {
        require_tenant_admin(caller, &id)?;
        let (t, _) = self.tenants.get(&id).await?.ok_or_else(|| tenant_not_found(&id))?;
        Ok(ApiResponse::ok(&t))
    }

    pub(crate) async fn update_tenant(&self, caller: &Caller, id: TenantId, patch: TenantPatch) -> Result<ApiResponse, KeelError> {
        require_tenant_admin(caller, &id)?;
        if !caller.is_platform_admin() && !patch.only_controls() {
            return Err(KeelError::Forbidden(
                "a tenant's admins may change its autonomy and kill switch; other settings take the platform admin".into(),
            ));
        }
        let (current, version) = self.tenants.get(&id).await?.ok_or_else(|| tenant_not_found(&id))?;
        let mut t = current.clone();
        if let Some(v) = patch.name {
            t.name = v;
        }
        if let Some(v) = patch.plan {
            t.plan = v;
        }
        if let Some(v) = patch.status {
            t.status = v;
        }
        if let Some(v) = patch.rate_limit_per_minute {
            t.rate_limit_per_minute = v;
        }
        if let Some(v) = patch.autonomy {
            t.autonomy = v;
        }
        if let Some(v) = patch.redact_pii {
            t.redact_pii = v;
        }
        if let Some(v) = patch.routing {
            t.routing = v;
        }
        if let Some(v) = patch.budgets {
            t.budgets = v;
        }
        if let Some(v) = patch.governance {
            t.governance = v;
        }
        if let Some(v) = patch.identity {
            t.identity = v;
        }
        if let Some(v) = patch.egress {
            t.egress = v;
        }
        if let Some(v) = patch.retention {
            t.retention = v;
        }
        // On: actions drop to suggest-only and hosted models stop at once.
        // Off: models resume; autonomy is raised again only explicitly.
        match patch.kill_switch {
            Some(true) => {
                t.autonomy = Autonomy::SuggestOnly;
                t.kill_switch = true;
            }
            Some(false) => t.kill_switch = false,
            None => {}
        }
        t.validate_settings(&self.config.models)?;
        if let Some(identity) = t.identity.as_ref().filter(|i| current.identity.as_ref().is_none_or(|c| c.jwks_uri != i.jwks_uri)) {
            self.provider_tokens.jwks().vet(&identity.jwks_uri).await?;
        }
        let (before, after) = (serde_json::to_value(&current)?, serde_json::to_value(&t)?);
        // A held change claims nothing yet: its issuer is claimed when it is approved.
        if let Some(reason) = current.weakened_by(&t).filter(|_| current.governance.two_person_changes) {
            let write = self.tenants.pending_update(&t, version)?;
            let reason = format!("{reason}, and tenant {id} asks for two-person changes");
            let request = ChangeRequest::new(AdminChange::TenantUpdated, "tenant".into(), reason, Requester::of(caller), before, after, write);
            return submit(&self.change_requests, self.queue.as_ref(), &id, request).await;
        }
        let claimed = self.claim_issuer(&id, current.identity.as_ref(), t.identity.as_ref()).await?;
        if let Err(e) = self.tenants.update(&t, version).await {
            self.unclaim_issuer(&id, claimed).await;
            return Err(e);
        }
        self.release_issuer(&id, current.identity.as_ref(), t.identity.as_ref()).await?;
        self.redact_stored_if_turned_on(&id, &before, &after).await?;
        self.record(caller, &id, AdminChange::TenantUpdated, "tenant", before, after).await?;
        Ok(ApiResponse::ok(&t))
    }

    /// Turning `redact_pii` on redacts what the tenant already stored, too.
    pub(crate) async fn redact_stored_if_turned_on(&self, id: &TenantId, before: &Value, after: &Value) -> Result<(), KeelError> {
        if before["redact_pii"] != Value::Bool(true) && after["redact_pii"] == Value::Bool(true) {
            let incarnation = after["incarnation"].as_str().unwrap_or_default();
            keel_core::tasks::request_redaction(self.queue.as_ref(), id, incarnation, None).await?;
        }
        Ok(())
    }
}

pub(crate) fn require_platform_admin(caller: &Caller) -> Result<(), KeelError> {
    if caller.is_platform_admin() {
        Ok(())
    } else {
        Err(KeelError::Forbidden("only the platform admin may do this".into()))
    }
}

/// The platform admin, or an admin of this very tenant.
pub(crate) fn require_tenant_admin(caller: &Caller, id: &TenantId) -> Result<(), KeelError> {
    if caller.is_platform_admin() || (caller.tenant.as_ref() == Some(id) && caller.has_role(ROLE_ADMIN)) {
        Ok(())
    } else {
        Err(KeelError::Forbidden("only the platform admin or this tenant's admin may do this".into()))
    }
}

pub(crate) fn tenant_not_found(id: &TenantId) -> KeelError {
    KeelError::NotFound(format!("tenant {id} does not exist"))
}

#[derive(Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct NewTenant {
    id: String,
    name: String,
    plan: Option<String>,
    region: Option<String>,
    rate_limit_per_minute: Option<i64>,
    autonomy: Option<Autonomy>,
    redact_pii: Option<bool>,
    routing: Option<RoutingPolicy>,
    budgets: Option<Budgets>,
    governance: Option<Governance>,
    identity: Option<IdentityProvider>,
    egress: Option<EgressPins>,
    retention: Option<Retention>,
}

#[derive(Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct TenantPatch {
    name: Option<String>,
    plan: Option<String>,
    status: Option<TenantStatus>,
    rate_limit_per_minute: Option<i64>,
    autonomy: Option<Autonomy>,
    redact_pii: Option<bool>,
    routing: Option<RoutingPolicy>,
    budgets: Option<Budgets>,
    governance: Option<Governance>,
    /// The tenant's identity provider; `null` removes it.
    #[serde(default, deserialize_with = "present")]
    identity: Option<Option<IdentityProvider>>,
    /// The hosts the tenant's connectors may call; `null` unpins it.
    #[serde(default, deserialize_with = "present")]
    egress: Option<Option<EgressPins>>,
    retention: Option<Retention>,
    /// Drops the tenant to suggest-only and stops its hosted model calls at once.
    kill_switch: Option<bool>,
}

impl TenantPatch {
    /// Whether it changes only the tenant's own controls: autonomy and the kill switch.
    fn only_controls(&self) -> bool {
        let Self { name, plan, status, rate_limit_per_minute, autonomy: _, redact_pii, routing, budgets, governance, identity, egress, retention, kill_switch: _ } = self;
        name.is_none()
            && plan.is_none()
            && status.is_none()
            && rate_limit_per_minute.is_none()
            && redact_pii.is_none()
            && routing.is_none()
            && budgets.is_none()
            && governance.is_none()
            && identity.is_none()
            && egress.is_none()
            && retention.is_none()
    }
}

/// Tells a field sent as `null` (`Some(None)`) from one left out (`None`).
fn present<'de, D: serde::Deserializer<'de>, T: Deserialize<'de>>(d: D) -> Result<Option<T>, D::Error> {
    T::deserialize(d).map(Some)
}
