//! The client side of the fast path: reads plain HTTP/1.1 requests, runs each through the proxy
//! and writes the response, on the connection's own task.
//!
//! It takes a request only when it is sure of its framing: HTTP/1.1 in origin form, CRLF line
//! ends, no Transfer-Encoding, Expect or Upgrade, exactly one Host, at most one plain decimal
//! Content-Length of at most [`MAX_BODY`] bytes. At the first request it does not take (and the ones it cannot
//! even parse), it hands the connection, with every byte it has read and not used, to hyper
//! and the framing guard, which answer it exactly as they would have from the start.

use std::{
    future::Future,
    pin::Pin,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    task::{Context, Poll},
};

use bytes::{Bytes, BytesMut};
use http_body_util::BodyExt as _;
use hyper::{
    body::Body,
    header::{self, HeaderName},
    Method, Request, Response, StatusCode, Uri, Version,
};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt as _};

use super::{date, has_token, put, read_buf};
use crate::proxy::{
    server::{ConnInfo, Shared},
    Finishing, RequestBody,
};

/// The largest request body the fast path reads before handling the request (as nginx
/// buffers request bodies); longer ones go through hyper, streaming.
pub const MAX_BODY: usize = 64 * 1024;
/// Header slots on the stack; requests with more go to hyper.
const HEADERS: usize = 64;
/// How much to read at a time.
const READ_SIZE: usize = 8 * 1024;
/// Response bodies up to this size are copied behind the head, to go out in one write.
const COALESCE: usize = 16 * 1024;

/// How a connection left the fast path.
pub enum Exit<S> {
    /// Closed, or to be closed: nothing more to do.
    Closed,
    /// A request the fast path does not take: hyper goes on with the stream and these bytes.
    HandOver(S, Bytes),
}

/// A request head, parsed: spans of the buffer it was parsed from.
struct Head {
    method: Method,
    path: (usize, usize),
    /// Bytes of the head, then of the body.
    head_len: usize,
    body_len: usize,
    close: bool,
}

enum Parsed {
    Complete(Head),
    Partial,
    /// Not for the fast path.
    Unfit,
}

