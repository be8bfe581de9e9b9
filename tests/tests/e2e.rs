// Test-only code: helpers outside #[test] functions may unwrap and panic too.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

//! Whole flows against the local stack over loopback HTTP.

use keel_core::ports::{QueueName, Table, WorkQueue};
use keel_tests::{config, start_stack, tenant, Client, ADMIN_KEY};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::time::Duration;

fn refund_tool(connector: &str) -> Value {
    json!({"description": "refund", "risk": "high",
        "input_schema": {"type": "object", "required": ["order_id", "amount"], "additionalProperties": false,
            "properties": {"order_id": {"type": "string"}, "amount": {"type": "number", "maximum": 1000}}},
        "connector": {"url": format!("{connector}/refunds")}, "compensation": {"url": format!("{connector}/refunds/cancel")}})
}

#[tokio::test]
async fn demo_walks_to_the_end() {
    let dir = tempfile::tempdir().unwrap();
    let stack = start_stack(dir.path(), config(&[])).await;
    let client = Client::new(stack.url());
    let keys = keel_emulator::demo::run(&client, ADMIN_KEY, || stack.settle(Duration::from_secs(10))).await.unwrap();
    // It leaves a refund in the approver's inbox, for the console it points to.
    let (s, inbox) = client.call("GET", "/v1/actions?status=pending_approval", &keys.approver, None).await.unwrap();
    assert_eq!(s, 200);
    assert_eq!(inbox["actions"].as_array().unwrap().len(), 1, "{inbox}");
    stack.stop().await;
}

#[tokio::test]
async fn tenant_a_cannot_reach_tenant_b_through_any_route() {
    let dir = tempfile::tempdir().unwrap();
    let stack = start_stack(dir.path(), config(&[])).await;
    let c = Client::new(stack.url());
    let a = tenant(&c, "tenant-a", json!({})).await;
    let b = tenant(&c, "tenant-b", json!({})).await;
    let connector = keel_emulator::demo::start_connector().await.unwrap();

    // B's secrets live in B's documents, tools and actions.
    let (s, _) = c.call("PUT", "/v1/documents/secret", &b.member, Some(json!({"text": "Project zephyr launches in March."}))).await.unwrap();
    assert_eq!(s, 200);
    let (s, _) = c.call("PUT", "/v1/tools/refund", &b.admin, Some(refund_tool(&connector.url))).await.unwrap();
    assert_eq!(s, 200);
    let (s, act) = c
        .call("POST", "/v1/actions", &b.member, Some(json!({"tool": "refund", "args": {"order_id": "1", "amount": 1}, "idempotency_key": "k1"})))
        .await
        .unwrap();
    assert_eq!(s, 201, "{act}");
    let b_action = act["action_id"].as_str().unwrap().to_string();
    let (_, ask) = c.call("POST", "/v1/ask", &b.member, Some(json!({"question": "When does project zephyr launch?"}))).await.unwrap();
    let b_decision = ask["decision_id"].as_str().unwrap().to_string();
    assert!(stack.settle(Duration::from_secs(10)).await);

    // A, with every role it has, sees none of it.
    for key in [&a.member, &a.approver, &a.admin] {
        let (s, r) = c.call("POST", "/v1/search", key, Some(json!({"query": "project zephyr launches"}))).await.unwrap();
        assert_eq!((s, r["results"].as_array().map(Vec::len)), (200, Some(0)), "{r}");
        assert_eq!(c.call("GET", "/v1/documents/secret", key, None).await.unwrap().0, 404);
        assert_eq!(c.call("DELETE", "/v1/documents/secret", key, None).await.unwrap().0, 404);
        assert_eq!(c.call("GET", "/v1/tools/refund", key, None).await.unwrap().0, 404);
        assert_eq!(c.call("GET", &format!("/v1/actions/{b_action}"), key, None).await.unwrap().0, 404);
        for verb in ["approve", "reject", "undo"] {
            assert_eq!(c.call("POST", &format!("/v1/actions/{b_action}/{verb}"), key, None).await.unwrap().0, 404);
        }
        assert_eq!(c.call("GET", &format!("/v1/decisions/{b_decision}"), key, None).await.unwrap().0, 404);
        let (_, ask) = c.call("POST", "/v1/ask", key, Some(json!({"question": "When does project zephyr launch?"}))).await.unwrap();
        assert_eq!(ask["refused"], true, "{ask}");
    }
    // Proposing with B's tool name uses A's registry (where it does not exist).
    let (s, _) = c
        .call("POST", "/v1/actions", &a.member, Some(json!({"tool": "refund", "args": {"order_id": "1", "amount": 1}, "idempotency_key": "k1"})))
        .await
        .unwrap();
    assert_eq!(s, 404);
    // Writing the same ids in A changes nothing in B.
    let (s, _) = c.call("PUT", "/v1/documents/secret", &a.member, Some(json!({"text": "nothing here"}))).await.unwrap();
    assert_eq!(s, 200);
    let (_, r) = c.call("POST", "/v1/search", &b.member, Some(json!({"query": "zephyr"}))).await.unwrap();
    assert_eq!(r["results"][0]["text"], "Project zephyr launches in March.");
    // A's audit export holds none of B's events.
    let (_, export) = c.call("GET", "/v1/audit/export", &a.admin, None).await.unwrap();
    assert!(!export.as_str().unwrap().contains(&b_decision) && !export.as_str().unwrap().contains(&b_action));
    // A's admin cannot mint keys for B, nor change tenants; a key with B's name pasted in is refused.
    let (s, _) = c.call("POST", "/v1/tenants/tenant-b/keys", &a.admin, Some(json!({"principal": "x", "roles": ["admin"]}))).await.unwrap();
    assert_eq!(s, 403);
    assert_eq!(c.call("PATCH", "/v1/tenants/tenant-b", &a.admin, Some(json!({"status": "suspended"}))).await.unwrap().0, 403);
    let forged = a.member.replacen("tenant-a", "tenant-b", 1);
    assert_eq!(c.call("POST", "/v1/search", &forged, Some(json!({"query": "zephyr"}))).await.unwrap().0, 401);
    stack.stop().await;
}

