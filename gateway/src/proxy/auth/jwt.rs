//! JWT bearer tokens: a strict parser, then verification against one provider's pinned
//! algorithms and keys.
//!
//! The parser refuses what no honest issuer sends: not three base64url parts (canonical, no
//! padding), a header or payload that is not a JSON object or repeats a member, `alg: none`,
//! `crit`, `enc`, `b64`, `zip`, a `typ` that is not a JWT. The algorithm must be one the
//! provider pins, and the key one of its kind (see `jwks`); `jwk`, `jku`, `x5u` and `x5c` in a
//! header are never used. jsonwebtoken then checks the signature and the registered claims,
//! and the same claims are checked again here from the raw JSON (numbers only for exp, nbf and
//! iat), so neither check alone decides.

use std::{collections::HashSet, fmt, sync::Arc};

use base64::{engine::general_purpose::URL_SAFE_NO_PAD, Engine as _};
use jsonwebtoken::{errors::ErrorKind, Algorithm, Validation};
use serde::de::{Deserialize, Deserializer, MapAccess, Visitor};
use serde_json::{Map, Value};

use super::{
    cache::{Digest, TokenCache},
    claims,
    config::{ClaimNames, JwtConfig},
    jwks::{self, Candidates, KeySet, Remote, RemoteSettings},
    Failure, Verified,
};

/// Longest token looked at.
pub const MAX_TOKEN_BYTES: usize = 16 * 1024;
/// Most keys a token without `kid` is tried against.
const MAX_TRIES: usize = 8;

/// A JSON object whose members are all distinct.
struct StrictObject(Map<String, Value>);

impl<'de> Deserialize<'de> for StrictObject {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = StrictObject;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut a: A) -> Result<StrictObject, A::Error> {
                let mut m = Map::new();
                while let Some((k, v)) = a.next_entry::<String, Value>()? {
                    if m.contains_key(&k) {
                        return Err(serde::de::Error::custom("a member is repeated"));
                    }
                    m.insert(k, v);
                }
                Ok(StrictObject(m))
            }
        }
        d.deserialize_map(V)
    }
}

fn b64(part: &str) -> Option<Vec<u8>> {
    // The standard engine refuses padding and non-canonical trailing bits.
    URL_SAFE_NO_PAD.decode(part).ok()
}

fn object(part: &str) -> Option<Map<String, Value>> {
    let bytes = b64(part)?;
    serde_json::from_slice::<StrictObject>(&bytes)
        .ok()
        .map(|o| o.0)
}

/// Whether a bearer token has the shape of a JWS compact serialization (so it goes to JWT
/// providers rather than introspection).
pub fn looks_like_jwt(token: &str) -> bool {
    let mut parts = token.split('.');
    let ok = |p: Option<&str>| {
        p.is_some_and(|p| {
            p.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
    };
    let (h, p, s) = (parts.next(), parts.next(), parts.next());
    parts.next().is_none()
        && h.is_some_and(|h| !h.is_empty())
        && p.is_some_and(|p| !p.is_empty())
        && ok(h)
        && ok(p)
        && ok(s)
}

/// A token whose structure has been checked, not its signature.
#[derive(Debug)]
pub struct Token<'a> {
    pub raw: &'a str,
    pub alg: Algorithm,
    pub kid: Option<String>,
    pub claims: Map<String, Value>,
}

/// Parses the structure of a compact JWS.
pub fn parse(raw: &str) -> Result<Token<'_>, Failure> {
    if raw.len() > MAX_TOKEN_BYTES {
        return Err(Failure::Malformed("the token is too long"));
    }
    let mut parts = raw.split('.');
    let (Some(h), Some(p), Some(s), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(Failure::Malformed("a JWT has three parts"));
    };
    let header = object(h).ok_or(Failure::Malformed("the header is not a JSON object"))?;
    let alg = match header.get("alg") {
        Some(Value::String(a)) if a.eq_ignore_ascii_case("none") => return Err(Failure::AlgNone),
        Some(Value::String(a)) => a.parse::<Algorithm>().map_err(|_| Failure::AlgNotAllowed)?,
        _ => return Err(Failure::Malformed("the header has no alg")),
    };
    for k in ["crit", "enc", "b64", "zip"] {
        if header.contains_key(k) {
            return Err(Failure::Malformed(
                "the header has an unsupported parameter",
            ));
        }
    }
    match header.get("typ") {
        None => {}
        Some(Value::String(t))
            if ["jwt", "at+jwt", "application/jwt", "application/at+jwt"]
                .iter()
                .any(|x| t.eq_ignore_ascii_case(x)) => {}
        Some(_) => return Err(Failure::Malformed("the token type is not JWT")),
    }
    let kid = match header.get("kid") {
        None => None,
        Some(Value::String(k)) if !k.is_empty() && k.len() <= 256 => Some(k.clone()),
        Some(_) => return Err(Failure::Malformed("the kid is not a short string")),
    };
    let claims = object(p).ok_or(Failure::Malformed("the payload is not a JSON object"))?;
    if s.is_empty() || b64(s).is_none() {
        return Err(Failure::Malformed("the signature is not base64url"));
    }
    Ok(Token {
        raw,
        alg,
        kid,
        claims,
    })
}

