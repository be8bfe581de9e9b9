//! Two-person changes: a tenant's admins list the changes waiting for a
//! second admin, and approve (the change is made then) or reject them. An
//! approval counts only from another person (`Caller::may_approve_for`): not
//! the requester under any spelling, with a key the requester did not issue
//! and that existed before the request. The requester may withdraw by rejecting.

use crate::{require_tenant_admin, Auth};
use keel_core::auth::Caller;
use keel_core::decisions::AdminChange;
use keel_core::change_requests::{RequestStatus, Requester};
use keel_core::http::ApiResponse;
use keel_core::ids::TenantId;
use keel_core::KeelError;
use serde_json::json;

impl Auth {
    /// `GET /v1/tenants/{id}/change-requests`: those still waiting, oldest first.
    pub(crate) async fn change_requests(&self, caller: &Caller, id: TenantId) -> Result<ApiResponse, KeelError> {
        require_tenant_admin(caller, &id)?;
        let pending = self.change_requests.pending(&id).await?;
        Ok(ApiResponse::ok(&json!({"change_requests": pending.iter().map(|r| r.view()).collect::<Vec<_>>()})))
    }

    /// `POST /v1/tenants/{id}/change-requests/{request_id}/approve|reject`.
    pub(crate) async fn decide_change(&self, caller: &Caller, id: TenantId, request_id: &str, approve: bool) -> Result<ApiResponse, KeelError> {
        require_tenant_admin(caller, &id)?;
        let not_found = || KeelError::NotFound(format!("change request {request_id} not found"));
        let (request, version) = self.change_requests.get(&id, request_id).await?.ok_or_else(not_found)?;
        if request.status != RequestStatus::Pending {
            return Err(KeelError::Conflict(format!("change request {request_id} was already {:?}", request.status).to_lowercase()));
        }
        let by = Requester::of(caller);
        if approve {
            // Dual control by distinct people: not the requester under any
            // spelling, nor a key it issued, nor one made after the request.
            caller.may_approve_for(&request.requested_by.principal, &request.requested_at)?;
        }
        // A held change of the identity provider claims its issuer only now, as it is made.
        let identities = |v: &serde_json::Value| serde_json::from_value::<Option<keel_core::identity::IdentityProvider>>(v["identity"].clone()).ok().flatten();
        let (old_identity, new_identity) = (identities(&request.before), identities(&request.after));
        let claimed = match approve && request.change == AdminChange::TenantUpdated {
            true => Some(self.claim_issuer(&id, old_identity.as_ref(), new_identity.as_ref()).await?),
            false => None,
        };
        let decided = match self.change_requests.decide(&id, request, version, approve, by).await {
            Ok(decided) => decided,
            Err(e) => {
                if let Some(claimed) = claimed {
                    self.unclaim_issuer(&id, claimed).await;
                }
                return Err(e);
            }
        };
        if claimed.is_some() {
            self.release_issuer(&id, old_identity.as_ref(), new_identity.as_ref()).await?;
        }
        let (kind, status) = if approve { (AdminChange::ChangeApproved, "approved") } else { (AdminChange::ChangeRejected, "rejected") };
        let outcome = json!({"status": status, "requested_by": decided.requested_by});
        self.record(caller, &id, kind, &format!("change {request_id}"), serde_json::Value::Null, outcome).await?;
        if approve {
            self.tenants.forget(&id);
            if let Some(hash) = decided.write.sk.strip_prefix(keel_core::keys::API_KEYS) {
                self.keys.forget(hash);
            }
            if decided.change == AdminChange::TenantUpdated {
                self.redact_stored_if_turned_on(&id, &decided.before, &decided.after).await?;
            }
            self.record(caller, &id, decided.change, &decided.target, decided.before.clone(), decided.after.clone()).await?;
        }
        Ok(ApiResponse::ok(&json!({"change_request": decided.view()})))
    }
}
