//! Verification keys: a PEM public key, an HMAC secret, or a JWK set from a file or an HTTPS
//! URL (fetched in the background, on an interval and when an unknown `kid` arrives, never
//! more often than a floor; the last good set is kept when the endpoint fails).
//!
//! Each key knows its type, so an algorithm is only ever used with a key of its own kind:
//! HS* with a secret, RS*/PS* with RSA, ES256 with P-256, ES384 with P-384, EdDSA with
//! Ed25519. A JWK whose own `alg`, `use` or `key_ops` says otherwise is not used for signatures.

use std::{
    path::Path,
    sync::{Arc, Weak},
    time::{Duration, Instant},
};

use arc_swap::ArcSwapOption;
use base64::{engine::general_purpose::URL_SAFE_NO_PAD, Engine as _};
use bytes::Bytes;
use http_body_util::Full;
use hyper::{header, Method, Request};
use jsonwebtoken::{Algorithm, DecodingKey};
use serde_json::Value;
use tracing::{info, warn};

use super::http::{self, HttpClient, Spawner};
use crate::metrics::METRICS;

/// Smallest RSA modulus accepted, in bits.
const MIN_RSA_BITS: usize = 2048;
/// Shortest HMAC secret accepted, in bytes (RFC 7518 3.2: at least the hash size).
pub const MIN_SECRET_BYTES: usize = 32;
/// Most keys used from one set.
const MAX_KEYS: usize = 64;
/// Largest JWKS document read.
const MAX_JWKS_BYTES: usize = 512 * 1024;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyKind {
    Rsa,
    P256,
    P384,
    Ed25519,
    Hmac,
}

impl KeyKind {
    /// Whether `alg` is used with keys of this kind.
    pub fn fits(self, alg: Algorithm) -> bool {
        use Algorithm::*;
        matches!(
            (self, alg),
            (KeyKind::Rsa, RS256 | RS384 | RS512 | PS256 | PS384 | PS512)
                | (KeyKind::P256, ES256)
                | (KeyKind::P384, ES384)
                | (KeyKind::Ed25519, EdDSA)
                | (KeyKind::Hmac, HS256 | HS384 | HS512)
        )
    }

    pub fn name(self) -> &'static str {
        match self {
            KeyKind::Rsa => "an RSA key",
            KeyKind::P256 => "an EC P-256 key",
            KeyKind::P384 => "an EC P-384 key",
            KeyKind::Ed25519 => "an Ed25519 key",
            KeyKind::Hmac => "an HMAC secret",
        }
    }
}

pub struct Key {
    pub kid: Option<String>,
    /// The key's own `alg`, when its JWK names one.
    pub alg: Option<Algorithm>,
    pub kind: KeyKind,
    pub decoding: DecodingKey,
}

impl Key {
    fn usable_with(&self, alg: Algorithm) -> bool {
        self.kind.fits(alg) && self.alg.is_none_or(|a| a == alg)
    }
}

/// The keys a provider verifies with.
pub struct KeySet {
    pub keys: Vec<Key>,
    /// JWK sets select keys by `kid`; a single configured key serves any token.
    pub by_kid: bool,
}

/// The keys a token may be checked against.
pub enum Candidates<'a> {
    Keys(Vec<&'a Key>),
    /// The token names a `kid` the set does not have.
    UnknownKid,
    /// The set has the `kid`, or keys, but none usable with the token's algorithm.
    Mismatch,
}

impl KeySet {
    pub fn candidates(&self, alg: Algorithm, kid: Option<&str>) -> Candidates<'_> {
        let named: Vec<&Key> = match (self.by_kid, kid) {
            (true, Some(kid)) => self
                .keys
                .iter()
                .filter(|k| k.kid.as_deref() == Some(kid))
                .collect(),
            _ => self.keys.iter().collect(),
        };
        if named.is_empty() {
            return Candidates::UnknownKid;
        }
        let usable: Vec<&Key> = named.into_iter().filter(|k| k.usable_with(alg)).collect();
        if usable.is_empty() {
            Candidates::Mismatch
        } else {
            Candidates::Keys(usable)
        }
    }

    /// Checks that every pinned algorithm has a key of its kind.
    pub fn check_algorithms(&self, algorithms: &[Algorithm]) -> Result<(), String> {
        for alg in algorithms {
            if !self.keys.iter().any(|k| k.usable_with(*alg)) {
                let kinds: Vec<&str> = self.keys.iter().map(|k| k.kind.name()).collect();
                return Err(format!(
                    "algorithm {alg:?} has no key of its type (the keys are: {})",
                    kinds.join(", ")
                ));
            }
        }
        Ok(())
    }
}

