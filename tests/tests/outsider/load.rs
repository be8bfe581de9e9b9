//! One tenant's load cannot fail or bill another: producers held to the
//! rate limit, refused requests that do no work, breakers a tenant's own
//! timeouts cannot open for others, capped `max_tokens`, and per-tenant
//! concurrency limits.

use super::*;

/// Queue producers skipped their tenant's rate limit (10 of 10 proposals
/// went through at 3 a minute). A producer's message now counts like an
/// HTTP request: past the limit it is left for the queue to deliver again
/// later, neither done nor dead-lettered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_producers_are_held_to_their_tenants_rate_limit() {
    use keel_core::ports::{QueueName, Table, WorkQueue};
    let dir = tempfile::tempdir().unwrap();
    // Messages refused for the limit come back only after the test.
    let options = keel_emulator::StackOptions { queue_visibility: Duration::from_secs(60), ..keel_tests::stack_options(dir.path(), config(&[])) };
    let stack = keel_emulator::Stack::start(options).await.unwrap();
    let c = Client::new(stack.url());
    let t = tenant(&c, "acme", json!({"autonomy": "unattended", "rate_limit_per_minute": 4})).await;
    keel_tests::inside_one_minute(Duration::from_secs(20)).await;
    let url = service().await;
    assert_eq!(put(&c, &t.admin, "/v1/tools/tag", any_args_tool(&url, None)).await.0, 200);
    let signed = std::collections::HashMap::from([("authorization".to_string(), format!("Bearer {}", t.member))]);
    for i in 0..10 {
        let proposal = json!({"tool": "tag", "args": {"n": i}, "idempotency_key": format!("q-{i}")});
        stack.queue.send(QueueName::Actions, proposal.to_string(), signed.clone()).await.unwrap();
    }
    let document = json!({"op": "put", "doc_id": "late", "document": {"text": "Over the limit."}});
    stack.queue.send(QueueName::Ingest, document.to_string(), signed).await.unwrap();
    let admitted = || async {
        let actions = stack.table.query("T#acme", "ACTION#", Default::default()).await.unwrap().len();
        actions + stack.table.query("T#acme", "DOC#", Default::default()).await.unwrap().len()
    };
    for _ in 0..100 {
        if admitted().await >= 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(admitted().await, 3, "the tool's registration and three producer messages fill the minute");
    for queue in [QueueName::Actions, QueueName::Ingest] {
        assert!(stack.queue.dead_letters(queue).unwrap().is_empty(), "a message over the limit was dead-lettered");
    }
    let waiting = stack.queue.pending(QueueName::Actions).unwrap() + stack.queue.pending(QueueName::Ingest).unwrap();
    assert_eq!(waiting, 8, "the messages over the limit wait in their queues");
    stack.stop().await;
}

/// Searches and asks the rate limit refuses cost CPU (15 refused
/// 3,000-word searches took 2 s): the count is now decided before the query
/// is embedded or ranked, so a refused request embeds nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_the_rate_limit_refuses_embed_and_search_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let stack = start_stack(dir.path(), config(&[])).await;
    let c = Client::new(stack.url());
    let t = tenant(&c, "acme", json!({"rate_limit_per_minute": 2})).await;
    keel_tests::inside_one_minute(Duration::from_secs(20)).await;
    let long = "payroll ".repeat(3_000);
    let question = "payroll ".repeat(240); // under the ask's 2,000 characters
    let (s, b) = c.call("POST", "/v1/search", &t.member, Some(json!({"query": "payroll"}))).await.unwrap();
    assert_eq!(s, 200, "{b}");
    let (s, b) = c.call("POST", "/v1/search", &t.member, Some(json!({"query": "payroll"}))).await.unwrap();
    assert_eq!(s, 200, "{b}");
    let embedded = stack.retrieval.embedded_texts();
    for i in 0..15 {
        let (route, body) = if i % 2 == 0 { ("/v1/search", json!({"query": long})) } else { ("/v1/ask", json!({"question": question})) };
        let (s, b) = c.call("POST", route, &t.member, Some(body)).await.unwrap();
        assert_eq!(s, 429, "{b}");
    }
    assert_eq!(stack.retrieval.embedded_texts(), embedded, "a refused request embedded its query");
    stack.stop().await;
}

/// One tenant's long generations (timeouts it provoked with a large
/// `max_tokens`) opened the shared model's breaker, and another tenant's
/// short chat got 503. Timeouts now open only the tenant's own breaker for
/// the model; the provider's own failures still open the model's, for all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenants_own_timeouts_never_open_the_model_for_another_tenant() {
    use keel_tests::stub::{Behavior, StubModels};
    let stub = StubModels::start().await;
    stub.set("shared", Behavior::SlowOver(100, Duration::from_secs(3), "Short.".into()));
    let (_dir, stack, c) = keel_tests::gateway::gateway(&stub.catalog(&[("shared", "t2", 0.5, 700)])).await;
    let greedy = tenant(&c, "greedy", json!({})).await;
    let modest = tenant(&c, "modest", json!({})).await;
    // Temperature 0.5: nothing comes from the answer cache.
    let chat = |max_tokens: u32| json!({"model": "shared", "max_tokens": max_tokens, "temperature": 0.5, "messages": [{"role": "user", "content": "Write."}]});
    for _ in 0..2 {
        let (s, b) = keel_tests::gateway::chat(&c, &greedy.member, chat(400)).await;
        assert_eq!(s, 503, "the long generation timed out: {b}");
    }
    let calls = stub.calls("shared");
    let (s, b) = keel_tests::gateway::chat(&c, &greedy.member, chat(400)).await;
    assert_eq!(s, 503, "{b}");
    assert_eq!(stub.calls("shared"), calls, "greedy's own breaker stops its calls: {b}");
    let (s, b) = keel_tests::gateway::chat(&c, &modest.member, chat(50)).await;
    assert_eq!(s, 200, "another tenant's short chat is served: {b}");

    // The provider failing for real opens the model's breaker for every tenant.
    stub.set("shared", Behavior::Status(503));
    let (s, _) = keel_tests::gateway::chat(&c, &modest.member, chat(50)).await;
    assert_eq!(s, 503);
    let calls = stub.calls("shared");
    let third = tenant(&c, "third", json!({})).await;
    let (s, b) = keel_tests::gateway::chat(&c, &third.member, chat(50)).await;
    assert_eq!(s, 503, "{b}");
    assert_eq!(stub.calls("shared"), calls, "the model's breaker is open for everyone: {b}");
    stack.stop().await;
}

