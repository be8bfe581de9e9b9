//! The Cedar gate. Policies come from `infra/policies`; each decision reports
//! which policies (by `@id`) allowed or denied it.

use cedar_policy::{
    Authorizer, Context, Decision, Entities, Entity, EntityId, EntityTypeName, EntityUid, PolicySet, Request, RestrictedExpression,
};
use keel_core::auth::Caller;
use keel_core::KeelError;
use serde::{Deserialize, Serialize};
use std::collections::{HashMap, HashSet};
use std::str::FromStr;

pub const DEFAULT_POLICIES: &str = include_str!("../../../infra/policies/default.cedar");
pub const POLICY_SCHEMA: &str = include_str!("../../../infra/policies/keel.cedarschema");

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
    pub autonomy: &'a str,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PolicyDecision {
    pub verb: String,
    pub allowed: bool,
    /// The `@id`s of the policies that decided.
    pub policies: Vec<String>,
}

pub struct PolicyGate {
    policies: PolicySet,
    authorizer: Authorizer,
    types: Types,
}

/// The entity types of `infra/policies/keel.cedarschema`, parsed once.
struct Types {
    user: EntityTypeName,
    proposal: EntityTypeName,
    action: EntityTypeName,
}

impl PolicyGate {
    pub fn new(source: &str) -> Result<Self, KeelError> {
        let policies = PolicySet::from_str(source).map_err(|e| KeelError::Internal(format!("invalid Cedar policies: {e}")))?;
        let name = |n: &str| EntityTypeName::from_str(n).map_err(|e| KeelError::Internal(format!("cedar type: {e}")));
        let types = Types { user: name("Keel::User")?, proposal: name("Keel::Proposal")?, action: name("Keel::Action")? };
        Ok(Self { policies, authorizer: Authorizer::new(), types })
    }

    pub fn default_policies() -> Result<Self, KeelError> {
        Self::new(DEFAULT_POLICIES)
    }

    pub fn decide(&self, caller: &Caller, verb: Verb, s: &Subject<'_>) -> Result<PolicyDecision, KeelError> {
        // Entities and context built directly (no JSON to parse): most of a decision's cost otherwise.
        let user_uid = |id: &str| EntityUid::from_type_name_and_id(self.types.user.clone(), EntityId::new(id));
        let strings = |v: &[String]| RestrictedExpression::new_set(v.iter().map(|x| RestrictedExpression::new_string(x.clone())));
        let entity_error = |e: cedar_policy::EntityAttrEvaluationError| KeelError::Internal(format!("cedar entity: {e}"));
        let user = |id: &str, roles: &[String], groups: &[String]| {
            let attrs = HashMap::from([("roles".to_string(), strings(roles)), ("groups".to_string(), strings(groups))]);
            Entity::new(user_uid(id), attrs, HashSet::new()).map_err(entity_error)
        };
        let principal = user_uid(&caller.principal);
        let resource = EntityUid::from_type_name_and_id(self.types.proposal.clone(), EntityId::new(s.action_id));
        let proposal = Entity::new(
            resource.clone(),
            HashMap::from([
                ("tool".to_string(), RestrictedExpression::new_string(s.tool.into())),
                ("risk".to_string(), RestrictedExpression::new_string(s.risk.into())),
                ("reversible".to_string(), RestrictedExpression::new_bool(s.reversible)),
                ("proposer".to_string(), RestrictedExpression::new_entity_uid(user_uid(s.proposer))),
            ]),
            HashSet::new(),
        )
        .map_err(entity_error)?;
        let mut entities = vec![user(&caller.principal, &caller.roles, &caller.groups)?, proposal];
        if s.proposer != caller.principal {
            entities.push(user(s.proposer, &[], &[])?);
        }
        let entities = Entities::from_entities(entities, None)
            .map_err(|e| KeelError::Internal(format!("cedar entities: {e}")))?;
        let context = Context::from_pairs([("autonomy".to_string(), RestrictedExpression::new_string(s.autonomy.into()))])
            .map_err(|e| KeelError::Internal(format!("cedar context: {e}")))?;
        let action = EntityUid::from_type_name_and_id(self.types.action.clone(), EntityId::new(verb.name()));
        let request = Request::new(principal, action, resource, context, None)
            .map_err(|e| KeelError::Internal(format!("cedar request: {e}")))?;
        let response = self.authorizer.is_authorized(&request, &self.policies, &entities);
        if let Some(e) = response.diagnostics().errors().next() {
            tracing::warn!(error = %e, "cedar evaluation error (treated as not matching)");
        }
        let mut policies: Vec<String> = response
            .diagnostics()
            .reason()
            .map(|id| self.policies.annotation(id, "id").map_or_else(|| id.to_string(), str::to_string))
            .collect();
        policies.sort();
        Ok(PolicyDecision { verb: verb.name().into(), allowed: response.decision() == Decision::Allow, policies })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cedar_policy::{Schema, ValidationMode, Validator};
    use keel_core::TenantId;

    fn caller(name: &str, roles: &[&str]) -> Caller {
        Caller {
            tenant: Some(TenantId::parse("acme").unwrap()),
            principal: name.into(),
            roles: roles.iter().map(|r| r.to_string()).collect(),
            groups: vec![],
            throttled: false,
        }
    }

    fn subject<'a>(risk: &'a str, proposer: &'a str, autonomy: &'a str) -> Subject<'a> {
        Subject { action_id: "act_1", tool: "refund", risk, reversible: true, proposer, autonomy }
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
        let ann = caller("ann", &["member"]);
        let bob = caller("bob", &["approver"]);
        let eve = caller("eve", &["member"]);
        assert!(gate.decide(&ann, Verb::Propose, &subject("high", "ann", "one_click")).unwrap().allowed);
        assert!(!gate.decide(&bob, Verb::Propose, &subject("high", "bob", "one_click")).unwrap().allowed);
        // The approver may approve someone else's action, not their own, and a member may not approve.
        let d = gate.decide(&bob, Verb::Approve, &subject("high", "ann", "one_click")).unwrap();
        assert!(d.allowed && d.policies == vec!["approver-not-proposer"]);
        let both = caller("ann", &["member", "approver"]);
        let d = gate.decide(&both, Verb::Approve, &subject("high", "ann", "one_click")).unwrap();
        assert!(!d.allowed && d.policies == vec!["no-self-approval"]);
        assert!(!gate.decide(&eve, Verb::Approve, &subject("high", "ann", "one_click")).unwrap().allowed);
        // Low-risk reversible runs unattended only when the tenant allows it.
        assert!(gate.decide(&ann, Verb::AutoExecute, &subject("low", "ann", "unattended")).unwrap().allowed);
        assert!(!gate.decide(&ann, Verb::AutoExecute, &subject("low", "ann", "one_click")).unwrap().allowed);
        assert!(!gate.decide(&ann, Verb::AutoExecute, &subject("high", "ann", "unattended")).unwrap().allowed);
        assert!(gate.decide(&ann, Verb::Undo, &subject("high", "ann", "one_click")).unwrap().allowed);
        assert!(!gate.decide(&eve, Verb::Undo, &subject("high", "ann", "one_click")).unwrap().allowed);
    }
}
