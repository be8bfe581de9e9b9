//! Every key Keel stores under, in one place: the single table's partition
//! and sort keys, and the blob store's object keys. Each tenant's items live
//! in its own partition (`T#<tenant>`) and its objects under
//! `tenants/<tenant>/`, so a key built here can only reach the tenant it
//! names. `docs/architecture.md` ("Data") mirrors this module.

use crate::ids::TenantId;

/// The tenant's partition.
pub fn partition(tenant: &TenantId) -> String {
    format!("T#{}", tenant.as_str())
}

/// The tenant's own record.
pub const TENANT: &str = "TENANT";

/// The one partition that belongs to no tenant: platform-wide indexes the
/// authorizer reads before it knows the tenant (which tenant an issuer signs in).
pub const PLATFORM: &str = "PLATFORM";

/// The platform's record of which tenant an OIDC issuer signs in, by the
/// issuer's SHA-256 (an issuer is a URL of any length and characters).
pub fn issuer(issuer: &str) -> String {
    use sha2::{Digest, Sha256};
    format!("ISSUER#{}", hex::encode(Sha256::digest(issuer.as_bytes())))
}

/// The platform's receipt of a tenant's deletion (in `PLATFORM`).
pub fn deletion_receipt(tenant: &TenantId) -> String {
    format!("DELETION#{}", tenant.as_str())
}

/// An API key's record, by the key's SHA-256.
pub fn api_key(key_hash: &str) -> String {
    format!("{API_KEYS}{key_hash}")
}

/// Every API key record of the tenant begins so.
pub const API_KEYS: &str = "KEY#";

/// A change to the tenant's controls waiting for a second admin.
pub fn change_request(id: &str) -> String {
    format!("{CHANGE_REQUESTS}{id}")
}

/// Every change request of the tenant begins so.
pub const CHANGE_REQUESTS: &str = "CHANGEREQ#";

/// The rate-limit counter of one minute (epoch minutes).
pub fn rate(minute: i64) -> String {
    format!("RATE#{minute}")
}

/// The count of a surface's requests running for the tenant, by the minute they began.
pub fn in_flight(surface: &str, minute: i64) -> String {
    format!("INFLIGHT#{surface}#{minute}")
}

/// A month's spend counter (micro-USD): the tenant's, or one workflow's.
pub fn spend(month: &str, workflow: Option<&str>) -> String {
    match workflow {
        None => format!("SPEND#{month}"),
        Some(w) => format!("SPEND#{month}#WF#{w}"),
    }
}

/// A month's usage counter (`calls`, `tokens_in`, …).
pub fn usage(month: &str, name: &str) -> String {
    format!("USAGE#{month}#{name}")
}

/// Every usage counter of a month.
pub fn usage_prefix(month: &str) -> String {
    format!("USAGE#{month}#")
}

/// The once-per-month marker of a budget alert: which budget, which share (in percent).
pub fn budget_alert(month: &str, budget: &str, percent: u32) -> String {
    format!("{BUDGET_ALERTS}{month}#{budget}#{percent:03}")
}

/// Every budget alert of the tenant begins so.
pub const BUDGET_ALERTS: &str = "ALERT#";

/// Where the tenant's alert webhook (its URL and signing secret) is kept.
pub const ALERT_WEBHOOK: &str = "ALERTHOOK";

/// A day's usage counter (`YYYY-MM-DD`): requests, tokens and cost by
/// model, router tiers, action statuses, each also per workflow.
pub fn daily_usage(day: &str, name: &str) -> String {
    format!("{DAILY_USAGE}{day}#{name}")
}

/// An hour's service-level counter of a surface (`total`, `slow`, `failed`).
pub fn slo_counter(surface: &str, hour: &str, name: &str) -> String {
    format!("{}{hour}#{name}", slo_counters(surface))
}

/// Every service-level counter of a surface begins so (then the hour, `YYYY-MM-DDTHH`).
pub fn slo_counters(surface: &str) -> String {
    format!("SLO#{surface}#")
}

/// Every daily usage counter begins so (then the day, so days sort in order).
pub const DAILY_USAGE: &str = "DAYUSE#";

/// An answer-cache entry, by its address (a hash).
pub fn answer_cache(address: &str) -> String {
    format!("CACHE#{address}")
}

/// The decision chain's entries, in sequence order.
pub const AUDIT_ENTRIES: &str = "AUDIT#";

/// One chain entry (fixed width, so entries sort by sequence).
pub fn audit_entry(seq: u64) -> String {
    format!("AUDIT#{seq:012}")
}

