//! The router's decision alone: `cargo bench -p keel-routing --bench router`.
//! Times each `decide` call for a grounded ask that escalates and for a chat
//! request with a breaker open, over repeated runs; prints p50 and p99 per
//! run and their medians (DESIGN's budget: p99 < 50 µs).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use keel_core::models::{parse_catalog, RoutingPolicy};
use keel_core::stats::Runs;
use keel_routing::router::{decide, RouteInput};
use std::hint::black_box;
use std::time::Instant;

const RUNS: usize = 7;
const CALLS: usize = 200_000;

fn main() {
    let catalog = parse_catalog(
        r#"[{"name":"haiku","provider":"bedrock","model_id":"h","tier":"t2","usd_per_1k_input":0.00025,"usd_per_1k_output":0.00125},
            {"name":"llama-gpu","provider":"sagemaker","model_id":"e","tier":"t2","usd_per_1k_input":0.0002,"usd_per_1k_output":0.0002},
            {"name":"local","provider":"openai","model_id":"l","tier":"t2","usd_per_1k_input":0,"usd_per_1k_output":0,"base_url":"http://127.0.0.1:8000/v1"},
            {"name":"sonnet","provider":"bedrock","model_id":"s","tier":"t3","usd_per_1k_input":0.003,"usd_per_1k_output":0.015,"plans":["enterprise"]},
            {"name":"opus","provider":"bedrock","model_id":"o","tier":"t3","usd_per_1k_input":0.015,"usd_per_1k_output":0.075}]"#,
    )
    .unwrap();
    let policy = RoutingPolicy::default();
    let open = |m: &str| m == "local";
    let cases: [(&str, Option<f32>, Option<&str>); 2] = [("ask, low confidence", Some(0.42), None), ("chat, auto, breaker open", None, Some("auto"))];
    for (label, confidence, requested) in cases {
        let mut runs = Runs::default();
        for run in 0..RUNS {
            let mut ns = Vec::with_capacity(CALLS);
            for i in 0..CALLS {
                let input = RouteInput {
                    policy: &policy,
                    catalog: &catalog,
                    plan: "standard",
                    kill_switch: false,
                    confidence,
                    signal: "evidence confidence",
                    requested,
                    prompt_tokens: 300 + (i % 7) as u64,
                    open: &open,
                };
                let t = Instant::now();
                let d = decide(black_box(&input));
                ns.push(t.elapsed().as_nanos() as f64);
                black_box(d).unwrap();
            }
            let (p50, p99) = runs.add(ns);
            println!("{label}: run {}: p50 {p50:.2} µs p99 {p99:.2} µs", run + 1);
        }
        let (p50, p99) = runs.medians();
        println!("{label}: median of {RUNS} runs x {CALLS} decisions: p50 {p50:.2} µs, p99 {p99:.2} µs");
    }
}
