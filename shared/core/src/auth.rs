//! Who is calling: API keys (stored only as a hash; HS256 JWTs are `jwt`'s), and the
//! `Caller` the authorizer hands to every function through its context.

use crate::error::KeelError;
use crate::ids::TenantId;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use rand::RngCore;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::collections::HashMap;

pub const ROLE_PLATFORM_ADMIN: &str = "platform_admin";
pub const ROLE_ADMIN: &str = "admin";
pub const ROLE_MEMBER: &str = "member";
pub const ROLE_APPROVER: &str = "approver";
/// Reads every decision of its tenant and exports the audit log; changes nothing.
pub const ROLE_AUDITOR: &str = "auditor";
/// The roles a tenant key or token may carry.
pub const TENANT_ROLES: [&str; 4] = [ROLE_ADMIN, ROLE_MEMBER, ROLE_APPROVER, ROLE_AUDITOR];

/// The authenticated caller of one request.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Caller {
    /// `None` only for the platform admin.
    pub tenant: Option<TenantId>,
    pub principal: String,
    pub roles: Vec<String>,
    /// ACL groups (from the key's or token's `groups` attribute).
    pub groups: Vec<String>,
    /// The incarnation of the tenant the credential was checked against
    /// (`None` for the platform admin): a function refuses a caller of an
    /// incarnation its tenant no longer has.
    #[serde(default)]
    pub incarnation: Option<String>,
    /// Where the credential came from: who issued the key, and when.
    #[serde(default)]
    pub credential: Credential,
}

/// A caller's credential as approvals weigh it (all `None` for the
/// platform admin, a token, or a caller made by hand).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Credential {
    /// The key's id (`api_key_id`).
    pub key_id: Option<String>,
    /// The principal who created the key (`platform_admin` for the platform admin).
    pub issued_by: Option<String>,
    /// When the key was created (RFC 3339).
    pub issued_at: Option<String>,
}

/// A principal's name as people are told apart: `GX@tg.test` and ` gx@tg.test` are one person.
pub fn normalized_principal(principal: &str) -> String {
    principal.trim().to_lowercase()
}

/// Whether two principal names are the same person under any spelling.
pub fn same_person(a: &str, b: &str) -> bool {
    normalized_principal(a) == normalized_principal(b)
}

impl Caller {
    pub fn platform_admin() -> Self {
        Self {
            tenant: None,
            principal: ROLE_PLATFORM_ADMIN.into(),
            roles: vec![ROLE_PLATFORM_ADMIN.into()],
            groups: vec![],
            incarnation: None,
            credential: Credential::default(),
        }
    }

    /// Whether this caller's approval counts for something `requester`
    /// asked for at `requested_at` (dual control by distinct people): not
    /// the requester under any spelling, with a credential the requester did
    /// not issue and that existed before the request. (The platform admin's
    /// own requests: another person with a key older than the request.)
    pub fn may_approve_for(&self, requester: &str, requested_at: &str) -> Result<(), KeelError> {
        let refuse = |why: &str| Err(KeelError::Forbidden(format!("a second person must approve this: {why}")));
        if same_person(&self.principal, requester) {
            return refuse("you asked for it");
        }
        // The platform admin issues every tenant's first keys by design, so its
        // own requests are held to the other two rules (a key it minted after the request still cannot approve).
        let by_requester = self.credential.issued_by.as_deref().is_some_and(|by| same_person(by, requester));
        if by_requester && !same_person(requester, ROLE_PLATFORM_ADMIN) {
            return refuse("your key was issued by the principal who asked for it");
        }
        let instant = |t: &str| chrono::DateTime::parse_from_rfc3339(t).ok();
        if let (Some(issued), Some(asked)) = (self.credential.issued_at.as_deref().and_then(instant), instant(requested_at)) {
            if issued >= asked {
                return refuse("your key was created after the request; a credential that held the role before it must approve");
            }
        }
        Ok(())
    }

    pub fn is_platform_admin(&self) -> bool {
        self.tenant.is_none() && self.has_role(ROLE_PLATFORM_ADMIN)
    }

    pub fn has_role(&self, role: &str) -> bool {
        self.roles.iter().any(|r| r == role)
    }

    /// Tenant admins and auditors read every decision of their tenant.
    pub fn reads_all_decisions(&self) -> bool {
        self.has_role(ROLE_ADMIN) || self.has_role(ROLE_AUDITOR)
    }

    /// The caller's tenant; tenant routes refuse the platform admin key.
    pub fn tenant(&self) -> Result<&TenantId, KeelError> {
        self.tenant
            .as_ref()
            .ok_or_else(|| KeelError::Forbidden("this route needs a tenant key, not the platform admin key".into()))
    }

    pub fn require_role(&self, role: &str) -> Result<(), KeelError> {
        if self.has_role(role) {
            Ok(())
        } else {
            Err(KeelError::Forbidden(format!("this needs the '{role}' role")))
        }
    }

