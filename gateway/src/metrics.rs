//! Prometheus metrics, and the admin HTTP listener that serves them.
//!
//! The proxy's metrics live in one process-wide registry, so counters carry on across reloads.
//! The XDP verdict counters are read from the kernel maps at each scrape.

use std::{convert::Infallible, fmt::Write as _, net::SocketAddr, sync::Arc, sync::LazyLock};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{header, Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use prometheus::{
    Encoder as _, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec,
    Opts, Registry, TextEncoder,
};
use tokio::{net::TcpListener, sync::watch};

pub struct Metrics {
    registry: Registry,
    /// Requests by route and status class (`2xx`...).
    pub requests: IntCounterVec,
    /// Seconds from the request's arrival to the end of its response, by route.
    pub duration: HistogramVec,
    pub open_connections: IntGauge,
    /// Client connections open now, by proxy worker (thread).
    pub worker_connections: IntGaugeVec,
    pub connections: IntCounter,
    /// Connections closed at accept because `proxy.max_connections` were open.
    pub connections_refused: IntCounter,
    pub tls_handshake_failures: IntCounter,
    /// 1 when a target may get requests as far as health checks go, else 0.
    pub target_healthy: IntGaugeVec,
    pub ejections: IntCounterVec,
    pub retries: IntCounterVec,
    pub audit_dropped: IntCounter,
    pub reloads: IntCounterVec,
    /// Requests refused by a rate limit, by route and limit.
    pub rate_limited: IntCounterVec,
    /// Requests the security pipeline refused, by route and phase (`auth`, `access`...).
    pub rejections: IntCounterVec,
    /// Inspection findings, by route, rule class and mode (`block` or `log`).
    pub findings: IntCounterVec,
    /// HTTP/1 requests refused for their framing (request smuggling defences), by problem.
    pub framing_refused: IntCounterVec,
    /// Credentials checked, by provider and result (`ok`, `cached` or the refusal's reason).
    pub auth: IntCounterVec,
    /// JWK set fetches and introspection calls, by provider, kind and result (`ok`, `error`).
    pub auth_fetches: IntCounterVec,
    /// Clients put on the blocklist by an auto-ban rule, by rule.
    pub autobans: IntCounterVec,
    /// Bans not applied, by reason (`allowlisted`, `listed`, `limit`, `queue_full`, `error`).
    pub autoban_skipped: IntCounterVec,
    /// Drop events received from the XDP program, by reason (the verdict).
    pub xdp_drop_events: IntCounterVec,
}

fn must<T>(r: prometheus::Result<T>) -> T {
    r.expect("metric definitions are static and unique")
}

pub static METRICS: LazyLock<Metrics> = LazyLock::new(|| {
    let registry = Registry::new();
    let counter_vec = |name: &str, help: &str, labels: &[&str]| {
        let c = must(IntCounterVec::new(Opts::new(name, help), labels));
        must(registry.register(Box::new(c.clone())));
        c
    };
    let counter = |name: &str, help: &str| {
        let c = must(IntCounter::new(name, help));
        must(registry.register(Box::new(c.clone())));
        c
    };
    let requests = counter_vec(
        "gateway_requests_total",
        "Requests answered, by route and status class.",
        &["route", "class"],
    );
    let duration = must(HistogramVec::new(
        HistogramOpts::new(
            "gateway_request_duration_seconds",
            "Time from a request's arrival to the end of its response, by route.",
        )
        .buckets(vec![
            0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
            30.0,
        ]),
        &["route"],
    ));
    must(registry.register(Box::new(duration.clone())));
    let open_connections = must(IntGauge::new(
        "gateway_open_connections",
        "Client connections open now.",
    ));
    must(registry.register(Box::new(open_connections.clone())));
    let worker_connections = must(IntGaugeVec::new(
        Opts::new(
            "gateway_worker_connections",
            "Client connections open now, by proxy worker thread.",
        ),
        &["worker"],
    ));
    must(registry.register(Box::new(worker_connections.clone())));
    let target_healthy = must(IntGaugeVec::new(
        Opts::new(
            "gateway_upstream_target_healthy",
            "1 when active health checks pass for the target (or none are configured), else 0.",
        ),
        &["upstream", "target"],
    ));
    must(registry.register(Box::new(target_healthy.clone())));
    Metrics {
        requests,
        duration,
        open_connections,
        worker_connections,
        connections: counter("gateway_connections_total", "Client connections accepted."),
        connections_refused: counter(
            "gateway_connections_refused_total",
            "Client connections closed at accept because proxy.max_connections were open.",
        ),
        tls_handshake_failures: counter(
            "gateway_tls_handshake_failures_total",
            "TLS handshakes with clients that failed or timed out.",
        ),
        target_healthy,
        ejections: counter_vec(
            "gateway_upstream_ejections_total",
            "Targets ejected by passive outlier detection.",
            &["upstream", "target"],
        ),
        retries: counter_vec(
            "gateway_upstream_retries_total",
            "Requests retried on another target.",
            &["upstream"],
        ),
        audit_dropped: counter(
            "gateway_audit_dropped_total",
            "Audit lines dropped because the writer fell behind.",
        ),
        reloads: counter_vec(
            "gateway_config_reloads_total",
            "Configuration reloads, by result.",
            &["result"],
        ),
        rate_limited: counter_vec(
            "gateway_rate_limited_total",
            "Requests refused with 429 by a rate limit, by route and limit.",
            &["route", "limit"],
        ),
        rejections: counter_vec(
            "gateway_rejections_total",
            "Requests the security pipeline refused, by route and phase.",
            &["route", "phase"],
        ),
        findings: counter_vec(
            "gateway_inspection_findings_total",
            "Payload inspection findings, by route, rule class and mode.",
            &["route", "class", "mode"],
        ),
        framing_refused: counter_vec(
            "gateway_framing_refused_total",
            "HTTP/1 requests refused for their framing (smuggling defences), by problem.",
            &["problem"],
        ),
        auth: counter_vec(
            "gateway_auth_total",
            "Credentials checked, by provider and result (ok, cached or the reason of a refusal).",
            &["provider", "result"],
        ),
        auth_fetches: counter_vec(
            "gateway_auth_fetches_total",
            "JWK set fetches and token introspection calls, by provider, kind and result.",
            &["provider", "kind", "result"],
        ),
        autobans: counter_vec(
            "gateway_autobans_total",
            "Clients put on the blocklist by an auto-ban rule, by rule.",
            &["rule"],
        ),
        autoban_skipped: counter_vec(
            "gateway_autoban_skipped_total",
            "Auto-bans not applied, by reason (allowlisted, listed, limit, queue_full, error).",
            &["reason"],
        ),
        xdp_drop_events: counter_vec(
            "gateway_xdp_drop_events_total",
            "Sampled drop events received from the XDP program (at most one per source per second), by reason.",
            &["reason"],
        ),
        registry,
    }
});

/// Status class label of a status code.
pub fn class(status: u16) -> usize {
    (status / 100).clamp(1, 5) as usize - 1
}

pub const CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

/// The metrics in the Prometheus text format, followed by `extra` (already formatted).
pub fn render(extra: &str) -> String {
    let mut out = Vec::new();
    let _ = TextEncoder::new().encode(&METRICS.registry.gather(), &mut out);
    let mut text = String::from_utf8(out).unwrap_or_default();
    text.push_str(extra);
    text
}

/// Formats one counter family for [`render`]'s `extra`.
pub fn counter_family(
    out: &mut String,
    name: &str,
    help: &str,
    label: &str,
    values: &[(&str, u64)],
) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
    for (l, v) in values {
        let _ = writeln!(out, "{name}{{{label}=\"{l}\"}} {v}");
    }
}

