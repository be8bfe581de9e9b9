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
    pub kind: String,
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
    #[serde(default)]
    pub usage: Value,
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
            kind: "ask".into(),
            principal: "ann".into(),
            at: "t".into(),
            input: Value::from(n),
            evidence: Value::Null,
            action: Value::Null,
            outcome: Value::Null,
            usage: Value::Null,
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
}
