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

const ROUNDS: usize = 3;
const SCALE_CHUNKS: usize = 100_000;

fn evaldata() -> PathBuf {
    std::env::var("KEEL_EVALDATA")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/evaldata"))
}

struct Doc {
    id: String,
    title: String,
    text: String,
}

fn scifact_corpus() -> Vec<Doc> {
    let raw = std::fs::read_to_string(evaldata().join("beir-scifact/corpus.jsonl")).expect("SciFact corpus");
    raw.lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap();
            Doc { id: v["_id"].as_str().unwrap().into(), title: v["title"].as_str().unwrap_or("").into(), text: v["text"].as_str().unwrap().into() }
        })
        .collect()
}

/// Query id → text.
fn scifact_queries() -> HashMap<String, String> {
    let raw = std::fs::read_to_string(evaldata().join("beir-scifact/queries.jsonl")).unwrap();
    raw.lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap();
            (v["_id"].as_str().unwrap().to_string(), v["text"].as_str().unwrap().to_string())
        })
        .collect()
}

/// Query id → relevant doc ids, for `train` or `test`.
fn qrels(split: &str) -> BTreeMap<String, HashSet<String>> {
    let raw = std::fs::read_to_string(evaldata().join(format!("beir-scifact/qrels/{split}.tsv"))).unwrap();
    let mut out: BTreeMap<String, HashSet<String>> = BTreeMap::new();
    for line in raw.lines().skip(1) {
        let f: Vec<&str> = line.split('\t').collect();
        if f.len() >= 3 && f[2].trim() != "0" {
            out.entry(f[0].to_string()).or_default().insert(f[1].to_string());
        }
    }
    out
}

fn cranfield_corpus() -> Vec<Doc> {
    let raw = std::fs::read_to_string(evaldata().join("cranfield/cran.all.1400")).unwrap().replace("\r\n", "\n");
    let mut docs = Vec::new();
    for record in raw.split(".I ").skip(1) {
        let id = record.lines().next().unwrap_or("").trim().to_string();
        let field = |tag: &str| -> String {
            let Some(start) = record.find(&format!("\n.{tag}\n")) else { return String::new() };
            let rest = &record[start + 4..];
            let end = rest.find("\n.").unwrap_or(rest.len());
            rest[..end].split_whitespace().collect::<Vec<_>>().join(" ")
        };
        let text = field("W");
        if !text.is_empty() {
            docs.push(Doc { id: format!("cran-{id}"), title: field("T"), text });
        }
    }
    docs
}

fn ndcg_at_10(ranked: &[String], relevant: &HashSet<String>) -> f64 {
    let dcg: f64 = ranked.iter().take(10).enumerate().filter(|(_, d)| relevant.contains(*d)).map(|(i, _)| 1.0 / ((i + 2) as f64).log2()).sum();
    let ideal: f64 = (0..relevant.len().min(10)).map(|i| 1.0 / ((i + 2) as f64).log2()).sum();
    if ideal == 0.0 {
        0.0
    } else {
        dcg / ideal
    }
}

/// First occurrence of each document in a ranked chunk list.
fn documents(hits: &[Value]) -> Vec<String> {
    let mut seen = HashSet::new();
    hits.iter().filter_map(|h| h["doc_id"].as_str()).filter(|d| seen.insert(d.to_string())).map(str::to_string).collect()
}

fn report(label: &str, mut ms: Vec<f64>) {
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
fn peak_memory_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<f64>().ok())
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

struct Env {
    _dir: Option<tempfile::TempDir>,
    stack: Stack,
    client: Client,
}

impl Env {
    /// A local stack in a temporary directory, or in `KEEL_EVAL_DATA_DIR` so
    /// that several commands share one ingest (tenants found there are reused).
    async fn start() -> Self {
        let (dir, path) = match std::env::var("KEEL_EVAL_DATA_DIR") {
            Ok(p) => (None, PathBuf::from(p)),
            Err(_) => {
                let d = tempfile::tempdir().unwrap();
                let p = d.path().to_path_buf();
                (Some(d), p)
            }
        };
        let config = keel_tests::config(&[("KEEL_DEFAULT_RATE_LIMIT", "100000000")]);
        let stack = keel_tests::start_stack(&path, config).await;
        let client = Client::new(stack.url());
        Self { _dir: dir, stack, client }
    }

