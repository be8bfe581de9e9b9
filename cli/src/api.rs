//! The public HTTP API, as the key or token given.

use serde_json::Value;

/// What went wrong, and the exit code it gives.
#[derive(Debug)]
pub enum CliError {
    /// The API answered with an error.
    Api { status: u16, message: String },
    Unreachable(String),
    Usage(String),
    Other(String),
}

impl CliError {
    pub fn exit_code(&self) -> u8 {
        match self {
            CliError::Api { status: 401 | 403, .. } => 3,
            CliError::Api { status: 404, .. } => 4,
            CliError::Api { status: 409, .. } => 5,
            CliError::Api { status: 400 | 413 | 422, .. } => 6,
            CliError::Api { .. } | CliError::Other(_) => 1,
            CliError::Usage(_) => 2,
            CliError::Unreachable(_) => 7,
        }
    }
}

impl std::fmt::Display for CliError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CliError::Api { status, message } => write!(f, "the API answered {status}: {message}"),
            CliError::Unreachable(e) => write!(f, "cannot reach the API: {e} (is keel-local running? --url or KEEL_URL)"),
            CliError::Usage(e) | CliError::Other(e) => f.write_str(e),
        }
    }
}

pub struct Api {
    http: reqwest::Client,
    base: String,
    key: String,
}

impl Api {
    pub fn new(base: &str, key: String) -> Self {
        Self { http: reqwest::Client::new(), base: base.trim_end_matches('/').to_string(), key }
    }

    /// One call; the answer's JSON (or its text as a JSON string).
    pub async fn call(&self, method: &str, path: &str, body: Option<Value>) -> Result<Value, CliError> {
        if self.key.is_empty() {
            return Err(CliError::Usage("no key: set KEEL_KEY or pass --key-file".into()));
        }
        let method = reqwest::Method::from_bytes(method.as_bytes()).map_err(|e| CliError::Other(e.to_string()))?;
        let mut request = self.http.request(method, format!("{}{path}", self.base)).bearer_auth(&self.key);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.map_err(|e| CliError::Unreachable(e.to_string()))?;
        let status = response.status().as_u16();
        let text = response.text().await.map_err(|e| CliError::Unreachable(e.to_string()))?;
        let value = serde_json::from_str(&text).unwrap_or(Value::String(text));
        if status >= 400 {
            let message = value["error"]["message"].as_str().map(str::to_string).unwrap_or_else(|| value.to_string());
            return Err(CliError::Api { status, message });
        }
        Ok(value)
    }
}

/// `s` as one URL path segment or query value.
pub fn encode(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}
