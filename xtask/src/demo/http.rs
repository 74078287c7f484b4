//! Plain HTTP/1.1 for the demo, on std sockets: a client that sends one request per connection
//! and reports what came back (or why nothing did), and the upstream service the demo starts
//! twice, which answers every request with its own name.

use std::{
    io::{self, BufRead as _, BufReader, Read as _, Write as _},
    net::{Shutdown, SocketAddr, TcpListener, TcpStream},
    thread,
    time::{Duration, Instant},
};

use serde_json::{json, Value};

/// Long enough for a gateway on a busy 2-core machine, short enough that a dropped SYN (XDP)
/// shows as a quick failure: the kernel's first SYN retransmission would come after 1 s.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
const ANSWER_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest request or response head either side reads.
const MAX_HEAD: usize = 64 * 1024;

/// One request to the gateway.
#[derive(Debug, Clone)]
pub struct Request {
    pub method: &'static str,
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: Option<String>,
}

impl Request {
    pub fn get(path: impl Into<String>) -> Request {
        Request {
            method: "GET",
            path: path.into(),
            headers: Vec::new(),
            body: None,
        }
    }

    pub fn post_json(path: impl Into<String>, body: impl Into<String>) -> Request {
        Request {
            method: "POST",
            path: path.into(),
            headers: vec![("content-type".into(), "application/json".into())],
            body: Some(body.into()),
        }
    }

    pub fn header(mut self, name: &str, value: &str) -> Request {
        self.headers.push((name.into(), value.into()));
        self
    }

    pub fn bearer(self, token: &str) -> Request {
        self.header("authorization", &format!("Bearer {token}"))
    }

    fn raw(&self, host: &str) -> String {
        let mut head = format!(
            "{} {} HTTP/1.1\r\nhost: {host}\r\nconnection: close\r\n",
            self.method, self.path
        );
        for (name, value) in &self.headers {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
        if let Some(body) = &self.body {
            head.push_str(&format!("content-length: {}\r\n", body.len()));
        }
        head.push_str("\r\n");
        head.push_str(self.body.as_deref().unwrap_or(""));
        head
    }
}

/// What a request got.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    Answer(Reply),
    /// No answer: the connection was not made (`connect` is true) or broke, and after how long.
    Failed {
        connect: bool,
        error: String,
        after: Duration,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub struct Reply {
    pub status: u16,
    /// Lower-case names.
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or(Value::Null)
    }

    /// The gateway's refusal code (`"error"` of its JSON body), if this is one.
    pub fn error_code(&self) -> Option<String> {
        self.json()["error"].as_str().map(str::to_owned)
    }

    /// The upstream service that answered (the demo upstream's `x-upstream` header).
    pub fn upstream(&self) -> Option<String> {
        self.header("x-upstream").map(str::to_owned)
    }
}

/// Sends `request` to `to` on a new connection (from whatever network namespace the calling
/// thread is in) and reads the answer to the end.
pub fn send(to: SocketAddr, host: &str, request: &Request) -> Outcome {
    let started = Instant::now();
    let failed = |connect: bool, error: io::Error| Outcome::Failed {
        connect,
        error: match error.kind() {
            io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock => "timed out".into(),
            _ => error.to_string(),
        },
        after: started.elapsed(),
    };
    let mut stream = match TcpStream::connect_timeout(&to, CONNECT_TIMEOUT) {
        Ok(s) => s,
        Err(e) => return failed(true, e),
    };
    let mut answer = Vec::new();
    let exchange = (|| {
        stream.set_read_timeout(Some(ANSWER_TIMEOUT))?;
        stream.set_write_timeout(Some(ANSWER_TIMEOUT))?;
        stream.write_all(request.raw(host).as_bytes())?;
        stream.read_to_end(&mut answer)
    })();
    if let Err(e) = exchange {
        return failed(false, e);
    }
    match parse_reply(&answer) {
        Some(reply) => Outcome::Answer(reply),
        None => Outcome::Failed {
            connect: false,
            error: format!(
                "not an HTTP answer: {:?}",
                String::from_utf8_lossy(&answer[..answer.len().min(80)])
            ),
            after: started.elapsed(),
        },
    }
}

fn parse_reply(raw: &[u8]) -> Option<Reply> {
    let end = raw.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = std::str::from_utf8(&raw[..end]).ok()?;
    let mut lines = head.split("\r\n");
    let status = lines.next()?.split(' ').nth(1)?.parse().ok()?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let mut body = raw[end + 4..].to_vec();
    let chunked = headers
        .iter()
        .any(|(n, v)| n == "transfer-encoding" && v.eq_ignore_ascii_case("chunked"));
    if chunked {
        body = dechunk(&body)?;
    }
    Some(Reply {
        status,
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    })
}

fn dechunk(mut raw: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let line_end = raw.windows(2).position(|w| w == b"\r\n")?;
        let size = std::str::from_utf8(&raw[..line_end]).ok()?;
        let size = usize::from_str_radix(size.split(';').next()?.trim(), 16).ok()?;
        raw = &raw[line_end + 2..];
        if size == 0 {
            return Some(out);
        }
        out.extend_from_slice(raw.get(..size)?);
        raw = raw.get(size + 2..)?;
    }
}