    /// Creates a tenant (or finds it) and returns a key for it, and whether it is new.
    async fn tenant(&self, id: &str) -> (String, bool) {
        let admin = &self.stack.admin_key;
        let (s, b) = self.client.call("POST", "/v1/tenants", admin, Some(json!({"id": id, "name": id, "plan": "pro"}))).await.unwrap();
        assert!(s == 201 || s == 409, "{b}");
        let body = json!({"principal": "eval", "roles": ["member", "admin"]});
        let (s, k) = self.client.call("POST", &format!("/v1/tenants/{id}/keys"), admin, Some(body)).await.unwrap();
        assert_eq!(s, 201, "{k}");
        (k["key"].as_str().unwrap().to_string(), s == 201 && b["id"] == json!(id))
    }

    /// A tenant holding `docs`, ingested unless it was there already.
    async fn tenant_with(&self, id: &str, docs: &[Doc]) -> String {
        let (key, new) = self.tenant(id).await;
        if new {
            let (seconds, chunks) = self.ingest(id, docs).await;
            println!("Ingest of {id} (queue → chunk → PII → embed in batches → segment), one ONNX Runtime thread:");
            println!("  {} documents, {chunks} chunks in {seconds:.1} s = {:.1} chunks/s, {:.1} documents/s; peak memory so far {:.0} MiB",
                docs.len(), chunks as f64 / seconds, docs.len() as f64 / seconds, peak_memory_mib());
        } else {
            println!("Reusing tenant {id} from KEEL_EVAL_DATA_DIR");
        }
        key
    }

    /// Sends every document through the ingest queue as producers do and
    /// waits for it to drain. Returns (seconds, chunks indexed).
    async fn ingest(&self, tenant: &str, docs: &[Doc]) -> (f64, usize) {
        let started = Instant::now();
        let attrs: HashMap<String, String> = [("tenant".to_string(), tenant.to_string())].into();
        for d in docs {
            let body = json!({"op": "put", "doc_id": d.id, "document": {"title": d.title, "text": d.text, "source": "eval"}});
            self.stack.queue.send(QueueName::Ingest, body.to_string(), attrs.clone()).await.unwrap();
        }
        assert!(self.stack.settle(Duration::from_secs(3600)).await, "ingest did not drain");
        let dead = self.stack.queue.dead_letters(QueueName::Ingest).unwrap();
        assert!(dead.is_empty(), "{} ingest messages failed", dead.len());
        let seconds = started.elapsed().as_secs_f64();
        let t = TenantId::parse(tenant).unwrap();
        let chunks: usize = self.stack.retrieval.export_segments(&t).await.unwrap().iter().map(|s| s.chunks.len()).sum();
        (seconds, chunks)
    }

    async fn search(&self, key: &str, query: &str, k: usize) -> Vec<Value> {
        let (s, b) = self.client.call("POST", "/v1/search", key, Some(json!({"query": query, "k": k}))).await.unwrap();
        assert_eq!(s, 200, "{b}");
        b["results"].as_array().cloned().unwrap_or_default()
    }
}

fn caller(tenant: &str) -> Caller {
    keel_tests::member(tenant, "eval")
}

