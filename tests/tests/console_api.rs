// Test-only code: helpers outside #[test] functions may unwrap and panic too.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

//! The API the console is built on, usable on its own: actions listed by
//! status and role, decision events filtered and paged, rejection with a
//! reason, reviews of an action that moved since it was listed, a tenant
//! admin's own controls, who the caller is, the tool list, and the console's
//! page itself. Each listing is tried across tenants and across roles.

use keel_tests::{config, serve_on_loopback, start_stack, tenant, Client, Tenant, ADMIN_KEY};
use serde_json::{json, Value};
use std::time::Duration;

/// A high-risk tool on a connector that answers 200 to everything.
async fn refund_tool(c: &Client, t: &Tenant) {
    let app = axum::Router::new().fallback(|| async { axum::Json(json!({"ok": true})) });
    let url = format!("http://{}", serve_on_loopback(app).await);
    let tool = json!({"description": "refund", "risk": "high", "input_schema": {"type": "object"},
        "connector": {"url": format!("{url}/refund")}, "compensation": {"url": format!("{url}/refund/undo")}});
    let (s, b) = c.call("PUT", "/v1/tools/refund", &t.admin, Some(tool)).await.unwrap();
    assert_eq!(s, 200, "{b}");
}

async fn propose(c: &Client, key: &str, idempotency_key: &str) -> Value {
    let body = json!({"tool": "refund", "args": {"order": idempotency_key}, "idempotency_key": idempotency_key});
    let (s, a) = c.call("POST", "/v1/actions", key, Some(body)).await.unwrap();
    assert_eq!((s, a["status"].as_str().unwrap()), (201, "pending_approval"), "{a}");
    a
}

fn ids(page: &Value, field: &str, id: &str) -> Vec<String> {
    page[field].as_array().unwrap().iter().map(|a| a[id].as_str().unwrap().to_string()).collect()
}

/// acme with a dave (a second member), a high-risk tool and four pending actions:
/// ann's two, dave's two, newest last.
async fn acme(c: &Client) -> (Tenant, String, Vec<Value>) {
    let t = tenant(c, "acme", json!({})).await;
    let (s, k) = c.call("POST", "/v1/tenants/acme/keys", ADMIN_KEY, Some(json!({"principal": "dave", "roles": ["member"]}))).await.unwrap();
    assert_eq!(s, 201);
    let dave = k["key"].as_str().unwrap().to_string();
    refund_tool(c, &t).await;
    let mut actions = Vec::new();
    for (key, n) in [(&t.member, 1), (&dave, 2), (&t.member, 3), (&dave, 4)] {
        actions.push(propose(c, key, &format!("order-{n}")).await);
    }
    (t, dave, actions)
}

