//! Authentication and authorization: JWT bearer tokens, API keys and opaque OAuth 2.0 tokens
//! checked by introspection; then the route's scopes, roles, subjects and groups.
//!
//! Per request ([`RoutePolicy::check`]):
//!
//! ```text
//!  remove the headers this route sets from claims     always, so identity cannot be spoofed
//!  credentials: one Authorization: Bearer, or an API key (header or query); two is malformed
//!    none      -> required: 401 auth:missing; optional: through, anonymous
//!    bearer    -> cache (SHA-256 of the token)  hit: no parsing, no signature
//!                 JWT-shaped: the route's jwt providers; else its introspection providers
//!    API key   -> SHA-256, then lookup
//!  authorize: subjects, scopes (all), roles (any), groups (any)     403
//!  set the claim headers; strip Authorization when configured
//! ```
//!
//! Every 401 carries a `WWW-Authenticate: Bearer` challenge (RFC 6750), a 403 the
//! `insufficient_scope` one. Rejection rules are `auth:<reason>`; tokens are never echoed.

mod apikey;
mod cache;
mod claims;
pub mod config;
mod http;
mod introspect;
mod jwks;
mod jwt;
mod ring_verify;

use std::{
    collections::HashMap,
    sync::Arc,
    time::{SystemTime, UNIX_EPOCH},
};

use hyper::{
    header::{self, HeaderName, HeaderValue},
    http::request::Parts,
    StatusCode,
};
use prometheus::IntCounter;
use serde_json::{Map, Value};

pub use self::apikey::hash_key;
pub use self::config::{AuthConfig, AuthMode, ProviderConfig, RouteAuthConfig};
use self::{
    apikey::{ApiKeyProvider, Presented},
    cache::digest,
    http::Spawner,
    introspect::IntrospectionProvider,
    jwt::JwtProvider,
};
use super::reject::Rejection;
use crate::metrics::METRICS;

/// Status of `error="invalid_request"` answers (malformed or duplicated credentials). RFC 6750
/// 3.1 suggests 400; the gateway answers 401 so that every credential problem is one status.
const INVALID_REQUEST_STATUS: StatusCode = StatusCode::UNAUTHORIZED;

/// Who made a request: the checked credential (`subject`, `api_key`, `scopes`... through
/// `Deref`), shared with the token cache rather than copied.
#[derive(Clone, Debug)]
pub struct Identity {
    pub verified: Arc<Verified>,
    /// Name of the provider that vouched for it.
    pub provider: Arc<str>,
}

impl std::ops::Deref for Identity {
    type Target = Verified;

    fn deref(&self) -> &Verified {
        &self.verified
    }
}

/// A checked credential: what authorization and the claim headers need. Cached whole.
#[derive(Debug, Default, PartialEq)]
pub struct Verified {
    pub subject: String,
    pub api_key: Option<String>,
    pub scopes: Vec<String>,
    pub roles: Vec<String>,
    pub groups: Vec<String>,
    pub claims: Map<String, Value>,
    /// The token's exp (unix seconds), if it has one.
    pub expires: Option<u64>,
}