enum Keys {
    Static(Arc<KeySet>),
    Remote(Arc<Remote>),
}

pub struct JwtProvider {
    pub name: Arc<str>,
    /// The config it was built from, and a digest of the key material read from files, to
    /// decide on reload whether its cache can be kept.
    pub config: JwtConfig,
    pub material: Option<Digest>,
    algorithms: Vec<(Algorithm, Validation)>,
    keys: Keys,
    leeway: u64,
    names: ClaimNames,
    pub cache: Arc<TokenCache>,
    cache_ttl: u64,
}

impl JwtProvider {
    pub fn new(
        name: &str,
        config: &JwtConfig,
        previous: Option<&JwtProvider>,
        spawner: &super::http::Spawner,
    ) -> Result<JwtProvider, String> {
        super::ring_verify::install();
        let read =
            |p: &std::path::Path| std::fs::read(p).map_err(|e| format!("{}: {e}", p.display()));
        let mut material = None;
        let keys = if let Some(p) = &config.public_key_file {
            material = Some(super::cache::digest(&read(p)?));
            Keys::Static(Arc::new(KeySet {
                keys: vec![jwks::load_pem(p)?],
                by_kid: false,
            }))
        } else if let Some(p) = &config.secret_file {
            let bytes = read(p)?;
            material = Some(super::cache::digest(&bytes));
            Keys::Static(Arc::new(KeySet {
                keys: vec![jwks::secret(bytes, &p.display().to_string())?],
                by_kid: false,
            }))
        } else if let Some(v) = &config.secret_env {
            let bytes = std::env::var_os(v)
                .ok_or_else(|| format!("secret_env: the environment variable {v} is not set"))?
                .into_encoded_bytes();
            material = Some(super::cache::digest(&bytes));
            Keys::Static(Arc::new(KeySet {
                keys: vec![jwks::secret(bytes, &format!("secret_env {v}"))?],
                by_kid: false,
            }))
        } else if let Some(p) = &config.jwks_file {
            let bytes = read(p)?;
            material = Some(super::cache::digest(&bytes));
            let source = p.display().to_string();
            Keys::Static(Arc::new(
                jwks::parse_jwks(&bytes, true, &source).map_err(|e| format!("{source}: {e}"))?,
            ))
        } else if let Some(url) = &config.jwks_url {
            let settings = RemoteSettings {
                url: url.clone(),
                ca: config.jwks_ca.clone(),
                refresh: config.jwks_refresh,
                min_refresh: config.jwks_min_refresh,
                timeout: config.jwks_timeout,
            };
            match previous.map(|p| &p.keys) {
                Some(Keys::Remote(r)) if r.settings == settings => Keys::Remote(r.clone()),
                _ => Keys::Remote(Remote::start(name, settings, spawner.clone())?),
            }
        } else {
            return Err("no key source".into());
        };
        if let Keys::Static(set) = &keys {
            set.check_algorithms(&config.algorithms)?;
        }
        let algorithms = config
            .algorithms
            .iter()
            .map(|alg| (*alg, validation(*alg, config)))
            .collect();
        let cache = match previous {
            Some(p) if p.config == *config && p.material == material => p.cache.clone(),
            _ => Arc::new(TokenCache::new(config.cache_size)),
        };
        Ok(JwtProvider {
            name: name.into(),
            config: config.clone(),
            material,
            algorithms,
            keys,
            leeway: config.leeway.as_secs(),
            names: config.claim_names(),
            cache,
            cache_ttl: config.cache_ttl.as_secs(),
        })
    }

