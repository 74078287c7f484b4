//! The HTTP/1.1 fast path, end to end, with raw sockets on both sides so every byte is the
//! test's: response framings from the upstream (length, chunked, close-delimited, none,
//! interim 1xx, broken), reuse of upstream connections and recovery when the upstream closes
//! them, and on the client side pipelining, `Connection: close`, and the hand-over to hyper
//! in the middle of a connection (chunked and large bodies, `Expect`, HTTP/1.0, bad framing).

use std::{
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::Duration,
};

use integration_tests::{
    harness::{Daemon, Setup},
    web::{self, free_port, Upstream},
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};

/// Every read and write of the test is bounded by this.
const PATIENCE: Duration = Duration::from_secs(10);

#[derive(Debug)]
struct RawResponse {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl RawResponse {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or(serde_json::Value::Null)
    }
}

/// A client connection where the test writes the bytes itself.
struct Raw {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl Raw {
    async fn connect(port: u16) -> Raw {
        Raw {
            stream: TcpStream::connect(("127.0.0.1", port)).await.unwrap(),
            buf: Vec::new(),
        }
    }

    async fn write(&mut self, bytes: &[u8]) {
        tokio::time::timeout(PATIENCE, self.stream.write_all(bytes))
            .await
            .expect("write timed out")
            .unwrap();
    }

    /// Reads more; false at the end of the stream.
    async fn fill(&mut self) -> bool {
        let mut chunk = [0u8; 16384];
        match tokio::time::timeout(PATIENCE, self.stream.read(&mut chunk))
            .await
            .expect("read timed out")
        {
            Ok(0) | Err(_) => false,
            Ok(n) => {
                self.buf.extend_from_slice(&chunk[..n]);
                true
            }
        }
    }

    /// The next response (interim ones included); `None` when the connection ended first.
    async fn response(&mut self, head_request: bool) -> Option<RawResponse> {
        let (status, headers, len) = loop {
            let mut slots = [httparse::EMPTY_HEADER; 64];
            let mut r = httparse::Response::new(&mut slots);
            if let httparse::Status::Complete(len) = r.parse(&self.buf).expect("bad response head")
            {
                let headers = r
                    .headers
                    .iter()
                    .map(|h| {
                        (
                            h.name.to_ascii_lowercase(),
                            String::from_utf8_lossy(h.value).into_owned(),
                        )
                    })
                    .collect::<Vec<_>>();
                break (r.code.unwrap(), headers, len);
            }
            if !self.fill().await {
                return None;
            }
        };
        self.buf.drain(..len);
        let mut response = RawResponse {
            status,
            headers,
            body: Vec::new(),
        };
        if head_request || status < 200 || status == 204 || status == 304 {
            return Some(response);
        }
        if let Some(n) = response.header("content-length") {
            let n: usize = n.parse().unwrap();
            while self.buf.len() < n {
                assert!(self.fill().await, "body cut off");
            }
            response.body = self.buf.drain(..n).collect();
        } else if response.header("transfer-encoding") == Some("chunked") {
            loop {
                let line_end = loop {
                    if let Some(i) = self.buf.windows(2).position(|w| w == b"\r\n") {
                        break i;
                    }
                    assert!(self.fill().await, "chunk size cut off");
                };
                let size =
                    usize::from_str_radix(std::str::from_utf8(&self.buf[..line_end]).unwrap(), 16)
                        .unwrap();
                self.buf.drain(..line_end + 2);
                while self.buf.len() < size + 2 {
                    assert!(self.fill().await, "chunk cut off");
                }
                response.body.extend(self.buf.drain(..size));
                assert_eq!(self.buf.drain(..2).collect::<Vec<_>>(), b"\r\n");
                if size == 0 {
                    break;
                }
            }
        } else {
            while self.fill().await {}
            response.body = std::mem::take(&mut self.buf);
        }
        Some(response)
    }