#[tokio::test]
async fn actions_are_listed_newest_first_by_status_and_role_and_never_across_tenants() {
    let dir = tempfile::tempdir().unwrap();
    let stack = start_stack(dir.path(), config(&[])).await;
    let c = Client::new(stack.url());
    let (t, dave, actions) = acme(&c).await;
    let id = |i: usize| actions[i]["action_id"].as_str().unwrap().to_string();
    let (s, page) = c.call("GET", "/v1/actions?status=pending_approval", &t.approver, None).await.unwrap();
    assert_eq!(s, 200, "{page}");
    assert_eq!(ids(&page, "actions", "action_id"), [id(3), id(2), id(1), id(0)], "the approver's inbox: every pending action, newest first");
    assert_eq!(page["next_cursor"], Value::Null);
    // A member sees only its own proposals.
    let (_, page) = c.call("GET", "/v1/actions", &t.member, None).await.unwrap();
    assert_eq!(ids(&page, "actions", "action_id"), [id(2), id(0)]);
    let (_, page) = c.call("GET", "/v1/actions", &dave, None).await.unwrap();
    assert_eq!(ids(&page, "actions", "action_id"), [id(3), id(1)]);
    // Pages follow the cursor without gaps or repeats.
    let (_, first) = c.call("GET", "/v1/actions?limit=3", &t.admin, None).await.unwrap();
    assert_eq!(ids(&first, "actions", "action_id"), [id(3), id(2), id(1)]);
    let cursor = first["next_cursor"].as_str().unwrap();
    let (_, second) = c.call("GET", &format!("/v1/actions?limit=3&cursor={cursor}"), &t.admin, None).await.unwrap();
    assert_eq!(ids(&second, "actions", "action_id"), [id(0)]);
    assert_eq!(second["next_cursor"], Value::Null);
    // Reject one: it leaves the inbox.
    let (s, b) = c.call("POST", &format!("/v1/actions/{}/reject", id(1)), &t.approver, Some(json!({"reason": "duplicate order"}))).await.unwrap();
    assert_eq!(s, 200, "{b}");
    let (_, page) = c.call("GET", "/v1/actions?status=pending_approval", &t.approver, None).await.unwrap();
    assert_eq!(ids(&page, "actions", "action_id"), [id(3), id(2), id(0)]);
    let (_, page) = c.call("GET", "/v1/actions?status=rejected", &t.approver, None).await.unwrap();
    assert_eq!(ids(&page, "actions", "action_id"), [id(1)]);
    // Bad filters are refused, saying what is allowed.
    for query in ["status=done", "limit=0", "limit=201", "limit=x", "cursor=../x"] {
        let (s, b) = c.call("GET", &format!("/v1/actions?{query}"), &t.approver, None).await.unwrap();
        assert_eq!(s, 400, "{query}: {b}");
    }
    // Another tenant's approver lists nothing of acme's, cursor or not.
    let other = tenant(&c, "acme2", json!({})).await;
    let (s, page) = c.call("GET", "/v1/actions", &other.approver, None).await.unwrap();
    assert_eq!((s, page["actions"].as_array().unwrap().len()), (200, 0), "{page}");
    let (_, page) = c.call("GET", &format!("/v1/actions?cursor={}", id(3)), &other.admin, None).await.unwrap();
    assert_eq!(page["actions"].as_array().unwrap().len(), 0, "{page}");
    stack.stop().await;
}

#[tokio::test]
async fn a_rejection_keeps_its_reason_and_a_review_of_a_moved_action_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let stack = start_stack(dir.path(), config(&[])).await;
    let c = Client::new(stack.url());
    let (t, _, actions) = acme(&c).await;
    let (first, second) = (&actions[0], &actions[1]);
    let path = |a: &Value, verb: &str| format!("/v1/actions/{}/{verb}", a["action_id"].as_str().unwrap());
    // Seen as it is: applied, with the reason in the action and the decision log.
    let seen = json!({"reason": "customer withdrew", "seen_updated_at": first["updated_at"]});
    let (s, a) = c.call("POST", &path(first, "reject"), &t.approver, Some(seen)).await.unwrap();
    assert_eq!(s, 200, "{a}");
    assert_eq!(a["approvals"][0]["reason"], "customer withdrew");
    // Listed before the rejection: the second review is refused, saying why.
    let (s, b) = c.call("POST", &path(first, "approve"), &t.admin, Some(json!({"seen_updated_at": first["updated_at"]}))).await.unwrap();
    assert_eq!(s, 409, "{b}");
    assert!(b["error"]["message"].as_str().unwrap().contains("rejected, no longer pending approval"), "{b}");
    // Seen at an older state than the stored one: refused, nothing changes.
    let (s, b) = c.call("POST", &path(second, "approve"), &t.approver, Some(json!({"seen_updated_at": "2000-01-01T00:00:00.000Z"}))).await.unwrap();
    assert_eq!(s, 409, "{b}");
    assert!(b["error"]["message"].as_str().unwrap().contains("changed since you loaded it"), "{b}");
    let (_, still) = c.call("GET", &format!("/v1/actions/{}", second["action_id"].as_str().unwrap()), &t.approver, None).await.unwrap();
    assert_eq!(still["status"], "pending_approval");
    // Malformed or oversized review bodies are refused before anything happens.
    for body in [json!({"reason": "x".repeat(1001)}), json!({"why": "unknown field"})] {
        let (s, b) = c.call("POST", &path(second, "reject"), &t.approver, Some(body)).await.unwrap();
        assert_eq!(s, 400, "{b}");
    }
    assert!(stack.settle(Duration::from_secs(10)).await);
    let (_, page) = c.call("GET", "/v1/decisions?kind=action.rejected", &t.admin, None).await.unwrap();
    assert_eq!(page["events"][0]["event"]["outcome"]["reason"], "customer withdrew", "{page}");
    stack.stop().await;
}

