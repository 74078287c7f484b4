//! Multipart bodies (RFC 2046 section 5.1, RFC 7578) split into parts for the inspector, and
//! the transfer encodings a part may declare.
//!
//! ```text
//!  preamble CRLF? --B [LWSP] CRLF  headers CRLF CRLF  content
//!           CRLF  --B [LWSP] CRLF  headers CRLF CRLF  content
//!           CRLF  --B-- epilogue
//! ```
//!
//! The parser is strict: a body that does not follow this framing (no boundary, bare LF
//! line ends, a part whose headers never end, no close delimiter) is no multipart body to
//! it, and the inspector then matches the whole body as text. Whatever a lenient upstream
//! makes of such a body, its bytes were all inspected.

/// One part: its header lines, raw, and its content.
#[derive(Debug, PartialEq, Eq)]
pub struct Part<'a> {
    pub headers: Vec<(&'a [u8], &'a [u8])>,
    pub content: &'a [u8],
}

/// A parsed body: the parts, and the text outside them (preamble and epilogue), which a
/// lenient upstream might read too.
#[derive(Debug, PartialEq, Eq)]
pub struct Multipart<'a> {
    pub parts: Vec<Part<'a>>,
    pub outside: [&'a [u8]; 2],
}

/// Parts at most; a body with more is not split (and is matched whole).
const MAX_PARTS: usize = 1024;
/// Header lines of a part at most.
const MAX_PART_HEADERS: usize = 32;

/// The `boundary` parameter of a multipart content type, unquoted. `None` when there is none,
/// more than one, or one that RFC 2046 does not allow (empty, longer than 70 bytes).
pub fn boundary(content_type: &[u8]) -> Option<Vec<u8>> {
    let mut found = None;
    for param in params(content_type) {
        let (name, value) = param?;
        if !name.eq_ignore_ascii_case(b"boundary") {
            continue;
        }
        if found.is_some() {
            return None;
        }
        found = Some(value);
    }
    found.filter(|b| (1..=70).contains(&b.len()))
}

/// The `name=value` parameters after the media type; `None` for one that is malformed. Quoted
/// values are unquoted (`\x` is `x`).
pub fn params(value: &[u8]) -> impl Iterator<Item = Option<(&[u8], Vec<u8>)>> {
    let mut rest = match value.iter().position(|&b| b == b';') {
        Some(i) => &value[i + 1..],
        None => &[][..],
    };
    std::iter::from_fn(move || {
        rest = rest.trim_ascii_start();
        if rest.is_empty() {
            return None;
        }
        let Some(eq) = rest.iter().position(|&b| b == b'=') else {
            rest = &[];
            return Some(None);
        };
        let name = rest[..eq].trim_ascii();
        rest = &rest[eq + 1..];
        let value = if rest.first() == Some(&b'"') {
            let mut v = Vec::new();
            let mut i = 1;
            loop {
                match rest.get(i) {
                    None => {
                        rest = &[];
                        return Some(None);
                    }
                    Some(b'"') => break,
                    Some(b'\\') => {
                        v.extend(rest.get(i + 1));
                        i += 2;
                    }
                    Some(&b) => {
                        v.push(b);
                        i += 1;
                    }
                }
            }
            rest = &rest[i + 1..];
            let end = rest.iter().position(|&b| b == b';').unwrap_or(rest.len());
            if !rest[..end].trim_ascii().is_empty() {
                rest = &[];
                return Some(None);
            }
            rest = rest.get(end + 1..).unwrap_or(&[]);
            v
        } else {
            let end = rest.iter().position(|&b| b == b';').unwrap_or(rest.len());
            let v = rest[..end].trim_ascii().to_vec();
            rest = rest.get(end + 1..).unwrap_or(&[]);
            v
        };
        Some(Some((name, value)))
    })
}

