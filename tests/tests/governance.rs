// Test-only code: helpers outside #[test] functions may unwrap and panic too.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

//! Changing the controls is itself recorded: every admin change (tenant
//! settings, the kill switch and autonomy, keys, tools, policies) lands in
//! the tenant's decision chain with who, what, before and after, and never
//! with a secret.

use keel_core::ports::Table;
use keel_tests::{config, start_stack, tenant, Client, ADMIN_KEY};
use serde_json::{json, Value};
use std::time::Duration;

/// The tenant's chain entries of kind `admin.change`, oldest first.
async fn admin_changes(c: &Client, admin: &str) -> Vec<Value> {
    let (s, export) = c.call("GET", "/v1/audit/export", admin, None).await.unwrap();
    assert_eq!(s, 200, "{export}");
    export
        .as_str()
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap()["event"].clone())
        .filter(|e| e["kind"] == "admin.change")
        .collect()
}

#[tokio::test]
async fn every_admin_change_is_in_the_chain_with_who_what_before_and_after() {
    let dir = tempfile::tempdir().unwrap();
    let stack = start_stack(dir.path(), config(&[])).await;
    let c = Client::new(stack.url());
    let t = tenant(&c, "acme", json!({})).await;

    let (s, _) = c.call("PATCH", "/v1/tenants/acme", ADMIN_KEY, Some(json!({"kill_switch": true}))).await.unwrap();
    assert_eq!(s, 200);
    let (s, dave) = c.call("POST", "/v1/tenants/acme/keys", &t.admin, Some(json!({"principal": "dave", "roles": ["member"]}))).await.unwrap();
    assert_eq!(s, 201);
    let dave_id = dave["id"].as_str().unwrap().to_string();
    let (s, rotated) = c.call("POST", &format!("/v1/tenants/acme/keys/{dave_id}/rotate"), &t.admin, Some(json!({"grace_seconds": 60}))).await.unwrap();
    assert_eq!(s, 201, "{rotated}");
    let (s, _) = c.call("DELETE", &format!("/v1/tenants/acme/keys/{}", rotated["id"].as_str().unwrap()), &t.admin, None).await.unwrap();
    assert_eq!(s, 200);
    let tool = json!({"description": "refund", "risk": "low", "input_schema": {}, "connector": {"url": "http://127.0.0.1:9/refunds"}});
    let (s, b) = c.call("PUT", "/v1/tools/refund", &t.admin, Some(tool)).await.unwrap();
    assert_eq!(s, 200, "{b}");
    let policy = "@id(\"small\") forbid(principal, action, resource) when { context.amount > 100 };";
    let (s, b) = c.call("PUT", "/v1/policies/enforced", &t.admin, Some(json!({"policies": policy}))).await.unwrap();
    assert_eq!(s, 200, "{b}");
    assert!(stack.settle(Duration::from_secs(10)).await);

    let changes = admin_changes(&c, &t.admin).await;
    let summary: Vec<(String, String, String)> = changes
        .iter()
        .map(|e| (e["principal"].as_str().unwrap().into(), e["input"]["change"].as_str().unwrap().into(), e["input"]["target"].as_str().unwrap().into()))
        .collect();
    let who = |p: &str, change: &str, target: &str| (p.to_string(), change.to_string(), target.to_string());
    let created_keys: Vec<_> = summary.iter().filter(|s| s.1 == "key_created").collect();
    assert_eq!(created_keys.len(), 4, "ann, bob, carol by the platform admin, dave by carol: {summary:?}");
    assert_eq!(summary[0], who("platform_admin", "tenant_created", "tenant"));
    for expected in [
        who("platform_admin", "tenant_updated", "tenant"),
        who("carol", "key_created", &format!("key {dave_id}")),
        who("carol", "key_rotated", &format!("key {dave_id}")),
        who("carol", "key_revoked", &format!("key {}", rotated["id"].as_str().unwrap())),
        who("carol", "tool_registered", "tool refund"),
        who("carol", "policies_replaced", "policies enforced"),
    ] {
        assert!(summary.contains(&expected), "{expected:?} missing from {summary:?}");
    }
    let kill = changes.iter().find(|e| e["input"]["change"] == "tenant_updated").unwrap();
    let (before, after) = (&kill["outcome"]["before"], &kill["outcome"]["after"]);
    assert_eq!((before["kill_switch"].clone(), after["kill_switch"].clone()), (json!(false), json!(true)));
    assert_eq!((before["autonomy"].clone(), after["autonomy"].clone()), (json!("one_click"), json!("suggest_only")));
    let policies = changes.iter().find(|e| e["input"]["change"] == "policies_replaced").unwrap();
    assert_eq!((policies["outcome"]["before"].clone(), policies["outcome"]["after"].clone()), (json!(""), json!(policy)));
    let rotation = changes.iter().find(|e| e["input"]["change"] == "key_rotated").unwrap();
    assert!(rotation["outcome"]["before"]["expires_at"].is_null() && rotation["outcome"]["after"]["old"]["expires_at"].is_string());

    let chain = serde_json::to_string(&changes).unwrap();
    for secret in [&t.member, &t.approver, &t.admin, dave["key"].as_str().unwrap(), rotated["key"].as_str().unwrap()] {
        assert!(!chain.contains(&secret[secret.len() - 20..]), "a key's secret is in the chain");
    }
    let (_, v) = c.call("POST", "/v1/audit/verify", &t.admin, None).await.unwrap();
    assert_eq!(v["ok"], json!(true), "{v}");
    stack.stop().await;
}

