//! Approving, rejecting and undoing an action: a second principal's review,
//! the saga that runs (or compensates) it.

use keel_core::chain::DecisionKind;
use super::*;

/// Tries of a review that keeps losing its write to the saga's token.
const REVIEW_ATTEMPTS: u32 = 3;

impl Tools {
    /// Approve or reject a pending action (maker-checker). The saga waits on
    /// a task token; the decision is saved first, then the token completed, so
    /// a saga that stores its token late still finds the decision.
    pub(crate) async fn review(&self, caller: &Caller, id: &str, approve: bool, request: ReviewRequest) -> Result<Action, KeelError> {
        let tenant = caller.tenant()?;
        if request.reason.as_ref().is_some_and(|r| r.chars().count() > MAX_REASON_CHARS) {
            return Err(KeelError::BadRequest(format!("reason is longer than {MAX_REASON_CHARS} characters")));
        }
        // The saga stores its task token on the pending action as it starts to
        // wait, a write no reviewer must see: a review that lost the race to it
        // loads the action again and decides anew (every check included).
        let mut attempt = 1;
        let action = loop {
            match self.decide_review(tenant, caller, id, approve, &request).await {
                Err(KeelError::Conflict(m)) if m == ACTION_CHANGED && attempt < REVIEW_ATTEMPTS => attempt += 1,
                decided => break decided?,
            }
        };
        if !approve {
            self.uncount(tenant, &action.tool, action.counted.as_ref()).await?;
        }
        self.complete_review(tenant, &action).await?;
        Ok(action)
    }

    /// Loads the action, checks the review against it and the policies, and
    /// saves the decision.
    async fn decide_review(&self, tenant: &TenantId, caller: &Caller, id: &str, approve: bool, request: &ReviewRequest) -> Result<Action, KeelError> {
        let (mut action, version) = self.action(tenant, id).await?;
        if action.status != ActionStatus::PendingApproval {
            let last = action.approvals.last();
            if last.is_some_and(|a| a.principal == caller.principal && (a.decision == "approved") == approve) {
                // The same review again, as a client repeats one answered 503: finish what the first may have left undone.
                self.complete_review(tenant, &action).await?;
            }
            let status = json!(action.status);
            return Err(KeelError::Conflict(format!("action {id} is {}, no longer pending approval", status.as_str().unwrap_or("?"))));
        }
        if request.seen_updated_at.as_ref().is_some_and(|seen| *seen != action.updated_at) {
            return Err(KeelError::Conflict(format!("action {id} changed since you loaded it (updated {}); reload it and review again", action.updated_at)));
        }
        let tool = self.tool_at(tenant, &action.tool, action.tool_version).await?;
        let autonomy = self.autonomy(tenant, &tool).await?;
        // The kill switch takes effect at once: nothing pending runs while the tenant is suggest-only.
        if approve && autonomy == Autonomy::SuggestOnly {
            return Err(KeelError::Conflict(format!(
                "action {id} cannot run: the tenant is suggest-only (its autonomy or the kill switch); reject it, or approve once actions are resumed"
            )));
        }
        if approve {
            // Maker-checker by distinct people, whatever the policies say: not
            // the proposer under any spelling, nor a key it issued or made after the proposal.
            caller.may_approve_for(&action.proposer, &action.created_at)?;
        }
        let policies = self.tenant_policies(tenant).await?;
        let decision = self.gate.decide_off_workers(&policies, caller, Verb::Approve, &self.subject(&action, &tool, autonomy)).await?;
        if !decision.allowed {
            return Err(KeelError::Forbidden(format!(
                "policy denies this review (policies: {}): it needs the approver role, someone other than the proposer, and the tenant's conditions",
                decision.policies.join(", ")
            )));
        }
        action.policy.push(decision);
        action.approvals.push(Approval {
            principal: caller.principal.clone(),
            decision: if approve { "approved" } else { "rejected" }.into(),
            at: now_rfc3339(),
            reason: request.reason.clone(),
        });
        action.status = if approve { ActionStatus::Running } else { ActionStatus::Rejected };
        self.save(tenant, &mut action, version).await?;
        Ok(action)
    }

