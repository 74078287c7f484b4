//! JSON Web Tokens signed with the `openssl` command, for the bench and the demo: no Rust crypto
//! in the xtask, and the same tool the keys are made with.

use std::{
    io::Write as _,
    process::{Command, Stdio},
};

use anyhow::{ensure, Context as _, Result};

/// `header.claims.signature`, the signature from `openssl dgst -sha256 -binary ARGS` over the
/// first two parts (`-hmac SECRET` for HS256, `-sign KEY.pem` for RS256).
pub fn sign(header: &str, claims: &str, args: &[&str]) -> Result<String> {
    let input = format!(
        "{}.{}",
        b64url(header.as_bytes()),
        b64url(claims.as_bytes())
    );
    let mut child = Command::new("openssl")
        .args(["dgst", "-sha256", "-binary"])
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("running openssl dgst")?;
    // Small enough for the pipe buffer: write all, then read.
    child
        .stdin
        .take()
        .expect("piped stdin")
        .write_all(input.as_bytes())
        .context("writing to openssl dgst")?;
    let out = child
        .wait_with_output()
        .context("waiting for openssl dgst")?;
    ensure!(
        out.status.success(),
        "openssl dgst failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(format!("{input}.{}", b64url(&out.stdout)))
}

/// Base64url without padding (RFC 7515 section 2).
pub fn b64url(data: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, b)| n | u32::from(*b) << (16 - 8 * i));
        for i in 0..=chunk.len() {
            out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64url_without_padding() {
        assert_eq!(b64url(b""), "");
        assert_eq!(b64url(b"f"), "Zg");
        assert_eq!(b64url(b"fo"), "Zm8");
        assert_eq!(b64url(b"foo"), "Zm9v");
        assert_eq!(b64url(b"\xfb\xff"), "-_8");
    }
}
