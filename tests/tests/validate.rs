//! Request smuggling defences and request validation, end to end: the real `gateway` binary
//! (XDP off) in front of a real upstream on 127.0.0.1, driven over raw TCP (HTTP/1 and
//! HTTP/2 frames written by hand) and with real clients.

use std::{
    io::{Read as _, Write as _},
    net::TcpStream,
    time::Duration,
};

use bytes::Bytes;
use http_body_util::Full;
use hyper::Request;
use integration_tests::{
    harness::{Daemon, Setup},
    web::{self, free_port, get, http1, send, Upstream},
};

/// What a raw connection got back: everything until the gateway closed it.
struct Raw {
    text: String,
    /// The gateway closed the connection (rather than the read timing out).
    closed: bool,
}

impl Raw {
    fn statuses(&self) -> Vec<u16> {
        self.text
            .match_indices("HTTP/1.1 ")
            .filter_map(|(i, _)| self.text.get(i + 9..i + 12)?.parse().ok())
            .collect()
    }

    /// The JSON body of the last response.
    fn last_json(&self) -> serde_json::Value {
        let start = self.text.rfind("\r\n\r\n").map_or(0, |i| i + 4);
        serde_json::from_str(&self.text[start..]).unwrap_or_default()
    }
}

/// Writes `bytes` to the gateway on `port` and reads until it closes (or 5 s of silence).
fn raw(port: u16, bytes: &[u8]) -> Raw {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(bytes).unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 8192];
    let closed = loop {
        match s.read(&mut buf) {
            Ok(0) => break true,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break true,
            Err(_) => break false,
        }
    };
    Raw {
        text: String::from_utf8_lossy(&out).into_owned(),
        closed,
    }
}

