//! Typed errors, mapped to HTTP once (in `http::api`).

use thiserror::Error;

#[derive(Debug, Error)]
pub enum KeelError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Unauthorized(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    NotFound(String),
    /// The tenant a queue message is for was deleted: its consumer drops the
    /// message instead of retrying or dead-lettering it.
    #[error("tenant {0} does not exist")]
    TenantGone(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    PayloadTooLarge(String),
    /// Schema-invalid input; `path` is the JSON pointer of the failing value.
    #[error("{message} (at {path})")]
    Unprocessable { path: String, message: String },
    #[error("{0}")]
    TooManyRequests(String),
    /// A limit that frees up by itself (the rate limit's minute, a
    /// concurrency slot): 429 with `Retry-After: retry_after_secs`.
    #[error("{message}")]
    RetryLater { message: String, retry_after_secs: u64 },
    #[error("{0}")]
    Unavailable(String),
    #[error("{0}")]
    Internal(String),
    /// A configuration value that is missing or bad: the function cannot start.
    #[error("configuration: {0}")]
    Config(String),
}

impl KeelError {
    pub fn status(&self) -> u16 {
        match self {
            Self::BadRequest(_) => 400,
            Self::Unauthorized(_) => 401,
            Self::Forbidden(_) => 403,
            Self::NotFound(_) | Self::TenantGone(_) => 404,
            Self::Conflict(_) => 409,
            Self::PayloadTooLarge(_) => 413,
            Self::Unprocessable { .. } => 422,
            Self::TooManyRequests(_) | Self::RetryLater { .. } => 429,
            Self::Unavailable(_) => 503,
            Self::Internal(_) | Self::Config(_) => 500,
        }
    }

    pub fn code(&self) -> &'static str {
        match self {
            Self::BadRequest(_) => "bad_request",
            Self::Unauthorized(_) => "unauthorized",
            Self::Forbidden(_) => "forbidden",
            Self::NotFound(_) | Self::TenantGone(_) => "not_found",
            Self::Conflict(_) => "conflict",
            Self::PayloadTooLarge(_) => "payload_too_large",
            Self::Unprocessable { .. } => "invalid_arguments",
            Self::TooManyRequests(_) | Self::RetryLater { .. } => "too_many_requests",
            Self::Unavailable(_) => "unavailable",
            Self::Internal(_) => "internal",
            Self::Config(_) => "config",
        }
    }

    /// Whether a queue consumer or saga step should retry this error.
    pub fn is_retryable(&self) -> bool {
        matches!(self, Self::Unavailable(_) | Self::Internal(_) | Self::TooManyRequests(_) | Self::RetryLater { .. })
    }

    /// The `Retry-After` seconds of a refusal that frees up by itself.
    pub fn retry_after(&self) -> Option<u64> {
        match self {
            Self::RetryLater { retry_after_secs, .. } => Some(*retry_after_secs),
            _ => None,
        }
    }
}

/// Errors of the storage ports.
#[derive(Debug, Error)]
pub enum StoreError {
    /// A conditional write lost: the item exists, is missing, or moved on.
    #[error("condition failed")]
    ConditionFailed,
    #[error("storage backend error: {0}")]
    Backend(String),
    /// The record cannot be stored as it is (say, nested too deep to read back).
    #[error("{0}")]
    Invalid(String),
}

impl From<StoreError> for KeelError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::ConditionFailed => KeelError::Conflict("concurrent update; retry".into()),
            // The backend's own text (table names, SDK messages) stays in the log.
            StoreError::Backend(m) => {
                tracing::error!(error = %m, "storage backend error");
                KeelError::Unavailable("storage is unavailable; retry shortly".into())
            }
            StoreError::Invalid(m) => KeelError::BadRequest(m),
        }
    }
}

impl From<serde_json::Error> for KeelError {
    fn from(e: serde_json::Error) -> Self {
        KeelError::Internal(format!("corrupt stored record: {e}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn storage_errors_keep_their_details_out_of_the_answer() {
        let e: KeelError = StoreError::Backend("table arn:aws:dynamodb:eu-west-1:123:table/keel-prod is throttled".into()).into();
        assert_eq!((e.status(), e.to_string().contains("arn")), (503, false), "{e}");
        let e: KeelError = StoreError::Invalid("nests too deep".into()).into();
        assert_eq!(e.status(), 400);
    }
}
