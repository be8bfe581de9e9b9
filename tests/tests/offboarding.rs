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

/// Deletes `id` and creates it again at once (the tests' caches hold
/// nothing for a second, so the id is free again at once).
async fn delete_and_create_again(c: &Client, id: &str, extra: serde_json::Value) -> keel_tests::Tenant {
    let (s, b) = c.call("DELETE", &format!("/v1/tenants/{id}"), ADMIN_KEY, None).await.unwrap();
    assert_eq!(s, 200, "{b}");
    tenant(c, id, extra).await
}

/// A tenant created again under a deleted one's id is a new tenant: its
/// search and answers never return the old tenant's passages, though the new
/// index's manifest starts again at the version the old one had cached.
#[tokio::test]
async fn a_tenant_created_again_under_a_deleted_ones_id_never_searches_the_old_index() {
    let dir = tempfile::tempdir().unwrap();
    let stack = start_stack(dir.path(), config(&[])).await;
    let c = Client::new(stack.url());
    let old = tenant(&c, "td", json!({})).await;
    let doc = json!({"text": "The zebracorn payroll table lists every salary in the company."});
    assert_eq!(c.call("PUT", "/v1/documents/payroll", &old.admin, Some(doc)).await.unwrap().0, 200);
    let (_, found) = c.call("POST", "/v1/search", &old.member, Some(json!({"query": "payroll salary table"}))).await.unwrap();
    assert!(found.to_string().contains("zebracorn"), "the old index is warm: {found}");

    let new = delete_and_create_again(&c, "td", json!({})).await;
    let doc = json!({"text": "The griffinwort payroll table is empty: nobody is paid yet."});
    assert_eq!(c.call("PUT", "/v1/documents/payroll", &new.admin, Some(doc)).await.unwrap().0, 200);
    let (s, found) = c.call("POST", "/v1/search", &new.member, Some(json!({"query": "payroll salary table"}))).await.unwrap();
    assert_eq!(s, 200, "{found}");
    assert!(found.to_string().contains("griffinwort"), "the new tenant's own document is found: {found}");
    assert!(!found.to_string().contains("zebracorn"), "the deleted tenant's passage was served: {found}");
    let (s, answer) = c.call("POST", "/v1/ask", &new.member, Some(json!({"question": "What does the payroll table list?"}))).await.unwrap();
    assert_eq!(s, 200, "{answer}");
    assert!(!answer.to_string().contains("zebracorn"), "{answer}");
    stack.stop().await;
}