/// Why a credential was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Failure {
    Malformed(&'static str),
    AlgNone,
    AlgNotAllowed,
    UnknownKid,
    /// The key named, or every key, is not of the token's algorithm.
    KeyMismatch,
    BadSignature,
    Expired,
    NotYetValid,
    IssuedInFuture,
    WrongIssuer,
    WrongAudience,
    MissingClaim(String),
    BadClaim(&'static str),
    /// An introspection answer `active: false`.
    Inactive,
    BadApiKey,
    /// No provider of the route takes this kind of credential.
    Unsupported(&'static str),
    /// The JWK set was never fetched.
    KeysUnavailable,
    /// The introspection endpoint failed.
    Unavailable,
}

impl Failure {
    fn rule(&self) -> &'static str {
        match self {
            Failure::Malformed(_) => "auth:malformed",
            Failure::AlgNone => "auth:alg_none",
            Failure::AlgNotAllowed => "auth:alg_not_allowed",
            Failure::UnknownKid => "auth:unknown_kid",
            Failure::KeyMismatch => "auth:key_mismatch",
            Failure::BadSignature => "auth:bad_signature",
            Failure::Expired => "auth:expired",
            Failure::NotYetValid => "auth:not_yet_valid",
            Failure::IssuedInFuture => "auth:issued_in_future",
            Failure::WrongIssuer => "auth:wrong_issuer",
            Failure::WrongAudience => "auth:wrong_audience",
            Failure::MissingClaim(_) => "auth:missing_claim",
            Failure::BadClaim(_) => "auth:bad_claim",
            Failure::Inactive => "auth:inactive",
            Failure::BadApiKey => "auth:bad_api_key",
            Failure::Unsupported(_) => "auth:unsupported_credential",
            Failure::KeysUnavailable => "auth:keys_unavailable",
            Failure::Unavailable => "auth:introspection_unavailable",
        }
    }

    fn description(&self) -> String {
        match self {
            Failure::Malformed(m) => format!("the token is malformed: {m}"),
            Failure::AlgNone => "unsigned tokens (alg none) are not accepted".into(),
            Failure::AlgNotAllowed => "the token's algorithm is not accepted".into(),
            Failure::UnknownKid => "the token's key id is unknown".into(),
            Failure::KeyMismatch => "the token's key does not fit its algorithm".into(),
            Failure::BadSignature => "the token's signature is invalid".into(),
            Failure::Expired => "the token has expired".into(),
            Failure::NotYetValid => "the token is not valid yet".into(),
            Failure::IssuedInFuture => "the token is issued in the future".into(),
            Failure::WrongIssuer => "the token's issuer is not accepted".into(),
            Failure::WrongAudience => "the token is not meant for this audience".into(),
            Failure::MissingClaim(c) => format!("the token lacks the {} claim", printable(c)),
            Failure::BadClaim(c) => format!("the token's {c} claim has the wrong type"),
            Failure::Inactive => "the token is not active".into(),
            Failure::BadApiKey => "the API key is not valid".into(),
            Failure::Unsupported(what) => format!("this route does not accept {what}"),
            Failure::KeysUnavailable => "the token issuer's keys are unavailable".into(),
            Failure::Unavailable => "the token could not be checked now".into(),
        }
    }

    fn rejection(&self, realm: &str) -> Rejection {
        let description = self.description();
        match self {
            Failure::KeysUnavailable | Failure::Unavailable => Rejection::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "auth_unavailable",
                self.rule(),
                description,
            )
            .with_header(header::RETRY_AFTER, "5"),
            _ => challenge(
                StatusCode::UNAUTHORIZED,
                "invalid_token",
                self.rule(),
                realm,
                Some("invalid_token"),
                &description,
            ),
        }
    }
}

/// Claim names in messages: short and printable.
fn printable(s: &str) -> String {
    s.chars()
        .filter(|c| c.is_ascii_graphic())
        .take(40)
        .collect()
}

