//! `keel-bench cold-start`: each function binary's init, as Lambda times it:
//! from exec until the runtime's first request to the Runtime API's
//! `invocation/next`. A local Runtime API on loopback answers the internal
//! extension's registration and holds every `next` open; the binary is
//! killed once it asked. Every AWS endpoint points at a closed port, so an
//! init that called AWS would show. For the functions with the embedding
//! model it also times when the model is ready (its "embedder loaded" log
//! line, with the load's phases). Runs alternate the functions.

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use keel_tests::percentile;
use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

const FUNCTIONS: [&str; 5] = ["keel-auth", "keel-tools", "keel-audit", "keel-retrieval", "keel-routing"];

/// The Runtime API's side: tells the bench when the runtime first asked for work.
async fn local_runtime_api() -> (String, mpsc::UnboundedReceiver<Instant>) {
    let (asked, receive) = mpsc::unbounded_channel::<Instant>();
    let hold = || async {
        tokio::time::sleep(Duration::from_secs(3600)).await;
        StatusCode::NO_CONTENT
    };
    let app = axum::Router::new()
        .route(
            "/2018-06-01/runtime/invocation/next",
            get(|State(asked): State<mpsc::UnboundedSender<Instant>>| async move {
                let _ = asked.send(Instant::now());
                tokio::time::sleep(Duration::from_secs(3600)).await;
                StatusCode::NO_CONTENT
            }),
        )
        .route(
            "/2020-01-01/extension/register",
            post(|| async {
                let mut headers = HeaderMap::new();
                headers.insert("lambda-extension-identifier", "bench-extension".parse().unwrap());
                (headers, axum::Json(serde_json::json!({"functionName": "bench", "functionVersion": "$LATEST", "handler": "bootstrap"})))
            }),
        )
        .route("/2020-01-01/extension/event/next", get(hold))
        .route(
            "/2018-06-01/runtime/init/error",
            post(|body: String| async move {
                eprintln!("init error: {body}");
                StatusCode::ACCEPTED.into_response()
            }),
        )
        .with_state(asked);
    let addr = keel_tests::serve_on_loopback(app).await;
    (addr.to_string(), receive)
}

/// One start: init time, and when the model was ready (with its phases) where it loads one.
struct Start {
    init: Duration,
    model_ready: Option<Duration>,
    phases: Option<String>,
}

