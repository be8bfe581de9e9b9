//! The admin routes: tenants and their keys.

use crate::Auth;
use keel_core::access::Access;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::Method;
use keel_core::auth::Caller;
use crate::keys::{NewKey, Rotation};
use crate::{NewTenant, TenantPatch};
use keel_core::http::{parse_body, ApiResponse, Routes, DEFAULT_BODY_LIMIT};
use keel_core::openapi::{object, schema, RouteDoc};
use keel_core::tenants::Tenant;
use keel_core::ids::TenantId;
use keel_core::KeelError;
use std::sync::Arc;

type Reply = Result<ApiResponse, KeelError>;

pub fn routes() -> Routes<Arc<Auth>> {
    Routes::new()
        .route(Method::GET, "/v1/me", me)
        .access(Access::Anyone, "")
        .doc(RouteDoc::new("Who the key or token is: tenant, principal, roles, groups").json(200, schema::<Me>))
        .route(Method::POST, "/v1/tenants", create_tenant)
        .access(Access::Platform, "")
        .doc(RouteDoc::new("Create a tenant (platform admin)").body(schema::<NewTenant>).json(201, schema::<Tenant>))
        .route(Method::GET, "/v1/tenants/{id}", tenant)
        .access(Access::TenantAdmin, "its own tenant")
        .doc(RouteDoc::new("Read a tenant (platform admin, the tenant's admins)").json(200, schema::<Tenant>))
        .route(Method::PATCH, "/v1/tenants/{id}", update_tenant)
        .access(Access::TenantAdmin, "its own tenant: a tenant admin changes autonomy and kill_switch only")
        .doc(RouteDoc::new("Change a tenant; 202 when the change waits for a second admin")
            .body(schema::<TenantPatch>).json(200, schema::<Tenant>).json(202, object))
        .route(Method::DELETE, "/v1/tenants/{id}", delete_tenant)
        .access(Access::Platform, "")
        .doc(RouteDoc::new("Off-board a tenant: every item and object of it, with a receipt").json(200, object))
        .route(Method::POST, "/v1/tenants/{id}/keys", create_key)
        .access(Access::TenantAdmin, "its own tenant")
        .doc(RouteDoc::new("A key for a principal (shown once)").body(schema::<NewKey>).json(201, object))
        .route(Method::GET, "/v1/tenants/{id}/keys", keys)
        .access(Access::TenantAdmin, "its own tenant")
        .doc(RouteDoc::new("The tenant's keys (never their secrets)").json(200, object))
        .route(Method::DELETE, "/v1/tenants/{id}/keys/{key_id}", revoke_key)
        .access(Access::TenantAdmin, "its own tenant")
        .doc(RouteDoc::new("Revoke a key").json(200, object))
        .route(Method::POST, "/v1/tenants/{id}/keys/{key_id}/rotate", rotate_key)
        .access(Access::TenantAdmin, "its own tenant")
        .doc(RouteDoc::new("A new key for the same principal; the old one works for grace_seconds").body(schema::<Rotation>).json(201, object))
        .route(Method::GET, "/v1/tenants/{id}/change-requests", change_requests)
        .access(Access::TenantAdmin, "its own tenant")
        .doc(RouteDoc::new("Changes waiting for a second admin").json(200, object))
        .route(Method::POST, "/v1/tenants/{id}/change-requests/{request_id}/{verb}", decide_change)
        .access(Access::TenantAdmin, "its own tenant; not a change it requested, to approve")
        .doc(RouteDoc::new("Approve or reject a waiting change (verb: approve or reject)").json(200, object))
}

/// `GET /v1/me`'s answer.
#[derive(serde::Serialize, schemars::JsonSchema)]
struct Me {
    tenant: Option<String>,
    principal: String,
    roles: Vec<String>,
    groups: Vec<String>,
    platform_admin: bool,
}

/// Who the credentials are: what a console shows and which views it offers.
async fn me(caller: Caller) -> Reply {
    let me = Me { platform_admin: caller.is_platform_admin(), tenant: caller.tenant.map(|t| t.to_string()), principal: caller.principal, roles: caller.roles, groups: caller.groups };
    Ok(ApiResponse::ok(&me))
}

async fn create_tenant(State(auth): State<Arc<Auth>>, caller: Caller, body: Bytes) -> Reply {
    auth.create_tenant(&caller, parse_body(&body, DEFAULT_BODY_LIMIT)?).await
}

async fn tenant(State(auth): State<Arc<Auth>>, caller: Caller, Path(id): Path<String>) -> Reply {
    auth.tenant(&caller, TenantId::parse(&id)?).await
}

async fn update_tenant(State(auth): State<Arc<Auth>>, caller: Caller, Path(id): Path<String>, body: Bytes) -> Reply {
    let id = TenantId::parse(&id)?;
    auth.update_tenant(&caller, id, parse_body(&body, DEFAULT_BODY_LIMIT)?).await
}

async fn delete_tenant(State(auth): State<Arc<Auth>>, caller: Caller, Path(id): Path<String>) -> Reply {
    auth.delete_tenant(&caller, TenantId::parse(&id)?).await
}

async fn create_key(State(auth): State<Arc<Auth>>, caller: Caller, Path(id): Path<String>, body: Bytes) -> Reply {
    let id = TenantId::parse(&id)?;
    auth.create_key(&caller, id, parse_body(&body, DEFAULT_BODY_LIMIT)?).await
}

async fn keys(State(auth): State<Arc<Auth>>, caller: Caller, Path(id): Path<String>) -> Reply {
    auth.keys(&caller, TenantId::parse(&id)?).await
}

async fn revoke_key(State(auth): State<Arc<Auth>>, caller: Caller, Path((id, key_id)): Path<(String, String)>) -> Reply {
    auth.revoke_key(&caller, TenantId::parse(&id)?, &key_id).await
}

async fn rotate_key(State(auth): State<Arc<Auth>>, caller: Caller, Path((id, key_id)): Path<(String, String)>, body: Bytes) -> Reply {
    let id = TenantId::parse(&id)?;
    auth.rotate_key(&caller, id, &key_id, parse_body(&body, DEFAULT_BODY_LIMIT)?).await
}

async fn change_requests(State(auth): State<Arc<Auth>>, caller: Caller, Path(id): Path<String>) -> Reply {
    auth.change_requests(&caller, TenantId::parse(&id)?).await
}

async fn decide_change(State(auth): State<Arc<Auth>>, caller: Caller, Path((id, request_id, verb)): Path<(String, String, String)>) -> Reply {
    let approve = match verb.as_str() {
        "approve" => true,
        "reject" => false,
        _ => return Err(KeelError::NotFound(format!("no route for POST /v1/tenants/{id}/change-requests/{request_id}/{verb}"))),
    };
    auth.decide_change(&caller, TenantId::parse(&id)?, &request_id, approve).await
}
