//! What a stranger reaches, one target each: each takes arbitrary bytes,
//! must never panic, and answers a short outcome (used to tell inputs that
//! reach somewhere new from those that do not). Some also check a property
//! that must hold for every input; a broken property panics like a crash.

// A broken property is reported by panicking, which the fuzzer catches.
#![allow(clippy::panic)]

use keel_core::limits::parse_json;
use serde_json::Value;

pub struct Target {
    pub name: &'static str,
    pub run: fn(&[u8]) -> String,
}

pub const TARGETS: [Target; 6] = [
    Target { name: "lambda_events", run: lambda_events },
    Target { name: "request_bodies", run: request_bodies },
    Target { name: "jwt", run: jwt },
    Target { name: "tool_schema", run: tool_schema },
    Target { name: "cedar_policy", run: cedar_policy },
    Target { name: "text", run: text },
];

/// Most bytes of a request any route reads.
const MAX_BODY: usize = 1024 * 1024;

fn outcome<T>(result: Result<T, keel_core::KeelError>) -> String {
    match result {
        Ok(_) => "ok".into(),
        Err(e) => format!("{}:{}", e.code(), e.to_string().chars().take(40).collect::<String>()),
    }
}

/// API Gateway (HTTP API v2, function URL), authorizer and SQS events as a
/// Lambda function receives them.
fn lambda_events(bytes: &[u8]) -> String {
    let Ok(event) = parse_json::<Value>(bytes, MAX_BODY, "event") else { return "unreadable".into() };
    let http = keel_lambda::http_request(event.clone()).map(|(request, from_url)| (request.uri().to_string(), from_url));
    let other = keel_lambda::recognize(event).map(|e| match e {
        keel_lambda::Event::Queue(batch) => format!("queue:{}", keel_lambda::queue_messages(batch).len()),
        keel_lambda::Event::Authorize(_) => "authorize".into(),
        keel_lambda::Event::Task(_) => "task".into(),
    });
    format!("{} {}", outcome(http.map(|_| ())), outcome(other))
}

/// Request and message bodies, through the same limited parser the routes use.
fn request_bodies(bytes: &[u8]) -> String {
    let results = [
        outcome(parse_json::<keel_retrieval::DocumentInput>(bytes, MAX_BODY, "document")),
        outcome(parse_json::<keel_retrieval::DocumentChange>(bytes, MAX_BODY, "change")),
        outcome(parse_json::<keel_routing::AskRequest>(bytes, MAX_BODY, "question")),
        outcome(parse_json::<keel_routing::classify::ClassifyRequest>(bytes, MAX_BODY, "classification")),
        outcome(parse_json::<keel_routing::rank::RankRequest>(bytes, MAX_BODY, "ranking")),
        outcome(parse_json::<keel_core::openai::ChatRequest>(bytes, MAX_BODY, "chat")),
        outcome(parse_json::<keel_tools::StepInput>(bytes, MAX_BODY, "step")),
        outcome(parse_json::<keel_core::identity::IdentityProvider>(bytes, MAX_BODY, "identity").and_then(|i| i.validate())),
        outcome(parse_json::<keel_core::tenants::Tenant>(bytes, MAX_BODY, "tenant").and_then(|t| t.validate_settings(&[]))),
    ];
    results.iter().map(|r| r.chars().take(24).collect::<String>()).collect::<Vec<_>>().join("|")
}

/// Tokens: the header read first, the platform's HS256 check, the issuer
/// read before verification, and identity providers' key sets.
fn jwt(bytes: &[u8]) -> String {
    let token = String::from_utf8_lossy(bytes);
    let settings = keel_core::jwt::JwtSettings { secret: "fuzz-secret".into(), issuer: "https://idp".into(), audience: "keel".into() };
    let header = keel_auth::identity::read_header(&token).map(|h| format!("{:?}", h.alg));
    let platform = keel_core::jwt::verify_jwt(&token, &settings, 1_000);
    // A property, not a crash: the fuzzer never holds the platform's secret.
    assert!(platform.is_err(), "a token the fuzzer made passed the platform's signature check: {platform:?}");
    let issuer = keel_auth::oidc::unverified_issuer(&token);
    let keys = keel_auth::jwks::signing_keys(bytes).map(|k| k.len());
    let age = keel_auth::jwks::max_age(&token);
    assert!((keel_auth::jwks::MIN_REFETCH_SECS..=keel_auth::jwks::MAX_AGE_CAP_SECS).contains(&age), "max-age {age} out of bounds");
    let key_tenant = keel_core::auth::api_key_tenant(&token).is_some();
    format!("{} {} {} {:?} {key_tenant}", outcome(header), outcome(platform), outcome(issuer), keys.is_ok())
}

/// A tool's input schema as a tenant admin registers it, and arguments checked against it.
fn tool_schema(bytes: &[u8]) -> String {
    let Ok(schema) = parse_json::<Value>(bytes, MAX_BODY, "schema") else { return "unreadable".into() };
    let checked = keel_tools::schema::check_schema(&schema);
    if checked.is_ok() {
        for args in [Value::Null, serde_json::json!({}), serde_json::json!({"amount": 1e308, "order_id": "A"}), schema.clone()] {
            let _ = keel_tools::schema::validate_args(&schema, &args);
        }
    }
    outcome(checked)
}

/// Cedar policy text as a tenant admin replaces its policy set with.
fn cedar_policy(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    let shape = keel_tools::policy::check_policy_shape(&text);
    let parsed = keel_tools::policy::parse_tenant_policies(&text).map(|_| ());
    format!("{} {}", outcome(shape), outcome(parsed))
}

/// Documents' text on arbitrary Unicode: chunking, terms, sentences and PII
/// detection, with the properties their callers rely on.
fn text(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    let chunks = keel_core::chunking::chunk_document("doc", &text);
    for (start, end) in keel_core::text::sentence_spans(&text) {
        assert!(start <= end && end <= text.len() && text.is_char_boundary(start) && text.is_char_boundary(end), "sentence span {start}..{end}");
    }
    let terms = keel_core::text::terms(&text).len();
    // PII spans are character offsets, sorted and apart; redaction puts each kind's placeholder there.
    let spans = keel_retrieval::pii::detect(&text);
    let chars = text.chars().count();
    for pair in spans.windows(2) {
        assert!(pair[0].end <= pair[1].start, "overlapping pii spans {pair:?}");
    }
    assert!(spans.iter().all(|s| s.start < s.end && s.end <= chars), "pii spans {spans:?} outside {chars} characters");
    let (redacted, placed) = keel_retrieval::pii::redact(&text, &spans);
    let redacted: Vec<char> = redacted.chars().collect();
    for s in &placed {
        let shown: String = redacted.get(s.start..s.end).map(|c| c.iter().collect()).unwrap_or_default();
        assert_eq!(shown, s.kind.placeholder(), "placeholder span {s:?}");
    }
    format!("{} {} {}", chunks.len().min(8), terms.min(8), spans.len().min(8))
}
