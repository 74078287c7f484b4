//! `gateway run`: loads the lists, loads and attaches the XDP program (adopting the pinned one
//! of a previous daemon), runs the proxy, serves the admin socket and the metrics, expires TTL
//! entries, reloads the config on SIGHUP or `gateway reload`, and on SIGINT or SIGTERM lets
//! requests finish and stops, leaving a pinned XDP program enforcing (`gateway detach` removes
//! it). Readiness, reloads and stopping are reported to systemd ([`crate::notify`]).

use std::{
    fs,
    os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _, PermissionsExt as _},
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::Duration,
};

use gateway_common::Verdict;
use serde_json::json;
use tokio::{
    io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader},
    net::{UnixListener, UnixStream},
    signal::unix::{signal, SignalKind},
};

use crate::{
    admin::{Request, Response, MAX_REQUEST},
    audit::{self, Audit},
    autoban::{self, Ban, HUB},
    config::{Config, LogFormat, RateConfig},
    drops::{self, Top},
    lists::{self, Capacities, Enforcer, Entry, ListKind, Lists, NoEnforcer},
    metrics::METRICS,
    net,
    proxy::{
        server::{Listeners, Shared, Workers},
        Proxy,
    },
    xdp::Kernel,
};

/// How often TTLs are checked: entries expire at most this late.
const EXPIRY_TICK: Duration = Duration::from_millis(250);

/// Everything the admin commands act on, behind one lock so changes apply in order.
struct Core {
    config: Config,
    lists: Lists,
    kernel: Option<Kernel>,
    /// The enforcer when XDP is off.
    no_kernel: NoEnforcer,
    /// The sources the XDP program dropped most, fed by its drop events.
    top: Arc<Mutex<Top>>,
}

impl Core {
    fn parts(&mut self) -> (&mut Lists, &mut dyn Enforcer) {
        match self.kernel.as_mut() {
            Some(kernel) => (&mut self.lists, kernel),
            None => (&mut self.lists, &mut self.no_kernel),
        }
    }

    /// The rate limit in force: the operator's override, else the config's.
    fn rate(&self) -> (RateConfig, &'static str) {
        match self.lists.ratelimit() {
            Some(rate) => (rate, "override"),
            None => (self.config.xdp.ratelimit, "config"),
        }
    }

    fn handle(&mut self, request: Request) -> Response {
        let response = match self.try_handle(request) {
            Ok(response) => response,
            Err(error) => Response::error(error),
        };
        // Any change of the lists reaches the proxy's auto-ban check.
        HUB.sync(&self.lists);
        response
    }

    /// Applies bans from the auto-ban rules; returns those that went on the blocklist.
    fn ban(&mut self, bans: Vec<Ban>) -> Vec<autoban::Applied> {
        let max = HUB.max_entries();
        let (lists, enforcer) = self.parts();
        let result = autoban::apply(lists, enforcer, max, bans);
        HUB.sync(&self.lists);
        match result {
            Ok((applied, skipped)) => {
                for (ban, why) in skipped {
                    METRICS
                        .autoban_skipped
                        .with_label_values(&[why.name()])
                        .inc();
                    tracing::debug!(rule = %ban.rule, net = %net::display(&ban.net), client = %ban.client, skipped = why.name(), "auto-ban not applied");
                }
                applied
            }
            Err(e) => {
                METRICS.autoban_skipped.with_label_values(&["error"]).inc();
                tracing::error!(error = %e, "auto-ban failed; nothing was banned");
                Vec::new()
            }
        }
    }

