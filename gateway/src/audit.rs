//! The audit log: one JSON line per request, written by a thread of its own to stdout or to a
//! file (appended to, reopened on SIGHUP and reload so logrotate can move it away).
//!
//! Requests hand their line to the writer through a bounded queue and never wait on the disk.
//! The writer flushes whenever the queue runs empty, so at low load every line is on disk at
//! once; when the queue is full, lines are dropped and counted
//! (`gateway_audit_dropped_total`).

use std::{
    fs::{File, OpenOptions},
    io::{self, BufWriter},
    os::unix::fs::OpenOptionsExt as _,
    path::{Path, PathBuf},
    sync::{
        mpsc::{self, Receiver, SyncSender, TrySendError},
        Arc,
    },
};

use arc_swap::ArcSwapOption;
use serde::Serialize;

use crate::metrics::METRICS;

/// Lines the queue holds before new ones are dropped.
const QUEUE: usize = 65_536;

/// One request, as the audit log records it.
#[derive(Debug, Serialize)]
pub struct Line<'a> {
    pub time: String,
    pub request_id: &'a str,
    pub client: String,
    pub method: &'a str,
    pub host: Option<&'a str>,
    pub path: &'a str,
    pub route: Option<&'a str>,
    pub upstream: Option<&'a str>,
    pub target: Option<&'a str>,
    pub status: u16,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub latency_ms: f64,
    /// Why the gateway answered itself, when it did (no route, upstream failure, limit...).
    pub error: Option<&'a str>,
    /// The authenticated subject, when there is one.
    pub subject: Option<&'a str>,
    /// `deny` when a security phase refused the request; `log` when inspection only noted a
    /// finding; `allow` when authentication let it in (the rule names the provider).
    pub decision: Option<&'a str>,
    /// The rule behind the decision (`auth:...`, `ratelimit:NAME`, `inspect:ID`...).
    pub rule: Option<&'a str>,
}

enum Msg {
    Line(Vec<u8>),
    Reopen,
}

/// Where audit lines go.
#[derive(Clone, Debug, PartialEq)]
pub enum Output {
    Off,
    Stdout,
    File(PathBuf),
}

impl Output {
    pub fn parse(text: &str) -> Output {
        match text {
            "off" => Output::Off,
            "stdout" | "-" => Output::Stdout,
            path => Output::File(path.into()),
        }
    }

    /// Fails when the output is a file that cannot be opened for appending.
    pub fn check(&self) -> Result<(), String> {
        match self {
            Output::File(path) => open(path).map(drop),
            _ => Ok(()),
        }
    }
}

/// The audit log's front end, shared by every config generation.
#[derive(Default)]
pub struct Audit {
    sink: ArcSwapOption<Sink>,
}

struct Sink {
    output: Output,
    tx: SyncSender<Msg>,
    thread: std::thread::JoinHandle<()>,
}

impl Audit {
    /// Whether lines are wanted at all (the proxy skips gathering them when not).
    pub fn enabled(&self) -> bool {
        self.sink.load().is_some()
    }

    /// Sends lines to `output` from now on; a file is opened (or reopened) at once, so an
    /// unwritable path is an error here and changes nothing.
    pub fn set_output(&self, output: Output) -> Result<(), String> {
        let current = self.sink.load_full();
        if let Some(sink) = current.as_ref().filter(|s| s.output == output) {
            // Same destination: reopen, for logrotate.
            let _ = sink.tx.send(Msg::Reopen);
            return Ok(());
        }
        let writer = match &output {
            Output::Off => {
                self.sink.store(None);
                return Ok(());
            }
            Output::Stdout => Writer::Stdout(BufWriter::new(io::stdout())),
            Output::File(path) => Writer::File(BufWriter::new(open(path)?), path.clone()),
        };
        let (tx, rx) = mpsc::sync_channel(QUEUE);
        let thread = std::thread::Builder::new()
            .name("audit".into())
            .spawn(move || write_lines(rx, writer))
            .map_err(|e| format!("cannot start the audit writer: {e}"))?;
        // The old sink's thread drains its queue and ends when its sender drops.
        self.sink.store(Some(Arc::new(Sink { output, tx, thread })));
        Ok(())
    }

    /// Queues one line.
    pub fn record(&self, line: &Line<'_>) {
        self.record_json(line);
    }

    /// Queues one event line: a JSON object whose `type` says what it is (`xdp_drop`,
    /// `autoban`); request lines have no `type`.
    pub fn record_event<T: Serialize>(&self, line: &T) {
        self.record_json(line);
    }

    fn record_json<T: Serialize + ?Sized>(&self, line: &T) {
        let guard = self.sink.load();
        let Some(sink) = guard.as_ref() else { return };
        let mut bytes = Vec::with_capacity(384);
        if serde_json::to_writer(&mut bytes, line).is_err() {
            return;
        }
        bytes.push(b'\n');
        match sink.tx.try_send(Msg::Line(bytes)) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => METRICS.audit_dropped.inc(),
            Err(TrySendError::Disconnected(_)) => METRICS.audit_dropped.inc(),
        }
    }

    /// Stops the writer after it has written every queued line.
    pub fn close(&self) {
        if let Some(sink) = self.sink.swap(None).and_then(|s| Arc::try_unwrap(s).ok()) {
            drop(sink.tx);
            let _ = sink.thread.join();
        }
    }
}

fn open(path: &Path) -> Result<File, String> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o640)
        .open(path)
        .map_err(|e| format!("audit.output: cannot open {}: {e}", path.display()))
}

enum Writer {
    Stdout(BufWriter<io::Stdout>),
    File(BufWriter<File>, PathBuf),
}

impl Writer {
    fn out(&mut self) -> &mut dyn io::Write {
        match self {
            Writer::Stdout(w) => w,
            Writer::File(w, _) => w,
        }
    }
}

fn write_lines(rx: Receiver<Msg>, mut writer: Writer) {
    let mut failing = false;
    let mut handle = |writer: &mut Writer, msg: Msg| match msg {
        Msg::Line(bytes) => {
            if let Err(e) = writer.out().write_all(&bytes) {
                if !failing {
                    tracing::error!(error = %e, "audit log write failed");
                }
                failing = true;
            } else {
                failing = false;
            }
        }
        Msg::Reopen => {
            let _ = writer.out().flush();
            if let Writer::File(w, path) = writer {
                match open(path) {
                    Ok(file) => *w = BufWriter::new(file),
                    Err(e) => {
                        tracing::error!(error = %e, "audit log reopen failed; writing on to the old file")
                    }
                }
            }
        }
    };
    while let Ok(msg) = rx.recv() {
        handle(&mut writer, msg);
        while let Ok(msg) = rx.try_recv() {
            handle(&mut writer, msg);
        }
        let _ = writer.out().flush();
    }
    let _ = writer.out().flush();
}
