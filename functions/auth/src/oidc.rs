//! Tokens from a tenant's own identity provider. The token's `iss` picks the
//! tenant (through the platform's issuer index, then the tenant's own
//! setting must name that issuer); its `kid` picks a key from the
//! provider's JWKS, and the key must be of the token's algorithm: RS256,
//! ES256 (P-256) or EdDSA (Ed25519), never HMAC or `none`. `jku`, `x5u` and
//! embedded keys in the header are never followed.

use crate::jwks::JwksCache;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, KeyAlgorithm};
use jsonwebtoken::{Algorithm, DecodingKey, Header, Validation};
use keel_core::auth::{check_tenant_principal, is_context_name, Caller, TENANT_ROLES};
use keel_core::jwt::token_error;
use keel_core::identity::{IdentityProvider, IssuerIndex};
use keel_core::tenants::TenantStore;
use keel_core::KeelError;
use serde_json::Value;
use std::sync::Arc;

/// Clock skew allowed on `exp` and `nbf`.
pub const LEEWAY_SECS: u64 = 60;
/// Most ACL groups a token may bring.
pub const MAX_TOKEN_GROUPS: usize = 64;

/// The algorithms a tenant's provider may sign with.
pub fn is_provider_algorithm(alg: Algorithm) -> bool {
    matches!(alg, Algorithm::RS256 | Algorithm::ES256 | Algorithm::EdDSA)
}

pub struct ProviderTokens {
    issuers: Arc<IssuerIndex>,
    tenants: Arc<TenantStore>,
    jwks: JwksCache,
}

fn bad(why: &str) -> KeelError {
    KeelError::Unauthorized(format!("invalid token: {why}"))
}

impl ProviderTokens {
    pub fn new(issuers: Arc<IssuerIndex>, tenants: Arc<TenantStore>, jwks: JwksCache) -> Self {
        Self { issuers, tenants, jwks }
    }

    /// The key sets' cache (and its egress guard).
    pub fn jwks(&self) -> &JwksCache {
        &self.jwks
    }

    /// The caller a provider's token names, after every check.
    pub async fn caller(&self, token: &str, header: &Header, now: i64) -> Result<Caller, KeelError> {
        if !is_provider_algorithm(header.alg) {
            return Err(bad("algorithm not accepted"));
        }
        let issuer = unverified_issuer(token)?;
        let tenant = self.issuers.tenant_of(&issuer).await?.ok_or_else(|| bad("unknown issuer"))?;
        let identity = self
            .tenants
            .cached(&tenant)
            .await?
            .and_then(|t| t.identity)
            .filter(|i| i.issuer == issuer)
            .ok_or_else(|| bad("unknown issuer"))?;
        let kid = header.kid.as_deref().ok_or_else(|| bad("the token names no key (kid)"))?;
        let jwk = self.jwks.key(&identity.jwks_uri, kid, now).await?;
        if !key_fits(&jwk, header.alg) {
            return Err(bad("algorithm not accepted for this key"));
        }
        let key = DecodingKey::from_jwk(&jwk).map_err(|_| bad("the provider's key is unreadable"))?;
        let claims = jsonwebtoken::decode::<Value>(token, &key, &validation(header.alg, &identity))
            .map_err(|e| bad(&token_error(&e)))?
            .claims;
        if claims.get("tenant").is_some_and(|t| t.as_str() != Some(tenant.as_str())) {
            return Err(bad("the token names another tenant than its issuer signs in"));
        }
        caller_of(&claims, &identity, tenant)
    }
}

fn validation(alg: Algorithm, identity: &IdentityProvider) -> Validation {
    let mut v = Validation::new(alg);
    v.set_issuer(&[&identity.issuer]);
    v.set_audience(&[&identity.audience]);
    v.set_required_spec_claims(&["exp", "iss", "aud"]);
    v.validate_nbf = true;
    v.leeway = LEEWAY_SECS;
    v
}

/// `iss`, read before the signature can be checked: it only says which
/// tenant's keys to check the signature with.
pub fn unverified_issuer(token: &str) -> Result<String, KeelError> {
    let data = jsonwebtoken::dangerous::insecure_decode::<Value>(token).map_err(|_| bad("malformed token"))?;
    data.claims.get("iss").and_then(Value::as_str).map(str::to_string).ok_or_else(|| bad("missing claim iss"))
}

