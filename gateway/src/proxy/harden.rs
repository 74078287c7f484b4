//! Response hardening: security headers on every response, upstream headers that give the
//! software away removed, and CORS (preflights answered by the gateway).

use std::time::Duration;

use hyper::{
    header::{self, HeaderMap, HeaderName, HeaderValue},
    http::request::Parts,
    Method, StatusCode,
};
use serde::Deserialize;

use super::reject::Rejection;

/// `[security_headers]` (every route) and `[routes.security_headers]` (replaces it whole for
/// one route). An empty string leaves a header out.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct SecurityHeadersConfig {
    /// Sent on HTTPS responses only (RFC 6797 section 7.2); empty by default, since it binds
    /// browsers for `max-age`.
    pub strict_transport_security: String,
    pub content_security_policy: String,
    pub x_content_type_options: String,
    pub x_frame_options: String,
    pub referrer_policy: String,
    /// Upstream response headers removed (they name the software behind the gateway).
    pub remove: Vec<String>,
}

impl Default for SecurityHeadersConfig {
    fn default() -> Self {
        SecurityHeadersConfig {
            strict_transport_security: String::new(),
            content_security_policy: String::new(),
            x_content_type_options: "nosniff".into(),
            x_frame_options: "DENY".into(),
            referrer_policy: "no-referrer".into(),
            remove: vec!["server".into(), "x-powered-by".into()],
        }
    }
}

impl SecurityHeadersConfig {
    pub fn validate(&self) -> Result<(), (Vec<String>, String)> {
        for (k, v) in [
            ("strict_transport_security", &self.strict_transport_security),
            ("content_security_policy", &self.content_security_policy),
            ("x_content_type_options", &self.x_content_type_options),
            ("x_frame_options", &self.x_frame_options),
            ("referrer_policy", &self.referrer_policy),
        ] {
            if HeaderValue::from_str(v).is_err() {
                return Err((vec![k.into()], "is not a valid header value".into()));
            }
        }
        if let Some(n) = self
            .remove
            .iter()
            .find(|n| HeaderName::from_bytes(n.as_bytes()).is_err())
        {
            return Err((vec!["remove".into()], format!("`{n}` is not a header name")));
        }
        Ok(())
    }
}

/// Compiled security headers.
pub struct SecurityHeaders {
    hsts: Option<HeaderValue>,
    set: Vec<(HeaderName, HeaderValue)>,
    remove: Vec<HeaderName>,
    /// `set` as `name: value` lines, and the HSTS line: what [`SecurityHeaders::write`] writes.
    lines: Vec<u8>,
    hsts_line: Vec<u8>,
}

impl SecurityHeaders {
    pub fn new(c: &SecurityHeadersConfig) -> SecurityHeaders {
        let value = |v: &str| (!v.is_empty()).then(|| HeaderValue::from_str(v).expect("validated"));
        let set = [
            (header::CONTENT_SECURITY_POLICY, &c.content_security_policy),
            (header::X_CONTENT_TYPE_OPTIONS, &c.x_content_type_options),
            (header::X_FRAME_OPTIONS, &c.x_frame_options),
            (header::REFERRER_POLICY, &c.referrer_policy),
        ]
        .into_iter()
        .filter_map(|(n, v)| Some((n, value(v)?)))
        .collect::<Vec<_>>();
        let hsts = value(&c.strict_transport_security);
        let mut lines = Vec::new();
        for (n, v) in &set {
            super::h1::field(&mut lines, n, v);
        }
        let mut hsts_line = Vec::new();
        if let Some(v) = &hsts {
            super::h1::field(&mut hsts_line, &header::STRICT_TRANSPORT_SECURITY, v);
        }
        SecurityHeaders {
            hsts,
            set,
            lines,
            hsts_line,
            remove: c
                .remove
                .iter()
                .map(|n| HeaderName::from_bytes(n.as_bytes()).expect("validated"))
                .collect(),
        }
    }

