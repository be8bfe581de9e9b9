//! `keel-routing`: `POST /v1/ask`, `POST /v1/chat/completions`, `POST /v1/classify`
//! and `POST /v1/rank`. Behind API Gateway it answers whole (a streamed request
//! gets its events in one body); behind its function URL (response streaming) it authenticates the caller
//! itself and streams server-sent events as they are produced.

use keel_auth::Auth;
use keel_core::config::Config;
use keel_core::http::respond;
use keel_core::tenants::TenantCache;
use keel_lambda::{classify, http_response, unsupported, Incoming};
use keel_retrieval::Retrieval;
use keel_routing::providers::hosted_models;
use keel_routing::sse::Reply;
use keel_routing::{Routing, RoutingOptions};
use lambda_runtime::{Diagnostic, FunctionResponse, LambdaEvent, MetadataPrelude, StreamResponse};
use serde_json::Value;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;
use tokio_stream::wrappers::UnboundedReceiverStream;
use tokio_stream::StreamExt;

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    keel_lambda::init_tracing();
    let config = Arc::new(Config::from_env()?);
    let aws = keel_aws::Adapters::from_env().await?;
    let tenants = Arc::new(TenantCache::new(Duration::from_secs(config.tenant_cache_secs)));
    let retrieval = Arc::new(Retrieval::from_config(aws.table.clone(), aws.blobs, &config)?);
    let routing = Arc::new(Routing::new(
        retrieval,
        aws.table.clone(),
        aws.queue,
        tenants.clone(),
        hosted_models(&config.models).await,
        RoutingOptions::from_config(&config),
    ));
    let auth = Arc::new(Auth::new(aws.table, config, tenants));
    lambda_runtime::run(lambda_runtime::service_fn(move |event: LambdaEvent<Value>| {
        let (routing, auth) = (routing.clone(), auth.clone());
        async move {
            let from_url = event.payload.pointer("/requestContext/domainName").and_then(Value::as_str).is_some_and(|d| d.contains(".lambda-url."));
            let mut req = match classify(event.payload) {
                Ok(Incoming::Http(req)) => req,
                Ok(other) => return Err(unsupported(&other)),
                Err(e) => return Err(Diagnostic { error_type: "Keel.BadEvent".into(), error_message: e.to_string() }),
            };
            // A function URL has no API Gateway authorizer in front of it.
            if from_url {
                match auth.authorize(&req).await {
                    Ok(caller) => req.caller = Some(caller),
                    Err(e) => return Ok(FunctionResponse::BufferedResponse(http_response(respond(Err(e), &req.request_id)))),
                }
            }
            Ok(match routing.serve(req).await {
                Reply::Whole(r) => FunctionResponse::BufferedResponse(http_response(r)),
                Reply::Stream { frames, produce } if from_url => {
                    tokio::spawn(produce);
                    let mut headers = http::HeaderMap::new();
                    headers.insert("content-type", http::HeaderValue::from_static("text/event-stream"));
                    FunctionResponse::StreamingResponse(StreamResponse {
                        metadata_prelude: MetadataPrelude { status_code: http::StatusCode::OK, headers, cookies: vec![] },
                        stream: UnboundedReceiverStream::new(frames).map(Ok::<String, Infallible>),
                    })
                }
                Reply::Stream { frames, produce } => {
                    tokio::spawn(produce);
                    let frames: Vec<String> = UnboundedReceiverStream::new(frames).collect().await;
                    let body = keel_core::http::ApiResponse::text(200, "text/event-stream", frames.concat());
                    FunctionResponse::BufferedResponse(http_response(body))
                }
            })
        }
    }))
    .await
}
