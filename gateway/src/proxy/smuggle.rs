//! Request smuggling defences for HTTP/1.x: a guard on the client's byte stream, between the
//! socket (after TLS) and hyper, that checks every request head and follows the message
//! framing to find the next one.
//!
//! hyper on its own drops Content-Length when Transfer-Encoding is also present and accepts
//! duplicate equal Content-Lengths, so such requests reach the pipeline looking harmless. Any
//! other server on the path (an upstream, a cache, a second proxy) may frame them otherwise,
//! which is what request smuggling needs. So each head is parsed once here (with `httparse`, as
//! hyper does) and refused, before hyper sees it, when it has:
//!
//! - Transfer-Encoding and Content-Length together, more than one Content-Length (even equal),
//!   a Content-Length that is not plain digits;
//! - a Transfer-Encoding other than exactly one `chunked` (any coding in HTTP/1.0);
//! - a bare LF as a line end, or anything `httparse` refuses: an invalid request line, obs-fold,
//!   whitespace before a colon, a bare CR.
//!
//! Bodies are followed without copying: Content-Length bytes are counted past; chunked bodies
//! are checked chunk by chunk (hex sizes of bounded length, strict CRLF, bounded extensions,
//! well-formed trailers).
//!
//! ```text
//!  socket -> [TLS] -> Guard -> hyper
//!                       |  good bytes pass, in place; a partial head waits in the stash
//!                       |  bad head: hyper gets the bytes before it, finishes the requests it
//!                       |            has, and closes; then the guard writes the 400 itself
//!                       |  bad chunk: hyper sees the body end early; the request's own
//!                       |            response (400 body:framing, Connection: close) says so
//! ```
//!
//! Not guarded: HTTP/2 (the prior-knowledge preface, or ALPN `h2`), which has no such framing,
//! and a head larger than the limit, which hyper refuses itself (431). Upgrade and CONNECT
//! requests are guarded like the others: the proxy removes `Upgrade` and opens no tunnels, so
//! it never answers 101 and hyper reads what follows as HTTP; passing it through would let one
//! header switch the guard off.

use std::{
    future::Future as _,
    io,
    mem::MaybeUninit,
    pin::Pin,
    task::{ready, Context, Poll},
    time::Duration,
};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// Hex digits of a chunk size, leading zeros included: a `u64`.
const MAX_SIZE_DIGITS: u8 = 16;
/// Bytes of chunk extensions on one size line.
const MAX_CHUNK_EXT: u16 = 1024;
/// Header slots on the stack; heads with more are parsed again with `max_headers` slots.
const STACK_HEADERS: usize = 64;
/// hyper's read buffer is used directly when it has at least this much room (it is smaller
/// only while hyper sniffs for the HTTP/2 preface).
const MIN_DIRECT: usize = 512;
/// How much the stash grows by when it is read into.
const STASH_READ: usize = 8192;
/// After the 400, how long and how much of what the client still sends is read and dropped,
/// so closing with unread data does not reset the connection before the client reads it.
const LINGER: Duration = Duration::from_secs(1);
const LINGER_BYTES: usize = 64 << 10;

/// What is wrong with a request's framing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Problem {
    TeAndCl,
    DuplicateCl,
    BadCl,
    BadTe,
    TeInHttp10,
    BareLf,
    /// RFC 9112 section 3.2: one Host, or the target is ambiguous.
    DuplicateHost,
    /// RFC 9112 section 3.2: an HTTP/1.1 request must have a Host.
    MissingHost,
    /// What `httparse` said.
    BadHead(&'static str),
    /// What is wrong with the chunk.
    BadChunk(&'static str),
}

impl Problem {
    /// A short stable name, for metrics and the audit rule (`framing:NAME`).
    pub fn name(self) -> &'static str {
        match self {
            Problem::TeAndCl => "te_and_cl",
            Problem::DuplicateCl => "duplicate_content_length",
            Problem::BadCl => "bad_content_length",
            Problem::BadTe | Problem::TeInHttp10 => "bad_transfer_encoding",
            Problem::BareLf => "bare_lf",
            Problem::DuplicateHost => "duplicate_host",
            Problem::MissingHost => "missing_host",
            Problem::BadHead(_) => "bad_head",
            Problem::BadChunk(_) => "bad_chunk",
        }
    }

    /// For the client.
    pub fn message(self) -> String {
        match self {
            Problem::TeAndCl => "the request has both Transfer-Encoding and Content-Length".into(),
            Problem::DuplicateCl => "the request has more than one Content-Length".into(),
            Problem::BadCl => "Content-Length is not a plain decimal number".into(),
            Problem::BadTe => "Transfer-Encoding must be exactly one `chunked`".into(),
            Problem::TeInHttp10 => "Transfer-Encoding is not allowed in HTTP/1.0".into(),
            Problem::BareLf => "a line of the request ends in a bare LF".into(),
            Problem::DuplicateHost => "the request has more than one Host".into(),
            Problem::MissingHost => "an HTTP/1.1 request must have a Host".into(),
            Problem::BadHead(what) => format!("invalid request head: {what}"),
            Problem::BadChunk(what) => format!("invalid chunked body: {what}"),
        }
    }
}

