//! Budget alerts: the routing function raises one per budget, threshold and
//! month (a conditional marker decides the first crossing, however many
//! requests cross together) and sends it to the decision log. Here they are
//! listed (`GET /v1/alerts`), and each newly chained alert is delivered to
//! the webhook the tenant's admin registered (`PUT /v1/alerts/webhook`),
//! through the egress guard, signed, and retried with backoff.
//!
//! Signature: `keel-signature: t=<unix seconds>,v1=<hex HMAC-SHA256 of
//! "<t>.<body>" with the secret>`; a receiver recomputes it and refuses old
//! timestamps. Delivery is at most once per alert: one that fails every
//! retry is logged, and the alert stays listed.

use crate::Audit;
use keel_core::auth::Caller;
use keel_core::chain::{DecisionEvent, DecisionKind};
use keel_core::http::ApiResponse;
use keel_core::ids::TenantId;
use keel_core::ports::{Condition, QueryOptions, Write};
use keel_core::{keys, KeelError};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::time::Duration;

/// Delivery attempts of one alert, and the first pause between them (doubling).
const ATTEMPTS: u32 = 3;
const FIRST_PAUSE: Duration = Duration::from_millis(200);

#[derive(Clone, Serialize, Deserialize)]
pub(crate) struct Webhook {
    url: String,
    secret: String,
}

#[derive(Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct WebhookInput {
    url: String,
}

/// `v1` of `keel-signature` for `body` sent at `timestamp`.
pub fn signature(secret: &str, timestamp: i64, body: &str) -> String {
    let key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, secret.as_bytes());
    hex::encode(aws_lc_rs::hmac::sign(&key, format!("{timestamp}.{body}").as_bytes()).as_ref())
}

impl Audit {
    /// The tenant's alerts, newest month first.
    pub(crate) async fn alerts(&self, tenant: &TenantId) -> Result<ApiResponse, KeelError> {
        let newest = QueryOptions { descending: true, limit: Some(500), ..Default::default() };
        let items = self.table.query(&tenant.pk(), keys::BUDGET_ALERTS, newest).await?;
        let alerts: Vec<Value> = items.into_iter().map(|i| i.data).collect();
        // The URL's path and query may carry a token: only its host is shown.
        let webhook = self.webhook(tenant).await?.map(|w| json!({"host": host_of(&w.url)}));
        Ok(ApiResponse::ok(&json!({"alerts": alerts, "webhook": webhook})))
    }

    /// Registers the tenant's alert webhook; the answer shows its signing secret, once.
    pub(crate) async fn put_webhook(&self, caller: &Caller, input: WebhookInput) -> Result<ApiResponse, KeelError> {
        let tenant = caller.tenant()?;
        let Some(egress) = &self.egress else { return Err(KeelError::Unavailable("webhooks are not delivered from here".into())) };
        let pins = self.tenants.cached(tenant).await?.and_then(|t| t.egress);
        egress.vet(&input.url, pins.as_ref()).await.map_err(|r| KeelError::Unprocessable { path: "/url".into(), message: r.to_string() })?;
        let before = self.webhook(tenant).await?.map(|w| host_of(&w.url));
        let hook = Webhook { url: input.url, secret: keel_core::ids::new_token("whsec") };
        let write = Write { pk: tenant.pk(), sk: keys::ALERT_WEBHOOK.into(), data: serde_json::to_value(&hook)?, expires_at: None, condition: Condition::Always };
        self.table.put(write).await?;
        // Re-pointing where alerts go is an admin change like any other: chained, with hosts only (a path may hold a token).
        let mut event = keel_core::decisions::admin_change_event(&caller.principal, keel_core::decisions::AdminChange::WebhookChanged, "alert webhook",
            json!({"host": before}), json!({"host": host_of(&hook.url)}));
        event.actor = Some(keel_core::chain::Actor::of(caller));
        self.append(tenant, event).await?;
        Ok(ApiResponse::ok(&json!({"url": hook.url, "secret": hook.secret})))
    }

    async fn webhook(&self, tenant: &TenantId) -> Result<Option<Webhook>, KeelError> {
        Ok(keel_core::ports::get_record(self.table.as_ref(), &tenant.pk(), keys::ALERT_WEBHOOK).await?.map(|(w, _)| w))
    }

    /// Delivers the alerts among `events`, which were just chained.
    pub(crate) async fn deliver_alerts(&self, tenant: &TenantId, events: &[&DecisionEvent]) {
        let alerts: Vec<&&DecisionEvent> = events.iter().filter(|e| e.kind == DecisionKind::BudgetAlert).collect();
        if alerts.is_empty() {
            return;
        }
        if let Some(notifier) = &self.notifier {
            for alert in &alerts {
                let subject = format!("Keel budget alert: tenant {tenant}, {} at {}", alert.outcome["budget"].as_str().unwrap_or("?"), alert.outcome["threshold"]);
                let message = json!({"type": "budget.alert", "id": alert.event_id, "tenant": tenant, "data": alert.outcome}).to_string();
                let attributes = std::collections::HashMap::from([("tenant".to_string(), tenant.to_string()), ("type".to_string(), "budget.alert".to_string())]);
                if let Err(e) = notifier.notify(&subject, &message, attributes).await {
                    tracing::warn!(tenant = %tenant, error = %e, "budget alert not published to the operators' topic");
                }
            }
        }
        let (Some(egress), Ok(Some(hook))) = (&self.egress, self.webhook(tenant).await) else { return };
        let pins = self.tenants.cached(tenant).await.ok().flatten().and_then(|t| t.egress);
        for alert in alerts {
            let body = json!({"type": "budget.alert", "id": alert.event_id, "tenant": tenant, "data": alert.outcome}).to_string();
            let mut pause = FIRST_PAUSE;
            for attempt in 1..=ATTEMPTS {
                let t = keel_core::time::now_secs();
                let request = egress
                    .request(reqwest::Method::POST, &hook.url)
                    .header("content-type", "application/json")
                    .header("keel-event", "budget.alert")
                    .header("keel-signature", format!("t={t},v1={}", signature(&hook.secret, t, &body)))
                    .body(body.clone())
                    .build();
                let sent = match request {
                    Ok(r) => egress.execute(r, pins.as_ref()).await.map(|resp| resp.status().is_success()).unwrap_or(false),
                    Err(_) => false,
                };
                if sent {
                    break;
                }
                if attempt == ATTEMPTS {
                    tracing::warn!(tenant = %tenant, alert = %alert.event_id, "budget alert webhook failed every attempt");
                } else {
                    tokio::time::sleep(pause).await;
                    pause *= 2;
                }
            }
        }
    }
}

/// A webhook's host: what is shown of it and recorded.
fn host_of(url: &str) -> Option<String> {
    reqwest::Url::parse(url).ok().and_then(|u| u.host_str().map(str::to_string))
}
