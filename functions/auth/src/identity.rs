//! Tokens (JWTs): the platform's own HS256 tokens and tenants' identity
//! providers' tokens; and keeping the issuer index in step with the
//! identity provider a tenant's record names.

use crate::Auth;
use jsonwebtoken::Algorithm;
use keel_core::auth::Caller;
use keel_core::jwt::verify_jwt;
use keel_core::identity::{Claim, IdentityProvider};
use keel_core::ids::TenantId;
use keel_core::time::now_secs;
use keel_core::KeelError;

/// Largest token read; a real one is a few kilobytes.
pub const MAX_TOKEN_BYTES: usize = 16 * 1024;

/// A token's header, read before anything else about it; too large or
/// malformed is refused here.
pub fn read_header(token: &str) -> Result<jsonwebtoken::Header, KeelError> {
    if token.len() > MAX_TOKEN_BYTES {
        return Err(KeelError::Unauthorized(format!("invalid token: larger than {MAX_TOKEN_BYTES} bytes")));
    }
    jsonwebtoken::decode_header(token).map_err(|_| KeelError::Unauthorized("invalid token: malformed header".into()))
}

impl Auth {
    /// A token's caller: HS256 tokens are the platform's (when it has a
    /// secret), every other token must come from a tenant's provider.
    pub(crate) async fn authenticate_jwt(&self, token: &str) -> Result<Caller, KeelError> {
        let header = read_header(token)?;
        match (header.alg, &self.config.jwt) {
            (Algorithm::HS256, Some(settings)) => {
                let claims = verify_jwt(token, settings, now_secs())?;
                Ok(Caller {
                    tenant: Some(TenantId::parse(&claims.tenant).map_err(|_| KeelError::Unauthorized("invalid token: bad tenant".into()))?),
                    principal: claims.sub,
                    roles: claims.roles,
                    groups: claims.groups,
                    incarnation: None,
                    credential: Default::default(),
                })
            }
            _ => self.provider_tokens.caller(token, &header, now_secs()).await,
        }
    }

    /// Claims the issuer `after` names before the tenant's record does, so
    /// two tenants never share one. Returns the issuer to give back should
    /// the record's write then fail.
    pub(crate) async fn claim_issuer(&self, id: &TenantId, before: Option<&IdentityProvider>, after: Option<&IdentityProvider>) -> Result<Option<String>, KeelError> {
        let Some(after) = after else { return Ok(None) };
        if before.is_some_and(|b| b.issuer == after.issuer) {
            return Ok(None);
        }
        match self.issuers.claim(&after.issuer, id).await? {
            Claim::Claimed => Ok(Some(after.issuer.clone())),
            Claim::AlreadyHeld => Ok(None),
            Claim::HeldBy(owner, version) => {
                let owner_uses_it = self.tenants.get(&owner).await?.and_then(|(t, _)| t.identity).is_some_and(|i| i.issuer == after.issuer);
                if owner_uses_it {
                    return Err(KeelError::Conflict(format!("issuer {} already signs in tenant {owner}", after.issuer)));
                }
                self.issuers.take_over(&after.issuer, id, version).await?;
                Ok(Some(after.issuer.clone()))
            }
        }
    }

    /// Gives back an issuer claimed for a write that did not happen.
    pub(crate) async fn unclaim_issuer(&self, id: &TenantId, claimed: Option<String>) {
        if let Some(issuer) = claimed {
            if let Err(e) = self.issuers.release(&issuer, id).await {
                tracing::warn!(tenant = %id, error = %e, "could not give back an issuer claimed for a failed write");
            }
        }
    }

    /// After the record changed: the issuer it no longer names is free again.
    pub(crate) async fn release_issuer(&self, id: &TenantId, before: Option<&IdentityProvider>, after: Option<&IdentityProvider>) -> Result<(), KeelError> {
        match before {
            Some(b) if after.is_none_or(|a| a.issuer != b.issuer) => self.issuers.release(&b.issuer, id).await,
            _ => Ok(()),
        }
    }
}
