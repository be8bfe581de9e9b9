//! One config, read and validated once at init. Every function's `main` and
//! the local stack build it from the environment; a bad value fails start-up
//! with a message naming the variable.

use crate::jwt::JwtSettings;
use crate::error::KeelError;
use crate::models::{parse_catalog, ModelSpec};

/// Where the in-function embedding model and ONNX Runtime live.
#[derive(Clone, Debug, PartialEq)]
pub struct EmbeddingFiles {
    /// A directory with `model.onnx` and `tokenizer.json` (`KEEL_MODEL_DIR`).
    pub model_dir: std::path::PathBuf,
    /// `libonnxruntime.so` (`ORT_DYLIB_PATH`).
    pub runtime_library: std::path::PathBuf,
    /// ONNX Runtime intra-op threads (`KEEL_ORT_THREADS`, default 1).
    pub intra_threads: usize,
}

#[derive(Clone, Debug)]
pub struct Config {
    /// The platform admin key (`KEEL_ADMIN_KEY`): the auth function's alone.
    pub admin_key: Option<String>,
    /// HS256 JWTs are accepted when a secret is configured.
    pub jwt: Option<JwtSettings>,
    /// How long a warm authorizer trusts a cached tenant record.
    pub tenant_cache_secs: u64,
    /// Rate limit given to new tenants (requests per minute).
    pub default_rate_limit_per_minute: i64,
    /// Largest document body accepted by `PUT /v1/documents/{id}`.
    pub document_body_limit: usize,
    /// The hosted models and their prices (`KEEL_MODELS`, a JSON array); empty:
    /// answers are in-function only.
    pub models: Vec<ModelSpec>,
    /// The most output tokens a model call may ask for (`KEEL_MODEL_MAX_TOKENS`),
    /// and what a request that names none asks for.
    pub model_max_tokens: u32,
    /// A lower cap for some plans (`KEEL_PLAN_MAX_TOKENS`, `{"plan": tokens}`).
    pub plan_max_tokens: std::collections::BTreeMap<String, u32>,
    /// Expensive requests one tenant may have running at once, across every
    /// warm container (`KEEL_TENANT_CONCURRENCY`, per surface; 0 turns it off).
    pub tenant_concurrency: u32,
    /// Share of the question's content terms the best evidence must contain; below it, refuse.
    pub min_evidence_coverage: f32,
    /// Least cosine similarity of the best evidence to the question; below it, refuse.
    pub min_evidence_similarity: f32,
    /// Timeout for a connector call of a governed action.
    pub connector_timeout_ms: u64,
    /// How long a governed action waits for its approval before it expires.
    pub approval_timeout_secs: u64,
    /// Hybrid retrieval when set; lexical (BM25) only when not.
    pub embedding: Option<EmbeddingFiles>,
    /// Bound of a warm function's index cache, in chunks across tenants.
    pub index_cache_chunks: usize,
    /// Segments a tenant index may have before compaction merges some.
    pub index_max_segments: usize,
    /// Where calls a tenant steers may go (`KEEL_EGRESS_ALLOW` opens ranges and hosts).
    pub egress: crate::egress::EgressPolicy,
    /// Objectives per surface (`KEEL_SLOS`; the seeds' by default).
    pub slos: Vec<crate::slo::SloSpec>,
}

impl Config {
    /// The tenant registry as every function reads it: through a warm cache
    /// of this configuration's TTL.
    pub fn tenant_store(&self, table: std::sync::Arc<dyn crate::ports::Table>) -> crate::tenants::TenantStore {
        crate::tenants::TenantStore::new(table, std::time::Duration::from_secs(self.tenant_cache_secs))
    }

    /// The rate limiter as every function counts it, with this configuration's
    /// concurrency limit for expensive routes.
    pub fn rate_limiter(
        &self,
        table: std::sync::Arc<dyn crate::ports::Table>,
        tenants: std::sync::Arc<crate::tenants::TenantStore>,
    ) -> crate::rate::RateLimiter {
        crate::rate::RateLimiter::new(table, tenants).with_concurrency(self.tenant_concurrency)
    }

