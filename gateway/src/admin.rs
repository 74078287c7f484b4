//! The admin socket: a Unix stream socket on which the CLI sends one JSON request per line and
//! reads one JSON response per line. Only root and the daemon's own user may connect (checked
//! with SO_PEERCRED on every connection, besides the socket file's 0600 mode).

use std::{
    io::{BufRead as _, BufReader, Read as _, Write as _},
    os::unix::net::UnixStream,
    path::Path,
    time::Duration,
};

use serde::{Deserialize, Serialize};

use crate::lists::ListKind;

/// Largest request accepted: a million-line import fits many times over.
pub const MAX_REQUEST: u64 = 256 << 20;

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(tag = "cmd", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    /// Adds (or updates) entries.
    Add {
        list: ListKind,
        nets: Vec<String>,
        #[serde(default)]
        ttl_ms: Option<u64>,
        #[serde(default)]
        reason: Option<String>,
        origin: String,
    },
    /// Removes entries; all must be present.
    Remove {
        list: ListKind,
        nets: Vec<String>,
    },
    /// Removes every entry of a list.
    Clear {
        list: ListKind,
    },
    /// The entries of a list.
    List {
        list: ListKind,
    },
    /// Overrides the configured rate limit (persisted until reset). Unset fields keep their
    /// current values, except the burst, which defaults to one second's worth of packets.
    RateSet {
        pps: u64,
        #[serde(default)]
        burst: Option<u64>,
        #[serde(default)]
        prefix4: Option<u32>,
        #[serde(default)]
        prefix6: Option<u32>,
    },
    /// Drops the override: back to the configured rate limit.
    RateReset,
    RateShow,
    /// The counters; with `top`, also the `top` sources the XDP program dropped most.
    Stats {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        top: Option<u32>,
    },
    /// Reloads the config file the daemon was started with.
    Reload,
    /// Detaches the XDP program and removes its pins; the daemon runs on without XDP.
    Detach,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Response {
    pub ok: bool,
    /// One line for a human, on success.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// One line saying what went wrong, on failure.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "serde_json::Value::is_null")]
    pub data: serde_json::Value,
}

impl Response {
    pub fn ok(message: impl Into<String>) -> Response {
        Response {
            ok: true,
            message: Some(message.into()),
            ..Response::default()
        }
    }

    pub fn data(data: serde_json::Value) -> Response {
        Response {
            ok: true,
            data,
            ..Response::default()
        }
    }

    pub fn error(error: impl Into<String>) -> Response {
        Response {
            ok: false,
            error: Some(error.into()),
            ..Response::default()
        }
    }
}

/// Sends `request` to the daemon at `socket` and returns its response. Errors are one line,
/// ready for the operator.
pub fn call(socket: &Path, request: &Request) -> Result<Response, String> {
    let mut stream = UnixStream::connect(socket).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused => format!(
            "the gateway daemon is not running (no admin socket at {}); start it with `gateway run --config FILE` or pass --socket",
            socket.display()
        ),
        std::io::ErrorKind::PermissionDenied => format!(
            "permission denied on {}: the admin socket is for root only",
            socket.display()
        ),
        _ => format!("cannot connect to {}: {e}", socket.display()),
    })?;
    // Large imports and lists take a while; a hung daemon must not hang the CLI forever.
    let _ = stream.set_read_timeout(Some(Duration::from_secs(300)));
    let mut line =
        serde_json::to_vec(request).map_err(|e| format!("cannot encode request: {e}"))?;
    line.push(b'\n');
    stream
        .write_all(&line)
        .and_then(|_| stream.flush())
        .map_err(|e| format!("cannot send to the daemon: {e}"))?;
    let mut reader = BufReader::new(stream.take(MAX_REQUEST));
    let mut reply = Vec::new();
    reader
        .read_until(b'\n', &mut reply)
        .map_err(|e| format!("no answer from the daemon: {e}"))?;
    if reply.is_empty() {
        return Err("the daemon closed the connection without answering".into());
    }
    serde_json::from_slice(&reply).map_err(|e| format!("unreadable answer from the daemon: {e}"))
}
