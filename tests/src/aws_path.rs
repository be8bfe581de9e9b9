//! Keel's request path as it runs on AWS, simulated on loopback: each
//! function's real Lambda handler (`keel_lambda::Function`) over the real AWS
//! adapters, against moto server behind a `LatencyProxy` that adds a network
//! round trip to every AWS call and logs it, with a stub model behind a
//! second proxy that logs when it was called. Work handed off after the
//! response (`keel_core::after`) is let finish between requests, as the
//! function's extension does in Lambda. Used by `keel-bench aws` and by the
//! test that holds the critical path to its round trips (test and benchmark code).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use crate::latency::{sequential_round_trips, Call, LatencyProxy};
use crate::stub::StubModels;
use keel_aws::provision::{local_sdk_config, provision, seed_samples};
use keel_lambda::Function;
use lambda_runtime::FunctionResponse;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

/// The sample key `seed_samples` stores for tenant acme.
pub const KEY: &str = "keel_acme_SampleProducerKeyFromTheEvents0";

/// One request's account.
#[derive(Clone, Debug)]
pub struct Sample {
    pub status: u16,
    /// The response body (empty for a stream).
    pub body: Value,
    /// Until the answer was out.
    pub elapsed: Duration,
    /// The model call's own time, where the request made one.
    pub model: Option<Duration>,
    /// AWS calls, those handed off after the response included.
    pub calls: Vec<Call>,
    /// Round trips the caller waited for in turn before the model call (all of them without one).
    pub before_model: usize,
    /// Round trips the caller waited for after the model answered.
    pub after_model: usize,
}

impl Sample {
    /// The time the request added to its model call (all of it without one).
    pub fn overhead(&self) -> Duration {
        self.elapsed.saturating_sub(self.model.unwrap_or_default())
    }

    pub fn operations(&self) -> Vec<String> {
        self.calls.iter().map(|c| c.what.clone()).collect()
    }
}

pub struct AwsPath {
    pub aws: LatencyProxy,
    pub model: LatencyProxy,
    pub stub: StubModels,
    pub auth: Function,
    pub retrieval: Function,
    pub routing: Function,
    pub tools: Function,
    /// The table, read directly (not through the proxy's log).
    pub table: std::sync::Arc<dyn keel_core::ports::Table>,
    _connector: std::net::SocketAddr,
}

