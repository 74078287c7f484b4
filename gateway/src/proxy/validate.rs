//! Request validation: who may call a route (IP allow and deny lists), and what a request
//! must look like (method, headers, content type, query, body size, JSON Schema).
//!
//! Everything is compiled once per config generation ([`Validator::new`]): networks
//! normalised, patterns anchored and compiled, schema files loaded and compiled. Checks that
//! refuse a request return a [`Rejection`] naming the rule (`access:deny`,
//! `validate:query:NAME`...), which `proxy::reject` turns into the JSON error.

use std::{
    borrow::Cow,
    collections::BTreeMap,
    net::IpAddr,
    path::{Path, PathBuf},
    sync::Arc,
};

use hyper::{
    header::{self, HeaderMap, HeaderName, HeaderValue},
    http::request::Parts,
    Method, StatusCode,
};
use ipnet::IpNet;
use regex::Regex;
use serde::Deserialize;

use super::{
    jsondoc::{Borrowed, Doc},
    reject::Rejection,
};

/// A compiled JSON Schema, validating bodies parsed as [`Doc`]s.
type Schema = jsonschema::Validator<Borrowed>;

/// At most this many schema errors are named in a refusal.
const MAX_SCHEMA_ERRORS: usize = 3;
/// Client-supplied names and paths in messages are cut to this many characters.
const MAX_ECHO: usize = 64;

/// `[routes.validate]`.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ValidateConfig {
    /// Client networks allowed; empty: any.
    pub allow_ips: Vec<IpNet>,
    /// Client networks refused (checked after `allow_ips`).
    pub deny_ips: Vec<IpNet>,
    /// Methods allowed; empty: any. Others get 405 with an `Allow` header.
    pub methods: Vec<String>,
    /// Headers every request must have.
    pub required_headers: Vec<String>,
    /// Media types a request body may have (`application/json`, `text/*`); empty: any.
    pub content_types: Vec<String>,
    /// A body limit for this route, below `proxy.max_body_bytes`.
    pub max_body_bytes: Option<u64>,
    pub query: Option<QueryConfig>,
    /// JSON Schema files bodies must match: one for every method, or one per method.
    pub json_schema: Option<SchemaConfig>,
}

/// `json_schema = "file.json"` or `json_schema = { POST = "a.json", PUT = "b.json" }`.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(untagged)]
pub enum SchemaConfig {
    All(PathBuf),
    ByMethod(BTreeMap<String, PathBuf>),
}

/// `[routes.validate.query]`.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct QueryConfig {
    /// Whether parameters not in `params` are allowed.
    pub allow_unknown: bool,
    pub params: BTreeMap<String, ParamConfig>,
}

impl Default for QueryConfig {
    fn default() -> QueryConfig {
        QueryConfig {
            allow_unknown: true,
            params: BTreeMap::new(),
        }
    }
}

/// `[routes.validate.query.params.NAME]`.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ParamConfig {
    pub required: bool,
    /// A regular expression the whole (decoded) value must match.
    pub pattern: Option<String>,
    /// Most characters of the decoded value.
    pub max_length: Option<usize>,
    #[serde(rename = "type")]
    pub kind: ParamType,
    /// Whether the parameter may appear more than once (each value is checked).
    pub repeated: bool,
}

#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ParamType {
    #[default]
    String,
    Integer,
    Number,
    Boolean,
}

type KeyError = (Vec<String>, String);

fn at<const N: usize>(keys: [&str; N], message: impl Into<String>) -> KeyError {
    (keys.iter().map(|k| k.to_string()).collect(), message.into())
}

impl ValidateConfig {
    pub fn validate(&self) -> Result<(), KeyError> {
        for m in &self.methods {
            if Method::from_bytes(m.as_bytes()).is_err() {
                return Err(at(["methods"], format!("`{m}` is not a method")));
            }
        }
        for h in &self.required_headers {
            if HeaderName::from_bytes(h.as_bytes()).is_err() {
                return Err(at(
                    ["required_headers"],
                    format!("`{h}` is not a header name"),
                ));
            }
        }
        for t in &self.content_types {
            if media_type(t).is_none() {
                return Err(at(
                    ["content_types"],
                    format!("`{t}` is not a media type (type/subtype, or type/*)"),
                ));
            }
        }
        if self.max_body_bytes == Some(0) {
            return Err(at(["max_body_bytes"], "must be > 0"));
        }
        if let Some(q) = &self.query {
            for (name, p) in &q.params {
                if name.is_empty() {
                    return Err(at(["query", "params"], "a parameter name is empty"));
                }
                if let Some(pattern) = &p.pattern {
                    anchored(pattern)
                        .map_err(|e| at(["query", "params", name, "pattern"], e.to_string()))?;
                }
                if p.max_length == Some(0) {
                    return Err(at(["query", "params", name, "max_length"], "must be > 0"));
                }
            }
        }
        match &self.json_schema {
            None => {}
            Some(SchemaConfig::All(path)) => {
                load_schema(path).map_err(|e| at(["json_schema"], e))?;
            }
            Some(SchemaConfig::ByMethod(by)) => {
                if by.is_empty() {
                    return Err(at(["json_schema"], "names no method"));
                }
                for (m, path) in by {
                    if Method::from_bytes(m.as_bytes()).is_err() {
                        return Err(at(["json_schema", m], "not a method"));
                    }
                    load_schema(path).map_err(|e| at(["json_schema", m], e))?;
                }
            }
        }
        Ok(())
    }