async fn search_eval() {
    let env = Env::start().await;
    let key = env.tenant_with("scifact", &scifact_corpus()).await;
    let sci = TenantId::parse("scifact").unwrap();
    let chunks: usize = env.stack.retrieval.export_segments(&sci).await.unwrap().iter().map(|s| s.chunks.len()).sum();

    let queries = scifact_queries();
    let test = qrels("test");
    let mut scores = Vec::new();
    let mut http_ms = Vec::new();
    for round in 0..ROUNDS {
        for (qid, relevant) in &test {
            let started = Instant::now();
            let hits = env.search(&key, &queries[qid], 50).await;
            http_ms.push(started.elapsed().as_secs_f64() * 1000.0);
            if round == 0 {
                scores.push(ndcg_at_10(&documents(&hits), relevant));
            }
        }
    }
    println!("Quality, SciFact test ({} queries) via POST /v1/search:", scores.len());
    println!("  nDCG@10 = {:.4}   (published: BM25 0.665, all-MiniLM-L6-v2 0.645)", scores.iter().sum::<f64>() / scores.len() as f64);
    println!("Latency, {ROUNDS} rounds of the test queries, one at a time:");
    report("HTTP round trip on loopback (authorizer + embed + hybrid search)", http_ms);
    let test_queries: Vec<&str> = test.keys().map(|q| queries[q].as_str()).collect();
    let in_function = time_searches(&env, "scifact", &test_queries).await;
    report(&format!("in-function embed + hybrid search, {chunks} chunks"), in_function);
    cold_load(&env, "scifact", &queries["1"]).await;

    // 100k chunks of one tenant: the SciFact segments replicated under new ids.
    let segments = env.stack.retrieval.export_segments(&TenantId::parse("scifact").unwrap()).await.unwrap();
    let (_, new) = env.tenant("scale").await;
    let scale = TenantId::parse("scale").unwrap();
    let mut total = 0;
    let mut copy = 0;
    while new && total < SCALE_CHUNKS {
        for s in &segments {
            let mut s = s.clone();
            for c in &mut s.chunks {
                c.doc_id = format!("{}-c{copy}", c.doc_id);
                c.chunk_id = format!("{}-c{copy}", c.chunk_id);
                c.anchor.doc_id.clone_from(&c.doc_id);
            }
            total += s.chunks.len();
            env.stack.retrieval.import_segment(&scale, &s).await.unwrap();
        }
        copy += 1;
    }
    if new {
        let started = Instant::now();
        while env.stack.retrieval.compact(&scale, 8).await.unwrap() {}
        println!("  {total} chunks imported as {copy} copies of the SciFact segments; compacted in {:.1} s", started.elapsed().as_secs_f64());
    } else {
        total = env.stack.retrieval.export_segments(&scale).await.unwrap().iter().map(|s| s.chunks.len()).sum();
        println!("  reusing the scale tenant ({total} chunks)");
    }
    env.stack.retrieval.search(&caller("scale"), "warm up", 10).await.unwrap();
    let scaled = time_searches(&env, "scale", &test_queries).await;
    report(&format!("in-function embed + hybrid search, {total} chunks of one tenant"), scaled);
    cold_load(&env, "scale", &queries["1"]).await;
    println!("Peak memory of the whole run: {:.0} MiB", peak_memory_mib());
    env.stack.stop().await;
}

/// In-function search times (ms) of every query, `ROUNDS` times over.
async fn time_searches(env: &Env, tenant: &str, queries: &[&str]) -> Vec<f64> {
    let c = caller(tenant);
    let mut ms = Vec::new();
    for _ in 0..ROUNDS {
        for q in queries {
            let started = Instant::now();
            env.stack.retrieval.search(&c, q, 10).await.unwrap();
            ms.push(started.elapsed().as_secs_f64() * 1000.0);
        }
    }
    ms
}

/// Cold index load: the cache dropped, then one search (minus a warm search's time).
async fn cold_load(env: &Env, tenant: &str, query: &str) {
    let c = caller(tenant);
    let mut ms = Vec::new();
    for _ in 0..5 {
        env.stack.retrieval.clear_cache();
        let started = Instant::now();
        env.stack.retrieval.search(&c, query, 10).await.unwrap();
        let cold = started.elapsed().as_secs_f64();
        let started = Instant::now();
        env.stack.retrieval.search(&c, query, 10).await.unwrap();
        ms.push((cold - started.elapsed().as_secs_f64()) * 1000.0);
    }
    report(&format!("cold index load from the blob store ({tenant})"), ms);
}

async fn tune() {
    let env = Env::start().await;
    env.tenant_with("scifact", &scifact_corpus()).await;
    let queries = scifact_queries();
    let train = qrels("train");
    let c = caller("scifact");
    println!("Grid search on SciFact train ({} queries); nDCG@10:", train.len());
    let mut best = (0.0, Tuning::default());
    for k1 in [0.9f32, 1.2] {
        for b in [0.4f32, 0.75] {
            for w in [0.0f32, 0.3, 0.4, 0.5, 0.6, 0.7, 1.0] {
                let t = Tuning { k1, b, lexical_weight: w, ..Tuning::default() };
                let mut sum = 0.0;
                for (qid, relevant) in &train {
                    let hits = env.stack.retrieval.search_tuned(&c, &queries[qid], 50, &t).await.unwrap();
                    let hits: Vec<Value> = hits.iter().map(|h| json!({"doc_id": h.doc_id})).collect();
                    sum += ndcg_at_10(&documents(&hits), relevant);
                }
                let score = sum / train.len() as f64;
                println!("  k1={k1} b={b} lexical_weight={w}: {score:.4}");
                if score > best.0 {
                    best = (score, t);
                }
            }
        }
    }
    println!("Best on train: {:.4} with {:?}", best.0, best.1);
    env.stack.stop().await;
}