/// Serves requests on `io` until it closes or a request needs hyper.
pub async fn serve<S>(mut io: S, info: &ConnInfo, shared: &Arc<Shared>) -> Exit<S>
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    let mut buf = BytesMut::with_capacity(READ_SIZE);
    let mut out: Vec<u8> = Vec::with_capacity(READ_SIZE);
    // The header fields of the request being read, reused from request to request.
    let mut fields: Fields = Vec::with_capacity(16);
    // One timer for the connection's life, re-armed lazily: it may fire before the deadline
    // that counts (`Instant` below), never after it, and is moved only when it would be late.
    // So a keep-alive connection costs no timer work per request.
    let mut armed = tokio::time::Instant::now() + std::time::Duration::from_secs(86_400);
    let timer = tokio::time::sleep_until(armed);
    tokio::pin!(timer);
    // Whether the timer has been polled since it was last set (see [`read_or_wake`]).
    let mut timer_polled = false;
    // Resolves once the gateway starts to close; registered once, not per request.
    let closing = {
        let mut rx = shared.closing.subscribe();
        async move {
            while !*rx.borrow_and_update() {
                if rx.changed().await.is_err() {
                    std::future::pending::<()>().await;
                }
            }
        }
    };
    tokio::pin!(closing);
    // Whether `closing` has been polled (see [`read_or_wake`]).
    let mut closing_polled = false;
    let mut closed = false;
    // The current generation of the proxy, looked up without touching its reference count
    // (shared by every connection) per request.
    let mut current = arc_swap::Cache::new(&shared.proxy);
    loop {
        let limits = current.load().limits.clone();
        // The next head: the idle timeout until its first byte, the header timeout from there.
        let mut deadline: Option<tokio::time::Instant> = None;
        let mut idle_since: Option<tokio::time::Instant> = None;
        let head = loop {
            if !buf.is_empty() {
                match parse(&buf, limits.max_headers as usize, &mut fields) {
                    Parsed::Complete(head) => break head,
                    Parsed::Unfit => return Exit::HandOver(io, buf.freeze()),
                    Parsed::Partial if buf.len() >= limits.max_header_bytes as usize => {
                        return Exit::HandOver(io, buf.freeze())
                    }
                    // The header timeout runs from the first bytes of the head, which have
                    // just arrived: a head that comes whole never needs the clock.
                    Parsed::Partial => {
                        deadline.get_or_insert_with(|| {
                            tokio::time::Instant::now() + limits.header_read_timeout
                        });
                    }
                }
            }
            let idle = buf.is_empty();
            if idle && closed {
                return Exit::Closed;
            }
            let wait = match deadline {
                Some(d) => d,
                None => {
                    *idle_since.get_or_insert_with(tokio::time::Instant::now) + limits.idle_timeout
                }
            };
            if armed > wait || timer.is_elapsed() {
                timer.as_mut().reset(wait);
                armed = wait;
                timer_polled = false;
            }
            let closing = (idle && !closed).then(|| Closing {
                future: closing.as_mut(),
                polled: &mut closing_polled,
                now: &shared.closing_now,
            });
            let woke = read_or_wake(
                &mut io,
                &mut buf,
                READ_SIZE,
                timer.as_mut(),
                &mut timer_polled,
                closing,
            );
            match woke.await {
                Woke::Read(Ok(0) | Err(_)) => return Exit::Closed,
                Woke::Read(Ok(_)) => {}
                Woke::Timer => {
                    if tokio::time::Instant::now() >= wait {
                        tracing::debug!(client = %info.client, idle, "connection timed out waiting for a request head");
                        return Exit::Closed;
                    }
                }
                Woke::Closing => closed = true,
            }
        };
        let total = head.head_len + head.body_len;
        if buf.len() < total {
            // The body may take the rest of the header timeout, or all of it when the head
            // came whole.
            let deadline = deadline
                .unwrap_or_else(|| tokio::time::Instant::now() + limits.header_read_timeout);
            if armed > deadline || timer.is_elapsed() {
                timer.as_mut().reset(deadline);
                armed = deadline;
                timer_polled = false;
            }
            while buf.len() < total {
                let want = total - buf.len();
                let woke = read_or_wake::<_, std::future::Pending<()>>(
                    &mut io,
                    &mut buf,
                    want,
                    timer.as_mut(),
                    &mut timer_polled,
                    None,
                );
                match woke.await {
                    Woke::Read(Ok(0) | Err(_)) => return Exit::Closed,
                    Woke::Read(Ok(_)) | Woke::Closing => {}
                    Woke::Timer => {
                        if tokio::time::Instant::now() >= deadline {
                            tracing::debug!(client = %info.client, "request body did not arrive in time");
                            return Exit::Closed;
                        }
                        timer.as_mut().reset(deadline);
                        armed = deadline;
                        timer_polled = false;
                    }
                }
            }
        }
        let head_bytes = buf.split_to(head.head_len).freeze();
        let body = buf.split_to(head.body_len).freeze();
        let head_request = head.method == Method::HEAD;
        let close_asked = head.close;
        let Some(request) = head.request(&head_bytes, &mut fields) else {
            // A target httparse took and `http` does not: hyper answers, from this request on.
            let mut rest = BytesMut::with_capacity(head_bytes.len() + body.len() + buf.len());
            rest.extend_from_slice(&head_bytes);
            rest.extend_from_slice(&body);
            rest.extend_from_slice(&buf);
            return Exit::HandOver(io, rest.freeze());
        };
        let request = request.map(|()| RequestBody::Bytes(body));
        // The generation stays loaded until the response is written: its security headers
        // are written from there.
        let proxy = current.load();
        let (response, finishing) = proxy.handle_deferred(request, info.clone()).await;
        let close = close_asked
            || closed
            || shared
                .closing_now
                .load(std::sync::atomic::Ordering::Relaxed);
        let written = write_response(
            &mut io,
            &mut out,
            response,
            finishing.as_ref(),
            head_request,
            close,
        );
        match written.await {
            Ok(true) if !close => {}
            _ => {
                let _ = io.shutdown().await;
                return Exit::Closed;
            }
        }
    }
}

/// What ended a wait for the client's bytes.
enum Woke {
    Read(std::io::Result<usize>),
    Timer,
    Closing,
}

/// The gateway's closing signal, as a connection waits for it.
struct Closing<'a, C> {
    /// Resolves once the gateway starts to close; not to be polled after.
    future: Pin<&'a mut C>,
    /// Whether `future` has been polled (see [`read_or_wake`]).
    polled: &'a mut bool,
    /// Set before the signal is sent.
    now: &'a AtomicBool,
}

