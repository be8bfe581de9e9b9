// Test-only code: helpers outside #[test] functions may unwrap and panic too.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

//! Off-boarding a tenant: `DELETE /v1/tenants/{id}` leaves nothing of it in
//! the table, the blob store or the queues, spares the neighbour whose id
//! begins the same, keeps a receipt in the platform's partition, and is
//! the platform admin's alone. Checked by listing what is stored: the local
//! stack's SQLite file and directory, and moto's DynamoDB and versioned S3.

use keel_core::ports::{BlobStore, QueueName, Table, WorkQueue};
use keel_tests::{config, files_containing, files_under, start_stack, tenant, Client, ADMIN_KEY};
use serde_json::json;
use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

async fn items_of(stack: &keel_emulator::Stack, pk: &str) -> usize {
    stack.table.query(pk, "", Default::default()).await.unwrap().len()
}

/// Every row the SQLite file holds for `pk`, expired ones included (read once the stack has stopped).
fn rows_of(dir: &Path, pk: &str) -> i64 {
    let db = rusqlite::Connection::open_with_flags(dir.join("keel.sqlite3"), rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY).unwrap();
    db.query_row("SELECT count(*) FROM items WHERE pk = ?1", [pk], |r| r.get(0)).unwrap()
}

async fn fill(c: &Client, admin: &str, member: &str, marker: &str) {
    let doc = json!({"text": format!("The {marker} report says revenue grew in spring.")});
    let (s, b) = c.call("PUT", "/v1/documents/report", admin, Some(doc)).await.unwrap();
    assert_eq!(s, 200, "{b}");
    let (s, b) = c.call("POST", "/v1/ask", member, Some(json!({"question": "What does the report say about revenue?"}))).await.unwrap();
    assert_eq!(s, 200, "{b}");
}

#[tokio::test]
async fn deleting_a_tenant_leaves_nothing_of_it_and_spares_its_neighbour() {
    let dir = tempfile::tempdir().unwrap();
    let stack = start_stack(dir.path(), config(&[])).await;
    let c = Client::new(stack.url());
    let acme = tenant(&c, "acme", json!({})).await;
    let acme2 = tenant(&c, "acme2", json!({})).await;
    fill(&c, &acme.admin, &acme.member, "zebracorn").await;
    fill(&c, &acme2.admin, &acme2.member, "griffinwort").await;
    assert!(stack.settle(Duration::from_secs(10)).await);
    let acme_objects = dir.path().join("blobs/tenants/acme");
    assert!(items_of(&stack, "T#acme").await > 5 && !files_under(&acme_objects).is_empty());
    let neighbour_items = items_of(&stack, "T#acme2").await;

    // Only the platform admin deletes a tenant: not its own admin, not its members.
    for key in [&acme.admin, &acme.member, &acme2.admin] {
        let (s, b) = c.call("DELETE", "/v1/tenants/acme", key, None).await.unwrap();
        assert_eq!(s, 403, "{b}");
    }
    let (s, receipt) = c.call("DELETE", "/v1/tenants/acme", ADMIN_KEY, None).await.unwrap();
    assert_eq!(s, 200, "{receipt}");
    assert_eq!(receipt["state"], "deleted");
    assert!(receipt["items"].as_u64().unwrap() > 5 && receipt["objects"].as_u64().unwrap() > 0, "{receipt}");

    assert_eq!(items_of(&stack, "T#acme").await, 0);
    assert_eq!(files_under(&acme_objects), Vec::<std::path::PathBuf>::new());
    let (s, _) = c.call("GET", "/v1/documents/report", &acme.admin, None).await.unwrap();
    assert_eq!(s, 401, "a deleted tenant's keys are gone");
    let (s, _) = c.call("GET", "/v1/tenants/acme", ADMIN_KEY, None).await.unwrap();
    assert_eq!(s, 404);

    // The neighbour whose id begins the same keeps everything.
    assert!(items_of(&stack, "T#acme2").await >= neighbour_items);
    let (s, found) = c.call("POST", "/v1/search", &acme2.member, Some(json!({"query": "revenue report"}))).await.unwrap();
    assert_eq!(s, 200);
    assert!(found.to_string().contains("griffinwort"), "{found}");

    // Messages still on their way for the deleted tenant are dropped: nothing comes back, nothing is dead-lettered.
    let audit_event = json!({"id": "late-1", "kind": "ask", "principal": "ann"});
    stack.queue.send(QueueName::Audit, audit_event.to_string(), HashMap::from([("tenant".into(), "acme".into())])).await.unwrap();
    let proposal = json!({"tool": "refund", "args": {}, "idempotency_key": "late-1"});
    let signed = HashMap::from([("authorization".to_string(), format!("Bearer {}", acme.member))]);
    stack.queue.send(QueueName::Actions, proposal.to_string(), signed).await.unwrap();
    assert!(stack.settle(Duration::from_secs(10)).await);
    assert_eq!(items_of(&stack, "T#acme").await, 0);
    for queue in [QueueName::Audit, QueueName::Actions] {
        assert!(stack.queue.dead_letters(queue).unwrap().is_empty(), "{queue:?} kept a deleted tenant's message");
    }

    // The platform keeps the receipt; running the deletion again sweeps and says so.
    let stored = stack.table.get("PLATFORM", "DELETION#acme").await.unwrap().unwrap();
    assert_eq!(stored.data["requested_by"], receipt["requested_by"]);
    let (s, again) = c.call("DELETE", "/v1/tenants/acme", ADMIN_KEY, None).await.unwrap();
    assert_eq!((s, &again["state"], &again["started_at"]), (200, &json!("deleted"), &receipt["started_at"]));
    let (s, _) = c.call("DELETE", "/v1/tenants/nobody", ADMIN_KEY, None).await.unwrap();
    assert_eq!(s, 404);

    // The id may be used again, and the new tenant starts empty.
    let fresh = tenant(&c, "acme", json!({})).await;
    let (s, _) = c.call("GET", "/v1/documents/report", &fresh.admin, None).await.unwrap();
    assert_eq!(s, 404);
    // Its creation's events are chained first: one still in flight while the
    // partition is purged could land after it (the documented window a second run sweeps).
    assert!(stack.settle(Duration::from_secs(10)).await);
    let (s, _) = c.call("DELETE", "/v1/tenants/acme", ADMIN_KEY, None).await.unwrap();
    assert_eq!(s, 200);
    assert!(stack.settle(Duration::from_secs(10)).await);
    stack.stop().await;
    assert_eq!(rows_of(dir.path(), "T#acme"), 0, "no row of acme, expired or not, is left in the file");
    assert!(rows_of(dir.path(), "T#acme2") > 0);
}