/// A chat asked the model for 4,000,000,000 tokens. `max_tokens` is now
/// capped at `KEEL_MODEL_MAX_TOKENS`, or lower by the tenant's plan
/// (`KEEL_PLAN_MAX_TOKENS`), and the response says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_tokens_is_capped_by_the_platform_and_the_plan_and_the_answer_says_so() {
    use keel_tests::stub::StubModels;
    let stub = StubModels::start().await;
    let dir = tempfile::tempdir().unwrap();
    let catalog = stub.catalog(&[("small", "t2", 0.0005, 5_000)]);
    let config = config(&[("KEEL_MODELS", &catalog), ("KEEL_MODEL_MAX_TOKENS", "1000"), ("KEEL_PLAN_MAX_TOKENS", r#"{"free": 100}"#)]);
    let stack = start_stack(dir.path(), config).await;
    let c = Client::new(stack.url());
    let standard = tenant(&c, "standard", json!({})).await;
    let free = tenant(&c, "free", json!({"plan": "free"})).await;
    let chat = |max_tokens: u64| json!({"model": "small", "max_tokens": max_tokens, "temperature": 0.5, "messages": [{"role": "user", "content": "Hi."}]});
    let (s, b) = keel_tests::gateway::chat(&c, &standard.member, chat(4_000_000_000)).await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(stub.last_max_tokens("small"), Some(1000));
    assert_eq!(b["keel"]["max_tokens_capped"], json!({"asked": 4_000_000_000u64, "limit": 1000, "by": "platform"}), "{b}");
    let (s, b) = keel_tests::gateway::chat(&c, &free.member, chat(500)).await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(stub.last_max_tokens("small"), Some(100));
    assert_eq!(b["keel"]["max_tokens_capped"]["by"], "plan", "{b}");
    let (_, b) = keel_tests::gateway::chat(&c, &standard.member, chat(20)).await;
    assert_eq!((stub.last_max_tokens("small"), b["keel"].get("max_tokens_capped")), (Some(20), None), "{b}");
    stack.stop().await;
}

/// One tenant within its per-minute rate could hold every instance the
/// account has. Expensive surfaces now have a per-tenant concurrency limit
/// (`KEEL_TENANT_CONCURRENCY`): past it 429 with `Retry-After`, while other
/// tenants' requests go on, and each slot comes back when its answer is sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_cannot_run_more_expensive_requests_at_once_than_its_limit() {
    use keel_tests::stub::{Behavior, StubModels};
    let stub = StubModels::start().await;
    stub.set("small", Behavior::Slow(Duration::from_millis(1500), "Slowly.".into()));
    let dir = tempfile::tempdir().unwrap();
    let catalog = stub.catalog(&[("small", "t2", 0.0005, 5_000)]);
    let stack = start_stack(dir.path(), config(&[("KEEL_MODELS", &catalog), ("KEEL_TENANT_CONCURRENCY", "2")])).await;
    let c = Client::new(stack.url());
    let busy = tenant(&c, "busy", json!({})).await;
    let calm = tenant(&c, "calm", json!({})).await;
    let chat = |i: usize| json!({"model": "small", "temperature": 0.5, "messages": [{"role": "user", "content": format!("Count to {i}.")}]});
    let send = |key: String, body: Value| {
        let c = Client::new(stack.url());
        tokio::spawn(async move { c.call_with_headers("POST", "/v1/chat/completions", &key, Some(body), &[]).await.unwrap() })
    };
    let running: Vec<_> = (0..4).map(|i| send(busy.member.clone(), chat(i))).collect();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let other = send(calm.member.clone(), chat(9));
    let mut statuses = Vec::new();
    for r in running {
        let (s, headers, b) = r.await.unwrap();
        if s == 429 {
            assert_eq!(headers.get("retry-after").and_then(|v| v.to_str().ok()), Some("1"), "{b}");
            assert!(b["error"]["message"].as_str().unwrap().contains("requests running"), "{b}");
        }
        statuses.push(s);
    }
    statuses.sort();
    assert_eq!(statuses, [200, 200, 429, 429], "two at once, the others refused");
    assert_eq!(other.await.unwrap().0, 200, "another tenant's request is not held up");
    let (s, _, b) = send(busy.member.clone(), chat(5)).await.unwrap();
    assert_eq!(s, 200, "the slots came back with the answers: {b}");
    stack.stop().await;
}