async fn refusal() {
    let env = Env::start().await;
    let sci_key = env.tenant_with("scifact", &scifact_corpus()).await;
    let cran_key = env.tenant_with("cranfield", &cranfield_corpus()).await;
    let queries = scifact_queries();

    // Calibrate on train: (term coverage, best similarity) of the evidence
    // /v1/ask would get, for answerable questions (SciFact tenant) and
    // unanswerable ones (Cranfield tenant).
    let mut answerable = Vec::new();
    let mut unanswerable = Vec::new();
    for qid in qrels("train").keys() {
        for (tenant, out) in [("scifact", &mut answerable), ("cranfield", &mut unanswerable)] {
            let hits = env.stack.retrieval.search(&caller(tenant), &queries[qid], 5).await.unwrap();
            let coverage = keel_routing::answer::evidence_coverage(&queries[qid], &hits);
            out.push((coverage, hits.iter().filter_map(|h| h.similarity).fold(f32::MIN, f32::max)));
        }
    }
    // In hybrid mode /v1/ask uses similarity only; the grid also shows what adding coverage would do.
    let rate = |v: &[(f32, f32)], c: f32, s: f32| v.iter().filter(|(cv, sv)| *cv < c || *sv < s).count() as f64 / v.len() as f64;
    println!("Calibration on SciFact train ({} questions): (min coverage, min similarity) → false refusal (SciFact) / refusal (Cranfield)", answerable.len());
    let mut best = (f64::MIN, 0.0f32, 0.0f32);
    for c in [0.0f32, 0.2, 0.3, 0.4, 0.5] {
        for step in 2..=12 {
            let s = step as f32 * 0.05;
            let (fr, r) = (rate(&answerable, c, s), rate(&unanswerable, c, s));
            println!("  ({c:.1}, {s:.2}): {:.1}% / {:.1}%", fr * 100.0, r * 100.0);
            // Youden's J: refusals of unanswerable questions minus false refusals.
            if r - fr > best.0 + 1e-9 {
                best = (r - fr, c, s);
            }
        }
    }
    println!("  best separation (Youden's J = {:.3}) at coverage {:.1}, similarity {:.2}", best.0, best.1, best.2);
    println!("  configured (hybrid mode): KEEL_MIN_EVIDENCE_SIMILARITY = {:.2}", keel_core::config::DEFAULT_MIN_EVIDENCE_SIMILARITY);

    println!("Test questions through POST /v1/ask (thresholds as configured):");
    let test = qrels("test");
    for (label, key) in [("SciFact tenant (false refusals)", &sci_key), ("Cranfield-only tenant (refusals)", &cran_key)] {
        let mut refused = 0;
        for qid in test.keys() {
            let (s, b) = env.client.call("POST", "/v1/ask", key, Some(json!({"question": queries[qid]}))).await.unwrap();
            assert_eq!(s, 200, "{b}");
            refused += usize::from(b["refused"] == json!(true));
        }
        println!("  {label}: {refused}/{} = {:.1}% refused", test.len(), refused as f64 * 100.0 / test.len() as f64);
    }
    env.stack.stop().await;
}

