//! `keel-bench gateway`: the model gateway's overhead. A stub
//! OpenAI-compatible model answers at once on loopback; an open-loop load
//! generator sends chat completions at a fixed rate, once straight to the
//! stub and once through the local stack's `/v1/chat/completions` (auth,
//! rate limit, routing, budget reserve and settle, cache lookup and write,
//! decision event), and reports latency percentiles of both and their
//! difference. Latency is measured from each request's scheduled send time,
//! so a stalled server cannot hide queued requests. Build it in release:
//!
//! ```text
//! cargo run --release -p keel-tests --bin keel-bench -- gateway [seconds=5] [runs=3]
//! ```
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use keel_tests::stub::{Behavior, StubModels};
use keel_tests::{config, percentile, start_stack, tenant, Client};
use serde_json::json;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

const RATES: [u64; 2] = [100, 1_000];

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    percentile(&v, 0.5)
}

/// Sends `rate` requests a second for `seconds`; returns sorted latencies (ms) and the error count.
/// A pacing thread starts each request at its scheduled time with the OS's
/// microsecond sleep (tokio's timer wheel would add up to 1 ms of its own).
async fn open_loop(url: String, key: Option<String>, rate: u64, seconds: u64, counter: Arc<AtomicU64>) -> (Vec<f64>, usize) {
    let http = reqwest::Client::new();
    let runtime = tokio::runtime::Handle::current();
    let total = rate * seconds;
    let pacer = std::thread::spawn(move || {
        let start = std::time::Instant::now() + Duration::from_millis(50);
        (0..total)
            .map(|i| {
                let at = start + Duration::from_nanos(i * 1_000_000_000 / rate);
                std::thread::sleep(at.saturating_duration_since(std::time::Instant::now()));
                let (http, url, key, counter) = (http.clone(), url.clone(), key.clone(), counter.clone());
                runtime.spawn(async move {
                    // A fresh prompt each time: every request misses the cache and writes it.
                    let n = counter.fetch_add(1, Ordering::Relaxed);
                    let body = json!({"model": "auto", "max_tokens": 16, "messages": [{"role": "user", "content": format!("ping {n}")}]});
                    let mut req = http.post(&url).json(&body);
                    if let Some(k) = &key {
                        req = req.bearer_auth(k);
                    }
                    let ok = match req.send().await {
                        Ok(r) => r.status().is_success() && r.bytes().await.is_ok(),
                        Err(_) => false,
                    };
                    // From the scheduled time, so a stalled server cannot hide queued requests.
                    (at.elapsed().as_secs_f64() * 1e3, ok)
                })
            })
            .collect::<Vec<_>>()
    });
    let tasks = tokio::task::spawn_blocking(move || pacer.join().unwrap()).await.unwrap();
    let mut ms = Vec::with_capacity(tasks.len());
    let mut errors = 0;
    for t in tasks {
        let (latency, ok) = t.await.unwrap();
        if ok {
            ms.push(latency);
        } else {
            errors += 1;
        }
    }
    ms.sort_by(f64::total_cmp);
    (ms, errors)
}

async fn gateway(seconds: u64, runs: usize) {
    let stub = StubModels::start().await;
    stub.set("stub", Behavior::Answer("pong".into()));
    let dir = tempfile::tempdir().unwrap();
    let models = stub.catalog(&[("stub", "t2", 0.001, 5_000)]);
    let stack =
        start_stack(dir.path(), config(&[("KEEL_MODELS", &models), ("KEEL_MODEL_DIR", ""), ("KEEL_TENANT_CACHE_SECS", "5")])).await;
    let c = Client::new(stack.url());
    let t = tenant(&c, "bench", json!({"rate_limit_per_minute": 10_000_000, "budgets": {"monthly_usd": 1_000_000.0}})).await;
    let counter = Arc::new(AtomicU64::new(0));
    let direct_url = format!("{}/chat/completions", stub.base_url());
    let gateway_url = format!("{}/v1/chat/completions", stack.url());
    // Warm both paths (connections, caches, SQLite pages).
    open_loop(gateway_url.clone(), Some(t.member.clone()), 100, 1, counter.clone()).await;
    open_loop(direct_url.clone(), None, 100, 1, counter.clone()).await;

    println!("gateway overhead: chat completions against a stub model on loopback, {seconds} s per run, {runs} runs per rate");
    for rate in RATES {
        let mut rows: Vec<[f64; 4]> = Vec::new();
        for run in 0..runs {
            let (direct, e1) = open_loop(direct_url.clone(), None, rate, seconds, counter.clone()).await;
            assert!(stack.settle(Duration::from_secs(60)).await, "audit queue drained");
            let (through, e2) = open_loop(gateway_url.clone(), Some(t.member.clone()), rate, seconds, counter.clone()).await;
            assert!(stack.settle(Duration::from_secs(60)).await, "audit queue drained");
            let row = [percentile(&direct, 0.5), percentile(&direct, 0.99), percentile(&through, 0.5), percentile(&through, 0.99)];
            println!(
                "  {rate} rps run {}: direct p50 {:.3} p99 {:.3} ms | gateway p50 {:.3} p99 {:.3} ms | errors {e1}/{e2}",
                run + 1,
                row[0],
                row[1],
                row[2],
                row[3]
            );
            rows.push(row);
        }
        let col = |i: usize| median(rows.iter().map(|r| r[i]).collect());
        println!(
            "{rate} rps (median of {runs} runs): direct p50 {:.3} ms p99 {:.3} ms; gateway p50 {:.3} ms p99 {:.3} ms; \
             overhead p50 {:.3} ms p99 {:.3} ms",
            col(0),
            col(1),
            col(2),
            col(3),
            col(2) - col(0),
            col(3) - col(1)
        );
    }
    stack.stop().await;
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let number = |i: usize, default: u64| args.get(i).and_then(|a| a.parse().ok()).unwrap_or(default);
    match args.first().map(String::as_str) {
        Some("gateway") => gateway(number(1, 5), number(2, 3) as usize).await,
        _ => {
            eprintln!("usage: keel-bench gateway [seconds] [runs]");
            std::process::exit(2);
        }
    }
}