    fn try_handle(&mut self, request: Request) -> Result<Response, String> {
        match request {
            Request::Add {
                list,
                nets,
                ttl_ms,
                reason,
                origin,
            } => {
                let nets = parse_all(&nets)?;
                if nets.is_empty() {
                    return Err("no addresses given".into());
                }
                if let Some(reason) = &reason {
                    lists::check_reason(reason)?;
                }
                if origin.is_empty()
                    || origin.len() > 32
                    || !origin
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '-')
                {
                    return Err(format!("invalid origin `{origin}`"));
                }
                let now = lists::now_ms();
                let expires = match ttl_ms {
                    None => None,
                    Some(0) => return Err("the TTL must be longer than zero".into()),
                    Some(ttl) => Some(now.checked_add(ttl).ok_or("the TTL is too long")?),
                };
                let entries = nets
                    .iter()
                    .map(|net| Entry {
                        net: *net,
                        added: now,
                        expires,
                        reason: reason.clone(),
                        origin: origin.clone(),
                    })
                    .collect();
                let (lists, enforcer) = self.parts();
                let outcome = lists.add(enforcer, list, entries)?;
                let other = match list {
                    ListKind::Block => ListKind::Allow,
                    ListKind::Allow => ListKind::Block,
                };
                let overlap = nets
                    .iter()
                    .filter(|n| self.lists.get(other, n).is_some())
                    .count();
                let mut message = if nets.len() == 1 {
                    let what = if outcome.added == 1 {
                        "added to"
                    } else {
                        "updated in"
                    };
                    format!("{} {what} the {}", net::display(&nets[0]), list.name())
                } else {
                    format!(
                        "{} added to and {} updated in the {}",
                        outcome.added,
                        outcome.updated,
                        list.name()
                    )
                };
                if let Some(ttl) = ttl_ms {
                    message.push_str(&format!(
                        ", expires in {}",
                        humantime::format_duration(Duration::from_millis(ttl))
                    ));
                }
                if overlap > 0 {
                    message.push_str(&format!(
                        " (note: {overlap} also on the {}; the allowlist wins)",
                        other.name()
                    ));
                }
                Ok(Response {
                    data: json!({"added": outcome.added, "updated": outcome.updated}),
                    ..Response::ok(message)
                })
            }
            Request::Remove { list, nets } => {
                let nets = parse_all(&nets)?;
                if nets.is_empty() {
                    return Err("no addresses given".into());
                }
                let (lists, enforcer) = self.parts();
                let removed = lists.remove(enforcer, list, &nets)?;
                let message = if nets.len() == 1 {
                    format!(
                        "{} removed from the {}",
                        net::display(&nets[0]),
                        list.name()
                    )
                } else {
                    format!("{removed} removed from the {}", list.name())
                };
                Ok(Response::ok(message))
            }
            Request::Clear { list } => {
                let nets = self.lists.nets(list);
                if nets.is_empty() {
                    return Ok(Response::ok(format!(
                        "the {} is already empty",
                        list.name()
                    )));
                }
                let (lists, enforcer) = self.parts();
                let removed = lists.remove(enforcer, list, &nets)?;
                Ok(Response::ok(format!(
                    "{removed} removed from the {}",
                    list.name()
                )))
            }
            Request::List { list } => {
                let now = lists::now_ms();
                let entries: Vec<serde_json::Value> = self
                    .lists
                    .entries(list)
                    .into_iter()
                    .map(|e| entry_json(e, now))
                    .collect();
                Ok(Response::data(serde_json::Value::Array(entries)))
            }
            Request::RateSet {
                pps,
                burst,
                prefix4,
                prefix6,
            } => {
                let (current, _) = self.rate();
                let rate = RateConfig {
                    pps,
                    burst: burst.unwrap_or(0),
                    prefix4: prefix4.unwrap_or(current.prefix4),
                    prefix6: prefix6.unwrap_or(current.prefix6),
                };
                self.apply_rate(Some(rate))?;
                Ok(Response::ok(format!("rate limit: {rate}")))
            }
            Request::RateReset => {
                self.apply_rate(None)?;
                Ok(Response::ok(format!(
                    "rate limit back to the config's: {}",
                    self.config.xdp.ratelimit
                )))
            }
            Request::RateShow => Ok(Response::data(self.rate_json())),
            Request::Stats { top } => self.stats(top),
            Request::Reload => Err("reload is handled by the daemon, not the lists".into()),
            Request::Detach => self.detach(),
        }
    }

    /// `gateway detach`: the program leaves the interface and its pins go; the daemon serves
    /// on, keeping the lists without enforcing them, until it is restarted.
    fn detach(&mut self) -> Result<Response, String> {
        let message = match self.kernel.as_mut() {
            Some(kernel) => {
                let message = kernel.detach()?;
                self.kernel = None;
                message
            }
            // XDP off here: pins a previous daemon left still go.
            None if self.config.xdp.pin => crate::xdp::detach_pins(&self.config.xdp.pin_dir)?,
            None => "XDP was not attached".into(),
        };
        tracing::warn!(
            "{message} (gateway detach); lists are kept but not enforced until the daemon restarts"
        );
        Ok(Response::ok(format!(
            "{message}; the daemon keeps running without XDP until it is restarted"
        )))
    }

    fn apply_rate(&mut self, rate: Option<RateConfig>) -> Result<(), String> {
        let effective = rate.unwrap_or(self.config.xdp.ratelimit);
        let settings = effective.settings()?;
        let old = self.kernel.as_ref().map(|k| k.settings());
        if let Some(kernel) = self.kernel.as_mut() {
            kernel.set_rate(settings)?;
        }
        if let Err(e) = self.lists.set_ratelimit(rate) {
            if let (Some(kernel), Some(old)) = (self.kernel.as_mut(), old) {
                let _ = kernel.set_rate(old);
            }
            return Err(e);
        }
        Ok(())
    }

    fn rate_json(&self) -> serde_json::Value {
        let (rate, source) = self.rate();
        json!({
            "pps": rate.pps,
            "burst": rate.effective_burst(),
            "prefix4": rate.prefix4,
            "prefix6": rate.prefix6,
            "enabled": rate.pps > 0,
            "source": source,
        })
    }

    fn stats(&mut self, top: Option<u32>) -> Result<Response, String> {
        let count = |kind: ListKind, v4: bool| self.lists.count(kind, v4);
        let lists = json!({
            "block": {"v4": count(ListKind::Block, true), "v6": count(ListKind::Block, false)},
            "allow": {"v4": count(ListKind::Allow, true), "v6": count(ListKind::Allow, false)},
            "auto": self.lists.auto_count(),
        });
        let rate = self.rate_json();
        let (xdp, verdicts) = match self.kernel.as_ref() {
            None => (serde_json::Value::Null, serde_json::Value::Null),
            Some(kernel) => {
                let counters = kernel.counters()?;
                let mut verdicts = serde_json::Map::new();
                for v in Verdict::ALL {
                    let c = counters[v as usize];
                    verdicts.insert(
                        v.name().into(),
                        json!({"packets": c.packets, "bytes": c.bytes}),
                    );
                }
                let pinned = kernel.link_pin().map(|p| p.display().to_string());
                let xdp = match kernel.attached() {
                    Some((interface, mode)) => {
                        json!({"interface": interface, "mode": mode.name(), "pinned": pinned})
                    }
                    None => json!({"interface": null, "mode": null, "pinned": null}),
                };
                (xdp, serde_json::Value::Object(verdicts))
            }
        };
        let mut data = json!({"xdp": xdp, "verdicts": verdicts, "lists": lists, "ratelimit": rate});
        if let Some(n) = top {
            let n = (n as usize).clamp(1, drops::TOP_CAPACITY);
            let rows = self.top.lock().unwrap_or_else(|p| p.into_inner()).top(n);
            data["top"] = serde_json::to_value(rows).map_err(|e| e.to_string())?;
        }
        Ok(Response::data(data))
    }
}