    /// Makes schema paths relative to `base` (the config file's directory).
    pub fn resolve_paths(&mut self, base: &Path) {
        let fix = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        match &mut self.json_schema {
            None => {}
            Some(SchemaConfig::All(p)) => fix(p),
            Some(SchemaConfig::ByMethod(by)) => by.values_mut().for_each(fix),
        }
    }
}

/// Reads and compiles a schema file; the error names the file. Remote and file `$ref`s are
/// not fetched (the crate's resolvers are left out), so a schema is self-contained.
fn load_schema(path: &Path) -> Result<Schema, String> {
    let shown = path.display();
    let text = std::fs::read_to_string(path).map_err(|e| format!("{shown}: cannot read: {e}"))?;
    let value: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| format!("{shown}: not JSON: {e}"))?;
    jsonschema::options_for::<Borrowed>()
        .build(&value)
        .map_err(|e| format!("{shown}: not a valid JSON Schema: {e}"))
}

/// `pattern` matching whole values only.
fn anchored(pattern: &str) -> Result<Regex, regex::Error> {
    regex::RegexBuilder::new(&format!("^(?:{pattern})$"))
        .size_limit(1 << 20)
        .build()
}

/// A configured media type, lower case: `type/subtype` or `type/*`.
fn media_type(t: &str) -> Option<String> {
    let t = t.trim().to_ascii_lowercase();
    let (ty, sub) = t.split_once('/')?;
    let token = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_graphic() && b != b'/');
    (token(ty) && token(sub) && ty != "*").then_some(t)
}

/// The client's address: the socket peer, or, when the peer is a trusted proxy, the
/// right-most address in X-Forwarded-For that is not a trusted proxy.
///
/// The list is read from the right, each hop vouching for the one before it, and only as far
/// as the hops are trusted: a client can put anything on the left, so whatever is left of the
/// first untrusted address is ignored. A malformed entry stops the walk at the last address
/// known (a trusted proxy); when every entry is trusted, the left-most is the client.
pub fn client_ip(peer: IpAddr, headers: &HeaderMap, trusted: &[IpNet]) -> IpAddr {
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|n| net_contains(n, ip));
    let mut client = peer.to_canonical();
    if trusted.is_empty() || !is_trusted(&client) {
        return client;
    }
    for value in headers.get_all("x-forwarded-for").iter().rev() {
        let Ok(value) = value.to_str() else {
            return client;
        };
        for entry in value.rsplit(',') {
            let Some(ip) = forwarded_ip(entry.trim()) else {
                return client;
            };
            client = ip;
            if !is_trusted(&client) {
                return client;
            }
        }
    }
    client
}

/// An X-Forwarded-For entry: an address, with or without a port (`1.2.3.4:80`, `[::1]:80`).
fn forwarded_ip(entry: &str) -> Option<IpAddr> {
    let ip = match entry.parse::<IpAddr>() {
        Ok(ip) => ip,
        Err(_) => entry.parse::<std::net::SocketAddr>().ok()?.ip(),
    };
    Some(ip.to_canonical())
}

/// Whether `net` holds `ip`, IPv4-mapped IPv6 on either side taken as IPv4.
fn net_contains(net: &IpNet, ip: &IpAddr) -> bool {
    canonical_net(*net).contains(&ip.to_canonical())
}

/// `::ffff:a.b.c.d/n` (n >= 96) as `a.b.c.d/(n-96)`.
fn canonical_net(net: IpNet) -> IpNet {
    match net {
        IpNet::V6(n) if n.prefix_len() >= 96 => match n.addr().to_ipv4_mapped() {
            Some(v4) => ipnet::Ipv4Net::new(v4, n.prefix_len() - 96)
                .map(IpNet::V4)
                .unwrap_or(net),
            None => net,
        },
        _ => net,
    }
}

/// One route's validation.
pub struct Validator {
    allow: Vec<IpNet>,
    deny: Vec<IpNet>,
    methods: Vec<Method>,
    /// The `Allow` header of a 405.
    allow_header: String,
    required: Vec<HeaderName>,
    content_types: Vec<String>,
    max_body: Option<u64>,
    /// How far a body with a `Content-Encoding` is inflated for its schema: the route's body
    /// limit, or the proxy's ([`Validator::within`]).
    inflate_max: u64,
    query: Option<Query>,
    schemas: Schemas,
}

struct Query {
    allow_unknown: bool,
    params: Vec<Param>,
}