/// A refused request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    pub problem: Problem,
    /// Found in a chunked body, after hyper got the head: the request's own response tells
    /// the client.
    pub in_body: bool,
    /// The refused head's method and target, when they could be parsed (for the audit log).
    pub method: Option<String>,
    pub target: Option<String>,
}

/// What [`Scanner::scan`] found in the bytes it was given.
#[derive(Debug, PartialEq, Eq)]
pub enum Scan {
    /// The first `n` bytes may go to hyper. Any bytes after them are the start of a head that
    /// is not complete yet: give them again, with what follows, to the next call.
    Pass(usize),
    /// The first `n` bytes may go to hyper; what follows is refused.
    Bad(usize, Violation),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// The connection's first bytes: maybe the HTTP/2 preface.
    Start,
    Head,
    /// Content-Length bytes left.
    Length(u64),
    Size {
        value: u64,
        digits: u8,
    },
    Ext {
        value: u64,
        len: u16,
    },
    SizeLf {
        value: u64,
    },
    /// Chunk data bytes left.
    Data(u64),
    DataCr,
    DataLf,
    /// The start of a trailer line, or of the final CRLF.
    TrailerStart,
    TrailerName,
    TrailerValue,
    TrailerLf,
    EndLf,
    /// Not HTTP/1 framing any more (HTTP/2, or a head hyper will refuse itself).
    Pass,
}

/// The sans-IO part of the guard: follows HTTP/1 request framing over a byte stream.
#[derive(Debug)]
pub struct Scanner {
    state: State,
    /// Longest head (and trailer section) checked; longer ones are left to hyper (431).
    max_head: usize,
    /// Header slots for heads with more than [`STACK_HEADERS`]; more than that is hyper's
    /// business (431).
    max_headers: usize,
    trailer_bytes: usize,
    /// Request heads passed.
    requests: u64,
}

impl Scanner {
    pub fn new(max_head: usize, max_headers: usize) -> Scanner {
        Scanner {
            state: State::Start,
            max_head,
            max_headers,
            trailer_bytes: 0,
            requests: 0,
        }
    }

    /// Request heads passed so far.
    pub fn requests(&self) -> u64 {
        self.requests
    }

    /// Whether the stream is no longer checked.
    pub fn passing(&self) -> bool {
        self.state == State::Pass
    }

    /// Checks `buf`, the bytes that follow those passed so far (after a [`Scan::Pass`] that
    /// left a partial head, starting with that head again).
    pub fn scan(&mut self, buf: &[u8]) -> Scan {
        let mut at = 0;
        while at < buf.len() {
            match self.state {
                State::Pass => return Scan::Pass(buf.len()),
                State::Start => {
                    let n = buf.len().min(H2_PREFACE.len());
                    if buf[..n] != H2_PREFACE[..n] {
                        self.state = State::Head;
                    } else if n < H2_PREFACE.len() {
                        return Scan::Pass(at);
                    } else {
                        self.state = State::Pass;
                    }
                }
                State::Head => match self.head(&buf[at..]) {
                    Ok(Head::Complete(n)) => at += n,
                    Ok(Head::Partial) if buf.len() - at <= self.max_head => return Scan::Pass(at),
                    Ok(Head::Partial | Head::HandOver) => {
                        self.state = State::Pass;
                        return Scan::Pass(buf.len());
                    }
                    Err(v) => return Scan::Bad(at, v),
                },
                State::Length(left) | State::Data(left) => {
                    let n = left.min((buf.len() - at) as u64);
                    at += n as usize;
                    self.state = match (self.state, left - n) {
                        (State::Length(_), 0) => State::Head,
                        (State::Length(_), rest) => State::Length(rest),
                        (_, 0) => State::DataCr,
                        (_, rest) => State::Data(rest),
                    };
                }
                _ => match self.chunk_byte(buf[at]) {
                    Ok(()) => at += 1,
                    Err(problem) => {
                        let v = Violation {
                            problem,
                            in_body: true,
                            method: None,
                            target: None,
                        };
                        return Scan::Bad(at, v);
                    }
                },
            }
        }
        Scan::Pass(buf.len())
    }

