// Test-only code: helpers outside #[test] functions may unwrap and panic too.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

//! The console in a real browser: Debian's headless `chromium`, driven by
//! `playwright-core` (tests/browser/console.mjs) against the local stack.
//! This file prepares the tenant, runs each user's part and checks what the
//! connector and the API saw between them. Where node, playwright-core or
//! chromium is missing it skips, saying so, unless KEEL_REQUIRE_BROWSER is
//! set (scripts/test.sh sets it after installing them).

use keel_tests::{config, serve_on_loopback, start_stack, tenant, Client, Tenant};
use serde_json::json;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// chromium and the driver, or why the test cannot run here.
fn browser() -> Result<PathBuf, String> {
    let chromium = std::env::var_os("KEEL_CHROMIUM").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("/usr/bin/chromium"));
    if !chromium.exists() {
        return Err(format!("{} is absent (apt-get install chromium, or set KEEL_CHROMIUM)", chromium.display()));
    }
    if !repo().join("tests/browser/node_modules/playwright-core").is_dir() {
        return Err("tests/browser/node_modules is absent (npm ci --prefix tests/browser)".into());
    }
    if std::process::Command::new("node").arg("--version").output().is_err() {
        return Err("node is absent".into());
    }
    Ok(chromium)
}

/// A refund service on loopback: a dry run with the order's state before and
/// after, the refund, and its compensation, each call counted.
async fn refund_service() -> (String, Arc<AtomicUsize>, Arc<AtomicUsize>) {
    let (refunds, undos) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let (r, u) = (refunds.clone(), undos.clone());
    let app = axum::Router::new().fallback(move |req: axum::extract::Request| {
        let (r, u) = (r.clone(), u.clone());
        async move {
            let path = req.uri().path().to_string();
            let body: serde_json::Value = serde_json::from_slice(&axum::body::to_bytes(req.into_body(), 1 << 20).await.unwrap()).unwrap();
            let amount = body["args"]["amount"].as_f64().unwrap_or(0.0);
            axum::Json(match path.as_str() {
                "/dry-run" => json!({"before": {"balance": 100.0, "status": "paid"}, "after": {"balance": 100.0 - amount, "status": "refunded"}}),
                "/refund/undo" => {
                    u.fetch_add(1, Ordering::SeqCst);
                    json!({"reversed": true})
                }
                _ => {
                    r.fetch_add(1, Ordering::SeqCst);
                    json!({"refund_id": "rf_1", "amount": amount})
                }
            })
        }
    });
    (format!("http://{}", serve_on_loopback(app).await), refunds, undos)
}

async fn prepare(c: &Client, url: &str) -> Tenant {
    let t = tenant(c, "acme", json!({})).await;
    let (s, _) = c.call("PUT", "/v1/documents/refunds", &t.admin, Some(json!({"text": "Refunds are paid within 5 business days of approval."}))).await.unwrap();
    assert_eq!(s, 200);
    let tool = json!({"description": "Refund an order", "risk": "high",
        "input_schema": {"type": "object", "required": ["order_id", "amount"], "properties": {"order_id": {"type": "string"}, "amount": {"type": "number"}}},
        "connector": {"url": format!("{url}/refund")}, "compensation": {"url": format!("{url}/refund/undo")}, "dry_run": {"url": format!("{url}/dry-run")}});
    let (s, b) = c.call("PUT", "/v1/tools/refund", &t.admin, Some(tool)).await.unwrap();
    assert_eq!(s, 200, "{b}");
    // An approver who also proposes: her own proposal waits for someone else.
    let body = json!({"principal": "erin", "roles": ["member", "approver"], "attributes": {"groups": ["staff"]}});
    let (s, k) = c.call("POST", "/v1/tenants/acme/keys", &t.admin, Some(body)).await.unwrap();
    assert_eq!(s, 201, "{k}");
    let erin = k["key"].as_str().unwrap().to_string();
    propose(c, &erin, "erin-own").await;
    Tenant { approver: erin, ..t }
}

async fn propose(c: &Client, key: &str, idempotency_key: &str) {
    let body = json!({"tool": "refund", "args": {"order_id": idempotency_key, "amount": 5}, "idempotency_key": idempotency_key});
    let (s, a) = c.call("POST", "/v1/actions", key, Some(body)).await.unwrap();
    assert_eq!((s, a["status"].as_str()), (201, Some("pending_approval")), "{a}");
}

fn run_phase(phase: &str, chromium: &Path, url: &str, t: &Tenant, shots: &Path) {
    let out = std::process::Command::new("node")
        .arg(repo().join("tests/browser/console.mjs"))
        .env("KEEL_PHASE", phase)
        .env("KEEL_URL", url)
        .env("KEEL_CHROMIUM", chromium)
        .env("KEEL_MEMBER_KEY", &t.member)
        .env("KEEL_APPROVER_KEY", &t.approver)
        .env("KEEL_ADMIN_KEY", &t.admin)
        .env("KEEL_SCREENSHOTS", shots)
        .output()
        .unwrap();
    assert!(out.status.success(), "browser phase {phase} failed:\n{}\n{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_approvers_and_admins_do_their_work_in_the_console() {
    let chromium = match browser() {
        Ok(path) => path,
        Err(why) if std::env::var_os("KEEL_REQUIRE_BROWSER").is_none() => return eprintln!("skipping the browser tests: {why}"),
        Err(why) => panic!("KEEL_REQUIRE_BROWSER is set but {why}"),
    };
    let dir = tempfile::tempdir().unwrap();
    let stack = start_stack(dir.path(), config(&[])).await;
    let c = Client::new(stack.url());
    let (service, refunds, undos) = refund_service().await;
    let t = prepare(&c, &service).await;
    assert!(stack.settle(Duration::from_secs(10)).await);
    let shots = repo().join(".tools/screenshots");
    let _ = std::fs::remove_dir_all(&shots);
    std::fs::create_dir_all(&shots).unwrap();
    let url = stack.url().to_string();
    let phase = |name: &'static str| {
        let (chromium, url, t, shots) = (chromium.clone(), url.clone(), Tenant { member: t.member.clone(), approver: t.approver.clone(), admin: t.admin.clone() }, shots.clone());
        tokio::task::spawn_blocking(move || run_phase(name, &chromium, &url, &t, &shots))
    };
    phase("member").await.unwrap();
    phase("approver").await.unwrap();
    assert!(stack.settle(Duration::from_secs(10)).await);
    assert_eq!((refunds.load(Ordering::SeqCst), undos.load(Ordering::SeqCst)), (1, 1), "the refund ran once and its compensation once");
    propose(&c, &t.member, "ann-second").await;
    phase("keyboard").await.unwrap();
    phase("admin").await.unwrap();
    let (_, me) = c.call("GET", "/v1/tenants/acme", &t.admin, None).await.unwrap();
    assert_eq!((me["kill_switch"].clone(), me["autonomy"].clone()), (json!(true), json!("suggest_only")));
    stack.stop().await;
}
