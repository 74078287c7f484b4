//! The proxy in operation: the limits on client connections, graceful shutdown, hot reload
//! under load (and a refused bad reload), the audit log and its rotation, the metrics, and
//! config errors.

use std::{
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use integration_tests::{
    harness::{Daemon, Setup},
    web::{self, free_port, get, http1, send, Upstream},
};
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::TcpStream,
};

/// Writes `request` on a new connection and reads until the server closes it or `within`
/// passes; returns what was read and whether the server closed.
async fn raw(port: u16, request: &[u8], within: Duration) -> (String, bool) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let _ = s.write_all(request).await;
    read_until_closed(&mut s, within).await
}

async fn read_until_closed(s: &mut TcpStream, within: Duration) -> (String, bool) {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    let until = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(until, s.read(&mut buf)).await {
            Err(_) => return (String::from_utf8_lossy(&out).into_owned(), false),
            Ok(Ok(0)) | Ok(Err(_)) => return (String::from_utf8_lossy(&out).into_owned(), true),
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
        }
    }
}

fn status_of(response: &str) -> Option<u16> {
    response.split(' ').nth(1)?.parse().ok()
}

/// Config after `[proxy]`: the upstream `up` and one route to it for every request.
fn one_route(up: &Upstream) -> String {
    format!(
        "[upstreams.up]\ntargets = [\"{}\"]\n[[routes]]\nupstream = \"up\"\n",
        up.addr
    )
}

/// `gateway_worker_connections` of workers 0 and 1 in a scrape.
fn per_worker(metrics: &str) -> [Option<f64>; 2] {
    [0, 1].map(|w| {
        web::metric(
            metrics,
            &format!("gateway_worker_connections{{worker=\"{w}\"}}"),
        )
    })
}

