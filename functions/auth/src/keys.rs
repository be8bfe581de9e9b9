//! API keys and their lifecycle: a tenant's admins create keys (with an
//! optional expiry), list them (never the secret), revoke one (at once in
//! this process; within `KEEL_TENANT_CACHE_SECS` in other warm functions),
//! and rotate one: a new key with the same principal and roles, while the
//! old one lives on for a grace period the caller picks. Each key records who
//! issued it. Where a tenant asks for two-person changes, a tenant admin's key
//! that grants privilege (admin or approver, or named after another existing
//! principal) signs nobody in until a second admin approves it, and such keys
//! are not rotated (revoke and create instead).

use crate::{require_tenant_admin, tenant_not_found, Auth};
use keel_core::auth::{api_key_id, api_key_prefix, check_tenant_principal, is_context_name, new_api_key, same_person, ApiKeyRecord, Caller, ROLE_ADMIN, ROLE_APPROVER, TENANT_ROLES};
use keel_core::change_requests::{submit, ChangeRequest, Requester};
use keel_core::http::ApiResponse;
use keel_core::ids::TenantId;
use keel_core::api_keys::StoredKey;
use keel_core::time::now_rfc3339;
use keel_core::decisions::AdminChange;
use keel_core::KeelError;
use serde::Deserialize;
use serde_json::{json, Value};
use std::collections::HashMap;

/// Longest grace period a rotated key may keep working.
pub const MAX_ROTATION_GRACE_SECS: u64 = 30 * 24 * 3600;

#[derive(Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct NewKey {
    principal: String,
    roles: Vec<String>,
    attributes: Option<HashMap<String, Value>>,
    /// RFC 3339, in the future.
    expires_at: Option<String>,
}

#[derive(Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct Rotation {
    /// How long the old key keeps working (0: it stops at once).
    grace_seconds: u64,
    /// The new key's expiry, RFC 3339, in the future.
    expires_at: Option<String>,
}

impl Auth {
    pub(crate) async fn create_key(&self, caller: &Caller, id: TenantId, body: NewKey) -> Result<ApiResponse, KeelError> {
        require_tenant_admin(caller, &id)?;
        let (tenant, _) = self.tenants.get(&id).await?.ok_or_else(|| tenant_not_found(&id))?;
        check_tenant_principal(&body.principal)?;
        check_roles(&body.roles)?;
        let attributes = body.attributes.unwrap_or_default();
        if let Some(Value::Array(groups)) = attributes.get("groups") {
            if !groups.iter().all(|g| g.as_str().is_some_and(is_context_name)) {
                return Err(KeelError::BadRequest("groups must be non-empty names without commas".into()));
            }
        }
        let expires_at = body.expires_at.as_deref().map(future_time).transpose()?;
        let grant = self.grants_privilege(caller, &id, &body.principal, &body.roles).await?.filter(|_| tenant.governance.two_person_changes);
        let record = ApiKeyRecord { principal: body.principal, roles: body.roles, attributes, expires_at, issued_by: Some(caller.principal.clone()), ..blank() };
        if let Some(reason) = grant {
            return self.create_held_key(caller, &id, record, reason).await;
        }
        let (key, record) = self.issue(&id, record).await?;
        let out = issued(&id, &key, &record);
        let key_id = out["id"].as_str().unwrap_or_default().to_string();
        self.record(caller, &id, AdminChange::KeyCreated, &format!("key {key_id}"), Value::Null, public(&out)).await?;
        Ok(ApiResponse::json(201, &out))
    }

    /// Why a key for `principal` with `roles`, made by `caller`, grants
    /// privilege: the admin or approver role, or another existing principal's
    /// name (a key named after someone else). The platform admin, who makes a
    /// tenant's first keys, grants none by this rule.
    async fn grants_privilege(&self, caller: &Caller, id: &TenantId, principal: &str, roles: &[String]) -> Result<Option<String>, KeelError> {
        if caller.is_platform_admin() {
            return Ok(None);
        }
        if let Some(role) = privileged_role(roles) {
            return Ok(Some(format!("it grants the {role} role")));
        }
        let existing = self.keys.store().list(id).await?;
        let someone_else = !same_person(principal, &caller.principal) && existing.iter().any(|k| same_person(&k.record.principal, principal));
        Ok(someone_else.then(|| format!("it is a key for {principal}, an existing principal other than its maker")))
    }

