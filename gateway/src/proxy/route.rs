//! Route matching: host, path (exact, prefix, `{name}` templates), method and headers; and the
//! path to forward (as is, prefix stripped, or rewritten with the template's captures).

use std::borrow::Cow;

use hyper::{
    header::{HeaderName, HeaderValue},
    HeaderMap, Method,
};

use crate::config::RouteConfig;

/// A path pattern: literal segments and `{name}` segments that match any one segment.
#[derive(Debug, Clone, PartialEq)]
pub struct Template {
    segments: Vec<Segment>,
}

#[derive(Debug, Clone, PartialEq)]
enum Segment {
    Literal(String),
    Capture(String),
}

impl Template {
    /// Parses `/users/{id}`; `{…}` must be a whole segment named with letters, digits and `_`,
    /// each name used once.
    pub fn parse(pattern: &str) -> Result<Template, String> {
        let Some(rest) = pattern.strip_prefix('/') else {
            return Err(format!("`{pattern}` does not start with /"));
        };
        let mut segments = Vec::new();
        for seg in rest.split('/') {
            match seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
                Some(name) => {
                    if name.is_empty()
                        || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
                    {
                        return Err(format!(
                            "`{{{name}}}` in `{pattern}` is not a name of letters, digits and _"
                        ));
                    }
                    if segments.contains(&Segment::Capture(name.to_string())) {
                        return Err(format!("`{{{name}}}` appears twice in `{pattern}`"));
                    }
                    segments.push(Segment::Capture(name.to_string()));
                }
                None if seg.contains(['{', '}']) => {
                    return Err(format!(
                        "`{pattern}`: a {{name}} must be a whole segment between slashes"
                    ))
                }
                None => segments.push(Segment::Literal(seg.to_string())),
            }
        }
        Ok(Template { segments })
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.segments.iter().filter_map(|s| match s {
            Segment::Capture(n) => Some(n.as_str()),
            Segment::Literal(_) => None,
        })
    }

    fn is_literal(&self) -> bool {
        self.names().next().is_none()
    }

    /// Matches the leading segments of `path`; on success, the captured values (in template
    /// order) and the unmatched rest (empty or starting with `/`).
    fn match_prefix<'p>(&self, path: &'p str) -> Option<(Vec<&'p str>, &'p str)> {
        let mut rest = path.strip_prefix('/')?;
        let mut captures = Vec::new();
        let last = self.segments.len() - 1;
        for (i, seg) in self.segments.iter().enumerate() {
            let end = rest.find('/').unwrap_or(rest.len());
            let (value, tail) = rest.split_at(end);
            // A literal segment also matches with path parameters after it (`orders;v=2`).
            let bare = value.split(';').next().unwrap_or(value);
            match seg {
                Segment::Literal(l) if l == bare => {}
                Segment::Literal(_) => return None,
                Segment::Capture(_) if value.is_empty() => return None,
                Segment::Capture(_) => captures.push(value),
            }
            if i == last {
                return Some((captures, tail));
            }
            rest = tail.strip_prefix('/')?;
        }
        unreachable!("a template has at least one segment")
    }
}

/// A rewrite target: literal text and `{name}` references to captures.
#[derive(Debug)]
struct Rewrite {
    parts: Vec<Part>,
}

#[derive(Debug)]
enum Part {
    Literal(String),
    /// The index of the capture in the path template.
    Capture(usize),
}

impl Rewrite {
    /// Parses `to` against the captures `names` of the path template.
    pub fn parse(to: &str, names: &[&str]) -> Result<Rewrite, String> {
        let mut parts = Vec::new();
        let mut rest = to;
        while let Some(open) = rest.find('{') {
            if open > 0 {
                parts.push(Part::Literal(rest[..open].to_string()));
            }
            let close = rest[open..]
                .find('}')
                .ok_or_else(|| format!("`{to}`: a `{{` is not closed"))?;
            let name = &rest[open + 1..open + close];
            let index = names.iter().position(|n| *n == name).ok_or_else(|| {
                format!("`{to}`: `{{{name}}}` is not captured by the route's path")
            })?;
            parts.push(Part::Capture(index));
            rest = &rest[open + close + 1..];
        }
        if rest.contains('}') {
            return Err(format!("`{to}`: a `}}` is not opened"));
        }
        if !rest.is_empty() {
            parts.push(Part::Literal(rest.to_string()));
        }
        Ok(Rewrite { parts })
    }

