// Test-only code: helpers outside #[test] functions may unwrap and panic too.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

//! One contract suite for the storage ports, run against the embedded
//! adapters and, over the wire, the AWS adapters against moto server
//! (`KEEL_MOTO_ENDPOINT`, started by scripts/test.sh). The model providers'
//! adapters have their own file, `providers.rs`.

use keel_aws::{DynamoTable, S3Blobs, SqsQueue, StepFunctionsSaga};
use keel_core::ports::*;
use keel_core::StoreError;
use keel_emulator::blobs::DirBlobs;
use keel_emulator::queue::SqliteQueue;
use keel_emulator::store::Db;
use keel_emulator::table::SqliteTable;
use serde_json::{json, Value};
use std::collections::HashMap;
use keel_tests::aws::{create_table, create_versioned_bucket, moto, sdk_config};
use std::time::Duration;

fn write(pk: &str, sk: &str, data: Value, condition: Condition) -> Write {
    Write { pk: pk.into(), sk: sk.into(), data, expires_at: None, condition }
}

async fn table_contract(t: &dyn Table) {
    let pk = format!("T#c{}", uuid::Uuid::new_v4().simple());
    assert_eq!(t.get(&pk, "A").await.unwrap(), None);
    assert_eq!(t.put(write(&pk, "A", json!({"v": 1}), Condition::NotExists)).await.unwrap(), 1);
    assert!(matches!(t.put(write(&pk, "A", json!({"v": 9}), Condition::NotExists)).await, Err(StoreError::ConditionFailed)));
    assert!(matches!(t.put(write(&pk, "A", json!({"v": 9}), Condition::Version(7))).await, Err(StoreError::ConditionFailed)));
    assert_eq!(t.put(write(&pk, "A", json!({"v": 2}), Condition::Version(1))).await.unwrap(), 2);
    let item = t.get(&pk, "A").await.unwrap().unwrap();
    assert_eq!((item.data, item.version), (json!({"v": 2}), 2));
    // An expired item is gone for reads and for create-only writes.
    let mut expired = write(&pk, "OLD", json!(1), Condition::Always);
    expired.expires_at = Some(keel_core::time::now_secs() - 10);
    t.put(expired).await.unwrap();
    assert_eq!(t.get(&pk, "OLD").await.unwrap(), None);
    t.put(write(&pk, "OLD", json!(2), Condition::NotExists)).await.unwrap();
    // Query: prefix, order, limit.
    for sk in ["Q#3", "Q#1", "Q#2", "R#1"] {
        t.put(write(&pk, sk, json!(sk), Condition::Always)).await.unwrap();
    }
    let sks = |items: Vec<Item>| items.into_iter().map(|i| i.sk).collect::<Vec<_>>();
    assert_eq!(sks(t.query(&pk, "Q#", QueryOptions::default()).await.unwrap()), ["Q#1", "Q#2", "Q#3"]);
    assert_eq!(sks(t.query(&pk, "Q#", QueryOptions { limit: Some(1), descending: true, ..Default::default() }).await.unwrap()), ["Q#3"]);
    let after = QueryOptions { after: Some("Q#1".into()), ..Default::default() };
    assert_eq!(sks(t.query(&pk, "Q#", after).await.unwrap()), ["Q#2", "Q#3"]);
    // Newest-first pages: strictly older than the last key seen.
    let older = QueryOptions { descending: true, before: Some("Q#3".into()), limit: Some(1), ..Default::default() };
    assert_eq!(sks(t.query(&pk, "Q#", older).await.unwrap()), ["Q#2"]);
    let oldest = QueryOptions { descending: true, before: Some("Q#2".into()), ..Default::default() };
    assert_eq!(sks(t.query(&pk, "Q#", oldest).await.unwrap()), ["Q#1"]);
    // The prefix's edges: neighbours outside it, multi-byte keys inside it.
    for sk in ["Q", "Q$", "Q\"", "Q#\u{e9}", "Q#\u{1F600}"] {
        t.put(write(&pk, sk, json!(sk), Condition::Always)).await.unwrap();
    }
    assert_eq!(sks(t.query(&pk, "Q#", QueryOptions::default()).await.unwrap()), ["Q#1", "Q#2", "Q#3", "Q#\u{e9}", "Q#\u{1F600}"]);
    // Atomic group: one failed condition writes nothing.
    let group = vec![write(&pk, "G1", json!(1), Condition::NotExists), write(&pk, "A", json!(0), Condition::NotExists)];
    assert!(matches!(t.put_all(group).await, Err(StoreError::ConditionFailed)));
    assert_eq!(t.get(&pk, "G1").await.unwrap(), None);
    t.put_all(vec![write(&pk, "G1", json!(1), Condition::NotExists), write(&pk, "G2", json!(2), Condition::NotExists)]).await.unwrap();
    assert!(t.get(&pk, "G2").await.unwrap().is_some());
    // Counters: atomic, bounded.
    assert_eq!(t.increment(&pk, "N", 1, Some(2), None).await.unwrap(), 1);
    assert_eq!(t.increment(&pk, "N", 1, Some(2), None).await.unwrap(), 2);
    assert!(matches!(t.increment(&pk, "N", 1, Some(2), None).await, Err(StoreError::ConditionFailed)));
    assert_eq!(t.increment(&pk, "N", 5, None, None).await.unwrap(), 7);
    // A counter that does not exist yet counts as 0: it may not start above the limit.
    assert!(matches!(t.increment(&pk, "FRESH", 3, Some(2), None).await, Err(StoreError::ConditionFailed)));
    assert_eq!(t.get(&pk, "FRESH").await.unwrap(), None);
    assert_eq!(t.increment(&pk, "FRESH", -4, Some(2), None).await.unwrap(), -4);
    // An existing counter below the limit may take a step larger than the limit itself.
    assert_eq!(t.increment(&pk, "FRESH", 3, Some(2), None).await.unwrap(), -1);
    assert_eq!(t.get(&pk, "N").await.unwrap().unwrap().counter, 7);
    // Steps whose new value nobody reads.
    t.increment(&pk, "QUIET", 2, Some(3), None).await.unwrap();
    assert!(matches!(t.increment(&pk, "QUIET", 2, Some(3), None).await, Err(StoreError::ConditionFailed)));
    t.increment(&pk, "QUIET", -1, None, None).await.unwrap();
    assert_eq!(t.get(&pk, "QUIET").await.unwrap().unwrap().counter, 1);
    // Counter additions in a group move exactly when its writes land.
    let adds = || vec![Add { pk: pk.clone(), sk: "N".into(), by: 3 }, Add { pk: pk.clone(), sk: "NEW".into(), by: 2 }];
    let refused = vec![write(&pk, "G3", json!(3), Condition::NotExists), write(&pk, "G1", json!(0), Condition::NotExists)];
    assert!(matches!(t.put_all_adding(refused, adds()).await, Err(StoreError::ConditionFailed)));
    assert_eq!((t.get(&pk, "N").await.unwrap().unwrap().counter, t.get(&pk, "NEW").await.unwrap()), (7, None));
    t.put_all_adding(vec![write(&pk, "G3", json!(3), Condition::NotExists)], adds()).await.unwrap();
    assert_eq!((t.get(&pk, "N").await.unwrap().unwrap().counter, t.get(&pk, "NEW").await.unwrap().unwrap().counter), (10, 2));
    // A counter never leaves i64 (nor changes type): a sum that would is refused, alone or in a group.
    assert_eq!(t.increment(&pk, "BIG", i64::MAX - 1, None, None).await.unwrap(), i64::MAX - 1);
    assert!(matches!(t.increment(&pk, "BIG", 2, None, None).await, Err(StoreError::ConditionFailed)));
    assert!(matches!(t.increment(&pk, "BIG", i64::MAX, Some(i64::MAX), None).await, Err(StoreError::ConditionFailed)));
    let over = vec![Add { pk: pk.clone(), sk: "BIG".into(), by: 5 }];
    assert!(matches!(t.put_all_adding(vec![], over).await, Err(StoreError::ConditionFailed)));
    assert_eq!(t.increment(&pk, "SMALL", i64::MIN + 1, None, None).await.unwrap(), i64::MIN + 1);
    assert!(matches!(t.increment(&pk, "SMALL", -2, None, None).await, Err(StoreError::ConditionFailed)));
    assert_eq!(t.increment(&pk, "BIG", 1, None, None).await.unwrap(), i64::MAX);
    assert_eq!(t.get(&pk, "SMALL").await.unwrap().unwrap().counter, i64::MIN + 1);
    // A record nested deeper than any reader could read back is refused, not stored.
    let deep = (0..keel_core::limits::MAX_STORED_DEPTH + 1).fold(json!(1), |v, _| json!([v]));
    assert!(matches!(t.put(write(&pk, "DEEP", deep, Condition::Always)).await, Err(StoreError::Invalid(_))));
    assert_eq!(t.get(&pk, "DEEP").await.unwrap(), None);
    t.delete(&pk, "A").await.unwrap();
    assert_eq!(t.get(&pk, "A").await.unwrap(), None);
    // Purging a partition takes every item, an expired one included, and nothing of a neighbour's.
    let neighbour = format!("{pk}2");
    t.put(write(&neighbour, "A", json!(1), Condition::Always)).await.unwrap();
    let mut expired = write(&pk, "GONE", json!(1), Condition::Always);
    expired.expires_at = Some(keel_core::time::now_secs() - 10);
    t.put(expired).await.unwrap();
    let live = t.query(&pk, "", QueryOptions::default()).await.unwrap().len();
    assert_eq!(t.purge_partition(&pk).await.unwrap(), live + 1);
    assert!(t.query(&pk, "", QueryOptions::default()).await.unwrap().is_empty());
    assert_eq!(t.purge_partition(&pk).await.unwrap(), 0);
    assert!(t.get(&neighbour, "A").await.unwrap().is_some());
}

