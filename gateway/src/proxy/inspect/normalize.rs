//! Decoding and normalisation of one request part, before the rules see it.
//!
//! ```text
//!  raw bytes
//!    -> decode, in rounds until nothing changes (at most MAX_ROUNDS):
//!         %XX  %uXXXX  \uXXXX  \xXX  &entities;  overlong UTF-8  fullwidth forms
//!         + as space (query, form, headers)   \" \\ \/ \n ... (JSON bodies)
//!    -> fold, once: NUL noted then dropped, \ to /, ASCII lower case,
//!         whitespace runs to one space (one newline when the run had one)
//!  normalised bytes: what every rule matches
//! ```
//!
//! Every decoder turns a sequence into something no longer than itself, so the output is never
//! longer than the input. A part with nothing to decode or fold comes back borrowed: no
//! allocation. Rounds repeat because an encoded attack may be encoded again (`%252e` is `%2e`
//! is `.`), and because one decoder can reveal another's sequence (`%c0%ae` is two bytes that
//! are an overlong `.`). A second round also sees what the first produced, so `%26lt;` and
//! `&lt;` both end as `<`: decoding the percent-encoded form of a string gives what decoding
//! the string gives, one round later.
//!
//! [`sql_view`] is a second view, built only when SQL comments are present: comments become one
//! space, so `union/**/select` and `union#x\nselect` read `union select`. It is a separate view
//! because removing comment text from the only view would hide what is inside them from the
//! other rules (HTML has no `/* */` comments).
//!
//! [`shell_view`] is a third, for the command injection rules only: the text with the quotes
//! and backslashes a shell removes before it runs a word, so `;w'h'o'a'm'i`, `|c\at /x` and
//! `$(wh""oami)` read as the commands they are.

use std::borrow::Cow;

/// How a part is encoded beyond percent-encoding.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// The URL path.
    Path,
    /// A query or form name or value: `+` is a space.
    Form,
    /// A header value, or one cookie's name or value: `+` is a space too, as in the URLs
    /// (Referer) and form-encoded values (cookies) that headers carry.
    Header,
    /// A JSON body: JSON string escapes too.
    Json,
    /// A text or XML body.
    Text,
}

/// Decoding rounds at most. Three are enough for a triple percent-encoding; the others leave
/// room for an overlong sequence or an entity under it. A part still changing after that is
/// matched as it is then.
pub const MAX_ROUNDS: usize = 6;

/// A normalised part.
#[derive(Debug)]
pub struct Normalized<'a> {
    pub text: Cow<'a, [u8]>,
    /// A NUL byte was decoded (it is not in `text`).
    pub nul: bool,
    /// Decoding rounds that changed something.
    pub rounds: usize,
}

/// Decodes and folds `input`; see the module documentation.
pub fn normalize(input: &[u8], kind: Kind) -> Normalized<'_> {
    let mut text = Cow::Borrowed(input);
    let mut rounds = 0;
    while rounds < MAX_ROUNDS {
        match decode(&text, kind) {
            Some(next) => {
                text = Cow::Owned(next);
                rounds += 1;
            }
            None => break,
        }
    }
    let mut nul = false;
    if let Some(folded) = fold(&text, &mut nul) {
        text = Cow::Owned(folded);
    }
    Normalized { text, nul, rounds }
}

const TRIGGER: u8 = 1;
const TRIGGER_FORM: u8 = 2;
const FOLD: u8 = 4;
const SPACE: u8 = 8;

