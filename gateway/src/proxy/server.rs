//! The proxy's listeners and client connections: plain and TLS accept loops, connection limits,
//! idle and header-read timeouts, and graceful shutdown.
//!
//! Client connections live on [`Workers`]: one thread per core, each with a single-threaded
//! runtime, all accepting on the same listening sockets (as nginx's workers do). A connection
//! and the upstream connections its requests use stay on one thread, so a request costs no
//! cross-thread wakeups.
//!
//! Every request is handled by the config generation current when it arrives
//! ([`Shared::proxy`]), so a reload applies to open keep-alive connections too, without closing
//! them.

use std::{
    collections::HashMap,
    convert::Infallible,
    io,
    net::SocketAddr,
    pin::Pin,
    sync::{
        atomic::{
            AtomicU64, AtomicUsize,
            Ordering::{Relaxed, Release},
        },
        Arc,
    },
    task::{Context, Poll},
    time::{Duration, Instant, SystemTime},
};

use arc_swap::ArcSwap;
use hyper_util::rt::TokioIo;
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::{TcpListener, TcpStream},
    sync::watch,
    task::JoinHandle,
};

use hyper::{header::HeaderMap, Method, StatusCode};

use super::{
    smuggle::{Guard, Trip, Violation},
    Done, Proxy, Record, REQUEST_ID,
};
use crate::{config::Config, metrics::METRICS};

/// What every listener and connection shares.
pub struct Shared {
    /// The config generation in force.
    pub proxy: ArcSwap<Proxy>,
    /// Connections open now.
    open: AtomicUsize,
    /// Turns true when the daemon shuts down: connections finish their requests and close.
    pub(super) closing: watch::Sender<bool>,
    /// The same, for a look between requests without taking the channel's lock.
    pub(super) closing_now: std::sync::atomic::AtomicBool,
}

impl Shared {
    pub fn new(proxy: Proxy) -> Arc<Shared> {
        Arc::new(Shared {
            proxy: ArcSwap::from_pointee(proxy),
            open: AtomicUsize::new(0),
            closing: watch::channel(false).0,
            closing_now: std::sync::atomic::AtomicBool::new(false),
        })
    }
}

/// How a client reached the proxy, with the forwarding header values that say so, made once
/// per connection.
#[derive(Clone, Debug)]
pub struct ConnInfo {
    pub client: SocketAddr,
    pub tls: bool,
    /// The client's address, for X-Forwarded-For.
    pub ip: hyper::header::HeaderValue,
    /// `for=ADDR;proto=SCHEME`, for Forwarded.
    pub forwarded: hyper::header::HeaderValue,
    /// The first host named on the connection and its Forwarded value
    /// (`for=ADDR;proto=SCHEME;host="HOST"`), made once for the requests that name it again.
    forwarded_host:
        Arc<std::sync::OnceLock<(hyper::header::HeaderValue, hyper::header::HeaderValue)>>,
}

impl ConnInfo {
    /// The Forwarded value for a request to `host` without a Forwarded field of its own:
    /// `make` makes it, once per connection for the first host named on it.
    pub fn forwarded_with(
        &self,
        host: &hyper::header::HeaderValue,
        make: impl FnOnce() -> hyper::header::HeaderValue,
    ) -> hyper::header::HeaderValue {
        if let Some((h, v)) = self.forwarded_host.get() {
            if h == host {
                return v.clone();
            }
        }
        let value = make();
        // Only the first host is kept: a connection rarely names two.
        let _ = self.forwarded_host.set((host.clone(), value.clone()));
        value
    }

    pub fn new(client: SocketAddr, tls: bool) -> ConnInfo {
        let ip = client.ip().to_canonical();
        let proto = if tls { "https" } else { "http" };
        let for_value = match ip {
            std::net::IpAddr::V4(a) => format!("for={a};proto={proto}"),
            std::net::IpAddr::V6(a) => format!("for=\"[{a}]\";proto={proto}"),
        };
        let value = |s: String| {
            hyper::header::HeaderValue::from_maybe_shared(bytes::Bytes::from(s))
                .expect("addresses are valid header values")
        };
        ConnInfo {
            client,
            tls,
            ip: value(ip.to_string()),
            forwarded: value(for_value),
            forwarded_host: Arc::default(),
        }
    }
}

