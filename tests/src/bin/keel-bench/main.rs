//! `keel-bench gateway`: the model gateway's overhead. A stub
//! OpenAI-compatible model answers at once on loopback; an open-loop load
//! generator sends chat completions at a fixed rate, once straight to the
//! stub and once through the local stack's `/v1/chat/completions` (auth,
//! rate limit, routing, budget reserve and settle, cache lookup and write,
//! decision event), and reports latency percentiles of both and their
//! difference. A run alternates one-second slices of the two paths, so that
//! a spell of noise on a shared machine falls on both alike rather than on
//! whichever happened to run then. Latency is measured from each request's
//! scheduled send time, so a stalled server cannot hide queued requests.
//! It also reports the CPU time the gateway adds per request: the process's
//! CPU time over the gateway slices less that over the direct slices, each
//! counted until the audit queue has drained, so the decision log's
//! consumer is included. It varies less than the tail latency on a shared
//! machine. Build it in release:
//!
//! ```text
//! cargo run --release -p keel-tests --bin keel-bench -- gateway [seconds=5] [runs=3]
//! KEEL_BENCH_DIR=/dev/shm cargo run … gateway   # the store on tmpfs: the gateway without disk stalls
//! ```
//!
//! `keel-bench actions`: governed actions end to end through the local stack.
//! `workers` clients each propose low-risk actions back to back (auth, schema,
//! Cedar, daily counters, idempotency record, decision event, saga start); the
//! saga runs each through a connector on loopback. Reports actions per second
//! (first proposal to the last connector call), proposal latency and the time
//! from proposal to the connector call:
//!
//! ```text
//! cargo run --release -p keel-tests --bin keel-bench -- actions [actions=500] [runs=3] [workers=8]
//! ```
//!
//! `keel-bench aws`: the request path on AWS, simulated against moto server
//! with a round trip added to every AWS call (`aws.rs`; `scripts/bench-aws.sh`):
//!
//! ```text
//! KEEL_MOTO_ENDPOINT=… cargo run --release -p keel-tests --bin keel-bench -- aws [requests=40] [latencies_ms=1,5,10]
//! ```
//!
//! `keel-bench cold-start`: each function binary's init against a local
//! Runtime API (`cold_start.rs`; `scripts/bench-cold-start.sh` builds the
//! release binaries first):
//!
//! ```text
//! cargo run --release -p keel-tests --bin keel-bench -- cold-start [runs=10]
//! ```
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod aws;
mod cold_start;

use keel_emulator::Stack;
use keel_tests::stub::{Behavior, StubModels};
use keel_tests::{config, percentile, start_stack, tenant, Client};
use serde_json::json;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const RATES: [u64; 2] = [100, 1_000];

/// CPU seconds this process has used so far, all threads: user and system
/// time from /proc/self/stat, in Linux's clock ticks of 1/100 s.
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
    // Fields after the command name (which may hold spaces): utime and stime are the 12th and 13th.
    let fields: Vec<&str> = stat.rsplit_once(')').unwrap().1.split_whitespace().collect();
    (fields[11].parse::<f64>().unwrap() + fields[12].parse::<f64>().unwrap()) / 100.0
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    percentile(&v, 0.5)
}