#[tokio::test]
async fn bad_input_gets_a_clear_error_and_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let stack = start_stack(dir.path(), config(&[])).await;
    let c = Client::new(stack.url());
    let t = tenant(&c, "acme", json!({})).await;
    let http = reqwest::Client::new();
    let url = stack.url();

    // Malformed JSON: 400 with the error envelope and a request id.
    let r = http.post(format!("{url}/v1/search")).bearer_auth(&t.member).body("{not json").send().await.unwrap();
    assert_eq!(r.status(), 400);
    let rid = r.headers().get("x-request-id").unwrap().to_str().unwrap().to_string();
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "bad_request");
    assert_eq!(body["error"]["request_id"], rid.as_str());
    // Missing and forged credentials.
    assert_eq!(http.post(format!("{url}/v1/search")).send().await.unwrap().status(), 401);
    assert_eq!(c.call("POST", "/v1/search", "keel_acme_AAAAAAAAAAAAAAAAAAAAAAAA", Some(json!({"query": "x"}))).await.unwrap().0, 401);
    assert_eq!(c.call("POST", "/v1/search", "a.b.c", Some(json!({"query": "x"}))).await.unwrap().0, 401);
    // The platform admin key is not a tenant key; a member is not a platform admin.
    assert_eq!(c.call("POST", "/v1/search", ADMIN_KEY, Some(json!({"query": "x"}))).await.unwrap().0, 403);
    assert_eq!(c.call("POST", "/v1/tenants", &t.admin, Some(json!({"id": "evil", "name": "x"}))).await.unwrap().0, 403);
    // Oversized document: 413, and the earlier version survives.
    let (s, _) = c.call("PUT", "/v1/documents/d1", &t.member, Some(json!({"text": "Original text about llamas."}))).await.unwrap();
    assert_eq!(s, 200);
    let huge = "x ".repeat(600 * 1024);
    let (s, r) = c.call("PUT", "/v1/documents/d1", &t.member, Some(json!({"text": huge}))).await.unwrap();
    assert_eq!(s, 413, "{r}");
    let (_, r) = c.call("POST", "/v1/search", &t.member, Some(json!({"query": "llamas"}))).await.unwrap();
    assert_eq!(r["results"][0]["text"], "Original text about llamas.");
    // Ids that could smuggle key separators are refused.
    assert_eq!(c.call("PUT", "/v1/documents/a%23b", &t.member, Some(json!({"text": "x"}))).await.unwrap().0, 400);
    // Tools: only admins register; schema-invalid args are 422 with the path; key reuse with other args is 409.
    let connector = keel_emulator::demo::start_connector().await.unwrap();
    assert_eq!(c.call("PUT", "/v1/tools/refund", &t.member, Some(refund_tool(&connector.url))).await.unwrap().0, 403);
    assert_eq!(c.call("PUT", "/v1/tools/refund", &t.admin, Some(refund_tool(&connector.url))).await.unwrap().0, 200);
    let propose = |args: Value, key: &str| json!({"tool": "refund", "args": args, "idempotency_key": key});
    let (s, r) = c.call("POST", "/v1/actions", &t.member, Some(propose(json!({"order_id": "1", "amount": "ten"}), "k0"))).await.unwrap();
    assert_eq!((s, r["error"]["path"].as_str()), (422, Some("/amount")), "{r}");
    let (s, first) = c.call("POST", "/v1/actions", &t.member, Some(propose(json!({"order_id": "1", "amount": 10}), "k1"))).await.unwrap();
    assert_eq!(s, 201);
    let (s, again) = c.call("POST", "/v1/actions", &t.member, Some(propose(json!({"order_id": "1", "amount": 10}), "k1"))).await.unwrap();
    assert_eq!((s, &again["action_id"]), (200, &first["action_id"]));
    let (s, r) = c.call("POST", "/v1/actions", &t.member, Some(propose(json!({"order_id": "1", "amount": 11}), "k1"))).await.unwrap();
    assert_eq!(s, 409, "{r}");
    // Unknown routes are 404 in the envelope.
    let (s, r) = c.call("GET", "/v1/nothing", &t.member, None).await.unwrap();
    assert_eq!((s, r["error"]["code"].as_str()), (404, Some("not_found")));
    stack.stop().await;
}