thread_local! {
    static WORKER: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// The index of the worker this thread is (0 outside the workers).
pub fn worker_index() -> usize {
    WORKER.with(|w| w.get())
}

/// The proxy's worker threads, each running a single-threaded runtime.
pub struct Workers {
    handles: Vec<tokio::runtime::Handle>,
    stops: Vec<tokio::sync::oneshot::Sender<()>>,
    threads: Vec<std::thread::JoinHandle<()>>,
    spread: Arc<Spread>,
}

/// Client connections open on each worker, as counters and as metrics. Apart from
/// [`Workers`], whose drop ends the threads: connections hold it.
struct Spread {
    open: Box<[AtomicUsize]>,
    gauges: Box<[prometheus::IntGauge]>,
}

impl Workers {
    /// Starts `n` workers (at least one), bound each to its own CPU when `pin` says so and
    /// there are enough CPUs (see [`cpus_for`]).
    pub fn start(n: usize, pin: bool) -> Result<Workers, String> {
        let cpus = if pin { cpus_for(n.max(1)) } else { None };
        let mut workers = Workers {
            handles: Vec::new(),
            stops: Vec::new(),
            threads: Vec::new(),
            spread: Arc::new(Spread {
                open: (0..n.max(1)).map(|_| AtomicUsize::new(0)).collect(),
                gauges: (0..n.max(1))
                    .map(|i| {
                        METRICS
                            .worker_connections
                            .with_label_values(&[&i.to_string()])
                    })
                    .collect(),
            }),
        };
        for i in 0..n.max(1) {
            let (handle_tx, handle_rx) = std::sync::mpsc::channel();
            let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
            let cpu = cpus.as_ref().map(|c| c[i]);
            let thread = std::thread::Builder::new()
                .name(format!("proxy-{i}"))
                .spawn(move || {
                    WORKER.with(|w| w.set(i));
                    if let Some(cpu) = cpu {
                        match bind_to_cpu(cpu) {
                            Ok(()) => {
                                tracing::debug!(worker = i, cpu, "proxy worker bound to its CPU")
                            }
                            Err(e) => tracing::warn!(
                                worker = i,
                                cpu,
                                error = %e,
                                "cannot bind the proxy worker to its CPU; the kernel places it"
                            ),
                        }
                    }
                    // I/O and timers only: signals and child processes are the main
                    // runtime's, and their drivers would be looked at every time the worker
                    // waits.
                    let runtime = match tokio::runtime::Builder::new_current_thread()
                        .enable_io()
                        .enable_time()
                        .build()
                    {
                        Ok(r) => r,
                        Err(e) => {
                            let _ = handle_tx.send(Err(e.to_string()));
                            return;
                        }
                    };
                    let _ = handle_tx.send(Ok(runtime.handle().clone()));
                    runtime.block_on(async {
                        // A timer that is always due within a second. Tokio wakes its driver,
                        // with a syscall, whenever a timer is set earlier than the wake-up it
                        // planned when it last went idle, which without this would happen to
                        // the timeout of many a request (a worker with nothing else pending
                        // plans none); with it, only timeouts under a second do.
                        let heartbeat = async {
                            let mut tick = tokio::time::interval(Duration::from_secs(1));
                            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                            loop {
                                tick.tick().await;
                            }
                        };
                        tokio::select! {
                            _ = stopped => {}
                            () = heartbeat => {}
                        }
                    });
                    // Connections still open after the shutdown deadline are cut here.
                    runtime.shutdown_timeout(Duration::from_millis(100));
                })
                .map_err(|e| format!("cannot start proxy worker {i}: {e}"))?;
            let handle = handle_rx
                .recv()
                .map_err(|_| format!("proxy worker {i} died at start"))?
                .map_err(|e| format!("cannot start the runtime of proxy worker {i}: {e}"))?;
            workers.handles.push(handle);
            workers.stops.push(stop);
            workers.threads.push(thread);
        }
        Ok(workers)
    }

    pub fn len(&self) -> usize {
        self.handles.len()
    }

    pub fn is_empty(&self) -> bool {
        self.handles.is_empty()
    }

    /// The worker a new connection goes to: the one with the fewest open, `here` (the worker
    /// that accepted it) among equals; counted as open there until the slot is dropped.
    ///
    /// Every worker accepts on the same sockets, and which one wins a connection is chance:
    /// 30 of 32 connections could land on one core while the other idles. Placed this way,
    /// they are spread evenly whatever the order they come in.
    fn place(&self, here: usize) -> Slot {
        let open = &self.spread.open;
        // Taken only if its count is still the one that made it the choice, so workers
        // placing connections at the same moment do not both pick the same one.
        let worker = loop {
            let (worker, n) = (0..open.len())
                .map(|i| (i, open[i].load(Relaxed)))
                .min_by_key(|&(i, n)| (n, i != here))
                .expect("at least one worker");
            if open[worker]
                .compare_exchange(n, n + 1, Relaxed, Relaxed)
                .is_ok()
            {
                break worker;
            }
        };
        self.spread.gauges[worker].inc();
        Slot {
            spread: self.spread.clone(),
            worker,
        }
    }
}

/// The CPU for each of `n` workers: the CPUs this process may run on, in order, when there are
/// at least `n` of them; `None` (workers left to the kernel) otherwise.
///
/// With as many workers as cores and the load generator, the upstream or anything else also
/// running, the kernel now and then lets two workers share a core while another waits for a
/// load-balancing pass: a request caught there waits a scheduler tick (4 ms) or more. A worker
/// that owns its core does not (nginx's `worker_cpu_affinity auto`, HAProxy's `cpu-map`).
fn cpus_for(n: usize) -> Option<Vec<usize>> {
    // SAFETY: a zeroed `cpu_set_t` is an empty set, and the kernel writes at most its size.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: as above; pid 0 is this thread, whose mask the process's threads inherit.
    let r = unsafe { libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) };
    if r != 0 {
        tracing::warn!(
            error = %std::io::Error::last_os_error(),
            "cannot read the CPUs this process may use; proxy workers are not bound to CPUs"
        );
        return None;
    }
    let cpus: Vec<usize> = (0..libc::CPU_SETSIZE as usize)
        // SAFETY: `c` is below the set's size.
        .filter(|&c| unsafe { libc::CPU_ISSET(c, &set) })
        .collect();
    if cpus.len() < n {
        tracing::info!(
            workers = n,
            cpus = cpus.len(),
            "more proxy workers than CPUs: they are not bound to CPUs"
        );
        return None;
    }
    Some(cpus)
}

