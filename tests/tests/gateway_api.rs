// Test-only code: helpers outside #[test] functions may unwrap and panic too.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

//! The gateway's API surfaces through the local stack, against a stub
//! OpenAI-compatible model server on loopback: server-sent events for ask
//! and chat, the OpenAI-compatible chat completions route and its input
//! checks, and classify and rank in-function first.

use keel_emulator::Stack;
use keel_tests::gateway::{chat, gateway, hosted_tenant, route, Q};
use keel_tests::stub::{Behavior, StubModels};
use keel_tests::{tenant, Client};
use serde_json::{json, Value};
use std::time::Duration;

/// The body of a streamed response, read to its end.
async fn stream(stack: &Stack, path: &str, key: &str, body: Value) -> (String, String) {
    let r = reqwest::Client::new().post(format!("{}{path}", stack.url())).bearer_auth(key).json(&body).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let kind = r.headers()["content-type"].to_str().unwrap().to_string();
    (kind, r.text().await.unwrap())
}

fn events(sse: &str) -> Vec<(String, Value)> {
    sse.split("\n\n")
        .filter(|f| !f.trim().is_empty())
        .map(|f| {
            let event = f.lines().find_map(|l| l.strip_prefix("event: ")).unwrap_or("message").to_string();
            let data = f.lines().find_map(|l| l.strip_prefix("data: ")).unwrap_or("");
            (event, serde_json::from_str(data).unwrap_or(Value::String(data.into())))
        })
        .collect()
}

#[tokio::test]
async fn ask_and_chat_stream_server_sent_events() {
    let stub = StubModels::start().await;
    stub.set("small", Behavior::Answer("Refunds take 5 business days [1]. Unsupported claim here. Cards only [1].".into()));
    stub.set("backup", Behavior::Answer("Backup answer.".into()));
    let (_dir, stack, c) = gateway(&stub.catalog(&[("small", "t2", 0.1, 5_000), ("backup", "t2", 0.2, 5_000)])).await;
    let t = hosted_tenant(&c, "streams", json!({"cache_ttl_secs": 0}), json!({})).await;

    let (kind, body) = stream(&stack, "/v1/ask", &t.member, json!({"question": Q, "stream": true})).await;
    assert_eq!(kind, "text/event-stream");
    let ev = events(&body);
    let deltas: Vec<&str> = ev.iter().filter(|(e, _)| e == "delta").map(|(_, d)| d["text"].as_str().unwrap()).collect();
    assert_eq!(deltas, vec!["Refunds take 5 business days [1]. ", "Cards only [1]. "], "uncited sentences never stream: {body}");
    let (last, done) = ev.last().unwrap();
    assert_eq!(last, "done");
    assert_eq!(done["answer"], "Refunds take 5 business days [1]. Cards only [1].");
    assert_eq!(done["model"], "small");

    let (_, body) = stream(&stack, "/v1/chat/completions", &t.member,
        json!({"model": "small", "stream": true, "messages": [{"role": "user", "content": "hi"}]})).await;
    let ev = events(&body);
    let text: String = ev.iter().filter_map(|(_, d)| d["choices"][0]["delta"]["content"].as_str()).collect();
    assert_eq!(text, "Refunds take 5 business days [1]. Unsupported claim here. Cards only [1].");
    assert_eq!(ev.last().unwrap().1, "[DONE]");
    assert!(ev.iter().any(|(_, d)| d["usage"]["completion_tokens"].as_u64().is_some_and(|n| n > 0)));

    // A fallback model's chunks carry its own name.
    stub.set("small", Behavior::Status(503));
    let (_, body) = stream(&stack, "/v1/chat/completions", &t.member,
        json!({"model": "auto", "stream": true, "messages": [{"role": "user", "content": "hi"}]})).await;
    let ev = events(&body);
    let models: Vec<&str> = ev.iter().filter_map(|(_, d)| d["model"].as_str()).collect();
    assert!(!models.is_empty() && models.iter().all(|m| *m == "backup"), "{body}");

    // Errors found before the stream starts are plain JSON errors.
    let (s, e) = c.call("POST", "/v1/ask", &t.member, Some(json!({"question": "", "stream": true}))).await.unwrap();
    assert_eq!(s, 400, "{e}");
    stack.stop().await;
}

