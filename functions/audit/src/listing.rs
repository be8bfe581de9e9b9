//! Listing a tenant's decision events, newest first, filtered by kind,
//! principal and time: the audit view's feed. Admins and auditors list
//! every principal's events; others only their own.

use crate::Audit;
use keel_core::auth::Caller;
use keel_core::chain::{ChainEntry, DecisionKind};
use keel_core::http::{list_limit, ApiResponse};
use keel_core::KeelError;
use serde_json::json;
use std::collections::HashMap;

/// A page of decision events, newest first.
#[derive(serde::Serialize, schemars::JsonSchema)]
pub(crate) struct DecisionPage {
    pub events: Vec<ChainEntry>,
    /// The cursor of the next page; absent on the last.
    pub next_cursor: Option<String>,
}

/// One decision and its events, in the order they were recorded.
#[derive(serde::Serialize, schemars::JsonSchema)]
pub(crate) struct Decision {
    pub decision_id: String,
    pub events: Vec<ChainEntry>,
}

/// The most entries one request reads while filtering; past it the page ends early with a cursor.
const MAX_SCANNED: usize = 2000;
const PAGE: usize = 200;

/// `GET /v1/decisions?kind=&principal=&since=&limit=&cursor=`, parsed.
pub(crate) struct DecisionQuery {
    kind: Option<DecisionKind>,
    principal: Option<String>,
    /// RFC 3339: only events recorded at or after it.
    since: Option<String>,
    limit: usize,
    /// The sequence number of the last entry of the previous page.
    cursor: Option<u64>,
}

impl DecisionQuery {
    pub(crate) fn parse(query: &HashMap<String, String>) -> Result<Self, KeelError> {
        let kind = query
            .get("kind")
            .map(|k| serde_json::from_value(json!(k)).map_err(|_| KeelError::BadRequest(format!("unknown decision kind {k:?} (e.g. ask, chat, action.proposed)"))))
            .transpose()?;
        let since = query.get("since").cloned();
        if let Some(since) = &since {
            chrono::DateTime::parse_from_rfc3339(since).map_err(|_| KeelError::BadRequest(format!("since {since:?} is not an RFC 3339 timestamp")))?;
        }
        let limit = list_limit(query)?;
        let cursor = query
            .get("cursor")
            .map(|c| c.parse().map_err(|_| KeelError::BadRequest("cursor must be the next_cursor of an earlier page".into())))
            .transpose()?;
        let principal = query.get("principal").cloned();
        Ok(Self { kind, principal, since, limit, cursor })
    }
}

impl Audit {
    /// One page of events the caller may read, newest first, with the cursor
    /// of the next page (absent on the last).
    pub(crate) async fn list_decisions(&self, caller: &Caller, query: DecisionQuery) -> Result<ApiResponse, KeelError> {
        let tenant = caller.tenant()?;
        let principal = match (&query.principal, caller.reads_all_decisions()) {
            (Some(p), false) if *p != caller.principal => {
                return Err(KeelError::Forbidden("listing another principal's decisions takes the admin or auditor role".into()))
            }
            (p, true) => p.clone(),
            (_, false) => Some(caller.principal.clone()),
        };
        let (mut events, mut scanned, mut cursor) = (Vec::new(), 0, query.cursor);
        'pages: loop {
            let page = self.chain.older_than(tenant, cursor, PAGE).await?;
            let exhausted = page.len() < PAGE;
            for entry in page {
                if query.since.as_ref().is_some_and(|since| entry.recorded_at < *since) {
                    cursor = None;
                    break 'pages;
                }
                scanned += 1;
                cursor = Some(entry.seq);
                let wanted = query.kind.is_none_or(|k| entry.event.kind == k) && principal.as_ref().is_none_or(|p| entry.event.principal == *p);
                if wanted {
                    events.push(entry);
                    if events.len() == query.limit {
                        break 'pages;
                    }
                }
            }
            if exhausted {
                cursor = None;
                break;
            }
            if scanned >= MAX_SCANNED {
                break;
            }
        }
        Ok(ApiResponse::ok(&DecisionPage { events, next_cursor: cursor.map(|c| c.to_string()) }))
    }
}