/// The XDP verdict counters in the Prometheus text format.
fn xdp_metrics(kernel: &Kernel) -> String {
    let Ok(counters) = kernel.counters() else {
        return String::new();
    };
    let mut out = String::new();
    let packets: Vec<(&str, u64)> = Verdict::ALL
        .iter()
        .map(|v| (v.name(), counters[*v as usize].packets))
        .collect();
    let bytes: Vec<(&str, u64)> = Verdict::ALL
        .iter()
        .map(|v| (v.name(), counters[*v as usize].bytes))
        .collect();
    crate::metrics::counter_family(
        &mut out,
        "gateway_xdp_packets_total",
        "Packets the XDP program judged, by verdict.",
        "verdict",
        &packets,
    );
    crate::metrics::counter_family(
        &mut out,
        "gateway_xdp_bytes_total",
        "Bytes of the packets the XDP program judged, by verdict.",
        "verdict",
        &bytes,
    );
    if let Ok(events) = kernel.event_counters() {
        crate::metrics::counter_family(
            &mut out,
            "gateway_xdp_drop_events_unsent_total",
            "Drop events the XDP program did not send: over its per-CPU budget (suppressed; the drops are carried to the source's next event) or with the ring buffer full (lost).",
            "why",
            &[("suppressed", events.suppressed), ("lost", events.lost)],
        );
    }
    out
}