#[tokio::test]
async fn kill_switch_drops_actions_to_suggest_only_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let stack = start_stack(dir.path(), config(&[])).await;
    let c = Client::new(stack.url());
    let t = tenant(&c, "halt", json!({})).await;
    let connector = keel_emulator::demo::start_connector().await.unwrap();
    assert_eq!(c.call("PUT", "/v1/tools/refund", &t.admin, Some(refund_tool(&connector.url))).await.unwrap().0, 200);
    let propose = |key: &str| json!({"tool": "refund", "args": {"order_id": "1", "amount": 10}, "idempotency_key": key});
    // A high-risk refund waits for an approver.
    let (s, pending) = c.call("POST", "/v1/actions", &t.member, Some(propose("k1"))).await.unwrap();
    assert_eq!((s, pending["status"].as_str()), (201, Some("pending_approval")), "{pending}");
    let pending_id = pending["action_id"].as_str().unwrap();

    // The kill switch: what is pending can no longer be approved to run, and new proposals are suggestions only.
    let (s, r) = c.call("PATCH", "/v1/tenants/halt", ADMIN_KEY, Some(json!({"kill_switch": true}))).await.unwrap();
    assert_eq!(s, 200, "{r}");
    let (s, r) = c.call("POST", &format!("/v1/actions/{pending_id}/approve"), &t.approver, None).await.unwrap();
    assert_eq!(s, 409, "{r}");
    let (s, suggested) = c.call("POST", "/v1/actions", &t.member, Some(propose("k2"))).await.unwrap();
    assert_eq!((s, suggested["status"].as_str()), (201, Some("suggested")), "{suggested}");
    assert!(suggested["preview"].is_object(), "a suggestion still shows what it would change: {suggested}");
    let suggested_id = suggested["action_id"].as_str().unwrap();
    assert_eq!(c.call("POST", &format!("/v1/actions/{suggested_id}/approve"), &t.approver, None).await.unwrap().0, 409);
    // Rejecting still works, and nothing reached the connector.
    let (s, r) = c.call("POST", &format!("/v1/actions/{pending_id}/reject"), &t.approver, None).await.unwrap();
    assert_eq!((s, r["status"].as_str()), (200, Some("rejected")), "{r}");
    assert!(connector.calls.lock().unwrap().is_empty());
    stack.stop().await;
}

