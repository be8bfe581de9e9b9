//! The embedding model alone, in-function classification on BFCL tool choice, and in-function reranking.

use super::*;

/// The embedding model alone: one query at a time (DESIGN budget: < 10 ms on
/// one thread) and ingest-sized batches.
pub(crate) fn embed_eval() {
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

/// Passages per second for one way of feeding the model (`scripts/bench-embedder.sh`
/// runs it beside `scripts/embed-bench.py`, Python's onnxruntime fed the same way):
/// SciFact's first `PASSAGES` documents cut to 600 characters, `BATCH` per call,
/// grouped by length when `BY_LENGTH` is 1. One ONNX Runtime thread.
pub(crate) fn embed_feed(args: &[String]) {
    let arg = |i: usize| args.get(i).and_then(|a| a.parse::<usize>().ok()).expect("embed-feed PASSAGES BATCH BY_LENGTH");
    let (count, batch, by_length) = (arg(0), arg(1), arg(2) == 1);
    let embedder = keel_ml::Embedder::load(&keel_ml::EmbedderConfig::fetched(&keel_tests::models_dir(), 1)).unwrap();
    let passages: Vec<String> = scifact_corpus().iter().take(count).map(|d| d.text.chars().take(600).collect()).collect();
    let refs: Vec<&str> = passages.iter().map(String::as_str).collect();
    embedder.embed(&refs[..1]).unwrap();
    let started = Instant::now();
    embedder.embed_all(&refs, keel_ml::Feeding { batch, by_length }).unwrap();
    println!("{:.2}", passages.len() as f64 / started.elapsed().as_secs_f64());
}

/// The temperature `POST /v1/classify` applies (keel_routing::classify).
pub(crate) const CLASSIFY_TEMPERATURE: f64 = 0.05;

/// In-function classification through `POST /v1/classify`, with no hosted
/// model, as tool choice: each BFCL "multiple" case's functions are the
/// labels (name and description), its question is the text, and the
/// function of its expected call is the right label. Scores are re-tempered
/// here (p^(0.05/T), renormalized) to show other temperatures; BFCL
/// `multiple` chose the temperature, `live_multiple` reports.
pub(crate) async fn classify_eval() {
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
pub(crate) struct Bm25 {
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
pub(crate) async fn rank_eval() {
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
