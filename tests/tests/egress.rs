// Test-only code: helpers outside #[test] functions may unwrap and panic too.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

//! The egress guard through the API: a tenant admin cannot register a
//! connector, compensation, dry run or identity provider Keel may not call,
//! and a tenant the platform pinned to named hosts cannot reach others; a
//! call refused at run time fails its step and lands in the decision chain.

use keel_tests::{config, recording_connector, start_stack, tenant, wait_for_action, wait_for_events, Client, ADMIN_KEY};
use serde_json::{json, Value};
use std::time::Duration;

fn tool(connector: &str, extra: Value) -> Value {
    let mut t = json!({"description": "refund", "risk": "low", "input_schema": {"type": "object"}, "connector": {"url": connector}});
    t.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
    t
}

#[tokio::test]
async fn connectors_to_refused_addresses_are_refused_at_registration_naming_the_rule() {
    let dir = tempfile::tempdir().unwrap();
    // Nothing opened: the platform's default.
    let stack = start_stack(dir.path(), config(&[("KEEL_EGRESS_ALLOW", "")])).await;
    let c = Client::new(stack.url());
    let t = tenant(&c, "ssrf", json!({})).await;
    let public = "https://connector.invalid/refund";
    for (body, rule, at) in [
        (tool("http://169.254.169.254/latest/meta-data/iam/", json!({})), "link-local", "/steps/0/connector/url"),
        (tool("http://127.0.0.1:8080/", json!({})), "loopback", "/steps/0/connector/url"),
        (tool("http://localhost:8080/", json!({})), "loopback", "/steps/0/connector/url"),
        (tool("http://[::ffff:127.0.0.1]/", json!({})), "loopback", "/steps/0/connector/url"),
        (tool("http://2130706433/", json!({})), "loopback", "/steps/0/connector/url"),
        (tool("http://10.0.0.7/", json!({})), "RFC 1918", "/steps/0/connector/url"),
        (tool("http://100.64.1.1/", json!({})), "shared", "/steps/0/connector/url"),
        (tool("http://[fd00:ec2::254]/", json!({})), "unique-local", "/steps/0/connector/url"),
        (tool(public, json!({"compensation": {"url": "http://192.168.0.1/undo"}})), "RFC 1918", "/steps/0/compensation/url"),
        (tool(public, json!({"dry_run": {"url": "http://127.0.0.1/dry"}})), "loopback", "/dry_run/url"),
    ] {
        let (s, r) = c.call("PUT", "/v1/tools/refund", &t.admin, Some(body.clone())).await.unwrap();
        assert_eq!(s, 422, "{body}: {r}");
        let message = r["error"]["message"].as_str().unwrap();
        assert!(message.contains("egress refused") && message.contains(rule) && message.contains(at), "{message}");
    }
    // A name that does not resolve now is let in; its addresses are checked when it is called.
    let (s, r) = c.call("PUT", "/v1/tools/refund", &t.admin, Some(tool(public, json!({})))).await.unwrap();
    assert_eq!(s, 200, "{r}");

    // An identity provider's key set is held to the same rules.
    let identity = json!({"identity": {"issuer": "https://idp.example", "jwks_uri": "http://169.254.169.254/jwks", "audience": "keel"}});
    let (s, r) = c.call("PATCH", "/v1/tenants/ssrf", ADMIN_KEY, Some(identity)).await.unwrap();
    assert_eq!(s, 422, "{r}");
    assert!(r["error"]["message"].as_str().unwrap().contains("link-local"), "{r}");
    stack.stop().await;
}

#[tokio::test]
async fn a_pinned_tenant_reaches_only_its_hosts_and_a_refused_call_fails_its_step_into_the_chain() {
    let dir = tempfile::tempdir().unwrap();
    let stack = start_stack(dir.path(), config(&[])).await;
    let c = Client::new(stack.url());
    let t = tenant(&c, "pinned", json!({"autonomy": "unattended"})).await;
    let (url, calls) = recording_connector().await;
    // Reversible and low risk: an unattended tenant's proposal runs at once.
    let refund = tool(&format!("{url}/refund"), json!({"compensation": {"url": format!("{url}/undo")}}));
    let (s, r) = c.call("PUT", "/v1/tools/refund", &t.admin, Some(refund)).await.unwrap();
    assert_eq!(s, 200, "{r}");

    // Only the platform admin pins, with host names or *.domain.
    let pins = json!({"egress": {"hosts": ["api.stripe.com", "*.example.com"]}});
    assert_eq!(c.call("PATCH", "/v1/tenants/pinned", &t.admin, Some(pins.clone())).await.unwrap().0, 403);
    let bad = json!({"egress": {"hosts": ["*"]}});
    assert_eq!(c.call("PATCH", "/v1/tenants/pinned", ADMIN_KEY, Some(bad)).await.unwrap().0, 400);
    let (s, r) = c.call("PATCH", "/v1/tenants/pinned", ADMIN_KEY, Some(pins)).await.unwrap();
    assert_eq!((s, &r["egress"]["hosts"][1]), (200, &json!("*.example.com")), "{r}");

    // Registering a connector off the pinned hosts is refused ...
    let (s, r) = c.call("PUT", "/v1/tools/other", &t.admin, Some(tool(&format!("{url}/other"), json!({})))).await.unwrap();
    assert_eq!(s, 422, "{r}");
    assert!(r["error"]["message"].as_str().unwrap().contains("allowed hosts"), "{r}");
    let (s, r) = c.call("PUT", "/v1/tools/stripe", &t.admin, Some(tool("https://api.stripe.com/v1/refunds", json!({})))).await.unwrap();
    assert_eq!(s, 200, "{r}");

    // ... and the tool registered before the pin fails at run time, unretried, with nothing sent.
    let proposal = json!({"tool": "refund", "args": {}, "idempotency_key": "p-1"});
    let (s, a) = c.call("POST", "/v1/actions", &t.member, Some(proposal)).await.unwrap();
    assert_eq!(s, 201, "{a}");
    let id = a["action_id"].as_str().unwrap().to_string();
    let failed = wait_for_action(&c, &t.member, &id, "failed").await;
    assert!(failed["error"].as_str().is_some_and(|e| e.contains("egress refused") && e.contains("allowed hosts")), "{failed}");
    assert!(calls.lock().unwrap().is_empty());
    let chain = wait_for_events(&c, &t.admin, &id, &["action.proposed", "action.failed"]).await;
    assert!(chain[1].to_string().contains("egress refused"), "{}", chain[1]);

    // Unpinned (null), the same tool reaches its connector again.
    assert_eq!(c.call("PATCH", "/v1/tenants/pinned", ADMIN_KEY, Some(json!({"egress": null}))).await.unwrap().0, 200);
    let (_, a) = c.call("POST", "/v1/actions", &t.member, Some(json!({"tool": "refund", "args": {}, "idempotency_key": "p-2"}))).await.unwrap();
    assert_eq!(a["status"], "running", "{a}");
    assert!(stack.settle(Duration::from_secs(10)).await);
    assert_eq!(calls.lock().unwrap().as_slice(), ["/refund"]);
    stack.stop().await;
}