/// Reads up to `max` bytes into `buf`, unless `timer` fires or, with `closing`, the gateway
/// starts to close first.
///
/// A timer or a signal that has been polled holds the task's waker (the same for the
/// connection's life) and wakes the task when it fires. So it is polled again only when it may
/// be ready: a timer once it says it has elapsed (or after it is reset, which the caller notes
/// by clearing `timer_polled`), the signal once `closing.now` is set. Polling both on every
/// wait would cost about as much as the rest of a request's wait. They are polled outside
/// tokio's cooperative budget: with the budget spent, they would answer `Pending` without
/// taking the waker, and would then not be polled again.
async fn read_or_wake<S, C>(
    io: &mut S,
    buf: &mut BytesMut,
    max: usize,
    mut timer: Pin<&mut tokio::time::Sleep>,
    timer_polled: &mut bool,
    mut closing: Option<Closing<'_, C>>,
) -> Woke
where
    S: AsyncRead + Unpin,
    C: Future<Output = ()>,
{
    let read = read_buf(io, buf, max);
    tokio::pin!(read);
    std::future::poll_fn(|cx| {
        if let Poll::Ready(read) = read.as_mut().poll(cx) {
            return Poll::Ready(Woke::Read(read));
        }
        if !*timer_polled || timer.is_elapsed() {
            *timer_polled = true;
            if unconstrained(timer.as_mut(), cx).is_ready() {
                return Poll::Ready(Woke::Timer);
            }
        }
        if let Some(c) = closing.as_mut() {
            if !*c.polled || c.now.load(Ordering::Acquire) {
                *c.polled = true;
                if unconstrained(c.future.as_mut(), cx).is_ready() {
                    return Poll::Ready(Woke::Closing);
                }
            }
        }
        Poll::Pending
    })
    .await
}

/// Polls `future` outside tokio's cooperative budget.
fn unconstrained<F: Future>(future: Pin<&mut F>, cx: &mut Context<'_>) -> Poll<F::Output> {
    Pin::new(&mut tokio::task::unconstrained(future)).poll(cx)
}

/// Header names and the spans of their values in the head.
type Fields = Vec<(HeaderName, (usize, usize))>;

