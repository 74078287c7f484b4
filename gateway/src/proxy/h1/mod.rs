//! HTTP/1.1 without hyper's dispatchers, for the requests most traffic is made of.
//!
//! hyper runs every connection as a state machine behind channels: the server hands each request
//! to the service, the client sends it through a queue to a connection task and waits for the
//! answer on another. That generality costs several microseconds of CPU per request, more than
//! the proxy's own work. Here one task reads a request, runs it through the proxy, writes it to
//! a pooled upstream connection, and writes the answer back, all in place.
//!
//! The fast path takes only what it can do fully: the server side hands a connection over to
//! hyper (with the bytes already read) at the first request that is not a plain HTTP/1.1
//! request with at most a small `Content-Length` body, and the client side serves only plain-TCP
//! HTTP/1.1 upstreams and requests whose body is already in memory. Everything else keeps
//! going through hyper, as before.

pub mod client;
pub mod server;

use std::{
    io,
    pin::Pin,
    task::{Context, Poll},
};

use bytes::{Buf as _, BufMut as _, Bytes, BytesMut};
use hyper::header::{HeaderMap, HeaderName, HeaderValue};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// A stream with bytes already read from it put back in front.
pub struct Prefixed<S> {
    prefix: Bytes,
    inner: S,
}

impl<S> Prefixed<S> {
    pub fn new(inner: S, prefix: Bytes) -> Prefixed<S> {
        Prefixed { prefix, inner }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Prefixed<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.prefix.is_empty() {
            let n = self.prefix.len().min(buf.remaining());
            let chunk = self.prefix.split_to(n);
            buf.put_slice(&chunk);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Prefixed<S> {
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

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Reads into the spare capacity of `buf` (reserving `at_least` first when it is short).
pub(crate) fn poll_read_buf<R: AsyncRead + Unpin>(
    io: &mut R,
    cx: &mut Context<'_>,
    buf: &mut BytesMut,
    at_least: usize,
) -> Poll<io::Result<usize>> {
    if buf.capacity() - buf.len() < at_least {
        buf.reserve(at_least);
    }
    let spare = buf.chunk_mut();
    // SAFETY: `UninitSlice` is a `[MaybeUninit<u8>]` the reader only writes to, and
    // `advance_mut` below covers exactly the bytes it reports as filled.
    let spare = unsafe {
        &mut *(spare as *mut bytes::buf::UninitSlice as *mut [std::mem::MaybeUninit<u8>])
    };
    let mut read = ReadBuf::uninit(spare);
    match Pin::new(io).poll_read(cx, &mut read) {
        Poll::Ready(Ok(())) => {
            let n = read.filled().len();
            // SAFETY: the reader initialised the first `n` bytes of the spare capacity.
            unsafe { buf.advance_mut(n) };
            Poll::Ready(Ok(n))
        }
        Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
        Poll::Pending => Poll::Pending,
    }
}

/// Reads into `buf` (see [`poll_read_buf`]).
pub(crate) async fn read_buf<R: AsyncRead + Unpin>(
    io: &mut R,
    buf: &mut BytesMut,
    at_least: usize,
) -> io::Result<usize> {
    std::future::poll_fn(|cx| poll_read_buf(io, cx, buf, at_least)).await
}

/// The longest chunk-size line or trailer line accepted.
const MAX_CHUNK_LINE: usize = 4096;
/// The most trailer bytes accepted (they are read and dropped).
const MAX_TRAILERS: usize = 16 * 1024;

/// What one step of [`Chunked`] decoding gives.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Step {
    Data(Bytes),
    NeedMore,
    Done,
}

/// The chunked body was malformed.
#[derive(Debug, thiserror::Error)]
#[error("malformed chunked body: {0}")]
pub struct BadChunk(pub &'static str);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ChunkState {
    Size,
    Data(u64),
    DataEnd,
    Trailers(usize),
    Done,
}

/// An incremental decoder of `Transfer-Encoding: chunked` (RFC 9112 section 7.1), strict:
/// lines end in CRLF, sizes are hex without overflow, extensions are skipped, trailers dropped.
#[derive(Debug)]
pub(crate) struct Chunked {
    state: ChunkState,
}

impl Chunked {
    pub fn new() -> Chunked {
        Chunked {
            state: ChunkState::Size,
        }
    }

    /// Takes what it can from the front of `buf`.
    pub fn step(&mut self, buf: &mut BytesMut) -> Result<Step, BadChunk> {
        loop {
            match self.state {
                ChunkState::Size => {
                    let Some(end) = line_end(buf, MAX_CHUNK_LINE)? else {
                        return Ok(Step::NeedMore);
                    };
                    let line = buf.split_to(end + 2);
                    let line = &line[..end];
                    let digits = line
                        .iter()
                        .position(|b| !b.is_ascii_hexdigit())
                        .unwrap_or(line.len());
                    if digits == 0 || digits > 15 {
                        return Err(BadChunk("bad chunk size"));
                    }
                    let rest = &line[digits..];
                    if !(rest.is_empty() || rest[0] == b';' || rest[0] == b' ' || rest[0] == b'\t')
                        || rest.iter().any(|&b| b == b'\r' || b == b'\n' || b == 0)
                    {
                        return Err(BadChunk("bad chunk size line"));
                    }
                    let size = line[..digits].iter().fold(0u64, |n, &b| {
                        n * 16 + u64::from((b as char).to_digit(16).unwrap_or(0))
                    });
                    self.state = if size == 0 {
                        ChunkState::Trailers(0)
                    } else {
                        ChunkState::Data(size)
                    };
                }
                ChunkState::Data(left) => {
                    if buf.is_empty() {
                        return Ok(Step::NeedMore);
                    }
                    let n = left.min(buf.len() as u64);
                    let data = buf.split_to(n as usize).freeze();
                    self.state = if n == left {
                        ChunkState::DataEnd
                    } else {
                        ChunkState::Data(left - n)
                    };
                    return Ok(Step::Data(data));
                }
                ChunkState::DataEnd => {
                    if buf.len() < 2 {
                        return Ok(Step::NeedMore);
                    }
                    if &buf[..2] != b"\r\n" {
                        return Err(BadChunk("chunk data not followed by CRLF"));
                    }
                    buf.advance(2);
                    self.state = ChunkState::Size;
                }
                ChunkState::Trailers(seen) => {
                    let Some(end) = line_end(buf, MAX_CHUNK_LINE)? else {
                        return Ok(Step::NeedMore);
                    };
                    buf.advance(end + 2);
                    if end == 0 {
                        self.state = ChunkState::Done;
                    } else if seen + end > MAX_TRAILERS {
                        return Err(BadChunk("trailers too large"));
                    } else {
                        self.state = ChunkState::Trailers(seen + end + 2);
                    }
                }
                ChunkState::Done => return Ok(Step::Done),
            }
        }
    }
}

/// Where the CRLF ending the first line of `buf` starts; `None` when it has not arrived yet.
fn line_end(buf: &[u8], max: usize) -> Result<Option<usize>, BadChunk> {
    match buf.iter().position(|&b| b == b'\n') {
        Some(0) => Err(BadChunk("bare LF")),
        Some(i) if buf[i - 1] == b'\r' => Ok(Some(i - 1)),
        Some(_) => Err(BadChunk("bare LF")),
        None if buf.len() > max => Err(BadChunk("line too long")),
        None => Ok(None),
    }
}

/// Whether a `Connection` header value lists `token`.
pub(crate) fn has_token(value: &[u8], token: &str) -> bool {
    value
        .split(|&b| b == b',')
        .any(|t| t.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
}

/// A header value httparse has parsed, sharing `src`'s bytes, without checking them again.
pub(crate) fn parsed_value(src: Bytes) -> HeaderValue {
    debug_assert!(HeaderValue::from_bytes(&src).is_ok());
    // SAFETY: httparse, in its default configuration (the only one used here), takes only
    // HTAB, SP, VCHAR and obs-text in a value: exactly the bytes a `HeaderValue` may hold
    // (`tests::httparse_values_are_header_values` tries every byte).
    unsafe { HeaderValue::from_maybe_shared_unchecked(src) }
}

/// Header maps kept per thread for the next message, so that a request and its response do
/// not each allocate (and free) a map's two tables.
const SPARE_MAPS: usize = 8;
/// Maps with room for more fields than this are not kept.
const SPARE_MAP_CAPACITY: usize = 128;

thread_local! {
    static MAPS: std::cell::RefCell<Vec<HeaderMap>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// An empty header map with room for `capacity` fields, recycled when one is kept.
pub(crate) fn header_map(capacity: usize) -> HeaderMap {
    match MAPS.with(|m| m.borrow_mut().pop()) {
        Some(mut map) => {
            map.reserve(capacity);
            map
        }
        None => HeaderMap::with_capacity(capacity),
    }
}

/// Keeps `map` (emptied) for [`header_map`].
pub(crate) fn recycle(mut map: HeaderMap) {
    if map.capacity() > SPARE_MAP_CAPACITY {
        return;
    }
    map.clear();
    MAPS.with(|m| {
        let mut m = m.borrow_mut();
        if m.len() < SPARE_MAPS {
            m.push(map);
        }
    });
}

/// Writes a `name: value` field line.
///
/// One reservation and four plain copies: a request and its response have a dozen fields
/// between them, and four checked appends per field cost about 90 instructions each.
#[inline]
pub(crate) fn field(out: &mut Vec<u8>, name: &HeaderName, value: &HeaderValue) {
    let (name, value) = (name.as_str().as_bytes(), value.as_bytes());
    let len = name.len() + value.len() + 4;
    out.reserve(len);
    // SAFETY: `reserve` made room for `len` more bytes past `out.len()`, and the four copies
    // below write exactly those `len` bytes before `set_len` counts them. The sources cannot
    // overlap the destination: they are shared borrows alive while `out` is borrowed mutably,
    // so they do not point into its buffer.
    unsafe {
        let at = out.as_mut_ptr().add(out.len());
        std::ptr::copy_nonoverlapping(name.as_ptr(), at, name.len());
        let at = at.add(name.len());
        at.cast::<[u8; 2]>().write_unaligned(*b": ");
        let at = at.add(2);
        std::ptr::copy_nonoverlapping(value.as_ptr(), at, value.len());
        at.add(value.len())
            .cast::<[u8; 2]>()
            .write_unaligned(*b"\r\n");
        out.set_len(out.len() + len);
    }
}

/// `buf.put_slice` for several slices, with one reservation.
pub(crate) fn put(buf: &mut Vec<u8>, parts: &[&[u8]]) {
    buf.reserve(parts.iter().map(|p| p.len()).sum());
    for p in parts {
        buf.extend_from_slice(p);
    }
}

/// The `Date` header value, remade at most once a second per thread.
pub(crate) fn date(buf: &mut Vec<u8>) {
    thread_local! {
        static DATE: std::cell::RefCell<(u64, [u8; 29])> = const {
            std::cell::RefCell::new((u64::MAX, [0; 29]))
        };
    }
    let now = std::time::SystemTime::now();
    let secs = now
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    DATE.with(|d| {
        let mut d = d.borrow_mut();
        if d.0 != secs {
            let text = httpdate::fmt_http_date(now);
            if text.len() == 29 {
                d.1.copy_from_slice(text.as_bytes());
            }
            d.0 = secs;
        }
        buf.extend_from_slice(&d.1);
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn field_appends_one_line() {
        // A vector at its capacity and one with room to spare: copies after growing, and in
        // place.
        for mut out in [b"HTTP/1.1 200 OK\r\n".to_vec(), Vec::with_capacity(512)] {
            let before = out.clone();
            field(
                &mut out,
                &hyper::header::CONTENT_TYPE,
                &HeaderValue::from_static("text/plain"),
            );
            field(
                &mut out,
                &HeaderName::from_static("x-empty"),
                &HeaderValue::from_static(""),
            );
            let long = "v".repeat(3000);
            field(
                &mut out,
                &HeaderName::from_static("x-long"),
                &HeaderValue::from_str(&long).unwrap(),
            );
            let mut want = before;
            want.extend_from_slice(b"content-type: text/plain\r\nx-empty: \r\nx-long: ");
            want.extend_from_slice(long.as_bytes());
            want.extend_from_slice(b"\r\n");
            assert_eq!(out, want);
        }
    }

    /// What [`parsed_value`] relies on: every value httparse takes, request or response, is a
    /// valid `HeaderValue`, and it refuses every byte a `HeaderValue` refuses.
    #[test]
    fn httparse_values_are_header_values() {
        for b in 0..=255u8 {
            if b == b'\r' || b == b'\n' {
                continue;
            }
            let value = [b'a', b, b'z'];
            let request = [
                b"GET / HTTP/1.1\r\nHost: h\r\nX: ".as_slice(),
                &value,
                b"\r\n\r\n",
            ]
            .concat();
            let response = [b"HTTP/1.1 200 OK\r\nX: ".as_slice(), &value, b"\r\n\r\n"].concat();
            let valid = HeaderValue::from_bytes(&value).is_ok();
            let mut headers = [httparse::EMPTY_HEADER; 4];
            let mut req = httparse::Request::new(&mut headers);
            match req.parse(&request) {
                Ok(httparse::Status::Complete(_)) => {
                    assert!(valid, "byte {b:#04x}: httparse took it in a request");
                    assert_eq!(req.headers[1].value, &value, "byte {b:#04x}");
                }
                _ => assert!(!valid, "byte {b:#04x}: httparse refused it in a request"),
            }
            let mut headers = [httparse::EMPTY_HEADER; 4];
            let mut res = httparse::Response::new(&mut headers);
            match res.parse(&response) {
                Ok(httparse::Status::Complete(_)) => {
                    assert!(valid, "byte {b:#04x}: httparse took it in a response");
                }
                _ => assert!(!valid, "byte {b:#04x}: httparse refused it in a response"),
            }
        }
    }

    #[test]
    fn recycled_maps_come_back_empty_with_room() {
        let mut map = header_map(4);
        for i in 0..10 {
            map.append(
                hyper::header::HeaderName::from_bytes(format!("x-{i}").as_bytes()).unwrap(),
                HeaderValue::from_static("v"),
            );
        }
        recycle(map);
        let again = header_map(40);
        assert!(again.is_empty());
        assert!(again.capacity() >= 40);
        // A map too large to keep is dropped instead.
        let mut big = HeaderMap::with_capacity(4 * SPARE_MAP_CAPACITY);
        big.insert(hyper::header::HOST, HeaderValue::from_static("h"));
        recycle(big);
        assert!(MAPS.with(|m| m
            .borrow()
            .iter()
            .all(|m| m.capacity() <= SPARE_MAP_CAPACITY)));
    }

    fn decode_all(input: &[u8], split: usize) -> Result<Vec<u8>, BadChunk> {
        let mut dec = Chunked::new();
        let mut buf = BytesMut::new();
        let mut out = Vec::new();
        let mut fed = 0;
        loop {
            match dec.step(&mut buf)? {
                Step::Data(d) => out.extend_from_slice(&d),
                Step::Done => return Ok(out),
                Step::NeedMore => {
                    if fed == input.len() {
                        return Err(BadChunk("cut off"));
                    }
                    let end = (fed + split).min(input.len());
                    buf.extend_from_slice(&input[fed..end]);
                    fed = end;
                }
            }
        }
    }

    #[test]
    fn chunked_decodes_at_every_split() {
        let body = b"5\r\nhello\r\n7;ext=1\r\n, world\r\n0\r\nx-trailer: 1\r\n\r\n";
        for split in 1..body.len() {
            assert_eq!(
                decode_all(body, split).unwrap(),
                b"hello, world",
                "split {split}"
            );
        }
    }

    #[test]
    fn chunked_refuses_malformed_bodies() {
        for bad in [
            &b"5\nhello\r\n0\r\n\r\n"[..],
            b"5\r\nhelloX\r\n0\r\n\r\n",
            b"zz\r\nhello\r\n0\r\n\r\n",
            b"\r\nhello\r\n0\r\n\r\n",
            b"ffffffffffffffffff\r\nx\r\n",
            b"5 x\rx\r\nhello\r\n0\r\n\r\n",
            b"-5\r\nhello\r\n0\r\n\r\n",
        ] {
            assert!(
                decode_all(bad, 3).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn tokens_in_connection_headers() {
        assert!(has_token(b"keep-alive, Close", "close"));
        assert!(!has_token(b"closed", "close"));
    }
}
