// Test-only code: helpers outside #[test] functions may unwrap and panic too.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

//! The model gateway through the local stack, against a stub
//! OpenAI-compatible model server on loopback: routing and grounding, the
//! cache, budgets under concurrency, retries, fallbacks and breakers,
//! degraded modes and the kill switch. Streaming, the OpenAI-compatible
//! route, classify and rank are in `gateway_api.rs`.

use keel_tests::stub::{Behavior, StubModels};
use keel_tests::gateway::{ask, chat, gateway, hosted_tenant, route, Q, REFUNDS};
use keel_tests::{tenant, Client, ADMIN_KEY};
use serde_json::{json, Value};
use std::time::Duration;

#[tokio::test]
async fn hosted_answers_are_grounded_guarded_cached_and_metered() {
    let stub = StubModels::start().await;
    stub.set("small", Behavior::Answer("Refunds reach the card within 5 business days [1]. The moon is made of cheese.".into()));
    let (_dir, stack, c) = gateway(&stub.catalog(&[("small", "t2", 0.5, 5_000), ("big", "t3", 5.0, 5_000)])).await;
    let t = hosted_tenant(&c, "grounded", json!({}), json!({})).await;

    let (s, a) = ask(&c, &t.member, Q).await;
    assert_eq!(s, 200, "{a}");
    assert_eq!((a["tier"].as_str(), a["model"].as_str(), a["cached"].as_bool()), (Some("t2"), Some("small"), Some(false)), "{a}");
    // The uncited sentence is cut; groundedness is recorded as generated.
    assert_eq!(a["answer"], "Refunds reach the card within 5 business days [1].");
    assert_eq!(a["groundedness"], 0.5);
    assert_eq!(a["citations"][0]["doc_id"], "refunds");
    assert!(route(&a).contains("repaired: cut 1 uncited sentence"), "{}", route(&a));
    assert!(a["cost"].as_f64().unwrap() > 0.0);
    // The injected instruction never reached the model; the evidence is quoted data.
    let prompt = stub.last_prompt("small");
    assert!(prompt.contains("within 5 business days") && !prompt.contains("wire money"), "{prompt}");
    assert!(prompt.contains("[instruction-like text removed]"));

    // The same question on the same evidence: served from the cache (the exact
    // question only: another spelling may ask something else).
    let (_, again) = ask(&c, &t.member, Q).await;
    assert_eq!((again["cached"].as_bool(), again["tier"].as_str(), again["cost"].as_f64()), (Some(true), Some("t0"), Some(0.0)));
    assert_eq!(again["answer"], a["answer"]);
    assert_eq!(stub.calls("small"), 1);

    // Another tenant with the same document and question: never the first tenant's entry.
    let other = hosted_tenant(&c, "grounded-b", json!({}), json!({})).await;
    let (_, theirs) = ask(&c, &other.member, Q).await;
    assert_eq!(theirs["cached"], false);
    assert_eq!(stub.calls("small"), 2);

    // Changed evidence is a new address: the cache misses.
    let text = "Refunds are paid back to the original card within 3 business days.";
    c.call("PUT", "/v1/documents/refunds", &t.member, Some(json!({"text": text}))).await.unwrap();
    let (_, changed) = ask(&c, &t.member, Q).await;
    assert_eq!(changed["cached"], false);
    assert_eq!(stub.calls("small"), 3);

    // Metering: written with the decision event, counted by the audit consumer.
    assert!(stack.settle(Duration::from_secs(10)).await);
    let (_, d) = c.call("GET", &format!("/v1/decisions/{}", a["decision_id"].as_str().unwrap()), &t.member, None).await.unwrap();
    let event = &d["events"][0]["event"];
    assert_eq!(event["usage"]["cache"], "miss");
    assert!(event["usage"]["input_tokens"].as_u64().unwrap() > 0);
    assert_eq!(event["outcome"]["groundedness"], 0.5);
    assert_eq!(event["evidence"][0]["injection_flags"], 1);
    let (_, u) = c.call("GET", "/v1/usage", &t.admin, None).await.unwrap();
    assert_eq!(u["counters"]["ask_requests"], 3, "{u}");
    assert_eq!(u["counters"]["cache_hits"], 1);
    assert_eq!(u["counters"]["cache_misses"], 2);
    assert!((u["cache_hit_rate"].as_f64().unwrap() - 1.0 / 3.0).abs() < 1e-9);
    let cost = a["cost"].as_f64().unwrap() + changed["cost"].as_f64().unwrap();
    assert!((u["cost_usd"].as_f64().unwrap() - cost).abs() < 2e-6, "{u}");
    stack.stop().await;
}

