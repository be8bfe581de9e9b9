//! Audit's routes: decisions, the chain's verification and export, usage.

use crate::listing::{Decision, DecisionPage, DecisionQuery};
use keel_core::access::{Access, ADMINS, OVERSEERS, TenantRole};
use crate::Audit;
use axum::extract::{Path, State};
use axum::http::Method;
use keel_core::auth::Caller;
use axum::body::Bytes;
use keel_core::http::{parse_body, ApiResponse, QueryMap, Routes, DEFAULT_BODY_LIMIT};
use keel_core::ids::parse_path_id;
use keel_core::openapi::{object, schema, text, RouteDoc};
use keel_core::KeelError;
use std::sync::Arc;

type Reply = Result<ApiResponse, KeelError>;

pub fn routes() -> Routes<Arc<Audit>> {
    Routes::new()
        .route(Method::GET, "/v1/decisions", decisions)
        .access(Access::Tenant, "admins and auditors every event; others their own")
        .doc(RouteDoc::new("The decisions one request made, or a page of decision events newest first")
            .query("request_id", "the request's id").query("kind", "e.g. ask, chat, action.proposed").query("principal", "whose events")
            .query("since", "RFC 3339").query("limit", "1 to 200 (default 50)").query("cursor", "next_cursor of the previous page")
            .json(200, decisions_answer))
        .route(Method::GET, "/v1/decisions/{id}", decision)
        .access(Access::Tenant, "admins and auditors any decision; others those they made")
        .doc(RouteDoc::new("One decision's events").json(200, schema::<Decision>))
        .route(Method::POST, "/v1/audit/verify", verify)
        .access(Access::Roles(OVERSEERS), "counts and hashes only")
        .doc(RouteDoc::new("Verify the tenant's hash chain").json(200, object))
        .route(Method::GET, "/v1/audit/export", export)
        .access(Access::Roles(&[TenantRole::Admin, TenantRole::Auditor]), "")
        .doc(RouteDoc::new("The decision log as JSON Lines (admins, auditors)").query("from", "RFC 3339").query("to", "RFC 3339")
            .reply(200, "application/x-ndjson", text))
        .route(Method::GET, "/v1/usage", usage)
        .access(Access::Roles(OVERSEERS), "")
        .doc(RouteDoc::new("Usage, cost and budgets; a report over the days from..to").query("from", "YYYY-MM-DD").query("to", "YYYY-MM-DD").json(200, object))
        .route(Method::GET, "/v1/alerts", alerts)
        .access(Access::Roles(&[TenantRole::Admin, TenantRole::Auditor]), "the webhook's host, never its path or secret")
        .doc(RouteDoc::new("Budget alerts raised, and where they are delivered").json(200, object))
        .route(Method::GET, "/v1/slo", slo)
        .access(Access::Roles(OVERSEERS), "")
        .doc(RouteDoc::new("Each surface's objectives and attainment over 1 h, 24 h and 30 days").json(200, object))
        .route(Method::PUT, "/v1/alerts/webhook", put_webhook)
        .access(Access::Roles(ADMINS), "")
        .doc(RouteDoc::new("Where budget alerts are delivered (admins; the secret is shown once)").body(schema::<crate::alerts::WebhookInput>).json(200, object))
}

/// A page of events, or (with `request_id`) the request's decisions.
fn decisions_answer(generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
    let page = schema::<DecisionPage>(generator);
    let decision = schema::<Decision>(generator);
    schemars::json_schema!({"anyOf": [page, {"type": "object", "required": ["request_id", "decisions"],
        "properties": {"request_id": {"type": "string"}, "decisions": {"type": "array", "items": decision}}}]})
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
