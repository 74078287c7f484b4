//! Auto-ban against the real binary: clients the proxy keeps refusing go on the blocklist, XDP
//! drops them, the entry shows in `gateway block list`, survives a restart and `block rm`
//! lifts it; allowlisted clients, loopback and trusted proxies are never banned; with XDP off
//! the proxy refuses banned X-Forwarded-For clients itself.
//! Run as root with `cargo xtask test` (one test at a time).

use std::{
    net::{Ipv4Addr, SocketAddr},
    thread,
    time::{Duration, Instant},
};

use integration_tests::{
    harness::{in_netns, Daemon, Net, Setup, GW4},
    web::{self, audit_lines, free_port, http1, send},
};
use serde_json::Value;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

const PORT: u16 = 8080;
const METRICS: &str = "127.0.0.1:9901";

fn v4(d: u8) -> Ipv4Addr {
    Ipv4Addr::new(198, 18, 0, d)
}

fn sha256(text: &str) -> String {
    use sha2::Digest as _;
    sha2::Sha256::digest(text.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// One HTTP/1.1 request from `from` (an address of the client namespace) to the gateway's
/// proxy; the status, or why there was none.
fn request(net: &Net, from: Ipv4Addr, key: &str) -> Result<u16, String> {
    let key = key.to_string();
    in_netns(&net.cl_ns, move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async move {
            let socket = tokio::net::TcpSocket::new_v4().map_err(|e| e.to_string())?;
            socket
                .bind(SocketAddr::new(from.into(), 0))
                .map_err(|e| format!("bind {from}: {e}"))?;
            let mut stream = tokio::time::timeout(
                Duration::from_secs(2),
                socket.connect(SocketAddr::new(GW4.into(), PORT)),
            )
            .await
            .map_err(|_| "connect timed out".to_string())?
            .map_err(|e| format!("connect: {e}"))?;
            let head = format!(
                "GET /api/items HTTP/1.1\r\nHost: gw\r\nx-api-key: {key}\r\nConnection: close\r\n\r\n"
            );
            stream
                .write_all(head.as_bytes())
                .await
                .map_err(|e| e.to_string())?;
            let mut reply = Vec::new();
            tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut reply))
                .await
                .map_err(|_| "no answer".to_string())?
                .map_err(|e| e.to_string())?;
            let text = String::from_utf8_lossy(&reply);
            text.get(9..12)
                .and_then(|s| s.parse().ok())
                .ok_or_else(|| format!("not an HTTP answer: {text:?}"))
        })
    })
}

/// `GET /metrics` of the daemon's metrics listener inside the gateway namespace.
fn scrape(ns: &str) -> String {
    in_netns(ns, || {
        use std::io::{Read as _, Write as _};
        let mut s = std::net::TcpStream::connect(METRICS).expect("metrics listener");
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: m\r\nConnection: close\r\n\r\n")
            .unwrap();
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        out
    })
}

/// Polls `f` every 50 ms for up to `within`.
fn eventually(within: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + within;
    loop {
        if f() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        thread::sleep(Duration::from_millis(50));
    }
}

fn entry<'a>(list: &'a [Value], net: &str) -> Option<&'a Value> {
    list.iter().find(|e| e["net"] == net)
}