#[tokio::test]
async fn chat_completions_speak_openai_and_reject_bad_input() {
    let stub = StubModels::start().await;
    stub.set("small", Behavior::Answer("Hello there.".into()));
    let (_dir, stack, c) = gateway(&stub.catalog(&[("small", "t2", 0.2, 5_000), ("big", "t3", 2.0, 5_000)])).await;
    let t = tenant(&c, "chatty", json!({})).await;
    let body = json!({"model": "auto", "temperature": 0, "messages": [
        {"role": "system", "content": "Be brief."}, {"role": "user", "content": "Greet me."}]});
    let (s, r) = chat(&c, &t.member, body.clone()).await;
    assert_eq!(s, 200, "{r}");
    assert_eq!(r["object"], "chat.completion");
    assert_eq!(r["choices"][0]["message"]["content"], "Hello there.");
    assert_eq!(r["model"], "small");
    assert!(r["usage"]["prompt_tokens"].as_u64().unwrap() > 0);
    assert_eq!(r["keel"]["tier"], "t2");
    assert_eq!(stub.last_prompt("small"), "Greet me.");
    // Deterministic requests are cached; sampled ones are not.
    let (_, again) = chat(&c, &t.member, body.clone()).await;
    assert_eq!((again["keel"]["cached"].as_bool(), again["keel"]["tier"].as_str()), (Some(true), Some("t0")));
    let mut sampled = body.clone();
    sampled["temperature"] = json!(0.8);
    chat(&c, &t.member, sampled).await;
    assert_eq!(stub.calls("small"), 2);

    for (bad, status) in [
        (json!({"model": "auto", "messages": []}), 400),
        (json!({"model": "auto", "messages": [{"role": "tool", "content": "x"}]}), 400),
        (json!({"model": "auto", "messages": [{"role": "user"}]}), 400),
        (json!({"model": "nope", "messages": [{"role": "user", "content": "x"}]}), 404),
    ] {
        let (s, e) = chat(&c, &t.member, bad.clone()).await;
        assert_eq!(s, status, "{bad} -> {e}");
    }
    let huge = "x".repeat(600 * 1024);
    let (s, _) = chat(&c, &t.member, json!({"model": "auto", "messages": [{"role": "user", "content": huge}]})).await;
    assert_eq!(s, 413);
    stack.stop().await;
}

const BILLING: &str = "I was charged twice for the same order; please refund the duplicate payment.";

fn support_labels() -> Value {
    json!([
        {"name": "billing", "description": "payments, charges, invoices and refunds"},
        {"name": "shipping", "description": "delivery, parcels, couriers and tracking", "examples": ["Where is my parcel?"]},
        {"name": "account", "description": "login, password and profile settings"}
    ])
}

async fn classify(c: &Client, key: &str, text: &str) -> (u16, Value) {
    c.call("POST", "/v1/classify", key, Some(json!({"text": text, "labels": support_labels()}))).await.unwrap()
}