    /// The API key authenticator as every function uses it, with the same TTL.
    pub fn key_authenticator(
        &self,
        table: std::sync::Arc<dyn crate::ports::Table>,
        tenants: std::sync::Arc<crate::tenants::TenantStore>,
    ) -> crate::api_keys::KeyAuthenticator {
        crate::api_keys::KeyAuthenticator::new(table, tenants, std::time::Duration::from_secs(self.tenant_cache_secs))
    }
    /// The platform admin's key, which only the auth function (and the
    /// local stack, which is every function) is given.
    pub fn require_admin_key(&self) -> Result<&str, KeelError> {
        self.admin_key.as_deref().ok_or_else(|| missing("KEEL_ADMIN_KEY (a secret of at least 16 characters)"))
    }

    pub fn from_env() -> Result<Self, KeelError> {
        Self::from_lookup(|k| std::env::var(k).ok())
    }

    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Self, KeelError> {
        // Only the auth function holds the platform admin key (`require_admin_key`).
        let admin_key = match get("KEEL_ADMIN_KEY").filter(|k| !k.is_empty()) {
            Some(k) if k.len() < 16 => return Err(KeelError::Config("KEEL_ADMIN_KEY must be a secret of at least 16 characters".into())),
            other => other,
        };
        let jwt = match get("KEEL_JWT_SECRET").filter(|s| !s.is_empty()) {
            Some(secret) => Some(JwtSettings {
                secret,
                issuer: get("KEEL_JWT_ISSUER").ok_or_else(|| missing("KEEL_JWT_ISSUER"))?,
                audience: get("KEEL_JWT_AUDIENCE").unwrap_or_else(|| "keel".into()),
            }),
            None => None,
        };
        let models = match get("KEEL_MODELS").filter(|m| !m.trim().is_empty()) {
            Some(json) => parse_catalog(&json).map_err(|e| KeelError::Config(format!("KEEL_MODELS: {e}")))?,
            None => vec![],
        };
        let embedding = match get("KEEL_MODEL_DIR").filter(|d| !d.is_empty()) {
            Some(dir) => Some(EmbeddingFiles {
                model_dir: dir.into(),
                runtime_library: get("ORT_DYLIB_PATH").ok_or_else(|| missing("ORT_DYLIB_PATH"))?.into(),
                intra_threads: number(&get, "KEEL_ORT_THREADS", 1)?,
            }),
            None => None,
        };
        Ok(Self {
            admin_key,
            jwt,
            tenant_cache_secs: number(&get, "KEEL_TENANT_CACHE_SECS", 5)?,
            default_rate_limit_per_minute: number(&get, "KEEL_DEFAULT_RATE_LIMIT", 600)?,
            document_body_limit: number(&get, "KEEL_DOCUMENT_BODY_LIMIT", 1024 * 1024)?,
            models,
            model_max_tokens: number(&get, "KEEL_MODEL_MAX_TOKENS", 512)?,
            plan_max_tokens: match get("KEEL_PLAN_MAX_TOKENS").filter(|s| !s.trim().is_empty()) {
                Some(json) => serde_json::from_str(&json)
                    .map_err(|e| KeelError::Config(format!("KEEL_PLAN_MAX_TOKENS must be a JSON object of plan to tokens: {e}")))?,
                None => Default::default(),
            },
            tenant_concurrency: number(&get, "KEEL_TENANT_CONCURRENCY", 20)?,
            min_evidence_coverage: number(&get, "KEEL_MIN_EVIDENCE_COVERAGE", DEFAULT_MIN_EVIDENCE_COVERAGE)?,
            min_evidence_similarity: number(&get, "KEEL_MIN_EVIDENCE_SIMILARITY", DEFAULT_MIN_EVIDENCE_SIMILARITY)?,
            connector_timeout_ms: number(&get, "KEEL_CONNECTOR_TIMEOUT_MS", 5_000)?,
            approval_timeout_secs: number(&get, "KEEL_APPROVAL_TIMEOUT_SECS", 24 * 3600)?,
            embedding,
            index_cache_chunks: number(&get, "KEEL_INDEX_CACHE_CHUNKS", 500_000)?,
            index_max_segments: number(&get, "KEEL_INDEX_MAX_SEGMENTS", 8)?,
            egress: crate::egress::EgressPolicy::parse(&get("KEEL_EGRESS_ALLOW").unwrap_or_default())?,
            slos: match get("KEEL_SLOS").filter(|s| !s.trim().is_empty()) {
                Some(json) => crate::slo::parse_slos(&json)?,
                None => crate::slo::default_slos(),
            },
        })
    }
}