/// Sends `rate` requests a second: `warmup` requests, then `seconds` of
/// them; returns the latter's latencies (ms) and the error count. A pacing
/// thread starts each request at its scheduled time with the OS's
/// microsecond sleep (tokio's timer wheel would add up to 1 ms of its own).
async fn open_loop(
    http: &reqwest::Client,
    url: &str,
    key: Option<&str>,
    rate: u64,
    (warmup, seconds): (u64, u64),
    counter: &Arc<AtomicU64>,
) -> (Vec<f64>, usize) {
    let (http, url, key, counter) = (http.clone(), url.to_string(), key.map(str::to_string), counter.clone());
    let runtime = tokio::runtime::Handle::current();
    let total = warmup + rate * seconds;
    let pacer = std::thread::spawn(move || {
        let start = std::time::Instant::now() + Duration::from_millis(1);
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
    let mut tasks = tokio::task::spawn_blocking(move || pacer.join().unwrap()).await.unwrap();
    for t in tasks.drain(..warmup as usize) {
        t.await.unwrap();
    }
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
    (ms, errors)
}

/// One path's share of a run: latencies (ms), errors, CPU seconds and requests sent.
#[derive(Default)]
struct Slices {
    ms: Vec<f64>,
    errors: usize,
    cpu: f64,
    sent: u64,
}

impl Slices {
    /// Sends one second of load and waits for the audit queue to drain, so
    /// that the decision log's consumer counts in this path's CPU time. The
    /// slice's first 50 ms are not counted: after the pause between slices
    /// they measure waking an idle machine, on either path.
    async fn add(&mut self, stack: &Stack, http: &reqwest::Client, url: &str, key: Option<&str>, rate: u64, counter: &Arc<AtomicU64>) {
        let cpu = cpu_seconds();
        let warmup = rate / 20;
        let (ms, errors) = open_loop(http, url, key, rate, (warmup, 1), counter).await;
        assert!(stack.settle(Duration::from_secs(60)).await, "audit queue drained");
        self.cpu += cpu_seconds() - cpu;
        self.sent += warmup + rate;
        self.ms.extend(ms);
        self.errors += errors;
    }

    fn sorted(mut self) -> Self {
        self.ms.sort_by(f64::total_cmp);
        self
    }
}

async fn gateway(seconds: u64, runs: usize) {
    let stub = StubModels::start().await;
    stub.set("stub", Behavior::Answer("pong".into()));
    // KEEL_BENCH_DIR places the local store (e.g. on tmpfs, to take the disk out of the measure).
    let dir = match std::env::var("KEEL_BENCH_DIR") {
        Ok(parent) => tempfile::tempdir_in(parent).unwrap(),
        Err(_) => tempfile::tempdir().unwrap(),
    };
    let models = stub.catalog(&[("stub", "t2", 0.001, 5_000)]);
    let stack =
        start_stack(dir.path(), config(&[("KEEL_MODELS", &models), ("KEEL_MODEL_DIR", ""), ("KEEL_TENANT_CACHE_SECS", "5")])).await;
    let c = Client::new(stack.url());
    let t = tenant(&c, "bench", json!({"rate_limit_per_minute": 1_000_000, "budgets": {"monthly_usd": 1_000_000.0}})).await;
    let counter = Arc::new(AtomicU64::new(0));
    let direct_url = format!("{}/chat/completions", stub.base_url());
    let gateway_url = format!("{}/v1/chat/completions", stack.url());
    // One client per path for the whole benchmark, as a caller would keep.
    let (direct_http, gateway_http) = (reqwest::Client::new(), reqwest::Client::new());
    // Warm both paths (connections, caches, SQLite pages).
    open_loop(&gateway_http, &gateway_url, Some(&t.member), 100, (0, 1), &counter).await;
    open_loop(&direct_http, &direct_url, None, 100, (0, 1), &counter).await;

    println!("gateway overhead: chat completions against a stub model on loopback, {seconds} s per run, {runs} runs per rate");
    for rate in RATES {
        let mut rows: Vec<[f64; 5]> = Vec::new();
        for run in 0..runs {
            let (mut direct, mut through) = (Slices::default(), Slices::default());
            for _ in 0..seconds {
                direct.add(&stack, &direct_http, &direct_url, None, rate, &counter).await;
                through.add(&stack, &gateway_http, &gateway_url, Some(&t.member), rate, &counter).await;
            }
            let (direct, through) = (direct.sorted(), through.sorted());
            let added_cpu_us = (through.cpu - direct.cpu) * 1e6 / through.sent as f64;
            let (e1, e2) = (direct.errors, through.errors);
            let (direct, through) = (direct.ms, through.ms);
            let row =
                [percentile(&direct, 0.5), percentile(&direct, 0.99), percentile(&through, 0.5), percentile(&through, 0.99), added_cpu_us];
            println!(
                "  {rate} rps run {}: direct p50 {:.3} p99 {:.3} ms | gateway p50 {:.3} p99 {:.3} ms | gateway CPU {:.0} us/request | errors {e1}/{e2}",
                run + 1,
                row[0],
                row[1],
                row[2],
                row[3],
                row[4]
            );
            rows.push(row);
        }
        let col = |i: usize| median(rows.iter().map(|r| r[i]).collect());
        // Also each run's own difference: its slices alternate, so a spell of noise falls on both of its paths.
        let per_run = |hi: usize, lo: usize| median(rows.iter().map(|r| r[hi] - r[lo]).collect());
        println!(
            "{rate} rps (median of {runs} runs): direct p50 {:.3} ms p99 {:.3} ms; gateway p50 {:.3} ms p99 {:.3} ms; \
             overhead p50 {:.3} ms p99 {:.3} ms (median of the runs' own differences: p50 {:.3} ms p99 {:.3} ms); \
             gateway CPU {:.0} us/request",
            col(0),
            col(1),
            col(2),
            col(3),
            col(2) - col(0),
            col(3) - col(1),
            per_run(2, 0),
            per_run(3, 1),
            col(4)
        );
    }
    stack.stop().await;
}

/// A connector on loopback that notes when each idempotency key first arrives.
async fn arrival_connector() -> (String, Arc<Mutex<HashMap<String, Instant>>>) {
    let arrivals: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let seen = arrivals.clone();
    let app = axum::Router::new().fallback(move |req: axum::extract::Request| {
        let seen = seen.clone();
        async move {
            let key = req.headers().get("idempotency-key").and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
            seen.lock().unwrap().entry(key).or_insert_with(Instant::now);
            axum::Json(json!({"ok": true}))
        }
    });
    let url = format!("http://{}", keel_tests::serve_on_loopback(app).await);
    (url, arrivals)
}

async fn actions(total: usize, runs: usize, workers: usize) {
    let dir = tempfile::tempdir().unwrap();
    let stack = start_stack(dir.path(), config(&[("KEEL_MODEL_DIR", ""), ("KEEL_TENANT_CACHE_SECS", "5")])).await;
    let c = Client::new(stack.url());
    let t = tenant(&c, "bench", json!({"autonomy": "unattended", "rate_limit_per_minute": 1_000_000})).await;
    let (url, arrivals) = arrival_connector().await;
    let tool = json!({"description": "credit an account", "risk": "low",
        "input_schema": {"type": "object", "required": ["account", "amount"], "additionalProperties": false,
            "properties": {"account": {"type": "string"}, "amount": {"type": "number", "minimum": 0}}},
        "connector": {"url": format!("{url}/credit")}, "compensation": {"url": format!("{url}/credit/undo")}, "metered_arg": "amount"});
    let (s, r) = c.call("PUT", "/v1/tools/credit", &t.admin, Some(tool)).await.unwrap();
    assert_eq!(s, 200, "{r}");
    println!("governed actions end to end: {total} actions per run, {workers} workers proposing back to back, {runs} runs");
    let mut rows: Vec<[f64; 5]> = Vec::new();
    for run in 0..=runs {
        let next = Arc::new(AtomicU64::new(0));
        let sent: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
        let start = Instant::now();
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..workers {
            let (c, key, next, sent) = (Client::new(stack.url()), t.member.clone(), next.clone(), sent.clone());
            tasks.spawn(async move {
                let mut latencies = Vec::new();
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed) as usize;
                    if i >= total {
                        return latencies;
                    }
                    let idempotency_key = format!("r{run}-{i}");
                    let body = json!({"tool": "credit", "args": {"account": format!("acc-{i}"), "amount": 1}, "idempotency_key": idempotency_key});
                    let began = Instant::now();
                    sent.lock().unwrap().insert(format!("bench:{idempotency_key}:main"), began);
                    let (s, r) = c.call("POST", "/v1/actions", &key, Some(body)).await.unwrap();
                    assert_eq!(s, 201, "{r}");
                    latencies.push(began.elapsed().as_secs_f64() * 1e3);
                }
            });
        }
        let mut propose: Vec<f64> = tasks.join_all().await.into_iter().flatten().collect();
        propose.sort_by(f64::total_cmp);
        let prefix = format!("bench:r{run}-");
        let deadline = Instant::now() + Duration::from_secs(120);
        let (last, mut end_to_end) = loop {
            let done = {
                let arrived = arrivals.lock().unwrap();
                let mine: Vec<(&String, &Instant)> = arrived.iter().filter(|(k, _)| k.starts_with(&prefix)).collect();
                assert!(Instant::now() < deadline, "only {} of {total} actions reached the connector", mine.len());
                (mine.len() == total).then(|| {
                    let sent = sent.lock().unwrap();
                    let last = mine.iter().map(|(_, at)| **at).max().unwrap();
                    let e2e: Vec<f64> = mine.iter().map(|(k, at)| at.duration_since(sent[k.as_str()]).as_secs_f64() * 1e3).collect();
                    (last, e2e)
                })
            };
            match done {
                Some(done) => break done,
                None => tokio::time::sleep(Duration::from_millis(5)).await,
            }
        };
        end_to_end.sort_by(f64::total_cmp);
        assert!(stack.settle(Duration::from_secs(120)).await, "audit queue drained");
        let row = [
            total as f64 / last.duration_since(start).as_secs_f64(),
            percentile(&propose, 0.5),
            percentile(&propose, 0.99),
            percentile(&end_to_end, 0.5),
            percentile(&end_to_end, 0.99),
        ];
        if run == 0 {
            continue; // warm-up: connections, caches, SQLite pages
        }
        println!(
            "  run {run}: {:.0} actions/s | propose p50 {:.2} p99 {:.2} ms | proposal to connector p50 {:.2} p99 {:.2} ms",
            row[0], row[1], row[2], row[3], row[4]
        );
        rows.push(row);
    }
    let col = |i: usize| median(rows.iter().map(|r| r[i]).collect());
    println!(
        "actions (median of {runs} runs): {:.0} actions/s; propose p50 {:.2} ms p99 {:.2} ms; proposal to connector p50 {:.2} ms p99 {:.2} ms",
        col(0),
        col(1),
        col(2),
        col(3),
        col(4)
    );
    stack.stop().await;
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let number = |i: usize, default: u64| args.get(i).and_then(|a| a.parse().ok()).unwrap_or(default);
    match args.first().map(String::as_str) {
        Some("gateway") => gateway(number(1, 5), number(2, 3) as usize).await,
        Some("actions") => actions(number(1, 500) as usize, number(2, 3) as usize, number(3, 8) as usize).await,
        Some("aws") => {
            let latencies: Vec<u64> = args.get(2).map_or("1,5,10", String::as_str).split(',').filter_map(|l| l.parse().ok()).collect();
            aws::run(number(1, 40) as usize, &latencies).await
        }
        Some("cold-start") => cold_start::run(number(1, 10) as usize).await,
        _ => {
            eprintln!("usage: keel-bench gateway [seconds] [runs]\n       keel-bench actions [actions] [runs] [workers]\n       keel-bench aws [requests] [latencies_ms]\n       keel-bench cold-start [runs]");
            std::process::exit(2);
        }
    }
}