/// What the admin listener adds to the proxy's metrics at each scrape.
pub type Extra = Arc<dyn Fn() -> String + Send + Sync>;

/// Serves `GET /metrics` and `GET /healthz` on `listener` until `stop` turns true.
pub async fn serve(listener: TcpListener, extra: Extra, mut stop: watch::Receiver<bool>) {
    tracing::info!(listen = ?listener.local_addr().ok(), "metrics listening");
    loop {
        let (stream, _) = tokio::select! {
            _ = stop.changed() => return,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "metrics accept");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let extra = extra.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                let extra = extra.clone();
                async move { Ok::<_, Infallible>(answer(&req, &extra)) }
            });
            let _ = tokio::time::timeout(
                std::time::Duration::from_secs(30),
                hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service),
            )
            .await;
        });
    }
}

fn answer<B>(req: &Request<B>, extra: &Extra) -> Response<Full<Bytes>> {
    let (status, kind, body) = match (req.method(), req.uri().path()) {
        (&Method::GET, "/metrics") => (
            StatusCode::OK,
            "text/plain; version=0.0.4",
            render(&extra()),
        ),
        (&Method::GET, "/healthz") => (StatusCode::OK, "text/plain", "ok\n".to_string()),
        _ => (
            StatusCode::NOT_FOUND,
            "text/plain",
            "not found: GET /metrics or /healthz\n".to_string(),
        ),
    };
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, header::HeaderValue::from_static(kind));
    response
}

/// Binds the metrics listener; the error names the address.
pub async fn bind(addr: SocketAddr) -> Result<TcpListener, String> {
    TcpListener::bind(addr)
        .await
        .map_err(|e| format!("admin.metrics_listen: cannot listen on {addr}: {e}"))
}
