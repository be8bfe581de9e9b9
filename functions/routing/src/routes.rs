//! The gateway's routes: grounded answers, chat completions, labels and ranking.

use crate::sse::{self, Reply};
use keel_core::access::{Access, ACTORS};
use crate::ask::validate_question;
use crate::{classify, rank, AskRequest, AskResponse, Routing};
use keel_core::openapi::{events, object, schema, RouteDoc};
use axum::body::Bytes;
use axum::extract::State;
use axum::http::Method;
use axum::{Extension, Json};
use keel_core::auth::Caller;
use keel_core::http::{parse_body, RequestId, Routes, DEFAULT_BODY_LIMIT};
use keel_core::concurrency::Expensive;
use keel_core::rate::Admission;
use keel_core::KeelError;
use serde_json::{json, Value};
use std::sync::Arc;

pub fn routes() -> Routes<Arc<Routing>> {
    Routes::new()
        .route(Method::POST, "/v1/ask", ask)
        .admits_itself()
        .expensive(Expensive::Ask)
        .access(Access::Roles(ACTORS), "evidence from documents in its groups")
        .doc(RouteDoc::new("A cited answer or a refusal; with stream: true, server-sent events (delta, reset, done, error)")
            .body(schema::<AskRequest>).json(200, schema::<AskResponse>).reply(200, "text/event-stream", events))
        .route(Method::POST, "/v1/chat/completions", chat)
        .admits_itself()
        .expensive(Expensive::Chat)
        .access(Access::Roles(ACTORS), "")
        .doc(RouteDoc::new("OpenAI-compatible chat under the tenant's routing and budgets")
            .body(schema::<keel_core::openai::ChatRequest>).json(200, object).reply(200, "text/event-stream", events))
        .route(Method::POST, "/v1/classify", classify)
        .expensive(Expensive::Classify)
        .access(Access::Roles(ACTORS), "")
        .doc(RouteDoc::new("A label in-function").body(schema::<classify::ClassifyRequest>).json(200, object))
        .route(Method::POST, "/v1/rank", rank)
        .expensive(Expensive::Rank)
        .access(Access::Roles(ACTORS), "")
        .doc(RouteDoc::new("A ranking in-function").body(schema::<rank::RankRequest>).json(200, object))
}

/// A grounded answer, streamed as server-sent events when the body asks for
/// `stream: true`. Errors found before the stream starts are plain JSON errors.
async fn ask(State(r): State<Arc<Routing>>, Extension(id): Extension<RequestId>, caller: Caller, admission: Admission, body: Bytes) -> Result<Reply, KeelError> {
    let body: AskRequest = parse_body(&body, DEFAULT_BODY_LIMIT)?;
    if !body.stream {
        let out = r.ask(&caller, &admission, &body, None).await?;
        return Ok(Reply::Whole(keel_core::http::ApiResponse::ok(&out)));
    }
    validate_question(&body.question)?;
    // A request over its rate limit gets a plain 429, not a stream.
    admission.admit().await?;
    Ok(sse::stream(move |events| async move {
        match r.ask(&caller, &admission, &body, Some(&events)).await {
            Ok(out) => sse::send(&events, Some("done"), &json!(out)),
            Err(e) => sse::send_error(&events, &e, &id.0),
        }
    }))
}

async fn chat(State(r): State<Arc<Routing>>, Extension(id): Extension<RequestId>, caller: Caller, admission: Admission, body: Bytes) -> Result<Reply, KeelError> {
    r.chat_route(caller, admission, &body, id.0).await
}

async fn classify(State(r): State<Arc<Routing>>, caller: Caller, body: Bytes) -> Result<Json<Value>, KeelError> {
    let out = r.classify(&caller, &parse_body(&body, DEFAULT_BODY_LIMIT)?).await?;
    Ok(Json(serde_json::to_value(out)?))
}

async fn rank(State(r): State<Arc<Routing>>, caller: Caller, body: Bytes) -> Result<Json<Value>, KeelError> {
    let out = r.rank(&caller, &parse_body(&body, rank::RANK_BODY_LIMIT)?).await?;
    Ok(Json(serde_json::to_value(out)?))
}
