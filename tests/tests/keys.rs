// Test-only code: helpers outside #[test] functions may unwrap and panic too.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

//! API keys with a lifecycle, through the local stack with warm caches on
//! (a key's record is trusted for a minute): tenant admins create, list,
//! revoke and rotate their own tenant's keys; expired, revoked and rotated
//! keys stop working when they should; nobody else may touch them.

use keel_emulator::Stack;
use keel_tests::{config, start_stack, tenant, Client, Tenant, ADMIN_KEY};
use serde_json::{json, Value};
use std::time::Duration;

async fn stack() -> (tempfile::TempDir, Stack, Client) {
    let dir = tempfile::tempdir().unwrap();
    let stack = start_stack(dir.path(), config(&[("KEEL_TENANT_CACHE_SECS", "60")])).await;
    let c = Client::new(stack.url());
    (dir, stack, c)
}

/// A request any valid key of the tenant may make: 404 for a document that does not exist.
async fn works(c: &Client, key: &str) -> bool {
    let (s, b) = c.call("GET", "/v1/documents/nothing-here", key, None).await.unwrap();
    assert!(s == 404 || s == 401, "{s} {b}");
    s == 404
}

async fn create_key(c: &Client, tenant: &str, by: &str, body: Value) -> (u16, Value) {
    c.call("POST", &format!("/v1/tenants/{tenant}/keys"), by, Some(body)).await.unwrap()
}

async fn list(c: &Client, tenant: &str, by: &str) -> (u16, Value) {
    c.call("GET", &format!("/v1/tenants/{tenant}/keys"), by, None).await.unwrap()
}

async fn rotate(c: &Client, by: &str, id: &str, body: Value) -> (u16, Value) {
    c.call("POST", &format!("/v1/tenants/acme/keys/{id}/rotate"), by, Some(body)).await.unwrap()
}

