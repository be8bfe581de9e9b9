//! Identifiers. A `TenantId` is validated once, so every key built from it is
//! safe to prefix with (`T#<tenant>` in the table, `tenants/<tenant>/` in blobs).

use crate::error::KeelError;
use serde::{Deserialize, Serialize};
use std::fmt;

/// A tenant id: 2–63 characters of `a-z`, `0-9` and `-`, starting with a letter or digit.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct TenantId(String);

impl schemars::JsonSchema for TenantId {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "TenantId".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({"type": "string", "pattern": "^[a-z0-9][a-z0-9-]{1,62}$"})
    }
}

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
        crate::keys::partition(self)
    }

    /// A blob key inside this tenant's prefix.
    pub fn blob_key(&self, rest: &str) -> String {
        format!("{}{rest}", crate::keys::blob_prefix(self))
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

/// A fresh token with a readable prefix that reveals nothing and cannot be
/// guessed (a random UUIDv4: 122 random bits).
pub fn new_token(prefix: &str) -> String {
    format!("{prefix}_{}", uuid::Uuid::new_v4().simple())
}

/// A fresh id with a readable prefix, e.g. `act_019ab3…`: a UUIDv7, so ids
/// sort by creation time (to the millisecond; 74 random bits below that).
/// Keys built from them, such as the audit log's decision pointers, land
/// next to each other instead of all over the table.
pub fn new_id(prefix: &str) -> String {
    format!("{prefix}_{}", uuid::Uuid::now_v7().simple())
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
    fn new_ids_are_distinct_and_sort_by_creation_time() {
        let first = new_id("dec");
        std::thread::sleep(std::time::Duration::from_millis(2));
        let later: Vec<String> = (0..100).map(|_| new_id("dec")).collect();
        assert!(later.iter().all(|id| *id > first && id.starts_with("dec_") && parse_path_id("decision", id).is_ok()));
        assert_eq!(later.iter().collect::<std::collections::HashSet<_>>().len(), 100);
    }

    #[test]
    fn path_ids_cannot_carry_separators() {
        assert!(parse_path_id("doc", "handbook-v1.2_x").is_ok());
        for bad in ["", "a#b", "a/b", "..", "a b"] {
            assert!(parse_path_id("doc", bad).is_err(), "{bad}");
        }
    }
}
