// Test-only code: helpers outside #[test] functions may unwrap and panic too.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

//! What an outsider broke with ordinary tenant keys, each attempt replayed
//! against the local stack: a crash through Cedar's parser, an audit log
//! poisoned by over-deep arguments, a breaker one tenant opened for another,
//! an exponential schema, redirects and unbounded connector answers,
//! document writes past their ACL, leaking cursors and decisions, metered
//! totals that overflowed, and a forged S3 notice; `load` has one tenant's
//! load against another's.

use keel_tests::{config, start_stack, tenant, wait_for_action, Client, Tenant};
use serde_json::{json, Value};
use std::time::Duration;

#[path = "outsider/load.rs"]
mod load;

/// A system tools call, on loopback: `/down` answers 503, `/redirect` 303
/// to `/internal` (a page only GET reaches), `/big` a 5 MB JSON answer, and
/// anything else `{"ok": true}`.
async fn service() -> String {
    let app = axum::Router::new()
        .route("/internal", axum::routing::get(|| async { "internal secret page" }))
        .route(
            "/redirect",
            axum::routing::post(|| async { (axum::http::StatusCode::SEE_OTHER, [("location", "/internal")], "see other") }),
        )
        .route("/down", axum::routing::post(|| async { (axum::http::StatusCode::SERVICE_UNAVAILABLE, "maintenance") }))
        .route("/big", axum::routing::post(|| async { axum::Json(json!({"data": "x".repeat(5 << 20)})) }))
        .fallback(|| async { axum::Json(json!({"ok": true})) });
    let url = format!("http://{}", keel_tests::serve_on_loopback(app).await);
    url
}

/// A reversible low-risk tool that accepts any arguments, with an optional dry run.
fn any_args_tool(url: &str, dry_run: Option<&str>) -> Value {
    let mut t = json!({"description": "anything", "risk": "low", "input_schema": {},
        "connector": {"url": format!("{url}/apply")}, "compensation": {"url": format!("{url}/apply/undo")}});
    if let Some(path) = dry_run {
        t["dry_run"] = json!({"url": format!("{url}/{path}")});
    }
    t
}

fn nested_arrays(depth: usize) -> Value {
    (0..depth).fold(json!(1), |inner, _| json!([inner]))
}

async fn put(c: &Client, key: &str, path: &str, body: Value) -> (u16, Value) {
    c.call("PUT", path, key, Some(body)).await.unwrap()
}

