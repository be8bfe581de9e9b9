//! keel-egress: the one way out for HTTP whose target a tenant can steer:
//! tool connectors, compensations and dry runs, and a tenant's identity
//! provider's signing keys. Every such request goes through `Egress`, which
//! applies the platform's `EgressPolicy` (and a tenant's pinned hosts):
//!
//! - a URL's scheme, credentials and literal address are checked before
//!   anything is sent (the URL parser has already turned decimal, octal and
//!   hex IPv4 forms into addresses);
//! - a host name is resolved by this crate's resolver, every address is
//!   checked, and the connection is made to those checked addresses: there
//!   is no second lookup that could answer differently;
//! - no proxy from the environment is used (it would resolve for us);
//! - redirects are never followed: a 3xx is the remote's answer;
//! - every request has a timeout, and `read_bounded` bounds what is read.
//!
//! Model providers' addresses come from the platform's catalog and use
//! their own client.

use keel_core::egress::{EgressPins, EgressPolicy, Refusal};
use keel_core::KeelError;
use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

#[derive(Clone)]
pub struct Egress {
    http: reqwest::Client,
    policy: Arc<EgressPolicy>,
}

/// Why a guarded request did not get an answer.
#[derive(Debug)]
pub enum EgressError {
    /// The target is somewhere Keel may not call: final, never retried.
    Refused(Refusal),
    /// The remote could not be reached or did not answer in time.
    Failed(reqwest::Error),
}

impl std::fmt::Display for EgressError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Refused(r) => write!(f, "{r}"),
            Self::Failed(e) => write!(f, "{e}"),
        }
    }
}

impl Egress {
    /// A guarded client whose every request gives up after `timeout`.
    pub fn new(timeout: Duration, policy: EgressPolicy) -> Result<Self, KeelError> {
        let policy = Arc::new(policy);
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .dns_resolver(GuardedResolver { policy: policy.clone() })
            .build()
            .map_err(|e| KeelError::Internal(format!("http client: {e}")))?;
        Ok(Self { http, policy })
    }

    /// A request builder on the guarded client.
    pub fn request(&self, method: reqwest::Method, url: &str) -> reqwest::RequestBuilder {
        self.http.request(method, url)
    }

    /// Checks a URL as a registration does: what it says, and, when its host
    /// name resolves now, every address. A name that does not resolve yet is
    /// let through here; the call itself checks again.
    pub async fn vet(&self, url: &str, pins: Option<&EgressPins>) -> Result<(), Refusal> {
        let parsed = url::Url::parse(url).map_err(|e| Refusal { target: url.chars().take(200).collect(), rule: format!("not a URL ({e})") })?;
        self.policy.check_url(&parsed, pins)?;
        if let Some(url::Host::Domain(host)) = parsed.host() {
            if let Ok(addrs) = tokio::net::lookup_host((host, 0)).await {
                checked(&self.policy, host, addrs.collect()).map(|_| ())?;
            }
        }
        Ok(())
    }

    /// Sends a request if its target is allowed (for the tenant's pins, when given).
    pub async fn execute(&self, request: reqwest::Request, pins: Option<&EgressPins>) -> Result<reqwest::Response, EgressError> {
        self.policy.check_url(request.url(), pins).map_err(EgressError::Refused)?;
        self.http.execute(request).await.map_err(|e| match refusal_in(&e) {
            Some(r) => EgressError::Refused(r),
            None => EgressError::Failed(e),
        })
    }
}

/// The resolver the guarded client connects through: it returns a host's
/// addresses only when every one of them is allowed.
struct GuardedResolver {
    policy: Arc<EgressPolicy>,
}

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let policy = self.policy.clone();
        Box::pin(async move {
            let host = name.as_str().to_string();
            let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let addrs = checked(&policy, &host, addrs)?;
            Ok(Box::new(addrs.into_iter()) as Addrs)
        })
    }
}

/// A host's addresses when all are allowed (or the platform opened the host by name).
fn checked(policy: &EgressPolicy, host: &str, addrs: Vec<SocketAddr>) -> Result<Vec<SocketAddr>, Refusal> {
    if !policy.allows_host(host) {
        for addr in &addrs {
            policy.check_ip(addr.ip()).map_err(|r| Refusal { target: format!("{host} ({})", r.target), rule: r.rule })?;
        }
    }
    Ok(addrs)
}

/// The resolver's refusal, if that is why the request failed.
fn refusal_in(error: &reqwest::Error) -> Option<Refusal> {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(e) = source {
        if let Some(r) = e.downcast_ref::<Refusal>() {
            return Some(r.clone());
        }
        source = e.source();
    }
    None
}

/// Reads at most `max` bytes of an answer; says whether more was dropped.
pub async fn read_bounded(response: &mut reqwest::Response, max: usize) -> Result<(Vec<u8>, bool), KeelError> {
    let mut bytes = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(|e| KeelError::Unavailable(format!("the answer broke off: {e}")))? {
        let room = max - bytes.len();
        if chunk.len() > room {
            bytes.extend_from_slice(&chunk[..room]);
            return Ok((bytes, true));
        }
        bytes.extend_from_slice(&chunk);
    }
    Ok((bytes, false))
}
