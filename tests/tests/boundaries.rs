// Test-only code: helpers outside #[test] functions may unwrap and panic too.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

//! Every route of the route table, walked with credentials that must not
//! reach tenant acme's data: none, a forged key, a revoked key, an expired
//! key, another tenant's key and another tenant's JWT; then acme's own
//! member on the routes its role does not open, and past its ACL. The
//! routes come from the functions' declarations, so a new route is walked
//! by construction.

use keel_core::access::{Access, Party, TenantRole};
use keel_core::jwt::{sign_jwt, JwtClaims};
use keel_emulator::demo::start_connector;
use keel_tests::{config, start_stack, tenant, Client, ADMIN_KEY};
use serde_json::{json, Value};
use std::time::Duration;

const JWT_SECRET: &str = "boundary-test-secret-0123456789";
const ISSUER: &str = "https://idp.boundaries.test";
/// Words only acme's documents hold: seen in an answer, they leaked.
const ACME_MARKER: &str = "zebracorn";
const FINANCE_MARKER: &str = "griffinwort";
/// What the walk asks: words of acme's documents, but not their markers,
/// so that a marker in an answer can only have come from acme.
const QUESTION: &str = "What grazes at dawn in the ledger?";

/// What acme holds for the walk to aim at.
struct Targets {
    doc: String,
    tool: String,
    action: String,
    decision: String,
    key_id: String,
    idempotency_key: String,
    /// The request id acme's ask was sent with.
    request_id: String,
}

impl Targets {
    /// A concrete request for a declared route: its path with acme's ids, and a body that parses.
    fn request(&self, method: &str, path: &str) -> (String, Option<Value>) {
        let concrete = path
            .replace("{id}/keys", "acme/keys")
            .replace("/v1/tenants/{id}", "/v1/tenants/acme")
            .replace("/v1/actions/{id}", &format!("/v1/actions/{}", self.action))
            .replace("/v1/decisions/{id}", &format!("/v1/decisions/{}", self.decision))
            .replace("{key_id}", &self.key_id)
            .replace("{request_id}", "chg_none")
            .replace("{doc_id}", &self.doc)
            .replace("/v1/tools/{name}", &format!("/v1/tools/{}", self.tool))
            .replace("/v1/sources/{name}", "/v1/sources/wiki")
            .replace("{mode}", "enforced")
            .replace("{verb}", "approve");
        assert!(!concrete.contains('{'), "no target for {path}: add one");
        let query = match path {
            "/v1/actions" if method == "GET" => format!("?idempotency_key={}", self.idempotency_key),
            "/v1/changes" => "?since=2000-01-01T00:00:00Z".into(),
            "/v1/decisions" => format!("?request_id={}", self.request_id),
            _ => String::new(),
        };
        (format!("{concrete}{query}"), body(method, path, &self.tool))
    }
}

fn body(method: &str, path: &str, tool: &str) -> Option<Value> {
    let b = match (method, path) {
        ("GET" | "DELETE", _) => return None,
        (_, "/v1/tenants") => json!({"id": "mallory", "name": "Mallory"}),
        (_, "/v1/tenants/{id}") => json!({"kill_switch": true, "rate_limit_per_minute": 1}),
        (_, "/v1/tenants/{id}/keys") => json!({"principal": "mallory", "roles": ["admin"]}),
        (_, "/v1/tenants/{id}/keys/{key_id}/rotate") => json!({"grace_seconds": 0}),
        (_, "/v1/documents/{doc_id}") => json!({"text": "Overwritten by mallory."}),
        (_, "/v1/search") => json!({"query": QUESTION}),
        (_, "/v1/sources/{name}") => json!({"freshness_sla_seconds": 1}),
        (_, "/v1/ask") => json!({"question": QUESTION}),
        (_, "/v1/chat/completions") => json!({"model": "auto", "messages": [{"role": "user", "content": QUESTION}]}),
        (_, "/v1/classify") => json!({"text": QUESTION, "labels": ["animal", "plant"]}),
        (_, "/v1/rank") => json!({"query": QUESTION, "documents": ["a", "b"]}),
        (_, "/v1/tools/{name}") => json!({"description": "hijacked", "risk": "low", "input_schema": {}, "connector": {"url": "http://127.0.0.1:9/x"}}),
        (_, "/v1/alerts/webhook") => json!({"url": "http://127.0.0.1:9/hook"}),
        (_, "/v1/policies/{mode}") => json!({"policies": "@id(\"all\") permit(principal, action, resource);"}),
        (_, "/v1/actions") => json!({"tool": tool, "args": {"order_id": "M-1", "amount": 1}, "idempotency_key": "mallory-1"}),
        _ => json!({}),
    };
    Some(b)
}

