//! `keel-local demo`: walks the whole path against a running local stack,
//! printing each step, and fails loudly if any step does not do what it should.

use keel_core::KeelError;
use serde_json::{json, Value};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// A small HTTP client for the local API.
pub struct Client {
    base: String,
    http: reqwest::Client,
}

impl Client {
    pub fn new(base: impl Into<String>) -> Self {
        Self { base: base.into(), http: reqwest::Client::new() }
    }

    /// Sends a request; returns (status, the JSON body, or any other body as a JSON string).
    pub async fn call(&self, method: &str, path: &str, key: &str, body: Option<Value>) -> Result<(u16, Value), KeelError> {
        let (status, _, body) = self.call_with_headers(method, path, key, body, &[]).await?;
        Ok((status, body))
    }

    /// `call` with extra request headers; the response's headers come back too.
    pub async fn call_with_headers(
        &self,
        method: &str,
        path: &str,
        key: &str,
        body: Option<Value>,
        headers: &[(&str, &str)],
    ) -> Result<(u16, reqwest::header::HeaderMap, Value), KeelError> {
        let method = reqwest::Method::from_bytes(method.as_bytes()).map_err(|e| KeelError::BadRequest(e.to_string()))?;
        let mut req = self.http.request(method, format!("{}{path}", self.base)).bearer_auth(key);
        for (name, value) in headers {
            req = req.header(*name, *value);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.map_err(|e| KeelError::Unavailable(e.to_string()))?;
        let status = resp.status().as_u16();
        let response_headers = resp.headers().clone();
        let is_json = response_headers
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("application/json"));
        let text = resp.text().await.map_err(|e| KeelError::Unavailable(e.to_string()))?;
        let body = if is_json { serde_json::from_str(&text).unwrap_or(Value::String(text)) } else { Value::String(text) };
        Ok((status, response_headers, body))
    }
}

/// The demo's stand-in for a customer's system: records every call it gets.
pub struct Connector {
    pub url: String,
    pub calls: Arc<Mutex<Vec<(String, String)>>>,
}

