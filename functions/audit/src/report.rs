//! The FinOps view of `GET /v1/usage`: for a period of days, what the
//! tenant's requests and actions cost, per workflow and per day, and the
//! north-star number, cost per successful action: the hosted-model cost of
//! the requests plus the executed actions' own cost, divided by the actions
//! executed and not undone in the period.

use chrono::Datelike;
use keel_core::KeelError;
use serde_json::{json, Map, Value};
use std::collections::BTreeMap;

/// The longest period one report covers.
const MAX_DAYS: i64 = 366;

/// A period of whole days (UTC), both ends included.
pub(crate) struct Period {
    pub from: String,
    pub to: String,
}

impl Period {
    /// `from`/`to` as `YYYY-MM-DD`; by default this month up to today.
    pub(crate) fn parse(from: Option<&str>, to: Option<&str>) -> Result<Self, KeelError> {
        let today = chrono::Utc::now().date_naive();
        let day = |s: &str| {
            chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d").map_err(|_| KeelError::BadRequest(format!("{s:?} is not a day (YYYY-MM-DD)")))
        };
        let to = to.map(day).transpose()?.unwrap_or(today);
        let from = match from {
            Some(f) => day(f)?,
            None => to.with_day0(0).unwrap_or(to),
        };
        if from > to || (to - from).num_days() >= MAX_DAYS {
            return Err(KeelError::BadRequest(format!("from must not be after to, and a period spans at most {MAX_DAYS} days")));
        }
        Ok(Self { from: from.format("%Y-%m-%d").to_string(), to: to.format("%Y-%m-%d").to_string() })
    }
}


/// Counters by name, summed over days.
type Sums = BTreeMap<String, i64>;

/// The report of `rows` (day, counter name, value) over `period`.
pub(crate) fn report(period: &Period, rows: &[(String, String, i64)]) -> Value {
    let mut totals = Sums::new();
    let mut workflows: BTreeMap<String, Sums> = BTreeMap::new();
    let mut days: BTreeMap<String, Sums> = BTreeMap::new();
    for (day, name, n) in rows {
        match name.strip_prefix("wf:").and_then(|rest| rest.split_once(':')) {
            Some((workflow, counter)) => *workflows.entry(workflow.to_string()).or_default().entry(counter.to_string()).or_default() += n,
            None => {
                *totals.entry(name.clone()).or_default() += n;
                *days.entry(day.clone()).or_default().entry(name.clone()).or_default() += n;
            }
        }
    }
    let mut view = summary(&totals);
    if let Some(v) = view.as_object_mut() {
        v.insert("router_mix".into(), Value::Object(named(&totals, "tier:", Value::from)));
        v.insert("cost_by_model_usd".into(), Value::Object(named(&totals, "model_cost:", |n| Value::from(usd(n)))));
        v.insert("tokens_by_model".into(), Value::Object(named(&totals, "model_tokens:", Value::from)));
        let lookups = count(&totals, "cache_hits") + count(&totals, "cache_misses");
        v.insert("cache_hit_rate".into(), json!((lookups > 0).then(|| count(&totals, "cache_hits") as f64 / lookups as f64)));
        v.insert("input_tokens".into(), json!(count(&totals, "input_tokens")));
        v.insert("output_tokens".into(), json!(count(&totals, "output_tokens")));
    }
    let workflows: Map<String, Value> = workflows.iter().map(|(w, sums)| (w.clone(), summary(sums))).collect();
    let daily: Vec<Value> = days
        .iter()
        .map(|(day, sums)| {
            json!({"day": day, "requests": requests(sums), "cost_usd": usd(count(sums, "cost_micro_usd") + count(sums, "action_cost_micro_usd")),
                "actions_executed": count(sums, "actions:executed"), "actions_undone": count(sums, "actions:undone"),
                "cache_hits": count(sums, "cache_hits"), "cache_misses": count(sums, "cache_misses")})
        })
        .collect();
    json!({"from": period.from, "to": period.to, "totals": view, "workflows": workflows, "daily": daily})
}

/// Requests, actions and what they cost, with cost per successful action and reversal rate.
fn summary(sums: &Sums) -> Value {
    let (model, own) = (count(sums, "cost_micro_usd"), count(sums, "action_cost_micro_usd"));
    let (executed, undone) = (count(sums, "actions:executed"), count(sums, "actions:undone"));
    let successful = (executed - undone).max(0);
    let actions: Map<String, Value> = ["proposed", "approved", "rejected", "executed", "failed", "expired", "undo_requested", "undone"]
        .iter()
        .map(|s| (s.to_string(), Value::from(count(sums, &format!("actions:{s}")))))
        .collect();
    json!({
        "requests": requests(sums),
        "model_cost_usd": usd(model),
        "action_cost_usd": usd(own),
        "actions": actions,
        "successful_actions": successful,
        "reversal_rate": (executed > 0).then(|| undone as f64 / executed as f64),
        "cost_per_successful_action_usd": (successful > 0).then(|| usd(model + own) / successful as f64),
    })
}

fn count(sums: &Sums, name: &str) -> i64 {
    sums.get(name).copied().unwrap_or(0)
}

fn requests(sums: &Sums) -> i64 {
    sums.iter().filter(|(n, _)| n.ends_with("_requests")).map(|(_, v)| v).sum()
}

fn usd(micro: i64) -> f64 {
    micro as f64 / 1e6
}

fn named(sums: &Sums, prefix: &str, value: impl Fn(i64) -> Value) -> Map<String, Value> {
    sums.iter().filter_map(|(n, v)| Some((n.strip_prefix(prefix)?.to_string(), value(*v)))).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(day: &str, name: &str, n: i64) -> (String, String, i64) {
        (day.into(), name.into(), n)
    }

    #[test]
    fn cost_per_successful_action_counts_model_and_action_cost_over_actions_kept() {
        let period = Period { from: "2026-12-01".into(), to: "2026-12-02".into() };
        let rows = [
            row("2026-12-01", "chat_requests", 3),
            row("2026-12-01", "cost_micro_usd", 600_000),
            row("2026-12-01", "actions:executed", 2),
            row("2026-12-01", "action_cost_micro_usd", 500_000),
            row("2026-12-02", "actions:executed", 2),
            row("2026-12-02", "action_cost_micro_usd", 500_000),
            row("2026-12-02", "actions:undone", 1),
            row("2026-12-02", "wf:support:cost_micro_usd", 400_000),
            row("2026-12-02", "wf:support:actions:executed", 1),
        ];
        let r = report(&period, &rows);
        // (0.60 + 1.00) / (4 - 1)
        let per = r["totals"]["cost_per_successful_action_usd"].as_f64().unwrap();
        assert!((per - 1.6 / 3.0).abs() < 1e-9, "{per}");
        assert_eq!(r["totals"]["reversal_rate"], 0.25);
        assert_eq!(r["workflows"]["support"]["cost_per_successful_action_usd"], 0.4);
        assert_eq!(r["daily"].as_array().unwrap().len(), 2);
        assert_eq!(r["daily"][1]["actions_undone"], 1);
    }

    #[test]
    fn periods_are_whole_days_in_order_and_bounded() {
        assert!(Period::parse(Some("2026-12-01"), Some("2026-12-31")).is_ok());
        for (from, to) in [("2026-12-02", "2026-12-01"), ("2020-01-01", "2026-12-01"), ("yesterday", "2026-12-01")] {
            assert!(Period::parse(Some(from), Some(to)).is_err(), "{from}..{to}");
        }
        let default = Period::parse(None, None).unwrap();
        assert!(default.from.ends_with("-01") && default.from <= default.to);
    }
}
