//! What each command prints: the API's JSON with `--json`, a readable summary otherwise.

use serde_json::Value;

/// A command's answer: its JSON, and the lines a person reads.
pub struct Printed {
    pub json: Value,
    pub text: String,
}

fn printed(json: Value, lines: Vec<String>) -> Printed {
    Printed { json, text: lines.join("\n") }
}

fn s(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        other => other.to_string(),
    }
}

pub fn done(v: Value, line: String) -> Printed {
    printed(v, vec![line])
}

pub fn whoami(v: Value) -> Printed {
    let line = format!("{} of tenant {} (roles: {})", s(&v["principal"]), s(&v["tenant"]), v["roles"].as_array().map(|r| r.iter().map(s).collect::<Vec<_>>().join(", ")).unwrap_or_default());
    printed(v, vec![line])
}

pub fn tenant(v: Value) -> Printed {
    if let Some(request) = v.get("change_request") {
        let line = format!("the change waits for a second admin: change request {}", s(&request["id"]));
        return printed(v, vec![line]);
    }
    let lines = vec![
        format!("tenant {} ({})", s(&v["id"]), s(&v["name"])),
        format!("  status {}, plan {}, autonomy {}, kill switch {}", s(&v["status"]), s(&v["plan"]), s(&v["autonomy"]), s(&v["kill_switch"])),
        format!("  rate limit {}/min, redact PII {}", s(&v["rate_limit_per_minute"]), s(&v["redact_pii"])),
    ];
    printed(v, lines)
}

pub fn new_key(v: Value) -> Printed {
    let lines = vec![format!("key {} for {}: {}", s(&v["id"]), s(&v["principal"]), s(&v["key"])), "(shown once: store it now)".into()];
    printed(v, lines)
}

pub fn keys(v: Value) -> Printed {
    let mut lines = vec![format!("{:<28} {:<14} {:<24} {}", "ID", "PRINCIPAL", "ROLES", "LAST USED")];
    for k in v["keys"].as_array().into_iter().flatten() {
        let roles = k["roles"].as_array().map(|r| r.iter().map(s).collect::<Vec<_>>().join(",")).unwrap_or_default();
        lines.push(format!("{:<28} {:<14} {:<24} {}", s(&k["id"]), s(&k["principal"]), roles, s(&k["last_used_at"])));
    }
    printed(v, lines)
}

pub fn put_documents(put: Vec<Value>) -> Printed {
    let lines = put.iter().map(|p| format!("put {} from {}", s(&p["doc_id"]), s(&p["file"]))).collect();
    printed(Value::Array(put), lines)
}

pub fn search(v: Value) -> Printed {
    let mut lines = vec![];
    for (i, hit) in v["results"].as_array().into_iter().flatten().enumerate() {
        let text: String = s(&hit["text"]).chars().take(100).collect();
        lines.push(format!("{}. {} ({:.3}){} {text}", i + 1, s(&hit["doc_id"]), hit["score"].as_f64().unwrap_or(0.0), if hit["stale"] == true { " [stale]" } else { "" }));
    }
    if lines.is_empty() {
        lines.push("no results".into());
    }
    printed(v, lines)
}

pub fn answer(v: Value) -> Printed {
    let mut lines = vec![];
    if v["refused"] == true {
        lines.push(format!("refused: {}", s(&v["reason"])));
    } else {
        lines.push(s(&v["answer"]));
        for (i, c) in v["citations"].as_array().into_iter().flatten().enumerate() {
            lines.push(format!("  [{}] {} chars {}-{}", i + 1, s(&c["doc_id"]), s(&c["anchor"]["start"]), s(&c["anchor"]["end"])));
        }
    }
    lines.push(format!("(tier {}, model {}, decision {})", s(&v["tier"]), s(&v["model"]), s(&v["decision_id"])));
    printed(v, lines)
}

pub fn tools(v: Value) -> Printed {
    let mut lines = vec![format!("{:<24} {:<8} {:<8} {}", "TOOL", "VERSION", "RISK", "DESCRIPTION")];
    for t in v["tools"].as_array().into_iter().flatten() {
        lines.push(format!("{:<24} {:<8} {:<8} {}", s(&t["name"]), s(&t["version"]), s(&t["risk"]), s(&t["description"])));
    }
    printed(v, lines)
}

pub fn policies(v: Value) -> Printed {
    let mut lines = vec![];
    for mode in ["enforced", "shadow"] {
        lines.push(format!("# {mode} (version {})", s(&v[mode]["version"])));
        lines.push(s(&v[mode]["policies"]));
    }
    printed(v, lines)
}

pub fn actions(v: Value) -> Printed {
    let mut lines = vec![format!("{:<38} {:<18} {:<12} {:<18} {}", "ACTION", "STATUS", "PROPOSER", "TOOL", "CREATED")];
    for a in v["actions"].as_array().into_iter().flatten() {
        let tool = format!("{} v{}", s(&a["tool"]), s(&a["tool_version"]));
        lines.push(format!("{:<38} {:<18} {:<12} {:<18} {}", s(&a["action_id"]), s(&a["status"]), s(&a["proposer"]), tool, s(&a["created_at"])));
    }
    if let Some(cursor) = v["next_cursor"].as_str() {
        lines.push(format!("(more: --json for next_cursor {cursor})"));
    }
    printed(v, lines)
}

pub fn action(v: Value) -> Printed {
    let mut lines = vec![
        format!("action {}: {} v{} — {}", s(&v["action_id"]), s(&v["tool"]), s(&v["tool_version"]), s(&v["status"])),
        format!("  proposed by {} at {}", s(&v["proposer"]), s(&v["created_at"])),
        format!("  args {}", v["args"]),
    ];
    for r in v["approvals"].as_array().into_iter().flatten() {
        let reason = r["reason"].as_str().map(|r| format!(": {r}")).unwrap_or_default();
        lines.push(format!("  {} by {} at {}{reason}", s(&r["decision"]), s(&r["principal"]), s(&r["at"])));
    }
    if let Some(e) = v["error"].as_str() {
        lines.push(format!("  error: {e}"));
    }
    printed(v, lines)
}

pub fn verify(v: Value) -> Printed {
    let line = if v["ok"] == true {
        format!("the chain verifies: {} entries, head {}", s(&v["entries"]), s(&v["head"]))
    } else {
        format!("the chain does NOT verify: {}", v["problems"])
    };
    printed(v, vec![line])
}

pub fn usage(v: Value) -> Printed {
    let totals = &v["report"]["totals"];
    let lines = vec![
        format!("period {}: {} requests, ${:.4} (budget {} of {})", s(&v["period"]), s(&totals["requests"]), v["cost_usd"].as_f64().unwrap_or(0.0), s(&v["budget"]["spent_usd"]), s(&v["budget"]["monthly_usd"])),
        format!("cache hit rate {}, router mix {}", s(&v["cache_hit_rate"]), totals["router_mix"]),
        format!("actions {}, cost per successful action {}", totals["actions"], s(&totals["cost_per_successful_action_usd"])),
    ];
    printed(v, lines)
}
