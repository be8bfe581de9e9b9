//! The platform's own HS256 JWTs (for its tooling, the demo and tests),
//! and what a failed JWT check tells its caller. Tenants' own identity
//! providers' tokens are verified in the auth function (`oidc`).

use crate::auth::{check_tenant_principal, is_context_name};
use crate::error::KeelError;
use serde::{Deserialize, Serialize};
use serde_json::Value;

#[derive(Clone, Debug)]
pub struct JwtSettings {
    pub secret: String,
    pub issuer: String,
    pub audience: String,
}

/// Claims Keel reads from a JWT.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct JwtClaims {
    pub sub: String,
    pub iss: String,
    pub aud: Value,
    pub exp: i64,
    #[serde(default)]
    pub nbf: Option<i64>,
    pub tenant: String,
    #[serde(default)]
    pub roles: Vec<String>,
    #[serde(default)]
    pub groups: Vec<String>,
}

/// Signs claims as an HS256 JWT with the platform secret (for tests, the demo
/// and operators' tooling).
pub fn sign_jwt(claims: &JwtClaims, secret: &str) -> Result<String, KeelError> {
    let key = jsonwebtoken::EncodingKey::from_secret(secret.as_bytes());
    jsonwebtoken::encode(&jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256), claims, &key)
        .map_err(|e| KeelError::Internal(format!("cannot sign a JWT: {e}")))
}

/// Verifies a platform HS256 JWT: algorithm, signature, issuer, audience,
/// expiry and not-before (no leeway: the platform signs its own tokens).
pub fn verify_jwt(token: &str, settings: &JwtSettings, now: i64) -> Result<JwtClaims, KeelError> {
    let bad = |why: &str| KeelError::Unauthorized(format!("invalid token: {why}"));
    let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::HS256);
    validation.set_issuer(&[&settings.issuer]);
    validation.set_audience(&[&settings.audience]);
    validation.set_required_spec_claims(&["exp", "iss", "aud"]);
    // Time is checked below against `now`, the caller's clock, not the library's.
    validation.validate_exp = false;
    validation.validate_nbf = false;
    let key = jsonwebtoken::DecodingKey::from_secret(settings.secret.as_bytes());
    let claims = jsonwebtoken::decode::<JwtClaims>(token, &key, &validation)
        .map_err(|e| bad(&token_error(&e)))?
        .claims;
    if claims.exp <= now {
        return Err(bad("expired"));
    }
    if claims.nbf.is_some_and(|nbf| nbf > now) {
        return Err(bad("not yet valid"));
    }
    check_tenant_principal(&claims.sub).map_err(|_| bad("sub must be 1-128 characters, and not the reserved platform_admin"))?;
    if !claims.roles.iter().chain(&claims.groups).all(|v| is_context_name(v)) {
        return Err(bad("roles and groups must be non-empty names without commas"));
    }
    Ok(claims)
}

/// What a JWT check's failure says to the caller: which check, never key material.
pub fn token_error(error: &jsonwebtoken::errors::Error) -> String {
    use jsonwebtoken::errors::ErrorKind;
    match error.kind() {
        ErrorKind::ExpiredSignature => "expired".into(),
        ErrorKind::ImmatureSignature => "not yet valid".into(),
        ErrorKind::InvalidIssuer => "wrong issuer".into(),
        ErrorKind::InvalidAudience => "wrong audience".into(),
        ErrorKind::InvalidSignature => "signature mismatch".into(),
        ErrorKind::InvalidAlgorithm | ErrorKind::InvalidAlgorithmName => "algorithm not accepted for this key".into(),
        ErrorKind::MissingRequiredClaim(claim) => format!("missing claim {claim}"),
        ErrorKind::InvalidKeyFormat => "the key does not fit the algorithm".into(),
        _ => "malformed token".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::check_principal;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use base64::Engine;

    fn settings() -> JwtSettings {
        JwtSettings { secret: "s3cret".into(), issuer: "https://idp".into(), audience: "keel".into() }
    }

    fn claims() -> JwtClaims {
        JwtClaims {
            sub: "ann".into(),
            iss: "https://idp".into(),
            aud: Value::from("keel"),
            exp: 2_000,
            nbf: None,
            tenant: "acme".into(),
            roles: vec!["member".into()],
            groups: vec!["eng".into()],
        }
    }

    #[test]
    fn a_token_makes_a_caller_by_the_same_rules_as_the_authorizer_context() {
        let signed = |c: &JwtClaims| verify_jwt(&sign_jwt(c, "s3cret").unwrap(), &settings(), 1_000);
        for sub in ["", "   ", &"x".repeat(129)] {
            assert!(signed(&JwtClaims { sub: sub.to_string(), ..claims() }).is_err(), "sub {sub:?}");
        }
        // "x,admin" would be two roles once the authorizer joins and the function splits them.
        assert!(signed(&JwtClaims { roles: vec!["x,admin".into()], ..claims() }).is_err());
        assert!(signed(&JwtClaims { groups: vec!["".into()], ..claims() }).is_err());
        let ok = signed(&claims()).unwrap();
        assert!(check_principal(&ok.sub).is_ok());
    }

    #[test]
    fn jwt_round_trip_and_every_check() {
        let token = sign_jwt(&claims(), "s3cret").unwrap();
        assert_eq!(verify_jwt(&token, &settings(), 1_000).unwrap(), claims());
        assert!(verify_jwt(&token, &settings(), 2_000).is_err(), "expired");
        let other = sign_jwt(&claims(), "other").unwrap();
        assert!(verify_jwt(&other, &settings(), 1_000).is_err(), "forged signature");
        let mut c = claims();
        c.iss = "evil".into();
        assert!(verify_jwt(&sign_jwt(&c, "s3cret").unwrap(), &settings(), 1_000).is_err());
        let mut c = claims();
        c.aud = Value::from(vec!["x", "keel"]);
        assert!(verify_jwt(&sign_jwt(&c, "s3cret").unwrap(), &settings(), 1_000).is_ok());
        c.aud = Value::from("x");
        assert!(verify_jwt(&sign_jwt(&c, "s3cret").unwrap(), &settings(), 1_000).is_err());
        // alg=none with the same payload is refused.
        let parts: Vec<&str> = token.split('.').collect();
        let none = format!("{}.{}.", URL_SAFE_NO_PAD.encode(br#"{"alg":"none"}"#), parts[1]);
        assert!(verify_jwt(&none, &settings(), 1_000).is_err());
        assert!(verify_jwt("garbage", &settings(), 1_000).is_err());
    }
}
