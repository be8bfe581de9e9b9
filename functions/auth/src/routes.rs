//! The admin routes: tenants and their keys.

use crate::Auth;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::Method;
use keel_core::auth::Caller;
use keel_core::http::{parse_body, ApiResponse, Routes, DEFAULT_BODY_LIMIT};
use keel_core::ids::TenantId;
use keel_core::KeelError;
use std::sync::Arc;

type Reply = Result<ApiResponse, KeelError>;

pub fn routes() -> Routes<Arc<Auth>> {
    Routes::new()
        .route(Method::GET, "/v1/me", me)
        .route(Method::POST, "/v1/tenants", create_tenant)
        .route(Method::GET, "/v1/tenants/{id}", tenant)
        .route(Method::PATCH, "/v1/tenants/{id}", update_tenant)
        .route(Method::DELETE, "/v1/tenants/{id}", delete_tenant)
        .route(Method::POST, "/v1/tenants/{id}/keys", create_key)
        .route(Method::GET, "/v1/tenants/{id}/keys", keys)
        .route(Method::DELETE, "/v1/tenants/{id}/keys/{key_id}", revoke_key)
        .route(Method::POST, "/v1/tenants/{id}/keys/{key_id}/rotate", rotate_key)
        .route(Method::GET, "/v1/tenants/{id}/change-requests", change_requests)
        .route(Method::POST, "/v1/tenants/{id}/change-requests/{request_id}/{verb}", decide_change)
}

/// Who the credentials are: what a console shows and which views it offers.
async fn me(caller: Caller) -> Reply {
    Ok(ApiResponse::ok(&serde_json::json!({
        "tenant": caller.tenant, "principal": caller.principal, "roles": caller.roles, "groups": caller.groups,
        "platform_admin": caller.is_platform_admin(),
    })))
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
