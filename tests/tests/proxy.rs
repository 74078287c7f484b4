//! The reverse proxy, end to end: the real `gateway` binary (XDP off) in front of real hyper
//! upstreams on 127.0.0.1, driven by a real HTTP client.

use std::{
    collections::HashMap,
    convert::Infallible,
    net::SocketAddr,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
};

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::{body::Incoming, Request, Response};
use hyper_util::{
    client::legacy::Client,
    rt::{TokioExecutor, TokioIo},
};
use integration_tests::harness::{Daemon, Setup};
use serde_json::Value;

/// An upstream on 127.0.0.1 that answers every request with JSON describing it and its own
/// name, and counts what it served.
struct Upstream {
    addr: SocketAddr,
    served: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Upstream {
    async fn start(name: &'static str) -> Upstream {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let served = Arc::new(AtomicUsize::new(0));
        let counter = served.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let counter = counter.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                        counter.fetch_add(1, Ordering::Relaxed);
                        async move {
                            let headers: HashMap<String, String> = req
                                .headers()
                                .iter()
                                .map(|(k, v)| {
                                    (k.to_string(), v.to_str().unwrap_or_default().to_string())
                                })
                                .collect();
                            let body = serde_json::json!({
                                "upstream": name,
                                "method": req.method().as_str(),
                                "uri": req.uri().to_string(),
                                "headers": headers,
                            });
                            let mut response =
                                Response::new(Full::new(Bytes::from(body.to_string())));
                            response
                                .headers_mut()
                                .insert("connection", "keep-alive, x-hop".parse().unwrap());
                            response
                                .headers_mut()
                                .insert("x-hop", "must not reach the client".parse().unwrap());
                            Ok::<_, Infallible>(response)
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Upstream { addr, served, task }
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A port free on 127.0.0.1 right now.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Writes a config with XDP off, the proxy on `port` and `rest` (upstreams and routes).
fn config(setup: &Setup, port: u16, rest: &str) -> std::path::PathBuf {
    let path = setup.dir.path().join("gateway.toml");
    let text = format!(
        "[xdp]\nenabled = false\n\n[proxy]\nlisten = [\"127.0.0.1:{port}\"]\nconnect_timeout = \"2s\"\ntimeout = \"5s\"\n\n[state]\ndir = \"{}\"\n\n[admin]\nsocket = \"{}\"\n\n{rest}\n",
        setup.state_dir().display(),
        setup.socket().display()
    );
    std::fs::write(&path, text).unwrap();
    path
}

struct Reply {
    status: u16,
    headers: hyper::HeaderMap,
    json: Value,
}

async fn send(port: u16, method: &str, host: &str, path: &str, headers: &[(&str, &str)]) -> Reply {
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let mut req = Request::builder()
        .method(method)
        .uri(format!("http://127.0.0.1:{port}{path}"))
        .header("host", host);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let response = client
        .request(req.body(Full::new(Bytes::new())).unwrap())
        .await
        .expect("request through the gateway");
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    let json = serde_json::from_slice(&body).unwrap_or(Value::Null);
    Reply {
        status,
        headers,
        json,
    }
}

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

[[routes]]
path = "/healthz"
respond = {{ status = 200, json = {{ ok = true }} }}

[[routes]]
host = "api.example.com"
path_prefix = "/v1"
strip_prefix = true
upstream = "a"

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
    let config = config(&setup, port, &rest);
    let daemon = Daemon::start_local(&setup, &config);

    // Fixed response, with a generated request id.
    let r = send(port, "GET", "anything", "/healthz", &[]).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json, serde_json::json!({"ok": true}));
    assert!(r.headers.get("x-request-id").is_some());

    // Host and prefix route: the prefix is stripped, the query kept, forwarding headers set,
    // hop-by-hop headers dropped both ways, a valid request id kept.
    let r = send(
        port,
        "POST",
        "api.example.com",
        "/v1/users/7?x=1",
        &[
            ("x-request-id", "abc-123"),
            ("x-forwarded-for", "203.0.113.9"),
            ("connection", "x-secret"),
            ("x-secret", "hop"),
        ],
    )
    .await;
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
        port,
        "GET",
        "api.example.com",
        "/v1",
        &[("x-request-id", "bad id\"")],
    )
    .await;
    assert_eq!(r.json["uri"], "/");
    assert_ne!(r.headers["x-request-id"], "bad id\"");

    // Round-robin over the two targets.
    let before = (
        a1.served.load(Ordering::Relaxed),
        a2.served.load(Ordering::Relaxed),
    );
    for _ in 0..10 {
        assert_eq!(
            send(port, "GET", "api.example.com", "/v1/x", &[])
                .await
                .status,
            200
        );
    }
    let after = (
        a1.served.load(Ordering::Relaxed),
        a2.served.load(Ordering::Relaxed),
    );
    assert_eq!((after.0 - before.0, after.1 - before.1), (5, 5));

    // Wildcard host with a method filter; the prefix must end on a segment boundary.
    let r = send(port, "GET", "eu.api.example.org", "/any", &[]).await;
    assert_eq!(r.json["upstream"], "b");
    assert_eq!(
        send(port, "POST", "eu.api.example.org", "/any", &[])
            .await
            .status,
        404
    );
    assert_eq!(
        send(port, "GET", "example.org", "/any", &[]).await.status,
        404
    );
    assert_eq!(
        send(port, "GET", "api.example.com", "/v1x", &[])
            .await
            .status,
        404
    );

    // No route: 404; a dead upstream: 502; both JSON with the request id.
    let r = send(port, "GET", "nowhere.test", "/", &[]).await;
    assert_eq!(r.status, 404);
    assert_eq!(
        r.json["request_id"],
        r.headers["x-request-id"].to_str().unwrap()
    );
    let r = send(port, "GET", "x", "/dead/1", &[("x-request-id", "dead-1")]).await;
    assert_eq!(r.status, 502, "{:?}", r.json);
    assert_eq!(r.json["request_id"], "dead-1");
    assert!(r.json["error"]
        .as_str()
        .unwrap()
        .contains(&dead.to_string()));

    assert!(daemon.stop().success());
}

#[test]
fn bad_proxy_config_is_refused_with_file_line_and_key() {
    let setup = Setup::new();
    let port = free_port();
    let config = config(
        &setup,
        port,
        "[upstreams.a]\ntargets = [\"127.0.0.1:1\"]\n\n[[routes]]\npath = \"/\"\nupstream = \"a\"\n\n[[routes]]\npath = \"/x\"\nupstream = \"missing\"\n",
    );
    let out = std::process::Command::new(integration_tests::harness::gateway_bin())
        .arg("check-config")
        .arg(&config)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    let line = std::fs::read_to_string(&config)
        .unwrap()
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
}