/// Splits `body` on `boundary`; `None` when it is not a well-formed multipart body.
pub fn split<'a>(body: &'a [u8], boundary: &[u8]) -> Option<Multipart<'a>> {
    let mut dash = Vec::with_capacity(boundary.len() + 4);
    dash.extend_from_slice(b"\r\n--");
    dash.extend_from_slice(boundary);
    // The first delimiter may open the body, without the CRLF before it.
    let (preamble, mut at) = if body.starts_with(&dash[2..]) {
        (&body[..0], dash.len() - 2)
    } else {
        let i = find(body, &dash)?;
        (&body[..i], i + dash.len())
    };
    let mut parts = Vec::new();
    loop {
        let rest = &body[at..];
        if let Some(epilogue) = rest.strip_prefix(b"--") {
            return Some(Multipart {
                parts,
                outside: [preamble, epilogue],
            });
        }
        // Transport padding, then the line end.
        let pad = rest
            .iter()
            .position(|&b| b != b' ' && b != b'\t')
            .unwrap_or(rest.len());
        if !rest[pad..].starts_with(b"\r\n") || parts.len() == MAX_PARTS {
            return None;
        }
        let start = at + pad + 2;
        let end = start + find(&body[start..], &dash)?;
        parts.push(part(&body[start..end])?);
        at = end + dash.len();
    }
}

/// One part between two delimiters: header lines, an empty line, the content.
fn part(raw: &[u8]) -> Option<Part<'_>> {
    let mut headers: Vec<(&[u8], &[u8])> = Vec::new();
    let mut rest = raw;
    loop {
        if let Some(content) = rest.strip_prefix(b"\r\n") {
            return Some(Part { headers, content });
        }
        let eol = find(rest, b"\r\n")?;
        let line = &rest[..eol];
        rest = &rest[eol + 2..];
        if line.contains(&b'\n') || line.contains(&b'\r') {
            return None;
        }
        if matches!(line.first(), Some(b' ' | b'\t')) {
            // A folded line continues the header before it; matched as a header of its own.
            headers.push((headers.last()?.0, line.trim_ascii()));
        } else {
            let colon = line.iter().position(|&b| b == b':')?;
            let name = &line[..colon];
            if name.is_empty() || !name.iter().all(|&b| b.is_ascii_graphic()) {
                return None;
            }
            headers.push((name, line[colon + 1..].trim_ascii()));
        }
        if headers.len() > MAX_PART_HEADERS {
            return None;
        }
    }
}

/// The first header named `name` (case-insensitive).
pub fn header<'a>(part: &Part<'a>, name: &str) -> Option<&'a [u8]> {
    part.headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name.as_bytes()))
        .map(|&(_, v)| v)
}

/// Whether a `Content-Disposition` value names a file (`filename` or `filename*`) before any
/// parameter that does not parse: a part whose file name is in doubt is a field, and its
/// content is inspected.
pub fn names_file(disposition: &[u8]) -> bool {
    params(disposition).map_while(|p| p).any(|(name, _)| {
        name.eq_ignore_ascii_case(b"filename") || name.eq_ignore_ascii_case(b"filename*")
    })
}

/// A part's content under its `Content-Transfer-Encoding`: base64 and quoted-printable
/// decoded, anything else as it is. `None` when the declared encoding does not decode.
pub fn decoded<'a>(
    content: &'a [u8],
    encoding: Option<&[u8]>,
) -> Option<std::borrow::Cow<'a, [u8]>> {
    use base64::Engine as _;
    let Some(e) = encoding.map(<[u8]>::trim_ascii) else {
        return Some(content.into());
    };
    if e.eq_ignore_ascii_case(b"base64") {
        let compact: Vec<u8> = content
            .iter()
            .copied()
            .filter(|b| !b.is_ascii_whitespace())
            .collect();
        base64::engine::general_purpose::STANDARD
            .decode(compact)
            .ok()
            .map(Into::into)
    } else if e.eq_ignore_ascii_case(b"quoted-printable") {
        Some(quoted_printable(content).into())
    } else {
        Some(content.into())
    }
}