    /// Whether the gateway closed the connection (nothing more arrives).
    async fn closed(&mut self) -> bool {
        self.buf.is_empty() && !self.fill().await
    }
}

/// An upstream that answers with hand-written bytes, per path; counts its connections.
struct RawUpstream {
    port: u16,
    connections: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for RawUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn big(n: usize) -> Vec<u8> {
    (0..n).map(|i| b'a' + (i % 26) as u8).collect()
}

impl RawUpstream {
    async fn start() -> RawUpstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let connections = Arc::new(AtomicUsize::new(0));
        let count = connections.clone();
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(RawUpstream::serve(stream));
            }
        });
        RawUpstream {
            port,
            connections,
            task,
        }
    }

    async fn serve(mut stream: TcpStream) {
        let mut buf = Vec::new();
        loop {
            let (method, path, len, body_len) = loop {
                let mut slots = [httparse::EMPTY_HEADER; 64];
                let mut r = httparse::Request::new(&mut slots);
                if let Ok(httparse::Status::Complete(len)) = r.parse(&buf) {
                    let body_len = r
                        .headers
                        .iter()
                        .find(|h| h.name.eq_ignore_ascii_case("content-length"))
                        .map_or(0, |h| {
                            std::str::from_utf8(h.value).unwrap().parse().unwrap()
                        });
                    break (
                        r.method.unwrap().to_string(),
                        r.path.unwrap().to_string(),
                        len,
                        body_len,
                    );
                }
                let mut chunk = [0u8; 16384];
                match stream.read(&mut chunk).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                }
            };
            while buf.len() < len + body_len {
                let mut chunk = [0u8; 16384];
                match stream.read(&mut chunk).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                }
            }
            buf.drain(..len + body_len);
            let mut close = false;
            let mut stall = false;
            let answer: Vec<u8> = match path.as_str() {
                "/length" => b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\nx-kind: length\r\n\r\nhello".to_vec(),
                "/chunked" => {
                    let mut a = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n".to_vec();
                    for part in [&b"hello"[..], b", ", &big(100_000), b"!"] {
                        a.extend_from_slice(format!("{:x};ext=1\r\n", part.len()).as_bytes());
                        a.extend_from_slice(part);
                        a.extend_from_slice(b"\r\n");
                    }
                    a.extend_from_slice(b"0\r\nx-trailer: t\r\n\r\n");
                    a
                }
                "/large" => {
                    let mut a = b"HTTP/1.1 200 OK\r\ncontent-length: 300000\r\n\r\n".to_vec();
                    a.extend_from_slice(&big(300_000));
                    a
                }
                "/until-close" => {
                    close = true;
                    b"HTTP/1.1 200 OK\r\n\r\nuntil the end".to_vec()
                }
                "/no-content" => b"HTTP/1.1 204 No Content\r\n\r\n".to_vec(),
                "/not-modified" => b"HTTP/1.1 304 Not Modified\r\ncontent-length: 5\r\n\r\n".to_vec(),
                "/interim" => b"HTTP/1.1 103 Early Hints\r\nlink: </a.css>; rel=preload\r\n\r\nHTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok".to_vec(),
                "/both" => b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\ntransfer-encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n".to_vec(),
                "/said-close" => {
                    close = true;
                    b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 3\r\n\r\nbye".to_vec()
                }
                // Keep-alive by the protocol, but the connection is closed right after.
                "/sneaky-close" => {
                    close = true;
                    b"HTTP/1.1 200 OK\r\ncontent-length: 6\r\n\r\nsneaky".to_vec()
                }
                "/garbage" => b"HTTP/1.1 2x0 Nope\r\n\r\n".to_vec(),
                "/bad-length" => b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\ncontent-length: 6\r\n\r\nhello!".to_vec(),
                "/cut" => {
                    close = true;
                    b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\nonly this".to_vec()
                }
                // Part of the body, then nothing, the connection held open.
                "/stall" => {
                    stall = true;
                    b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\npartial".to_vec()
                }
                _ if method == "HEAD" => b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n".to_vec(),
                _ => b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n".to_vec(),
            };
            if stream.write_all(&answer).await.is_err() || close {
                return;
            }
            if stall {
                tokio::time::sleep(Duration::from_secs(30)).await;
                return;
            }
        }
    }

    fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_framings_and_connection_reuse() {
    let upstream = RawUpstream::start().await;
    let port = free_port();
    let setup = Setup::new();
    let rest = format!(
        "[upstreams.raw]\ntargets = [\"127.0.0.1:{}\"]\nretries = 0\n\n\
         [[routes]]\npath = \"/stall\"\nupstream = \"raw\"\ntimeout = \"1s\"\n\n\
         [[routes]]\nupstream = \"raw\"\n",
        upstream.port
    );
    // One worker, so every request shares one list of idle upstream connections.
    let config = web::write_config(&setup, port, "workers = 1", &rest);
    let _daemon = Daemon::start_local(&setup, &config);
    let mut c = Raw::connect(port).await;
    let get = |path: &str| format!("GET {path} HTTP/1.1\r\nhost: raw.test\r\n\r\n");

    // Content-Length, many times over one client connection: one upstream connection.
    for _ in 0..20 {
        c.write(get("/length").as_bytes()).await;
        let r = c.response(false).await.unwrap();
        assert_eq!((r.status, r.body.as_slice()), (200, &b"hello"[..]));
        assert_eq!(r.header("x-kind"), Some("length"));
        assert!(r.header("x-request-id").is_some());
        assert!(r.header("date").is_some());
    }
    assert_eq!(
        upstream.connections(),
        1,
        "the upstream connection was not reused"
    );

    // Chunked from the upstream (with extensions and trailers): chunked to the client, whole.
    c.write(get("/chunked").as_bytes()).await;
    let r = c.response(false).await.unwrap();
    assert_eq!(r.status, 200);
    let mut want = b"hello, ".to_vec();
    want.extend_from_slice(&big(100_000));
    want.push(b'!');
    assert_eq!(r.body.len(), want.len());
    assert!(r.body == want, "the chunked body changed on the way");

    // A body longer than what arrives with the head streams, with its length.
    c.write(get("/large").as_bytes()).await;
    let r = c.response(false).await.unwrap();
    assert_eq!(r.header("content-length"), Some("300000"));
    assert!(r.body == big(300_000));

    // No body: 204, 304 (keeps its length), HEAD (keeps its length).
    c.write(get("/no-content").as_bytes()).await;
    let r = c.response(false).await.unwrap();
    assert_eq!((r.status, r.header("content-length")), (204, None));
    c.write(get("/not-modified").as_bytes()).await;
    let r = c.response(false).await.unwrap();
    assert_eq!((r.status, r.header("content-length")), (304, Some("5")));
    c.write(b"HEAD /anything HTTP/1.1\r\nhost: raw.test\r\n\r\n")
        .await;
    let r = c.response(true).await.unwrap();
    assert_eq!((r.status, r.header("content-length")), (200, Some("5")));

    // An interim 103 is passed over; the final answer arrives.
    c.write(get("/interim").as_bytes()).await;
    let r = c.response(false).await.unwrap();
    assert_eq!((r.status, r.body.as_slice()), (200, &b"ok"[..]));

    // Transfer-Encoding and Content-Length both: chunked wins, the length is dropped.
    c.write(get("/both").as_bytes()).await;
    let r = c.response(false).await.unwrap();
    assert_eq!((r.status, r.body.as_slice()), (200, &b"ok"[..]));

    // Read until the upstream closes: the client gets it all, chunked.
    c.write(get("/until-close").as_bytes()).await;
    let r = c.response(false).await.unwrap();
    assert_eq!(r.body, b"until the end");

    // Broken answers are a 502 with the JSON error, and the client connection lives on.
    for path in ["/garbage", "/bad-length"] {
        c.write(get(path).as_bytes()).await;
        let r = c.response(false).await.unwrap();
        assert_eq!(r.status, 502, "{path}");
        assert_eq!(r.json()["error"], "bad_gateway", "{path}");
    }

    // The upstream closes after answering, said or not: the next request still gets through.
    for path in ["/said-close", "/sneaky-close"] {
        c.write(get(path).as_bytes()).await;
        assert_eq!(c.response(false).await.unwrap().status, 200, "{path}");
        for _ in 0..3 {
            c.write(get("/length").as_bytes()).await;
            let r = c.response(false).await.unwrap();
            assert_eq!(
                (r.status, r.body.as_slice()),
                (200, &b"hello"[..]),
                "after {path}"
            );
        }
    }
    // Immediately after a sneaky close, even a POST (not resent on its own) gets through.
    c.write(get("/sneaky-close").as_bytes()).await;
    assert_eq!(c.response(false).await.unwrap().status, 200);
    tokio::time::sleep(Duration::from_millis(100)).await;
    c.write(b"POST /length HTTP/1.1\r\nhost: raw.test\r\ncontent-length: 3\r\n\r\nabc")
        .await;
    let r = c.response(false).await.unwrap();
    assert_eq!((r.status, r.body.as_slice()), (200, &b"hello"[..]));

    // A body cut off by the upstream: the client connection is closed, not left hanging.
    c.write(get("/cut").as_bytes()).await;
    let mut head = Vec::new();
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        if !c.fill().await {
            break;
        }
        head = c.buf.clone();
    }
    while c.fill().await {}
    let text = String::from_utf8_lossy(&c.buf);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(text.ends_with("only this"), "{text}");

    // A target that stops in the middle of a body is cut off after the route's timeout (1 s
    // here), and the client's connection with it, rather than held open for ever.
    let mut c = Raw::connect(port).await;
    let started = std::time::Instant::now();
    c.write(get("/stall").as_bytes()).await;
    while c.fill().await {}
    let took = started.elapsed();
    let text = String::from_utf8_lossy(&c.buf);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(text.ends_with("partial"), "{text}");
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(8),
        "{took:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelining_close_and_the_hand_over_to_hyper() {
    let upstream = Upstream::start("echo").await;
    let port = free_port();
    let setup = Setup::new();
    let rest = format!(
        "[upstreams.echo]\ntargets = [\"{}\"]\n\n[[routes]]\nupstream = \"echo\"\n",
        upstream.addr
    );
    let config = web::write_config(&setup, port, "", &rest);
    let _daemon = Daemon::start_local(&setup, &config);

    // Three requests in one write: three answers, in order.
    let mut c = Raw::connect(port).await;
    c.write(
        b"GET /one HTTP/1.1\r\nhost: a\r\n\r\nGET /two HTTP/1.1\r\nhost: a\r\n\r\n\
          POST /three HTTP/1.1\r\nhost: a\r\ncontent-length: 4\r\n\r\nbody",
    )
    .await;
    for (path, bytes) in [("/one", 0), ("/two", 0), ("/three", 4)] {
        let r = c.response(false).await.unwrap();
        assert_eq!(r.status, 200);
        assert_eq!(r.json()["uri"], path);
        assert_eq!(r.json()["body_bytes"], bytes);
    }

    // Absolute form: the request-target's authority, not the Host header, is routed and is
    // the Host the upstream sees (RFC 9112 section 3.2.2); on the fast path and on hyper's
    // (chunked).
    c.write(b"GET http://Public.Example:8080/abs?q=1 HTTP/1.1\r\nhost: internal.example\r\n\r\n")
        .await;
    let r = c.response(false).await.unwrap();
    assert_eq!(r.json()["uri"], "/abs?q=1", "{:?}", r.json());
    assert_eq!(
        r.json()["headers"]["host"],
        "Public.Example:8080",
        "{:?}",
        r.json()
    );
    c.write(
        b"POST http://public.example/abs2 HTTP/1.1\r\nhost: internal.example\r\n\
          transfer-encoding: chunked\r\n\r\n0\r\n\r\n",
    )
    .await;
    let r = c.response(false).await.unwrap();
    assert_eq!(r.json()["uri"], "/abs2", "{:?}", r.json());
    assert_eq!(
        r.json()["headers"]["host"],
        "public.example",
        "{:?}",
        r.json()
    );

    // Requests the fast path leaves to hyper, on the same connection, between fast ones: a
    // chunked body, a body over 64 KiB, Expect: 100-continue. Each is answered, in order.
    let large = vec![b'x'; 100_000];
    let mut chunked =
        b"POST /chunked HTTP/1.1\r\nhost: a\r\ntransfer-encoding: chunked\r\n\r\n".to_vec();
    chunked.extend_from_slice(b"5\r\nhello\r\n0\r\n\r\n");
    let mut big = format!(
        "PUT /large HTTP/1.1\r\nhost: a\r\ncontent-length: {}\r\n\r\n",
        large.len()
    )
    .into_bytes();
    big.extend_from_slice(&large);
    c.write(&chunked).await;
    let r = c.response(false).await.unwrap();
    assert_eq!((r.status, r.json()["body_bytes"].as_u64()), (200, Some(5)));
    c.write(b"GET /fast-again HTTP/1.1\r\nhost: a\r\n\r\n")
        .await;
    let r = c.response(false).await.unwrap();
    assert_eq!(r.json()["uri"], "/fast-again");
    c.write(&big).await;
    let r = c.response(false).await.unwrap();
    assert_eq!(r.json()["body_bytes"].as_u64(), Some(100_000));
    c.write(
        b"POST /expect HTTP/1.1\r\nhost: a\r\ncontent-length: 3\r\nexpect: 100-continue\r\n\r\n",
    )
    .await;
    let r = c.response(false).await.unwrap();
    assert_eq!(r.status, 100);
    c.write(b"abc").await;
    let r = c.response(false).await.unwrap();
    assert_eq!((r.status, r.json()["body_bytes"].as_u64()), (200, Some(3)));

    // A body sent in pieces, slowly, is waited for.
    let mut c = Raw::connect(port).await;
    c.write(b"POST /slow HTTP/1.1\r\nhost: a\r\ncontent-length: 10\r\n\r\n01234")
        .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    c.write(b"56789").await;
    let r = c.response(false).await.unwrap();
    assert_eq!(r.json()["body_bytes"].as_u64(), Some(10));

    // Connection: close is answered with it, then the connection ends.
    c.write(b"GET /bye HTTP/1.1\r\nhost: a\r\nconnection: close\r\n\r\n")
        .await;
    let r = c.response(false).await.unwrap();
    assert_eq!((r.status, r.header("connection")), (200, Some("close")));
    assert!(
        c.closed().await,
        "the connection stayed open after Connection: close"
    );

    // HTTP/1.0 goes to hyper and is answered.
    let mut c = Raw::connect(port).await;
    c.write(b"GET /old HTTP/1.0\r\nhost: a\r\n\r\n").await;
    let r = c.response(false).await.unwrap();
    assert_eq!((r.status, r.json()["uri"].as_str()), (200, Some("/old")));

    // After a good request, a smuggling attempt still meets the framing guard: 400, closed.
    let mut c = Raw::connect(port).await;
    c.write(
        b"GET /good HTTP/1.1\r\nhost: a\r\n\r\n\
          POST /evil HTTP/1.1\r\nhost: a\r\ncontent-length: 4\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n",
    )
    .await;
    let r = c.response(false).await.unwrap();
    assert_eq!(r.json()["uri"], "/good");
    let r = c.response(false).await.unwrap();
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["error"], "bad_request");
    assert!(c.closed().await);
    // Bare LF line ends, after a good request, likewise.
    let mut c = Raw::connect(port).await;
    c.write(b"GET /good HTTP/1.1\r\nhost: a\r\n\r\nGET /lf HTTP/1.1\nhost: a\n\n")
        .await;
    assert_eq!(c.response(false).await.unwrap().status, 200);
    assert_eq!(c.response(false).await.unwrap().status, 400);
    assert!(c.closed().await);
    // Two Hosts, or none in HTTP/1.1, after a good request: 400 from the guard, closed.
    for second in [
        &b"GET /two HTTP/1.1\r\nhost: a\r\nhost: b\r\n\r\n"[..],
        b"GET /none HTTP/1.1\r\n\r\n",
    ] {
        let mut c = Raw::connect(port).await;
        c.write(&[&b"GET /good HTTP/1.1\r\nhost: a\r\n\r\n"[..], second].concat())
            .await;
        assert_eq!(c.response(false).await.unwrap().status, 200);
        let r = c.response(false).await.unwrap();
        assert_eq!(r.status, 400);
        assert!(r.json()["message"]
            .as_str()
            .unwrap_or_default()
            .contains("Host"));
        assert!(c.closed().await);
    }
    // A head over the size limit goes to hyper's 431.
    let mut c = Raw::connect(port).await;
    let long = format!(
        "GET / HTTP/1.1\r\nhost: a\r\nx-long: {}\r\n\r\n",
        "y".repeat(100_000)
    );
    c.write(long.as_bytes()).await;
    assert_eq!(c.response(false).await.unwrap().status, 431);
}