fn decode_b64(v: &Value, what: &str) -> Result<Vec<u8>, String> {
    let s = v
        .as_str()
        .ok_or_else(|| format!("`{what}` must be a base64url string"))?;
    URL_SAFE_NO_PAD
        .decode(s.trim_end_matches('='))
        .map_err(|_| format!("`{what}` is not base64url"))
}

fn bits(bytes: &[u8]) -> usize {
    match bytes.iter().position(|b| *b != 0) {
        Some(i) => (bytes.len() - i) * 8 - bytes[i].leading_zeros() as usize,
        None => 0,
    }
}

/// One JWK, or why it is not used.
fn parse_jwk(v: &Value, allow_secrets: bool) -> Result<Key, String> {
    let o = v.as_object().ok_or("a key is not a JSON object")?;
    let text = |k: &str| -> Result<Option<&str>, String> {
        match o.get(k) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(_) => Err(format!("`{k}` must be a string")),
        }
    };
    if let Some(u) = text("use")? {
        if u != "sig" {
            return Err(format!("its use is `{u}`, not `sig`"));
        }
    }
    if let Some(ops) = o.get("key_ops") {
        let ok = ops
            .as_array()
            .is_some_and(|a| a.iter().any(|x| x.as_str() == Some("verify")));
        if !ok {
            return Err("its key_ops do not include `verify`".into());
        }
    }
    let alg = match text("alg")? {
        None => None,
        Some(a) => Some(
            a.parse::<Algorithm>()
                .map_err(|_| format!("its alg `{a}` is not a signature algorithm"))?,
        ),
    };
    let kid = text("kid")?.map(str::to_string);
    let field = |k: &str| o.get(k).ok_or_else(|| format!("`{k}` is missing"));
    let (kind, decoding) = match text("kty")?.unwrap_or_default() {
        "RSA" => {
            let n = decode_b64(field("n")?, "n")?;
            let e = decode_b64(field("e")?, "e")?;
            if bits(&n) < MIN_RSA_BITS {
                return Err(format!("its RSA modulus is under {MIN_RSA_BITS} bits"));
            }
            (KeyKind::Rsa, DecodingKey::from_rsa_raw_components(&n, &e))
        }
        "EC" => {
            let (kind, len) = match text("crv")? {
                Some("P-256") => (KeyKind::P256, 32),
                Some("P-384") => (KeyKind::P384, 48),
                c => return Err(format!("curve {c:?} is not supported")),
            };
            let x = decode_b64(field("x")?, "x")?;
            let y = decode_b64(field("y")?, "y")?;
            if x.len() != len || y.len() != len {
                return Err("its coordinates have the wrong length".into());
            }
            let mut point = vec![4u8];
            point.extend_from_slice(&x);
            point.extend_from_slice(&y);
            (kind, DecodingKey::from_ec_der(&point))
        }
        "OKP" => {
            if text("crv")? != Some("Ed25519") {
                return Err("only the Ed25519 curve is supported for OKP keys".into());
            }
            let x = decode_b64(field("x")?, "x")?;
            if x.len() != 32 {
                return Err("its Ed25519 key is not 32 bytes".into());
            }
            (KeyKind::Ed25519, DecodingKey::from_ed_der(&x))
        }
        "oct" if allow_secrets => {
            let k = decode_b64(field("k")?, "k")?;
            if k.len() < MIN_SECRET_BYTES {
                return Err(format!("its secret is under {MIN_SECRET_BYTES} bytes"));
            }
            (KeyKind::Hmac, DecodingKey::from_secret(&k))
        }
        "oct" => return Err("secret (oct) keys are not taken from a URL".into()),
        k => return Err(format!("key type `{k}` is not supported")),
    };
    if let Some(a) = alg {
        if !kind.fits(a) {
            return Err(format!("its alg {a:?} does not fit {}", kind.name()));
        }
    }
    Ok(Key {
        kid,
        alg,
        kind,
        decoding,
    })
}