    /// What follows a saved review: its decision event, then the saga's
    /// signal. Both are safe to repeat (one event id; a spent token is
    /// ignored), so a repeated review, or the saga's expire step, can finish
    /// one whose request failed after the save.
    pub(crate) async fn complete_review(&self, tenant: &TenantId, action: &Action) -> Result<(), KeelError> {
        let Some(review) = action.approvals.last() else { return Ok(()) };
        let approved = review.decision == "approved";
        let (kind, status) =
            if approved { (DecisionKind::ActionApproved, ActionStatus::Running) } else { (DecisionKind::ActionRejected, ActionStatus::Rejected) };
        self.record(tenant, action, kind, &review.principal, json!({"status": status, "reason": review.reason})).await?;
        let Some(token) = &action.approval_token else { return Ok(()) };
        let sent = if approved {
            self.saga.send_task_success(token, json!({"approved_by": review.principal})).await
        } else {
            self.saga.send_task_failure(token, "Keel.Rejected", &match &review.reason {
                Some(reason) => format!("rejected by {}: {reason}", review.principal),
                None => format!("rejected by {}", review.principal),
            }).await
        };
        match sent {
            // The wait already ended (timed out): the saga's expire step reads the decision saved above.
            Ok(()) | Err(StoreError::ConditionFailed) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    pub(crate) async fn undo(&self, caller: &Caller, id: &str) -> Result<Action, KeelError> {
        let tenant = caller.tenant()?;
        let (mut action, version) = self.action(tenant, id).await?;
        let tool = self.tool_at(tenant, &action.tool, action.tool_version).await?;
        if !matches!(action.status, ActionStatus::Executed | ActionStatus::Undoing) {
            return Err(KeelError::Conflict(format!("action {id} is not executed, so it cannot be undone")));
        }
        let policies = self.tenant_policies(tenant).await?;
        let autonomy = self.autonomy(tenant, &tool).await?;
        let decision = self.gate.decide_off_workers(&policies, caller, Verb::Undo, &self.subject(&action, &tool, autonomy)).await?;
        if !decision.allowed {
            return Err(KeelError::Forbidden(format!("policy denies undoing this action (policies: {})", decision.policies.join(", "))));
        }
        if action.status == ActionStatus::Undoing {
            // Repeated, as a client repeats one answered 503: finish what the first may have left undone
            // (one event per undo request, whoever repeats it; the saga is named for the request).
            self.record(tenant, &action, DecisionKind::ActionUndoRequested, &caller.principal, json!({"status": action.status})).await?;
            self.start_saga(tenant, &action, "compensate").await?;
            return Err(KeelError::Conflict(format!("action {id} is already being undone")));
        }
        action.policy.push(decision);
        action.status = ActionStatus::Undoing;
        action.undo_requests += 1;
        action.error = None;
        self.save(tenant, &mut action, version).await?;
        self.record(tenant, &action, DecisionKind::ActionUndoRequested, &caller.principal, json!({"status": action.status})).await?;
        self.start_saga(tenant, &action, "compensate").await?;
        Ok(action)
    }

    /// Starts the action's saga execution: `execute` once per action (it
    /// waits for the approval when one is needed), `compensate` once per undo
    /// request. The input follows from the action alone, so a retried start
    /// is the same execution.
    pub(crate) async fn start_saga(&self, tenant: &TenantId, action: &Action, operation: &str) -> Result<(), KeelError> {
        let (name, approval) = match operation {
            "compensate" => (format!("{}-undo-{}", action.action_id, action.undo_requests), None),
            _ if matches!(action.status, ActionStatus::Running | ActionStatus::PendingApproval) => {
                (format!("{}-execute", action.action_id), action.approval_timeout_seconds)
            }
            _ => return Ok(()),
        };
        let input = json!({"tenant": tenant, "action_id": action.action_id, "operation": operation,
            "approval": approval.is_some(), "approval_timeout_seconds": approval.unwrap_or(0)});
        self.saga.start(&name, input).await?;
        Ok(())
    }

    pub(crate) fn subject<'a>(&self, action: &'a Action, tool: &'a Tool, autonomy: Autonomy) -> Subject<'a> {
        Subject {
            action_id: &action.action_id,
            tool: &action.tool,
            risk: tool.risk,
            reversible: tool.reversible,
            proposer: &action.proposer,
            autonomy,
            args: &action.args,
            today: Today::default(),
            now: chrono::Utc::now(),
        }
    }
}
