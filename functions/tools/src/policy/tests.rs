use super::*;
use cedar_policy::{Schema, ValidationMode, Validator};
use keel_core::TenantId;
use serde_json::json;

fn caller(name: &str, roles: &[&str]) -> Caller {
    Caller {
        tenant: Some(TenantId::parse("acme").unwrap()),
        principal: name.into(),
        roles: roles.iter().map(|r| r.to_string()).collect(),
        groups: vec![],
        incarnation: None,
        credential: Default::default(),
    }
}

const NO_ARGS: &Value = &Value::Null;

fn at(rfc3339: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(rfc3339).unwrap().with_timezone(&Utc)
}

fn subject<'a>(risk: &str, proposer: &'a str, autonomy: &str) -> Subject<'a> {
    Subject {
        action_id: "act_1",
        tool: "refund",
        risk: serde_json::from_value(json!(risk)).unwrap(),
        reversible: true,
        proposer,
        autonomy: serde_json::from_value(json!(autonomy)).unwrap(),
        args: NO_ARGS,
        today: Today::default(),
        now: at("2026-11-23T10:00:00Z"),
    }
}

#[test]
fn default_policies_validate_against_the_schema() {
    let (schema, _) = Schema::from_cedarschema_str(POLICY_SCHEMA).unwrap();
    let policies = PolicySet::from_str(DEFAULT_POLICIES).unwrap();
    let result = Validator::new(schema).validate(&policies, ValidationMode::default());
    assert!(result.validation_passed(), "{:?}", result.validation_errors().collect::<Vec<_>>());
}

#[test]
fn maker_checker_and_autonomy() {
    let gate = PolicyGate::default_policies().unwrap();
    let p = gate.defaults();
    let ann = caller("ann", &["member"]);
    let bob = caller("bob", &["approver"]);
    let eve = caller("eve", &["member"]);
    let decide = |c: &Caller, v: Verb, s: Subject<'_>| gate.decide(&p, c, v, &s).unwrap();
    assert!(decide(&ann, Verb::Propose, subject("high", "ann", "one_click")).allowed);
    assert!(!decide(&bob, Verb::Propose, subject("high", "bob", "one_click")).allowed);
    // The approver may approve someone else's action, not their own, and a member may not approve.
    let d = decide(&bob, Verb::Approve, subject("high", "ann", "one_click"));
    assert!(d.allowed && d.policies == vec!["approver-not-proposer"] && d.shadow.is_none());
    let both = caller("ann", &["member", "approver"]);
    let d = decide(&both, Verb::Approve, subject("high", "ann", "one_click"));
    assert!(!d.allowed && d.policies == vec!["no-self-approval"]);
    assert!(!decide(&eve, Verb::Approve, subject("high", "ann", "one_click")).allowed);
    // Low-risk reversible runs unattended only when the tenant allows it.
    assert!(decide(&ann, Verb::AutoExecute, subject("low", "ann", "unattended")).allowed);
    assert!(!decide(&ann, Verb::AutoExecute, subject("low", "ann", "one_click")).allowed);
    assert!(!decide(&ann, Verb::AutoExecute, subject("high", "ann", "unattended")).allowed);
    assert!(decide(&ann, Verb::Undo, subject("high", "ann", "one_click")).allowed);
    assert!(!decide(&eve, Verb::Undo, subject("high", "ann", "one_click")).allowed);
}

const LIMITS: &str = r#"
    @id("refund-limit")
    forbid (principal, action == Keel::Action::"propose", resource)
    when { resource.tool == "refund" && context.args.amount.greaterThan(decimal("500.00")) };
    @id("refund-daily-cap")
    forbid (principal, action == Keel::Action::"propose", resource)
    when { resource.tool == "refund" && (context.today.count > 3 || context.today.total.greaterThan(decimal("1000.0"))) };
    @id("office-hours")
    forbid (principal, action == Keel::Action::"approve", resource)
    unless { context.now.weekday <= 5 && context.now.hour >= 9 && context.now.hour < 17 };
"#;

