//! Upstream pools: targets, load balancing, passive outlier ejection, active health checks,
//! the retry budget, and the HTTP(S) clients that reach the targets.

use std::{
    hash::{Hash as _, Hasher as _},
    net::{IpAddr, SocketAddr},
    sync::{
        atomic::{AtomicBool, AtomicI64, AtomicU32, AtomicU64, AtomicUsize, Ordering::Relaxed},
        Arc, Weak,
    },
    time::{Duration, Instant},
};

use bytes::Bytes;
use http_body_util::{BodyExt as _, Empty};
use hyper::{header, header::HeaderValue, Request};
use hyper_rustls::{FixedServerNameResolver, HttpsConnector};
use hyper_util::{
    client::legacy::{connect::HttpConnector, Client},
    rt::{TokioExecutor, TokioTimer},
};
use rustls_pki_types::ServerName;

use super::ReqBody;
use crate::{
    config::{Balance, HealthCheckConfig, OutlierConfig, UpstreamConfig, UpstreamProtocol},
    metrics::METRICS,
    tls,
};

pub type UpstreamClient = Client<HttpsConnector<HttpConnector>, ReqBody>;

/// Retries kept in reserve, on top of the budget's share of requests.
const RETRY_RESERVE: i64 = 10;

/// A pool of targets and how to reach and choose them.
pub struct Pool {
    pub name: String,
    pub targets: Vec<Target>,
    /// The Host header of health checks, and the SNI name when TLS is on.
    server_name: Option<String>,
    balance: Balance,
    hash_header: Option<header::HeaderName>,
    /// Round-robin order of target indexes, each as often as its weight, interleaved.
    schedule: Vec<usize>,
    next: AtomicUsize,
    max_in_flight: u32,
    pub retries: u32,
    budget: RetryBudget,
    outlier: OutlierConfig,
    epoch: Instant,
    config: UpstreamConfig,
    /// The client with the proxy's default connect timeout.
    pub client: UpstreamClient,
    /// Whether this pool's generation is the one in service, so its health checks write the
    /// health gauge (see [`Pool::publish`]).
    published: AtomicBool,
}

/// One target and what the pool knows of it.
pub struct Target {
    pub addr: SocketAddr,
    /// The address as text, for metrics and the audit log.
    pub label: String,
    /// `SCHEME://ADDR`, the start of every request URI to this target.
    pub origin: String,
    weight: u32,
    /// Stable per address, for rendezvous hashing.
    seed: u64,
    in_flight: AtomicU32,
    failures: AtomicU32,
    /// Milliseconds since the pool's epoch until which the target is ejected; 0: not ejected.
    ejected_until: AtomicU64,
    /// The active health checks' verdict (true without checks).
    healthy: AtomicBool,
}

/// What happened to one request sent to a target, for outlier ejection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Success,
    Failure,
}

impl Pool {
    pub fn new(
        name: &str,
        config: &UpstreamConfig,
        connect_timeout: Duration,
    ) -> Result<Pool, String> {
        let targets: Vec<Target> = config
            .targets
            .iter()
            .map(|t| {
                let mut h = std::hash::DefaultHasher::new();
                t.address.hash(&mut h);
                Target {
                    addr: t.address,
                    label: t.address.to_string(),
                    origin: format!(
                        "{}://{}",
                        if config.tls.is_some() {
                            "https"
                        } else {
                            "http"
                        },
                        t.address
                    ),
                    weight: t.weight.max(1),
                    seed: h.finish(),
                    in_flight: AtomicU32::new(0),
                    failures: AtomicU32::new(0),
                    ejected_until: AtomicU64::new(0),
                    healthy: AtomicBool::new(true),
                }
            })
            .collect();
        let hash_header = match config.hash_on.as_deref() {
            Some(on) => on
                .strip_prefix("header:")
                .map(|h| header::HeaderName::from_bytes(h.as_bytes()))
                .transpose()
                .map_err(|e| format!("hash_on: {e}"))?,
            None => None,
        };
        let schedule = smooth_schedule(&targets.iter().map(|t| t.weight).collect::<Vec<_>>());
        let client = build_client(config, connect_timeout)?;
        Ok(Pool {
            name: name.to_string(),
            server_name: config.tls.as_ref().and_then(|t| t.server_name.clone()),
            targets,
            balance: config.balance,
            hash_header,
            schedule,
            next: AtomicUsize::new(0),
            max_in_flight: config.max_requests_per_target,
            retries: config.retries,
            budget: RetryBudget::new(config.retry_budget),
            outlier: config.outlier.clone(),
            epoch: Instant::now(),
            config: config.clone(),
            client,
            published: AtomicBool::new(false),
        })
    }

