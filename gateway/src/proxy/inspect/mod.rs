//! Payload inspection: decode and normalise once, then match every rule at once.
//!
//! ```text
//!  request part (path, one query name or value, one header value, one cookie, a body)
//!    -> normalize: decode in rounds, fold        (normalize.rs; borrowed when clean)
//!    -> RegexSet::is_match over every rule       (rules.rs; one lazy-DFA pass)
//!    -> on a hit only: which rules, the first one this route has not disabled
//!    -> when SQL comments are present: the same on the comment-free view
//!    -> a NUL byte seen while decoding: null-001
//!  the first finding ends the inspection; proxy/mod.rs blocks (403) or logs it
//! ```
//!
//! What is inspected:
//! - the path, as the client sent it (before the proxy resolves dot segments);
//! - the query, split on `&` and at the first `=`: each name and each value, with `+` as a
//!   space; an encoded `%26` stays inside its value, as the upstream will see it;
//! - header values, except those that carry credentials or opaque tokens, or are framing and
//!   caching headers the proxy itself checks (see [`skipped`]); `Cookie` split into each
//!   cookie's name and value. A finding names the header, never its value;
//! - bodies by content type: `application/x-www-form-urlencoded` like the query,
//!   JSON (`application/json`, `*+json`) string by string, keys and values, with their
//!   escapes (a body that is not JSON between its strings is matched whole), `text/*`, XML
//!   (`application/xml`, `*+xml`), and bodies without a content type as text;
//! - `multipart/*` bodies part by part (multipart.rs): each part's header values (the
//!   `Content-Disposition` parameters one by one: field names, file names) and its content by
//!   the part's own type, after its `Content-Transfer-Encoding` (base64, quoted-printable).
//!   The content of a file part of a binary type is not inspected; a part without a file name
//!   is a form field, whatever its type, and is. A body that does not split is matched whole,
//!   as text, as are the preamble and the epilogue. Other binary bodies are not inspected;
//! - a body with `Content-Encoding: gzip` or `deflate` is inflated first (never past
//!   `max_body_bytes`); any other coding, or one that does not inflate, is a finding
//!   (`limit-002`): what the inspector cannot read, it does not let through.
//!
//! At most `max_body_bytes` of a body (inflated) are inspected; a longer body is a finding
//! (`limit-001`) unless `body_over_limit = "inspect_prefix"`, which inspects only its first
//! `max_body_bytes`: padding could then hide an attack past them.

mod multipart;
mod normalize;
mod rules;

use std::{cell::RefCell, collections::HashSet, sync::Arc};

use hyper::{
    header::{self, HeaderName},
    http::request::Parts,
};
use regex::bytes::{RegexSet, RegexSetBuilder};
use serde::Deserialize;

pub use self::normalize::{normalize, shell_view, sql_view, Kind, Normalized, MAX_ROUNDS};
pub use self::rules::{Rule, CLASSES, RULES};
use self::rules::{IN_FIELD, IN_TEXT, IN_XML};

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

/// What happens to a body longer than `max_body_bytes`.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum OverLimit {
    /// A finding, `limit-001`: refused in block mode, noted in log mode.
    #[default]
    Finding,
    /// Inspect the first `max_body_bytes` only.
    InspectPrefix,
}

/// The default of `max_body_bytes`: 1 MiB.
pub const DEFAULT_MAX_BODY: u64 = 1 << 20;

/// `[inspect]` (the default for every route) and `[routes.inspect]`.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct InspectConfig {
    pub mode: InspectMode,
    /// Rule ids (or classes) not to apply.
    pub disable: Vec<String>,
    /// The most body bytes inspected.
    pub max_body_bytes: u64,
    pub body_over_limit: OverLimit,
    /// Headers not to inspect, besides those never inspected.
    pub skip_headers: Vec<String>,
}

impl Default for InspectConfig {
    fn default() -> Self {
        InspectConfig {
            mode: InspectMode::Off,
            disable: Vec::new(),
            max_body_bytes: DEFAULT_MAX_BODY,
            body_over_limit: OverLimit::Finding,
            skip_headers: Vec::new(),
        }
    }
}