/// Starts a refund endpoint on loopback: `POST /refunds` and `POST /refunds/cancel`.
pub async fn start_connector() -> Result<Connector, KeelError> {
    let calls: Arc<Mutex<Vec<(String, String)>>> = Arc::default();
    let recorded = calls.clone();
    let app = axum::Router::new().fallback(move |req: axum::extract::Request| {
        let recorded = recorded.clone();
        async move {
            let key = req.headers().get("idempotency-key").and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
            let path = req.uri().path().to_string();
            if let Ok(mut c) = recorded.lock() {
                c.push((path.clone(), key.clone()));
            }
            axum::Json(json!({"ok": true, "path": path, "idempotency_key": key}))
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| KeelError::Internal(e.to_string()))?;
    let addr = listener.local_addr().map_err(|e| KeelError::Internal(e.to_string()))?;
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Ok(Connector { url: format!("http://{addr}"), calls })
}

fn step(n: &mut u32, text: &str) {
    *n += 1;
    println!("\n[{n:>2}] {text}");
}

fn expect(status: u16, wanted: u16, body: &Value, what: &str) -> Result<(), KeelError> {
    if status == wanted {
        Ok(())
    } else {
        Err(KeelError::Internal(format!("{what}: expected HTTP {wanted}, got {status}: {body}")))
    }
}

/// The first `n` characters of a JSON string, for display.
fn head(v: &Value, n: usize) -> String {
    v.as_str().unwrap_or("").chars().take(n).collect()
}

fn show(v: &Value) -> String {
    serde_json::to_string_pretty(v).unwrap_or_default().lines().map(|l| format!("     {l}")).collect::<Vec<_>>().join("\n")
}

/// Polls an action until it reaches `status`.
async fn wait_for(client: &Client, key: &str, action_id: &str, status: &str) -> Result<Value, KeelError> {
    for _ in 0..200 {
        let (_, a) = client.call("GET", &format!("/v1/actions/{action_id}"), key, None).await?;
        if a["status"] == status {
            return Ok(a);
        }
        if a["status"] == "failed" {
            return Err(KeelError::Internal(format!("action failed: {}", a["error"])));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Err(KeelError::Internal(format!("action {action_id} never reached {status}")))
}

/// The demo tenant's principals, to sign in to the console with afterwards.
pub struct DemoKeys {
    pub tenant: String,
    pub member: String,
    pub approver: String,
    pub admin: String,
}

/// Walks the demo flow. `settle` waits for the audit queue to drain.
pub async fn run<F, Fut>(client: &Client, admin_key: &str, settle: F) -> Result<DemoKeys, KeelError>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let mut demo = Demo { client, n: 0, tenant: format!("demo-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]) };
    let keys = demo.tenant_and_keys(admin_key).await?;
    let (ann, bob, carol) = (&keys[0], &keys[1], &keys[2]);
    demo.documents_and_answers(ann).await?;
    demo.labels_and_ranking(ann).await?;
    demo.governed_action(ann, bob, carol).await?;
    if !settle().await {
        return Err(KeelError::Internal("the audit queue did not drain".into()));
    }
    demo.audit(ann, carol).await?;
    demo.pending_for_the_console(ann).await?;
    println!("\nDemo complete.");
    Ok(DemoKeys { tenant: demo.tenant.clone(), member: ann.clone(), approver: bob.clone(), admin: carol.clone() })
}

/// The demo's client, its tenant and the number of the step it is at.
struct Demo<'a> {
    client: &'a Client,
    n: u32,
    tenant: String,
}

impl Demo<'_> {
    fn step(&mut self, what: &str) {
        step(&mut self.n, what);
    }

    /// A tenant, and keys for ann (member), bob (approver) and carol (admin).
    async fn tenant_and_keys(&mut self, admin_key: &str) -> Result<Vec<String>, KeelError> {
        let tenant = self.tenant.clone();
        self.step(&format!("Platform admin creates tenant {tenant}"));
        let (s, t) = self
            .client
            .call("POST", "/v1/tenants", admin_key, Some(json!({"id": tenant, "name": "Demo Co", "plan": "pro"})))
            .await?;
        expect(s, 201, &t, "create tenant")?;
        println!("     status={} autonomy={} rate_limit_per_minute={}", t["status"], t["autonomy"], t["rate_limit_per_minute"]);

        self.step("Keys for three principals: ann (member), bob (approver), carol (admin)");
        let mut keys = Vec::new();
        for (who, roles) in [("ann", json!(["member"])), ("bob", json!(["approver"])), ("carol", json!(["admin"]))] {
            let body = json!({"principal": who, "roles": roles, "attributes": {"groups": ["staff"]}});
            let (s, k) = self.client.call("POST", &format!("/v1/tenants/{tenant}/keys"), admin_key, Some(body)).await?;
            expect(s, 201, &k, "create key")?;
            println!("     {who}: {}… (shown once, stored as a hash)", head(&k["key"], 20));
            keys.push(k["key"].as_str().unwrap_or_default().to_string());
        }
        Ok(keys)
    }

    /// Documents, search, a cited answer and a refusal.
    async fn documents_and_answers(&mut self, ann: &str) -> Result<(), KeelError> {
        self.step("ann puts three documents");
        let docs = [
            ("refund-policy", "Refund policy", "Refunds are paid back to the original card within 5 business days. \
              A refund needs the order number. Refunds over 500 euros need a manager's approval."),
            ("shipping", "Shipping", "Orders ship within 2 days from our Lisbon warehouse. \
              Express shipping costs 15 euros and arrives the next day."),
            ("security", "Security handbook", "Staff rotate their passwords every 90 days. \
              Laptops use full-disk encryption."),
        ];
        for (id, title, text) in docs {
            let (s, r) = self
            .client
                .call("PUT", &format!("/v1/documents/{id}"), ann, Some(json!({"title": title, "text": text, "acl": {"groups": ["staff"]}})))
                .await?;
            expect(s, 200, &r, "put document")?;
            println!("     {id}: version {} with {} chunk(s)", r["version"], r["chunks"]);
        }

        self.step("ann searches for \"refund card\"");
        let (s, r) = self.client.call("POST", "/v1/search", ann, Some(json!({"query": "refund card", "k": 3}))).await?;
        expect(s, 200, &r, "search")?;
        for hit in r["results"].as_array().into_iter().flatten() {
            println!("     {} score={:.3} anchor=[{}..{}]", hit["chunk_id"], hit["score"].as_f64().unwrap_or(0.0), hit["anchor"]["start"], hit["anchor"]["end"]);
        }

        self.step("ann asks: How many days until refunds are paid back to the card?");
        let (s, a) = self
            .client
            .call("POST", "/v1/ask", ann, Some(json!({"question": "How many days until refunds are paid back to the card?"})))
            .await?;
        expect(s, 200, &a, "ask")?;
        if a["refused"] != false || a["citations"].as_array().is_none_or(|c| c.is_empty()) {
            return Err(KeelError::Internal(format!("expected a cited answer, got {a}")));
        }
        println!("     answer: {}\n     citations: {}  tier={} cost={}", a["answer"], a["citations"], a["tier"], a["cost"]);
        println!("     route: {}", a["route"]);

        self.step("ann asks something the documents do not cover: What is the boiling point of mercury?");
        let (s, a) = self
            .client
            .call("POST", "/v1/ask", ann, Some(json!({"question": "What is the boiling point of mercury?"})))
            .await?;
        expect(s, 200, &a, "ask")?;
        if a["refused"] != true {
            return Err(KeelError::Internal(format!("expected a refusal, got {a}")));
        }
        println!("     refused: {}", a["reason"]);

        Ok(())
    }

    /// A support message labelled and two passages ranked, in-function.
    async fn labels_and_ranking(&mut self, ann: &str) -> Result<(), KeelError> {
        self.step("ann triages a support message in-function (POST /v1/classify), then ranks two passages (POST /v1/rank)");
        let labels = json!(["account", {"name": "billing", "description": "payments, invoices and refunds",
            "examples": ["Why is there a second charge on my card?"]}, "shipping"]);
        let body = json!({"text": "I was charged twice for the same order", "labels": labels});
        let (s, l) = self.client.call("POST", "/v1/classify", ann, Some(body)).await?;
        expect(s, 200, &l, "classify")?;
        if l["label"] != "billing" {
            return Err(KeelError::Internal(format!("expected the billing label, got {l}")));
        }
        println!("     label={} confidence={:.2} tier={} model={} cost={}", l["label"], l["confidence"].as_f64().unwrap_or(0.0), l["tier"], l["model"], l["cost"]);
        let body = json!({"query": "reset my password", "documents": ["Parcels ship in two days.", "Open Settings, then choose Forgot password."]});
        let (s, r) = self.client.call("POST", "/v1/rank", ann, Some(body)).await?;
        expect(s, 200, &r, "rank")?;
        println!("     ranking: {}", r["results"]);
        Ok(())
    }

    /// One more proposal, left waiting in bob's approvals inbox.
    async fn pending_for_the_console(&mut self, ann: &str) -> Result<(), KeelError> {
        self.step("ann proposes one more refund; it waits for bob in the console's approvals inbox");
        let proposal = json!({"tool": "issue_refund", "args": {"order_id": "A-1002", "amount": 19.0}, "idempotency_key": format!("refund-A-1002-{}", self.tenant)});
        let (s, p) = self.client.call("POST", "/v1/actions", ann, Some(proposal)).await?;
        expect(s, 201, &p, "propose")?;
        println!("     {}: status={}", p["action_id"].as_str().unwrap_or_default(), p["status"]);
        Ok(())
    }

    /// A tool, a proposal, a refused self-approval, an approval, the saga, an undo.
    async fn governed_action(&mut self, ann: &str, bob: &str, carol: &str) -> Result<(), KeelError> {
        let tenant = self.tenant.clone();
        self.step("Start a refund service on loopback; carol registers the issue_refund tool (high risk, undoable)");
        let connector = start_connector().await?;
        let tool = json!({
            "description": "Refund an order to the original card",
            "input_schema": {"type": "object", "required": ["order_id", "amount"], "additionalProperties": false,
                "properties": {"order_id": {"type": "string"}, "amount": {"type": "number", "exclusiveMinimum": 0, "maximum": 1000}}},
            "connector": {"url": format!("{}/refunds", connector.url)},
            "compensation": {"url": format!("{}/refunds/cancel", connector.url)},
            "risk": "high"
        });
        let (s, r) = self.client.call("PUT", "/v1/tools/issue_refund", carol, Some(tool)).await?;
        expect(s, 200, &r, "register tool")?;
        println!("     issue_refund v{} reversible={} connector={}", r["version"], r["reversible"], r["steps"][0]["connector"]["url"]);

        self.step("ann proposes a refund of 42.50 for order A-1001");
        let proposal = json!({"tool": "issue_refund", "args": {"order_id": "A-1001", "amount": 42.5}, "idempotency_key": format!("refund-A-1001-{tenant}")});
        let (s, p) = self.client.call("POST", "/v1/actions", ann, Some(proposal)).await?;
        expect(s, 201, &p, "propose")?;
        let action_id = p["action_id"].as_str().unwrap_or_default().to_string();
        println!("     {action_id}: status={}\n     preview:\n{}", p["status"], show(&p["preview"]));

        self.step("ann tries to approve her own action (maker-checker says no)");
        let (s, r) = self.client.call("POST", &format!("/v1/actions/{action_id}/approve"), ann, None).await?;
        expect(s, 403, &r, "self-approval")?;
        println!("     HTTP 403: {}", r["error"]["message"]);

        self.step("bob approves; the saga, waiting on its task token, executes it through the connector");
        let (s, r) = self.client.call("POST", &format!("/v1/actions/{action_id}/approve"), bob, None).await?;
        expect(s, 200, &r, "approve")?;
        let done = wait_for(self.client, ann, &action_id, "executed").await?;
        println!("     executed: {}", done["steps"][0]["outcome"]);

        self.step("ann undoes it; the saga runs the compensation once");
        let (s, r) = self.client.call("POST", &format!("/v1/actions/{action_id}/undo"), ann, None).await?;
        expect(s, 200, &r, "undo")?;
        let undone = wait_for(self.client, ann, &action_id, "undone").await?;
        println!("     undone: {}", undone["steps"][0]["compensation"]);
        let calls = connector.calls.lock().map(|c| c.clone()).unwrap_or_default();
        println!("     the refund service saw: {calls:?}");
        Ok(())
    }

    /// The export (an admin's; a member's is refused) and the chain's verification.
    async fn audit(&mut self, ann: &str, carol: &str) -> Result<(), KeelError> {
        self.step("carol (admin) exports the audit log (JSON Lines); members may not");
        let (s, refused) = self.client.call("GET", "/v1/audit/export", ann, None).await?;
        expect(s, 403, &refused, "a member's export")?;
        let (s, export) = self.client.call("GET", "/v1/audit/export", carol, None).await?;
        expect(s, 200, &export, "export")?;
        let lines: Vec<&str> = export.as_str().unwrap_or("").lines().collect();
        for line in &lines {
            let e: Value = serde_json::from_str(line).unwrap_or(Value::Null);
            println!("     #{} {:<22} by {:<6} hash {}…", e["seq"], e["event"]["kind"].as_str().unwrap_or(""), e["event"]["principal"].as_str().unwrap_or(""), head(&e["hash"], 12));
        }

        self.step("carol verifies the hash chain (members may not)");
        let (s, v) = self.client.call("POST", "/v1/audit/verify", carol, None).await?;
        expect(s, 200, &v, "verify")?;
        if v["ok"] != true {
            return Err(KeelError::Internal(format!("chain verification failed: {v}")));
        }
        println!("     ok={} entries={} head={}", v["ok"], v["entries"], v["head"]);
        Ok(())
    }
}