/// Per byte: whether it may start a sequence [`decode`] changes, or need [`fold`].
static CLASS: [u8; 256] = {
    let mut t = [0u8; 256];
    t[b'%' as usize] = TRIGGER;
    t[b'&' as usize] = TRIGGER;
    t[b'\\' as usize] = TRIGGER | FOLD;
    t[b'+' as usize] = TRIGGER_FORM;
    // Overlong UTF-8 leads, and the leads of the fullwidth forms and U+2215/U+2216.
    t[0xc0] = TRIGGER;
    t[0xc1] = TRIGGER;
    t[0xe0] = TRIGGER;
    t[0xf0] = TRIGGER;
    t[0xef] = TRIGGER;
    t[0xe2] = TRIGGER;
    let mut c = b'A';
    while c <= b'Z' {
        t[c as usize] = FOLD;
        c += 1;
    }
    t[0] = FOLD;
    // A no-break space: alone (Latin-1) or as C2 A0.
    t[0xa0] = FOLD;
    t[0xc2] = FOLD;
    t[b' ' as usize] = SPACE;
    t[b'\t' as usize] = SPACE | FOLD;
    // A single line break stays as it is.
    t[b'\n' as usize] = SPACE;
    t[0x0b] = SPACE | FOLD;
    t[0x0c] = SPACE | FOLD;
    t[b'\r' as usize] = SPACE | FOLD;
    t
};

fn hex(b: u8) -> Option<u32> {
    match b {
        b'0'..=b'9' => Some(u32::from(b - b'0')),
        b'a'..=b'f' => Some(u32::from(b - b'a' + 10)),
        b'A'..=b'F' => Some(u32::from(b - b'A' + 10)),
        _ => None,
    }
}

/// The value of `n` hex digits at the start of `s`.
fn hex_n(s: &[u8], n: usize) -> Option<u32> {
    if s.len() < n {
        return None;
    }
    s[..n].iter().try_fold(0, |v, &b| Some(v << 4 | hex(b)?))
}

fn push_char(out: &mut Vec<u8>, cp: u32) -> bool {
    match char::from_u32(cp) {
        Some(c) => {
            out.extend_from_slice(c.encode_utf8(&mut [0; 4]).as_bytes());
            true
        }
        None => false,
    }
}

/// A UTF-16 code unit at `s` (after `prefix`), joined with a low surrogate that follows as
/// `prefix` and four hex digits: the code point and the bytes used.
fn utf16(s: &[u8], prefix: &[u8]) -> Option<(u32, usize)> {
    let p = prefix.len();
    let unit = hex_n(s.get(p..)?, 4)?;
    if !(0xd800..0xdc00).contains(&unit) {
        return Some((unit, p + 4));
    }
    let rest = s.get(p + 4..)?;
    if !rest.starts_with(prefix) {
        return None;
    }
    let low = hex_n(&rest[p..], 4)?;
    if !(0xdc00..0xe000).contains(&low) {
        return None;
    }
    Some((
        0x10000 + ((unit - 0xd800) << 10) + (low - 0xdc00),
        2 * (p + 4),
    ))
}

/// HTML named character references that matter for attacks; matched without regard to case,
/// with their `;`.
const ENTITIES: &[(&str, u8)] = &[
    ("lt", b'<'),
    ("gt", b'>'),
    ("amp", b'&'),
    ("quot", b'"'),
    ("apos", b'\''),
    ("colon", b':'),
    ("sol", b'/'),
    ("bsol", b'\\'),
    ("lpar", b'('),
    ("rpar", b')'),
    ("tab", b'\t'),
    ("newline", b'\n'),
    ("nbsp", b' '),
    ("equals", b'='),
    ("grave", b'`'),
    ("period", b'.'),
    ("comma", b','),
    ("excl", b'!'),
    ("num", b'#'),
    ("semi", b';'),
    ("lsqb", b'['),
    ("rsqb", b']'),
    ("lbrack", b'['),
    ("rbrack", b']'),
    ("lcub", b'{'),
    ("rcub", b'}'),
    ("lbrace", b'{'),
    ("rbrace", b'}'),
    ("dollar", b'$'),
    ("percnt", b'%'),
    ("plus", b'+'),
    ("ast", b'*'),
    ("midast", b'*'),
    ("quest", b'?'),
    ("commat", b'@'),
    ("verbar", b'|'),
    ("vert", b'|'),
    ("hyphen", b'-'),
    ("dash", b'-'),
    ("lowbar", b'_'),
    ("hat", b'^'),
];