    /// A privileged key under two-person changes: made at once but signing
    /// nobody in until a second admin approves; its secret is shown to its
    /// maker now, once, as for any key.
    async fn create_held_key(&self, caller: &Caller, id: &TenantId, record: ApiKeyRecord, reason: String) -> Result<ApiResponse, KeelError> {
        let request_id = keel_core::ids::new_id("chg");
        let (key, held) = self.issue(id, ApiKeyRecord { pending: Some(request_id.clone()), ..record }).await?;
        let out = issued(id, &key, &held);
        let key_id = out["id"].as_str().unwrap_or_default().to_string();
        let write = self.keys.store().pending_activation(&key, &held)?;
        let reason = format!("{reason}, and tenant {id} asks for two-person changes");
        let mut request = ChangeRequest::new(AdminChange::KeyCreated, format!("key {key_id}"), reason, Requester::of(caller), Value::Null, public(&out), write);
        request.id = request_id;
        let answer = submit(&self.change_requests, self.queue.as_ref(), id, request).await?;
        let mut body: Value = serde_json::from_slice(&answer.body)?;
        body["key"] = out;
        Ok(ApiResponse::json(202, &body))
    }

    /// `GET /v1/tenants/{id}/keys`: every key, oldest first, without secrets.
    pub(crate) async fn keys(&self, caller: &Caller, id: TenantId) -> Result<ApiResponse, KeelError> {
        require_tenant_admin(caller, &id)?;
        self.tenants.get(&id).await?.ok_or_else(|| tenant_not_found(&id))?;
        let mut keys = self.keys.store().list(&id).await?;
        keys.sort_by(|a, b| a.record.created_at.cmp(&b.record.created_at));
        Ok(ApiResponse::ok(&json!({"keys": keys.iter().map(listed).collect::<Vec<_>>()})))
    }

    /// `DELETE /v1/tenants/{id}/keys/{key_id}`.
    pub(crate) async fn revoke_key(&self, caller: &Caller, id: TenantId, key_id: &str) -> Result<ApiResponse, KeelError> {
        require_tenant_admin(caller, &id)?;
        let key = self.keys.store().find(&id, key_id).await?.ok_or_else(|| key_not_found(key_id))?;
        self.keys.store().delete(&id, &key.hash).await?;
        self.keys.forget(&key.hash);
        self.record(caller, &id, AdminChange::KeyRevoked, &format!("key {key_id}"), listed(&key), Value::Null).await?;
        Ok(ApiResponse::ok(&json!({"revoked": key_id})))
    }

    /// `POST /v1/tenants/{id}/keys/{key_id}/rotate`: a new key for the same
    /// principal, roles and attributes; the old one expires after the grace period.
    pub(crate) async fn rotate_key(&self, caller: &Caller, id: TenantId, key_id: &str, body: Rotation) -> Result<ApiResponse, KeelError> {
        require_tenant_admin(caller, &id)?;
        let (tenant, _) = self.tenants.get(&id).await?.ok_or_else(|| tenant_not_found(&id))?;
        if body.grace_seconds > MAX_ROTATION_GRACE_SECS {
            return Err(KeelError::BadRequest(format!("grace_seconds must be at most {MAX_ROTATION_GRACE_SECS}")));
        }
        let expires_at = body.expires_at.as_deref().map(future_time).transpose()?;
        let mut old = self.keys.store().find(&id, key_id).await?.ok_or_else(|| key_not_found(key_id))?;
        let mine = same_person(&old.record.principal, &caller.principal);
        let privileged = privileged_role(&old.record.roles).is_some();
        if tenant.governance.two_person_changes && !caller.is_platform_admin() && (privileged || !mine) {
            return Err(KeelError::Forbidden(format!(
                "rotating key {key_id} (privileged, or another principal's) would grant its new key without a second admin; \
                 revoke it and create a new key, which waits for one"
            )));
        }
        let before = listed(&old);
        let now = chrono::Utc::now();
        if old.record.expired(now) {
            return Err(KeelError::Conflict(format!("key {key_id} has expired; create a new key instead")));
        }
        let grace_end = now + chrono::Duration::seconds(i64::try_from(body.grace_seconds).unwrap_or(i64::MAX));
        // The old key never lives longer than it was going to anyway.
        if old.record.expires_at.as_deref().and_then(parse_time).is_none_or(|t| t > grace_end) {
            old.record.expires_at = Some(grace_end.to_rfc3339_opts(chrono::SecondsFormat::Secs, true));
        }
        let (principal, roles, attributes) = (old.record.principal.clone(), old.record.roles.clone(), old.record.attributes.clone());
        let (key, record) = self.issue(&id, ApiKeyRecord { principal, roles, attributes, expires_at, issued_by: Some(caller.principal.clone()), ..blank() }).await?;
        self.keys.store().update(&id, &old).await.map_err(|_| KeelError::Conflict(format!("key {key_id} changed or was revoked meanwhile")))?;
        self.keys.forget(&old.hash);
        let mut out = issued(&id, &key, &record);
        out["replaces"] = json!({"id": key_id, "expires_at": old.record.expires_at});
        let after = json!({"old": listed(&old), "new": public(&out)});
        self.record(caller, &id, AdminChange::KeyRotated, &format!("key {key_id}"), before, after).await?;
        Ok(ApiResponse::json(201, &out))
    }

