//! Retrieval's routes: documents, search, the change feed and sources.

use crate::{DocumentInput, Retrieval, MAX_K};
use keel_core::access::{Access, ACTORS, ADMINS};
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::Method;
use axum::Json;
use keel_core::auth::Caller;
use keel_core::http::{parse_body, ApiResponse, QueryMap, Routes, DEFAULT_BODY_LIMIT};
use keel_core::ids::parse_path_id;
use keel_core::concurrency::Expensive;
use keel_core::rate::Admission;
use keel_core::openapi::{object, schema, RouteDoc};
use keel_core::KeelError;
use serde::Deserialize;
use serde_json::{json, Value};
use std::sync::Arc;

type Reply = Result<Json<Value>, KeelError>;

pub fn routes() -> Routes<Arc<Retrieval>> {
    Routes::new()
        .route(Method::PUT, "/v1/documents/{doc_id}", put_document)
        .expensive(Expensive::Ingest)
        .access(Access::Roles(ACTORS), "documents it may read (404 otherwise); admins any")
        .doc(RouteDoc::new("Index a document (a new version)").body(schema::<DocumentInput>).json(200, object))
        .route(Method::GET, "/v1/documents/{doc_id}", document)
        .access(Access::Tenant, "documents in its groups")
        .doc(RouteDoc::new("Read a document the caller may see").json(200, object))
        .route(Method::DELETE, "/v1/documents/{doc_id}", delete_document)
        .access(Access::Roles(ACTORS), "documents it may read (404 otherwise); admins any")
        .doc(RouteDoc::new("Delete a document").json(200, object))
        .route(Method::POST, "/v1/search", search)
        .admits_itself()
        .access(Access::Tenant, "documents in its groups")
        .doc(RouteDoc::new("Hybrid search over what the caller may see").body(schema::<SearchRequest>).json(200, object))
        .route(Method::GET, "/v1/changes", changes)
        .access(Access::Tenant, "documents in its groups")
        .doc(RouteDoc::new("The change feed, paged by cursor").query("since", "RFC 3339: changes after it").query("cursor", "the cursor of the previous page").json(200, object))
        .route(Method::PUT, "/v1/sources/{name}", put_source)
        .access(Access::Roles(ADMINS), "")
        .doc(RouteDoc::new("A source's freshness SLA (admins)").body(schema::<SourceSettings>).json(200, object))
}

async fn put_document(State(r): State<Arc<Retrieval>>, caller: Caller, Path(id): Path<String>, body: Bytes) -> Reply {
    caller.tenant()?;
    let doc_id = parse_path_id("document", &id)?;
    let input: DocumentInput = parse_body(&body, r.settings.document_body_limit)?;
    r.put_document(&caller, doc_id, input).await.map(Json)
}

async fn document(State(r): State<Arc<Retrieval>>, caller: Caller, Path(id): Path<String>) -> Reply {
    caller.tenant()?;
    r.read_document(&caller, &parse_path_id("document", &id)?).await.map(Json)
}

async fn delete_document(State(r): State<Arc<Retrieval>>, caller: Caller, Path(id): Path<String>) -> Reply {
    caller.tenant()?;
    r.delete_document(&caller, parse_path_id("document", &id)?).await.map(Json)
}

#[derive(Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
struct SearchRequest {
    query: String,
    k: Option<usize>,
}

/// A search reads the index beside the rate-limit count, and embeds and
/// ranks only once the count admits it.
async fn search(State(r): State<Arc<Retrieval>>, caller: Caller, admission: Admission, body: Bytes) -> Reply {
    caller.tenant()?;
    let body: SearchRequest = parse_body(&body, DEFAULT_BODY_LIMIT)?;
    let k = body.k.unwrap_or(10);
    if !(1..=MAX_K).contains(&k) {
        return Err(KeelError::BadRequest(format!("k must be between 1 and {MAX_K}")));
    }
    if body.query.trim().is_empty() {
        return Err(KeelError::BadRequest("query must not be empty".into()));
    }
    let results = r.search_admitted(&caller, &admission, &body.query, k).await?;
    let mut out = json!({"results": results, "mode": r.mode()});
    if let Some(why) = r.degraded() {
        out["degraded"] = json!(why);
    }
    Ok(Json(out))
}

async fn changes(State(r): State<Arc<Retrieval>>, caller: Caller, QueryMap(query): QueryMap) -> Result<ApiResponse, KeelError> {
    caller.tenant()?;
    r.changes(&caller, &query).await
}

#[derive(Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
struct SourceSettings {
    freshness_sla_seconds: u64,
}

async fn put_source(State(r): State<Arc<Retrieval>>, caller: Caller, Path(name): Path<String>, body: Bytes) -> Reply {
    caller.tenant()?;
    let name = parse_path_id("source", &name)?;
    let body: SourceSettings = parse_body(&body, DEFAULT_BODY_LIMIT)?;
    r.set_freshness_sla(&caller, name, body.freshness_sla_seconds).await.map(Json)
}
