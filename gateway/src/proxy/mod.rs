//! The reverse proxy: listeners, routing, and forwarding to upstream pools.
//!
//! Per request: normalise the path, pick the first route that matches host, path, method and
//! headers; admit the request through the route's security phases; answer with its fixed
//! response, or forward to a target of its upstream pool with the forwarding headers set and
//! the hop-by-hop headers removed, retrying on another target when that is safe. Every
//! response carries the request id and the security headers; errors are JSON bodies with a
//! stable code and the request id. When the response ends, the request is counted in the
//! metrics and written to the audit log.
//!
//! The phases of a route, in order (each may answer the request itself):
//!
//! ```text
//!  route match
//!    -> auto-ban     client banned by a rule     403  before anything else: it was refused
//!                                                     enough already (crate::autoban)
//!    -> access       IP allow/deny lists         403  cheapest; a denied network learns nothing
//!    -> CORS         preflight answered          204  browsers send preflights without credentials
//!    -> rate limits  keyed by IP, route, header  429  before auth, so floods of bad tokens
//!                                                     are cut before signature checks
//!    -> auth         authenticate, authorize     401/403
//!    -> rate limits  keyed by subject, API key   429  need the identity
//!    -> validation   method, headers, query...   400/405/415
//!    -> inspection   path, query, headers        403  (or only logged)
//!    -> body         size, JSON Schema, inspect  413/400/403, read only when a phase needs it
//!    -> forward or fixed response
//!  response: rate-limit headers, security headers, CORS headers
//!  end of response: metrics and the audit line (subject, decision, rule)
//! ```
//!
//! Every refusal of these phases goes through [`reject`], which also counts it for the
//! auto-ban rules.

pub mod auth;
pub mod coding;
pub mod h1;
pub mod harden;
pub mod inspect;
pub mod jsondoc;
pub mod ratelimit;
pub mod reject;
pub mod route;
pub mod server;
pub mod smuggle;
pub mod upstream;
pub mod validate;

use std::{
    collections::HashMap,
    pin::Pin,
    sync::{
        atomic::{AtomicU64, Ordering::Relaxed},
        Arc,
    },
    task::{Context, Poll},
    time::{Duration, Instant, SystemTime},
};

use bytes::{Bytes, BytesMut};
use http_body_util::{combinators::BoxBody, BodyExt as _, Empty, Full};
use hyper::{
    body::{Body as _, Frame, Incoming, SizeHint},
    header::{self, HeaderMap, HeaderName, HeaderValue},
    http::request::Parts,
    Method, Request, Response, StatusCode, Uri, Version,
};
use hyper_util::{
    rt::{TokioExecutor, TokioTimer},
    server::conn::auto,
};
use prometheus::{Histogram, IntCounter};

use self::{
    auth::{Auth, Identity},
    harden::{Cors, SecurityHeaders},
    inspect::{Finding, InspectMode, Inspector, RouteInspect},
    reject::Rejection,
    route::{Matcher, PathRewrite},
    server::ConnInfo,
    upstream::{InFlight, Outcome, Pool, UpstreamClient},
    validate::Validator,
};
use crate::{
    audit::{self, Audit},
    config::{Config, RouteConfig, UpstreamProtocol},
    metrics::{self, METRICS},
    xdp::error_chain,
};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// A request body on its way to an upstream.
pub type ReqBody = BoxBody<Bytes, BoxError>;
/// A response body on its way to the client: whole in memory (most are, and then it needs no
/// allocation of its own), or any other body, boxed.
pub enum Body {
    /// The whole body; `None` once sent, or when it is empty.
    Full(Option<Bytes>),
    Boxed(BoxBody<Bytes, BoxError>),
}

impl Body {
    fn boxed<B>(body: B) -> Body
    where
        B: hyper::body::Body<Data = Bytes, Error = BoxError> + Send + Sync + 'static,
    {
        Body::Boxed(BoxBody::new(body))
    }
}

impl hyper::body::Body for Body {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            Body::Full(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            Body::Boxed(body) => Pin::new(body).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Body::Full(bytes) => bytes.is_none(),
            Body::Boxed(body) => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Body::Full(bytes) => SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len() as u64)),
            Body::Boxed(body) => body.size_hint(),
        }
    }
}

/// The request id header, kept when the client sends a valid one.
pub const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
const KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
const PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

/// What a connection is held to; from `[proxy]`.
#[derive(Clone, Debug)]
pub struct Limits {
    pub max_connections: u32,
    pub max_body_bytes: u64,
    /// hyper's limits on a request head, which the HTTP/1 framing guard follows.
    pub max_header_bytes: u32,
    pub max_headers: u32,
    pub header_read_timeout: Duration,
    pub idle_timeout: Duration,
    pub shutdown_timeout: Duration,
}

/// One config generation: routes, pools, TLS and limits. Replaced whole on reload.
pub struct Proxy {
    routes: Vec<Route>,
    /// Counts requests that matched no route.
    unrouted: Arc<RouteMetrics>,
    pub limits: Limits,
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// Connection settings for client connections (HTTP/1.1 and HTTP/2 limits).
    builder: auto::Builder<TokioExecutor>,
    ids: RequestIds,
    audit: Arc<Audit>,
    /// Identity providers, with their key sets and caches.
    pub auth: Auth,
    /// Proxies whose X-Forwarded-For names the client.
    trusted_proxies: Vec<ipnet::IpNet>,
    /// Security headers of responses that match no route.
    headers: Arc<SecurityHeaders>,
    /// `proxy.merge_slashes`: see [`route::normalize_path`].
    merge_slashes: bool,
    /// Every upstream of the config, routed to or not.
    pools: Vec<Arc<Pool>>,
}

struct Route {
    name: Arc<str>,
    matcher: Matcher,
    rewrite: PathRewrite,
    action: Action,
    timeout: Duration,
    metrics: Arc<RouteMetrics>,
    security: Security,
}

/// A route's security phases, compiled; see the module documentation for their order.
struct Security {
    validator: Option<Validator>,
    cors: Option<Cors>,
    limits: ratelimit::Limits,
    auth: Option<auth::RoutePolicy>,
    /// `None` when inspection is off.
    inspect: Option<RouteInspect>,
    headers: Arc<SecurityHeaders>,
}

impl Security {
    fn new(
        r: &RouteConfig,
        name: &str,
        config: &Config,
        auth: &Auth,
        inspector: &Arc<Inspector>,
        headers: &Arc<SecurityHeaders>,
    ) -> Result<Security, String> {
        let inspect = r.inspect.as_ref().unwrap_or(&config.inspect);
        Ok(Security {
            validator: r
                .validate
                .as_ref()
                .map(|v| Validator::new(v).map(|v| v.within(config.proxy.max_body_bytes)))
                .transpose()?,
            cors: r.cors.as_ref().map(Cors::new),
            limits: ratelimit::Limits::new(name, &r.rate_limits),
            auth: r.auth.as_ref().map(|a| auth.policy(a)).transpose()?,
            inspect: match inspect.mode {
                InspectMode::Off => None,
                _ => Some(RouteInspect::new(inspector, inspect)?),
            },
            headers: match &r.security_headers {
                Some(h) => Arc::new(SecurityHeaders::new(h)),
                None => headers.clone(),
            },
        })
    }
}

