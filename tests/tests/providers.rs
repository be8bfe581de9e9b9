// Test-only code: helpers outside #[test] functions may unwrap and panic too.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

//! The model providers' AWS adapters over the wire: Bedrock `Converse` and
//! `ConverseStream` and SageMaker's response stream against stub HTTP
//! servers (moto lacks them), SageMaker `InvokeEndpoint` against moto server.

use keel_aws::BedrockProvider;
use keel_core::ports::*;
use keel_tests::aws::{moto, sdk_config};
use serde_json::{json, Value};
use std::time::Duration;

#[tokio::test]
async fn bedrock_converse_against_a_stub_server() {
    let seen: std::sync::Arc<std::sync::Mutex<Vec<(String, Value)>>> = Default::default();
    let recorded = seen.clone();
    let app = axum::Router::new().fallback(move |req: axum::extract::Request| {
        let recorded = recorded.clone();
        async move {
            let path = req.uri().path().to_string();
            let body = axum::body::to_bytes(req.into_body(), 1 << 20).await.unwrap();
            recorded.lock().unwrap().push((path, serde_json::from_slice(&body).unwrap()));
            axum::Json(json!({
                "output": {"message": {"role": "assistant", "content": [{"text": "Refunds take 5 days [1]."}]}},
                "stopReason": "end_turn",
                "usage": {"inputTokens": 120, "outputTokens": 9, "totalTokens": 129},
                "metrics": {"latencyMs": 3}
            }))
        }
    });
    let addr = keel_tests::serve_on_loopback(app).await;

    let sdk = sdk_config(&format!("http://{addr}")).await;
    let provider = BedrockProvider::new(aws_sdk_bedrockruntime::Client::new(&sdk));
    let out = provider
        .generate(ModelRequest {
            model: "anthropic.claude-test".into(),
            system: "be brief".into(),
            messages: vec![ChatMessage::user("Q")],
            max_tokens: 64,
            temperature: Some(0.0),
        })
        .await
        .unwrap();
    assert_eq!(out, ModelResponse { text: "Refunds take 5 days [1].".into(), input_tokens: 120, output_tokens: 9 });
    let (path, body) = seen.lock().unwrap()[0].clone();
    assert_eq!(path, "/model/anthropic.claude-test/converse");
    assert_eq!(body["system"][0]["text"], "be brief");
    assert_eq!(body["messages"][0]["content"][0]["text"], "Q");
    assert_eq!(body["inferenceConfig"]["maxTokens"], 64);
    assert_eq!(body["inferenceConfig"]["temperature"], 0.0);
}

/// One AWS event-stream frame.
fn frame(headers: &[(&str, &str)], payload: Vec<u8>) -> Vec<u8> {
    use aws_smithy_types::event_stream::{Header, HeaderValue, Message};
    let message = headers.iter().fold(Message::new(payload), |m, (name, value)| {
        m.add_header(Header::new(name.to_string(), HeaderValue::String(value.to_string().into())))
    });
    let mut bytes = Vec::new();
    aws_smithy_eventstream::frame::write_message_to(&message, &mut bytes).unwrap();
    bytes
}

/// A `ConverseStream` event as Bedrock frames it.
fn stream_event(kind: &str, payload: Value) -> Vec<u8> {
    frame(&[(":message-type", "event"), (":event-type", kind), (":content-type", "application/json")], payload.to_string().into_bytes())
}

/// A stub event-stream endpoint answering every call to `path_suffix` with
/// `events`, one frame at a time (anything else gets 404).
async fn event_stream_stub(path_suffix: &'static str, events: Vec<Vec<u8>>) -> String {
    let app = axum::Router::new().fallback(move |req: axum::extract::Request| {
        let events = events.clone();
        async move {
            if !req.uri().path().ends_with(path_suffix) {
                return axum::response::Response::builder().status(404).body(axum::body::Body::empty()).unwrap();
            }
            let frames = futures_stream(events);
            axum::response::Response::builder()
                .header("content-type", "application/vnd.amazon.eventstream")
                .body(axum::body::Body::from_stream(frames))
                .unwrap()
        }
    });
    let addr = keel_tests::serve_on_loopback(app).await;
    format!("http://{addr}")
}

/// Frames as a body stream, a little apart, so the client sees them arrive one by one.
fn futures_stream(frames: Vec<Vec<u8>>) -> impl tokio_stream::Stream<Item = Result<Vec<u8>, std::io::Error>> {
    use tokio_stream::StreamExt;
    tokio_stream::iter(frames.into_iter().map(Ok)).throttle(Duration::from_millis(5))
}