/// Acme's state as its admin and the platform admin see it, to compare before and after.
async fn acme_state(c: &Client, admin: &str, t: &Targets) -> Vec<Value> {
    let mut state = Vec::new();
    for (key, path) in [
        (ADMIN_KEY, "/v1/tenants/acme".to_string()),
        (ADMIN_KEY, "/v1/tenants/acme/keys".to_string()),
        (admin, format!("/v1/documents/{}", t.doc)),
        (admin, format!("/v1/tools/{}", t.tool)),
        (admin, "/v1/policies".to_string()),
        (admin, format!("/v1/actions/{}", t.action)),
    ] {
        let (s, mut b) = c.call("GET", &path, key, None).await.unwrap();
        // Reading a key records its last use; that is not a change of state.
        if let Some(keys) = b["keys"].as_array_mut() {
            keys.iter_mut().for_each(|k| k["last_used_at"] = Value::Null);
        }
        state.push(json!({"path": path, "status": s, "body": b}));
    }
    state
}

async fn create_key(c: &Client, by: &str, body: Value) -> Value {
    let (s, k) = c.call("POST", "/v1/tenants/acme/keys", by, Some(body)).await.unwrap();
    assert_eq!(s, 201, "{k}");
    k
}

/// Acme with a document per ACL, a tool, a pending action and a decision.
async fn acme(c: &Client, t: &keel_tests::Tenant) -> Targets {
    let connector = start_connector().await.unwrap();
    let doc = |text: String, groups: Value| json!({"text": text, "acl": {"groups": groups}});
    let (s, _) = c.call("PUT", "/v1/documents/herd", &t.admin, Some(doc(format!("A {ACME_MARKER} grazes at dawn."), json!([])))).await.unwrap();
    assert_eq!(s, 200);
    let (s, _) = c.call("PUT", "/v1/documents/ledger", &t.admin, Some(doc(format!("The {FINANCE_MARKER} ledger."), json!(["finance"])))).await.unwrap();
    assert_eq!(s, 200);
    let tool = json!({"description": "refund", "risk": "high", "input_schema": {}, "connector": {"url": format!("{}/refunds", connector.url)},
        "compensation": {"url": format!("{}/refunds/cancel", connector.url)}});
    let (s, b) = c.call("PUT", "/v1/tools/refund", &t.admin, Some(tool)).await.unwrap();
    assert_eq!(s, 200, "{b}");
    let proposal = json!({"tool": "refund", "args": {"order_id": "A-1", "amount": 5}, "idempotency_key": "acme-1"});
    let (s, action) = c.call("POST", "/v1/actions", &t.member, Some(proposal)).await.unwrap();
    assert!(s == 200 || s == 201 || s == 202, "{s} {action}");
    let question = json!({"question": format!("What does a {ACME_MARKER} do?")});
    let (_, _, ask) = c.call_with_headers("POST", "/v1/ask", &t.member, Some(question), &[("x-request-id", "acme-ask-1")]).await.unwrap();
    let (_, keys) = c.call("GET", "/v1/tenants/acme/keys", &t.admin, None).await.unwrap();
    Targets {
        doc: "herd".into(),
        tool: "refund".into(),
        action: action["action_id"].as_str().unwrap().to_string(),
        decision: ask["decision_id"].as_str().unwrap().to_string(),
        key_id: keys["keys"][0]["id"].as_str().unwrap().to_string(),
        idempotency_key: "acme-1".into(),
        request_id: "acme-ask-1".into(),
    }
}