/// What the security phases decided, when they let the request in.
enum Admitted {
    /// A CORS preflight, answered with these headers.
    Preflight(HeaderMap),
    /// Go on with this body.
    Go(Payload),
}

/// A request body as the proxy received it: from hyper, or already read by the fast path.
pub enum RequestBody {
    Incoming(Incoming),
    Bytes(Bytes),
}

/// A request body on its way to the upstream.
enum Payload {
    /// None at all.
    Empty,
    /// Whole, in memory: read by the fast path, or because a phase needed it.
    Bytes(Bytes),
    /// Still arriving; limited and counted.
    Stream(ReqBody),
}

impl Payload {
    fn into_body(self) -> ReqBody {
        match self {
            Payload::Empty => empty(),
            Payload::Bytes(b) => Full::new(b).map_err(|never| match never {}).boxed(),
            Payload::Stream(s) => s,
        }
    }
}

/// A route's metric handles, resolved once so requests skip the label lookups.
struct RouteMetrics {
    by_class: [IntCounter; 5],
    duration: Histogram,
}

impl RouteMetrics {
    fn new(name: &str) -> Arc<RouteMetrics> {
        Arc::new(RouteMetrics {
            by_class: metrics::CLASSES.map(|c| METRICS.requests.with_label_values(&[name, c])),
            duration: METRICS.duration.with_label_values(&[name]),
        })
    }
}

enum Action {
    Forward {
        pool: Arc<Pool>,
        /// One per worker.
        clients: Box<[UpstreamClient]>,
        /// The fast path's client, for plain HTTP/1.1 pools.
        fast: Option<Arc<h1::client::Client>>,
        version: Version,
    },
    Respond {
        status: StatusCode,
        body: Bytes,
    },
}

/// Request ids: a random per-process prefix and a counter, unique without a syscall.
struct RequestIds {
    /// A random per-generator prefix, in hex.
    prefix_hex: [u8; 16],
    counter: AtomicU64,
    /// Which generator this is, never reused in the process (unlike its address).
    serial: u64,
}

impl RequestIds {
    fn new() -> RequestIds {
        // Ids only need to be unique, not secret: the time will do if getrandom fails.
        let prefix = crate::xdp::random_seed().unwrap_or_else(|_| {
            SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or_default()
        });
        RequestIds {
            prefix_hex: hex16(prefix),
            counter: AtomicU64::new(0),
            serial: {
                static SERIAL: AtomicU64 = AtomicU64::new(1);
                SERIAL.fetch_add(1, Relaxed)
            },
        }
    }

    /// 32 hex digits: the prefix, then the counter. Each thread takes the counter's values
    /// in blocks, so the threads do not contend for it request by request.
    fn next(&self) -> HeaderValue {
        const BLOCK: u64 = 1024;
        thread_local! {
            /// The generator the block is from, the next value and the block's end.
            static BLOCK_OF: std::cell::Cell<(u64, u64, u64)> = const { std::cell::Cell::new((0, 0, 0)) };
        }
        let n = BLOCK_OF.with(|b| {
            let (owner, mut next, mut end) = b.get();
            if owner != self.serial || next == end {
                next = self.counter.fetch_add(BLOCK, Relaxed);
                end = next + BLOCK;
            }
            b.set((self.serial, next + 1, end));
            next
        });
        let mut out = [0u8; 32];
        out[..16].copy_from_slice(&self.prefix_hex);
        out[16..].copy_from_slice(&hex16(n));
        thread_local! {
            /// Room for the thread's next ids: each is cut off the front, sharing one
            /// reference-counted allocation, so an id costs no allocation of its own and its
            /// clone for the upstream request is free.
            static SLAB: std::cell::RefCell<BytesMut> = std::cell::RefCell::new(BytesMut::new());
        }
        let bytes = SLAB.with(|slab| {
            let mut slab = slab.borrow_mut();
            if slab.capacity() < out.len() {
                *slab = BytesMut::with_capacity(out.len() * 128);
            }
            slab.extend_from_slice(&out);
            slab.split().freeze()
        });
        debug_assert!(HeaderValue::from_bytes(&bytes).is_ok());
        // SAFETY: hex digits are valid in a header value.
        unsafe { HeaderValue::from_maybe_shared_unchecked(bytes) }
    }
}

