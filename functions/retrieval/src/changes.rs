//! The changed-documents feed (`GET /v1/changes`): what was put or deleted
//! after a time, oldest first, only what the caller may see, paged by
//! cursors bound to the caller.

use super::*;

impl Retrieval {
    pub(crate) async fn record_change(
        &self,
        tenant: &TenantId,
        doc_id: &str,
        op: &str,
        at: chrono::DateTime<chrono::Utc>,
        acl_groups: &[String],
    ) -> Result<(), KeelError> {
        let at = change_time(at);
        let record = ChangeRecord { doc_id: doc_id.into(), op: op.into(), at: at.clone(), acl_groups: acl_groups.to_vec() };
        self.table
            .put(Write {
                pk: tenant.pk(),
                sk: keys::change(&at, doc_id),
                data: serde_json::to_value(&record)?,
                expires_at: Some(keel_core::time::now_secs() + CHANGE_TTL_SECS),
                condition: Condition::Always,
            })
            .await?;
        Ok(())
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
            (None, Some(since)) => keys::changes_after(&change_time(parse_time("since", since)?)),
            (None, None) => return Err(KeelError::BadRequest("give since (RFC 3339) or cursor".into())),
        };
        let items = self
            .table
            .query(&tenant.pk(), keys::CHANGES, QueryOptions { limit: Some(limit), after: Some(after), ..Default::default() })
            .await?;
        let cursor = match items.last() {
            Some(last) => Some(self.seal_cursor(caller, &last.sk).await?),
            None => None,
        };
        let changes: Vec<ChangeRecord> = items
            .into_iter()
            .map(|i| serde_json::from_value::<ChangeRecord>(i.data))
            .collect::<Result<Vec<_>, _>>()?
            .into_iter()
            .filter(|c| visible(caller, &c.acl_groups))
            .collect();
        let out: Vec<_> = changes.iter().map(|c| json!({"doc_id": c.doc_id, "op": c.op, "at": c.at})).collect();
        Ok(ApiResponse::ok(&json!({"changes": out, "cursor": cursor})))
    }

    /// A feed position as the caller gets it: a random token naming a record
    /// that holds the position (the last change key read, which names a
    /// document the caller may not see) and whose cursor it is.
    pub(crate) async fn seal_cursor(&self, caller: &Caller, after: &str) -> Result<String, KeelError> {
        let token = new_token("cur");
        let write = Write {
            pk: caller.tenant()?.pk(),
            sk: keys::feed_cursor(&token),
            data: json!({"after": after, "principal": caller.principal}),
            expires_at: Some(keel_core::time::now_secs() + CURSOR_TTL_SECS),
            condition: Condition::NotExists,
        };
        self.table.put(write).await?;
        Ok(token)
    }

    /// The position behind a cursor this feed gave this caller.
    pub(crate) async fn open_cursor(&self, caller: &Caller, token: &str) -> Result<String, KeelError> {
        let refused = || KeelError::BadRequest("cursor is not one this feed returned to you, or it expired; start again with since".into());
        let token = parse_path_id("cursor", token).map_err(|_| refused())?;
        let item = self.table.get(&caller.tenant()?.pk(), &keys::feed_cursor(&token)).await?.ok_or_else(refused)?;
        if item.data["principal"].as_str() != Some(caller.principal.as_str()) {
            return Err(refused());
        }
        item.data["after"].as_str().map(str::to_string).ok_or_else(refused)
    }
}

