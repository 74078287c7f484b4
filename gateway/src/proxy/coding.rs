//! Request bodies under their `Content-Encoding`, for the phases that read a body (schema
//! validation, inspection). The body forwarded is always the one the client sent.

use std::{borrow::Cow, io::Read as _};

use hyper::{header, http::request::Parts};

/// `body` as its `Content-Encoding` says to read it: as it is without one (or `identity`),
/// inflated for `gzip`, `x-gzip` and `deflate` (zlib, RFC 9110 section 8.4.1.2, or raw
/// deflate as some clients send it). At most `max + 1` bytes come out, so a body inflating to
/// more than `max` is seen to be longer without inflating a bomb. `None` for a body that
/// cannot be read: another coding, several, or bytes that do not inflate.
pub fn decoded<'b>(parts: &Parts, body: &'b [u8], max: usize) -> Option<Cow<'b, [u8]>> {
    let mut values = parts.headers.get_all(header::CONTENT_ENCODING).iter();
    let value = match (values.next(), values.next()) {
        (None, _) => return Some(Cow::Borrowed(body)),
        (Some(v), None) => v.as_bytes().trim_ascii(),
        (Some(_), Some(_)) => return None,
    };
    let is = |s: &str| value.eq_ignore_ascii_case(s.as_bytes());
    let take = u64::try_from(max).unwrap_or(u64::MAX).saturating_add(1);
    let read = |r: &mut dyn std::io::Read| {
        let mut out = Vec::new();
        r.take(take).read_to_end(&mut out).ok().map(|_| out)
    };
    if value.is_empty() || is("identity") {
        Some(Cow::Borrowed(body))
    } else if is("gzip") || is("x-gzip") {
        read(&mut flate2::read::MultiGzDecoder::new(body)).map(Cow::Owned)
    } else if is("deflate") {
        read(&mut flate2::read::ZlibDecoder::new(body))
            .or_else(|| read(&mut flate2::read::DeflateDecoder::new(body)))
            .map(Cow::Owned)
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write as _;

    use hyper::Request;

    use super::*;

    fn parts(codings: &[&str]) -> Parts {
        let mut b = Request::post("/");
        for c in codings {
            b = b.header("content-encoding", *c);
        }
        b.body(()).unwrap().into_parts().0
    }

    #[test]
    fn codings_inflate_within_the_limit_or_not_at_all() {
        let text = b"{\"a\":\"hello hello hello hello\"}";
        let gzip = {
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
            e.write_all(text).unwrap();
            e.finish().unwrap()
        };
        let zlib = {
            let mut e = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
            e.write_all(text).unwrap();
            e.finish().unwrap()
        };
        let raw = {
            let mut e =
                flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::default());
            e.write_all(text).unwrap();
            e.finish().unwrap()
        };
        let get = |c: &[&str], b: &[u8], max| decoded(&parts(c), b, max).map(Cow::into_owned);
        assert_eq!(get(&[], text, 100).unwrap(), text);
        assert_eq!(get(&["identity"], text, 100).unwrap(), text);
        assert_eq!(get(&["gzip"], &gzip, 100).unwrap(), text);
        assert_eq!(get(&["X-Gzip"], &gzip, 100).unwrap(), text);
        assert_eq!(get(&["deflate"], &zlib, 100).unwrap(), text);
        assert_eq!(get(&["deflate"], &raw, 100).unwrap(), text);
        // Cut at one byte past the limit.
        assert_eq!(get(&["gzip"], &gzip, 4).unwrap(), &text[..5]);
        for c in [&["br"][..], &["gzip, gzip"], &["gzip", "gzip"], &["zstd"]] {
            assert_eq!(get(c, &gzip, 100), None, "{c:?}");
        }
        assert_eq!(get(&["gzip"], b"not gzip", 100), None);
    }
}
