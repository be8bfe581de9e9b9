//! Identity providers' signing keys (JWKS), fetched through the egress
//! client and kept per address as long as the provider's `Cache-Control`
//! says. A token naming a key the cache lacks sends for the set again, at
//! most once a minute per address, so a stream of made-up `kid`s cannot turn
//! Keel into a load generator against the provider.

use jsonwebtoken::jwk::{Jwk, PublicKeyUse};
use keel_core::KeelError;
use keel_core::egress::EgressPolicy;
use keel_egress::{read_bounded, Egress, EgressError};
use serde_json::Value;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Least time between two fetches of one address (and the shortest cache life).
pub const MIN_REFETCH_SECS: i64 = 60;
/// Cache life when the provider says nothing.
pub const DEFAULT_MAX_AGE_SECS: i64 = 300;
/// Longest cache life, whatever the provider says.
pub const MAX_AGE_CAP_SECS: i64 = 24 * 3600;
/// How long past its freshness the last good set keeps serving while the
/// provider cannot be reached; after that its tokens are refused (503), so
/// a key the provider retired during an outage cannot sign in for ever.
pub const MAX_STALE_SECS: i64 = 3600;
/// Largest key set read; a provider's set is a few kilobytes.
pub const MAX_JWKS_BYTES: usize = 64 * 1024;
/// How long a fetch may take.
pub const FETCH_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Default)]
struct Entry {
    /// Keys by `kid`, from the last good fetch.
    keys: Arc<HashMap<String, Jwk>>,
    fresh_until: i64,
    last_attempt: Option<i64>,
}

pub struct JwksCache {
    egress: Egress,
    entries: Mutex<HashMap<String, Entry>>,
}

impl JwksCache {
    /// Fetches through the egress guard: `egress` is the platform's policy.
    pub fn new(egress: EgressPolicy) -> Result<Self, KeelError> {
        Ok(Self { egress: Egress::new(FETCH_TIMEOUT, egress)?, entries: Mutex::new(HashMap::new()) })
    }

    /// Refuses, when a provider is set, a key-set address Keel may not call (422 naming the rule).
    pub async fn vet(&self, uri: &str) -> Result<(), KeelError> {
        self.egress.vet(uri, None).await.map_err(|r| KeelError::Unprocessable { path: "/identity/jwks_uri".into(), message: r.to_string() })
    }

    /// The key `kid` published at `uri`, fetching the set when the cache is
    /// stale, or lacks the key and the last fetch is a minute old. While the
    /// provider cannot be reached, the keys of the last good fetch still serve,
    /// for `MAX_STALE_SECS` past their freshness at most.
    pub async fn key(&self, uri: &str, kid: &str, now: i64) -> Result<Jwk, KeelError> {
        let (keys, fresh_until, fetch) = self.plan(uri, kid, now);
        let too_old = || KeelError::Unavailable(format!("identity provider's keys at {uri}: unreachable for over {MAX_STALE_SECS} s past their freshness"));
        if let Some(key) = keys.get(kid).filter(|_| !fetch) {
            return if now <= fresh_until + MAX_STALE_SECS { Ok(key.clone()) } else { Err(too_old()) };
        }
        if fetch {
            match self.fetch(uri).await {
                Ok((fresh, max_age)) => {
                    let fresh = Arc::new(fresh);
                    self.store(uri, fresh.clone(), now + max_age);
                    return fresh.get(kid).cloned().ok_or_else(|| unknown_kid(kid));
                }
                Err(e) if keys.is_empty() => return Err(e),
                Err(_) if now > fresh_until + MAX_STALE_SECS => return Err(too_old()),
                Err(e) => tracing::warn!(uri, error = %e, "identity provider's keys unreachable; serving the last good set"),
            }
        }
        keys.get(kid).cloned().ok_or_else(|| unknown_kid(kid))
    }

    /// The cached keys, and whether to fetch now (claiming the attempt, so
    /// concurrent requests do not all fetch).
    fn plan(&self, uri: &str, kid: &str, now: i64) -> (Arc<HashMap<String, Jwk>>, i64, bool) {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        let entry = entries.entry(uri.to_string()).or_default();
        let wanted = now >= entry.fresh_until || !entry.keys.contains_key(kid);
        let allowed = entry.last_attempt.is_none_or(|t| now - t >= MIN_REFETCH_SECS);
        let fetch = wanted && allowed;
        if fetch {
            entry.last_attempt = Some(now);
        }
        (entry.keys.clone(), entry.fresh_until, fetch)
    }