async fn concurrent_increments(t: std::sync::Arc<dyn Table>) {
    let pk = format!("T#c{}", uuid::Uuid::new_v4().simple());
    let mut tasks = Vec::new();
    for _ in 0..20 {
        let (t, pk) = (t.clone(), pk.clone());
        tasks.push(tokio::spawn(async move { t.increment(&pk, "RATE", 1, Some(10), None).await.is_ok() }));
    }
    let mut allowed = 0;
    for task in tasks {
        allowed += usize::from(task.await.unwrap());
    }
    assert_eq!(allowed, 10, "exactly the limit passes under concurrency");
}

async fn blob_contract(b: &dyn BlobStore) {
    let prefix = format!("tenants/c{}/", uuid::Uuid::new_v4().simple());
    assert_eq!(b.get(&format!("{prefix}missing")).await.unwrap(), None);
    b.put(&format!("{prefix}docs/a.json"), b"A".to_vec()).await.unwrap();
    b.put(&format!("{prefix}docs/b.json"), b"B".to_vec()).await.unwrap();
    b.put(&format!("{prefix}other.txt"), b"O".to_vec()).await.unwrap();
    assert_eq!(b.get(&format!("{prefix}docs/a.json")).await.unwrap(), Some(b"A".to_vec()));
    assert_eq!(b.list(&format!("{prefix}docs/")).await.unwrap(), [format!("{prefix}docs/a.json"), format!("{prefix}docs/b.json")]);
    b.delete(&format!("{prefix}docs/a.json")).await.unwrap();
    b.delete(&format!("{prefix}docs/a.json")).await.unwrap();
    assert_eq!(b.get(&format!("{prefix}docs/a.json")).await.unwrap(), None);
    // Purging a prefix takes every object under it and nothing beside it.
    let neighbour = format!("{}2/x.json", prefix.trim_end_matches('/'));
    b.put(&neighbour, b"N".to_vec()).await.unwrap();
    b.put(&format!("{prefix}docs/b.json"), b"B2".to_vec()).await.unwrap();
    assert!(b.purge_prefix(&prefix).await.unwrap() >= 2);
    assert!(b.list(&prefix).await.unwrap().is_empty());
    assert_eq!(b.get(&neighbour).await.unwrap(), Some(b"N".to_vec()));
    b.purge_prefix(&neighbour).await.unwrap();
}

