//! An identity provider for the auth tests: signing keys made at test time (RSA, EC P-256,
//! Ed25519, HMAC) with their PEM and JWK forms, and an HTTPS server on 127.0.0.1 serving a JWK
//! set that can rotate (`GET /jwks`) and RFC 7662 introspection (`POST /introspect`).

use std::{
    collections::HashMap,
    convert::Infallible,
    net::SocketAddr,
    sync::{
        atomic::{AtomicBool, AtomicUsize, Ordering},
        Arc, Mutex, OnceLock,
    },
};

use base64::{engine::general_purpose::URL_SAFE_NO_PAD, Engine as _};
use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::{body::Incoming, Request, Response, StatusCode};
use hyper_util::{
    rt::{TokioExecutor, TokioIo},
    server::conn::auto,
};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use rustls::ServerConfig;
use serde_json::{json, Value};

/// A signing key: how to sign, and how the gateway is told about it.
pub struct SigningKey {
    pub alg: Algorithm,
    pub encoding: EncodingKey,
    /// The public key as PEM (empty for HMAC).
    pub public_pem: String,
    /// The public JWK, without `kid`.
    pub jwk: Value,
}

impl SigningKey {
    /// A 2048-bit RSA key, made once per test process (generation takes a while).
    pub fn rsa(alg: Algorithm) -> SigningKey {
        use rsa::{
            pkcs1::EncodeRsaPrivateKey as _, pkcs8::EncodePublicKey as _,
            traits::PublicKeyParts as _,
        };
        static KEY: OnceLock<rsa::RsaPrivateKey> = OnceLock::new();
        let key =
            KEY.get_or_init(|| rsa::RsaPrivateKey::new(&mut rsa::rand_core::OsRng, 2048).unwrap());
        let private = key.to_pkcs1_pem(Default::default()).unwrap();
        let public = key.to_public_key();
        SigningKey {
            alg,
            encoding: EncodingKey::from_rsa_pem(private.as_bytes()).unwrap(),
            public_pem: public.to_public_key_pem(Default::default()).unwrap(),
            jwk: json!({
                "kty": "RSA",
                "n": URL_SAFE_NO_PAD.encode(public.n().to_bytes_be()),
                "e": URL_SAFE_NO_PAD.encode(public.e().to_bytes_be()),
            }),
        }
    }

    /// A new EC P-256 key (ES256).
    pub fn ec() -> SigningKey {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let point = key.public_key_raw();
        SigningKey {
            alg: Algorithm::ES256,
            encoding: EncodingKey::from_ec_pem(key.serialize_pem().as_bytes()).unwrap(),
            public_pem: key.public_key_pem(),
            jwk: json!({
                "kty": "EC", "crv": "P-256",
                "x": URL_SAFE_NO_PAD.encode(&point[1..33]),
                "y": URL_SAFE_NO_PAD.encode(&point[33..65]),
            }),
        }
    }

    /// A new Ed25519 key (EdDSA).
    pub fn ed25519() -> SigningKey {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
        SigningKey {
            alg: Algorithm::EdDSA,
            encoding: EncodingKey::from_ed_pem(key.serialize_pem().as_bytes()).unwrap(),
            public_pem: key.public_key_pem(),
            jwk: json!({"kty": "OKP", "crv": "Ed25519", "x": URL_SAFE_NO_PAD.encode(key.public_key_raw())}),
        }
    }

    pub fn hmac(secret: &[u8]) -> SigningKey {
        SigningKey {
            alg: Algorithm::HS256,
            encoding: EncodingKey::from_secret(secret),
            public_pem: String::new(),
            jwk: json!({"kty": "oct", "k": URL_SAFE_NO_PAD.encode(secret)}),
        }
    }

    /// The JWK with `kid` (and `alg` when given).
    pub fn jwk_with(&self, kid: &str, alg: Option<&str>) -> Value {
        let mut j = self.jwk.clone();
        j["kid"] = json!(kid);
        j["use"] = json!("sig");
        if let Some(a) = alg {
            j["alg"] = json!(a);
        }
        j
    }

