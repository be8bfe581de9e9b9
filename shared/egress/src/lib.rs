//! keel-egress: the one way out for HTTP whose target a tenant can steer:
//! tool connectors, compensations and dry runs, and a tenant's identity
//! provider's signing keys. Every such request goes through `Egress`, so a
//! rule about where Keel may call (and how much it reads back) is kept in
//! one place. Redirects are never followed: a 3xx is the remote's answer.
//! Model providers' addresses come from the platform's catalog and use
//! their own client.

use keel_core::KeelError;
use std::time::Duration;

#[derive(Clone)]
pub struct Egress {
    http: reqwest::Client,
}

impl Egress {
    /// A client whose every request gives up after `timeout`.
    pub fn new(timeout: Duration) -> Result<Self, KeelError> {
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| KeelError::Internal(format!("http client: {e}")))?;
        Ok(Self { http })
    }

    /// A request builder on the guarded client.
    pub fn request(&self, method: reqwest::Method, url: &str) -> reqwest::RequestBuilder {
        self.http.request(method, url)
    }

    pub async fn execute(&self, request: reqwest::Request) -> Result<reqwest::Response, reqwest::Error> {
        self.http.execute(request).await
    }
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
