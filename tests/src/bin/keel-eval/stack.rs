//! The local stack the evaluations run against, and their tenants on it.

use super::*;

pub(crate) struct Env {
    pub(crate) _dir: Option<tempfile::TempDir>,
    pub(crate) stack: Stack,
    pub(crate) client: Client,
}

impl Env {
    /// A local stack in a temporary directory, or in `KEEL_EVAL_DATA_DIR` so
    /// that several commands share one ingest (tenants found there are reused).
    pub(crate) async fn start() -> Self {
        let (dir, path) = match std::env::var("KEEL_EVAL_DATA_DIR") {
            Ok(p) => (None, PathBuf::from(p)),
            Err(_) => {
                let d = tempfile::tempdir().unwrap();
                let p = d.path().to_path_buf();
                (Some(d), p)
            }
        };
        let config = keel_tests::config(&[("KEEL_DEFAULT_RATE_LIMIT", "1000000")]);
        let stack = keel_tests::start_stack(&path, config).await;
        let client = Client::new(stack.url());
        Self { _dir: dir, stack, client }
    }

    /// Creates a tenant (or finds it) and returns a key for it, and whether it is new.
    pub(crate) async fn tenant(&self, id: &str) -> (String, bool) {
        let admin = &self.stack.admin_key;
        let (s, b) = self.client.call("POST", "/v1/tenants", admin, Some(json!({"id": id, "name": id, "plan": "pro"}))).await.unwrap();
        assert!(s == 201 || s == 409, "{b}");
        let body = json!({"principal": "eval", "roles": ["member", "admin"]});
        let (s, k) = self.client.call("POST", &format!("/v1/tenants/{id}/keys"), admin, Some(body)).await.unwrap();
        assert_eq!(s, 201, "{k}");
        (k["key"].as_str().unwrap().to_string(), s == 201 && b["id"] == json!(id))
    }

    /// A tenant holding `docs`, ingested unless it was there already.
    pub(crate) async fn tenant_with(&self, id: &str, docs: &[Doc]) -> String {
        let (key, new) = self.tenant(id).await;
        if new {
            let (seconds, chunks) = self.ingest(id, &key, docs).await;
            println!("Ingest of {id} (queue → chunk → PII → embed one at a time → segment), one ONNX Runtime thread:");
            println!("  {} documents, {chunks} chunks in {seconds:.1} s = {:.1} chunks/s, {:.1} documents/s; peak memory so far {:.0} MiB",
                docs.len(), chunks as f64 / seconds, docs.len() as f64 / seconds, peak_memory_mib());
        } else {
            println!("Reusing tenant {id} from KEEL_EVAL_DATA_DIR");
        }
        key
    }

    /// Sends every document through the ingest queue as producers do and
    /// waits for it to drain. Returns (seconds, chunks indexed).
    pub(crate) async fn ingest(&self, tenant: &str, key: &str, docs: &[Doc]) -> (f64, usize) {
        let started = Instant::now();
        let attrs: HashMap<String, String> = [("authorization".to_string(), format!("Bearer {key}"))].into();
        for d in docs {
            let body = json!({"op": "put", "doc_id": d.id, "document": {"title": d.title, "text": d.text, "source": "eval"}});
            self.stack.queue.send(QueueName::Ingest, body.to_string(), attrs.clone()).await.unwrap();
        }
        assert!(self.stack.settle(Duration::from_secs(3600)).await, "ingest did not drain");
        let dead = self.stack.queue.dead_letters(QueueName::Ingest).unwrap();
        assert!(dead.is_empty(), "{} ingest messages failed", dead.len());
        let seconds = started.elapsed().as_secs_f64();
        let t = TenantId::parse(tenant).unwrap();
        let chunks: usize = self.stack.retrieval.export_segments(&t).await.unwrap().iter().map(|s| s.chunks.len()).sum();
        (seconds, chunks)
    }

    pub(crate) async fn search(&self, key: &str, query: &str, k: usize) -> Vec<Value> {
        let (s, b) = self.client.call("POST", "/v1/search", key, Some(json!({"query": query, "k": k}))).await.unwrap();
        assert_eq!(s, 200, "{b}");
        b["results"].as_array().cloned().unwrap_or_default()
    }
}
