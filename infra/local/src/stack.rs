//! The local stack: wiring, HTTP server and queue drainers.

use crate::asl::{LocalSaga, TaskFailure, TaskRunner};
use crate::blobs::DirBlobs;
use crate::sqlite::{Db, SqliteQueue, SqliteTable};
use async_trait::async_trait;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderName, HeaderValue, Request, Response, StatusCode};
use keel_audit::Audit;
use keel_auth::Auth;
use keel_core::config::Config;
use keel_core::http::{dispatch, respond, ApiRequest, ApiResponse};
use keel_core::ports::{QueueName, WorkQueue};
use keel_core::KeelError;
use keel_retrieval::Retrieval;
use keel_routing::sse::Reply;
use keel_routing::providers::hosted_models;
use keel_routing::{Routing, RoutingOptions};
use keel_core::tenants::TenantCache;
use tokio_stream::wrappers::UnboundedReceiverStream;
use tokio_stream::StreamExt;
use keel_tools::{StepInput, Tools, ToolsOptions};
use serde_json::Value;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Weak};
use std::time::Duration;
use tokio::sync::watch;

/// The largest request body the local API reads (API Gateway's own limit is 10 MB).
const MAX_REQUEST_BYTES: usize = 10 * 1024 * 1024;

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
}

struct Services {
    /// Each request's polls commit together (`Db::commit_per_poll`).
    db: Db,
    auth: Auth,
    retrieval: Arc<Retrieval>,
    routing: Arc<Routing>,
    tools: Arc<Tools>,
    audit: Audit,
}

pub struct Stack {
    pub addr: SocketAddr,
    pub admin_key: String,
    pub queue: Arc<SqliteQueue>,
    pub table: Arc<SqliteTable>,
    /// The retrieval service itself (benchmarks time it in-process).
    pub retrieval: Arc<Retrieval>,
    saga: LocalSaga,
    shutdown: watch::Sender<bool>,
    server: tokio::task::JoinHandle<()>,
    consumers: std::thread::JoinHandle<()>,
}

/// The tools function, as the saga's Lambda task. Weak, because the tools
/// hold the saga: a strong reference both ways would keep both, and the
/// database they share, alive after the stack stops.
struct ToolsTask(Weak<Tools>);