async fn tenant_now(c: &Client) -> Value {
    c.call("GET", "/v1/tenants/acme", ADMIN_KEY, None).await.unwrap().1
}

async fn pending(c: &Client, admin: &str) -> Vec<Value> {
    let (s, b) = c.call("GET", "/v1/tenants/acme/change-requests", admin, None).await.unwrap();
    assert_eq!(s, 200, "{b}");
    b["change_requests"].as_array().unwrap().clone()
}

#[tokio::test]
async fn with_two_person_changes_a_weakening_waits_for_a_second_admin() {
    let dir = tempfile::tempdir().unwrap();
    let stack = start_stack(dir.path(), config(&[])).await;
    let c = Client::new(stack.url());
    let t = tenant(&c, "acme", json!({"governance": {"two_person_changes": true}})).await;
    // The second admin's key comes from the platform admin: one carol minted herself could not approve her changes.
    let (_, dana) = c.call("POST", "/v1/tenants/acme/keys", ADMIN_KEY, Some(json!({"principal": "dana", "roles": ["admin"]}))).await.unwrap();
    let dana = dana["key"].as_str().unwrap().to_string();

    // Strengthening goes through at once; weakening waits.
    let (s, b) = c.call("PATCH", "/v1/tenants/acme", ADMIN_KEY, Some(json!({"kill_switch": true}))).await.unwrap();
    assert_eq!((s, b["kill_switch"].clone()), (200, json!(true)));
    let (s, b) = c.call("PATCH", "/v1/tenants/acme", ADMIN_KEY, Some(json!({"kill_switch": false}))).await.unwrap();
    assert_eq!(s, 202, "{b}");
    assert!(b["change_request"]["reason"].as_str().unwrap().contains("kill switch off"), "{b}");
    assert_eq!(tenant_now(&c).await["kill_switch"], json!(true), "nothing changed yet");
    let request = b["change_request"]["id"].as_str().unwrap().to_string();
    assert_eq!(pending(&c, &t.admin).await.len(), 1);
    assert_eq!(c.call("GET", "/v1/tenants/acme/change-requests", &t.member, None).await.unwrap().0, 403);

    // A member cannot approve; the requester cannot approve its own; another tenant's admin cannot either.
    let approve = |id: &str| format!("/v1/tenants/acme/change-requests/{id}/approve");
    assert_eq!(c.call("POST", &approve(&request), &t.member, None).await.unwrap().0, 403);
    assert_eq!(c.call("POST", &approve(&request), ADMIN_KEY, None).await.unwrap().0, 403);
    let beta = tenant(&c, "beta", json!({})).await;
    assert_eq!(c.call("POST", &approve(&request), &beta.admin, None).await.unwrap().0, 403);
    let (s, b) = c.call("POST", &approve(&request), &t.admin, None).await.unwrap();
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["change_request"]["status"], json!("approved"));
    assert_eq!(tenant_now(&c).await["kill_switch"], json!(false), "made on approval");
    assert_eq!(c.call("POST", &approve(&request), &dana, None).await.unwrap().0, 409, "decided once");
    assert!(pending(&c, &t.admin).await.is_empty());

    // Replacing the enforced policies waits too; a second admin approves, the requester cannot.
    let policy = "@id(\"open\") permit(principal, action, resource);";
    let (s, b) = c.call("PUT", "/v1/policies/enforced", &t.admin, Some(json!({"policies": policy}))).await.unwrap();
    assert_eq!(s, 202, "{b}");
    let request = b["change_request"]["id"].as_str().unwrap().to_string();
    let (_, now) = c.call("GET", "/v1/policies", &t.admin, None).await.unwrap();
    assert_eq!(now["enforced"]["policies"], json!(""));
    assert_eq!(c.call("POST", &approve(&request), &t.admin, None).await.unwrap().0, 403);
    assert_eq!(c.call("POST", &approve(&request), &dana, None).await.unwrap().0, 200);
    let (_, now) = c.call("GET", "/v1/policies", &t.admin, None).await.unwrap();
    assert_eq!(now["enforced"]["policies"], json!(policy));

    // A request whose target moved meanwhile is refused; a rejected one changes nothing.
    let (s, b) = c.call("PATCH", "/v1/tenants/acme", ADMIN_KEY, Some(json!({"autonomy": "unattended"}))).await.unwrap();
    assert_eq!(s, 202, "{b}");
    let stale = b["change_request"]["id"].as_str().unwrap().to_string();
    let (s, _) = c.call("PATCH", "/v1/tenants/acme", ADMIN_KEY, Some(json!({"name": "Acme Ltd"}))).await.unwrap();
    assert_eq!(s, 200, "a change that weakens nothing is made at once");
    assert_eq!(c.call("POST", &approve(&stale), &t.admin, None).await.unwrap().0, 409);
    assert_eq!(tenant_now(&c).await["autonomy"], json!("suggest_only"));
    let (s, b) = c.call("PATCH", "/v1/tenants/acme", ADMIN_KEY, Some(json!({"governance": {"two_person_changes": false}}))).await.unwrap();
    assert_eq!(s, 202, "turning the rule off is itself a weakening: {b}");
    let off = b["change_request"]["id"].as_str().unwrap().to_string();
    let (s, _) = c.call("POST", &format!("/v1/tenants/acme/change-requests/{off}/reject"), &t.admin, None).await.unwrap();
    assert_eq!(s, 200);
    assert_eq!(tenant_now(&c).await["governance"]["two_person_changes"], json!(true));

    assert!(stack.settle(Duration::from_secs(10)).await);
    let changes: Vec<String> = admin_changes(&c, &t.admin).await.iter().map(|e| e["input"]["change"].as_str().unwrap().to_string()).collect();
    for expected in ["change_requested", "change_approved", "change_rejected"] {
        assert!(changes.iter().any(|c| c == expected), "{expected} missing from {changes:?}");
    }
    stack.stop().await;
}

