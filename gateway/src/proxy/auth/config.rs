//! `[auth]` and `[routes.auth]`: the config tables and their semantic checks.

use std::{
    collections::{BTreeMap, HashSet},
    path::{Path, PathBuf},
    time::Duration,
};

use hyper::header::HeaderName;
use jsonwebtoken::Algorithm;
use serde::Deserialize;

use crate::config::duration;

/// Error of a check: the key path (below the table checked) and what is wrong.
pub type Invalid = (Vec<String>, String);

fn at(keys: &[&str], message: impl Into<String>) -> Invalid {
    (keys.iter().map(|k| k.to_string()).collect(), message.into())
}

/// `[auth]`: the identity providers routes may use, by name.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// The realm of WWW-Authenticate challenges.
    pub realm: String,
    pub providers: BTreeMap<String, ProviderConfig>,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            realm: "gateway".into(),
            providers: BTreeMap::new(),
        }
    }
}

/// `[auth.providers.NAME]`, by its `type`.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ProviderConfig {
    Jwt(JwtConfig),
    ApiKey(ApiKeyConfig),
    Introspection(IntrospectionConfig),
}

/// Where a provider finds the subject, scopes, roles and groups in claims.
#[derive(Clone, Debug, PartialEq)]
pub struct ClaimNames {
    /// The claim whose (string) value is the subject.
    pub subject_claim: String,
    /// Scopes: absent, `scope` (space-separated) then `scp` (string or array).
    pub scope_claim: Option<String>,
    pub roles_claim: String,
    pub groups_claim: String,
}

macro_rules! claim_names {
    ($t:ty) => {
        impl $t {
            pub fn claim_names(&self) -> ClaimNames {
                ClaimNames {
                    subject_claim: self.subject_claim.clone(),
                    scope_claim: self.scope_claim.clone(),
                    roles_claim: self.roles_claim.clone(),
                    groups_claim: self.groups_claim.clone(),
                }
            }
        }
    };
}
claim_names!(JwtConfig);
claim_names!(IntrospectionConfig);

/// `type = "jwt"`: signed JWT bearer tokens.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct JwtConfig {
    /// The accepted algorithms; the token's `alg` must be one (never taken from the token).
    pub algorithms: Vec<Algorithm>,
    /// The required `iss`.
    pub issuer: Option<String>,
    /// `aud` must contain one of these; empty: `aud` is not checked.
    pub audiences: Vec<String>,
    /// Key sources: exactly one.
    pub public_key_file: Option<PathBuf>,
    pub secret_file: Option<PathBuf>,
    pub secret_env: Option<String>,
    pub jwks_file: Option<PathBuf>,
    pub jwks_url: Option<String>,
    /// CA bundle for `jwks_url`; absent: the system's.
    pub jwks_ca: Option<PathBuf>,
    #[serde(deserialize_with = "duration")]
    pub jwks_refresh: Duration,
    /// Floor between two fetches (an unknown `kid` asks for one).
    #[serde(deserialize_with = "duration")]
    pub jwks_min_refresh: Duration,
    #[serde(deserialize_with = "duration")]
    pub jwks_timeout: Duration,
    /// Clock skew allowed on exp, nbf and iat.
    #[serde(deserialize_with = "duration")]
    pub leeway: Duration,
    pub require_exp: bool,
    /// Claims that must be present (and not null).
    pub required_claims: Vec<String>,
    /// The claim whose (string) value is the subject.
    pub subject_claim: String,
    /// Scopes: absent, `scope` (space-separated) then `scp` (string or array).
    pub scope_claim: Option<String>,
    pub roles_claim: String,
    pub groups_claim: String,
    /// Verified tokens kept (0: no cache).
    pub cache_size: usize,
    /// Longest a verified token is kept (never past its exp).
    #[serde(deserialize_with = "duration")]
    pub cache_ttl: Duration,
}

impl Default for JwtConfig {
    fn default() -> Self {
        JwtConfig {
            algorithms: Vec::new(),
            issuer: None,
            audiences: Vec::new(),
            public_key_file: None,
            secret_file: None,
            secret_env: None,
            jwks_file: None,
            jwks_url: None,
            jwks_ca: None,
            jwks_refresh: Duration::from_secs(300),
            jwks_min_refresh: Duration::from_secs(10),
            jwks_timeout: Duration::from_secs(5),
            leeway: Duration::from_secs(30),
            require_exp: true,
            required_claims: Vec::new(),
            subject_claim: "sub".into(),
            scope_claim: None,
            roles_claim: "roles".into(),
            groups_claim: "groups".into(),
            cache_size: 10_000,
            cache_ttl: Duration::from_secs(300),
        }
    }
}

