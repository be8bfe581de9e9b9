//! The tools function's routes: tools, policies and actions.

use crate::listing::ActionQuery;
use keel_core::access::{Access, ACTORS, ADMINS, OVERSEERS};
use crate::{action_view, policy, ActionPage, ActionView, PolicyInput, ProposeRequest, ReviewRequest, Tool, ToolInput, Tools};
use keel_core::openapi::{object, schema, RouteDoc};
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::Method;
use axum::Json;
use keel_core::auth::{Caller, ROLE_ADMIN};
use keel_core::http::{parse_body, ApiResponse, QueryMap, Routes, DEFAULT_BODY_LIMIT};
use keel_core::ids::parse_path_id;
use keel_core::rate::Admission;
use keel_core::KeelError;
use serde_json::{json, Value};
use std::sync::Arc;

type Reply = Result<Json<Value>, KeelError>;

pub fn routes() -> Routes<Arc<Tools>> {
    Routes::new()
        .route(Method::GET, "/v1/tools", list_tools)
        .access(Access::Tenant, "connectors' settings to admins only")
        .doc(RouteDoc::new("The latest version of each tool").json(200, object))
        .route(Method::PUT, "/v1/tools/{name}", put_tool)
        .access(Access::Roles(ADMINS), "")
        .doc(RouteDoc::new("Register a tool (a new version; admins); 202 when loosening it waits for a second admin").body(schema::<ToolInput>).json(200, schema::<Tool>).json(202, object))
        .route(Method::GET, "/v1/tools/{name}", tool)
        .access(Access::Tenant, "connectors' settings to admins only")
        .doc(RouteDoc::new("A tool's latest version").json(200, schema::<Tool>))
        .route(Method::GET, "/v1/policies", policies)
        .access(Access::Roles(OVERSEERS), "")
        .doc(RouteDoc::new("The tenant's enforced and shadow Cedar policies").json(200, object))
        .route(Method::PUT, "/v1/policies/{mode}", put_policies)
        .access(Access::Roles(ADMINS), "")
        .doc(RouteDoc::new("Replace the enforced or shadow set (admins); 202 when it waits for a second admin")
            .body(schema::<PolicyInput>).json(200, object).json(202, object))
        .route(Method::POST, "/v1/actions", propose)
        .admits_itself()
        .access(Access::Roles(ACTORS), "as the tenant's Cedar policies decide")
        .doc(RouteDoc::new("Propose an action: validated, gated, previewed; run or held for approval")
            .body(schema::<ProposeRequest>).json(200, schema::<ActionView>).json(201, schema::<ActionView>))
        .route(Method::GET, "/v1/actions", actions)
        .access(Access::Tenant, "approvers, admins and auditors every action; others their own proposals")
        .doc(RouteDoc::new("The action proposed with an idempotency key, or a page of actions newest first")
            .query("idempotency_key", "the key the action was proposed with")
            .query("status", "only actions in this status").query("limit", "1 to 200 (default 50)").query("cursor", "next_cursor of the previous page")
            .json(200, schema::<ActionPage>))
        .route(Method::GET, "/v1/actions/{id}", action)
        .access(Access::Tenant, "approvers, admins and auditors every action; others their own proposals")
        .doc(RouteDoc::new("An action").json(200, schema::<ActionView>))
        .route(Method::POST, "/v1/actions/{id}/{verb}", act)
        .access(Access::Roles(ACTORS), "approve, reject: as policies decide (by default approvers and admins, not their own proposal); undo: admins, approvers, members their own proposals")
        .doc(RouteDoc::new("approve, reject (with a reason) or undo an action").body(schema::<ReviewRequest>).json(200, schema::<ActionView>))
}

async fn put_tool(State(tools): State<Arc<Tools>>, caller: Caller, Path(name): Path<String>, body: Bytes) -> Result<ApiResponse, KeelError> {
    caller.tenant()?;
    let name = parse_path_id("tool", &name)?;
    tools.put_tool(&caller, &name, parse_body(&body, DEFAULT_BODY_LIMIT)?).await
}

async fn list_tools(State(tools): State<Arc<Tools>>, caller: Caller) -> Reply {
    let listed = tools.tools(caller.tenant()?).await?;
    let shown = listed.iter().map(|t| shown_to(&caller, t)).collect::<Result<Vec<_>, _>>()?;
    Ok(Json(json!({"tools": shown})))
}