/// A character reference at `s` (which starts with `&`): the code point and the bytes used.
/// Numeric ones may go without `;` and have any number of leading zeros, as browsers allow.
fn entity(s: &[u8]) -> Option<(u32, usize)> {
    if s.get(1) == Some(&b'#') {
        let (radix, start) = match s.get(2) {
            Some(b'x' | b'X') => (16, 3),
            _ => (10, 2),
        };
        let mut i = start;
        let mut value: u32 = 0;
        while let Some(d) = s.get(i).and_then(|&b| (b as char).to_digit(radix)) {
            // Saturates above the Unicode range, which is refused below.
            value = value.saturating_mul(radix).saturating_add(d).min(0x11_0000);
            i += 1;
        }
        if i == start {
            return None;
        }
        if s.get(i) == Some(&b';') {
            i += 1;
        }
        return Some((value, i));
    }
    let name_len = s[1..]
        .iter()
        .take(8)
        .take_while(|b| b.is_ascii_alphabetic())
        .count();
    if s.get(1 + name_len) != Some(&b';') {
        return None;
    }
    let name = &s[1..1 + name_len];
    ENTITIES
        .iter()
        .find(|(n, _)| n.as_bytes().eq_ignore_ascii_case(name))
        .map(|&(_, c)| (u32::from(c), name_len + 2))
}

/// A sequence at `s` that is not UTF-8's shortest form (or is a fullwidth or "best fit" form
/// of an ASCII character): its code point and length.
fn overlong(s: &[u8]) -> Option<(u32, usize)> {
    let cont = |i: usize| {
        s.get(i)
            .filter(|&&b| b & 0xc0 == 0x80)
            .map(|&b| u32::from(b & 0x3f))
    };
    match s[0] {
        0xc0 | 0xc1 => match (s[0], s.get(1)) {
            // What IIS made of invalid continuation bytes: %c0%2f, %c0%2e and %c1%1c.
            (0xc0, Some(&b @ (0x2e | 0x2f))) => Some((u32::from(b), 2)),
            (0xc1, Some(0x1c)) => Some((u32::from(b'\\'), 2)),
            _ => Some((u32::from(s[0] & 0x1f) << 6 | cont(1)?, 2)),
        },
        0xe0 if s.get(1).is_some_and(|&b| b < 0xa0) => Some((cont(1)? << 6 | cont(2)?, 3)),
        0xf0 if s.get(1).is_some_and(|&b| b < 0x90) => {
            Some((cont(1)? << 12 | cont(2)? << 6 | cont(3)?, 4))
        }
        // U+FF01..U+FF5E, the fullwidth forms of ASCII: what NFKC and "best fit" make of them.
        0xef => {
            let cp = 0xf000 | cont(1)? << 6 | cont(2)?;
            (0xff01..=0xff5e).contains(&cp).then(|| (cp - 0xfee0, 3))
        }
        // U+2215 DIVISION SLASH and U+2216 SET MINUS, which "best fit" turns into / and \.
        0xe2 => match (s.get(1), s.get(2)) {
            (Some(0x88), Some(0x95)) => Some((u32::from(b'/'), 3)),
            (Some(0x88), Some(0x96)) => Some((u32::from(b'\\'), 3)),
            _ => None,
        },
        _ => None,
    }
}

