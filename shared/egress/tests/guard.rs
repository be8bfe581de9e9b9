// Test-only code: helpers outside #[test] functions may unwrap and panic too.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

//! The guarded client over real sockets: a refused address never gets a
//! connection, whether the URL names it or a host name resolves to it, and a
//! redirect is the answer, not a second request.

use keel_core::egress::EgressPolicy;
use keel_egress::{Egress, EgressError};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A loopback server answering every connection with `answer`; counts connections.
async fn server(answer: String) -> (u16, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            let answer = answer.clone();
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = socket.read(&mut buf).await;
                let _ = socket.write_all(answer.as_bytes()).await;
            });
        }
    });
    (port, accepted)
}

fn ok() -> String {
    "HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok".into()
}

fn client(allow: &str) -> Egress {
    Egress::new(Duration::from_secs(5), EgressPolicy::parse(allow).unwrap()).unwrap()
}

async fn get(egress: &Egress, url: &str) -> Result<reqwest::Response, EgressError> {
    let request = egress.request(reqwest::Method::GET, url).build().unwrap();
    egress.execute(request, None).await
}

fn refused_rule(result: Result<reqwest::Response, EgressError>) -> String {
    match result {
        Err(EgressError::Refused(r)) => r.to_string(),
        Err(EgressError::Failed(e)) => panic!("failed, not refused: {e}"),
        Ok(r) => panic!("answered {}", r.status()),
    }
}

#[tokio::test]
async fn a_host_name_resolving_to_a_refused_address_never_gets_a_connection() {
    let (port, accepted) = server(ok()).await;
    let why = refused_rule(get(&client(""), &format!("http://localhost:{port}/")).await);
    assert!(why.contains("localhost") && why.contains("loopback"), "{why}");
    assert_eq!(accepted.load(Ordering::SeqCst), 0);

    // Opened on purpose, by range or by name, the same call goes through.
    for allow in ["127.0.0.0/8,::1/128", "localhost"] {
        let answer = get(&client(allow), &format!("http://localhost:{port}/")).await.unwrap();
        assert_eq!(answer.status(), 200, "{allow}");
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn literal_addresses_in_any_notation_are_refused_before_connecting() {
    let (port, accepted) = server(ok()).await;
    for url in [
        format!("http://127.0.0.1:{port}/"),
        format!("http://2130706433:{port}/"),
        format!("http://0177.0.0.1:{port}/"),
        format!("http://0x7f000001:{port}/"),
        format!("http://[::ffff:127.0.0.1]:{port}/"),
        "http://169.254.169.254/latest/meta-data/".into(),
        "http://[fd00:ec2::254]/latest/meta-data/".into(),
    ] {
        let why = refused_rule(get(&client(""), &url).await);
        assert!(why.contains("egress refused"), "{url}: {why}");
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn a_redirect_is_the_answer_and_is_not_followed() {
    let (target_port, target_hits) = server(ok()).await;
    for location in [format!("http://127.0.0.1:{target_port}/"), "http://169.254.169.254/latest/meta-data/".into()] {
        let (port, _) = server(format!("HTTP/1.1 302 Found\r\nlocation: {location}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")).await;
        let answer = get(&client("127.0.0.0/8"), &format!("http://127.0.0.1:{port}/")).await.unwrap();
        assert_eq!(answer.status(), 302);
    }
    assert_eq!(target_hits.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn vetting_resolves_names_and_lets_unresolvable_ones_wait_for_the_call() {
    let egress = client("");
    assert!(egress.vet("http://localhost:9/", None).await.unwrap_err().rule.contains("loopback"));
    assert!(egress.vet("http://10.1.2.3/", None).await.unwrap_err().rule.contains("RFC 1918"));
    assert!(egress.vet("ftp://example.com/", None).await.is_err());
    // `.invalid` never resolves (RFC 6761): checked again, with its addresses, when called.
    assert!(egress.vet("https://connector.invalid/", None).await.is_ok());
}
