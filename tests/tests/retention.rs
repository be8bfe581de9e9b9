// Test-only code: helpers outside #[test] functions may unwrap and panic too.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

//! Retention on purpose, per tenant: a decision log that keeps hashes of
//! questions instead of their text, entries that expire after the tenant's
//! days (and a verification that tells pruning from deletion), and
//! `redact_pii` turned on redacting what is already stored.

use keel_core::ports::Table;
use keel_tests::{config, files_containing, start_stack, tenant, Client, ADMIN_KEY};
use serde_json::json;
use std::time::Duration;

const QUESTION: &str = "What does the platypus handbook say about salaries?";

async fn ask_and_export(c: &Client, t: &keel_tests::Tenant, stack: &keel_emulator::Stack) -> String {
    let (s, b) = c.call("PUT", "/v1/documents/handbook", &t.admin, Some(json!({"text": "The handbook says salaries are paid monthly."}))).await.unwrap();
    assert_eq!(s, 200, "{b}");
    let (s, b) = c.call("POST", "/v1/ask", &t.member, Some(json!({"question": QUESTION}))).await.unwrap();
    assert_eq!(s, 200, "{b}");
    assert!(stack.settle(Duration::from_secs(10)).await);
    let (s, log) = c.call("GET", "/v1/audit/export", &t.admin, None).await.unwrap();
    assert_eq!(s, 200);
    log.as_str().unwrap().to_string()
}

#[tokio::test]
async fn a_tenant_that_keeps_no_prompts_logs_a_hash_of_each_question() {
    let dir = tempfile::tempdir().unwrap();
    let stack = start_stack(dir.path(), config(&[])).await;
    let c = Client::new(stack.url());
    let keeps = tenant(&c, "keeps", json!({})).await;
    let hashes = tenant(&c, "hashes", json!({"retention": {"store_prompts": false}})).await;
    assert!(ask_and_export(&c, &keeps, &stack).await.contains("platypus"), "by default the question is kept");
    let log = ask_and_export(&c, &hashes, &stack).await;
    assert!(!log.contains("platypus"), "{log}");
    assert!(log.contains("question_sha256"), "{log}");
    let (_, verified) = c.call("POST", "/v1/audit/verify", &hashes.admin, None).await.unwrap();
    assert_eq!(verified["ok"], true, "{verified}");
    stack.stop().await;
    let db = rusqlite::Connection::open_with_flags(dir.path().join("keel.sqlite3"), rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY).unwrap();
    let rows: i64 = db.query_row("SELECT count(*) FROM items WHERE pk = 'T#hashes' AND data LIKE '%platypus%'", [], |r| r.get(0)).unwrap();
    assert_eq!(rows, 0, "the text is nowhere in the tenant's partition");
}

#[tokio::test]
async fn decision_entries_expire_after_the_tenants_days_and_an_early_deletion_is_still_caught() {
    let dir = tempfile::tempdir().unwrap();
    let stack = start_stack(dir.path(), config(&[])).await;
    let c = Client::new(stack.url());
    let t = tenant(&c, "brief", json!({"retention": {"decision_days": 30}})).await;
    ask_and_export(&c, &t, &stack).await;
    let entries = stack.table.query("T#brief", keel_core::keys::AUDIT_ENTRIES, Default::default()).await.unwrap();
    let pointers = stack.table.query("T#brief", keel_core::keys::DECISION_POINTERS, Default::default()).await.unwrap();
    assert!(entries.len() >= 3, "tenant created, keys, document, ask");
    let in_30_days = keel_core::time::now_secs() + 30 * 86_400;
    for item in entries.iter().chain(&pointers) {
        let expires = item.expires_at.unwrap_or_else(|| panic!("{} does not expire", item.sk));
        assert!((in_30_days - 120..=in_30_days).contains(&expires), "{}: {expires}", item.sk);
    }
    let (_, verified) = c.call("POST", "/v1/audit/verify", &t.admin, None).await.unwrap();
    assert_eq!((verified["ok"].clone(), verified["pruned"].clone()), (json!(true), json!(0)), "{verified}");
    // Removing the oldest entry before it is due is a deletion, not pruning.
    stack.table.delete("T#brief", &entries[0].sk).await.unwrap();
    let (_, verified) = c.call("POST", "/v1/audit/verify", &t.admin, None).await.unwrap();
    assert_eq!(verified["ok"], false, "{verified}");

    // The setting is checked.
    for bad in [json!({"decision_days": 0}), json!({"decision_days": 100_000}), json!({"keep": "forever"})] {
        let (s, b) = c.call("PATCH", "/v1/tenants/brief", ADMIN_KEY, Some(json!({"retention": bad}))).await.unwrap();
        assert_eq!(s, 400, "{bad}: {b}");
    }
    stack.stop().await;
}

#[tokio::test]
async fn turning_redact_pii_on_redacts_the_documents_already_stored() {
    let dir = tempfile::tempdir().unwrap();
    let stack = start_stack(dir.path(), config(&[])).await;
    let c = Client::new(stack.url());
    let t = tenant(&c, "later", json!({})).await;
    let email = "jane.doe@example.com";
    for (id, text) in [("contact", format!("Write to {email} about refunds.")), ("plain", "Refunds take five days.".to_string())] {
        let (s, b) = c.call("PUT", &format!("/v1/documents/{id}"), &t.admin, Some(json!({"text": text}))).await.unwrap();
        assert_eq!(s, 200, "{b}");
    }
    let blobs = dir.path().join("blobs/tenants/later");
    assert!(!files_containing(&blobs, email).is_empty(), "stored unredacted first");

    let (s, b) = c.call("PATCH", "/v1/tenants/later", ADMIN_KEY, Some(json!({"redact_pii": true}))).await.unwrap();
    assert_eq!(s, 200, "{b}");
    assert!(stack.settle(Duration::from_secs(20)).await);
    assert_eq!(files_containing(&blobs, email), Vec::<std::path::PathBuf>::new(), "the address is gone from sources and index");
    let (_, doc) = c.call("GET", "/v1/documents/contact", &t.admin, None).await.unwrap();
    assert_eq!(doc["redacted"], true, "{doc}");
    let (_, found) = c.call("POST", "/v1/search", &t.member, Some(json!({"query": "write about refunds"}))).await.unwrap();
    let text = found.to_string();
    assert!(text.contains("[EMAIL]") && !text.contains(email), "{text}");
    stack.stop().await;
}
