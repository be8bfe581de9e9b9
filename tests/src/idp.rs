//! A tenant's identity provider for the tests: a JWKS server on loopback
//! whose published keys the test rotates, and the signing keys (Ed25519,
//! ECDSA P-256, RSA) to mint its tokens with.

use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{EcdsaKeyPair, Ed25519KeyPair, KeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

/// A key the provider signs with, and its public JWK.
#[derive(Clone)]
pub struct SigningKey {
    pub kid: String,
    pub alg: Algorithm,
    encoding: EncodingKey,
    pub jwk: Value,
}

impl SigningKey {
    pub fn ed25519(kid: &str) -> Self {
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).unwrap();
        let pair = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap();
        let jwk = json!({"kty": "OKP", "crv": "Ed25519", "kid": kid, "use": "sig", "x": URL_SAFE_NO_PAD.encode(pair.public_key().as_ref())});
        Self { kid: kid.into(), alg: Algorithm::EdDSA, encoding: EncodingKey::from_ed_der(pkcs8.as_ref()), jwk }
    }

    pub fn p256(kid: &str) -> Self {
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &SystemRandom::new()).unwrap();
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref()).unwrap();
        // An uncompressed point: 0x04, then x and y.
        let point = pair.public_key().as_ref();
        let jwk = json!({"kty": "EC", "crv": "P-256", "kid": kid, "alg": "ES256",
            "x": URL_SAFE_NO_PAD.encode(&point[1..33]), "y": URL_SAFE_NO_PAD.encode(&point[33..65])});
        Self { kid: kid.into(), alg: Algorithm::ES256, encoding: EncodingKey::from_ec_der(pkcs8.as_ref()), jwk }
    }

    pub fn rsa(kid: &str) -> Self {
        let pair = aws_lc_rs::rsa::KeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048).unwrap();
        let pkcs8 = AsDer::<aws_lc_rs::encoding::Pkcs8V1Der>::as_der(&pair).unwrap();
        let pem = format!("-----BEGIN PRIVATE KEY-----\n{}\n-----END PRIVATE KEY-----\n", STANDARD.encode(pkcs8.as_ref()));
        let public = pair.public_key();
        let jwk = json!({"kty": "RSA", "kid": kid, "alg": "RS256",
            "n": URL_SAFE_NO_PAD.encode(public.modulus().big_endian_without_leading_zero()),
            "e": URL_SAFE_NO_PAD.encode(public.exponent().big_endian_without_leading_zero())});
        Self { kid: kid.into(), alg: Algorithm::RS256, encoding: EncodingKey::from_rsa_pem(pem.as_bytes()).unwrap(), jwk }
    }

    /// A token of `claims` signed with this key, its `kid` in the header.
    pub fn sign(&self, claims: &Value) -> String {
        let mut header = Header::new(self.alg);
        header.kid = Some(self.kid.clone());
        self.sign_with_header(header, claims)
    }

    /// A token with a header of the test's making (say, a `jku` to follow).
    pub fn sign_with_header(&self, header: Header, claims: &Value) -> String {
        jsonwebtoken::encode(&header, claims, &self.encoding).unwrap()
    }
}

#[derive(Default)]
struct Published {
    keys: Mutex<Vec<Value>>,
    cache_control: Mutex<String>,
    fetches: AtomicU32,
    down: AtomicBool,
}

/// The provider: its issuer is its own loopback address.
pub struct TestIdp {
    pub addr: SocketAddr,
    published: Arc<Published>,
}

impl TestIdp {
    pub async fn start() -> Self {
        let published = Arc::new(Published::default());
        *published.cache_control.lock().unwrap() = "max-age=300".into();
        let app = axum::Router::new().route("/jwks", axum::routing::get(jwks)).with_state(published.clone());
        let addr = crate::serve_on_loopback(app).await;
        Self { addr, published }
    }

    pub fn issuer(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn jwks_uri(&self) -> String {
        format!("http://{}/jwks", self.addr)
    }

    /// The `identity` setting of a tenant signed in by this provider.
    pub fn identity(&self, audience: &str) -> Value {
        json!({"issuer": self.issuer(), "jwks_uri": self.jwks_uri(), "audience": audience})
    }

    /// Publishes exactly these keys from now on.
    pub fn publish(&self, keys: &[&SigningKey]) {
        *self.published.keys.lock().unwrap() = keys.iter().map(|k| k.jwk.clone()).collect();
    }

    pub fn set_cache_control(&self, value: &str) {
        *self.published.cache_control.lock().unwrap() = value.into();
    }

    /// While down, the key set answers 503.
    pub fn set_down(&self, down: bool) {
        self.published.down.store(down, Ordering::SeqCst);
    }

    /// How often the key set has been fetched.
    pub fn fetches(&self) -> u32 {
        self.published.fetches.load(Ordering::SeqCst)
    }

    /// Claims for `sub` of this provider, valid for a minute.
    pub fn claims(&self, sub: &str, audience: &str, roles: &[&str]) -> Value {
        let now = chrono::Utc::now().timestamp();
        json!({"iss": self.issuer(), "aud": audience, "sub": sub, "roles": roles, "groups": ["staff"], "iat": now, "exp": now + 60})
    }
}

async fn jwks(axum::extract::State(p): axum::extract::State<Arc<Published>>) -> axum::response::Response {
    use axum::response::IntoResponse;
    p.fetches.fetch_add(1, Ordering::SeqCst);
    if p.down.load(Ordering::SeqCst) {
        return axum::http::StatusCode::SERVICE_UNAVAILABLE.into_response();
    }
    let keys = p.keys.lock().unwrap().clone();
    let cache_control = p.cache_control.lock().unwrap().clone();
    ([("cache-control", cache_control)], axum::Json(json!({"keys": keys}))).into_response()
}
