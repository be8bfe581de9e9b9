//! Identifiers. A `TenantId` is validated once, so every key built from it is
//! safe to prefix with (`T#<tenant>` in the table, `tenants/<tenant>/` in blobs).

use crate::error::KeelError;
use serde::{Deserialize, Serialize};
use std::fmt;

/// A tenant id: 2–63 characters of `a-z`, `0-9` and `-`, starting with a letter or digit.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct TenantId(String);

impl TenantId {
    pub fn parse(raw: &str) -> Result<Self, KeelError> {
        let ok = (2..=63).contains(&raw.len())
            && raw.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !raw.starts_with('-');
        if ok {
            Ok(Self(raw.to_owned()))
        } else {
            Err(KeelError::BadRequest(format!(
                "invalid tenant id {raw:?}: use 2-63 characters of a-z, 0-9 and '-'"
            )))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The partition key every table item of this tenant lives under.
    pub fn pk(&self) -> String {
        format!("T#{}", self.0)
    }

    /// A blob key inside this tenant's prefix.
    pub fn blob_key(&self, rest: &str) -> String {
        format!("tenants/{}/{}", self.0, rest)
    }
}

impl TryFrom<String> for TenantId {
    type Error = KeelError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::parse(&value)
    }
}

impl From<TenantId> for String {
    fn from(value: TenantId) -> Self {
        value.0
    }
}

impl fmt::Display for TenantId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Validates an id that comes from a URL path (documents, tools, actions):
/// 1-128 characters of letters, digits, `-`, `_` and `.`, so it can never
/// smuggle a key separator (`#`, `/`) into a table or blob key.
pub fn parse_path_id(kind: &str, raw: &str) -> Result<String, KeelError> {
    let ok = (1..=128).contains(&raw.len())
        && raw.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        && raw != "."
        && raw != "..";
    if ok {
        Ok(raw.to_owned())
    } else {
        Err(KeelError::BadRequest(format!(
            "invalid {kind} id {raw:?}: use 1-128 characters of letters, digits, '-', '_' and '.'"
        )))
    }
}

/// A fresh random id with a readable prefix, e.g. `act_3f2a…`.
pub fn new_id(prefix: &str) -> String {
    format!("{prefix}_{}", uuid::Uuid::new_v4().simple())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tenant_ids_are_validated() {
        assert!(TenantId::parse("acme").is_ok());
        assert!(TenantId::parse("acme-2").is_ok());
        for bad in ["", "a", "Acme", "a#b", "a/b", "-ab", "ä1"] {
            assert!(TenantId::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(TenantId::parse("acme").map(|t| t.pk()).ok(), Some("T#acme".into()));
    }

    #[test]
    fn path_ids_cannot_carry_separators() {
        assert!(parse_path_id("doc", "handbook-v1.2_x").is_ok());
        for bad in ["", "a#b", "a/b", "..", "a b"] {
            assert!(parse_path_id("doc", bad).is_err(), "{bad}");
        }
    }
}