async fn queue_contract(q: &dyn WorkQueue) {
    let attrs = HashMap::from([("tenant".to_string(), "acme".to_string())]);
    q.send(QueueName::Audit, "one".into(), attrs.clone()).await.unwrap();
    q.send(QueueName::Audit, "two".into(), HashMap::new()).await.unwrap();
    let mut got = Vec::new();
    for _ in 0..20 {
        for m in q.receive(QueueName::Audit, 10).await.unwrap() {
            assert_eq!(m.receive_count, 1);
            q.ack(QueueName::Audit, &m.receipt).await.unwrap();
            got.push((m.body, m.attributes));
        }
        if got.len() == 2 {
            break;
        }
    }
    got.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(got, vec![("one".to_string(), attrs), ("two".to_string(), HashMap::new())]);
    assert!(q.receive(QueueName::Audit, 10).await.unwrap().is_empty(), "acked messages are gone");
}

/// A rejected message: a copy goes to the dead-letter queue with its reason
/// (the caller reads it back from its own adapter's DLQ), and the original
/// is acked as done.
async fn dead_letter_contract(q: &dyn WorkQueue) {
    let attrs = HashMap::from([("tenant".to_string(), "acme".to_string())]);
    q.send(QueueName::Audit, "three".into(), attrs).await.unwrap();
    let mut got = Vec::new();
    for _ in 0..20 {
        got.extend(q.receive(QueueName::Audit, 10).await.unwrap());
        if !got.is_empty() {
            break;
        }
    }
    let m = got.pop().expect("the message arrives");
    q.dead_letter(QueueName::Audit, &m, "a bad key").await.unwrap();
    q.ack(QueueName::Audit, &m.receipt).await.unwrap();
    assert!(q.receive(QueueName::Audit, 10).await.unwrap().is_empty(), "the original is gone");
}