/// `n` as 16 lower-case hex digits.
fn hex16(n: u64) -> [u8; 16] {
    let mut out = [0u8; 16];
    for (i, byte) in n.to_be_bytes().into_iter().enumerate() {
        out[2 * i] = b"0123456789abcdef"[usize::from(byte >> 4)];
        out[2 * i + 1] = b"0123456789abcdef"[usize::from(byte & 0xf)];
    }
    out
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
    /// Builds the generation of `config` (already validated): loads the certificates, makes
    /// the pools' clients and starts their health checks.
    /// Each of the `workers` gets its own upstream clients (and so its own connection pools).
    pub fn new(
        config: &Config,
        audit: Arc<Audit>,
        workers: usize,
        previous: Option<&Proxy>,
    ) -> Result<Proxy, String> {
        let p = &config.proxy;
        let auth =
            Auth::new(&config.auth, previous.map(|p| &p.auth)).map_err(|e| format!("auth: {e}"))?;
        let inspector = Arc::new(Inspector::new());
        let headers = Arc::new(SecurityHeaders::new(&config.security_headers));
        let mut pools = HashMap::new();
        for (name, u) in &config.upstreams {
            let pool = Arc::new(
                Pool::new(name, u, p.connect_timeout)
                    .map_err(|e| format!("upstreams.{name}: {e}"))?,
            );
            pool.start_health_checks();
            pools.insert(name.as_str(), pool);
        }
        let mut clients = HashMap::new();
        let mut routes = Vec::new();
        for (i, r) in config.routes.iter().enumerate() {
            let name: Arc<str> = match &r.name {
                Some(n) => n.as_str().into(),
                None => format!("routes[{i}]").into(),
            };
            let action = route_action(r, &pools, &mut clients, p.connect_timeout, workers)
                .map_err(|e| format!("routes[{i}]: {e}"))?;
            let (matcher, rewrite) = Matcher::new(r);
            let security = Security::new(r, &name, config, &auth, &inspector, &headers)
                .map_err(|e| format!("routes[{i}]: {e}"))?;
            routes.push(Route {
                security,
                metrics: RouteMetrics::new(&name),
                name,
                matcher,
                rewrite,
                action,
                timeout: r.timeout.unwrap_or(p.timeout),
            });
        }
        let tls = match &p.tls {
            Some(t) if !t.listen.is_empty() => Some(crate::tls::server_config(t)?),
            _ => None,
        };
        let mut builder = auto::Builder::new(TokioExecutor::new());
        builder
            .http1()
            .timer(TokioTimer::new())
            .keep_alive(true)
            .header_read_timeout(p.header_read_timeout)
            .max_buf_size(p.max_header_bytes as usize)
            .max_headers(p.max_headers as usize);
        builder
            .http2()
            .timer(TokioTimer::new())
            .max_header_list_size(p.max_header_bytes)
            .max_concurrent_streams(256);
        Ok(Proxy {
            routes,
            unrouted: RouteMetrics::new("none"),
            limits: Limits {
                max_connections: p.max_connections,
                max_body_bytes: p.max_body_bytes,
                max_header_bytes: p.max_header_bytes,
                max_headers: p.max_headers,
                header_read_timeout: p.header_read_timeout,
                idle_timeout: p.idle_timeout,
                shutdown_timeout: p.shutdown_timeout,
            },
            tls,
            builder,
            ids: RequestIds::new(),
            audit,
            auth,
            trusted_proxies: p.trusted_proxies.clone(),
            headers,
            merge_slashes: p.merge_slashes,
            pools: pools.into_values().collect(),
        })
    }

    /// Shows this generation's upstream targets in the health gauge, and takes out those of
    /// `previous` that it no longer has: call it once the generation is in service.
    pub fn publish(&self, previous: Option<&Proxy>) {
        for pool in &self.pools {
            pool.publish();
        }
        if let Some(previous) = previous {
            let kept: std::collections::HashSet<(&str, &str)> = self
                .pools
                .iter()
                .flat_map(|p| {
                    p.targets
                        .iter()
                        .map(|t| (p.name.as_str(), t.label.as_str()))
                })
                .collect();
            for pool in &previous.pools {
                pool.retire(&kept);
            }
        }
    }

    /// Handles one request.
    pub async fn handle(&self, req: Request<RequestBody>, conn: ConnInfo) -> Response<Tracked> {
        self.handle_with(req, conn, false).await.0
    }

    /// Handles one request for a caller that writes the response head itself: the security
    /// headers and the request id are left out of the response's header map when they can be,
    /// for the caller to write ([`Finishing::replaces`], [`Finishing::write`]).
    ///
    /// Not an `async fn`: that would be one more future around `handle_with`'s, into which the
    /// request and then that future are copied, per request.
    pub fn handle_deferred(
        &self,
        req: Request<RequestBody>,
        conn: ConnInfo,
    ) -> impl std::future::Future<Output = (Response<Tracked>, Option<Finishing<'_>>)> + '_ {
        self.handle_with(req, conn, true)
    }

    async fn handle_with(
        &self,
        req: Request<RequestBody>,
        conn: ConnInfo,
        defer: bool,
    ) -> (Response<Tracked>, Option<Finishing<'_>>) {
        let started = Instant::now();
        let id_value = match req.headers().get(REQUEST_ID) {
            Some(v) if valid_request_id(v) => v.clone(),
            _ => self.ids.next(),
        };
        // Valid ids are ASCII, so this never falls back.
        let id = id_value.to_str().unwrap_or_default();
        // Lower case, as a header value too: X-Forwarded-Host and Forwarded share it.
        let host_value = request_host(&req);
        let host = host_value.as_ref().and_then(|h| h.to_str().ok());
        // A clone shares the target's bytes, so the path can be borrowed past `into_parts`.
        let uri = req.uri().clone();
        let (path, bad_path) = match route::normalize_path(uri.path(), self.merge_slashes) {
            Ok(p) => (p, None),
            Err(e) => (std::borrow::Cow::Borrowed(uri.path()), Some(e)),
        };
        let client = validate::client_ip(conn.client.ip(), req.headers(), &self.trusted_proxies);
        let routes = if bad_path.is_some() {
            &[][..]
        } else {
            &self.routes[..]
        };
        let found = routes.iter().find_map(|r| {
            r.matcher
                .matches(host, &path, req.method(), req.headers(), &r.rewrite)
                .map(|forward| (r, forward))
        });
        let audit = self.audit.enabled().then(|| {
            Box::new(Record {
                time: SystemTime::now(),
                id: id.to_string(),
                client,
                method: req.method().clone(),
                host: host.map(str::to_owned),
                path: path.clone().into_owned(),
                route: found.as_ref().map(|(r, _)| r.name.clone()),
                upstream: None,
                target: None,
                error: None,
                subject: None,
                decision: None,
                rule: None,
                bytes_in: Arc::new(AtomicU64::new(0)),
            })
        });
        let mut done = Done {
            started,
            metrics: found
                .as_ref()
                .map_or(&self.unrouted, |(r, _)| &r.metrics)
                .clone(),
            audit,
            sink: self.audit.clone(),
            status: 0,
            bytes_out: 0,
            in_flight: None,
        };
        let Some((route, forward_path)) = found else {
            let mut response = match bad_path {
                Some(route::BadPath(why)) => error(
                    StatusCode::BAD_REQUEST,
                    "bad_path",
                    &format!("the request path is refused: {why}"),
                    id,
                    &mut done,
                ),
                None => error(
                    StatusCode::NOT_FOUND,
                    "no_route",
                    "no route matches the request",
                    id,
                    &mut done,
                ),
            };
            let deferred = defer.then_some(self.headers.as_ref());
            if deferred.is_none() {
                self.headers.apply(response.headers_mut(), conn.tls);
            }
            return self.finish(response, id_value, done, deferred, conn.tls);
        };
        let (mut parts, body) = req.into_parts();
        let origin = route
            .security
            .cors
            .as_ref()
            .and_then(|_| parts.headers.get(header::ORIGIN).cloned());
        // The rate limit whose RateLimit headers the response gets.
        let mut closest = None;
        let admitted = self
            .admit(route, &mut parts, body, client, &mut done, &mut closest)
            .await;
        let preflight = matches!(admitted, Ok(Admitted::Preflight(_)));
        let mut response = match admitted {
            Err(rejection) => reject(&route.name, rejection, id, client, &mut done),
            Ok(Admitted::Preflight(headers)) => {
                let mut response = Response::new(full(Bytes::new()));
                *response.status_mut() = StatusCode::NO_CONTENT;
                *response.headers_mut() = headers;
                response
            }
            Ok(Admitted::Go(body)) => match &route.action {
                Action::Respond { status, body } => {
                    let mut response = Response::new(full(body.clone()));
                    *response.status_mut() = *status;
                    if !body.is_empty() {
                        response.headers_mut().insert(
                            header::CONTENT_TYPE,
                            HeaderValue::from_static("application/json"),
                        );
                    }
                    with_length(response, body.len())
                }
                Action::Forward {
                    pool,
                    clients,
                    fast,
                    version,
                } => {
                    let fwd = Forward {
                        pool,
                        client: &clients[server::worker_index() % clients.len()],
                        fast: fast.as_deref(),
                        version: *version,
                        conn: &conn,
                        client_ip: client,
                        // Moved, not cloned: a clone would allocate (see `request_host`).
                        host: host_value,
                        path: &forward_path,
                        timeout: route.timeout,
                        idempotent: matches!(
                            parts.method,
                            Method::GET
                                | Method::HEAD
                                | Method::OPTIONS
                                | Method::PUT
                                | Method::DELETE
                                | Method::TRACE
                        ),
                        id,
                        id_value: &id_value,
                    };
                    // Not boxed: polled in place in the connection's task, where a box
                    // cost an allocation and a 3 KB copy per request.
                    self.forward(parts, body, fwd, &mut done).await
                }
            },
        };
        let headers = response.headers_mut();
        if let Some(c) = &closest {
            route.security.limits.headers(c, headers);
        }
        let cors = route.security.cors.as_ref().filter(|_| !preflight);
        // Deferred only without CORS fields, which come after the security headers (whose
        // `remove` list then does not apply to them).
        let deferred = (defer && cors.is_none()).then_some(route.security.headers.as_ref());
        if deferred.is_none() {
            route.security.headers.apply(headers, conn.tls);
        }
        if let Some(cors) = cors {
            cors.apply(origin.as_ref(), headers);
        }
        self.finish(response, id_value, done, deferred, conn.tls)
    }

    /// Sets the request id (or, with `deferred`, leaves it and those security headers to the
    /// caller) and wraps the body so the request is accounted for when it ends.
    fn finish<'a>(
        &self,
        mut response: Response<Body>,
        id: HeaderValue,
        mut done: Done,
        deferred: Option<&'a SecurityHeaders>,
        tls: bool,
    ) -> (Response<Tracked>, Option<Finishing<'a>>) {
        let finishing = match deferred {
            Some(headers) => Some(Finishing { headers, tls, id }),
            None => {
                response.headers_mut().insert(REQUEST_ID, id);
                None
            }
        };
        done.status = response.status().as_u16();
        // Not boxed again: the response's body is already a box.
        let response = response.map(|inner| Tracked {
            inner,
            done: Some(done),
        });
        (response, finishing)
    }

    /// Runs the route's security phases (see the module documentation for the order).
    async fn admit(
        &self,
        route: &Route,
        parts: &mut Parts,
        body: RequestBody,
        client: std::net::IpAddr,
        done: &mut Done,
        closest: &mut Option<ratelimit::Closest>,
    ) -> Result<Admitted, Rejection> {
        let s = &route.security;
        if let Some(banned) = crate::autoban::refusal(client) {
            return Err(banned);
        }
        if let Some(v) = &s.validator {
            v.check_access(client)?;
        }
        if let Some(cors) = &s.cors {
            if Cors::is_preflight(parts) {
                return cors.preflight(parts).map(Admitted::Preflight);
            }
        }
        if !s.limits.is_empty() {
            s.limits
                .check(false, parts, client, None, done.started, closest)?;
        }
        let identity: Option<Identity> = match &s.auth {
            Some(policy) => policy.check(parts).await?,
            None => None,
        };
        if let (Some(i), Some(a)) = (&identity, done.audit.as_mut()) {
            // Allowed so far; a later phase that refuses replaces the decision.
            a.subject = Some(i.subject.clone());
            a.decision = Some("allow");
            a.rule = Some(format!("auth:{}", i.provider));
        }
        if !s.limits.is_empty() {
            s.limits.check(
                true,
                parts,
                client,
                identity.as_ref(),
                done.started,
                closest,
            )?;
        }
        if let Some(v) = &s.validator {
            v.check_head(parts)?;
        }
        if let Some(i) = &s.inspect {
            if let Some(f) = i.head(parts) {
                finding(&route.name, i.mode(), f, done)?;
            }
        }
        let max_body = s
            .validator
            .as_ref()
            .and_then(Validator::max_body)
            .map_or(self.limits.max_body_bytes, |m| {
                m.min(self.limits.max_body_bytes)
            });
        let declared = parts
            .headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n > max_body) {
            return Err(too_large(max_body));
        }
        let validate_body = s.validator.as_ref().is_some_and(|v| v.wants_body(parts));
        let inspect_body = s.inspect.as_ref().is_some_and(|i| i.wants_body(parts));
        let counter = done.audit.as_ref().map(|a| a.bytes_in.clone());
        let body = match body {
            RequestBody::Incoming(body) => body,
            RequestBody::Bytes(bytes) => {
                if bytes.len() as u64 > max_body {
                    return Err(too_large(max_body));
                }
                if let Some(seen) = counter {
                    seen.fetch_add(bytes.len() as u64, Relaxed);
                }
                return check_body(route, parts, bytes, validate_body, inspect_body, done);
            }
        };
        let bodiless = body.is_end_stream();
        let limited = Limited {
            inner: body,
            left: max_body,
            seen: counter,
        };
        if bodiless {
            return Ok(Admitted::Go(Payload::Empty));
        }
        if !(validate_body || inspect_body) {
            return Ok(Admitted::Go(Payload::Stream(limited.boxed())));
        }
        // A phase needs the whole body: read it, within the limit and the route's timeout.
        let collect = Box::pin(tokio::time::timeout(route.timeout, limited.collect()));
        let bytes = match collect.await {
            Ok(Ok(collected)) => collected.to_bytes(),
            Ok(Err(e)) if e.is::<BodyTooLarge>() => return Err(too_large(max_body)),
            Ok(Err(_)) => return Err(bad_body()),
            Err(_) => {
                let mut r = Rejection::new(
                    StatusCode::REQUEST_TIMEOUT,
                    "request_timeout",
                    "body:timeout",
                    format!("the request body did not arrive within {:?}", route.timeout),
                );
                r.close = true;
                return Err(r);
            }
        };
        check_body(route, parts, bytes, validate_body, inspect_body, done)
    }

    async fn forward(
        &self,
        mut parts: Parts,
        body: Payload,
        mut f: Forward<'_>,
        done: &mut Done,
    ) -> Response<Body> {
        let max_body = self.limits.max_body_bytes;
        let idempotent = f.idempotent;
        // A body in memory can be sent again; one still arriving only once.
        let resendable = !matches!(body, Payload::Stream(_));
        let mut body = Some(body);
        let path_and_query: std::borrow::Cow<'_, str> =
            match (parts.uri.query(), f.path.contains('?')) {
                (Some(q), true) => format!("{}&{q}", f.path).into(),
                (Some(q), false) => format!("{}?{q}", f.path).into(),
                (None, _) => f.path.into(),
            };
        remove_hop_by_hop(&mut parts.headers);
        // A request-target with an authority (HTTP/1.1 absolute form, HTTP/2 `:authority`)
        // names the host that was routed: it replaces the Host header (RFC 9112 section
        // 3.2.2), so the upstream cannot be pointed at another virtual host than the route's.
        if let Some(a) = parts.uri.authority() {
            let value = match a.port() {
                Some(p) => HeaderValue::from_str(&format!("{}:{p}", a.host())),
                None => HeaderValue::from_str(a.host()),
            };
            if let Ok(v) = value {
                parts.headers.insert(header::HOST, v);
            }
        }
        let forwarding = Forwarding::new(&parts.headers, f.conn, f.host.take(), f.id_value);
        let client_ip = f.client_ip;
        let now = tokio::time::Instant::now();
        let deadline = now + f.timeout;
        let pool = f.pool;
        pool.deposit();
        // Inline: most requests are answered by the first target they try.
        let mut tried: smallvec::SmallVec<[usize; 4]> = smallvec::SmallVec::new();
        // A failed attempt that may be retried: its answer, given to the client when no retry
        // happens after all.
        let mut failed: Option<Response<Body>> = None;
        loop {
            let key = pool
                .hash_header()
                .and_then(|name| forwarding.get(name).or_else(|| parts.headers.get(name)));
            let picked = pool.pick(client_ip, key, &tried);
            let i = match (picked, failed.take()) {
                (Some(i), None) => i,
                (Some(i), Some(previous)) => {
                    if !pool.withdraw() {
                        return previous;
                    }
                    tracing::debug!(upstream = %pool.name, request_id = f.id, "retrying on another target");
                    i
                }
                (None, Some(previous)) => return previous,
                (None, None) => {
                    let message = format!("upstream {}: no healthy target", pool.name);
                    return error(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "no_healthy_target",
                        &message,
                        f.id,
                        done,
                    );
                }
            };
            tried.push(i);
            let target = &pool.targets[i];
            done.set_target(&pool.name, &target.label);
            let guard = pool.begin(i);
            let may_retry = tried.len() <= pool.retries as usize && resendable;
            let payload = body.take().unwrap_or(Payload::Empty);
            if let Payload::Bytes(b) = &payload {
                // Kept for a retry.
                body = Some(Payload::Bytes(b.clone()));
            }
            // The fast path keeps to the deadline with its connection's own timer (no timer
            // work per request); hyper's path gets one.
            let attempt = async {
                match (f.fast, payload) {
                    (Some(fast), payload @ (Payload::Empty | Payload::Bytes(_))) => {
                        let body = match payload {
                            Payload::Bytes(b) => b,
                            _ => Bytes::new(),
                        };
                        let outgoing = h1::client::Outgoing {
                            method: &parts.method,
                            path_and_query: &path_and_query,
                            headers: &parts.headers,
                            set: &forwarding.fields,
                            host: forwarding.host.as_ref(),
                            body,
                            now,
                            deadline,
                            body_timeout: f.timeout,
                        };
                        fast.send(target.addr, outgoing, f.idempotent)
                            .await
                            .map_err(Failure::from)
                    }
                    (_, payload) => {
                        let uri = Uri::try_from([target.origin.as_str(), &path_and_query].concat())
                            .map_err(|e| Failure::Request(format!("bad request target: {e}")))?;
                        let mut request = Request::new(payload.into_body());
                        *request.method_mut() = parts.method.clone();
                        *request.uri_mut() = uri;
                        *request.version_mut() = f.version;
                        *request.headers_mut() = parts.headers.clone();
                        forwarding.apply(request.headers_mut());
                        // Boxed: hyper's client future is large, and would make every
                        // forward (boxed in `handle`) as large, fast path or not.
                        let sent = Box::pin(f.client.request(request));
                        match tokio::time::timeout_at(deadline, sent).await {
                            Err(_) => Err(Failure::Timeout),
                            Ok(Ok(r)) => Ok(r.map(|b| {
                                Body::boxed(Idle::new(b.map_err(BoxError::from), f.timeout))
                            })),
                            Ok(Err(e)) if has_source::<BodyTooLarge>(&e) => {
                                Err(Failure::BodyTooLarge)
                            }
                            Ok(Err(e)) if has_source::<ClientBodyError>(&e) => {
                                Err(Failure::ClientBody)
                            }
                            Ok(Err(e)) => Err(Failure::Upstream {
                                connect: e.is_connect(),
                                message: error_chain(&e),
                            }),
                        }
                    }
                }
            };
            match attempt.await {
                Ok(response) => {
                    let status = response.status();
                    let bad = matches!(status.as_u16(), 502..=504);
                    pool.report(
                        i,
                        if bad {
                            Outcome::Failure
                        } else {
                            Outcome::Success
                        },
                    );
                    let (mut head, body) = response.into_parts();
                    remove_hop_by_hop(&mut head.headers);
                    done.in_flight = Some(guard);
                    let response = Response::from_parts(head, body);
                    if bad && idempotent && may_retry {
                        failed = Some(response);
                        continue;
                    }
                    // The request's header map serves the worker's next message.
                    h1::recycle(std::mem::take(&mut parts.headers));
                    return response;
                }
                Err(Failure::Request(message)) => {
                    return error(StatusCode::BAD_REQUEST, "bad_request", &message, f.id, done)
                }
                Err(Failure::BodyTooLarge) => {
                    return error(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        "body_too_large",
                        &format!("the request body is larger than {max_body} bytes"),
                        f.id,
                        done,
                    );
                }
                Err(Failure::ClientBody) => {
                    // The client's body broke (bad chunking, cut off): its fault, not the
                    // target's; and the connection cannot be trusted any more.
                    return reject(&done.route_name(), bad_body(), f.id, f.client_ip, done);
                }
                Err(Failure::Upstream { connect, message }) => {
                    pool.report(i, Outcome::Failure);
                    let message = format!(
                        "upstream {} target {}: {}",
                        pool.name, target.label, message
                    );
                    tracing::debug!(request_id = f.id, %message, "upstream error");
                    let response =
                        error(StatusCode::BAD_GATEWAY, "bad_gateway", &message, f.id, done);
                    if (connect || idempotent) && may_retry {
                        failed = Some(response);
                        continue;
                    }
                    return response;
                }
                Err(Failure::Timeout) => {
                    pool.report(i, Outcome::Failure);
                    let message = format!(
                        "upstream {} target {} did not answer within {:?}",
                        pool.name, target.label, f.timeout
                    );
                    return error(
                        StatusCode::GATEWAY_TIMEOUT,
                        "gateway_timeout",
                        &message,
                        f.id,
                        done,
                    );
                }
            }
        }
    }
}