    fn head(&mut self, buf: &[u8]) -> Result<Head, Violation> {
        let mut slots = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; STACK_HEADERS];
        let mut req = httparse::Request::new(&mut []);
        match req.parse_with_uninit_headers(buf, &mut slots) {
            Ok(httparse::Status::Complete(n)) => {
                self.frame(&req, &buf[..n]).map(|()| Head::Complete(n))
            }
            Ok(httparse::Status::Partial) => Ok(Head::Partial),
            Err(httparse::Error::TooManyHeaders) => {
                // Rare: the slots the config allows, on the heap.
                let mut slots = vec![httparse::EMPTY_HEADER; self.max_headers];
                let mut req = httparse::Request::new(&mut slots);
                match req.parse(buf) {
                    Ok(httparse::Status::Complete(n)) => {
                        self.frame(&req, &buf[..n]).map(|()| Head::Complete(n))
                    }
                    Ok(httparse::Status::Partial) => Ok(Head::Partial),
                    Err(httparse::Error::TooManyHeaders) => Ok(Head::HandOver),
                    Err(e) => Err(bad_head(&req, Problem::BadHead(describe(e)))),
                }
            }
            Err(e) => Err(bad_head(&req, Problem::BadHead(describe(e)))),
        }
    }

    /// Checks a complete head and sets the state for its body.
    fn frame(&mut self, req: &httparse::Request<'_, '_>, head: &[u8]) -> Result<(), Violation> {
        // httparse takes a bare LF for a line end; other servers may not.
        let mut prev = 0u8;
        for &b in head {
            if b == b'\n' && prev != b'\r' {
                return Err(bad_head(req, Problem::BareLf));
            }
            prev = b;
        }
        let (mut lengths, mut codings, mut chunked, mut hosts) = (0u32, 0u32, true, 0u32);
        let mut length = Some(0u64);
        for h in req.headers.iter() {
            if h.name.eq_ignore_ascii_case("content-length") {
                lengths += 1;
                length = decimal(h.value.trim_ascii());
            } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
                codings += 1;
                chunked &= h.value.trim_ascii().eq_ignore_ascii_case(b"chunked");
            } else if h.name.eq_ignore_ascii_case("host") {
                hosts += 1;
            }
        }
        let problem = if hosts > 1 {
            Some(Problem::DuplicateHost)
        } else if lengths > 0 && codings > 0 {
            Some(Problem::TeAndCl)
        } else if lengths > 1 {
            Some(Problem::DuplicateCl)
        } else if codings > 0 && req.version == Some(0) {
            Some(Problem::TeInHttp10)
        } else if codings > 1 || !chunked {
            Some(Problem::BadTe)
        } else if length.is_none() {
            Some(Problem::BadCl)
        } else if hosts == 0 && req.version == Some(1) {
            Some(Problem::MissingHost)
        } else {
            None
        };
        if let Some(p) = problem {
            return Err(bad_head(req, p));
        }
        self.requests += 1;
        self.state = match (codings, length) {
            (1, _) => {
                self.trailer_bytes = 0;
                State::Size {
                    value: 0,
                    digits: 0,
                }
            }
            (_, Some(n)) if n > 0 => State::Length(n),
            _ => State::Head,
        };
        Ok(())
    }

    /// One byte of chunk framing (size lines, the CRLF after data, trailers).
    fn chunk_byte(&mut self, b: u8) -> Result<(), Problem> {
        let bad = Problem::BadChunk;
        let text = |b: u8| b == b'\t' || (b' '..=b'~').contains(&b) || b >= 0x80;
        if matches!(
            self.state,
            State::TrailerStart | State::TrailerName | State::TrailerValue | State::TrailerLf
        ) {
            self.trailer_bytes += 1;
            if self.trailer_bytes > self.max_head {
                return Err(bad("the trailer section is too large"));
            }
        }
        self.state = match (self.state, b) {
            (
                State::Size { .. }
                | State::Ext { .. }
                | State::DataCr
                | State::TrailerStart
                | State::TrailerName
                | State::TrailerValue,
                b'\n',
            ) => return Err(Problem::BareLf),
            (State::Size { value, digits }, _) if b.is_ascii_hexdigit() => {
                if digits == MAX_SIZE_DIGITS {
                    return Err(bad("the chunk size has too many digits"));
                }
                let d = (b as char).to_digit(16).unwrap_or_default() as u64;
                State::Size {
                    value: value << 4 | d,
                    digits: digits + 1,
                }
            }
            (State::Size { value, digits }, b';') if digits > 0 => State::Ext { value, len: 0 },
            (State::Size { value, digits }, b'\r') if digits > 0 => State::SizeLf { value },
            (State::Size { .. }, _) => return Err(bad("the chunk size is not hex digits")),
            (State::Ext { value, .. }, b'\r') => State::SizeLf { value },
            (State::Ext { value, len }, _) if text(b) => {
                if len >= MAX_CHUNK_EXT {
                    return Err(bad("the chunk extensions are too long"));
                }
                State::Ext {
                    value,
                    len: len + 1,
                }
            }
            (State::Ext { .. }, _) => return Err(bad("invalid byte in a chunk extension")),
            (State::SizeLf { value: 0 }, b'\n') => State::TrailerStart,
            (State::SizeLf { value }, b'\n') => State::Data(value),
            (State::SizeLf { .. }, _) => return Err(bad("a bare CR after the chunk size")),
            (State::DataCr, b'\r') => State::DataLf,
            (State::DataCr, _) => return Err(bad("chunk data longer than its size")),
            (State::DataLf, b'\n') => State::Size {
                value: 0,
                digits: 0,
            },
            (State::DataLf, _) => return Err(bad("a bare CR after chunk data")),
            (State::TrailerStart, b'\r') => State::EndLf,
            (State::TrailerStart | State::TrailerName, _) if is_tchar(b) => State::TrailerName,
            (State::TrailerName, b':') => State::TrailerValue,
            (State::TrailerStart | State::TrailerName, _) => {
                return Err(bad("invalid trailer field name"))
            }
            (State::TrailerValue, b'\r') => State::TrailerLf,
            (State::TrailerValue, _) if text(b) => State::TrailerValue,
            (State::TrailerValue, _) => return Err(bad("invalid byte in a trailer field")),
            (State::TrailerLf, b'\n') => State::TrailerStart,
            (State::TrailerLf, _) => return Err(bad("a bare CR in the trailer section")),
            (State::EndLf, b'\n') => State::Head,
            (State::EndLf, _) => return Err(bad("a bare CR at the end of the body")),
            (State::Start | State::Head | State::Length(_) | State::Data(_) | State::Pass, _) => {
                unreachable!("not chunk framing")
            }
        };
        Ok(())
    }
}

