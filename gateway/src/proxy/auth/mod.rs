//! Authentication and authorization: JWT bearer tokens, API keys and opaque OAuth 2.0 tokens
//! checked by introspection; then the route's scopes, roles, subjects and groups.
//!
//! SKELETON: the types and signatures the pipeline in `proxy/mod.rs` calls. To be filled in.

use std::{collections::BTreeMap, path::Path, sync::Arc};

use hyper::http::request::Parts;
use serde::Deserialize;

use super::reject::Rejection;

/// `[auth]`: the identity providers routes may use, by name.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    pub providers: BTreeMap<String, toml::Value>,
}

impl AuthConfig {
    /// Semantic checks; on error the key path below `auth` and what is wrong.
    pub fn validate(&self) -> Result<(), (Vec<String>, String)> {
        Ok(())
    }

    /// Makes relative file paths relative to `base`, the config file's directory.
    pub fn resolve_paths(&mut self, _base: &Path) {}
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
}

impl RouteAuthConfig {
    /// Checks against the providers; on error the key path below `routes[i].auth`.
    pub fn validate(&self, _auth: &AuthConfig) -> Result<(), (Vec<String>, String)> {
        Ok(())
    }
}

/// Who made a request.
#[derive(Clone, Debug)]
pub struct Identity {
    /// `sub` of a token, or the id of an API key.
    pub subject: String,
    /// Name of the provider that vouched for it.
    pub provider: Arc<str>,
    /// The API key's id, when the credential was an API key.
    pub api_key: Option<String>,
    pub scopes: Vec<String>,
}

/// The providers of one config generation, with their key sets and caches.
pub struct Auth {}

impl Auth {
    /// Builds the providers; `previous` is the generation being replaced, whose caches and
    /// fetched key sets may be carried over.
    pub fn new(_config: &AuthConfig, _previous: Option<&Auth>) -> Result<Auth, String> {
        Ok(Auth {})
    }

    /// The compiled policy of one route.
    pub fn policy(&self, config: &RouteAuthConfig) -> Result<RoutePolicy, String> {
        Ok(RoutePolicy { mode: config.mode })
    }
}

/// One route's authentication and authorization.
pub struct RoutePolicy {
    mode: AuthMode,
}

impl RoutePolicy {
    /// Authenticates and authorizes the request. Always removes, first, the headers this
    /// route sets from claims (so a client cannot spoof them); on success sets them from the
    /// identity, and strips Authorization when configured.
    /// `Ok(None)`: no credentials, and the route does not require any.
    pub async fn check(&self, _parts: &mut Parts) -> Result<Option<Identity>, Rejection> {
        let _ = self.mode;
        Ok(None)
    }
}
