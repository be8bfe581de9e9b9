// Test-only code: helpers outside #[test] functions may unwrap and panic too.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

//! Retrieval through the local stack: hybrid search, segments and
//! compaction, cold loads by a second function instance, freshness, the
//! changes feed, PII, and idempotent batched ingest.

use keel_core::ports::{QueueName, Table, WorkQueue};
use keel_emulator::blobs::DirBlobs;
use keel_retrieval::Retrieval;
use keel_tests::{config, start_stack, tenant, Client};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

async fn put(c: &Client, key: &str, id: &str, doc: Value) -> Value {
    let (s, b) = c.call("PUT", &format!("/v1/documents/{id}"), key, Some(doc)).await.unwrap();
    assert_eq!(s, 200, "{b}");
    b
}

async fn search(c: &Client, key: &str, query: &str, k: usize) -> Vec<Value> {
    search_in_mode(c, key, query, k, "hybrid").await
}

async fn search_in_mode(c: &Client, key: &str, query: &str, k: usize, mode: &str) -> Vec<Value> {
    let (s, b) = c.call("POST", "/v1/search", key, Some(json!({"query": query, "k": k}))).await.unwrap();
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["mode"], mode);
    b["results"].as_array().unwrap().clone()
}

fn doc_ids(hits: &[Value]) -> Vec<&str> {
    hits.iter().map(|h| h["doc_id"].as_str().unwrap()).collect()
}

#[tokio::test]
async fn vectors_find_what_words_miss_and_changes_replace_only_their_document() {
    let dir = tempfile::tempdir().unwrap();
    let stack = start_stack(dir.path(), config(&[])).await;
    let c = Client::new(stack.url());
    let t = tenant(&c, "hybrid", json!({})).await;
    put(&c, &t.member, "password", json!({"title": "Account help", "text": "To reset your password, open Settings and choose Forgot password."})).await;
    put(&c, &t.member, "shipping", json!({"title": "Shipping", "text": "Orders ship within two business days from our warehouse."})).await;
    put(&c, &t.member, "returns", json!({"text": "Items can be returned within 30 days for a full refund."})).await;

    // No word in common with the password document: only the vector finds it.
    let hits = search(&c, &t.member, "I cannot log in, how do I recover my credentials?", 3).await;
    assert_eq!(hits[0]["doc_id"], "password", "{hits:?}");
    assert!(hits[0]["similarity"].as_f64().unwrap() > 0.3);

    // Same content again: nothing is rewritten.
    let again = put(&c, &t.member, "shipping", json!({"title": "Shipping", "text": "Orders ship within two business days from our warehouse."})).await;
    assert_eq!(again["unchanged"], true);
    // Changed content replaces that document's chunks, not the others'.
    put(&c, &t.member, "shipping", json!({"title": "Shipping", "text": "Orders now ship the same day by courier."})).await;
    let hits = search(&c, &t.member, "warehouse business days", 5).await;
    assert!(hits.iter().all(|h| !h["text"].as_str().unwrap().contains("warehouse")), "old chunks are gone: {hits:?}");
    let hits = search(&c, &t.member, "same day courier", 5).await;
    assert_eq!(hits[0]["doc_id"], "shipping");
    assert!(doc_ids(&search(&c, &t.member, "returned full refund", 5).await).contains(&"returns"));

    let (s, _) = c.call("DELETE", "/v1/documents/returns", &t.member, None).await.unwrap();
    assert_eq!(s, 200);
    assert!(!doc_ids(&search(&c, &t.member, "returned full refund", 5).await).contains(&"returns"));
    stack.stop().await;
}

