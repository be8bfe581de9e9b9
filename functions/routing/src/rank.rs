//! `POST /v1/rank`: documents ordered by their similarity to a query, in-function.

use crate::classify::checked_text;
use crate::in_function::IN_FUNCTION_MODEL;
use crate::{Record, Routing, Trail};
use keel_core::chain::DecisionKind;
use keel_core::auth::Caller;
use keel_core::ids::new_id;
use keel_core::models::Tier;
use keel_core::KeelError;
use keel_ml::classify::dot;
use serde::{Deserialize, Serialize};
use serde_json::json;
use sha2::{Digest, Sha256};

pub const MAX_DOCUMENTS: usize = 100;
/// A rank request's body: up to 100 documents of 4,000 characters.
pub const RANK_BODY_LIMIT: usize = 1024 * 1024;

#[derive(Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RankRequest {
    pub query: String,
    pub documents: Vec<String>,
    /// Results returned at most (all by default).
    #[serde(default)]
    pub top_k: Option<usize>,
}

#[derive(Debug, Serialize, Deserialize, PartialEq)]
pub struct Ranked {
    /// The document's position in the request.
    pub index: usize,
    /// Cosine similarity to the query.
    pub score: f32,
}

#[derive(Debug, Serialize)]
pub struct RankResponse {
    pub results: Vec<Ranked>,
    pub tier: Tier,
    pub model: String,
    pub decision_id: String,
}


impl Routing {
    /// Orders documents by their cosine similarity to the query, in-function.
    pub async fn rank(&self, caller: &Caller, body: &RankRequest) -> Result<RankResponse, KeelError> {
        let tenant_id = caller.tenant()?;
        let query = checked_text("query", &body.query)?;
        if !(1..=MAX_DOCUMENTS).contains(&body.documents.len()) {
            return Err(KeelError::BadRequest(format!("documents must list 1 to {MAX_DOCUMENTS} texts")));
        }
        for (i, d) in body.documents.iter().enumerate() {
            checked_text(&format!("documents[{i}]"), d)?;
        }
        let tenant = self.tenant(tenant_id).await?;
        if !tenant.routing.allows(Tier::T1) {
            return Err(KeelError::Forbidden("ranking runs in-function (t1), which this tenant's routing policy leaves out".into()));
        }
        let texts: Vec<&str> = std::iter::once(query).chain(body.documents.iter().map(|d| d.trim())).collect();
        let Some(vectors) = self.in_function.vectors(&self.retrieval, &texts).await? else {
            return Err(KeelError::Unavailable("ranking needs the in-function embedding model, and none is loaded".into()));
        };
        let mut results: Vec<Ranked> =
            vectors[1..].iter().enumerate().map(|(index, v)| Ranked { index, score: dot(&vectors[0], v) }).collect();
        results.sort_by(|a, b| b.score.total_cmp(&a.score).then(a.index.cmp(&b.index)));
        results.truncate(body.top_k.unwrap_or(usize::MAX));
        let decision_id = new_id("dec");
        let input = json!({"query_sha256": hex::encode(Sha256::digest(query.as_bytes())), "documents": body.documents.len()});
        let outcome = json!({"tier": Tier::T1, "model": IN_FUNCTION_MODEL, "top": results.first().map(|r| r.index)});
        self.record_decision(caller, &decision_id, DecisionKind::Rank, Record { input, evidence: json!([]), outcome }, &Trail::new(vec![]).usage).await?;
        Ok(RankResponse { results, tier: Tier::T1, model: IN_FUNCTION_MODEL.into(), decision_id })
    }
}
