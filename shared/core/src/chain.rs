//! The per-tenant decision log as a hash chain: entry `n` stores the hash of
//! entry `n-1`, and its own hash covers its sequence number, its previous hash
//! and its content. Verification finds any modified, deleted or reordered entry.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

pub const GENESIS_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// One decision event: input → evidence → action → outcome, with usage.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
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
    /// The request that made the event (absent from events logged before ids were kept).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    /// The W3C trace the request belongs to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace_id: Option<String>,
    /// From the request's arrival to this event, for a request's own decision.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency_ms: Option<u64>,
    /// Who made it, by which credential (absent from events logged before actors were kept).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub actor: Option<Actor>,
}

/// Who a decision's request came from: the platform's operator or a
/// tenant's principal, and the key it used. A tenant key named like the
/// operator cannot be made (`auth::check_tenant_principal`), and `kind`
/// tells the two apart besides.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Actor {
    pub kind: ActorKind,
    pub principal: String,
    /// The API key's id (`auth::api_key_id`); absent for tokens and the platform admin key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_id: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ActorKind {
    Platform,
    Tenant,
}

impl Actor {
    pub fn of(caller: &crate::auth::Caller) -> Self {
        let kind = if caller.is_platform_admin() { ActorKind::Platform } else { ActorKind::Tenant };
        Self { kind, principal: caller.principal.clone(), key_id: caller.credential.key_id.clone() }
    }
}

/// What a decision event records: a gateway request, or a step in an action's life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, schemars::JsonSchema)]
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
    /// A budget's spend crossed one of its alert thresholds for the first time this month.
    #[serde(rename = "budget.alert")]
    BudgetAlert,
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
            Self::BudgetAlert => "budget.alert",
        }
    }

    /// A model-gateway request (metered in the tenant's usage).
    pub fn is_gateway(self) -> bool {
        matches!(self, Self::Ask | Self::Chat | Self::Classify | Self::Rank)
    }
}