async fn tool(State(tools): State<Arc<Tools>>, caller: Caller, Path(name): Path<String>) -> Reply {
    let (tool, _) = tools.tool(caller.tenant()?, &parse_path_id("tool", &name)?).await?;
    Ok(Json(shown_to(&caller, &tool)?))
}

/// A tool as `caller` may see it: its connectors' settings (URLs, steps,
/// dry runs and compensations) are its admins' alone; everyone else sees
/// what proposing it takes.
fn shown_to(caller: &Caller, tool: &impl serde::Serialize) -> Result<Value, KeelError> {
    let mut shown = serde_json::to_value(tool)?;
    if !caller.has_role(ROLE_ADMIN) {
        if let Some(fields) = shown.as_object_mut() {
            fields.retain(|k, _| TOOL_FIELDS_FOR_ALL.contains(&k.as_str()));
        }
    }
    Ok(shown)
}

/// What every principal of the tenant sees of a tool.
const TOOL_FIELDS_FOR_ALL: [&str; 10] = ["name", "version", "description", "risk", "input_schema", "autonomy", "reversible", "metered_arg", "cost_usd", "updated_at"];

async fn policies(State(tools): State<Arc<Tools>>, caller: Caller) -> Reply {
    tools.policy_texts(caller.tenant()?).await.map(Json)
}

async fn put_policies(State(tools): State<Arc<Tools>>, caller: Caller, Path(mode): Path<String>, body: Bytes) -> Result<ApiResponse, KeelError> {
    let tenant = caller.tenant()?;
    if !matches!(mode.as_str(), "enforced" | "shadow") {
        return Err(KeelError::NotFound(format!("no route for PUT /v1/policies/{mode}")));
    }
    let input: PolicyInput = parse_body(&body, policy::MAX_POLICY_BYTES + 1024)?;
    match tools.put_policies(&caller, &mode, input.policies).await? {
        Some(requested) => Ok(requested),
        None => Ok(ApiResponse::ok(&tools.policy_texts(tenant).await?)),
    }
}

async fn propose(State(tools): State<Arc<Tools>>, caller: Caller, admission: Admission, body: Bytes) -> Result<ApiResponse, KeelError> {
    caller.tenant()?;
    let (status, action) = tools.propose(&caller, parse_body(&body, DEFAULT_BODY_LIMIT)?, &admission).await?;
    Ok(ApiResponse::json(status, &action_view(&action)))
}

/// `?idempotency_key=`: the action proposed with that key; otherwise a page
/// of the actions the caller may see (`?status=&limit=&cursor=`).
async fn actions(State(tools): State<Arc<Tools>>, caller: Caller, QueryMap(query): QueryMap) -> Reply {
    let tenant = caller.tenant()?;
    match query.get("idempotency_key") {
        Some(key) => Ok(Json(json!(action_view(&readable(&caller, tools.action_by_key(tenant, key).await?, key)?)))),
        None => tools.list_actions(&caller, ActionQuery::parse(&query)?).await.map(|page| Json(json!(page))),
    }
}

async fn action(State(tools): State<Arc<Tools>>, caller: Caller, Path(id): Path<String>) -> Reply {
    let (action, _) = tools.action(caller.tenant()?, &parse_path_id("action", &id)?).await?;
    Ok(Json(json!(action_view(&readable(&caller, action, &id)?))))
}

/// `action` if the caller may read it; another principal's action does not exist for it.
fn readable(caller: &Caller, action: crate::Action, asked: &str) -> Result<crate::Action, KeelError> {
    if crate::listing::may_read(caller, &action) {
        Ok(action)
    } else {
        Err(KeelError::NotFound(format!("action {asked} not found")))
    }
}

/// `approve`, `reject` or `undo` an action.
async fn act(State(tools): State<Arc<Tools>>, caller: Caller, Path((id, verb)): Path<(String, String)>, body: Bytes) -> Reply {
    caller.tenant()?;
    let id = parse_path_id("action", &id)?;
    let review = || -> Result<ReviewRequest, KeelError> {
        if body.iter().all(u8::is_ascii_whitespace) {
            return Ok(ReviewRequest::default());
        }
        parse_body(&body, DEFAULT_BODY_LIMIT)
    };
    let action = match verb.as_str() {
        "approve" => tools.review(&caller, &id, true, review()?).await?,
        "reject" => tools.review(&caller, &id, false, review()?).await?,
        "undo" => tools.undo(&caller, &id).await?,
        _ => return Err(KeelError::NotFound(format!("no route for POST /v1/actions/{id}/{verb}"))),
    };
    Ok(Json(json!(action_view(&action))))
}
