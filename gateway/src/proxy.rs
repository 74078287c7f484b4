//! The reverse proxy: HTTP listeners, routing, and forwarding to upstream pools.
//!
//! Per request: pick the first route that matches host, path and method; answer with its fixed
//! response, or forward to the next target of its upstream pool (round-robin) with the
//! forwarding headers set and the hop-by-hop headers removed. Every response carries the
//! request id; errors are JSON bodies that carry it too.

use std::{
    convert::Infallible,
    net::SocketAddr,
    sync::{
        atomic::{AtomicU64, AtomicUsize, Ordering},
        Arc,
    },
    time::Duration,
};

use bytes::Bytes;
use http_body_util::{combinators::BoxBody, BodyExt as _, Full};
use hyper::{
    body::Incoming,
    header::{self, HeaderMap, HeaderName, HeaderValue},
    Method, Request, Response, StatusCode, Uri,
};
use hyper_util::{
    client::legacy::{connect::HttpConnector, Client},
    rt::{TokioExecutor, TokioIo},
    server::conn::auto,
};
use tokio::{net::TcpListener, sync::watch};

use crate::{
    config::{Config, RouteConfig},
    xdp::error_chain,
};

type Body = BoxBody<Bytes, hyper::Error>;

/// The request id header, kept when the client sends a valid one.
pub const REQUEST_ID: &str = "x-request-id";

/// What the proxy serves with: routes and pools built from one config.
pub struct Proxy {
    routes: Vec<Route>,
    client: Client<HttpConnector, Incoming>,
    ids: RequestIds,
}

struct Route {
    host: Option<HostMatch>,
    path: PathMatch,
    methods: Vec<Method>,
    action: Action,
    timeout: Duration,
}

enum HostMatch {
    Exact(String),
    /// `*.example.com` stored as `.example.com`.
    Suffix(String),
}

enum PathMatch {
    Any,
    Exact(String),
    Prefix { prefix: String, strip: bool },
}

enum Action {
    Forward(Arc<Pool>),
    Respond { status: StatusCode, body: Bytes },
}

/// An upstream pool: its targets and the round-robin cursor.
struct Pool {
    name: String,
    targets: Vec<SocketAddr>,
    next: AtomicUsize,
}

impl Pool {
    fn pick(&self) -> SocketAddr {
        let i = self.next.fetch_add(1, Ordering::Relaxed);
        self.targets[i % self.targets.len()]
    }
}

/// Request ids: a random per-process prefix and a counter, unique without a syscall.
struct RequestIds {
    prefix: u64,
    counter: AtomicU64,
}

impl RequestIds {
    fn new() -> RequestIds {
        let mut seed = [0u8; 8];
        // SAFETY: getrandom writes at most 8 bytes into the buffer. On failure the time is
        // a good enough prefix: ids only need to be unique, not secret.
        let got = unsafe { libc::getrandom(seed.as_mut_ptr().cast(), seed.len(), 0) };
        let prefix = if got == 8 {
            u64::from_ne_bytes(seed)
        } else {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or_default()
        };
        RequestIds {
            prefix,
            counter: AtomicU64::new(0),
        }
    }

    fn next(&self) -> String {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        format!("{:016x}{n:016x}", self.prefix)
    }
}

/// A request id the client sent is kept when it is 1 to 128 characters of letters, digits and
/// `-_.:`; anything else is replaced, so no one can inject text into logs or upstreams.
fn valid_request_id(v: &HeaderValue) -> bool {
    let b = v.as_bytes();
    (1..=128).contains(&b.len())
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.' | b':'))
}

