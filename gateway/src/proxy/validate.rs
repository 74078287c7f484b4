//! Request validation: who may call a route (IP allow and deny lists), and what a request
//! must look like (method, headers, content type, query, body size, JSON Schema).
//!
//! SKELETON: the types and signatures the pipeline in `proxy/mod.rs` calls. To be filled in.

use std::{net::IpAddr, path::Path};

use hyper::{header::HeaderMap, http::request::Parts};
use ipnet::IpNet;
use serde::Deserialize;

use super::reject::Rejection;

/// `[routes.validate]`.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ValidateConfig {
    /// Client networks allowed; empty: any.
    pub allow_ips: Vec<IpNet>,
    /// Client networks refused (checked after `allow_ips`).
    pub deny_ips: Vec<IpNet>,
}

impl ValidateConfig {
    pub fn validate(&self) -> Result<(), (Vec<String>, String)> {
        Ok(())
    }

    pub fn resolve_paths(&mut self, _base: &Path) {}
}

/// The client's address: the socket peer, or, when the peer is a trusted proxy, the
/// right-most address in X-Forwarded-For that is not a trusted proxy.
pub fn client_ip(peer: IpAddr, _headers: &HeaderMap, _trusted: &[IpNet]) -> IpAddr {
    peer.to_canonical()
}

/// One route's validation.
pub struct Validator {}

impl Validator {
    pub fn new(_config: &ValidateConfig) -> Result<Validator, String> {
        Ok(Validator {})
    }

    pub fn check_access(&self, _client: IpAddr) -> Result<(), Rejection> {
        Ok(())
    }

    pub fn check_head(&self, _parts: &Parts) -> Result<(), Rejection> {
        Ok(())
    }

    /// A body limit stricter than `proxy.max_body_bytes`, if any.
    pub fn max_body(&self) -> Option<u64> {
        None
    }

    /// Whether the body should be read and given to [`Validator::check_body`].
    pub fn wants_body(&self, _parts: &Parts) -> bool {
        false
    }

    pub fn check_body(&self, _parts: &Parts, _body: &[u8]) -> Result<(), Rejection> {
        Ok(())
    }
}