/// Refusal thresholds. The similarity one (hybrid mode) is calibrated with
/// `keel-eval refusal` on SciFact train questions asked of a SciFact tenant
/// and of a Cranfield-only tenant: 0.35 refuses 99.5% of the unanswerable and
/// 1.1% of the answerable ones. Term coverage guards lexical-only mode.
pub const DEFAULT_MIN_EVIDENCE_COVERAGE: f32 = 0.5;
pub const DEFAULT_MIN_EVIDENCE_SIMILARITY: f32 = 0.35;

fn missing(var: &str) -> KeelError {
    KeelError::Config(format!("{var} must be set"))
}

fn number<T: std::str::FromStr>(get: &impl Fn(&str) -> Option<String>, var: &str, default: T) -> Result<T, KeelError> {
    match get(var) {
        None => Ok(default),
        Some(v) => v
            .parse()
            .map_err(|_| KeelError::Config(format!("{var}={v:?} is not a valid number"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn from(pairs: &[(&str, &str)]) -> Result<Config, KeelError> {
        let m: HashMap<String, String> = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        Config::from_lookup(|k| m.get(k).cloned())
    }

    #[test]
    fn validates_and_names_the_variable() {
        // Only the function that needs the admin key requires it.
        assert!(from(&[]).unwrap().require_admin_key().unwrap_err().to_string().contains("KEEL_ADMIN_KEY"));
        assert!(matches!(from(&[("KEEL_ADMIN_KEY", "short")]), Err(KeelError::Config(m)) if m.contains("KEEL_ADMIN_KEY")));
        let ok = from(&[("KEEL_ADMIN_KEY", "0123456789abcdef")]).unwrap();
        assert!(ok.models.is_empty());
        let bad = from(&[("KEEL_ADMIN_KEY", "0123456789abcdef"), ("KEEL_PLAN_MAX_TOKENS", "[256]")]);
        assert!(matches!(bad, Err(KeelError::Config(m)) if m.contains("KEEL_PLAN_MAX_TOKENS")));
        let bad = from(&[("KEEL_ADMIN_KEY", "0123456789abcdef"), ("KEEL_TENANT_CACHE_SECS", "x")]);
        assert!(matches!(bad, Err(KeelError::Config(m)) if m.contains("KEEL_TENANT_CACHE_SECS")));
        let models = from(&[("KEEL_ADMIN_KEY", "0123456789abcdef"), ("KEEL_MODELS", "[{}]")]);
        assert!(models.unwrap_err().to_string().contains("KEEL_MODELS"));
        let jwt = from(&[("KEEL_ADMIN_KEY", "0123456789abcdef"), ("KEEL_JWT_SECRET", "s")]);
        assert!(jwt.unwrap_err().to_string().contains("KEEL_JWT_ISSUER"));
        let model = from(&[("KEEL_ADMIN_KEY", "0123456789abcdef"), ("KEEL_MODEL_DIR", "/opt/minilm")]);
        assert!(model.unwrap_err().to_string().contains("ORT_DYLIB_PATH"));
    }
}