#[test]
fn repeat_offenders_are_dropped_in_xdp_listed_kept_across_restarts_and_lifted() {
    let net = Net::new();
    let setup = Setup::new();
    let (good, offender, friend) = (v4(2), v4(3), v4(4));
    for a in [offender, friend] {
        net.add_client_addr(a.into());
    }
    let audit = setup.dir.path().join("audit.log");
    let extra = format!(
        r#"
[proxy]
listen = ["{GW4}:{PORT}"]

[audit]
output = "{}"

[auth.providers.keys]
type = "api_key"
header = "x-api-key"
[[auth.providers.keys.keys]]
id = "ci"
sha256 = "{}"

[[routes]]
name = "api"
path_prefix = "/api"
respond = {{ status = 200, json = {{ ok = true }} }}
[routes.auth]
providers = ["keys"]

[autoban.rules.bad-keys]
on = "auth_failure"
threshold = 5
window = "1m"
ttl = "10m"
"#,
        audit.display(),
        sha256("good-key")
    );
    let config = setup.write_config(&net.gw_if, "", &extra);
    let text = std::fs::read_to_string(&config).unwrap().replacen(
        "[admin]\n",
        &format!("[admin]\nmetrics_listen = \"{METRICS}\"\n"),
        1,
    );
    std::fs::write(&config, text).unwrap();
    let daemon = Daemon::start(&net.gw_ns, &setup, &config);
    setup.ok(&["allow", "add", &friend.to_string(), "--reason", "partner"]);
    assert_eq!(request(&net, good, "good-key"), Ok(200));

    // Four refusals: not yet.
    for _ in 0..4 {
        assert_eq!(request(&net, offender, "wrong"), Ok(401));
    }
    thread::sleep(Duration::from_millis(300));
    assert!(entry(&setup.list("block"), "198.18.0.3").is_none());
    assert_eq!(
        request(&net, offender, "good-key"),
        Ok(200),
        "banned too early"
    );
    // The fifth crosses the threshold.
    assert_eq!(request(&net, offender, "wrong"), Ok(401));
    assert!(
        eventually(Duration::from_secs(5), || entry(
            &setup.list("block"),
            "198.18.0.3"
        )
        .is_some()),
        "no auto entry:\n{}",
        daemon.log_text()
    );
    let list = setup.list("block");
    let e = entry(&list, "198.18.0.3").unwrap();
    assert_eq!(e["origin"], "auto:bad-keys", "{e}");
    let reason = e["reason"].as_str().unwrap_or_default();
    assert!(
        reason.starts_with("5 refusals in 1m (last: auth:"),
        "{reason}"
    );
    let ttl = e["expires_in_s"].as_u64().expect("an expiry");
    assert!((590..=600).contains(&ttl), "{ttl}");
    let text = setup.ok(&["block", "list"]);
    assert!(text.contains("auto:bad-keys"), "{text}");

    // XDP drops it now: the connection attempt times out; others are served.
    let (dropped0, _) = setup.verdict("dropped_blocklist");
    assert_eq!(
        request(&net, offender, "good-key"),
        Err("connect timed out".to_string())
    );
    assert!(setup.verdict("dropped_blocklist").0 > dropped0);
    assert_eq!(request(&net, good, "good-key"), Ok(200));

    // An allowlisted client is never banned.
    for _ in 0..12 {
        assert_eq!(request(&net, friend, "wrong"), Ok(401));
    }
    thread::sleep(Duration::from_millis(500));
    assert!(entry(&setup.list("block"), "198.18.0.4").is_none());
    assert_eq!(request(&net, friend, "good-key"), Ok(200));

    // Audit line, log line, metrics.
    let bans: Vec<Value> = audit_lines_at(&audit)
        .into_iter()
        .filter(|l| l["type"] == "autoban")
        .collect();
    assert_eq!(bans.len(), 1, "{bans:?}");
    assert_eq!(bans[0]["net"], "198.18.0.3");
    assert_eq!(bans[0]["rule"], "bad-keys");
    assert!(
        daemon.log_text().contains("auto-ban"),
        "{}",
        daemon.log_text()
    );
    let metrics = scrape(&net.gw_ns);
    assert_eq!(
        web::metric(&metrics, "gateway_autobans_total{rule=\"bad-keys\"}"),
        Some(1.0),
        "{metrics}"
    );
    assert!(
        web::metric(
            &metrics,
            "gateway_autoban_skipped_total{reason=\"allowlisted\"}"
        )
        .is_some_and(|n| n >= 2.0),
        "{metrics}"
    );

    // A restart keeps the entry, and XDP drops the client from the start.
    assert!(daemon.stop().success());
    let daemon = Daemon::start(&net.gw_ns, &setup, &config);
    let list = setup.list("block");
    let e = entry(&list, "198.18.0.3").expect("auto entry lost in the restart");
    assert_eq!(e["origin"], "auto:bad-keys");
    assert!(e["expires_in_s"].as_u64().is_some_and(|s| s > 500));
    assert_eq!(
        request(&net, offender, "good-key"),
        Err("connect timed out".to_string())
    );

    // `block rm` lifts it.
    setup.ok(&["block", "rm", "198.18.0.3"]);
    assert_eq!(request(&net, offender, "good-key"), Ok(200));
    assert!(setup.list("block").is_empty());
    drop(daemon);
}