/// The DLQ replay moves every dead letter back, attributes kept, and leaves the DLQ empty.
async fn redrive_contract(queue: &SqsQueue, sqs: &aws_sdk_sqs::Client, dlq: &str, to: &str) {
    for i in 0..13 {
        let tenant = aws_sdk_sqs::types::MessageAttributeValue::builder().data_type("String").string_value("acme").build().unwrap();
        sqs.send_message().queue_url(dlq).message_body(format!("m{i}")).message_attributes("tenant", tenant).send().await.unwrap();
    }
    assert_eq!(queue.redrive(dlq, to).await.unwrap(), 13);
    let mut bodies = Vec::new();
    while bodies.len() < 13 {
        let batch = queue.receive(QueueName::Actions, 10).await.unwrap();
        assert!(!batch.is_empty(), "redriven messages missing after {}", bodies.len());
        for m in batch {
            assert_eq!(m.attributes["tenant"], "acme");
            queue.ack(QueueName::Actions, &m.receipt).await.unwrap();
            bodies.push(m.body);
        }
    }
    bodies.sort();
    assert_eq!(bodies.len(), 13);
    assert_eq!(queue.redrive(dlq, to).await.unwrap(), 0, "the DLQ is empty");
}

/// A Pass-only machine: starting the same name twice is one execution.
async fn saga_contract(s: &dyn Saga) {
    let name = format!("c{}", uuid::Uuid::new_v4().simple());
    let id = s.start(&name, json!({"x": 1})).await.unwrap();
    assert_eq!(s.start(&name, json!({"x": 1})).await.unwrap(), id);
    for _ in 0..100 {
        match s.status(&id).await.unwrap() {
            ExecutionStatus::Running => tokio::time::sleep(Duration::from_millis(50)).await,
            ExecutionStatus::Succeeded(out) => {
                assert_eq!(out, json!({"x": 1, "seen": true}));
                return;
            }
            other => panic!("saga failed: {other:?}"),
        }
    }
    panic!("saga never finished");
}

const PASS_MACHINE: &str = r#"{"StartAt": "Mark", "States": {"Mark": {"Type": "Pass", "Result": true, "ResultPath": "$.seen", "End": true}}}"#;