/// Scrapes `metrics` until the workers' connections are `want`, for up to 5 s; the last scrape.
async fn scrape_until_workers(metrics: std::net::SocketAddr, want: [f64; 2]) -> String {
    let until = Instant::now() + Duration::from_secs(5);
    let mut m = web::scrape(metrics).await;
    while per_worker(&m) != want.map(Some) && Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(50)).await;
        m = web::scrape(metrics).await;
    }
    m
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_limits_are_enforced() {
    let up = Upstream::start("up").await;
    let port = free_port();
    let setup = Setup::new();
    let limits = "max_connections = 3\nmax_header_bytes = 8192\nmax_headers = 20\nmax_body_bytes = 1000\nheader_read_timeout = \"1s\"\nidle_timeout = \"1s\"\n";
    let rest = one_route(&up);
    let config = web::write_config(&setup, port, limits, &rest);
    let daemon = Daemon::start_local(&setup, &config);
    let ok_request = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n";

    // max_connections: three open, the fourth is closed at once without an answer.
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(TcpStream::connect(("127.0.0.1", port)).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let (text, closed) = raw(port, ok_request, Duration::from_secs(2)).await;
    assert!(closed && text.is_empty(), "fourth connection got {text:?}");
    drop(held);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (text, _) = raw(
        port,
        b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        Duration::from_secs(5),
    )
    .await;
    assert_eq!(status_of(&text), Some(200), "{text}");

    // A request head over 8 KiB, or over 20 fields: 431.
    let big = format!(
        "GET / HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "a".repeat(9000)
    );
    let (text, _) = raw(port, big.as_bytes(), Duration::from_secs(5)).await;
    assert_eq!(status_of(&text), Some(431), "{text}");
    let mut many = String::from("GET / HTTP/1.1\r\nHost: x\r\n");
    for i in 0..25 {
        many.push_str(&format!("X-H{i}: v\r\n"));
    }
    many.push_str("\r\n");
    let (text, _) = raw(port, many.as_bytes(), Duration::from_secs(5)).await;
    assert_eq!(status_of(&text), Some(431), "{text}");

    // A body over 1000 bytes: 413, whether declared (refused before forwarding) or chunked
    // (cut off on the way, so the upstream never gets it whole).
    let served = up.served();
    let declared = format!(
        "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5000\r\nConnection: close\r\n\r\n{}",
        "b".repeat(5000)
    );
    let (text, _) = raw(port, declared.as_bytes(), Duration::from_secs(5)).await;
    assert_eq!(status_of(&text), Some(413), "{text}");
    assert!(text.contains("request_id"), "{text}");
    assert_eq!(
        up.served(),
        served,
        "a declared oversized body was forwarded"
    );
    let chunk = "c".repeat(600);
    let chunked = format!("POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n258\r\n{chunk}\r\n258\r\n{chunk}\r\n0\r\n\r\n");
    let (text, _) = raw(port, chunked.as_bytes(), Duration::from_secs(5)).await;
    assert_eq!(status_of(&text), Some(413), "{text}");
    let small = format!(
        "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 900\r\nConnection: close\r\n\r\n{}",
        "d".repeat(900)
    );
    let (text, _) = raw(port, small.as_bytes(), Duration::from_secs(5)).await;
    assert_eq!(status_of(&text), Some(200), "{text}");
    assert!(text.contains("\"body_bytes\":900"), "{text}");

    // Slowloris: a head trickled in a byte at a time is cut off after header_read_timeout.
    let mut s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n").await.unwrap();
    let started = Instant::now();
    let mut cut = false;
    for _ in 0..60 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if s.write_all(b"X").await.is_err() {
            cut = true;
            break;
        }
        let mut buf = [0u8; 256];
        if let Ok(Ok(n)) = tokio::time::timeout(Duration::from_millis(1), s.read(&mut buf)).await {
            // Closed (0) or an error response (408): either way, cut off.
            let _ = n;
            cut = true;
            break;
        }
    }
    assert!(cut, "a slowloris client was never cut off");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "cut off only after {:?}",
        started.elapsed()
    );

    // An idle keep-alive connection is closed after idle_timeout.
    let mut s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    s.write_all(ok_request).await.unwrap();
    let started = Instant::now();
    let (text, closed) = read_until_closed(&mut s, Duration::from_secs(6)).await;
    assert_eq!(status_of(&text), Some(200), "{text}");
    assert!(closed, "the idle connection stayed open");
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "closed after {:?}",
        started.elapsed()
    );

    assert!(daemon.stop().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_are_spread_evenly_over_the_workers() {
    let up = Upstream::start("up").await;
    let port = free_port();
    let setup = Setup::new();
    let rest = one_route(&up);
    let config = web::write_config(&setup, port, "workers = 2\n", &rest);
    let metrics = web::with_metrics(&config);
    let daemon = Daemon::start_local(&setup, &config);
    // Opened at once, as a load generator does: whichever worker wins each accept, the
    // connections end up four and four (each answered once, so each is surely placed).
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            tokio::spawn(async move {
                let mut s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
                s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
                    .await
                    .unwrap();
                let mut buf = [0u8; 1024];
                let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
                    .await
                    .expect("an answer")
                    .unwrap();
                assert_eq!(status_of(&String::from_utf8_lossy(&buf[..n])), Some(200));
                s
            })
        })
        .collect();
    let mut opened = Vec::new();
    for t in tasks {
        opened.push(t.await.unwrap());
    }
    let m = web::scrape(metrics).await;
    assert_eq!(per_worker(&m), [Some(4.0), Some(4.0)], "{m}");
    assert_eq!(
        web::metric(&m, "gateway_open_connections"),
        Some(8.0),
        "{m}"
    );
    drop(opened);
    let m = scrape_until_workers(metrics, [0.0, 0.0]).await;
    assert_eq!(
        per_worker(&m),
        [Some(0.0), Some(0.0)],
        "closed connections still counted: {m}"
    );
    assert!(daemon.stop().success());
}

/// The CPUs in a `Cpus_allowed_list` line of /proc/.../status (`0-2,5`).
fn cpu_list(status: &str) -> Vec<usize> {
    let list = status
        .lines()
        .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
        .expect("a Cpus_allowed_list line")
        .trim();
    list.split(',')
        .flat_map(|part| match part.split_once('-') {
            Some((a, b)) => (a.parse::<usize>().unwrap()..=b.parse().unwrap()).collect(),
            None => vec![part.parse::<usize>().unwrap()],
        })
        .collect()
}