/// A JWK set document; keys that cannot be used for signatures are left out with a warning.
pub fn parse_jwks(bytes: &[u8], allow_secrets: bool, source: &str) -> Result<KeySet, String> {
    let doc: Value =
        serde_json::from_slice(bytes).map_err(|e| format!("not a JSON document: {e}"))?;
    let keys = doc
        .get("keys")
        .and_then(Value::as_array)
        .ok_or("not a JWK set: no `keys` array")?;
    let mut out = Vec::new();
    for (i, k) in keys.iter().enumerate() {
        if out.len() == MAX_KEYS {
            warn!(%source, "JWK set has more than {MAX_KEYS} usable keys; the rest are ignored");
            break;
        }
        match parse_jwk(k, allow_secrets) {
            Ok(key) => out.push(key),
            Err(e) => warn!(%source, key = i, error = %e, "JWK not used"),
        }
    }
    if out.is_empty() {
        return Err("the JWK set has no usable signature key".into());
    }
    Ok(KeySet {
        keys: out,
        by_kid: true,
    })
}

/// The object identifiers a public key file may hold.
const OID_RSA: &str = "1.2.840.113549.1.1.1";
const OID_EC: &str = "1.2.840.10045.2.1";
const OID_P256: &str = "1.2.840.10045.3.1.7";
const OID_P384: &str = "1.3.132.0.34";
const OID_ED25519: &str = "1.3.101.112";

/// A PEM public key (`PUBLIC KEY` or `RSA PUBLIC KEY`); private keys are refused.
pub fn load_pem(path: &Path) -> Result<Key, String> {
    let name = path.display();
    let bytes = std::fs::read(path).map_err(|e| format!("{name}: {e}"))?;
    let text = std::str::from_utf8(&bytes).map_err(|_| format!("{name}: not a PEM file"))?;
    let label = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("-----BEGIN "))
        .and_then(|l| l.strip_suffix("-----"))
        .ok_or_else(|| format!("{name}: not a PEM file"))?;
    let (kind, decoding) = match label {
        "RSA PUBLIC KEY" => (KeyKind::Rsa, DecodingKey::from_rsa_pem(&bytes)),
        "PUBLIC KEY" => {
            let body: String = text
                .lines()
                .skip_while(|l| !l.starts_with("-----BEGIN"))
                .skip(1)
                .take_while(|l| !l.starts_with("-----END"))
                .collect();
            let der = base64::engine::general_purpose::STANDARD
                .decode(body.trim())
                .map_err(|_| format!("{name}: bad base64 in the PEM"))?;
            let (_, spki) = <x509_parser::x509::SubjectPublicKeyInfo as x509_parser::prelude::FromDer<_>>::from_der(&der)
                .map_err(|e| format!("{name}: not a public key: {e}"))?;
            let oid = spki.algorithm.algorithm.to_id_string();
            let curve = spki
                .algorithm
                .parameters
                .as_ref()
                .and_then(|p| p.as_oid().ok())
                .map(|o| o.to_id_string());
            match (oid.as_str(), curve.as_deref()) {
                (OID_RSA, _) => {
                    if let Ok(x509_parser::public_key::PublicKey::RSA(rsa)) = spki.parsed() {
                        if bits(rsa.modulus) < MIN_RSA_BITS {
                            return Err(format!(
                                "{name}: the RSA key is under {MIN_RSA_BITS} bits"
                            ));
                        }
                    }
                    (KeyKind::Rsa, DecodingKey::from_rsa_pem(&bytes))
                }
                (OID_EC, Some(OID_P256)) => (KeyKind::P256, DecodingKey::from_ec_pem(&bytes)),
                (OID_EC, Some(OID_P384)) => (KeyKind::P384, DecodingKey::from_ec_pem(&bytes)),
                (OID_ED25519, _) => (KeyKind::Ed25519, DecodingKey::from_ed_pem(&bytes)),
                _ => {
                    return Err(format!(
                        "{name}: unsupported key type (RSA, EC P-256/P-384 or Ed25519 public keys)"
                    ))
                }
            }
        }
        l if l.contains("PRIVATE") => {
            return Err(format!(
                "{name}: is a private key; give the gateway the public key only"
            ))
        }
        l => return Err(format!("{name}: a `{l}` is not a public key")),
    };
    let decoding = decoding.map_err(|e| format!("{name}: bad key: {e}"))?;
    Ok(Key {
        kid: None,
        alg: None,
        kind,
        decoding,
    })
}