#[tokio::test]
async fn embedded_adapters_meet_the_contract() {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(&dir.path().join("t.sqlite3")).unwrap();
    let table = std::sync::Arc::new(SqliteTable::new(db.clone()));
    table_contract(table.as_ref()).await;
    concurrent_increments(table).await;
    blob_contract(&DirBlobs::new(dir.path().join("blobs"))).await;
    let queue = SqliteQueue::new(db.clone(), Duration::from_secs(30), 3);
    queue_contract(&queue).await;
    dead_letter_contract(&queue).await;
    assert_eq!(queue.rejections(QueueName::Audit).unwrap(), [("three".to_string(), "a bad key".to_string())]);
    let saga = keel_emulator::asl::LocalSaga::new(db, serde_json::from_str(PASS_MACHINE).unwrap(), 0.0);
    saga_contract(&saga).await;
}

#[tokio::test]
async fn aws_adapters_meet_the_contract_against_moto() {
    let Some(endpoint) = moto() else { return };
    let sdk = sdk_config(&endpoint).await;
    let suffix = uuid::Uuid::new_v4().simple().to_string();

    let ddb = aws_sdk_dynamodb::Client::new(&sdk);
    let table_name = format!("keel-{suffix}");
    create_table(&sdk, &table_name).await;
    let table = std::sync::Arc::new(DynamoTable::new(ddb, table_name));
    table_contract(table.as_ref()).await;
    concurrent_increments(table).await;

    let s3 = keel_aws::s3_client(&sdk);
    let bucket = format!("keel-{suffix}");
    s3.create_bucket().bucket(&bucket).send().await.unwrap();
    blob_contract(&S3Blobs::new(s3, bucket)).await;

    let sqs = aws_sdk_sqs::Client::new(&sdk);
    let mut urls = HashMap::new();
    for q in QueueName::ALL {
        let out = sqs.create_queue().queue_name(format!("keel-{}-{suffix}", q.as_str())).send().await.unwrap();
        urls.insert(q, out.queue_url().unwrap().to_string());
    }
    let dlq = sqs.create_queue().queue_name(format!("keel-dlq-{suffix}")).send().await.unwrap().queue_url().unwrap().to_string();
    let audit_dlq = sqs.create_queue().queue_name(format!("keel-audit-dlq-{suffix}")).send().await.unwrap().queue_url().unwrap().to_string();
    let queue = SqsQueue::new(sqs.clone(), urls.clone(), HashMap::from([(QueueName::Audit, audit_dlq.clone())]));
    queue_contract(&queue).await;
    dead_letter_contract(&queue).await;
    let dead = sqs.receive_message().queue_url(&audit_dlq).message_attribute_names("All").send().await.unwrap();
    let dead = &dead.messages()[0];
    let attribute = |name: &str| dead.message_attributes().and_then(|a| a.get(name)).and_then(|v| v.string_value()).map(str::to_string);
    assert_eq!((dead.body(), attribute("keel_rejected"), attribute("tenant")), (Some("three"), Some("a bad key".into()), Some("acme".into())));
    redrive_contract(&queue, &sqs, &dlq, &urls[&QueueName::Actions]).await;

    let sfn = aws_sdk_sfn::Client::new(&sdk);
    let machine = sfn
        .create_state_machine()
        .name(format!("keel-{suffix}"))
        .definition(PASS_MACHINE)
        .role_arn("arn:aws:iam::123456789012:role/keel-saga")
        .send()
        .await
        .unwrap();
    saga_contract(&StepFunctionsSaga::new(sfn.clone(), machine.state_machine_arn())).await;
    action_saga_in_moto(&endpoint, &sfn, &suffix).await;
}

