//! The Cedar gate. Keel's defaults come from `infra/policies`; a tenant adds
//! its own policies, enforced or in shadow mode (evaluated and recorded, never
//! enforced). Each decision reports which policies (by `@id`) allowed or
//! denied it. A `forbid` policy that fails to evaluate (say it reads an
//! argument this tool lacks) denies: a limit must not vanish on an error.

mod text;

pub use text::{check_policy_shape, parse_tenant_policies};
use text::{with_defaults, Reads};
use cedar_policy::{
    Authorizer, Context, Decision, Effect, Entities, Entity, EntityId, EntityTypeName, EntityUid, PolicyId, PolicySet, Request,
    Response, RestrictedExpression,
};
use chrono::{DateTime, Datelike, Timelike, Utc};
use crate::Risk;
use keel_core::auth::Caller;
use keel_core::tenants::Autonomy;
use keel_core::KeelError;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::{HashMap, HashSet};
use std::str::FromStr;
use std::sync::Arc;

pub const DEFAULT_POLICIES: &str = include_str!("../../../../infra/policies/default.cedar");
pub const POLICY_SCHEMA: &str = include_str!("../../../../infra/policies/keel.cedarschema");

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
    pub risk: Risk,
    pub reversible: bool,
    pub proposer: &'a str,
    /// The autonomy in force for this tool (the tenant's, capped by the tool's).
    pub autonomy: Autonomy,
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

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct PolicyDecision {
    pub verb: String,
    pub allowed: bool,
    /// The `@id`s of the policies that decided (`error:<id>` for one that failed to evaluate).
    pub policies: Vec<String>,
    /// What the tenant's shadow policies would have decided; never enforced.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shadow: Option<ShadowDecision>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
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
        keel_core::telemetry::policy_decision(allowed, "enforced");
        if let Some(sh) = &shadow {
            keel_core::telemetry::policy_decision(sh.allowed, "shadow");
        }
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
        let mut context = vec![("autonomy".to_string(), RestrictedExpression::new_string(s.autonomy.as_str().into()))];
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
                ("risk".to_string(), RestrictedExpression::new_string(s.risk.as_str().into())),
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
mod tests;
