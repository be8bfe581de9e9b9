//! Budgets in money. Before a hosted call its worst-case cost is reserved on
//! the tenant's (and the workflow's) monthly spend counters with a conditional
//! increment that fails instead of passing the limit, so concurrent requests
//! can never overspend together; after the call the reservation is settled
//! to the real cost.

use keel_core::chain::{DecisionEvent, DecisionKind};
use keel_core::decisions::send_decision;
use keel_core::ids::{new_id, TenantId};
use keel_core::keys;
use keel_core::tenants::{Tenant, TenantStore};
use keel_core::ports::{Condition, Table, WorkQueue, Write};
use keel_core::time::{current_month, now_rfc3339};
use keel_core::{KeelError, StoreError};
use serde_json::{json, Value};
use std::sync::Arc;

/// Held budget: the counters charged and the amount on each.
#[derive(Debug)]
pub struct Reservation {
    tenant: TenantId,
    /// The incarnation of the tenant the budget was held in.
    incarnation: String,
    counters: Vec<String>,
    pub micro_usd: i64,
}

/// Why a reservation failed.
#[derive(Debug)]
pub enum Refused {
    /// The limit would be passed: which scope, its limit.
    OverBudget { scope: String, limit_usd: f64 },
    Store(KeelError),
}

impl From<StoreError> for Refused {
    fn from(e: StoreError) -> Self {
        Refused::Store(e.into())
    }
}

fn micro(usd: f64) -> i64 {
    (usd * 1e6).round() as i64
}

/// One budget a reservation is charged to.
struct Limit {
    sk: String,
    /// How a refusal names it.
    scope: String,
    /// How its alerts and metrics name it.
    budget: String,
    usd: f64,
}

/// The monthly spend counters, the tenant's and each workflow's.
#[derive(Clone)]
pub struct BudgetCounters {
    table: Arc<dyn Table>,
    /// Where alerts go: the decision log (whose consumer calls the tenant's webhook).
    queue: Arc<dyn WorkQueue>,
    /// To settle a reservation only in the tenant it was held in.
    tenants: Arc<TenantStore>,
}

/// A budget's spend, before and after a reservation, against its limit.
struct Spend<'a> {
    month: &'a str,
    budget: &'a str,
    limit: i64,
    before: i64,
    after: i64,
}

impl BudgetCounters {
    pub fn new(table: Arc<dyn Table>, queue: Arc<dyn WorkQueue>, tenants: Arc<TenantStore>) -> Self {
        Self { table, queue, tenants }
    }

    /// Reserves `micro_usd` on every budget that applies; all or none. The
    /// counters are charged at once, each by an increment conditional on its
    /// own limit, so none can pass it; when one refuses, the others are given
    /// back.
    pub async fn reserve(&self, held_in: &Tenant, workflow: Option<&str>, micro_usd: i64) -> Result<Reservation, Refused> {
        let (tenant, budgets) = (&held_in.id, &held_in.budgets);
        let workflow = budgets.workflow_for(workflow).map_err(Refused::Store)?;
        let month = current_month();
        let tenant_limit = budgets.monthly_usd.map(|l| Limit {
            sk: keys::spend(&month, None),
            scope: "the tenant's monthly budget".into(),
            budget: "monthly".into(),
            usd: l,
        });
        let workflow_limit = workflow.and_then(|w| budgets.workflows.get_key_value(w)).map(|(w, l)| Limit {
            sk: keys::spend(&month, Some(w)),
            scope: format!("the monthly budget of workflow {w:?}"),
            budget: format!("workflow:{w}"),
            usd: *l,
        });
        let (a, b) = tokio::join!(self.charge(tenant, tenant_limit.as_ref(), micro_usd), self.charge(tenant, workflow_limit.as_ref(), micro_usd));
        let mut held = Reservation { tenant: tenant.clone(), incarnation: held_in.incarnation().to_string(), counters: vec![], micro_usd };
        let mut refused = None;
        for (limit, charged) in [(tenant_limit, a), (workflow_limit, b)] {
            let Some(limit) = limit else { continue };
            match charged {
                Ok(spent) => {
                    let spend = Spend { month: &month, budget: &limit.budget, limit: micro(limit.usd), before: spent - micro_usd, after: spent };
                    keel_core::telemetry::budget_used(tenant.as_str(), &limit.budget, spent as f64 / micro(limit.usd).max(1) as f64);
                    self.alert_crossings(tenant, &budgets.thresholds(), &spend).await;
                    held.counters.push(limit.sk);
                }
                Err(StoreError::ConditionFailed) => refused = refused.or(Some(Refused::OverBudget { scope: limit.scope, limit_usd: limit.usd })),
                Err(e) => refused = Some(e.into()),
            }
        }
        match refused {
            None => Ok(held),
            Some(why) => {
                self.release(&held).await;
                Err(why)
            }
        }
    }