/// Dual control was one admin with two names: carol minted a sock-puppet
/// admin key and approved her own change with it, minted a key named after
/// the other admin, rotated the other admin's key, and names differing only
/// in case passed for two people. Each bypass, tried.
#[tokio::test]
async fn no_single_person_satisfies_dual_control_under_any_name_or_key() {
    let dir = tempfile::tempdir().unwrap();
    let stack = start_stack(dir.path(), config(&[])).await;
    let c = Client::new(stack.url());
    let t = tenant(&c, "acme", json!({"governance": {"two_person_changes": true}})).await;
    let new_key = |by: String, body: Value| {
        let c = &c;
        async move { c.call("POST", "/v1/tenants/acme/keys", &by, Some(body)).await.unwrap() }
    };
    let (_, dana) = new_key(ADMIN_KEY.into(), json!({"principal": "dana", "roles": ["admin"]})).await;
    let (dana, dana_id) = (dana["key"].as_str().unwrap().to_string(), dana["id"].as_str().unwrap().to_string());
    let approve = |id: &str| format!("/v1/tenants/acme/change-requests/{id}/approve");

    // A sock puppet: carol's new admin key is held, signs nobody in, and cannot approve her own change.
    let (s, held) = new_key(t.admin.clone(), json!({"principal": "sock", "roles": ["admin"]})).await;
    assert_eq!(s, 202, "granting the admin role waits for a second admin: {held}");
    let sock = held["key"]["key"].as_str().unwrap().to_string();
    assert_eq!(c.call("GET", "/v1/me", &sock, None).await.unwrap().0, 401, "a held key signs nobody in");
    let grant = held["change_request"]["id"].as_str().unwrap().to_string();
    assert_eq!(c.call("POST", &approve(&grant), &t.admin, None).await.unwrap().0, 403, "carol cannot approve her own grant");
    let (s, b) = c.call("POST", &approve(&grant), &dana, None).await.unwrap();
    assert_eq!(s, 200, "{b}");
    assert_eq!(c.call("GET", "/v1/me", &sock, None).await.unwrap().0, 200, "approved, the key works");
    let (s, b) = c.call("PATCH", "/v1/tenants/acme", &t.admin, Some(json!({"autonomy": "unattended"}))).await.unwrap();
    assert_eq!(s, 202, "{b}");
    let raise = b["change_request"]["id"].as_str().unwrap().to_string();
    let (s, b) = c.call("POST", &approve(&raise), &sock, None).await.unwrap();
    assert_eq!(s, 403, "a key carol issued is carol again: {b}");
    assert!(b["error"]["message"].as_str().unwrap().contains("issued by"), "{b}");

    // A key minted after the request, by anyone, cannot approve it.
    let (_, late) = new_key(ADMIN_KEY.into(), json!({"principal": "erin", "roles": ["admin"]})).await;
    let (s, b) = c.call("POST", &approve(&raise), late["key"].as_str().unwrap(), None).await.unwrap();
    assert_eq!(s, 403, "{b}");
    assert!(b["error"]["message"].as_str().unwrap().contains("after the request"), "{b}");

    // A key named after the other admin is held too, and carol may not rotate dana's key.
    let (s, b) = new_key(t.admin.clone(), json!({"principal": "Dana", "roles": ["member"]})).await;
    assert_eq!(s, 202, "a key for another existing principal: {b}");
    let (s, b) = c.call("POST", &format!("/v1/tenants/acme/keys/{dana_id}/rotate"), &t.admin, Some(json!({"grace_seconds": 2_592_000}))).await.unwrap();
    assert_eq!(s, 403, "{b}");
    // A member's key for a new principal is not a grant: made at once.
    assert_eq!(new_key(t.admin.clone(), json!({"principal": "frank", "roles": ["member"]})).await.0, 201);
    // The operator's own name belongs to no tenant key.
    assert_eq!(new_key(ADMIN_KEY.into(), json!({"principal": "Platform_Admin", "roles": ["member"]})).await.0, 400);
    stack.stop().await;
}

