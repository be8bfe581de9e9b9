// Test-only code: helpers outside #[test] functions may unwrap and panic too.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

//! OTLP over HTTP/JSON: spans made inside a request's context reach a
//! collector on loopback, under the request's trace id. (One test in this
//! binary: the subscriber is process-wide.)

use std::sync::{Arc, Mutex};
use tracing_subscriber::layer::SubscriberExt;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_reach_an_otlp_collector_under_the_requests_trace() {
    let bodies: Arc<Mutex<Vec<(String, String)>>> = Arc::default();
    let kept = bodies.clone();
    let collector = axum::Router::new().fallback(move |req: axum::extract::Request| {
        let kept = kept.clone();
        async move {
            let path = req.uri().path().to_string();
            let body = String::from_utf8(axum::body::to_bytes(req.into_body(), 1 << 20).await.unwrap().to_vec()).unwrap();
            kept.lock().unwrap().push((path, body));
            "{}"
        }
    });
    let endpoint = format!("http://{}", keel_tests::serve_on_loopback(collector).await);
    let provider = keel_lambda::otel::otlp_provider(&endpoint).unwrap();
    tracing::subscriber::set_global_default(tracing_subscriber::registry().with(keel_lambda::otel::layer(&provider))).unwrap();

    let context = keel_core::trace::RequestContext::from_headers(Some("r-1"), Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"), "gw");
    keel_core::trace::scope(context, async {
        let span = tracing::info_span!("http.request", otel.name = "POST /v1/ask");
        let _entered = span.enter();
        tracing::info_span!("model.call", otel.name = "model.call").in_scope(|| {});
    })
    .await;
    let flushing = provider.clone();
    tokio::task::spawn_blocking(move || flushing.force_flush()).await.unwrap().unwrap();

    let got = bodies.lock().unwrap().clone();
    let (path, body) = got.first().expect("the collector received the spans");
    assert_eq!(path, "/v1/traces");
    let json: serde_json::Value = serde_json::from_str(body).unwrap();
    let spans: Vec<&serde_json::Value> = json["resourceSpans"][0]["scopeSpans"][0]["spans"].as_array().unwrap().iter().collect();
    let names: Vec<&str> = spans.iter().map(|s| s["name"].as_str().unwrap()).collect();
    assert!(names.contains(&"POST /v1/ask") && names.contains(&"model.call"), "{names:?}");
    for s in &spans {
        assert_eq!(s["traceId"].as_str().unwrap().to_lowercase(), "4bf92f3577b34da6a3ce929d0e0e4736", "{s}");
    }
}