/// The embedding model alone: one query at a time (DESIGN budget: < 10 ms on
/// one thread) and ingest-sized batches.
fn embed_eval() {
    let threads: usize = std::env::var("KEEL_ORT_THREADS").ok().and_then(|t| t.parse().ok()).unwrap_or(1);
    let embedder = keel_ml::Embedder::load(&keel_ml::EmbedderConfig::fetched(&keel_tests::models_dir(), threads)).unwrap();
    let queries = scifact_queries();
    let texts: Vec<&String> = queries.values().take(300).collect();
    let mut ms = Vec::new();
    for _ in 0..ROUNDS {
        for q in &texts {
            let started = Instant::now();
            embedder.embed(&[q.as_str()]).unwrap();
            ms.push(started.elapsed().as_secs_f64() * 1000.0);
        }
    }
    println!("Embedding, {threads} ONNX Runtime thread(s):");
    report("one query", ms);
    let corpus = scifact_corpus();
    let passages: Vec<String> = corpus.iter().take(256).map(|d| d.text.chars().take(600).collect()).collect();
    for batch in [1usize, 8, 32] {
        let started = Instant::now();
        for chunk in passages.chunks(batch) {
            let refs: Vec<&str> = chunk.iter().map(String::as_str).collect();
            embedder.embed(&refs).unwrap();
        }
        println!("  passages of 600 characters, batch {batch}: {:.0} per second", passages.len() as f64 / started.elapsed().as_secs_f64());
    }
    println!("  peak memory {:.0} MiB", peak_memory_mib());
}

fn pii_eval() {
    let raw = std::fs::read_to_string(evaldata().join("pii-presidio-synth/synth_dataset_v2.json")).unwrap();
    let samples: Vec<Value> = serde_json::from_str(&raw).unwrap();
    let kind_of = |t: &str| match t {
        "EMAIL_ADDRESS" => Some(PiiKind::Email),
        "PHONE_NUMBER" => Some(PiiKind::Phone),
        "CREDIT_CARD" => Some(PiiKind::Card),
        "IBAN_CODE" => Some(PiiKind::Iban),
        "US_SSN" => Some(PiiKind::NationalId),
        "IP_ADDRESS" => Some(PiiKind::IpAddress),
        _ => None,
    };
    // (true positives, predicted, gold) per kind; a prediction is right when
    // it overlaps a gold span of the same kind.
    let mut counts: BTreeMap<PiiKind, (usize, usize, usize)> = BTreeMap::new();
    let mut found_gold: BTreeMap<PiiKind, usize> = BTreeMap::new();
    let show_misses = std::env::var("KEEL_EVAL_SHOW_MISSES").is_ok();
    for s in &samples {
        let text = s["full_text"].as_str().unwrap();
        let gold: Vec<(PiiKind, usize, usize)> = s["spans"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|g| {
                let k = kind_of(g["entity_type"].as_str()?)?;
                // Dataset offsets are Python (code point) offsets, like ours.
                Some((k, g["start_position"].as_u64()? as usize, g["end_position"].as_u64()? as usize))
            })
            .collect();
        let predicted = detect(text);
        for p in &predicted {
            let e = counts.entry(p.kind).or_default();
            e.1 += 1;
            if gold.iter().any(|g| g.0 == p.kind && p.start < g.2 && g.1 < p.end) {
                e.0 += 1;
            } else if show_misses {
                let value: String = text.chars().skip(p.start).take(p.end - p.start).collect();
                println!("  false {:?}: {value:?}", p.kind);
            }
        }
        for g in &gold {
            counts.entry(g.0).or_default().2 += 1;
            if predicted.iter().any(|p| p.kind == g.0 && p.start < g.2 && g.1 < p.end) {
                *found_gold.entry(g.0).or_default() += 1;
            }
        }
    }
    println!("PII detection on presidio-research synth_dataset_v2 ({} samples); overlap match per entity type:", samples.len());
    for (kind, (tp, predicted, gold)) in counts {
        let recall_hits = found_gold.get(&kind).copied().unwrap_or(0);
        let precision = if predicted == 0 { f64::NAN } else { tp as f64 / predicted as f64 };
        let recall = if gold == 0 { f64::NAN } else { recall_hits as f64 / gold as f64 };
        println!("  {kind:?}: precision {precision:.3} ({tp}/{predicted}), recall {recall:.3} ({recall_hits}/{gold})");
    }
}

fn read_json(path: PathBuf) -> Value {
    serde_json::from_str(&std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))).unwrap()
}

fn read_jsonl(path: PathBuf) -> Vec<Value> {
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    text.lines().filter(|l| !l.trim().is_empty()).map(|l| serde_json::from_str(l).unwrap()).collect()
}