fn parse_all(nets: &[String]) -> Result<Vec<ipnet::IpNet>, String> {
    nets.iter().map(|n| net::parse_net(n)).collect()
}

fn rfc3339(ms: u64) -> String {
    humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + Duration::from_millis(ms)).to_string()
}

fn entry_json(e: &Entry, now: u64) -> serde_json::Value {
    json!({
        "net": net::display(&e.net),
        "added": rfc3339(e.added),
        "expires": e.expires.map(rfc3339),
        "expires_in_s": e.expires.map(|t| t.saturating_sub(now).div_ceil(1000)),
        "reason": e.reason,
        "origin": e.origin,
    })
}

fn init_tracing(config: &Config) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(&config.log.level));
    use std::io::IsTerminal as _;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    let _ = match config.log.format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}

/// Runs the daemon until SIGINT or SIGTERM.
pub fn run(config_path: &Path) -> Result<(), String> {
    let config = Config::load(config_path).map_err(|e| e.to_string())?;
    init_tracing(&config);
    // The admin socket, signals, health checks and metrics; client connections run on the
    // proxy's own workers.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the runtime: {e}"))?;
    let result = runtime.block_on(serve(config, config_path.to_path_buf()));
    // Connections still open after the shutdown deadline are cut here.
    runtime.shutdown_timeout(Duration::from_millis(100));
    result
}

/// What a reload replaces, and how.
struct Reloader {
    path: PathBuf,
    shared: Arc<Shared>,
    listeners: tokio::sync::Mutex<Listeners>,
    audit: Arc<Audit>,
    core: Arc<Mutex<Core>>,
    workers: usize,
    /// Where the auto-ban rules send their bans.
    bans: tokio::sync::mpsc::Sender<Ban>,
}

impl Reloader {
    /// Loads the config file again and applies it; on any error nothing changes.
    async fn reload(&self) -> Result<String, String> {
        let mut listeners = self.listeners.lock().await;
        let config = Config::load(&self.path).map_err(|e| e.to_string())?;
        let output = audit::Output::parse(&config.audit.output);
        audit::Output::check(&output)?;
        let previous = self.shared.proxy.load_full();
        let proxy = Proxy::new(&config, self.audit.clone(), self.workers, Some(&previous))?;
        listeners.apply(&config).await?;
        self.audit.set_output(output)?;
        let proxy = Arc::new(proxy);
        self.shared.proxy.store(proxy.clone());
        proxy.publish(Some(&previous));
        HUB.configure(&config, self.bans.clone());
        let mut notes = Vec::new();
        {
            let mut core = self.core.lock().unwrap_or_else(|p| p.into_inner());
            let old = core.config.clone();
            if old.xdp.ratelimit != config.xdp.ratelimit {
                core.config.xdp.ratelimit = config.xdp.ratelimit;
                if core.lists.ratelimit().is_none() {
                    if let Err(e) = core.apply_rate(None) {
                        core.config.xdp.ratelimit = old.xdp.ratelimit;
                        notes.push(format!("the XDP rate limit was not changed: {e}"));
                    }
                } else {
                    notes.push("the XDP rate limit stays at the CLI override (`gateway ratelimit reset` to use the config's)".into());
                }
            }
            let xdp_rest = |x: &crate::config::XdpConfig| crate::config::XdpConfig {
                ratelimit: RateConfig::default(),
                ..x.clone()
            };
            if xdp_rest(&old.xdp) != xdp_rest(&config.xdp) {
                notes.push(
                    "changes to [xdp] other than the rate limit take effect at restart".into(),
                );
            }
            if old.state != config.state || old.admin != config.admin || old.log != config.log {
                notes.push("changes to [state], [admin] and [log] take effect at restart".into());
            }
            if old.proxy.workers != config.proxy.workers
                || old.proxy.pin_workers != config.proxy.pin_workers
            {
                notes.push("proxy.workers and proxy.pin_workers take effect at restart".into());
            }
            core.config.autoban = config.autoban.clone();
        }
        for note in &notes {
            tracing::warn!("{note}");
        }
        let mut message = format!("{}: reloaded", self.path.display());
        for note in notes {
            message.push_str(&format!("; {note}"));
        }
        Ok(message)
    }