    /// Whether [`SecurityHeaders::apply`] would remove or replace a field under `name`.
    pub fn replaces(&self, name: &HeaderName, tls: bool) -> bool {
        self.remove.contains(name)
            || self.set.iter().any(|(n, _)| n == name)
            || (tls && self.hsts.is_some() && name == header::STRICT_TRANSPORT_SECURITY)
    }

    /// Writes the fields [`SecurityHeaders::apply`] sets, as `name: value` lines: with
    /// [`SecurityHeaders::replaces`] to leave out the response's own, the same head.
    pub fn write(&self, out: &mut Vec<u8>, tls: bool) {
        out.extend_from_slice(&self.lines);
        if tls {
            out.extend_from_slice(&self.hsts_line);
        }
    }

    /// Applies to a response: removes first, then sets (replacing the upstream's values).
    pub fn apply(&self, headers: &mut HeaderMap, tls: bool) {
        // Most responses have none of them: one look at each field is cheaper than a lookup
        // in the map for each name.
        if headers.keys().any(|k| self.remove.contains(k)) {
            for n in &self.remove {
                headers.remove(n);
            }
        }
        for (n, v) in &self.set {
            headers.insert(n.clone(), v.clone());
        }
        if let (true, Some(v)) = (tls, &self.hsts) {
            headers.insert(header::STRICT_TRANSPORT_SECURITY, v.clone());
        }
    }
}

/// `[routes.cors]`.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct CorsConfig {
    /// Origins allowed (`https://app.example.com`), or `["*"]` for any.
    pub allow_origins: Vec<String>,
    /// Methods a preflight may ask for; empty: GET, HEAD and POST.
    pub allow_methods: Vec<String>,
    /// Request headers a preflight may ask for (case-insensitive).
    pub allow_headers: Vec<String>,
    /// Response headers scripts may read.
    pub expose_headers: Vec<String>,
    pub allow_credentials: bool,
    /// How long browsers may cache a preflight's answer.
    #[serde(default, deserialize_with = "crate::config::optional_duration")]
    pub max_age: Option<Duration>,
}

impl CorsConfig {
    pub fn validate(&self) -> Result<(), (Vec<String>, String)> {
        let err = |k: &str, m: String| Err((vec![k.to_string()], m));
        if self.allow_origins.is_empty() {
            return err("allow_origins", "needs at least one origin or \"*\"".into());
        }
        let any = self.allow_origins.iter().any(|o| o == "*");
        if any && self.allow_origins.len() > 1 {
            return err("allow_origins", "\"*\" must stand alone".into());
        }
        if any && self.allow_credentials {
            return err(
                "allow_credentials",
                "cannot be true with allow_origins = [\"*\"] (browsers refuse it)".into(),
            );
        }
        if let Some(o) = self.allow_origins.iter().find(|o| {
            *o != "*"
                && (!(o.starts_with("https://") || o.starts_with("http://"))
                    || o.ends_with('/')
                    || HeaderValue::from_str(o).is_err())
        }) {
            return err(
                "allow_origins",
                format!("`{o}` is not an origin (scheme://host[:port], no path)"),
            );
        }
        if let Some(m) = self
            .allow_methods
            .iter()
            .find(|m| Method::from_bytes(m.as_bytes()).is_err())
        {
            return err("allow_methods", format!("`{m}` is not a method"));
        }
        for (k, list) in [
            ("allow_headers", &self.allow_headers),
            ("expose_headers", &self.expose_headers),
        ] {
            if let Some(h) = list
                .iter()
                .find(|h| HeaderName::from_bytes(h.as_bytes()).is_err())
            {
                return err(k, format!("`{h}` is not a header name"));
            }
        }
        Ok(())
    }
}

/// A compiled CORS policy.
pub struct Cors {
    /// Lower case; empty: any origin.
    origins: Vec<String>,
    methods: Vec<Method>,
    methods_value: HeaderValue,
    /// Lower case.
    headers: Vec<String>,
    expose: Option<HeaderValue>,
    credentials: bool,
    max_age: Option<HeaderValue>,
}