/// `type = "api_key"`: keys stored as SHA-256 digests.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ApiKeyConfig {
    /// The request header carrying the key.
    pub header: String,
    /// A query parameter carrying the key, when allowed.
    pub query: Option<String>,
    pub keys: Vec<ApiKeyEntry>,
    /// A TOML file of `[[keys]]` entries like `keys`.
    pub keys_file: Option<PathBuf>,
}

impl Default for ApiKeyConfig {
    fn default() -> Self {
        ApiKeyConfig {
            header: "x-api-key".into(),
            query: None,
            keys: Vec::new(),
            keys_file: None,
        }
    }
}

/// One API key.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ApiKeyEntry {
    /// The subject of requests made with the key.
    pub id: String,
    /// SHA-256 of the key, hex (`gateway hash-key` prints it).
    pub sha256: String,
    #[serde(default)]
    pub scopes: Vec<String>,
    #[serde(default)]
    pub roles: Vec<String>,
    #[serde(default)]
    pub groups: Vec<String>,
}

/// A keys file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiKeysFile {
    #[serde(default)]
    pub keys: Vec<ApiKeyEntry>,
}

/// `type = "introspection"`: opaque tokens checked by RFC 7662 introspection.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct IntrospectionConfig {
    /// The endpoint: https, or http to a loopback address.
    pub url: String,
    /// CA bundle for `url`; absent: the system's.
    pub ca: Option<PathBuf>,
    pub client_id: String,
    pub client_secret_file: Option<PathBuf>,
    pub client_secret_env: Option<String>,
    #[serde(deserialize_with = "duration")]
    pub timeout: Duration,
    /// The required `iss` of the answer, when it has one.
    pub issuer: Option<String>,
    /// The answer's `aud` must contain one of these; empty: not checked.
    pub audiences: Vec<String>,
    /// The claim whose (string) value is the subject.
    pub subject_claim: String,
    /// Scopes: absent, `scope` (space-separated) then `scp` (string or array).
    pub scope_claim: Option<String>,
    pub roles_claim: String,
    pub groups_claim: String,
    pub cache_size: usize,
    /// Longest an answer is kept (never past the token's exp).
    #[serde(deserialize_with = "duration")]
    pub cache_ttl: Duration,
}

impl Default for IntrospectionConfig {
    fn default() -> Self {
        IntrospectionConfig {
            url: String::new(),
            ca: None,
            client_id: String::new(),
            client_secret_file: None,
            client_secret_env: None,
            timeout: Duration::from_secs(3),
            issuer: None,
            audiences: Vec::new(),
            subject_claim: "sub".into(),
            scope_claim: None,
            roles_claim: "roles".into(),
            groups_claim: "groups".into(),
            cache_size: 10_000,
            cache_ttl: Duration::from_secs(60),
        }
    }
}

/// Whether a route needs an identity.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum AuthMode {
    /// No authentication; the identity headers the gateway sets are still removed.
    Off,
    /// Credentials are checked when present (bad ones are refused); none is fine.
    Optional,
    /// Credentials are needed.
    #[default]
    Required,
}

/// `[routes.auth]`.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RouteAuthConfig {
    pub mode: AuthMode,
    /// Providers (names under `[auth.providers]`) whose credentials the route accepts.
    pub providers: Vec<String>,
    /// Scopes the identity must all have.
    pub scopes: Vec<String>,
    /// Roles of which the identity must have at least one.
    pub roles: Vec<String>,
    /// Subjects allowed; empty: any.
    pub subjects: Vec<String>,
    /// Groups of which the identity must be in at least one; empty: any.
    pub groups: Vec<String>,
    /// Claim name -> request header set for the upstream.
    pub forward_claims: BTreeMap<String, String>,
    /// Remove the Authorization header before forwarding.
    pub strip_authorization: bool,
    /// Remove the API key (the header and the query parameter that the route's API-key
    /// providers read) before forwarding, so that the upstream and its logs never see it.
    pub strip_api_key: bool,
}