#[async_trait]
impl TaskRunner for ToolsTask {
    async fn invoke(&self, _function: &str, payload: Value) -> Result<Value, TaskFailure> {
        let input: StepInput = serde_json::from_value(payload)
            .map_err(|e| TaskFailure { error: "Keel.Failed".into(), cause: e.to_string() })?;
        let Some(tools) = self.0.upgrade() else {
            // The stack is stopping: `LocalSaga::stop` ends this execution
            // without a result, and the next start resumes it.
            return std::future::pending().await;
        };
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
        let definition: Value = serde_json::from_str(include_str!("../../statemachines/action.asl.json"))?;
        let saga = LocalSaga::new(db.clone(), definition, options.retry_interval_scale);
        let config = Arc::new(options.config);

        let retrieval = Arc::new(Retrieval::from_config(table.clone(), blobs.clone(), &config)?);
        let tools = Arc::new(Tools::new(table.clone(), queue.clone(), Arc::new(saga.clone()), options.tools)?);
        saga.connect(Arc::new(ToolsTask(Arc::downgrade(&tools))));
        let resumed = saga.resume()?;
        if resumed > 0 {
            tracing::info!(resumed, "resumed saga executions");
        }
        // One tenant cache for the whole process: a kill switch or suspension
        // set through the admin API reaches the gateway at once.
        let tenants = Arc::new(TenantCache::new(Duration::from_secs(config.tenant_cache_secs)));
        let services = Arc::new(Services {
            auth: Auth::new(table.clone(), config.clone(), tenants.clone()),
            routing: Arc::new(Routing::new(
                retrieval.clone(),
                table.clone(),
                queue.clone(),
                tenants,
                hosted_models(&config.models).await,
                options.routing,
            )),
            retrieval: retrieval.clone(),
            tools,
            audit: Audit::new(table.clone(), blobs),
            db,
        });

        let (shutdown, stopped) = watch::channel(false);
        // The queue consumers get a thread and runtime of their own, as they
        // are functions of their own in AWS, at the lowest priority: a batch
        // they work through waits for idle CPU instead of holding up requests.
        let (store, consumer_services, stop_consumers) = (queue.clone(), services.clone(), stopped.clone());
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(io)?;
        let consumers = std::thread::Builder::new()
            .name("keel-queues".into())
            .spawn(move || {
                if let Err(e) = thread_priority::set_current_thread_priority(thread_priority::ThreadPriority::Min) {
                    tracing::warn!(error = ?e, "queue consumers run at normal priority");
                }
                crate::sqlite::never_hold_the_connection_here();
                runtime.block_on(async move {
                    let mut drains = tokio::task::JoinSet::new();
                    for q in QueueName::ALL {
                        drains.spawn(drain(q, store.clone(), consumer_services.clone(), stop_consumers.clone()));
                    }
                    drains.join_all().await;
                })
            })
            .map_err(io)?;
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", options.port)).await.map_err(io)?;
        let addr = listener.local_addr().map_err(io)?;
        let app = axum::Router::new().fallback(serve_http).with_state(services);
        let mut stop = stopped.clone();
        let server = tokio::spawn(async move {
            let graceful = async move {
                let _ = stop.wait_for(|s| *s).await;
            };
            if let Err(e) = axum::serve(listener, app).with_graceful_shutdown(graceful).await {
                tracing::error!(error = %e, "local API stopped");
            }
        });
        Ok(Self { addr, admin_key: config.admin_key.clone(), queue, table, retrieval, saga, shutdown, server, consumers })
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Waits until every queue is empty (dead letters aside), up to `timeout`.
    pub async fn settle(&self, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        while tokio::time::Instant::now() < deadline {
            let pending: usize = QueueName::ALL.iter().map(|q| self.queue.pending(*q).unwrap_or(1)).sum();
            if pending == 0 {
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
        let consumers = self.consumers;
        let _ = tokio::task::spawn_blocking(move || consumers.join()).await;
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
async fn drain(queue: QueueName, store: Arc<SqliteQueue>, services: Arc<Services>, mut stopped: watch::Receiver<bool>) {
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
                QueueName::Ingest => services.retrieval.ingest(&batch).await,
                QueueName::Audit => services.audit.consume(&batch).await,
                QueueName::Actions => services.tools.consume(&batch).await,
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

/// A request runs to its end even if its caller hangs up, as a Lambda
/// invocation does: a model call already paid for still has its budget
/// reservation settled and its decision recorded.
async fn serve_http(State(services): State<Arc<Services>>, request: Request<Body>) -> Response<Body> {
    let request_id = uuid::Uuid::new_v4().to_string();
    let db = services.db.clone();
    match db.spawn_request(serve_request(services, request, request_id.clone())).await {
        Ok(response) => response,
        Err(e) => to_http(respond(Err(KeelError::Internal(format!("request handler failed: {e}"))), &request_id)),
    }
}

async fn serve_request(services: Arc<Services>, request: Request<Body>, request_id: String) -> Response<Body> {
    let (parts, body) = request.into_parts();
    let body = match axum::body::to_bytes(body, MAX_REQUEST_BYTES).await {
        Ok(b) => b.to_vec(),
        Err(_) => {
            let e = KeelError::PayloadTooLarge(format!("request body exceeds {MAX_REQUEST_BYTES} bytes"));
            return to_http(respond(Err(e), &request_id));
        }
    };
    // An unparsable query string reads as no parameters.
    let query = axum::extract::Query::<HashMap<String, String>>::try_from_uri(&parts.uri)
        .map(|q| q.0)
        .unwrap_or_default();
    let mut req = ApiRequest {
        method: parts.method.to_string(),
        path: parts.uri.path().to_string(),
        query,
        headers: parts
            .headers
            .iter()
            .filter_map(|(k, v)| v.to_str().ok().map(|v| (k.as_str().to_ascii_lowercase(), v.to_string())))
            .collect(),
        body,
        request_id: request_id.clone(),
        caller: None,
    };
    // The authorizer runs before every route, as in API Gateway.
    match services.auth.authorize(&req).await {
        Ok(caller) => req.caller = Some(caller),
        Err(e) => return to_http(respond(Err(e), &request_id)),
    }
    let family = req.segments().get(1).copied().unwrap_or("").to_string();
    let s = &services;
    let response = match family.as_str() {
        "tenants" => dispatch(req, |r| s.auth.handle(r)).await,
        "documents" | "search" | "changes" | "sources" => dispatch(req, |r| s.retrieval.handle(r)).await,
        "ask" | "chat" | "classify" | "rank" => match s.routing.serve(req).await {
            Reply::Whole(r) => r,
            Reply::Stream { frames, produce } => {
                services.db.spawn_request(produce);
                return event_stream(frames, &request_id);
            }
        },
        "tools" | "actions" | "policies" => dispatch(req, |r| s.tools.handle(r)).await,
        "decisions" | "audit" | "usage" => dispatch(req, |r| s.audit.handle(r)).await,
        _ => respond(Err(keel_core::http::not_found(&req)), &request_id),
    };
    to_http(response)
}

/// Server-sent events, written to the client as they are produced.
fn event_stream(rx: tokio::sync::mpsc::UnboundedReceiver<String>, request_id: &str) -> Response<Body> {
    let frames = UnboundedReceiverStream::new(rx).map(Ok::<String, std::convert::Infallible>);
    let mut out = Response::new(Body::from_stream(frames));
    let headers = out.headers_mut();
    headers.insert("content-type", HeaderValue::from_static("text/event-stream"));
    headers.insert("cache-control", HeaderValue::from_static("no-cache"));
    if let Ok(v) = HeaderValue::try_from(request_id) {
        headers.insert("x-request-id", v);
    }
    out
}

fn to_http(response: ApiResponse) -> Response<Body> {
    let mut out = Response::new(Body::from(response.body));
    *out.status_mut() = StatusCode::from_u16(response.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    for (k, v) in response.headers {
        if let (Ok(k), Ok(v)) = (HeaderName::try_from(k), HeaderValue::try_from(v)) {
            out.headers_mut().insert(k, v);
        }
    }
    out
}
