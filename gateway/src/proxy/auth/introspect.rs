//! Opaque OAuth 2.0 tokens, checked by RFC 7662 introspection.
//!
//! The gateway POSTs `token=...` with its client credentials (HTTP Basic) and trusts only an
//! answer `{"active": true, ...}` whose exp, nbf, iss and aud pass; any failure of the
//! endpoint is a 503, never an acceptance. Active answers are cached, never past the token's
//! exp nor longer than `cache_ttl`.

use std::{sync::Arc, time::Duration};

use base64::{engine::general_purpose::STANDARD, Engine as _};
use bytes::Bytes;
use http_body_util::Full;
use hyper::{
    header::{self, HeaderValue},
    Method, Request, Uri,
};
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use serde_json::{Map, Value};
use tracing::warn;

use super::{
    cache::TokenCache,
    claims,
    config::{ClaimNames, IntrospectionConfig},
    http::{self, HttpClient, Spawner},
    Failure, Verified,
};
use crate::metrics::METRICS;

/// Largest answer read.
const MAX_ANSWER_BYTES: usize = 64 * 1024;

/// application/x-www-form-urlencoded keeps only these unescaped.
const FORM: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'*');

fn form(s: &str) -> String {
    utf8_percent_encode(s, FORM).to_string()
}

pub struct IntrospectionProvider {
    pub name: Arc<str>,
    pub config: IntrospectionConfig,
    /// Digest of the client secret, to decide on reload whether the cache can be kept.
    secret_digest: super::cache::Digest,
    uri: Uri,
    authorization: HeaderValue,
    client: HttpClient,
    spawner: Spawner,
    names: ClaimNames,
    pub cache: Arc<TokenCache>,
}

impl IntrospectionProvider {
    pub fn new(
        name: &str,
        config: &IntrospectionConfig,
        previous: Option<&IntrospectionProvider>,
        spawner: &Spawner,
    ) -> Result<IntrospectionProvider, String> {
        let uri = super::config::check_url(&config.url)?;
        let secret = match (&config.client_secret_file, &config.client_secret_env) {
            (Some(p), _) => {
                let mut s = std::fs::read_to_string(p)
                    .map_err(|e| format!("client_secret_file {}: {e}", p.display()))?;
                while s.ends_with(['\n', '\r']) {
                    s.pop();
                }
                s
            }
            (None, Some(v)) => std::env::var(v).map_err(|_| {
                format!("client_secret_env: the environment variable {v} is not set")
            })?,
            (None, None) => return Err("no client secret".into()),
        };
        if secret.is_empty() {
            return Err("the client secret is empty".into());
        }
        // RFC 6749 2.3.1: the id and secret are form-encoded before Basic encoding.
        let basic = STANDARD.encode(format!("{}:{}", form(&config.client_id), form(&secret)));
        let mut authorization = HeaderValue::from_str(&format!("Basic {basic}"))
            .map_err(|_| "the client credentials do not make a header".to_string())?;
        authorization.set_sensitive(true);
        let secret_digest = super::cache::digest(secret.as_bytes());
        let cache = match previous {
            Some(p) if p.config == *config && p.secret_digest == secret_digest => p.cache.clone(),
            _ => Arc::new(TokenCache::new(config.cache_size)),
        };
        Ok(IntrospectionProvider {
            name: name.into(),
            config: config.clone(),
            secret_digest,
            uri,
            authorization,
            client: http::client(config.ca.as_deref(), config.timeout)?,
            spawner: spawner.clone(),
            names: config.claim_names(),
            cache,
        })
    }

    /// Asks the endpoint about `token`.
    pub async fn verify(&self, token: &str, now: u64) -> Result<Verified, Failure> {
        let body = format!("token={}&token_type_hint=access_token", form(token));
        let request = Request::builder()
            .method(Method::POST)
            .uri(self.uri.clone())
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .header(header::ACCEPT, "application/json")
            .header(header::AUTHORIZATION, self.authorization.clone())
            .header(header::USER_AGENT, "gateway")
            .body(Full::new(Bytes::from(body)))
            .map_err(|_| Failure::Unavailable)?;
        let call = call(self.client.clone(), request, self.config.timeout);
        let answer = self.spawner.run(call).await.and_then(|r| r);
        let result = |r| {
            METRICS
                .auth_fetches
                .with_label_values(&[&self.name, "introspection", r])
                .inc()
        };
        let answer = match answer {
            Ok(a) => {
                result("ok");
                a
            }
            Err(error) => {
                result("error");
                warn!(provider = %self.name, url = %self.config.url, %error, "introspection failed");
                return Err(Failure::Unavailable);
            }
        };
        if answer.get("active") != Some(&Value::Bool(true)) {
            return Err(Failure::Inactive);
        }
        // Optional in an answer, but when present they must hold.
        let exp = claims::check_times(&answer, now, 0, false)?;
        claims::check_issuer(
            &answer,
            self.config
                .issuer
                .as_deref()
                .filter(|_| answer.contains_key("iss")),
        )?;
        claims::check_audience(&answer, &self.config.audiences)?;
        claims::identity(answer, &self.names, &["client_id", "username"], exp)
    }

    pub fn cache_until(&self, v: &Verified, now: u64) -> u64 {
        let ttl = now.saturating_add(self.config.cache_ttl.as_secs());
        v.expires.map_or(ttl, |e| e.min(ttl))
    }
}

async fn call(
    client: HttpClient,
    request: Request<Full<Bytes>>,
    timeout: Duration,
) -> Result<Map<String, Value>, String> {
    let body = http::send(&client, request, MAX_ANSWER_BYTES, timeout).await?;
    match serde_json::from_slice::<Value>(&body) {
        Ok(Value::Object(m)) => Ok(m),
        _ => Err("the answer is not a JSON object".into()),
    }
}
