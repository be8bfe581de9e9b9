// Test-only code: helpers outside #[test] functions may unwrap and panic too.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

//! Changing the controls is itself recorded: every admin change (tenant
//! settings, the kill switch and autonomy, keys, tools, policies) lands in
//! the tenant's decision chain with who, what, before and after, and never
//! with a secret.

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
    let (_, dana) = c.call("POST", "/v1/tenants/acme/keys", &t.admin, Some(json!({"principal": "dana", "roles": ["admin"]}))).await.unwrap();
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
