//! Wall-clock helpers (seconds since the epoch and RFC 3339 strings).

pub fn now_secs() -> i64 {
    chrono::Utc::now().timestamp()
}

pub fn now_rfc3339() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// The usage period a timestamp falls in, e.g. `2026-11`.
pub fn current_month() -> String {
    chrono::Utc::now().format("%Y-%m").to_string()
}
