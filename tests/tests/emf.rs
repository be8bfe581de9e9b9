// Test-only code: helpers outside #[test] functions may unwrap and panic too.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

//! A handler run through the Lambda glue writes what it recorded as
//! CloudWatch Embedded Metric Format: parsed here, each count is the one the
//! invocation made, the function is a dimension, the request id and tenant
//! are properties. (One test in this binary: the recorder is process-wide.)

use axum::routing::get;
use keel_lambda::emf::Emf;
use keel_lambda::{invoke, Event};
use serde_json::{json, Value};

fn request(path: &str, request_id: &str) -> Value {
    json!({
        "version": "2.0", "routeKey": format!("GET {path}"), "rawPath": path, "rawQueryString": "",
        "headers": {"host": "api.example.com"},
        "requestContext": {"http": {"method": "GET", "path": path, "protocol": "HTTP/1.1", "sourceIp": "10.0.0.1", "userAgent": "t"},
            "requestId": request_id, "timeEpoch": 0,
            "authorizer": {"lambda": {"tenant": "acme", "principal": "ann", "roles": "member", "groups": ""}}},
        "isBase64Encoded": false
    })
}

/// Every metric value in the EMF documents, with its document's dimensions and properties.
fn documents(out: &[u8]) -> Vec<Value> {
    std::str::from_utf8(out).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

fn value(docs: &[Value], metric: &str, dimension: Option<(&str, &str)>) -> Option<f64> {
    docs.iter()
        .filter(|d| dimension.is_none_or(|(k, v)| d[k] == v))
        .find_map(|d| d.get(metric).and_then(Value::as_f64))
}

#[tokio::test]
async fn an_invocation_writes_its_counts_as_emf_with_the_function_as_dimension() {
    let emf = Emf::install("keel-auth").expect("the only recorder of this test binary");
    let api = Some(keel_core::http::api(axum::Router::new().route("/v1/ping", get(|| async { "pong" }))));
    let handle = |_: Event| async { Ok(Value::Null) };

    let mut out = Vec::new();
    let answer = invoke(&api, &handle, Some(&emf), request("/v1/ping", "req-1"), "lambda-1", &mut out).await;
    assert!(answer.is_ok());
    let docs = documents(&out);
    assert!(!docs.is_empty(), "one EMF document per dimension set");
    for d in &docs {
        let meta = &d["_aws"]["CloudWatchMetrics"][0];
        assert_eq!(meta["Namespace"], "Keel");
        assert!(meta["Dimensions"][0].as_array().unwrap().contains(&json!("function")), "{d}");
        assert_eq!((d["function"].as_str(), d["requestId"].as_str(), d["tenant"].as_str()), (Some("keel-auth"), Some("lambda-1"), Some("acme")));
        assert!(d.get("_aws").and_then(|a| a.get("Timestamp")).is_some());
    }
    assert_eq!(value(&docs, "keel_http_requests_total", Some(("route", "GET /v1/ping"))), Some(1.0));
    assert!(docs.iter().any(|d| d["status"] == "200"));
    let durations = docs.iter().find_map(|d| d.get("keel_http_request_duration_seconds").and_then(Value::as_array));
    assert_eq!(durations.map(Vec::len), Some(1), "a histogram's values, one per request: {docs:?}");
    assert_eq!(value(&docs, "keel_cold_starts_total", None), Some(1.0));

    // The next invocation reports its own counts: no cold start, one more request.
    let mut out = Vec::new();
    invoke(&api, &handle, Some(&emf), request("/v1/nowhere", "req-2"), "lambda-2", &mut out).await.unwrap();
    let docs = documents(&out);
    assert_eq!(value(&docs, "keel_cold_starts_total", None), None);
    assert_eq!(value(&docs, "keel_http_requests_total", Some(("route", "unmatched"))), Some(1.0));
    assert_eq!(value(&docs, "keel_http_requests_total", Some(("route", "GET /v1/ping"))), None, "counts are per invocation");
}
