// Test-only code: helpers outside #[test] functions may unwrap and panic too.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

//! Each tenant's own OIDC identity provider, through the local stack: a
//! JWKS server on loopback, tokens signed RS256, ES256 and EdDSA, key
//! rotation, and the attacks a JWT verifier must refuse.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use keel_auth::jwks::{JwksCache, MAX_STALE_SECS, MIN_REFETCH_SECS};
use keel_core::egress::EgressPolicy;
use keel_emulator::Stack;
use keel_tests::idp::{SigningKey, TestIdp};
use keel_tests::{config, start_stack, tenant, Client, Tenant, ADMIN_KEY};
use serde_json::{json, Value};

const AUDIENCE: &str = "keel-acme";
const JWT_SECRET: &str = "platform-jwt-secret";

struct World {
    _dir: tempfile::TempDir,
    stack: Stack,
    c: Client,
    acme: Tenant,
    idp: TestIdp,
}

/// acme, signed in by its own provider (publishing an Ed25519, a P-256 and an RSA key).
async fn world() -> (World, [SigningKey; 3]) {
    let dir = tempfile::tempdir().unwrap();
    let settings = [("KEEL_JWT_SECRET", JWT_SECRET), ("KEEL_JWT_ISSUER", "https://platform.test")];
    let stack = start_stack(dir.path(), config(&settings)).await;
    let c = Client::new(stack.url());
    let acme = tenant(&c, "acme", json!({})).await;
    let idp = TestIdp::start().await;
    let keys = [SigningKey::ed25519("ed-1"), SigningKey::p256("ec-1"), SigningKey::rsa("rsa-1")];
    idp.publish(&keys.iter().collect::<Vec<_>>());
    let (s, b) = c.call("PATCH", "/v1/tenants/acme", ADMIN_KEY, Some(json!({"identity": idp.identity(AUDIENCE)}))).await.unwrap();
    assert_eq!(s, 200, "{b}");
    (World { _dir: dir, stack, c, acme, idp }, keys)
}

/// The status of an admin-only read of acme with this token.
async fn admin_read(c: &Client, token: &str) -> (u16, Value) {
    c.call("GET", "/v1/tenants/acme/keys", token, None).await.unwrap()
}

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

#[tokio::test]
async fn a_tenants_own_provider_signs_its_people_in_with_eddsa_es256_and_rs256() {
    let (w, keys) = world().await;
    for key in &keys {
        let admin = key.sign(&w.idp.claims("carol@acme.test", AUDIENCE, &["admin"]));
        let (s, b) = admin_read(&w.c, &admin).await;
        assert_eq!(s, 200, "{:?}: {b}", key.alg);
        let member = key.sign(&w.idp.claims("ann@acme.test", AUDIENCE, &["member"]));
        assert_eq!(admin_read(&w.c, &member).await.0, 403, "{:?}: a member's token gets a member's rights", key.alg);
        let (s, b) = w.c.call("GET", "/v1/documents/nothing-here", &member, None).await.unwrap();
        assert_eq!(s, 404, "{b}");
    }
    let (_, tenant) = w.c.call("GET", "/v1/tenants/acme", &w.acme.admin, None).await.unwrap();
    assert_eq!(tenant["identity"]["principal_claim"], "sub");
    assert!(w.idp.fetches() <= 1, "the key set is fetched once and cached: {}", w.idp.fetches());
    // A role the provider names that Keel does not give tenants is dropped, not honoured.
    let escalate = keys[0].sign(&w.idp.claims("eve@acme.test", AUDIENCE, &["platform_admin", "member"]));
    assert_eq!(w.c.call("POST", "/v1/tenants", &escalate, Some(json!({"id": "x", "name": "x"}))).await.unwrap().0, 403);
    w.stack.stop().await;
}

