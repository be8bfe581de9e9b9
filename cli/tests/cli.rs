// Test-only code: helpers outside #[test] functions may unwrap and panic too.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

//! `keel` against the local stack, as an operator and a script use it: each
//! command group, `--json` output, and the exit code of each kind of failure.

use keel_core::ports::{QueueName, WorkQueue};
use keel_tests::{config, start_stack, ADMIN_KEY};
use serde_json::{json, Value};
use std::process::Output;

struct Keel {
    url: String,
}

impl Keel {
    fn run(&self, key: &str, args: &[&str]) -> Output {
        std::process::Command::new(env!("CARGO_BIN_EXE_keel"))
            .args(args)
            .env("KEEL_URL", &self.url)
            .env("KEEL_KEY", key)
            .output()
            .unwrap()
    }

    /// A command that must succeed; its stdout.
    fn ok(&self, key: &str, args: &[&str]) -> String {
        let out = self.run(key, args);
        assert!(out.status.success(), "keel {args:?}: {}\n{}", String::from_utf8_lossy(&out.stderr), String::from_utf8_lossy(&out.stdout));
        String::from_utf8(out.stdout).unwrap()
    }

    /// `--json` output of a command that must succeed.
    fn json(&self, key: &str, args: &[&str]) -> Value {
        let args: Vec<&str> = ["--json"].into_iter().chain(args.iter().copied()).collect();
        serde_json::from_str(&self.ok(key, &args)).unwrap()
    }

