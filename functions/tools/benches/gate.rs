//! The warm gate on a proposed action: `cargo bench -p keel-tools --bench gate`.
//! Measures a Cedar decision (Keel's defaults plus a tenant's per-call limit, daily cap
//! and change window, with a shadow policy evaluated alongside) plus JSON Schema validation of the arguments
//! against the tool version's compiled schema (issue budget: p99 < 50 µs);
//! then all `propose` does before it writes anything (a second decision, to
//! auto-execute); and, for contrast, validation with the schema compiled on
//! every call. Prints p50 and p99 per run and their medians over the runs.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use keel_core::auth::Caller;
use keel_core::ids::TenantId;
use keel_core::stats::Runs;
use keel_tools::policy::{PolicyGate, Subject, TenantPolicies, Today, Verb};
use keel_tools::schema::{validate, validate_args, Compiled};
use serde_json::json;
use std::hint::black_box;
use std::time::Instant;

const RUNS: usize = 7;

const TENANT_POLICIES: &str = r#"
    @id("refund-limit")
    forbid (principal, action == Keel::Action::"propose", resource)
    when { resource.tool == "refund" && context.args.amount.greaterThan(decimal("500.00")) };
    @id("refund-daily-cap")
    forbid (principal, action == Keel::Action::"propose", resource)
    when { resource.tool == "refund" && (context.today.count > 100 || context.today.total.greaterThan(decimal("10000.0"))) };
    @id("weekday-changes")
    forbid (principal, action == Keel::Action::"auto_execute", resource)
    unless { context.now.weekday <= 7 };
"#;
const SHADOW_POLICY: &str = r#"
    @id("refund-limit-lower")
    forbid (principal, action == Keel::Action::"propose", resource)
    when { resource.tool == "refund" && context.args.amount.greaterThan(decimal("100.00")) };
"#;
const CALLS: usize = 20_000;

/// Times `call` CALLS times per run; prints each run and the medians.
fn measure(label: &str, calls: usize, mut call: impl FnMut(usize)) {
    let mut runs = Runs::default();
    for run in 0..RUNS {
        let mut ns = Vec::with_capacity(calls);
        for i in 0..calls {
            let t = Instant::now();
            call(i);
            ns.push(t.elapsed().as_nanos() as f64);
        }
        let (p50, p99) = runs.add(ns);
        println!("{label}: run {}: p50 {p50:.2} µs p99 {p99:.2} µs", run + 1);
    }
    let (p50, p99) = runs.medians();
    println!("{label}: median of {RUNS} runs x {calls} calls: p50 {p50:.2} µs, p99 {p99:.2} µs");
}

fn main() {
    let gate = PolicyGate::default_policies().unwrap();
    let caller = Caller {
        tenant: Some(TenantId::parse("acme").unwrap()),
        principal: "ann".into(),
        roles: vec!["member".into()],
        groups: vec!["staff".into()],
        incarnation: None,
        credential: Default::default(),
    };
    let schema = json!({
        "type": "object", "additionalProperties": false,
        "required": ["order_id", "amount", "currency", "reason"],
        "properties": {
            "order_id": {"type": "string", "pattern": "^ORD-[0-9]{4,10}$"},
            "amount": {"type": "number", "exclusiveMinimum": 0, "maximum": 500},
            "currency": {"enum": ["EUR", "USD", "GBP"]},
            "reason": {"type": "string", "maxLength": 200},
            "notify": {"type": "boolean"},
            "lines": {"type": "array", "maxItems": 20, "items": {"type": "object", "required": ["sku", "qty"],
                "properties": {"sku": {"type": "string"}, "qty": {"type": "integer", "minimum": 1}}}}
        }
    });
    let args = json!({"order_id": "ORD-12345", "amount": 42.5, "currency": "EUR", "reason": "damaged in transit",
        "notify": true, "lines": [{"sku": "A-1", "qty": 2}, {"sku": "B-7", "qty": 1}]});
    let compiled = Compiled::default();
    let subject = Subject {
        action_id: "act_1",
        tool: "refund",
        risk: keel_tools::Risk::Low,
        reversible: true,
        proposer: "ann",
        autonomy: keel_core::tenants::Autonomy::Unattended,
        args: &args,
        today: Today { count: 3, total_units: 1_250_000 },
        now: chrono::Utc::now(),
    };
    // A tenant with its own per-call limit, daily cap and change window, and a shadow policy.
    let policies = TenantPolicies::new(TENANT_POLICIES, SHADOW_POLICY).unwrap();
    let p = &policies;

    let defaults = gate.defaults();
    measure("policy decision + schema validation (Keel's default policies)", CALLS, |_| {
        let propose = gate.decide(&defaults, black_box(&caller), Verb::Propose, black_box(&subject)).unwrap();
        assert!(propose.allowed);
        let validator = compiled.get("acme/refund@1", &schema).unwrap();
        validate(&validator, black_box(&args)).unwrap();
    });
    measure("policy decision + schema validation (tenant limits, cap, window + a shadow policy)", CALLS, |_| {
        let propose = gate.decide(p, black_box(&caller), Verb::Propose, black_box(&subject)).unwrap();
        assert!(propose.allowed);
        let validator = compiled.get("acme/refund@1", &schema).unwrap();
        validate(&validator, black_box(&args)).unwrap();
    });
    measure("propose path (propose decision + validation + auto-execute decision)", CALLS, |_| {
        let propose = gate.decide(p, black_box(&caller), Verb::Propose, black_box(&subject)).unwrap();
        assert!(propose.allowed);
        let validator = compiled.get("acme/refund@1", &schema).unwrap();
        validate(&validator, black_box(&args)).unwrap();
        let auto = gate.decide(p, black_box(&caller), Verb::AutoExecute, black_box(&subject)).unwrap();
        assert!(auto.allowed);
    });
    measure("schema compiled on every call (for contrast)", CALLS / 10, |_| {
        validate_args(black_box(&schema), black_box(&args)).unwrap();
    });
}
