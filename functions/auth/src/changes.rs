//! Two-person changes: a tenant's admins list the changes waiting for a
//! second admin, and approve (the change is made then) or reject them. The
//! admin who asked cannot approve; it may withdraw by rejecting.

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
        if approve && by == request.requested_by {
            return Err(KeelError::Forbidden("a second admin must approve this change: you requested it".into()));
        }
        let decided = self.change_requests.decide(&id, request, version, approve, by).await?;
        let (kind, status) = if approve { (AdminChange::ChangeApproved, "approved") } else { (AdminChange::ChangeRejected, "rejected") };
        let outcome = json!({"status": status, "requested_by": decided.requested_by});
        self.record(caller, &id, kind, &format!("change {request_id}"), serde_json::Value::Null, outcome).await?;
        if approve {
            self.tenants.forget(&id);
            if decided.change == AdminChange::TenantUpdated {
                self.redact_stored_if_turned_on(&id, &decided.before, &decided.after).await?;
            }
            self.record(caller, &id, decided.change, &decided.target, decided.before.clone(), decided.after.clone()).await?;
        }
        Ok(ApiResponse::ok(&json!({"change_request": decided.view()})))
    }
}