/// A refusal with its `WWW-Authenticate: Bearer` challenge.
fn challenge(
    status: StatusCode,
    code: &'static str,
    rule: &str,
    realm: &str,
    error: Option<&str>,
    description: &str,
) -> Rejection {
    let mut value = format!("Bearer realm=\"{realm}\"");
    if let Some(e) = error {
        let d: String = description
            .chars()
            .filter(|c| (' '..='~').contains(c) && !matches!(c, '"' | '\\'))
            .collect();
        value.push_str(&format!(", error=\"{e}\", error_description=\"{d}\""));
    }
    Rejection::new(status, code, rule, description).with_header(header::WWW_AUTHENTICATE, &value)
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

enum Provider {
    Jwt(Arc<JwtProvider>),
    ApiKey(Arc<ApiKeyProvider>),
    Introspection(Arc<IntrospectionProvider>),
}

/// Counters of one provider, resolved once.
struct Counters {
    ok: IntCounter,
    cached: IntCounter,
}

impl Counters {
    fn new(name: &str) -> Arc<Counters> {
        let c = |r: &str| METRICS.auth.with_label_values(&[name, r]);
        Arc::new(Counters {
            ok: c("ok"),
            cached: c("cached"),
        })
    }
}

/// The providers of one config generation, with their key sets and caches.
pub struct Auth {
    realm: Arc<str>,
    providers: HashMap<String, (Provider, Arc<Counters>)>,
}

impl Auth {
    /// Builds the providers; `previous` is the generation being replaced, whose caches and
    /// fetched key sets may be carried over.
    pub fn new(config: &AuthConfig, previous: Option<&Auth>) -> Result<Auth, String> {
        let spawner = Spawner::current();
        let mut providers = HashMap::new();
        for (name, p) in &config.providers {
            let before = previous.and_then(|a| a.providers.get(name)).map(|p| &p.0);
            let build = || -> Result<Provider, String> {
                Ok(match p {
                    ProviderConfig::Jwt(c) => {
                        let prev = match before {
                            Some(Provider::Jwt(j)) => Some(&**j),
                            _ => None,
                        };
                        Provider::Jwt(Arc::new(JwtProvider::new(name, c, prev, &spawner)?))
                    }
                    ProviderConfig::ApiKey(c) => {
                        Provider::ApiKey(Arc::new(ApiKeyProvider::new(name, c)?))
                    }
                    ProviderConfig::Introspection(c) => {
                        let prev = match before {
                            Some(Provider::Introspection(i)) => Some(&**i),
                            _ => None,
                        };
                        Provider::Introspection(Arc::new(IntrospectionProvider::new(
                            name, c, prev, &spawner,
                        )?))
                    }
                })
            };
            let provider = build().map_err(|e| format!("providers.{name}: {e}"))?;
            providers.insert(name.clone(), (provider, Counters::new(name)));
        }
        Ok(Auth {
            realm: config.realm.as_str().into(),
            providers,
        })
    }

    /// The compiled policy of one route.
    pub fn policy(&self, config: &RouteAuthConfig) -> Result<RoutePolicy, String> {
        let mut policy = RoutePolicy {
            mode: config.mode,
            realm: self.realm.clone(),
            jwt: Vec::new(),
            introspection: Vec::new(),
            api_keys: Vec::new(),
            scopes: config.scopes.clone(),
            roles: config.roles.clone(),
            subjects: config.subjects.clone(),
            groups: config.groups.clone(),
            forward: Vec::new(),
            strip_authorization: config.strip_authorization,
            strip_api_key: config.strip_api_key,
        };
        for (claim, h) in &config.forward_claims {
            let name = HeaderName::from_bytes(h.as_bytes())
                .map_err(|_| format!("auth.forward_claims: `{h}` is not a header name"))?;
            policy.forward.push((claim.clone(), name));
        }
        if config.mode == AuthMode::Off {
            return Ok(policy);
        }
        for name in &config.providers {
            let (p, counters) = self
                .providers
                .get(name)
                .ok_or_else(|| format!("auth.providers: `{name}` is not a provider"))?;
            match p {
                Provider::Jwt(j) => policy.jwt.push((j.clone(), counters.clone())),
                Provider::ApiKey(a) => policy.api_keys.push((a.clone(), counters.clone())),
                Provider::Introspection(i) => {
                    policy.introspection.push((i.clone(), counters.clone()))
                }
            }
        }
        Ok(policy)
    }
}

/// One route's authentication and authorization.
pub struct RoutePolicy {
    mode: AuthMode,
    realm: Arc<str>,
    jwt: Vec<(Arc<JwtProvider>, Arc<Counters>)>,
    introspection: Vec<(Arc<IntrospectionProvider>, Arc<Counters>)>,
    api_keys: Vec<(Arc<ApiKeyProvider>, Arc<Counters>)>,
    scopes: Vec<String>,
    roles: Vec<String>,
    subjects: Vec<String>,
    groups: Vec<String>,
    /// Claim -> header.
    forward: Vec<(String, HeaderName)>,
    strip_authorization: bool,
    strip_api_key: bool,
}

/// The credential a request carries.
enum Credential<'h> {
    None,
    Bearer(&'h str),
    ApiKey(Vec<u8>),
}

/// Whether every byte is one of an RFC 7235 token68 (before its trailing `=`s). Branch-free
/// per byte, so that the compiler checks many bytes at once: tokens run to hundreds of bytes.
fn is_token68(bytes: &[u8]) -> bool {
    let valid = |b: u8| {
        let lower = b | 0x20;
        (lower.wrapping_sub(b'a') < 26)
            | (b.wrapping_sub(b'0') < 10)
            | (b == b'-')
            | (b == b'.')
            | (b == b'_')
            | (b == b'~')
            | (b == b'+')
            | (b == b'/')
    };
    // Without a branch per byte, 32 at a time: the compiler makes vector code of it.
    let mut chunks = bytes.chunks_exact(32);
    let chunks_ok = chunks
        .by_ref()
        .all(|c| c.iter().fold(true, |ok, &b| ok & valid(b)));
    chunks_ok && chunks.remainder().iter().all(|&b| valid(b))
}

/// `bytes` without `b` at its end, and at its start too when `both`.
fn trim_byte(mut bytes: &[u8], b: u8, both: bool) -> &[u8] {
    while let [rest @ .., last] = bytes {
        if *last != b {
            break;
        }
        bytes = rest;
    }
    while let [first, rest @ ..] = bytes {
        if !both || *first != b {
            break;
        }
        bytes = rest;
    }
    bytes
}

impl RoutePolicy {
    /// Authenticates and authorizes the request. Always removes, first, the headers this
    /// route sets from claims (so a client cannot spoof them); on success sets them from the
    /// identity, and strips Authorization when configured.
    /// `Ok(None)`: no credentials, and the route does not require any.
    pub async fn check(&self, parts: &mut Parts) -> Result<Option<Identity>, Rejection> {
        for (_, name) in &self.forward {
            parts.headers.remove(name);
        }
        if self.mode == AuthMode::Off {
            self.strip(parts);
            return Ok(None);
        }
        let credential = self.credential(parts)?;
        let (verified, provider) = match credential {
            Credential::None => {
                if self.mode == AuthMode::Optional {
                    self.strip(parts);
                    return Ok(None);
                }
                return Err(self.missing());
            }
            Credential::Bearer(token) => self.bearer(token).await?,
            Credential::ApiKey(key) => self.api_key(&key)?,
        };
        self.authorize(&verified)?;
        for (claim, name) in &self.forward {
            if let Some(v) = verified.claims.get(claim).and_then(header_value) {
                parts.headers.insert(name.clone(), v);
            }
        }
        self.strip(parts);
        Ok(Some(Identity { verified, provider }))
    }

    fn strip(&self, parts: &mut Parts) {
        if self.strip_authorization {
            parts.headers.remove(header::AUTHORIZATION);
        }
        if self.strip_api_key {
            for (p, _) in &self.api_keys {
                p.strip(parts);
            }
        }
    }

    fn missing(&self) -> Rejection {
        challenge(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "auth:missing",
            &self.realm,
            None,
            "credentials are required",
        )
    }

    fn invalid_request(&self, description: &str) -> Rejection {
        challenge(
            INVALID_REQUEST_STATUS,
            "invalid_request",
            "auth:invalid_request",
            &self.realm,
            Some("invalid_request"),
            description,
        )
    }

    /// The one credential of the request, or why the request is malformed.
    fn credential<'h>(&self, parts: &'h Parts) -> Result<Credential<'h>, Rejection> {
        let mut auth = parts.headers.get_all(header::AUTHORIZATION).iter();
        let first = auth.next();
        if auth.next().is_some() {
            return Err(self.invalid_request("more than one Authorization header"));
        }
        let bearer = match first {
            None => None,
            Some(v) => self.parse_authorization(v)?,
        };
        let mut key = None;
        for (p, _) in &self.api_keys {
            match p.presented(parts) {
                Presented::None => {}
                Presented::Malformed(m) => return Err(self.invalid_request(m)),
                Presented::Key(k) => {
                    if key.as_ref().is_some_and(|prev| *prev != k) {
                        return Err(self.invalid_request("more than one API key"));
                    }
                    key = Some(k);
                }
            }
        }
        match (bearer, key) {
            (Some(_), Some(_)) => Err(self.invalid_request("more than one credential")),
            (Some(b), None) => Ok(Credential::Bearer(b)),
            (None, Some(k)) => Ok(Credential::ApiKey(k)),
            (None, None) => Ok(Credential::None),
        }
    }

    /// `Bearer <token68>`; another scheme is not a credential of ours. The token is borrowed
    /// from the header.
    fn parse_authorization<'h>(&self, v: &'h HeaderValue) -> Result<Option<&'h str>, Rejection> {
        let malformed = || self.invalid_request("the Authorization header is malformed");
        let bytes = v.as_bytes();
        let (scheme, rest) = match bytes.iter().position(|&b| b == b' ') {
            Some(sp) => (&bytes[..sp], &bytes[sp + 1..]),
            None => (bytes, &[][..]),
        };
        if !scheme.eq_ignore_ascii_case(b"bearer") {
            // Not ours; still a well-formed header, as for any other value.
            if v.to_str().is_err()
                || scheme.is_empty()
                || !scheme
                    .iter()
                    .all(|&b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
            {
                return Err(malformed());
            }
            return Ok(None);
        }
        let token = trim_byte(rest, b' ', true);
        let body = trim_byte(token, b'=', false);
        // token68 bytes are ASCII: the check is also the one `to_str` would make.
        if body.is_empty() || !is_token68(body) {
            return Err(malformed());
        }
        if token.len() > jwt::MAX_TOKEN_BYTES {
            return Err(self.invalid_request("the token is too long"));
        }
        std::str::from_utf8(token)
            .map(Some)
            .map_err(|_| malformed())
    }

    async fn bearer(&self, token: &str) -> Result<(Arc<Verified>, Arc<str>), Rejection> {
        let now = now();
        let key = digest(token.as_bytes());
        for (p, counters) in &self.jwt {
            if let Some(v) = p.cache.get(&key, now, p.generation()) {
                counters.cached.inc();
                return Ok((v, p.name.clone()));
            }
        }
        for (p, counters) in &self.introspection {
            if let Some(v) = p.cache.get(&key, now, 0) {
                counters.cached.inc();
                return Ok((v, p.name.clone()));
            }
        }
        let jwt_shaped = jwt::looks_like_jwt(token);
        let fail = |f: Failure, provider: &str| {
            METRICS
                .auth
                .with_label_values(&[provider, f.rule().trim_start_matches("auth:")])
                .inc();
            f.rejection(&self.realm)
        };
        if jwt_shaped && !self.jwt.is_empty() {
            let parsed = jwt::parse(token).map_err(|f| fail(f, &self.jwt[0].0.name))?;
            let mut first = None;
            for (p, counters) in &self.jwt {
                // Read before verifying: a set fetched meanwhile leaves the entry stale.
                let generation = p.generation();
                // Boxed, as below: verifying may fetch keys, and that state is large; inline,
                // every request would carry and move it, cached tokens too.
                match Box::pin(p.verify(&parsed, now)).await {
                    Ok(v) => {
                        counters.ok.inc();
                        let v = Arc::new(v);
                        let until = p.cache_until(&v, now);
                        p.cache.insert(key, until, v.clone(), now, generation);
                        return Ok((v, p.name.clone()));
                    }
                    Err(f) => {
                        // The issuer's own provider explains best why its token failed.
                        let own = matches!(&p.config.issuer, Some(i)
                            if parsed.claims.get("iss").and_then(Value::as_str) == Some(i));
                        if first.is_none() || own {
                            first = Some((f, p.name.clone()));
                        }
                    }
                }
            }
            let (f, name) = first.expect("the route has a jwt provider");
            return Err(fail(f, &name));
        }
        if self.introspection.is_empty() {
            let f = if self.jwt.is_empty() {
                Failure::Unsupported("bearer tokens")
            } else {
                Failure::Malformed("not a JWT")
            };
            return Err(fail(f, "none"));
        }
        let mut first = None;
        for (p, counters) in &self.introspection {
            match Box::pin(p.verify(token, now)).await {
                Ok(v) => {
                    counters.ok.inc();
                    let v = Arc::new(v);
                    p.cache
                        .insert(key, p.cache_until(&v, now), v.clone(), now, 0);
                    return Ok((v, p.name.clone()));
                }
                Err(f) => {
                    if first.is_none() {
                        first = Some((f, p.name.clone()));
                    }
                }
            }
        }
        let (f, name) = first.expect("the route has an introspection provider");
        Err(fail(f, &name))
    }

    fn api_key(&self, key: &[u8]) -> Result<(Arc<Verified>, Arc<str>), Rejection> {
        for (p, counters) in &self.api_keys {
            if let Some(v) = p.lookup(key) {
                counters.ok.inc();
                return Ok((v, p.name.clone()));
            }
        }
        let name = self.api_keys.first().map_or("none", |(p, _)| &p.name);
        METRICS.auth.with_label_values(&[name, "bad_api_key"]).inc();
        Err(Failure::BadApiKey.rejection(&self.realm))
    }

    fn authorize(&self, v: &Verified) -> Result<(), Rejection> {
        let forbid = |code, rule: &str, description: &str, scope: Option<&str>| {
            let mut r = challenge(
                StatusCode::FORBIDDEN,
                code,
                rule,
                &self.realm,
                Some("insufficient_scope"),
                description,
            );
            if let Some(s) = scope {
                // RFC 6750 3: the scope needed, in the same challenge.
                let h = r.headers.remove(header::WWW_AUTHENTICATE);
                if let Some(h) = h.as_ref().and_then(|h| h.to_str().ok()) {
                    r = r.with_header(header::WWW_AUTHENTICATE, &format!("{h}, scope=\"{s}\""));
                }
            }
            r
        };
        if !self.subjects.is_empty() && !self.subjects.contains(&v.subject) {
            return Err(forbid(
                "forbidden",
                "auth:forbidden_subject",
                "this identity may not use this route",
                None,
            ));
        }
        if self.scopes.iter().any(|s| !v.scopes.contains(s)) {
            return Err(forbid(
                "insufficient_scope",
                "auth:insufficient_scope",
                "the token lacks a scope this route needs",
                Some(&self.scopes.join(" ")),
            ));
        }
        if !self.roles.is_empty() && !self.roles.iter().any(|r| v.roles.contains(r)) {
            return Err(forbid(
                "forbidden",
                "auth:forbidden_role",
                "the identity has none of the roles this route needs",
                None,
            ));
        }
        if !self.groups.is_empty() && !self.groups.iter().any(|g| v.groups.contains(g)) {
            return Err(forbid(
                "forbidden",
                "auth:forbidden_group",
                "the identity is in none of the groups this route needs",
                None,
            ));
        }
        Ok(())
    }
}

/// A claim as a header value: strings as they are, numbers and booleans printed, arrays of
/// those joined with commas; anything with a control character (or an object) is dropped.
fn header_value(v: &Value) -> Option<HeaderValue> {
    fn scalar(v: &Value) -> Option<String> {
        match v {
            Value::String(s) => Some(s.clone()),
            Value::Number(n) => Some(n.to_string()),
            Value::Bool(b) => Some(b.to_string()),
            _ => None,
        }
    }
    let text = match v {
        Value::Array(a) => a.iter().map(scalar).collect::<Option<Vec<_>>>()?.join(","),
        v => scalar(v)?,
    };
    if text.chars().any(char::is_control) || text.len() > 4096 {
        return None;
    }
    HeaderValue::from_str(&text).ok()
}

#[cfg(test)]
mod tests;