#[test]
fn tenant_limits_caps_and_change_windows() {
    let gate = PolicyGate::default_policies().unwrap();
    let p = TenantPolicies::new(LIMITS, "").unwrap();
    let ann = caller("ann", &["member"]);
    let bob = caller("bob", &["approver"]);
    let args = |amount: f64| json!({"order_id": "1", "amount": amount});
    let small = args(499.99);
    let large = args(500.01);
    let with = |args: &'static Value, today: Today| Subject { args, today, ..subject("high", "ann", "one_click") };
    let small: &'static Value = Box::leak(Box::new(small));
    let large: &'static Value = Box::leak(Box::new(large));
    assert!(gate.decide(&p, &ann, Verb::Propose, &with(small, Today { count: 1, total_units: 4_999_900 })).unwrap().allowed);
    let d = gate.decide(&p, &ann, Verb::Propose, &with(large, Today { count: 1, total_units: 5_000_100 })).unwrap();
    assert!(!d.allowed && d.policies == vec!["refund-limit"], "{d:?}");
    // The daily cap counts this proposal: the fourth of the day is refused, and so is the one over the total.
    let d = gate.decide(&p, &ann, Verb::Propose, &with(small, Today { count: 4, total_units: 4_999_900 })).unwrap();
    assert!(!d.allowed && d.policies == vec!["refund-daily-cap"]);
    assert!(!gate.decide(&p, &ann, Verb::Propose, &with(small, Today { count: 3, total_units: 10_000_100 })).unwrap().allowed);
    // Change window: approvals on weekdays 09:00-17:00 UTC only.
    let approve_at = |t: &str| gate.decide(&p, &bob, Verb::Approve, &Subject { now: at(t), ..subject("high", "ann", "one_click") }).unwrap();
    assert!(approve_at("2026-11-23T16:59:00Z").allowed, "Monday afternoon");
    assert_eq!(approve_at("2026-11-23T17:00:00Z").policies, vec!["office-hours"]);
    assert!(!approve_at("2026-11-22T12:00:00Z").allowed, "Sunday");
    // A tool whose args lack `amount`: the limit cannot evaluate, and a forbid that errors denies.
    let other = Subject { tool: "refund", args: Box::leak(Box::new(json!({"order_id": "1"}))), ..subject("high", "ann", "one_click") };
    let d = gate.decide(&p, &ann, Verb::Propose, &other).unwrap();
    assert!(!d.allowed && d.policies.contains(&"error:refund-limit".to_string()), "{d:?}");
}

#[test]
fn shadow_policies_are_evaluated_and_recorded_but_not_enforced() {
    let gate = PolicyGate::default_policies().unwrap();
    let p = TenantPolicies::new("", LIMITS).unwrap();
    let ann = caller("ann", &["member"]);
    let large: &'static Value = Box::leak(Box::new(json!({"amount": 900})));
    let d = gate.decide(&p, &ann, Verb::Propose, &Subject { args: large, ..subject("high", "ann", "one_click") }).unwrap();
    assert!(d.allowed && d.policies == vec!["members-may-propose"]);
    assert_eq!(d.shadow, Some(ShadowDecision { allowed: false, policies: vec!["refund-limit".into()] }));
}

#[test]
fn daily_totals_keep_their_sign_and_four_places() {
    assert_eq!(units_text(12_345_678), "1234.5678");
    assert_eq!(units_text(-5_000), "-0.5000");
    assert_eq!(units_text(0), "0.0000");
    assert_eq!(decimal_units(-0.5), Some(-5_000));
}

#[test]
fn only_the_context_the_policies_read_is_built() {
    assert_eq!(Reads::of(DEFAULT_POLICIES), Reads::default());
    let limits = Reads::of(LIMITS);
    assert_eq!(limits.args, Some(HashSet::from(["amount".to_string()])));
    assert!(limits.today && limits.now && limits.arg("amount") && !limits.arg("order_id"));
    assert!(Reads::of("when { context.args has amount }").arg("anything"));
}

#[test]
fn deeply_nested_policies_are_refused_before_cedar_parses_them() {
    let nested = |n: usize| format!("@id(\"d\") forbid (principal, action, resource) when {{ {}1{} == 1 }};", "(".repeat(n), ")".repeat(n));
    let e = parse_tenant_policies(&nested(150)).unwrap_err();
    assert!(matches!(&e, KeelError::BadRequest(m) if m.contains("the limit is 32")), "{e:?}");
    assert!(parse_tenant_policies(&nested(30)).is_ok());
    let sets = format!("@id(\"d\") forbid (principal, action, resource) when {{ {}1{} == 1 }};", "[".repeat(40), "]".repeat(40));
    assert!(matches!(parse_tenant_policies(&sets), Err(KeelError::BadRequest(_))));
    let ifs = format!("@id(\"d\") forbid (principal, action, resource) when {{ {}true{} }};", "if true then ".repeat(40), " else false".repeat(40));
    assert!(matches!(parse_tenant_policies(&ifs), Err(KeelError::BadRequest(m)) if m.contains("if-expressions")));
    let sums = format!("@id(\"d\") forbid (principal, action, resource) when {{ 1{} == 1 }};", " + 1".repeat(2_000));
    assert!(matches!(parse_tenant_policies(&sums), Err(KeelError::BadRequest(m)) if m.contains("arithmetic")));
    // Brackets and operators inside strings and comments do not count.
    let quoted = format!("// {}\n@id(\"d\") forbid (principal, action, resource) when {{ \"{}\" == \"x\" }};", "(".repeat(99), "[-".repeat(2_000));
    assert!(parse_tenant_policies(&quoted).is_ok());
}

#[test]
fn tenant_policies_need_unique_ids_and_valid_cedar() {
    assert!(parse_tenant_policies(LIMITS).is_ok());
    for bad in [
        "permit (principal, action, resource);",
        "@id(\"members-may-propose\") permit (principal, action, resource);",
        "@id(\"a\") permit (principal, action, resource); @id(\"a\") forbid (principal, action, resource);",
        "@id(\"a\") permit (principal, action, resource) when { context.args.amount > };",
    ] {
        assert!(matches!(parse_tenant_policies(bad), Err(KeelError::BadRequest(_))), "{bad}");
    }
}