    /// The exit code and stderr of a command that must fail.
    fn fails(&self, key: &str, args: &[&str]) -> (i32, String) {
        let out = self.run(key, args);
        assert!(!out.status.success(), "keel {args:?} should fail: {}", String::from_utf8_lossy(&out.stdout));
        (out.status.code().unwrap(), String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f).await.unwrap()
}

#[test]
fn help_shows_examples_and_exit_codes() {
    let keel = Keel { url: "http://127.0.0.1:9".into() };
    let help = keel.ok("", &["--help"]);
    assert!(help.contains("Examples:") && help.contains("Exit codes:"), "{help}");
    let (code, err) = keel.fails("", &["tenants", "create"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--name"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_runs_a_tenant_from_the_command_line() {
    let dir = tempfile::tempdir().unwrap();
    let stack = start_stack(dir.path(), config(&[])).await;
    let keel = std::sync::Arc::new(Keel { url: stack.url().to_string() });
    let docs = tempfile::tempdir().unwrap();
    std::fs::write(docs.path().join("refunds.md"), "Refunds are paid within 5 business days.").unwrap();
    std::fs::write(docs.path().join("shipping.txt"), "Orders ship within 2 days.").unwrap();
    let tool = docs.path().join("tool.json");
    let connector = keel_tests::serve_on_loopback(axum::Router::new().fallback(|| async { axum::Json(json!({"ok": true})) })).await;
    std::fs::write(&tool, json!({"description": "refund", "risk": "high", "input_schema": {"type": "object"},
        "connector": {"url": format!("http://{connector}/refund")}}).to_string()).unwrap();
    let export = docs.path().join("audit.jsonl");
    let (k, docs_dir, tool, export2) = (keel.clone(), docs.path().to_path_buf(), tool.clone(), export.clone());
    let (member, approver) = blocking(move || {
        let keel = k;
        let created = keel.json(ADMIN_KEY, &["tenants", "create", "acme", "--name", "Acme"]);
        assert_eq!(created["id"], "acme");
        assert!(keel.ok(ADMIN_KEY, &["tenants", "show", "acme"]).contains("tenant acme (Acme)"));
        let patched = keel.json(ADMIN_KEY, &["tenants", "patch", "acme", r#"{"plan": "pro"}"#]);
        assert_eq!(patched["plan"], "pro");
        let (code, err) = keel.fails(ADMIN_KEY, &["tenants", "patch", "acme", "plan=pro"]);
        assert_eq!(code, 2, "{err}");
        let key = |principal: &str, role: &str| keel.json(ADMIN_KEY, &["keys", "create", "acme", principal, "--role", role, "--group", "staff"])["key"].as_str().unwrap().to_string();
        let (member, approver, admin) = (key("ann", "member"), key("bob", "approver"), key("carol", "admin"));
        let listed = keel.ok(&admin, &["keys", "list", "acme"]);
        assert!(listed.contains("ann") && listed.contains("carol"), "{listed}");
        assert!(keel.ok(&member, &["whoami"]).contains("ann of tenant acme"));
        // Documents from a folder, then search and ask.
        let put = keel.json(&admin, &["documents", "put", docs_dir.to_str().unwrap()]);
        let ids: Vec<&str> = put.as_array().unwrap().iter().map(|p| p["doc_id"].as_str().unwrap()).collect();
        assert_eq!(ids, ["refunds", "shipping", "tool"]);
        keel.ok(&admin, &["documents", "delete", "tool"]);
        keel.ok(&admin, &["tools", "put", "refund", tool.to_str().unwrap()]);
        assert!(keel.ok(&member, &["tools", "list"]).contains("refund"));
        assert!(keel.ok(&admin, &["policies", "show"]).contains("# enforced"));
        let (code, err) = keel.fails(&member, &["tools", "put", "refund", tool.to_str().unwrap()]);
        assert_eq!(code, 3, "a member may not register tools: {err}");
        let (code, err) = keel.fails(&member, &["audit", "export", export2.to_str().unwrap()]);
        assert_eq!(code, 3, "{err}");
        // An admin's export verifies here, with no server and no key; a changed entry does not.
        keel.ok(&admin, &["audit", "export", export2.to_str().unwrap()]);
        let offline = |file: &std::path::Path| ["audit", "verify", "--offline", file.to_str().unwrap()].map(str::to_string);
        let verified = keel.json("", &offline(&export2).iter().map(String::as_str).collect::<Vec<_>>());
        assert!(verified["ok"] == true && verified["entries"].as_u64().unwrap() >= 5, "{verified}");
        let tampered = export2.with_file_name("tampered.jsonl");
        std::fs::write(&tampered, std::fs::read_to_string(&export2).unwrap().replacen("\"carol\"", "\"mallory\"", 1)).unwrap();
        let (code, err) = keel.fails("", &offline(&tampered).iter().map(String::as_str).collect::<Vec<_>>());
        assert!(code != 0 && err.contains("does NOT verify") && err.contains("modified"), "{err}");
        (member, approver)
    })
    .await;
    assert!(stack.settle(std::time::Duration::from_secs(10)).await);
    let k = keel.clone();
    let c = keel_tests::Client::new(stack.url());
    let (s, action) = c.call("POST", "/v1/actions", &member, Some(json!({"tool": "refund", "args": {}, "idempotency_key": "cli-1"}))).await.unwrap();
    assert_eq!(s, 201, "{action}");
    let action_id = action["action_id"].as_str().unwrap().to_string();
    blocking(move || {
        let keel = k;
        let hits = keel.ok(&member, &["documents", "search", "refunds paid"]);
        assert!(hits.starts_with("1. refunds"), "{hits}");
        let answer = keel.json(&member, &["ask", "How long do refunds take?"]);
        assert_eq!(answer["refused"], false, "{answer}");
        let inbox = keel.ok(&approver, &["actions", "list", "--status", "pending_approval"]);
        assert!(inbox.contains(&action_id), "{inbox}");
        let (code, err) = keel.fails(&member, &["actions", "approve", &action_id]);
        assert_eq!(code, 3, "the proposer cannot approve: {err}");
        let rejected = keel.json(&approver, &["actions", "reject", &action_id, "--reason", "not ours"]);
        assert_eq!((rejected["status"].as_str(), rejected["approvals"][0]["reason"].as_str()), (Some("rejected"), Some("not ours")));
        let (code, err) = keel.fails(&approver, &["actions", "approve", &action_id]);
        assert_eq!(code, 5, "{err}");
        let (code, err) = keel.fails(&approver, &["actions", "show", "act_missing"]);
        assert_eq!(code, 4, "{err}");
        assert!(keel.ok(&approver, &["audit", "verify"]).starts_with("the chain verifies"));
        let usage = keel.json(&approver, &["usage"]);
        assert!(usage["report"]["totals"]["requests"].as_i64().unwrap() >= 1, "{usage}");
        // Suspended: the tenant's keys stop at once.
        keel.ok(ADMIN_KEY, &["tenants", "suspend", "acme"]);
        let (code, err) = keel.fails(&member, &["whoami"]);
        assert_eq!(code, 3, "{err}");
    })
    .await;
    let _ = export;
    stack.stop().await;
}

#[test]
fn failures_name_their_cause_and_exit_accordingly() {
    let nowhere = Keel { url: "http://127.0.0.1:9".into() };
    let (code, err) = nowhere.fails("keel_x_key", &["whoami"]);
    assert_eq!(code, 7, "{err}");
    assert!(err.contains("cannot reach the API"), "{err}");
    let (code, err) = nowhere.fails("", &["whoami"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("KEEL_KEY"), "{err}");
    let (code, err) = nowhere.fails("k", &["--key-file", "/nonexistent/key", "whoami"]);
    assert_eq!(code, 2, "{err}");
}

#[tokio::test]
async fn dead_letters_of_the_local_stack_are_redriven_from_its_data_directory() {
    let dir = tempfile::tempdir().unwrap();
    let stack = start_stack(dir.path(), config(&[])).await;
    // An unsigned proposal is dead-lettered at once.
    stack.queue.send(QueueName::Actions, "{}".into(), Default::default()).await.unwrap();
    assert!(stack.settle(std::time::Duration::from_secs(10)).await);
    assert_eq!(stack.queue.dead_letters(QueueName::Actions).unwrap().len(), 1);
    stack.stop().await;
    let keel = Keel { url: "http://127.0.0.1:9".into() };
    let data_dir = dir.path().to_str().unwrap().to_string();
    let moved = blocking(move || keel.json("", &["dlq", "redrive", "actions", "--data-dir", &data_dir])).await;
    assert_eq!(moved, json!({"queue": "actions", "moved": 1}));
    let (code, err) = Keel { url: String::new() }.fails("", &["dlq", "redrive", "actions"]);
    assert_eq!(code, 2, "{err}");
}

#[tokio::test]
async fn dev_provisions_a_loopback_stand_in_and_prints_the_functions_environment() {
    let keel = Keel { url: String::new() };
    let (code, err) = keel.fails("", &["dev", "--endpoint", "https://dynamodb.us-east-1.amazonaws.com"]);
    assert_eq!(code, 2, "{err}");
    let Some(endpoint) = keel_tests::aws::moto() else { return };
    let prefix = format!("dev-{}", &uuid::Uuid::new_v4().simple().to_string()[..10]);
    let env = blocking(move || keel.ok("", &["dev", "--endpoint", &endpoint, "--prefix", &prefix])).await;
    for name in ["AWS_ENDPOINT_URL", "KEEL_TABLE", "KEEL_BUCKET", "KEEL_SAGA_ARN", "KEEL_INGEST_QUEUE_URL", "KEEL_ACTIONS_DLQ_URL", "KEEL_ADMIN_KEY"] {
        assert!(env.contains(&format!("export {name}=")), "{name} missing: {env}");
    }
}