impl InspectConfig {
    pub fn validate(&self) -> Result<(), (Vec<String>, String)> {
        for (i, d) in self.disable.iter().enumerate() {
            if rules::index(d).is_none() && !CLASSES.contains(&d.as_str()) {
                return Err((
                    vec!["disable".into(), i.to_string()],
                    format!(
                        "`{d}` is no rule id (sqli-001...) or class ({})",
                        CLASSES.join(", ")
                    ),
                ));
            }
        }
        if self.max_body_bytes == 0 {
            return Err((vec!["max_body_bytes".into()], "must be above zero".into()));
        }
        for (i, h) in self.skip_headers.iter().enumerate() {
            if HeaderName::from_bytes(h.as_bytes()).is_err() {
                return Err((
                    vec!["skip_headers".into(), i.to_string()],
                    format!("`{h}` is not a header name"),
                ));
            }
        }
        Ok(())
    }

    /// The rules left on, as a mask over [`RULES`].
    fn enabled(&self) -> Result<u64, String> {
        let mut mask = u64::MAX >> (64 - RULES.len());
        for d in &self.disable {
            let off = rule_mask(|r| r.id == d || r.class == d);
            if off == 0 {
                return Err(format!("inspect.disable: unknown rule or class `{d}`"));
            }
            mask &= !off;
        }
        Ok(mask)
    }
}

/// A rule that matched.
#[derive(Clone, Debug)]
pub struct Finding {
    /// Stable id, e.g. `sqli-001`.
    pub rule: &'static str,
    /// `sqli`, `xss`, `traversal`, `cmdi`, `null-byte`, `limit`.
    pub class: &'static str,
    /// Where: `path`, `query`, `header:NAME`, `body`.
    pub part: String,
}

impl Finding {
    fn new(rule: &'static Rule, part: impl Into<String>) -> Finding {
        Finding {
            rule: rule.id,
            class: rule.class,
            part: part.into(),
        }
    }
}

/// The compiled rule set; one per config generation, shared by the routes.
pub struct Inspector {
    set: RegexSet,
    /// For each pattern of `set`, its index in [`RULES`].
    rule_of: Vec<usize>,
    /// The fewest bytes of a match made of [`plain`] bytes only, of any rule; see
    /// [`shortest_plain`]. A plain text shorter than that cannot match.
    plain_shortest: usize,
}

/// Whether `raw` is a word of ASCII letters, digits and `_`: JSON keys, ids, enumerated
/// values. Such a text is what it normalises to (lower-cased), has no SQL comment and no
/// shell expansion, so its views are itself, and no NUL byte.
fn plain(raw: &[u8]) -> bool {
    raw.iter().fold(true, |ok, &b| ok & plain_byte(b))
}

fn plain_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() | (b == b'_')
}

/// The length of the shortest match of the pattern `hir` made of [`plain`] bytes only;
/// `usize::MAX` when there is none. Assertions (`^`, `$`, `\b`) are taken as always
/// satisfied, so the answer may be short of the truth, never beyond it.
fn shortest_plain(hir: &regex_syntax::hir::Hir) -> usize {
    use regex_syntax::hir::{Class, HirKind};
    let none = usize::MAX;
    match hir.kind() {
        HirKind::Empty | HirKind::Look(_) => 0,
        HirKind::Literal(l) if l.0.iter().all(|&b| plain_byte(b)) => l.0.len(),
        HirKind::Literal(_) => none,
        HirKind::Class(Class::Bytes(c))
            if c.iter().any(|r| (r.start()..=r.end()).any(plain_byte)) =>
        {
            1
        }
        HirKind::Class(Class::Unicode(c))
            if c.iter().any(|r| {
                (r.start()..=r.end()).any(|ch| u8::try_from(ch).is_ok_and(plain_byte))
            }) =>
        {
            1
        }
        HirKind::Class(_) => none,
        HirKind::Repetition(r) if r.min == 0 => 0,
        HirKind::Repetition(r) => {
            shortest_plain(&r.sub).saturating_mul(usize::try_from(r.min).unwrap_or(none))
        }
        HirKind::Capture(c) => shortest_plain(&c.sub),
        HirKind::Concat(all) => all
            .iter()
            .fold(0usize, |n, h| n.saturating_add(shortest_plain(h))),
        HirKind::Alternation(any) => any.iter().map(shortest_plain).min().unwrap_or(none),
    }
}

