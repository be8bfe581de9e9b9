// Test-only code: helpers outside #[test] functions may unwrap and panic too.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

//! Every file under events/ through its function's real handler — the
//! `keel_lambda::Function` each Lambda binary runs, over the AWS adapters —
//! against moto server with the resources `scripts/dev.sh` creates, in the
//! order a tester would invoke them with `cargo lambda invoke --data-file`.
//! Each must get a real answer, so a sample that rots fails here. The only
//! edits are the ones the README asks of a tester: the action id that
//! propose-action answered in place of act_REPLACE, and (here) a loopback
//! refund service in place of refunds.example.com.

use keel_aws::provision::{provision, seed_samples};
use keel_lambda::Function;
use keel_tests::aws_path::answer;
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::path::Path;

fn sample(path: &str) -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../events").join(path)).unwrap()
}

struct Invoker {
    seen: BTreeSet<String>,
    replacements: Vec<(String, String)>,
}

impl Invoker {
    async fn invoke(&mut self, function: &Function, path: &str) -> Value {
        self.seen.insert(path.to_string());
        let mut text = sample(path);
        for (from, to) in &self.replacements {
            text = text.replace(from.as_str(), to);
        }
        let out = function.invoke(serde_json::from_str(&text).unwrap()).await.unwrap_or_else(|e| panic!("{path}: {e:?}"));
        answer(out).await
    }

    /// An HTTP sample: its status and parsed body, which must be a success.
    async fn http(&mut self, function: &Function, path: &str) -> Value {
        let out = self.invoke(function, path).await;
        let status = out["statusCode"].as_u64().unwrap_or(0);
        assert!((200..300).contains(&status), "{path}: {out}");
        serde_json::from_str(out["body"].as_str().unwrap_or("null")).unwrap_or(out["body"].clone())
    }

    /// A queue batch: no message may fail.
    async fn batch(&mut self, function: &Function, path: &str) {
        let out = self.invoke(function, path).await;
        assert_eq!(out["batchItemFailures"], json!([]), "{path}: {out}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_sample_event_gets_a_real_answer_from_its_function_on_moto() {
    let Some(endpoint) = keel_tests::aws::moto() else { return };
    let sdk = keel_tests::aws::sdk_config(&endpoint).await;
    let prefix = format!("ev-{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
    let resources = provision(&sdk, &prefix, "arn:aws:lambda:us-east-1:123456789012:function:keel-tools").await.unwrap();
    let adapters = || keel_aws::Adapters::new(sdk.clone(), resources.clone());
    // chat-completions needs a hosted model: a stub OpenAI-compatible server stands in.
    let models = keel_tests::stub::StubModels::start().await;
    let catalog = models.catalog(&[("small", "t2", 0.0005, 5000)]);
    let config = keel_tests::config(&[("KEEL_MODELS", catalog.as_str())]);
    let auth = keel_auth::lambda::function(adapters(), config.clone()).unwrap();
    let retrieval = keel_retrieval::lambda::function(adapters(), config.clone()).unwrap();
    let routing = keel_routing::lambda::function(adapters(), config.clone()).await.unwrap();
    let tools = keel_tools::lambda::function(adapters(), config.clone()).unwrap();
    let audit = keel_audit::lambda::function(adapters(), config.clone()).unwrap();
    let refunds = keel_tests::serve_on_loopback(axum::Router::new().fallback(|| async { axum::Json(json!({"refund_id": "rf_1"})) })).await;
    // The inbox sample names the inbox queue `keel dev` provisions (prefix `keel`); this run's has its own prefix.
    let inbox_queue = resources.inbox_queue_arn.clone().unwrap();
    let replacements = vec![
        ("https://refunds.example.com".into(), format!("http://{refunds}")),
        ("arn:aws:sqs:us-east-1:123456789012:keel-inbox".into(), inbox_queue),
    ];
    let mut run = Invoker { seen: BTreeSet::new(), replacements };

    let tenant = run.http(&auth, "auth/create-tenant.json").await;
    assert_eq!(tenant["id"], "acme");
    let seeded = adapters();
    seed_samples(seeded.table.clone(), seeded.blobs.as_ref(), &config).await.unwrap();
    let key = run.http(&auth, "auth/create-key.json").await;
    assert!(key["key"].as_str().unwrap().starts_with("keel_acme_"));
    let allowed = run.invoke(&auth, "auth/authorizer.json").await;
    assert_eq!(allowed["isAuthorized"], true, "{allowed}");

    run.http(&retrieval, "retrieval/put-document.json").await;
    run.http(&retrieval, "retrieval/put-source.json").await;
    run.batch(&retrieval, "retrieval/ingest-batch.json").await;
    run.batch(&retrieval, "retrieval/inbox-batch.json").await;
    let hits = run.http(&retrieval, "retrieval/search.json").await;
    assert!(!hits["results"].as_array().unwrap().is_empty(), "{hits}");
    run.http(&retrieval, "retrieval/changes.json").await;

    let asked = run.http(&routing, "routing/ask.json").await;
    assert!(asked["decision_id"].is_string(), "{asked}");
    let chat = run.http(&routing, "routing/chat-completions.json").await;
    assert_eq!(chat["object"], "chat.completion", "{chat}");
    run.http(&routing, "routing/classify.json").await;
    run.http(&routing, "routing/rank.json").await;
    let streamed = run.invoke(&routing, "routing/ask-stream-url.json").await;
    assert!(streamed.as_str().unwrap().contains("event: done"), "{streamed}");

    run.http(&tools, "tools/put-tool.json").await;
    let proposed = run.http(&tools, "tools/propose-action.json").await;
    assert_eq!(proposed["status"], "pending_approval", "{proposed}");
    run.replacements.push(("act_REPLACE".into(), proposed["action_id"].as_str().unwrap().into()));
    run.batch(&tools, "tools/actions-batch.json").await;
    let waiting = run.invoke(&tools, "tools/await-approval-step.json").await;
    assert_eq!(waiting, json!({"waiting": true}));
    let approved = run.http(&tools, "tools/approve-action.json").await;
    assert_eq!(approved["status"], "running", "{approved}");
    let executed = run.invoke(&tools, "tools/saga-step.json").await;
    assert!(executed.is_object(), "{executed}");

    run.batch(&audit, "audit/audit-batch.json").await;
    let verified = run.http(&audit, "audit/verify.json").await;
    assert_eq!(verified["ok"], true, "{verified}");
    run.http(&audit, "audit/export.json").await;

    // Every sample file was run.
    let on_disk: BTreeSet<String> = keel_tests::files_under(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../events"))
        .into_iter()
        .map(|p| p.strip_prefix(Path::new(env!("CARGO_MANIFEST_DIR")).join("../events")).unwrap().display().to_string())
        .collect();
    assert_eq!(run.seen, on_disk, "a sample under events/ is not run here: add it");
}