/// An HMAC secret; a trailing newline of a file is not part of it.
pub fn secret(bytes: Vec<u8>, what: &str) -> Result<Key, String> {
    let mut b = bytes;
    while b.last().is_some_and(|c| *c == b'\n' || *c == b'\r') {
        b.pop();
    }
    if b.len() < MIN_SECRET_BYTES {
        return Err(format!(
            "{what}: the HMAC secret must be at least {MIN_SECRET_BYTES} bytes"
        ));
    }
    Ok(Key {
        kid: None,
        alg: None,
        kind: KeyKind::Hmac,
        decoding: DecodingKey::from_secret(&b),
    })
}

/// Settings of a remote set; a reload with the same ones keeps the set and its fetcher.
#[derive(Clone, Debug, PartialEq)]
pub struct RemoteSettings {
    pub url: String,
    pub ca: Option<std::path::PathBuf>,
    pub refresh: Duration,
    pub min_refresh: Duration,
    pub timeout: Duration,
}

/// A JWK set fetched from a URL.
pub struct Remote {
    pub settings: RemoteSettings,
    provider: String,
    uri: hyper::Uri,
    client: HttpClient,
    spawner: Spawner,
    set: ArcSwapOption<KeySet>,
    /// Counts the fetched sets that differ from the one before (see [`Remote::generation`]).
    generation: std::sync::atomic::AtomicU64,
    /// When the last fetch started, and a digest of the last set fetched; held during a fetch,
    /// so concurrent asks wait for it.
    gate: tokio::sync::Mutex<(Option<Instant>, Option<super::cache::Digest>)>,
}

impl Remote {
    /// Makes the fetcher and starts its background refresh (the first fetch right away; the
    /// daemon does not wait for it).
    pub fn start(
        provider: &str,
        settings: RemoteSettings,
        spawner: Spawner,
    ) -> Result<Arc<Remote>, String> {
        let uri = super::config::check_url(&settings.url)?;
        let client = http::client(settings.ca.as_deref(), settings.timeout)?;
        let remote = Arc::new(Remote {
            settings,
            provider: provider.to_string(),
            uri,
            client,
            spawner: spawner.clone(),
            set: ArcSwapOption::empty(),
            generation: std::sync::atomic::AtomicU64::new(0),
            gate: tokio::sync::Mutex::new((None, None)),
        });
        spawner.spawn(refresh_loop(Arc::downgrade(&remote)));
        Ok(remote)
    }

    pub fn keys(&self) -> Option<Arc<KeySet>> {
        self.set.load_full()
    }