#[tokio::test]
async fn a_poison_message_goes_dead_and_the_rest_of_the_batch_is_processed() {
    let dir = tempfile::tempdir().unwrap();
    let stack = start_stack(dir.path(), config(&[])).await;
    let c = Client::new(stack.url());
    let t = tenant(&c, "acme", json!({})).await;
    let signed = |key: &str| HashMap::from([("authorization".to_string(), format!("Bearer {key}"))]);
    let good = json!({"op": "put", "doc_id": "queued", "document": {"text": "Quokkas live on Rottnest island."}});
    stack.queue.send(QueueName::Ingest, "{poison".into(), signed(&t.member)).await.unwrap();
    stack.queue.send(QueueName::Ingest, good.to_string(), signed(&t.member)).await.unwrap();
    assert!(stack.settle(Duration::from_secs(10)).await, "queue never drained");
    assert_eq!(stack.queue.dead_letters(QueueName::Ingest).unwrap().len(), 1);
    assert_eq!(stack.queue.rejections(QueueName::Ingest).unwrap().len(), 0, "a poison message is retried, then dead");
    let (_, r) = c.call("POST", "/v1/search", &t.member, Some(json!({"query": "quokkas"}))).await.unwrap();
    assert_eq!(r["results"][0]["doc_id"], "queued");
    stack.stop().await;
}

#[tokio::test]
async fn a_producer_without_a_valid_key_of_the_tenant_is_dead_lettered_at_once_with_its_reason() {
    let dir = tempfile::tempdir().unwrap();
    let stack = start_stack(dir.path(), config(&[])).await;
    let c = Client::new(stack.url());
    let acme = tenant(&c, "acme", json!({})).await;
    let beta = tenant(&c, "beta", json!({})).await;
    let (s, _) = c.call("PUT", "/v1/documents/ledger", &acme.admin,
        Some(json!({"text": "The finance ledger.", "acl": {"groups": ["finance"]}}))).await.unwrap();
    assert_eq!(s, 200);
    let put = |doc: &str| json!({"op": "put", "doc_id": doc, "document": {"text": "Wombats dig burrows."}}).to_string();
    let with = |pairs: &[(&str, &str)]| pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect::<HashMap<_, _>>();
    let attempts = [
        (put("a"), with(&[("tenant", "acme")]), "without an 'authorization' attribute"),
        (put("b"), with(&[("authorization", &acme.member)]), "must be 'Bearer <tenant key>'"),
        (put("c"), with(&[("authorization", "Bearer keel_acme_forgedforgedforgedforged")]), "invalid credentials"),
        (put("d"), with(&[("authorization", &format!("Bearer {}", beta.member)), ("tenant", "acme")]), "its key is beta's"),
        (put("e"), with(&[("authorization", &format!("Bearer {ADMIN_KEY}"))]), "invalid credentials"),
        (json!({"op": "delete", "doc_id": "ledger"}).to_string(), with(&[("authorization", &format!("Bearer {}", acme.member))]), "may not write document \"ledger\""),
    ];
    for (body, attributes, _) in &attempts {
        stack.queue.send(QueueName::Ingest, body.clone(), attributes.clone()).await.unwrap();
    }
    assert!(stack.settle(Duration::from_secs(10)).await, "queue never drained");
    let rejected = stack.queue.rejections(QueueName::Ingest).unwrap();
    assert_eq!(rejected.len(), attempts.len(), "{rejected:?}");
    for ((body, _, reason), (dead_body, dead_reason)) in attempts.iter().zip(&rejected) {
        assert_eq!(body, dead_body);
        assert!(dead_reason.contains(reason), "{dead_reason:?} should say {reason:?}");
    }
    let (_, finance) = c.call("POST", "/v1/tenants/acme/keys", &acme.admin,
        Some(json!({"principal": "fay", "roles": ["member"], "attributes": {"groups": ["finance"]}}))).await.unwrap();
    let (s, _) = c.call("GET", "/v1/documents/ledger", finance["key"].as_str().unwrap(), None).await.unwrap();
    assert_eq!(s, 200, "the ledger is still there");
    for doc in ["a", "b", "c", "d", "e"] {
        for key in [&acme.admin, &beta.admin] {
            assert_eq!(c.call("GET", &format!("/v1/documents/{doc}"), key, None).await.unwrap().0, 404, "{doc} was not written");
        }
    }
    stack.stop().await;
}

