//! A proxy on loopback that makes a local endpoint behave like a remote one:
//! each request waits a set latency (plus jitter) before it is forwarded, and
//! is logged with when it started and ended. In front of moto server it
//! stands for the network between a Lambda function and DynamoDB, S3, SQS
//! and Step Functions; in front of a stub model (no latency) it records when
//! the model was called. Test and benchmark code.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// One call through the proxy.
#[derive(Clone, Debug)]
pub struct Call {
    pub start: Instant,
    pub end: Instant,
    /// The operation: the `x-amz-target` header (DynamoDB, SQS), else method and path (S3, Step Functions' REST calls).
    pub what: String,
    /// The sort key of the item a DynamoDB single-item call names (`RATE#…`, `SPEND#…`).
    pub item: Option<String>,
}

struct Proxy {
    target: String,
    latency: Duration,
    jitter: Duration,
    http: reqwest::Client,
    log: Mutex<Vec<Call>>,
}

pub struct LatencyProxy {
    addr: std::net::SocketAddr,
    state: Arc<Proxy>,
}

impl LatencyProxy {
    /// Forwards to `target` (`http://host:port`) after `latency` plus up to `jitter`.
    pub async fn start(target: &str, latency: Duration, jitter: Duration) -> Self {
        let http = reqwest::Client::builder().no_proxy().build().unwrap();
        let state = Arc::new(Proxy { target: target.trim_end_matches('/').to_string(), latency, jitter, http, log: Mutex::new(Vec::new()) });
        let app = axum::Router::new().fallback(forward).with_state(state.clone());
        let addr = crate::serve_on_loopback(app).await;
        Self { addr, state }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Calls that started at or after `since`, in the order they started.
    pub fn calls_since(&self, since: Instant) -> Vec<Call> {
        let mut calls: Vec<Call> = self.state.log.lock().unwrap().iter().filter(|c| c.start >= since).cloned().collect();
        calls.sort_by_key(|c| c.start);
        calls
    }
}

async fn forward(State(proxy): State<Arc<Proxy>>, method: Method, uri: Uri, headers: HeaderMap, body: Bytes) -> Response {
    let start = Instant::now();
    let what = match headers.get("x-amz-target").and_then(|v| v.to_str().ok()) {
        Some(target) => target.to_string(),
        None => format!("{method} {}", uri.path()),
    };
    let item = serde_json::from_slice::<serde_json::Value>(&body).ok().and_then(|b| b["Key"]["sk"]["S"].as_str().map(str::to_string));
    tokio::time::sleep(proxy.latency + jitter(proxy.jitter)).await;
    let url = format!("{}{}", proxy.target, uri.path_and_query().map(|p| p.as_str()).unwrap_or("/"));
    let mut request = proxy.http.request(method, url).body(body);
    for (name, value) in &headers {
        if name != "host" && name != "content-length" {
            request = request.header(name, value);
        }
    }
    let response = match request.send().await {
        Ok(r) => r,
        Err(e) => return (StatusCode::BAD_GATEWAY, e.to_string()).into_response(),
    };
    let status = response.status();
    let mut out_headers = HeaderMap::new();
    for (name, value) in response.headers() {
        if name != "transfer-encoding" && name != "content-length" {
            out_headers.insert(name.clone(), value.clone());
        }
    }
    let bytes = response.bytes().await.unwrap_or_default();
    proxy.log.lock().unwrap().push(Call { start, end: Instant::now(), what, item });
    (status, out_headers, bytes).into_response()
}

/// Up to `max`, spread by the clock's nanoseconds (no generator needed for this).
fn jitter(max: Duration) -> Duration {
    if max.is_zero() {
        return max;
    }
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().subsec_nanos() as u128;
    Duration::from_nanos((nanos * 7_919 % max.as_nanos()) as u64)
}

/// The most calls of `calls` that ran one after another, each starting once
/// the one before it had ended: the round trips a caller waited for in turn.
pub fn sequential_round_trips(calls: &[&Call]) -> usize {
    let mut sorted: Vec<&Call> = calls.to_vec();
    sorted.sort_by_key(|c| c.end);
    // chain[i]: the longest such run that ends with sorted[i].
    let mut chain = vec![1usize; sorted.len()];
    for i in 0..sorted.len() {
        for j in 0..i {
            if sorted[j].end <= sorted[i].start {
                chain[i] = chain[i].max(chain[j] + 1);
            }
        }
    }
    chain.into_iter().max().unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_count_calls_in_turn_not_calls_side_by_side() {
        let t = Instant::now();
        let at = |a: u64, b: u64, what: &str| Call { start: t + Duration::from_millis(a), end: t + Duration::from_millis(b), what: what.into(), item: None };
        let side_by_side = [at(0, 5, "a"), at(1, 6, "b"), at(0, 4, "c")];
        assert_eq!(sequential_round_trips(&side_by_side.iter().collect::<Vec<_>>()), 1);
        let in_turn = [at(0, 5, "a"), at(1, 6, "b"), at(6, 9, "c"), at(10, 12, "d")];
        assert_eq!(sequential_round_trips(&in_turn.iter().collect::<Vec<_>>()), 3);
        assert_eq!(sequential_round_trips(&[]), 0);
    }
}
