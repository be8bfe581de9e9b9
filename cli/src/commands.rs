//! Each command: the requests it makes and what it prints.

use crate::api::{encode, Api, CliError};
use crate::args::{Actions, Audit, Command, Documents, Keys, Policies, PolicyMode, Tenants, Tools};
use crate::output::{self, Printed};
use serde_json::{json, Value};
use std::path::Path;

/// Runs one API command; what to print.
pub async fn run(api: &Api, command: Command) -> Result<Printed, CliError> {
    match command {
        Command::Tenants(c) => tenants(api, c).await,
        Command::Keys(c) => keys(api, c).await,
        Command::Documents(c) => documents(api, c).await,
        Command::Ask { question } => Ok(output::answer(api.call("POST", "/v1/ask", Some(json!({"question": question}))).await?)),
        Command::Tools(c) => tools(api, c).await,
        Command::Policies(c) => policies(api, c).await,
        Command::Actions(c) => actions(api, c).await,
        Command::Audit(c) => audit(api, c).await,
        Command::Usage { from, to } => Ok(output::usage(api.call("GET", &format!("/v1/usage?{}", period(from, to)), None).await?)),
        Command::Whoami => Ok(output::whoami(api.call("GET", "/v1/me", None).await?)),
        Command::Dlq(_) | Command::Dev { .. } => Err(CliError::Usage("dlq and dev make no API call".into())),
    }
}

/// `from=…&to=…` of the bounds given (usage and export take the same two).
fn period(from: Option<String>, to: Option<String>) -> String {
    let bounds = [("from", from), ("to", to)];
    bounds.iter().filter_map(|(name, v)| v.as_ref().map(|v| format!("{name}={}", encode(v)))).collect::<Vec<_>>().join("&")
}

async fn tenants(api: &Api, c: Tenants) -> Result<Printed, CliError> {
    let v = match c {
        Tenants::Create { id, name, plan } => {
            let mut body = json!({"id": id, "name": name});
            if let Some(plan) = plan {
                body["plan"] = json!(plan);
            }
            api.call("POST", "/v1/tenants", Some(body)).await?
        }
        Tenants::Show { id } => api.call("GET", &format!("/v1/tenants/{}", encode(&id)), None).await?,
        Tenants::Patch { id, changes } => {
            let changes: Value = serde_json::from_str(&changes).map_err(|e| CliError::Usage(format!("changes must be a JSON object: {e}")))?;
            if !changes.is_object() {
                return Err(CliError::Usage("changes must be a JSON object, e.g. '{\"plan\": \"pro\"}'".into()));
            }
            api.call("PATCH", &format!("/v1/tenants/{}", encode(&id)), Some(changes)).await?
        }
        Tenants::Suspend { id } => api.call("PATCH", &format!("/v1/tenants/{}", encode(&id)), Some(json!({"status": "suspended"}))).await?,
    };
    Ok(output::tenant(v))
}

async fn keys(api: &Api, c: Keys) -> Result<Printed, CliError> {
    Ok(match c {
        Keys::Create { tenant, principal, roles, groups, expires_at } => {
            let mut body = json!({"principal": principal, "roles": roles, "attributes": {"groups": groups}});
            if let Some(at) = expires_at {
                body["expires_at"] = json!(at);
            }
            output::new_key(api.call("POST", &format!("/v1/tenants/{}/keys", encode(&tenant)), Some(body)).await?)
        }
        Keys::List { tenant } => output::keys(api.call("GET", &format!("/v1/tenants/{}/keys", encode(&tenant)), None).await?),
        Keys::Revoke { tenant, key_id } => {
            output::done(api.call("DELETE", &format!("/v1/tenants/{}/keys/{}", encode(&tenant), encode(&key_id)), None).await?, format!("revoked {key_id}"))
        }
    })
}

/// The files a put covers: the file itself, or every file directly in the folder, by name.
fn files_of(path: &Path) -> Result<Vec<std::path::PathBuf>, CliError> {
    let meta = std::fs::metadata(path).map_err(|e| CliError::Usage(format!("{}: {e}", path.display())))?;
    if meta.is_file() {
        return Ok(vec![path.to_path_buf()]);
    }
    let mut files: Vec<_> = std::fs::read_dir(path)
        .map_err(|e| CliError::Usage(format!("{}: {e}", path.display())))?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    Ok(files)
}

async fn documents(api: &Api, c: Documents) -> Result<Printed, CliError> {
    match c {
        Documents::Put { path, groups, source } => {
            let mut put = Vec::new();
            for file in files_of(&path)? {
                let id = file.file_stem().and_then(|s| s.to_str()).unwrap_or_default().to_string();
                let text = std::fs::read_to_string(&file).map_err(|e| CliError::Usage(format!("{}: {e} (documents are UTF-8 text)", file.display())))?;
                let mut body = json!({"text": text, "acl": {"groups": groups}});
                if let Some(source) = &source {
                    body["source"] = json!(source);
                }
                api.call("PUT", &format!("/v1/documents/{}", encode(&id)), Some(body)).await?;
                put.push(json!({"doc_id": id, "file": file.display().to_string()}));
            }
            Ok(output::put_documents(put))
        }
        Documents::Delete { id } => Ok(output::done(api.call("DELETE", &format!("/v1/documents/{}", encode(&id)), None).await?, format!("deleted {id}"))),
        Documents::Search { query, k } => Ok(output::search(api.call("POST", "/v1/search", Some(json!({"query": query, "k": k}))).await?)),
    }
}