/// The body phases that asked for it, on a body read whole.
fn check_body(
    route: &Route,
    parts: &Parts,
    bytes: Bytes,
    validate: bool,
    inspect: bool,
    done: &mut Done,
) -> Result<Admitted, Rejection> {
    if bytes.is_empty() {
        return Ok(Admitted::Go(Payload::Empty));
    }
    let s = &route.security;
    let validator = s.validator.as_ref().filter(|_| validate);
    let inspect = s.inspect.as_ref().filter(|_| inspect);
    // Inflated once for both, as far as the one that reads further needs.
    let max = validator
        .map_or(0, Validator::inflate_max)
        .max(inspect.map_or(0, RouteInspect::max_body));
    let decoded = coding::decoded(parts, &bytes, max);
    if let Some(v) = validator {
        v.check_decoded(parts, decoded.as_deref())?;
    }
    if let Some(i) = inspect {
        if let Some(f) = i.body_decoded(parts, decoded.as_deref()) {
            finding(&route.name, i.mode(), f, done)?;
        }
    }
    drop(decoded);
    Ok(Admitted::Go(Payload::Bytes(bytes)))
}

/// Why an attempt to forward got no response.
enum Failure {
    /// The request cannot be sent as it is.
    Request(String),
    BodyTooLarge,
    ClientBody,
    Upstream {
        connect: bool,
        message: String,
    },
    /// No response head before the route's deadline.
    Timeout,
}