enum Head {
    Complete(usize),
    Partial,
    /// Too many headers even for the config's limit: hyper refuses it.
    HandOver,
}

fn describe(e: httparse::Error) -> &'static str {
    match e {
        httparse::Error::HeaderName => "invalid header name",
        httparse::Error::HeaderValue => "invalid header value",
        httparse::Error::NewLine => "invalid line end",
        httparse::Error::Status => "invalid status",
        httparse::Error::Token => "invalid request line",
        httparse::Error::TooManyHeaders => "too many headers",
        httparse::Error::Version => "invalid HTTP version",
    }
}

fn bad_head(req: &httparse::Request<'_, '_>, problem: Problem) -> Violation {
    let cut = |s: &str| s.chars().take(256).collect::<String>();
    Violation {
        problem,
        in_body: false,
        method: req.method.map(cut),
        target: req.path.map(cut),
    }
}

/// A Content-Length: 1 to 19 ASCII digits (no sign, no spaces, no list).
fn decimal(v: &[u8]) -> Option<u64> {
    if v.is_empty() || v.len() > 19 || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(v.iter().fold(0u64, |n, d| n * 10 + u64::from(d - b'0')))
}

/// RFC 9110 `tchar`.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// What the guard's owner does about a refused request.
pub trait Trip {
    /// A request was refused: count it, and say what to write to the client before closing
    /// (`None` when the violation is in a body, whose request gets its own response).
    fn tripped(&mut self, v: &Violation) -> Option<Vec<u8>>;
    /// hyper has every byte before the refused head: let the connection finish the requests it
    /// has and close (a graceful shutdown).
    fn drained(&mut self);
}

/// The client's stream as hyper reads it, with the framing checked; see the module docs.
pub struct Guard<S, T> {
    inner: S,
    scanner: Scanner,
    trip: T,
    /// Bytes read but not yet given to hyper: `stash[start..approved]` may go, the rest is a
    /// head not complete yet.
    stash: Vec<u8>,
    start: usize,
    approved: usize,
    tripped: Option<Tripped>,
    /// hyper's header read timeout, kept for a head held here: while the first head is
    /// held, hyper has not started its own timer (it is still looking for the HTTP/2 preface).
    header_timeout: Duration,
    /// Runs while a partial head is held.
    head_timer: Option<Pin<Box<tokio::time::Sleep>>>,
    head_timer_armed: bool,
}

struct Tripped {
    /// Give hyper end of file: it is between requests (none passed yet), or in the refused
    /// request's body.
    eof: bool,
    notified: bool,
    answer: Option<Vec<u8>>,
    written: usize,
    /// The lingering close after the answer.
    linger: Option<Pin<Box<tokio::time::Sleep>>>,
    discarded: usize,
}

impl<S, T> Guard<S, T> {
    /// A guard checking HTTP/1 framing; `max_head` and `max_headers` as hyper's limits.
    pub fn new(
        inner: S,
        max_head: usize,
        max_headers: usize,
        header_timeout: Duration,
        trip: T,
    ) -> Guard<S, T> {
        Guard {
            header_timeout,
            head_timer: None,
            head_timer_armed: false,
            inner,
            scanner: Scanner::new(max_head, max_headers),
            trip,
            stash: Vec::new(),
            start: 0,
            approved: 0,
            tripped: None,
        }
    }

    /// A guard that checks nothing (HTTP/2 negotiated by ALPN).
    pub fn passthrough(inner: S, trip: T) -> Guard<S, T> {
        let mut g = Guard::new(inner, 0, 0, Duration::MAX, trip);
        g.scanner.state = State::Pass;
        g
    }
}

impl<S, T: Trip> Guard<S, T> {
    /// Whether the head held now has been waited for longer than the header read timeout.
    fn head_timed_out(&mut self, cx: &mut Context<'_>) -> bool {
        let deadline = tokio::time::Instant::now() + self.header_timeout;
        if !self.head_timer_armed {
            self.head_timer_armed = true;
            match self.head_timer.as_mut() {
                Some(t) => t.as_mut().reset(deadline),
                None => self.head_timer = Some(Box::pin(tokio::time::sleep_until(deadline))),
            }
        }
        self.head_timer
            .as_mut()
            .is_some_and(|t| t.as_mut().poll(cx).is_ready())
    }

    fn trip_on(&mut self, v: Violation) {
        let answer = self.trip.tripped(&v);
        self.tripped = Some(Tripped {
            eof: v.in_body || self.scanner.requests() == 0,
            notified: false,
            answer,
            written: 0,
            linger: None,
            discarded: 0,
        });
    }
}