/// Maker-checker on actions compared names case-sensitively, so `GX@tg.test`
/// approved `gx@tg.test`'s proposal; and a key the proposer issued, or one
/// made after the proposal, approved like a second person.
#[tokio::test]
async fn an_action_is_approved_only_by_another_person_with_an_older_key() {
    let dir = tempfile::tempdir().unwrap();
    let stack = start_stack(dir.path(), config(&[])).await;
    let c = Client::new(stack.url());
    let t = tenant(&c, "tg", json!({})).await;
    let key = |principal: &str, role: &str| {
        let c = &c;
        let body = json!({"principal": principal, "roles": [role]});
        async move { c.call("POST", "/v1/tenants/tg/keys", ADMIN_KEY, Some(body)).await.unwrap().1["key"].as_str().unwrap().to_string() }
    };
    let proposer = key("gx@tg.test", "member").await;
    let same_person = key("GX@tg.test", "approver").await;
    let (connector, _) = keel_tests::recording_connector().await;
    let tool = json!({"description": "refund", "risk": "high", "input_schema": {}, "connector": {"url": connector}});
    assert_eq!(c.call("PUT", "/v1/tools/refund", &t.admin, Some(tool)).await.unwrap().0, 200);
    let (s, action) = c.call("POST", "/v1/actions", &proposer, Some(json!({"tool": "refund", "args": {}, "idempotency_key": "gx-1"}))).await.unwrap();
    assert_eq!((s, action["status"].as_str()), (201, Some("pending_approval")), "{action}");
    let approve = format!("/v1/actions/{}/approve", action["action_id"].as_str().unwrap());
    let (s, b) = c.call("POST", &approve, &same_person, None).await.unwrap();
    assert_eq!(s, 403, "the proposer under another spelling: {b}");
    let newer = key("hal", "approver").await;
    let (s, b) = c.call("POST", &approve, &newer, None).await.unwrap();
    assert_eq!(s, 403, "a key made after the proposal: {b}");
    let (s, b) = c.call("POST", &approve, &t.approver, None).await.unwrap();
    assert_eq!(s, 200, "bob, another person with an older key: {b}");
    stack.stop().await;
}