fn beta_jwt() -> String {
    let claims = JwtClaims {
        sub: "mallory".into(), iss: ISSUER.into(), aud: json!("keel"), exp: keel_core::time::now_secs() + 600, nbf: None,
        tenant: "beta".into(), roles: vec!["admin".into(), "auditor".into(), "approver".into()], groups: vec!["finance".into()],
    };
    sign_jwt(&claims, JWT_SECRET).unwrap()
}

#[tokio::test]
async fn no_credential_of_another_party_reaches_acme_on_any_route() {
    let dir = tempfile::tempdir().unwrap();
    let settings = [("KEEL_JWT_SECRET", JWT_SECRET), ("KEEL_JWT_ISSUER", ISSUER), ("KEEL_DEFAULT_RATE_LIMIT", "100000")];
    let stack = start_stack(dir.path(), config(&settings)).await;
    let c = Client::new(stack.url());
    let t = tenant(&c, "acme", json!({})).await;
    let beta = tenant(&c, "beta", json!({})).await;
    let beta_idp = keel_tests::idp::TestIdp::start().await;
    let beta_signer = keel_tests::idp::SigningKey::ed25519("beta-1");
    beta_idp.publish(&[&beta_signer]);
    let (s, b) = c.call("PATCH", "/v1/tenants/beta", ADMIN_KEY, Some(json!({"identity": beta_idp.identity("keel-beta")}))).await.unwrap();
    assert_eq!(s, 200, "{b}");
    let beta_provider_token = beta_signer.sign(&beta_idp.claims("mallory", "keel-beta", &["admin", "auditor", "approver"]));
    let targets = acme(&c, &t).await;
    let revoked = create_key(&c, &t.admin, json!({"principal": "gone", "roles": ["admin"]})).await;
    let (s, _) = c.call("DELETE", &format!("/v1/tenants/acme/keys/{}", revoked["id"].as_str().unwrap()), &t.admin, None).await.unwrap();
    assert_eq!(s, 200);
    let soon = (chrono::Utc::now() + chrono::Duration::seconds(1)).to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let expired = create_key(&c, &t.admin, json!({"principal": "late", "roles": ["admin"], "expires_at": soon})).await;
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    assert!(stack.settle(Duration::from_secs(10)).await);
    let before = acme_state(&c, &t.admin, &targets).await;
    let secrets: Vec<String> = [&t.member, &t.approver, &t.admin].iter().map(|k| k[k.len() - 16..].to_string()).collect();

    let strangers: [(&str, String, &[u16]); 7] = [
        ("no credentials", String::new(), &[401]),
        ("a forged key", "keel_acme_ForgedForgedForgedForged0".into(), &[401]),
        ("a revoked key", revoked["key"].as_str().unwrap().into(), &[401]),
        ("an expired key", expired["key"].as_str().unwrap().into(), &[401]),
        ("another tenant's admin key", beta.admin.clone(), &[]),
        ("another tenant's JWT", beta_jwt(), &[]),
        ("a token of another tenant's identity provider", beta_provider_token, &[]),
    ];
    let routes = credentialed_routes();
    assert!(routes.len() > 25, "{routes:?}");
    for (who, key, only) in &strangers {
        for (_, method, path) in &routes {
            let (url, body) = targets.request(method, path);
            let sent = format!("{url} {}", body.as_ref().map(Value::to_string).unwrap_or_default());
            let (s, b) = c.call(method, &url, key, body).await.unwrap();
            let text = b.to_string();
            // What the caller sent may come back (an error naming the id it asked for); nothing else of acme's may.
            let leaked = [ACME_MARKER, FINANCE_MARKER, &targets.action, &targets.decision, &targets.key_id]
                .into_iter()
                .chain(secrets.iter().map(String::as_str))
                .find(|m| text.contains(m) && !sent.contains(m));
            assert!(leaked.is_none(), "{who} on {method} {path}: {s} shows acme's {leaked:?}: {text}");
            assert!(only.is_empty() || only.contains(&s), "{who} on {method} {path}: {s} {text}");
            assert!(s != 500, "{who} on {method} {path}: {text}");
        }
    }
    assert!(stack.settle(Duration::from_secs(10)).await);
    assert_eq!(acme_state(&c, &t.admin, &targets).await, before, "a stranger changed acme");
    stack.stop().await;
}