/// The per-tenant path as AWS runs it: every call on a tenant's partition or
/// prefix goes through a session of the tenant-access role named for the
/// tenant (moto's STS issues it; moto does not evaluate the role's policy,
/// which `least_privilege.rs` checks).
#[tokio::test]
async fn tenant_sessions_meet_the_contract_against_moto() {
    let Some(endpoint) = moto() else { return };
    let sdk = sdk_config(&endpoint).await;
    let suffix = uuid::Uuid::new_v4().simple().to_string();
    let role = "arn:aws:iam::123456789012:role/keel-tenant-access";
    let sessions = std::sync::Arc::new(keel_aws::TenantSessions::new(sdk.clone(), Some(role.into())));

    let acme = keel_core::ids::TenantId::parse("acme").unwrap();
    let scoped = sessions.config_for(&acme).await;
    let who = aws_sdk_sts::Client::new(&scoped).get_caller_identity().send().await.unwrap();
    assert_eq!(who.arn(), Some("arn:aws:sts::123456789012:assumed-role/keel-tenant-access/acme"));

    let table_name = format!("keel-scoped-{suffix}");
    create_table(&sdk, &table_name).await;
    let table = std::sync::Arc::new(DynamoTable::with_sessions(sessions.clone(), table_name));
    table_contract(table.as_ref()).await;
    concurrent_increments(table).await;

    // Versioned, as template.yaml's bucket: a purge removes old versions and delete markers too.
    let bucket = format!("keel-scoped-{suffix}");
    let s3 = keel_aws::s3_client(&sdk);
    create_versioned_bucket(&sdk, &bucket).await;
    blob_contract(&S3Blobs::with_sessions(sessions, bucket.clone())).await;
    let left = s3.list_object_versions().bucket(&bucket).send().await.unwrap();
    assert!(left.versions().is_empty() && left.delete_markers().is_empty(), "versions left after purges: {left:?}");
}

#[tokio::test]
async fn secrets_are_read_from_secrets_manager_against_moto() {
    let Some(endpoint) = moto() else { return };
    let sdk = sdk_config(&endpoint).await;
    let client = aws_sdk_secretsmanager::Client::new(&sdk);
    let name = format!("keel-admin-{}", uuid::Uuid::new_v4().simple());
    let arn = client.create_secret().name(&name).secret_string("0123456789abcdef-admin").send().await.unwrap().arn().unwrap().to_string();
    let lookup = |k: &str| (k == "KEEL_ADMIN_KEY_SECRET_ARN").then(|| arn.clone());
    let secrets = keel_aws::read_secrets(&client, lookup).await.unwrap();
    assert_eq!(secrets.get("KEEL_ADMIN_KEY").map(String::as_str), Some("0123456789abcdef-admin"));
    assert!(!secrets.contains_key("KEEL_JWT_SECRET"), "no ARN, no secret");
    let missing = |k: &str| (k == "KEEL_JWT_SECRET_ARN").then(|| "arn:aws:secretsmanager:us-east-1:123456789012:secret:nope".to_string());
    let error = keel_aws::read_secrets(&client, missing).await.unwrap_err().to_string();
    assert!(error.contains("KEEL_JWT_SECRET_ARN"), "{error}");
}

/// S3 answers a read of a missing object with 403 to a principal that may
/// not list the whole bucket, as a tenant session may not: the adapter asks
/// the listing of the key itself before calling the read denied. (moto does
/// not evaluate IAM, so a stub answers as S3 does.)
#[tokio::test]
async fn a_denied_read_is_a_missing_object_when_the_listing_shows_none_and_an_error_otherwise() {
    const STORED: &str = "tenants/acme/documents/kept.json";
    let app = axum::Router::new().fallback(|req: axum::extract::Request| async move {
        let url = reqwest::Url::parse(&format!("http://stub{}", req.uri())).unwrap();
        let prefix = url.query_pairs().find(|(k, _)| k == "prefix").map(|(_, v)| v.to_string());
        let xml = |status: u16, body: String| {
            axum::response::Response::builder().status(status).header("content-type", "application/xml").body(axum::body::Body::from(body)).unwrap()
        };
        match prefix {
            Some(prefix) => {
                let contents = if STORED.starts_with(&prefix) { format!("<Contents><Key>{STORED}</Key><Size>1</Size></Contents>") } else { String::new() };
                let count = usize::from(!contents.is_empty());
                xml(200, format!("<?xml version=\"1.0\" encoding=\"UTF-8\"?><ListBucketResult xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\"><Name>bucket</Name><Prefix>{prefix}</Prefix><KeyCount>{count}</KeyCount><MaxKeys>1</MaxKeys><IsTruncated>false</IsTruncated>{contents}</ListBucketResult>"))
            }
            None => xml(403, "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>AccessDenied</Code><Message>Access Denied</Message><RequestId>r1</RequestId></Error>".into()),
        }
    });
    let addr = keel_tests::serve_on_loopback(app).await;
    let sdk = sdk_config(&format!("http://{addr}")).await;
    let blobs = S3Blobs::new(keel_aws::s3_client(&sdk), "bucket");
    assert_eq!(blobs.get("tenants/acme/documents/missing.json").await.unwrap(), None);
    let denied = blobs.get(STORED).await.unwrap_err().to_string();
    assert!(denied.contains("AccessDenied"), "{denied}");
}

