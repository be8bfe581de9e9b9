//! `keel-local serve|demo`: the local stack (see README.md).

use keel_core::config::Config;
use keel_core::ports::QueueName;
use keel_core::KeelError;
use keel_emulator::{demo, Stack, StackOptions};
use std::path::{Path, PathBuf};
use std::time::Duration;

const USAGE: &str = "usage: keel-local serve [--port N] [--data-dir DIR]\n       keel-local demo  [--data-dir DIR] [--exit]\n       keel-local openapi   (prints the OpenAPI document: > docs/openapi.json)\n       keel-local authorization   (prints who may call each route: > docs/authorization.md)
       keel-local redrive ingest|audit|actions [--data-dir DIR]";

fn main() -> std::process::ExitCode {
    tracing_subscriber_init();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("keel-local: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(std::env::args().skip(1).collect())) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("keel-local: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Logs to stderr; spans to stdout when `OTEL_TRACES_EXPORTER=console` (off by default).
fn tracing_subscriber_init() {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    use tracing_subscriber::Layer;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let logs = tracing_subscriber::fmt::layer().with_writer(std::io::stderr).with_filter(filter);
    // Spans at info, whatever the logs' level.
    let spans = keel_lambda::otel::from_env()
        .map(|provider| keel_lambda::otel::layer(provider).with_filter(tracing_subscriber::filter::LevelFilter::INFO));
    let _ = tracing_subscriber::registry().with(logs).with(spans).try_init();
}

async fn run(args: Vec<String>) -> Result<(), KeelError> {
    let mut port = 8080u16;
    let mut data_dir = PathBuf::from(".keel");
    let command = args.first().cloned().unwrap_or_default();
    // `redrive` names its queue before the flags.
    let queue = (command == "redrive").then(|| args.get(1).cloned().unwrap_or_default());
    let exit = args.iter().any(|a| a == "--exit");
    let mut rest = args.iter().skip(if queue.is_some() { 2 } else { 1 }).filter(|a| *a != "--exit");
    while let Some(flag) = rest.next() {
        let value = rest.next().ok_or_else(|| KeelError::BadRequest(format!("{flag} needs a value\n{USAGE}")))?;
        match flag.as_str() {
            "--port" => port = value.parse().map_err(|_| KeelError::BadRequest(format!("bad port {value:?}")))?,
            "--data-dir" => data_dir = PathBuf::from(value),
            _ => return Err(KeelError::BadRequest(format!("unknown flag {flag}\n{USAGE}"))),
        }
    }
    match command.as_str() {
        "serve" => {
            let stack = start(&data_dir, port).await?;
            println!("Keel local stack on {} (data in {})", stack.url(), data_dir.display());
            stack.run_until_ctrl_c().await;
            Ok(())
        }
        "authorization" => {
            print!("{}", keel_emulator::authorization_document());
            Ok(())
        }
        "openapi" => {
            print!("{}", keel_emulator::openapi_document());
            Ok(())
        }
        "demo" => {
            let stack = start(&data_dir, 0).await?;
            println!("Keel local stack on {} (data in {})", stack.url(), data_dir.display());
            let client = demo::Client::new(stack.url());
            let keys = match demo::run(&client, &stack.admin_key, || stack.settle(Duration::from_secs(10))).await {
                Ok(keys) => keys,
                Err(e) => {
                    stack.stop().await;
                    return Err(e);
                }
            };
            println!("\nThe console: {}/console (tenant {})", stack.url(), keys.tenant);
            println!("  sign in as bob (approver, a refund waits for him): {}", keys.approver);
            println!("  ann (member): {}\n  carol (admin): {}", keys.member, keys.admin);
            if exit {
                stack.stop().await;
            } else {
                println!("Serving until Ctrl-C (keel-local demo --exit stops here).");
                stack.run_until_ctrl_c().await;
            }
            Ok(())
        }
        "redrive" => {
            let name = queue.unwrap_or_default();
            let queue = QueueName::ALL
                .into_iter()
                .find(|q| q.as_str() == name)
                .ok_or_else(|| KeelError::BadRequest(format!("no queue {name:?}\n{USAGE}")))?;
            let db = keel_emulator::store::Db::open(&data_dir.join("keel.sqlite3"))?;
            let moved = keel_emulator::queue::SqliteQueue::new(db, Duration::from_secs(5), 3).redrive(queue)?;
            println!("moved {moved} dead letter(s) back to the {name} queue; the next `keel-local serve` processes them");
            Ok(())
        }
        _ => Err(KeelError::BadRequest(USAGE.into())),
    }
}

/// Reads the config from the environment; the admin key comes from
/// `KEEL_ADMIN_KEY`, or is generated on first start and kept in the data dir.
async fn start(data_dir: &Path, port: u16) -> Result<Stack, KeelError> {
    std::fs::create_dir_all(data_dir).map_err(|e| KeelError::Internal(format!("{}: {e}", data_dir.display())))?;
    let admin_key = match std::env::var("KEEL_ADMIN_KEY") {
        Ok(k) => k,
        Err(_) => {
            let path = data_dir.join("admin.key");
            match std::fs::read_to_string(&path) {
                Ok(k) => k.trim().to_string(),
                Err(_) => {
                    let k = keel_core::auth::new_admin_key();
                    std::fs::write(&path, &k).map_err(|e| KeelError::Internal(format!("{}: {e}", path.display())))?;
                    println!("Generated the platform admin key (saved in {}):\n  {k}", path.display());
                    k
                }
            }
        }
    };
    let config = Config::from_lookup(|k| match k {
        "KEEL_ADMIN_KEY" => Some(admin_key.clone()),
        // The model fetched by scripts/fetch-models.sh, unless told otherwise.
        "KEEL_MODEL_DIR" | "ORT_DYLIB_PATH" => std::env::var(k).ok().or_else(|| default_model_file(k)),
        _ => std::env::var(k).ok(),
    })?;
    Stack::start(StackOptions {
        data_dir: data_dir.to_path_buf(),
        port,
        routing: keel_routing::RoutingOptions::from_config(&config),
        tools: keel_tools::ToolsOptions::from_config(&config),
        config,
        retry_interval_scale: 1.0,
        queue_visibility: Duration::from_secs(5),
        max_receives: 3,
        tools_queue: None,
    })
    .await
}

/// `.models/` in the working directory, where scripts/fetch-models.sh puts
/// the embedding model and ONNX Runtime; None when it is not there.
fn default_model_file(var: &str) -> Option<String> {
    let fetched = keel_ml::EmbedderConfig::fetched(std::path::Path::new(".models"), 1);
    let path = match var {
        "KEEL_MODEL_DIR" => &fetched.model_dir,
        _ => &fetched.runtime_library,
    };
    fetched.model_dir.join("model.onnx").is_file().then(|| path.display().to_string())
}