#[tokio::test]
async fn replayed_audit_events_are_appended_once_and_tampering_is_detected() {
    let dir = tempfile::tempdir().unwrap();
    let stack = start_stack(dir.path(), config(&[])).await;
    let c = Client::new(stack.url());
    let t = tenant(&c, "acme", json!({})).await;
    assert!(stack.settle(Duration::from_secs(10)).await);
    // The tenant's creation and its keys are in the chain already.
    let (_, v) = c.call("POST", "/v1/audit/verify", &t.admin, None).await.unwrap();
    let set_up = v["entries"].as_u64().unwrap();
    let (_, ask) = c.call("POST", "/v1/ask", &t.member, Some(json!({"question": "anything at all?"}))).await.unwrap();
    assert!(stack.settle(Duration::from_secs(10)).await);
    let (_, d) = c.call("GET", &format!("/v1/decisions/{}", ask["decision_id"].as_str().unwrap()), &t.member, None).await.unwrap();
    let event = d["events"][0]["event"].clone();
    let attrs = HashMap::from([("tenant".to_string(), "acme".to_string())]);
    for _ in 0..3 {
        stack.queue.send(QueueName::Audit, event.to_string(), attrs.clone()).await.unwrap();
    }
    assert!(stack.settle(Duration::from_secs(10)).await);
    let (_, v) = c.call("POST", "/v1/audit/verify", &t.admin, None).await.unwrap();
    assert_eq!((v["ok"].as_bool(), v["entries"].as_u64()), (Some(true), Some(set_up + 1)), "{v}");
    // Rewrite the ask's stored entry behind Keel's back.
    let mut item = stack.table.get("T#acme", &format!("AUDIT#{:012}", set_up + 1)).await.unwrap().unwrap();
    item.data["event"]["input"]["question"] = json!("something else");
    stack
        .table
        .put(keel_core::ports::Write { pk: item.pk, sk: item.sk, data: item.data, expires_at: None, condition: keel_core::ports::Condition::Always })
        .await
        .unwrap();
    let (_, v) = c.call("POST", "/v1/audit/verify", &t.admin, None).await.unwrap();
    assert_eq!(v["ok"], false, "{v}");
    stack.stop().await;
}