/// The CPUs each `proxy-N` thread of `pid` may run on, by N.
fn worker_cpus(pid: libc::pid_t) -> Vec<Vec<usize>> {
    let mut found = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let dir = task.unwrap().path();
        let comm = std::fs::read_to_string(dir.join("comm")).unwrap_or_default();
        if let Some(n) = comm.trim().strip_prefix("proxy-") {
            let status = std::fs::read_to_string(dir.join("status")).unwrap();
            found.push((n.parse::<usize>().unwrap(), cpu_list(&status)));
        }
    }
    found.sort();
    found.into_iter().map(|(_, cpus)| cpus).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_are_bound_each_to_its_own_cpu() {
    let up = Upstream::start("up").await;
    let mine = cpu_list(&std::fs::read_to_string("/proc/self/status").unwrap());
    let n = mine.len().min(4);
    // (`proxy` lines, each worker's CPUs when bound)
    let cases = [
        (format!("workers = {n}\n"), true),
        (format!("workers = {n}\npin_workers = false\n"), false),
        // More workers than CPUs: left to the kernel.
        (format!("workers = {}\n", mine.len() + 1), false),
    ];
    for (proxy, bound) in cases {
        let port = free_port();
        let setup = Setup::new();
        let config = web::write_config(&setup, port, &proxy, &one_route(&up));
        let daemon = Daemon::start_local(&setup, &config);
        let cpus = worker_cpus(daemon.pid());
        let want: Vec<Vec<usize>> = (0..cpus.len())
            .map(|i| if bound { vec![mine[i]] } else { mine.clone() })
            .collect();
        assert_eq!(cpus, want, "{proxy}");
        assert!(cpus.len() >= n, "{proxy}: {cpus:?}");
        // And they serve.
        let client = http1();
        let r = send(&client, get(&format!("http://127.0.0.1:{port}/"), "x", &[])).await;
        assert_eq!(r.status, 200, "{proxy}");
        assert!(daemon.stop().success());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_cuts_what_is_still_open_at_its_deadline() {
    let up = Upstream::start("up").await;
    let port = free_port();
    let setup = Setup::new();
    let rest = one_route(&up);
    let keys = "workers = 2\nshutdown_timeout = \"1s\"\nheader_read_timeout = \"60s\"\n";
    let config = web::write_config(&setup, port, keys, &rest);
    let metrics = web::with_metrics(&config);
    let daemon = Daemon::start_local(&setup, &config);
    // Heads that never end, on both workers (some handed over by the one that accepted them).
    let mut open = Vec::new();
    for _ in 0..4 {
        let mut s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: ")
            .await
            .unwrap();
        open.push(s);
    }
    let m = scrape_until_workers(metrics, [2.0, 2.0]).await;
    assert_eq!(per_worker(&m), [Some(2.0), Some(2.0)], "{m}");
    let asked = Instant::now();
    let status = tokio::task::spawn_blocking(move || daemon.stop())
        .await
        .unwrap();
    assert!(status.success(), "{status:?}");
    assert!(
        asked.elapsed() < Duration::from_secs(6),
        "stopping took {:?} with a 1 s deadline",
        asked.elapsed()
    );
    for mut s in open {
        let (_, closed) = read_until_closed(&mut s, Duration::from_secs(2)).await;
        assert!(closed, "a connection outlived the daemon");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_lets_requests_finish_and_refuses_new_ones() {
    let up = Upstream::start("up").await;
    let port = free_port();
    let setup = Setup::new();
    let rest = one_route(&up);
    let config = web::write_config(&setup, port, "shutdown_timeout = \"10s\"\n", &rest);
    let daemon = Daemon::start_local(&setup, &config);
    let client = http1();
    let url = format!("http://127.0.0.1:{port}/");
    let slow = {
        let client = client.clone();
        let url = url.clone();
        tokio::spawn(
            async move { send(&client, get(&url, "x", &[("x-test-sleep-ms", "1500")])).await },
        )
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let pid = daemon.pid();
    // SAFETY: signalling our own child.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        TcpStream::connect(("127.0.0.1", port)).await.is_err(),
        "a new connection was accepted during shutdown"
    );
    let r = slow.await.unwrap();
    assert_eq!(r.status, 200, "the in-flight request was cut: {:?}", r.json);
    assert!(daemon.stop().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_daemon_on_the_same_state_dir_is_refused() {
    let up = Upstream::start("up").await;
    let setup = Setup::new();
    let rest = one_route(&up);
    let config = web::write_config(&setup, free_port(), "", &rest);
    let first = Daemon::start_local(&setup, &config);
    // Same state directory (and admin socket), another listener.
    let other = web::write_config(&setup, free_port(), "", &rest);
    let second = std::process::Command::new(integration_tests::harness::gateway_bin())
        .args(["run", "--config"])
        .arg(&other)
        .env("NO_COLOR", "1")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert!(!second.status.success(), "{stderr}");
    assert!(
        stderr.contains("another gateway daemon")
            && stderr.contains(&format!("pid {}", first.pid())),
        "{stderr}"
    );
    // The first one is untouched: it still answers on its admin socket.
    assert!(std::os::unix::net::UnixStream::connect(setup.socket()).is_ok());
    assert!(first.stop().success());
    // Once it is gone, the directory is free again.
    let again = Daemon::start_local(&setup, &other);
    assert!(again.stop().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_under_load_drops_nothing_and_bad_reloads_change_nothing() {
    let old = Upstream::start("old").await;
    let new = Upstream::start("new").await;
    let port = free_port();
    let port2 = free_port();
    let setup = Setup::new();
    let route = |up: &Upstream| {
        format!(
            "[upstreams.up]\ntargets = [\"{}\"]\n[[routes]]\nname = \"main\"\nupstream = \"up\"\n",
            up.addr
        )
    };
    let config = web::write_config(&setup, port, "", &route(&old));
    let metrics = web::with_metrics(&config);
    let daemon = Daemon::start_local(&setup, &config);

    // Steady load: four keep-alive clients for the whole test.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let ok = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let mut load = Vec::new();
    for _ in 0..4 {
        let (stop, ok, failed) = (stop.clone(), ok.clone(), failed.clone());
        load.push(tokio::spawn(async move {
            let client = http1();
            let url = format!("http://127.0.0.1:{port}/");
            let until = Instant::now() + Duration::from_secs(30);
            while !stop.load(Ordering::Relaxed) && Instant::now() < until {
                match client.request(get(&url, "x", &[])).await {
                    Ok(r) if r.status() == 200 => {
                        use http_body_util::BodyExt as _;
                        match r.into_body().collect().await {
                            Ok(_) => ok.fetch_add(1, Ordering::Relaxed),
                            Err(e) => {
                                failed.lock().unwrap().push(e.to_string());
                                0
                            }
                        };
                    }
                    Ok(r) => failed
                        .lock()
                        .unwrap()
                        .push(format!("status {}", r.status())),
                    Err(e) => failed.lock().unwrap().push(e.to_string()),
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;

    // Reload by SIGHUP: a new upstream and a second listener.
    let keep_metrics = |text: String| {
        text.replacen(
            "[admin]\n",
            &format!("[admin]\nmetrics_listen = \"{metrics}\"\n"),
            1,
        )
    };
    let text = web::config_text(&setup, port, "", &route(&new)).replacen(
        "listen = [",
        &format!("listen = [\"127.0.0.1:{port2}\", "),
        1,
    );
    std::fs::write(&config, keep_metrics(text)).unwrap();
    daemon.hup();
    assert!(
        web::eventually(Duration::from_secs(5), || new.served() > 0).await,
        "the reload did not take effect:\n{}",
        daemon.log_text()
    );
    let r = send(
        &http1(),
        get(&format!("http://127.0.0.1:{port2}/"), "x", &[]),
    )
    .await;
    assert_eq!(r.json["upstream"], "new");
    tokio::time::sleep(Duration::from_millis(300)).await;

    // Reload by the CLI: back to the old upstream, one listener again.
    std::fs::write(
        &config,
        keep_metrics(web::config_text(&setup, port, "", &route(&old))),
    )
    .unwrap();
    let out = setup.ok(&["reload"]);
    assert!(out.contains("reloaded"), "{out}");
    let served = old.served();
    assert!(web::eventually(Duration::from_secs(5), || old.served() > served).await);
    assert!(
        TcpStream::connect(("127.0.0.1", port2)).await.is_err(),
        "the removed listener still accepts"
    );

    // A bad config is refused with file, line and key; the old one keeps serving.
    let bad = web::config_text(&setup, port, "", &route(&new))
        .replace("upstream = \"up\"", "upstream = \"nope\"");
    std::fs::write(&config, keep_metrics(bad)).unwrap();
    let err = setup.fails(&["reload"]);
    assert!(
        err.contains("gateway.toml:") && err.contains("routes[0].upstream: no upstream `nope`"),
        "{err}"
    );
    let served_new = new.served();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(new.served(), served_new, "the bad config took effect");

    stop.store(true, Ordering::Relaxed);
    for task in load {
        task.await.unwrap();
    }
    let failed = failed.lock().unwrap().clone();
    assert!(
        failed.is_empty(),
        "{} of {} requests failed: {:?}",
        failed.len(),
        ok.load(Ordering::Relaxed),
        &failed[..failed.len().min(5)]
    );
    assert!(
        ok.load(Ordering::Relaxed) > 100,
        "too little load: {}",
        ok.load(Ordering::Relaxed)
    );
    let m = web::scrape(metrics).await;
    assert_eq!(
        web::metric(&m, "gateway_config_reloads_total{result=\"ok\"}"),
        Some(2.0),
        "{m}"
    );
    assert_eq!(
        web::metric(&m, "gateway_config_reloads_total{result=\"error\"}"),
        Some(1.0),
        "{m}"
    );
    // The health gauge shows the target in service (the old one again), not the one the
    // last good reload took out, which the refused config named too.
    let healthy = |addr: &std::net::SocketAddr| {
        web::metric(
            &m,
            &format!("gateway_upstream_target_healthy{{target=\"{addr}\",upstream=\"up\"}}"),
        )
    };
    assert_eq!(healthy(&old.addr), Some(1.0), "{m}");
    assert_eq!(healthy(&new.addr), None, "{m}");
    assert_eq!(
        m.matches("gateway_upstream_target_healthy{").count(),
        1,
        "{m}"
    );
    assert!(daemon.stop().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_log_and_metrics_record_every_request() {
    let up = Upstream::start("up").await;
    let port = free_port();
    let setup = Setup::new();
    let rest = format!("[upstreams.up]\ntargets = [\"{}\"]\n[[routes]]\nname = \"api\"\npath_prefix = \"/api\"\nupstream = \"up\"\n", up.addr);
    let config = web::write_config(&setup, port, "", &rest);
    let metrics = web::with_metrics(&config);
    let daemon = Daemon::start_local(&setup, &config);
    let client = http1();
    let url = |p: &str| format!("http://127.0.0.1:{port}{p}");
    for i in 0..3 {
        let r = send(
            &client,
            get(
                &url("/api/items?q=1"),
                "shop.test",
                &[("x-request-id", &format!("req-{i}"))],
            ),
        )
        .await;
        assert_eq!(r.status, 200);
    }
    assert_eq!(
        send(
            &client,
            get(&url("/nothing"), "shop.test", &[("x-request-id", "lost")])
        )
        .await
        .status,
        404
    );

    assert!(
        web::eventually(Duration::from_secs(5), || web::audit_lines(&setup).len()
            >= 4)
        .await
    );
    let lines = web::audit_lines(&setup);
    let first = &lines[0];
    assert_eq!(first["request_id"], "req-0");
    assert_eq!(first["client"], "127.0.0.1");
    assert_eq!(first["method"], "GET");
    assert_eq!(first["host"], "shop.test");
    assert_eq!(first["path"], "/api/items");
    assert_eq!(first["route"], "api");
    assert_eq!(first["upstream"], "up");
    assert_eq!(first["target"], up.addr.to_string());
    assert_eq!(first["status"], 200);
    assert!(first["bytes_out"].as_u64().unwrap() > 50, "{first}");
    assert_eq!(first["bytes_in"], 0);
    assert!(first["latency_ms"].as_f64().unwrap() > 0.0);
    assert!(first["time"].as_str().unwrap().ends_with('Z'));
    let lost = lines.iter().find(|l| l["request_id"] == "lost").unwrap();
    assert_eq!(lost["status"], 404);
    assert!(lost["route"].is_null());
    assert_eq!(lost["error"], "no route matches the request");

    let m = web::scrape(metrics).await;
    assert_eq!(
        web::metric(&m, "gateway_requests_total{class=\"2xx\",route=\"api\"}"),
        Some(3.0),
        "{m}"
    );
    assert_eq!(
        web::metric(&m, "gateway_requests_total{class=\"4xx\",route=\"none\"}"),
        Some(1.0),
        "{m}"
    );
    assert_eq!(
        web::metric(&m, "gateway_request_duration_seconds_count{route=\"api\"}"),
        Some(3.0),
        "{m}"
    );
    assert!(
        web::metric(&m, "gateway_open_connections").unwrap() >= 1.0,
        "{m}"
    );
    assert_eq!(
        web::metric(
            &m,
            &format!(
                "gateway_upstream_target_healthy{{target=\"{}\",upstream=\"up\"}}",
                up.addr
            )
        ),
        Some(1.0),
        "{m}"
    );
    assert!(m.contains("gateway_tls_handshake_failures_total 0"), "{m}");

    // logrotate: move the file away, SIGHUP, and new lines go to a new file.
    let log = setup.dir.path().join("audit.log");
    std::fs::rename(&log, setup.dir.path().join("audit.log.1")).unwrap();
    daemon.hup();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        send(
            &client,
            get(
                &url("/api/after"),
                "shop.test",
                &[("x-request-id", "after")]
            )
        )
        .await
        .status,
        200
    );
    assert!(
        web::eventually(Duration::from_secs(5), || web::audit_lines(&setup)
            .iter()
            .any(|l| l["request_id"] == "after"))
        .await
    );
    let rotated = std::fs::read_to_string(setup.dir.path().join("audit.log.1")).unwrap();
    assert_eq!(rotated.lines().count(), 4, "{rotated}");
    assert!(daemon.stop().success());
}

#[test]
fn bad_proxy_config_is_refused_with_file_line_and_key() {
    let setup = Setup::new();
    let port = free_port();
    let check = |rest: &str| {
        let config = web::write_config(&setup, port, "", rest);
        let out = std::process::Command::new(integration_tests::harness::gateway_bin())
            .arg("check-config")
            .arg(&config)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1));
        let text = std::fs::read_to_string(&config).unwrap();
        (String::from_utf8_lossy(&out.stderr).into_owned(), text)
    };
    let (stderr, text) = check("[upstreams.a]\ntargets = [\"127.0.0.1:1\"]\n\n[[routes]]\npath = \"/\"\nupstream = \"a\"\n\n[[routes]]\npath = \"/x\"\nupstream = \"missing\"\n");
    let line = text
        .lines()
        .position(|l| l.contains("\"missing\""))
        .unwrap()
        + 1;
    assert!(
        stderr.contains(&format!(
            "gateway.toml:{line}: routes[1].upstream: no upstream `missing`"
        )),
        "{stderr}"
    );
    let (stderr, _) =
        check("[upstreams.a]\ntargets = [{ address = \"127.0.0.1:1\", weight = 0 }]\n");
    assert!(
        stderr.contains("upstreams.a.targets: 127.0.0.1:1: weight 0"),
        "{stderr}"
    );
    let (stderr, _) = check("[upstreams.a]\ntargets = [\"127.0.0.1:1\"]\n[[routes]]\npath = \"/u/{id}\"\nrewrite = \"/v/{name}\"\nupstream = \"a\"\n");
    assert!(
        stderr.contains("routes[0].rewrite:") && stderr.contains("{name}"),
        "{stderr}"
    );
}