fn audit_lines_at(path: &std::path::Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).expect("audit line is JSON"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_xdp_off_the_proxy_refuses_banned_forwarded_clients() {
    let setup = Setup::new();
    let port = free_port();
    let config = web::write_config(
        &setup,
        port,
        "trusted_proxies = [\"127.0.0.1/32\"]",
        r#"
[inspect]
mode = "block"

[[routes]]
name = "api"
path_prefix = "/api"
respond = { status = 200, json = { ok = true } }

[autoban.rules.sqli]
on = ["inspection_block"]
threshold = 3
window = "1m"
ttl = "1h"
prefix_v4 = 24
"#,
    );
    let daemon = Daemon::start_local(&setup, &config);
    let client = http1();
    let get = |path: &str, xff: Option<&str>| {
        let headers: Vec<(&str, &str)> = xff.map(|x| ("x-forwarded-for", x)).into_iter().collect();
        web::get(
            &format!("http://127.0.0.1:{port}{path}"),
            "api.test",
            &headers,
        )
    };
    let attack = "/api/items?id=1%27%20OR%20%271%27%3D%271";
    for _ in 0..3 {
        let r = send(&client, get(attack, Some("198.18.7.9"))).await;
        assert_eq!(r.status, 403, "{}", r.json);
        assert_eq!(r.json["error"], "blocked");
    }
    // Loopback itself (no X-Forwarded-For: the client is the trusted proxy) is never banned.
    for _ in 0..5 {
        assert_eq!(send(&client, get(attack, None)).await.status, 403);
    }
    let listed = web::eventually(Duration::from_secs(5), || {
        entry(&setup.list("block"), "198.18.7.0/24").is_some()
    })
    .await;
    assert!(listed, "no auto entry:\n{}", daemon.log_text());
    let list = setup.list("block");
    assert_eq!(list.len(), 1, "{list:?}");
    let e = &list[0];
    assert_eq!(e["origin"], "auto:sqli");
    let reason = e["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains("last: inspect:") && reason.contains("client 198.18.7.9"),
        "{reason}"
    );
    // Any client of the /24 is refused by the proxy, also on clean requests; others are not.
    let r = send(&client, get("/api/items", Some("198.18.7.20"))).await;
    assert_eq!(r.status, 403, "{}", r.json);
    assert_eq!(r.json["error"], "banned");
    assert_eq!(
        send(&client, get("/api/items", Some("198.18.8.1")))
            .await
            .status,
        200
    );
    assert_eq!(send(&client, get("/api/items", None)).await.status, 200);
    // The audit line is written once the response has gone out: wait for it.
    let refusals = || {
        audit_lines(&setup)
            .into_iter()
            .filter(|l| l["rule"] == "autoban:sqli")
            .count()
    };
    web::eventually(Duration::from_secs(5), || refusals() >= 1).await;
    assert_eq!(refusals(), 1);
    // Refusals of banned clients do not count again: still one entry, one ban.
    for _ in 0..5 {
        send(&client, get(attack, Some("198.18.7.30"))).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(setup.list("block").len(), 1);
    let bans = audit_lines(&setup)
        .into_iter()
        .filter(|l| l["type"] == "autoban")
        .count();
    assert_eq!(bans, 1);

    setup.ok(&["block", "rm", "198.18.7.0/24"]);
    assert_eq!(
        send(&client, get("/api/items", Some("198.18.7.20")))
            .await
            .status,
        200
    );
    drop(daemon);
}