/// The operators' topic: a published alert reaches a queue subscribed to it.
#[tokio::test]
async fn the_sns_notifier_publishes_to_the_topic_against_moto() {
    use keel_core::ports::Notifier;
    let Some(endpoint) = moto() else { return };
    let sdk = sdk_config(&endpoint).await;
    let suffix = uuid::Uuid::new_v4().simple().to_string();
    let sns = aws_sdk_sns::Client::new(&sdk);
    let topic = sns.create_topic().name(format!("keel-alarms-{suffix}")).send().await.unwrap().topic_arn().unwrap().to_string();
    let sqs = aws_sdk_sqs::Client::new(&sdk);
    let queue = sqs.create_queue().queue_name(format!("keel-ops-{suffix}")).send().await.unwrap().queue_url().unwrap().to_string();
    let queue_arn = format!("arn:aws:sqs:us-east-1:123456789012:keel-ops-{suffix}");
    sns.subscribe().topic_arn(&topic).protocol("sqs").endpoint(&queue_arn).send().await.unwrap();

    let notifier = keel_aws::SnsNotifier::new(sns, &topic);
    let subject = format!("Keel budget alert: {}", "x".repeat(200));
    let attributes = HashMap::from([("tenant".to_string(), "acme".to_string())]);
    notifier.notify(&subject, r#"{"type":"budget.alert","tenant":"acme"}"#, attributes).await.unwrap();
    let got = sqs.receive_message().queue_url(&queue).wait_time_seconds(1).send().await.unwrap();
    let envelope: Value = serde_json::from_str(got.messages()[0].body().unwrap()).unwrap();
    assert_eq!(envelope["Message"], r#"{"type":"budget.alert","tenant":"acme"}"#);
    assert_eq!(envelope["Subject"].as_str().map(str::len), Some(100), "a subject is cut to SNS's limit");
    assert_eq!(envelope["MessageAttributes"]["tenant"]["Value"], "acme");
}

/// Calls a moto API that the test has no SDK client for (IAM, Lambda, moto's own).
async fn moto_call(endpoint: &str, service: &str, method: reqwest::Method, path: &str, content_type: &str, body: String) -> Value {
    let auth = format!("AWS4-HMAC-SHA256 Credential=testing/20260101/us-east-1/{service}/aws4_request, SignedHeaders=host, Signature=0");
    let response = reqwest::Client::new()
        .request(method, format!("{endpoint}{path}"))
        .header("Authorization", auth)
        .header("Content-Type", content_type)
        .body(body)
        .send()
        .await
        .unwrap();
    let status = response.status();
    let text = response.text().await.unwrap();
    assert!(status.is_success(), "{service} {path}: {status} {text}");
    serde_json::from_str(&text).unwrap_or(Value::String(text))
}

/// The saga's real ASL (`infra/statemachines/action.asl.json`) executed by
/// moto, through our Step Functions adapter: the approval wait on a task
/// token (approved, rejected, timed out) and the step loop. moto's Lambda
/// does not run code: it answers from a queue of canned results, one per
/// invocation, which play the tools function's answers.
async fn action_saga_in_moto(endpoint: &str, sfn: &aws_sdk_sfn::Client, suffix: &str) {
    let role = format!("keel-tools-{suffix}");
    let form = format!("Action=CreateRole&Version=2010-05-08&RoleName={role}&AssumeRolePolicyDocument=%7B%7D");
    moto_call(endpoint, "iam", reqwest::Method::POST, "/", "application/x-www-form-urlencoded", form).await;
    let role_arn = format!("arn:aws:iam::123456789012:role/{role}");
    // The smallest valid zip (an empty archive): moto keeps the code, never runs it.
    let empty_zip = "UEsFBgAAAAAAAAAAAAAAAAAAAAAAAA==";
    let function = json!({"FunctionName": role, "Runtime": "provided.al2023", "Role": role_arn, "Handler": "bootstrap",
        "Code": {"ZipFile": empty_zip}});
    let created = moto_call(endpoint, "lambda", reqwest::Method::POST, "/2015-03-31/functions", "application/json", function.to_string()).await;
    let definition = include_str!("../../infra/statemachines/action.asl.json")
        .replace("${ToolsFunctionArn}", created["FunctionArn"].as_str().unwrap());
    let machine = sfn.create_state_machine().name(format!("keel-action-{suffix}")).definition(definition).role_arn(&role_arn).send().await.unwrap();
    let saga = StepFunctionsSaga::new(sfn.clone(), machine.state_machine_arn());

    let canned = |results: &[&str]| {
        let body = json!({"results": results}).to_string();
        moto_call(endpoint, "lambda", reqwest::Method::POST, "/moto-api/static/lambda-simple/response", "application/json", body)
    };
    let input = |operation: &str, timeout: u64| {
        json!({"tenant": "acme", "action_id": "act_1", "operation": operation, "approval": timeout > 0, "approval_timeout_seconds": timeout})
    };
    // The task token the saga handed to the tools function, from the execution's history.
    let token_of = |execution: String| {
        let sfn = sfn.clone();
        async move {
            for _ in 0..100 {
                let history = sfn.get_execution_history().execution_arn(&execution).send().await.unwrap();
                let scheduled = history.events().iter().filter_map(|e| e.task_scheduled_event_details()).next();
                if let Some(d) = scheduled {
                    let params: Value = serde_json::from_str(d.parameters()).unwrap();
                    return params["Payload"]["task_token"].as_str().unwrap().to_string();
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            panic!("the saga never scheduled its approval task");
        }
    };
    let finish = |execution: String| {
        let saga = saga.clone();
        async move {
            for _ in 0..150 {
                match saga.status(&execution).await.unwrap() {
                    ExecutionStatus::Running => tokio::time::sleep(Duration::from_millis(100)).await,
                    other => return other,
                }
            }
            panic!("the saga never finished");
        }
    };

    // Approved: the wait ends with the approval, then the steps run until one answers done.
    canned(&[r#"{"waiting": true}"#, r#"{"done": false}"#, r#"{"done": true}"#]).await;
    let execution = saga.start("approved", input("execute", 30)).await.unwrap();
    saga.send_task_success(&token_of(execution.clone()).await, json!({"approved_by": "bob"})).await.unwrap();
    let ExecutionStatus::Succeeded(out) = finish(execution).await else { panic!("approved saga failed") };
    assert_eq!((out["approved"]["approved_by"].as_str(), out["progress"]["Payload"]["done"].as_bool()), (Some("bob"), Some(true)), "{out}");

    // Rejected: the wait fails with Keel.Rejected and the saga closes without running a step.
    canned(&[r#"{"waiting": true}"#]).await;
    let execution = saga.start("rejected", input("execute", 30)).await.unwrap();
    saga.send_task_failure(&token_of(execution.clone()).await, "Keel.Rejected", "rejected by bob").await.unwrap();
    let ExecutionStatus::Succeeded(out) = finish(execution).await else { panic!("rejected saga failed") };
    assert_eq!(out["error"]["Error"], "Keel.Rejected");
    assert!(out.get("progress").is_none(), "no step ran: {out}");

    // Nobody decides: States.Timeout, then the expire step.
    canned(&[r#"{"waiting": true}"#, r#"{"expired": true}"#]).await;
    let ExecutionStatus::Succeeded(out) = finish(saga.start("expired", input("execute", 1)).await.unwrap()).await else {
        panic!("expired saga failed")
    };
    assert_eq!((out["error"]["Error"].as_str(), out["expiry"]["Payload"]["expired"].as_bool()), (Some("States.Timeout"), Some(true)), "{out}");

    // A token nobody waits on any more is refused as a lost race, not a backend failure.
    assert!(matches!(saga.send_task_success("no-such-token", json!({})).await, Err(StoreError::ConditionFailed)));
}