impl Proxy {
    /// Builds the routes of `config` (already validated).
    pub fn new(config: &Config) -> Proxy {
        let pools: std::collections::BTreeMap<&str, Arc<Pool>> = config
            .upstreams
            .iter()
            .map(|(name, u)| {
                (
                    name.as_str(),
                    Arc::new(Pool {
                        name: name.clone(),
                        targets: u.targets.clone(),
                        next: AtomicUsize::new(0),
                    }),
                )
            })
            .collect();
        let routes = config
            .routes
            .iter()
            .map(|r| Route::new(r, &pools, config.proxy.timeout))
            .collect();
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(config.proxy.connect_timeout));
        connector.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(60))
            .build(connector);
        Proxy {
            routes,
            client,
            ids: RequestIds::new(),
        }
    }

    /// Handles one request from `client`.
    pub async fn handle(&self, req: Request<Incoming>, client: SocketAddr) -> Response<Body> {
        let id = match req.headers().get(REQUEST_ID) {
            Some(v) if valid_request_id(v) => v.to_str().unwrap_or_default().to_string(),
            _ => self.ids.next(),
        };
        let mut response = self.route(req, client, &id).await;
        if let Ok(v) = HeaderValue::from_str(&id) {
            response.headers_mut().insert(REQUEST_ID, v);
        }
        response
    }

    async fn route(&self, req: Request<Incoming>, client: SocketAddr, id: &str) -> Response<Body> {
        let host = request_host(&req);
        let path = req.uri().path().to_string();
        let Some((route, rest)) = self.routes.iter().find_map(|r| {
            r.matches(host.as_deref(), &path, req.method())
                .map(|rest| (r, rest))
        }) else {
            return error(StatusCode::NOT_FOUND, "no route matches the request", id);
        };
        match &route.action {
            Action::Respond { status, body } => {
                let mut response = Response::new(full(body.clone()));
                *response.status_mut() = *status;
                if !body.is_empty() {
                    response.headers_mut().insert(
                        header::CONTENT_TYPE,
                        HeaderValue::from_static("application/json"),
                    );
                }
                response
            }
            Action::Forward(pool) => {
                let target = pool.pick();
                self.forward(req, client, host, rest, target, route.timeout, id)
                    .await
                    .unwrap_or_else(|(status, message)| {
                        tracing::debug!(pool = %pool.name, %target, request_id = id, %message, "upstream error");
                        error(status, &message, id)
                    })
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    async fn forward(
        &self,
        req: Request<Incoming>,
        client: SocketAddr,
        host: Option<String>,
        path: String,
        target: SocketAddr,
        timeout: Duration,
        id: &str,
    ) -> Result<Response<Body>, (StatusCode, String)> {
        let (mut parts, body) = req.into_parts();
        let path_and_query = match parts.uri.query() {
            Some(q) => format!("{path}?{q}"),
            None => path,
        };
        let uri: Uri = format!("http://{target}{path_and_query}")
            .parse()
            .map_err(|e| (StatusCode::BAD_REQUEST, format!("bad request target: {e}")))?;
        parts.uri = uri;
        parts.version = hyper::Version::HTTP_11;
        remove_hop_by_hop(&mut parts.headers);
        add_forwarding(&mut parts.headers, client, host.as_deref(), id);
        let upstream_req = Request::from_parts(parts, body);
        let response = tokio::time::timeout(timeout, self.client.request(upstream_req))
            .await
            .map_err(|_| {
                (
                    StatusCode::GATEWAY_TIMEOUT,
                    format!("upstream {target} did not answer within {timeout:?}"),
                )
            })?
            .map_err(|e| {
                (
                    StatusCode::BAD_GATEWAY,
                    format!("upstream {target}: {}", error_chain(&e)),
                )
            })?;
        let (mut parts, body) = response.into_parts();
        remove_hop_by_hop(&mut parts.headers);
        Ok(Response::from_parts(parts, body.boxed()))
    }
}

impl Route {
    fn new(
        r: &RouteConfig,
        pools: &std::collections::BTreeMap<&str, Arc<Pool>>,
        default_timeout: Duration,
    ) -> Route {
        let host = r.host.as_ref().map(|h| match h.strip_prefix('*') {
            Some(suffix) => HostMatch::Suffix(suffix.to_string()),
            None => HostMatch::Exact(h.clone()),
        });
        let path = match (&r.path, &r.path_prefix) {
            (Some(p), _) => PathMatch::Exact(p.clone()),
            (None, Some(p)) => PathMatch::Prefix {
                prefix: p.trim_end_matches('/').to_string(),
                strip: r.strip_prefix,
            },
            (None, None) => PathMatch::Any,
        };
        let action = match (&r.upstream, &r.respond) {
            (Some(name), _) => Action::Forward(pools[name.as_str()].clone()),
            (None, Some(respond)) => Action::Respond {
                status: StatusCode::from_u16(respond.status).unwrap_or(StatusCode::OK),
                body: respond
                    .json
                    .as_ref()
                    .map(|v| Bytes::from(serde_json::to_vec(v).unwrap_or_default()))
                    .unwrap_or_default(),
            },
            (None, None) => unreachable!("validated: a route forwards or responds"),
        };
        Route {
            host,
            path,
            methods: r
                .methods
                .iter()
                .filter_map(|m| Method::from_bytes(m.as_bytes()).ok())
                .collect(),
            action,
            timeout: r.timeout.unwrap_or(default_timeout),
        }
    }

    /// Whether the route takes the request; if so, the path to forward.
    fn matches(&self, host: Option<&str>, path: &str, method: &Method) -> Option<String> {
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
        match &self.path {
            PathMatch::Any => Some(path.to_string()),
            PathMatch::Exact(p) => (path == p).then(|| path.to_string()),
            PathMatch::Prefix { prefix, strip } => {
                let rest = path.strip_prefix(prefix.as_str())?;
                if !(rest.is_empty() || rest.starts_with('/')) {
                    return None;
                }
                if *strip {
                    Some(if rest.is_empty() { "/" } else { rest }.to_string())
                } else {
                    Some(path.to_string())
                }
            }
        }
    }
}

/// The request's host, lower case and without a port: the URI's authority (HTTP/2, absolute
/// form) or the Host header.
fn request_host<B>(req: &Request<B>) -> Option<String> {
    let raw = match req.uri().authority() {
        Some(a) => a.host().to_string(),
        None => {
            let h = req.headers().get(header::HOST)?.to_str().ok()?;
            let authority: hyper::http::uri::Authority = h.parse().ok()?;
            authority.host().to_string()
        }
    };
    Some(raw.trim_end_matches('.').to_ascii_lowercase())
}

/// Removes the hop-by-hop headers of RFC 9110 section 7.6.1: those the Connection header
/// names, and the fixed set.
fn remove_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in [
        "connection",
        "keep-alive",
        "proxy-connection",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    ] {
        headers.remove(name);
    }
}

/// Sets X-Forwarded-For (appended), -Proto and -Host, Forwarded (appended), the Host the
/// client asked for, and the request id.
fn add_forwarding(headers: &mut HeaderMap, client: SocketAddr, host: Option<&str>, id: &str) {
    let ip = client.ip().to_canonical();
    let xff = match headers.get("x-forwarded-for").and_then(|v| v.to_str().ok()) {
        Some(prior) => format!("{prior}, {ip}"),
        None => ip.to_string(),
    };
    let for_value = match ip {
        std::net::IpAddr::V4(a) => a.to_string(),
        std::net::IpAddr::V6(a) => format!("\"[{a}]\""),
    };
    let mut forwarded = format!("for={for_value};proto=http");
    if let Some(h) = host {
        forwarded.push_str(&format!(";host=\"{h}\""));
    }
    if let Some(prior) = headers.get(header::FORWARDED).and_then(|v| v.to_str().ok()) {
        forwarded = format!("{prior}, {forwarded}");
    }
    let has_host = headers.contains_key(header::HOST);
    let mut set = |name: &'static str, value: &str| {
        if let Ok(v) = HeaderValue::from_str(value) {
            headers.insert(name, v);
        }
    };
    set("x-forwarded-for", &xff);
    set("x-forwarded-proto", "http");
    set("forwarded", &forwarded);
    set(REQUEST_ID, id);
    if let Some(h) = host {
        set("x-forwarded-host", h);
        // Keep the original Host for the upstream (the client's, not the target's address).
        if !has_host {
            set("host", h);
        }
    }
}