#[tokio::test]
async fn segments_compact_and_a_cold_instance_sees_every_write() {
    let dir = tempfile::tempdir().unwrap();
    let stack = start_stack(dir.path(), config(&[("KEEL_INDEX_MAX_SEGMENTS", "4")])).await;
    let c = Client::new(stack.url());
    let t = tenant(&c, "segments", json!({})).await;
    for i in 0..20 {
        put(&c, &t.member, &format!("note-{i}"), json!({"text": format!("Note number {i} mentions topic{i} exclusively.")})).await;
    }
    let (s, _) = c.call("DELETE", "/v1/documents/note-3", &t.member, None).await.unwrap();
    assert_eq!(s, 200);
    let manifest = stack.table.get("T#segments", "INDEX").await.unwrap().unwrap();
    let segments = manifest.data["segments"].as_array().unwrap();
    assert!(segments.len() <= 4, "compaction keeps the segment count bounded: {}", segments.len());
    for seg in segments {
        let key = format!("tenants/segments/index/{}.seg", seg["id"].as_str().unwrap());
        assert!(dir.path().join("blobs").join(&key).is_file(), "segment {key} is in the blob store");
    }

    // A second function instance with a cold cache, over the same table and bucket.
    let blobs = Arc::new(DirBlobs::new(dir.path().join("blobs")));
    let config = config(&[]);
    let tenants = Arc::new(config.tenant_store(stack.table.clone()));
    let keys = Arc::new(config.key_authenticator(stack.table.clone(), tenants.clone()));
    let backends = keel_retrieval::Backends { table: stack.table.clone(), blobs, queue: stack.queue.clone(), tenants, keys };
    let cold = Retrieval::from_config(backends, &config).unwrap();
    let caller = keel_tests::member("segments", "ann");
    for i in [0, 7, 19] {
        let hits = cold.search(&caller, &format!("topic{i}"), 3).await.unwrap();
        assert_eq!(hits[0].doc_id, format!("note-{i}"));
    }
    assert!(cold.search(&caller, "topic3", 5).await.unwrap().iter().all(|h| h.doc_id != "note-3"));
    // Written through the stack, searchable through the warm second instance on its next query.
    put(&c, &t.member, "late", json!({"text": "A late addition about zeppelins."})).await;
    assert_eq!(cold.search(&caller, "zeppelins", 1).await.unwrap()[0].doc_id, "late");
    stack.stop().await;
}

