//! A stub OpenAI-compatible model server on loopback for the gateway tests
//! and benchmark: each model id answers, fails, throttles or stalls as told,
//! and the stub counts calls and keeps the last prompt per model.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use keel_core::openai::{chunk, completion};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[derive(Clone, Debug)]
pub enum Behavior {
    Answer(String),
    /// Answers after a pause.
    Slow(Duration, String),
    /// Answers after a pause when asked for more than this many tokens, at once otherwise.
    SlowOver(u64, Duration, String),
    /// Fails with 503 this many times, then answers.
    FailFirst(u32, String),
    /// Always answers with this HTTP status (429 throttles, 5xx fails, 400 rejects).
    Status(u16),
    /// Never answers in time.
    Stall,
}

#[derive(Default)]
struct StubState {
    behaviors: Mutex<HashMap<String, Behavior>>,
    calls: Mutex<HashMap<String, u32>>,
    prompts: Mutex<HashMap<String, String>>,
    max_tokens: Mutex<HashMap<String, u64>>,
}

pub struct StubModels {
    pub addr: SocketAddr,
    state: Arc<StubState>,
}

impl StubModels {
    pub async fn start() -> Self {
        let state = Arc::new(StubState::default());
        let app = axum::Router::new().route("/v1/chat/completions", axum::routing::post(complete)).with_state(state.clone());
        let addr = crate::serve_on_loopback(app).await;
        Self { addr, state }
    }

    pub fn base_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    pub fn set(&self, model: &str, behavior: Behavior) {
        self.state.behaviors.lock().unwrap().insert(model.into(), behavior);
    }

    pub fn calls(&self, model: &str) -> u32 {
        self.state.calls.lock().unwrap().get(model).copied().unwrap_or(0)
    }

    /// The last user message sent to `model`.
    pub fn last_prompt(&self, model: &str) -> String {
        self.state.prompts.lock().unwrap().get(model).cloned().unwrap_or_default()
    }

    /// The `max_tokens` the last call to `model` asked for.
    pub fn last_max_tokens(&self, model: &str) -> Option<u64> {
        self.state.max_tokens.lock().unwrap().get(model).copied()
    }

    /// A `KEEL_MODELS` catalog of openai models on this stub: (name, tier, USD per 1k in and out, timeout ms).
    pub fn catalog(&self, models: &[(&str, &str, f64, u64)]) -> String {
        let specs: Vec<Value> = models
            .iter()
            .map(|(name, tier, price, timeout)| {
                json!({"name": name, "provider": "openai", "model_id": name, "tier": tier, "base_url": self.base_url(),
                    "usd_per_1k_input": price, "usd_per_1k_output": price, "timeout_ms": timeout})
            })
            .collect();
        Value::Array(specs).to_string()
    }
}

async fn complete(State(state): State<Arc<StubState>>, axum::Json(body): axum::Json<Value>) -> Response {
    let model = body["model"].as_str().unwrap_or("").to_string();
    let call = {
        let mut calls = state.calls.lock().unwrap();
        let n = calls.entry(model.clone()).or_insert(0);
        *n += 1;
        *n
    };
    let prompt = body["messages"].as_array().and_then(|m| m.last()).and_then(|m| m["content"].as_str()).unwrap_or("");
    state.prompts.lock().unwrap().insert(model.clone(), prompt.to_string());
    if let Some(asked) = body["max_tokens"].as_u64() {
        state.max_tokens.lock().unwrap().insert(model.clone(), asked);
    }
    let prompt_tokens = body["messages"].to_string().len() as u64 / 4;
    let behavior = state.behaviors.lock().unwrap().get(&model).cloned().unwrap_or(Behavior::Answer("OK [1].".into()));
    let text = match behavior {
        Behavior::Answer(t) => t,
        Behavior::Slow(pause, t) => {
            tokio::time::sleep(pause).await;
            t
        }
        Behavior::SlowOver(tokens, pause, t) => {
            if body["max_tokens"].as_u64().is_some_and(|asked| asked > tokens) {
                tokio::time::sleep(pause).await;
            }
            t
        }
        Behavior::FailFirst(n, t) if call > n => t,
        Behavior::FailFirst(..) => return (StatusCode::SERVICE_UNAVAILABLE, "warming up").into_response(),
        Behavior::Status(s) => {
            return (StatusCode::from_u16(s).unwrap(), axum::Json(json!({"error": {"message": "stub says no"}}))).into_response()
        }
        Behavior::Stall => {
            tokio::time::sleep(Duration::from_secs(30)).await;
            String::new()
        }
    };
    let completion_tokens = (text.len() as u64).div_ceil(4);
    if body["stream"].as_bool() != Some(true) {
        return axum::Json(completion("stub-1", &model, 0, &text, prompt_tokens, completion_tokens)).into_response();
    }
    let mut sse = String::new();
    for word in text.split_inclusive(' ') {
        sse.push_str(&format!("data: {}\n\n", chunk("stub-1", &model, 0, Some(word), None)));
    }
    sse.push_str(&format!("data: {}\n\n", chunk("stub-1", &model, 0, None, Some((prompt_tokens, completion_tokens)))));
    sse.push_str("data: [DONE]\n\n");
    ([("content-type", "text/event-stream")], sse).into_response()
}