/// Whether a published key may verify `alg`: its type and curve, and its own `alg` if it names one.
pub fn key_fits(jwk: &Jwk, alg: Algorithm) -> bool {
    let declared = match jwk.common.key_algorithm {
        None => true,
        Some(KeyAlgorithm::RS256) => alg == Algorithm::RS256,
        Some(KeyAlgorithm::ES256) => alg == Algorithm::ES256,
        Some(KeyAlgorithm::EdDSA) => alg == Algorithm::EdDSA,
        Some(_) => false,
    };
    let shape = match (&jwk.algorithm, alg) {
        (AlgorithmParameters::RSA(_), Algorithm::RS256) => true,
        (AlgorithmParameters::EllipticCurve(p), Algorithm::ES256) => p.curve == EllipticCurve::P256,
        (AlgorithmParameters::OctetKeyPair(p), Algorithm::EdDSA) => p.curve == EllipticCurve::Ed25519,
        _ => false,
    };
    declared && shape
}

/// The caller from verified claims, read through the provider's claim names.
/// Roles outside Keel's tenant roles are dropped: a provider cannot mint a
/// platform admin or a role Keel does not know.
fn caller_of(claims: &Value, identity: &IdentityProvider, tenant: keel_core::TenantId) -> Result<Caller, KeelError> {
    let principal = claims.get(&identity.principal_claim).and_then(Value::as_str).unwrap_or("");
    check_tenant_principal(principal).map_err(|_| bad(&format!("{} must be a string of 1-128 characters, and not the reserved platform_admin", identity.principal_claim)))?;
    let roles = names(claims.get(&identity.roles_claim)).into_iter().filter(|r| TENANT_ROLES.contains(&r.as_str())).collect();
    let groups: Vec<String> = names(claims.get(&identity.groups_claim)).into_iter().filter(|g| is_context_name(g)).collect();
    if groups.len() > MAX_TOKEN_GROUPS {
        return Err(bad(&format!("more than {MAX_TOKEN_GROUPS} groups")));
    }
    Ok(Caller { tenant: Some(tenant), principal: principal.to_string(), roles, groups, incarnation: None, credential: Default::default() })
}

/// A claim's names: a list of strings, or one string separated by spaces or commas.
fn names(claim: Option<&Value>) -> Vec<String> {
    match claim {
        Some(Value::Array(list)) => list.iter().filter_map(Value::as_str).map(str::to_string).collect(),
        Some(Value::String(s)) => s.split([' ', ',']).filter(|x| !x.is_empty()).map(str::to_string).collect(),
        _ => vec![],
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn identity() -> IdentityProvider {
        serde_json::from_value(json!({"issuer": "https://idp", "jwks_uri": "https://idp/jwks", "audience": "keel",
            "principal_claim": "email", "roles_claim": "keel_roles"})).unwrap()
    }

    #[test]
    fn claims_are_read_through_the_providers_names_and_unknown_roles_are_dropped() {
        let claims = json!({"email": "ann@acme.test", "keel_roles": "member platform_admin approver", "groups": ["staff", ""]});
        let c = caller_of(&claims, &identity(), keel_core::TenantId::parse("acme").unwrap()).unwrap();
        assert!(!c.is_platform_admin());
        assert_eq!((c.principal.as_str(), c.roles, c.groups), ("ann@acme.test", vec!["member".to_string(), "approver".into()], vec!["staff".to_string()]));
        assert!(caller_of(&json!({"sub": "ann"}), &identity(), keel_core::TenantId::parse("acme").unwrap()).is_err(), "no principal claim");
    }

    #[test]
    fn a_key_verifies_only_its_own_algorithm() {
        let ed: Jwk = serde_json::from_value(json!({"kty": "OKP", "crv": "Ed25519", "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"})).unwrap();
        assert!(key_fits(&ed, Algorithm::EdDSA));
        assert!(!key_fits(&ed, Algorithm::ES256));
        assert!(!key_fits(&ed, Algorithm::HS256));
        let declared_rs: Jwk = serde_json::from_value(json!({"kty": "OKP", "crv": "Ed25519", "alg": "RS256", "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"})).unwrap();
        assert!(!key_fits(&declared_rs, Algorithm::EdDSA));
        let oct: Jwk = serde_json::from_value(json!({"kty": "oct", "k": "c2VjcmV0"})).unwrap();
        assert!([Algorithm::HS256, Algorithm::RS256, Algorithm::EdDSA].iter().all(|a| !key_fits(&oct, *a)));
    }
}