    /// The rewritten path: the parts with the captures filled in, then the unmatched `rest`
    /// of the path (before a query the rewrite may hold).
    fn apply(&self, captures: &[&str], rest: &str) -> String {
        let mut out = String::new();
        for part in &self.parts {
            match part {
                Part::Literal(l) => out.push_str(l),
                Part::Capture(i) => out.push_str(captures[*i]),
            }
        }
        let query = out.find('?').map(|at| out.split_off(at));
        if !rest.is_empty() {
            while out.ends_with('/') {
                out.pop();
            }
            out.push_str(rest);
        }
        if !out.starts_with('/') {
            out.insert(0, '/');
        }
        if let Some(q) = query {
            out.push_str(&q);
        }
        out
    }
}

/// Checks `route`'s path, rewrite and headers the way [`Matcher::new`] reads them; the error
/// names the key at fault.
pub fn check(route: &RouteConfig) -> Result<(), (&'static str, String)> {
    let mut template = None;
    for (key, p) in [("path", &route.path), ("path_prefix", &route.path_prefix)] {
        if let Some(p) = p {
            if p.contains(['?', '#']) || p.chars().any(|c| c.is_whitespace() || c.is_control()) {
                return Err((
                    key,
                    format!("`{p}` is not a path (it must start with / and hold no query, fragment or space)"),
                ));
            }
            template = Some(Template::parse(p).map_err(|m| (key, m))?);
        }
    }
    if let Some(to) = &route.rewrite {
        let Some(t) = &template else {
            return Err(("rewrite", "needs path or path_prefix".into()));
        };
        if route.strip_prefix {
            return Err(("rewrite", "set either rewrite or strip_prefix".into()));
        }
        if to.contains('#') || to.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err((
                "rewrite",
                format!("`{to}` is not a path (with an optional query)"),
            ));
        }
        Rewrite::parse(to, &t.names().collect::<Vec<_>>()).map_err(|m| ("rewrite", m))?;
    }
    for (name, value) in &route.headers {
        if HeaderName::from_bytes(name.as_bytes()).is_err()
            || name.bytes().any(|b| b.is_ascii_uppercase())
        {
            return Err((
                "headers",
                format!("`{name}` is not a lower-case header name"),
            ));
        }
        if HeaderValue::from_str(value).is_err() {
            return Err((
                "headers",
                format!("the value for `{name}` is not a valid header value"),
            ));
        }
    }
    Ok(())
}

/// What a route matches, built from a checked [`RouteConfig`].
#[derive(Debug)]
pub struct Matcher {
    host: Option<HostMatch>,
    path: PathMatch,
    methods: Vec<Method>,
    headers: Vec<(HeaderName, Option<HeaderValue>)>,
}

#[derive(Debug)]
enum HostMatch {
    Exact(String),
    /// `*.example.com` stored as `.example.com`.
    Suffix(String),
}

#[derive(Debug)]
enum PathMatch {
    Any,
    Exact(String),
    /// A literal prefix, on segment boundaries.
    Prefix(String),
    Template {
        template: Template,
        whole: bool,
    },
}

#[derive(Debug)]
enum PathChange {
    Keep,
    Strip,
    Rewrite(Rewrite),
}

/// How the matched path becomes the forwarded one.
#[derive(Debug)]
pub struct PathRewrite(PathChange);

impl Matcher {
    /// Builds from a route that passed [`check`].
    pub fn new(r: &RouteConfig) -> (Matcher, PathRewrite) {
        let host = r.host.as_ref().map(|h| match h.strip_prefix('*') {
            Some(suffix) => HostMatch::Suffix(suffix.to_string()),
            None => HostMatch::Exact(h.clone()),
        });
        let parse = |p: &str| Template::parse(p).expect("checked");
        let (path, template) = match (&r.path, &r.path_prefix) {
            (Some(p), _) => {
                let t = parse(p);
                if t.is_literal() {
                    (PathMatch::Exact(p.clone()), Some(t))
                } else {
                    (
                        PathMatch::Template {
                            template: t.clone(),
                            whole: true,
                        },
                        Some(t),
                    )
                }
            }
            (None, Some(p)) => {
                let t = parse(p);
                let trimmed = p.trim_end_matches('/');
                if t.is_literal() {
                    (PathMatch::Prefix(trimmed.to_string()), Some(t))
                } else {
                    (
                        PathMatch::Template {
                            template: parse(trimmed),
                            whole: false,
                        },
                        Some(t),
                    )
                }
            }
            (None, None) => (PathMatch::Any, None),
        };
        let change = match (&r.rewrite, template) {
            (Some(to), Some(t)) => PathChange::Rewrite(
                Rewrite::parse(to, &t.names().collect::<Vec<_>>()).expect("checked"),
            ),
            _ if r.strip_prefix => PathChange::Strip,
            _ => PathChange::Keep,
        };
        let matcher = Matcher {
            host,
            path,
            methods: r
                .methods
                .iter()
                .filter_map(|m| Method::from_bytes(m.as_bytes()).ok())
                .collect(),
            headers: r
                .headers
                .iter()
                .filter_map(|(n, v)| {
                    let name = HeaderName::from_bytes(n.as_bytes()).ok()?;
                    let value = (v != "*").then(|| HeaderValue::from_str(v).ok()).flatten();
                    Some((name, value))
                })
                .collect(),
        };
        (matcher, PathRewrite(change))
    }

