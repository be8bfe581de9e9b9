// Test-only code: helpers outside #[test] functions may unwrap and panic too.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

//! Each function declares its routes once (`routes.rs`); the Lambda binary
//! and the local stack serve that declaration, and `template.yaml` must
//! route exactly those requests to exactly that function.

use std::collections::BTreeSet;

/// `(function, method, path)` of every `Type: HttpApi` event in the template.
fn template_routes() -> BTreeSet<(String, String, String)> {
    let template = include_str!("../../template.yaml");
    let (mut function, mut method, mut routes) = (String::new(), None::<String>, BTreeSet::new());
    for line in template.lines() {
        let indent = line.len() - line.trim_start().len();
        let line = line.trim();
        if indent == 2 && line.ends_with(':') && !line.contains(' ') {
            function = line.trim_end_matches(':').to_string();
        } else if let Some(m) = line.strip_prefix("Method: ") {
            method = Some(m.to_string());
        } else if let Some(p) = line.strip_prefix("Path: ") {
            routes.insert((function.clone(), method.take().expect("Method before Path"), p.to_string()));
        }
    }
    routes
}

#[test]
fn the_routes_the_functions_serve_are_the_routes_the_template_declares() {
    let served: BTreeSet<(String, String, String)> =
        keel_emulator::declared_routes().into_iter().map(|(f, m, p)| (f.to_string(), m, p)).collect();
    let declared = template_routes();
    assert!(declared.len() > 20, "the template scan found too few routes: {declared:?}");
    let only_served: Vec<_> = served.difference(&declared).collect();
    let only_in_template: Vec<_> = declared.difference(&served).collect();
    assert!(only_served.is_empty() && only_in_template.is_empty(),
        "served but not in template.yaml: {only_served:?}; in template.yaml but not served: {only_in_template:?}");
}

/// Only the console's page and scripts skip the authorizer, and they do.
#[test]
fn only_the_console_is_routed_without_the_authorizer() {
    let template: serde_yaml_ng::Value = serde_yaml_ng::from_str(include_str!("../../template.yaml")).unwrap();
    let mut open = BTreeSet::new();
    for (_, resource) in template["Resources"].as_mapping().unwrap() {
        let Some(events) = resource["Properties"]["Events"].as_mapping() else { continue };
        for (_, event) in events {
            let p = &event["Properties"];
            if p["Auth"]["Authorizer"].as_str() == Some("NONE") {
                open.insert((p["Method"].as_str().unwrap().to_string(), p["Path"].as_str().unwrap().to_string()));
            }
        }
    }
    let public: BTreeSet<(String, String)> = keel_emulator::public_routes().into_iter().collect();
    assert!(!public.is_empty());
    assert_eq!(open, public);
}
