//! The Cedar gate. Keel's defaults come from `infra/policies`; a tenant adds
//! its own policies, enforced or in shadow mode (evaluated and recorded, never
//! enforced). Each decision reports which policies (by `@id`) allowed or
//! denied it. A `forbid` policy that fails to evaluate (say it reads an
//! argument this tool lacks) denies: a limit must not vanish on an error.

use cedar_policy::{
    Authorizer, Context, Decision, Effect, Entities, Entity, EntityId, EntityTypeName, EntityUid, PolicyId, PolicySet, Request,
    Response, RestrictedExpression,
};
use chrono::{DateTime, Datelike, Timelike, Utc};
use keel_core::auth::Caller;
use keel_core::KeelError;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::{HashMap, HashSet};
use std::str::FromStr;
use std::sync::Arc;

pub const DEFAULT_POLICIES: &str = include_str!("../../../infra/policies/default.cedar");
pub const POLICY_SCHEMA: &str = include_str!("../../../infra/policies/keel.cedarschema");

/// Largest tenant policy text.
pub const MAX_POLICY_BYTES: usize = 64 * 1024;
/// Deepest nesting of brackets (`(`, `[`, `{`) in tenant policy text, and
/// most `if` expressions: Cedar's parser recurses once per level, so deep
/// nesting would overflow its stack and take the process down.
pub const MAX_POLICY_NESTING: usize = 32;
/// Most arithmetic operators (`+`, `-`, `*`) in tenant policy text: a chain
/// of them becomes an expression as deep as it is long.
pub const MAX_POLICY_ARITHMETIC: usize = 1_000;
/// The stack Cedar parses tenant text on: far more than the limits above
/// need, so a construct they miss fails the request, not the process.
const PARSER_STACK_BYTES: usize = 64 * 1024 * 1024;

/// What the policy is asked about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verb {
    Propose,
    AutoExecute,
    Approve,
    Undo,
}

impl Verb {
    fn name(self) -> &'static str {
        match self {
            Verb::Propose => "propose",
            Verb::AutoExecute => "auto_execute",
            Verb::Approve => "approve",
            Verb::Undo => "undo",
        }
    }
}

/// The facts about an action the policy sees.
pub struct Subject<'a> {
    pub action_id: &'a str,
    pub tool: &'a str,
    pub risk: &'a str,
    pub reversible: bool,
    pub proposer: &'a str,
    /// The autonomy in force for this tool (the tenant's, capped by the tool's).
    pub autonomy: &'a str,
    /// The tool's arguments: `context.args`, numbers as Cedar decimals.
    pub args: &'a Value,
    /// This tool's proposals today (UTC), this one included: `context.today`.
    pub today: Today,
    /// When the decision is taken: `context.now` (UTC), for change windows.
    pub now: DateTime<Utc>,
}

/// Daily counters of a tool, for caps.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Today {
    pub count: i64,
    /// The sum of the tool's metered argument, in ten-thousandths (Cedar decimal precision).
    pub total_units: i64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PolicyDecision {
    pub verb: String,
    pub allowed: bool,
    /// The `@id`s of the policies that decided (`error:<id>` for one that failed to evaluate).
    pub policies: Vec<String>,
    /// What the tenant's shadow policies would have decided; never enforced.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shadow: Option<ShadowDecision>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ShadowDecision {
    pub allowed: bool,
    pub policies: Vec<String>,
}

/// The policies that decide for one tenant: Keel's defaults plus the
/// tenant's enforced ones, and optionally a shadow set (the same plus the
/// tenant's shadow policies).
pub struct TenantPolicies {
    enforced: PolicySet,
    shadow: Option<PolicySet>,
    reads: Reads,
}

impl TenantPolicies {
    /// From the tenant's enforced and shadow policy texts (either may be empty).
    pub fn new(enforced: &str, shadow: &str) -> Result<Self, KeelError> {
        let reads = Reads::of(&format!("{enforced}\n{shadow}"));
        let shadow = if shadow.trim().is_empty() { None } else { Some(with_defaults(&[enforced, shadow])?) };
        Ok(Self { enforced: with_defaults(&[enforced])?, shadow, reads })
    }