#[tokio::test]
async fn freshness_sla_marks_stale_results_and_the_changes_feed_lists_puts_and_deletes() {
    let dir = tempfile::tempdir().unwrap();
    let stack = start_stack(dir.path(), config(&[])).await;
    let c = Client::new(stack.url());
    let t = tenant(&c, "fresh", json!({})).await;
    let other = tenant(&c, "fresh-other", json!({})).await;
    let (s, _) = c.call("PUT", "/v1/sources/wiki", &t.member, Some(json!({"freshness_sla_seconds": 86400}))).await.unwrap();
    assert_eq!(s, 403, "only a tenant admin sets SLAs");
    let (s, b) = c.call("PUT", "/v1/sources/wiki", &t.admin, Some(json!({"freshness_sla_seconds": 86400}))).await.unwrap();
    assert_eq!(s, 200, "{b}");

    let before = chrono::Utc::now().to_rfc3339();
    put(&c, &t.member, "old", json!({"text": "Legacy VPN setup guide.", "source": "wiki", "updated_at": "2020-01-01T00:00:00Z"})).await;
    put(&c, &t.member, "new", json!({"text": "Current VPN setup guide.", "source": "wiki"})).await;
    put(&c, &t.member, "secret", json!({"text": "Board VPN notes.", "acl": {"groups": ["board"]}})).await;
    let hits = search(&c, &t.member, "VPN setup guide", 5).await;
    let stale: HashMap<&str, bool> = hits.iter().map(|h| (h["doc_id"].as_str().unwrap(), h["stale"].as_bool().unwrap())).collect();
    assert_eq!(stale.get("old"), Some(&true));
    assert_eq!(stale.get("new"), Some(&false));
    let (_, d) = c.call("GET", "/v1/documents/old", &t.member, None).await.unwrap();
    assert_eq!(d["stale"], true);

    let (s, _) = c.call("DELETE", "/v1/documents/old", &t.member, None).await.unwrap();
    assert_eq!(s, 200);
    let since = format!("/v1/changes?since={}", before.replace('+', "%2B"));
    let (s, feed) = c.call("GET", &since, &t.member, None).await.unwrap();
    assert_eq!(s, 200, "{feed}");
    let changes: Vec<(String, String)> = feed["changes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|ch| (ch["doc_id"].as_str().unwrap().to_string(), ch["op"].as_str().unwrap().to_string()))
        .collect();
    let expected: Vec<(String, String)> =
        [("old", "put"), ("new", "put"), ("old", "delete")].iter().map(|(d, o)| (d.to_string(), o.to_string())).collect();
    assert_eq!(changes, expected, "in order; the board-only document is hidden from ann");
    // Paging on: nothing after the last cursor.
    let cursor = feed["cursor"].as_str().unwrap();
    let (_, next) = c.call("GET", &format!("/v1/changes?cursor={}", cursor.replace('#', "%23")), &t.member, None).await.unwrap();
    assert_eq!(next["changes"], json!([]));
    // Another tenant's feed has none of it.
    let (_, theirs) = c.call("GET", &since, &other.member, None).await.unwrap();
    assert_eq!(theirs["changes"], json!([]));
    let (s, _) = c.call("GET", "/v1/changes?since=yesterday", &t.member, None).await.unwrap();
    assert_eq!(s, 400);
    stack.stop().await;
}

#[tokio::test]
async fn pii_is_tagged_and_redacted_when_the_tenant_asks() {
    let dir = tempfile::tempdir().unwrap();
    let stack = start_stack(dir.path(), config(&[])).await;
    let c = Client::new(stack.url());
    let text = "Escalations go to dana.smith@example.com or +1 (415) 555-0132; refunds to card 4111 1111 1111 1111.";
    let tagged = tenant(&c, "pii-tagged", json!({})).await;
    let redacted = tenant(&c, "pii-redacted", json!({"redact_pii": true})).await;
    for t in [&tagged, &redacted] {
        put(&c, &t.member, "escalation", json!({"text": text})).await;
    }
    let hits = search(&c, &tagged.member, "escalations contact", 1).await;
    assert!(hits[0]["text"].as_str().unwrap().contains("dana.smith@example.com"));
    assert_eq!(hits[0]["pii"], json!(["email", "phone", "card"]));

    let hits = search(&c, &redacted.member, "escalations contact", 1).await;
    let stored = hits[0]["text"].as_str().unwrap();
    assert!(!stored.contains("dana.smith") && !stored.contains("4111"), "{stored}");
    assert!(stored.contains("[EMAIL]") && stored.contains("[PHONE]") && stored.contains("[CARD]"));
    let (_, d) = c.call("GET", "/v1/documents/escalation", &redacted.member, None).await.unwrap();
    assert_eq!(d["pii"], json!({"email": 1, "phone": 1, "card": 1}));
    assert_eq!(d["redacted"], true);
    let source = std::fs::read_to_string(dir.path().join("blobs/tenants/pii-redacted/documents/escalation.json")).unwrap();
    assert!(!source.contains("dana.smith"), "the stored source is redacted too");
    let (_, a) = c.call("POST", "/v1/ask", &redacted.member, Some(json!({"question": "Where do escalations go?"}))).await.unwrap();
    assert!(!a["answer"].as_str().unwrap().contains("dana.smith"), "{a}");
    stack.stop().await;
}

#[tokio::test]
async fn queue_ingest_batches_fails_per_message_and_ignores_redelivery() {
    let dir = tempfile::tempdir().unwrap();
    let stack = start_stack(dir.path(), config(&[])).await;
    let c = Client::new(stack.url());
    let t = tenant(&c, "batch", json!({})).await;
    let other = tenant(&c, "batch-other", json!({})).await;
    let attrs: HashMap<String, String> = [("authorization".to_string(), format!("Bearer {}", t.member))].into();
    let put_msg = |i: usize| json!({"op": "put", "doc_id": format!("faq-{i}"), "document": {"text": format!("Answer {i}: widgets need model{i} batteries.")}}).to_string();
    for i in 0..6 {
        stack.queue.send(QueueName::Ingest, put_msg(i), attrs.clone()).await.unwrap();
    }
    // A bad message in the same batches fails alone.
    stack.queue.send(QueueName::Ingest, json!({"op": "put", "doc_id": "bad", "document": {"text": ""}}).to_string(), attrs.clone()).await.unwrap();
    assert!(stack.settle(Duration::from_secs(30)).await);
    assert_eq!(stack.queue.dead_letters(QueueName::Ingest).unwrap().len(), 1);
    let version = |v: Value| v["version"].as_u64().unwrap();
    let (_, d) = c.call("GET", "/v1/documents/faq-2", &t.member, None).await.unwrap();
    let first = version(d);

    // Every message delivered again: no new versions, nothing duplicated.
    for i in 0..6 {
        stack.queue.send(QueueName::Ingest, put_msg(i), attrs.clone()).await.unwrap();
    }
    assert!(stack.settle(Duration::from_secs(30)).await);
    let (_, d) = c.call("GET", "/v1/documents/faq-2", &t.member, None).await.unwrap();
    assert_eq!(version(d), first);
    let hits = search(&c, &t.member, "model2 batteries", 10).await;
    assert_eq!(hits.iter().filter(|h| h["doc_id"] == "faq-2").count(), 1);
    // The tenant comes from the producer's key only: the other tenant sees nothing.
    assert!(search(&c, &other.member, "model2 batteries", 10).await.is_empty());
    let (s, _) = c.call("GET", "/v1/documents/faq-2", &other.member, None).await.unwrap();
    assert_eq!(s, 404);
    stack.stop().await;
}

#[tokio::test]
async fn without_a_model_search_is_lexical_and_ask_refuses_on_term_coverage() {
    let dir = tempfile::tempdir().unwrap();
    let stack = start_stack(dir.path(), config(&[("KEEL_MODEL_DIR", "")])).await;
    let c = Client::new(stack.url());
    let t = tenant(&c, "lexical", json!({})).await;
    put(&c, &t.member, "refunds", json!({"text": "Refunds are paid within five business days."})).await;
    let hits = search_in_mode(&c, &t.member, "refund paid", 3, "lexical").await;
    assert_eq!(hits[0]["doc_id"], "refunds");
    assert_eq!(hits[0]["similarity"], Value::Null);
    let ask = |q: &'static str| {
        let (c, key) = (&c, &t.member);
        async move { c.call("POST", "/v1/ask", key, Some(json!({"question": q}))).await.unwrap().1 }
    };
    let answered = ask("How fast are refunds paid?").await;
    assert_eq!(answered["refused"], false, "{answered}");
    let refused = ask("Which telescope mirrors are paid for by grants?").await;
    assert_eq!(refused["refused"], true, "{refused}");
    assert!(refused["reason"].as_str().unwrap().contains("terms"), "{refused}");
    stack.stop().await;
}