/// Every declared route but the console's page and scripts, which hold no data and need no credentials.
fn credentialed_routes() -> Vec<(&'static str, String, String)> {
    let public = keel_emulator::public_routes();
    keel_emulator::declared_routes().into_iter().filter(|(_, m, p)| !public.contains(&(m.clone(), p.clone()))).collect()
}

/// The access a route declares (every route declares one: `openapi.rs`).
fn access_of(method: &str, path: &str) -> Access {
    keel_emulator::route_access()
        .into_iter()
        .find(|(m, p, _)| m == method && p == path)
        .and_then(|(_, _, a)| a)
        .map(|(a, _)| a)
        .unwrap_or_else(|| panic!("{method} {path} declares no access"))
}

/// Whether a member gets 403 on a route whatever it sends: the route's
/// declaration refuses it, or (approving) the default policies do.
fn refused_to_a_member(method: &str, path: &str) -> bool {
    !access_of(method, path).admits_party(Party::Tenant(TenantRole::Member)) || (method, path) == ("POST", "/v1/actions/{id}/{verb}")
}

/// Every route walked with each party (the platform admin, and a principal
/// of each tenant role): a party the route's declaration does not admit gets
/// the router's 403 and changes nothing; one it admits never gets that
/// refusal on a read.
#[tokio::test]
async fn every_route_answers_each_party_as_its_declaration_says() {
    let dir = tempfile::tempdir().unwrap();
    let stack = start_stack(dir.path(), config(&[("KEEL_DEFAULT_RATE_LIMIT", "100000")])).await;
    let c = Client::new(stack.url());
    let t = tenant(&c, "acme", json!({})).await;
    let targets = acme(&c, &t).await;
    let auditor = create_key(&c, ADMIN_KEY, json!({"principal": "audra", "roles": ["auditor"]})).await["key"].as_str().unwrap().to_string();
    assert!(stack.settle(Duration::from_secs(10)).await);
    let before = acme_state(&c, &t.admin, &targets).await;
    let key_of = |party: Party| -> &str {
        match party {
            Party::PlatformAdmin => ADMIN_KEY,
            Party::Tenant(TenantRole::Admin) => &t.admin,
            Party::Tenant(TenantRole::Approver) => &t.approver,
            Party::Tenant(TenantRole::Member) => &t.member,
            Party::Tenant(TenantRole::Auditor) => &auditor,
        }
    };
    let mut refused = 0;
    for (_, method, path) in credentialed_routes() {
        let access = access_of(&method, &path);
        for party in Party::ALL {
            let (url, body) = targets.request(&method, &path);
            let admitted = access.admits_party(party);
            if admitted && method != "GET" {
                continue;
            }
            let (s, b) = c.call(&method, &url, key_of(party), body).await.unwrap();
            let router_refused = s == 403 && b["error"]["message"].as_str().is_some_and(|m| m.starts_with("this route"));
            assert_eq!(router_refused, !admitted, "the {} on {method} {path}: {s} {b}", party.name());
            refused += usize::from(!admitted);
        }
    }
    assert!(refused > 40, "{refused}");
    assert!(stack.settle(Duration::from_secs(10)).await);
    assert_eq!(acme_state(&c, &t.admin, &targets).await, before, "a refused party changed acme");
    stack.stop().await;
}