async fn tools(api: &Api, c: Tools) -> Result<Printed, CliError> {
    match c {
        Tools::Put { name, file } => {
            let text = std::fs::read_to_string(&file).map_err(|e| CliError::Usage(format!("{}: {e}", file.display())))?;
            let tool: Value = serde_json::from_str(&text).map_err(|e| CliError::Usage(format!("{}: not JSON: {e}", file.display())))?;
            let v = api.call("PUT", &format!("/v1/tools/{}", encode(&name)), Some(tool)).await?;
            let line = format!("registered {} version {}", v["name"].as_str().unwrap_or(&name), v["version"]);
            Ok(output::done(v, line))
        }
        Tools::List => Ok(output::tools(api.call("GET", "/v1/tools", None).await?)),
    }
}

async fn policies(api: &Api, c: Policies) -> Result<Printed, CliError> {
    match c {
        Policies::Put { mode, file } => {
            let text = std::fs::read_to_string(&file).map_err(|e| CliError::Usage(format!("{}: {e}", file.display())))?;
            let mode = match mode {
                PolicyMode::Enforced => "enforced",
                PolicyMode::Shadow => "shadow",
            };
            let v = api.call("PUT", &format!("/v1/policies/{mode}"), Some(json!({"policies": text}))).await?;
            let line = if v.get("change_request").is_some() { format!("{mode} policies wait for a second admin") } else { format!("{mode} policies replaced") };
            Ok(output::done(v, line))
        }
        Policies::Show => Ok(output::policies(api.call("GET", "/v1/policies", None).await?)),
    }
}

async fn actions(api: &Api, c: Actions) -> Result<Printed, CliError> {
    let path = |id: &str, verb: &str| format!("/v1/actions/{}/{verb}", encode(id));
    Ok(match c {
        Actions::List { status, limit } => {
            let mut query = format!("limit={limit}");
            if let Some(s) = status {
                query.push_str(&format!("&status={}", encode(&s)));
            }
            output::actions(api.call("GET", &format!("/v1/actions?{query}"), None).await?)
        }
        Actions::Show { id } => output::action(api.call("GET", &format!("/v1/actions/{}", encode(&id)), None).await?),
        Actions::Approve { id } => output::action(api.call("POST", &path(&id, "approve"), Some(json!({}))).await?),
        Actions::Reject { id, reason } => output::action(api.call("POST", &path(&id, "reject"), Some(json!({"reason": reason}))).await?),
        Actions::Undo { id } => output::action(api.call("POST", &path(&id, "undo"), None).await?),
    })
}

async fn audit(api: &Api, c: Audit) -> Result<Printed, CliError> {
    match c {
        Audit::Verify { offline: Some(file) } => verify_offline(&file),
        Audit::Verify { offline: None } => Ok(output::verify(api.call("POST", "/v1/audit/verify", None).await?)),
        Audit::Export { file, from, to } => {
            let v = api.call("GET", &format!("/v1/audit/export?{}", period(from, to)), None).await?;
            let lines = v.as_str().unwrap_or_default();
            std::fs::write(&file, lines).map_err(|e| CliError::Other(format!("{}: {e}", file.display())))?;
            let n = lines.lines().count();
            Ok(output::done(json!({"file": file.display().to_string(), "entries": n}), format!("wrote {n} entries to {}", file.display())))
        }
    }
}

/// `keel audit verify --offline FILE`: an export's hash chain checked here,
/// without a server or credentials: every entry's content against its hash,
/// and every link to the entry before it.
pub fn verify_offline(file: &std::path::Path) -> Result<Printed, CliError> {
    let text = std::fs::read_to_string(file).map_err(|e| CliError::Usage(format!("{}: {e}", file.display())))?;
    let mut entries = Vec::new();
    for (n, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        let entry: keel_core::chain::ChainEntry =
            serde_json::from_str(line).map_err(|e| CliError::Other(format!("{} line {}: not a chain entry: {e}", file.display(), n + 1)))?;
        entries.push(entry);
    }
    let problems = keel_core::chain::verify_export(&entries, keel_core::time::now_secs());
    let verdict = json!({"ok": problems.is_empty(), "entries": entries.len(), "first_seq": entries.first().map(|e| e.seq),
        "head": entries.last().map(|e| &e.hash), "problems": problems});
    if !problems.is_empty() {
        return Err(CliError::Other(format!("{} does NOT verify: {}", file.display(), verdict["problems"])));
    }
    Ok(output::verify(verdict))
}
