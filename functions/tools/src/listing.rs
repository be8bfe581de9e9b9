//! Listing a tenant's actions, newest first, for an approver's inbox or a
//! principal's own history. Approvers, admins and auditors see every action
//! of the tenant; other principals see the actions they proposed.

use super::*;
use keel_core::auth::{ROLE_APPROVER, ROLE_AUDITOR};
use keel_core::http::{list_limit, LIST_DEFAULT_LIMIT};
use std::collections::HashMap;

/// The most actions one request reads while filtering; past it the page ends
/// early with a cursor, so a rare status never makes a request scan the whole log.
const MAX_SCANNED: usize = 1000;

/// `GET /v1/actions?status=&limit=&cursor=`, parsed.
pub(crate) struct ActionQuery {
    status: Option<ActionStatus>,
    limit: usize,
    /// The last action id of the previous page.
    cursor: Option<String>,
}

impl ActionQuery {
    pub(crate) fn parse(query: &HashMap<String, String>) -> Result<Self, KeelError> {
        let status = query
            .get("status")
            .map(|s| {
                serde_json::from_value(json!(s)).map_err(|_| {
                    KeelError::BadRequest(format!(
                        "unknown status {s:?}: one of suggested, pending_approval, expired, running, executed, compensating, failed, rejected, undoing, undone"
                    ))
                })
            })
            .transpose()?;
        let limit = list_limit(query)?;
        let cursor = query.get("cursor").map(|c| parse_path_id("cursor", c)).transpose()?;
        Ok(Self { status, limit, cursor })
    }
}

/// The one rule for reading an action: approvers, admins and auditors read
/// every action of their tenant; anyone else its own proposals.
pub(crate) fn may_read(caller: &Caller, action: &Action) -> bool {
    let sees_all = caller.has_role(ROLE_APPROVER) || caller.has_role(ROLE_AUDITOR) || caller.has_role(keel_core::auth::ROLE_ADMIN);
    sees_all || action.proposer == caller.principal
}

impl Tools {
    /// One page of the actions the caller may see, newest first, and the
    /// cursor of the next page (absent on the last).
    pub(crate) async fn list_actions(&self, caller: &Caller, query: ActionQuery) -> Result<ActionPage, KeelError> {
        let tenant = caller.tenant()?;
        let visible = |a: &Action| may_read(caller, a) && query.status.is_none_or(|s| a.status == s);
        let (mut listed, mut scanned) = (Vec::new(), 0);
        let mut cursor = query.cursor.clone();
        let page_size = query.limit.max(LIST_DEFAULT_LIMIT);
        loop {
            let page = self.actions.older_than(tenant, cursor.as_deref(), page_size).await?;
            let exhausted = page.len() < page_size;
            for action in page {
                scanned += 1;
                cursor = Some(action.action_id.clone());
                if visible(&action) {
                    listed.push(action_view(&action));
                    if listed.len() == query.limit {
                        break;
                    }
                }
            }
            if exhausted && listed.len() < query.limit {
                cursor = None;
                break;
            }
            if listed.len() == query.limit || scanned >= MAX_SCANNED {
                break;
            }
        }
        Ok(ActionPage { actions: listed, next_cursor: cursor })
    }
}