    /// `new` on the blocking pool (parsing waits for a thread of its own).
    pub async fn compile(enforced: String, shadow: String) -> Result<Self, KeelError> {
        tokio::task::spawn_blocking(move || Self::new(&enforced, &shadow))
            .await
            .map_err(|e| KeelError::Internal(format!("policy compilation task: {e}")))?
    }
}

/// The parts of the context a tenant's policies read. Only those are built
/// per decision: a Cedar decimal costs about 5 µs to construct (its name is
/// parsed each time), several times a whole decision. Keel's defaults read
/// none of them.
#[derive(Debug, Default, PartialEq)]
struct Reads {
    /// `None`: no argument; `Some(empty)`: all of them; otherwise these names.
    args: Option<HashSet<String>>,
    today: bool,
    now: bool,
}

impl Reads {
    fn of(text: &str) -> Self {
        let mut args: Option<HashSet<String>> = None;
        let mut all = false;
        for (at, _) in text.match_indices("context.args") {
            let names = args.get_or_insert_with(HashSet::new);
            let rest = &text[at + "context.args".len()..];
            let name: String = rest.strip_prefix('.').unwrap_or("").chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
            // `context.args has x`, `context.args["x"]`, the record itself: build every argument.
            all |= name.is_empty();
            names.insert(name);
        }
        if all || text.contains("\"args\"") {
            args = Some(HashSet::new());
        }
        Self { args, today: text.contains("today"), now: text.contains("now") }
    }

    fn arg(&self, name: &str) -> bool {
        self.args.as_ref().is_some_and(|a| a.is_empty() || a.contains(name))
    }
}

/// Checks what reaches Cedar's parser before it runs: size, bracket nesting,
/// `if` expressions and arithmetic, counted outside strings and comments.
pub fn check_policy_shape(text: &str) -> Result<(), KeelError> {
    if text.len() > MAX_POLICY_BYTES {
        return Err(KeelError::PayloadTooLarge(format!("policies exceed {MAX_POLICY_BYTES} bytes")));
    }
    let bad = |m: String| Err(KeelError::BadRequest(format!("invalid Cedar policies: {m}")));
    let (mut depth, mut deepest, mut ifs, mut arithmetic) = (0usize, 0usize, 0usize, 0usize);
    let mut chars = text.char_indices().peekable();
    let mut word = String::new();
    while let Some((_, c)) = chars.next() {
        if c.is_alphanumeric() || c == '_' {
            word.push(c);
            continue;
        }
        ifs += usize::from(word == "if");
        word.clear();
        match c {
            '"' => skip_string(&mut chars),
            '/' if chars.peek().is_some_and(|(_, n)| *n == '/') => {
                for (_, n) in chars.by_ref() {
                    if n == '\n' {
                        break;
                    }
                }
            }
            '(' | '[' | '{' => {
                depth += 1;
                deepest = deepest.max(depth);
            }
            ')' | ']' | '}' => depth = depth.saturating_sub(1),
            '+' | '-' | '*' => arithmetic += 1,
            _ => {}
        }
    }
    ifs += usize::from(word == "if");
    if deepest > MAX_POLICY_NESTING {
        return bad(format!("brackets nest {deepest} levels deep; the limit is {MAX_POLICY_NESTING}"));
    }
    if ifs > MAX_POLICY_NESTING {
        return bad(format!("{ifs} if-expressions; the limit is {MAX_POLICY_NESTING}"));
    }
    if arithmetic > MAX_POLICY_ARITHMETIC {
        return bad(format!("{arithmetic} arithmetic operators; the limit is {MAX_POLICY_ARITHMETIC}"));
    }
    Ok(())
}

/// Moves past a string literal (its opening quote already read).
fn skip_string(chars: &mut std::iter::Peekable<std::str::CharIndices<'_>>) {
    let mut escaped = false;
    for (_, c) in chars.by_ref() {
        match c {
            _ if escaped => escaped = false,
            '\\' => escaped = true,
            '"' => return,
            _ => {}
        }
    }
}

