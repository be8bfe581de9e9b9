//! `keel-eval`: retrieval quality and performance on the public data sets in
//! `../shared/evaldata`, through the local stack. Build it in release:
//!
//! ```text
//! cargo run --release -p keel-tests --bin keel-eval -- search    # nDCG@10, latency, ingest, cold load, 100k chunks
//! cargo run --release -p keel-tests --bin keel-eval -- tune      # grid search on SciFact *train* qrels
//! cargo run --release -p keel-tests --bin keel-eval -- refusal   # refusal / false refusal (calibrated on train)
//! cargo run --release -p keel-tests --bin keel-eval -- pii       # precision / recall per entity type
//! cargo run --release -p keel-tests --bin keel-eval -- embed     # the embedding model alone
//! cargo run --release -p keel-tests --bin keel-eval -- injection # the injection guard on BIPIA and NotInject
//! cargo run --release -p keel-tests --bin keel-eval -- classify  # in-function classification on BFCL tool choice
//! cargo run --release -p keel-tests --bin keel-eval -- rank      # in-function reranking of BM25's SciFact top 50
//! ```
//!
//! `KEEL_EVALDATA` points at the data (default `../shared/evaldata`).
//! Latencies are medians and percentiles over every query of repeated rounds.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use keel_core::auth::Caller;
use keel_core::ports::{QueueName, WorkQueue};
use keel_core::TenantId;
use keel_emulator::demo::Client;
use keel_emulator::Stack;
use keel_tests::percentile;
use keel_retrieval::analyzer::term_frequencies;
use keel_retrieval::pii::{detect, PiiKind};
use keel_retrieval::Tuning;
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::time::{Duration, Instant};

mod data;
mod guards;
mod models;
mod search;
mod stack;

use data::*;
use guards::*;
use models::*;
use search::*;
use stack::*;

pub(crate) const ROUNDS: usize = 3;
pub(crate) const SCALE_CHUNKS: usize = 100_000;

pub(crate) fn ndcg_at_10(ranked: &[String], relevant: &HashSet<String>) -> f64 {
    let dcg: f64 = ranked.iter().take(10).enumerate().filter(|(_, d)| relevant.contains(*d)).map(|(i, _)| 1.0 / ((i + 2) as f64).log2()).sum();
    let ideal: f64 = (0..relevant.len().min(10)).map(|i| 1.0 / ((i + 2) as f64).log2()).sum();
    if ideal == 0.0 {
        0.0
    } else {
        dcg / ideal
    }
}

/// First occurrence of each document in a ranked chunk list.
pub(crate) fn documents(hits: &[Value]) -> Vec<String> {
    let mut seen = HashSet::new();
    hits.iter().filter_map(|h| h["doc_id"].as_str()).filter(|d| seen.insert(d.to_string())).map(str::to_string).collect()
}

pub(crate) fn report(label: &str, mut ms: Vec<f64>) {
    ms.sort_by(f64::total_cmp);
    println!(
        "  {label}: n={} p50={:.2} ms p95={:.2} ms p99={:.2} ms max={:.2} ms",
        ms.len(),
        percentile(&ms, 0.5),
        percentile(&ms, 0.95),
        percentile(&ms, 0.99),
        ms.last().copied().unwrap_or(f64::NAN)
    );
}

/// Peak resident memory of this process (VmHWM), in MiB.
pub(crate) fn peak_memory_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<f64>().ok())
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

#[tokio::main]
async fn main() {
    match std::env::args().nth(1).as_deref() {
        Some("search") => search_eval().await,
        Some("tune") => tune().await,
        Some("refusal") => refusal().await,
        Some("pii") => pii_eval(),
        Some("embed") => embed_eval(),
        Some("embed-feed") => embed_feed(&std::env::args().skip(2).collect::<Vec<_>>()),
        Some("injection") => injection_eval(),
        Some("classify") => classify_eval().await,
        Some("rank") => rank_eval().await,
        _ => {
            eprintln!("usage: keel-eval search | tune | refusal | pii | embed | embed-feed PASSAGES BATCH BY_LENGTH | injection | classify | rank");
            std::process::exit(2);
        }
    }
}