impl From<h1::client::SendError> for Failure {
    fn from(e: h1::client::SendError) -> Failure {
        match e {
            h1::client::SendError::Timeout => Failure::Timeout,
            e => Failure::Upstream {
                connect: e.is_connect(),
                message: error_chain(&e),
            },
        }
    }
}

/// What [`Proxy::forward`] needs to know besides the request.
struct Forward<'a> {
    pool: &'a Arc<Pool>,
    client: &'a UpstreamClient,
    fast: Option<&'a h1::client::Client>,
    version: Version,
    conn: &'a ConnInfo,
    /// The client, trusted proxies seen through.
    client_ip: std::net::IpAddr,
    /// The host the client asked for, lower case and without a port.
    host: Option<HeaderValue>,
    path: &'a str,
    timeout: Duration,
    /// A resend cannot do harm (GET, HEAD, OPTIONS, PUT, DELETE, TRACE).
    idempotent: bool,
    id: &'a str,
    id_value: &'a HeaderValue,
}

fn route_action<'c>(
    r: &'c RouteConfig,
    pools: &HashMap<&str, Arc<Pool>>,
    clients: &mut HashMap<(&'c str, Duration), Box<[UpstreamClient]>>,
    default_connect: Duration,
    workers: usize,
) -> Result<Action, String> {
    if let Some(respond) = &r.respond {
        return Ok(Action::Respond {
            status: StatusCode::from_u16(respond.status).unwrap_or(StatusCode::OK),
            body: respond
                .json
                .as_ref()
                .map(|v| Bytes::from(serde_json::to_vec(v).unwrap_or_default()))
                .unwrap_or_default(),
        });
    }
    let name = r
        .upstream
        .as_deref()
        .ok_or("neither upstream nor respond")?;
    let pool = pools
        .get(name)
        .ok_or_else(|| format!("no upstream `{name}`"))?
        .clone();
    let connect = r.connect_timeout.unwrap_or(default_connect);
    let per_worker = match clients.get(&(name, connect)) {
        Some(c) => c.clone(),
        None => {
            let c = (0..workers.max(1))
                .map(|_| pool.client_with(connect))
                .collect::<Result<Box<[_]>, _>>()?;
            clients.insert((name, connect), c.clone());
            c
        }
    };
    let version = match pool.protocol() {
        UpstreamProtocol::Http1 => Version::HTTP_11,
        UpstreamProtocol::Http2 => Version::HTTP_2,
    };
    // Plain HTTP/1.1 pools take the fast path; TLS and HTTP/2 stay with hyper's client.
    let fast = (version == Version::HTTP_11 && !pool.tls())
        .then(|| Arc::new(h1::client::Client::new(connect, pool.max_idle_per_target())));
    Ok(Action::Forward {
        pool,
        clients: per_worker,
        fast,
        version,
    })
}

