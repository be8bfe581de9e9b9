//! The local stack: wiring, the HTTP server and the queue consumers.

use crate::api::Functions;
use crate::asl::{LocalSaga, TaskFailure, TaskRunner};
use crate::blobs::DirBlobs;
use crate::queue::SqliteQueue;
use crate::store::Db;
use crate::table::SqliteTable;
use async_trait::async_trait;
use keel_audit::Audit;
use keel_auth::Auth;
use keel_core::config::Config;
use keel_core::ports::{QueueName, WorkQueue};
use keel_core::KeelError;
use keel_retrieval::{Backends, Retrieval};
use keel_routing::providers::hosted_models;
use keel_routing::{Routing, RoutingOptions};
use keel_tools::{StepInput, Tools, ToolsOptions};
use serde_json::Value;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;
use tokio::sync::watch;

pub struct StackOptions {
    pub data_dir: PathBuf,
    pub port: u16,
    pub config: Config,
    /// Scales the saga's retry intervals (tests use a small value).
    pub retry_interval_scale: f64,
    pub queue_visibility: Duration,
    pub max_receives: u32,
    /// Gateway settings: refusal thresholds, retries and breakers (tests shorten them).
    pub routing: RoutingOptions,
    /// Tools settings: connector timeout, retries and breakers, approval timeout.
    pub tools: ToolsOptions,
    /// Wraps the queue the tools function sends on: tests make some of its
    /// sends fail, as SQS may. `None` to use the queue as it is.
    pub tools_queue: Option<QueueWrapper>,
}

pub type QueueWrapper = Arc<dyn Fn(Arc<dyn WorkQueue>) -> Arc<dyn WorkQueue> + Send + Sync>;

pub struct Stack {
    pub addr: SocketAddr,
    pub admin_key: String,
    pub queue: Arc<SqliteQueue>,
    pub table: Arc<SqliteTable>,
    /// The retrieval service itself (benchmarks time it in-process).
    pub retrieval: Arc<Retrieval>,
    saga: LocalSaga,
    /// Saga steps the tools function is running now.
    steps_running: Arc<AtomicUsize>,
    shutdown: watch::Sender<bool>,
    server: tokio::task::JoinHandle<()>,
    consumers: tokio::task::JoinSet<()>,
}

/// The tools function, as the saga's Lambda task. Weak, because the tools
/// hold the saga: a strong reference both ways would keep both, and the
/// database they share, alive after the stack stops.
struct ToolsTask {
    tools: Weak<Tools>,
    running: Arc<AtomicUsize>,
}

/// Counts a step as running until it ends or is dropped.
struct Running(Arc<AtomicUsize>);

