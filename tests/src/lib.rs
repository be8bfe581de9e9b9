//! Helpers for Keel's end-to-end and contract tests (test-only code).
#![allow(clippy::expect_used, clippy::unwrap_used)]

pub mod aws;
pub mod aws_path;
pub mod latency;
pub mod gateway;
pub mod idp;
pub mod stub;

use keel_core::config::Config;
use keel_emulator::{Stack, StackOptions};
use serde_json::{json, Value};
use std::path::Path;
use std::time::Duration;

pub use keel_emulator::demo::Client;

pub const ADMIN_KEY: &str = "keel_admin_test_0123456789abcdef";

/// The tests' config; `extra` entries override the defaults below.
pub fn config(extra: &[(&str, &str)]) -> Config {
    let extra: Vec<(String, String)> = extra.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    // scripts/fetch-models.sh (run by the test script) puts the model here.
    let model = keel_ml::EmbedderConfig::fetched(&models_dir(), 1);
    let default = |k: &str| match k {
        "KEEL_ADMIN_KEY" => Some(ADMIN_KEY.into()),
        "KEEL_TENANT_CACHE_SECS" => Some("0".into()),
        // Stub connectors and identity providers listen on loopback.
        "KEEL_EGRESS_ALLOW" => Some("127.0.0.0/8".into()),
        "KEEL_MODEL_DIR" => Some(model.model_dir.display().to_string()),
        "ORT_DYLIB_PATH" => Some(model.runtime_library.display().to_string()),
        _ => None,
    };
    Config::from_lookup(|k| extra.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone()).or_else(|| default(k)))
        .expect("test config")
}

pub fn models_dir() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../.models")
}

/// A local stack on an ephemeral loopback port with fast retries.
pub async fn start_stack(dir: &Path, config: Config) -> Stack {
    Stack::start(stack_options(dir, config)).await.expect("stack starts")
}

/// The options `start_stack` uses, for a test that changes one.
pub fn stack_options(dir: &Path, config: Config) -> StackOptions {
    StackOptions {
        data_dir: dir.to_path_buf(),
        port: 0,
        retry_interval_scale: 0.01,
        queue_visibility: Duration::from_millis(100),
        max_receives: 3,
        routing: fast_routing(&config),
        tools: fast_tools(&config),
        tools_queue: None,
        config,
    }
}

/// The gateway's settings with millisecond retries and a breaker that opens
/// after 3 failures and half-opens after 300 ms.
pub fn fast_routing(config: &Config) -> keel_routing::RoutingOptions {
    keel_routing::RoutingOptions {
        retry: keel_routing::resilience::RetryPolicy {
            attempts: 3,
            base: Duration::from_millis(1),
            cap: Duration::from_millis(5),
        },
        breakers: keel_routing::resilience::BreakerSettings { failures_to_open: 3, cool_down: Duration::from_millis(300) },
        ..keel_routing::RoutingOptions::from_config(config)
    }
}

/// The tools function's settings with millisecond connector retries and a
/// breaker that opens after 3 failures and half-opens after 300 ms.
pub fn fast_tools(config: &Config) -> keel_tools::ToolsOptions {
    keel_tools::ToolsOptions {
        connector_retry: keel_core::resilience::RetryPolicy { attempts: 2, base: Duration::from_millis(1), cap: Duration::from_millis(5) },
        connector_breakers: keel_core::resilience::BreakerSettings { failures_to_open: 3, cool_down: Duration::from_millis(300) },
        ..keel_tools::ToolsOptions::from_config(config)
    }
}

/// Keys of a new tenant's three principals (all in group `staff`).
pub struct Tenant {
    pub member: String,
    pub approver: String,
    pub admin: String,
}

/// Creates a tenant (with `extra` fields) and keys for ann (member), bob
/// (approver) and carol (admin).
pub async fn tenant(c: &Client, id: &str, extra: Value) -> Tenant {
    let mut body = json!({"id": id, "name": id});
    if let (Some(b), Some(e)) = (body.as_object_mut(), extra.as_object()) {
        b.extend(e.clone());
    }
    let (s, r) = c.call("POST", "/v1/tenants", ADMIN_KEY, Some(body)).await.unwrap();
    assert_eq!(s, 201, "{r}");
    let mut keys = Vec::new();
    for (who, role) in [("ann", "member"), ("bob", "approver"), ("carol", "admin")] {
        let (s, k) = c
            .call("POST", &format!("/v1/tenants/{id}/keys"), ADMIN_KEY,
                Some(json!({"principal": who, "roles": [role], "attributes": {"groups": ["staff"]}})))
            .await
            .unwrap();
        assert_eq!(s, 201, "{k}");
        keys.push(k["key"].as_str().unwrap().to_string());
    }
    Tenant { member: keys[0].clone(), approver: keys[1].clone(), admin: keys[2].clone() }
}

pub use keel_core::stats::percentile;