#[tokio::test]
async fn bedrock_converse_stream_passes_deltas_on_against_a_stub_server() {
    let events = vec![
        stream_event("messageStart", json!({"role": "assistant"})),
        stream_event("contentBlockDelta", json!({"contentBlockIndex": 0, "delta": {"text": "Refunds take "}})),
        stream_event("contentBlockDelta", json!({"contentBlockIndex": 0, "delta": {"text": "5 days [1]."}})),
        stream_event("contentBlockStop", json!({"contentBlockIndex": 0})),
        stream_event("messageStop", json!({"stopReason": "end_turn"})),
        stream_event("metadata", json!({"usage": {"inputTokens": 120, "outputTokens": 9, "totalTokens": 129}, "metrics": {"latencyMs": 3}})),
    ];
    let sdk = sdk_config(&event_stream_stub("/converse-stream", events).await).await;
    let provider = BedrockProvider::new(aws_sdk_bedrockruntime::Client::new(&sdk));
    let seen = std::sync::Mutex::new(Vec::<String>::new());
    let deltas = |d: &str| seen.lock().unwrap().push(d.to_string());
    let request = ModelRequest {
        model: "anthropic.claude-test".into(),
        system: "be brief".into(),
        messages: vec![ChatMessage::user("Q")],
        max_tokens: 64,
        temperature: Some(0.0),
    };
    let out = provider.generate_streaming(request.clone(), &deltas).await.unwrap();
    assert_eq!(out, ModelResponse { text: "Refunds take 5 days [1].".into(), input_tokens: 120, output_tokens: 9 });
    assert_eq!(*seen.lock().unwrap(), ["Refunds take ", "5 days [1]."], "each delta passed on as it came");

    // An exception event mid-stream is an error the gateway may retry, not a short answer.
    let throttled = vec![
        stream_event("contentBlockDelta", json!({"contentBlockIndex": 0, "delta": {"text": "Refu"}})),
        frame(
            &[(":message-type", "exception"), (":exception-type", "throttlingException"), (":content-type", "application/json")],
            json!({"message": "slow down"}).to_string().into_bytes(),
        ),
    ];
    let sdk = sdk_config(&event_stream_stub("/converse-stream", throttled).await).await;
    let provider = BedrockProvider::new(aws_sdk_bedrockruntime::Client::new(&sdk));
    let err = provider.generate_streaming(request, &|_: &str| {}).await.unwrap_err();
    assert!(matches!(err, ModelError::Throttled(_)), "{err:?}");
}

#[tokio::test]
async fn sagemaker_response_stream_passes_deltas_on_against_a_stub_server() {
    // The endpoint's server-sent events, cut into payload parts at awkward places: inside a line and inside "é".
    let sse = concat!(
        "data: {\"choices\":[{\"delta\":{\"content\":\"Refunds \"}}]}\n\n",
        "data: {\"choices\":[{\"delta\":{\"content\":\"take 5 days, café [1].\"}}]}\n\n",
        "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":120,\"completion_tokens\":9}}\n\n",
        "data: [DONE]\n\n",
    )
    .as_bytes();
    let cut_in_e = sse.windows(2).position(|w| w == [0xC3, 0xA9]).unwrap() + 1;
    let parts: Vec<Vec<u8>> = [&sse[..20], &sse[20..cut_in_e], &sse[cut_in_e..]]
        .iter()
        .map(|bytes| {
            let headers = [(":message-type", "event"), (":event-type", "PayloadPart"), (":content-type", "application/octet-stream")];
            frame(&headers, bytes.to_vec())
        })
        .collect();
    let sdk = sdk_config(&event_stream_stub("/invocations-response-stream", parts).await).await;
    let provider = keel_aws::SageMakerProvider::new(aws_sdk_sagemakerruntime::Client::new(&sdk));
    let seen = std::sync::Mutex::new(Vec::<String>::new());
    let deltas = |d: &str| seen.lock().unwrap().push(d.to_string());
    let request =
        ModelRequest { model: "tgi-endpoint".into(), system: String::new(), messages: vec![ChatMessage::user("Q")], max_tokens: 64, temperature: None };
    let out = provider.generate_streaming(request, &deltas).await.unwrap();
    assert_eq!(out, ModelResponse { text: "Refunds take 5 days, café [1].".into(), input_tokens: 120, output_tokens: 9 });
    assert_eq!(*seen.lock().unwrap(), ["Refunds ", "take 5 days, café [1]."]);
}

#[tokio::test]
async fn sagemaker_invoke_endpoint_against_moto() {
    let Some(endpoint) = moto() else { return };
    // moto answers InvokeEndpoint with the bodies queued here, in order.
    let completion = keel_core::openai::completion("c1", "tgi", 0, "Refunds take 5 days [1].", 80, 7);
    let queued = json!({"results": [{"Body": completion.to_string(), "ContentType": "application/json",
        "InvokedProductionVariant": "primary", "CustomAttributes": ""}]});
    let r = reqwest::Client::new()
        .post(format!("{endpoint}/moto-api/static/sagemaker/endpoint-results"))
        .json(&queued)
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success());
    let sdk = sdk_config(&endpoint).await;
    let provider = keel_aws::SageMakerProvider::new(aws_sdk_sagemakerruntime::Client::new(&sdk));
    let request = ModelRequest {
        model: format!("keel-gpu-{}", uuid::Uuid::new_v4().simple()),
        system: "cite".into(),
        messages: vec![ChatMessage::user("How long do refunds take?")],
        max_tokens: 32,
        temperature: None,
    };
    let out = provider.generate(request).await.unwrap();
    assert_eq!(out, ModelResponse { text: "Refunds take 5 days [1].".into(), input_tokens: 80, output_tokens: 7 });
}
