//! The security phases that need no credentials: rate limits (429 with Retry-After and the
//! RateLimit headers, keys per client, header and route, bounded), the response's security
//! headers, and CORS (preflights answered by the gateway).

use std::time::Duration;

use integration_tests::{
    harness::{Daemon, Setup},
    web::{self, free_port, get, http1, send, Upstream},
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limits_refuse_with_429_and_headers() {
    let up = Upstream::start("up").await;
    let port = free_port();
    let setup = Setup::new();
    // Long windows: a refused request stays refused for the whole test, whatever the timing.
    let rest = format!(
        r#"
[upstreams.up]
targets = ["{}"]

[[routes]]
name = "per-ip"
path_prefix = "/ip"
upstream = "up"
[[routes.rate_limits]]
name = "ip"
key = "client_ip"
limit = 3
per = "1h"

[[routes]]
name = "per-tenant"
path_prefix = "/tenant"
upstream = "up"
[[routes.rate_limits]]
name = "tenant"
key = "header:x-tenant"
limit = 2
per = "1h"
[[routes.rate_limits]]
name = "whole-route"
key = "route"
limit = 5
per = "1h"
"#,
        up.addr
    );
    let config = web::write_config(&setup, port, "", &rest);
    let metrics = web::with_metrics(&config);
    let _daemon = Daemon::start_local(&setup, &config);
    let client = http1();
    let url = |p: &str| format!("http://127.0.0.1:{port}{p}");

    for left in [2, 1, 0] {
        let r = send(&client, get(&url("/ip"), "x", &[])).await;
        assert_eq!(r.status, 200);
        assert_eq!(r.headers["ratelimit-policy"], "\"ip\";q=3;w=3600");
        let rate = r.headers["ratelimit"].to_str().unwrap();
        assert!(rate.starts_with(&format!("\"ip\";r={left};t=")), "{rate}");
    }
    let served = up.served();
    let r = send(
        &client,
        get(&url("/ip"), "x", &[("x-request-id", "limited-1")]),
    )
    .await;
    assert_eq!(r.status, 429, "{:?}", r.json);
    assert_eq!(r.json["error"], "rate_limited");
    assert_eq!(r.json["request_id"], "limited-1");
    let retry: u64 = r.headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=1200).contains(&retry), "{retry}");
    assert!(r.headers["ratelimit"].to_str().unwrap().contains(";r=0;"));
    assert_eq!(
        up.served(),
        served,
        "a refused request reached the upstream"
    );

    // Keyed by a header: each tenant has its own bucket; requests without the header are
    // not counted by that limit, but all count toward the route's.
    for tenant in ["a", "b"] {
        for _ in 0..2 {
            let r = send(&client, get(&url("/tenant"), "x", &[("x-tenant", tenant)])).await;
            assert_eq!(r.status, 200);
        }
        let r = send(&client, get(&url("/tenant"), "x", &[("x-tenant", tenant)])).await;
        assert_eq!(r.status, 429);
        assert!(r.json["message"].as_str().unwrap().contains("tenant"));
    }
    // Four passed the route limit of 5 (the refused ones were not charged to it).
    let r = send(&client, get(&url("/tenant"), "x", &[])).await;
    assert_eq!(r.status, 200);
    let r = send(&client, get(&url("/tenant"), "x", &[])).await;
    assert_eq!(r.status, 429);
    assert!(r.json["message"].as_str().unwrap().contains("whole-route"));

    let (ok, m) = web::scrape_until(
        metrics,
        &[
            (
                "gateway_rate_limited_total{limit=\"ip\",route=\"per-ip\"}",
                1.0,
            ),
            (
                "gateway_rate_limited_total{limit=\"tenant\",route=\"per-tenant\"}",
                2.0,
            ),
            (
                "gateway_rejections_total{phase=\"ratelimit\",route=\"per-tenant\"}",
                3.0,
            ),
        ],
    )
    .await;
    assert!(ok, "{m}");
    // The audit line is written once the response has gone out: wait for it.
    web::eventually(Duration::from_secs(5), || {
        web::audit_lines(&setup)
            .iter()
            .any(|l| l["request_id"] == "limited-1")
    })
    .await;
    let lines = web::audit_lines(&setup);
    let limited = lines
        .iter()
        .find(|l| l["request_id"] == "limited-1")
        .expect("the refusal is in the audit log");
    assert_eq!(limited["status"], 429);
    assert_eq!(limited["decision"], "deny");
    assert_eq!(limited["rule"], "ratelimit:ip");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn security_headers_and_cors() {
    let up = Upstream::start("up").await;
    let port = free_port();
    let setup = Setup::new();
    let rest = format!(
        r#"
[security_headers]
content_security_policy = "default-src 'none'"
strict_transport_security = "max-age=63072000"

[upstreams.up]
targets = ["{}"]

[[routes]]
name = "app"
path_prefix = "/app"
upstream = "up"
[routes.cors]
allow_origins = ["https://app.example.com"]
allow_methods = ["GET", "PUT"]
allow_headers = ["authorization", "content-type"]
expose_headers = ["x-request-id"]
allow_credentials = true
max_age = "10m"

[[routes]]
name = "own-headers"
path_prefix = "/own"
upstream = "up"
[routes.security_headers]
x_frame_options = "SAMEORIGIN"
remove = []
"#,
        up.addr
    );
    let config = web::write_config(&setup, port, "", &rest);
    let _daemon = Daemon::start_local(&setup, &config);
    let client = http1();
    let url = |p: &str| format!("http://127.0.0.1:{port}{p}");

    // Security headers on forwarded, answered and unrouted responses; upstream software
    // headers removed; HSTS only over TLS.
    for path in ["/app/x", "/nowhere"] {
        let r = send(&client, get(&url(path), "x", &[])).await;
        assert_eq!(r.headers["x-content-type-options"], "nosniff", "{path}");
        assert_eq!(r.headers["x-frame-options"], "DENY");
        assert_eq!(r.headers["referrer-policy"], "no-referrer");
        assert_eq!(r.headers["content-security-policy"], "default-src 'none'");
        assert!(!r.headers.contains_key("server"), "{path}");
        assert!(!r.headers.contains_key("x-powered-by"));
        assert!(!r.headers.contains_key("strict-transport-security"));
    }
    let r = send(&client, get(&url("/own"), "x", &[])).await;
    assert_eq!(r.headers["x-frame-options"], "SAMEORIGIN");
    assert_eq!(r.headers["server"], "test-upstream/1.0");
    assert!(!r.headers.contains_key("content-security-policy"));
    // The gateway's fields replace the upstream's under the same names, the request id
    // included: one of each, the gateway's. (The HTTP/1.1 fast path writes them as it writes
    // the head; the route with CORS has them put in the header map.)
    for path in ["/own", "/app/x"] {
        let r = send(
            &client,
            get(
                &url(path),
                "x",
                &[
                    ("x-test-respond-header", "x-frame-options: ALLOWALL"),
                    ("x-test-respond-header", "X-Frame-Options: ALLOW-FROM x"),
                    ("x-test-respond-header", "x-request-id: made-upstream"),
                    ("x-test-respond-header", "referrer-policy: unsafe-url"),
                    ("x-test-respond-header", "x-kept: 1"),
                ],
            ),
        )
        .await;
        assert_eq!(r.status, 200, "{path}");
        let all = |n: &str| -> Vec<&str> {
            r.headers
                .get_all(n)
                .iter()
                .map(|v| v.to_str().unwrap())
                .collect()
        };
        let frame = if path == "/own" { "SAMEORIGIN" } else { "DENY" };
        assert_eq!(all("x-frame-options"), [frame], "{path}");
        assert_eq!(all("referrer-policy"), ["no-referrer"], "{path}");
        assert_eq!(all("x-kept"), ["1"], "{path}");
        let sent = r.json["headers"]["x-request-id"].as_str().unwrap();
        assert_eq!(all("x-request-id"), [sent], "{path}");
    }

    // A preflight is answered by the gateway, without reaching the upstream.
    let served = up.served();
    let preflight = |origin: &'static str, method: &'static str| {
        hyper::Request::options(url("/app/items"))
            .header("host", "x")
            .header("origin", origin)
            .header("access-control-request-method", method)
            .header("access-control-request-headers", "Authorization")
            .body(http_body_util::Full::new(bytes::Bytes::new()))
            .unwrap()
    };
    let r = send(&client, preflight("https://app.example.com", "PUT")).await;
    assert_eq!(r.status, 204);
    assert_eq!(
        r.headers["access-control-allow-origin"],
        "https://app.example.com"
    );
    assert_eq!(r.headers["access-control-allow-methods"], "GET, PUT");
    assert_eq!(r.headers["access-control-allow-headers"], "authorization");
    assert_eq!(r.headers["access-control-allow-credentials"], "true");
    assert_eq!(r.headers["access-control-max-age"], "600");
    let r = send(&client, preflight("https://evil.example", "PUT")).await;
    assert_eq!(r.status, 403);
    assert_eq!(r.json["error"], "cors_rejected");
    assert!(!r.headers.contains_key("access-control-allow-origin"));
    let r = send(&client, preflight("https://app.example.com", "DELETE")).await;
    assert_eq!(r.status, 403);
    assert_eq!(up.served(), served);

    // Actual requests: allowed origins get the headers, others do not.
    let r = send(
        &client,
        get(
            &url("/app/items"),
            "x",
            &[("origin", "https://app.example.com")],
        ),
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.headers["access-control-allow-origin"],
        "https://app.example.com"
    );
    assert_eq!(r.headers["access-control-expose-headers"], "x-request-id");
    let r = send(
        &client,
        get(
            &url("/app/items"),
            "x",
            &[("origin", "https://evil.example")],
        ),
    )
    .await;
    assert_eq!(r.status, 200);
    assert!(!r.headers.contains_key("access-control-allow-origin"));
}