/// Parses a request head off the front of `buf`; its header fields go to `fields`.
fn parse(buf: &[u8], max_headers: usize, fields: &mut Fields) -> Parsed {
    let mut slots = [const { std::mem::MaybeUninit::<httparse::Header<'_>>::uninit() }; HEADERS];
    let slots = &mut slots[..max_headers.clamp(1, HEADERS)];
    let mut req = httparse::Request::new(&mut []);
    let len = match req.parse_with_uninit_headers(buf, slots) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Parsed::Partial,
        Err(_) => return Parsed::Unfit,
    };
    if req.version != Some(1) {
        return Parsed::Unfit;
    }
    // httparse takes bare LFs; the framing guard refuses them.
    let head = &buf[..len];
    if memchr::memchr_iter(b'\n', head).any(|i| i == 0 || head[i - 1] != b'\r') {
        return Parsed::Unfit;
    }
    let (Some(method), Some(path)) = (req.method, req.path) else {
        return Parsed::Unfit;
    };
    if !path.starts_with('/') || method == "CONNECT" {
        return Parsed::Unfit;
    }
    let Ok(method) = Method::from_bytes(method.as_bytes()) else {
        return Parsed::Unfit;
    };
    let base = buf.as_ptr() as usize;
    let span = |s: &[u8]| (s.as_ptr() as usize - base, s.len());
    let path = span(path.as_bytes());
    fields.clear();
    let mut body_len: Option<usize> = None;
    let mut close = false;
    let mut seen_host = false;
    for h in req.headers.iter() {
        let Ok(name) = HeaderName::from_bytes(h.name.as_bytes()) else {
            return Parsed::Unfit;
        };
        if name == header::CONTENT_LENGTH {
            let digits = h.value;
            if body_len.is_some()
                || digits.is_empty()
                || digits.len() > 7
                || !digits.iter().all(u8::is_ascii_digit)
            {
                return Parsed::Unfit;
            }
            let n = digits
                .iter()
                .fold(0usize, |n, &d| n * 10 + usize::from(d - b'0'));
            if n > MAX_BODY {
                return Parsed::Unfit;
            }
            body_len = Some(n);
        } else if name == header::TRANSFER_ENCODING
            || name == header::EXPECT
            || name == header::UPGRADE
        {
            return Parsed::Unfit;
        } else if name == header::HOST {
            // Two Hosts: the framing guard refuses them.
            if seen_host {
                return Parsed::Unfit;
            }
            seen_host = true;
        } else if name == header::CONNECTION {
            if has_token(h.value, "upgrade") {
                return Parsed::Unfit;
            }
            close |= has_token(h.value, "close");
        }
        fields.push((name, span(h.value)));
    }
    if !seen_host {
        // The framing guard refuses it (RFC 9112 section 3.2).
        return Parsed::Unfit;
    }
    Parsed::Complete(Head {
        method,
        path,
        head_len: len,
        body_len: body_len.unwrap_or(0),
        close,
    })
}

impl Head {
    /// The request, its target and header values sharing `head` (the bytes parsed), with the
    /// header fields [`parse`] left in `fields`.
    fn request(self, head: &Bytes, fields: &mut Fields) -> Option<Request<()>> {
        let (at, len) = self.path;
        let uri = Uri::from_maybe_shared(head.slice(at..at + len)).ok()?;
        // Room for what the proxy adds (X-Forwarded-*, Forwarded, X-Request-Id).
        let mut headers = super::header_map(fields.len() + 6);
        for (name, (at, len)) in fields.drain(..) {
            headers.append(name, super::parsed_value(head.slice(at..at + len)));
        }
        let mut request = Request::new(());
        *request.method_mut() = self.method;
        *request.uri_mut() = uri;
        *request.version_mut() = Version::HTTP_11;
        *request.headers_mut() = headers;
        Some(request)
    }
}

/// Writes `response`; says whether the connection may carry another request.
async fn write_response<S, B>(
    io: &mut S,
    out: &mut Vec<u8>,
    response: Response<B>,
    finishing: Option<&Finishing<'_>>,
    head_request: bool,
    mut close: bool,
) -> std::io::Result<bool>
where
    S: AsyncWrite + Unpin,
    B: Body<Data = Bytes> + Unpin,
    B::Error: std::fmt::Display,
{
    let (parts, mut body) = response.into_parts();
    let status = parts.status;
    let bodiless = head_request || crate::proxy::without_content(status);
    // The length the body says it has, or chunked.
    let exact = body.size_hint().exact();
    out.clear();
    put(
        out,
        &[
            b"HTTP/1.1 ",
            status.as_str().as_bytes(),
            b" ",
            status.canonical_reason().unwrap_or("").as_bytes(),
            b"\r\n",
        ],
    );
    let mut has_date = false;
    for (name, value) in &parts.headers {
        if name == header::CONNECTION {
            // The response's own `close` is kept; the field is written below, from `close`.
            close |= has_token(value.as_bytes(), "close");
            continue;
        }
        if name == header::TRANSFER_ENCODING {
            continue;
        }
        if name == header::CONTENT_LENGTH && !(bodiless && status != StatusCode::NO_CONTENT) {
            // Bodies are framed here, from what they hold; a HEAD or 304 answer keeps the
            // length of what a GET would have had.
            continue;
        }
        if finishing.is_some_and(|f| f.replaces(name)) {
            continue;
        }
        has_date |= name == header::DATE;
        super::field(out, name, value);
    }
    if let Some(f) = finishing {
        f.write(out);
    }
    if !has_date {
        out.extend_from_slice(b"date: ");
        date(out);
        out.extend_from_slice(b"\r\n");
    }
    let chunked = !bodiless && exact.is_none();
    if !bodiless {
        match exact {
            Some(n) => put(
                out,
                &[
                    b"content-length: ",
                    itoa::Buffer::new().format(n).as_bytes(),
                    b"\r\n",
                ],
            ),
            None => out.extend_from_slice(b"transfer-encoding: chunked\r\n"),
        }
    }
    if close {
        out.extend_from_slice(b"connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
    super::recycle(parts.headers);
    if bodiless {
        io.write_all(out).await?;
        io.flush().await?;
        // Dropping the body ends the request's accounting.
        drop(body);
        return Ok(!close);
    }
    let mut sent: u64 = 0;
    loop {
        let frame = match body.frame().await {
            None => break,
            Some(Ok(frame)) => frame,
            Some(Err(e)) => {
                // Too late for a status: cut the connection so the client sees the break.
                tracing::debug!(error = %e, "response body failed; closing the connection");
                io.write_all(out).await?;
                return Ok(false);
            }
        };
        let Ok(data) = frame.into_data() else {
            continue;
        };
        if data.is_empty() {
            continue;
        }
        sent += data.len() as u64;
        if chunked {
            put(out, &[format!("{:x}\r\n", data.len()).as_bytes()]);
        }
        if out.len() + data.len() <= COALESCE {
            out.extend_from_slice(&data);
        } else {
            io.write_all(out).await?;
            out.clear();
            io.write_all(&data).await?;
        }
        if chunked {
            out.extend_from_slice(b"\r\n");
        }
        if body.is_end_stream() {
            break;
        }
    }
    if chunked {
        out.extend_from_slice(b"0\r\n\r\n");
    } else if exact.is_some_and(|n| n != sent) {
        // The body was not the length it said: the client cannot find the next response.
        close = true;
    }
    if !out.is_empty() {
        io.write_all(out).await?;
    }
    io.flush().await?;
    drop(body);
    Ok(!close)
}
