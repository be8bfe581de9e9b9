//! `POST /v1/chat/completions`: the OpenAI-compatible gateway for calls that
//! need no retrieval, under the same routing policy, budgets, cache,
//! resilience and metering as `/v1/ask`. `model` is a catalog name or
//! `auto`; the response carries Keel's account of the call under `keel`.

use keel_core::chain::{CacheOutcome, DecisionKind};
use crate::sse::{self, Events, Reply};
use crate::generate::{Generated, Generation, ModelDeltas};
use crate::{cache, route_error, CacheWrite, Record, Routing, Trail};
use keel_core::auth::Caller;
use keel_core::http::ApiResponse;
use keel_core::ids::new_id;
use keel_core::rate::Admission;

use keel_core::models::Tier;
use keel_core::openai::{chunk, completion, ChatRequest};
use keel_core::ports::{ModelRequest, ModelResponse};
use keel_core::time::now_secs;
use keel_core::KeelError;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use std::sync::Arc;

/// Chat bodies may carry long conversations.
const CHAT_BODY_LIMIT: usize = 512 * 1024;

/// A hash of the whole prompt: part of the cache address, and what the
/// decision log keeps instead of the prompt itself.
fn prompt_fingerprint(req: &ChatRequest) -> String {
    let mut h = Sha256::new();
    // Exact text, length-prefixed: any difference in any message is another address.
    for part in req.messages.iter().flat_map(|m| [m.role.as_bytes(), m.content.as_bytes()]) {
        h.update((part.len() as u64).to_le_bytes());
        h.update(part);
    }
    h.update(req.max_tokens.unwrap_or(0).to_le_bytes());
    hex::encode(h.finalize())
}

impl Routing {
    /// `POST /v1/chat/completions`, whole or streamed as OpenAI chunks.
    pub(crate) async fn chat_route(
        self: &Arc<Self>,
        caller: Caller,
        admission: Admission,
        body: &[u8],
        request_id: String,
    ) -> Result<Reply, KeelError> {
        let body: ChatRequest = keel_core::limits::parse_json(body, CHAT_BODY_LIMIT, "request body")?;
        // Checked before any stream starts, so bad messages get a plain 400.
        let request = body.to_model_request("", self.options.max_tokens).map_err(KeelError::BadRequest)?;
        if !body.stream {
            let out = self.chat(&caller, &admission, &body, &request, None).await?;
            return Ok(Reply::Whole(ApiResponse::ok(&out)));
        }
        // A request over its rate limit gets a plain 429, not a stream.
        admission.admit().await?;
        let this = self.clone();
        Ok(sse::stream(move |events| async move {
            match this.chat(&caller, &admission, &body, &request, Some(&events)).await {
                Ok(_) => {
                    let _ = events.send(sse::frame(None, "[DONE]"));
                }
                Err(e) => sse::send_error(&events, &e, &request_id),
            }
        }))
    }

