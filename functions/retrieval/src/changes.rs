//! The changed-documents feed (`GET /v1/changes`): what was put or deleted
//! after a time, oldest first, only what the caller may see, paged by
//! cursors bound to the caller.

use super::*;
use crate::store::ChangeFeed;

impl Retrieval {
    pub(crate) async fn record_change(
        &self,
        tenant: &TenantId,
        doc_id: &str,
        op: ChangeOp,
        at: chrono::DateTime<chrono::Utc>,
        acl_groups: &[String],
    ) -> Result<(), KeelError> {
        let record = ChangeRecord { doc_id: doc_id.into(), op, at: change_time(at), acl_groups: acl_groups.to_vec() };
        self.changes.record(tenant, &record).await
    }

    /// `GET /v1/changes?since=<RFC 3339>&limit=N` (or `cursor=` from the last
    /// page): documents put or deleted after that time, oldest first, only
    /// those the caller may see.
    pub(crate) async fn changes(&self, caller: &Caller, query: &HashMap<String, String>) -> Result<ApiResponse, KeelError> {
        let tenant = caller.tenant()?;
        let limit = match query.get("limit") {
            Some(l) => l.parse::<usize>().ok().filter(|l| (1..=MAX_CHANGES).contains(l)).ok_or_else(|| {
                KeelError::BadRequest(format!("limit must be between 1 and {MAX_CHANGES}"))
            })?,
            None => 100,
        };
        let after = match (query.get("cursor"), query.get("since")) {
            (Some(cursor), _) => self.open_cursor(caller, cursor).await?,
            (None, Some(since)) => ChangeFeed::position_at(&change_time(parse_time("since", since)?)),
            (None, None) => return Err(KeelError::BadRequest("give since (RFC 3339) or cursor".into())),
        };
        let page = self.changes.page(tenant, after, limit).await?;
        // The cursor holds the last position read, which may name a document the caller may not see.
        let cursor = match page.last() {
            Some((position, _)) => Some(self.changes.seal_cursor(tenant, &caller.principal, position).await?),
            None => None,
        };
        let out: Vec<_> = page
            .iter()
            .map(|(_, c)| c)
            .filter(|c| visible(caller, &c.acl_groups))
            .map(|c| json!({"doc_id": c.doc_id, "op": c.op, "at": c.at}))
            .collect();
        Ok(ApiResponse::ok(&json!({"changes": out, "cursor": cursor})))
    }

    /// The position behind a cursor this feed gave this caller.
    async fn open_cursor(&self, caller: &Caller, token: &str) -> Result<String, KeelError> {
        let refused = || KeelError::BadRequest("cursor is not one this feed returned to you, or it expired; start again with since".into());
        let token = parse_path_id("cursor", token).map_err(|_| refused())?;
        self.changes.open_cursor(caller.tenant()?, &caller.principal, &token).await?.ok_or_else(refused)
    }
}