impl Cors {
    pub fn new(c: &CorsConfig) -> Cors {
        let methods: Vec<Method> = if c.allow_methods.is_empty() {
            vec![Method::GET, Method::HEAD, Method::POST]
        } else {
            c.allow_methods
                .iter()
                .map(|m| Method::from_bytes(m.as_bytes()).expect("validated"))
                .collect()
        };
        let join = |items: Vec<&str>| HeaderValue::from_str(&items.join(", ")).ok();
        Cors {
            origins: c
                .allow_origins
                .iter()
                .filter(|o| *o != "*")
                .map(|o| o.to_ascii_lowercase())
                .collect(),
            methods_value: join(methods.iter().map(Method::as_str).collect())
                .expect("methods are tokens"),
            methods,
            headers: c
                .allow_headers
                .iter()
                .map(|h| h.to_ascii_lowercase())
                .collect(),
            expose: (!c.expose_headers.is_empty())
                .then(|| join(c.expose_headers.iter().map(String::as_str).collect()))
                .flatten(),
            credentials: c.allow_credentials,
            max_age: c.max_age.map(|d| HeaderValue::from(d.as_secs())),
        }
    }

    fn allowed_origin(&self, origin: &HeaderValue) -> bool {
        self.origins.is_empty()
            || origin
                .to_str()
                .is_ok_and(|o| self.origins.iter().any(|a| a.eq_ignore_ascii_case(o)))
    }

    /// `Access-Control-Allow-Origin` for an allowed origin: `*` for any origin without
    /// credentials, else the origin itself.
    fn allow_origin_value(&self, origin: &HeaderValue) -> HeaderValue {
        if self.origins.is_empty() && !self.credentials {
            HeaderValue::from_static("*")
        } else {
            origin.clone()
        }
    }

    /// Whether a request is a preflight: OPTIONS with Origin and
    /// Access-Control-Request-Method.
    pub fn is_preflight(parts: &Parts) -> bool {
        parts.method == Method::OPTIONS
            && parts.headers.contains_key(header::ORIGIN)
            && parts
                .headers
                .contains_key(header::ACCESS_CONTROL_REQUEST_METHOD)
    }