/// One decoding round; `None` when nothing changed (and nothing was allocated).
fn decode(input: &[u8], kind: Kind) -> Option<Vec<u8>> {
    let form = matches!(kind, Kind::Form | Kind::Header);
    let json = kind == Kind::Json;
    let mask = if form {
        TRIGGER | TRIGGER_FORM
    } else {
        TRIGGER
    };
    let first = input.iter().position(|&b| CLASS[b as usize] & mask != 0)?;
    let mut out = Vec::new();
    let mut changed = false;
    let mut i = first;
    let mut copied = 0;
    while i < input.len() {
        let s = &input[i..];
        // What the sequence at `i` decodes to, and its length.
        let hit: Option<(u32, usize)> = match s[0] {
            b'%' => match s.get(1) {
                Some(b'u' | b'U') => utf16(s, b"%u").or_else(|| utf16(s, b"%U")),
                _ => hex_n(&s[1..], 2).map(|b| (b, 3)),
            },
            b'+' if form => Some((u32::from(b' '), 1)),
            b'\\' => match s.get(1) {
                Some(b'u') => utf16(s, b"\\u"),
                Some(b'x') => hex_n(&s[2..], 2).map(|b| (b, 4)),
                Some(&c) if json => match c {
                    b'"' | b'\\' | b'/' => Some(c),
                    b'n' => Some(b'\n'),
                    b't' => Some(b'\t'),
                    b'r' => Some(b'\r'),
                    b'b' => Some(0x08),
                    b'f' => Some(0x0c),
                    _ => None,
                }
                .map(|b| (u32::from(b), 2)),
                _ => None,
            },
            b'&' => entity(s),
            0xc0 | 0xc1 | 0xe0 | 0xf0 | 0xef | 0xe2 => overlong(s),
            _ => None,
        };
        // Percent and \x escapes give bytes; the others code points.
        let byte = matches!(s[0], b'%' | b'\\') && !matches!(s.get(1), Some(b'u' | b'U'));
        match hit {
            Some((value, n)) if byte || char::from_u32(value).is_some() => {
                if !changed {
                    out.reserve_exact(input.len());
                    changed = true;
                }
                out.extend_from_slice(&input[copied..i]);
                if byte {
                    out.push(value as u8);
                } else {
                    push_char(&mut out, value);
                }
                i += n;
                copied = i;
            }
            _ => i += 1,
        }
        // Skip ahead to the next byte that may start a sequence.
        match input[i..]
            .iter()
            .position(|&b| CLASS[b as usize] & mask != 0)
        {
            Some(p) => i += p,
            None => break,
        }
    }
    if !changed {
        return None;
    }
    out.extend_from_slice(&input[copied..]);
    Some(out)
}

/// Folds case, slashes and whitespace, and drops NUL bytes (setting `nul`); `None` when there
/// is nothing to fold.
fn fold(input: &[u8], nul: &mut bool) -> Option<Vec<u8>> {
    // The first byte to change: one to fold, or the second of a whitespace run.
    let mut prev_space = false;
    let mut first = input.iter().position(|&b| {
        let c = CLASS[b as usize];
        let second = prev_space && c & SPACE != 0;
        prev_space = c & SPACE != 0;
        c & FOLD != 0 || second
    })?;
    // Start at the whitespace run the first change may belong to.
    while first > 0 && CLASS[input[first - 1] as usize] & SPACE != 0 {
        first -= 1;
    }
    let mut out = Vec::with_capacity(input.len());
    out.extend_from_slice(&input[..first]);
    // A whitespace run not yet written: b' ', or b'\n' when the run had a line break.
    let mut pending: Option<u8> = None;
    let mut i = first;
    while i < input.len() {
        let b = input[i];
        let after_ascii = i == 0 || input[i - 1] < 0x80;
        i += 1;
        let space = match b {
            b' ' | b'\t' | 0x0b | 0x0c => Some(b' '),
            b'\n' | b'\r' => Some(b'\n'),
            // A no-break space: alone after ASCII (Latin-1), or U+00A0 as C2 A0.
            0xa0 if after_ascii => Some(b' '),
            0xc2 if input.get(i) == Some(&0xa0) => {
                i += 1;
                Some(b' ')
            }
            _ => None,
        };
        if let Some(s) = space {
            pending = Some(if pending == Some(b'\n') { b'\n' } else { s });
            continue;
        }
        if b == 0 {
            *nul = true;
            continue;
        }
        if let Some(s) = pending.take() {
            out.push(s);
        }
        out.push(match b {
            b'\\' => b'/',
            _ => b.to_ascii_lowercase(),
        });
    }
    if let Some(s) = pending {
        out.push(s);
    }
    Some(out)
}