/// Headers a claim may not be forwarded in: framing, routing and credentials.
const RESERVED_HEADERS: &[&str] = &[
    "authorization",
    "proxy-authorization",
    "cookie",
    "host",
    "content-length",
    "content-type",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "te",
    "trailer",
    "upgrade",
    "x-request-id",
    "x-forwarded-for",
    "x-forwarded-host",
    "x-forwarded-proto",
    "forwarded",
];

fn bad_text(s: &str) -> bool {
    s.is_empty() || s.chars().any(|c| c.is_control())
}

fn check_names(keys: &[&str], list: &[String], what: &str) -> Result<(), Invalid> {
    for v in list {
        if bad_text(v) || v.contains(' ') {
            return Err(at(
                keys,
                format!("`{v}` is not a valid {what} (empty, space or control character)"),
            ));
        }
    }
    Ok(())
}

fn duration_range(key: &str, d: Duration, min: Duration, max: Duration) -> Result<(), Invalid> {
    if d < min || d > max {
        return Err(at(
            &[key],
            format!(
                "must be between {} and {}",
                humantime::format_duration(min),
                humantime::format_duration(max)
            ),
        ));
    }
    Ok(())
}

/// `https://...`, or `http://` to a loopback address; on error what is wrong.
pub fn check_url(url: &str) -> Result<hyper::Uri, String> {
    let uri: hyper::Uri = url
        .parse()
        .map_err(|e| format!("`{url}` is not a URL: {e}"))?;
    let host = uri
        .host()
        .ok_or_else(|| format!("`{url}` has no host"))?
        .trim_start_matches('[')
        .trim_end_matches(']');
    match uri.scheme_str() {
        Some("https") => Ok(uri),
        Some("http") => {
            let loopback = host.eq_ignore_ascii_case("localhost")
                || host
                    .parse::<std::net::IpAddr>()
                    .is_ok_and(|ip| ip.is_loopback());
            if loopback {
                Ok(uri)
            } else {
                Err(format!(
                    "`{url}`: plain http is allowed only to a loopback address; use https"
                ))
            }
        }
        _ => Err(format!("`{url}` must be an https:// URL")),
    }
}

impl AuthConfig {
    /// Semantic checks; on error the key path below `auth` and what is wrong.
    pub fn validate(&self) -> Result<(), Invalid> {
        if bad_text(&self.realm) || self.realm.contains(['"', '\\']) {
            return Err(at(
                &["realm"],
                "must be non-empty, without quotes, backslashes or control characters",
            ));
        }
        for (name, p) in &self.providers {
            if bad_text(name) || name.contains([' ', '"', ',']) {
                return Err(at(
                    &["providers", name],
                    "a provider name must be non-empty, without spaces, quotes or commas",
                ));
            }
            let r = match p {
                ProviderConfig::Jwt(j) => j.validate(),
                ProviderConfig::ApiKey(a) => a.validate(),
                ProviderConfig::Introspection(i) => i.validate(),
            };
            r.map_err(|(mut k, m)| {
                k.splice(0..0, ["providers".to_string(), name.clone()]);
                (k, m)
            })?;
        }
        Ok(())
    }

    /// Makes relative file paths relative to `base`, the config file's directory.
    pub fn resolve_paths(&mut self, base: &Path) {
        let fix = |p: &mut Option<PathBuf>| {
            if let Some(p) = p.as_mut() {
                if p.is_relative() {
                    *p = base.join(&*p);
                }
            }
        };
        for p in self.providers.values_mut() {
            match p {
                ProviderConfig::Jwt(j) => {
                    for f in [
                        &mut j.public_key_file,
                        &mut j.secret_file,
                        &mut j.jwks_file,
                        &mut j.jwks_ca,
                    ] {
                        fix(f);
                    }
                }
                ProviderConfig::ApiKey(a) => fix(&mut a.keys_file),
                ProviderConfig::Introspection(i) => {
                    fix(&mut i.ca);
                    fix(&mut i.client_secret_file);
                }
            }
        }
    }
}

impl ClaimNames {
    fn validate(&self) -> Result<(), Invalid> {
        for (k, v) in [
            ("subject_claim", Some(&self.subject_claim)),
            ("scope_claim", self.scope_claim.as_ref()),
            ("roles_claim", Some(&self.roles_claim)),
            ("groups_claim", Some(&self.groups_claim)),
        ] {
            if v.is_some_and(|v| bad_text(v)) {
                return Err(at(&[k], "must be a claim name"));
            }
        }
        Ok(())
    }
}

