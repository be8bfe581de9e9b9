// Test-only code: helpers outside #[test] functions may unwrap and panic too.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

//! Every sample event in events/ is one `cargo lambda invoke --data-file`
//! accepts; here each is recognized as its trigger, and the queue batches
//! are run through their real consumers over the embedded backends.

use keel_core::ports::QueueName;
use keel_core::tenants::{Autonomy, Tenant, TenantStatus};
use keel_core::TenantId;
use keel_core::auth::Caller;
use keel_lambda::{http_request, queue_messages, recognize, Event};
use keel_emulator::blobs::DirBlobs;
use keel_emulator::store::Db;
use keel_emulator::table::SqliteTable;
use serde_json::Value;
use std::sync::Arc;
use std::time::Duration;

fn json(src: &str) -> Value {
    serde_json::from_str::<Value>(src).unwrap()
}

fn event(src: &str) -> Event {
    recognize(json(src)).unwrap()
}

#[test]
fn every_sample_http_event_is_a_declared_route_with_its_caller() {
    let http = [
        ("AuthFunction", include_str!("../../events/auth/create-tenant.json")),
        ("AuthFunction", include_str!("../../events/auth/create-key.json")),
        ("RetrievalFunction", include_str!("../../events/retrieval/put-document.json")),
        ("RetrievalFunction", include_str!("../../events/retrieval/search.json")),
        ("RetrievalFunction", include_str!("../../events/retrieval/changes.json")),
        ("RetrievalFunction", include_str!("../../events/retrieval/put-source.json")),
        ("RoutingFunction", include_str!("../../events/routing/ask.json")),
        ("RoutingFunction", include_str!("../../events/routing/chat-completions.json")),
        ("RoutingFunction", include_str!("../../events/routing/classify.json")),
        ("RoutingFunction", include_str!("../../events/routing/rank.json")),
        ("ToolsFunction", include_str!("../../events/tools/put-tool.json")),
        ("ToolsFunction", include_str!("../../events/tools/propose-action.json")),
        ("ToolsFunction", include_str!("../../events/tools/approve-action.json")),
        ("AuditFunction", include_str!("../../events/audit/verify.json")),
        ("AuditFunction", include_str!("../../events/audit/export.json")),
    ];
    let declared = keel_emulator::declared_routes();
    for (function, src) in http {
        let sample = json(src);
        let (req, from_url) = http_request(sample.clone()).unwrap();
        assert!(req.extensions().get::<Caller>().is_some() && !from_url, "{src}");
        // The sample's route key names a route its function declares.
        let (method, path) = sample["routeKey"].as_str().unwrap().split_once(' ').unwrap();
        assert!(declared.contains(&(function, method.into(), path.into())), "{function} does not declare {method} {path}");
        assert_eq!((req.method().as_str(), req.uri().path()), (method, sample["rawPath"].as_str().unwrap()));
    }
    assert!(matches!(event(include_str!("../../events/auth/authorizer.json")), Event::Authorize(_)));
    // A function URL request carries no authorizer context: the function authenticates it.
    let (url, from_url) = http_request(json(include_str!("../../events/routing/ask-stream-url.json"))).unwrap();
    assert!(from_url && url.extensions().get::<Caller>().is_none());
    assert!(url.headers()["authorization"].to_str().unwrap().starts_with("Bearer keel_"));
    assert!(matches!(event(include_str!("../../events/tools/saga-step.json")), Event::Task(_)));
    assert!(matches!(event(include_str!("../../events/tools/await-approval-step.json")), Event::Task(_)));
    assert!(matches!(event(include_str!("../../events/tools/actions-batch.json")), Event::Queue(_)));
    assert!(matches!(event(include_str!("../../events/retrieval/ingest-batch.json")), Event::Queue(_)));
    assert!(matches!(event(include_str!("../../events/audit/audit-batch.json")), Event::Queue(_)));
}

#[tokio::test]
async fn sample_queue_batches_run_through_their_consumers() {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(&dir.path().join("t.sqlite3")).unwrap();
    let table = Arc::new(SqliteTable::new(db.clone()));
    let queue = Arc::new(keel_emulator::queue::SqliteQueue::new(db, Duration::from_secs(30), 3));
    let blobs = Arc::new(DirBlobs::new(dir.path().join("blobs")));
    let acme = TenantId::parse("acme").unwrap();
    let tenant = Tenant {
        id: acme.clone(), name: "Acme".into(), plan: "pro".into(), region: None, status: TenantStatus::Active,
        rate_limit_per_minute: 10, autonomy: Autonomy::OneClick, redact_pii: false, routing: Default::default(),
        budgets: Default::default(), kill_switch: false, governance: Default::default(), identity: None, egress: None, retention: Default::default(), created_at: "now".into(), incarnation: "inc_sample".into(),
    };
    let config = keel_tests::config(&[]);
    let tenants = Arc::new(config.tenant_store(table.clone()));
    tenants.create(&tenant).await.unwrap();
    // The key the sample batches are signed with, and the object the ingest batch names, as `keel dev` seeds them.
    keel_aws::provision::seed_samples(table.clone(), blobs.as_ref(), &config).await.unwrap();
    let keys = Arc::new(config.key_authenticator(table.clone(), tenants.clone()));

    let retrieval = keel_retrieval::Retrieval::from_config(keel_retrieval::Backends { table: table.clone(), blobs: blobs.clone(), queue: queue.clone(), tenants: tenants.clone(), keys }, &config).unwrap();
    let Event::Queue(batch) = event(include_str!("../../events/retrieval/ingest-batch.json")) else { panic!() };
    assert_eq!(retrieval.ingest(&queue_messages(batch)).await, Vec::<String>::new());
    let Event::Queue(batch) = event(include_str!("../../events/retrieval/inbox-batch.json")) else { panic!() };
    assert_eq!(retrieval.ingest_inbox(&queue_messages(batch)).await, Vec::<String>::new());
    let caller = keel_tests::member("acme", "ann");
    assert_eq!(retrieval.search(&caller, "ship orders", 3).await.unwrap()[0].doc_id, "shipping");
    assert_eq!(retrieval.search(&caller, "gift cards", 3).await.unwrap()[0].doc_id, "faq");

    assert_eq!(queue.rejections(QueueName::Ingest).unwrap(), Vec::<(String, String)>::new());
    let audit = keel_audit::Audit::new(table, blobs, tenants);
    let Event::Queue(batch) = event(include_str!("../../events/audit/audit-batch.json")) else { panic!() };
    assert_eq!(audit.consume(&queue_messages(batch)).await, Vec::<String>::new());
}
