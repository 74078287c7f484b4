//! The reverse proxy, end to end: the real `gateway` binary (XDP off) in front of real hyper
//! upstreams on 127.0.0.1, driven by real HTTP clients. Routing, rewrites, load balancing,
//! failover, retries, outlier ejection, health checks and timeouts.

use std::{collections::HashMap, time::Duration};

use integration_tests::{
    harness::{Daemon, Setup},
    web::{self, eventually, free_port, get, http1, send, Upstream},
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_forward_rewrite_and_answer() {
    let a1 = Upstream::start("a1").await;
    let a2 = Upstream::start("a2").await;
    let b = Upstream::start("b").await;
    // A port where nothing listens: its pool answers 502.
    let dead = free_port();
    let port = free_port();
    let setup = Setup::new();
    let rest = format!(
        r#"
[upstreams.a]
targets = ["{}", "{}"]

[upstreams.b]
targets = ["{}"]

[upstreams.dead]
targets = ["127.0.0.1:{dead}"]
retries = 0

[[routes]]
path = "/healthz"
respond = {{ status = 200, json = {{ ok = true }} }}

[[routes]]
host = "api.example.com"
path_prefix = "/v1"
strip_prefix = true
upstream = "a"

[[routes]]
name = "users"
path = "/users/{{id}}/orders/{{order}}"
rewrite = "/v2/orders/{{order}}?user={{id}}"
upstream = "b"

[[routes]]
path_prefix = "/tenants/{{t}}/api"
rewrite = "/{{t}}"
headers = {{ x-version = "2", x-tenant = "*" }}
upstream = "b"

[[routes]]
host = "*.example.org"
methods = ["GET"]
upstream = "b"

[[routes]]
path_prefix = "/dead"
upstream = "dead"
"#,
        a1.addr, a2.addr, b.addr
    );
    let config = web::write_config(&setup, port, "", &rest);
    let daemon = Daemon::start_local(&setup, &config);
    let client = http1();
    let url = |path: &str| format!("http://127.0.0.1:{port}{path}");
    let at = |host: &str, path: &str, headers: &[(&str, &str)]| get(&url(path), host, headers);

    // Fixed response, with a generated request id.
    let r = send(&client, at("anything", "/healthz", &[])).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json, serde_json::json!({"ok": true}));
    assert!(r.headers.get("x-request-id").is_some());
    // Answers of the gateway's own carry their length, and a HEAD gets the length the GET
    // would have, without the body: a fixed response and a 404 alike.
    for path in ["/healthz", "/users/42/orders"] {
        let got = send(&client, at("x", path, &[])).await;
        assert_eq!(
            got.headers["content-length"],
            got.body.len().to_string(),
            "{path}"
        );
        let mut head = at("x", path, &[]);
        *head.method_mut() = hyper::Method::HEAD;
        let r = send(&client, head).await;
        assert_eq!(r.status, got.status, "{path}");
        assert_eq!(
            r.headers.get("content-length"),
            got.headers.get("content-length"),
            "{path}"
        );
        assert!(r.body.is_empty(), "{path}");
    }
    // Path parameters end a segment: the route for /healthz takes /healthz;v=1.
    let r = send(&client, at("anything", "/healthz;v=1", &[])).await;
    assert_eq!(r.json, serde_json::json!({"ok": true}));

    // Host and prefix route: the prefix is stripped, the query kept, forwarding headers set,
    // hop-by-hop headers dropped both ways, a valid request id kept.
    let mut req = at(
        "api.example.com",
        "/v1/users/7?x=1",
        &[
            ("x-request-id", "abc-123"),
            ("x-forwarded-for", "203.0.113.9"),
            // The gateway's own values replace these, never join them.
            ("x-forwarded-proto", "https"),
            ("x-forwarded-host", "spoofed.example"),
            ("connection", "x-secret"),
            ("x-secret", "hop"),
        ],
    );
    *req.method_mut() = hyper::Method::POST;
    let r = send(&client, req).await;
    assert_eq!(r.status, 200, "{:?}", r.json);
    assert_eq!(r.json["uri"], "/users/7?x=1");
    assert_eq!(r.json["method"], "POST");
    let h = &r.json["headers"];
    assert_eq!(h["x-forwarded-for"], "203.0.113.9, 127.0.0.1");
    assert_eq!(h["x-forwarded-proto"], "http");
    assert_eq!(h["x-forwarded-host"], "api.example.com");
    assert_eq!(
        h["forwarded"],
        "for=127.0.0.1;proto=http;host=\"api.example.com\""
    );
    assert_eq!(h["host"], "api.example.com");
    assert_eq!(h["x-request-id"], "abc-123");
    assert!(
        h.get("x-secret").is_none(),
        "a header named by Connection was forwarded"
    );
    assert_eq!(r.headers["x-request-id"], "abc-123");
    assert!(
        r.headers.get("x-hop").is_none(),
        "upstream hop-by-hop header reached the client"
    );

    // An invalid request id is replaced.
    let r = send(
        &client,
        at("api.example.com", "/v1", &[("x-request-id", "bad id\"")]),
    )
    .await;
    assert_eq!(r.json["uri"], "/");
    assert_ne!(r.headers["x-request-id"], "bad id\"");

    // Templates: captures go into the rewrite; the query the client sent is kept after it.
    let r = send(&client, at("x", "/users/42/orders/7", &[])).await;
    assert_eq!(r.json["uri"], "/v2/orders/7?user=42", "{:?}", r.json);
    assert_eq!(
        send(&client, at("x", "/users/42/orders", &[])).await.status,
        404
    );
    // Header matching: both headers needed, x-version exactly.
    let hdrs = [("x-version", "2"), ("x-tenant", "t1")];
    let r = send(&client, at("x", "/tenants/acme/api/items/3", &hdrs)).await;
    assert_eq!(r.json["uri"], "/acme/items/3", "{:?}", r.json);
    let wrong = [("x-version", "3"), ("x-tenant", "t1")];
    assert_eq!(
        send(&client, at("x", "/tenants/acme/api/items", &wrong))
            .await
            .status,
        404
    );
    assert_eq!(
        send(&client, at("x", "/tenants/acme/api/items", &hdrs[..1]))
            .await
            .status,
        404
    );

    // Dot segments are resolved before routing: no climbing out of a prefix.
    let r = send(
        &client,
        at("api.example.com", "/v1/../v1/./x/%2e%2e/y", &[]),
    )
    .await;
    assert_eq!(r.json["uri"], "/y", "{:?}", r.json);
    assert_eq!(
        send(&client, at("api.example.com", "/v1/../admin", &[]))
            .await
            .status,
        404
    );
    // Escaped unreserved characters are decoded and slashes merged before routing, and the
    // path is forwarded so: the upstream serves the path that was routed.
    let r = send(&client, at("api.example.com", "/%76%31//x/%7Eme", &[])).await;
    assert_eq!(r.json["uri"], "/x/~me", "{:?}", r.json);
    assert_eq!(
        send(&client, at("api.example.com", "//admin", &[]))
            .await
            .status,
        404
    );
    // An encoded slash in a name goes through untouched; a dot segment behind one is refused.
    let r = send(&client, at("api.example.com", "/v1/group%2Fname", &[])).await;
    assert_eq!(r.json["uri"], "/group%2Fname", "{:?}", r.json);
    let r = send(
        &client,
        at("api.example.com", "/v1/x%2f..%2f..%2fadmin", &[]),
    )
    .await;
    assert_eq!(r.status, 400, "{:?}", r.json);
    assert_eq!(r.json["error"], "bad_path", "{:?}", r.json);

    // Round-robin over the two targets.
    let before = (a1.served(), a2.served());
    for _ in 0..10 {
        assert_eq!(
            send(&client, at("api.example.com", "/v1/x", &[]))
                .await
                .status,
            200
        );
    }
    assert_eq!((a1.served() - before.0, a2.served() - before.1), (5, 5));

    // Wildcard host with a method filter; the prefix must end on a segment boundary.
    let r = send(&client, at("eu.api.example.org", "/any", &[])).await;
    assert_eq!(r.json["upstream"], "b");
    let mut post = at("eu.api.example.org", "/any", &[]);
    *post.method_mut() = hyper::Method::POST;
    assert_eq!(send(&client, post).await.status, 404);
    assert_eq!(
        send(&client, at("example.org", "/any", &[])).await.status,
        404
    );
    assert_eq!(
        send(&client, at("api.example.com", "/v1x", &[]))
            .await
            .status,
        404
    );

    // No route: 404; a dead upstream: 502; both JSON with the request id.
    let r = send(&client, at("nowhere.test", "/", &[])).await;
    assert_eq!(r.status, 404);
    assert_eq!(
        r.json["request_id"],
        r.headers["x-request-id"].to_str().unwrap()
    );
    let r = send(&client, at("x", "/dead/1", &[("x-request-id", "dead-1")])).await;
    assert_eq!(r.status, 502, "{:?}", r.json);
    assert_eq!(r.json["request_id"], "dead-1");
    assert!(r.json["message"]
        .as_str()
        .unwrap()
        .contains(&dead.to_string()));
    // The pool's only target fails on and on, but is never ejected: requests keep trying it
    // (502) rather than getting 503 for the whole ejection time.
    for _ in 0..8 {
        assert_eq!(send(&client, at("x", "/dead/2", &[])).await.status, 502);
    }

    assert!(daemon.stop().success());
}

