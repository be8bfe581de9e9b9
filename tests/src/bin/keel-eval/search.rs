//! Search quality and speed on SciFact and Cranfield, the tuning grid, and refusal.

use super::*;

pub(crate) fn caller(tenant: &str) -> Caller {
    keel_tests::member(tenant, "eval")
}

pub(crate) async fn search_eval() {
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
    sketch_quality(&env, &queries, &test).await;

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
/// What comparing only the chunks the sign sketches pick (as search does past
/// `exact_vectors_up_to` chunks) costs in quality: SciFact test nDCG@10
/// in-function, exact and sketched, on the 16k-chunk tenant.
async fn sketch_quality(env: &Env, queries: &HashMap<String, String>, test: &BTreeMap<String, HashSet<String>>) {
    let c = caller("scifact");
    for (label, tuning) in [("every vector compared", Tuning::default()), ("sketches pick 2,000", Tuning { exact_vectors_up_to: 0, ..Tuning::default() })] {
        let mut scores = Vec::new();
        for (qid, relevant) in test {
            let hits = env.stack.retrieval.search_tuned(&c, &queries[qid], 50, &tuning).await.unwrap();
            let mut seen = HashSet::new();
            let docs: Vec<String> = hits.iter().map(|h| h.doc_id.clone()).filter(|d| seen.insert(d.clone())).collect();
            scores.push(ndcg_at_10(&docs, relevant));
        }
        println!("  nDCG@10 in-function, {label}: {:.4}", scores.iter().sum::<f64>() / scores.len() as f64);
    }
}

pub(crate) async fn time_searches(env: &Env, tenant: &str, queries: &[&str]) -> Vec<f64> {
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
pub(crate) async fn cold_load(env: &Env, tenant: &str, query: &str) {
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

pub(crate) async fn tune() {
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

pub(crate) async fn refusal() {
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