impl JwtConfig {
    /// The key source, named by its key.
    pub fn key_source(&self) -> Result<&'static str, Invalid> {
        let set: Vec<&'static str> = [
            ("public_key_file", self.public_key_file.is_some()),
            ("secret_file", self.secret_file.is_some()),
            ("secret_env", self.secret_env.is_some()),
            ("jwks_file", self.jwks_file.is_some()),
            ("jwks_url", self.jwks_url.is_some()),
        ]
        .into_iter()
        .filter_map(|(k, on)| on.then_some(k))
        .collect();
        match set[..] {
            [one] => Ok(one),
            [] => Err(at(
                &["public_key_file"],
                "a jwt provider needs one key source: public_key_file, secret_file, secret_env, \
                 jwks_file or jwks_url",
            )),
            _ => Err(at(
                &[set[1]],
                format!("only one key source is allowed, got {}", set.join(", ")),
            )),
        }
    }

    fn validate(&self) -> Result<(), Invalid> {
        if self.algorithms.is_empty() {
            return Err(at(
                &["algorithms"],
                "must name the accepted algorithms, e.g. [\"RS256\"]",
            ));
        }
        let source = self.key_source()?;
        let hmac = self
            .algorithms
            .iter()
            .filter(|a| a.family() == jsonwebtoken::AlgorithmFamily::Hmac)
            .count();
        match source {
            "secret_file" | "secret_env" if hmac != self.algorithms.len() => {
                return Err(at(
                    &["algorithms"],
                    format!("a {source} holds an HMAC secret: only HS256, HS384 and HS512 fit"),
                ));
            }
            "public_key_file" | "jwks_url" if hmac > 0 => {
                return Err(at(
                    &["algorithms"],
                    format!(
                        "HS256/384/512 need a shared secret (secret_file or secret_env), not a \
                         {source}"
                    ),
                ));
            }
            _ => {}
        }
        if let Some(v) = &self.secret_env {
            if v.is_empty() || v.contains(['=', '\0']) {
                return Err(at(&["secret_env"], "must be an environment variable name"));
            }
        }
        if let Some(u) = &self.jwks_url {
            check_url(u).map_err(|e| at(&["jwks_url"], e))?;
        } else if self.jwks_ca.is_some() {
            return Err(at(&["jwks_ca"], "is only used with jwks_url"));
        }
        if self.issuer.as_ref().is_some_and(|i| bad_text(i)) {
            return Err(at(&["issuer"], "must not be empty"));
        }
        for a in &self.audiences {
            if bad_text(a) {
                return Err(at(&["audiences"], "an audience must not be empty"));
            }
        }
        for c in &self.required_claims {
            if bad_text(c) {
                return Err(at(&["required_claims"], "a claim name must not be empty"));
            }
        }
        let s = Duration::from_secs;
        duration_range("leeway", self.leeway, Duration::ZERO, s(600))?;
        duration_range("jwks_refresh", self.jwks_refresh, s(1), s(7 * 86400))?;
        duration_range(
            "jwks_min_refresh",
            self.jwks_min_refresh,
            Duration::from_millis(100),
            self.jwks_refresh,
        )?;
        duration_range(
            "jwks_timeout",
            self.jwks_timeout,
            Duration::from_millis(100),
            s(60),
        )?;
        duration_range("cache_ttl", self.cache_ttl, s(1), s(86400))?;
        if self.cache_size > 10_000_000 {
            return Err(at(&["cache_size"], "must be at most 10000000"));
        }
        self.claim_names().validate()
    }
}

impl ApiKeyConfig {
    fn validate(&self) -> Result<(), Invalid> {
        if HeaderName::from_bytes(self.header.as_bytes()).is_err()
            || self.header.eq_ignore_ascii_case("authorization")
        {
            return Err(at(
                &["header"],
                format!("`{}` is not a usable header name", self.header),
            ));
        }
        if let Some(q) = &self.query {
            if q.is_empty()
                || !q
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
            {
                return Err(at(
                    &["query"],
                    "must be a parameter name of letters, digits, `-`, `_` or `.`",
                ));
            }
        }
        if self.keys.is_empty() && self.keys_file.is_none() {
            return Err(at(
                &["keys"],
                "an api_key provider needs keys or a keys_file",
            ));
        }
        check_keys(&self.keys)
            .map_err(|(i, k, m)| (vec!["keys".to_string(), i.to_string(), k.to_string()], m))
    }
}