struct Param {
    name: String,
    required: bool,
    pattern: Option<Regex>,
    max_length: Option<usize>,
    kind: ParamType,
    repeated: bool,
}

enum Schemas {
    None,
    /// For every request with a body.
    All(Arc<Schema>),
    ByMethod(Vec<(Method, Arc<Schema>)>),
}

// The pipeline's phases all return `Result<_, Rejection>`; a refusal is the rare path.
impl Validator {
    pub fn new(config: &ValidateConfig) -> Result<Validator, String> {
        let methods = config
            .methods
            .iter()
            .map(|m| {
                Method::from_bytes(m.as_bytes())
                    .map_err(|_| format!("validate.methods: `{m}` is not a method"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let required = config
            .required_headers
            .iter()
            .map(|h| {
                HeaderName::from_bytes(h.as_bytes())
                    .map_err(|_| format!("validate.required_headers: `{h}` is not a header name"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let query = match &config.query {
            None => None,
            Some(q) => Some(Query {
                allow_unknown: q.allow_unknown,
                params: q
                    .params
                    .iter()
                    .map(|(name, p)| {
                        Ok(Param {
                            name: name.clone(),
                            required: p.required,
                            pattern: p.pattern.as_deref().map(anchored).transpose().map_err(
                                |e| format!("validate.query.params.{name}.pattern: {e}"),
                            )?,
                            max_length: p.max_length,
                            kind: p.kind,
                            repeated: p.repeated,
                        })
                    })
                    .collect::<Result<_, String>>()?,
            }),
        };
        let schemas = match &config.json_schema {
            None => Schemas::None,
            Some(SchemaConfig::All(path)) => Schemas::All(Arc::new(
                load_schema(path).map_err(|e| format!("validate.json_schema: {e}"))?,
            )),
            Some(SchemaConfig::ByMethod(by)) => Schemas::ByMethod(
                by.iter()
                    .map(|(m, path)| {
                        let method = Method::from_bytes(m.as_bytes())
                            .map_err(|_| format!("validate.json_schema.{m}: not a method"))?;
                        let v = load_schema(path)
                            .map_err(|e| format!("validate.json_schema.{m}: {e}"))?;
                        Ok((method, Arc::new(v)))
                    })
                    .collect::<Result<_, String>>()?,
            ),
        };
        Ok(Validator {
            allow: config
                .allow_ips
                .iter()
                .copied()
                .map(canonical_net)
                .collect(),
            deny: config.deny_ips.iter().copied().map(canonical_net).collect(),
            allow_header: methods
                .iter()
                .map(Method::as_str)
                .collect::<Vec<_>>()
                .join(", "),
            methods,
            required,
            content_types: config
                .content_types
                .iter()
                .filter_map(|t| media_type(t))
                .collect(),
            max_body: config.max_body_bytes,
            inflate_max: config.max_body_bytes.unwrap_or(u64::MAX),
            query,
            schemas,
        })
    }

    /// The same, under the proxy's body limit `proxy_max`.
    pub fn within(mut self, proxy_max: u64) -> Validator {
        self.inflate_max = self.inflate_max.min(proxy_max);
        self
    }

    pub fn check_access(&self, client: IpAddr) -> Result<(), Rejection> {
        let client = client.to_canonical();
        let forbidden = |rule: &str| {
            Rejection::new(
                StatusCode::FORBIDDEN,
                "forbidden",
                rule,
                "this route is not open to your network",
            )
        };
        if !self.allow.is_empty() && !self.allow.iter().any(|n| n.contains(&client)) {
            return Err(forbidden("access:not_allowed"));
        }
        if self.deny.iter().any(|n| n.contains(&client)) {
            return Err(forbidden("access:deny"));
        }
        Ok(())
    }

    pub fn check_head(&self, parts: &Parts) -> Result<(), Rejection> {
        if !self.methods.is_empty() && !self.methods.contains(&parts.method) {
            return Err(Rejection::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "validate:method",
                format!("method {} is not allowed here", echo(parts.method.as_str())),
            )
            .with_header(header::ALLOW, &self.allow_header));
        }
        for name in &self.required {
            if !parts.headers.contains_key(name) {
                return Err(bad(
                    "validate:header",
                    format!("the header `{name}` is required"),
                ));
            }
        }
        if has_body(parts) {
            self.check_type(parts)?;
        }
        if let Some(q) = &self.query {
            q.check(parts.uri.query().unwrap_or_default())?;
        }
        Ok(())
    }

    /// A body limit stricter than `proxy.max_body_bytes`, if any.
    pub fn max_body(&self) -> Option<u64> {
        self.max_body
    }

    /// Whether the body should be read and given to [`Validator::check_body`]: a schema
    /// applies to the method.
    pub fn wants_body(&self, parts: &Parts) -> bool {
        self.schema_for(&parts.method).is_some()
    }

    /// [`Validator::check_decoded`] on a body as sent: decodes it first, and lets an empty
    /// body pass when every method's body has the schema (the proxy never hands over an
    /// empty body).
    #[cfg(test)]
    pub fn check_body(&self, parts: &Parts, body: &[u8]) -> Result<(), Rejection> {
        if body.is_empty() && matches!(self.schemas, Schemas::All(_)) {
            return Ok(());
        }
        let decoded = super::coding::decoded(parts, body, self.inflate_max());
        self.check_decoded(parts, decoded.as_deref())
    }

    /// The most bytes of an inflated body that [`Validator::check_decoded`] needs.
    pub fn inflate_max(&self) -> usize {
        usize::try_from(self.inflate_max).unwrap_or(usize::MAX)
    }

    /// Validates a body read whole, not empty, against the method's schema. Runs after
    /// [`Validator::check_head`] on the same head. `body` is as [`super::coding::decoded`]
    /// made it, with at least [`Validator::inflate_max`] bytes (`None`: a coding that cannot
    /// be read).
    pub fn check_decoded(&self, parts: &Parts, body: Option<&[u8]>) -> Result<(), Rejection> {
        let Some(schema) = self.schema_for(&parts.method) else {
            return Ok(());
        };
        // When the head said there is a body, `check_head` has checked its type; it may not
        // have said so (HTTP/2 without content-length).
        if !has_body(parts) {
            self.check_type(parts)?;
        }
        // A compressed body is validated as what it inflates to.
        let max = self.inflate_max();
        let Some(body) = body else {
            return Err(Rejection::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "validate:content_encoding",
                "the body's Content-Encoding cannot be read: gzip and deflate can",
            ));
        };
        if body.len() > max {
            return Err(Rejection::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "body_too_large",
                "body:size",
                format!("the request body inflates to more than {max} bytes"),
            ));
        }
        let doc = Doc::parse(body).map_err(|e| {
            bad(
                "validate:json_schema",
                format!("the body is not valid JSON: {e}"),
            )
        })?;
        // The common case first: a valid body, without gathering errors.
        if schema.is_valid(&doc) {
            return Ok(());
        }
        let mut errors = schema.iter_errors(&doc);
        let Some(first) = errors.next() else {
            return Ok(());
        };
        let mut found = vec![describe(&first)];
        let mut more = 0usize;
        for e in errors {
            if found.len() < MAX_SCHEMA_ERRORS {
                found.push(describe(&e));
            } else {
                more += 1;
            }
        }
        let mut message = format!("the body does not match the schema: {}", found.join("; "));
        if more > 0 {
            message.push_str(&format!(" (and {more} more)"));
        }
        Err(bad("validate:json_schema", message))
    }

    fn schema_for(&self, method: &Method) -> Option<&Schema> {
        match &self.schemas {
            Schemas::None => None,
            Schemas::All(v) => Some(v),
            Schemas::ByMethod(by) => by.iter().find(|(m, _)| m == method).map(|(_, v)| &**v),
        }
    }

    /// The Content-Type of a request with a body: one of `content_types` (when set), and JSON
    /// when the method's body has a schema.
    fn check_type(&self, parts: &Parts) -> Result<(), Rejection> {
        let t = content_type(&parts.headers);
        self.check_content_type(t)?;
        if self.schema_for(&parts.method).is_some() && !t.is_some_and(is_json) {
            return Err(unsupported("a JSON body is required (application/json)"));
        }
        Ok(())
    }

    fn check_content_type(&self, t: Option<&str>) -> Result<(), Rejection> {
        if self.content_types.is_empty() {
            return Ok(());
        }
        let Some(t) = t else {
            return Err(unsupported("the request has a body but no Content-Type"));
        };
        let allowed = self
            .content_types
            .iter()
            .any(|a| match a.strip_suffix("/*") {
                Some(ty) => t
                    .split_once('/')
                    .is_some_and(|(tt, _)| tt.eq_ignore_ascii_case(ty)),
                None => t.eq_ignore_ascii_case(a),
            });
        if allowed {
            Ok(())
        } else {
            Err(unsupported(&format!(
                "Content-Type {} is not accepted here",
                echo(t)
            )))
        }
    }
}

/// The instance path of a schema error and its keyword; never the value itself.
fn describe(e: &jsonschema::ValidationError<'_>) -> String {
    let path = e.instance_path().as_str();
    let path = if path.is_empty() { "/" } else { path };
    format!("{} ({})", echo(path), e.kind().keyword())
}

impl Query {
    fn check(&self, query: &str) -> Result<(), Rejection> {
        // Few parameters per route: counts on the stack for the usual case.
        let (mut stack, mut heap) = ([0u32; 16], Vec::new());
        let counts: &mut [u32] = match self.params.len() {
            n if n <= stack.len() => &mut stack[..n],
            n => {
                heap.resize(n, 0);
                &mut heap
            }
        };
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (raw_name, raw_value) = pair.split_once('=').unwrap_or((pair, ""));
            let name = decode(raw_name).map_err(|what| {
                bad(
                    "validate:query",
                    format!("a query parameter name is {what}"),
                )
            })?;
            let Some(i) = self.params.iter().position(|p| p.name == name) else {
                if self.allow_unknown {
                    continue;
                }
                let shown = echo(&name);
                return Err(bad(
                    format!("validate:query:{shown}"),
                    format!("unknown query parameter `{shown}`"),
                ));
            };
            let p = &self.params[i];
            let refuse = |what: String| {
                bad(
                    format!("validate:query:{}", p.name),
                    format!("query parameter `{}` {what}", p.name),
                )
            };
            counts[i] += 1;
            if counts[i] > 1 && !p.repeated {
                return Err(refuse("may appear only once".into()));
            }
            let value = decode(raw_value).map_err(|what| refuse(format!("is {what}")))?;
            if p.max_length.is_some_and(|max| value.chars().count() > max) {
                return Err(refuse(format!(
                    "is longer than {} characters",
                    p.max_length.unwrap_or_default()
                )));
            }
            if !type_ok(p.kind, &value) {
                let kind = match p.kind {
                    ParamType::Integer => "an integer",
                    ParamType::Number => "a number",
                    ParamType::Boolean => "true or false",
                    ParamType::String => "a string",
                };
                return Err(refuse(format!("must be {kind}")));
            }
            if p.pattern.as_ref().is_some_and(|re| !re.is_match(&value)) {
                return Err(refuse("does not match its pattern".into()));
            }
        }
        for (p, n) in self.params.iter().zip(counts.iter()) {
            if p.required && *n == 0 {
                return Err(bad(
                    format!("validate:query:{}", p.name),
                    format!("query parameter `{}` is required", p.name),
                ));
            }
        }
        Ok(())
    }
}

fn type_ok(kind: ParamType, v: &str) -> bool {
    match kind {
        ParamType::String => true,
        ParamType::Integer => {
            let digits = v.strip_prefix('-').unwrap_or(v);
            !digits.is_empty()
                && digits.bytes().all(|b| b.is_ascii_digit())
                && v.parse::<i64>().is_ok()
        }
        ParamType::Number => {
            // Plain decimal notation: no `inf`, `NaN` or hex.
            v.bytes()
                .all(|b| b.is_ascii_digit() || matches!(b, b'-' | b'+' | b'.' | b'e' | b'E'))
                && v.bytes().any(|b| b.is_ascii_digit())
                && v.parse::<f64>().is_ok_and(f64::is_finite)
        }
        ParamType::Boolean => matches!(v, "true" | "false"),
    }
}

/// Decodes a query component: `+` is a space, `%XX` a byte; the result must be UTF-8.
fn decode(s: &str) -> Result<Cow<'_, str>, &'static str> {
    if !s.bytes().any(|b| b == b'%' || b == b'+') {
        return Ok(Cow::Borrowed(s));
    }
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' => {
                let hex = |c: u8| (c as char).to_digit(16);
                let (Some(h), Some(l)) = (
                    b.get(i + 1).copied().and_then(hex),
                    b.get(i + 2).copied().and_then(hex),
                ) else {
                    return Err("not percent-encoded correctly");
                };
                out.push((h * 16 + l) as u8);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8(out)
        .map(Cow::Owned)
        .map_err(|_| "not UTF-8 once decoded")
}

/// Whether the head says a body follows.
fn has_body(parts: &Parts) -> bool {
    parts.headers.contains_key(header::TRANSFER_ENCODING)
        || parts
            .headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.trim() != "0")
}

/// The media type of Content-Type, without parameters.
fn content_type(headers: &HeaderMap) -> Option<&str> {
    let v = headers
        .get(header::CONTENT_TYPE)
        .map(HeaderValue::to_str)?
        .ok()?;
    let t = v.split(';').next().unwrap_or_default().trim();
    (!t.is_empty()).then_some(t)
}

/// Whether a media type is `application/json` or any `+json` type.
fn is_json(t: &str) -> bool {
    t.eq_ignore_ascii_case("application/json")
        || t.len() > 5 && t.as_bytes()[t.len() - 5..].eq_ignore_ascii_case(b"+json")
}

/// A client-supplied string cut for a message.
fn echo(s: &str) -> String {
    let mut out: String = s.chars().take(MAX_ECHO).collect();
    if out.len() < s.len() {
        out.push_str("...");
    }
    out
}

fn bad(rule: impl Into<String>, message: impl Into<String>) -> Rejection {
    Rejection::new(StatusCode::BAD_REQUEST, "bad_request", rule, message)
}

fn unsupported(message: &str) -> Rejection {
    Rejection::new(
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "unsupported_media_type",
        "validate:content_type",
        message,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(toml_text: &str) -> ValidateConfig {
        toml::from_str(toml_text).expect("validate config")
    }

    fn validator(toml_text: &str) -> Validator {
        let c = config(toml_text);
        c.validate().expect("valid");
        Validator::new(&c).expect("compiles")
    }

    fn parts(method: &str, uri: &str, headers: &[(&str, &str)]) -> Parts {
        let mut b = hyper::Request::builder().method(method).uri(uri);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(()).unwrap().into_parts().0
    }

    fn rule(r: Result<(), Rejection>) -> Option<(u16, String)> {
        r.err().map(|r| (r.status.as_u16(), r.rule))
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn nets(list: &[&str]) -> Vec<IpNet> {
        list.iter().map(|n| n.parse().unwrap()).collect()
    }

    #[test]
    fn access_lists_allow_then_deny_with_mapped_addresses() {
        let v = validator(
            r#"allow_ips = ["10.0.0.0/8", "2001:db8::/32", "::ffff:192.0.2.0/120"]
               deny_ips = ["10.9.0.0/16"]"#,
        );
        assert_eq!(rule(v.check_access(ip("10.1.2.3"))), None);
        assert_eq!(rule(v.check_access(ip("::ffff:10.1.2.3"))), None);
        assert_eq!(rule(v.check_access(ip("192.0.2.7"))), None);
        assert_eq!(rule(v.check_access(ip("2001:db8::1"))), None);
        assert_eq!(
            rule(v.check_access(ip("10.9.0.1"))),
            Some((403, "access:deny".into()))
        );
        assert_eq!(
            rule(v.check_access(ip("::ffff:10.9.0.1"))),
            Some((403, "access:deny".into()))
        );
        assert_eq!(
            rule(v.check_access(ip("11.0.0.1"))),
            Some((403, "access:not_allowed".into()))
        );
        let deny_only = validator(r#"deny_ips = ["::ffff:203.0.113.0/120"]"#);
        assert_eq!(
            rule(deny_only.check_access(ip("203.0.113.5"))),
            Some((403, "access:deny".into()))
        );
        assert_eq!(rule(deny_only.check_access(ip("::1"))), None);
    }

    #[test]
    fn forwarded_for_is_believed_only_from_trusted_proxies() {
        let trusted = nets(&["127.0.0.1/32", "10.0.0.0/8"]);
        let xff = |values: &[&str]| {
            let mut h = HeaderMap::new();
            for v in values {
                h.append("x-forwarded-for", HeaderValue::from_str(v).unwrap());
            }
            h
        };
        let peer = ip("127.0.0.1");
        // Untrusted peer: the header is ignored.
        assert_eq!(
            client_ip(ip("192.0.2.1"), &xff(&["198.18.0.1"]), &trusted),
            ip("192.0.2.1")
        );
        assert_eq!(client_ip(peer, &xff(&["198.18.0.1"]), &[]), peer);
        // Trusted peer: the right-most untrusted entry; what a client wrote left of it is not.
        assert_eq!(
            client_ip(peer, &xff(&["198.18.0.1"]), &trusted),
            ip("198.18.0.1")
        );
        assert_eq!(
            client_ip(peer, &xff(&["1.1.1.1, 198.18.0.1, 10.0.0.2"]), &trusted),
            ip("198.18.0.1")
        );
        assert_eq!(
            client_ip(peer, &xff(&["1.1.1.1", "198.18.0.1, 10.0.0.2"]), &trusted),
            ip("198.18.0.1")
        );
        // Malformed: stop at the last address known.
        assert_eq!(client_ip(peer, &xff(&["198.18.0.1, junk"]), &trusted), peer);
        assert_eq!(
            client_ip(peer, &xff(&["198.18.0.1, garbage, 10.0.0.2"]), &trusted),
            ip("10.0.0.2")
        );
        assert_eq!(client_ip(peer, &xff(&["1.1.1.1,,"]), &trusted), peer);
        // All trusted: the left-most.
        assert_eq!(
            client_ip(peer, &xff(&["10.0.0.3, 10.0.0.2"]), &trusted),
            ip("10.0.0.3")
        );
        // Ports, IPv6, mapped addresses.
        assert_eq!(
            client_ip(peer, &xff(&["198.18.0.1:5555"]), &trusted),
            ip("198.18.0.1")
        );
        assert_eq!(
            client_ip(peer, &xff(&["[2001:db8::1]:80"]), &trusted),
            ip("2001:db8::1")
        );
        assert_eq!(
            client_ip(
                ip("::ffff:127.0.0.1"),
                &xff(&["::ffff:198.18.0.1"]),
                &trusted
            ),
            ip("198.18.0.1")
        );
        // No header.
        assert_eq!(client_ip(peer, &HeaderMap::new(), &trusted), peer);
    }

    #[test]
    fn methods_headers_and_content_types() {
        let v = validator(
            r#"methods = ["GET", "POST"]
               required_headers = ["x-api-version"]
               content_types = ["application/json", "text/*"]"#,
        );
        let hv = [("x-api-version", "1")];
        assert_eq!(rule(v.check_head(&parts("GET", "/", &hv))), None);
        let r = v.check_head(&parts("DELETE", "/", &hv)).unwrap_err();
        assert_eq!(
            (r.status.as_u16(), r.rule.as_str()),
            (405, "validate:method")
        );
        assert_eq!(r.headers["allow"], "GET, POST");
        assert_eq!(
            rule(v.check_head(&parts("GET", "/", &[]))),
            Some((400, "validate:header".into()))
        );
        let body = |ct: Option<&str>| {
            let mut h = vec![("x-api-version", "1"), ("content-length", "2")];
            if let Some(ct) = ct {
                h.push(("content-type", ct));
            }
            rule(v.check_head(&parts("POST", "/", &h)))
        };
        assert_eq!(body(Some("application/json")), None);
        assert_eq!(body(Some("Application/JSON; charset=utf-8")), None);
        assert_eq!(body(Some("text/plain")), None);
        let refused = Some((415, "validate:content_type".into()));
        assert_eq!(body(Some("application/xml")), refused);
        assert_eq!(body(Some("application/json-seq")), refused);
        assert_eq!(body(None), refused);
        // No body: no content type needed.
        assert_eq!(rule(v.check_head(&parts("POST", "/", &hv))), None);
        let chunked = [("x-api-version", "1"), ("transfer-encoding", "chunked")];
        assert_eq!(rule(v.check_head(&parts("POST", "/", &chunked))), refused);
    }

    #[test]
    fn query_parameters() {
        let v = validator(
            r#"[query]
               allow_unknown = false
               [query.params.id]
               required = true
               type = "integer"
               [query.params.q]
               max_length = 5
               pattern = "[a-z ]+"
               [query.params.flag]
               type = "boolean"
               [query.params.tag]
               repeated = true
               [query.params.n]
               type = "number""#,
        );
        let check = |q: &str| rule(v.check_head(&parts("GET", &format!("/x?{q}"), &[])));
        assert_eq!(check("id=7"), None);
        assert_eq!(check("id=-7&q=a+b&flag=true&tag=1&tag=2&n=1.5e3"), None);
        assert_eq!(check("id=7&q=%61%62"), None);
        let refused = |name: &str| Some((400, format!("validate:query:{name}")));
        assert_eq!(check("q=a"), refused("id"));
        assert_eq!(check("id=x"), refused("id"));
        assert_eq!(check("id=99999999999999999999"), refused("id"));
        assert_eq!(check("id=1&id=2"), refused("id"));
        assert_eq!(check("id=1&q=abcdef"), refused("q"));
        assert_eq!(check("id=1&q=ABC"), refused("q"));
        // Anchored: a match inside the value is not enough.
        assert_eq!(check("id=1&q=a1"), refused("q"));
        assert_eq!(check("id=1&flag=yes"), refused("flag"));
        assert_eq!(check("id=1&n=inf"), refused("n"));
        assert_eq!(check("id=1&n=NaN"), refused("n"));
        assert_eq!(check("id=1&other=1"), refused("other"));
        // Names are decoded too; malformed encoding is refused.
        assert_eq!(check("%69d=1"), None);
        assert_eq!(check("id=1&q=%zz"), refused("q"));
        assert_eq!(check("id=1&q=%e9"), refused("q"));
        assert_eq!(check("id=1&%zz=1"), Some((400, "validate:query".into())));
        // A missing query is a missing required parameter.
        assert_eq!(rule(v.check_head(&parts("GET", "/x", &[]))), refused("id"));
        let open = validator("[query.params.id]\ntype = \"integer\"");
        assert_eq!(rule(open.check_head(&parts("GET", "/x?zz=1", &[]))), None);
    }

    #[test]
    fn json_schema_per_method() {
        let dir = tempfile::tempdir().unwrap();
        let schema = serde_json::json!({
            "type": "object",
            "required": ["name", "age"],
            "properties": {
                "name": {"type": "string", "maxLength": 10},
                "age": {"type": "integer", "minimum": 0},
                "tags": {"type": "array", "items": {"type": "string"}}
            },
            "additionalProperties": false
        });
        std::fs::write(dir.path().join("user.json"), schema.to_string()).unwrap();
        let mut c = config(r#"json_schema = { POST = "user.json" }"#);
        c.resolve_paths(dir.path());
        c.validate().unwrap();
        let v = Validator::new(&c).unwrap();
        let json = [
            ("content-type", "application/json"),
            ("content-length", "1"),
        ];
        let post = parts("POST", "/", &json);
        assert!(v.wants_body(&post));
        assert!(!v.wants_body(&parts("PUT", "/", &json)));
        assert_eq!(rule(v.check_head(&post)), None);
        assert_eq!(
            rule(v.check_body(&post, br#"{"name": "ann", "age": 3}"#)),
            None
        );
        let big = format!(
            r#"{{"name": "{}", "age": -1, "tags": [1]}}"#,
            "x".repeat(5000)
        );
        let r = v.check_body(&post, big.as_bytes()).unwrap_err();
        assert_eq!(
            (r.status.as_u16(), r.rule.as_str()),
            (400, "validate:json_schema")
        );
        assert!(r.message.contains("/name (maxLength)"), "{}", r.message);
        assert!(r.message.contains("/age (minimum)"), "{}", r.message);
        assert!(r.message.contains("/tags/0 (type)"), "{}", r.message);
        assert!(
            r.message.len() < 300,
            "values are not echoed: {}",
            r.message
        );
        assert_eq!(
            rule(v.check_body(&post, b"{not json")),
            Some((400, "validate:json_schema".into()))
        );
        assert_eq!(
            rule(v.check_body(&post, b"")),
            Some((400, "validate:json_schema".into()))
        );
        let text = parts(
            "POST",
            "/",
            &[("content-type", "text/plain"), ("content-length", "2")],
        );
        assert_eq!(
            rule(v.check_head(&text)),
            Some((415, "validate:content_type".into()))
        );
        let vendor = parts("POST", "/", &[("content-type", "application/vnd.x+json")]);
        assert_eq!(
            rule(v.check_body(&vendor, br#"{"name": "a", "age": 1}"#)),
            None
        );
        // No content type at all, with a body (HTTP/2 without content-length).
        assert_eq!(
            rule(v.check_body(&parts("POST", "/", &[]), b"{}")),
            Some((415, "validate:content_type".into()))
        );
        // A gzipped body is validated as what it inflates to, within the proxy's limit.
        let gzip = |s: &str| {
            use std::io::Write as _;
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
            e.write_all(s.as_bytes()).unwrap();
            e.finish().unwrap()
        };
        let zipped = parts(
            "POST",
            "/",
            &[
                ("content-type", "application/json"),
                ("content-encoding", "gzip"),
            ],
        );
        let ok = gzip(r#"{"name": "ann", "age": 3}"#);
        assert_eq!(rule(v.check_body(&zipped, &ok)), None);
        assert_eq!(
            rule(v.check_body(&zipped, &gzip(r#"{"name": "ann", "age": -3}"#))),
            Some((400, "validate:json_schema".into()))
        );
        let small = Validator::new(&c).unwrap().within(10);
        assert_eq!(
            rule(small.check_body(&zipped, &ok)),
            Some((413, "body:size".into()))
        );
        let mut br = zipped.clone();
        br.headers
            .insert("content-encoding", HeaderValue::from_static("br"));
        assert_eq!(
            rule(v.check_body(&br, &ok)),
            Some((415, "validate:content_encoding".into()))
        );
        assert_eq!(
            rule(v.check_body(&zipped, b"{\"name\": \"ann\", \"age\": 3}")),
            Some((415, "validate:content_encoding".into()))
        );

        // One schema for all: only bodies that are there are checked.
        let mut c = config(r#"json_schema = "user.json""#);
        c.resolve_paths(dir.path());
        let v = Validator::new(&c).unwrap();
        assert_eq!(rule(v.check_body(&parts("DELETE", "/", &[]), b"")), None);
        assert!(v.check_body(&parts("PATCH", "/", &json), b"{}").is_err());
    }

    #[test]
    fn config_errors_name_the_key() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("bad.json"), r#"{"type": 12}"#).unwrap();
        std::fs::write(dir.path().join("notjson.json"), "{").unwrap();
        let err = |text: &str| {
            let mut c = config(text);
            c.resolve_paths(dir.path());
            let (key, message) = c.validate().unwrap_err();
            (key.join("."), message)
        };
        assert_eq!(err(r#"methods = ["G T"]"#).0, "methods");
        assert_eq!(err(r#"required_headers = ["a b"]"#).0, "required_headers");
        assert_eq!(err(r#"content_types = ["json"]"#).0, "content_types");
        assert_eq!(err("max_body_bytes = 0").0, "max_body_bytes");
        assert_eq!(
            err("[query.params.id]\npattern = \"(\"").0,
            "query.params.id.pattern"
        );
        let (key, message) = err(r#"json_schema = { POST = "bad.json" }"#);
        assert_eq!(key, "json_schema.POST");
        assert!(
            message.contains("bad.json") && message.contains("not a valid JSON Schema"),
            "{message}"
        );
        let (key, message) = err(r#"json_schema = "notjson.json""#);
        assert_eq!(key, "json_schema");
        assert!(message.contains("notjson.json: not JSON"), "{message}");
        let (_, message) = err(r#"json_schema = "missing.json""#);
        assert!(message.contains("missing.json: cannot read"), "{message}");
        assert!(toml::from_str::<ValidateConfig>("allow_ip = []").is_err());
        assert!(toml::from_str::<ValidateConfig>("[query.params.x]\ntype = \"date\"").is_err());
    }

    #[test]
    fn route_body_limit() {
        assert_eq!(validator("max_body_bytes = 10").max_body(), Some(10));
        assert_eq!(validator("").max_body(), None);
    }
}