#[tokio::test]
async fn jwt_attacks_are_refused() {
    let (w, [ed, ec, rsa]) = world().await;
    let claims = w.idp.claims("carol@acme.test", AUDIENCE, &["admin"]);
    let with = |extra: Value| {
        let mut c = claims.clone();
        c.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        c
    };
    let payload = URL_SAFE_NO_PAD.encode(claims.to_string());
    let unsigned = |header: Value| format!("{}.{payload}.", URL_SAFE_NO_PAD.encode(header.to_string()));
    let hs256_with = |secret: &[u8], kid: &str| {
        let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
        header.kid = Some(kid.into());
        jsonwebtoken::encode(&header, &claims, &jsonwebtoken::EncodingKey::from_secret(secret)).unwrap()
    };
    let rsa_public = URL_SAFE_NO_PAD.decode(rsa.jwk["n"].as_str().unwrap()).unwrap();
    let impostor = SigningKey::ed25519("ed-1");
    let attacker = TestIdp::start().await;
    let attacker_key = SigningKey::ed25519("evil");
    attacker.publish(&[&attacker_key]);
    let mut jku = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::EdDSA);
    (jku.kid, jku.jku) = (Some("evil".into()), Some(attacker.jwks_uri()));
    let other_tenants_claim = with(json!({"tenant": "beta"}));
    let attacks: Vec<(&str, String)> = vec![
        ("alg none", unsigned(json!({"alg": "none", "kid": "ed-1"}))),
        ("alg none, no kid", unsigned(json!({"alg": "none"}))),
        ("HS256 signed with the RSA public key", hs256_with(&rsa_public, "rsa-1")),
        ("HS256 signed with the RSA JWK text", hs256_with(rsa.jwk.to_string().as_bytes(), "rsa-1")),
        ("a kid the provider does not publish", SigningKey::ed25519("ed-9").sign(&claims)),
        ("a kid path trick", SigningKey::ed25519("../../jwks").sign(&claims)),
        ("the right kid, another private key", impostor.sign(&claims)),
        ("ES256 naming the Ed25519 key", { let mut k = ec.clone(); k.kid = "ed-1".into(); k.sign(&claims) }),
        ("a jku pointing at the attacker's keys", attacker_key.sign_with_header(jku, &claims)),
        ("expired beyond the skew", ed.sign(&with(json!({"exp": now() - 120})))),
        ("not yet valid beyond the skew", ed.sign(&with(json!({"nbf": now() + 120})))),
        ("no exp", ed.sign(&{ let mut c = claims.clone(); c.as_object_mut().unwrap().remove("exp"); c })),
        ("wrong aud", ed.sign(&with(json!({"aud": "keel-beta"})))),
        ("unknown iss", ed.sign(&with(json!({"iss": "https://idp.elsewhere.test"})))),
        ("acme's issuer naming another tenant", ed.sign(&other_tenants_claim)),
        ("a 20 KB token", format!("{}.{}.{}", "a".repeat(10_000), "b".repeat(10_000), "c")),
        ("three dots", "a.b.c.d".into()),
    ];
    for (what, token) in &attacks {
        let (s, b) = admin_read(&w.c, token).await;
        assert_eq!(s, 401, "{what}: {b}");
        assert!(!b.to_string().contains(&rsa.jwk["n"].as_str().unwrap()[..20]), "{what} shows key material: {b}");
    }
    assert_eq!(attacker.fetches(), 0, "a jku header is never followed");
    // A megabyte of token never reaches a verifier: the HTTP server refuses the header.
    let huge = format!("{}.{}.c", "a".repeat(1 << 19), "b".repeat(1 << 19));
    let (s, _) = admin_read(&w.c, &huge).await;
    assert!(s == 431 || s == 401, "a 1 MB token: {s}");
    // Within the skew, a token just past its exp still works.
    assert_eq!(admin_read(&w.c, &ed.sign(&with(json!({"exp": now() - 30})))).await.0, 200);
    w.stack.stop().await;
}

#[tokio::test]
async fn an_issuer_signs_in_one_tenant_and_is_free_again_once_removed() {
    let (w, [ed, ..]) = world().await;
    tenant(&w.c, "beta", json!({})).await;
    let (s, b) = w.c.call("PATCH", "/v1/tenants/beta", ADMIN_KEY, Some(json!({"identity": w.idp.identity("keel-beta")}))).await.unwrap();
    assert_eq!(s, 409, "{b}");
    let (s, b) = w.c.call("POST", "/v1/tenants", ADMIN_KEY, Some(json!({"id": "gamma", "name": "g", "identity": w.idp.identity("g")}))).await.unwrap();
    assert_eq!(s, 409, "{b}");
    assert_eq!(w.c.call("GET", "/v1/tenants/gamma", ADMIN_KEY, None).await.unwrap().0, 404, "a refused create leaves nothing");
    // Only the platform admin sets the provider, not the tenant's own admin.
    let (s, _) = w.c.call("PATCH", "/v1/tenants/acme", &w.acme.admin, Some(json!({"identity": null}))).await.unwrap();
    assert_eq!(s, 403);
    let (s, b) = w.c.call("PATCH", "/v1/tenants/acme", ADMIN_KEY, Some(json!({"identity": null}))).await.unwrap();
    assert_eq!((s, b.get("identity")), (200, None), "{b}");
    let token = ed.sign(&w.idp.claims("carol@acme.test", AUDIENCE, &["admin"]));
    assert_eq!(admin_read(&w.c, &token).await.0, 401, "acme no longer trusts the provider");
    let (s, b) = w.c.call("PATCH", "/v1/tenants/beta", ADMIN_KEY, Some(json!({"identity": w.idp.identity("keel-beta")}))).await.unwrap();
    assert_eq!(s, 200, "{b}");
    let beta_token = ed.sign(&w.idp.claims("carol@acme.test", "keel-beta", &["admin"]));
    assert_eq!(admin_read(&w.c, &beta_token).await.0, 403, "the issuer now signs in beta, never acme");
    let (s, _) = w.c.call("GET", "/v1/tenants/beta/keys", &beta_token, None).await.unwrap();
    assert_eq!(s, 200);
    let bad = json!({"identity": {"issuer": "https://x", "jwks_uri": "file:///etc/passwd", "audience": "a"}});
    assert_eq!(w.c.call("PATCH", "/v1/tenants/acme", ADMIN_KEY, Some(bad)).await.unwrap().0, 400);
    w.stack.stop().await;
}

