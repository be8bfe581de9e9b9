// Test-only code: helpers outside #[test] functions may unwrap and panic too.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

//! Every sample event in events/ is one `cargo lambda invoke --data-file`
//! accepts; here each is recognized as its trigger, and the queue batches
//! are run through their real consumers over the embedded backends.

use keel_core::ports::{BlobStore, Condition};
use keel_core::tenants::{put_tenant, Autonomy, Tenant, TenantStatus};
use keel_core::TenantId;
use keel_lambda::{classify, queue_messages, Incoming};
use keel_local::blobs::DirBlobs;
use keel_local::sqlite::{Db, SqliteTable};
use serde_json::Value;
use std::sync::Arc;

fn event(src: &str) -> Incoming {
    classify(serde_json::from_str::<Value>(src).unwrap()).unwrap()
}

#[test]
fn every_sample_event_is_recognized() {
    let http = [
        include_str!("../../events/auth/create-tenant.json"),
        include_str!("../../events/auth/create-key.json"),
        include_str!("../../events/retrieval/put-document.json"),
        include_str!("../../events/retrieval/search.json"),
        include_str!("../../events/retrieval/changes.json"),
        include_str!("../../events/retrieval/put-source.json"),
        include_str!("../../events/routing/ask.json"),
        include_str!("../../events/routing/chat-completions.json"),
        include_str!("../../events/routing/classify.json"),
        include_str!("../../events/routing/rank.json"),
        include_str!("../../events/tools/put-tool.json"),
        include_str!("../../events/tools/propose-action.json"),
        include_str!("../../events/audit/verify.json"),
        include_str!("../../events/audit/export.json"),
    ];
    for src in http {
        let Incoming::Http(req) = event(src) else { panic!("not HTTP: {src}") };
        assert!(req.caller.is_some() && req.path.starts_with("/v1/"));
    }
    assert!(matches!(event(include_str!("../../events/auth/authorizer.json")), Incoming::Authorize(_)));
    // A function URL request carries no authorizer context: the function authenticates it.
    let Incoming::Http(url) = event(include_str!("../../events/routing/ask-stream-url.json")) else { panic!() };
    assert!(url.caller.is_none() && url.headers["authorization"].starts_with("Bearer keel_"));
    assert!(matches!(event(include_str!("../../events/tools/saga-step.json")), Incoming::Task(_)));
    assert!(matches!(event(include_str!("../../events/tools/await-approval-step.json")), Incoming::Task(_)));
    assert!(matches!(event(include_str!("../../events/tools/actions-batch.json")), Incoming::Queue(_)));
    assert!(matches!(event(include_str!("../../events/retrieval/ingest-batch.json")), Incoming::Queue(_)));
    assert!(matches!(event(include_str!("../../events/audit/audit-batch.json")), Incoming::Queue(_)));
}

#[tokio::test]
async fn sample_queue_batches_run_through_their_consumers() {
    let dir = tempfile::tempdir().unwrap();
    let table = Arc::new(SqliteTable::new(Db::open(&dir.path().join("t.sqlite3")).unwrap()));
    let blobs = Arc::new(DirBlobs::new(dir.path().join("blobs")));
    let acme = TenantId::parse("acme").unwrap();
    let tenant = Tenant {
        id: acme.clone(), name: "Acme".into(), plan: "pro".into(), region: None, status: TenantStatus::Active,
        rate_limit_per_minute: 10, autonomy: Autonomy::OneClick, redact_pii: false, routing: Default::default(),
        budgets: Default::default(), models_off: false, created_at: "now".into(),
    };
    put_tenant(table.as_ref(), &tenant, Condition::NotExists).await.unwrap();
    blobs.put("tenants/acme/inbox/faq.txt", b"Gift cards never expire.".to_vec()).await.unwrap();

    let retrieval = keel_retrieval::Retrieval::from_config(table.clone(), blobs.clone(), &keel_tests::config(&[])).unwrap();
    let Incoming::Queue(batch) = event(include_str!("../../events/retrieval/ingest-batch.json")) else { panic!() };
    assert_eq!(retrieval.ingest(&queue_messages(batch)).await, Vec::<String>::new());
    let caller = keel_tests::member("acme", "ann");
    assert_eq!(retrieval.search(&caller, "ship orders", 3).await.unwrap()[0].doc_id, "shipping");
    assert_eq!(retrieval.search(&caller, "gift cards", 3).await.unwrap()[0].doc_id, "faq");

    let audit = keel_audit::Audit::new(table, blobs);
    let Incoming::Queue(batch) = event(include_str!("../../events/audit/audit-batch.json")) else { panic!() };
    assert_eq!(audit.consume(&queue_messages(batch)).await, Vec::<String>::new());
}
