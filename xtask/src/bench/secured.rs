//! The secured cases of `cargo xtask bench proxy`: keys and tokens made at bench time with the
//! `openssl` command, the gateway's secured routes, HAProxy's equivalent, and the wrk scripts
//! that send each case's request.
//!
//! Both proxies get the same request (a POST with a small JSON body and a bearer token) and do
//! the same work as far as each can: verify the token with the algorithm pinned, check `exp`,
//! and count the subject in a rate limit. The gateway also checks the issuer, the audience and
//! a scope, applies a second rate limit (per client address), validates the body against a
//! JSON Schema and inspects the request; HAProxy 2.6 has no equivalent of the last two.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::Command,
    time::{SystemTime, UNIX_EPOCH},
};

use anyhow::{ensure, Context as _, Result};

use crate::{
    jwt::sign,
    util::{output, toml_string},
};

/// The body every secured case (and its plain baseline) posts.
pub const POST_BODY: &str = r#"{"item":"bench","quantity":3,"note":"hello"}"#;
const ISSUER: &str = "https://issuer.bench.invalid";
const AUDIENCE: &str = "bench";
const SUBJECT: &str = "bench-user";
/// Rate limits high enough never to refuse during the bench: the cost of counting is measured,
/// not the refusals.
const LIMIT_PER_MINUTE: u64 = 1_000_000_000;

/// What a case sends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Request {
    /// GET / without credentials.
    Get,
    /// POST /plain with [`POST_BODY`], no credentials.
    PostPlain,
    /// POST /hs with an HS256 token.
    PostHs256,
    /// POST /rs with an RS256 token.
    PostRs256,
    /// POST /rs-uncached with an RS256 token, to a provider whose cache is off: every request
    /// costs what a first-seen token costs.
    PostRs256Uncached,
    /// POST /rs with an RS256 token whose signature is broken: refused with 401.
    PostBadToken,
}

impl Request {
    pub fn path(self) -> &'static str {
        match self {
            Request::Get => "/",
            Request::PostPlain => "/plain",
            Request::PostHs256 => "/hs",
            Request::PostRs256 | Request::PostBadToken => "/rs",
            Request::PostRs256Uncached => "/rs-uncached",
        }
    }

    /// The status the proxy answers with.
    pub fn expected_status(self) -> u16 {
        if self == Request::PostBadToken {
            401
        } else {
            200
        }
    }

    /// The raw HTTP/1.1 request, for the check before the load.
    pub fn raw(self, addr: SocketAddr, tokens: &Tokens) -> String {
        match self {
            Request::Get => format!("GET / HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"),
            _ => {
                let auth = tokens
                    .for_request(self)
                    .map(|t| format!("Authorization: Bearer {t}\r\n"))
                    .unwrap_or_default();
                format!(
                    "POST {} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\
                     Content-Type: application/json\r\nContent-Length: {}\r\n{auth}\r\n{POST_BODY}",
                    self.path(),
                    POST_BODY.len()
                )
            }
        }
    }

    /// A wrk script that sends this request, or `None` for wrk's default GET /.
    pub fn wrk_script(self, tokens: &Tokens, dir: &Path) -> Result<Option<PathBuf>> {
        if self == Request::Get {
            return Ok(None);
        }
        let mut script = format!(
            "wrk.method = \"POST\"\nwrk.path = \"{}\"\nwrk.body = '{POST_BODY}'\n\
             wrk.headers[\"Content-Type\"] = \"application/json\"\n",
            self.path()
        );
        if let Some(t) = tokens.for_request(self) {
            script += &format!("wrk.headers[\"Authorization\"] = \"Bearer {t}\"\n");
        }
        let path = dir.join(format!("wrk-{}.lua", self.path().trim_matches('/')));
        let path = if self == Request::PostBadToken {
            dir.join("wrk-bad-token.lua")
        } else {
            path
        };
        std::fs::write(&path, script).with_context(|| format!("writing {}", path.display()))?;
        Ok(Some(path))
    }
}

/// The keys and tokens of one run, as files in the bench's directory.
pub struct Tokens {
    pub hs_secret: PathBuf,
    pub rs_public: PathBuf,
    pub hs256: String,
    pub rs256: String,
    pub bad: String,
}

