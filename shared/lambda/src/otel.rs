//! Spans from `tracing` as OpenTelemetry spans. Off unless
//! `OTEL_TRACES_EXPORTER` (the standard variable) says `otlp`, which sends
//! them as OTLP over HTTP/JSON to `OTEL_EXPORTER_OTLP_ENDPOINT` (the ADOT
//! collector layer listens on localhost:4318) from a thread of their own,
//! flushed at the end of each invocation, or `console`, which writes them to
//! stdout. The X-Ray SDKs are in maintenance. A root span takes its trace id from the
//! request it runs in (`keel_core::trace`), so the exported spans of one
//! request, its saga steps and its connector calls share the trace the
//! caller's `traceparent` named.

use opentelemetry::trace::{SpanId, TraceId, TracerProvider as _};
use opentelemetry_sdk::trace::{IdGenerator, RandomIdGenerator, SdkTracerProvider, SpanExporter};
use tracing_subscriber::registry::LookupSpan;

/// Trace ids from the running request; span ids at random.
#[derive(Debug, Default)]
struct RequestTraceIds(RandomIdGenerator);

impl IdGenerator for RequestTraceIds {
    fn new_trace_id(&self) -> TraceId {
        keel_core::trace::current()
            .and_then(|c| TraceId::from_hex(c.trace_id()).ok())
            .unwrap_or_else(|| self.0.new_trace_id())
    }

    fn new_span_id(&self) -> SpanId {
        self.0.new_span_id()
    }
}

/// A tracer provider that exports each span as it ends.
pub fn provider(exporter: impl SpanExporter + 'static) -> SdkTracerProvider {
    SdkTracerProvider::builder().with_simple_exporter(exporter).with_id_generator(RequestTraceIds::default()).build()
}

/// The `tracing` layer that turns spans into OpenTelemetry spans of `provider`.
pub fn layer<S>(provider: &SdkTracerProvider) -> impl tracing_subscriber::Layer<S>
where
    S: tracing::Subscriber + for<'a> LookupSpan<'a>,
{
    tracing_opentelemetry::layer().with_tracer(provider.tracer("keel"))
}

/// A tracer provider that sends spans as OTLP/JSON to `endpoint` (its
/// `/v1/traces`), in batches from a thread of its own.
pub fn otlp_provider(endpoint: &str) -> Result<SdkTracerProvider, opentelemetry_otlp::ExporterBuildError> {
    use opentelemetry_otlp::{Protocol, WithExportConfig};
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(Protocol::HttpJson)
        .with_endpoint(format!("{}/v1/traces", endpoint.trim_end_matches('/')))
        .build()?;
    Ok(SdkTracerProvider::builder().with_batch_exporter(exporter).with_id_generator(RequestTraceIds::default()).build())
}

static INSTALLED: std::sync::OnceLock<SdkTracerProvider> = std::sync::OnceLock::new();

/// The provider `OTEL_TRACES_EXPORTER` asks for, if any, kept for `flush`.
pub fn from_env() -> Option<&'static SdkTracerProvider> {
    let provider = match std::env::var("OTEL_TRACES_EXPORTER").ok().as_deref() {
        Some("console") => provider(opentelemetry_stdout::SpanExporter::default()),
        Some("otlp") => {
            let endpoint = std::env::var("OTEL_EXPORTER_OTLP_ENDPOINT").unwrap_or_else(|_| "http://localhost:4318".into());
            match otlp_provider(&endpoint) {
                Ok(p) => p,
                Err(e) => {
                    eprintln!("OTEL_TRACES_EXPORTER=otlp: {e}; no spans are exported");
                    return None;
                }
            }
        }
        _ => return None,
    };
    Some(INSTALLED.get_or_init(|| provider))
}

/// Sends what the installed exporter holds (a frozen Lambda sends nothing).
pub async fn flush() {
    if let Some(provider) = INSTALLED.get() {
        let provider = provider.clone();
        let _ = tokio::task::spawn_blocking(move || provider.force_flush()).await;
    }
}