/// Weakening changes skipped the second person: replacing the identity
/// provider, removing the egress pin, cutting decision retention, turning
/// PII redaction off, removing a budget; and a held identity change claimed
/// its issuer before anyone approved it.
#[tokio::test]
async fn every_weakening_of_a_control_waits_and_a_held_identity_claims_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let stack = start_stack(dir.path(), config(&[])).await;
    let c = Client::new(stack.url());
    let t = tenant(&c, "acme", json!({"governance": {"two_person_changes": true}, "redact_pii": true,
        "egress": {"hosts": ["127.0.0.1"]}, "retention": {"decision_days": 365}, "budgets": {"monthly_usd": 100.0}})).await;
    for weakening in [json!({"redact_pii": false}), json!({"egress": null}), json!({"retention": {"decision_days": 1}}), json!({"budgets": {}})] {
        let (s, b) = c.call("PATCH", "/v1/tenants/acme", ADMIN_KEY, Some(weakening.clone())).await.unwrap();
        assert_eq!(s, 202, "{weakening} waits for a second person: {b}");
    }
    let now = tenant_now(&c).await;
    assert_eq!((now["redact_pii"].clone(), now["budgets"]["monthly_usd"].clone()), (json!(true), json!(100.0)), "nothing changed yet");

    let idp = keel_tests::idp::TestIdp::start().await;
    let (s, b) = c.call("PATCH", "/v1/tenants/acme", ADMIN_KEY, Some(json!({"identity": idp.identity("keel-acme")}))).await.unwrap();
    assert_eq!(s, 202, "{b}");
    let issuer_key = keel_core::keys::issuer(&idp.issuer());
    assert!(stack.table.get("PLATFORM", &issuer_key).await.unwrap().is_none(), "a held change claimed its issuer");
    let request = b["change_request"]["id"].as_str().unwrap().to_string();
    let (s, b) = c.call("POST", &format!("/v1/tenants/acme/change-requests/{request}/approve"), &t.admin, None).await.unwrap();
    assert_eq!(s, 200, "{b}");
    assert!(stack.table.get("PLATFORM", &issuer_key).await.unwrap().is_some(), "approved, the issuer is the tenant's");
    stack.stop().await;
}