/// Whether a gateway request was answered from the cache.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
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
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Usage {
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cost_micro_usd: i64,
    pub cache: CacheOutcome,
    pub attempts: u32,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct ChainEntry {
    pub seq: u64,
    pub prev_hash: String,
    pub hash: String,
    pub recorded_at: String,
    pub event: DecisionEvent,
    /// When the tenant's retention lets this entry expire (epoch seconds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retain_until: Option<i64>,
    /// The previous entry's `retain_until`: where expired entries were
    /// pruned before this one, it shows they were due to go (under the hash,
    /// so a deletion cannot pass for pruning).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prev_retain_until: Option<i64>,
}

impl ChainEntry {
    /// The hash of the entry's content. `serde_json::Value` keeps object keys
    /// sorted, so the serialization is canonical; the retention fields count
    /// only when set, so entries written before them keep their hashes.
    pub fn content_hash(&self) -> String {
        let content = serde_json::to_value(&self.event).map(|v| v.to_string()).unwrap_or_default();
        let mut h = Sha256::new();
        h.update(self.seq.to_be_bytes());
        h.update(self.prev_hash.as_bytes());
        h.update(self.recorded_at.as_bytes());
        h.update(content.as_bytes());
        for (name, value) in [("retain_until", self.retain_until), ("prev_retain_until", self.prev_retain_until)] {
            if let Some(v) = value {
                h.update(name.as_bytes());
                h.update(v.to_be_bytes());
            }
        }
        hex::encode(h.finalize())
    }
}

/// The entry after `prev`, expiring at `retain_until` when the tenant's retention says so.
pub fn next_entry(prev: Option<&ChainEntry>, recorded_at: String, event: DecisionEvent, retain_until: Option<i64>) -> ChainEntry {
    let (seq, prev_hash, prev_retain_until) = match prev {
        Some(p) => (p.seq + 1, p.hash.clone(), p.retain_until),
        None => (1, GENESIS_HASH.to_string(), None),
    };
    let mut entry = ChainEntry { seq, prev_hash, hash: String::new(), recorded_at, event, retain_until, prev_retain_until };
    entry.hash = entry.content_hash();
    entry
}

/// The event as a tenant that keeps no prompts logs it: each question,
/// prompt, query or text of its input replaced by its SHA-256.
pub fn with_prompts_hashed(mut event: DecisionEvent) -> DecisionEvent {
    if let Some(input) = event.input.as_object_mut() {
        for name in ["question", "prompt", "query", "text"] {
            if let Some(Value::String(text)) = input.remove(name) {
                input.insert(format!("{name}_sha256"), Value::from(hex::encode(Sha256::digest(text.as_bytes()))));
            }
        }
    }
    event
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ChainProblem {
    pub seq: u64,
    pub problem: String,
}

/// Checks entries given in stored (sequence) order. Returns every problem
/// found. Entries missing before one whose `prev_retain_until` has passed
/// were pruned by the tenant's retention, not lost.
pub fn verify_chain(entries: &[ChainEntry]) -> Vec<ChainProblem> {
    verify_chain_at(entries, crate::time::now_secs())
}

/// `verify_chain` as of `now` (epoch seconds).
pub fn verify_chain_at(entries: &[ChainEntry], now: i64) -> Vec<ChainProblem> {
    verify_after(None, entries, now)
}

/// `verify_chain` of an export, which may begin after the chain's first
/// entry (one bounded by time): the first entry's link to the one before it
/// cannot be checked from the export, its content and every later link are.
pub fn verify_export(entries: &[ChainEntry], now: i64) -> Vec<ChainProblem> {
    match entries.split_first() {
        Some((first, rest)) if first.seq > 1 => {
            let mut problems = Vec::new();
            if first.content_hash() != first.hash {
                problems.push(ChainProblem { seq: first.seq, problem: "content does not match its hash (modified)".into() });
            }
            problems.extend(verify_after(Some(first), rest, now));
            problems
        }
        _ => verify_after(None, entries, now),
    }
}

/// The problems of `entries`, which follow `prev` (`None`: from the chain's start).
fn verify_after(start: Option<&ChainEntry>, entries: &[ChainEntry], now: i64) -> Vec<ChainProblem> {
    let mut problems = Vec::new();
    let mut prev: Option<&ChainEntry> = start;
    for e in entries {
        let expected_seq = prev.map_or(1, |p| p.seq + 1);
        let pruned_before = e.seq > expected_seq && e.prev_retain_until.is_some_and(|t| t <= now);
        if e.seq == expected_seq {
            if e.prev_hash != prev.map_or(GENESIS_HASH, |p| p.hash.as_str()) {
                problems.push(ChainProblem { seq: e.seq, problem: "previous-hash link broken".into() });
            }
        } else if !pruned_before {
            problems.push(ChainProblem {
                seq: e.seq,
                problem: format!("expected sequence {expected_seq}: an entry is missing or out of order"),
            });
        }
        if e.content_hash() != e.hash {
            problems.push(ChainProblem { seq: e.seq, problem: "content does not match its hash (modified)".into() });
        }
        prev = Some(e);
    }
    problems
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
            request_id: None,
            trace_id: None,
            latency_ms: None,
            actor: None,
        }
    }

    fn chain(n: u32) -> Vec<ChainEntry> {
        let mut out: Vec<ChainEntry> = Vec::new();
        for i in 0..n {
            let e = next_entry(out.last(), "now".into(), event(i), None);
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

    /// A chain whose entries expire at 100, 200, 300 …
    fn expiring(n: u32) -> Vec<ChainEntry> {
        let mut out: Vec<ChainEntry> = Vec::new();
        for i in 0..n {
            let e = next_entry(out.last(), "now".into(), event(i), Some(i64::from(i + 1) * 100));
            out.push(e);
        }
        out
    }

    #[test]
    fn an_export_that_begins_mid_chain_verifies_offline_and_a_gap_or_change_in_it_does_not() {
        let slice: Vec<ChainEntry> = chain(6).split_off(2);
        assert!(!verify_chain(&slice).is_empty(), "as a whole chain it starts late");
        assert!(verify_export(&slice, 0).is_empty());
        let mut gap = slice.clone();
        gap.remove(1);
        assert!(!verify_export(&gap, 0).is_empty());
        let mut changed = slice.clone();
        changed[0].event.principal = "mallory".into();
        assert!(verify_export(&changed, 0).iter().any(|p| p.seq == 3 && p.problem.contains("modified")));
    }

    #[test]
    fn entries_pruned_when_due_verify_and_entries_removed_early_do_not() {
        let mut pruned = expiring(5);
        pruned.drain(0..2);
        assert!(verify_chain_at(&pruned, 250).is_empty(), "entries 1 and 2 were due at 100 and 200");
        assert!(!verify_chain_at(&pruned, 150).is_empty(), "entry 2 was not due yet");
        let mut gap = expiring(5);
        gap.remove(3);
        assert!(!verify_chain_at(&gap, 250).is_empty(), "entry 4 is not due: its removal is a deletion");
        // The retention fields are under the hash: moving a due date forward is a modification.
        let mut forged = expiring(5);
        forged.remove(0);
        forged[0].prev_retain_until = Some(0);
        assert!(!verify_chain_at(&forged, 50).is_empty());
        // Entries written before retention existed keep their hashes.
        let legacy = chain(3);
        assert!(legacy.iter().all(|e| !serde_json::to_string(e).unwrap().contains("retain")));
        assert!(verify_chain(&legacy).is_empty());
    }

    #[test]
    fn a_tenant_that_keeps_no_prompts_logs_their_hashes() {
        let mut e = event(1);
        e.input = serde_json::json!({"question": "What is my salary?", "model": "auto"});
        let hashed = with_prompts_hashed(e);
        assert_eq!(hashed.input["model"], "auto");
        assert!(hashed.input.get("question").is_none() && !hashed.input.to_string().contains("salary"));
        assert_eq!(hashed.input["question_sha256"].as_str().map(str::len), Some(64));
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