/// BIPIA's attacks inserted into its benign contexts (start, middle, end):
/// detected when a flag covers the inserted text. False positives: benign
/// contexts, and NotInject's benign prompts that contain trigger words.
/// The rules were written from the *train* attacks; test attacks are reported.
fn injection_eval() {
    use keel_routing::guard::scan;
    let bipia = evaldata().join("bipia-indirect-injection");
    let attacks = |file: &str| -> Vec<(String, String)> {
        let v = read_json(bipia.join(file));
        v.as_object().unwrap().iter().flat_map(|(cat, list)| {
            list.as_array().unwrap().iter().map(|a| (cat.clone(), a.as_str().unwrap().to_string())).collect::<Vec<_>>()
        }).collect()
    };
    let mut contexts: Vec<(&str, String)> = Vec::new();
    for task in ["email", "table", "code"] {
        for row in read_jsonl(bipia.join(task).join("test.jsonl")) {
            contexts.push((task, row["context"].as_str().unwrap_or("").to_string()));
        }
    }
    let benign_flagged = contexts.iter().filter(|(_, c)| !scan(c).is_empty()).count();
    println!("Injection guard (rules in functions/routing/src/guard.rs)");
    println!("  BIPIA benign contexts flagged (false positives): {benign_flagged}/{} = {:.1}%", contexts.len(),
        100.0 * benign_flagged as f64 / contexts.len() as f64);
    for split in ["train", "test"] {
        let text = attacks(&format!("text_attack_{split}.json"));
        let code = attacks(&format!("code_attack_{split}.json"));
        let mut per_category: BTreeMap<String, (usize, usize)> = BTreeMap::new();
        let (mut hit, mut total) = (0, 0);
        for (task, context) in &contexts {
            let set = if *task == "code" { &code } else { &text };
            for (category, attack) in set {
                for position in ["start", "middle", "end"] {
                    let at = match position {
                        "start" => 0,
                        "end" => context.len(),
                        _ => {
                            let mid = context.len() / 2;
                            context[mid..].find(". ").map(|i| mid + i + 2).filter(|i| context.is_char_boundary(*i)).unwrap_or(context.len())
                        }
                    };
                    let doc = format!("{}\n\n{attack}\n\n{}", &context[..at], &context[at..]);
                    let (s, e) = (at + 2, at + 2 + attack.len());
                    let found = scan(&doc).iter().any(|f| f.start < e && f.end > s);
                    let entry = per_category.entry(category.clone()).or_default();
                    entry.1 += 1;
                    total += 1;
                    if found {
                        entry.0 += 1;
                        hit += 1;
                    }
                }
            }
        }
        println!("  BIPIA {split} attacks inserted at start/middle/end of every context: detected {hit}/{total} = {:.1}%",
            100.0 * hit as f64 / total as f64);
        if split == "test" {
            for (category, (h, n)) in &per_category {
                println!("    {category}: {:.0}%", 100.0 * *h as f64 / *n as f64);
            }
        }
    }
    let piguard = evaldata().join("prompt-injection-labelled").join("piguard");
    let (mut flagged, mut n) = (0, 0);
    for file in ["NotInject_one.json", "NotInject_two.json", "NotInject_three.json"] {
        for row in read_json(piguard.join(file)).as_array().unwrap() {
            n += 1;
            flagged += usize::from(!scan(row["prompt"].as_str().unwrap_or("")).is_empty());
        }
    }
    println!("  NotInject benign prompts with trigger words flagged (false positives): {flagged}/{n} = {:.1}% \
        (over-defense accuracy {:.1}%)", 100.0 * flagged as f64 / n as f64, 100.0 * (n - flagged) as f64 / n as f64);
}

/// The temperature `POST /v1/classify` applies (keel_routing::classify).
const CLASSIFY_TEMPERATURE: f64 = 0.05;

