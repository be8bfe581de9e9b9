//! The per-tenant decision log as a hash chain: entry `n` stores the hash of
//! entry `n-1`, and its own hash covers its sequence number, its previous hash
//! and its content. Verification finds any modified, deleted or reordered entry.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

pub const GENESIS_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// One decision event: input → evidence → action → outcome, with usage.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DecisionEvent {
    /// Unique per event; a redelivered event carries the same id and is appended once.
    pub event_id: String,
    /// Groups the events of one decision (an ask, or an action's life).
    pub decision_id: String,
    pub kind: DecisionKind,
    pub principal: String,
    pub at: String,
    #[serde(default)]
    pub input: Value,
    #[serde(default)]
    pub evidence: Value,
    #[serde(default)]
    pub action: Value,
    #[serde(default)]
    pub outcome: Value,
    /// A gateway decision's usage; `None` (null) for actions.
    #[serde(default)]
    pub usage: Option<Usage>,
}

/// What a decision event records: a gateway request, or a step in an action's life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum DecisionKind {
    #[serde(rename = "ask")]
    Ask,
    #[serde(rename = "chat")]
    Chat,
    #[serde(rename = "classify")]
    Classify,
    #[serde(rename = "rank")]
    Rank,
    #[serde(rename = "action.proposed")]
    ActionProposed,
    #[serde(rename = "action.approved")]
    ActionApproved,
    #[serde(rename = "action.rejected")]
    ActionRejected,
    #[serde(rename = "action.executed")]
    ActionExecuted,
    #[serde(rename = "action.failed")]
    ActionFailed,
    #[serde(rename = "action.expired")]
    ActionExpired,
    #[serde(rename = "action.undo_requested")]
    ActionUndoRequested,
    #[serde(rename = "action.undone")]
    ActionUndone,
    #[serde(rename = "action.undo_failed")]
    ActionUndoFailed,
    /// An admin changed the tenant's controls (settings, keys, tools, policies).
    #[serde(rename = "admin.change")]
    AdminChange,
}

impl DecisionKind {
    /// The name the log records (`ask`, `action.proposed`, …).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ask => "ask",
            Self::Chat => "chat",
            Self::Classify => "classify",
            Self::Rank => "rank",
            Self::ActionProposed => "action.proposed",
            Self::ActionApproved => "action.approved",
            Self::ActionRejected => "action.rejected",
            Self::ActionExecuted => "action.executed",
            Self::ActionFailed => "action.failed",
            Self::ActionExpired => "action.expired",
            Self::ActionUndoRequested => "action.undo_requested",
            Self::ActionUndone => "action.undone",
            Self::ActionUndoFailed => "action.undo_failed",
            Self::AdminChange => "admin.change",
        }
    }

    /// A model-gateway request (metered in the tenant's usage).
    pub fn is_gateway(self) -> bool {
        matches!(self, Self::Ask | Self::Chat | Self::Classify | Self::Rank)
    }
}

/// Whether a gateway request was answered from the cache.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum CacheOutcome {
    #[serde(rename = "hit")]
    Hit,
    #[serde(rename = "miss")]
    Miss,
    /// Not a cacheable request.
    #[default]
    #[serde(rename = "off")]
    NotCacheable,
}

/// What a gateway request cost and how it went.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Usage {
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cost_micro_usd: i64,
    pub cache: CacheOutcome,
    pub attempts: u32,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ChainEntry {
    pub seq: u64,
    pub prev_hash: String,
    pub hash: String,
    pub recorded_at: String,
    pub event: DecisionEvent,
}

/// The hash of an entry. `serde_json::Value` keeps object keys sorted, so the
/// serialization is canonical.
pub fn entry_hash(seq: u64, prev_hash: &str, recorded_at: &str, event: &DecisionEvent) -> String {
    let content = serde_json::to_value(event).map(|v| v.to_string()).unwrap_or_default();
    let mut h = Sha256::new();
    h.update(seq.to_be_bytes());
    h.update(prev_hash.as_bytes());
    h.update(recorded_at.as_bytes());
    h.update(content.as_bytes());
    hex::encode(h.finalize())
}