/// Parses policy text on a thread with a stack of its own (see `PARSER_STACK_BYTES`).
fn parse_policy_set(text: &str) -> Result<PolicySet, KeelError> {
    let owned = text.to_string();
    let parser = std::thread::Builder::new()
        .name("cedar-parser".into())
        .stack_size(PARSER_STACK_BYTES)
        .spawn(move || PolicySet::from_str(&owned).map_err(|e| format!("{e:?}")))
        .map_err(|e| KeelError::Internal(format!("cedar parser thread: {e}")))?;
    let parsed = parser.join().map_err(|_| KeelError::Internal("the Cedar parser failed".into()))?;
    parsed.map_err(|e| KeelError::BadRequest(format!("invalid Cedar policies: {e}")))
}

/// Parses tenant policy text: every policy needs a unique `@id`, and none may
/// reuse a default's.
pub fn parse_tenant_policies(text: &str) -> Result<PolicySet, KeelError> {
    let bad = |m: String| KeelError::BadRequest(format!("invalid Cedar policies: {m}"));
    check_policy_shape(text)?;
    let parsed = parse_policy_set(text)?;
    let defaults = PolicySet::from_str(DEFAULT_POLICIES).map_err(|e| KeelError::Internal(format!("default policies: {e}")))?;
    let default_ids: HashSet<&str> = defaults.policies().filter_map(|p| p.annotation("id")).collect();
    let mut seen = HashSet::new();
    for p in parsed.policies() {
        let id = p.annotation("id").ok_or_else(|| bad(format!("every policy needs an @id(\"...\"): {}", p)))?;
        if default_ids.contains(id) || !seen.insert(id.to_string()) {
            return Err(bad(format!("@id {id:?} is used twice (Keel's defaults included)")));
        }
    }
    Ok(parsed)
}

/// Keel's defaults plus tenant texts, renumbered so ids never collide (the
/// `@id` annotations are what decisions report).
fn with_defaults(texts: &[&str]) -> Result<PolicySet, KeelError> {
    let defaults = PolicySet::from_str(DEFAULT_POLICIES).map_err(|e| KeelError::Internal(format!("invalid default policies: {e}")))?;
    let mut parts = vec![defaults];
    for text in texts.iter().filter(|t| !t.trim().is_empty()) {
        parts.push(parse_tenant_policies(text)?);
    }
    let mut set = PolicySet::new();
    for p in parts.iter().flat_map(PolicySet::policies) {
        let id = PolicyId::new(format!("p{}", set.policies().count()));
        set.add(p.new_id(id)).map_err(|e| KeelError::Internal(format!("policy set: {e}")))?;
    }
    Ok(set)
}

pub struct PolicyGate {
    defaults: Arc<TenantPolicies>,
    authorizer: Authorizer,
    types: Types,
}

/// The entity types of `infra/policies/keel.cedarschema`, parsed once.
struct Types {
    user: EntityTypeName,
    proposal: EntityTypeName,
    action: EntityTypeName,
}

fn cedar_error(what: &str) -> impl Fn(String) -> KeelError + '_ {
    move |e| KeelError::Internal(format!("cedar {what}: {e}"))
}

/// A JSON argument as a Cedar value: numbers become decimals (Cedar has no
/// floats), arrays sets, objects records; what cannot be represented is left out.
fn cedar_value(v: &Value) -> Option<RestrictedExpression> {
    Some(match v {
        Value::String(s) => RestrictedExpression::new_string(s.clone()),
        Value::Bool(b) => RestrictedExpression::new_bool(*b),
        Value::Number(n) => RestrictedExpression::new_decimal(decimal_text(n.as_f64()?)?),
        Value::Array(items) => RestrictedExpression::new_set(items.iter().filter_map(cedar_value)),
        Value::Object(m) => RestrictedExpression::new_record(m.iter().filter_map(|(k, v)| Some((k.clone(), cedar_value(v)?))))
            .ok()?,
        Value::Null => return None,
    })
}

/// Cedar's decimal: four places, within ±922337203685477.
fn decimal_text(x: f64) -> Option<String> {
    (x.is_finite() && x.abs() < 9.0e14).then(|| format!("{x:.4}"))
}