async fn start_once(binary: &Path, model: Option<&Path>) -> Start {
    let (api, mut asked) = local_runtime_api().await;
    let mut command = Command::new(binary);
    command
        .env_clear()
        .env("AWS_LAMBDA_RUNTIME_API", &api)
        .env("AWS_LAMBDA_FUNCTION_NAME", binary.file_name().unwrap())
        .env("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "1769")
        .env("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST")
        .env("AWS_REGION", "us-east-1")
        .env("AWS_ACCESS_KEY_ID", "bench")
        .env("AWS_SECRET_ACCESS_KEY", "bench")
        // A closed port: an init that called AWS would fail, not wait.
        .env("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
        .env("KEEL_ADMIN_KEY", keel_tests::ADMIN_KEY)
        .env("KEEL_TABLE", "keel")
        .env("KEEL_BUCKET", "keel")
        .env("KEEL_SAGA_ARN", "arn:aws:states:us-east-1:123456789012:stateMachine:keel")
        .env("KEEL_MODEL_DIR", "")
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    for queue in ["INGEST", "AUDIT", "ACTIONS"] {
        command.env(format!("KEEL_{queue}_QUEUE_URL"), "http://127.0.0.1:9/q").env(format!("KEEL_{queue}_DLQ_URL"), "http://127.0.0.1:9/dlq");
    }
    if let Some(root) = model {
        let files = keel_ml::EmbedderConfig::fetched(root, 1);
        command.env("KEEL_MODEL_DIR", files.model_dir).env("ORT_DYLIB_PATH", files.runtime_library);
    }
    let started = Instant::now();
    let mut child = command.spawn().unwrap_or_else(|e| panic!("{}: {e}", binary.display()));
    let stdout = child.stdout.take().unwrap();
    // The model's log line arrives on stdout, maybe after the runtime asked for work.
    let (logged, mut ready) = mpsc::unbounded_channel::<(Instant, String)>();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines().map_while(Result::ok) {
            if line.contains("embedder loaded") {
                let _ = logged.send((Instant::now(), line));
            }
        }
    });
    let init = tokio::time::timeout(Duration::from_secs(30), asked.recv()).await.ok().flatten().map(|at| at - started);
    let mut model_ready = None;
    let mut phases = None;
    if model.is_some() && init.is_some() {
        if let Ok(Some((at, line))) = tokio::time::timeout(Duration::from_secs(30), ready.recv()).await {
            model_ready = Some(at - started);
            phases = Some(phase_summary(&line));
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    Start { init: init.unwrap_or_else(|| panic!("{} never asked for an invocation", binary.display())), model_ready, phases }
}

/// "runtime 12 ms, session 80 ms, …" from the embedder's log line.
fn phase_summary(line: &str) -> String {
    let json: serde_json::Value = serde_json::from_str(line).unwrap_or_default();
    let fields = &json["fields"];
    ["runtime_ms", "session_ms", "tokenizer_ms", "first_embedding_ms"]
        .iter()
        .map(|k| format!("{} {:.0} ms", k.trim_end_matches("_ms").replace('_', " "), fields[k].as_f64().unwrap_or(f64::NAN)))
        .collect::<Vec<_>>()
        .join(", ")
}

pub async fn run(runs: usize) {
    let bin_dir = PathBuf::from(std::env::var("KEEL_BIN_DIR").unwrap_or_else(|_| format!("{}/../target/release", env!("CARGO_MANIFEST_DIR"))));
    let models = keel_tests::models_dir();
    let mut cases: Vec<(&str, Option<&Path>)> = FUNCTIONS.iter().map(|f| (*f, None)).collect();
    if models.join("minilm/model.onnx").is_file() {
        cases.extend([("keel-retrieval", Some(models.as_path())), ("keel-routing", Some(models.as_path()))]);
    } else {
        eprintln!("no model under {} (scripts/fetch-models.sh): timing the functions without it only", models.display());
    }
    let mut starts: Vec<Vec<Start>> = cases.iter().map(|_| Vec::new()).collect();
    for run in 0..=runs {
        for (i, (function, model)) in cases.iter().enumerate() {
            let start = start_once(&bin_dir.join(function), *model).await;
            // The first round warms the page cache.
            if run > 0 {
                starts[i].push(start);
            }
        }
    }
    println!("| function | binary | init p50 | init p90 | model ready p50 | the model's load (last run) |");
    println!("|---|---|---|---|---|---|");
    for ((function, model), starts) in cases.iter().zip(&starts) {
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        let mut init: Vec<f64> = starts.iter().map(|s| ms(s.init)).collect();
        init.sort_by(f64::total_cmp);
        let mut ready: Vec<f64> = starts.iter().filter_map(|s| s.model_ready.map(ms)).collect();
        ready.sort_by(f64::total_cmp);
        let size = std::fs::metadata(bin_dir.join(function)).map(|m| m.len() as f64 / 1e6).unwrap_or(f64::NAN);
        let name = if model.is_some() { format!("{function} (with the model)") } else { function.to_string() };
        let ready = if ready.is_empty() { "-".to_string() } else { format!("{:.0} ms", percentile(&ready, 0.5)) };
        let phases = starts.last().and_then(|s| s.phases.clone()).unwrap_or_else(|| "-".into());
        println!("| {name} | {size:.1} MB | {:.0} ms | {:.0} ms | {ready} | {phases} |", percentile(&init, 0.5), percentile(&init, 0.9));
    }
}