#[tokio::test]
async fn retries_fallbacks_breakers_and_degraded_modes() {
    let stub = StubModels::start().await;
    stub.set("flaky", Behavior::FailFirst(2, "Refunds take 5 business days [1].".into()));
    stub.set("down", Behavior::Status(503));
    stub.set("throttled", Behavior::Status(429));
    stub.set("stalls", Behavior::Stall);
    stub.set("rejects", Behavior::Status(400));
    stub.set("big", Behavior::Answer("Five business days [1].".into()));
    let models = stub.catalog(&[
        ("flaky", "t2", 0.1, 5_000),
        ("down", "t2", 0.1, 5_000),
        ("throttled", "t2", 0.1, 5_000),
        ("stalls", "t2", 0.1, 200),
        ("rejects", "t2", 0.1, 5_000),
        ("big", "t3", 1.0, 5_000),
    ]);
    let (_dir, stack, c) = gateway(&models).await;

    // Two retryable failures, then an answer: three attempts on one model.
    let t = hosted_tenant(&c, "flaky", json!({"models": ["flaky"]}), json!({})).await;
    let (s, a) = ask(&c, &t.member, Q).await;
    assert_eq!((s, a["model"].as_str()), (200, Some("flaky")), "{a}");
    assert_eq!(stub.calls("flaky"), 3);

    // An outage falls back to the next model after three attempts, and its
    // three failures open the breaker: the next request skips the model.
    let t = hosted_tenant(&c, "t-down", json!({"models": ["down", "big"]}), json!({})).await;
    let (s, a) = ask(&c, &t.member, Q).await;
    assert_eq!((s, a["model"].as_str()), (200, Some("big")), "{a}");
    assert!(route(&a).contains("down failed after 3 attempt(s)"), "{}", route(&a));
    let (_, a) = ask(&c, &t.member, "How long until a refund reaches my card?").await;
    assert!(route(&a).contains("circuit open, skipped: down"), "{}", route(&a));
    assert_eq!(stub.calls("down"), 3);
    // After the cool-down one probe goes through; it fails and the breaker opens again.
    tokio::time::sleep(Duration::from_millis(350)).await;
    let (_, a) = ask(&c, &t.member, "When does a refund reach the card?").await;
    assert_eq!(a["model"], "big");
    assert_eq!(stub.calls("down"), 4, "exactly one half-open probe: {}", route(&a));
    let (_, a) = ask(&c, &t.member, "Refund timing for my card?").await;
    assert!(route(&a).contains("circuit open, skipped: down"), "{}", route(&a));

    // Throttling and stalls (timeouts) are retried too before falling back;
    // a rejected request is not retried.
    for (model, calls) in [("throttled", 3), ("stalls", 3), ("rejects", 1)] {
        let t = hosted_tenant(&c, &format!("t-{model}"), json!({"models": [model, "big"]}), json!({})).await;
        let (s, a) = ask(&c, &t.member, Q).await;
        assert_eq!((s, a["model"].as_str()), (200, Some("big")), "{model}: {a}");
        assert!(route(&a).contains(&format!("{model} failed after {calls} attempt(s)")), "{}", route(&a));
        assert_eq!(stub.calls(model), calls, "{model}");
    }

    // Nothing hosted works: the ask degrades to an extractive answer, chat says 503.
    let t = hosted_tenant(&c, "degraded", json!({"models": ["rejects"]}), json!({})).await;
    let (s, a) = ask(&c, &t.member, Q).await;
    assert_eq!((s, a["tier"].as_str(), a["degraded"].as_str()), (200, Some("t1"), Some("extractive_only")), "{a}");
    assert!(a["answer"].as_str().unwrap().contains("within 5 business days. [1]"), "{a}");
    let (s, e) = chat(&c, &t.member, json!({"model": "auto", "messages": [{"role": "user", "content": "hi"}]})).await;
    assert_eq!(s, 503, "{e}");
    assert!(e["error"]["message"].as_str().unwrap().contains("rejects"));
    stack.stop().await;
}

