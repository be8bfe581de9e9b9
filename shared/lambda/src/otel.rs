//! Spans from `tracing` as OpenTelemetry spans. Off unless
//! `OTEL_TRACES_EXPORTER=console` (the standard variable), which writes them
//! to stdout for a log forwarder or the ADOT collector layer to ship; the
//! X-Ray SDKs are in maintenance. A root span takes its trace id from the
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

/// The provider `OTEL_TRACES_EXPORTER` asks for, if any.
pub fn from_env() -> Option<SdkTracerProvider> {
    match std::env::var("OTEL_TRACES_EXPORTER").ok().as_deref() {
        Some("console") => Some(provider(opentelemetry_stdout::SpanExporter::default())),
        _ => None,
    }
}