fn full(body: Bytes) -> Body {
    Full::new(body).map_err(|never| match never {}).boxed()
}

/// A JSON error response carrying the request id.
fn error(status: StatusCode, message: &str, id: &str) -> Response<Body> {
    let body = serde_json::json!({
        "error": message,
        "status": status.as_u16(),
        "request_id": id,
    });
    let mut response = Response::new(full(Bytes::from(body.to_string())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

/// Binds every listener of the config; an address in use is an error that names it.
pub async fn bind(config: &Config) -> Result<Vec<TcpListener>, String> {
    let mut listeners = Vec::new();
    for addr in &config.proxy.listen {
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|e| format!("proxy.listen: cannot listen on {addr}: {e}"))?;
        listeners.push(listener);
    }
    Ok(listeners)
}

/// Serves `listener` until `stop` turns true, then lets open connections finish.
pub async fn serve(listener: TcpListener, proxy: Arc<Proxy>, mut stop: watch::Receiver<bool>) {
    let local = listener.local_addr().ok();
    tracing::info!(listen = ?local, "proxy listening");
    loop {
        tokio::select! {
            _ = stop.changed() => break,
            accepted = listener.accept() => {
                let (stream, client) = match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        tracing::warn!(error = %e, "proxy accept");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let proxy = proxy.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req| {
                        let proxy = proxy.clone();
                        async move { Ok::<_, Infallible>(proxy.handle(req, client).await) }
                    });
                    let builder = auto::Builder::new(TokioExecutor::new());
                    if let Err(e) = builder.serve_connection(TokioIo::new(stream), service).await {
                        tracing::debug!(%client, error = %e, "connection ended with an error");
                    }
                });
            }
        }
    }
}
