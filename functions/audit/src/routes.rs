//! Audit's routes: decisions, the chain's verification and export, usage.

use crate::listing::DecisionQuery;
use crate::Audit;
use axum::extract::{Path, State};
use axum::http::Method;
use keel_core::auth::Caller;
use axum::body::Bytes;
use keel_core::http::{parse_body, ApiResponse, QueryMap, Routes, DEFAULT_BODY_LIMIT};
use keel_core::ids::parse_path_id;
use keel_core::KeelError;
use std::sync::Arc;

type Reply = Result<ApiResponse, KeelError>;

pub fn routes() -> Routes<Arc<Audit>> {
    Routes::new()
        .route(Method::GET, "/v1/decisions", decisions)
        .route(Method::GET, "/v1/decisions/{id}", decision)
        .route(Method::POST, "/v1/audit/verify", verify)
        .route(Method::GET, "/v1/audit/export", export)
        .route(Method::GET, "/v1/usage", usage)
        .route(Method::GET, "/v1/alerts", alerts)
        .route(Method::GET, "/v1/slo", slo)
        .route(Method::PUT, "/v1/alerts/webhook", put_webhook)
}

async fn decision(State(audit): State<Arc<Audit>>, caller: Caller, Path(id): Path<String>) -> Reply {
    caller.tenant()?;
    audit.decision(&caller, &parse_path_id("decision", &id)?).await
}

/// `?request_id=`: what one request decided; otherwise a page of the
/// events the caller may read (`?kind=&principal=&since=&limit=&cursor=`).
async fn decisions(State(audit): State<Arc<Audit>>, caller: Caller, QueryMap(query): QueryMap) -> Reply {
    match query.get("request_id") {
        Some(request_id) => audit.decisions_of_request(&caller, request_id).await,
        None => audit.list_decisions(&caller, DecisionQuery::parse(&query)?).await,
    }
}

async fn verify(State(audit): State<Arc<Audit>>, caller: Caller) -> Reply {
    audit.verify(caller.tenant()?).await
}

async fn export(State(audit): State<Arc<Audit>>, caller: Caller, QueryMap(query): QueryMap) -> Reply {
    let tenant = caller.tenant()?;
    if !caller.reads_all_decisions() {
        return Err(KeelError::Forbidden("exporting the audit log takes the admin or auditor role".into()));
    }
    audit.export(tenant, query.get("from").map(String::as_str), query.get("to").map(String::as_str)).await
}

async fn usage(State(audit): State<Arc<Audit>>, caller: Caller, QueryMap(query): QueryMap) -> Reply {
    audit.usage(caller.tenant()?, query.get("from").map(String::as_str), query.get("to").map(String::as_str)).await
}

async fn alerts(State(audit): State<Arc<Audit>>, caller: Caller) -> Reply {
    audit.alerts(caller.tenant()?).await
}

async fn put_webhook(State(audit): State<Arc<Audit>>, caller: Caller, body: Bytes) -> Reply {
    audit.put_webhook(&caller, parse_body(&body, DEFAULT_BODY_LIMIT)?).await
}

async fn slo(State(audit): State<Arc<Audit>>, caller: Caller) -> Reply {
    audit.slo(caller.tenant()?).await
}
