//! The upstream side of the fast path: HTTP/1.1 over plain TCP, with idle connections kept per
//! worker thread and per target.
//!
//! A request goes out in one write (head and body, the body already in memory); the response
//! head is parsed with httparse; a body that has already arrived whole is handed on as bytes and
//! the connection goes back to the idle list at once, a longer one streams and gives the
//! connection back when it ends cleanly.

use std::{
    cell::RefCell,
    collections::HashMap,
    io,
    net::SocketAddr,
    pin::Pin,
    task::{Context, Poll},
    thread::ThreadId,
    time::{Duration, Instant},
};

use bytes::{Bytes, BytesMut};
use hyper::{
    body::{Frame, SizeHint},
    header::{self, HeaderMap, HeaderName, HeaderValue},
    Method, Response, StatusCode, Version,
};
use tokio::{io::AsyncWriteExt as _, net::TcpStream};

use super::{has_token, poll_read_buf, put, read_buf, BadChunk, Chunked, Step};
use crate::proxy::{Body, BoxError};

/// Idle connections older than this are not reused.
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// The largest response head accepted.
const MAX_HEAD: usize = 64 * 1024;
/// The most response header fields accepted.
const MAX_HEADERS: usize = 128;
/// How much to read at a time.
const READ_SIZE: usize = 16 * 1024;
/// Bodies up to this size are copied behind the head, to go out in one write.
const COALESCE: usize = 16 * 1024;
/// The largest request buffer a connection keeps for its next request.
const MAX_OUT: usize = 64 * 1024;

/// A way to the targets of one pool over plain HTTP/1.1.
#[derive(Debug)]
pub struct Client {
    connect_timeout: Duration,
    max_idle: usize,
}

/// What goes to the target.
pub struct Outgoing<'a> {
    pub method: &'a Method,
    pub path_and_query: &'a str,
    /// Already without hop-by-hop headers; `Content-Length` is set here from `body`.
    pub headers: &'a HeaderMap,
    /// Fields that replace any of `headers` under the same names.
    pub set: &'a [(HeaderName, HeaderValue)],
    /// The Host when `headers` has none (else the target's address is).
    pub host: Option<&'a HeaderValue>,
    pub body: Bytes,
    /// When the request was handed over (for a retry too): the clock, read once per request
    /// for the deadline and for the age of the idle connections.
    pub now: tokio::time::Instant,
    /// When the response head must have arrived, connecting and sending included.
    pub deadline: tokio::time::Instant,
    /// The longest rest between two reads of the response body (see `proxy::Idle`).
    pub body_timeout: Duration,
}