impl<S: AsyncRead + Unpin, T: Trip + Unpin> AsyncRead for Guard<S, T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        loop {
            if this.start < this.approved {
                let n = (this.approved - this.start).min(buf.remaining());
                buf.put_slice(&this.stash[this.start..this.start + n]);
                this.start += n;
                if this.start == this.stash.len() {
                    this.stash.clear();
                    (this.start, this.approved) = (0, 0);
                }
                return Poll::Ready(Ok(()));
            }
            if let Some(t) = &mut this.tripped {
                if t.eof {
                    return Poll::Ready(Ok(()));
                }
                if !t.notified {
                    t.notified = true;
                    this.trip.drained();
                }
                // The owner shuts the connection down gracefully; nothing more comes.
                return Poll::Pending;
            }
            let held = this.stash.len() - this.approved;
            if this.scanner.passing() && held == 0 {
                return Pin::new(&mut this.inner).poll_read(cx, buf);
            }
            if held > 0 || buf.remaining() < MIN_DIRECT {
                // Into the stash: a head is being completed, or hyper's buffer is small.
                if this.stash.capacity() - this.stash.len() < STASH_READ {
                    this.stash.reserve(STASH_READ);
                }
                let len = this.stash.len();
                let mut rb = ReadBuf::uninit(this.stash.spare_capacity_mut());
                if Pin::new(&mut this.inner)
                    .poll_read(cx, &mut rb)?
                    .is_pending()
                {
                    if held > 0 && this.head_timed_out(cx) {
                        return Poll::Ready(Err(io::ErrorKind::TimedOut.into()));
                    }
                    return Poll::Pending;
                }
                let n = rb.filled().len();
                if n == 0 {
                    // End of file; a partial head is dropped.
                    this.stash.clear();
                    (this.start, this.approved) = (0, 0);
                    return Poll::Ready(Ok(()));
                }
                // SAFETY: the read initialized these `n` bytes of spare capacity.
                unsafe { this.stash.set_len(len + n) };
                match this.scanner.scan(&this.stash[this.approved..]) {
                    Scan::Pass(k) => {
                        this.approved += k;
                        if this.approved == this.stash.len() {
                            this.head_timer_armed = false;
                        }
                    }
                    Scan::Bad(k, v) => {
                        this.approved += k;
                        this.stash.truncate(this.approved);
                        this.trip_on(v);
                    }
                }
                continue;
            }
            // Straight into hyper's buffer, checked in place.
            let before = buf.filled().len();
            ready!(Pin::new(&mut this.inner).poll_read(cx, buf))?;
            let filled = buf.filled().len();
            if filled == before {
                return Poll::Ready(Ok(()));
            }
            let (k, violation) = match this.scanner.scan(&buf.filled()[before..]) {
                Scan::Pass(k) => (k, None),
                Scan::Bad(k, v) => (k, Some(v)),
            };
            if before + k < filled {
                if violation.is_none() {
                    this.stash.extend_from_slice(&buf.filled()[before + k..]);
                }
                buf.set_filled(before + k);
            }
            if let Some(v) = violation {
                this.trip_on(v);
            }
            if k > 0 {
                return Poll::Ready(Ok(()));
            }
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin, T: Unpin> AsyncWrite for Guard<S, T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    /// hyper is done: after a refused head, the 400 goes out first, then the close, then a
    /// short lingering read.
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let Some(t) = this.tripped.as_mut().filter(|t| t.answer.is_some()) else {
            return Pin::new(&mut this.inner).poll_shutdown(cx);
        };
        if let Some(answer) = &t.answer {
            while t.written < answer.len() {
                let n = ready!(Pin::new(&mut this.inner).poll_write(cx, &answer[t.written..]))?;
                if n == 0 {
                    return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
                }
                t.written += n;
            }
        }
        if t.linger.is_none() {
            ready!(Pin::new(&mut this.inner).poll_flush(cx))?;
            ready!(Pin::new(&mut this.inner).poll_shutdown(cx))?;
            t.linger = Some(Box::pin(tokio::time::sleep(LINGER)));
        }
        let mut scratch = [0u8; 4096];
        loop {
            if t.discarded >= LINGER_BYTES {
                return Poll::Ready(Ok(()));
            }
            if let Some(l) = t.linger.as_mut() {
                if l.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(Ok(()));
                }
            }
            let mut rb = ReadBuf::new(&mut scratch);
            match ready!(Pin::new(&mut this.inner).poll_read(cx, &mut rb)) {
                Ok(()) if !rb.filled().is_empty() => t.discarded += rb.filled().len(),
                _ => return Poll::Ready(Ok(())),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAX: usize = 16 << 10;

    /// Feeds `input` in pieces ending at `cuts`, as the guard does: held bytes are given again
    /// with the next piece. Returns the bytes passed and the violation, if any.
    fn feed(input: &[u8], cuts: &[usize]) -> (usize, Option<Violation>) {
        let mut s = Scanner::new(MAX, 100);
        let (mut passed, mut held_from) = (0usize, 0usize);
        let mut ends: Vec<usize> = cuts.to_vec();
        ends.push(input.len());
        for end in ends {
            if end < held_from {
                continue;
            }
            match s.scan(&input[held_from..end]) {
                Scan::Pass(n) => {
                    passed = held_from + n;
                    held_from = passed;
                }
                Scan::Bad(n, v) => return (held_from + n, Some(v)),
            }
        }
        (passed, None)
    }

    /// The result in one piece, checked to be the same in every split in two and three
    /// pieces, and one byte at a time.
    fn check(input: &[u8]) -> (usize, Option<Problem>) {
        let whole = feed(input, &[]);
        for i in 0..=input.len() {
            assert_eq!(feed(input, &[i]), whole, "split at {i}");
        }
        if input.len() < 200 {
            for i in 0..=input.len() {
                for j in i..=input.len() {
                    assert_eq!(feed(input, &[i, j]), whole, "split at {i}, {j}");
                }
            }
        }
        let bytes: Vec<usize> = (1..input.len()).collect();
        assert_eq!(feed(input, &bytes), whole, "one byte at a time");
        (whole.0, whole.1.map(|v| v.problem))
    }

    fn ok(input: &[u8]) {
        assert_eq!(
            check(input),
            (input.len(), None),
            "{}",
            input.escape_ascii()
        );
    }

    /// Refused, with the bytes before the bad request passed.
    fn refused(input: &[u8], passed: usize, problem: Problem) {
        assert_eq!(
            check(input),
            (passed, Some(problem)),
            "{}",
            input.escape_ascii()
        );
    }

    const GET: &[u8] = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n";

    #[test]
    fn good_requests_pass_whatever_the_split() {
        ok(GET);
        ok(b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhelloGET / HTTP/1.1\r\nHost: a\r\n\r\n");
        ok(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\nA;ext=1;q=\"x y\"\r\n0123456789\r\n0\r\n\r\n");
        ok(b"POST / HTTP/1.1\r\nHost: a\r\ntransfer-encoding:  Chunked \r\n\r\n0\r\nX-Sum: 1\r\nY: \r\n\r\nGET / HTTP/1.0\r\n\r\n");
        ok(b"\r\nGET / HTTP/1.1\r\nHost: a\r\nContent-Length: 000\r\n\r\n");
        ok(b"CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\n\r\n");
        // The HTTP/2 preface: not checked from there on.
        ok(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00");
    }

    #[test]
    fn partial_heads_are_held() {
        let mut s = Scanner::new(MAX, 100);
        assert_eq!(s.scan(b"GET / HTTP/1.1\r\nHost: a\r\nHo"), Scan::Pass(0));
        assert_eq!(
            s.scan(b"GET / HTTP/1.1\r\nHost: a\r\n\r\nPOS"),
            Scan::Pass(27)
        );
        assert_eq!(s.requests(), 1);
        // Larger than the limit: hyper's to refuse.
        let mut s = Scanner::new(64, 100);
        let big = [&b"GET / HTTP/1.1\r\nHost: a\r\nX: "[..], &[b'a'; 100]].concat();
        assert_eq!(s.scan(&big), Scan::Pass(big.len()));
        assert!(s.passing());
    }

    #[test]
    fn conflicting_lengths_are_refused() {
        let te_cl =
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n";
        refused(te_cl, 0, Problem::TeAndCl);
        let cl_te = b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n";
        refused(cl_te, 0, Problem::TeAndCl);
        let two =
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nContent-Length: 4\r\n\r\nabcd";
        refused(two, 0, Problem::DuplicateCl);
        for cl in ["+4", "-1", "4, 4", "0x4", "4 4", "", "99999999999999999999"] {
            let req = format!("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: {cl}\r\n\r\n");
            refused(req.as_bytes(), 0, Problem::BadCl);
        }
        // After a good request: it passes, the bad one does not.
        let piped = [GET, &te_cl[..]].concat();
        refused(&piped, GET.len(), Problem::TeAndCl);
    }

    #[test]
    fn transfer_encodings_other_than_chunked_are_refused() {
        for te in [
            "chunked, chunked",
            "xchunked",
            "chunked;x",
            "identity",
            "gzip, chunked",
            "chunked\x0b",
        ] {
            let req =
                format!("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: {te}\r\n\r\n0\r\n\r\n");
            let (_, p) = check(req.as_bytes());
            assert!(
                matches!(p, Some(Problem::BadTe | Problem::BadHead(_))),
                "{te:?}: {p:?}"
            );
        }
        let two =
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n";
        refused(two, 0, Problem::BadTe);
        let old = b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n";
        refused(old, 0, Problem::TeInHttp10);
    }

    #[test]
    fn malformed_heads_are_refused() {
        let bad = |req: &[u8]| {
            let (n, p) = check(req);
            assert_eq!(n, 0, "{}", req.escape_ascii());
            assert!(
                matches!(p, Some(Problem::BadHead(_) | Problem::BareLf)),
                "{}: {p:?}",
                req.escape_ascii()
            );
        };
        // Bare LF line ends (which httparse itself accepts).
        bad(b"GET / HTTP/1.1\nHost: a\n\n");
        bad(b"GET / HTTP/1.1\r\nHost: a\n\r\n");
        bad(b"\nGET / HTTP/1.1\r\nHost: a\r\n\r\n");
        // obs-fold, whitespace before the colon, bare CR.
        bad(b"GET / HTTP/1.1\r\nHost: a\r\nX: a\r\n b\r\n\r\n");
        bad(b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length : 5\r\n\r\n");
        bad(b"GET / HTTP/1.1\r\nHost: a\r\nX: a\rb\r\n\r\n");
        bad(b"GET / HTTP/1.1\r\nHost: a\r\n Transfer-Encoding: chunked\r\n\r\n");
        // Request lines.
        bad(b"GET  / HTTP/1.1\r\nHost: a\r\n\r\n");
        bad(b"GET / HTTP/1.2\r\n\r\n");
        bad(b"GET /\r\n\r\n");
        bad(b"G(T / HTTP/1.1\r\nHost: a\r\n\r\n");
        bad(b"GET / HTTP/2.0\r\n\r\n");
        let (_, p) = check(b"GET / HTTP/1.1\r\nHost: a\r\nX: a\n\r\n");
        assert_eq!(p, Some(Problem::BareLf));
        refused(
            b"GET / HTTP/1.1\r\nHost: a\r\nhost: b\r\n\r\n",
            0,
            Problem::DuplicateHost,
        );
        // HTTP/1.1 needs a Host (absolute form too); HTTP/1.0 does not.
        refused(b"GET / HTTP/1.1\r\n\r\n", 0, Problem::MissingHost);
        refused(
            b"GET http://a/ HTTP/1.1\r\nX-Host: a\r\n\r\n",
            0,
            Problem::MissingHost,
        );
        refused(
            b"GET / HTTP/1.1\r\nHost: a\r\n\r\nGET /b HTTP/1.1\r\n\r\n",
            GET.len(),
            Problem::MissingHost,
        );
        ok(b"GET / HTTP/1.0\r\n\r\n");
    }

    #[test]
    fn bad_chunks_are_refused_where_they_start() {
        let head = b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n";
        let at = |body: &[u8], bad_at: usize| {
            let req = [&head[..], body].concat();
            let (n, p) = check(&req);
            assert_eq!(n, head.len() + bad_at, "{}", body.escape_ascii());
            assert!(
                matches!(p, Some(Problem::BadChunk(_) | Problem::BareLf)),
                "{}: {p:?}",
                body.escape_ascii()
            );
        };
        at(b"zz\r\n", 0);
        at(b"-5\r\nhello\r\n0\r\n\r\n", 0);
        at(b"+5\r\nhello\r\n0\r\n\r\n", 0);
        at(b"0x5\r\nhello\r\n0\r\n\r\n", 1);
        at(b"5 \r\nhello\r\n0\r\n\r\n", 1);
        at(b"\r\n", 0);
        at(b"00000000000000005\r\nhello\r\n0\r\n\r\n", 16);
        at(b"5\nhello\r\n0\r\n\r\n", 1);
        at(b"5\r\nhello\n0\r\n\r\n", 8);
        at(b"5\r\nhelloXX\r\n0\r\n\r\n", 8);
        at(b"5\r\nhello\r\n0\r\n\n", 13);
        at(b"5\r\nhello\r\n0\r\nX\r\n\r\n", 14);
        at(b"5\r\nhello\r\n0\r\n X: a\r\n\r\n", 13);
        at(b"5;a\x01\r\nhello\r\n0\r\n\r\n", 3);
        let long_ext = [&b"5;"[..], &[b'a'; 1100], b"\r\n"].concat();
        at(&long_ext, 2 + MAX_CHUNK_EXT as usize);
        // A smuggled request in the body of a chunk that says 0 is refused at its first byte.
        at(b"0\r\nGET /admin HTTP/1.1\r\nHost: a\r\n\r\n", 6);
    }

    #[test]
    fn bodies_are_followed_to_the_next_head() {
        // The body looks like a bad request; it is data, not a head.
        let body = b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\n";
        let req = [
            format!(
                "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: {}\r\n\r\n",
                body.len()
            )
            .as_bytes(),
            body,
            GET,
        ]
        .concat();
        ok(&req);
        let chunked = [
            &b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"[..],
            format!("{:x}\r\n", body.len()).as_bytes(),
            body,
            b"\r\n0\r\n\r\n",
            GET,
        ]
        .concat();
        ok(&chunked);
    }

    /// A stream that gives its chunks one read at a time (cut to the reader's buffer), then
    /// end of file; it keeps what is written.
    #[derive(Default)]
    struct Mock {
        chunks: std::collections::VecDeque<Vec<u8>>,
        written: Vec<u8>,
        shut: bool,
    }

    impl AsyncRead for Mock {
        fn poll_read(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            if let Some(c) = self.chunks.pop_front() {
                let n = c.len().min(buf.remaining());
                buf.put_slice(&c[..n]);
                if n < c.len() {
                    self.chunks.push_front(c[n..].to_vec());
                }
            }
            Poll::Ready(Ok(()))
        }
    }

    impl AsyncWrite for Mock {
        fn poll_write(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            self.written.extend_from_slice(buf);
            Poll::Ready(Ok(buf.len()))
        }

        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }

        fn poll_shutdown(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            self.shut = true;
            Poll::Ready(Ok(()))
        }
    }

    #[derive(Default)]
    struct Log {
        tripped: Vec<Problem>,
        drained: u32,
    }

    #[derive(Clone, Default)]
    struct Shared(std::sync::Arc<std::sync::Mutex<Log>>);

    impl Trip for Shared {
        fn tripped(&mut self, v: &Violation) -> Option<Vec<u8>> {
            self.0.lock().unwrap().tripped.push(v.problem);
            (!v.in_body).then(|| b"ANSWER".to_vec())
        }

        fn drained(&mut self) {
            self.0.lock().unwrap().drained += 1;
        }
    }

    /// Reads through a guard as hyper does (a small first buffer, then large ones) until end
    /// of file or a read that waits; returns what hyper got, whether it got end of file, what
    /// the guard wrote at shutdown, and the trips.
    async fn through_guard(chunks: &[&[u8]]) -> (Vec<u8>, bool, Vec<u8>, Log) {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let mock = Mock {
            chunks: chunks.iter().map(|c| c.to_vec()).collect(),
            ..Mock::default()
        };
        let log = Shared::default();
        let mut g = Guard::new(mock, MAX, 100, Duration::from_secs(10), log.clone());
        let mut got = Vec::new();
        let mut size = 24;
        let eof = loop {
            let mut buf = vec![0u8; size];
            size = 8192;
            match tokio::time::timeout(Duration::from_millis(20), g.read(&mut buf)).await {
                Ok(Ok(0)) => break true,
                Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
                Ok(Err(e)) => panic!("{e}"),
                Err(_) => break false,
            }
        };
        g.shutdown().await.unwrap();
        assert!(g.inner.shut);
        let written = std::mem::take(&mut g.inner.written);
        let log = std::mem::take(&mut *log.0.lock().unwrap());
        (got, eof, written, log)
    }

    #[tokio::test]
    async fn the_guard_passes_good_bytes_and_answers_after_them() {
        let bad = b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n";
        let stream = [GET, GET, &bad[..]].concat();
        for cut in [1, 10, 30, 54, 60, stream.len()] {
            let (a, b) = stream.split_at(cut);
            let (got, eof, written, log) = through_guard(&[a, b]).await;
            assert_eq!(got, [GET, GET].concat(), "cut at {cut}");
            // Requests passed: the owner is asked to finish them; hyper is not given EOF.
            assert!(!eof);
            assert_eq!((log.tripped, log.drained), (vec![Problem::TeAndCl], 1));
            assert_eq!(written, b"ANSWER");
        }
        // A bad first request: end of file at once, the answer at shutdown.
        let (got, eof, written, log) = through_guard(&[bad]).await;
        assert!(got.is_empty() && eof);
        assert_eq!((log.tripped, log.drained), (vec![Problem::TeAndCl], 0));
        assert_eq!(written, b"ANSWER");
        // A bad chunk: the body is cut there, nothing is written by the guard.
        let chunked =
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\nzz\r\n";
        let (got, eof, written, log) = through_guard(&[&chunked[..50], &chunked[50..]]).await;
        assert_eq!(got, &chunked[..chunked.len() - 4]);
        assert!(eof && written.is_empty());
        assert_eq!(
            log.tripped,
            vec![Problem::BadChunk("the chunk size is not hex digits")]
        );
        // All good, in pieces: everything passes, then end of file.
        let one_by_one: Vec<&[u8]> = stream[..GET.len() * 2].chunks(1).collect();
        let (got, eof, written, log) = through_guard(&one_by_one).await;
        assert_eq!(got, [GET, GET].concat());
        assert!(eof && written.is_empty() && log.tripped.is_empty());
        // HTTP/2: passed as it is.
        let h2 = [
            H2_PREFACE,
            b"\x00\x00\x00\x04\x00\x00\x00\x00\x00GET / HTTP/1.1\n\n",
        ]
        .concat();
        let (got, ..) = through_guard(&[&h2[..5], &h2[5..]]).await;
        assert_eq!(got, h2);
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(
            data in proptest::collection::vec(proptest::num::u8::ANY, 0..512),
            cuts in proptest::collection::vec(0usize..512, 0..6),
        ) {
            let mut cuts = cuts;
            cuts.iter_mut().for_each(|c| *c = (*c).min(data.len()));
            cuts.sort_unstable();
            let (n, _) = feed(&data, &cuts);
            proptest::prop_assert!(n <= data.len());
        }

        #[test]
        fn framed_requests_never_panic(
            prefix in proptest::sample::select(vec![
                &b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"[..],
                &b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 7\r\n\r\n"[..],
                &b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"[..],
            ]),
            data in proptest::collection::vec(proptest::sample::select(
                b"0123456789abcdefABCDEFxX;=\" \t\r\n:GET/HTTP1.\x00\xff".to_vec()), 0..256),
            cut in 0usize..300,
        ) {
            let input = [prefix, &data[..]].concat();
            let whole = feed(&input, &[]);
            proptest::prop_assert_eq!(feed(&input, &[cut.min(input.len())]), whole);
        }
    }
}