async fn setup() -> (tempfile::TempDir, keel_emulator::Stack, Client, Tenant) {
    let dir = tempfile::tempdir().unwrap();
    let stack = start_stack(dir.path(), config(&[])).await;
    let c = Client::new(stack.url());
    let t = tenant(&c, "acme", json!({"autonomy": "unattended"})).await;
    (dir, stack, c, t)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deeply_nested_policy_is_refused_and_the_server_stays_up() {
    let (_dir, stack, c, t) = setup().await;
    let nested = |n: usize| format!("@id(\"d\") forbid (principal, action, resource) when {{ {}1{} == 1 }};", "(".repeat(n), ")".repeat(n));
    for mode in ["shadow", "enforced"] {
        let (s, r) = put(&c, &t.admin, &format!("/v1/policies/{mode}"), json!({"policies": nested(150)})).await;
        assert_eq!(s, 400, "{r}");
        assert!(r["error"]["message"].as_str().unwrap().contains("the limit is 32"), "{r}");
    }
    let (s, r) = put(&c, &t.admin, "/v1/policies/shadow", json!({"policies": nested(20)})).await;
    assert_eq!(s, 200, "{r}");
    assert_eq!(c.call("GET", "/v1/policies", &t.admin, None).await.unwrap().0, 200);
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_deep_arguments_are_refused_and_what_is_accepted_stays_readable_in_the_audit_log() {
    let (_dir, stack, c, t) = setup().await;
    let url = service().await;
    assert_eq!(put(&c, &t.admin, "/v1/tools/anything", any_args_tool(&url, None)).await.0, 200);
    let propose = |args: Value, key: &str| json!({"tool": "anything", "args": args, "idempotency_key": key});
    let (s, r) = c.call("POST", "/v1/actions", &t.member, Some(propose(nested_arrays(122), "deep"))).await.unwrap();
    assert_eq!(s, 400, "{r}");
    assert!(r["error"]["message"].as_str().unwrap().contains("the limit is 32"), "{r}");
    // The deepest arguments the edge accepts (the body adds one level) run and are recorded.
    let (s, r) = c.call("POST", "/v1/actions", &t.member, Some(propose(nested_arrays(31), "deepest"))).await.unwrap();
    assert_eq!(s, 201, "{r}");
    wait_for_action(&c, &t.member, r["action_id"].as_str().unwrap(), "executed").await;
    let (_, ask) = c.call("POST", "/v1/ask", &t.member, Some(json!({"question": "anything recorded after?"}))).await.unwrap();
    assert!(stack.settle(Duration::from_secs(10)).await);
    let (s, v) = c.call("POST", "/v1/audit/verify", &t.admin, None).await.unwrap();
    assert_eq!((s, v["ok"].as_bool()), (200, Some(true)), "{v}");
    let (s, export) = c.call("GET", "/v1/audit/export", &t.admin, None).await.unwrap();
    assert_eq!(s, 200);
    assert!(export.as_str().unwrap().contains(ask["decision_id"].as_str().unwrap()), "later events still append");
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_tenants_failures_never_open_another_tenants_breaker() {
    let (_dir, stack, c, acme) = setup().await;
    let beta = tenant(&c, "beta", json!({"autonomy": "unattended"})).await;
    let url = service().await;
    assert_eq!(put(&c, &acme.admin, "/v1/tools/probe", any_args_tool(&url, Some("down"))).await.0, 200);
    assert_eq!(put(&c, &beta.admin, "/v1/tools/pay", any_args_tool(&url, None)).await.0, 200);
    // A key the HTTP client cannot send is the caller's mistake: 400, and nothing counted against the host.
    for _ in 0..2 {
        let body = json!({"tool": "probe", "args": {}, "idempotency_key": "bad\u{1}x"});
        let (s, r) = c.call("POST", "/v1/actions", &acme.member, Some(body)).await.unwrap();
        assert_eq!(s, 400, "{r}");
    }
    // acme's dry runs fail for real (503) until its breaker for the host opens...
    for i in 0..3 {
        let body = json!({"tool": "probe", "args": {}, "idempotency_key": format!("probe-{i}")});
        assert_eq!(c.call("POST", "/v1/actions", &acme.member, Some(body)).await.unwrap().0, 201);
    }
    // ...and beta's action on the same host still goes through.
    let body = json!({"tool": "pay", "args": {}, "idempotency_key": "pay-1"});
    let (s, r) = c.call("POST", "/v1/actions", &beta.member, Some(body)).await.unwrap();
    assert_eq!(s, 201, "{r}");
    let done = wait_for_action(&c, &beta.member, r["action_id"].as_str().unwrap(), "executed").await;
    assert_eq!(done["steps"][0]["outcome"]["status"], 200, "{done}");
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_schema_whose_validation_explodes_is_refused_at_registration() {
    let (_dir, stack, c, t) = setup().await;
    let mut defs = serde_json::Map::new();
    for i in 0..20 {
        let next = format!("#/$defs/d{}", i + 1);
        defs.insert(format!("d{i}"), json!({"anyOf": [{"$ref": next}, {"allOf": [{"$ref": next}]}]}));
    }
    defs.insert("d20".into(), json!({"type": "integer"}));
    let mut tool = any_args_tool("http://127.0.0.1:9", None);
    tool["input_schema"] = json!({"$defs": defs, "$ref": "#/$defs/d0"});
    let (s, r) = put(&c, &t.admin, "/v1/tools/slow", tool).await;
    assert_eq!(s, 400, "{r}");
    assert!(r["error"]["message"].as_str().unwrap().contains("the limit is 1000"), "{r}");
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connectors_follow_no_redirect_and_keep_a_bounded_answer() {
    let (_dir, stack, c, t) = setup().await;
    let url = service().await;
    assert_eq!(put(&c, &t.admin, "/v1/tools/redirected", any_args_tool(&url, Some("redirect"))).await.0, 200);
    assert_eq!(put(&c, &t.admin, "/v1/tools/big", any_args_tool(&url, Some("big"))).await.0, 200);
    let (s, r) = c.call("POST", "/v1/actions", &t.member, Some(json!({"tool": "redirected", "args": {}, "idempotency_key": "r1"}))).await.unwrap();
    assert_eq!(s, 201, "{r}");
    let preview = r["preview"]["dry_run"].to_string();
    assert!(!preview.contains("internal secret") && preview.contains("303"), "{preview}");
    let (s, r) = c.call("POST", "/v1/actions", &t.member, Some(json!({"tool": "big", "args": {}, "idempotency_key": "b1"}))).await.unwrap();
    assert_eq!(s, 201);
    assert_eq!(r["preview"]["dry_run"]["truncated"], true);
    assert!(r.to_string().len() < 64 * 1024, "the action record keeps {} bytes", r.to_string().len());
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writing_a_document_takes_what_reading_it_takes() {
    let (_dir, stack, c, t) = setup().await;
    let secret = json!({"text": "The finance plan is secret.", "acl": {"groups": ["finance"]}});
    assert_eq!(put(&c, &t.admin, "/v1/documents/plan", secret.clone()).await.0, 200);
    // The member (group staff) cannot read it, so cannot confirm, replace or delete it either.
    assert_eq!(c.call("GET", "/v1/documents/plan", &t.member, None).await.unwrap().0, 404);
    let (s, r) = put(&c, &t.member, "/v1/documents/plan", secret).await;
    assert_eq!(s, 404, "an unchanged put would confirm the content: {r}");
    assert_eq!(put(&c, &t.member, "/v1/documents/plan", json!({"text": "gone"})).await.0, 404);
    assert_eq!(c.call("DELETE", "/v1/documents/plan", &t.member, None).await.unwrap().0, 404);
    // The tenant admin may write it; the delete finds it, so none of the member's writes landed.
    let (s, r) = c.call("DELETE", "/v1/documents/plan", &t.admin, None).await.unwrap();
    assert_eq!((s, r["deleted"].as_bool()), (200, Some(true)), "{r}");
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn feed_cursors_reveal_nothing_and_serve_only_their_principal() {
    let (_dir, stack, c, t) = setup().await;
    for id in ["hidden-merger-zeta", "hidden-layoffs-q3"] {
        assert_eq!(put(&c, &t.admin, &format!("/v1/documents/{id}"), json!({"text": "x", "acl": {"groups": ["board"]}})).await.0, 200);
    }
    assert_eq!(put(&c, &t.member, "/v1/documents/public-faq", json!({"text": "Refunds take five days."})).await.0, 200);
    let (s, page) = c.call("GET", "/v1/changes?since=2000-01-01T00:00:00Z&limit=2", &t.member, None).await.unwrap();
    assert_eq!(s, 200, "{page}");
    assert_eq!(page["changes"], json!([]), "the first two changes are hidden: {page}");
    let cursor = page["cursor"].as_str().unwrap().to_string();
    assert!(!cursor.contains("hidden") && !cursor.contains("CHANGE"), "{cursor}");
    let (_, next) = c.call("GET", &format!("/v1/changes?cursor={cursor}"), &t.member, None).await.unwrap();
    assert_eq!(next["changes"][0]["doc_id"], "public-faq", "{next}");
    // Another principal cannot use it, and a made-up one is refused.
    assert_eq!(c.call("GET", &format!("/v1/changes?cursor={cursor}"), &t.approver, None).await.unwrap().0, 400);
    let forged = "CHANGE%232000-01-01T00:00:00.000000Z%23a";
    assert_eq!(c.call("GET", &format!("/v1/changes?cursor={forged}"), &t.member, None).await.unwrap().0, 400);
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn decisions_and_exports_are_for_admins_and_auditors_and_each_principal_sees_its_own() {
    let (dir, stack, c, t) = setup().await;
    let key = |who: &str, role: &str| json!({"principal": who, "roles": [role]});
    let (_, dan) = c.call("POST", "/v1/tenants/acme/keys", &t.admin, Some(key("dan", "member"))).await.unwrap();
    let (s, audra) = c.call("POST", "/v1/tenants/acme/keys", &t.admin, Some(key("audra", "auditor"))).await.unwrap();
    assert_eq!(s, 201, "{audra}");
    let (dan, audra) = (dan["key"].as_str().unwrap().to_string(), audra["key"].as_str().unwrap().to_string());
    let (_, ask) = c.call("POST", "/v1/ask", &t.member, Some(json!({"question": "What is my salary review about?"}))).await.unwrap();
    assert!(stack.settle(Duration::from_secs(10)).await);
    let path = format!("/v1/decisions/{}", ask["decision_id"].as_str().unwrap());
    assert_eq!(c.call("GET", &path, &t.member, None).await.unwrap().0, 200, "ann's own decision");
    assert_eq!(c.call("GET", &path, &dan, None).await.unwrap().0, 404, "another member's");
    assert_eq!(c.call("GET", &path, &t.approver, None).await.unwrap().0, 404);
    assert_eq!(c.call("GET", &path, &audra, None).await.unwrap().0, 200);
    assert_eq!(c.call("GET", &path, &t.admin, None).await.unwrap().0, 200);
    for member in [&t.member, &dan, &t.approver] {
        assert_eq!(c.call("GET", "/v1/audit/export", member, None).await.unwrap().0, 403);
    }
    let (s, export) = c.call("GET", "/v1/audit/export", &audra, None).await.unwrap();
    assert_eq!(s, 200);
    assert!(export.as_str().unwrap().contains("salary review"));
    // An export is a read: it leaves no copy of the chain behind (full blocks are archived once, elsewhere).
    for _ in 0..3 {
        assert_eq!(c.call("GET", "/v1/audit/export", &t.admin, None).await.unwrap().0, 200);
    }
    assert_eq!(keel_tests::files_under(dir.path()).iter().filter(|p| p.to_string_lossy().contains("export")).count(), 0);
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metered_amounts_are_finite_non_negative_and_bounded() {
    let (_dir, stack, c, t) = setup().await;
    let url = service().await;
    let mut tool = any_args_tool(&url, None);
    tool["metered_arg"] = json!("amount");
    assert_eq!(put(&c, &t.admin, "/v1/tools/pay", tool).await.0, 200);
    let cap = "@id(\"cap\") forbid (principal, action == Keel::Action::\"propose\", resource) when { context.today.total.greaterThan(decimal(\"100.0\")) };";
    assert_eq!(put(&c, &t.admin, "/v1/policies/enforced", json!({"policies": cap})).await.0, 200);
    let propose = |amount: Value, key: &str| json!({"tool": "pay", "args": {"amount": amount}, "idempotency_key": key});
    for (i, amount) in [json!(-8.99e14), json!(-1), json!(1e15), json!("5")].into_iter().enumerate() {
        let (s, r) = c.call("POST", "/v1/actions", &t.member, Some(propose(amount, &format!("bad-{i}")))).await.unwrap();
        assert_eq!((s, r["error"]["path"].as_str()), (422, Some("/amount")), "{r}");
    }
    // The daily total was not lowered: the cap still holds.
    assert_eq!(c.call("POST", "/v1/actions", &t.member, Some(propose(json!(90), "ok-1"))).await.unwrap().0, 201);
    let (s, r) = c.call("POST", "/v1/actions", &t.member, Some(propose(json!(20), "ok-2"))).await.unwrap();
    assert_eq!(s, 403, "{r}");
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenant_settings_are_checked_on_create_and_on_update() {
    let (_dir, stack, c, _t) = setup().await;
    let admin = keel_tests::ADMIN_KEY;
    for bad in [json!({"rate_limit_per_minute": 0}), json!({"rate_limit_per_minute": -5}), json!({"routing": {"cache_ttl_secs": i64::MAX}})] {
        let mut body = json!({"id": "zed", "name": "Zed"});
        body.as_object_mut().unwrap().extend(bad.as_object().unwrap().clone());
        assert_eq!(c.call("POST", "/v1/tenants", admin, Some(body.clone())).await.unwrap().0, 400, "{body}");
        assert_eq!(c.call("PATCH", "/v1/tenants/acme", admin, Some(bad.clone())).await.unwrap().0, 400, "{bad}");
    }
    let budgets = json!({"budgets": {"workflows": {"support": 5.0}, "default_workflow": "sales"}});
    assert_eq!(c.call("PATCH", "/v1/tenants/acme", admin, Some(budgets)).await.unwrap().0, 400);
    stack.stop().await;
}

/// The routes of `template.yaml` that take a body (POST, PUT, PATCH), with
/// their path parameters filled in.
fn body_routes() -> Vec<(String, String)> {
    let template = include_str!("../../template.yaml");
    let mut routes = Vec::new();
    let mut method = None;
    for line in template.lines().map(str::trim) {
        if let Some(m) = line.strip_prefix("Method: ") {
            method = Some(m.to_string());
        } else if let (Some(p), Some(m)) = (line.strip_prefix("Path: "), method.take()) {
            if matches!(m.as_str(), "POST" | "PUT" | "PATCH") {
                let path = p.replace("{mode}", "shadow").replace("{verb}", "approve").replace("{id}", "acme");
                routes.push((m, path.replace(['{', '}'], "")));
            }
        }
    }
    routes
}

/// Routes that read no body: the path and the caller decide.
const BODILESS: [&str; 3] = ["/v1/actions/acme/approve", "/v1/audit/verify", "/v1/tenants/acme/change-requests/request_id/approve"];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_that_reads_a_body_refuses_one_too_deep_or_too_large() {
    let (_dir, stack, _c, t) = setup().await;
    let http = reqwest::Client::new();
    let routes = body_routes();
    assert!(routes.len() >= 12, "{routes:?}");
    let deep = format!("{{\"x\": {}1{}}}", "[".repeat(40), "]".repeat(40));
    let large = format!("{{\"x\": \"{}\"}}", "a".repeat(3 << 20));
    for (method, path) in routes.iter().filter(|(_, p)| !BODILESS.contains(&p.as_str())) {
        let key = if path.starts_with("/v1/tenants") { keel_tests::ADMIN_KEY } else { t.admin.as_str() };
        for (body, wanted, says) in [(&deep, 400, "the limit is 32"), (&large, 413, "limit")] {
            let response = http
                .request(method.parse().unwrap(), format!("{}{path}", stack.url()))
                .bearer_auth(key)
                .body(body.clone())
                .send()
                .await
                .unwrap();
            let status = response.status().as_u16();
            let text = response.text().await.unwrap();
            assert_eq!(status, wanted, "{method} {path}: {text}");
            assert!(text.contains(says), "{method} {path}: {text}");
        }
    }
    stack.stop().await;
}

async fn note_status(c: &Client, key: &str) -> u16 {
    c.call("GET", "/v1/documents/note", key, None).await.unwrap().0
}

/// An S3 notification's shape, as a forger would write it.
fn s3_notice(event: &str, key: &str) -> String {
    json!({"Records": [{"eventSource": "aws:s3", "eventName": event, "s3": {"bucket": {"name": "keel"}, "object": {"key": key}}}]}).to_string()
}

/// A body shaped like an S3 `ObjectRemoved` notice, with no key at all, on
/// the ingest queue deleted another tenant's HR-only document. S3 notices
/// now come only from the inbox queue (the bucket's; the local stack's
/// inbox watcher), and even there a removal deletes only a document that
/// came from that very inbox object, once the object is really gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_s3_notice_deletes_nothing_and_only_the_inbox_drives_inbox_documents() {
    use keel_core::ports::{QueueName, Table, WorkQueue};
    let (dir, stack, c, t) = setup().await;
    let hr = json!({"text": "Salaries of the HR team.", "acl": {"groups": ["hr"]}});
    assert_eq!(put(&c, &t.admin, "/v1/documents/salaries", hr).await.0, 200);
    let forged = s3_notice("ObjectRemoved:Delete", "tenants/acme/inbox/salaries.json");
    stack.queue.send(QueueName::Ingest, forged.clone(), Default::default()).await.unwrap();
    assert!(stack.settle(Duration::from_secs(10)).await);
    let stored = || async { stack.table.get("T#acme", "DOC#salaries").await.unwrap().is_some() };
    assert!(stored().await, "the forged notice deleted the document");
    let rejected = stack.queue.rejections(QueueName::Ingest).unwrap();
    assert!(rejected.iter().any(|(body, why)| *body == forged && why.contains("inbox queue")), "{rejected:?}");

    // Even on the inbox queue, a removal of a document that never came from the inbox deletes nothing.
    stack.queue.send(QueueName::Inbox, forged, Default::default()).await.unwrap();
    assert!(stack.settle(Duration::from_secs(10)).await);
    assert!(stored().await, "a removal deleted a document that did not come from the inbox");

    // A file dropped into the inbox is ingested and, once removed, deleted; a notice of its removal while it is still there is not.
    let inbox = dir.path().join("blobs/tenants/acme/inbox");
    std::fs::create_dir_all(&inbox).unwrap();
    std::fs::write(inbox.join("note.txt"), "The parking garage closes at nine.").unwrap();
    for _ in 0..200 {
        if note_status(&c, &t.admin).await == 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(note_status(&c, &t.admin).await, 200, "the inbox watcher's notice ingested the file");
    stack.queue.send(QueueName::Inbox, s3_notice("ObjectRemoved:Delete", "tenants/acme/inbox/note.txt"), Default::default()).await.unwrap();
    assert!(stack.settle(Duration::from_secs(10)).await);
    assert_eq!(note_status(&c, &t.admin).await, 200, "a removal notice for an object still there deleted it");
    std::fs::remove_file(inbox.join("note.txt")).unwrap();
    for _ in 0..200 {
        if note_status(&c, &t.admin).await == 404 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(note_status(&c, &t.admin).await, 404, "the file's removal deleted its document");
    stack.stop().await;
}