#[tokio::test]
async fn a_member_is_held_to_its_role_and_its_groups_on_every_route() {
    let dir = tempfile::tempdir().unwrap();
    let stack = start_stack(dir.path(), config(&[("KEEL_DEFAULT_RATE_LIMIT", "100000")])).await;
    let c = Client::new(stack.url());
    let t = tenant(&c, "acme", json!({})).await;
    let targets = acme(&c, &t).await;
    assert!(stack.settle(Duration::from_secs(10)).await);
    let before = acme_state(&c, &t.admin, &targets).await;
    for (_, method, path) in credentialed_routes() {
        let (url, body) = targets.request(&method, &path);
        let (s, b) = c.call(&method, &url, &t.member, body).await.unwrap();
        let text = b.to_string();
        assert!(!text.contains(FINANCE_MARKER), "{method} {path} shows a document outside the member's groups: {text}");
        if refused_to_a_member(&method, &path) {
            assert_eq!(s, 403, "a member on {method} {path}: {text}");
        } else {
            assert!(s != 500 && s != 401, "a member on {method} {path}: {s} {text}");
        }
    }
    // The document it wrote over and deleted was its own to write; nothing only an admin may change moved.
    let after = acme_state(&c, &t.admin, &targets).await;
    for (b, a) in before.iter().zip(&after).filter(|(b, _)| b["path"] != "/v1/documents/herd") {
        assert_eq!(b, a, "a member changed what only an admin may");
    }
    let (s, _) = c.call("GET", "/v1/documents/ledger", &t.member, None).await.unwrap();
    assert_eq!(s, 404, "a document outside the member's groups does not exist for it");
    stack.stop().await;
}

/// `GET /v1/actions/{id}` and `?idempotency_key=` (guessable, client-chosen)
/// gave any member another principal's arguments, preview and connector
/// answer, and `GET /v1/tools` showed every principal the connectors' URLs.
/// Actions now follow one rule (approvers, admins and auditors read every
/// action; others their own proposals) and connector settings are admins'.
#[tokio::test]
async fn another_principals_action_and_the_connectors_settings_stay_hidden() {
    let dir = tempfile::tempdir().unwrap();
    let stack = start_stack(dir.path(), config(&[("KEEL_DEFAULT_RATE_LIMIT", "100000")])).await;
    let c = Client::new(stack.url());
    let t = tenant(&c, "acme", json!({})).await;
    let targets = acme(&c, &t).await;
    let erin = create_key(&c, ADMIN_KEY, json!({"principal": "erin", "roles": ["member"]})).await["key"].as_str().unwrap().to_string();
    let by_id = format!("/v1/actions/{}", targets.action);
    let by_key = format!("/v1/actions?idempotency_key={}", targets.idempotency_key);
    for path in [&by_id, &by_key] {
        let (s, b) = c.call("GET", path, &erin, None).await.unwrap();
        assert_eq!(s, 404, "another member read ann's action: {b}");
        assert!(!b.to_string().contains("A-1"), "{b}");
        for owner_or_reviewer in [&t.member, &t.approver, &t.admin] {
            let (s, b) = c.call("GET", path, owner_or_reviewer, None).await.unwrap();
            assert_eq!((s, b["args"]["order_id"].as_str()), (200, Some("A-1")), "{b}");
        }
    }
    let url_of = |b: &Value| b.to_string().contains("/refunds");
    let (_, member_sees) = c.call("GET", "/v1/tools/refund", &t.member, None).await.unwrap();
    assert!(!url_of(&member_sees) && member_sees["input_schema"].is_object(), "{member_sees}");
    let (_, listed) = c.call("GET", "/v1/tools", &t.member, None).await.unwrap();
    assert!(!url_of(&listed) && listed["tools"][0]["name"] == "refund", "{listed}");
    let (_, admin_sees) = c.call("GET", "/v1/tools/refund", &t.admin, None).await.unwrap();
    assert!(url_of(&admin_sees), "{admin_sees}");
    stack.stop().await;
}