impl Inspector {
    pub fn new() -> Inspector {
        let (rule_of, patterns): (Vec<usize>, Vec<&str>) = RULES
            .iter()
            .enumerate()
            .filter_map(|(i, r)| Some((i, r.pattern?)))
            .unzip();
        let set = RegexSetBuilder::new(patterns)
            .unicode(false)
            .size_limit(64 << 20)
            .dfa_size_limit(32 << 20)
            .build()
            .expect("the inspection rules compile (a unit test builds them)");
        let plain_shortest = rule_of
            .iter()
            .map(|&i| {
                // Parsed as the set parses it; a pattern that would not parse counts as 0.
                regex_syntax::ParserBuilder::new()
                    .unicode(false)
                    .utf8(false)
                    .build()
                    .parse(RULES[i].pattern.unwrap_or_default())
                    .map_or(0, |hir| shortest_plain(&hir))
            })
            .min()
            .unwrap_or(usize::MAX);
        Inspector {
            set,
            rule_of,
            plain_shortest,
        }
    }

    /// The first rule of `enabled` that applies to `part` (a bit of `rules::IN_*`) and
    /// matches `text`.
    fn first_match(&self, text: &[u8], enabled: u64, part: u8) -> Option<&'static Rule> {
        if !self.set.is_match(text) {
            return None;
        }
        self.set
            .matches(text)
            .iter()
            .map(|p| self.rule_of[p])
            .find(|&i| enabled & 1 << i != 0 && RULES[i].applies & part != 0)
            .map(|i| &RULES[i])
    }
}

impl Default for Inspector {
    fn default() -> Self {
        Inspector::new()
    }
}

/// How a body is inspected, by its content type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum BodyKind {
    Form,
    Json,
    Text,
    Xml,
    Multipart,
}

fn body_kind(parts: &Parts) -> Option<BodyKind> {
    let Some(value) = parts.headers.get(header::CONTENT_TYPE) else {
        // Many frameworks read a body without a type as text or form; so do we.
        return Some(BodyKind::Text);
    };
    kind_of(value.as_bytes())
}

/// The kind of a body of type `value` (a `Content-Type` value); `None` for a binary type.
fn kind_of(value: &[u8]) -> Option<BodyKind> {
    // Bytes, not text: a type followed by parameters that are not UTF-8 is still that type.
    let essence = value[..memchr::memchr(b';', value).unwrap_or(value.len())].trim_ascii();
    let is = |s: &[u8]| essence.eq_ignore_ascii_case(s);
    let starts = |s: &[u8]| essence.len() > s.len() && essence[..s.len()].eq_ignore_ascii_case(s);
    let ends = |s: &[u8]| {
        essence.len() > s.len() && essence[essence.len() - s.len()..].eq_ignore_ascii_case(s)
    };
    if is(b"application/json") || is(b"text/json") || ends(b"+json") {
        Some(BodyKind::Json)
    } else if is(b"application/x-www-form-urlencoded") {
        Some(BodyKind::Form)
    } else if is(b"application/xml") || is(b"text/xml") || ends(b"+xml") {
        Some(BodyKind::Xml)
    } else if starts(b"text/") || is(b"application/graphql") {
        Some(BodyKind::Text)
    } else if starts(b"multipart/") {
        Some(BodyKind::Multipart)
    } else {
        None
    }
}

/// Headers never inspected: credentials and opaque tokens (high entropy, and not to be
/// decoded or matched), and framing, caching and tracing headers that the proxy or hyper
/// check, or that carry ids.
pub fn skipped(name: &HeaderName) -> bool {
    let n = name.as_str();
    matches!(
        n,
        "authorization"
            | "proxy-authorization"
            | "host"
            | "content-length"
            | "transfer-encoding"
            | "connection"
            | "keep-alive"
            | "te"
            | "trailer"
            | "upgrade"
            | "accept"
            | "accept-encoding"
            | "cache-control"
            | "pragma"
            | "if-match"
            | "if-none-match"
            | "if-modified-since"
            | "if-unmodified-since"
            | "if-range"
            | "date"
            | "priority"
            | "dnt"
            | "upgrade-insecure-requests"
            | "x-request-id"
            | "x-correlation-id"
            | "traceparent"
            | "tracestate"
            | "b3"
            | "x-amzn-trace-id"
            | "x-cloud-trace-context"
            | "content-md5"
            | "digest"
            | "content-digest"
            | "want-digest"
    ) || ["sec-fetch-", "sec-ch-", "sec-websocket-", "x-b3-"]
        .iter()
        .any(|p| n.starts_with(p))
        || SECRET_WORDS.is_match(n)
}