/// Ten-thousandths as Cedar decimal text, sign included (-0.5 is "-0.5000").
fn units_text(units: i64) -> String {
    let sign = if units < 0 { "-" } else { "" };
    let magnitude = units.unsigned_abs();
    format!("{sign}{}.{:04}", magnitude / 10_000, magnitude % 10_000)
}

/// A quantity in Cedar decimal units (ten-thousandths).
pub fn decimal_units(x: f64) -> Option<i64> {
    decimal_text(x).map(|_| (x * 10_000.0).round() as i64)
}

impl PolicyGate {
    pub fn default_policies() -> Result<Self, KeelError> {
        let name = |n: &str| EntityTypeName::from_str(n).map_err(|e| KeelError::Internal(format!("cedar type: {e}")));
        let types = Types { user: name("Keel::User")?, proposal: name("Keel::Proposal")?, action: name("Keel::Action")? };
        let defaults = Arc::new(TenantPolicies::new("", "")?);
        Ok(Self { defaults, authorizer: Authorizer::new(), types })
    }

    /// The policies of a tenant that has none of its own.
    pub fn defaults(&self) -> Arc<TenantPolicies> {
        self.defaults.clone()
    }

    pub fn decide(&self, policies: &TenantPolicies, caller: &Caller, verb: Verb, s: &Subject<'_>) -> Result<PolicyDecision, KeelError> {
        let request = self.request(&policies.reads, caller, verb, s)?;
        let entities = self.entities(caller, s)?;
        Ok(self.decision(policies, verb, &request, &entities))
    }

    /// `decide`, its evaluation on the blocking pool: a tenant's policies
    /// are its own text, and no async worker other tenants wait for runs them.
    pub async fn decide_off_workers(
        self: &Arc<Self>,
        policies: &Arc<TenantPolicies>,
        caller: &Caller,
        verb: Verb,
        s: &Subject<'_>,
    ) -> Result<PolicyDecision, KeelError> {
        let request = self.request(&policies.reads, caller, verb, s)?;
        let entities = self.entities(caller, s)?;
        let (gate, policies) = (self.clone(), policies.clone());
        tokio::task::spawn_blocking(move || gate.decision(&policies, verb, &request, &entities))
            .await
            .map_err(|e| KeelError::Internal(format!("policy task: {e}")))
    }

    fn decision(&self, policies: &TenantPolicies, verb: Verb, request: &Request, entities: &Entities) -> PolicyDecision {
        let (allowed, ids) = self.evaluate(request, &policies.enforced, entities);
        let shadow = policies.shadow.as_ref().map(|set| {
            let (allowed, policies) = self.evaluate(request, set, entities);
            ShadowDecision { allowed, policies }
        });
        if let Some(sh) = shadow.as_ref().filter(|sh| sh.allowed != allowed) {
            tracing::info!(verb = verb.name(), enforced = allowed, shadow = sh.allowed, "shadow policies would decide otherwise");
        }
        PolicyDecision { verb: verb.name().into(), allowed, policies: ids, shadow }
    }

    fn evaluate(&self, request: &Request, set: &PolicySet, entities: &Entities) -> (bool, Vec<String>) {
        let response: Response = self.authorizer.is_authorized(request, set, entities);
        let name = |id: &PolicyId| set.annotation(id, "id").map_or_else(|| id.to_string(), str::to_string);
        let mut ids: Vec<String> = response.diagnostics().reason().map(name).collect();
        let mut failed_forbid = false;
        for e in response.diagnostics().errors() {
            let cedar_policy::AuthorizationError::PolicyEvaluationError(e) = e;
            let id = e.policy_id();
            tracing::warn!(error = %e, "cedar evaluation error");
            failed_forbid |= set.policy(id).is_some_and(|p| p.effect() == Effect::Forbid);
            ids.push(format!("error:{}", name(id)));
        }
        ids.sort();
        (response.decision() == Decision::Allow && !failed_forbid, ids)
    }