    /// Verifies `token` (already parsed) with this provider's keys and rules.
    pub async fn verify(&self, token: &Token<'_>, now: u64) -> Result<Verified, Failure> {
        let Some((_, validation)) = self.algorithms.iter().find(|(a, _)| *a == token.alg) else {
            return Err(Failure::AlgNotAllowed);
        };
        let set = match &self.keys {
            Keys::Static(set) => set.clone(),
            Keys::Remote(remote) => {
                let mut set = remote.keys();
                let unknown = |s: &Option<Arc<KeySet>>| match s {
                    None => true,
                    Some(s) => matches!(
                        s.candidates(token.alg, token.kid.as_deref()),
                        Candidates::UnknownKid
                    ),
                };
                if unknown(&set) {
                    // A new kid may mean the issuer rotated its keys: look again, no more
                    // often than the floor allows.
                    remote.refresh(false).await;
                    set = remote.keys();
                }
                set.ok_or(Failure::KeysUnavailable)?
            }
        };
        let keys = match set.candidates(token.alg, token.kid.as_deref()) {
            Candidates::Keys(k) => k,
            Candidates::UnknownKid => return Err(Failure::UnknownKid),
            Candidates::Mismatch => return Err(Failure::KeyMismatch),
        };
        let mut verified = None;
        for key in keys.iter().take(MAX_TRIES) {
            match jsonwebtoken::decode::<Map<String, Value>>(token.raw, &key.decoding, validation) {
                Ok(data) => {
                    verified = Some(data.claims);
                    break;
                }
                Err(e) if matches!(e.kind(), ErrorKind::InvalidSignature) => continue,
                Err(e) => {
                    let failure = library_failure(e.kind());
                    // After the signature, the library checks claims: name the first that
                    // fails in our order of checks, when ours see it too.
                    if claim_failure(&failure) {
                        self.check_claims(&token.claims, now)?;
                    }
                    return Err(failure);
                }
            }
        }
        let claims = verified.ok_or(Failure::BadSignature)?;
        // The library agreed; check again from the raw claims.
        if claims != token.claims {
            return Err(Failure::Malformed("the payload is ambiguous"));
        }
        let exp = self.check_claims(&claims, now)?;
        claims::identity(claims, &self.names, &[], exp)
    }

    /// The registered and required claims; the deadline (exp) if any.
    fn check_claims(&self, claims: &Map<String, Value>, now: u64) -> Result<Option<u64>, Failure> {
        let exp = claims::check_times(claims, now, self.leeway, self.config.require_exp)?;
        claims::check_issuer(claims, self.config.issuer.as_deref())?;
        claims::check_audience(claims, &self.config.audiences)?;
        claims::check_required(claims, &self.config.required_claims)?;
        Ok(exp)
    }

    /// The generation of the key set, for the token cache: 0 for keys read at load, which a
    /// reload that changes them replaces together with the cache.
    pub fn generation(&self) -> u64 {
        match &self.keys {
            Keys::Static(_) => 0,
            Keys::Remote(r) => r.generation(),
        }
    }

    /// Until when a verified token may be served from the cache.
    pub fn cache_until(&self, v: &Verified, now: u64) -> u64 {
        let ttl = now.saturating_add(self.cache_ttl);
        v.expires.map_or(ttl, |e| e.min(ttl))
    }
}

/// The library's own checks, set as ours (ours run again after it).
fn validation(alg: Algorithm, config: &JwtConfig) -> Validation {
    let mut v = Validation::new(alg);
    v.leeway = config.leeway.as_secs();
    v.validate_exp = true;
    v.validate_nbf = true;
    let mut required: HashSet<String> = HashSet::new();
    if config.require_exp {
        required.insert("exp".into());
    }
    if let Some(iss) = &config.issuer {
        v.set_issuer(&[iss]);
        required.insert("iss".into());
    }
    if config.audiences.is_empty() {
        v.validate_aud = false;
    } else {
        v.set_audience(&config.audiences);
        required.insert("aud".into());
    }
    v.required_spec_claims = required;
    v
}

fn claim_failure(f: &Failure) -> bool {
    matches!(
        f,
        Failure::Expired
            | Failure::NotYetValid
            | Failure::WrongIssuer
            | Failure::WrongAudience
            | Failure::MissingClaim(_)
            | Failure::BadClaim(_)
    )
}

fn library_failure(kind: &ErrorKind) -> Failure {
    match kind {
        ErrorKind::InvalidSignature => Failure::BadSignature,
        ErrorKind::ExpiredSignature => Failure::Expired,
        ErrorKind::ImmatureSignature => Failure::NotYetValid,
        ErrorKind::InvalidIssuer => Failure::WrongIssuer,
        ErrorKind::InvalidAudience => Failure::WrongAudience,
        ErrorKind::InvalidAlgorithm | ErrorKind::InvalidAlgorithmName => Failure::AlgNotAllowed,
        ErrorKind::MissingRequiredClaim(c) => Failure::MissingClaim(c.clone()),
        ErrorKind::InvalidClaimFormat(_) => Failure::BadClaim("exp or nbf"),
        ErrorKind::InvalidKeyFormat | ErrorKind::InvalidEcdsaKey | ErrorKind::InvalidRsaKey(_) => {
            Failure::KeyMismatch
        }
        _ => Failure::Malformed("the token could not be decoded"),
    }
}