fn has_source<T: std::error::Error + 'static>(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(s) = source {
        if s.is::<T>() {
            return true;
        }
        source = s.source();
    }
    false
}

/// What the audit log needs to know of a request, gathered along the way.
struct Record {
    time: SystemTime,
    id: String,
    /// The client, trusted proxies seen through.
    client: std::net::IpAddr,
    method: Method,
    host: Option<String>,
    path: String,
    route: Option<Arc<str>>,
    upstream: Option<String>,
    target: Option<String>,
    error: Option<String>,
    /// The authenticated subject.
    subject: Option<String>,
    /// `deny` when a security phase refused the request, `log` when inspection only noted a
    /// finding, `allow` when authentication let it in.
    decision: Option<&'static str>,
    /// The rule behind the decision.
    rule: Option<String>,
    bytes_in: Arc<AtomicU64>,
}

/// Accounts for a request when its response ends: metrics, and the audit line.
struct Done {
    started: Instant,
    metrics: Arc<RouteMetrics>,
    audit: Option<Box<Record>>,
    sink: Arc<Audit>,
    status: u16,
    bytes_out: u64,
    /// The target's in-flight count, held until the response body ends.
    in_flight: Option<InFlight>,
}

impl Done {
    fn route_name(&self) -> Arc<str> {
        self.audit
            .as_ref()
            .and_then(|a| a.route.clone())
            .unwrap_or_else(|| "none".into())
    }

    fn set_target(&mut self, upstream: &str, target: &str) {
        if let Some(a) = self.audit.as_mut() {
            a.upstream = Some(upstream.to_string());
            a.target = Some(target.to_string());
        }
    }
}

impl Drop for Done {
    fn drop(&mut self) {
        let elapsed = self.started.elapsed();
        self.metrics.by_class[metrics::class(self.status)].inc();
        self.metrics.duration.observe(elapsed.as_secs_f64());
        let Some(a) = self.audit.take() else { return };
        let time = humantime::format_rfc3339_millis(a.time).to_string();
        self.sink.record(&audit::Line {
            time,
            request_id: &a.id,
            client: a.client.to_canonical().to_string(),
            method: a.method.as_str(),
            host: a.host.as_deref(),
            path: &a.path,
            route: a.route.as_deref(),
            upstream: a.upstream.as_deref(),
            target: a.target.as_deref(),
            status: self.status,
            bytes_in: a.bytes_in.load(Relaxed),
            bytes_out: self.bytes_out,
            latency_ms: elapsed.as_secs_f64() * 1000.0,
            error: a.error.as_deref(),
            subject: a.subject.as_deref(),
            decision: a.decision,
            rule: a.rule.as_deref(),
        });
    }
}

/// What [`Proxy::handle_deferred`] left for the writer of the response head: the security
/// headers, which replace any the response has under the same names (and remove those they
/// remove), and the request id.
pub struct Finishing<'a> {
    headers: &'a SecurityHeaders,
    tls: bool,
    id: HeaderValue,
}

impl Finishing<'_> {
    /// Whether a field of the response under `name` is left out: replaced or removed.
    pub fn replaces(&self, name: &HeaderName) -> bool {
        *name == REQUEST_ID || self.headers.replaces(name, self.tls)
    }

    /// Writes the fields, as `name: value` lines.
    pub fn write(&self, out: &mut Vec<u8>) {
        self.headers.write(out, self.tls);
        h1::field(out, &REQUEST_ID, &self.id);
    }
}

/// The response body, counted; the request is accounted for when it ends or is dropped.
pub struct Tracked {
    inner: Body,
    done: Option<Done>,
}

impl hyper::body::Body for Tracked {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let (Some(data), Some(done)) = (frame.data_ref(), self.done.as_mut()) {
                    done.bytes_out += data.len() as u64;
                }
            }
            Poll::Ready(None) => self.done = None,
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// An upstream's response body that may rest no longer than `after` between two frames, as
/// the head may take no longer than the route's timeout (nginx's `proxy_read_timeout`): an
/// upstream that stalls in the middle of a body is cut off, and the client's connection with
/// it, rather than held open for ever. The timer is made only when the body first waits.
struct Idle<B> {
    inner: B,
    after: Duration,
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
}