    /// Whether the route takes the request; if so, the path to forward.
    pub fn matches<'p>(
        &self,
        host: Option<&str>,
        path: &'p str,
        method: &Method,
        headers: &HeaderMap,
        rewrite: &PathRewrite,
    ) -> Option<Cow<'p, str>> {
        if !self.methods.is_empty() && !self.methods.contains(method) {
            return None;
        }
        let host_ok = match &self.host {
            None => true,
            Some(HostMatch::Exact(h)) => host == Some(h.as_str()),
            // `.example.com`: at least one label in front.
            Some(HostMatch::Suffix(s)) => {
                host.is_some_and(|h| h.len() > s.len() && h.ends_with(s.as_str()))
            }
        };
        if !host_ok {
            return None;
        }
        for (name, want) in &self.headers {
            let have = headers.get(name)?;
            if want.as_ref().is_some_and(|w| w != have) {
                return None;
            }
        }
        let (captures, rest) = match &self.path {
            PathMatch::Any => return Some(Cow::Borrowed(path)),
            // A `;` ends a segment as `/` does: `/admin;x=1` is `/admin` to servers that take
            // path parameters (Tomcat, Jetty, JAX-RS), so it is routed as `/admin` here.
            PathMatch::Exact(p) => {
                let rest = path.strip_prefix(p.as_str())?;
                if !(rest.is_empty() || rest.starts_with(';')) {
                    return None;
                }
                (Vec::new(), rest)
            }
            PathMatch::Prefix(prefix) => {
                let rest = path.strip_prefix(prefix.as_str())?;
                if !(rest.is_empty() || rest.starts_with('/') || rest.starts_with(';')) {
                    return None;
                }
                (Vec::new(), rest)
            }
            PathMatch::Template { template, whole } => {
                let (captures, rest) = template.match_prefix(path)?;
                if *whole && !rest.is_empty() {
                    return None;
                }
                (captures, rest)
            }
        };
        Some(match &rewrite.0 {
            PathChange::Keep => Cow::Borrowed(path),
            PathChange::Strip if rest.starts_with(';') => Cow::Owned(format!("/{rest}")),
            PathChange::Strip => Cow::Borrowed(if rest.is_empty() { "/" } else { rest }),
            PathChange::Rewrite(r) => Cow::Owned(r.apply(&captures, rest)),
        })
    }
}

/// `path` with its escaped unreserved characters decoded (RFC 3986 section 6.2.2.2); borrowed
/// when it has none.
fn decode_unreserved(path: &str) -> Cow<'_, str> {
    let unreserved_at = |i: usize| {
        let hex = path
            .get(i + 1..i + 3)
            .filter(|h| h.bytes().all(|b| b.is_ascii_hexdigit()))?;
        let c = char::from(u8::from_str_radix(hex, 16).ok()?);
        (c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_' | '~')).then_some(c)
    };
    let mut out = String::new();
    let mut done = 0;
    for (i, _) in path.match_indices('%') {
        if let Some(c) = unreserved_at(i) {
            out.push_str(&path[done..i]);
            out.push(c);
            done = i + 3;
        }
    }
    if out.is_empty() {
        return Cow::Borrowed(path);
    }
    out.push_str(&path[done..]);
    Cow::Owned(out)
}

/// Whether `seg`, cut at its encoded slashes and backslashes (`%2f`, `%5c`), has a dot
/// segment among the pieces: one that an upstream decoding them would resolve.
fn hides_dot_segment(seg: &str) -> bool {
    let dot = |s: &str| matches!(s, "." | "..");
    let mut start = 0;
    let mut cut = false;
    for (i, _) in seg.match_indices('%') {
        let slash = seg
            .get(i + 1..i + 3)
            .is_some_and(|h| h.eq_ignore_ascii_case("2f") || h.eq_ignore_ascii_case("5c"));
        if slash {
            if dot(&seg[start..i]) {
                return true;
            }
            start = i + 3;
            cut = true;
        }
    }
    cut && dot(&seg[start..])
}