fn schema_dir(setup: &Setup) {
    let schema = serde_json::json!({
        "type": "object",
        "required": ["name"],
        "properties": {"name": {"type": "string", "maxLength": 8}, "age": {"type": "integer"}},
        "additionalProperties": false
    });
    std::fs::write(setup.dir.path().join("user.json"), schema.to_string()).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smuggling_attempts_get_400_and_the_connection_closed() {
    let up = Upstream::start("up").await;
    let port = free_port();
    let setup = Setup::new();
    schema_dir(&setup);
    let rest = format!(
        r#"
[upstreams.up]
targets = ["{}"]

[[routes]]
name = "api"
path_prefix = "/api"
upstream = "up"
[routes.validate]
json_schema = {{ POST = "user.json" }}

[[routes]]
name = "plain"
path_prefix = "/plain"
upstream = "up"
"#,
        up.addr
    );
    let config = web::write_config(&setup, port, "", &rest);
    let metrics = web::with_metrics(&config);
    let daemon = Daemon::start_local(&setup, &config);

    // Sanity: pipelined good requests, fixed and chunked bodies, all answered, kept open.
    let good = concat!(
        "GET /api/1 HTTP/1.1\r\nHost: x\r\n\r\n",
        "POST /api/2 HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 14\r\n\r\n{\"name\": \"a\"}\n",
        "POST /api/3 HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n",
        "5;x=1\r\n{\"nam\r\n8\r\ne\": \"b\"}\r\n0\r\nX-Trailer: 1\r\n\r\n",
        "GET /api/4 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    );
    let r = raw(port, good.as_bytes());
    assert_eq!(r.statuses(), [200, 200, 200, 200], "{}", r.text);
    assert_eq!(up.served(), 4);

    // Head violations: nothing of the request reaches the upstream.
    let smuggles: &[(&str, &str, &str)] = &[
        (
            "CL.TE",
            "POST /api HTTP/1.1\r\nHost: x\r\nContent-Length: 35\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n",
            "te_and_cl",
        ),
        (
            "TE.CL",
            "POST /api HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n5c\r\nGET /smuggled HTTP/1.1\r\nHost: x\r\nContent-Length: 15\r\n\r\nx=1\r\n0\r\n\r\n",
            "te_and_cl",
        ),
        (
            "TE.TE xchunked",
            "POST /api HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: xchunked\r\n\r\n0\r\n\r\n",
            "bad_transfer_encoding",
        ),
        (
            "TE.TE twice",
            "POST /api HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n\r\n0\r\n\r\n",
            "bad_transfer_encoding",
        ),
        (
            "TE.TE list",
            "POST /api HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, chunked\r\n\r\n0\r\n\r\n",
            "bad_transfer_encoding",
        ),
        (
            "TE.TE parameter",
            "POST /api HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked;x\r\n\r\n0\r\n\r\n",
            "bad_transfer_encoding",
        ),
        (
            "TE.TE space before colon",
            "POST /api HTTP/1.1\r\nHost: x\r\nTransfer-Encoding : chunked\r\n\r\n0\r\n\r\n",
            "bad_head",
        ),
        (
            "TE.TE obs-fold",
            "POST /api HTTP/1.1\r\nHost: x\r\nTransfer-Encoding:\r\n chunked\r\n\r\n0\r\n\r\n",
            "bad_head",
        ),
        (
            "TE in HTTP/1.0",
            "POST /api HTTP/1.0\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            "bad_transfer_encoding",
        ),
        (
            "duplicate CL",
            "POST /api HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\nhello",
            "duplicate_content_length",
        ),
        (
            "signed CL",
            "POST /api HTTP/1.1\r\nHost: x\r\nContent-Length: +5\r\n\r\nhello",
            "bad_content_length",
        ),
        (
            "bare LF",
            "GET /api HTTP/1.1\nHost: x\n\n",
            "bare_lf",
        ),
        (
            "bare LF in a later field",
            "GET /api HTTP/1.1\r\nHost: x\r\nX-A: 1\nX-B: 2\r\n\r\n",
            "bare_lf",
        ),
        (
            "bad request line",
            "GET /api HTTP/1.1 extra\r\nHost: x\r\n\r\n",
            "bad_head",
        ),
    ];
    let served = up.served();
    for (name, bytes, problem) in smuggles {
        let r = raw(port, bytes.as_bytes());
        assert_eq!(r.statuses(), [400], "{name}: {}", r.text);
        assert!(r.closed, "{name}: connection left open");
        assert!(
            r.text.to_ascii_lowercase().contains("connection: close"),
            "{name}: {}",
            r.text
        );
        let json = r.last_json();
        assert_eq!(json["error"], "bad_request", "{name}: {}", r.text);
        assert_eq!(json["status"], 400);
        assert!(json["request_id"].as_str().is_some_and(|s| !s.is_empty()));
        let rule = format!("framing:{problem}");
        assert!(
            web::eventually(Duration::from_secs(5), || web::audit_lines(&setup)
                .iter()
                .any(
                    |l| l["request_id"] == json["request_id"] && l["rule"] == *rule.as_str()
                ))
            .await,
            "{name}: no audit line with {rule}: {:?}",
            web::audit_lines(&setup)
        );
    }
    assert_eq!(
        up.served(),
        served,
        "a refused request reached the upstream"
    );

    // A good request before a bad one is answered, then the 400, then the close.
    let piped = concat!(
        "GET /api/first HTTP/1.1\r\nHost: x\r\n\r\n",
        "POST /api HTTP/1.1\r\nHost: x\r\nContent-Length: 35\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n",
    );
    let r = raw(port, piped.as_bytes());
    assert_eq!(r.statuses(), [200, 400], "{}", r.text);
    assert!(r.closed);
    assert_eq!(up.served(), served + 1);

    // The same, the bad request arriving while the good one is being answered.
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(b"GET /api/slow HTTP/1.1\r\nHost: x\r\nx-test-sleep-ms: 300\r\n\r\n")
        .unwrap();
    std::thread::sleep(Duration::from_millis(100));
    s.write_all(b"GET /api HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\nx")
        .unwrap();
    let mut text = String::new();
    let _ = s.read_to_string(&mut text);
    let r = Raw { text, closed: true };
    assert_eq!(r.statuses(), [200, 400], "{}", r.text);
    assert_eq!(up.served(), served + 2);

    // Bad chunking: the body ends where the framing breaks; the request is refused with
    // 400 and the connection closed. On a route that reads the body first (a schema), nothing
    // reaches the upstream.
    let bad_chunks: &[(&str, &str)] = &[
        ("negative size", "-1\r\nx\r\n0\r\n\r\n"),
        ("hex prefix", "0x5\r\nhello\r\n0\r\n\r\n"),
        ("space after size", "5 \r\nhello\r\n0\r\n\r\n"),
        ("too many digits", "00000000000000005\r\nhello\r\n0\r\n\r\n"),
        ("bare LF after size", "5\nhello\r\n0\r\n\r\n"),
        ("data longer than size", "3\r\nhello\r\n0\r\n\r\n"),
        (
            "smuggled in the last chunk",
            "0\r\nGET /smuggled HTTP/1.1\r\n\r\n",
        ),
    ];
    let served = up.served();
    for (name, body) in bad_chunks {
        for path in ["/api", "/plain"] {
            let req = format!(
                "POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n{body}"
            );
            let r = raw(port, req.as_bytes());
            assert_eq!(r.statuses(), [400], "{name} on {path}: {}", r.text);
            assert!(r.closed, "{name} on {path}: connection left open");
            assert_eq!(r.last_json()["error"], "bad_request");
        }
    }
    // Only /plain requests may have been forwarded, their bodies cut short.
    assert!(up.served() <= served + bad_chunks.len());

    // A head larger than proxy.max_header_bytes is hyper's: 431.
    let big = format!(
        "GET /api HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "a".repeat(20_000)
    );
    let r = raw(port, big.as_bytes());
    assert_eq!(r.statuses(), [431], "{}", r.text);

    let (ok, text) = web::scrape_until(
        metrics,
        &[
            ("gateway_framing_refused_total{problem=\"te_and_cl\"}", 3.0),
            (
                "gateway_framing_refused_total{problem=\"duplicate_content_length\"}",
                2.0,
            ),
            (
                "gateway_framing_refused_total{problem=\"bad_chunk\"}",
                (2 * (bad_chunks.len() - 1)) as f64,
            ),
        ],
    )
    .await;
    assert!(ok, "{text}");
    drop(daemon);
}

/// An HTTP/2 frame.
fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// HPACK for a POST to `path` with `headers`, without Huffman coding or indexing.
fn hpack(path: &str, headers: &[(&str, &str)]) -> Vec<u8> {
    let mut out = vec![0x83, 0x86]; // :method POST, :scheme http
    let string = |out: &mut Vec<u8>, s: &str| {
        out.push(s.len() as u8);
        out.extend_from_slice(s.as_bytes());
    };
    out.push(0x04); // :path, literal without indexing, indexed name
    string(&mut out, path);
    out.push(0x01); // :authority
    string(&mut out, "x");
    for (k, v) in headers {
        out.push(0x00);
        string(&mut out, k);
        string(&mut out, v);
    }
    out
}

/// Sends one HTTP/2 request over prior knowledge and returns the frame types received for
/// stream 1 and whether the gateway sent GOAWAY.
fn h2_raw(port: u16, headers: &[(&str, &str)], data: &[u8]) -> (Vec<u8>, bool) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    let mut out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    out.extend(frame(4, 0, 0, &[]));
    out.extend(frame(1, 0x4, 1, &hpack("/api", headers)));
    out.extend(frame(0, 0x1, 1, data));
    s.write_all(&out).unwrap();
    let (mut kinds, mut goaway) = (Vec::new(), false);
    let mut header = [0u8; 9];
    while s.read_exact(&mut header).is_ok() {
        let len = (header[0] as usize) << 16 | (header[1] as usize) << 8 | header[2] as usize;
        let mut payload = vec![0u8; len];
        if s.read_exact(&mut payload).is_err() {
            break;
        }
        let stream = u32::from_be_bytes(header[5..9].try_into().unwrap()) & 0x7fff_ffff;
        match (header[3], stream) {
            (7, _) => {
                goaway = true;
                break;
            }
            (kind, 1) => {
                kinds.push(kind);
                // DATA or HEADERS ending the stream, or RST_STREAM: done.
                if header[3] == 3 || header[4] & 0x1 != 0 {
                    break;
                }
            }
            _ => {}
        }
    }
    (kinds, goaway)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_framing_errors_are_refused_by_the_protocol() {
    let up = Upstream::start("up").await;
    let port = free_port();
    let setup = Setup::new();
    let rest = format!(
        "[upstreams.up]\ntargets = [\"{}\"]\n\n[[routes]]\npath_prefix = \"/api\"\nupstream = \"up\"\n",
        up.addr
    );
    let config = web::write_config(&setup, port, "", &rest);
    let _daemon = Daemon::start_local(&setup, &config);

    // A well-formed request, written the same way, is answered (HEADERS on stream 1).
    let (kinds, goaway) = h2_raw(port, &[("content-length", "5")], b"hello");
    assert!(kinds.contains(&1) && !goaway, "{kinds:?}");
    assert_eq!(up.served(), 1);
    // content-length saying more, or less, than the data: the stream is reset.
    for cl in ["10", "2"] {
        let (kinds, goaway) = h2_raw(port, &[("content-length", cl)], b"hello");
        assert!(
            !kinds.contains(&1) && (kinds.contains(&3) || goaway),
            "content-length {cl}: {kinds:?}"
        );
    }
    // Connection-specific headers are malformed in HTTP/2.
    for (k, v) in [
        ("transfer-encoding", "chunked"),
        ("connection", "keep-alive"),
    ] {
        let (kinds, goaway) = h2_raw(port, &[(k, v)], b"0\r\n\r\n");
        assert!(
            !kinds.contains(&1) && (kinds.contains(&3) || goaway),
            "{k}: {kinds:?}"
        );
    }
    assert_eq!(
        up.served(),
        1,
        "a malformed HTTP/2 request reached the upstream"
    );
    // And a real h2c client still gets through the guard.
    let r = send(
        &web::h2c(),
        get(&format!("http://127.0.0.1:{port}/api/x"), "x", &[]),
    )
    .await;
    assert_eq!((r.status, r.version), (200, hyper::Version::HTTP_2));
}

fn request(
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: &'static [u8],
) -> Request<Full<Bytes>> {
    let mut b = Request::builder()
        .method(method)
        .uri(url)
        .header("host", "x");
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    b.body(Full::new(Bytes::from_static(body))).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn validation_rules_answer_with_their_statuses() {
    let up = Upstream::start("up").await;
    let port = free_port();
    let setup = Setup::new();
    schema_dir(&setup);
    let rest = format!(
        r#"
[upstreams.up]
targets = ["{}"]

[[routes]]
name = "users"
path_prefix = "/users"
upstream = "up"
[routes.validate]
methods = ["GET", "POST"]
required_headers = ["x-api-version"]
content_types = ["application/json"]
max_body_bytes = 64
json_schema = {{ POST = "user.json" }}
[routes.validate.query]
allow_unknown = false
[routes.validate.query.params.limit]
type = "integer"
max_length = 3
[routes.validate.query.params.q]
pattern = "[a-z]+"
[routes.inspect]
mode = "block"
"#,
        up.addr
    );
    let config = web::write_config(&setup, port, "", &rest);
    let _daemon = Daemon::start_local(&setup, &config);
    let client = http1();
    let url = |p: &str| format!("http://127.0.0.1:{port}{p}");
    let v = ("x-api-version", "1");
    let json = ("content-type", "application/json");

    let r = send(
        &client,
        request("GET", &url("/users?limit=10&q=ab"), &[v], b""),
    )
    .await;
    assert_eq!(r.status, 200, "{:?}", r.json);
    let r = send(
        &client,
        request(
            "POST",
            &url("/users"),
            &[v, json],
            br#"{"name": "ann", "age": 3}"#,
        ),
    )
    .await;
    assert_eq!(r.status, 200, "{:?}", r.json);
    // A gzipped body is inflated once, for the schema and the inspection alike.
    let gzipped = |json: &str| -> &'static [u8] {
        use std::io::Write as _;
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(json.as_bytes()).unwrap();
        Box::leak(e.finish().unwrap().into_boxed_slice())
    };
    let gz = ("content-encoding", "gzip");
    let r = send(
        &client,
        request(
            "POST",
            &url("/users"),
            &[v, json, gz],
            gzipped(r#"{"name": "ann"}"#),
        ),
    )
    .await;
    assert_eq!(r.status, 200, "{:?}", r.json);
    let served = up.served();

    let cases: Vec<(Request<Full<Bytes>>, u16, &str)> = vec![
        (
            request("DELETE", &url("/users/1"), &[v], b""),
            405,
            "validate:method",
        ),
        (
            request("GET", &url("/users"), &[], b""),
            400,
            "validate:header",
        ),
        (
            request(
                "POST",
                &url("/users"),
                &[v, ("content-type", "text/plain")],
                b"{}",
            ),
            415,
            "validate:content_type",
        ),
        (
            request("POST", &url("/users"), &[v], b"{}"),
            415,
            "validate:content_type",
        ),
        (
            request("GET", &url("/users?limit=x"), &[v], b""),
            400,
            "validate:query:limit",
        ),
        (
            request("GET", &url("/users?limit=1000"), &[v], b""),
            400,
            "validate:query:limit",
        ),
        (
            request("GET", &url("/users?q=a%2"), &[v], b""),
            400,
            "validate:query:q",
        ),
        (
            request("GET", &url("/users?q=A"), &[v], b""),
            400,
            "validate:query:q",
        ),
        (
            request("GET", &url("/users?debug=1"), &[v], b""),
            400,
            "validate:query:debug",
        ),
        (
            request(
                "POST",
                &url("/users"),
                &[v, json],
                br#"{"name": 5, "extra": true}"#,
            ),
            400,
            "validate:json_schema",
        ),
        (
            request("POST", &url("/users"), &[v, json], b"{nope"),
            400,
            "validate:json_schema",
        ),
        // A repeated key: a parser that keeps the first would see a name the schema never
        // checked.
        (
            request(
                "POST",
                &url("/users"),
                &[v, json],
                br#"{"name": 5, "name": "ann"}"#,
            ),
            400,
            "validate:json_schema",
        ),
        (
            request("POST", &url("/users"), &[v, json], &[b' '; 100]),
            413,
            "body:size",
        ),
        // Gzipped, seen inflated by the schema and by the inspection.
        (
            request(
                "POST",
                &url("/users"),
                &[v, json, gz],
                gzipped(r#"{"name": 5, "extra": true}"#),
            ),
            400,
            "validate:json_schema",
        ),
        (
            request(
                "POST",
                &url("/users"),
                &[v, json, gz],
                gzipped(r#"{"name": "<script>"}"#),
            ),
            403,
            "inspect:xss-001",
        ),
    ];
    for (req, status, rule) in cases {
        let what = format!("{} {}", req.method(), req.uri());
        let r = send(&client, req).await;
        assert_eq!(r.status, status, "{what}: {:?}", r.json);
        let id = r.json["request_id"].clone();
        assert!(
            web::eventually(Duration::from_secs(5), || web::audit_lines(&setup)
                .iter()
                .any(|l| l["request_id"] == id
                    && l["rule"] == rule
                    && l["decision"] == "deny"))
            .await,
            "{what}: no audit line with {rule}"
        );
        if status == 405 {
            assert_eq!(r.headers["allow"], "GET, POST");
        }
        if rule == "validate:json_schema" && r.json["message"].as_str().unwrap().contains("match") {
            let m = r.json["message"].as_str().unwrap();
            assert!(
                m.contains("/name (type)") && m.contains("(additionalProperties)"),
                "{m}"
            );
        }
    }
    let r = send(
        &client,
        request(
            "POST",
            &url("/users"),
            &[v, json],
            br#"{"name": "ann", "name": "bob"}"#,
        ),
    )
    .await;
    let m = r.json["message"].as_str().unwrap();
    assert!(m.contains(r#"duplicate key "name""#), "{m}");
    assert_eq!(
        up.served(),
        served,
        "a refused request reached the upstream"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarded_for_counts_only_through_trusted_proxies() {
    let up = Upstream::start("up").await;
    let rest = format!(
        r#"
[upstreams.up]
targets = ["{}"]

[[routes]]
path_prefix = "/bench"
upstream = "up"
[routes.validate]
allow_ips = ["198.18.0.0/15"]

[[routes]]
path_prefix = "/open"
upstream = "up"
[routes.validate]
deny_ips = ["198.18.0.0/15", "::ffff:203.0.113.0/120"]
"#,
        up.addr
    );
    let client = http1();

    // 127.0.0.1 is a trusted proxy: its X-Forwarded-For names the client.
    let port = free_port();
    let setup = Setup::new();
    let config = web::write_config(
        &setup,
        port,
        "trusted_proxies = [\"127.0.0.1/32\", \"10.0.0.0/8\"]",
        &rest,
    );
    let daemon = Daemon::start_local(&setup, &config);
    let at = |path: &str, xff: &[&str]| {
        let headers: Vec<(&str, &str)> = xff.iter().map(|v| ("x-forwarded-for", *v)).collect();
        get(&format!("http://127.0.0.1:{port}{path}"), "x", &headers)
    };
    let status = |r: web::Reply| (r.status, r.json["error"].as_str().map(str::to_string));
    assert_eq!(
        send(&client, at("/bench", &["198.18.0.5"])).await.status,
        200
    );
    assert_eq!(
        send(
            &client,
            at("/bench", &["203.0.113.1, 198.19.2.3, 10.1.1.1"])
        )
        .await
        .status,
        200
    );
    for xff in [
        &[][..],
        &["203.0.113.1"],
        // The client wrote the allowed address; the trusted hop says who it is.
        &["198.18.0.5, 203.0.113.1"],
        &["198.18.0.5", "203.0.113.1"],
        // Malformed: the last address known is the peer, which is not allowed.
        &["198.18.0.5, bogus"],
    ] {
        let r = send(&client, at("/bench", xff)).await;
        assert_eq!(status(r), (403, Some("forbidden".into())), "{xff:?}");
    }
    assert_eq!(send(&client, at("/open", &[])).await.status, 200);
    assert_eq!(
        send(&client, at("/open", &["198.18.1.1"])).await.status,
        403
    );
    assert_eq!(
        send(&client, at("/open", &["203.0.113.9"])).await.status,
        403
    );
    assert_eq!(send(&client, at("/open", &["192.0.2.1"])).await.status, 200);
    assert!(
        web::eventually(Duration::from_secs(5), || {
            let lines = web::audit_lines(&setup);
            lines
                .iter()
                .any(|l| l["rule"] == "access:deny" && l["client"] == "198.18.1.1")
                && lines
                    .iter()
                    .any(|l| l["rule"] == "access:not_allowed" && l["client"] == "203.0.113.1")
        })
        .await,
        "{:?}",
        web::audit_lines(&setup)
    );
    drop(daemon);

    // Not trusted: the same header is ignored, the client is 127.0.0.1.
    let port = free_port();
    let setup = Setup::new();
    let config = web::write_config(&setup, port, "", &rest);
    let _daemon = Daemon::start_local(&setup, &config);
    let at = |path: &str, xff: &str| {
        get(
            &format!("http://127.0.0.1:{port}{path}"),
            "x",
            &[("x-forwarded-for", xff)],
        )
    };
    assert_eq!(send(&client, at("/bench", "198.18.0.5")).await.status, 403);
    assert_eq!(send(&client, at("/open", "198.18.1.1")).await.status, 200);
}
