//! Two-person changes: when a tenant asks for them, a change that weakens
//! a control (the kill switch off, autonomy raised, two-person changes off,
//! the enforced policy set replaced) is not applied but stored as a request;
//! a second admin approves it, and only then is it written, in one atomic
//! write with the request's new status and only if the target has not moved
//! since it was requested.

use crate::decisions::AdminChange;
use crate::error::KeelError;
use crate::ids::{new_id, TenantId};
use crate::ports::{Condition, Table, Write};
use crate::StoreError;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::sync::Arc;

/// How long a request waits for its second admin.
pub const REQUEST_TTL_SECS: i64 = 7 * 24 * 3600;

/// The write a change makes, prepared by the store that owns its item and
/// made when the request is approved (in the tenant's own partition).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PendingWrite {
    pub sk: String,
    pub data: Value,
    /// The item's version when the change was requested (`None`: it did not exist).
    pub base_version: Option<u64>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RequestStatus {
    Pending,
    Approved,
    Rejected,
}

/// Who asked: a tenant's principal, or the platform admin.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Requester {
    pub principal: String,
    pub platform_admin: bool,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ChangeRequest {
    pub id: String,
    pub change: AdminChange,
    pub target: String,
    /// Why it needs a second admin.
    pub reason: String,
    pub requested_by: Requester,
    pub requested_at: String,
    pub before: Value,
    pub after: Value,
    pub write: PendingWrite,
    /// Further writes the change makes with it, in the same atomic write.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub also: Vec<PendingWrite>,
    pub status: RequestStatus,
    #[serde(default)]
    pub decided_by: Option<Requester>,
}

impl Requester {
    pub fn of(caller: &crate::auth::Caller) -> Self {
        Self { principal: caller.principal.clone(), platform_admin: caller.is_platform_admin() }
    }
}

impl ChangeRequest {
    /// The request as admins see it (without the prepared write).
    pub fn view(&self) -> Value {
        let mut v = serde_json::to_value(self).unwrap_or_default();
        if let Some(o) = v.as_object_mut() {
            o.remove("write");
            o.remove("also");
        }
        v
    }

    pub fn new(change: AdminChange, target: String, reason: String, requested_by: Requester, before: Value, after: Value, write: PendingWrite) -> Self {
        let (id, requested_at) = (new_id("chg"), crate::time::now_rfc3339());
        Self { id, change, target, reason, requested_by, requested_at, before, after, write, also: vec![], status: RequestStatus::Pending, decided_by: None }
    }
}

/// Stores a request and records it in the tenant's chain; the 202 body.
pub async fn submit(
    store: &ChangeRequestStore,
    queue: &dyn crate::ports::WorkQueue,
    tenant: &TenantId,
    request: ChangeRequest,
) -> Result<crate::http::ApiResponse, KeelError> {
    store.create(tenant, &request).await?;
    let after = serde_json::json!({"change": request.change, "target": request.target, "reason": request.reason, "after": request.after});
    let event = crate::decisions::admin_change_event(
        &request.requested_by.principal,
        AdminChange::ChangeRequested,
        &format!("change {}", request.id),
        request.before.clone(),
        after,
    );
    crate::decisions::send_decision(queue, tenant, &event).await?;
    Ok(crate::http::ApiResponse::json(202, &serde_json::json!({"change_request": request.view()})))
}

/// The tenant's change requests.
pub struct ChangeRequestStore {
    table: Arc<dyn Table>,
}

impl ChangeRequestStore {
    pub fn new(table: Arc<dyn Table>) -> Self {
        Self { table }
    }

    fn write(tenant: &TenantId, request: &ChangeRequest, condition: Condition) -> Result<Write, KeelError> {
        let expires_at = Some(crate::time::now_secs() + REQUEST_TTL_SECS);
        Ok(Write { pk: tenant.pk(), sk: crate::keys::change_request(&request.id), data: serde_json::to_value(request)?, expires_at, condition })
    }

    pub async fn create(&self, tenant: &TenantId, request: &ChangeRequest) -> Result<(), KeelError> {
        self.table.put(Self::write(tenant, request, Condition::NotExists)?).await?;
        Ok(())
    }

    pub async fn get(&self, tenant: &TenantId, id: &str) -> Result<Option<(ChangeRequest, u64)>, KeelError> {
        crate::ports::get_record(self.table.as_ref(), &tenant.pk(), &crate::keys::change_request(id)).await
    }

    /// Requests still waiting, oldest first.
    pub async fn pending(&self, tenant: &TenantId) -> Result<Vec<ChangeRequest>, KeelError> {
        let items = self.table.query(&tenant.pk(), crate::keys::CHANGE_REQUESTS, Default::default()).await?;
        let mut out: Vec<ChangeRequest> =
            items.into_iter().map(|i| serde_json::from_value(i.data)).collect::<Result<Vec<_>, _>>()?;
        out.retain(|r| r.status == RequestStatus::Pending);
        out.sort_by(|a, b| a.requested_at.cmp(&b.requested_at));
        Ok(out)
    }

    /// Approves (and makes the change) or rejects a pending request at
    /// `version`. `Conflict` when the request was decided meanwhile or its
    /// target moved since it was requested (then nothing is written).
    pub async fn decide(&self, tenant: &TenantId, mut request: ChangeRequest, version: u64, approve: bool, by: Requester) -> Result<ChangeRequest, KeelError> {
        request.status = if approve { RequestStatus::Approved } else { RequestStatus::Rejected };
        request.decided_by = Some(by);
        let mut writes = vec![Self::write(tenant, &request, Condition::Version(version))?];
        if approve {
            for w in std::iter::once(&request.write).chain(&request.also) {
                let condition = w.base_version.map_or(Condition::NotExists, Condition::Version);
                writes.push(Write { pk: tenant.pk(), sk: w.sk.clone(), data: w.data.clone(), expires_at: None, condition });
            }
        }
        match self.table.put_all(writes).await {
            Ok(()) => Ok(request),
            Err(StoreError::ConditionFailed) => Err(KeelError::Conflict(format!(
                "change request {} was decided meanwhile, or its target changed since it was requested; request the change again",
                request.id
            ))),
            Err(e) => Err(e.into()),
        }
    }
}