/// The demo's upstream service on `listener`: HTTP/1.1 with keep-alive, a thread per
/// connection; every request gets 200 and `{"upstream": NAME, "method", "path", "user"}`,
/// `user` being the `x-user-id` header the gateway forwards from the token's subject.
pub fn serve(listener: TcpListener, name: &str) {
    for stream in listener.incoming() {
        let Ok(stream) = stream else {
            // Out of file descriptors, most likely: wait rather than spin.
            thread::sleep(Duration::from_millis(10));
            continue;
        };
        let name = name.to_owned();
        thread::spawn(move || {
            // A client that goes away mid-request is no concern of the demo's.
            let _ = serve_connection(stream, &name);
        });
    }
}

fn serve_connection(stream: TcpStream, name: &str) -> io::Result<()> {
    stream.set_nodelay(true)?;
    stream.set_read_timeout(Some(Duration::from_secs(120)))?;
    let mut writer = stream.try_clone()?;
    let mut reader = BufReader::new(stream);
    loop {
        let mut request_line = String::new();
        if reader.read_line(&mut request_line)? == 0 {
            return Ok(());
        }
        let mut parts = request_line.split_whitespace();
        let (method, path) = (
            parts.next().unwrap_or("").to_owned(),
            parts.next().unwrap_or("").to_owned(),
        );
        let (mut length, mut close, mut chunked, mut user) = (0usize, false, false, None);
        let mut head_bytes = request_line.len();
        loop {
            let mut line = String::new();
            let n = reader.read_line(&mut line)?;
            head_bytes += n;
            if n == 0 || head_bytes > MAX_HEAD {
                return Ok(());
            }
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            let Some((header, value)) = line.split_once(':') else {
                continue;
            };
            let value = value.trim();
            match header.trim().to_ascii_lowercase().as_str() {
                "content-length" => length = value.parse().unwrap_or(0),
                "connection" => close = value.eq_ignore_ascii_case("close"),
                "transfer-encoding" => chunked = true,
                "x-user-id" => user = Some(value.to_owned()),
                _ => {}
            }
        }
        if chunked {
            // Not worth decoding here: answer, and end the connection so nothing is misread.
            close = true;
        } else {
            io::copy(&mut (&mut reader).take(length as u64), &mut io::sink())?;
        }
        let body =
            json!({"upstream": name, "method": method, "path": path, "user": user}).to_string();
        write!(
            writer,
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\
             x-upstream: {name}\r\n{}\r\n{body}",
            body.len(),
            if close { "connection: close\r\n" } else { "" }
        )?;
        writer.flush()?;
        if close {
            let _ = writer.shutdown(Shutdown::Write);
            return Ok(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_are_parsed_with_or_without_chunks() {
        let r = parse_reply(
            b"HTTP/1.1 403 Forbidden\r\nContent-Type: application/json\r\nContent-Length: 18\r\n\r\n{\"error\":\"blocked\"}",
        )
        .unwrap();
        assert_eq!(r.status, 403);
        assert_eq!(r.header("content-type"), Some("application/json"));
        assert_eq!(r.error_code().as_deref(), Some("blocked"));
        let r = parse_reply(
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\n{\"ups\r\n11\r\ntream\":\"a\",\"x\":1}\r\n0\r\n\r\n",
        )
        .unwrap();
        assert_eq!(r.json(), json!({"upstream": "a", "x": 1}));
        assert!(parse_reply(b"garbage").is_none());
    }

    /// The client against the upstream service, on loopback.
    #[test]
    fn the_upstream_names_itself_and_keeps_connections() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        thread::spawn(move || serve(listener, "b"));
        let request = Request::post_json("/v1/orders", "{\"a\":1}").header("x-user-id", "alice");
        let Outcome::Answer(r) = send(addr, "api.example.com", &request) else {
            panic!("no answer");
        };
        assert_eq!(r.status, 200);
        assert_eq!(r.upstream().as_deref(), Some("b"));
        assert_eq!(
            r.json(),
            json!({"upstream": "b", "method": "POST", "path": "/v1/orders", "user": "alice"})
        );
        // Two requests on one connection.
        let mut s = TcpStream::connect(addr).unwrap();
        s.write_all(b"GET /1 HTTP/1.1\r\nhost: x\r\n\r\nGET /2 HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
            .unwrap();
        let mut text = String::new();
        s.read_to_string(&mut text).unwrap();
        assert_eq!(text.matches("HTTP/1.1 200 OK").count(), 2, "{text}");
    }
}