/// Sends `n` GETs to `path` with `headers`; counts answers by upstream name.
async fn spread(
    port: u16,
    path: &str,
    headers: &[(&str, &str)],
    n: usize,
) -> HashMap<String, usize> {
    let client = http1();
    let mut seen = HashMap::new();
    for _ in 0..n {
        let r = send(
            &client,
            get(&format!("http://127.0.0.1:{port}{path}"), "x", headers),
        )
        .await;
        assert_eq!(r.status, 200, "{:?}", r.json);
        *seen
            .entry(r.json["upstream"].as_str().unwrap().to_string())
            .or_default() += 1;
    }
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn balancing_follows_weights_load_and_keys() {
    let u1 = Upstream::start("u1").await;
    let u2 = Upstream::start("u2").await;
    let u3 = Upstream::start("u3").await;
    let port = free_port();
    let setup = Setup::new();
    let rest = format!(
        r#"
[upstreams.weighted]
targets = [{{ address = "{a}", weight = 3 }}, "{b}"]

[upstreams.least]
balance = "least_outstanding"
targets = ["{a}", "{b}"]

[upstreams.hashed]
balance = "hash"
hash_on = "header:x-user"
targets = ["{a}", "{b}", "{c}"]

[upstreams.by_ip]
balance = "hash"
targets = ["{a}", "{b}", "{c}"]

[[routes]]
path_prefix = "/weighted"
upstream = "weighted"

[[routes]]
path_prefix = "/least"
upstream = "least"

[[routes]]
path_prefix = "/hashed"
upstream = "hashed"

[[routes]]
path_prefix = "/by-ip"
upstream = "by_ip"
"#,
        a = u1.addr,
        b = u2.addr,
        c = u3.addr
    );
    let config = web::write_config(&setup, port, "", &rest);
    let daemon = Daemon::start_local(&setup, &config);

    // Weight 3 to 1, exactly, over whole rounds.
    let seen = spread(port, "/weighted", &[], 40).await;
    assert_eq!((seen["u1"], seen["u2"]), (30, 10), "{seen:?}");

    // Least outstanding: while u1 holds slow requests, the others go to u2.
    let client = http1();
    let slow: Vec<_> = (0..3)
        .map(|_| {
            let client = client.clone();
            let url = format!("http://127.0.0.1:{port}/least");
            tokio::spawn(async move {
                send(&client, get(&url, "x", &[("x-test-sleep-ms", "1500")])).await
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let seen = spread(port, "/least", &[], 10).await;
    for s in slow {
        assert_eq!(s.await.unwrap().status, 200);
    }
    // The three slow requests went two to one target and one to the other (ties rotate); the
    // target with fewer in flight takes all ten quick ones.
    assert!(seen.values().any(|&n| n == 10), "{seen:?}");

    // Hash on a header: a key sticks to its target; keys spread over all targets.
    let mut owner = HashMap::new();
    for user in 0..30 {
        let key = format!("user-{user}");
        let seen = spread(port, "/hashed", &[("x-user", &key)], 3).await;
        assert_eq!(seen.len(), 1, "{key} moved: {seen:?}");
        owner.insert(key, seen.into_keys().next().unwrap());
    }
    let targets: std::collections::HashSet<_> = owner.values().collect();
    assert_eq!(
        targets.len(),
        3,
        "30 keys should reach all 3 targets: {owner:?}"
    );
    // Hash on the client address: one client, one target.
    assert_eq!(spread(port, "/by-ip", &[], 6).await.len(), 1);

    // Consistency: a target that leaves takes only its own keys elsewhere.
    u3.stop();
    drop(u3);
    for (key, was) in &owner {
        let r = send(
            &client,
            get(
                &format!("http://127.0.0.1:{port}/hashed"),
                "x",
                &[("x-user", key)],
            ),
        )
        .await;
        assert_eq!(r.status, 200, "{key}: {:?}", r.json);
        if was != "u3" {
            assert_eq!(
                r.json["upstream"],
                was.as_str(),
                "{key} moved although its target stayed"
            );
        }
    }
    assert!(daemon.stop().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_retries_ejection_health_checks_and_timeouts() {
    let live = Upstream::start("live").await;
    let sick = Upstream::start("sick").await;
    let dead = free_port();
    let port = free_port();
    let setup = Setup::new();
    let rest = format!(
        r#"
[upstreams.failover]
targets = ["127.0.0.1:{dead}", "{live}"]
retries = 1
outlier = {{ consecutive_failures = 3, ejection_time = "1h" }}

[upstreams.checked]
targets = ["{live}", "{sick}"]
health_check = {{ path = "/healthz", interval = "100ms", timeout = "1s", healthy_threshold = 2, unhealthy_threshold = 2 }}

[upstreams.slow]
targets = ["{live}"]

[[routes]]
path_prefix = "/failover"
upstream = "failover"

[[routes]]
path_prefix = "/checked"
upstream = "checked"

[[routes]]
path_prefix = "/slow"
upstream = "slow"
timeout = "300ms"
"#,
        live = live.addr,
        sick = sick.addr,
    );
    let config = web::write_config(&setup, port, "", &rest);
    let metrics_addr = web::with_metrics(&config);
    let daemon = Daemon::start_local(&setup, &config);
    let client = http1();
    let url = |path: &str| format!("http://127.0.0.1:{port}{path}");

    // Every request succeeds: the refused connection is retried on the live target.
    for _ in 0..6 {
        let r = send(&client, get(&url("/failover/x"), "x", &[])).await;
        assert_eq!(r.status, 200, "{:?}", r.json);
        assert_eq!(r.json["upstream"], "live");
    }
    let m = web::scrape(metrics_addr).await;
    let dead_label = format!("127.0.0.1:{dead}");
    assert_eq!(
        web::metric(
            &m,
            &format!(
                "gateway_upstream_ejections_total{{target=\"{dead_label}\",upstream=\"failover\"}}"
            )
        ),
        Some(1.0),
        "{m}"
    );
    // Ejected after 3 failures: the retries stop, since the dead target is no longer tried.
    let retries = web::metric(&m, "gateway_upstream_retries_total{upstream=\"failover\"}").unwrap();
    assert_eq!(retries, 3.0, "{m}");
    for _ in 0..4 {
        assert_eq!(
            send(&client, get(&url("/failover/y"), "x", &[]))
                .await
                .status,
            200
        );
    }
    let m = web::scrape(metrics_addr).await;
    assert_eq!(
        web::metric(&m, "gateway_upstream_retries_total{upstream=\"failover\"}"),
        Some(3.0)
    );

    // Health checks: a target failing them leaves the pool, and comes back once it passes.
    sick.health.store(500, std::sync::atomic::Ordering::Relaxed);
    let gauge = format!(
        "gateway_upstream_target_healthy{{target=\"{}\",upstream=\"checked\"}}",
        sick.addr
    );
    let (ok, m) = web::scrape_until(metrics_addr, &[(&gauge, 0.0)]).await;
    assert!(ok, "the failing target stayed healthy: {m}");
    let before = sick.served();
    for _ in 0..6 {
        let r = send(&client, get(&url("/checked"), "x", &[])).await;
        assert_eq!(r.json["upstream"], "live");
    }
    assert_eq!(sick.served(), before, "an unhealthy target got requests");
    // Both unhealthy: 503 with the request id.
    live.health.store(503, std::sync::atomic::Ordering::Relaxed);
    let live_gauge = format!(
        "gateway_upstream_target_healthy{{target=\"{}\",upstream=\"checked\"}}",
        live.addr
    );
    web::scrape_until(metrics_addr, &[(&live_gauge, 0.0)]).await;
    let r = send(
        &client,
        get(&url("/checked"), "x", &[("x-request-id", "none-healthy")]),
    )
    .await;
    assert_eq!(r.status, 503, "{:?}", r.json);
    assert_eq!(r.json["request_id"], "none-healthy");
    assert!(
        r.json["message"]
            .as_str()
            .unwrap()
            .contains("no healthy target"),
        "{:?}",
        r.json
    );
    // Recovery.
    sick.health.store(200, std::sync::atomic::Ordering::Relaxed);
    live.health.store(200, std::sync::atomic::Ordering::Relaxed);
    let (recovered, m) =
        web::scrape_until(metrics_addr, &[(&gauge, 1.0), (&live_gauge, 1.0)]).await;
    assert!(recovered, "targets did not recover: {m}");
    let seen = spread(port, "/checked", &[], 6).await;
    assert_eq!((seen["live"], seen["sick"]), (3, 3), "{seen:?}");
    assert!(
        eventually(Duration::from_secs(1), || sick
            .checks
            .load(std::sync::atomic::Ordering::Relaxed)
            > 4)
        .await
    );

    // Timeouts: 504 with the request id, well before the upstream answers.
    let started = std::time::Instant::now();
    let r = send(
        &client,
        get(
            &url("/slow"),
            "x",
            &[("x-test-sleep-ms", "3000"), ("x-request-id", "slow-1")],
        ),
    )
    .await;
    assert_eq!(r.status, 504, "{:?}", r.json);
    assert_eq!(r.json["request_id"], "slow-1");
    assert!(started.elapsed() < Duration::from_millis(2500));
    // An upstream's own 503 on a GET is retried on another target only when there is one.
    let r = send(
        &client,
        get(&url("/slow"), "x", &[("x-test-status", "503")]),
    )
    .await;
    assert_eq!(r.status, 503);
    assert_eq!(
        r.json["upstream"], "live",
        "the upstream's own answer comes through"
    );

    assert!(daemon.stop().success());
}