/// The same use case over the AWS adapters, through tenant sessions, against
/// moto: DynamoDB scanned and every S3 object version listed afterwards.
#[tokio::test]
async fn deleting_a_tenant_in_aws_leaves_nothing_in_dynamodb_or_s3() {
    let Some(endpoint) = keel_tests::aws::moto() else { return };
    let sdk = keel_tests::aws::sdk_config(&endpoint).await;
    let suffix = uuid::Uuid::new_v4().simple().to_string();
    let ddb = aws_sdk_dynamodb::Client::new(&sdk);
    let table_name = format!("keel-off-{suffix}");
    keel_tests::aws::create_table(&sdk, &table_name).await;
    let s3 = keel_aws::s3_client(&sdk);
    let bucket = format!("keel-off-{suffix}");
    keel_tests::aws::create_versioned_bucket(&sdk, &bucket).await;
    let role = "arn:aws:iam::123456789012:role/keel-tenant-access";
    let sessions = std::sync::Arc::new(keel_aws::TenantSessions::new(sdk.clone(), Some(role.into())));
    let table = std::sync::Arc::new(keel_aws::DynamoTable::with_sessions(sessions.clone(), table_name.clone()));
    let blobs = std::sync::Arc::new(keel_aws::S3Blobs::with_sessions(sessions, bucket.clone()));

    let dir = tempfile::tempdir().unwrap();
    let db = keel_emulator::store::Db::open(&dir.path().join("queue.sqlite3")).unwrap();
    let queue = std::sync::Arc::new(keel_emulator::queue::SqliteQueue::new(db, Duration::from_secs(30), 3));
    let config = std::sync::Arc::new(config(&[]));
    let tenants = std::sync::Arc::new(config.tenant_store(table.clone()));
    let keys = std::sync::Arc::new(config.key_authenticator(table.clone(), tenants.clone()));
    let auth = keel_auth::Auth::new(table.clone(), blobs.clone(), queue, config, tenants, keys).unwrap();
    let app = keel_core::http::api(keel_auth::routes::routes().with_state(std::sync::Arc::new(auth)))
        .layer(axum::Extension(keel_core::auth::Caller::platform_admin()));
    let c = Client::new(format!("http://{}", keel_tests::serve_on_loopback(app).await));

    for id in ["acme", "acme2"] {
        let (s, b) = c.call("POST", "/v1/tenants", "unused", Some(json!({"id": id, "name": id}))).await.unwrap();
        assert_eq!(s, 201, "{b}");
        let (s, b) = c.call("POST", &format!("/v1/tenants/{id}/keys"), "unused", Some(json!({"principal": "ann", "roles": ["member"]}))).await.unwrap();
        assert_eq!(s, 201, "{b}");
        // A document written twice and another deleted: old versions and a delete marker.
        let doc = format!("tenants/{id}/documents/report.json");
        blobs.put(&doc, b"first".to_vec()).await.unwrap();
        blobs.put(&doc, b"second".to_vec()).await.unwrap();
        blobs.put(&format!("tenants/{id}/documents/old.json"), b"old".to_vec()).await.unwrap();
        blobs.delete(&format!("tenants/{id}/documents/old.json")).await.unwrap();
    }
    let (s, receipt) = c.call("DELETE", "/v1/tenants/acme", "unused", None).await.unwrap();
    assert_eq!(s, 200, "{receipt}");
    assert_eq!(receipt["objects"], 4, "two versions of one document, the other's version and its delete marker: {receipt}");

    let scan = ddb.scan().table_name(&table_name).send().await.unwrap();
    let pks: Vec<String> = scan.items().iter().filter_map(|i| i.get("pk")?.as_s().ok().cloned()).collect();
    assert!(!pks.iter().any(|pk| pk == "T#acme"), "items of acme left: {pks:?}");
    assert!(pks.iter().any(|pk| pk == "T#acme2"));
    let receipt_item = scan.items().iter().find(|i| i.get("sk").and_then(|v| v.as_s().ok()).map(String::as_str) == Some("DELETION#acme"));
    assert!(receipt_item.is_some_and(|i| i.get("pk").and_then(|v| v.as_s().ok()).map(String::as_str) == Some("PLATFORM")));

    let versions = |prefix: &'static str| {
        let s3 = s3.clone();
        let bucket = bucket.clone();
        async move {
            let out = s3.list_object_versions().bucket(&bucket).prefix(prefix).send().await.unwrap();
            out.versions().len() + out.delete_markers().len()
        }
    };
    assert_eq!(versions("tenants/acme/").await, 0);
    assert_eq!(versions("tenants/acme2/").await, 4);
}