/// Binds the calling thread to `cpu`.
fn bind_to_cpu(cpu: usize) -> std::io::Result<()> {
    if cpu >= libc::CPU_SETSIZE as usize {
        return Err(std::io::Error::from(std::io::ErrorKind::InvalidInput));
    }
    // SAFETY: a zeroed `cpu_set_t` is an empty set, and `cpu` is below its size.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    unsafe { libc::CPU_SET(cpu, &mut set) };
    // SAFETY: the set is initialised and its size is passed; pid 0 is the calling thread.
    let r = unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) };
    if r == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// A connection's place on a worker; see [`Workers::place`].
struct Slot {
    spread: Arc<Spread>,
    worker: usize,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.spread.open[self.worker].fetch_sub(1, Relaxed);
        self.spread.gauges[self.worker].dec();
    }
}

impl Drop for Workers {
    fn drop(&mut self) {
        for stop in self.stops.drain(..) {
            let _ = stop.send(());
        }
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

struct Running {
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl Running {
    async fn stop(self) {
        let _ = self.stop.send(true);
        for task in self.tasks {
            let _ = task.await;
        }
    }
}

/// The listeners open now, by address and kind (plain or TLS).
pub struct Listeners {
    shared: Arc<Shared>,
    workers: Arc<Workers>,
    running: HashMap<(SocketAddr, bool), Running>,
}

impl Listeners {
    pub fn new(shared: Arc<Shared>, workers: Arc<Workers>) -> Listeners {
        Listeners {
            shared,
            workers,
            running: HashMap::new(),
        }
    }

    /// Makes the listeners those of `config`: binds the new ones first (all or nothing, so a
    /// failure changes nothing), then stops accepting on the ones it no longer has. Open
    /// connections of a removed listener are left to finish.
    pub async fn apply(&mut self, config: &Config) -> Result<(), String> {
        let mut wanted: Vec<(SocketAddr, bool)> =
            config.proxy.listen.iter().map(|a| (*a, false)).collect();
        if let Some(tls) = &config.proxy.tls {
            wanted.extend(tls.listen.iter().map(|a| (*a, true)));
        }
        let mut bound = Vec::new();
        for key in &wanted {
            if self.running.contains_key(key) {
                continue;
            }
            let (addr, tls) = *key;
            let listener = std::net::TcpListener::bind(addr)
                .and_then(|l| l.set_nonblocking(true).map(|()| l))
                .map_err(|e| {
                    let key = if tls {
                        "proxy.tls.listen"
                    } else {
                        "proxy.listen"
                    };
                    format!("{key}: cannot listen on {addr}: {e}")
                })?;
            bound.push((*key, listener));
        }
        for (key, listener) in bound {
            tracing::info!(listen = %key.0, tls = key.1, workers = self.workers.len(), "proxy listening");
            let (stop, stopped) = watch::channel(false);
            let mut tasks = Vec::new();
            for handle in &self.workers.handles {
                let listener = listener
                    .try_clone()
                    .map_err(|e| format!("cannot share the listener on {}: {e}", key.0))?;
                let (shared, stopped) = (self.shared.clone(), stopped.clone());
                let workers = self.workers.clone();
                tasks.push(handle.spawn(async move {
                    match TcpListener::from_std(listener) {
                        Ok(l) => accept(l, key.1, shared, workers, stopped).await,
                        Err(e) => tracing::error!(error = %e, "proxy listener"),
                    }
                }));
            }
            self.running.insert(key, Running { stop, tasks });
        }
        let gone: Vec<_> = self
            .running
            .keys()
            .filter(|k| !wanted.contains(k))
            .copied()
            .collect();
        for key in gone {
            if let Some(r) = self.running.remove(&key) {
                r.stop().await;
                tracing::info!(listen = %key.0, tls = key.1, "listener closed");
            }
        }
        Ok(())
    }

    /// Stops accepting, asks every connection to close after its requests, and waits for them
    /// up to `deadline`; what is still open then is cut when the runtime ends.
    pub async fn shutdown(mut self, deadline: Duration) {
        for (_, r) in self.running.drain() {
            r.stop().await;
        }
        // Before the signal: a connection that skips polling `closing` looks here first.
        self.shared.closing_now.store(true, Release);
        let _ = self.shared.closing.send(true);
        let until = Instant::now() + deadline;
        while self.shared.open.load(Relaxed) > 0 && Instant::now() < until {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let left = self.shared.open.load(Relaxed);
        if left > 0 {
            tracing::warn!(
                connections = left,
                "shutdown deadline reached; cutting the connections still open"
            );
        }
    }
}

async fn accept(
    listener: TcpListener,
    tls: bool,
    shared: Arc<Shared>,
    workers: Arc<Workers>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let (stream, client) = tokio::select! {
            _ = stop.changed() => return,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "proxy accept");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let max = shared.proxy.load().limits.max_connections as usize;
        if shared.open.fetch_add(1, Relaxed) >= max {
            shared.open.fetch_sub(1, Relaxed);
            METRICS.connections_refused.inc();
            tracing::debug!(%client, max, "connection refused: proxy.max_connections open");
            continue;
        }
        METRICS.connections.inc();
        METRICS.open_connections.inc();
        let _ = stream.set_nodelay(true);
        let here = worker_index();
        let slot = workers.place(here);
        let open = Open(shared.clone());
        let info = ConnInfo::new(client, tls);
        if slot.worker == here {
            tokio::spawn(async move {
                connection(stream, info, &open.0).await;
                drop(slot);
            });
            continue;
        }
        // Moved to the other worker's reactor; on failure the guards count it closed.
        match stream.into_std() {
            Ok(stream) => {
                workers.handles[slot.worker].spawn(async move {
                    match TcpStream::from_std(stream) {
                        Ok(stream) => connection(stream, info, &open.0).await,
                        Err(e) => tracing::warn!(error = %e, "moving a connection to its worker"),
                    }
                    drop(slot);
                });
            }
            Err(e) => tracing::warn!(error = %e, "moving a connection to its worker"),
        }
    }
}

/// Counts a client connection as open until dropped.
struct Open(Arc<Shared>);

impl Drop for Open {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Relaxed);
        METRICS.open_connections.dec();
    }
}

async fn connection(stream: TcpStream, info: ConnInfo, shared: &Arc<Shared>) {
    let proxy = shared.proxy.load_full();
    let activity = Arc::new(Activity::default());
    let stream = Tracked {
        inner: stream,
        activity: activity.clone(),
    };
    if info.tls {
        let Some(config) = proxy.tls.clone() else {
            return;
        };
        let acceptor = tokio_rustls::TlsAcceptor::from(config);
        let handshake =
            tokio::time::timeout(proxy.limits.header_read_timeout, acceptor.accept(stream));
        match handshake.await {
            Ok(Ok(tls)) => {
                // HTTP/2 has no HTTP/1 framing to smuggle with.
                let h1 = tls.get_ref().1.alpn_protocol() != Some(b"h2");
                serve(tls, h1, info, shared, &proxy, activity).await
            }
            Ok(Err(e)) => {
                METRICS.tls_handshake_failures.inc();
                tracing::debug!(client = %info.client, error = %e, "TLS handshake failed");
            }
            Err(_) => {
                METRICS.tls_handshake_failures.inc();
                tracing::debug!(client = %info.client, "TLS handshake timed out");
            }
        }
    } else {
        serve(stream, true, info, shared, &proxy, activity).await;
    }
}

/// Serves the connection `io` (plain, or TLS already accepted); `h1` when it may speak
/// HTTP/1, whose framing is then checked.
async fn serve<S>(
    io: S,
    h1: bool,
    info: ConnInfo,
    shared: &Arc<Shared>,
    proxy: &Arc<Proxy>,
    activity: Arc<Activity>,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = {
        let shared = shared.clone();
        let activity = activity.clone();
        let info = info.clone();
        hyper::service::service_fn(move |req| {
            let shared = shared.clone();
            let activity = activity.clone();
            let info = info.clone();
            async move {
                activity.in_flight.fetch_add(1, Relaxed);
                let proxy = shared.proxy.load_full();
                let response = proxy
                    .handle(req.map(super::RequestBody::Incoming), info)
                    .await;
                activity.in_flight.fetch_sub(1, Relaxed);
                Ok::<_, Infallible>(response)
            }
        })
    };
    let refuse = Refuse {
        proxy: proxy.clone(),
        info: info.clone(),
        activity: activity.clone(),
    };
    // Plain HTTP/1.1 requests are served without hyper until one needs it (see `h1`).
    let (io, prefix) = if h1 {
        match super::h1::server::serve(io, &info, shared).await {
            super::h1::server::Exit::Closed => return,
            super::h1::server::Exit::HandOver(io, prefix) => (io, prefix),
        }
    } else {
        (io, bytes::Bytes::new())
    };
    let io = super::h1::Prefixed::new(io, prefix);
    // The guard sits between the (decrypted) stream and hyper: it must see the bytes exactly as
    // hyper will, and before hyper acts on them.
    let io = if h1 {
        let l = &proxy.limits;
        Guard::new(
            io,
            l.max_header_bytes as usize,
            l.max_headers as usize,
            l.header_read_timeout,
            refuse,
        )
    } else {
        Guard::passthrough(io, refuse)
    };
    let conn = proxy.builder.serve_connection(TokioIo::new(io), service);
    tokio::pin!(conn);
    let mut closing = shared.closing.subscribe();
    let idle = proxy.limits.idle_timeout;
    let mut tick = tokio::time::interval((idle / 4).max(Duration::from_millis(10)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut seen = (activity.ops.load(Relaxed), Instant::now());
    let mut shutting = *closing.borrow();
    if shutting {
        conn.as_mut().graceful_shutdown();
    }
    loop {
        tokio::select! {
            result = conn.as_mut() => {
                if let Err(e) = result {
                    tracing::debug!(client = %info.client, error = %e, "connection ended with an error");
                }
                return;
            }
            // The framing guard refused a request: finish the ones before it, then close
            // (the guard writes the 400 last).
            _ = activity.tripped.notified(), if !shutting => {
                shutting = true;
                conn.as_mut().graceful_shutdown();
            }
            _ = closing.changed(), if !shutting => {
                shutting = true;
                conn.as_mut().graceful_shutdown();
            }
            _ = tick.tick(), if !shutting => {
                let ops = activity.ops.load(Relaxed);
                if ops != seen.0 || activity.in_flight.load(Relaxed) > 0 {
                    seen = (ops, Instant::now());
                } else if seen.1.elapsed() >= idle {
                    tracing::debug!(client = %info.client, ?idle, "idle connection closed");
                    shutting = true;
                    conn.as_mut().graceful_shutdown();
                }
            }
        }
    }
}

/// A connection's traffic, for the idle timeout.
#[derive(Default)]
struct Activity {
    /// Reads and writes that moved bytes.
    ops: AtomicU64,
    /// Requests being handled (up to their response head).
    in_flight: AtomicUsize,
    /// The framing guard refused a request and hyper has everything before it.
    tripped: tokio::sync::Notify,
}

/// What a connection does when its framing guard refuses a request.
struct Refuse {
    proxy: Arc<Proxy>,
    info: ConnInfo,
    activity: Arc<Activity>,
}

impl Trip for Refuse {
    fn tripped(&mut self, v: &Violation) -> Option<Vec<u8>> {
        METRICS
            .framing_refused
            .with_label_values(&[v.problem.name()])
            .inc();
        tracing::debug!(
            client = %self.info.client,
            problem = v.problem.name(),
            in_body = v.in_body,
            "request refused for its framing"
        );
        (!v.in_body).then(|| self.proxy.framing_answer(&self.info, v))
    }

    fn drained(&mut self) {
        self.activity.tripped.notify_one();
    }
}

impl Proxy {
    /// The answer to a request head the framing guard refused, as bytes for the wire: a 400
    /// with the JSON error, the request id and the security headers. It is counted and
    /// audited as a request that matched no route.
    fn framing_answer(&self, info: &ConnInfo, v: &Violation) -> Vec<u8> {
        let id = self.ids.next();
        let id_str = id.to_str().unwrap_or_default();
        let message = v.problem.message();
        let status = StatusCode::BAD_REQUEST;
        let body = serde_json::json!({
            "error": "bad_request",
            "message": message,
            "status": status.as_u16(),
            "request_id": id_str,
        })
        .to_string();
        let audit = self.audit.enabled().then(|| {
            let method = v.method.as_deref().unwrap_or("-");
            Box::new(Record {
                time: SystemTime::now(),
                id: id_str.to_string(),
                client: info.client.ip(),
                method: Method::from_bytes(method.as_bytes()).unwrap_or(Method::GET),
                host: None,
                path: v.target.clone().unwrap_or_default(),
                route: None,
                upstream: None,
                target: None,
                error: Some(message),
                subject: None,
                decision: Some("deny"),
                rule: Some(format!("framing:{}", v.problem.name())),
                bytes_in: Arc::new(AtomicU64::new(0)),
            })
        });
        // Dropped at the end: the request metrics and the audit line.
        let _done = Done {
            started: Instant::now(),
            metrics: self.unrouted.clone(),
            audit,
            sink: self.audit.clone(),
            status: status.as_u16(),
            bytes_out: body.len() as u64,
            in_flight: None,
        };
        let mut headers = HeaderMap::new();
        self.headers.apply(&mut headers, info.tls);
        let mut out = Vec::with_capacity(512 + body.len());
        out.extend_from_slice(
            b"HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\nconnection: close\r\n",
        );
        out.extend_from_slice(format!("content-length: {}\r\n", body.len()).as_bytes());
        for (name, value) in headers.iter().chain([(&REQUEST_ID, &id)]) {
            super::h1::field(&mut out, name, value);
        }
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(body.as_bytes());
        out
    }
}

/// A stream that counts its reads and writes.
struct Tracked<S> {
    inner: S,
    activity: Arc<Activity>,
}

impl<S: AsyncRead + Unpin> AsyncRead for Tracked<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() != before {
            self.activity.ops.fetch_add(1, Relaxed);
        }
        r
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Tracked<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.ops.fetch_add(1, Relaxed);
        }
        r
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.ops.fetch_add(1, Relaxed);
        }
        r
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

#[cfg(test)]
mod tests {
    use std::cell::Cell;