/// A container whose embedding model fails to load answered 503 for its
/// life. Searches and asks now fall back to keyword search and say so
/// (`degraded`); writes, which would index without vectors, still get 503.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_its_model_a_container_searches_by_keyword_and_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let stack = start_stack(dir.path(), config(&[])).await;
    let c = Client::new(stack.url());
    let t = tenant(&c, "acme", json!({})).await;
    put(&c, &t.admin, "refunds", json!({"text": "Refunds are paid back to the original card within five business days."})).await;
    stack.stop().await;

    let no_model = tempfile::tempdir().unwrap();
    let stack = start_stack(dir.path(), config(&[("KEEL_MODEL_DIR", no_model.path().to_str().unwrap())])).await;
    let c = Client::new(stack.url());
    let (s, b) = c.call("POST", "/v1/search", &t.member, Some(json!({"query": "refunds card business days"}))).await.unwrap();
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["mode"], "lexical", "{b}");
    assert!(b["degraded"].as_str().is_some_and(|d| d.starts_with("keyword search only")), "{b}");
    assert_eq!(b["results"][0]["doc_id"], "refunds", "{b}");
    let (s, b) = c.call("POST", "/v1/ask", &t.member, Some(json!({"question": "How long do refunds take to reach the card?"}))).await.unwrap();
    assert_eq!(s, 200, "{b}");
    assert!(b["degraded"].as_str().is_some_and(|d| d.contains("keyword search only")), "{b}");
    let (s, b) = c.call("PUT", "/v1/documents/late", &t.admin, Some(json!({"text": "Written while the model is out."}))).await.unwrap();
    assert_eq!(s, 503, "{b}");
    stack.stop().await;
}