    /// Signs `claims` with this key's algorithm, naming `kid` if given.
    pub fn sign(&self, claims: &Value, kid: Option<&str>) -> String {
        let mut h = Header::new(self.alg);
        h.kid = kid.map(String::from);
        jsonwebtoken::encode(&h, claims, &self.encoding).unwrap()
    }
}

/// A token with any header and signature, for the forgeries.
pub fn forge(header: &Value, claims: &Value, signature: &str) -> String {
    format!(
        "{}.{}.{signature}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    )
}

/// Seconds since the epoch.
pub fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

#[derive(Default)]
pub struct IdpState {
    /// The JWK set served.
    pub jwks: Mutex<Value>,
    pub jwks_fetches: AtomicUsize,
    /// Introspection answers by token; other tokens are inactive.
    pub tokens: Mutex<HashMap<String, Value>>,
    pub introspections: AtomicUsize,
    /// `Basic ...` the introspection endpoint wants.
    pub basic: Mutex<String>,
    /// Answer 500 to everything.
    pub down: AtomicBool,
}

/// The HTTPS identity provider.
pub struct Idp {
    pub addr: SocketAddr,
    pub state: Arc<IdpState>,
    task: tokio::task::JoinHandle<()>,
}

impl Idp {
    pub async fn start(tls: Arc<ServerConfig>) -> Idp {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(IdpState::default());
        *state.jwks.lock().unwrap() = json!({"keys": []});
        let s = state.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let (s, tls) = (s.clone(), tls.clone());
                tokio::spawn(async move {
                    let Ok(stream) = tokio_rustls::TlsAcceptor::from(tls).accept(stream).await
                    else {
                        return;
                    };
                    let service = hyper::service::service_fn(move |req| serve(s.clone(), req));
                    let _ = auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Idp { addr, state, task }
    }

    pub fn set_jwks(&self, keys: Vec<Value>) {
        *self.state.jwks.lock().unwrap() = json!({ "keys": keys });
    }

    pub fn fetches(&self) -> usize {
        self.state.jwks_fetches.load(Ordering::SeqCst)
    }
}

impl Drop for Idp {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn reply(status: StatusCode, body: Value) -> Result<Response<Full<Bytes>>, Infallible> {
    let mut r = Response::new(Full::new(Bytes::from(body.to_string())));
    *r.status_mut() = status;
    r.headers_mut()
        .insert("content-type", "application/json".parse().unwrap());
    Ok(r)
}

async fn serve(
    state: Arc<IdpState>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    if state.down.load(Ordering::SeqCst) {
        return reply(StatusCode::INTERNAL_SERVER_ERROR, json!({"error": "down"}));
    }
    match (req.method().as_str(), req.uri().path()) {
        ("GET", "/jwks") => {
            state.jwks_fetches.fetch_add(1, Ordering::SeqCst);
            let jwks = state.jwks.lock().unwrap().clone();
            reply(StatusCode::OK, jwks)
        }
        ("POST", "/introspect") => {
            state.introspections.fetch_add(1, Ordering::SeqCst);
            let auth = req
                .headers()
                .get("authorization")
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_string();
            if auth != *state.basic.lock().unwrap() {
                return reply(StatusCode::UNAUTHORIZED, json!({"error": "invalid_client"}));
            }
            let body = req.into_body().collect().await.unwrap().to_bytes();
            let token = String::from_utf8_lossy(&body)
                .split('&')
                .find_map(|p| p.strip_prefix("token=").map(String::from))
                .unwrap_or_default();
            let answer = state
                .tokens
                .lock()
                .unwrap()
                .get(&token)
                .cloned()
                .unwrap_or_else(|| json!({"active": false}));
            reply(StatusCode::OK, answer)
        }
        _ => reply(StatusCode::NOT_FOUND, json!({})),
    }
}