    /// One chat completion. Streaming sends OpenAI chunks to `events` and
    /// returns the same completion it would have returned whole.
    /// `request` is `body` as a model request (`ChatRequest::to_model_request`).
    /// Before the model call it waits twice: for the rate-limit count
    /// (`admission`) beside the cache read, then, on a miss, for the first
    /// candidate's budget reservation. A refused request holds no budget and
    /// a cache hit none at all.
    pub async fn chat(
        &self,
        caller: &Caller,
        admission: &Admission,
        body: &ChatRequest,
        request: &ModelRequest,
        events: Option<&Events>,
    ) -> Result<Value, KeelError> {
        let tenant_id = caller.tenant()?;
        let tenant = self.tenant(tenant_id).await?;
        let (limit, by) = self.max_tokens_for(&tenant);
        let asked = request.max_tokens;
        // Copied (prompt and all) only when it asks for more than the cap.
        let capped_request;
        let request = if asked > limit {
            capped_request = ModelRequest { max_tokens: limit, ..request.clone() };
            &capped_request
        } else {
            request
        };
        let open = |m: &str| self.breakers.is_open(&tenant.id, m);
        let decision = crate::router::decide(&self.route_input(&tenant, None, Some(&body.model), request.prompt_tokens(), &open))
            .map_err(|e| route_error(e, "complete"))?;
        let id = new_id("chatcmpl");
        let created = now_secs();
        let fingerprint = prompt_fingerprint(body);
        let mut trail = Trail::new(decision.reasons.clone());
        let capped = (asked > limit).then(|| json!({"asked": asked, "limit": limit, "by": by}));
        if capped.is_some() {
            trail.reasons.insert(0, format!("max_tokens {asked} capped at {limit} (the {by}'s limit)"));
        }

        // Only deterministic requests are cacheable.
        let ttl = tenant.routing.cache_ttl_secs;
        let cacheable = ttl > 0 && body.temperature.unwrap_or(0.0) == 0.0;
        // Chat has no in-function answer: the router sends it hosted or refuses it.
        let hosted = decision.hosted().ok_or_else(|| KeelError::Unavailable("no hosted model can answer".into()))?;
        let first = &self.catalog[hosted.first].name;
        let key = cache::key(&tenant, &["chat", first, &fingerprint]);
        let forward = |model: &str, d: &str| {
            if let Some(ev) = events {
                sse::send(ev, None, &chunk(&id, model, created, Some(d), None));
            }
        };
        let deltas: Option<ModelDeltas> = if events.is_some() { Some(&forward) } else { None };
        let generation = Generation { tenant: &tenant, workflow: body.workflow.as_deref(), hosted, request, deltas, gate: None };
        let read = async { if cacheable { self.answers.get::<(String, String)>(&tenant.id, &key).await } else { Ok(None) } };
        // Nothing is held or called for a request the rate limit refuses: the
        // reservation waits for the count (a cache hit needs none at all).
        let (admitted, hit) = tokio::join!(admission.admit(), read);
        admitted?;
        let hit = hit?;
        if cacheable {
            trail.usage.cache = if hit.is_some() { CacheOutcome::Hit } else { CacheOutcome::Miss };
        }
        let (tier, model, text, input_tokens, output_tokens) = match hit {
            Some((model, text)) => {
                trail.reasons.push(format!("cache hit for {first}"));
                if let Some(ev) = events {
                    sse::send(ev, None, &chunk(&id, &model, created, Some(&text), None));
                }
                (Tier::T0, model, text, 0, 0)
            }
            None => {
                let accept = |_: &ModelResponse| Ok(());
                let Some(Generated { model, response, .. }) = self.generate(&generation, &accept, &mut trail, None).await? else {
                    self.record_chat(caller, &id, body, &fingerprint, None, &trail).await?;
                    return Err(trail.no_answer());
                };
                let spec = &self.catalog[model];
                if cacheable {
                    trail.pending.cache_write = Some(CacheWrite { key: key.clone(), value: json!((&spec.name, &response.text)), ttl });
                }
                (spec.tier, spec.name.clone(), response.text, response.input_tokens, response.output_tokens)
            }
        };
        if let Some(ev) = events {
            sse::send(ev, None, &chunk(&id, &model, created, None, Some((input_tokens, output_tokens))));
        }
        let pending = std::mem::take(&mut trail.pending);
        let record = self.record_chat(caller, &id, body, &fingerprint, Some((&model, tier)), &trail);
        self.finish(&tenant.id, pending, record).await;
        let mut out = completion(&id, &model, created, &text, input_tokens, output_tokens);
        out["keel"] = json!({"tier": tier, "cost": trail.usage.cost_micro_usd as f64 / 1e6, "cached": trail.usage.cache == CacheOutcome::Hit,
            "decision_id": id, "route": trail.reasons, "max_tokens": request.max_tokens});
        if let Some(capped) = capped {
            out["keel"]["max_tokens_capped"] = capped;
        }
        Ok(out)
    }

    fn record_chat(
        &self,
        caller: &Caller,
        id: &str,
        body: &ChatRequest,
        fingerprint: &str,
        answered: Option<(&str, Tier)>,
        trail: &Trail,
    ) -> impl std::future::Future<Output = Result<(), KeelError>> + Send + 'static {
        // The prompt itself stays out of the log: its hash and shape only.
        let input = json!({"model": body.model, "messages": body.messages.len(), "prompt_sha256": fingerprint, "workflow": body.workflow});
        let outcome =
            json!({"answered": answered.is_some(), "model": answered.map(|a| a.0), "tier": answered.map(|a| a.1), "route": trail.reasons});
        self.record_decision(caller, id, DecisionKind::Chat, Record { input, evidence: json!([]), outcome }, &trail.usage)
    }
}
