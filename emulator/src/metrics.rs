//! `GET /metrics` on the local stack: the same metrics the functions emit in
//! Lambda (as CloudWatch EMF), in Prometheus text format, for a Prometheus
//! and Grafana pointed at `keel-local serve`. Unauthenticated, like every
//! scrape endpoint; the stack listens on loopback only.

use crate::queue::SqliteQueue;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use keel_core::ports::QueueName;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use std::sync::{Arc, OnceLock};

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// Seconds: from a cache hit to a slow hosted model.
const SECONDS_BUCKETS: [f64; 12] = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0];
/// The cited share of an answer.
const SHARE_BUCKETS: [f64; 10] = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0];

/// The process's Prometheus recorder, installed on first use (one per
/// process; `None` if another recorder was installed first).
pub fn recorder() -> Option<&'static PrometheusHandle> {
    HANDLE
        .get_or_init(|| {
            keel_core::telemetry::set_tenant_labels(true);
            let builder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &SECONDS_BUCKETS)
                .and_then(|b| b.set_buckets_for_metric(Matcher::Full("keel_answer_groundedness".into()), &SHARE_BUCKETS));
            match builder.map(PrometheusBuilder::install_recorder) {
                Ok(Ok(handle)) => Some(handle),
                Ok(Err(e)) | Err(e) => {
                    tracing::warn!(error = %e, "no Prometheus recorder: /metrics answers 503");
                    None
                }
            }
        })
        .as_ref()
}

/// `GET /metrics`, with the queues' depths read at scrape time.
pub fn routes(queue: Arc<SqliteQueue>) -> Router {
    recorder();
    Router::new().route("/metrics", get(scrape)).with_state(queue)
}

async fn scrape(State(queue): State<Arc<SqliteQueue>>) -> Response {
    let Some(handle) = recorder() else {
        return (StatusCode::SERVICE_UNAVAILABLE, "metrics recorder not installed\n").into_response();
    };
    for q in QueueName::ALL {
        let depth = tokio::task::spawn_blocking({
            let queue = queue.clone();
            move || (queue.pending(q).unwrap_or(0), queue.dead_letters(q).map(|d| d.len()).unwrap_or(0))
        })
        .await
        .unwrap_or((0, 0));
        keel_core::telemetry::queue_depth(q.as_str(), depth.0, depth.1);
    }
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], handle.render()).into_response()
}
