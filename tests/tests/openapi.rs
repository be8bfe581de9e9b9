// Test-only code: helpers outside #[test] functions may unwrap and panic too.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

//! The OpenAPI document: every declared route documented, the committed
//! docs/openapi.json exactly what the code generates, and the document the
//! local stack serves that same file. (scripts/test.sh also runs schemathesis
//! against the running stack with it.)

use keel_tests::{config, start_stack};
use serde_json::Value;

const COMMITTED: &str = include_str!("../../docs/openapi.json");
const AUTHORIZATION: &str = include_str!("../../docs/authorization.md");

/// Every route says who may call it, and docs/authorization.md is the table
/// those declarations make.
#[test]
fn every_route_declares_who_may_call_it_and_the_committed_table_is_generated() {
    let undeclared: Vec<String> = keel_emulator::route_access().into_iter().filter(|(_, _, a)| a.is_none()).map(|(m, p, _)| format!("{m} {p}")).collect();
    assert!(undeclared.is_empty(), "add .access(…) after these routes: {undeclared:?}");
    assert!(
        keel_emulator::authorization_document() == AUTHORIZATION,
        "docs/authorization.md is stale: run `cargo run -p keel-emulator --bin keel-local -- authorization > docs/authorization.md`"
    );
    let public: Vec<(String, String)> = keel_emulator::route_access()
        .into_iter()
        .filter(|(_, _, a)| matches!(a, Some((keel_core::access::Access::Public, _))))
        .map(|(m, p, _)| (m, p))
        .collect();
    assert_eq!(public, keel_emulator::public_routes(), "only the console's routes need no credentials");
}

#[test]
fn every_declared_route_is_documented() {
    let undocumented: Vec<String> = keel_emulator::documented_routes()
        .into_iter()
        .filter(|(_, _, doc)| doc.is_none())
        .map(|(m, p, _)| format!("{m} {p}"))
        .collect();
    assert!(undocumented.is_empty(), "add .doc(…) after these routes: {undocumented:?}");
    let declared: std::collections::BTreeSet<(String, String)> = keel_emulator::declared_routes().into_iter().map(|(_, m, p)| (m, p)).collect();
    let documented: std::collections::BTreeSet<(String, String)> = keel_emulator::documented_routes().into_iter().map(|(m, p, _)| (m, p)).collect();
    assert_eq!(declared, documented);
}

#[test]
fn the_committed_document_is_the_one_the_code_generates() {
    let generated = keel_emulator::openapi_document();
    assert!(
        generated == COMMITTED,
        "docs/openapi.json is stale: run `cargo run -p keel-emulator --bin keel-local -- openapi > docs/openapi.json`"
    );
    let doc: Value = serde_json::from_str(&generated).unwrap();
    assert_eq!(doc["openapi"], "3.1.0");
    // Request bodies are the handlers' own types: unknown fields are refused, as the handlers refuse them.
    let new_tenant = &doc["components"]["schemas"]["NewTenant"];
    assert_eq!(new_tenant["additionalProperties"], false, "{new_tenant}");
    assert!(new_tenant["required"].as_array().unwrap().contains(&Value::from("id")));
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            assert!(op["responses"]["default"].is_object(), "{method} {path} documents no error shape");
        }
    }
}

#[tokio::test]
async fn the_stack_serves_the_document_without_credentials() {
    let dir = tempfile::tempdir().unwrap();
    let stack = start_stack(dir.path(), config(&[])).await;
    let served = reqwest::get(format!("{}/openapi.json", stack.url())).await.unwrap();
    assert_eq!(served.status(), 200);
    assert_eq!(served.text().await.unwrap(), COMMITTED);
    stack.stop().await;
}
