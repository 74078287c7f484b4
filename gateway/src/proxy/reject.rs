//! Why the gateway answers a request itself, and the one place that becomes a response.
//!
//! Every phase that refuses a request returns a [`Rejection`]: a status, a stable error code
//! for programs, a message for people, the rule that fired (for the audit log), and any
//! headers the answer needs (WWW-Authenticate, Retry-After, RateLimit...).

use hyper::{
    header::{HeaderMap, HeaderName, HeaderValue},
    StatusCode,
};

/// A refused request.
#[derive(Debug)]
pub struct Rejection {
    pub status: StatusCode,
    /// Stable and machine-readable: `invalid_token`, `insufficient_scope`, `rate_limited`,
    /// `blocked`, `bad_request`...
    pub code: &'static str,
    /// What is wrong, for the client. Never echoes secrets or the token itself.
    pub message: String,
    /// The rule that fired, for the audit log (`auth:jwt:expired`, `inspect:sqli-003`,
    /// `ratelimit:per-user`, `access:deny`...).
    pub rule: String,
    /// Extra response headers (boxed: refusals are the rare path, and `Result`s carrying a
    /// `Rejection` stay small).
    pub headers: Box<HeaderMap>,
    /// Close the connection after answering (request smuggling, broken framing).
    pub close: bool,
}

impl Rejection {
    pub fn new(
        status: StatusCode,
        code: &'static str,
        rule: impl Into<String>,
        message: impl Into<String>,
    ) -> Rejection {
        Rejection {
            status,
            code,
            message: message.into(),
            rule: rule.into(),
            headers: Box::default(),
            close: false,
        }
    }

    /// Adds a response header; values that are not valid header values are left out.
    pub fn with_header(mut self, name: HeaderName, value: &str) -> Rejection {
        if let Ok(v) = HeaderValue::from_str(value) {
            self.headers.append(name, v);
        }
        self
    }
}
