//! `keel-bench aws`: the request path as it runs on AWS, simulated
//! (`keel_tests::aws_path`): every route's real Lambda handler against moto
//! server, each AWS call a set latency away (plus a fifth of it as jitter).
//! For each route it reports the AWS calls a request makes, the round trips
//! the caller waits for in turn before the model call and after it, and the
//! latency the request adds to its model call (all of it, for routes without
//! one). The routes are taken in turn, one request each, so noise falls on
//! all alike.

use keel_tests::aws_path::{authorizer_event, http_event, member, AwsPath, Sample, KEY};
use keel_tests::percentile;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::time::Duration;

/// A route under measurement: which function, and its `i`th request.
struct Route {
    name: &'static str,
    function: fn(&AwsPath) -> &keel_lambda::Function,
    event: fn(usize) -> Value,
}

fn chat(content: String, temperature: f64) -> Value {
    let body = json!({"model": "auto", "temperature": temperature, "messages": [{"role": "user", "content": content}]});
    http_event("POST", "/v1/chat/completions", &body, &member())
}

fn routes() -> Vec<Route> {
    vec![
        Route { name: "authorizer, warm key", function: |p| &p.auth, event: |_| authorizer_event(KEY) },
        Route { name: "chat, cacheable, miss", function: |p| &p.routing, event: |i| chat(format!("Summarize policy {i}."), 0.0) },
        Route { name: "chat, cache hit", function: |p| &p.routing, event: |_| chat("Summarize our policies.".into(), 0.0) },
        Route { name: "chat, not cacheable", function: |p| &p.routing, event: |i| chat(format!("Write haiku {i}."), 0.7) },
        Route {
            name: "ask, hosted answer",
            function: |p| &p.routing,
            event: |i| http_event("POST", "/v1/ask", &json!({"question": format!("Are refunds paid to my card quickly {i}?")}), &member()),
        },
        Route { name: "search", function: |p| &p.retrieval, event: |_| http_event("POST", "/v1/search", &json!({"query": "refund days"}), &member()) },
        Route {
            name: "action proposal (low risk, runs)",
            function: |p| &p.tools,
            event: |i| {
                let body = json!({"tool": "tag_order", "args": {"order_id": format!("A-{i}")}, "idempotency_key": format!("tag-{i}-{}", uuid::Uuid::new_v4())});
                http_event("POST", "/v1/actions", &body, &member())
            },
        },
    ]
}

pub async fn run(requests: usize, latencies_ms: &[u64]) {
    let Ok(moto) = std::env::var("KEEL_MOTO_ENDPOINT") else {
        eprintln!("keel-bench aws needs moto server: KEEL_MOTO_ENDPOINT=http://127.0.0.1:PORT (scripts/bench-aws.sh starts one)");
        std::process::exit(2);
    };
    println!("| latency added per AWS call | one AWS call in all (p50) | route | calls / request | round trips waited in turn before the model | after it | added p50 | added p99 | p50 in AWS calls |");
    println!("|---|---|---|---|---|---|---|---|---|");
    let mut calls_by_route: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    for &ms in latencies_ms {
        let latency = Duration::from_millis(ms);
        let path = AwsPath::start(&moto, latency, latency / 5).await;
        let routes = routes();
        let mut samples: Vec<Vec<Sample>> = routes.iter().map(|_| Vec::new()).collect();
        // Three rounds warm each route (connections, the index, the key and tenant caches, the cache entry a hit reads).
        for i in 0..requests + 3 {
            for (r, route) in routes.iter().enumerate() {
                let sample = path.measure((route.function)(&path), (route.event)(i)).await;
                assert!(sample.status < 300, "{}: {} {}", route.name, sample.status, sample.body);
                if i >= 3 {
                    samples[r].push(sample);
                }
            }
        }
        // What one AWS call takes here, moto's own time included: the unit the target is stated in.
        let mut one_call: Vec<f64> = samples.iter().flatten().flat_map(|s| s.calls.iter().map(|c| (c.end - c.start).as_secs_f64() * 1e3)).collect();
        one_call.sort_by(f64::total_cmp);
        let rtt = percentile(&one_call, 0.5);
        for (route, samples) in routes.iter().zip(&samples) {
            let mut added: Vec<f64> = samples.iter().map(|s| s.overhead().as_secs_f64() * 1e3).collect();
            added.sort_by(f64::total_cmp);
            let mut calls: Vec<f64> = samples.iter().map(|s| s.calls.len() as f64).collect();
            calls.sort_by(f64::total_cmp);
            let before = samples.iter().map(|s| s.before_model).max().unwrap_or(0);
            let after = samples.iter().map(|s| s.after_model).max().unwrap_or(0);
            let p50 = percentile(&added, 0.5);
            println!(
                "| {ms} ms | {rtt:.1} ms | {} | {} | {before} | {after} | {p50:.1} ms | {:.1} ms | {:.1} |",
                route.name,
                percentile(&calls, 0.5),
                percentile(&added, 0.99),
                p50 / rtt
            );
            calls_by_route.entry(route.name).or_insert_with(|| operations(samples.last().unwrap()));
        }
    }
    println!("\nThe calls each route makes (one request, in the order they started):\n");
    println!("| route | AWS calls |");
    println!("|---|---|");
    for route in routes() {
        println!("| {} | {} |", route.name, calls_by_route.get(route.name).map(|c| c.join(", ")).unwrap_or_default());
    }
}

/// A request's AWS operations, named shortly (`UpdateItem`, `SendMessage`, `S3 GET`).
fn operations(sample: &Sample) -> Vec<String> {
    let named: Vec<String> = sample
        .calls
        .iter()
        .map(|c| match c.what.rsplit_once('.') {
            Some((_, op)) if !c.what.contains(' ') => op.to_string(),
            _ => format!("S3 {}", c.what.split(' ').next().unwrap_or("")),
        })
        .collect();
    if named.is_empty() {
        vec!["none".into()]
    } else {
        named
    }
}
