// Test-only code: helpers outside #[test] functions may unwrap and panic too.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

//! The JSON Schema Test Suite (`../shared/evaldata/json-schema-test-suite`),
//! draft 2020-12, every required test (not `optional/`), through the
//! options tool input schemas are compiled with. The suite's remote schemas
//! (`http://localhost:1234/…`) are served from its `remotes/` folder by a
//! server on 127.0.0.1, reached through a retriever given to this test only:
//! Keel itself never fetches a `$ref`.

use serde_json::Value;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;


/// Serves files under `root` over HTTP/1.0 on 127.0.0.1 until dropped.
struct Remotes {
    port: u16,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl Remotes {
    fn serve(root: PathBuf) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stopping = stop.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if stopping.load(std::sync::atomic::Ordering::SeqCst) {
                    return;
                }
                let Ok(mut conn) = conn else { continue };
                let mut line = String::new();
                BufReader::new(&conn).read_line(&mut line).unwrap();
                let path = line.split_whitespace().nth(1).unwrap_or("/").trim_start_matches('/').to_string();
                let file = root.join(&path);
                let reply = match (path.contains(".."), std::fs::read(&file)) {
                    (false, Ok(body)) => [format!("HTTP/1.0 200 OK\r\nContent-Length: {}\r\n\r\n", body.len()).into_bytes(), body].concat(),
                    _ => b"HTTP/1.0 404 Not Found\r\nContent-Length: 0\r\n\r\n".to_vec(),
                };
                let _ = conn.write_all(&reply);
            }
        });
        Self { port, stop }
    }
}

impl Drop for Remotes {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        let _ = TcpStream::connect(("127.0.0.1", self.port)); // wakes the accept loop
    }
}

/// Fetches the suite's `http://localhost:1234/…` schemas from the loopback server.
struct LoopbackRetriever {
    port: u16,
}

impl jsonschema::Retrieve for LoopbackRetriever {
    fn retrieve(&self, uri: &jsonschema::Uri<String>) -> Result<Value, Box<dyn std::error::Error + Send + Sync>> {
        let path = uri.as_str().strip_prefix("http://localhost:1234").ok_or_else(|| format!("not a suite remote: {}", uri.as_str()))?;
        let mut conn = TcpStream::connect(("127.0.0.1", self.port))?;
        write!(conn, "GET {path} HTTP/1.0\r\n\r\n")?;
        let mut response = Vec::new();
        std::io::Read::read_to_end(&mut conn, &mut response)?;
        let split = response.windows(4).position(|w| w == b"\r\n\r\n").ok_or("no HTTP header end")?;
        if !response.starts_with(b"HTTP/1.0 200") {
            return Err(format!("{path}: not found").into());
        }
        Ok(serde_json::from_slice(&response[split + 4..])?)
    }
}

#[test]
fn draft2020_12_required_tests_all_pass() {
    let Some(suite) = keel_tests::evaldata("json-schema-test-suite") else { return };
    let remotes = Remotes::serve(suite.join("remotes"));
    let dir = suite.join("tests/draft2020-12");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().path()).filter(|p| p.extension().is_some_and(|e| e == "json")).collect();
    files.sort();
    let (mut passed, mut failures) = (0, Vec::new());
    for file in &files {
        let cases: Vec<Value> = serde_json::from_slice(&std::fs::read(file).unwrap()).unwrap();
        let name = file.file_name().unwrap().to_string_lossy();
        for case in &cases {
            let validator = keel_tools::schema::options().with_retriever(LoopbackRetriever { port: remotes.port }).build(&case["schema"]);
            for test in case["tests"].as_array().unwrap() {
                let expected = test["valid"].as_bool().unwrap();
                let outcome = match &validator {
                    Ok(v) => Ok(v.is_valid(&test["data"])),
                    Err(e) => Err(e.to_string()),
                };
                if outcome == Ok(expected) {
                    passed += 1;
                } else {
                    failures.push(format!("{name}: {} / {}: expected valid={expected}, got {outcome:?}", case["description"], test["description"]));
                }
            }
        }
    }
    println!("JSON Schema Test Suite draft 2020-12: {passed} passed, {} failed, {} files", failures.len(), files.len());
    assert!(files.len() >= 40 && passed > 1000, "the suite was not found or is incomplete");
    assert!(failures.is_empty(), "{} failures:\n{}", failures.len(), failures.join("\n"));
}