/// The text without `'` and `"`, and without the backslashes inside a word, as a POSIX shell
/// reads a word after quote removal (the normaliser has made each `\` a `/`, so a `/` between
/// two letters goes: `c\at` is `cat` to the shell); `None` unless the text has one of them and
/// something that could start a command (`;`, `|`, `&`, a line break, `$(` or a backtick),
/// which the command injection rules all look for.
pub fn shell_view(text: &[u8]) -> Option<Vec<u8>> {
    let in_word = |i: usize| {
        text[i] == b'/'
            && i > 0
            && text[i - 1].is_ascii_alphabetic()
            && text.get(i + 1).is_some_and(u8::is_ascii_alphabetic)
    };
    // Expansions that are empty wherever they stand (`w$@hoami` is `whoami`): `$@`, `$*` and
    // `$1`..`$9` (no arguments), `$()` and two backticks (a command that prints nothing).
    let empty = |i: usize| match (text[i], text.get(i + 1), text.get(i + 2)) {
        (b'$', Some(b'@' | b'*' | b'1'..=b'9'), _) | (b'`', Some(b'`'), _) => 2,
        (b'$', Some(b'('), Some(b')')) => 3,
        _ => 0,
    };
    let (mut quoted, mut command) = (false, false);
    for (i, &b) in text.iter().enumerate() {
        match b {
            b'\'' | b'"' => quoted = true,
            b'/' if in_word(i) => quoted = true,
            _ if empty(i) > 0 => {
                quoted = true;
                command |= b == b'`' || text.get(i + 1) == Some(&b'(');
            }
            b';' | b'|' | b'&' | b'\n' | b'`' => command = true,
            b'$' if text.get(i + 1) == Some(&b'(') => command = true,
            _ => {}
        }
    }
    (quoted && command).then(|| {
        let mut out = Vec::with_capacity(text.len());
        let mut i = 0;
        while i < text.len() {
            match empty(i) {
                0 => {
                    if !matches!(text[i], b'\'' | b'"') && !in_word(i) {
                        out.push(text[i]);
                    }
                    i += 1;
                }
                n => i += n,
            }
        }
        out
    })
}

