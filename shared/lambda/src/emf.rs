//! Metrics in Lambda: the `metrics` facade recorded into CloudWatch Embedded
//! Metric Format (`metrics_cloudwatch_embedded`), written to stdout once per
//! invocation, where CloudWatch Logs turns each document into metrics. The
//! function is a dimension; the request id and the tenant are properties of
//! the document (searchable in Logs Insights, never dimensions).

use metrics_cloudwatch_embedded::Collector;
use serde_json::Value;
use std::sync::atomic::{AtomicBool, Ordering};

/// The namespace every Keel metric is published under.
pub const NAMESPACE: &str = "Keel";

static COLD: AtomicBool = AtomicBool::new(true);

/// The process's EMF recorder.
pub struct Emf {
    collector: &'static Collector,
}

impl Emf {
    /// Installs the recorder for `function` (once per process; `None` if a
    /// recorder is already installed).
    pub fn install(function: &str) -> Option<Self> {
        let built = metrics_cloudwatch_embedded::Builder::new()
            .cloudwatch_namespace(NAMESPACE)
            .with_dimension("function", function.to_string())
            .init();
        match built {
            Ok(collector) => Some(Self { collector }),
            Err(e) => {
                tracing::warn!(error = %e, "no EMF recorder: metrics are not published");
                None
            }
        }
    }

    /// Counts the first invocation of this process as a cold start.
    pub fn invocation_started(&self) {
        if COLD.swap(false, Ordering::Relaxed) {
            metrics::counter!("keel_cold_starts_total").increment(1);
        }
    }

    /// Writes what this invocation recorded, with its request id and tenant as properties.
    pub fn flush(&self, request_id: &str, tenant: Option<&str>, out: impl std::io::Write) {
        self.collector.set_property("requestId", Value::from(request_id));
        match tenant {
            Some(t) => self.collector.set_property("tenant", Value::from(t)),
            None => self.collector.remove_property("tenant"),
        };
        if let Err(e) = self.collector.flush(out) {
            tracing::warn!(error = %e, "metrics not written");
        }
    }
}

/// The tenant an HTTP API event's authorizer named, if any.
pub fn event_tenant(payload: &Value) -> Option<&str> {
    payload.pointer("/requestContext/authorizer/lambda/tenant").and_then(Value::as_str).filter(|t| !t.is_empty())
}