/// Why a path is refused.
#[derive(Debug, PartialEq, Eq)]
pub struct BadPath(pub &'static str);

/// The path the gateway routes on and forwards, so that it and the upstream see the same one:
/// 1. percent-encoded unreserved characters decoded (RFC 3986 section 6.2.2.2: `%61` is `a`,
///    `%2e` is `.`); other escapes stay as they are;
/// 2. runs of `/` made one, when `merge_slashes` (`//admin` is `/admin` to many servers);
/// 3. dot segments removed (RFC 3986 section 5.2.4), so that `/api/../admin` cannot reach past
///    a route's prefix.
///
/// A dot segment behind an encoded slash or backslash (`/api%2f..%2fadmin`) is refused: an
/// upstream that decodes those before it routes would resolve it past the route. Paths that
/// need none of this come back borrowed.
pub fn normalize_path(path: &str, merge_slashes: bool) -> Result<Cow<'_, str>, BadPath> {
    let doubled = merge_slashes && path.contains("//");
    // Most paths: no escape, no dot segment (each starts after a `/`), no `//`.
    if !(doubled || path.contains('%') || path.contains("/.") || path.starts_with('.')) {
        return Ok(Cow::Borrowed(path));
    }
    let decoded = decode_unreserved(path);
    if decoded.split('/').any(hides_dot_segment) {
        return Err(BadPath("a dot segment behind an encoded slash"));
    }
    let dot = |seg: &str| matches!(seg, "." | "..");
    if !doubled && !decoded.split('/').any(dot) {
        return Ok(decoded);
    }
    let mut out: Vec<&str> = Vec::new();
    let segments: Vec<&str> = decoded
        .strip_prefix('/')
        .unwrap_or(&decoded)
        .split('/')
        .collect();
    let last = segments.len() - 1;
    let mut trailing_slash = false;
    for (i, seg) in segments.iter().enumerate() {
        match *seg {
            "." => trailing_slash = i == last,
            ".." => {
                out.pop();
                trailing_slash = i == last;
            }
            "" if merge_slashes => trailing_slash = i == last,
            _ => {
                out.push(seg);
                trailing_slash = false;
            }
        }
    }
    let mut joined = String::with_capacity(decoded.len());
    for seg in &out {
        joined.push('/');
        joined.push_str(seg);
    }
    if trailing_slash || joined.is_empty() {
        joined.push('/');
    }
    Ok(Cow::Owned(joined))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(toml_text: &str) -> (Matcher, PathRewrite) {
        let r: RouteConfig = toml::from_str(toml_text).unwrap();
        check(&r).unwrap();
        Matcher::new(&r)
    }

    fn forward(m: &(Matcher, PathRewrite), path: &str) -> Option<String> {
        m.0.matches(None, path, &Method::GET, &HeaderMap::new(), &m.1)
            .map(|p| p.into_owned())
    }

    #[test]
    fn templates_capture_and_rewrite() {
        let r = route(
            "path = \"/users/{id}\"\nrewrite = \"/v2/people/{id}/profile\"\nupstream = \"a\"",
        );
        assert_eq!(
            forward(&r, "/users/42").as_deref(),
            Some("/v2/people/42/profile")
        );
        assert_eq!(forward(&r, "/users/42/x"), None);
        assert_eq!(forward(&r, "/users/"), None);
        assert_eq!(forward(&r, "/users"), None);
        let r =
            route("path_prefix = \"/t/{tenant}/api\"\nrewrite = \"/{tenant}\"\nupstream = \"a\"");
        assert_eq!(
            forward(&r, "/t/acme/api/orders/7").as_deref(),
            Some("/acme/orders/7")
        );
        assert_eq!(forward(&r, "/t/acme/api").as_deref(), Some("/acme"));
        assert_eq!(forward(&r, "/t/acme/apix"), None);
        let r = route("path_prefix = \"/q/{k}\"\nrewrite = \"/search?key={k}\"\nupstream = \"a\"");
        assert_eq!(
            forward(&r, "/q/x/more").as_deref(),
            Some("/search/more?key=x")
        );
        let r = route("path_prefix = \"/old\"\nrewrite = \"/new/\"\nupstream = \"a\"");
        assert_eq!(forward(&r, "/old/a/b").as_deref(), Some("/new/a/b"));
        let r = route("path_prefix = \"/\"\nstrip_prefix = true\nupstream = \"a\"");
        assert_eq!(forward(&r, "/a").as_deref(), Some("/a"));
        let r = route("path_prefix = \"/api/\"\nupstream = \"a\"");
        assert_eq!(forward(&r, "/api").as_deref(), Some("/api"));
        assert_eq!(forward(&r, "/apix"), None);
    }

    #[test]
    fn path_parameters_end_a_segment() {
        let r = route("path = \"/admin\"\nupstream = \"a\"");
        assert_eq!(forward(&r, "/admin;x=1").as_deref(), Some("/admin;x=1"));
        assert_eq!(forward(&r, "/admin;").as_deref(), Some("/admin;"));
        assert_eq!(forward(&r, "/adminx;x=1"), None);
        let r = route("path_prefix = \"/admin\"\nstrip_prefix = true\nupstream = \"a\"");
        assert_eq!(
            forward(&r, "/admin;jsessionid=1/x").as_deref(),
            Some("/;jsessionid=1/x")
        );
        assert_eq!(forward(&r, "/admin/x;y").as_deref(), Some("/x;y"));
        assert_eq!(forward(&r, "/adminx;y"), None);
        let r = route("path = \"/users/{id}/orders\"\nupstream = \"a\"");
        assert_eq!(
            forward(&r, "/users/7/orders;v=2").as_deref(),
            Some("/users/7/orders;v=2")
        );
        assert_eq!(forward(&r, "/users/7/ordersx"), None);
    }

    #[test]
    fn bad_templates_are_refused() {
        for (p, rw) in [
            ("/users/{id", None),
            ("/users/x{id}", None),
            ("/users/{}", None),
            ("/a/{id}/{id}", None),
            ("/users/{id}", Some("/x/{other}")),
            ("/users/{id}", Some("/x/{id")),
            ("/users/{id}", Some("/x/id}")),
        ] {
            let mut r = RouteConfig {
                path: Some(p.into()),
                rewrite: rw.map(String::from),
                ..RouteConfig::default()
            };
            assert!(check(&r).is_err(), "{p} {rw:?}");
            r.path = None;
            r.path_prefix = Some(p.into());
            assert!(check(&r).is_err(), "prefix {p} {rw:?}");
        }
    }

    #[test]
    fn headers_match_exactly_or_by_presence() {
        let r = route("headers = { x-version = \"2\", x-tenant = \"*\" }\nupstream = \"a\"");
        let mut h = HeaderMap::new();
        let m = |h: &HeaderMap| r.0.matches(None, "/", &Method::GET, h, &r.1).is_some();
        assert!(!m(&h));
        h.insert("x-version", HeaderValue::from_static("2"));
        assert!(!m(&h));
        h.insert("x-tenant", HeaderValue::from_static("anything"));
        assert!(m(&h));
        h.insert("x-version", HeaderValue::from_static("3"));
        assert!(!m(&h));
    }

    #[test]
    fn paths_are_normalised() {
        for (input, want) in [
            ("/a/b", "/a/b"),
            ("/api/../admin", "/admin"),
            ("/api/%2e%2E/admin", "/admin"),
            ("/api/.%2e/admin", "/admin"),
            ("/../../etc/passwd", "/etc/passwd"),
            ("/a/./b/.", "/a/b/"),
            ("/a/..", "/"),
            ("/..", "/"),
            ("/a/...", "/a/..."),
            ("/a/.hidden", "/a/.hidden"),
            ("/a/%2e%2e%2e", "/a/..."),
            // Unreserved characters decoded; other escapes kept as they are.
            ("/%61dmin/%7Eme", "/admin/~me"),
            ("/a%2Fb/c%20d/%25/%00/%zz/%4", "/a%2Fb/c%20d/%25/%00/%zz/%4"),
            ("/%C3%A9t%C3%A9", "/%C3%A9t%C3%A9"),
            // Slashes merged.
            ("//admin", "/admin"),
            ("/a//b///c//", "/a/b/c/"),
            ("/a/.//../b", "/b"),
        ] {
            assert_eq!(normalize_path(input, true).unwrap(), want, "{input}");
        }
        assert_eq!(normalize_path("/a//b", false).unwrap(), "/a//b");
        assert_eq!(normalize_path("/a//../b", false).unwrap(), "/a/b");
        assert!(matches!(
            normalize_path("/plain/path", true),
            Ok(Cow::Borrowed(_))
        ));
        // Dot segments behind encoded slashes or backslashes.
        for input in [
            "/api%2f..%2fadmin",
            "/api/%2F..",
            "/api/..%5Cadmin",
            "/api/%2e%2e%2fadmin",
            "/x/.%2f",
        ] {
            assert!(normalize_path(input, true).is_err(), "{input}");
        }
        // Encoded slashes in names are fine.
        assert_eq!(
            normalize_path("/projects/group%2Fname/files/a%2Fb.txt", true).unwrap(),
            "/projects/group%2Fname/files/a%2Fb.txt"
        );
    }
}