    /// Changes (before the new set is in use) whenever a fetch brings a set other than the
    /// last one: tokens verified with an older set are not taken from the token cache, so a
    /// key the issuer withdrew stops working at once, not when its tokens expire.
    pub fn generation(&self) -> u64 {
        self.generation.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Fetches the set again unless one was fetched less than the floor ago; `force` (the
    /// periodic refresh) ignores the floor. Callers look at `keys()` afterwards either way.
    pub async fn refresh(&self, force: bool) -> bool {
        let mut gate = self.gate.lock().await;
        let (last, digest) = &mut *gate;
        if !force && last.is_some_and(|t| t.elapsed() < self.settings.min_refresh) {
            return false;
        }
        *last = Some(Instant::now());
        let fetch = fetch(self.client.clone(), self.uri.clone(), self.settings.timeout);
        let result = self.spawner.run(fetch).await.and_then(|r| r);
        let label = |r| {
            METRICS
                .auth_fetches
                .with_label_values(&[&self.provider, "jwks", r])
                .inc()
        };
        let parsed = result.and_then(|b| {
            let set = parse_jwks(&b, false, &self.settings.url)?;
            Ok((set, super::cache::digest(&b)))
        });
        match parsed {
            Ok((set, fetched)) => {
                label("ok");
                let kids: Vec<&str> = set.keys.iter().filter_map(|k| k.kid.as_deref()).collect();
                info!(provider = %self.provider, keys = set.keys.len(), kids = ?kids, "JWK set fetched");
                if digest.is_some_and(|d| d != fetched) {
                    // Before the store: a token verified with the new set is never cached
                    // under the old generation.
                    self.generation
                        .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
                }
                *digest = Some(fetched);
                self.set.store(Some(Arc::new(set)));
                true
            }
            Err(error) => {
                label("error");
                warn!(provider = %self.provider, url = %self.settings.url, %error,
                    "JWK set fetch failed; keeping the last good set");
                false
            }
        }
    }
}

async fn fetch(client: HttpClient, uri: hyper::Uri, timeout: Duration) -> Result<Bytes, String> {
    let request = Request::builder()
        .method(Method::GET)
        .uri(uri)
        .header(header::ACCEPT, "application/json, application/jwk-set+json")
        .header(header::USER_AGENT, "gateway")
        .body(Full::new(Bytes::new()))
        .map_err(|e| e.to_string())?;
    http::send(&client, request, MAX_JWKS_BYTES, timeout).await
}

/// Fetches at once, then every `refresh` (or sooner after a failure), while the remote lives.
async fn refresh_loop(remote: Weak<Remote>) {
    loop {
        let (ok, refresh, min) = {
            let Some(r) = remote.upgrade() else { return };
            let ok = r.refresh(true).await;
            (ok, r.settings.refresh, r.settings.min_refresh)
        };
        let wait = if ok {
            refresh
        } else {
            refresh.min(min.max(Duration::from_secs(5)))
        };
        tokio::time::sleep(wait).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b64(b: &[u8]) -> String {
        URL_SAFE_NO_PAD.encode(b)
    }

    #[test]
    fn jwks_keys_are_filtered_by_use_ops_alg_and_type() {
        let secret = b64(&[7u8; 32]);
        let doc = serde_json::json!({"keys": [
            {"kty": "oct", "kid": "s", "k": secret, "alg": "HS256"},
            {"kty": "oct", "kid": "enc", "k": secret, "use": "enc"},
            {"kty": "oct", "kid": "ops", "k": secret, "key_ops": ["encrypt"]},
            {"kty": "oct", "kid": "wrongalg", "k": secret, "alg": "RS256"},
            {"kty": "oct", "kid": "short", "k": b64(&[1u8; 8])},
            {"kty": "EC", "kid": "ec", "crv": "P-521", "x": "AA", "y": "AA"},
            {"kty": "RSA", "kid": "small", "n": b64(&[0xff; 128]), "e": "AQAB"},
            {"kty": "XYZ"},
            "not an object"
        ]});
        let set = parse_jwks(doc.to_string().as_bytes(), true, "test").unwrap();
        let kids: Vec<_> = set.keys.iter().map(|k| k.kid.clone().unwrap()).collect();
        assert_eq!(kids, ["s"]);
        assert!(matches!(
            set.candidates(Algorithm::HS256, Some("s")),
            Candidates::Keys(k) if k.len() == 1
        ));
        // The key says HS256: HS512 may not use it.
        assert!(matches!(
            set.candidates(Algorithm::HS512, Some("s")),
            Candidates::Mismatch
        ));
        assert!(matches!(
            set.candidates(Algorithm::RS256, Some("s")),
            Candidates::Mismatch
        ));
        assert!(matches!(
            set.candidates(Algorithm::HS256, Some("nope")),
            Candidates::UnknownKid
        ));
        // From a URL, secrets are never taken.
        assert!(parse_jwks(doc.to_string().as_bytes(), false, "test").is_err());
        assert!(parse_jwks(b"{}", true, "t").is_err());
        assert!(parse_jwks(b"not json", true, "t").is_err());
    }

    #[test]
    fn pem_files_are_typed_and_private_keys_refused() {
        let dir = tempfile::tempdir().unwrap();
        let ec = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let p = dir.path().join("ec.pem");
        std::fs::write(&p, ec.public_key_pem()).unwrap();
        assert_eq!(load_pem(&p).unwrap().kind, KeyKind::P256);
        let ec384 = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384).unwrap();
        std::fs::write(&p, ec384.public_key_pem()).unwrap();
        assert_eq!(load_pem(&p).unwrap().kind, KeyKind::P384);
        let ed = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
        std::fs::write(&p, ed.public_key_pem()).unwrap();
        assert_eq!(load_pem(&p).unwrap().kind, KeyKind::Ed25519);
        std::fs::write(&p, ec.serialize_pem()).unwrap();
        assert!(load_pem(&p).err().unwrap().contains("private key"));
        std::fs::write(&p, "hello").unwrap();
        assert!(load_pem(&p).err().unwrap().contains("not a PEM"));
    }

    #[test]
    fn short_secrets_are_refused() {
        assert!(secret(b"short\n".to_vec(), "x").is_err());
        let k = secret([b'a'; 32].iter().copied().chain(*b"\n").collect(), "x").unwrap();
        assert_eq!(k.kind, KeyKind::Hmac);
    }
}
