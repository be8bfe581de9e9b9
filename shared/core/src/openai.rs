//! The OpenAI chat-completions wire format, in one place: Keel serves it
//! (`POST /v1/chat/completions`), speaks it to OpenAI-compatible servers, and
//! sends it to SageMaker endpoints (TGI's and vLLM's messages API).

use crate::ports::{ChatMessage, Deltas, ModelError, ModelRequest, ModelResponse, Role};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

#[derive(Clone, Debug, Serialize, Deserialize, schemars::JsonSchema)]
pub struct WireMessage {
    pub role: String,
    pub content: String,
}

/// A chat-completions request body.
#[derive(Clone, Debug, Serialize, Deserialize, schemars::JsonSchema)]
pub struct ChatRequest {
    pub model: String,
    pub messages: Vec<WireMessage>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f32>,
    #[serde(default)]
    pub stream: bool,
    /// Keel's extension: which budgeted workflow the call belongs to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workflow: Option<String>,
}

impl ChatRequest {
    /// Splits system messages from the conversation; other roles are refused.
    pub fn to_model_request(&self, model_id: &str, default_max_tokens: u32) -> Result<ModelRequest, String> {
        let mut system = Vec::new();
        let mut messages = Vec::new();
        for m in &self.messages {
            match m.role.as_str() {
                "system" | "developer" => system.push(m.content.clone()),
                "user" => messages.push(ChatMessage { role: Role::User, content: m.content.clone() }),
                "assistant" => messages.push(ChatMessage { role: Role::Assistant, content: m.content.clone() }),
                other => return Err(format!("message role {other:?} is not one of system, user, assistant")),
            }
        }
        if messages.last().map(|m| m.role) != Some(Role::User) {
            return Err("the last message must be from the user".into());
        }
        Ok(ModelRequest {
            model: model_id.into(),
            system: system.join("\n"),
            messages,
            max_tokens: self.max_tokens.unwrap_or(default_max_tokens),
            temperature: self.temperature,
        })
    }
}

/// The body Keel sends to an OpenAI-compatible server for `request`.
pub fn request_body(request: &ModelRequest, stream: bool) -> Value {
    let mut messages = Vec::with_capacity(request.messages.len() + 1);
    if !request.system.is_empty() {
        messages.push(json!({"role": "system", "content": request.system}));
    }
    for m in &request.messages {
        let role = match m.role {
            Role::User => "user",
            Role::Assistant => "assistant",
        };
        messages.push(json!({"role": role, "content": m.content}));
    }
    let mut body = json!({"model": request.model, "messages": messages, "max_tokens": request.max_tokens, "stream": stream});
    if let Some(t) = request.temperature {
        body["temperature"] = json!(t);
    }
    body
}

/// Reads a chat-completions response (or TGI's `[{"generated_text"}]`).
pub fn parse_response(body: &[u8]) -> Result<ModelResponse, ModelError> {
    let v: Value = serde_json::from_slice(body)
        .map_err(|e| ModelError::Unavailable(format!("model server sent unreadable JSON: {e}")))?;
    let text = v
        .pointer("/choices/0/message/content")
        .or_else(|| v.pointer("/0/generated_text"))
        .and_then(Value::as_str)
        .ok_or_else(|| ModelError::Unavailable("model server response has no choices[0].message.content".into()))?;
    let tokens = |p: &str| v.pointer(p).and_then(Value::as_u64).unwrap_or(0);
    Ok(ModelResponse {
        text: text.to_string(),
        input_tokens: tokens("/usage/prompt_tokens"),
        output_tokens: tokens("/usage/completion_tokens"),
    })
}

/// What one `data:` line of a streamed response carries.
pub enum StreamEvent {
    Delta(String),
    Usage { input_tokens: u64, output_tokens: u64 },
    Done,
}

/// Reads one server-sent `data:` payload of a streamed chat completion.
pub fn parse_stream_data(data: &str) -> Vec<StreamEvent> {
    if data.trim() == "[DONE]" {
        return vec![StreamEvent::Done];
    }
    let Ok(v) = serde_json::from_str::<Value>(data) else { return vec![] };
    let mut out = Vec::new();
    if let Some(t) = v.pointer("/choices/0/delta/content").and_then(Value::as_str) {
        out.push(StreamEvent::Delta(t.to_string()));
    }
    if let Some(u) = v.get("usage").filter(|u| u.is_object()) {
        let n = |k: &str| u.get(k).and_then(Value::as_u64).unwrap_or(0);
        out.push(StreamEvent::Usage { input_tokens: n("prompt_tokens"), output_tokens: n("completion_tokens") });
    }
    out
}