/// Who did it was forgeable: events recorded no actor kind or key, and
/// re-pointing the alert webhook left no trace. Every event now names its
/// actor (platform or tenant, principal, key id), and the webhook's change
/// is chained with hosts only.
#[tokio::test]
async fn every_event_names_its_actor_and_a_webhook_change_is_chained() {
    let dir = tempfile::tempdir().unwrap();
    let stack = start_stack(dir.path(), config(&[])).await;
    let c = Client::new(stack.url());
    let t = tenant(&c, "acme", json!({})).await;
    let (_, keys) = c.call("GET", "/v1/tenants/acme/keys", ADMIN_KEY, None).await.unwrap();
    let carol = keys["keys"].as_array().unwrap().iter().find(|k| k["principal"] == "carol").unwrap()["id"].clone();
    assert_eq!(c.call("PATCH", "/v1/tenants/acme", &t.admin, Some(json!({"kill_switch": true}))).await.unwrap().0, 200);
    assert_eq!(c.call("PATCH", "/v1/tenants/acme", ADMIN_KEY, Some(json!({"name": "Acme Ltd"}))).await.unwrap().0, 200);
    let (s, b) = c.call("PUT", "/v1/alerts/webhook", &t.admin, Some(json!({"url": "http://127.0.0.1:9/hook?token=s3cr3t"}))).await.unwrap();
    assert_eq!(s, 200, "{b}");
    assert!(stack.settle(Duration::from_secs(10)).await);
    let changes = admin_changes(&c, &t.admin).await;
    let by = |kind: &str| changes.iter().filter(|e| e["input"]["change"] == kind).map(|e| e["actor"].clone()).collect::<Vec<_>>();
    let updates = by("tenant_updated");
    assert!(updates.contains(&json!({"kind": "tenant", "principal": "carol", "key_id": carol})), "{updates:?}");
    assert!(updates.contains(&json!({"kind": "platform", "principal": "platform_admin"})), "{updates:?}");
    let hook = changes.iter().find(|e| e["input"]["change"] == "webhook_changed").expect("the webhook's change is chained");
    assert_eq!((hook["outcome"]["after"]["host"].as_str(), hook["actor"]["principal"].as_str()), (Some("127.0.0.1"), Some("carol")), "{hook}");
    assert!(!serde_json::to_string(&changes).unwrap().contains("s3cr3t"), "the webhook's token is in the chain");
    stack.stop().await;
}

/// Re-registering a tool as low risk skipped the second person, and a
/// pending high-risk proposal then ran with no approval. Loosening a tool
/// (lower risk, higher autonomy, no longer reversible) now waits too.
#[tokio::test]
async fn loosening_a_tool_waits_for_a_second_admin() {
    let dir = tempfile::tempdir().unwrap();
    let stack = start_stack(dir.path(), config(&[])).await;
    let c = Client::new(stack.url());
    let t = tenant(&c, "acme", json!({"governance": {"two_person_changes": true}})).await;
    let (connector, _) = keel_tests::recording_connector().await;
    let tool = |risk: &str| json!({"description": "refund", "risk": risk, "input_schema": {}, "connector": {"url": connector}});
    assert_eq!(c.call("PUT", "/v1/tools/refund", &t.admin, Some(tool("high"))).await.unwrap().0, 200, "a new tool is no weakening");
    let (s, b) = c.call("PUT", "/v1/tools/refund", &t.admin, Some(tool("low"))).await.unwrap();
    assert_eq!(s, 202, "{b}");
    assert!(b["change_request"]["reason"].as_str().unwrap().contains("risk"), "{b}");
    let (_, now) = c.call("GET", "/v1/tools/refund", &t.admin, None).await.unwrap();
    assert_eq!((now["risk"].as_str(), now["version"].as_u64()), (Some("high"), Some(1)), "nothing changed yet");
    let request = b["change_request"]["id"].as_str().unwrap().to_string();
    let (s, b) = c.call("POST", &format!("/v1/tenants/acme/change-requests/{request}/approve"), ADMIN_KEY, None).await.unwrap();
    assert_eq!(s, 200, "{b}");
    let (_, now) = c.call("GET", "/v1/tools/refund", &t.admin, None).await.unwrap();
    assert_eq!((now["risk"].as_str(), now["version"].as_u64()), (Some("low"), Some(2)), "made on approval: {now}");
    assert_eq!(c.call("PUT", "/v1/tools/refund", &t.admin, Some(tool("high"))).await.unwrap().0, 200, "raising the risk is at once");
    stack.stop().await;
}