/// In-function classification through `POST /v1/classify`, with no hosted
/// model, as tool choice: each BFCL "multiple" case's functions are the
/// labels (name and description), its question is the text, and the
/// function of its expected call is the right label. Scores are re-tempered
/// here (p^(0.05/T), renormalized) to show other temperatures; BFCL
/// `multiple` chose the temperature, `live_multiple` reports.
async fn classify_eval() {
    let env = Env::start().await;
    let (key, _) = env.tenant("classify").await;
    let bfcl = evaldata().join("bfcl-function-calling");
    for (set, role) in [("multiple", "chose the temperature"), ("live_multiple", "reported")] {
        let expected: HashMap<String, String> = read_jsonl(bfcl.join(format!("possible_answer/BFCL_v4_{set}.json")))
            .iter()
            .map(|a| (a["id"].as_str().unwrap().to_string(), a["ground_truth"][0].as_object().unwrap().keys().next().unwrap().clone()))
            .collect();
        // (expected label, [(label, score)] highest first)
        let mut results: Vec<(String, Vec<(String, f64)>)> = Vec::new();
        let mut ms = Vec::new();
        let mut skipped = 0;
        for case in read_jsonl(bfcl.join(format!("BFCL_v4_{set}.json"))) {
            let text: Vec<&str> = case["question"][0]
                .as_array()
                .unwrap()
                .iter()
                .filter(|m| m["role"] == "user")
                .filter_map(|m| m["content"].as_str())
                .collect();
            let labels: Vec<Value> = case["function"]
                .as_array()
                .unwrap()
                .iter()
                .map(|f| {
                    let description: String = f["description"].as_str().unwrap_or("").chars().take(4_000).collect();
                    json!({"name": f["name"], "description": description})
                })
                .collect();
            let body = json!({"text": text.join("\n").chars().take(4_000).collect::<String>(), "labels": labels});
            let started = Instant::now();
            let (s, b) = env.client.call("POST", "/v1/classify", &key, Some(body)).await.unwrap();
            if s != 200 {
                skipped += 1;
                continue;
            }
            ms.push(started.elapsed().as_secs_f64() * 1e3);
            let scores = b["scores"].as_array().unwrap().iter().map(|x| (x["label"].as_str().unwrap().to_string(), x["score"].as_f64().unwrap()));
            results.push((expected[case["id"].as_str().unwrap()].clone(), scores.collect()));
        }
        let n = results.len();
        let right = results.iter().filter(|(want, scores)| &scores[0].0 == want).count();
        let labels = results.iter().map(|(_, s)| s.len()).sum::<usize>() as f64 / n as f64;
        println!("BFCL {set} ({role}): {n} cases ({skipped} refused), {labels:.1} labels each on average");
        println!("  top-1 accuracy {:.1}% (chance {:.1}%)", right as f64 * 100.0 / n as f64,
            results.iter().map(|(_, s)| 1.0 / s.len() as f64).sum::<f64>() * 100.0 / n as f64);
        for t in [0.02, 0.05, 0.1] {
            let mut line = format!("  T={t:.2}: threshold → answered in-function / accuracy there:");
            for threshold in [0.5, 0.6, 0.7, 0.8, 0.9] {
                let (mut answered, mut correct) = (0, 0);
                for (want, scores) in &results {
                    let powered: Vec<f64> = scores.iter().map(|(_, p)| p.powf(CLASSIFY_TEMPERATURE / t)).collect();
                    if powered[0] / powered.iter().sum::<f64>() >= threshold {
                        answered += 1;
                        correct += usize::from(&scores[0].0 == want);
                    }
                }
                line.push_str(&format!(" {threshold:.1} → {:.0}% / {:.1}%;", answered as f64 * 100.0 / n as f64,
                    correct as f64 * 100.0 / answered.max(1) as f64));
            }
            println!("{line}");
        }
        report("POST /v1/classify latency (label vectors cached after first use)", ms);
    }
    env.stack.stop().await;
}

/// BM25 over a whole corpus with Keel's own analyzer and scoring (default
/// tuning: k1 0.9, b 0.4, as BEIR's Anserini baselines): the first stage of
/// the rank evaluation.
struct Bm25 {
    postings: HashMap<String, Vec<(usize, u16)>>,
    lengths: Vec<f32>,
    average: f32,
}

impl Bm25 {
    fn new(texts: &[String]) -> Self {
        let mut postings: HashMap<String, Vec<(usize, u16)>> = HashMap::new();
        let mut lengths = Vec::with_capacity(texts.len());
        for (i, text) in texts.iter().enumerate() {
            let (tf, length) = term_frequencies(text);
            for (term, n) in tf {
                postings.entry(term).or_default().push((i, n));
            }
            lengths.push(length as f32);
        }
        let average = lengths.iter().sum::<f32>() / lengths.len() as f32;
        Self { postings, lengths, average }
    }