    /// Puts this pool's targets in the health gauge, as they are now: the pool's generation
    /// has gone into service. Until then (a reload that fails later leaves it unused) its
    /// targets are not shown.
    pub fn publish(&self) {
        self.published.store(true, Relaxed);
        for t in &self.targets {
            METRICS
                .target_healthy
                .with_label_values(&[&self.name, &t.label])
                .set(i64::from(t.healthy.load(Relaxed)));
        }
    }

    /// Takes this pool's targets out of the health gauge, except those in `kept` (upstream,
    /// target) that the generation now in service still has; its health checks stop writing
    /// the gauge, though they may run on while requests of the old generation finish.
    pub fn retire(&self, kept: &std::collections::HashSet<(&str, &str)>) {
        self.published.store(false, Relaxed);
        for t in &self.targets {
            if !kept.contains(&(self.name.as_str(), t.label.as_str())) {
                let _ = METRICS
                    .target_healthy
                    .remove_label_values(&[&self.name, &t.label]);
            }
        }
    }

    /// A client for this pool's targets with the given connect timeout.
    pub fn client_with(&self, connect_timeout: Duration) -> Result<UpstreamClient, String> {
        build_client(&self.config, connect_timeout)
    }

    pub fn protocol(&self) -> UpstreamProtocol {
        self.config.protocol
    }

    /// Whether the targets are reached over TLS.
    pub fn tls(&self) -> bool {
        self.config.tls.is_some()
    }

    pub fn max_idle_per_target(&self) -> usize {
        self.config.max_idle_per_target as usize
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    fn available(&self, i: usize, now: &mut Option<u64>) -> bool {
        let t = &self.targets[i];
        t.healthy.load(Relaxed)
            && t.in_flight.load(Relaxed) < self.max_in_flight
            && self.not_ejected(i, now)
    }

    fn not_ejected(&self, i: usize, now: &mut Option<u64>) -> bool {
        let until = self.targets[i].ejected_until.load(Relaxed);
        until == 0 || until <= *now.get_or_insert_with(|| self.now_ms())
    }

    /// The header whose value picks the target, when the pool balances on one.
    pub fn hash_header(&self) -> Option<&header::HeaderName> {
        self.hash_header.as_ref()
    }

    /// Chooses a target that is healthy, not ejected, below its request limit and not in
    /// `tried`; None when there is none. `key` is the value of the request's
    /// [`hash_header`](Pool::hash_header), if it has one.
    pub fn pick(
        &self,
        client: IpAddr,
        key: Option<&HeaderValue>,
        tried: &[usize],
    ) -> Option<usize> {
        let mut now = None;
        let mut ok = |i: usize| !tried.contains(&i) && self.available(i, &mut now);
        match self.balance {
            Balance::RoundRobin => {
                let n = self.next.fetch_add(1, Relaxed);
                let len = self.schedule.len();
                (0..len)
                    .map(|k| self.schedule[(n + k) % len])
                    .find(|&i| ok(i))
            }
            Balance::LeastOutstanding => {
                // Start at a rotating index, so ties spread over the targets.
                let n = self.targets.len();
                let start = self.next.fetch_add(1, Relaxed);
                let mut best: Option<(usize, u64, u64)> = None;
                for k in 0..n {
                    let i = (start + k) % n;
                    if !ok(i) {
                        continue;
                    }
                    let t = &self.targets[i];
                    let load = u64::from(t.in_flight.load(Relaxed));
                    let w = u64::from(t.weight);
                    if best.is_none_or(|(_, bl, bw)| load * bw < bl * w) {
                        best = Some((i, load, w));
                    }
                }
                best.map(|(i, _, _)| i)
            }
            Balance::Hash => {
                let mut h = std::hash::DefaultHasher::new();
                match key {
                    Some(v) => v.as_bytes().hash(&mut h),
                    None => client.to_canonical().hash(&mut h),
                }
                let key = h.finish();
                // Weighted rendezvous hashing: the highest weight / -ln(u) wins.
                let mut best: Option<(usize, f64)> = None;
                for i in 0..self.targets.len() {
                    if !ok(i) {
                        continue;
                    }
                    let t = &self.targets[i];
                    let bits = gateway_common::hash::mix(key ^ t.seed) >> 11;
                    let u = (bits as f64 + 0.5) / (1u64 << 53) as f64;
                    let score = f64::from(t.weight) / -u.ln();
                    if best.is_none_or(|(_, s)| score > s) {
                        best = Some((i, score));
                    }
                }
                best.map(|(i, _)| i)
            }
        }
    }

    /// Counts a request in flight on target `i` until the guard drops.
    pub fn begin(self: &Arc<Pool>, i: usize) -> InFlight {
        self.targets[i].in_flight.fetch_add(1, Relaxed);
        InFlight {
            pool: self.clone(),
            index: i,
        }
    }

    /// Records what a request to target `i` came to; ejects it after too many failures in a row.
    pub fn report(&self, i: usize, outcome: Outcome) {
        let t = &self.targets[i];
        match outcome {
            Outcome::Success => {
                if t.failures.load(Relaxed) != 0 {
                    t.failures.store(0, Relaxed);
                }
            }
            Outcome::Failure => {
                let n = t.failures.fetch_add(1, Relaxed) + 1;
                let limit = self.outlier.consecutive_failures;
                if limit > 0 && n >= limit {
                    t.failures.store(0, Relaxed);
                    // Never eject the last target that could serve: with none left, every
                    // request would get 503 for the whole ejection time, also after the
                    // targets recover.
                    let mut now = None;
                    let others = (0..self.targets.len()).filter(|&j| j != i).any(|j| {
                        self.targets[j].healthy.load(Relaxed) && self.not_ejected(j, &mut now)
                    });
                    if !others {
                        tracing::warn!(upstream = %self.name, target = %t.label, failures = n, "target failing, but not ejected: it is the last one available");
                        return;
                    }
                    let until = self.now_ms() + self.outlier.ejection_time.as_millis() as u64;
                    t.ejected_until.store(until.max(1), Relaxed);
                    METRICS
                        .ejections
                        .with_label_values(&[&self.name, &t.label])
                        .inc();
                    tracing::warn!(upstream = %self.name, target = %t.label, failures = n, ejected_for = ?self.outlier.ejection_time, "target ejected");
                }
            }
        }
    }

    /// Counts a request toward the retry budget.
    pub fn deposit(&self) {
        self.budget.deposit();
    }

    /// Takes a retry from the budget, if one is left.
    pub fn withdraw(&self) -> bool {
        let ok = self.budget.withdraw();
        if ok {
            METRICS.retries.with_label_values(&[&self.name]).inc();
        }
        ok
    }

    /// Starts the active health checks, if configured; they stop when the pool is dropped.
    pub fn start_health_checks(self: &Arc<Pool>) {
        let Some(check) = self.config.health_check.clone() else {
            return;
        };
        let pool = Arc::downgrade(self);
        tokio::spawn(health_checks(pool, check));
    }

    async fn check_target(&self, i: usize, check: &HealthCheckConfig) -> bool {
        let t = &self.targets[i];
        let host = self.server_name.clone().unwrap_or_else(|| t.label.clone());
        let Ok(req) = Request::get(format!("{}{}", t.origin, check.path))
            .header(header::HOST, host)
            .header(header::USER_AGENT, "gateway-health-check")
            .body(
                Empty::<Bytes>::new()
                    .map_err(|never| match never {})
                    .boxed(),
            )
        else {
            return false;
        };
        match tokio::time::timeout(check.timeout, self.client.request(req)).await {
            Ok(Ok(response)) => {
                let ok = response.status().is_success() || response.status().is_redirection();
                // Read a little of the body so the connection can be reused.
                let _ = tokio::time::timeout(check.timeout, response.into_body().collect()).await;
                ok
            }
            _ => false,
        }
    }
}

/// A request in flight on a target; counted down on drop.
pub struct InFlight {
    pool: Arc<Pool>,
    index: usize,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.pool.targets[self.index]
            .in_flight
            .fetch_sub(1, Relaxed);
    }
}