    fn request(&self, reads: &Reads, caller: &Caller, verb: Verb, s: &Subject<'_>) -> Result<Request, KeelError> {
        let int = |n: u32| RestrictedExpression::new_long(i64::from(n));
        let record = |pairs: Vec<(String, RestrictedExpression)>| {
            RestrictedExpression::new_record(pairs).map_err(|e| cedar_error("context")(e.to_string()))
        };
        let mut context = vec![("autonomy".to_string(), RestrictedExpression::new_string(s.autonomy.into()))];
        if reads.args.is_some() {
            let args = s.args.as_object().into_iter().flatten().filter(|(k, _)| reads.arg(k));
            context.push(("args".into(), record(args.filter_map(|(k, v)| Some((k.clone(), cedar_value(v)?))).collect())?));
        }
        if reads.today {
            let today = vec![
                ("count".into(), RestrictedExpression::new_long(s.today.count)),
                ("total".into(), RestrictedExpression::new_decimal(units_text(s.today.total_units))),
            ];
            context.push(("today".into(), record(today)?));
        }
        if reads.now {
            context.push((
                "now".into(),
                record(vec![
                    ("hour".into(), int(s.now.hour())),
                    ("minute".into(), int(s.now.minute())),
                    ("weekday".into(), int(s.now.weekday().number_from_monday())),
                    ("date".into(), RestrictedExpression::new_string(s.now.format("%Y-%m-%d").to_string())),
                ])?,
            ));
        }
        let context = Context::from_pairs(context).map_err(|e| cedar_error("context")(e.to_string()))?;
        let principal = self.user_uid(&caller.principal);
        let action = EntityUid::from_type_name_and_id(self.types.action.clone(), EntityId::new(verb.name()));
        Request::new(principal, action, self.proposal_uid(s), context, None).map_err(|e| cedar_error("request")(e.to_string()))
    }

    fn user_uid(&self, id: &str) -> EntityUid {
        EntityUid::from_type_name_and_id(self.types.user.clone(), EntityId::new(id))
    }

    fn proposal_uid(&self, s: &Subject<'_>) -> EntityUid {
        EntityUid::from_type_name_and_id(self.types.proposal.clone(), EntityId::new(s.action_id))
    }

    /// Entities built directly (no JSON to parse): most of a decision's cost otherwise.
    fn entities(&self, caller: &Caller, s: &Subject<'_>) -> Result<Entities, KeelError> {
        let strings = |v: &[String]| RestrictedExpression::new_set(v.iter().map(|x| RestrictedExpression::new_string(x.clone())));
        let entity_error = |e: cedar_policy::EntityAttrEvaluationError| cedar_error("entity")(e.to_string());
        let user = |id: &str, roles: &[String], groups: &[String]| {
            let attrs = HashMap::from([("roles".to_string(), strings(roles)), ("groups".to_string(), strings(groups))]);
            Entity::new(self.user_uid(id), attrs, HashSet::new()).map_err(entity_error)
        };
        let proposal = Entity::new(
            self.proposal_uid(s),
            HashMap::from([
                ("tool".to_string(), RestrictedExpression::new_string(s.tool.into())),
                ("risk".to_string(), RestrictedExpression::new_string(s.risk.into())),
                ("reversible".to_string(), RestrictedExpression::new_bool(s.reversible)),
                ("proposer".to_string(), RestrictedExpression::new_entity_uid(self.user_uid(s.proposer))),
            ]),
            HashSet::new(),
        )
        .map_err(entity_error)?;
        let mut entities = vec![user(&caller.principal, &caller.roles, &caller.groups)?, proposal];
        if s.proposer != caller.principal {
            entities.push(user(s.proposer, &[], &[])?);
        }
        Entities::from_entities(entities, None).map_err(|e| cedar_error("entities")(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
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
            throttled: false,
        }
    }

    const NO_ARGS: &Value = &Value::Null;

    fn at(rfc3339: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(rfc3339).unwrap().with_timezone(&Utc)
    }

    fn subject<'a>(risk: &'a str, proposer: &'a str, autonomy: &'a str) -> Subject<'a> {
        Subject {
            action_id: "act_1",
            tool: "refund",
            risk,
            reversible: true,
            proposer,
            autonomy,
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
}