/// Words that mark a header as carrying a secret, found in one pass over the name.
static SECRET_WORDS: std::sync::LazyLock<aho_corasick::AhoCorasick> =
    std::sync::LazyLock::new(|| {
        aho_corasick::AhoCorasick::new([
            "token",
            "secret",
            "passw",
            "signature",
            "api-key",
            "apikey",
            "auth",
            "session",
            "csrf",
            "xsrf",
            "credential",
        ])
        .expect("fixed words")
    });

/// The rules that `pick` takes, a bit per index of [`RULES`].
fn rule_mask(pick: impl Fn(&Rule) -> bool) -> u64 {
    RULES
        .iter()
        .enumerate()
        .filter(|(_, r)| pick(r))
        .fold(0, |m, (i, _)| m | 1 << i)
}

thread_local! {
    /// Texts found clean lately, per thread: a path, query parameter, header value or cookie that
    /// comes back (most do, request after request) is looked up instead of normalised and matched
    /// again. Only clean verdicts are kept (a finding is worked out every time, for its log line),
    /// keyed by the exact bytes and all else the verdict depends on (the rules on, the kind of
    /// text, the part of the request); short texts only, and at most [`CLEAN_TEXTS`] of them: the
    /// set starts over when full. The second field is the key being built, kept for its buffer.
    /// The hash is foldhash, seeded at random: several times faster than SipHash on these
    /// texts, and the set is small and bounded.
    #[allow(clippy::type_complexity)]
    static CLEAN: RefCell<(HashSet<Box<[u8]>, foldhash::fast::RandomState>, Vec<u8>)> =
        RefCell::new((HashSet::default(), Vec::new()));
}
const CLEAN_TEXTS: usize = 4096;
const CLEAN_TEXT_MAX: usize = 256;

/// One route's inspection.
pub struct RouteInspect {
    mode: InspectMode,
    inspector: Arc<Inspector>,
    /// Rules on, a bit per index of [`RULES`].
    enabled: u64,
    /// The command injection rules of `enabled`: the only ones matched against [`shell_view`].
    cmdi: u64,
    max_body: usize,
    over_limit: OverLimit,
    skip_headers: Box<[HeaderName]>,
}

impl RouteInspect {
    pub fn new(inspector: &Arc<Inspector>, config: &InspectConfig) -> Result<RouteInspect, String> {
        let skip_headers = config
            .skip_headers
            .iter()
            .map(|h| {
                HeaderName::from_bytes(h.as_bytes())
                    .map_err(|_| format!("inspect.skip_headers: `{h}` is not a header name"))
            })
            .collect::<Result<_, _>>()?;
        let enabled = config.enabled()?;
        Ok(RouteInspect {
            mode: config.mode,
            inspector: inspector.clone(),
            enabled,
            cmdi: enabled & rule_mask(|r| r.class == rules::CMDI),
            max_body: usize::try_from(config.max_body_bytes).unwrap_or(usize::MAX),
            over_limit: config.body_over_limit,
            skip_headers,
        })
    }

    pub fn mode(&self) -> InspectMode {
        self.mode
    }