impl Tokens {
    /// Makes an RSA-2048 key pair, an HMAC secret, and a token for each, valid for a day.
    pub fn make(dir: &Path) -> Result<Tokens> {
        let rs_private = dir.join("rs256.key");
        let rs_public = dir.join("rs256.pub");
        let hs_secret = dir.join("hs256.secret");
        output(
            Command::new("openssl")
                .args([
                    "genpkey",
                    "-algorithm",
                    "RSA",
                    "-pkeyopt",
                    "rsa_keygen_bits:2048",
                    "-out",
                ])
                .arg(&rs_private),
        )?;
        output(
            Command::new("openssl")
                .args(["pkey", "-pubout", "-in"])
                .arg(&rs_private)
                .arg("-out")
                .arg(&rs_public),
        )?;
        let secret: String = output(Command::new("openssl").args(["rand", "-hex", "32"]))?
            .trim()
            .to_string();
        ensure!(secret.len() == 64, "openssl rand gave {secret:?}");
        std::fs::write(&hs_secret, &secret)
            .with_context(|| format!("writing {}", hs_secret.display()))?;
        let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
        let claims = format!(
            r#"{{"iss":"{ISSUER}","aud":"{AUDIENCE}","sub":"{SUBJECT}","scope":"bench read","iat":{now},"exp":{}}}"#,
            now + 86400
        );
        let hs256 = sign(
            r#"{"alg":"HS256","typ":"JWT"}"#,
            &claims,
            &["-hmac", &secret],
        )?;
        let rs256 = sign(
            r#"{"alg":"RS256","typ":"JWT"}"#,
            &claims,
            &["-sign", &rs_private.to_string_lossy()],
        )?;
        // Flip a bit in the middle of the signature: the same shape, a wrong signature.
        let mut bad = rs256.clone().into_bytes();
        let at = bad.len() - 20;
        bad[at] = if bad[at] == b'A' { b'B' } else { b'A' };
        Ok(Tokens {
            hs_secret,
            rs_public,
            hs256,
            rs256,
            bad: String::from_utf8(bad)?,
        })
    }

    fn for_request(&self, r: Request) -> Option<&str> {
        match r {
            Request::Get | Request::PostPlain => None,
            Request::PostHs256 => Some(&self.hs256),
            Request::PostRs256 | Request::PostRs256Uncached => Some(&self.rs256),
            Request::PostBadToken => Some(&self.bad),
        }
    }
}

/// The gateway's providers and routes beyond the plain GET one (they go before it, which
/// matches every path): `/plain` (a POST, no security), and the secured `/hs`, `/rs` and
/// `/rs-uncached`.
pub fn gateway_routes(tokens: &Tokens, dir: &Path) -> Result<String> {
    let schema = dir.join("order.schema.json");
    std::fs::write(
        &schema,
        r#"{
  "type": "object",
  "required": ["item", "quantity"],
  "properties": {
    "item": {"type": "string", "maxLength": 64},
    "quantity": {"type": "integer", "minimum": 1, "maximum": 1000},
    "note": {"type": "string", "maxLength": 200}
  },
  "additionalProperties": false
}
"#,
    )?;
    let provider = |name: &str, alg: &str, key: String, cache: &str| {
        format!(
            "[auth.providers.{name}]\ntype = \"jwt\"\nalgorithms = [\"{alg}\"]\n{key}\n\
             issuer = \"{ISSUER}\"\naudiences = [\"{AUDIENCE}\"]\n{cache}\n"
        )
    };
    let secured = |name: &str, path: &str, provider: &str| {
        format!(
            "[[routes]]\nname = \"{name}\"\npath = \"{path}\"\nupstream = \"bench\"\n\
             [routes.auth]\nproviders = [\"{provider}\"]\nscopes = [\"bench\"]\n\
             [[routes.rate_limits]]\nname = \"per-user\"\nkey = \"subject\"\n\
             limit = {LIMIT_PER_MINUTE}\nper = \"1m\"\n\
             [[routes.rate_limits]]\nname = \"per-client\"\nkey = \"client_ip\"\n\
             limit = {LIMIT_PER_MINUTE}\nper = \"1m\"\n\
             [routes.validate]\ncontent_types = [\"application/json\"]\n\
             json_schema = {}\n\
             [routes.inspect]\nmode = \"block\"\n\n",
            toml_string(&schema.to_string_lossy())
        )
    };
    let hs_key = format!(
        "secret_file = {}",
        toml_string(&tokens.hs_secret.to_string_lossy())
    );
    let rs_key = format!(
        "public_key_file = {}",
        toml_string(&tokens.rs_public.to_string_lossy())
    );
    Ok([
        provider("bench-hs", "HS256", hs_key, ""),
        provider("bench-rs", "RS256", rs_key.clone(), ""),
        provider("bench-rs-uncached", "RS256", rs_key, "cache_size = 0"),
        "[[routes]]\nname = \"plain\"\npath = \"/plain\"\nupstream = \"bench\"\n\n".to_string(),
        secured("hs256", "/hs", "bench-hs"),
        secured("rs256", "/rs", "bench-rs"),
        secured("rs256-uncached", "/rs-uncached", "bench-rs-uncached"),
    ]
    .concat())
}