#[tokio::test]
async fn rate_limit_suspension_and_jwt() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(&[("KEEL_JWT_SECRET", "jwt-secret"), ("KEEL_JWT_ISSUER", "https://idp.test")]);
    let stack = start_stack(dir.path(), cfg).await;
    let c = Client::new(stack.url());
    let t = tenant(&c, "acme", json!({"rate_limit_per_minute": 3})).await;
    keel_tests::inside_one_minute(Duration::from_secs(15)).await;
    let mut statuses = Vec::new();
    for _ in 0..5 {
        statuses.push(c.call("POST", "/v1/search", &t.member, Some(json!({"query": "x"}))).await.unwrap().0);
    }
    // The limit counts every request of the tenant in the current minute (key creation included none).
    assert_eq!(statuses.iter().filter(|s| **s == 429).count(), 2, "{statuses:?}");
    let (s, _) = c.call("PATCH", "/v1/tenants/acme", ADMIN_KEY, Some(json!({"rate_limit_per_minute": 1000}))).await.unwrap();
    assert_eq!(s, 200);
    let claims = |exp: i64| keel_core::jwt::JwtClaims {
        sub: "jay".into(), iss: "https://idp.test".into(), aud: json!("keel"), exp, nbf: None,
        tenant: "acme".into(), roles: vec!["member".into()], groups: vec![],
    };
    let now = keel_core::time::now_secs();
    let token = keel_core::jwt::sign_jwt(&claims(now + 60), "jwt-secret").unwrap();
    assert_eq!(c.call("POST", "/v1/search", &token, Some(json!({"query": "x"}))).await.unwrap().0, 200);
    let expired = keel_core::jwt::sign_jwt(&claims(now - 1), "jwt-secret").unwrap();
    assert_eq!(c.call("POST", "/v1/search", &expired, Some(json!({"query": "x"}))).await.unwrap().0, 401);
    let forged = keel_core::jwt::sign_jwt(&claims(now + 60), "not-the-secret").unwrap();
    assert_eq!(c.call("POST", "/v1/search", &forged, Some(json!({"query": "x"}))).await.unwrap().0, 401);
    // A suspended tenant is denied, keys and tokens alike.
    let (s, _) = c.call("PATCH", "/v1/tenants/acme", ADMIN_KEY, Some(json!({"status": "suspended"}))).await.unwrap();
    assert_eq!(s, 200);
    assert_eq!(c.call("POST", "/v1/search", &t.member, Some(json!({"query": "x"}))).await.unwrap().0, 403);
    assert_eq!(c.call("POST", "/v1/search", &token, Some(json!({"query": "x"}))).await.unwrap().0, 403);
    stack.stop().await;
}

#[tokio::test]
async fn acl_filters_before_ranking_and_state_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let stack = start_stack(dir.path(), config(&[])).await;
    let c = Client::new(stack.url());
    let t = tenant(&c, "acme", json!({})).await;
    let (s, k) = c
        .call("POST", "/v1/tenants/acme/keys", ADMIN_KEY, Some(json!({"principal": "fin", "roles": ["member"], "attributes": {"groups": ["finance"]}})))
        .await
        .unwrap();
    assert_eq!(s, 201);
    let finance = k["key"].as_str().unwrap().to_string();
    for i in 0..5 {
        let body = json!({"text": format!("Budget budget budget figures for quarter {i}."), "acl": {"groups": ["finance"]}});
        assert_eq!(c.call("PUT", &format!("/v1/documents/fin{i}"), &t.member, Some(body)).await.unwrap().0, 200);
    }
    assert_eq!(c.call("PUT", "/v1/documents/pub", &t.member, Some(json!({"text": "The budget is public in summary."}))).await.unwrap().0, 200);
    // ann (staff) gets the one public hit at k=1 even though five better-scoring chunks are hidden.
    let (_, r) = c.call("POST", "/v1/search", &t.member, Some(json!({"query": "budget", "k": 1}))).await.unwrap();
    assert_eq!(r["results"][0]["doc_id"], "pub", "{r}");
    let (_, r) = c.call("POST", "/v1/search", &finance, Some(json!({"query": "budget", "k": 10}))).await.unwrap();
    assert_eq!(r["results"].as_array().unwrap().len(), 6);
    assert_eq!(c.call("GET", "/v1/documents/fin0", &t.member, None).await.unwrap().0, 404);
    // Re-putting a shorter document drops its old chunks; delete removes it.
    assert_eq!(c.call("DELETE", "/v1/documents/fin4", &finance, None).await.unwrap().0, 200);
    stack.stop().await;

    let stack = start_stack(dir.path(), config(&[])).await;
    let c = Client::new(stack.url());
    let (_, r) = c.call("POST", "/v1/search", &finance, Some(json!({"query": "budget", "k": 10}))).await.unwrap();
    assert_eq!(r["results"].as_array().unwrap().len(), 5, "{r}");
    stack.stop().await;
}