#[tokio::test]
async fn classify_and_rank_run_in_function_first() {
    let stub = StubModels::start().await;
    stub.set("small", Behavior::Answer("Shipping".into()));
    let (_dir, stack, c) = gateway(&stub.catalog(&[("small", "t2", 0.5, 5_000)])).await;

    // A clear case: the in-function classifier (MiniLM on ONNX) answers for nothing.
    let t = tenant(&c, "labels", json!({})).await;
    let (s, a) = classify(&c, &t.member, BILLING).await;
    assert_eq!(s, 200, "{a}");
    assert_eq!((a["label"].as_str(), a["tier"].as_str(), a["model"].as_str()), (Some("billing"), Some("t1"), Some("all-MiniLM-L6-v2")));
    assert!(a["confidence"].as_f64().unwrap() >= 0.6, "{a}");
    let total: f64 = a["scores"].as_array().unwrap().iter().map(|s| s["score"].as_f64().unwrap()).sum();
    assert!((total - 1.0).abs() < 1e-3 && a["cost"] == 0.0, "{a}");
    assert!(route(&a).contains("classifier confidence"), "{}", route(&a));
    assert_eq!(stub.calls("small"), 0);

    // Unsure (this tenant escalates below 1.0): a hosted model names the label, cached after.
    let unsure = tenant(&c, "labels-hosted", json!({"routing": {"escalate_below": 1.0}})).await;
    let (_, h) = classify(&c, &unsure.member, BILLING).await;
    assert_eq!((h["label"].as_str(), h["tier"].as_str(), h["model"].as_str()), (Some("shipping"), Some("t2"), Some("small")), "{h}");
    assert!(h["cost"].as_f64().unwrap() > 0.0);
    assert_eq!(h["scores"][0]["label"], "billing", "the in-function scores are kept beside the hosted label");
    let prompt = stub.last_prompt("small");
    assert!(prompt.contains("- shipping: delivery") && prompt.contains(BILLING), "{prompt}");
    let (_, again) = classify(&c, &unsure.member, BILLING).await;
    assert_eq!((again["cached"].as_bool(), again["tier"].as_str(), again["label"].as_str()), (Some(true), Some("t0"), Some("shipping")));
    assert_eq!(stub.calls("small"), 1);
    // Another tenant never gets this tenant's cached label.
    let other = tenant(&c, "labels-other", json!({"routing": {"escalate_below": 1.0}})).await;
    let (_, theirs) = classify(&c, &other.member, BILLING).await;
    assert_eq!(theirs["cached"], false);
    assert_eq!(stub.calls("small"), 2);

    // A hosted answer that names no label is rejected; the in-function label stands, marked degraded.
    stub.set("small", Behavior::Answer("It is probably about money.".into()));
    let (_, d) = classify(&c, &unsure.member, "My invoice shows the wrong amount.").await;
    assert_eq!((d["label"].as_str(), d["tier"].as_str(), d["degraded"].as_str()), (Some("billing"), Some("t1"), Some("in_function_only")));
    assert!(route(&d).contains("which is none of the labels"), "{}", route(&d));

    // Bad input is a clear 4xx.
    let call = |body: Value| c.call("POST", "/v1/classify", &t.member, Some(body));
    let (s, e) = call(json!({"text": "x", "labels": ["only"]})).await.unwrap();
    assert_eq!(s, 400, "{e}");
    let (s, e) = call(json!({"text": "x", "labels": ["a", {"name": "b", "colour": "red"}]})).await.unwrap();
    assert!(s == 400 && e["error"]["message"].as_str().unwrap().contains("labels[1]"), "{e}");
    let (s, _) = call(json!({"text": "x".repeat(4_001), "labels": ["a", "b"]})).await.unwrap();
    assert_eq!(s, 413);

    // Ranking is in-function: the passage that answers the query comes first.
    let docs = json!(["Our office is closed on Sundays.", "To reset your password, open Settings and choose Forgot password.",
        "Parcels ship within two days."]);
    let (s, r) = c.call("POST", "/v1/rank", &t.member, Some(json!({"query": "How do I reset my password?", "documents": docs, "top_k": 2})))
        .await
        .unwrap();
    assert_eq!(s, 200, "{r}");
    assert_eq!((r["results"].as_array().unwrap().len(), r["results"][0]["index"].as_u64(), r["tier"].as_str()), (2, Some(1), Some("t1")));
    assert!(r["results"][0]["score"].as_f64() > r["results"][1]["score"].as_f64());
    let (s, _) = c.call("POST", "/v1/rank", &t.member, Some(json!({"query": "q", "documents": []}))).await.unwrap();
    assert_eq!(s, 400);

    // Every request is a decision with its usage; the log holds the text's hash, not the text.
    assert!(stack.settle(Duration::from_secs(10)).await);
    let (_, log) = c.call("GET", &format!("/v1/decisions/{}", h["decision_id"].as_str().unwrap()), &unsure.member, None).await.unwrap();
    let event = &log["events"][0]["event"];
    assert_eq!((event["kind"].as_str(), event["outcome"]["label"].as_str()), (Some("classify"), Some("shipping")), "{event}");
    assert!(event["input"]["text_sha256"].is_string() && !event.to_string().contains(BILLING));
    let (_, u) = c.call("GET", "/v1/usage", &t.admin, None).await.unwrap();
    assert_eq!((u["counters"]["classify_requests"].as_i64(), u["counters"]["rank_requests"].as_i64()), (Some(1), Some(1)), "{u}");
    stack.stop().await;
}