fn in_seconds(s: i64) -> String {
    (chrono::Utc::now() + chrono::Duration::seconds(s)).to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

#[tokio::test]
async fn a_tenant_admin_creates_and_lists_keys_without_their_secrets() {
    let (_dir, stack, c) = stack().await;
    let t = tenant(&c, "acme", json!({})).await;
    let (s, dave) = create_key(&c, "acme", &t.admin, json!({"principal": "dave", "roles": ["member"]})).await;
    assert_eq!(s, 201, "{dave}");
    let secret = dave["key"].as_str().unwrap();
    assert!(works(&c, secret).await);
    assert!(secret.starts_with(dave["prefix"].as_str().unwrap()) && dave["prefix"].as_str().unwrap().len() == "keel_acme_".len() + 4);

    let (s, listed) = list(&c, "acme", &t.admin).await;
    assert_eq!(s, 200, "{listed}");
    let keys = listed["keys"].as_array().unwrap();
    let principals: Vec<&str> = keys.iter().map(|k| k["principal"].as_str().unwrap()).collect();
    assert_eq!(principals, ["ann", "bob", "carol", "dave"]);
    let text = listed.to_string();
    for secret in [secret, &t.member, &t.approver, &t.admin] {
        assert!(!text.contains(&secret[secret.len() - 20..]), "a list never shows a secret");
    }
    let dave_listed = keys.iter().find(|k| k["principal"] == "dave").unwrap();
    assert_eq!((dave_listed["id"].clone(), dave_listed["roles"].clone()), (dave["id"].clone(), json!(["member"])));
    assert!(dave_listed["last_used_at"].is_string(), "{dave_listed}");
    assert!(keys.iter().find(|k| k["principal"] == "bob").unwrap()["last_used_at"].is_null());
    assert_eq!(list(&c, "acme", ADMIN_KEY).await.0, 200, "the platform admin may list");
    stack.stop().await;
}

#[tokio::test]
async fn nobody_but_the_tenant_admin_or_platform_admin_touches_a_tenant_keys() {
    let (_dir, stack, c) = stack().await;
    let acme = tenant(&c, "acme", json!({})).await;
    let beta = tenant(&c, "beta", json!({})).await;
    let (_, listed) = list(&c, "acme", &acme.admin).await;
    let ann_id = listed["keys"][0]["id"].as_str().unwrap().to_string();
    let Tenant { member, approver, .. } = &acme;
    for key in [member.as_str(), approver.as_str(), beta.admin.as_str()] {
        assert_eq!(list(&c, "acme", key).await.0, 403);
        assert_eq!(create_key(&c, "acme", key, json!({"principal": "eve", "roles": ["admin"]})).await.0, 403);
        let (s, _) = c.call("DELETE", &format!("/v1/tenants/acme/keys/{ann_id}"), key, None).await.unwrap();
        assert_eq!(s, 403);
        let (s, _) = c.call("POST", &format!("/v1/tenants/acme/keys/{ann_id}/rotate"), key, Some(json!({"grace_seconds": 0}))).await.unwrap();
        assert_eq!(s, 403);
    }
    // Another tenant's key id names nothing in this tenant.
    let (_, beta_keys) = list(&c, "beta", &beta.admin).await;
    let beta_ann = beta_keys["keys"][0]["id"].as_str().unwrap();
    let (s, _) = c.call("DELETE", &format!("/v1/tenants/acme/keys/{beta_ann}"), &acme.admin, None).await.unwrap();
    assert_eq!(s, 404);
    assert!(works(&c, &beta.member).await);
    for bad in ["nothing", "..%2F..", "0123456789abcdeg", "KEY%23"] {
        let (s, b) = c.call("DELETE", &format!("/v1/tenants/acme/keys/{bad}"), &acme.admin, None).await.unwrap();
        assert!(s == 404 || s == 400, "{bad}: {s} {b}");
    }
    assert!(works(&c, &acme.member).await);
    stack.stop().await;
}

#[tokio::test]
async fn a_revoked_key_is_refused_at_once_even_while_cached() {
    let (_dir, stack, c) = stack().await;
    let t = tenant(&c, "acme", json!({})).await;
    let (_, dave) = create_key(&c, "acme", &t.admin, json!({"principal": "dave", "roles": ["member"]})).await;
    let (secret, id) = (dave["key"].as_str().unwrap(), dave["id"].as_str().unwrap());
    assert!(works(&c, secret).await, "now cached for a minute");
    let (s, b) = c.call("DELETE", &format!("/v1/tenants/acme/keys/{id}"), &t.admin, None).await.unwrap();
    assert_eq!((s, b), (200, json!({"revoked": id})));
    assert!(!works(&c, secret).await);
    let (s, _) = c.call("DELETE", &format!("/v1/tenants/acme/keys/{id}"), &t.admin, None).await.unwrap();
    assert_eq!(s, 404);
    let (_, listed) = list(&c, "acme", &t.admin).await;
    assert!(listed["keys"].as_array().unwrap().iter().all(|k| k["id"] != id));
    assert!(works(&c, &t.member).await, "other keys keep working");
    stack.stop().await;
}

#[tokio::test]
async fn a_key_stops_working_when_it_expires() {
    let (_dir, stack, c) = stack().await;
    let t = tenant(&c, "acme", json!({})).await;
    for bad in [json!(in_seconds(-5)), json!("next tuesday"), json!(17)] {
        let (s, b) = create_key(&c, "acme", &t.admin, json!({"principal": "dave", "roles": ["member"], "expires_at": bad})).await;
        assert_eq!(s, 400, "{b}");
    }
    let (s, dave) = create_key(&c, "acme", &t.admin, json!({"principal": "dave", "roles": ["member"], "expires_at": in_seconds(2)})).await;
    assert_eq!(s, 201, "{dave}");
    let secret = dave["key"].as_str().unwrap();
    assert!(works(&c, secret).await, "cached now, with its expiry");
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    let (s, b) = c.call("GET", "/v1/documents/nothing-here", secret, None).await.unwrap();
    assert_eq!(s, 401);
    assert!(b.to_string().contains("expired"), "{b}");
    stack.stop().await;
}

#[tokio::test]
async fn rotation_issues_a_new_key_and_the_old_one_lives_for_the_grace_period() {
    let (_dir, stack, c) = stack().await;
    let t = tenant(&c, "acme", json!({})).await;
    let (_, listed) = list(&c, "acme", &t.admin).await;
    let ann_id = listed["keys"][0]["id"].as_str().unwrap().to_string();
    assert!(works(&c, &t.member).await, "cached now");
    assert_eq!(rotate(&c, &t.admin, &ann_id, json!({"grace_seconds": 31 * 24 * 3600})).await.0, 400);
    assert_eq!(rotate(&c, &t.admin, "0123456789abcdef", json!({"grace_seconds": 5})).await.0, 404);

    let (s, new) = rotate(&c, &t.admin, &ann_id, json!({"grace_seconds": 2})).await;
    assert_eq!(s, 201, "{new}");
    assert_eq!((new["principal"].clone(), new["roles"].clone(), new["replaces"]["id"].clone()), (json!("ann"), json!(["member"]), json!(ann_id)));
    let fresh = new["key"].as_str().unwrap();
    assert_ne!(fresh, t.member);
    assert!(works(&c, fresh).await && works(&c, &t.member).await, "both work during the grace period");
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    assert!(!works(&c, &t.member).await, "the old key ends with its grace period");
    assert!(works(&c, fresh).await);
    assert_eq!(rotate(&c, &t.admin, &ann_id, json!({"grace_seconds": 5})).await.0, 409, "an expired key cannot be rotated");
    stack.stop().await;
}