    use hyper::header::HeaderValue;

    use super::ConnInfo;

    /// The Forwarded value with a host is made once for the connection's first host, and
    /// made each time for any other; clones of the connection's info share it.
    #[test]
    fn forwarded_with_host_is_made_once_per_connection() {
        let info = ConnInfo::new("198.18.0.7:4000".parse().unwrap(), false);
        let made = Cell::new(0);
        let make = |h: &str| {
            made.set(made.get() + 1);
            HeaderValue::from_str(&format!("for=198.18.0.7;proto=http;host=\"{h}\"")).unwrap()
        };
        let a = HeaderValue::from_static("a.example");
        let b = HeaderValue::from_static("b.example");
        let first = info.forwarded_with(&a, || make("a.example"));
        assert_eq!(first, "for=198.18.0.7;proto=http;host=\"a.example\"");
        let clone = info.clone();
        assert_eq!(clone.forwarded_with(&a, || make("a.example")), first);
        assert_eq!(made.get(), 1);
        let other = info.forwarded_with(&b, || make("b.example"));
        assert_eq!(other, "for=198.18.0.7;proto=http;host=\"b.example\"");
        assert_eq!(made.get(), 2);
        assert_eq!(info.forwarded_with(&a, || make("a.example")), first);
        assert_eq!(made.get(), 2, "the first host is still kept");
    }
}