/// The upstream sent no more of its response body for this long.
#[derive(Debug, thiserror::Error)]
#[error("the upstream's response body stalled for {0:?}")]
struct Stalled(Duration);

impl<B> Idle<B> {
    fn new(inner: B, after: Duration) -> Idle<B> {
        Idle {
            inner,
            after,
            timer: None,
        }
    }
}

impl<B> hyper::body::Body for Idle<B>
where
    B: hyper::body::Body<Data = Bytes, Error = BoxError> + Unpin,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(frame) => {
                if let Some(t) = this.timer.as_mut() {
                    t.as_mut().reset(tokio::time::Instant::now() + this.after);
                }
                Poll::Ready(frame)
            }
            Poll::Pending => {
                let after = this.after;
                let timer = this
                    .timer
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(after)));
                match std::future::Future::poll(timer.as_mut(), cx) {
                    Poll::Ready(()) => Poll::Ready(Some(Err(Box::new(Stalled(after)) as BoxError))),
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The request body, cut off with [`BodyTooLarge`] past the limit, and counted.
struct Limited {
    inner: Incoming,
    left: u64,
    /// Bytes passed on, for the audit log.
    seen: Option<Arc<AtomicU64>>,
}

#[derive(Debug, thiserror::Error)]
#[error("the request body is larger than the limit")]
struct BodyTooLarge;

/// Reading the client's body failed: bad chunking, or the client went away.
#[derive(Debug, thiserror::Error)]
#[error("reading the request body")]
struct ClientBodyError(#[source] hyper::Error);

impl hyper::body::Body for Limited {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match Pin::new(&mut self.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    let n = data.len() as u64;
                    if n > self.left {
                        return Poll::Ready(Some(Err(Box::new(BodyTooLarge))));
                    }
                    self.left -= n;
                    if let Some(seen) = &self.seen {
                        seen.fetch_add(n, Relaxed);
                    }
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(Box::new(ClientBodyError(e))))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The request's host, lower case and without a port: the URI's authority (HTTP/2, absolute
/// form) or the Host header.
fn request_host<B>(req: &Request<B>) -> Option<HeaderValue> {
    // An exact-size `String` becomes `Bytes` without another allocation (its first clone
    // would make one). Hosts are visible ASCII (the authority parser and `plain_host` see to
    // it), so the value is always valid.
    let lower = |h: &str| {
        HeaderValue::from_maybe_shared(Bytes::from(h.trim_end_matches('.').to_ascii_lowercase()))
            .ok()
    };
    match req.uri().authority() {
        Some(a) => lower(a.host()),
        None => {
            let h = req.headers().get(header::HOST)?.as_bytes();
            // Most requests on a thread name the host the one before named: that one's value
            // is shared rather than made again.
            thread_local! {
                static LAST: std::cell::RefCell<Option<(Box<[u8]>, HeaderValue)>> =
                    const { std::cell::RefCell::new(None) };
            }
            if let Some(value) = LAST.with(|last| {
                let last = last.borrow();
                let (raw, value) = last.as_ref()?;
                (**raw == *h).then(|| value.clone())
            }) {
                return Some(value);
            }
            if let Some(host) = plain_host(h) {
                let value = lower(host)?;
                LAST.with(|last| *last.borrow_mut() = Some((h.into(), value.clone())));
                return Some(value);
            }
            let h = std::str::from_utf8(h).ok()?;
            let authority: hyper::http::uri::Authority = h.parse().ok()?;
            lower(authority.host())
        }
    }
}

/// The host of a Host value that is a plain name or IPv4 address, with at most a port of
/// digits; `None` for anything else, which the full authority parser then judges.
fn plain_host(value: &[u8]) -> Option<&str> {
    let (host, port) = match value.iter().position(|&b| b == b':') {
        Some(i) => (&value[..i], Some(&value[i + 1..])),
        None => (value, None),
    };
    let plain = !host.is_empty()
        && host
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-'))
        && port.is_none_or(|p| (1..=5).contains(&p.len()) && p.iter().all(u8::is_ascii_digit));
    // Only ASCII passed.
    plain.then(|| std::str::from_utf8(host).ok()).flatten()
}

/// Removes the hop-by-hop headers of RFC 9110 section 7.6.1: those the Connection header
/// names, and the fixed set.
fn remove_hop_by_hop(headers: &mut HeaderMap) {
    const FIXED: [HeaderName; 9] = [
        header::CONNECTION,
        KEEP_ALIVE,
        PROXY_CONNECTION,
        header::PROXY_AUTHENTICATE,
        header::PROXY_AUTHORIZATION,
        header::TE,
        header::TRAILER,
        header::TRANSFER_ENCODING,
        header::UPGRADE,
    ];
    // Most messages have none: one look at each name is cheaper than nine removals.
    if !headers.keys().any(|k| FIXED.contains(k)) {
        return;
    }
    if let Some(connection) = headers.get(header::CONNECTION) {
        let named: Vec<HeaderName> = connection
            .to_str()
            .unwrap_or_default()
            .split(',')
            .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
            .collect();
        for name in named {
            headers.remove(name);
        }
    }
    for name in FIXED {
        headers.remove(name);
    }
}

/// The fields the gateway sets on a forwarded request, in place of any the client sent under
/// the same names: X-Forwarded-For and Forwarded (the client's values appended to),
/// X-Forwarded-Proto and -Host, and the request id. The fast path writes them as it encodes
/// the request, skipping the client's; hyper's path gets them put in the header map.
struct Forwarding {
    fields: smallvec::SmallVec<[(HeaderName, HeaderValue); 5]>,
    /// The Host for a request that came without one (HTTP/2 with `:authority` only): the
    /// client's, not the target's address.
    host: Option<HeaderValue>,
}

impl Forwarding {
    fn new(
        headers: &HeaderMap,
        conn: &ConnInfo,
        host: Option<HeaderValue>,
        id: &HeaderValue,
    ) -> Forwarding {
        // One look at each field, cheaper than three lookups in the map for the few fields
        // requests have.
        let (mut prior_xff, mut prior, mut has_host) = (None, None, false);
        for (name, value) in headers {
            if name == header::HOST {
                has_host = true;
            } else if name == header::FORWARDED {
                prior.get_or_insert(value.as_bytes());
            } else if name == X_FORWARDED_FOR {
                prior_xff.get_or_insert(value.as_bytes());
            }
        }
        let xff = match prior_xff {
            Some(prior) => joined(prior, &[conn.ip.as_bytes()]),
            None => conn.ip.clone(),
        };
        let forwarded = match (prior, host.as_ref()) {
            (None, None) => conn.forwarded.clone(),
            (prior, None) => joined(prior.unwrap_or_default(), &[conn.forwarded.as_bytes()]),
            (prior, Some(h)) => {
                let with_host = |prior: &[u8]| {
                    joined(
                        prior,
                        &[conn.forwarded.as_bytes(), b";host=\"", h.as_bytes(), b"\""],
                    )
                };
                match prior {
                    None => conn.forwarded_with(h, || with_host(b"")),
                    Some(prior) => with_host(prior),
                }
            }
        };
        let mut fields = smallvec::SmallVec::new();
        fields.push((X_FORWARDED_FOR, xff));
        fields.push((header::FORWARDED, forwarded));
        let proto = if conn.tls { "https" } else { "http" };
        fields.push((X_FORWARDED_PROTO, HeaderValue::from_static(proto)));
        fields.push((REQUEST_ID, id.clone()));
        // Cloned only when needed: the first clone of the host's bytes allocates.
        let missing = (!has_host).then(|| host.clone()).flatten();
        if let Some(h) = host {
            fields.push((X_FORWARDED_HOST, h));
        }
        Forwarding {
            fields,
            host: missing,
        }
    }

    /// The value set under `name`, if any.
    fn get(&self, name: &HeaderName) -> Option<&HeaderValue> {
        self.fields.iter().find(|(n, _)| n == name).map(|(_, v)| v)
    }

    /// Puts the fields in `headers`, replacing the client's.
    fn apply(&self, headers: &mut HeaderMap) {
        for (name, value) in &self.fields {
            headers.insert(name.clone(), value.clone());
        }
        if let Some(h) = &self.host {
            if !headers.contains_key(header::HOST) {
                headers.insert(header::HOST, h.clone());
            }
        }
    }
}

/// `prior, parts...` (or `parts...` when there is no prior) as a header value; each piece is
/// a header value's bytes or printable ASCII, so the whole is a header value.
fn joined(prior: &[u8], parts: &[&[u8]]) -> HeaderValue {
    let sep = if prior.is_empty() { 0 } else { 2 };
    let len = prior.len() + sep + parts.iter().map(|p| p.len()).sum::<usize>();
    // Exactly as long as needed: `Bytes` then takes the vector over without another allocation.
    let mut out = Vec::with_capacity(len);
    if !prior.is_empty() {
        out.extend_from_slice(prior);
        out.extend_from_slice(b", ");
    }
    for part in parts {
        out.extend_from_slice(part);
    }
    debug_assert!(HeaderValue::from_bytes(&out).is_ok());
    // SAFETY: a header value's bytes (HTAB, SP, VCHAR, obs-text) joined with printable ASCII
    // are all bytes a header value may hold.
    unsafe { HeaderValue::from_maybe_shared_unchecked(Bytes::from(out)) }
}

fn full(body: Bytes) -> Body {
    Body::Full((!body.is_empty()).then_some(body))
}

fn empty() -> ReqBody {
    Empty::new().map_err(|never| match never {}).boxed()
}

/// A JSON error response carrying a stable code and the request id; the message also goes to
/// the audit log.
fn error(
    status: StatusCode,
    code: &str,
    message: &str,
    id: &str,
    done: &mut Done,
) -> Response<Body> {
    if let Some(a) = done.audit.as_mut() {
        a.error = Some(message.to_string());
    }
    let body = serde_json::json!({
        "error": code,
        "message": message,
        "status": status.as_u16(),
        "request_id": id,
    });
    let body = Bytes::from(body.to_string());
    let length = body.len();
    let mut response = Response::new(full(body));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    with_length(response, length)
}

/// A status whose response has no content (RFC 9110 sections 15.2, 15.3.5 and 15.4.5).
pub(crate) fn without_content(status: StatusCode) -> bool {
    status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
}

/// An answer of the gateway's own with its Content-Length, so a HEAD request gets the length
/// the GET would have (RFC 9110 section 9.3.2); none for the statuses that have no content.
fn with_length(mut response: Response<Body>, length: usize) -> Response<Body> {
    if !without_content(response.status()) {
        response
            .headers_mut()
            .insert(header::CONTENT_LENGTH, HeaderValue::from(length));
    }
    response
}

/// The one place a refusal of the security phases becomes a response: the JSON error, the
/// rejection's headers, the decision and rule in the audit line, the metrics, and the count
/// towards the auto-ban rules of `client`.
fn reject(
    route: &str,
    r: Rejection,
    id: &str,
    client: std::net::IpAddr,
    done: &mut Done,
) -> Response<Body> {
    let phase = r.rule.split(':').next().unwrap_or_default();
    METRICS.rejections.with_label_values(&[route, phase]).inc();
    crate::autoban::note(client, &r);
    let mut response = error(r.status, r.code, &r.message, id, done);
    if let Some(a) = done.audit.as_mut() {
        a.decision = Some("deny");
        a.rule = Some(r.rule);
    }
    let headers = response.headers_mut();
    for (name, value) in *r.headers {
        if let Some(name) = name {
            headers.append(name, value);
        }
    }
    if r.close {
        headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    response
}

/// An inspection finding: a refusal in block mode; in log mode only recorded.
fn finding(route: &str, mode: InspectMode, f: Finding, done: &mut Done) -> Result<(), Rejection> {
    let block = mode == InspectMode::Block;
    METRICS
        .findings
        .with_label_values(&[route, f.class, if block { "block" } else { "log" }])
        .inc();
    let rule = format!("inspect:{}", f.rule);
    if block {
        return Err(Rejection::new(
            StatusCode::FORBIDDEN,
            "blocked",
            rule,
            format!("request blocked: {} in {}", f.class, f.part),
        ));
    }
    if let Some(a) = done.audit.as_mut() {
        if matches!(a.decision, None | Some("allow")) {
            a.decision = Some("log");
            a.rule = Some(format!("{rule} ({})", f.part));
        }
    }
    Ok(())
}

fn too_large(max: u64) -> Rejection {
    Rejection::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "body_too_large",
        "body:size",
        format!("the request body is larger than {max} bytes"),
    )
}

/// A body that could not be read: bad chunking, or cut off. The connection is closed after.
fn bad_body() -> Rejection {
    let mut r = Rejection::new(
        StatusCode::BAD_REQUEST,
        "bad_request",
        "body:framing",
        "the request body is malformed or was cut off",
    );
    r.close = true;
    r
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    #[test]
    fn request_ids_are_unique_across_threads_and_generations() {
        let ids = Arc::new(RequestIds::new());
        let other = RequestIds::new();
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let ids = ids.clone();
                std::thread::spawn(move || {
                    (0..3000)
                        .map(|_| ids.next().to_str().unwrap().to_string())
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        let mut seen = HashSet::new();
        for t in threads {
            for id in t.join().unwrap() {
                assert_eq!(id.len(), 32);
                assert!(seen.insert(id.clone()), "{id} twice");
            }
        }
        // This thread, between two generators: still never the same id.
        for _ in 0..2000 {
            assert!(seen.insert(ids.next().to_str().unwrap().to_string()));
            assert!(seen.insert(other.next().to_str().unwrap().to_string()));
        }
        assert!(seen
            .iter()
            .all(|id| valid_request_id(&HeaderValue::from_str(id).unwrap())));
    }
}