/// Checks API key entries; on error the index, the key and what is wrong.
pub fn check_keys(keys: &[ApiKeyEntry]) -> Result<(), (usize, &'static str, String)> {
    let mut ids = HashSet::new();
    let mut digests = HashSet::new();
    for (i, k) in keys.iter().enumerate() {
        if bad_text(&k.id) || !ids.insert(k.id.as_str()) {
            return Err((i, "id", format!("`{}` is empty or not unique", k.id)));
        }
        match super::apikey::parse_digest(&k.sha256) {
            Some(d) if digests.insert(d) => {}
            Some(_) => return Err((i, "sha256", "the same key is listed twice".into())),
            None => {
                return Err((
                    i,
                    "sha256",
                    "must be 64 hex digits: the SHA-256 of the key (see `gateway hash-key`)".into(),
                ))
            }
        }
        for (what, list) in [
            ("scopes", &k.scopes),
            ("roles", &k.roles),
            ("groups", &k.groups),
        ] {
            if list.iter().any(|v| bad_text(v) || v.contains(' ')) {
                return Err((i, what, format!("{what} must be non-empty, without spaces")));
            }
        }
    }
    Ok(())
}

impl IntrospectionConfig {
    fn validate(&self) -> Result<(), Invalid> {
        if self.url.is_empty() {
            return Err(at(&["url"], "the introspection endpoint is required"));
        }
        check_url(&self.url).map_err(|e| at(&["url"], e))?;
        if bad_text(&self.client_id) || self.client_id.contains(':') {
            return Err(at(
                &["client_id"],
                "is required (the gateway's client id at the endpoint), without `:`",
            ));
        }
        match (&self.client_secret_file, &self.client_secret_env) {
            (Some(_), Some(_)) => {
                return Err(at(
                    &["client_secret_env"],
                    "give client_secret_file or client_secret_env, not both",
                ))
            }
            (None, None) => {
                return Err(at(
                    &["client_secret_file"],
                    "the client secret is required: client_secret_file or client_secret_env",
                ))
            }
            _ => {}
        }
        let s = Duration::from_secs;
        duration_range("timeout", self.timeout, Duration::from_millis(100), s(60))?;
        duration_range("cache_ttl", self.cache_ttl, s(1), s(86400))?;
        if self.cache_size > 10_000_000 {
            return Err(at(&["cache_size"], "must be at most 10000000"));
        }
        self.claim_names().validate()
    }
}

impl RouteAuthConfig {
    /// Checks against the providers; on error the key path below `routes[i].auth`.
    pub fn validate(&self, auth: &AuthConfig) -> Result<(), Invalid> {
        if self.mode != AuthMode::Off && self.providers.is_empty() {
            return Err(at(
                &["providers"],
                "name the providers (under [auth.providers]) whose credentials the route accepts",
            ));
        }
        let mut seen = HashSet::new();
        for p in &self.providers {
            if !auth.providers.contains_key(p) {
                return Err(at(
                    &["providers"],
                    format!("`{p}` is not a provider under [auth.providers]"),
                ));
            }
            if !seen.insert(p) {
                return Err(at(&["providers"], format!("`{p}` is listed twice")));
            }
        }
        check_names(&["scopes"], &self.scopes, "scope")?;
        check_names(&["roles"], &self.roles, "role")?;
        check_names(&["groups"], &self.groups, "group")?;
        if self.subjects.iter().any(|s| bad_text(s)) {
            return Err(at(&["subjects"], "a subject must not be empty"));
        }
        let mut headers = HashSet::new();
        for (claim, header) in &self.forward_claims {
            let keys = ["forward_claims", claim.as_str()];
            if bad_text(claim) {
                return Err(at(&keys, "a claim name must not be empty"));
            }
            let name = HeaderName::from_bytes(header.as_bytes())
                .map_err(|_| at(&keys, format!("`{header}` is not a header name")))?;
            if RESERVED_HEADERS.contains(&name.as_str()) {
                return Err(at(
                    &keys,
                    format!("`{header}` is a header the gateway or HTTP itself manages"),
                ));
            }
            if !headers.insert(name) {
                return Err(at(&keys, format!("`{header}` receives two claims")));
            }
        }
        Ok(())
    }
}