/// Why a request got no response head.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    #[error("connecting: {0}")]
    Connect(#[source] io::Error),
    #[error("connecting took longer than {0:?}")]
    ConnectTimeout(Duration),
    #[error("{0}")]
    Io(#[source] io::Error),
    #[error("the target closed the connection without answering")]
    Closed,
    #[error("bad response: {0}")]
    Protocol(&'static str),
    #[error("no response before the deadline")]
    Timeout,
}

impl SendError {
    /// Nothing reached the target: it is always safe to try another one.
    pub fn is_connect(&self) -> bool {
        matches!(self, SendError::Connect(_) | SendError::ConnectTimeout(_))
    }
}

/// An open connection to a target.
struct Conn {
    stream: TcpStream,
    /// Bytes read and not used yet.
    buf: BytesMut,
    /// The request being sent, encoded; kept for the next one.
    out: Vec<u8>,
    /// Room for [`parse_head`].
    spans: Vec<Span>,
    /// The connection's one timer for deadlines (see [`Conn::until`]); made at the first wait.
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
    addr: SocketAddr,
    max_idle: usize,
    /// Connections belong to the runtime of the thread that opened them.
    thread: ThreadId,
    since: Instant,
}

thread_local! {
    static THREAD: ThreadId = std::thread::current().id();
    /// Idle connections of this worker thread, by target; the last one in is used first.
    /// The targets come from the configuration, so a fast hash with a fixed seed will do.
    static IDLE: RefCell<HashMap<SocketAddr, Vec<Conn>, foldhash::fast::FixedState>> =
        RefCell::new(HashMap::with_hasher(foldhash::fast::FixedState::default()));
}

impl Conn {
    /// Back to the idle list, if it is clean and there is room.
    fn release(self) {
        if !self.buf.is_empty() || self.thread != THREAD.with(|t| *t) {
            return;
        }
        IDLE.with(|idle| {
            let mut idle = idle.borrow_mut();
            let list = idle.entry(self.addr).or_default();
            if list.len() < self.max_idle {
                let mut conn = self;
                conn.since = Instant::now();
                list.push(conn);
            }
        });
    }

    /// An idle connection to `addr` that looks alive at `now`.
    fn checkout(addr: SocketAddr, now: Instant) -> Option<Conn> {
        IDLE.with(|idle| {
            let mut idle = idle.borrow_mut();
            let list = idle.get_mut(&addr)?;
            while let Some(conn) = list.pop() {
                if now.saturating_duration_since(conn.since) < IDLE_TIMEOUT && conn.quiet() {
                    return Some(conn);
                }
            }
            None
        })
    }

    /// Resolves at `deadline`, not before. The timer is moved only when it would fire too late
    /// (or has fired): one set for a request's deadline fires before the next request's, which
    /// then re-arms it. So on a busy connection a request costs no timer work of its own.
    async fn until(
        timer: &mut Option<Pin<Box<tokio::time::Sleep>>>,
        deadline: tokio::time::Instant,
    ) {
        loop {
            let t = timer.get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
            if t.deadline() > deadline || t.is_elapsed() {
                t.as_mut().reset(deadline);
            }
            t.as_mut().await;
            if tokio::time::Instant::now() >= deadline {
                return;
            }
        }
    }

    /// An idle connection must have nothing to read: readable means closed (or junk).
    fn quiet(&self) -> bool {
        let mut cx = Context::from_waker(std::task::Waker::noop());
        match self.stream.poll_read_ready(&mut cx) {
            Poll::Pending => true,
            Poll::Ready(Err(_)) => false,
            // Readiness may be left over from the last response: look.
            Poll::Ready(Ok(())) => {
                let mut probe = [0u8; 1];
                matches!(self.stream.try_read(&mut probe), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
            }
        }
    }
}

/// How the response body is delimited (RFC 9112 section 6.3).
enum Framing {
    None,
    Length(u64),
    Chunked,
    Close,
}

impl Client {
    pub fn new(connect_timeout: Duration, max_idle: usize) -> Client {
        Client {
            connect_timeout,
            max_idle,
        }
    }

    /// Sends `req` to `addr` and reads the response head. A reused connection that turns out to
    /// be closed is replaced by a new one once, when `idempotent` says a resend is safe.
    pub async fn send(
        &self,
        addr: SocketAddr,
        req: Outgoing<'_>,
        idempotent: bool,
    ) -> Result<Response<Body>, SendError> {
        let head_only = req.method == Method::HEAD;
        let mut fresh_only = false;
        loop {
            let (mut conn, reused) = match (!fresh_only)
                .then(|| Conn::checkout(addr, req.now.into_std()))
                .flatten()
            {
                Some(c) => (c, true),
                None => {
                    let connect = tokio::time::timeout_at(req.deadline, self.connect(addr));
                    (connect.await.map_err(|_| SendError::Timeout)??, false)
                }
            };
            if conn.out.capacity() > MAX_OUT {
                conn.out = Vec::new();
            }
            conn.out.clear();
            encode(&mut conn.out, &req, addr);
            match exchange(conn, &req, head_only).await {
                Ok(response) => return Ok(response),
                Err((e, answered)) => {
                    if reused && !answered && idempotent {
                        fresh_only = true;
                        continue;
                    }
                    return Err(e);
                }
            }
        }
    }

    async fn connect(&self, addr: SocketAddr) -> Result<Conn, SendError> {
        let stream = tokio::time::timeout(self.connect_timeout, TcpStream::connect(addr))
            .await
            .map_err(|_| SendError::ConnectTimeout(self.connect_timeout))?
            .map_err(SendError::Connect)?;
        let _ = stream.set_nodelay(true);
        Ok(Conn {
            stream,
            buf: BytesMut::with_capacity(READ_SIZE),
            out: Vec::new(),
            spans: Vec::new(),
            timer: None,
            addr,
            max_idle: self.max_idle,
            thread: THREAD.with(|t| *t),
            since: Instant::now(),
        })
    }
}

/// Writes the request head to `out`, and the body when it is small.
fn encode(out: &mut Vec<u8>, req: &Outgoing<'_>, addr: SocketAddr) {
    let small = req.body.len() <= COALESCE;
    out.reserve(256 + req.headers.len() * 64 + if small { req.body.len() } else { 0 });
    put(
        out,
        &[
            req.method.as_str().as_bytes(),
            b" ",
            req.path_and_query.as_bytes(),
            b" HTTP/1.1\r\n",
        ],
    );
    let (mut had_length, mut had_host) = (false, false);
    for (name, value) in req.headers {
        if name == header::CONTENT_LENGTH {
            had_length = true;
            continue;
        }
        if req.set.iter().any(|(n, _)| n == name) {
            continue;
        }
        // Noted on the way: cheaper than a lookup in the map after.
        had_host |= name == header::HOST;
        super::field(out, name, value);
    }
    for (name, value) in req.set {
        super::field(out, name, value);
    }
    if !had_host {
        match req.host {
            Some(h) => put(out, &[b"host: ", h.as_bytes(), b"\r\n"]),
            None => put(out, &[b"host: ", addr.to_string().as_bytes(), b"\r\n"]),
        }
    }
    let needs_length = had_length
        || !req.body.is_empty()
        || matches!(*req.method, Method::POST | Method::PUT | Method::PATCH);
    if needs_length {
        put(
            out,
            &[
                b"content-length: ",
                itoa::Buffer::new().format(req.body.len()).as_bytes(),
                b"\r\n",
            ],
        );
    }
    out.extend_from_slice(b"\r\n");
    if small {
        out.extend_from_slice(&req.body);
    }
}

/// One request (encoded in `conn.out`) and response head on `conn`. On failure, also says
/// whether any of the response had arrived.
async fn exchange(
    mut conn: Conn,
    req: &Outgoing<'_>,
    head_only: bool,
) -> Result<Response<Body>, (SendError, bool)> {
    let body = &req.body;
    let written = async {
        conn.stream.write_all(&conn.out).await?;
        if body.len() > COALESCE {
            conn.stream.write_all(body).await?;
        }
        io::Result::Ok(())
    };
    // A timeout counts as answered: the request may have been taken, and is not sent again.
    tokio::select! {
        biased;
        written = written => written.map_err(|e| (SendError::Io(e), false))?,
        () = Conn::until(&mut conn.timer, req.deadline) => return Err((SendError::Timeout, true)),
    }
    let mut answered = false;
    loop {
        if let Some(parsed) = parse_head(&mut conn.buf, &mut conn.spans).map_err(|e| (e, true))? {
            let (status, version, headers, framing) = parsed;
            if status.is_informational() {
                if status == StatusCode::SWITCHING_PROTOCOLS {
                    return Err((SendError::Protocol("101 without an upgrade"), true));
                }
                continue;
            }
            let head = (status, version, headers, framing);
            return respond(conn, head, head_only, req.body_timeout).map_err(|e| (e, true));
        }
        if conn.buf.len() > MAX_HEAD {
            return Err((SendError::Protocol("response head too large"), true));
        }
        let n = tokio::select! {
            biased;
            read = read_buf(&mut conn.stream, &mut conn.buf, READ_SIZE) => {
                read.map_err(|e| (SendError::Io(e), answered))?
            }
            () = Conn::until(&mut conn.timer, req.deadline) => {
                return Err((SendError::Timeout, true));
            }
        };
        if n == 0 {
            return Err(if answered {
                (SendError::Protocol("response head cut off"), true)
            } else {
                (SendError::Closed, false)
            });
        }
        answered = true;
    }
}

type Head = (StatusCode, Version, HeaderMap, FramingFields);

/// What the framing fields of a response head say, gathered as the head is parsed.
#[derive(Default)]
struct FramingFields {
    /// Connection: close.
    close: bool,
    /// The last Transfer-Encoding field.
    transfer_encoding: Option<HeaderValue>,
    /// Content-Length fields: the length they agree on, or what is wrong with them.
    length: Option<u64>,
    bad_length: Option<&'static str>,
}

impl FramingFields {
    fn see(&mut self, name: &HeaderName, value: &HeaderValue) {
        if name == header::CONNECTION {
            self.close |= has_token(value.as_bytes(), "close");
        } else if name == header::TRANSFER_ENCODING {
            self.transfer_encoding = Some(value.clone());
        } else if name == header::CONTENT_LENGTH {
            let v = value.as_bytes();
            let n = std::str::from_utf8(v)
                .ok()
                .filter(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|s| s.parse::<u64>().ok());
            match n {
                None => self.bad_length = Some("bad content-length"),
                Some(n) if self.length.is_some_and(|l| l != n) => {
                    self.bad_length.get_or_insert("conflicting content-length");
                }
                Some(n) => self.length = Some(n),
            }
        }
    }
}

/// Where a header's name and value are in a head: offset and length of each.
type Span = (usize, usize, usize, usize);

/// Parses a response head off the front of `buf`, when it is all there; `spans` is room for
/// the parser's findings, kept by the connection (not an array on the stack, which would be
/// zeroed and moved for every response).
fn parse_head(buf: &mut BytesMut, spans: &mut Vec<Span>) -> Result<Option<Head>, SendError> {
    if buf.is_empty() {
        return Ok(None);
    }
    let (len, code, v1) = {
        let mut headers =
            [const { std::mem::MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
        let mut parsed = httparse::Response::new(&mut []);
        let len = match httparse::ParserConfig::default().parse_response_with_uninit_headers(
            &mut parsed,
            buf,
            &mut headers,
        ) {
            Ok(httparse::Status::Complete(len)) => len,
            Ok(httparse::Status::Partial) => return Ok(None),
            Err(httparse::Error::TooManyHeaders) => {
                return Err(SendError::Protocol("too many response headers"))
            }
            Err(_) => return Err(SendError::Protocol("malformed response head")),
        };
        let base = buf.as_ptr() as usize;
        // The spans outlive the borrow of `buf` that the parser holds.
        spans.clear();
        spans.extend(parsed.headers.iter().map(|h| {
            (
                h.name.as_ptr() as usize - base,
                h.name.len(),
                h.value.as_ptr() as usize - base,
                h.value.len(),
            )
        }));
        (len, parsed.code.unwrap_or(0), parsed.version == Some(1))
    };
    let status = StatusCode::from_u16(code).map_err(|_| SendError::Protocol("bad status code"))?;
    let version = if v1 {
        Version::HTTP_11
    } else {
        Version::HTTP_10
    };
    let head = buf.split_to(len).freeze();
    // Room for what the proxy adds (security headers, X-Request-Id).
    let mut map = super::header_map(spans.len() + 8);
    let mut fields = FramingFields::default();
    for &(name, name_len, value, value_len) in spans.iter() {
        let name = HeaderName::from_bytes(&head[name..name + name_len])
            .map_err(|_| SendError::Protocol("bad header name"))?;
        let value = super::parsed_value(head.slice(value..value + value_len));
        fields.see(&name, &value);
        map.append(name, value);
    }
    Ok(Some((status, version, map, fields)))
}

/// The response, its body framed per RFC 9112 section 6.3.
fn respond(
    mut conn: Conn,
    (status, version, mut headers, fields): Head,
    head_only: bool,
    body_timeout: Duration,
) -> Result<Response<Body>, SendError> {
    let mut keep = version == Version::HTTP_11 && !fields.close;
    let framing = if head_only || crate::proxy::without_content(status) {
        Framing::None
    } else if let Some(te) = &fields.transfer_encoding {
        let chunked = te
            .as_bytes()
            .rsplit(|&b| b == b',')
            .next()
            .is_some_and(|t| t.trim_ascii().eq_ignore_ascii_case(b"chunked"));
        if fields.length.is_some() || fields.bad_length.is_some() {
            // Both: Transfer-Encoding wins, and the connection is not to be trusted after.
            headers.remove(header::CONTENT_LENGTH);
            keep = false;
        }
        if chunked {
            Framing::Chunked
        } else {
            Framing::Close
        }
    } else if let Some(bad) = fields.bad_length {
        return Err(SendError::Protocol(bad));
    } else {
        match fields.length {
            Some(n) => Framing::Length(n),
            None => Framing::Close,
        }
    };
    if matches!(framing, Framing::Close) {
        keep = false;
    }
    let body = match framing {
        Framing::None => {
            if keep {
                conn.release();
            }
            super::super::full(Bytes::new())
        }
        Framing::Length(n) if conn.buf.len() as u64 >= n => {
            let bytes = conn.buf.split_to(n as usize).freeze();
            if keep {
                conn.release();
            }
            super::super::full(bytes)
        }
        Framing::Length(n) => streaming(conn, Mode::Length(n), keep, body_timeout),
        Framing::Chunked => streaming(conn, Mode::Chunked(Chunked::new()), keep, body_timeout),
        Framing::Close => streaming(conn, Mode::Close, false, body_timeout),
    };
    let mut response = Response::new(body);
    *response.status_mut() = status;
    *response.version_mut() = version;
    *response.headers_mut() = headers;
    Ok(response)
}

/// A body still to be read from `conn`, cut off when it rests longer than `after`.
fn streaming(conn: Conn, mode: Mode, keep: bool, after: Duration) -> Body {
    let body = Streaming {
        conn: Some(conn),
        mode,
        keep,
    };
    Body::boxed(super::super::Idle::new(body, after))
}

enum Mode {
    Length(u64),
    Chunked(Chunked),
    Close,
}

/// A response body still arriving on its connection.
struct Streaming {
    conn: Option<Conn>,
    mode: Mode,
    keep: bool,
}

/// The target's response body broke off.
#[derive(Debug, thiserror::Error)]
#[error("the response body was cut off")]
struct CutOff;

impl Streaming {
    fn end(&mut self) {
        if let Some(conn) = self.conn.take() {
            if self.keep {
                conn.release();
            }
        }
    }
}

impl hyper::body::Body for Streaming {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        loop {
            let Some(conn) = this.conn.as_mut() else {
                return Poll::Ready(None);
            };
            match &mut this.mode {
                Mode::Length(0) => {
                    this.end();
                    return Poll::Ready(None);
                }
                Mode::Length(left) => {
                    if !conn.buf.is_empty() {
                        let n = (*left).min(conn.buf.len() as u64);
                        *left -= n;
                        let data = conn.buf.split_to(n as usize).freeze();
                        if *left == 0 {
                            this.end();
                        }
                        return Poll::Ready(Some(Ok(Frame::data(data))));
                    }
                }
                Mode::Chunked(decoder) => match decoder.step(&mut conn.buf) {
                    Ok(Step::Data(data)) => return Poll::Ready(Some(Ok(Frame::data(data)))),
                    Ok(Step::Done) => {
                        this.end();
                        return Poll::Ready(None);
                    }
                    Ok(Step::NeedMore) => {}
                    Err(e) => {
                        this.conn = None;
                        return Poll::Ready(Some(Err(Box::new(e) as BoxError)));
                    }
                },
                Mode::Close => {
                    if !conn.buf.is_empty() {
                        let data = conn.buf.split().freeze();
                        return Poll::Ready(Some(Ok(Frame::data(data))));
                    }
                }
            }
            match poll_read_buf(&mut conn.stream, cx, &mut conn.buf, READ_SIZE) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(e)) => {
                    this.conn = None;
                    return Poll::Ready(Some(Err(Box::new(e) as BoxError)));
                }
                Poll::Ready(Ok(0)) => {
                    this.conn = None;
                    return match this.mode {
                        Mode::Close => Poll::Ready(None),
                        Mode::Chunked(_) => {
                            Poll::Ready(Some(Err(Box::new(BadChunk("cut off")) as BoxError)))
                        }
                        Mode::Length(_) => Poll::Ready(Some(Err(Box::new(CutOff) as BoxError))),
                    };
                }
                Poll::Ready(Ok(_)) => {}
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.conn.is_none() || matches!(self.mode, Mode::Length(0))
    }

    fn size_hint(&self) -> SizeHint {
        match self.mode {
            Mode::Length(n) => SizeHint::with_exact(n),
            _ => SizeHint::default(),
        }
    }
}