#[tokio::test]
async fn decision_events_are_filtered_paged_and_each_principal_sees_its_own() {
    let dir = tempfile::tempdir().unwrap();
    let stack = start_stack(dir.path(), config(&[])).await;
    let c = Client::new(stack.url());
    let (t, dave, _) = acme(&c).await;
    let (s, _) = c.call("PUT", "/v1/documents/faq", &t.admin, Some(json!({"text": "Refunds are paid within 5 business days."}))).await.unwrap();
    assert_eq!(s, 200);
    assert!(stack.settle(Duration::from_secs(10)).await);
    let (s, _) = c.call("POST", "/v1/ask", &t.member, Some(json!({"question": "How long do refunds take?"}))).await.unwrap();
    assert_eq!(s, 200);
    assert!(stack.settle(Duration::from_secs(10)).await);
    let kinds = |page: &Value| page["events"].as_array().unwrap().iter().map(|e| e["event"]["kind"].as_str().unwrap().to_string()).collect::<Vec<_>>();
    let principals = |page: &Value| page["events"].as_array().unwrap().iter().map(|e| e["event"]["principal"].as_str().unwrap().to_string()).collect::<Vec<_>>();
    // The admin reads everyone's, newest first, and filters by kind and principal.
    let (s, all) = c.call("GET", "/v1/decisions", &t.admin, None).await.unwrap();
    assert_eq!(s, 200, "{all}");
    let seqs: Vec<u64> = all["events"].as_array().unwrap().iter().map(|e| e["seq"].as_u64().unwrap()).collect();
    assert!(seqs.windows(2).all(|w| w[0] > w[1]), "newest first: {seqs:?}");
    assert_eq!(kinds(&all)[0], "ask");
    let (_, asks) = c.call("GET", "/v1/decisions?kind=ask", &t.admin, None).await.unwrap();
    assert_eq!((kinds(&asks), principals(&asks)), (vec!["ask".to_string()], vec!["ann".to_string()]));
    let (_, daves) = c.call("GET", "/v1/decisions?principal=dave", &t.admin, None).await.unwrap();
    assert_eq!(principals(&daves), ["dave", "dave"], "{daves}");
    // A member reads only its own, and may not ask for another's.
    let (_, own) = c.call("GET", "/v1/decisions", &dave, None).await.unwrap();
    assert_eq!(principals(&own), ["dave", "dave"]);
    let (s, b) = c.call("GET", "/v1/decisions?principal=ann", &dave, None).await.unwrap();
    assert_eq!(s, 403, "{b}");
    // Pages: a cursor continues below the last entry seen.
    let (_, first) = c.call("GET", "/v1/decisions?limit=2", &t.admin, None).await.unwrap();
    let cursor = first["next_cursor"].as_str().unwrap().to_string();
    let (_, rest) = c.call("GET", &format!("/v1/decisions?cursor={cursor}&limit=200"), &t.admin, None).await.unwrap();
    assert_eq!(first["events"].as_array().unwrap().len() + rest["events"].as_array().unwrap().len(), seqs.len());
    assert!(rest["events"][0]["seq"].as_u64().unwrap() < first["events"][1]["seq"].as_u64().unwrap());
    // `since` cuts off what came before it.
    let (_, future) = c.call("GET", "/v1/decisions?since=2999-01-01T00:00:00Z", &t.admin, None).await.unwrap();
    assert_eq!(future["events"].as_array().unwrap().len(), 0);
    for query in ["kind=nonsense", "since=yesterday", "limit=0", "cursor=abc"] {
        let (s, b) = c.call("GET", &format!("/v1/decisions?{query}"), &t.admin, None).await.unwrap();
        assert_eq!(s, 400, "{query}: {b}");
    }
    // Another tenant's admin reads none of acme's events.
    let other = tenant(&c, "acme2", json!({})).await;
    let (_, theirs) = c.call("GET", "/v1/decisions?principal=ann", &other.admin, None).await.unwrap();
    assert_eq!(theirs["events"].as_array().unwrap().len(), 0, "{theirs}");
    stack.stop().await;
}