    /// Reloads and logs the outcome; systemd sees RELOADING=1, then READY=1 again.
    async fn reload_logged(&self, trigger: &str) -> Response {
        crate::notify::reloading();
        let result = self.reload().await;
        crate::notify::ready(if result.is_ok() {
            "serving"
        } else {
            "serving; the last reload was refused"
        });
        match result {
            Ok(message) => {
                METRICS.reloads.with_label_values(&["ok"]).inc();
                tracing::info!(trigger, "{message}");
                Response::ok(message)
            }
            Err(e) => {
                METRICS.reloads.with_label_values(&["error"]).inc();
                tracing::error!(trigger, error = %e, "reload refused; the running config stays");
                Response::error(format!("reload refused, the running config stays: {e}"))
            }
        }
    }
}

/// One daemon per state directory: a second would overwrite the first's lists and take over
/// its admin socket. Takes an exclusive lock on `daemon.lock` there and writes this process's
/// id into it, or says which process holds it.
fn lock_state_dir(state_dir: &Path) -> Result<fs::File, String> {
    use std::io::{Read as _, Seek as _, Write as _};
    let path = state_dir.join("daemon.lock");
    let cannot = |e: std::io::Error| format!("{}: {e}", path.display());
    let mut file = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(&path)
        .map_err(cannot)?;
    match file.try_lock() {
        Ok(()) => {}
        Err(fs::TryLockError::WouldBlock) => {
            let mut holder = String::new();
            let _ = file.read_to_string(&mut holder);
            let holder = holder.trim();
            return Err(format!(
                "{}: another gateway daemon is running with this state directory{}; stop it \
                 first, or give this one another [state] dir",
                path.display(),
                if holder.is_empty() {
                    String::new()
                } else {
                    format!(" (pid {holder})")
                }
            ));
        }
        Err(fs::TryLockError::Error(e)) => return Err(cannot(e)),
    }
    file.set_len(0).map_err(cannot)?;
    file.rewind().map_err(cannot)?;
    writeln!(file, "{}", std::process::id()).map_err(cannot)?;
    Ok(file)
}