    fn store(&self, uri: &str, keys: Arc<HashMap<String, Jwk>>, fresh_until: i64) {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        let entry = entries.entry(uri.to_string()).or_default();
        entry.keys = keys;
        entry.fresh_until = fresh_until;
    }

    async fn fetch(&self, uri: &str) -> Result<(HashMap<String, Jwk>, i64), KeelError> {
        let unavailable = |why: String| KeelError::Unavailable(format!("identity provider's keys at {uri}: {why}"));
        let request = self.egress.request(reqwest::Method::GET, uri).build().map_err(|e| unavailable(e.to_string()))?;
        let mut response = self.egress.execute(request, None).await.map_err(|e| match e {
            EgressError::Refused(r) => KeelError::Unauthorized(format!("identity provider's keys at {uri}: {r}")),
            EgressError::Failed(e) => unavailable(e.to_string()),
        })?;
        if !response.status().is_success() {
            return Err(unavailable(format!("answered {}", response.status())));
        }
        let max_age = response.headers().get(reqwest::header::CACHE_CONTROL).and_then(|v| v.to_str().ok()).map_or(DEFAULT_MAX_AGE_SECS, max_age);
        let (bytes, truncated) = read_bounded(&mut response, MAX_JWKS_BYTES).await?;
        if truncated {
            return Err(unavailable(format!("the key set is larger than {MAX_JWKS_BYTES} bytes")));
        }
        Ok((signing_keys(&bytes).map_err(unavailable)?, max_age))
    }
}

fn unknown_kid(kid: &str) -> KeelError {
    let shown: String = kid.chars().take(64).collect();
    KeelError::Unauthorized(format!("invalid token: the identity provider publishes no key {shown:?}"))
}

/// The signing keys of a JWKS document, by `kid`. Keys Keel cannot read
/// (another type, no `kid`, meant for encryption) are skipped, not fatal.
pub fn signing_keys(bytes: &[u8]) -> Result<HashMap<String, Jwk>, String> {
    let doc: Value = serde_json::from_slice(bytes).map_err(|_| "not a JSON key set".to_string())?;
    let list = doc.get("keys").and_then(Value::as_array).ok_or("no \"keys\" list")?;
    let keys = list
        .iter()
        .filter_map(|k| serde_json::from_value::<Jwk>(k.clone()).ok())
        .filter(|k| k.common.public_key_use != Some(PublicKeyUse::Encryption))
        .filter_map(|k| Some((k.common.key_id.clone()?, k)))
        .collect();
    Ok(keys)
}

/// Seconds a `Cache-Control` value lets the set be kept, within Keel's bounds.
pub fn max_age(cache_control: &str) -> i64 {
    let mut age = None;
    for directive in cache_control.split(',').map(|d| d.trim().to_ascii_lowercase()) {
        if directive == "no-store" || directive == "no-cache" {
            return MIN_REFETCH_SECS;
        }
        if let Some(v) = directive.strip_prefix("max-age=") {
            age = v.trim_matches('"').parse::<i64>().ok();
        }
    }
    age.unwrap_or(DEFAULT_MAX_AGE_SECS).clamp(MIN_REFETCH_SECS, MAX_AGE_CAP_SECS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_life_follows_cache_control_within_a_minute_and_a_day() {
        assert_eq!(max_age("public, max-age=3600"), 3600);
        assert_eq!(max_age("max-age=5"), MIN_REFETCH_SECS);
        assert_eq!(max_age("max-age=99999999"), MAX_AGE_CAP_SECS);
        assert_eq!(max_age("no-store"), MIN_REFETCH_SECS);
        assert_eq!(max_age("private"), DEFAULT_MAX_AGE_SECS);
        assert_eq!(max_age("max-age=-3"), MIN_REFETCH_SECS);
    }

    #[test]
    fn unreadable_and_encryption_keys_are_skipped_and_the_rest_kept() {
        let doc = serde_json::json!({"keys": [
            {"kty": "OKP", "crv": "Ed25519", "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo", "kid": "a"},
            {"kty": "OKP", "crv": "Ed25519", "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo", "kid": "enc", "use": "enc"},
            {"kty": "OKP", "crv": "Ed25519", "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"},
            {"kty": "future", "kid": "f"}
        ]});
        let keys = signing_keys(doc.to_string().as_bytes()).unwrap();
        assert_eq!(keys.keys().collect::<Vec<_>>(), vec!["a"]);
        assert!(signing_keys(b"[]").is_err());
        assert!(signing_keys(b"{\"keys\": 1}").is_err());
    }
}