    /// Answers a preflight: the headers of a 204, or a 403 when the origin, the method or a
    /// header is not allowed.
    pub fn preflight(&self, parts: &Parts) -> Result<HeaderMap, Rejection> {
        let refuse = |what: String| {
            Rejection::new(
                StatusCode::FORBIDDEN,
                "cors_rejected",
                "cors",
                format!("CORS preflight refused: {what}"),
            )
        };
        let origin = &parts.headers[header::ORIGIN];
        if !self.allowed_origin(origin) {
            return Err(refuse("origin not allowed".into()));
        }
        let method = parts.headers[header::ACCESS_CONTROL_REQUEST_METHOD].as_bytes();
        if !self.methods.iter().any(|m| m.as_str().as_bytes() == method) {
            return Err(refuse(format!(
                "method {} not allowed",
                String::from_utf8_lossy(method)
            )));
        }
        let asked: Vec<String> = parts
            .headers
            .get_all(header::ACCESS_CONTROL_REQUEST_HEADERS)
            .iter()
            .flat_map(|v| v.to_str().unwrap_or("\u{0}").split(','))
            .map(|h| h.trim().to_ascii_lowercase())
            .filter(|h| !h.is_empty())
            .collect();
        if let Some(h) = asked.iter().find(|h| !self.headers.contains(h)) {
            return Err(refuse(format!("header {h} not allowed")));
        }
        let mut out = HeaderMap::new();
        out.insert(
            header::ACCESS_CONTROL_ALLOW_ORIGIN,
            self.allow_origin_value(origin),
        );
        out.insert(
            header::ACCESS_CONTROL_ALLOW_METHODS,
            self.methods_value.clone(),
        );
        if !asked.is_empty() {
            if let Ok(v) = HeaderValue::from_str(&asked.join(", ")) {
                out.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, v);
            }
        }
        if self.credentials {
            out.insert(
                header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
                HeaderValue::from_static("true"),
            );
        }
        if let Some(v) = &self.max_age {
            out.insert(header::ACCESS_CONTROL_MAX_AGE, v.clone());
        }
        out.insert(header::VARY, HeaderValue::from_static("Origin"));
        Ok(out)
    }

    /// Adds the CORS headers to an actual (not preflight) response when the request's
    /// origin is allowed; upstream CORS headers are replaced either way, so the gateway's
    /// policy is the only one.
    pub fn apply(&self, origin: Option<&HeaderValue>, headers: &mut HeaderMap) {
        for n in [
            header::ACCESS_CONTROL_ALLOW_ORIGIN,
            header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
            header::ACCESS_CONTROL_EXPOSE_HEADERS,
        ] {
            headers.remove(n);
        }
        headers.append(header::VARY, HeaderValue::from_static("Origin"));
        let Some(origin) = origin.filter(|o| self.allowed_origin(o)) else {
            return;
        };
        headers.insert(
            header::ACCESS_CONTROL_ALLOW_ORIGIN,
            self.allow_origin_value(origin),
        );
        if self.credentials {
            headers.insert(
                header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
                HeaderValue::from_static("true"),
            );
        }
        if let Some(v) = &self.expose {
            headers.insert(header::ACCESS_CONTROL_EXPOSE_HEADERS, v.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The fields of a head, as `name: value` lines in order.
    fn lines(text: &[u8]) -> Vec<String> {
        String::from_utf8(text.to_vec())
            .unwrap()
            .split("\r\n")
            .filter(|l| !l.is_empty())
            .map(str::to_string)
            .collect()
    }

    /// Writing the head with `replaces` and `write` gives the fields `apply` leaves in the map.
    #[test]
    fn written_security_headers_are_the_applied_ones() {
        let mut with_all = SecurityHeadersConfig {
            content_security_policy: "default-src 'none'".into(),
            strict_transport_security: "max-age=600".into(),
            ..SecurityHeadersConfig::default()
        };
        with_all.remove.push("x-custom-leak".into());
        let configs = [
            SecurityHeadersConfig::default(),
            with_all,
            SecurityHeadersConfig {
                x_frame_options: String::new(),
                remove: Vec::new(),
                ..SecurityHeadersConfig::default()
            },
        ];
        let upstream: &[(&str, &str)] = &[
            ("content-type", "text/plain"),
            ("server", "nginx"),
            ("x-frame-options", "ALLOWALL"),
            ("X-Frame-Options", "SAMEORIGIN"),
            ("x-powered-by", "PHP"),
            ("strict-transport-security", "max-age=1"),
            ("x-custom-leak", "1"),
            ("referrer-policy", "unsafe-url"),
            ("x-kept", "a"),
            ("x-kept", "b"),
        ];
        for config in &configs {
            let headers = SecurityHeaders::new(config);
            for tls in [false, true] {
                let mut map = HeaderMap::new();
                for (n, v) in upstream {
                    map.append(
                        HeaderName::from_bytes(n.as_bytes()).unwrap(),
                        HeaderValue::from_static(v),
                    );
                }
                let mut written = Vec::new();
                for (n, v) in &map {
                    if !headers.replaces(n, tls) {
                        crate::proxy::h1::field(&mut written, n, v);
                    }
                }
                headers.write(&mut written, tls);
                headers.apply(&mut map, tls);
                let mut applied = Vec::new();
                for (n, v) in &map {
                    crate::proxy::h1::field(&mut applied, n, v);
                }
                let (mut written, mut applied) = (lines(&written), lines(&applied));
                written.sort();
                applied.sort();
                assert_eq!(written, applied, "tls {tls}, {:?}", config.remove);
            }
        }
    }

    fn request(method: Method, headers: &[(&str, &str)]) -> Parts {
        let mut b = hyper::Request::builder().method(method).uri("/x");
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(()).unwrap().into_parts().0
    }

    fn cors(origins: &[&str], credentials: bool) -> Cors {
        let c = CorsConfig {
            allow_origins: origins.iter().map(|s| s.to_string()).collect(),
            allow_methods: vec!["GET".into(), "PUT".into()],
            allow_headers: vec!["Authorization".into(), "content-type".into()],
            expose_headers: vec!["x-request-id".into()],
            allow_credentials: credentials,
            max_age: Some(Duration::from_secs(600)),
        };
        c.validate().unwrap();
        Cors::new(&c)
    }

    #[test]
    fn preflights_are_answered_by_the_policy() {
        let c = cors(&["https://app.example.com"], true);
        let ok = request(
            Method::OPTIONS,
            &[
                ("origin", "https://app.example.com"),
                ("access-control-request-method", "PUT"),
                (
                    "access-control-request-headers",
                    "authorization, Content-Type",
                ),
            ],
        );
        assert!(Cors::is_preflight(&ok));
        let h = c.preflight(&ok).unwrap();
        assert_eq!(h["access-control-allow-origin"], "https://app.example.com");
        assert_eq!(h["access-control-allow-methods"], "GET, PUT");
        assert_eq!(
            h["access-control-allow-headers"],
            "authorization, content-type"
        );
        assert_eq!(h["access-control-allow-credentials"], "true");
        assert_eq!(h["access-control-max-age"], "600");
        for bad in [
            [
                ("origin", "https://evil.example"),
                ("access-control-request-method", "PUT"),
            ],
            [
                ("origin", "https://app.example.com"),
                ("access-control-request-method", "DELETE"),
            ],
        ] {
            let r = c.preflight(&request(Method::OPTIONS, &bad)).unwrap_err();
            assert_eq!(r.status, StatusCode::FORBIDDEN);
        }
        let bad_header = request(
            Method::OPTIONS,
            &[
                ("origin", "https://app.example.com"),
                ("access-control-request-method", "GET"),
                ("access-control-request-headers", "x-admin"),
            ],
        );
        assert!(c.preflight(&bad_header).is_err());
    }

    #[test]
    fn actual_responses_get_headers_only_for_allowed_origins() {
        let c = cors(&["*"], false);
        let mut h = HeaderMap::new();
        h.insert(
            "access-control-allow-origin",
            HeaderValue::from_static("https://up"),
        );
        c.apply(Some(&HeaderValue::from_static("https://a.example")), &mut h);
        assert_eq!(h["access-control-allow-origin"], "*");
        assert_eq!(h["access-control-expose-headers"], "x-request-id");
        let c = cors(&["https://app.example.com"], false);
        let mut h = HeaderMap::new();
        h.insert("access-control-allow-origin", HeaderValue::from_static("*"));
        c.apply(
            Some(&HeaderValue::from_static("https://evil.example")),
            &mut h,
        );
        assert!(!h.contains_key("access-control-allow-origin"));
        assert_eq!(h["vary"], "Origin");
    }

    #[test]
    fn bad_cors_configs_are_refused() {
        let mut c = CorsConfig {
            allow_origins: vec!["*".into()],
            allow_credentials: true,
            ..Default::default()
        };
        assert!(c.validate().is_err());
        c.allow_credentials = false;
        assert!(c.validate().is_ok());
        c.allow_origins = vec!["https://a.example/".into()];
        assert!(c.validate().is_err());
        c.allow_origins = vec!["a.example".into()];
        assert!(c.validate().is_err());
    }

    #[test]
    fn security_headers_replace_and_remove() {
        let c = SecurityHeadersConfig {
            strict_transport_security: "max-age=63072000".into(),
            ..Default::default()
        };
        c.validate().unwrap();
        let s = SecurityHeaders::new(&c);
        let mut h = HeaderMap::new();
        h.insert("server", HeaderValue::from_static("Apache/2.4.1"));
        h.insert("x-powered-by", HeaderValue::from_static("PHP/5.2"));
        h.insert("x-frame-options", HeaderValue::from_static("ALLOWALL"));
        s.apply(&mut h, false);
        assert!(!h.contains_key("server") && !h.contains_key("x-powered-by"));
        assert_eq!(h["x-frame-options"], "DENY");
        assert_eq!(h["x-content-type-options"], "nosniff");
        assert!(!h.contains_key("strict-transport-security"));
        s.apply(&mut h, true);
        assert_eq!(h["strict-transport-security"], "max-age=63072000");
    }
}