#[tokio::test]
async fn a_replaced_or_deleted_documents_text_leaves_the_index_and_the_sources_at_the_next_write() {
    let dir = tempfile::tempdir().unwrap();
    let stack = start_stack(dir.path(), config(&[])).await;
    let c = Client::new(stack.url());
    let t = tenant(&c, "acme", json!({})).await;
    let put = |id: &'static str, text: &'static str| {
        let (c, admin) = (&c, &t.admin);
        async move {
            let (s, b) = c.call("PUT", &format!("/v1/documents/{id}"), admin, Some(json!({"text": text}))).await.unwrap();
            assert_eq!(s, 200, "{b}");
        }
    };
    put("alpha", "The quokkaflame protocol rotates keys weekly.").await;
    put("beta", "The snarkwillow ledger closes on Fridays.").await;
    put("gamma", "Lunch is served at noon in the atrium.").await;
    let blobs = dir.path().join("blobs/tenants/acme");
    assert!(!files_containing(&blobs, "quokkaflame").is_empty(), "the test needs the text stored first");

    put("alpha", "The rotation protocol changes keys monthly.").await;
    let (s, _) = c.call("DELETE", "/v1/documents/beta", &t.admin, None).await.unwrap();
    assert_eq!(s, 200);
    assert!(stack.settle(Duration::from_secs(10)).await);
    for gone in ["quokkaflame", "snarkwillow"] {
        assert_eq!(files_containing(&blobs, gone), Vec::<std::path::PathBuf>::new(), "{gone} is still stored");
    }
    let (s, found) = c.call("POST", "/v1/search", &t.member, Some(json!({"query": "rotation protocol keys"}))).await.unwrap();
    assert_eq!(s, 200);
    assert!(found.to_string().contains("monthly") && !found.to_string().contains("quokkaflame"), "{found}");
    let (_, lunch) = c.call("POST", "/v1/search", &t.member, Some(json!({"query": "lunch atrium"}))).await.unwrap();
    assert!(lunch.to_string().contains("noon"), "untouched documents stay searchable: {lunch}");
    stack.stop().await;
    let db = rusqlite::Connection::open_with_flags(dir.path().join("keel.sqlite3"), rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY).unwrap();
    let rows: i64 = db.query_row("SELECT count(*) FROM items WHERE data LIKE '%quokkaflame%' OR data LIKE '%snarkwillow%'", [], |r| r.get(0)).unwrap();
    assert_eq!(rows, 0, "no table item keeps the old text");
}