/// Compiled policies and tool schemas are cached by the versions of their
/// records, which start again at 1 in a tenant created again: the new
/// tenant's own `forbid` and schema decide, not the deleted tenant's.
#[tokio::test]
async fn a_tenant_created_again_is_governed_by_its_own_policies_and_schemas() {
    let dir = tempfile::tempdir().unwrap();
    let stack = start_stack(dir.path(), config(&[])).await;
    let c = Client::new(stack.url());
    let (connector, calls) = keel_tests::recording_connector().await;
    let tool = |schema: serde_json::Value| json!({"description": "refund", "risk": "low", "input_schema": schema, "connector": {"url": connector}});
    let register = |key: String, schema: serde_json::Value, policies: &'static str| {
        let c = &c;
        let body = tool(schema);
        async move {
            let (s, b) = c.call("PUT", "/v1/tools/refund", &key, Some(body)).await.unwrap();
            assert_eq!(s, 200, "{b}");
            let (s, b) = c.call("PUT", "/v1/policies/enforced", &key, Some(json!({"policies": policies}))).await.unwrap();
            assert_eq!(s, 200, "{b}");
        }
    };
    let propose = |key: String, args: serde_json::Value, idem: &'static str| {
        let c = &c;
        async move { c.call("POST", "/v1/actions", &key, Some(json!({"tool": "refund", "args": args, "idempotency_key": idem}))).await.unwrap() }
    };
    let old = tenant(&c, "td", json!({"autonomy": "unattended"})).await;
    register(old.admin.clone(), json!({"type": "object"}), r#"@id("anything-goes") permit (principal, action, resource);"#).await;
    let (s, b) = propose(old.member.clone(), json!({"amount": 5}), "old-1").await;
    assert!(s == 200 || s == 201 || s == 202, "the old tenant's caches are warm: {s} {b}");

    let new = delete_and_create_again(&c, "td", json!({"autonomy": "unattended"})).await;
    let strict = json!({"type": "object", "required": ["reason"], "properties": {"reason": {"type": "string"}}});
    register(new.admin.clone(), strict, r#"@id("no-refunds") forbid (principal, action, resource) when { resource.tool == "refund" };"#).await;
    let (s, b) = propose(new.member.clone(), json!({"amount": 5}), "new-1").await;
    assert_eq!(s, 422, "the new tenant's schema requires a reason: {b}");
    let (s, b) = propose(new.member.clone(), json!({"amount": 5, "reason": "goodwill"}), "new-2").await;
    assert_eq!(s, 403, "the new tenant's forbid decides: {b}");
    assert!(b.to_string().contains("no-refunds"), "{b}");
    assert!(stack.settle(Duration::from_secs(10)).await);
    assert_eq!(calls.lock().unwrap().len(), 1, "only the old tenant's own action ran");
    stack.stop().await;
}

/// A hosted chat still running when its tenant is deleted ends after the id
/// was given to a new tenant: its decision event, usage and budget
/// settlement belong to the deleted tenant and land nowhere.
#[tokio::test]
async fn a_chat_running_across_deletion_is_neither_logged_nor_billed_in_the_new_tenant() {
    use keel_tests::stub::{Behavior, StubModels};
    let stub = StubModels::start().await;
    stub.set("slow", Behavior::Slow(Duration::from_millis(1500), "A slow answer.".into()));
    let (_dir, stack, c) = keel_tests::gateway::gateway(&stub.catalog(&[("slow", "t2", 50.0, 10_000)])).await;
    let budgets = json!({"monthly_usd": 100.0});
    let old = tenant(&c, "td", json!({"budgets": budgets})).await;
    let chat = json!({"model": "slow", "max_tokens": 50, "messages": [{"role": "user", "content": "Say something slowly."}]});
    let running = {
        let (c, key, chat) = (Client::new(stack.url()), old.member.clone(), chat.clone());
        tokio::spawn(async move { keel_tests::gateway::chat(&c, &key, chat).await })
    };
    while stub.calls("slow") == 0 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let new = delete_and_create_again(&c, "td", json!({"budgets": budgets})).await;
    let (s, b) = running.await.unwrap();
    assert_eq!(s, 200, "the chat itself was answered: {b}");
    assert!(stack.settle(Duration::from_secs(10)).await);

    let (s, events) = c.call("GET", "/v1/decisions?kind=chat", &new.admin, None).await.unwrap();
    assert_eq!(s, 200, "{events}");
    assert_eq!(events["events"].as_array().map(Vec::len), Some(0), "the old tenant's chat was chained into the new one: {events}");
    let (s, usage) = c.call("GET", "/v1/usage", &new.admin, None).await.unwrap();
    assert_eq!(s, 200, "{usage}");
    assert_eq!(usage["report"]["totals"]["requests"], 0, "the old tenant's chat was billed to the new one: {usage}");
    let spend = stack.table.query("T#td", "SPEND#", Default::default()).await.unwrap();
    assert!(spend.iter().all(|i| i.counter == 0), "the old reservation was settled into the new tenant: {spend:?}");
    stack.stop().await;
}

/// Warm functions elsewhere trust a tenant's record and keys for
/// `KEEL_TENANT_CACHE_SECS`: a deleted tenant's id is given out again only
/// after that, so none of them can take the new tenant for the old one.
#[tokio::test]
async fn a_deleted_tenants_id_is_free_again_once_every_warm_cache_has_let_go() {
    let dir = tempfile::tempdir().unwrap();
    // Three seconds of caches (and one more): room for a slow machine between the deletion and the first try.
    let stack = start_stack(dir.path(), config(&[("KEEL_TENANT_CACHE_SECS", "3")])).await;
    let c = Client::new(stack.url());
    tenant(&c, "td", json!({})).await;
    let (s, b) = c.call("DELETE", "/v1/tenants/td", ADMIN_KEY, None).await.unwrap();
    assert_eq!(s, 200, "{b}");
    let (s, b) = c.call("POST", "/v1/tenants", ADMIN_KEY, Some(json!({"id": "td", "name": "again"}))).await.unwrap();
    assert_eq!(s, 409, "{b}");
    assert!(b["error"]["message"].as_str().unwrap().contains("can be used again in"), "{b}");
    tokio::time::sleep(Duration::from_millis(4100)).await;
    let (s, again) = c.call("POST", "/v1/tenants", ADMIN_KEY, Some(json!({"id": "td", "name": "again"}))).await.unwrap();
    assert_eq!(s, 201, "{again}");
    let first = b.to_string();
    assert!(again["incarnation"].as_str().is_some_and(|i| i.starts_with("inc_") && !first.contains(i)), "{again}");
    stack.stop().await;
}