async fn health_checks(pool: Weak<Pool>, check: HealthCheckConfig) {
    let mut passes: Vec<u32> = Vec::new();
    let mut fails: Vec<u32> = Vec::new();
    loop {
        let Some(p) = pool.upgrade() else { return };
        passes.resize(p.targets.len(), 0);
        fails.resize(p.targets.len(), 0);
        let mut set = tokio::task::JoinSet::new();
        for i in 0..p.targets.len() {
            let p = p.clone();
            let check = check.clone();
            set.spawn(async move { (i, p.check_target(i, &check).await) });
        }
        while let Some(Ok((i, ok))) = set.join_next().await {
            let t = &p.targets[i];
            let was = t.healthy.load(Relaxed);
            if ok {
                passes[i] += 1;
                fails[i] = 0;
            } else {
                fails[i] += 1;
                passes[i] = 0;
            }
            let now = if was {
                fails[i] < check.unhealthy_threshold
            } else {
                passes[i] >= check.healthy_threshold
            };
            if now != was {
                t.healthy.store(now, Relaxed);
                if p.published.load(Relaxed) {
                    METRICS
                        .target_healthy
                        .with_label_values(&[&p.name, &t.label])
                        .set(i64::from(now));
                }
                if now {
                    // Back in service with a clean slate.
                    t.ejected_until.store(0, Relaxed);
                    t.failures.store(0, Relaxed);
                    tracing::info!(upstream = %p.name, target = %t.label, "target healthy");
                } else {
                    tracing::warn!(upstream = %p.name, target = %t.label, failures = fails[i], "target unhealthy");
                }
            }
        }
        drop(p);
        tokio::time::sleep(check.interval).await;
    }
}