#[tokio::test]
async fn a_tenant_admin_holds_its_own_autonomy_and_kill_switch_and_nothing_more() {
    let dir = tempfile::tempdir().unwrap();
    let stack = start_stack(dir.path(), config(&[])).await;
    let c = Client::new(stack.url());
    let t = tenant(&c, "acme", json!({})).await;
    let other = tenant(&c, "acme2", json!({})).await;
    let (s, b) = c.call("PATCH", "/v1/tenants/acme", &t.admin, Some(json!({"kill_switch": true}))).await.unwrap();
    assert_eq!(s, 200, "{b}");
    assert_eq!((b["kill_switch"].clone(), b["autonomy"].clone()), (json!(true), json!("suggest_only")));
    let (s, b) = c.call("PATCH", "/v1/tenants/acme", &t.admin, Some(json!({"kill_switch": false, "autonomy": "unattended"}))).await.unwrap();
    assert_eq!((s, b["autonomy"].clone()), (200, json!("unattended")), "{b}");
    // Any other setting, another role, or another tenant: refused.
    let (s, b) = c.call("PATCH", "/v1/tenants/acme", &t.admin, Some(json!({"autonomy": "one_click", "rate_limit_per_minute": 100000}))).await.unwrap();
    assert_eq!(s, 403, "{b}");
    for (key, tenant_id) in [(&t.member, "acme"), (&t.approver, "acme"), (&other.admin, "acme")] {
        let (s, b) = c.call("PATCH", &format!("/v1/tenants/{tenant_id}"), key, Some(json!({"kill_switch": true}))).await.unwrap();
        assert_eq!(s, 403, "{b}");
    }
    let (_, now) = c.call("GET", "/v1/tenants/acme", ADMIN_KEY, None).await.unwrap();
    assert_eq!((now["autonomy"].clone(), now["kill_switch"].clone(), now["rate_limit_per_minute"].clone()), (json!("unattended"), json!(false), json!(600)));
    stack.stop().await;
}

#[tokio::test]
async fn who_am_i_and_the_tool_list_answer_for_the_callers_own_tenant() {
    let dir = tempfile::tempdir().unwrap();
    let stack = start_stack(dir.path(), config(&[])).await;
    let c = Client::new(stack.url());
    let t = tenant(&c, "acme", json!({})).await;
    let other = tenant(&c, "acme2", json!({})).await;
    refund_tool(&c, &t).await;
    let (s, me) = c.call("GET", "/v1/me", &t.approver, None).await.unwrap();
    assert_eq!(s, 200);
    assert_eq!(me, json!({"tenant": "acme", "principal": "bob", "roles": ["approver"], "groups": ["staff"], "platform_admin": false}));
    let (s, _) = c.call("GET", "/v1/me", "keel_acme_not-a-real-key-at-all-000000", None).await.unwrap();
    assert_eq!(s, 401);
    let (_, tools) = c.call("GET", "/v1/tools", &t.member, None).await.unwrap();
    assert_eq!(ids(&tools, "tools", "name"), ["refund"]);
    let (_, theirs) = c.call("GET", "/v1/tools", &other.member, None).await.unwrap();
    assert_eq!(theirs["tools"], json!([]));
    stack.stop().await;
}

#[tokio::test]
async fn the_console_is_served_without_credentials_under_a_strict_content_policy() {
    let dir = tempfile::tempdir().unwrap();
    let stack = start_stack(dir.path(), config(&[])).await;
    let http = reqwest::Client::new();
    let page = http.get(format!("{}/console", stack.url())).send().await.unwrap();
    assert_eq!(page.status(), 200);
    let csp = page.headers()["content-security-policy"].to_str().unwrap().to_string();
    assert!(csp.contains("default-src 'self'") && !csp.contains("unsafe-inline"), "{csp}");
    assert!(page.text().await.unwrap().contains("/console/app.js"));
    let script = http.get(format!("{}/console/app.js", stack.url())).send().await.unwrap();
    assert_eq!(script.headers()["content-type"], "text/javascript; charset=utf-8");
    for missing in ["/console/nope.js", "/console/..%2Fapp.js", "/console/app.js%00"] {
        let r = http.get(format!("{}{missing}", stack.url())).send().await.unwrap();
        assert_eq!(r.status(), 404, "{missing}");
    }
    stack.stop().await;
}