impl Running {
    fn start(count: &Arc<AtomicUsize>) -> Self {
        count.fetch_add(1, Ordering::SeqCst);
        Self(count.clone())
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

#[async_trait]
impl TaskRunner for ToolsTask {
    async fn invoke(&self, _function: &str, payload: Value) -> Result<Value, TaskFailure> {
        let input: StepInput = serde_json::from_value(payload)
            .map_err(|e| TaskFailure { error: "Keel.Failed".into(), cause: e.to_string() })?;
        let Some(tools) = self.tools.upgrade() else {
            // The stack is stopping: `LocalSaga::stop` ends this execution
            // without a result, and the next start resumes it.
            return std::future::pending().await;
        };
        let _running = Running::start(&self.running);
        tools.run_step(input).await.map_err(|e| {
            let d = keel_lambda::task_error(&e);
            TaskFailure { error: d.error_type, cause: d.error_message }
        })
    }
}

impl Stack {
    pub async fn start(options: StackOptions) -> Result<Self, KeelError> {
        let io = |e: std::io::Error| KeelError::Internal(format!("{}: {e}", options.data_dir.display()));
        std::fs::create_dir_all(&options.data_dir).map_err(io)?;
        let db = Db::open(&options.data_dir.join("keel.sqlite3"))?;
        let table = Arc::new(SqliteTable::new(db.clone()));
        let blobs = Arc::new(DirBlobs::new(options.data_dir.join("blobs")));
        let queue = Arc::new(SqliteQueue::new(db.clone(), options.queue_visibility, options.max_receives));
        let definition: Value = serde_json::from_str(include_str!("../../infra/statemachines/action.asl.json"))?;
        let saga = LocalSaga::new(db.clone(), definition, options.retry_interval_scale);
        let config = Arc::new(options.config);
        let admin_key = config.require_admin_key()?.to_string();

        // One tenant registry and one key authenticator for the whole process:
        // a kill switch, suspension or revocation reaches every function at once.
        let tenants = Arc::new(config.tenant_store(table.clone()));
        let keys = Arc::new(config.key_authenticator(table.clone(), tenants.clone()));
        let backends =
            Backends { table: table.clone(), blobs: blobs.clone(), queue: queue.clone(), tenants: tenants.clone(), keys: keys.clone() };
        let retrieval = Arc::new(Retrieval::from_config(backends, &config)?);
        let tools_queue: Arc<dyn WorkQueue> = match &options.tools_queue {
            Some(wrap) => wrap(queue.clone()),
            None => queue.clone(),
        };
        let tools = Arc::new(Tools::new(table.clone(), tenants.clone(), keys.clone(), tools_queue, Arc::new(saga.clone()), options.tools)?);
        let steps_running = Arc::new(AtomicUsize::new(0));
        saga.connect(Arc::new(ToolsTask { tools: Arc::downgrade(&tools), running: steps_running.clone() }));
        let resumed = saga.resume()?;
        if resumed > 0 {
            tracing::info!(resumed, "resumed saga executions");
        }
        let functions = Arc::new(Functions {
            auth: Arc::new(Auth::new(table.clone(), blobs.clone(), queue.clone(), config.clone(), tenants.clone(), keys)?),
            routing: Arc::new(Routing::new(
                retrieval.clone(),
                table.clone(),
                queue.clone(),
                tenants.clone(),
                hosted_models(&config.models).await,
                options.routing,
            )),
            retrieval: retrieval.clone(),
            tools,
            audit: Arc::new(Audit::new(table.clone(), blobs, tenants.clone()).with_config(&config)?),
            rate: Arc::new(config.rate_limiter(table.clone(), tenants)),
        });

        let (shutdown, stopped) = watch::channel(false);
        // Each queue's consumer, as its event source mapping runs its function in AWS.
        let mut consumers = tokio::task::JoinSet::new();
        for q in QueueName::ALL {
            consumers.spawn(drain(q, queue.clone(), functions.clone(), stopped.clone()));
        }
        consumers.spawn(crate::inbox::watch(options.data_dir.join("blobs"), queue.clone(), stopped.clone()));
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", options.port)).await.map_err(io)?;
        let addr = listener.local_addr().map_err(io)?;
        let app = crate::metrics::routes(queue.clone()).merge(crate::api::router(&functions, queue.clone()));
        let mut stop = stopped.clone();
        let server = tokio::spawn(async move {
            let graceful = async move {
                let _ = stop.wait_for(|s| *s).await;
            };
            if let Err(e) = axum::serve(listener, app).with_graceful_shutdown(graceful).await {
                tracing::error!(error = %e, "local API stopped");
            }
        });
        Ok(Self { addr, admin_key, queue, table, retrieval, saga, steps_running, shutdown, server, consumers })
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Waits until no saga step is running and every queue is empty (dead
    /// letters aside), up to `timeout`: a step shows an action's new status
    /// before it queues the decision event, so both must be quiet.
    pub async fn settle(&self, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        while tokio::time::Instant::now() < deadline {
            let steps = self.steps_running.load(Ordering::SeqCst);
            let pending: usize = QueueName::ALL.iter().map(|q| self.queue.pending(*q).unwrap_or(1)).sum();
            if steps == 0 && pending == 0 {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        false
    }

    /// Stops serving and consuming, then ends the saga executions in
    /// flight (the next start resumes them), so that nothing keeps the data
    /// directory's database open once the stack is gone.
    pub async fn stop(self) {
        let _ = self.shutdown.send(true);
        let _ = self.server.await;
        self.consumers.join_all().await;
        self.saga.stop().await;
    }

    /// Serves until Ctrl-C.
    pub async fn run_until_ctrl_c(self) {
        let _ = tokio::signal::ctrl_c().await;
        self.stop().await;
    }
}

/// Messages a consumer takes at once, as SQS's ReceiveMessage at most.
const RECEIVE_BATCH: usize = 10;
/// How long a consumer waits after a batch that was not full: new messages
/// gather meanwhile (as in a Lambda event source's batching window), so
/// under load each consumer call and each of its store writes serves a full
/// batch, not one message each.
const BATCHING_WINDOW: Duration = Duration::from_millis(20);

/// Feeds one queue to its consumer, acking what succeeded; failures come back
/// after the visibility timeout and go dead past `max_receives`.
async fn drain(queue: QueueName, store: Arc<SqliteQueue>, functions: Arc<Functions>, mut stopped: watch::Receiver<bool>) {
    loop {
        if *stopped.borrow() {
            return;
        }
        let batch = match store.receive(queue, RECEIVE_BATCH).await {
            Ok(b) => b,
            Err(e) => {
                tracing::error!(error = %e, "queue receive failed");
                Vec::new()
            }
        };
        if !batch.is_empty() {
            let failed = match queue {
                QueueName::Ingest => functions.retrieval.ingest(&batch).await,
                QueueName::Inbox => functions.retrieval.ingest_inbox(&batch).await,
                QueueName::Audit => functions.audit.consume(&batch).await,
                QueueName::Actions => functions.tools.consume(&batch).await,
            };
            let done: Vec<String> = batch.iter().filter(|m| !failed.contains(&m.message_id)).map(|m| m.receipt.clone()).collect();
            if !done.is_empty() {
                if let Err(e) = store.ack_all(queue, done).await {
                    tracing::error!(error = %e, "queue ack failed");
                }
            }
        }
        if batch.len() < RECEIVE_BATCH {
            tokio::select! {
                _ = tokio::time::sleep(BATCHING_WINDOW) => {}
                _ = stopped.changed() => {}
            }
        }
    }
}