    /// Serializes into the flat string map an HTTP API authorizer context holds.
    pub fn to_context(&self) -> HashMap<String, Value> {
        let mut m = HashMap::new();
        m.insert("tenant".into(), Value::from(self.tenant.as_ref().map(|t| t.as_str()).unwrap_or("")));
        m.insert("principal".into(), Value::from(self.principal.clone()));
        m.insert("roles".into(), Value::from(self.roles.join(",")));
        m.insert("groups".into(), Value::from(self.groups.join(",")));
        m.insert("incarnation".into(), Value::from(self.incarnation.clone().unwrap_or_default()));
        let c = &self.credential;
        for (name, value) in [("key_id", &c.key_id), ("issued_by", &c.issued_by), ("issued_at", &c.issued_at)] {
            m.insert(name.into(), Value::from(value.clone().unwrap_or_default()));
        }
        m
    }

    pub fn from_context(ctx: &HashMap<String, Value>) -> Result<Self, KeelError> {
        let s = |k: &str| ctx.get(k).and_then(Value::as_str).unwrap_or("").to_string();
        let list = |k: &str| s(k).split(',').filter(|x| !x.is_empty()).map(str::to_string).collect::<Vec<_>>();
        let principal = s("principal");
        if check_principal(&principal).is_err() {
            return Err(KeelError::Unauthorized("missing authorizer context".into()));
        }
        let tenant = match s("tenant").as_str() {
            "" => None,
            t => Some(TenantId::parse(t)?),
        };
        let given = |k: &str| Some(s(k)).filter(|v| !v.is_empty());
        let credential = Credential { key_id: given("key_id"), issued_by: given("issued_by"), issued_at: given("issued_at") };
        Ok(Self { tenant, principal, roles: list("roles"), groups: list("groups"), incarnation: given("incarnation"), credential })
    }
}

/// A new API key for `tenant`: `keel_<tenant>_<secret>`. The tenant part only
/// routes the lookup; the hash of the whole key is what authenticates.
pub fn new_api_key(tenant: &TenantId) -> String {
    let mut secret = [0u8; 24];
    rand::thread_rng().fill_bytes(&mut secret);
    format!("keel_{}_{}", tenant, URL_SAFE_NO_PAD.encode(secret))
}

/// A new platform admin key (no tenant part).
pub fn new_admin_key() -> String {
    let mut secret = [0u8; 24];
    rand::thread_rng().fill_bytes(&mut secret);
    format!("keel_admin_{}", URL_SAFE_NO_PAD.encode(secret))
}

/// The tenant an API key claims to belong to (not yet verified).
pub fn api_key_tenant(key: &str) -> Option<TenantId> {
    let rest = key.strip_prefix("keel_")?;
    // Tenant ids never contain '_', the secret may.
    let (tenant, secret) = rest.split_once('_')?;
    if secret.len() < 16 {
        return None;
    }
    TenantId::parse(tenant).ok()
}

/// What is stored for a key: its SHA-256, hex.
pub fn hash_api_key(key: &str) -> String {
    hex::encode(Sha256::digest(key.as_bytes()))
}