impl AwsPath {
    /// The functions on moto at `moto`, every AWS call `latency` (plus up to
    /// `jitter`) away; tenant acme with a budget, a document, a low-risk tool
    /// and the sample key.
    pub async fn start(moto: &str, latency: Duration, jitter: Duration) -> Self {
        keel_core::after::enable();
        let aws = LatencyProxy::start(moto, latency, jitter).await;
        let sdk = local_sdk_config(&aws.url()).await;
        let prefix = format!("path-{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
        let resources = provision(&sdk, &prefix, "arn:aws:lambda:us-east-1:123456789012:function:keel-tools").await.unwrap();
        let adapters = || keel_aws::Adapters::new(sdk.clone(), resources.clone());
        let stub = StubModels::start().await;
        let model = LatencyProxy::start(&stub.base_url().replace("/v1", ""), Duration::ZERO, Duration::ZERO).await;
        let catalog = json!([{"name": "small", "provider": "openai", "model_id": "small", "tier": "t2", "base_url": format!("{}/v1", model.url()),
            "usd_per_1k_input": 0.0005, "usd_per_1k_output": 0.0005, "timeout_ms": 5000}]);
        // Warm functions trust a key and a tenant record for a while, as in production.
        let config = crate::config(&[("KEEL_MODELS", &catalog.to_string()), ("KEEL_MODEL_DIR", ""), ("KEEL_TENANT_CACHE_SECS", "300")]);
        let connector = crate::serve_on_loopback(axum::Router::new().fallback(|| async { axum::Json(json!({"ok": true})) })).await;
        let path = Self {
            auth: keel_auth::lambda::function(adapters(), config.clone()).unwrap(),
            retrieval: keel_retrieval::lambda::function(adapters(), config.clone()).unwrap(),
            routing: keel_routing::lambda::function(adapters(), config.clone()).await.unwrap(),
            tools: keel_tools::lambda::function(adapters(), config.clone()).unwrap(),
            table: adapters().table,
            aws,
            model,
            stub,
            _connector: connector,
        };
        path.create_tenant(json!({"id": "acme", "name": "Acme", "plan": "pro", "rate_limit_per_minute": 1_000_000,
            "routing": {"escalate_below": 1.0}, "budgets": {"monthly_usd": 1000.0}}))
        .await;
        let seeded = adapters();
        seed_samples(seeded.table.clone(), seeded.blobs.as_ref(), &config).await.unwrap();
        let text = "Orders ship within 2 days. Refunds are paid back to the original card within 5 business days. \
                    Gift cards never expire. Support answers within one business day.";
        let batch = ingest_batch(&json!({"op": "put", "doc_id": "policies", "document": {"title": "Policies", "text": text}}));
        let out = answer(path.retrieval.invoke(batch).await.unwrap()).await;
        assert_eq!(out["batchItemFailures"], json!([]), "{out}");
        let tool = json!({"description": "Tag an order", "risk": "low", "input_schema": {"type": "object", "required": ["order_id"],
            "properties": {"order_id": {"type": "string"}}}, "connector": {"url": format!("http://{connector}/tag")}});
        path.expect_ok(&path.tools, http_event("PUT", "/v1/tools/tag_order", &tool, &role("carol", "admin"))).await;
        keel_core::after::settled().await;
        path
    }

    /// Invokes `function` with `event` and accounts for the request.
    pub async fn measure(&self, function: &Function, event: Value) -> Sample {
        let start = Instant::now();
        let out = function.invoke(event).await.unwrap();
        let elapsed = start.elapsed();
        let answered = start + elapsed;
        let (status, body) = match &out {
            FunctionResponse::BufferedResponse(v) => {
                (v["statusCode"].as_u64().unwrap_or(200) as u16, serde_json::from_str(v["body"].as_str().unwrap_or("null")).unwrap_or(Value::Null))
            }
            FunctionResponse::StreamingResponse(_) => (200, Value::Null),
        };
        keel_core::after::settled().await;
        let calls = self.aws.calls_since(start);
        let model = self.model.calls_since(start).into_iter().find(|c| c.end <= answered);
        let waited: Vec<&Call> = calls.iter().filter(|c| c.end <= answered).collect();
        let (before, after): (Vec<&Call>, Vec<&Call>) = match &model {
            Some(m) => (waited.iter().copied().filter(|c| c.end <= m.start).collect(), waited.iter().copied().filter(|c| c.start >= m.end).collect()),
            None => (waited, vec![]),
        };
        Sample {
            status,
            body,
            elapsed,
            model: model.as_ref().map(|m| m.end - m.start),
            before_model: sequential_round_trips(&before),
            after_model: sequential_round_trips(&after),
            calls,
        }
    }

    /// Creates a tenant as the platform admin would (`body` as `POST /v1/tenants` takes it).
    pub async fn create_tenant(&self, body: Value) {
        let admin = json!({"tenant": "", "principal": "platform_admin", "roles": "platform_admin", "groups": ""});
        self.expect_ok(&self.auth, http_event("POST", "/v1/tenants", &body, &admin)).await;
    }

    async fn expect_ok(&self, function: &Function, event: Value) -> Value {
        let out = answer(function.invoke(event).await.unwrap()).await;
        let status = out["statusCode"].as_u64().unwrap_or(0);
        assert!((200..300).contains(&status), "{out}");
        out
    }
}

/// A member of acme, as the authorizer's context names them.
pub fn member() -> Value {
    member_of("acme")
}

pub fn member_of(tenant: &str) -> Value {
    json!({"tenant": tenant, "principal": "ann", "roles": "member", "groups": "staff"})
}

fn role(principal: &str, roles: &str) -> Value {
    json!({"tenant": "acme", "principal": principal, "roles": roles, "groups": "staff"})
}

/// An HTTP API request (payload 2.0) for `method path` with `body`, as API
/// Gateway sends it once the authorizer allowed it with `context`.
pub fn http_event(method: &str, path: &str, body: &Value, context: &Value) -> Value {
    json!({
        "version": "2.0", "routeKey": format!("{method} {path}"), "rawPath": path, "rawQueryString": "",
        "headers": {"content-type": "application/json", "authorization": "Bearer <set by API Gateway>"},
        "requestContext": {"accountId": "123456789012", "apiId": "api", "domainName": "api.example.com",
            "http": {"method": method, "path": path, "protocol": "HTTP/1.1", "sourceIp": "192.0.2.1", "userAgent": "bench"},
            "requestId": uuid::Uuid::new_v4().to_string(), "routeKey": format!("{method} {path}"), "stage": "dev",
            "time": "06/Dec/2026:12:00:00 +0000", "timeEpoch": 1_796_000_000_000u64, "authorizer": {"lambda": context}},
        "isBase64Encoded": false, "body": body.to_string()
    })
}

/// The HTTP API's authorizer request for a call with `key`.
pub fn authorizer_event(key: &str) -> Value {
    json!({
        "version": "2.0", "type": "REQUEST", "routeArn": "arn:aws:execute-api:us-east-1:123456789012:api/dev/POST/v1/search",
        "identitySource": [format!("Bearer {key}")], "routeKey": "POST /v1/search", "rawPath": "/v1/search", "rawQueryString": "",
        "headers": {"authorization": format!("Bearer {key}")},
        "requestContext": {"http": {"method": "POST", "path": "/v1/search", "protocol": "HTTP/1.1", "sourceIp": "192.0.2.1", "userAgent": "bench"},
            "requestId": "req-1", "routeKey": "POST /v1/search", "stage": "dev"}
    })
}

/// An SQS batch of one producer message for the ingest queue, sent with the sample key.
fn ingest_batch(body: &Value) -> Value {
    json!({"Records": [{"messageId": "m0", "receiptHandle": "r0", "body": body.to_string(),
        "attributes": {"ApproximateReceiveCount": "1", "SentTimestamp": "1795000000000", "SenderId": "AIDA", "ApproximateFirstReceiveTimestamp": "1795000000000"},
        "messageAttributes": {"authorization": {"stringValue": format!("Bearer {KEY}"), "dataType": "String", "stringListValues": [], "binaryListValues": []}},
        "md5OfBody": "", "eventSource": "aws:sqs", "eventSourceARN": "arn:aws:sqs:us-east-1:123456789012:keel-queue", "awsRegion": "us-east-1"}]})
}

/// The answer's JSON (a streamed answer's bytes as one string).
pub async fn answer(out: keel_lambda::Answer) -> Value {
    match out {
        FunctionResponse::BufferedResponse(v) => v,
        FunctionResponse::StreamingResponse(s) => {
            use tokio_stream::StreamExt;
            let mut text = String::new();
            let mut stream = s.stream;
            while let Some(chunk) = stream.next().await {
                text.push_str(&String::from_utf8_lossy(&chunk.unwrap()));
            }
            Value::String(text)
        }
    }
}
