//! Payload inspection: decode and normalise once, then match every rule at once.
//!
//! SKELETON: the types and signatures the pipeline in `proxy/mod.rs` calls. To be filled in.

use std::sync::Arc;

use hyper::http::request::Parts;
use serde::Deserialize;

/// What happens when a rule matches.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum InspectMode {
    #[default]
    Off,
    /// Record the finding in the audit log and let the request through.
    Log,
    /// Refuse the request with 403.
    Block,
}

/// `[inspect]` (the default for every route) and `[routes.inspect]`.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct InspectConfig {
    pub mode: InspectMode,
    /// Rule ids (or classes) not to apply.
    pub disable: Vec<String>,
}

impl InspectConfig {
    pub fn validate(&self) -> Result<(), (Vec<String>, String)> {
        Ok(())
    }
}

/// A rule that matched.
#[derive(Clone, Debug)]
pub struct Finding {
    /// Stable id, e.g. `sqli-001`.
    pub rule: &'static str,
    /// `sqli`, `xss`, `traversal`, `cmdi`, `null-byte`.
    pub class: &'static str,
    /// Where: `path`, `query`, `header:NAME`, `body`.
    pub part: String,
}

/// The compiled rule set; one per config generation, shared by the routes.
pub struct Inspector {}

impl Inspector {
    pub fn new() -> Inspector {
        Inspector {}
    }
}

impl Default for Inspector {
    fn default() -> Self {
        Inspector::new()
    }
}

/// One route's inspection.
pub struct RouteInspect {
    mode: InspectMode,
    _inspector: Arc<Inspector>,
}

impl RouteInspect {
    pub fn new(inspector: &Arc<Inspector>, config: &InspectConfig) -> Result<RouteInspect, String> {
        Ok(RouteInspect {
            mode: config.mode,
            _inspector: inspector.clone(),
        })
    }

    pub fn mode(&self) -> InspectMode {
        self.mode
    }

    /// Inspects the path, the query and the headers.
    pub fn head(&self, _parts: &Parts) -> Option<Finding> {
        None
    }

    /// Whether the body should be read and given to [`RouteInspect::body`].
    pub fn wants_body(&self, _parts: &Parts) -> bool {
        false
    }

    pub fn body(&self, _parts: &Parts, _body: &[u8]) -> Option<Finding> {
        None
    }
}