    /// Adds `micro_usd` to one budget's counter unless that would pass its limit.
    async fn charge(&self, tenant: &TenantId, limit: Option<&Limit>, micro_usd: i64) -> Result<i64, StoreError> {
        match limit {
            Some(l) => self.table.increment(&tenant.pk(), &l.sk, micro_usd, Some(micro(l.usd)), None).await,
            None => Ok(0),
        }
    }

    /// Settles a reservation to what the call really cost (0 when it failed),
    /// in the tenant it was held in: a call that outlived its tenant (deleted
    /// meanwhile, and perhaps created again under the same id) settles nothing.
    pub async fn settle(&self, held: &Reservation, actual_micro_usd: i64) -> Result<(), KeelError> {
        let delta = actual_micro_usd - held.micro_usd;
        if delta != 0 && !held.counters.is_empty() && self.tenants.of_incarnation(&held.tenant, &held.incarnation).await?.is_none() {
            tracing::info!(tenant = %held.tenant, "a reservation outlived its tenant; nothing settled");
            return Ok(());
        }
        if delta != 0 {
            for sk in &held.counters {
                self.table.increment(&held.tenant.pk(), sk, delta, None, None).await?;
            }
        }
        Ok(())
    }

    /// Raises an alert for each threshold this reservation crossed, once per
    /// budget, threshold and month however many requests cross it together:
    /// the first to write the month's marker raises it. An alert that cannot
    /// be raised is logged; the request goes on.
    async fn alert_crossings(&self, tenant: &TenantId, thresholds: &[f64], spend: &Spend<'_>) {
        for &share in thresholds {
            let line = (share * spend.limit as f64).ceil() as i64;
            if !(spend.before < line && spend.after >= line) {
                continue;
            }
            let percent = (share * 100.0).round() as u32;
            let alert = json!({"budget": spend.budget, "threshold": share, "month": spend.month,
                "limit_usd": spend.limit as f64 / 1e6, "spent_usd": spend.after as f64 / 1e6, "raised_at": now_rfc3339()});
            let marker = Write { pk: tenant.pk(), sk: keys::budget_alert(spend.month, spend.budget, percent), data: alert.clone(), expires_at: None, condition: Condition::NotExists };
            match self.table.put(marker).await {
                Ok(_) => {}
                Err(StoreError::ConditionFailed) => continue,
                Err(e) => {
                    tracing::warn!(tenant = %tenant, error = %e, "budget alert not raised");
                    continue;
                }
            }
            let id = new_id("alert");
            let event = DecisionEvent {
                event_id: id.clone(),
                decision_id: id,
                kind: DecisionKind::BudgetAlert,
                principal: "budget".into(),
                at: now_rfc3339(),
                input: json!({"budget": spend.budget, "threshold": share}),
                evidence: Value::Null,
                action: Value::Null,
                outcome: alert,
                usage: None,
                request_id: None,
                trace_id: None,
                latency_ms: None,
                actor: None,
            };
            if let Err(e) = send_decision(self.queue.as_ref(), tenant, &event).await {
                tracing::warn!(tenant = %tenant, error = %e, "budget alert not sent to the decision log");
            }
        }
    }

    /// Gives a reservation back whole (its request made no call).
    pub async fn release(&self, held: &Reservation) {
        if let Err(e) = self.settle(held, 0).await {
            tracing::error!(error = %e, "could not release a budget reservation");
        }
    }
}