#[tokio::test]
async fn budgets_are_reserved_so_concurrent_requests_never_overspend() {
    let stub = StubModels::start().await;
    // Slow answers keep many reservations open at once.
    stub.set("priced", Behavior::Slow(Duration::from_millis(100), "Sure.".into()));
    let (_dir, stack, c) = gateway(&stub.catalog(&[("priced", "t2", 10.0, 5_000)])).await;
    // Worst case per call: (~25 prompt + 100 max output tokens) × $10/1k ≈ $1.25; budget $5.
    let t = hosted_tenant(&c, "budget", json!({"allow_downgrade": false, "cache_ttl_secs": 0}), json!({"monthly_usd": 5.0})).await;
    let body = json!({"model": "auto", "max_tokens": 100, "messages": [{"role": "user", "content": "Say something short."}]});
    let calls: Vec<_> = (0..16)
        .map(|_| {
            let (c, key, body) = (Client::new(stack.url()), t.member.clone(), body.clone());
            tokio::spawn(async move { chat(&c, &key, body).await })
        })
        .collect();
    let mut spent = 0.0;
    let mut refused = 0;
    for call in calls {
        let (s, b) = call.await.unwrap();
        match s {
            200 => spent += b["keel"]["cost"].as_f64().unwrap(),
            429 => {
                refused += 1;
                assert!(b["error"]["message"].as_str().unwrap().contains("monthly budget"), "{b}");
            }
            other => panic!("unexpected {other}: {b}"),
        }
    }
    assert!(refused > 0, "a $5 budget cannot pay for 16 calls reserved at ~$1.25");
    assert!(spent <= 5.0, "spent {spent}");
    assert!(stub.calls("priced") <= 16 - refused);
    // The counter holds exactly the settled cost, and usage shows what is left.
    let (_, u) = c.call("GET", "/v1/usage", &t.admin, None).await.unwrap();
    assert!((u["budget"]["spent_usd"].as_f64().unwrap() - spent).abs() < 1e-5, "{u} vs {spent}");
    assert!(u["budget"]["left_usd"].as_f64().unwrap() >= 0.0);

    // A workflow budget is its own limit, named in the refusal.
    let w = hosted_tenant(&c, "wf", json!({"allow_downgrade": false}), json!({"workflows": {"triage": 0.0, "billing": 5.0}})).await;
    let mut triage = body.clone();
    triage["workflow"] = json!("triage");
    let (s, e) = chat(&c, &w.member, triage).await;
    assert_eq!(s, 429, "{e}");
    assert!(e["error"]["message"].as_str().unwrap().contains("workflow \\\"triage\\\"") || e["error"]["message"].as_str().unwrap().contains("triage"));
    let mut billing = body.clone();
    billing["workflow"] = json!("billing");
    let (s, _) = chat(&c, &w.member, billing).await;
    assert_eq!(s, 200, "other workflows are not limited by it");
    // Leaving the workflow out of a paid call (not a cached one) would skip its budget: refused.
    let mut unnamed = body.clone();
    unnamed["messages"][0]["content"] = json!("Say something else.");
    assert_eq!(chat(&c, &w.member, unnamed).await.0, 400);

    // With downgrades allowed, an ask over budget is answered in-function.
    let d = hosted_tenant(&c, "downgrade", json!({}), json!({"monthly_usd": 0.0})).await;
    let (s, a) = ask(&c, &d.member, Q).await;
    assert_eq!((s, a["tier"].as_str()), (200, Some("t1")), "{a}");
    assert!(route(&a).contains("over budget: downgraded"), "{}", route(&a));
    assert_eq!(a["degraded"], Value::Null);
    stack.stop().await;
}

#[tokio::test]
async fn a_chat_over_the_rate_limit_is_refused_before_its_model_call_and_holds_no_budget() {
    let stub = StubModels::start().await;
    let (_dir, stack, c) = gateway(&stub.catalog(&[("priced", "t2", 10.0, 5_000)])).await;
    keel_tests::inside_one_minute(Duration::from_secs(15)).await;
    let t = hosted_tenant(&c, "limited", json!({"allow_downgrade": false}), json!({"monthly_usd": 5.0})).await;
    // Four a minute: the document hosted_tenant put was the first.
    let (s, _) = c.call("PATCH", "/v1/tenants/limited", ADMIN_KEY, Some(json!({"rate_limit_per_minute": 4}))).await.unwrap();
    assert_eq!(s, 200);
    let mut statuses = Vec::new();
    let mut spent = 0.0;
    for i in 0..5 {
        // Each prompt its own, so none is a cache hit.
        let body = json!({"model": "auto", "max_tokens": 100, "messages": [{"role": "user", "content": format!("Say {i}.")}]});
        let (s, b) = chat(&c, &t.member, body).await;
        statuses.push(s);
        if s == 200 {
            spent += b["keel"]["cost"].as_f64().unwrap();
        } else {
            assert!(b["error"]["message"].as_str().unwrap().contains("rate limit"), "{b}");
        }
    }
    assert_eq!(statuses, [200, 200, 200, 429, 429]);
    assert_eq!(stub.calls("priced"), 3, "a refused request never reaches the model");
    // The reservations the refused requests made beside their count were given back.
    c.call("PATCH", "/v1/tenants/limited", ADMIN_KEY, Some(json!({"rate_limit_per_minute": 1000}))).await.unwrap();
    let (_, u) = c.call("GET", "/v1/usage", &t.admin, None).await.unwrap();
    assert!((u["budget"]["spent_usd"].as_f64().unwrap() - spent).abs() < 1e-5, "{u} vs {spent}");
    stack.stop().await;
}