#[tokio::test]
async fn an_audit_batch_is_chained_per_tenant_and_each_event_counted_once() {
    use keel_core::chain::{verify_chain, ChainEntry};
    use keel_core::ports::{QueryOptions, QueueMessage};
    let dir = tempfile::tempdir().unwrap();
    let db = keel_emulator::store::Db::open(&dir.path().join("t.sqlite3")).unwrap();
    let table = std::sync::Arc::new(keel_emulator::table::SqliteTable::new(db));
    let blobs = std::sync::Arc::new(keel_emulator::blobs::DirBlobs::new(dir.path().join("blobs")));
    let tenants = std::sync::Arc::new(keel_tests::config(&[]).tenant_store(table.clone()));
    let audit = keel_audit::Audit::new(table.clone(), blobs, tenants);
    let event = |id: &str, cost: i64| {
        json!({"event_id": id, "decision_id": id, "kind": "chat", "principal": "ann", "at": "2026-11-23T00:00:00Z",
            "usage": {"input_tokens": 10, "output_tokens": 2, "cost_micro_usd": cost, "cache": "miss", "attempts": 1}})
        .to_string()
    };
    let message = |n: usize, tenant: &str, body: String| QueueMessage {
        message_id: format!("m{n}"), receipt: n.to_string(), body,
        attributes: HashMap::from([("tenant".to_string(), tenant.to_string())]), receive_count: 1,
    };
    // Two tenants interleaved; acme's group holds a malformed message and a replay of its first event.
    let batch = vec![
        message(0, "acme", event("a1", 100)),
        message(1, "globex", event("b1", 7)),
        message(2, "acme", event("a2", 20)),
        message(3, "acme", "{not json".into()),
        message(4, "acme", event("a1", 100)),
        message(5, "globex", event("b2", 3)),
    ];
    assert_eq!(audit.consume(&batch).await, vec!["m3".to_string()]);
    // Delivered again as a whole (a lost ack): nothing is appended or counted twice.
    assert_eq!(audit.consume(&batch).await, vec!["m3".to_string()]);

    let month = keel_core::time::current_month();
    for (tenant, ids, cost) in [("acme", ["a1", "a2"], 120), ("globex", ["b1", "b2"], 10)] {
        let pk = format!("T#{tenant}");
        let items = table.query(&pk, "AUDIT#", QueryOptions::default()).await.unwrap();
        let entries: Vec<ChainEntry> = items.into_iter().map(|i| serde_json::from_value(i.data).unwrap()).collect();
        assert_eq!(entries.iter().map(|e| e.event.event_id.as_str()).collect::<Vec<_>>(), ids, "{tenant}: in order, once each");
        assert!(verify_chain(&entries).is_empty(), "{tenant}: the chain verifies");
        for (name, expected) in [("cost_micro_usd", cost), ("chat_requests", 2)] {
            let counter = table.get(&pk, &format!("USAGE#{month}#{name}")).await.unwrap().map_or(0, |i| i.counter);
            assert_eq!(counter, expected, "{tenant}: {name}");
        }
    }
}