    /// Indices of the `k` best-scoring texts for `query`, best first.
    fn top(&self, query: &str, k: usize) -> Vec<usize> {
        let (tuning, n) = (Tuning::default(), self.lengths.len() as f32);
        let mut scores: HashMap<usize, f32> = HashMap::new();
        for (term, _) in term_frequencies(query).0 {
            let Some(docs) = self.postings.get(&term) else { continue };
            let idf = Tuning::idf(n, docs.len());
            for &(d, tf) in docs {
                *scores.entry(d).or_default() += tuning.bm25(idf, f32::from(tf), self.lengths[d], self.average);
            }
        }
        let mut ranked: Vec<(usize, f32)> = scores.into_iter().collect();
        ranked.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        ranked.into_iter().take(k).map(|(d, _)| d).collect()
    }
}

/// `POST /v1/rank` as a reranker, the usual BEIR set-up for rerankers: for
/// each SciFact test query BM25 takes the top 50 documents of the whole
/// corpus, and rank reorders them with the in-function embedding model.
/// Reports nDCG@10 of both orders and rank's latency (documents not yet
/// embedded, then again with their vectors cached).
async fn rank_eval() {
    const CANDIDATES: usize = 50;
    let env = Env::start().await;
    let (key, _) = env.tenant("rank").await;
    let corpus = scifact_corpus();
    let texts: Vec<String> = corpus.iter().map(|d| format!("{}\n{}", d.title, d.text).chars().take(4_000).collect()).collect();
    let bm25 = Bm25::new(&texts);
    let queries = scifact_queries();
    let test = qrels("test");
    let (mut first, mut reranked, mut recall) = (Vec::new(), Vec::new(), 0);
    let (mut cold_ms, mut warm_ms) = (Vec::new(), Vec::new());
    for (qid, relevant) in &test {
        let top = bm25.top(&queries[qid], CANDIDATES);
        let ids: Vec<String> = top.iter().map(|&i| corpus[i].id.clone()).collect();
        recall += ids.iter().filter(|d| relevant.contains(*d)).count();
        first.push(ndcg_at_10(&ids, relevant));
        let body = json!({"query": queries[qid], "documents": top.iter().map(|&i| &texts[i]).collect::<Vec<_>>()});
        let mut order = Vec::new();
        for ms in [&mut cold_ms, &mut warm_ms] {
            let started = Instant::now();
            let (s, b) = env.client.call("POST", "/v1/rank", &key, Some(body.clone())).await.unwrap();
            ms.push(started.elapsed().as_secs_f64() * 1e3);
            assert_eq!(s, 200, "{b}");
            order = b["results"].as_array().unwrap().iter().map(|r| ids[r["index"].as_u64().unwrap() as usize].clone()).collect();
        }
        reranked.push(ndcg_at_10(&order, relevant));
    }
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    let relevant: usize = test.values().map(HashSet::len).sum();
    println!("Reranking, SciFact test ({} queries): BM25 top {CANDIDATES} (Keel's analyzer), then POST /v1/rank", test.len());
    println!("  BM25 recall@{CANDIDATES} {:.1}% of the relevant documents", recall as f64 * 100.0 / relevant as f64);
    println!("  nDCG@10: BM25 {:.4}; reranked by /v1/rank {:.4}", mean(&first), mean(&reranked));
    report(&format!("POST /v1/rank latency, {CANDIDATES} documents not yet embedded"), cold_ms);
    report(&format!("POST /v1/rank latency, {CANDIDATES} documents, vectors cached"), warm_ms);
    env.stack.stop().await;
}

#[tokio::main]
async fn main() {
    match std::env::args().nth(1).as_deref() {
        Some("search") => search_eval().await,
        Some("tune") => tune().await,
        Some("refusal") => refusal().await,
        Some("pii") => pii_eval(),
        Some("embed") => embed_eval(),
        Some("injection") => injection_eval(),
        Some("classify") => classify_eval().await,
        Some("rank") => rank_eval().await,
        _ => {
            eprintln!("usage: keel-eval search | tune | refusal | pii | embed | injection | classify | rank");
            std::process::exit(2);
        }
    }
}