    async fn issue(&self, id: &TenantId, record: ApiKeyRecord) -> Result<(String, ApiKeyRecord), KeelError> {
        let key = new_api_key(id);
        let record = ApiKeyRecord { prefix: api_key_prefix(&key), created_at: now_rfc3339(), ..record };
        self.keys.store().create(id, &key, &record).await?;
        Ok((key, record))
    }
}

fn blank() -> ApiKeyRecord {
    ApiKeyRecord {
        principal: String::new(),
        roles: vec![],
        attributes: HashMap::new(),
        created_at: String::new(),
        prefix: String::new(),
        expires_at: None,
        last_used_at: None,
        issued_by: None,
        pending: None,
    }
}

/// The role among `roles` that makes a key privileged (it reviews or administers), if any.
fn privileged_role(roles: &[String]) -> Option<&String> {
    roles.iter().find(|r| *r == ROLE_ADMIN || *r == ROLE_APPROVER)
}

fn check_roles(roles: &[String]) -> Result<(), KeelError> {
    if roles.is_empty() {
        return Err(KeelError::BadRequest("roles must name at least one role".into()));
    }
    match roles.iter().find(|r| !TENANT_ROLES.contains(&r.as_str())) {
        Some(bad) => Err(KeelError::BadRequest(format!("unknown role {bad:?}: use one of {}", TENANT_ROLES.join(", ")))),
        None => Ok(()),
    }
}

fn parse_time(t: &str) -> Option<chrono::DateTime<chrono::Utc>> {
    chrono::DateTime::parse_from_rfc3339(t).ok().map(|t| t.with_timezone(&chrono::Utc))
}

/// An expiry as given: RFC 3339 and in the future; returned normalized to UTC.
fn future_time(t: &str) -> Result<String, KeelError> {
    match parse_time(t) {
        Some(at) if at > chrono::Utc::now() => Ok(at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)),
        Some(_) => Err(KeelError::BadRequest("expires_at must be in the future".into())),
        None => Err(KeelError::BadRequest("expires_at must be an RFC 3339 time, e.g. 2027-01-31T12:00:00Z".into())),
    }
}

/// A new key as its creator sees it, the only time the secret is shown.
fn issued(id: &TenantId, key: &str, record: &ApiKeyRecord) -> Value {
    json!({"key": key, "id": api_key_id(&keel_core::auth::hash_api_key(key)), "tenant": id, "principal": record.principal,
        "roles": record.roles, "attributes": record.attributes, "prefix": record.prefix, "expires_at": record.expires_at})
}

/// An issued key as the chain records it: everything but the secret.
fn public(issued: &Value) -> Value {
    let mut out = issued.clone();
    if let Some(o) = out.as_object_mut() {
        o.remove("key");
    }
    out
}

fn listed(key: &StoredKey) -> Value {
    let r = &key.record;
    json!({"id": api_key_id(&key.hash), "prefix": r.prefix, "principal": r.principal, "roles": r.roles,
        "created_at": r.created_at, "last_used_at": r.last_used_at, "expires_at": r.expires_at, "issued_by": r.issued_by, "pending": r.pending})
}

fn key_not_found(key_id: &str) -> KeelError {
    KeelError::NotFound(format!("key {key_id} not found"))
}
