//! Server-sent events for streamed answers. A streamed `/v1/ask` sends
//! `delta` events with whole sentences that cite evidence (uncited ones never
//! reach the client), `reset` when the gateway drops what it sent (a model's
//! answer was rejected and another tier answers), then `done` with the full
//! response, or `error`. `/v1/chat/completions` streams OpenAI chunks.

use crate::grounding::{is_cited, sentences};
use keel_core::http::ApiResponse;
use keel_core::KeelError;
use serde_json::{json, Value};
use std::future::Future;
use std::sync::Mutex;
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver, UnboundedSender};

/// Where a streamed response's SSE frames go.
pub type Events = UnboundedSender<String>;

/// A whole response, or SSE frames as they are produced.
pub enum Reply {
    Whole(ApiResponse),
    Stream(UnboundedReceiver<String>),
}

/// Runs `produce` in the background; its frames are the reply.
pub fn spawn<F, Fut>(produce: F) -> Reply
where
    F: FnOnce(Events) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = unbounded_channel();
    tokio::spawn(produce(tx));
    Reply::Stream(rx)
}

/// One SSE frame: optional `event:` line and a `data:` line.
pub fn frame(event: Option<&str>, data: &str) -> String {
    match event {
        Some(e) => format!("event: {e}\ndata: {data}\n\n"),
        None => format!("data: {data}\n\n"),
    }
}

pub fn send(events: &Events, event: Option<&str>, data: &Value) {
    // A closed channel means the client left; nothing to do.
    let _ = events.send(frame(event, &data.to_string()));
}

pub fn send_error(events: &Events, error: &KeelError, request_id: &str) {
    send(events, Some("error"), &json!({"error": {"code": error.code(), "message": error.to_string(), "request_id": request_id}}));
}

/// Passes a model's streamed text on a sentence at a time, and only the
/// sentences that cite evidence.
pub struct SentenceGate {
    events: Events,
    evidence_len: usize,
    state: Mutex<(String, usize)>,
}

impl SentenceGate {
    pub fn new(events: Events, evidence_len: usize) -> Self {
        Self { events, evidence_len, state: Mutex::new((String::new(), 0)) }
    }

    pub fn push(&self, delta: &str) {
        self.flush(Some(delta));
    }

    /// The text is complete: its last sentence may go too.
    pub fn finish(&self) {
        self.flush(None);
    }

    /// Drops what was streamed: the client discards it.
    pub fn reset(&self) {
        if let Ok(mut s) = self.state.lock() {
            *s = (String::new(), 0);
        }
        send(&self.events, Some("reset"), &json!({}));
    }

    fn flush(&self, delta: Option<&str>) {
        let Ok(mut state) = self.state.lock() else { return };
        let (text, sent) = &mut *state;
        if let Some(d) = delta {
            text.push_str(d);
        }
        let all = sentences(text);
        // While text is still coming, the last sentence may be unfinished.
        let complete = if delta.is_some() { all.len().saturating_sub(1) } else { all.len() };
        for s in all.iter().take(complete).skip(*sent) {
            if is_cited(s, self.evidence_len) {
                send(&self.events, Some("delta"), &json!({"text": format!("{s} ")}));
            }
        }
        *sent = (*sent).max(complete);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_gate_passes_cited_sentences_only() {
        let (tx, mut rx) = unbounded_channel();
        let gate = SentenceGate::new(tx, 2);
        for d in ["Refunds take", " 5 days. [1] The moon", " is cheese. Receipts", " are kept [2]."] {
            gate.push(d);
        }
        gate.finish();
        let mut frames = Vec::new();
        while let Ok(f) = rx.try_recv() {
            frames.push(f);
        }
        assert_eq!(frames.len(), 2, "{frames:?}");
        assert!(frames[0].contains("Refunds take 5 days. [1]"));
        assert!(frames[1].contains("Receipts are kept [2]."));
    }
}