#[tokio::test]
async fn a_caller_that_hangs_up_still_has_its_model_call_settled_and_recorded() {
    let stub = StubModels::start().await;
    stub.set("priced", Behavior::Slow(Duration::from_millis(300), "Sure.".into()));
    let (_dir, stack, c) = gateway(&stub.catalog(&[("priced", "t2", 10.0, 5_000)])).await;
    let t = hosted_tenant(&c, "hangup", json!({"cache_ttl_secs": 0}), json!({"monthly_usd": 5.0})).await;
    let body = json!({"model": "auto", "max_tokens": 100, "messages": [{"role": "user", "content": "Say something short."}]});
    // The caller gives up while the model is still answering.
    let impatient = reqwest::Client::builder().timeout(Duration::from_millis(100)).build().unwrap();
    let gone = impatient.post(format!("{}/v1/chat/completions", stack.url())).bearer_auth(&t.member).json(&body).send().await;
    assert!(gone.is_err_and(|e| e.is_timeout()));
    // As a Lambda invocation would, the request runs to its end: the model
    // call is paid for, so its reservation (~$1.25 worst case) is settled to
    // the real cost and its decision is recorded with its usage.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let usage = loop {
        assert!(stack.settle(Duration::from_secs(10)).await);
        let (_, u) = c.call("GET", "/v1/usage", &t.admin, None).await.unwrap();
        if u["counters"]["chat_requests"] == 1 {
            break u;
        }
        assert!(std::time::Instant::now() < deadline, "the abandoned request was never recorded: {u}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let cost = usage["cost_usd"].as_f64().unwrap();
    assert!(cost > 0.0 && cost < 1.0, "{usage}");
    assert!((usage["budget"]["spent_usd"].as_f64().unwrap() - cost).abs() < 1e-6, "reservation left unsettled: {usage}");
    assert_eq!(stub.calls("priced"), 1);
    stack.stop().await;
}

#[tokio::test]
async fn kill_switch_entitlements_and_policy_validation() {
    let stub = StubModels::start().await;
    stub.set("small", Behavior::Answer("Five days [1].".into()));
    let (_dir, stack, c) = gateway(&stub.catalog(&[("small", "t2", 0.1, 5_000), ("big", "t3", 1.0, 5_000)])).await;
    let t = hosted_tenant(&c, "killed", json!({"models": ["small"]}), json!({})).await;

    // Policy: a model outside the tenant's policy is refused by name.
    let (s, e) = chat(&c, &t.member, json!({"model": "big", "messages": [{"role": "user", "content": "hi"}]})).await;
    assert_eq!(s, 404, "{e}");
    let (s, e) = c.call("PATCH", "/v1/tenants/killed", ADMIN_KEY, Some(json!({"routing": {"models": ["gpt-9"]}}))).await.unwrap();
    assert_eq!(s, 400);
    assert!(e["error"]["message"].as_str().unwrap().contains("gpt-9"));
    let (s, _) = c.call("PATCH", "/v1/tenants/killed", ADMIN_KEY, Some(json!({"budgets": {"monthly_usd": -1}}))).await.unwrap();
    assert_eq!(s, 400);
    // Only the platform admin sets policies and budgets.
    let (s, _) = c.call("PATCH", "/v1/tenants/killed", &t.admin, Some(json!({"budgets": {"monthly_usd": 100}}))).await.unwrap();
    assert_eq!(s, 403);

    // The kill switch stops hosted calls at once.
    let (s, killed) = c.call("PATCH", "/v1/tenants/killed", ADMIN_KEY, Some(json!({"kill_switch": true}))).await.unwrap();
    assert_eq!(s, 200);
    // The setting reads back under the name it is set by.
    assert_eq!((killed["kill_switch"].clone(), killed.get("models_off")), (json!(true), None));
    let (_, a) = ask(&c, &t.member, Q).await;
    assert_eq!(a["tier"], "t1");
    assert!(route(&a).contains("kill switch"));
    let (s, _) = chat(&c, &t.member, json!({"model": "auto", "messages": [{"role": "user", "content": "hi"}]})).await;
    assert_eq!(s, 503);
    assert_eq!(stub.calls("small"), 0);
    c.call("PATCH", "/v1/tenants/killed", ADMIN_KEY, Some(json!({"kill_switch": false}))).await.unwrap();
    let (_, a) = ask(&c, &t.member, Q).await;
    assert_eq!(a["model"], "small");

    // Plan entitlements come from the catalog.
    let models = json!([{"name": "small", "provider": "openai", "model_id": "small", "tier": "t2", "base_url": stub.base_url(),
        "usd_per_1k_input": 0.1, "usd_per_1k_output": 0.1, "plans": ["enterprise"]}]);
    let (_dir2, stack2, c2) = gateway(&models.to_string()).await;
    let std = hosted_tenant(&c2, "standard", json!({}), json!({})).await;
    let (_, a) = ask(&c2, &std.member, Q).await;
    assert_eq!(a["tier"], "t1", "the standard plan is not entitled to the model: {a}");
    let ent = tenant(&c2, "ent", json!({"plan": "enterprise", "routing": {"escalate_below": 1.0}})).await;
    c2.call("PUT", "/v1/documents/refunds", &ent.member, Some(json!({"text": REFUNDS}))).await.unwrap();
    let (_, a) = ask(&c2, &ent.member, Q).await;
    assert_eq!(a["model"], "small", "{a}");
    stack.stop().await;
    stack2.stop().await;
}

#[tokio::test]
async fn prompts_that_differ_in_any_character_never_share_a_cached_answer() {
    let stub = StubModels::start().await;
    let (_dir, stack, c) = gateway(&stub.catalog(&[("small", "t2", 0.2, 5_000)])).await;
    let t = tenant(&c, "cachekeys", json!({})).await;
    let body = |content: &str| json!({"model": "auto", "temperature": 0, "messages": [{"role": "user", "content": content}]});
    for (i, prompt) in ["2+2", "2-2", "What is X?", "what is x"].into_iter().enumerate() {
        stub.set("small", Behavior::Answer(format!("answer {i}")));
        let (s, r) = chat(&c, &t.member, body(prompt)).await;
        assert_eq!((s, r["keel"]["cached"].as_bool()), (200, Some(false)), "{prompt}: {r}");
        assert_eq!(r["choices"][0]["message"]["content"], format!("answer {i}"));
    }
    // The very same prompt is still served from the cache.
    let (_, again) = chat(&c, &t.member, body("2-2")).await;
    assert_eq!((again["keel"]["cached"].as_bool(), again["choices"][0]["message"]["content"].as_str()), (Some(true), Some("answer 1")));
    stack.stop().await;
}

#[tokio::test]
async fn a_tenant_with_workflow_budgets_charges_every_paid_call_to_one() {
    let stub = StubModels::start().await;
    let (_dir, stack, c) = gateway(&stub.catalog(&[("small", "t2", 0.2, 5_000)])).await;
    let t = tenant(&c, "workflows", json!({"routing": {"cache_ttl_secs": 0}, "budgets": {"workflows": {"support": 5.0}}})).await;
    let body = |workflow: Option<&str>| {
        let mut b = json!({"model": "auto", "messages": [{"role": "user", "content": "Greet me."}]});
        if let Some(w) = workflow {
            b["workflow"] = json!(w);
        }
        b
    };
    for missing in [None, Some("sales")] {
        let (s, r) = chat(&c, &t.member, body(missing)).await;
        assert_eq!(s, 400, "{missing:?}: {r}");
        assert!(r["error"]["message"].as_str().unwrap().contains("support"), "{r}");
    }
    assert_eq!(stub.calls("small"), 0, "nothing was paid outside a budget");
    assert_eq!(chat(&c, &t.member, body(Some("support"))).await.0, 200);
    let patch = json!({"budgets": {"workflows": {"support": 5.0}, "default_workflow": "support"}});
    assert_eq!(c.call("PATCH", "/v1/tenants/workflows", keel_tests::ADMIN_KEY, Some(patch)).await.unwrap().0, 200);
    assert_eq!(chat(&c, &t.member, body(None)).await.0, 200);
    let (_, u) = c.call("GET", "/v1/usage", &t.admin, None).await.unwrap();
    assert!(u["budget"]["workflows"]["support"]["spent_usd"].as_f64().unwrap() > 0.0, "{u}");
    stack.stop().await;
}
