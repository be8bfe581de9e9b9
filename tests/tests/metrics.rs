// Test-only code: helpers outside #[test] functions may unwrap and panic too.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

//! `GET /metrics` on the local stack, scraped as Prometheus would, after a
//! known sequence of requests: each count is the one the sequence makes.
//! (One test in this binary: the recorder is process-wide.)

use keel_emulator::demo::start_connector;
use keel_tests::gateway::{chat, gateway};
use keel_tests::stub::StubModels;
use keel_tests::tenant;
use serde_json::json;
use std::collections::BTreeMap;
use std::time::Duration;

/// The scrape's samples: `(name, labels) → value`.
struct Scrape(Vec<(String, BTreeMap<String, String>, f64)>);

impl Scrape {
    fn parse(text: &str) -> Self {
        let mut samples = Vec::new();
        for line in text.lines().filter(|l| !l.starts_with('#') && !l.trim().is_empty()) {
            let (series, value) = line.rsplit_once(' ').unwrap();
            let (name, labels) = match series.split_once('{') {
                Some((name, rest)) => (name, rest.trim_end_matches('}')),
                None => (series, ""),
            };
            let labels = labels
                .split("\",")
                .filter(|p| !p.is_empty())
                .map(|p| {
                    let (k, v) = p.split_once('=').unwrap();
                    (k.to_string(), v.trim_matches('"').to_string())
                })
                .collect();
            samples.push((name.to_string(), labels, value.parse().unwrap()));
        }
        Self(samples)
    }

    /// The sum of `name`'s samples whose labels include every `(key, value)` of `with`.
    fn sum(&self, name: &str, with: &[(&str, &str)]) -> f64 {
        self.0
            .iter()
            .filter(|(n, labels, _)| n == name && with.iter().all(|(k, v)| labels.get(*k).map(String::as_str) == Some(*v)))
            .map(|(_, _, v)| v)
            .sum()
    }
}

#[tokio::test]
async fn the_scrape_counts_what_a_known_sequence_of_requests_did() {
    let stub = StubModels::start().await;
    let (_dir, stack, c) = gateway(&stub.catalog(&[("small", "t2", 0.5, 5_000)])).await;
    let t = tenant(&c, "metered", json!({})).await;
    let connector = start_connector().await.unwrap();

    let (s, _) = c.call("PUT", "/v1/documents/guide", &t.admin, Some(json!({"text": "Refunds are paid within five days."}))).await.unwrap();
    assert_eq!(s, 200);
    for _ in 0..2 {
        let (s, _) = c.call("POST", "/v1/ask", &t.member, Some(json!({"question": "When are refunds paid?"}))).await.unwrap();
        assert_eq!(s, 200);
    }
    let (s, _) = c.call("POST", "/v1/ask", &t.member, Some(json!({"question": "What colour is the moon of Neptune?"}))).await.unwrap();
    assert_eq!(s, 200);
    let schema = json!({"type": "object", "required": ["amount"], "properties": {"amount": {"type": "number"}}});
    let tool = json!({"description": "refund", "risk": "low", "input_schema": schema, "connector": {"url": format!("{}/refunds", connector.url)}});
    let (s, b) = c.call("PUT", "/v1/tools/refund", &t.admin, Some(tool)).await.unwrap();
    assert_eq!(s, 200, "{b}");
    let (s, _) = c.call("POST", "/v1/actions", &t.member, Some(json!({"tool": "refund", "args": {"amount": "ten"}, "idempotency_key": "m-1"}))).await.unwrap();
    assert_eq!(s, 422);
    let (s, b) = c.call("POST", "/v1/actions", &t.member, Some(json!({"tool": "refund", "args": {"amount": 10}, "idempotency_key": "m-2"}))).await.unwrap();
    assert!((200..300).contains(&s), "{b}");
    // The same prompt twice (temperature 0 by default): one model call, then a cache hit.
    for _ in 0..2 {
        let (s, b) = chat(&c, &t.member, json!({"model": "auto", "messages": [{"role": "user", "content": "Say hello"}]})).await;
        assert_eq!(s, 200, "{b}");
    }
    let (s, _) = c.call("GET", "/v1/nowhere", &t.member, None).await.unwrap();
    assert_eq!(s, 404);
    assert!(stack.settle(Duration::from_secs(10)).await);

    let response = reqwest::get(format!("{}/metrics", stack.url())).await.unwrap();
    assert_eq!(response.status(), 200);
    assert!(response.headers()["content-type"].to_str().unwrap().starts_with("text/plain"));
    let text = response.text().await.unwrap();
    let m = Scrape::parse(&text);

    assert_eq!(m.sum("keel_http_requests_total", &[("route", "POST /v1/ask"), ("status", "200")]), 3.0, "{text}");
    assert_eq!(m.sum("keel_http_request_duration_seconds_count", &[("route", "POST /v1/ask")]), 3.0);
    assert_eq!(m.sum("keel_http_requests_total", &[("route", "POST /v1/actions"), ("status", "422")]), 1.0);
    assert_eq!(m.sum("keel_http_requests_total", &[("route", "unmatched"), ("status", "404")]), 1.0, "an unknown path is one route, not one per path");
    assert_eq!(m.sum("keel_router_decisions_total", &[("route", "ask")]), 3.0);
    assert_eq!(m.sum("keel_answers_total", &[]), 3.0);
    assert!(m.sum("keel_answers_total", &[("outcome", "refused")]) >= 1.0, "the moon of Neptune is not in the guide");
    assert_eq!(m.sum("keel_answer_groundedness_count", &[]), m.sum("keel_answers_total", &[]) - m.sum("keel_answers_total", &[("outcome", "refused")]), "groundedness of each answer given");
    assert_eq!(m.sum("keel_cache_requests_total", &[("result", "miss")]), 1.0, "{text}");
    assert_eq!(m.sum("keel_cache_requests_total", &[("result", "hit")]), 1.0, "the same prompt twice: one hit");
    assert_eq!(m.sum("keel_router_decisions_total", &[("route", "chat")]), 2.0);
    assert_eq!(m.sum("keel_model_calls_total", &[("model", "small"), ("outcome", "ok")]), 1.0);
    assert_eq!(m.sum("keel_model_call_duration_seconds_count", &[("model", "small")]), 1.0);
    assert!(m.sum("keel_model_tokens_total", &[("model", "small"), ("direction", "input")]) > 0.0);
    assert!(m.sum("keel_cost_usd_total", &[("tenant", "metered")]) > 0.0, "cost by tenant");
    assert!((m.sum("keel_cost_micro_usd_total", &[]) / 1e6 - m.sum("keel_cost_usd_total", &[])).abs() < 1e-6, "the same cost, summable across containers");
    assert_eq!(m.sum("keel_tool_arguments_total", &[("result", "invalid")]), 1.0);
    assert_eq!(m.sum("keel_tool_arguments_total", &[("result", "valid")]), 1.0);
    assert!(m.sum("keel_policy_decisions_total", &[("mode", "enforced")]) >= 1.0);
    assert!(m.sum("keel_actions_total", &[("status", "proposed")]) >= 1.0);
    for queue in ["ingest", "audit", "actions"] {
        assert!(text.contains(&format!("keel_queue_depth{{queue=\"{queue}\"}}")), "{queue}: {text}");
        assert_eq!(m.sum("keel_dead_letters", &[("queue", queue)]), 0.0);
    }
    stack.stop().await;
}