pub fn next_entry(prev: Option<&ChainEntry>, recorded_at: String, event: DecisionEvent) -> ChainEntry {
    let (seq, prev_hash) = match prev {
        Some(p) => (p.seq + 1, p.hash.clone()),
        None => (1, GENESIS_HASH.to_string()),
    };
    let hash = entry_hash(seq, &prev_hash, &recorded_at, &event);
    ChainEntry { seq, prev_hash, hash, recorded_at, event }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ChainProblem {
    pub seq: u64,
    pub problem: String,
}

/// Checks entries given in stored (sequence) order. Returns every problem found.
pub fn verify_chain(entries: &[ChainEntry]) -> Vec<ChainProblem> {
    let mut problems = Vec::new();
    let mut prev_hash = GENESIS_HASH.to_string();
    for (i, e) in entries.iter().enumerate() {
        let expected_seq = i as u64 + 1;
        if e.seq != expected_seq {
            problems.push(ChainProblem {
                seq: e.seq,
                problem: format!("expected sequence {expected_seq}: an entry is missing or out of order"),
            });
        }
        if e.prev_hash != prev_hash {
            problems.push(ChainProblem { seq: e.seq, problem: "previous-hash link broken".into() });
        }
        if entry_hash(e.seq, &e.prev_hash, &e.recorded_at, &e.event) != e.hash {
            problems.push(ChainProblem { seq: e.seq, problem: "content does not match its hash (modified)".into() });
        }
        prev_hash = e.hash.clone();
    }
    problems
}

/// Sends a decision event to the audit queue, the tenant in a message attribute.
/// What an admin changed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AdminChange {
    TenantCreated,
    /// Settings, status, autonomy and the kill switch.
    TenantUpdated,
    KeyCreated,
    KeyRevoked,
    KeyRotated,
    ToolRegistered,
    PoliciesReplaced,
    /// A change that waits for a second admin (two-person changes).
    ChangeRequested,
    ChangeApproved,
    ChangeRejected,
}

/// An admin's change as the tenant's chain records it: who, what, on which
/// target, the state before and after. Callers leave secrets out of both.
pub fn admin_change_event(principal: &str, change: AdminChange, target: &str, before: Value, after: Value) -> DecisionEvent {
    let id = crate::ids::new_id("adm");
    DecisionEvent {
        event_id: id.clone(),
        decision_id: id,
        kind: DecisionKind::AdminChange,
        principal: principal.into(),
        at: crate::time::now_rfc3339(),
        input: serde_json::json!({"change": change, "target": target}),
        evidence: Value::Null,
        action: Value::Null,
        outcome: serde_json::json!({"before": before, "after": after}),
        usage: None,
    }
}

pub async fn send_decision(
    queue: &dyn crate::ports::WorkQueue,
    tenant: &crate::TenantId,
    event: &DecisionEvent,
) -> Result<(), crate::KeelError> {
    let attributes = std::collections::HashMap::from([("tenant".to_string(), tenant.to_string())]);
    queue.send(crate::ports::QueueName::Audit, serde_json::to_string(event)?, attributes).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(n: u32) -> DecisionEvent {
        DecisionEvent {
            event_id: format!("e{n}"),
            decision_id: format!("d{n}"),
            kind: DecisionKind::Ask,
            principal: "ann".into(),
            at: "t".into(),
            input: Value::from(n),
            evidence: Value::Null,
            action: Value::Null,
            outcome: Value::Null,
            usage: None,
        }
    }

    fn chain(n: u32) -> Vec<ChainEntry> {
        let mut out: Vec<ChainEntry> = Vec::new();
        for i in 0..n {
            let e = next_entry(out.last(), "now".into(), event(i));
            out.push(e);
        }
        out
    }

    #[test]
    fn detects_modified_deleted_and_reordered_entries() {
        assert!(verify_chain(&chain(5)).is_empty());
        let mut modified = chain(5);
        modified[2].event.input = Value::from("tampered");
        assert!(!verify_chain(&modified).is_empty());
        let mut deleted = chain(5);
        deleted.remove(2);
        assert!(!verify_chain(&deleted).is_empty());
        let mut reordered = chain(5);
        reordered.swap(1, 3);
        assert!(!verify_chain(&reordered).is_empty());
    }

    #[test]
    fn kinds_and_usage_read_back_as_the_log_wrote_them() {
        for kind in ["ask", "chat", "classify", "rank", "action.proposed", "action.undo_failed"] {
            let parsed: DecisionKind = serde_json::from_value(Value::from(kind)).unwrap();
            assert_eq!((parsed.as_str(), serde_json::to_value(parsed).unwrap()), (kind, Value::from(kind)));
        }
        assert!(serde_json::from_value::<DecisionKind>(Value::from("action.teleported")).is_err());
        // Entries already in chains read back byte for byte: their hashes cover the text.
        let written = serde_json::json!({"input_tokens": 3, "output_tokens": 4, "cost_micro_usd": 5, "cache": "off", "attempts": 1});
        let usage: Usage = serde_json::from_value(written.clone()).unwrap();
        assert_eq!((usage.cache, serde_json::to_value(&usage).unwrap()), (CacheOutcome::NotCacheable, written));
    }
}