/// Assembles a streamed chat completion from its bytes as they arrive, in
/// chunks of any size (a chunk may end inside a line or a character).
#[derive(Default)]
pub struct StreamReader {
    pending: Vec<u8>,
    out: ModelResponse,
    done: bool,
}

impl StreamReader {
    /// Reads every whole `data:` line in `chunk`, passing text on to `deltas`.
    pub fn feed(&mut self, chunk: &[u8], deltas: Deltas<'_>) {
        self.pending.extend_from_slice(chunk);
        while let Some(end) = self.pending.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = self.pending.drain(..=end).collect();
            let line = String::from_utf8_lossy(&line);
            let Some(data) = line.trim().strip_prefix("data:") else { continue };
            for event in parse_stream_data(data.trim()) {
                match event {
                    StreamEvent::Delta(d) if !self.done => {
                        deltas(&d);
                        self.out.text.push_str(&d);
                    }
                    StreamEvent::Delta(_) => {}
                    StreamEvent::Usage { input_tokens, output_tokens } => {
                        (self.out.input_tokens, self.out.output_tokens) = (input_tokens, output_tokens);
                    }
                    StreamEvent::Done => self.done = true,
                }
            }
        }
    }

    /// `[DONE]` has been read.
    pub fn is_done(&self) -> bool {
        self.done
    }

    pub fn finish(self) -> ModelResponse {
        self.out
    }
}

/// A whole chat-completions response.
pub fn completion(id: &str, model: &str, created: i64, text: &str, input_tokens: u64, output_tokens: u64) -> Value {
    json!({
        "id": id, "object": "chat.completion", "created": created, "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": input_tokens, "completion_tokens": output_tokens, "total_tokens": input_tokens + output_tokens}
    })
}

/// One chunk of a streamed chat completion (`delta` text, or the final chunk with usage).
pub fn chunk(id: &str, model: &str, created: i64, delta: Option<&str>, usage: Option<(u64, u64)>) -> Value {
    let mut v = json!({
        "id": id, "object": "chat.completion.chunk", "created": created, "model": model,
        "choices": [{"index": 0, "delta": delta.map(|d| json!({"content": d})).unwrap_or(json!({})),
            "finish_reason": if delta.is_some() { Value::Null } else { json!("stop") }}]
    });
    if let Some((i, o)) = usage {
        v["usage"] = json!({"prompt_tokens": i, "completion_tokens": o, "total_tokens": i + o});
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_requests_and_responses() {
        let req: ChatRequest = serde_json::from_value(json!({"model": "auto", "messages": [
            {"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}]}))
        .unwrap();
        let m = req.to_model_request("m1", 64).unwrap();
        assert_eq!((m.system.as_str(), m.messages.len(), m.max_tokens), ("be brief", 1, 64));
        let body = request_body(&m, false);
        assert_eq!(body["messages"][0]["role"], "system");
        assert_eq!(body["messages"][1]["content"], "hi");
        let c = completion("c1", "m1", 0, "hello", 3, 1);
        let r = parse_response(&serde_json::to_vec(&c).unwrap()).unwrap();
        assert_eq!((r.text.as_str(), r.input_tokens, r.output_tokens), ("hello", 3, 1));
        let tgi = parse_response(br#"[{"generated_text":"x"}]"#).unwrap();
        assert_eq!(tgi.text, "x");
        let bad: ChatRequest = serde_json::from_value(json!({"model": "a", "messages": [{"role": "tool", "content": "x"}]})).unwrap();
        assert!(bad.to_model_request("m", 1).unwrap_err().contains("tool"));
        let events = parse_stream_data(&chunk("c", "m", 0, Some("he"), None).to_string());
        assert!(matches!(&events[0], StreamEvent::Delta(d) if d == "he"));
        assert!(matches!(parse_stream_data("[DONE]")[0], StreamEvent::Done));
    }
}