/// Serves `app` on a free loopback port for the rest of the test; its address.
pub async fn serve_on_loopback(app: axum::Router) -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("a loopback port");
    let addr = listener.local_addr().expect("its address");
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            eprintln!("test server on {addr} stopped: {e}");
        }
    });
    addr
}

/// A connector on loopback that answers `{"ok": true}` to anything and
/// records the path of every call; its base URL and the paths.
pub async fn recording_connector() -> (String, std::sync::Arc<std::sync::Mutex<Vec<String>>>) {
    let calls: std::sync::Arc<std::sync::Mutex<Vec<String>>> = Default::default();
    let seen = calls.clone();
    let app = axum::Router::new().fallback(move |req: axum::extract::Request| {
        let seen = seen.clone();
        async move {
            seen.lock().unwrap_or_else(std::sync::PoisonError::into_inner).push(req.uri().path().to_string());
            axum::Json(json!({"ok": true}))
        }
    });
    (format!("http://{}", serve_on_loopback(app).await), calls)
}

/// The audit chain's entries for `decision_id`, from the tenant's export, in order.
pub async fn decision_entries(c: &Client, key: &str, decision_id: &str) -> Vec<Value> {
    let (s, export) = c.call("GET", "/v1/audit/export", key, None).await.expect("the local API answers");
    assert_eq!(s, 200, "{export}");
    export
        .as_str()
        .expect("the export is JSON lines")
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).expect("each export line is a chain entry"))
        .filter(|e| e["event"]["decision_id"] == decision_id)
        .collect()
}

/// A member of `tenant` without groups, as the authorizer would pass it in.
pub fn member(tenant: &str, principal: &str) -> keel_core::auth::Caller {
    keel_core::auth::Caller {
        tenant: Some(keel_core::TenantId::parse(tenant).expect("tenant id")),
        principal: principal.into(),
        roles: vec!["member".into()],
        groups: vec![],
        incarnation: None,
        credential: Default::default(),
    }
}

/// A public data set under `../shared/evaldata/<name>` (next to the clone),
/// or `None` with a message saying the test skips: a clone that stands
/// anywhere else still passes its tests.
pub fn evaldata(name: &str) -> Option<std::path::PathBuf> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/evaldata").join(name);
    if dir.is_dir() {
        Some(dir)
    } else {
        eprintln!("skipping: {} is absent (the evaluation data sets stand in ../shared next to the clone)", dir.display());
        None
    }
}

/// Every file under `dir`, at any depth (none when `dir` is missing).
pub fn files_under(dir: &Path) -> Vec<std::path::PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else { return vec![] };
    let mut found = Vec::new();
    for path in entries.filter_map(Result::ok).map(|e| e.path()) {
        if path.is_dir() {
            found.extend(files_under(&path));
        } else {
            found.push(path);
        }
    }
    found
}

/// Every file under `dir` whose bytes contain `needle` (what a store kept, read from disk).
pub fn files_containing(dir: &Path, needle: &str) -> Vec<std::path::PathBuf> {
    files_under(dir)
        .into_iter()
        .filter(|path| std::fs::read(path).is_ok_and(|bytes| bytes.windows(needle.len()).any(|w| w == needle.as_bytes())))
        .collect()
}

/// Waits, if need be, until at least `needed` is left of the current UTC
/// minute: a tenant's rate limit counts per minute, so a test that spends
/// one must not straddle two.
pub async fn inside_one_minute(needed: Duration) {
    loop {
        let into = Duration::from_millis((chrono::Utc::now().timestamp_millis() % 60_000) as u64);
        if into + needed < Duration::from_secs(60) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// The audit chain's entries for `decision_id`, polled until their event
/// kinds are `kinds`: the saga records an action's outcome just after its
/// status shows it, so a settled queue alone does not yet mean it is there.
#[allow(clippy::panic)] // test-only code: a chain never reached fails the test
pub async fn wait_for_events(c: &Client, key: &str, decision_id: &str, kinds: &[&str]) -> Vec<Value> {
    let mut last = Vec::new();
    for _ in 0..400 {
        last = decision_entries(c, key, decision_id).await;
        if last.iter().map(|e| e["event"]["kind"].as_str().unwrap_or_default()).eq(kinds.iter().copied()) {
            return last;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let seen: Vec<&Value> = last.iter().map(|e| &e["event"]["kind"]).collect();
    panic!("the chain of {decision_id} never became {kinds:?}: {seen:?}");
}

/// Polls an action until its status is `status`; the action as it then is.
#[allow(clippy::panic)] // test-only code: a status never reached fails the test
pub async fn wait_for_action(c: &Client, key: &str, id: &str, status: &str) -> Value {
    let mut last = Value::Null;
    for _ in 0..400 {
        let (s, a) = c.call("GET", &format!("/v1/actions/{id}"), key, None).await.expect("the local API answers");
        assert_eq!(s, 200, "{a}");
        if a["status"] == status {
            return a;
        }
        last = a;
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("action {id} never became {status}: {last}");
}
