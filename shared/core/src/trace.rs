//! Request ids and W3C trace context. Every request gets a request id (the
//! caller's `x-request-id` when it is well-formed) and a `traceparent` that
//! continues the caller's trace, or starts one. Both travel with the work:
//! the API envelope runs the handler inside `scope`, decision events and
//! the audit queue's attributes carry them, an action keeps the context of
//! the request that last moved it (so its saga steps and connector calls
//! continue the same trace), and outbound calls send `traceparent`.

use serde::{Deserialize, Serialize};

tokio::task_local! {
    static CURRENT: RequestContext;
}

/// Longest request id kept from a caller.
const MAX_REQUEST_ID: usize = 128;

/// The request a piece of work belongs to.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestContext {
    pub request_id: String,
    /// `00-<trace id>-<span id>-<flags>`: this request's own span in the trace.
    pub traceparent: String,
    /// When the request arrived (epoch milliseconds): its decisions' latency.
    #[serde(default)]
    pub started_ms: i64,
    /// The incarnation of the caller's tenant (`tenants::Tenant::incarnation`):
    /// work it leaves behind (decision events, saga steps) carries it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub incarnation: Option<String>,
    /// Who the request came from: its decision events record it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub actor: Option<crate::chain::Actor>,
}

impl RequestContext {
    /// The context of a request: the caller's request id if well-formed (else
    /// `fallback_id`), and a new span in the caller's trace (or a new trace).
    pub fn from_headers(request_id: Option<&str>, traceparent: Option<&str>, fallback_id: &str) -> Self {
        let request_id = request_id.filter(|id| well_formed_request_id(id)).unwrap_or(fallback_id).to_string();
        let (trace_id, flags) = match traceparent.and_then(parse_traceparent) {
            Some((trace, _, flags)) => (trace, flags),
            None => (new_trace_id(), "01".to_string()),
        };
        let started_ms = chrono::Utc::now().timestamp_millis();
        Self { request_id, traceparent: format!("00-{trace_id}-{}-{flags}", new_span_id()), started_ms, incarnation: None, actor: None }
    }

    /// The 32 hex digits of the trace.
    pub fn trace_id(&self) -> &str {
        self.traceparent.get(3..35).unwrap_or("")
    }

    /// A `traceparent` for a call this work makes: the same trace, a new span.
    pub fn child(&self) -> String {
        let flags = self.traceparent.get(53..55).unwrap_or("01");
        format!("00-{}-{}-{flags}", self.trace_id(), new_span_id())
    }
}

/// Runs `work` as part of `context`'s request.
pub async fn scope<F: std::future::Future>(context: RequestContext, work: F) -> F::Output {
    CURRENT.scope(context, work).await
}

/// The request the running work belongs to, if it runs inside one.
pub fn current() -> Option<RequestContext> {
    CURRENT.try_with(Clone::clone).ok()
}

/// 1 to 128 characters of letters, digits, `-`, `_`, `.` and `:`.
pub fn well_formed_request_id(id: &str) -> bool {
    (1..=MAX_REQUEST_ID).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'))
}

/// `(trace id, parent span id, flags)` of a version-00 `traceparent`; `None`
/// for anything else, all-zero ids included (the W3C rules).
pub fn parse_traceparent(value: &str) -> Option<(String, String, String)> {
    let parts: Vec<&str> = value.trim().split('-').collect();
    let [version, trace, span, flags] = parts.as_slice() else { return None };
    let hex = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    let zero = |s: &str| s.bytes().all(|b| b == b'0');
    if *version != "00" || !hex(trace, 32) || !hex(span, 16) || !hex(flags, 2) || zero(trace) || zero(span) {
        return None;
    }
    Some((trace.to_string(), span.to_string(), flags.to_string()))
}

fn new_trace_id() -> String {
    hex::encode(rand::random::<[u8; 16]>())
}

fn new_span_id() -> String {
    hex::encode(rand::random::<[u8; 8]>())
}

#[cfg(test)]
mod tests {
    use super::*;

    const CALLER: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn a_callers_trace_is_continued_with_a_new_span() {
        let c = RequestContext::from_headers(Some("req-42"), Some(CALLER), "gw-1");
        assert_eq!((c.request_id.as_str(), c.trace_id()), ("req-42", "4bf92f3577b34da6a3ce929d0e0e4736"));
        assert!(parse_traceparent(&c.traceparent).is_some_and(|(_, span, flags)| span != "00f067aa0ba902b7" && flags == "01"));
        let child = c.child();
        assert!(child.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-") && child != c.traceparent);
    }

    #[test]
    fn malformed_ids_and_trace_context_are_replaced_not_kept() {
        for bad in ["", "has space", "quote\"", &"x".repeat(129), "line\nbreak"] {
            assert_eq!(RequestContext::from_headers(Some(bad), None, "gw-1").request_id, "gw-1", "{bad:?}");
        }
        for bad in ["01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01", "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01", "garbage"] {
            let c = RequestContext::from_headers(None, Some(bad), "gw-1");
            assert!(!bad.contains(c.trace_id()) && parse_traceparent(&c.traceparent).is_some(), "{bad}");
        }
    }

    #[tokio::test]
    async fn work_inside_a_scope_knows_its_request() {
        assert_eq!(current(), None);
        let c = RequestContext::from_headers(Some("r1"), None, "gw");
        assert_eq!(scope(c.clone(), async { current() }).await, Some(c));
    }
}