/// Every decision's pointers to its chain entries.
pub const DECISION_POINTERS: &str = "DECISION#";

/// A pointer from a decision's event to its chain entry.
pub fn decision_pointer(decision_id: &str, event_id: &str) -> String {
    format!("DECISION#{decision_id}#{event_id}")
}

/// One decision's pointers.
pub fn decision_pointers(decision_id: &str) -> String {
    format!("DECISION#{decision_id}#")
}

/// A document's record.
pub fn document(doc_id: &str) -> String {
    format!("{DOCUMENTS}{doc_id}")
}

/// Every document record of the tenant begins so.
pub const DOCUMENTS: &str = "DOC#";

/// A pointer from a request to a decision it made an event of.
pub fn request_pointer(request_id: &str, decision_id: &str) -> String {
    format!("{}{decision_id}", request_pointers(request_id))
}

/// Every pointer of one request begins so.
pub fn request_pointers(request_id: &str) -> String {
    format!("REQ#{request_id}#")
}

/// The changed-documents feed, in time order.
pub const CHANGES: &str = "CHANGE#";

/// One feed entry; `at` is fixed-width UTC, so entries sort by time.
pub fn change(at: &str, doc_id: &str) -> String {
    format!("CHANGE#{at}#{doc_id}")
}

/// Sorts after every feed entry recorded at `at`.
pub fn changes_after(at: &str) -> String {
    format!("CHANGE#{at}#\u{10FFFF}")
}

/// A feed cursor's record.
pub fn feed_cursor(token: &str) -> String {
    format!("CURSOR#{token}")
}

/// The tenant's search index manifest.
pub const INDEX_MANIFEST: &str = "INDEX";

/// A tool's current registration.
pub fn tool(name: &str) -> String {
    format!("TOOL#{name}")
}

/// One registered version of a tool (fixed width, so versions sort).
pub fn tool_version(name: &str, version: u64) -> String {
    format!("TOOLVERSION#{name}#{version:010}")
}

/// An action.
pub fn action(id: &str) -> String {
    format!("ACTION#{id}")
}

/// The action proposed with an idempotency key.
pub fn idempotency(key: &str) -> String {
    format!("IDEM#{key}")
}

/// The tenant's policy sets (`enforced`, `shadow`).
pub const POLICY_SETS: &str = "POLICY#";

/// One policy set.
pub fn policy_set(mode: &str) -> String {
    format!("{POLICY_SETS}{mode}")
}

/// A tool's daily counter (`count`, `amount`) of one UTC day.
pub fn daily(tool: &str, day: &str, what: &str) -> String {
    format!("DAILY#{tool}#{day}#{what}")
}

/// The blob store's prefix of every object of the tenant.
pub fn blob_prefix(tenant: &TenantId) -> String {
    format!("tenants/{}/", tenant.as_str())
}

/// A document's source text as ingested.
pub fn document_source(tenant: &TenantId, doc_id: &str) -> String {
    format!("{}documents/{doc_id}.json", blob_prefix(tenant))
}

/// An index segment.
pub fn index_segment(tenant: &TenantId, id: &str) -> String {
    format!("{}index/{id}.seg", blob_prefix(tenant))
}

/// The archive of the decision chain's full blocks.
pub fn audit_archive(tenant: &TenantId) -> String {
    format!("{}audit/archive/", blob_prefix(tenant))
}

/// Where producers drop documents for ingestion (`inbox/<doc_id>.<ext>`).
pub const INBOX: &str = "inbox/";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixed_width_keys_sort_in_number_order() {
        assert!(audit_entry(9) < audit_entry(10));
        assert!(tool_version("t", 9) < tool_version("t", 10));
        assert!(change("2026-01-01T00:00:00.000000Z", "zz") < changes_after("2026-01-01T00:00:00.000000Z"));
        assert!(decision_pointer("d1", "e").starts_with(&decision_pointers("d1")));
        assert!(usage("2026-01", "calls").starts_with(&usage_prefix("2026-01")));
        assert!(policy_set("shadow").starts_with(POLICY_SETS));
    }

    #[test]
    fn every_blob_key_of_a_tenant_is_under_its_prefix() {
        let acme = TenantId::parse("acme").unwrap_or_else(|_| unreachable!());
        let prefix = blob_prefix(&acme);
        assert_eq!(prefix, "tenants/acme/");
        for key in [document_source(&acme, "d"), index_segment(&acme, "s"), audit_archive(&acme)] {
            assert!(key.starts_with(&prefix), "{key}");
        }
    }
}