async fn serve(config: Config, config_path: PathBuf) -> Result<(), String> {
    let state_dir = &config.state.dir;
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(state_dir)
        .map_err(|e| {
            format!(
                "{}: cannot create the state directory: {e}",
                state_dir.display()
            )
        })?;
    // Held until the daemon exits (the kernel drops it on a crash too).
    let _instance = lock_state_dir(state_dir)?;
    let capacities = Capacities {
        block4: config.xdp.blocklist_v4_capacity,
        block6: config.xdp.blocklist_v6_capacity,
        allow4: config.xdp.allowlist_v4_capacity,
        allow6: config.xdp.allowlist_v6_capacity,
    };
    let (lists, expired) = Lists::load(state_dir, capacities)?;
    for kind in [ListKind::Block, ListKind::Allow] {
        for v4 in [true, false] {
            let n = lists.count(kind, v4);
            let (cap, key) = capacities.of(kind, v4);
            if n > cap as usize {
                return Err(format!(
                    "{}: the {} holds {n} IPv{} entries but {key} is {cap}; raise it in the config",
                    lists.path().display(),
                    kind.name(),
                    if v4 { 4 } else { 6 }
                ));
            }
        }
    }
    tracing::info!(
        state = %lists.path().display(),
        blocklist = lists.len(ListKind::Block),
        allowlist = lists.len(ListKind::Allow),
        expired_while_down = expired,
        "lists loaded"
    );
    check_no_other_daemon(&config.admin.socket)?;

    let mut core = Core {
        config: config.clone(),
        lists,
        kernel: None,
        no_kernel: NoEnforcer,
        top: Arc::new(Mutex::new(Top::new(drops::TOP_CAPACITY))),
    };
    if config.xdp.enabled {
        let interface = config.xdp.interface.clone().unwrap_or_default();
        let (rate, source) = core.rate();
        let mut kernel = if config.xdp.pin {
            Kernel::load_pinned(&config.xdp, rate.settings()?)?
        } else {
            let mut kernel = Kernel::load(&config.xdp)?;
            kernel.set_rate(rate.settings()?)?;
            kernel
        };
        // Fill the maps before attaching, so no blocked packet slips through at start; pinned
        // maps a previous daemon left are reconciled in place while its program runs on them.
        let filled = kernel.fill(
            &core.lists.nets(ListKind::Allow),
            &core.lists.nets(ListKind::Block),
        )?;
        tracing::info!("{filled}");
        let mode = kernel.attach(&interface, config.xdp.mode)?;
        let pinned = kernel.link_pin().map(|p| p.display().to_string());
        tracing::info!(interface = %interface, mode = mode.name(), ratelimit = %rate, ratelimit_source = source, pinned = pinned.as_deref().unwrap_or("no"), "XDP program attached");
        core.kernel = Some(kernel);
    } else {
        tracing::warn!("XDP is disabled in the config: lists are kept but not enforced (the proxy still refuses auto-banned clients)");
        if config.xdp.pin && crate::xdp::pinned_link(&config.xdp.pin_dir) {
            tracing::warn!(
                pins = %config.xdp.pin_dir.display(),
                "an XDP program pinned by an earlier daemon is still attached and enforcing the lists as they were then; `gateway detach` removes it"
            );
        }
    }
    // Drop anything that expired between loading and now.
    {
        let (lists, enforcer) = core.parts();
        lists.expire(enforcer, lists::now_ms());
    }
    // The proxy listens before the admin socket appears, so a ready daemon serves.
    let audit = Arc::new(Audit::default());
    audit.set_output(audit::Output::parse(&config.audit.output))?;
    let events = match core.kernel.as_mut() {
        Some(kernel) => kernel.take_events()?,
        None => None,
    };
    if let Some(ring) = events {
        tokio::spawn(drops::read(ring, core.top.clone(), audit.clone()));
    }
    // Auto-ban: the rules count refusals from the proxy's workers and queue bans for
    // `apply_bans`; the proxy enforces the auto entries too (for clients behind proxies and
    // with XDP off).
    HUB.sync(&core.lists);
    let (ban_tx, ban_rx) = tokio::sync::mpsc::channel(autoban::QUEUE);
    HUB.configure(&config, ban_tx.clone());
    let workers = Arc::new(Workers::start(
        config.proxy.workers(),
        config.proxy.pin_workers,
    )?);
    let shared = Shared::new(Proxy::new(&config, audit.clone(), workers.len(), None)?);
    shared.proxy.load().publish(None);
    let mut listeners = Listeners::new(shared.clone(), workers.clone());
    listeners.apply(&config).await?;
    let core = Arc::new(Mutex::new(core));
    tokio::spawn(apply_bans(ban_rx, core.clone(), audit.clone()));
    let (stop_metrics, metrics_stopped) = tokio::sync::watch::channel(false);
    if let Some(addr) = config.admin.metrics_listen {
        let listener = crate::metrics::bind(addr).await?;
        let core = core.clone();
        let extra: crate::metrics::Extra = Arc::new(move || {
            let core = core.lock().unwrap_or_else(|p| p.into_inner());
            core.kernel.as_ref().map(xdp_metrics).unwrap_or_default()
        });
        tokio::spawn(crate::metrics::serve(listener, extra, metrics_stopped));
    }
    let reloader = Arc::new(Reloader {
        path: config_path,
        shared,
        listeners: tokio::sync::Mutex::new(listeners),
        audit: audit.clone(),
        core: core.clone(),
        workers: workers.len(),
        bans: ban_tx,
    });
    // The socket appears only now, so a client that can connect talks to an enforcing daemon.
    let listener = bind_admin(&config.admin.socket)?;
    let socket_path = config.admin.socket.clone();
    let _socket_guard = RemoveOnDrop(socket_path.clone());
    // Handlers first: a SIGHUP right after READY=1 must reload, not kill.
    let mut sigterm = signal(SignalKind::terminate()).map_err(|e| e.to_string())?;
    let mut sigint = signal(SignalKind::interrupt()).map_err(|e| e.to_string())?;
    let mut sighup = signal(SignalKind::hangup()).map_err(|e| e.to_string())?;
    tracing::info!(socket = %socket_path.display(), "ready");
    crate::notify::ready("serving");
    let mut tick = tokio::time::interval(EXPIRY_TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = sigterm.recv() => { tracing::info!("SIGTERM: shutting down"); break; }
            _ = sigint.recv() => { tracing::info!("SIGINT: shutting down"); break; }
            _ = sighup.recv() => {
                let reloader = reloader.clone();
                tokio::spawn(async move { reloader.reload_logged("SIGHUP").await });
            }
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => { tokio::spawn(connection(stream, core.clone(), reloader.clone())); }
                Err(e) => {
                    tracing::warn!(error = %e, "admin accept");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            _ = tick.tick() => {
                let core = core.clone();
                let _ = tokio::task::spawn_blocking(move || expire_due(&core)).await;
            }
        }
    }
    crate::notify::stopping();
    let _ = stop_metrics.send(true);
    let deadline = reloader.shared.proxy.load().limits.shutdown_timeout;
    let listeners = std::mem::replace(
        &mut *reloader.listeners.lock().await,
        Listeners::new(reloader.shared.clone(), workers.clone()),
    );
    listeners.shutdown(deadline).await;
    drop(reloader);
    // The workers end once nothing else holds them: connections still open are cut.
    if let Ok(workers) = Arc::try_unwrap(workers) {
        tokio::task::spawn_blocking(move || drop(workers))
            .await
            .ok();
    }
    audit.close();
    let mut core = core.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(mut kernel) = core.kernel.take() {
        kernel.flush_logs();
        match kernel.pin_dir() {
            // The kernel keeps enforcing the last lists and rate limit; the next daemon
            // adopts the program without a gap.
            Some(dir) => tracing::info!(
                pins = %dir.display(),
                "XDP program left attached and enforcing (pinned); `gateway detach` removes it"
            ),
            None => match kernel.detach() {
                Ok(message) => tracing::info!("{message}"),
                Err(e) => tracing::warn!(error = %e, "detach"),
            },
        }
    }
    Ok(())
}