/// RFC 2045 section 6.7: `=XX` is a byte, `=` at a line end joins the lines; an `=` that is
/// neither stays as it is.
fn quoted_printable(input: &[u8]) -> Vec<u8> {
    let hex = |b: u8| (b as char).to_digit(16).map(|d| d as u8);
    let mut out = Vec::with_capacity(input.len());
    let mut i = 0;
    while i < input.len() {
        if input[i] == b'=' {
            if let (Some(h), Some(l)) = (
                input.get(i + 1).copied().and_then(hex),
                input.get(i + 2).copied().and_then(hex),
            ) {
                out.push(h << 4 | l);
                i += 3;
                continue;
            }
            let rest = &input[i + 1..];
            let pad = rest
                .iter()
                .position(|&b| b != b' ' && b != b'\t')
                .unwrap_or(rest.len());
            if rest[pad..].starts_with(b"\r\n") {
                i += 1 + pad + 2;
                continue;
            }
            if rest[pad..].starts_with(b"\n") {
                i += 1 + pad + 1;
                continue;
            }
        }
        out.push(input[i]);
        i += 1;
    }
    out
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    memchr::memmem::find(haystack, needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boundaries_from_content_types() {
        let b = |ct: &str| boundary(ct.as_bytes()).map(|b| String::from_utf8(b).unwrap());
        assert_eq!(
            b("multipart/form-data; boundary=abc").as_deref(),
            Some("abc")
        );
        assert_eq!(
            b("multipart/form-data; charset=utf-8; BOUNDARY=\"a b;c\\\"d\"").as_deref(),
            Some("a b;c\"d")
        );
        assert_eq!(
            b("multipart/form-data;boundary=x ; charset=utf-8").as_deref(),
            Some("x")
        );
        // None, two, empty, too long, unterminated quote, junk after a quote.
        for ct in [
            "multipart/form-data",
            "multipart/form-data; boundary=a; boundary=b",
            "multipart/form-data; boundary=",
            "multipart/form-data; boundary=\"\"",
            &format!("multipart/form-data; boundary={}", "x".repeat(71)),
            "multipart/form-data; boundary=\"abc",
            "multipart/form-data; boundary=\"abc\"def",
            "multipart/form-data; charset; boundary=abc",
        ] {
            assert_eq!(b(ct), None, "{ct}");
        }
    }

    #[test]
    fn bodies_split_into_parts() {
        let body = b"preamble\r\n--XY\r\nContent-Disposition: form-data; name=\"a\"\r\n\r\none\r\n\
                     --XY \t\r\nContent-Disposition: form-data; name=\"f\"; filename=\"x.png\"\r\n\
                     Content-Type: image/png\r\n\r\n\x89PNG\r\n\r\n--XY--\r\nepilogue";
        let m = split(body, b"XY").unwrap();
        assert_eq!(m.outside, [&b"preamble"[..], &b"\r\nepilogue"[..]]);
        assert_eq!(m.parts.len(), 2);
        assert_eq!(m.parts[0].content, b"one");
        assert_eq!(
            header(&m.parts[0], "content-disposition"),
            Some(&b"form-data; name=\"a\""[..])
        );
        assert_eq!(m.parts[1].content, b"\x89PNG\r\n");
        assert_eq!(header(&m.parts[1], "Content-Type"), Some(&b"image/png"[..]));
        assert!(names_file(
            header(&m.parts[1], "content-disposition").unwrap()
        ));
        assert!(!names_file(
            header(&m.parts[0], "content-disposition").unwrap()
        ));
        assert!(names_file(b"form-data; name=a; filename*=utf-8''%2e%2e"));
        assert!(!names_file(b"form-data; name=a; junk; filename=x"));
        assert!(!names_file(b"form-data; name=\"a"));

        // No preamble, an empty part, a folded header line, no epilogue.
        let m = split(
            b"--b\r\n\r\n\r\n--b\r\nX-A: 1\r\n 2\r\n\r\nv\r\n--b--",
            b"b",
        )
        .unwrap();
        assert_eq!(m.parts.len(), 2);
        assert_eq!(
            m.parts[0],
            Part {
                headers: vec![],
                content: b""
            }
        );
        assert_eq!(
            m.parts[1].headers,
            vec![(&b"X-A"[..], &b"1"[..]), (&b"X-A"[..], &b"2"[..])]
        );
        assert_eq!(m.outside, [&b""[..], &b""[..]]);
    }

    #[test]
    fn malformed_bodies_do_not_split() {
        for body in [
            &b""[..],
            b"no delimiter at all",
            b"--b\r\nA: 1\r\n\r\nx",                // no close delimiter
            b"--b\r\nA: 1\r\n\r\nx\r\n--b",         // nor here
            b"--b\nA: 1\n\nx\n--b--",               // bare LF
            b"--bx\r\nA: 1\r\n\r\nx\r\n--b--",      // junk after the boundary
            b"--b\r\nA 1\r\n\r\nx\r\n--b--",        // header line without a colon
            b"--b\r\nA: 1\r\nB: 2\r\n--b--",        // headers that never end
            b"--b\r\n 1\r\n\r\nx\r\n--b--",         // a fold with nothing to continue
            b"--b\r\nA: 1\nB: 2\r\n\r\nx\r\n--b--", // a bare LF inside a header line
        ] {
            assert_eq!(
                split(body, b"b"),
                None,
                "{:?}",
                String::from_utf8_lossy(body)
            );
        }
        let many: Vec<u8> = (0..=MAX_PARTS)
            .flat_map(|_| b"--b\r\n\r\nx\r\n".iter().copied())
            .chain(b"--b--".iter().copied())
            .collect();
        assert_eq!(split(&many, b"b"), None);
    }

    proptest::proptest! {
        /// Any bytes, any boundary: no panic, and the parts lie inside the body in order.
        #[test]
        fn any_input_splits_or_not_without_panic(
            body in proptest::collection::vec(proptest::prop_oneof![
                proptest::strategy::Just(b'\r'), proptest::strategy::Just(b'\n'),
                proptest::strategy::Just(b'-'), proptest::strategy::Just(b'b'),
                proptest::strategy::Just(b':'), proptest::strategy::Just(b' '),
                proptest::num::u8::ANY,
            ], 0..200),
            ct in proptest::collection::vec(proptest::num::u8::ANY, 0..60),
        ) {
            let _ = boundary(&ct);
            let _ = params(&ct).count();
            let _ = decoded(&body, Some(b"base64"));
            let _ = decoded(&body, Some(b"quoted-printable"));
            if let Some(m) = split(&body, b"b") {
                let mut total = m.outside[0].len() + m.outside[1].len();
                for p in &m.parts {
                    total += p.content.len();
                    let _ = names_file(header(p, "content-disposition").unwrap_or_default());
                }
                proptest::prop_assert!(total <= body.len());
            }
        }
    }

    #[test]
    fn transfer_encodings_decode() {
        let d =
            |c: &[u8], e: Option<&str>| decoded(c, e.map(str::as_bytes)).map(|c| c.into_owned());
        assert_eq!(d(b"PHNjcmlw\r\ndD4=", Some("BASE64")).unwrap(), b"<script>");
        assert_eq!(d(b"not base64!", Some("base64")), None);
        assert_eq!(
            d(b"=3Cscr=\r\nipt=3E =\n=zz=", Some("quoted-printable")).unwrap(),
            b"<script> =zz="
        );
        assert_eq!(d(b"=3C", Some("8bit")).unwrap(), b"=3C");
        assert_eq!(d(b"=3C", None).unwrap(), b"=3C");
    }
}
