//! Who may call a route: each route table declares it per route
//! (`http::Routes::access`), the router enforces it before the handler runs,
//! and `docs/authorization.md` is generated from the declarations. What a
//! route shows of one object or another (documents by ACL group, actions and
//! decisions by owner) is its handler's, stated in the declaration's scope.

use crate::auth::Caller;
use crate::KeelError;
use axum::extract::Request;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

/// A tenant's roles: a closed set.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TenantRole {
    Admin,
    Approver,
    Member,
    Auditor,
}

impl TenantRole {
    pub fn as_str(self) -> &'static str {
        match self {
            TenantRole::Admin => crate::auth::ROLE_ADMIN,
            TenantRole::Approver => crate::auth::ROLE_APPROVER,
            TenantRole::Member => crate::auth::ROLE_MEMBER,
            TenantRole::Auditor => crate::auth::ROLE_AUDITOR,
        }
    }
}

/// The roles that act on the tenant's behalf: everyone but the auditor, who changes nothing and spends nothing.
pub const ACTORS: &[TenantRole] = &[TenantRole::Admin, TenantRole::Approver, TenantRole::Member];
/// The roles that oversee: they read usage, objectives and the chain's verification.
pub const OVERSEERS: &[TenantRole] = &[TenantRole::Admin, TenantRole::Approver, TenantRole::Auditor];
pub const ADMINS: &[TenantRole] = &[TenantRole::Admin];

/// Who may call a route.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// No credentials at all (the console's page and scripts, the API document).
    Public,
    /// Any caller with credentials, the platform admin too.
    Anyone,
    /// The platform admin alone.
    Platform,
    /// The platform admin, or an admin of the tenant the path names (the handler checks which tenant).
    TenantAdmin,
    /// Any principal of a tenant, whatever its roles.
    Tenant,
    /// A principal of a tenant holding one of these roles.
    Roles(&'static [TenantRole]),
}

/// A route's `(method, path)` and its declared access with its scope (`None`: undeclared).
pub type RouteAccess = (String, String, Option<(Access, &'static str)>);

/// What a caller is, for the table of who may do what.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Party {
    PlatformAdmin,
    Tenant(TenantRole),
}

impl Party {
    pub const ALL: [Party; 5] = [
        Party::PlatformAdmin,
        Party::Tenant(TenantRole::Admin),
        Party::Tenant(TenantRole::Approver),
        Party::Tenant(TenantRole::Member),
        Party::Tenant(TenantRole::Auditor),
    ];

    pub fn name(self) -> &'static str {
        match self {
            Party::PlatformAdmin => "platform admin",
            Party::Tenant(role) => role.as_str(),
        }
    }
}

impl Access {
    /// Whether `caller` may call the route at all (`None`: no credentials).
    pub fn admits(self, caller: Option<&Caller>) -> bool {
        let Some(caller) = caller else { return self == Access::Public };
        match self {
            Access::Public | Access::Anyone => true,
            Access::Platform => caller.is_platform_admin(),
            Access::TenantAdmin => caller.is_platform_admin() || (caller.tenant.is_some() && caller.has_role(crate::auth::ROLE_ADMIN)),
            Access::Tenant => caller.tenant.is_some(),
            Access::Roles(roles) => caller.tenant.is_some() && roles.iter().any(|r| caller.has_role(r.as_str())),
        }
    }

    /// Whether a caller that is `party` (with that one role) may call the route.
    pub fn admits_party(self, party: Party) -> bool {
        let caller = match party {
            Party::PlatformAdmin => Caller::platform_admin(),
            Party::Tenant(role) => Caller {
                tenant: crate::ids::TenantId::parse("tenant").ok(),
                principal: "someone".into(),
                roles: vec![role.as_str().into()],
                groups: vec![],
                incarnation: None,
                credential: Default::default(),
            },
        };
        self.admits(Some(&caller))
    }

    /// The refusal of a caller the route does not admit.
    fn refusal(self) -> KeelError {
        let roles = |rs: &[TenantRole]| rs.iter().map(|r| r.as_str()).collect::<Vec<_>>().join(", ");
        KeelError::Forbidden(match self {
            Access::Public | Access::Anyone => "this route is open to every caller".into(),
            Access::Platform => "this route is the platform admin's alone".into(),
            Access::TenantAdmin => "this route takes the platform admin or an admin of the tenant".into(),
            Access::Tenant => "this route needs a tenant key or token, not the platform admin key".into(),
            Access::Roles(rs) => format!("this route takes one of the roles {}", roles(rs)),
        })
    }
}

/// Refuses a request its route's declared access does not admit, before
/// anything else of the route runs.
pub(crate) async fn enforce(access: Access, request: Request, next: Next) -> Response {
    if !access.admits(request.extensions().get::<Caller>()) {
        return access.refusal().into_response();
    }
    next.run(request).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_access_admits_exactly_its_parties() {
        let admitted = |a: Access| Party::ALL.into_iter().filter(|p| a.admits_party(*p)).map(Party::name).collect::<Vec<_>>();
        assert_eq!(admitted(Access::Platform), ["platform admin"]);
        assert_eq!(admitted(Access::TenantAdmin), ["platform admin", "admin"]);
        assert_eq!(admitted(Access::Tenant), ["admin", "approver", "member", "auditor"]);
        assert_eq!(admitted(Access::Roles(ACTORS)), ["admin", "approver", "member"]);
        assert_eq!(admitted(Access::Roles(OVERSEERS)), ["admin", "approver", "auditor"]);
        assert_eq!(admitted(Access::Anyone).len(), 5);
        assert!(!Access::Anyone.admits(None) && Access::Public.admits(None));
    }
}