/// Constant-time comparison for secrets.
pub fn secrets_equal(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The stored record of an API key.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ApiKeyRecord {
    pub principal: String,
    pub roles: Vec<String>,
    #[serde(default)]
    pub attributes: HashMap<String, Value>,
    pub created_at: String,
    /// The key's first characters, to tell keys apart in a list (never the secret).
    #[serde(default)]
    pub prefix: String,
    /// RFC 3339; the key is refused from then on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<String>,
    /// RFC 3339, recorded at most once a minute per warm function.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_used_at: Option<String>,
    /// The principal who created the key (`platform_admin` for the platform admin).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issued_by: Option<String>,
    /// The change request the key waits on: it signs nobody in until a second admin approves.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending: Option<String>,
}

impl ApiKeyRecord {
    /// Whether the key has expired at `now`.
    pub fn expired(&self, now: chrono::DateTime<chrono::Utc>) -> bool {
        self.expires_at
            .as_deref()
            .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
            .is_some_and(|t| t <= now)
    }
}

/// Characters of a key shown in lists: `keel_<tenant>_` and four of the secret.
pub fn api_key_prefix(key: &str) -> String {
    // Tenant ids never contain '_'; the secret may.
    let tenant_end = key.strip_prefix("keel_").and_then(|rest| rest.find('_')).map_or(0, |i| "keel_".len() + i + 1);
    key.chars().take(tenant_end + 4).collect()
}

/// A key's public id: the start of its hash, enough to name it in a tenant.
pub fn api_key_id(key_hash: &str) -> String {
    key_hash.chars().take(API_KEY_ID_CHARS).collect()
}

/// Hex characters of a key id.
pub const API_KEY_ID_CHARS: usize = 16;

/// Longest principal name (a key's, or a token's `sub`).
pub const MAX_PRINCIPAL_CHARS: usize = 128;

/// The one rule for a principal name, on every path that makes a caller:
/// 1 to 128 characters, not blank.
pub fn check_principal(principal: &str) -> Result<(), KeelError> {
    if principal.trim().is_empty() || principal.len() > MAX_PRINCIPAL_CHARS {
        return Err(KeelError::BadRequest(format!("principal must be 1-{MAX_PRINCIPAL_CHARS} characters, not blank")));
    }
    Ok(())
}

/// A tenant principal's name: `check_principal`'s rule, and never the
/// platform operator's own name, so no tenant key or token can pass for it.
pub fn check_tenant_principal(principal: &str) -> Result<(), KeelError> {
    check_principal(principal)?;
    if same_person(principal, ROLE_PLATFORM_ADMIN) {
        return Err(KeelError::BadRequest(format!("principal {ROLE_PLATFORM_ADMIN:?} is reserved for the platform's operator")));
    }
    Ok(())
}

/// Whether a role or group name survives the authorizer context, which
/// passes them to functions comma-joined: non-empty, without commas.
pub fn is_context_name(name: &str) -> bool {
    !name.is_empty() && !name.contains(',')
}

/// Reads `groups` from a key's or token's attributes.
pub fn groups_of(attributes: &HashMap<String, Value>) -> Vec<String> {
    match attributes.get("groups") {
        Some(Value::Array(a)) => a.iter().filter_map(Value::as_str).map(str::to_string).collect(),
        Some(Value::String(s)) => s.split(',').filter(|x| !x.is_empty()).map(str::to_string).collect(),
        _ => vec![],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_prefix_shows_the_tenant_and_four_secret_characters_even_when_the_secret_has_underscores() {
        assert_eq!(api_key_prefix("keel_acme_a_b_cdefghijklmnopqrstuvwx"), "keel_acme_a_b_");
        assert_eq!(api_key_prefix("keel_acme-eu_WXYZ0123456789abcdef"), "keel_acme-eu_WXYZ");
        let key = new_api_key(&TenantId::parse("acme").unwrap());
        assert_eq!(api_key_prefix(&key).len(), "keel_acme_".len() + 4);
    }

    #[test]
    fn a_key_expires_at_its_time_and_a_key_without_one_never_does() {
        let mut record = ApiKeyRecord { principal: "ann".into(), roles: vec![], attributes: HashMap::new(), created_at: String::new(),
            prefix: String::new(), expires_at: None, last_used_at: None, issued_by: None, pending: None };
        let now = chrono::Utc::now();
        assert!(!record.expired(now));
        record.expires_at = Some((now + chrono::Duration::seconds(1)).to_rfc3339());
        assert!(!record.expired(now) && record.expired(now + chrono::Duration::seconds(1)));
    }

    #[test]
    fn api_keys_route_by_tenant_and_hash() {
        let t = TenantId::parse("acme-co").unwrap();
        for _ in 0..200 {
            let key = new_api_key(&t);
            assert_eq!(api_key_tenant(&key), Some(t.clone()), "{key}");
        }
        let key = new_api_key(&t);
        assert_ne!(hash_api_key(&key), key);
        assert_eq!(api_key_tenant("keel_acme_short"), None);
        assert_eq!(api_key_tenant("nope"), None);
        assert!(secrets_equal("abc", "abc") && !secrets_equal("abc", "abd") && !secrets_equal("a", "ab"));
    }

    #[test]
    fn an_approval_counts_only_from_another_person_with_an_older_key_they_did_not_get_from_the_requester() {
        let approver = |principal: &str, issued_by: &str, issued_at: &str| Caller {
            tenant: Some(TenantId::parse("acme").unwrap()),
            principal: principal.into(),
            roles: vec!["admin".into()],
            groups: vec![],
            incarnation: None,
            credential: Credential { key_id: None, issued_by: Some(issued_by.into()), issued_at: Some(issued_at.into()) },
        };
        let asked = "2026-06-01T12:00:00Z";
        assert!(approver("dana", "platform_admin", "2026-01-01T00:00:00Z").may_approve_for("carol", asked).is_ok());
        assert!(approver("Carol ", "platform_admin", "2026-01-01T00:00:00Z").may_approve_for("carol", asked).is_err(), "the requester, spelt otherwise");
        assert!(approver("sock", "CAROL", "2026-01-01T00:00:00Z").may_approve_for("carol", asked).is_err(), "a key the requester issued");
        assert!(approver("dana", "platform_admin", "2026-06-01T12:00:01Z").may_approve_for("carol", asked).is_err(), "a key made after the request");
        assert!(check_tenant_principal("Platform_Admin").is_err() && check_tenant_principal("ann").is_ok());
    }

    #[test]
    fn caller_context_round_trip() {
        let c = Caller {
            tenant: Some(TenantId::parse("acme").unwrap()),
            principal: "ann".into(),
            roles: vec!["member".into(), "approver".into()],
            groups: vec!["eng".into()],
            incarnation: Some("inc_1".into()),
            credential: Credential { key_id: Some("0123456789abcdef".into()), issued_by: Some("carol".into()), issued_at: Some("2026-01-01T00:00:00Z".into()) },
        };
        assert_eq!(Caller::from_context(&c.to_context()).unwrap(), c);
        let admin = Caller::platform_admin();
        assert!(Caller::from_context(&admin.to_context()).unwrap().is_platform_admin());
        assert!(Caller::from_context(&HashMap::new()).is_err());
    }
}
