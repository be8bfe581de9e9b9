//! Server-sent events for streamed answers. A streamed `/v1/ask` sends
//! `delta` events with whole sentences that cite evidence (uncited ones never
//! reach the client), `reset` when the gateway drops what it sent (a model's
//! answer was rejected and another tier answers), then `done` with the full
//! response, or `error`. `/v1/chat/completions` streams OpenAI chunks.

use crate::grounding::{is_cited, sentences_at};
use axum::body::Body;
use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};
use keel_core::http::ApiResponse;
use tokio_stream::wrappers::UnboundedReceiverStream;
use tokio_stream::StreamExt;
use keel_core::KeelError;
use serde_json::{json, Value};
use std::future::Future;
use std::pin::Pin;
use std::sync::Mutex;
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver, UnboundedSender};

/// Where a streamed response's SSE frames go.
pub type Events = UnboundedSender<String>;

/// A whole response, or SSE frames as they are produced.
pub enum Reply {
    Whole(ApiResponse),
    /// `produce` is the request's work, which sends the frames; it runs as
    /// a task of its own while `frames` stream, and to its end even if the
    /// client leaves (a model call paid for is still settled and recorded).
    Stream { frames: UnboundedReceiver<String>, produce: Pin<Box<dyn Future<Output = ()> + Send>> },
}

impl IntoResponse for Reply {
    fn into_response(self) -> Response {
        match self {
            Reply::Whole(whole) => whole.into_response(),
            Reply::Stream { frames, produce } => {
                // The work outlives the handler: it keeps the request's ids.
                match keel_core::trace::current() {
                    Some(context) => tokio::spawn(keel_core::trace::scope(context, produce)),
                    None => tokio::spawn(produce),
                };
                let frames = UnboundedReceiverStream::new(frames).map(Ok::<String, std::convert::Infallible>);
                let mut out = Response::new(Body::from_stream(frames));
                let headers = out.headers_mut();
                headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
                headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
                out
            }
        }
    }
}

/// A streamed reply whose frames come from `produce`.
pub fn stream<F, Fut>(produce: F) -> Reply
where
    F: FnOnce(Events) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let (tx, frames) = unbounded_channel();
    Reply::Stream { frames, produce: Box::pin(produce(tx)) }
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
    send(events, Some("error"), &keel_core::http::error_body(error, request_id));
}

/// Text that may yet turn out to be citation markers: "[", "[1", "[1][2".
fn may_be_markers(text: &str) -> bool {
    text.chars().all(|c| c == '[' || c == ']' || c.is_ascii_digit() || c.is_whitespace())
}

/// Passes a model's streamed text on a sentence at a time, and only the
/// sentences that cite evidence. Only the unsent tail is kept and re-read,
/// so a long answer costs linear time.
pub struct SentenceGate {
    events: Events,
    evidence_len: usize,
    /// Text not yet passed on: the sentence still being written.
    unsent: Mutex<String>,
}

impl SentenceGate {
    pub fn new(events: Events, evidence_len: usize) -> Self {
        Self { events, evidence_len, unsent: Mutex::new(String::new()) }
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
        if let Ok(mut unsent) = self.unsent.lock() {
            unsent.clear();
        }
        send(&self.events, Some("reset"), &json!({}));
    }

    fn flush(&self, delta: Option<&str>) {
        let Ok(mut unsent) = self.unsent.lock() else { return };
        if let Some(d) = delta {
            unsent.push_str(d);
        }
        let mut all = sentences_at(&unsent);
        // While text is still coming, the last sentence may be unfinished, and
        // so may the one before it while the last could still become its
        // citation ("[", "[1"): they stay, as written, for the next delta.
        let held = match all.last() {
            Some(_) if delta.is_none() => 0,
            Some((_, last)) if all.len() > 1 && may_be_markers(last) => 2,
            Some(_) => 1,
            None => 0,
        };
        let first_held = all.split_off(all.len() - held).into_iter().next();
        for (_, s) in &all {
            if is_cited(s, self.evidence_len) {
                send(&self.events, Some("delta"), &json!({"text": format!("{s} ")}));
            }
        }
        *unsent = first_held.map(|(start, _)| unsent[start..].to_string()).unwrap_or_default();
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

    /// Where the deltas break (inside words, between a period and its marker) changes nothing.
    #[test]
    fn the_gate_sends_the_same_sentences_however_the_text_is_cut() {
        let text = "Refunds take 5 days. [1] The moon is cheese. Receipts are kept [2]. Returns need a label [1][2].";
        let frames_of = |deltas: Vec<String>| {
            let (tx, mut rx) = unbounded_channel();
            let gate = SentenceGate::new(tx, 2);
            for d in &deltas {
                gate.push(d);
            }
            gate.finish();
            std::iter::from_fn(|| rx.try_recv().ok()).collect::<Vec<_>>()
        };
        let whole = frames_of(vec![text.to_string()]);
        assert_eq!(whole.len(), 3, "{whole:?}");
        assert_eq!(frames_of(text.chars().map(String::from).collect()), whole);
        assert_eq!(frames_of(vec!["Refunds take 5 days.".into(), text["Refunds take 5 days.".len()..].to_string()]), whole);
    }
}