/// Retries allowed: a reserve of [`RETRY_RESERVE`], refilled by `ratio` per request.
struct RetryBudget {
    /// Thousandths of a retry.
    tokens: AtomicI64,
    per_request: i64,
}

impl RetryBudget {
    fn new(ratio: f64) -> RetryBudget {
        RetryBudget {
            tokens: AtomicI64::new(RETRY_RESERVE * 1000),
            per_request: (ratio * 1000.0).round() as i64,
        }
    }

    fn deposit(&self) {
        let cap = RETRY_RESERVE * 1000;
        if self.per_request > 0 && self.tokens.load(Relaxed) < cap {
            let _ = self.tokens.fetch_update(Relaxed, Relaxed, |t| {
                (t < cap).then(|| (t + self.per_request).min(cap))
            });
        }
    }

    fn withdraw(&self) -> bool {
        self.tokens
            .fetch_update(Relaxed, Relaxed, |t| (t >= 1000).then_some(t - 1000))
            .is_ok()
    }
}

/// Nginx's smooth weighted round-robin, unrolled into one period: each index appears as often
/// as its weight, spread out rather than in runs.
fn smooth_schedule(weights: &[u32]) -> Vec<usize> {
    let total: i64 = weights.iter().map(|&w| i64::from(w)).sum();
    let mut current = vec![0i64; weights.len()];
    let mut out = Vec::with_capacity(total as usize);
    for _ in 0..total {
        let mut best = 0;
        for (i, &w) in weights.iter().enumerate() {
            current[i] += i64::from(w);
            if current[i] > current[best] {
                best = i;
            }
        }
        current[best] -= total;
        out.push(best);
    }
    out
}

fn plain_connector(http: HttpConnector) -> HttpsConnector<HttpConnector> {
    // A TLS config is required to build the connector; it is never used for http:// URIs.
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("ring supports the default versions")
    .with_root_certificates(rustls::RootCertStore::empty())
    .with_no_client_auth();
    hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(config)
        .https_or_http()
        .enable_http1()
        .wrap_connector(http)
}

/// A client for the targets of `config` with the given connect timeout.
fn build_client(
    config: &UpstreamConfig,
    connect_timeout: Duration,
) -> Result<UpstreamClient, String> {
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_connect_timeout(Some(connect_timeout));
    let h2 = config.protocol == UpstreamProtocol::Http2;
    let connector = match &config.tls {
        Some(t) => {
            let config = tls::client_config(t)?;
            let builder = hyper_rustls::HttpsConnectorBuilder::new()
                .with_tls_config(config)
                .https_or_http();
            let builder = match &t.server_name {
                Some(name) => builder.with_server_name_resolver(FixedServerNameResolver::new(
                    ServerName::try_from(name.clone())
                        .map_err(|e| format!("tls.server_name `{name}`: {e}"))?,
                )),
                None => builder,
            };
            if h2 {
                builder.enable_http2().wrap_connector(http)
            } else {
                builder.enable_http1().wrap_connector(http)
            }
        }
        None => plain_connector(http),
    };
    let mut builder = Client::builder(TokioExecutor::new());
    builder
        .pool_idle_timeout(Duration::from_secs(60))
        .pool_max_idle_per_host(config.max_idle_per_target as usize)
        .pool_timer(TokioTimer::new())
        .timer(TokioTimer::new())
        .http2_only(h2);
    Ok(builder.build(connector))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn smooth_schedule_spreads_by_weight() {
        assert_eq!(smooth_schedule(&[1, 1, 1]), [0, 1, 2]);
        let s = smooth_schedule(&[5, 1, 1]);
        assert_eq!(s, [0, 0, 1, 0, 2, 0, 0]);
        let s = smooth_schedule(&[3, 2]);
        assert_eq!(s.iter().filter(|&&i| i == 0).count(), 3);
        assert_eq!(s.len(), 5);
    }

    #[test]
    fn the_retry_budget_keeps_a_reserve_and_refills_by_ratio() {
        let b = RetryBudget::new(0.2);
        for _ in 0..RETRY_RESERVE {
            assert!(b.withdraw());
        }
        assert!(!b.withdraw());
        for _ in 0..5 {
            b.deposit();
        }
        assert!(b.withdraw());
        assert!(!b.withdraw());
        let none = RetryBudget::new(0.0);
        for _ in 0..100 {
            none.deposit();
        }
        assert_eq!(none.tokens.load(Relaxed), RETRY_RESERVE * 1000);
    }
}