/// The text with SQL comments (`/* */`, `-- ` and `#` to the end of the line) each turned into
/// one space, and MySQL's executed comments (`/*!50000 ... */`) opened; `None` when it has no
/// such comment. Line comments without a line break after them are left: they end the text.
pub fn sql_view(text: &[u8]) -> Option<Vec<u8>> {
    let start = text
        .windows(2)
        .position(|w| w == b"/*" || w == b"--" || w[0] == b'#')
        .or_else(|| (text.last() == Some(&b'#')).then(|| text.len() - 1))?;
    let mut out = Vec::with_capacity(text.len());
    let push = |out: &mut Vec<u8>, b: u8| {
        if b == b' ' && out.last().is_some_and(|&l| l == b' ' || l == b'\n') {
            return;
        }
        out.push(b);
    };
    let mut changed = false;
    let mut executed = false;
    let mut i = start;
    out.extend_from_slice(&text[..start]);
    while i < text.len() {
        let rest = &text[i..];
        let line_end = || rest.iter().position(|&b| b == b'\n');
        if rest.starts_with(b"/*!") {
            i += 3 + rest[3..].iter().take_while(|b| b.is_ascii_digit()).count();
            executed = true;
            changed = true;
            push(&mut out, b' ');
        } else if rest.starts_with(b"*/") && executed {
            i += 2;
            executed = false;
            push(&mut out, b' ');
        } else if rest.starts_with(b"/*") {
            match rest[2..].windows(2).position(|w| w == b"*/") {
                Some(p) => {
                    i += p + 4;
                    changed = true;
                    push(&mut out, b' ');
                }
                None => {
                    out.extend_from_slice(rest);
                    break;
                }
            }
        } else if rest.starts_with(b"--") || rest[0] == b'#' {
            match line_end() {
                Some(p) => {
                    i += p + 1;
                    changed = true;
                    push(&mut out, b' ');
                }
                None => {
                    out.extend_from_slice(rest);
                    break;
                }
            }
        } else {
            push(&mut out, rest[0]);
            i += 1;
        }
    }
    changed.then_some(out)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn norm(s: &str, kind: Kind) -> String {
        String::from_utf8_lossy(&normalize(s.as_bytes(), kind).text).into_owned()
    }

    fn pct(s: &[u8]) -> String {
        s.iter().map(|b| format!("%{b:02X}")).collect()
    }

    #[test]
    fn clean_parts_are_borrowed() {
        for s in [
            "/api/v1/users/42",
            "page=2",
            "a/b/c",
            "curl/8.5.0",
            "x y z",
            "",
        ] {
            let n = normalize(s.as_bytes(), Kind::Form);
            assert!(matches!(n.text, Cow::Borrowed(_)), "{s} was copied");
            assert!(!n.nul);
        }
    }

    #[test]
    fn decodes_every_form() {
        let cases = [
            ("%2e%2e%2f", Kind::Path, "../"),
            ("%252e%252e%252f", Kind::Path, "../"),
            ("%25252e%25252e%25252f", Kind::Path, "../"),
            ("%c0%ae%c0%ae%c0%af", Kind::Path, "../"),
            ("%e0%80%ae%e0%80%ae/", Kind::Path, "../"),
            ("%f0%80%80%ae", Kind::Path, "."),
            ("%25c0%25ae", Kind::Path, "."),
            ("%u002e%u002e%u2215", Kind::Path, "../"),
            ("%uff0e%uff0e%uff0f", Kind::Path, "../"),
            ("..%5c..%5c", Kind::Path, "../../"),
            ("..\\..\\", Kind::Header, "../../"),
            ("a+b%2Bc", Kind::Form, "a b c"),
            ("a+b", Kind::Path, "a+b"),
            ("a+b", Kind::Header, "a b"),
            ("%c0%2f%c1%1c%c1%9c", Kind::Path, "///"),
            ("&lt;ScRiPt&GT;", Kind::Text, "<script>"),
            ("&#60;&#x3C;&#0000060&#x003c", Kind::Text, "<<<<"),
            ("jav&#x09;ascript&colon;", Kind::Text, "jav ascript:"),
            ("\\u003cscript\\u003e", Kind::Json, "<script>"),
            ("\\u003cscript\\u003e", Kind::Header, "<script>"),
            ("\\\"x\\\\y\\/z\\n", Kind::Json, "\"x/y/z\n"),
            ("\\\"x", Kind::Header, "/\"x"),
            ("\\x3cb", Kind::Text, "<b"),
            ("\\ud83d\\ude00", Kind::Json, "\u{1f600}"),
            ("%26lt%3b", Kind::Form, "<"),
            ("UNION \t\n  SELECT", Kind::Text, "union\nselect"),
            ("a%a0b", Kind::Form, "a b"),
            ("a\u{a0}b", Kind::Form, "a b"),
            ("%", Kind::Form, "%"),
            ("%zz&foo;&#;\\q", Kind::Text, "%zz&foo;&#;/q"),
            ("%ud800", Kind::Form, "%ud800"),
        ];
        for (input, kind, want) in cases {
            assert_eq!(norm(input, kind), want, "{input} as {kind:?}");
        }
    }

    #[test]
    fn nul_is_noted_and_dropped() {
        for s in [
            "a%00b",
            "a%2500b",
            "a%c0%80b",
            "a&#0;b",
            "a\\u0000b",
            "a%u0000b",
        ] {
            let n = normalize(s.as_bytes(), Kind::Json);
            assert!(n.nul, "{s}");
            assert_eq!(&*n.text, b"ab", "{s}");
        }
    }

    #[test]
    fn shell_quotes_are_removed_where_a_command_could_start() {
        let view = |s: &str| shell_view(s.as_bytes()).map(|v| String::from_utf8(v).unwrap());
        assert_eq!(view(";w'h'o'a'm'i").as_deref(), Some(";whoami"));
        // The normaliser has turned `c\at` into `c/at`.
        // Paths lose their inner slashes in this view too; the rules see them in the text.
        assert_eq!(
            view("| c/at /etc/passwd").as_deref(),
            Some("| cat /etcpasswd")
        );
        assert_eq!(view("$(wh\"\"oami)").as_deref(), Some("$(whoami)"));
        assert_eq!(view("`i''d`").as_deref(), Some("`id`"));
        // Nothing to remove, or nothing a command could follow: no view.
        assert_eq!(view("; whoami"), None);
        assert_eq!(view("it's \"fine\""), None);
        assert_eq!(view("cost: $5 (or so)"), None);
    }

    #[test]
    fn sql_comments_become_spaces() {
        let view = |s: &str| sql_view(s.as_bytes()).map(|v| String::from_utf8(v).unwrap());
        assert_eq!(view("union/**/select").as_deref(), Some("union select"));
        assert_eq!(
            view("union /* x */ all select").as_deref(),
            Some("union all select")
        );
        assert_eq!(
            view("1/*!50000union*/select").as_deref(),
            Some("1 union select")
        );
        assert_eq!(view("union#x\nselect").as_deref(), Some("union select"));
        assert_eq!(view("union-- x\nselect").as_deref(), Some("union select"));
        assert_eq!(view("admin'--"), None);
        assert_eq!(view("a /* open"), None);
        assert_eq!(view("plain"), None);
    }

    /// Strings made of what attacks are made of, without `%` (so that their encoded form is
    /// what adds the only percent-decoding round).
    fn payload() -> impl Strategy<Value = String> {
        proptest::collection::vec(
            prop_oneof![
                "[a-zA-Z0-9]",
                Just(" ".to_string()),
                Just("\t".to_string()),
                Just("\n".to_string()),
                "[<>'\"/.;|&$()=+#*\\\\`-]",
                Just("&lt;".to_string()),
                Just("&#x2e;".to_string()),
                Just("\\u002f".to_string()),
                Just("\u{0}".to_string()),
                Just("\u{ff0e}".to_string()),
                Just("é".to_string()),
                Just("\u{a0}".to_string()),
            ],
            0..40,
        )
        .prop_map(|v| v.concat())
    }

    fn kind() -> impl Strategy<Value = Kind> {
        prop_oneof![
            Just(Kind::Path),
            Just(Kind::Form),
            Just(Kind::Header),
            Just(Kind::Json),
            Just(Kind::Text)
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        #[test]
        fn never_panics_and_never_grows(input in proptest::collection::vec(any::<u8>(), 0..256), kind in kind()) {
            let n = normalize(&input, kind);
            prop_assert!(n.text.len() <= input.len());
            prop_assert!(n.rounds <= MAX_ROUNDS);
            if let Some(v) = sql_view(&n.text) {
                prop_assert!(v.len() <= n.text.len());
            }
        }

        #[test]
        fn never_panics_on_near_misses(input in "(%|%u|%25|&#|&#x|\\\\u|\\\\x|[0-9a-fA-F]|\u{c0}|\u{e0}|[;&x]){0,40}", kind in kind()) {
            let n = normalize(input.as_bytes(), kind);
            prop_assert!(n.text.len() <= input.len());
        }

        #[test]
        fn encoding_does_not_change_the_result(s in payload(), kind in kind()) {
            let plain = normalize(s.as_bytes(), kind);
            prop_assume!(plain.rounds + 2 <= MAX_ROUNDS);
            let once = pct(s.as_bytes());
            let twice = pct(once.as_bytes());
            prop_assert_eq!(&normalize(once.as_bytes(), kind).text, &plain.text);
            prop_assert_eq!(&normalize(twice.as_bytes(), kind).text, &plain.text);
            prop_assert_eq!(normalize(once.as_bytes(), kind).nul, plain.nul);
        }

        #[test]
        fn normalising_twice_changes_nothing(s in payload(), kind in kind()) {
            let s = s.replace('\0', "");
            let n = normalize(s.as_bytes(), kind);
            // Dropping a NUL can join the halves of a sequence; so can an unfinished decoding.
            prop_assume!(!n.nul && n.rounds < MAX_ROUNDS);
            let again = normalize(&n.text, kind);
            prop_assert_eq!(&again.text, &n.text);
        }
    }
}