    fn on(&self, id: &str) -> Option<&'static Rule> {
        let i = rules::index(id)?;
        (self.enabled & 1 << i != 0).then_some(&RULES[i])
    }

    /// Normalises one part and matches it: rules in order, then the comment-free view, then
    /// NUL bytes.
    fn scan(&self, raw: &[u8], kind: Kind, part: u8) -> Option<&'static Rule> {
        if raw.is_empty() {
            return None;
        }
        // A word too short for any rule to match, as worked out once for the rule set.
        if raw.len() < self.inspector.plain_shortest && plain(raw) {
            return None;
        }
        // Text bodies rarely repeat; paths, query parameters, header values and JSON strings
        // (keys, and values such as states and types) do.
        if raw.len() > CLEAN_TEXT_MAX || kind == Kind::Text {
            return self.scan_now(raw, kind, part);
        }
        let known = CLEAN.with(|c| {
            let mut c = c.borrow_mut();
            let (texts, key) = &mut *c;
            key.clear();
            key.extend_from_slice(&self.enabled.to_le_bytes());
            key.extend_from_slice(&[kind as u8, part]);
            key.extend_from_slice(raw);
            texts.contains(key.as_slice())
        });
        if known {
            return None;
        }
        let found = self.scan_now(raw, kind, part);
        if found.is_none() {
            CLEAN.with(|c| {
                let mut c = c.borrow_mut();
                let (texts, key) = &mut *c;
                if texts.len() >= CLEAN_TEXTS {
                    texts.clear();
                }
                texts.insert(key.as_slice().into());
            });
        }
        found
    }

    fn scan_now(&self, raw: &[u8], kind: Kind, part: u8) -> Option<&'static Rule> {
        let n = normalize(raw, kind);
        let i = &self.inspector;
        i.first_match(&n.text, self.enabled, part)
            .or_else(|| sql_view(&n.text).and_then(|v| i.first_match(&v, self.enabled, part)))
            .or_else(|| {
                let view = shell_view(&n.text).filter(|_| self.cmdi != 0)?;
                i.first_match(&view, self.cmdi, part)
            })
            .or_else(|| n.nul.then(|| self.on("null-001")).flatten())
    }

    /// A query or form body: each name and each value.
    fn form(&self, raw: &[u8]) -> Option<&'static Rule> {
        raw.split(|&b| b == b'&').find_map(|pair| {
            let (name, value) = match pair.iter().position(|&b| b == b'=') {
                Some(eq) => (&pair[..eq], &pair[eq + 1..]),
                None => (pair, &[][..]),
            };
            self.scan(name, Kind::Form, IN_FIELD)
                .or_else(|| self.scan(value, Kind::Form, IN_FIELD))
        })
    }

    /// A `Cookie` header: each cookie's name and value.
    fn cookies(&self, raw: &[u8]) -> Option<&'static Rule> {
        raw.split(|&b| b == b';').find_map(|pair| {
            let pair = pair.trim_ascii();
            let (name, value) = match pair.iter().position(|&b| b == b'=') {
                Some(eq) => (&pair[..eq], &pair[eq + 1..]),
                None => (pair, &[][..]),
            };
            self.scan(name, Kind::Header, IN_FIELD)
                .or_else(|| self.scan(value, Kind::Header, IN_FIELD))
        })
    }

    /// Inspects the path, the query and the headers.
    pub fn head(&self, parts: &Parts) -> Option<Finding> {
        if let Some(r) = self.scan(parts.uri.path().as_bytes(), Kind::Path, IN_FIELD) {
            return Some(Finding::new(r, "path"));
        }
        if let Some(r) = parts.uri.query().and_then(|q| self.form(q.as_bytes())) {
            return Some(Finding::new(r, "query"));
        }
        for (name, value) in &parts.headers {
            if skipped(name) || self.skip_headers.contains(name) {
                continue;
            }
            let found = if name == header::COOKIE {
                self.cookies(value.as_bytes())
            } else {
                self.scan(value.as_bytes(), Kind::Header, IN_FIELD)
            };
            if let Some(r) = found {
                return Some(Finding::new(r, format!("header:{name}")));
            }
        }
        None
    }

    /// Whether the body should be read and given to [`RouteInspect::body`]: when its content
    /// type is one that is inspected.
    pub fn wants_body(&self, parts: &Parts) -> bool {
        body_kind(parts).is_some()
    }

    /// [`RouteInspect::body_decoded`] on a body as sent.
    #[cfg(test)]
    pub fn body(&self, parts: &Parts, body: &[u8]) -> Option<Finding> {
        let decoded = crate::proxy::coding::decoded(parts, body, self.max_body);
        self.body_decoded(parts, decoded.as_deref())
    }

    /// The most bytes of an inflated body that [`RouteInspect::body_decoded`] needs.
    pub fn max_body(&self) -> usize {
        self.max_body
    }

    /// A body read whole, as [`crate::proxy::coding::decoded`] made it, with at least
    /// [`RouteInspect::max_body`] bytes (`None`: a coding that cannot be read).
    pub fn body_decoded(&self, parts: &Parts, inflated: Option<&[u8]>) -> Option<Finding> {
        let kind = body_kind(parts)?;
        let Some(body) = inflated else {
            return self.on("limit-002").map(|r| Finding::new(r, "body"));
        };
        let body = if body.len() > self.max_body {
            if self.over_limit == OverLimit::Finding {
                if let Some(r) = self.on("limit-001") {
                    return Some(Finding::new(r, "body"));
                }
            }
            &body[..self.max_body]
        } else {
            body
        };
        let found = match kind {
            BodyKind::Multipart => {
                let content_type = parts
                    .headers
                    .get(header::CONTENT_TYPE)
                    .map_or(&[][..], |v| v.as_bytes());
                self.multipart(content_type, body)
            }
            kind => self.typed(kind, body),
        };
        found.map(|r| Finding::new(r, "body"))
    }

    /// A body, or a part's content, of a kind other than multipart.
    fn typed(&self, kind: BodyKind, body: &[u8]) -> Option<&'static Rule> {
        match kind {
            BodyKind::Form => self.form(body),
            BodyKind::Json => self.json(body),
            BodyKind::Xml => self.scan(body, Kind::Text, IN_XML),
            // A multipart part inside a part is matched as text, as a whole.
            BodyKind::Text | BodyKind::Multipart => self.scan(body, Kind::Text, IN_TEXT),
        }
    }

    /// A JSON body string by string: each key and each value, still escaped, matched as a JSON
    /// part (its escapes decoded). Between strings only JSON may stand (punctuation, numbers,
    /// `true`, `false`, `null`); a body with anything else there, or a string left open, is no
    /// JSON, and is matched whole, as before.
    fn json(&self, body: &[u8]) -> Option<&'static Rule> {
        let whole = || self.scan(body, Kind::Json, IN_TEXT);
        let mut i = 0;
        while let Some(&b) = body.get(i) {
            match b {
                b'"' => {
                    let start = i + 1;
                    let mut end = start;
                    loop {
                        match memchr::memchr2(b'"', b'\\', body.get(end..).unwrap_or_default()) {
                            None => return whole(),
                            Some(at) if body[end + at] == b'"' => {
                                end += at;
                                break;
                            }
                            Some(at) => end += at + 2,
                        }
                    }
                    if let Some(r) = self.scan(&body[start..end], Kind::Json, IN_TEXT) {
                        return Some(r);
                    }
                    i = end + 1;
                }
                b' ' | b'\t' | b'\n' | b'\r' | b'{' | b'}' | b'[' | b']' | b',' | b':' => i += 1,
                b'0'..=b'9' | b'-' | b'+' | b'.' | b'e' | b'E' => i += 1,
                b't' if body[i..].starts_with(b"true") => i += 4,
                b'f' if body[i..].starts_with(b"false") => i += 5,
                b'n' if body[i..].starts_with(b"null") => i += 4,
                _ => return whole(),
            }
        }
        None
    }

    /// A multipart body, part by part; see the module documentation.
    fn multipart(&self, content_type: &[u8], body: &[u8]) -> Option<&'static Rule> {
        let split = multipart::boundary(content_type).and_then(|b| multipart::split(body, &b));
        let Some(m) = split else {
            return self.scan(body, Kind::Text, IN_TEXT);
        };
        m.outside
            .iter()
            .find_map(|o| self.scan(o, Kind::Text, IN_TEXT))
            .or_else(|| m.parts.iter().find_map(|p| self.part(p)))
    }

    fn part(&self, p: &multipart::Part<'_>) -> Option<&'static Rule> {
        for &(name, value) in &p.headers {
            let found = if name.eq_ignore_ascii_case(b"content-disposition") {
                self.disposition(value)
            } else {
                self.scan(value, Kind::Header, IN_FIELD)
            };
            if found.is_some() {
                return found;
            }
        }
        let file = multipart::header(p, "content-disposition").is_some_and(multipart::names_file);
        let kind = match multipart::header(p, "content-type").map(kind_of) {
            None => BodyKind::Text,
            Some(Some(kind)) => kind,
            Some(None) if file => return None,
            // A form field, whatever type it claims: frameworks read it as a string.
            Some(None) => BodyKind::Text,
        };
        let encoding = multipart::header(p, "content-transfer-encoding");
        match multipart::decoded(p.content, encoding) {
            Some(content) => self.typed(kind, &content),
            None => self.scan(p.content, Kind::Text, IN_TEXT),
        }
    }

    /// A part's `Content-Disposition`: its type and each parameter's name and value (`name`,
    /// `filename`, `filename*`), or the whole value when its parameters do not parse.
    fn disposition(&self, value: &[u8]) -> Option<&'static Rule> {
        let params: Option<Vec<(&[u8], Vec<u8>)>> = multipart::params(value).collect();
        let Some(params) = params else {
            return self.scan(value, Kind::Header, IN_FIELD);
        };
        let kind = value.split(|&b| b == b';').next().unwrap_or_default();
        self.scan(kind, Kind::Header, IN_FIELD).or_else(|| {
            params.iter().find_map(|(name, v)| {
                self.scan(name, Kind::Header, IN_FIELD)
                    .or_else(|| self.scan(v, Kind::Header, IN_FIELD))
            })
        })
    }
}

#[cfg(test)]
mod tests;