/// HAProxy as the reference: a plain reverse proxy with keep-alive to the upstream and, on
/// `/hs` and `/rs`, `jwt_verify` with the algorithm pinned, `exp` checked and a stick-table
/// rate limit on the subject. As many threads as the gateway has workers, bound each to its own
/// CPU as the gateway binds its workers (`cpus`: the CPUs to use, one per thread; empty: not
/// bound); no logging.
pub fn haproxy_config_text(
    listen: SocketAddr,
    upstream: SocketAddr,
    threads: u32,
    cpus: &[usize],
    tokens: &Tokens,
) -> Result<String> {
    let secret = std::fs::read_to_string(&tokens.hs_secret)?;
    let cpu_map = if cpus.is_empty() {
        String::new()
    } else {
        let list: Vec<String> = cpus.iter().map(usize::to_string).collect();
        format!("\x20   cpu-map auto:1/1-{threads} {}\n", list.join(" "))
    };
    Ok(format!(
        "# Written by `cargo xtask bench proxy`.\n\
         global\n\
         \x20   nbthread {threads}\n\
         {cpu_map}\
         \n\
         defaults\n\
         \x20   mode http\n\
         \x20   timeout connect 5s\n\
         \x20   timeout client 30s\n\
         \x20   timeout server 30s\n\
         \n\
         frontend bench\n\
         \x20   bind {listen}\n\
         \x20   acl hs path /hs\n\
         \x20   acl rs path /rs\n\
         \x20   acl secured path /hs /rs\n\
         \x20   http-request set-var(txn.bearer) http_auth_bearer if secured\n\
         \x20   http-request set-var(txn.alg) var(txn.bearer),jwt_header_query('$.alg') if secured\n\
         \x20   http-request deny deny_status 401 if hs !{{ var(txn.alg) -m str HS256 }}\n\
         \x20   http-request deny deny_status 401 if rs !{{ var(txn.alg) -m str RS256 }}\n\
         \x20   http-request deny deny_status 401 if hs !{{ var(txn.bearer),jwt_verify(txn.alg,\"{secret}\") -m int 1 }}\n\
         \x20   http-request deny deny_status 401 if rs !{{ var(txn.bearer),jwt_verify(txn.alg,\"{public}\") -m int 1 }}\n\
         \x20   http-request set-var(txn.now) date() if secured\n\
         \x20   http-request set-var(txn.exp) var(txn.bearer),jwt_payload_query('$.exp','int') if secured\n\
         \x20   http-request deny deny_status 401 if secured {{ var(txn.exp),sub(txn.now) -m int lt 0 }}\n\
         \x20   http-request set-var(txn.sub) var(txn.bearer),jwt_payload_query('$.sub') if secured\n\
         \x20   http-request track-sc0 var(txn.sub) table per_user if secured\n\
         \x20   http-request deny deny_status 429 if secured {{ sc_http_req_rate(0) gt {LIMIT_PER_MINUTE} }}\n\
         \x20   default_backend bench\n\
         \n\
         backend per_user\n\
         \x20   stick-table type string len 64 size 100k expire 60s store http_req_rate(60s)\n\
         \n\
         backend bench\n\
         \x20   http-reuse always\n\
         \x20   server upstream {upstream}\n",
        secret = secret.trim(),
        public = tokens.rs_public.display(),
    ))
}