fn expire_due(core: &Mutex<Core>) {
    let mut core = core.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(kernel) = core.kernel.as_mut() {
        kernel.flush_logs();
    }
    let now = lists::now_ms();
    if core.lists.next_expiry().is_none_or(|t| t > now) {
        return;
    }
    let (lists, enforcer) = core.parts();
    for (kind, entry) in lists.expire(enforcer, now) {
        tracing::info!(list = kind.name(), net = %net::display(&entry.net), origin = %entry.origin, reason = entry.reason.as_deref().unwrap_or(""), "entry expired");
    }
    HUB.sync(&core.lists);
}

/// An auto-ban, as the audit log records it.
#[derive(serde::Serialize)]
struct BanLine<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    time: String,
    rule: &'a str,
    net: &'a str,
    client: &'a str,
    reason: &'a str,
    expires: String,
}

/// Applies the bans the auto-ban rules queue, in batches (one state-file write per batch).
async fn apply_bans(
    mut rx: tokio::sync::mpsc::Receiver<Ban>,
    core: Arc<Mutex<Core>>,
    audit: Arc<Audit>,
) {
    let mut batch = Vec::new();
    while rx.recv_many(&mut batch, autoban::QUEUE).await > 0 {
        let bans = std::mem::take(&mut batch);
        let core = core.clone();
        let applied = tokio::task::spawn_blocking(move || {
            core.lock().unwrap_or_else(|p| p.into_inner()).ban(bans)
        })
        .await
        .unwrap_or_default();
        let time = humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string();
        for a in &applied {
            METRICS.autobans.with_label_values(&[&a.rule]).inc();
            tracing::warn!(rule = %a.rule, net = %a.net, client = %a.client, reason = %a.reason, expires = %rfc3339(a.expires), "auto-ban: added to the blocklist");
            audit.record_event(&BanLine {
                kind: "autoban",
                time: time.clone(),
                rule: &a.rule,
                net: &a.net,
                client: &a.client,
                reason: &a.reason,
                expires: rfc3339(a.expires),
            });
        }
    }
}