#[tokio::test]
async fn a_new_key_is_picked_up_after_a_minute_and_the_provider_is_not_hammered_meanwhile() {
    let (w, [ed, ..]) = world().await;
    let claims = w.idp.claims("carol@acme.test", AUDIENCE, &["admin"]);
    assert_eq!(admin_read(&w.c, &ed.sign(&claims)).await.0, 200);
    let next = SigningKey::ed25519("ed-2");
    w.idp.publish(&[&ed, &next]);
    let fetched = w.idp.fetches();
    for _ in 0..20 {
        assert_eq!(admin_read(&w.c, &SigningKey::ed25519("made-up").sign(&claims)).await.0, 401);
    }
    assert_eq!(admin_read(&w.c, &next.sign(&claims)).await.0, 401, "within the minute the new key is not fetched yet");
    assert!(w.idp.fetches() <= fetched + 1, "unknown kids fetch at most once a minute: {} fetches", w.idp.fetches() - fetched);
    assert_eq!(admin_read(&w.c, &ed.sign(&claims)).await.0, 200, "the cached key keeps working");
    w.stack.stop().await;
}

/// The cache itself, on a clock the test moves: rotation, the refetch limit,
/// the provider's cache headers, and a provider that goes down.
#[tokio::test]
async fn the_key_cache_follows_rotation_cache_headers_and_outages() {
    let idp = TestIdp::start().await;
    let (a, b) = (SigningKey::ed25519("a"), SigningKey::p256("b"));
    idp.publish(&[&a]);
    idp.set_cache_control("public, max-age=120");
    let cache = JwksCache::new(EgressPolicy::parse("127.0.0.0/8").unwrap()).unwrap();
    let uri = idp.jwks_uri();
    let t0 = 1_000_000;
    assert!(cache.key(&uri, "a", t0).await.is_ok());
    idp.publish(&[&b]);
    assert!(cache.key(&uri, "b", t0 + 10).await.is_err(), "rotated within the minute: not fetched yet");
    assert_eq!(idp.fetches(), 1);
    assert!(cache.key(&uri, "a", t0 + 20).await.is_ok(), "the old key serves until the set is fetched again");
    assert!(cache.key(&uri, "b", t0 + MIN_REFETCH_SECS).await.is_ok(), "a minute on, an unknown kid fetches");
    assert_eq!(idp.fetches(), 2);
    assert!(cache.key(&uri, "a", t0 + MIN_REFETCH_SECS + 1).await.is_err(), "the retired key is gone");
    assert_eq!(idp.fetches(), 2, "and asking for it again within the minute fetches nothing");
    // Past max-age the set is fetched again even for a known key.
    idp.publish(&[&a, &b]);
    let stale = t0 + MIN_REFETCH_SECS + 121;
    assert!(cache.key(&uri, "b", stale).await.is_ok());
    assert_eq!(idp.fetches(), 3);
    // Down: the last good set still serves; nothing known: unavailable.
    idp.set_down(true);
    assert!(cache.key(&uri, "a", stale + 500).await.is_ok());
    assert_eq!(idp.fetches(), 4);
    // ...but not for ever: an hour past its freshness, the old set no longer signs anyone in.
    let fresh_until = stale + 120;
    assert!(cache.key(&uri, "a", fresh_until + MAX_STALE_SECS).await.is_ok());
    let err = cache.key(&uri, "a", fresh_until + MAX_STALE_SECS + MIN_REFETCH_SECS + 1).await.unwrap_err();
    assert_eq!(err.status(), 503, "{err}");
    let other = JwksCache::new(EgressPolicy::parse("127.0.0.0/8").unwrap()).unwrap();
    let err = other.key(&uri, "a", t0).await.unwrap_err();
    assert_eq!(err.status(), 503, "{err}");
    idp.set_down(false);
    assert!(cache.key(&uri, "a", fresh_until + MAX_STALE_SECS + 3 * MIN_REFETCH_SECS).await.is_ok(), "back up: fetched again");
}