/// Fails when a daemon answers on `path`.
fn check_no_other_daemon(path: &Path) -> Result<(), String> {
    if std::os::unix::net::UnixStream::connect(path).is_ok() {
        return Err(format!(
            "another gateway daemon is running (its admin socket {} answers); stop it first",
            path.display()
        ));
    }
    Ok(())
}

/// Binds the admin socket, refusing to take over from a daemon that still answers on it.
fn bind_admin(path: &Path) -> Result<UnixListener, String> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        if !dir.exists() {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(|e| {
                    format!(
                        "{}: cannot create the admin socket directory: {e}",
                        dir.display()
                    )
                })?;
        }
    }
    check_no_other_daemon(path)?;
    if path.exists() {
        fs::remove_file(path)
            .map_err(|e| format!("{}: cannot remove stale socket: {e}", path.display()))?;
    }
    // Created with the umask tightened, so there is no moment at which others may connect.
    let old = unsafe { libc::umask(0o177) };
    let bound = UnixListener::bind(path);
    unsafe { libc::umask(old) };
    let listener =
        bound.map_err(|e| format!("{}: cannot bind the admin socket: {e}", path.display()))?;
    fs::set_permissions(path, fs::Permissions::from_mode(0o600))
        .map_err(|e| format!("{}: cannot set socket permissions: {e}", path.display()))?;
    Ok(listener)
}

struct RemoveOnDrop(std::path::PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.0);
    }
}

async fn connection(stream: UnixStream, core: Arc<Mutex<Core>>, reloader: Arc<Reloader>) {
    let me = unsafe { libc::geteuid() };
    match stream.peer_cred() {
        Ok(cred) if cred.uid() == 0 || cred.uid() == me => {}
        Ok(cred) => {
            tracing::warn!(uid = cred.uid(), "admin connection refused: not root");
            return;
        }
        Err(e) => {
            tracing::warn!(error = %e, "admin connection refused: no peer credentials");
            return;
        }
    }
    let (read, mut write) = stream.into_split();
    let mut reader = BufReader::new(read.take(MAX_REQUEST));
    let mut line = Vec::new();
    let response = match tokio::time::timeout(
        Duration::from_secs(60),
        reader.read_until(b'\n', &mut line),
    )
    .await
    {
        Err(_) => Response::error("timed out waiting for the request"),
        Ok(Err(e)) => Response::error(format!("cannot read the request: {e}")),
        Ok(Ok(_)) if !line.ends_with(b"\n") => Response::error("request too large or cut short"),
        Ok(Ok(_)) => match serde_json::from_slice::<Request>(&line) {
            Err(e) => Response::error(format!("bad request: {e}")),
            Ok(Request::Reload) => reloader.reload_logged("admin socket").await,
            Ok(request) => {
                let core = core.clone();
                tokio::task::spawn_blocking(move || {
                        let mut core = core.lock().unwrap_or_else(|p| p.into_inner());
                        let started = std::time::Instant::now();
                        let response = core.handle(request);
                        tracing::debug!(elapsed = ?started.elapsed(), ok = response.ok, "admin request handled");
                        response
                    })
                    .await
                    .unwrap_or_else(|e| Response::error(format!("internal error: {e}")))
            }
        },
    };
    let mut bytes = serde_json::to_vec(&response)
        .unwrap_or_else(|_| b"{\"ok\":false,\"error\":\"encoding\"}".to_vec());
    bytes.push(b'\n');
    let _ = write.write_all(&bytes).await;
    let _ = write.shutdown().await;
}
