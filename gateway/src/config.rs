//! The configuration file (TOML).
//!
//! Every table refuses unknown keys, so a typo is an error instead of a silently ignored
//! setting. Errors name the file, the line and the key.

use std::{
    collections::BTreeMap,
    fmt,
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use gateway_common::Settings;
use serde::Deserialize;

/// Where `gateway run` and the CLI look for the admin socket unless told otherwise.
pub const DEFAULT_ADMIN_SOCKET: &str = "/run/gateway/admin.sock";
/// Where the daemon keeps its lists unless told otherwise.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/gateway";
/// Where the XDP link and maps are pinned (bpffs) unless told otherwise.
pub const DEFAULT_PIN_DIR: &str = "/sys/fs/bpf/gateway";
/// Largest capacity accepted for a single list or the rate-limit table.
pub const MAX_CAPACITY: u32 = 100_000_000;

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub xdp: XdpConfig,
    pub proxy: ProxyConfig,
    /// Upstream pools by name, for routes to forward to.
    pub upstreams: BTreeMap<String, UpstreamConfig>,
    /// Routing rules, tried in order; the first that matches a request handles it.
    pub routes: Vec<RouteConfig>,
    /// Identity providers (JWT issuers, API keys, token introspection), by name.
    pub auth: crate::proxy::auth::AuthConfig,
    /// Payload inspection for routes that do not set their own.
    pub inspect: crate::proxy::inspect::InspectConfig,
    /// Security headers on responses of routes that do not set their own.
    pub security_headers: crate::proxy::harden::SecurityHeadersConfig,
    pub audit: AuditConfig,
    /// Rules that put misbehaving clients on the blocklist for a while.
    pub autoban: crate::autoban::AutobanConfig,
    pub state: StateConfig,
    pub admin: AdminConfig,
    pub log: LogConfig,
}

/// The reverse proxy's listeners, limits and defaults.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ProxyConfig {
    /// Plain HTTP listeners (`"ADDR:PORT"`).
    pub listen: Vec<SocketAddr>,
    /// HTTPS listeners and their certificates.
    pub tls: Option<TlsConfig>,
    /// Time to open a connection to an upstream target, unless the route says otherwise.
    #[serde(deserialize_with = "duration")]
    pub connect_timeout: Duration,
    /// Time for an upstream to answer with its response head, retries included, unless the
    /// route says otherwise; then the longest pause between two reads of the response body.
    #[serde(deserialize_with = "duration")]
    pub timeout: Duration,
    /// Threads serving client connections; 0 (the default): one per CPU.
    pub workers: u32,
    /// Each worker thread bound to its own CPU (worker i to the i-th CPU the process may run
    /// on), when there are no more workers than such CPUs. On by default.
    pub pin_workers: bool,
    /// Client connections open at once; one more is closed at accept.
    pub max_connections: u32,
    /// Largest request head (request line and headers) in bytes; larger gets 431.
    pub max_header_bytes: u32,
    /// Most header fields in a request; more gets 431.
    pub max_headers: u32,
    /// Largest request body in bytes; larger gets 413.
    pub max_body_bytes: u64,
    /// Time a client has to finish the TLS handshake and to send a whole request head.
    #[serde(deserialize_with = "duration")]
    pub header_read_timeout: Duration,
    /// A connection with no request in flight and no traffic for this long is closed.
    #[serde(deserialize_with = "duration")]
    pub idle_timeout: Duration,
    /// On shutdown, time in-flight requests get to finish before connections are cut.
    #[serde(deserialize_with = "duration")]
    pub shutdown_timeout: Duration,
    /// Proxies (networks) in front of the gateway whose X-Forwarded-For is believed: the
    /// client address is then the right-most address there that is not one of them. Empty
    /// (the default): the client is always the socket's peer.
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// Runs of `/` in a request path made one before routing and forwarding (`//admin` is
    /// `/admin`), as many upstream servers do; on by default, so that the gateway routes the
    /// path the upstream will serve.
    pub merge_slashes: bool,
}

impl Default for ProxyConfig {
    fn default() -> Self {
        ProxyConfig {
            listen: Vec::new(),
            tls: None,
            connect_timeout: Duration::from_secs(5),
            timeout: Duration::from_secs(30),
            workers: 0,
            pin_workers: true,
            max_connections: 10_000,
            max_header_bytes: 16 << 10,
            max_headers: 100,
            max_body_bytes: 10 << 20,
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            shutdown_timeout: Duration::from_secs(30),
            trusted_proxies: Vec::new(),
            merge_slashes: true,
        }
    }
}

impl ProxyConfig {
    /// The number of worker threads: `workers`, or one per CPU.
    pub fn workers(&self) -> usize {
        match self.workers {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n as usize,
        }
    }
}

/// HTTPS listeners.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    /// `"ADDR:PORT"` of every HTTPS listener.
    pub listen: Vec<SocketAddr>,
    /// The oldest TLS version accepted: `"1.2"` (default) or `"1.3"`.
    pub min_version: TlsVersion,
    /// Certificates, chosen by the client's SNI among the names each is valid for; the first is
    /// served to clients that send no name or a name none has.
    pub certificates: Vec<CertificateConfig>,
}

#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
pub enum TlsVersion {
    #[default]
    #[serde(rename = "1.2")]
    Tls12,
    #[serde(rename = "1.3")]
    Tls13,
}

/// A certificate chain and its private key, PEM files. Relative paths are relative to the
/// config file.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct CertificateConfig {
    /// The chain, leaf first.
    pub cert: PathBuf,
    /// The private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
}

/// A pool of upstream targets.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct UpstreamConfig {
    /// Every target: `"ADDR:PORT"`, or `{ address = "ADDR:PORT", weight = N }`.
    pub targets: Vec<TargetConfig>,
    /// How a target is chosen.
    pub balance: Balance,
    /// For `balance = "hash"`: `"client_ip"` (default) or `"header:NAME"`.
    pub hash_on: Option<String>,
    /// HTTP version spoken to the targets: `"http1"` or `"http2"` (prior knowledge over TCP,
    /// ALPN over TLS).
    pub protocol: UpstreamProtocol,
    /// Talk HTTPS to the targets.
    pub tls: Option<UpstreamTlsConfig>,
    /// Idle connections kept open per target.
    pub max_idle_per_target: u32,
    /// Requests in flight per target at most; a target at its limit is skipped, and when all
    /// are, the request gets 503.
    pub max_requests_per_target: u32,
    /// Further attempts on another target for a request that failed without an answer (any
    /// method when the connection was refused; idempotent methods also after a timeout, a
    /// broken connection or a 502/503/504), for requests without a body.
    pub retries: u32,
    /// Retries may add at most this fraction to the requests sent (plus a reserve of 10).
    pub retry_budget: f64,
    /// Passive outlier ejection.
    pub outlier: OutlierConfig,
    /// Active health checks; absent: none.
    pub health_check: Option<HealthCheckConfig>,
}

impl Default for UpstreamConfig {
    fn default() -> Self {
        UpstreamConfig {
            targets: Vec::new(),
            balance: Balance::RoundRobin,
            hash_on: None,
            protocol: UpstreamProtocol::Http1,
            tls: None,
            max_idle_per_target: 64,
            max_requests_per_target: 10_000,
            retries: 1,
            retry_budget: 0.2,
            outlier: OutlierConfig::default(),
            health_check: None,
        }
    }
}

/// One upstream target.
#[derive(Clone, Debug, PartialEq)]
pub struct TargetConfig {
    pub address: SocketAddr,
    /// Share of the requests relative to the other targets (round_robin, hash,
    /// least_outstanding).
    pub weight: u32,
}

impl<'de> Deserialize<'de> for TargetConfig {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Table {
            address: SocketAddr,
            #[serde(default = "one")]
            weight: u32,
        }
        #[derive(Deserialize)]
        #[serde(
            untagged,
            expecting = "a target: \"ADDR:PORT\" or { address = \"ADDR:PORT\", weight = N }"
        )]
        enum Raw {
            Address(SocketAddr),
            Table(Table),
        }
        Ok(match Raw::deserialize(d)? {
            Raw::Address(address) => TargetConfig { address, weight: 1 },
            Raw::Table(t) => TargetConfig {
                address: t.address,
                weight: t.weight,
            },
        })
    }
}

fn one() -> u32 {
    1
}

#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Balance {
    /// In turn, in proportion to the weights (smooth weighted round-robin).
    #[default]
    RoundRobin,
    /// The target with the fewest requests in flight relative to its weight.
    LeastOutstanding,
    /// Consistent (rendezvous) hashing on `hash_on`: a key keeps its target while that target
    /// is available, and only the keys of a target that leaves move.
    Hash,
}

#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum UpstreamProtocol {
    #[default]
    Http1,
    Http2,
}

/// HTTPS to the targets. Relative paths are relative to the config file.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct UpstreamTlsConfig {
    /// CA bundle (PEM) the targets' certificates must chain to; absent: the system's bundle.
    pub ca: Option<PathBuf>,
    /// The name sent in SNI and checked against the certificate; absent: the target's address.
    pub server_name: Option<String>,
    /// Client certificate chain for mutual TLS (PEM), with `key`.
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
}

/// Passive outlier ejection: a target that fails `consecutive_failures` requests in a row
/// (refused or broken connections, timeouts, 502/503/504) gets no requests for `ejection_time`,
/// unless it is the last healthy, un-ejected target of its pool.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct OutlierConfig {
    /// 0 turns ejection off.
    pub consecutive_failures: u32,
    #[serde(deserialize_with = "duration")]
    pub ejection_time: Duration,
}

impl Default for OutlierConfig {
    fn default() -> Self {
        OutlierConfig {
            consecutive_failures: 5,
            ejection_time: Duration::from_secs(30),
        }
    }
}

/// Active health checks: `GET path` on every target each `interval`; 2xx and 3xx pass.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct HealthCheckConfig {
    pub path: String,
    #[serde(deserialize_with = "duration")]
    pub interval: Duration,
    #[serde(deserialize_with = "duration")]
    pub timeout: Duration,
    /// Passes in a row that bring an unhealthy target back.
    pub healthy_threshold: u32,
    /// Failures in a row that take a healthy target out.
    pub unhealthy_threshold: u32,
}

impl Default for HealthCheckConfig {
    fn default() -> Self {
        HealthCheckConfig {
            path: "/healthz".into(),
            interval: Duration::from_secs(5),
            timeout: Duration::from_secs(2),
            healthy_threshold: 2,
            unhealthy_threshold: 3,
        }
    }
}

/// One routing rule: what it matches and what it does.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RouteConfig {
    /// Name in metrics and the audit log; default `routes[INDEX]`.
    pub name: Option<String>,
    /// Host to match: exact (`api.example.com`) or a wildcard (`*.example.com`, which matches
    /// one or more labels in front of `example.com`). Absent: any host.
    pub host: Option<String>,
    /// Exact path to match; `{name}` segments match any one segment (`/users/{id}`).
    pub path: Option<String>,
    /// Path prefix to match, on segment boundaries: `/api` matches `/api` and `/api/x`, not
    /// `/apix`. May hold `{name}` segments too.
    pub path_prefix: Option<String>,
    /// Methods to match; empty: any.
    pub methods: Vec<String>,
    /// Headers to match: name = exact value, or `"*"` for any value.
    pub headers: BTreeMap<String, String>,
    /// Forward to this upstream pool.
    pub upstream: Option<String>,
    /// Remove `path_prefix` from the path before forwarding.
    pub strip_prefix: bool,
    /// Replace the matched path (`path`) or prefix (`path_prefix`) with this, where `{name}`
    /// stands for what that segment matched. It may end in a query (`?k={name}`), to which the
    /// client's query is appended.
    pub rewrite: Option<String>,
    /// Time to open a connection to a target (overrides `proxy.connect_timeout`).
    #[serde(default, deserialize_with = "optional_duration")]
    pub connect_timeout: Option<Duration>,
    /// Time for the upstream to answer with its response head, retries included (overrides
    /// `proxy.timeout`).
    #[serde(default, deserialize_with = "optional_duration")]
    pub timeout: Option<Duration>,
    /// Answer with this fixed response instead of forwarding.
    pub respond: Option<RespondConfig>,
    /// Authentication and authorization; absent: none.
    pub auth: Option<crate::proxy::auth::RouteAuthConfig>,
    /// Rate limits, all applied.
    pub rate_limits: Vec<crate::proxy::ratelimit::RateLimitConfig>,
    /// Who may call the route and what requests must look like.
    pub validate: Option<crate::proxy::validate::ValidateConfig>,
    /// Payload inspection (replaces `[inspect]` for this route).
    pub inspect: Option<crate::proxy::inspect::InspectConfig>,
    /// CORS policy; absent: the gateway leaves CORS to the upstream.
    pub cors: Option<crate::proxy::harden::CorsConfig>,
    /// Security headers (replaces `[security_headers]` for this route).
    pub security_headers: Option<crate::proxy::harden::SecurityHeadersConfig>,
}

/// A fixed response.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RespondConfig {
    pub status: u16,
    /// JSON body (any TOML value); absent: an empty body.
    #[serde(default)]
    pub json: Option<toml::Value>,
}

/// The audit log: one JSON line per request.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct AuditConfig {
    /// `"stdout"`, `"off"`, or a file path (appended to; reopened on SIGHUP and reload, for
    /// logrotate). Relative paths are relative to the config file.
    pub output: String,
}

impl Default for AuditConfig {
    fn default() -> Self {
        AuditConfig {
            output: "stdout".into(),
        }
    }
}

pub(crate) fn duration<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let text = String::deserialize(d)?;
    humantime::parse_duration(&text).map_err(|e| {
        serde::de::Error::custom(format!(
            "`{text}` is not a duration such as 500ms, 5s or 1m: {e}"
        ))
    })
}

pub(crate) fn optional_duration<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<Duration>, D::Error> {
    duration(d).map(Some)
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct XdpConfig {
    /// Load and attach the XDP program. Off, the daemon still manages (and persists) the lists.
    pub enabled: bool,
    /// The interface to attach to; required when enabled.
    pub interface: Option<String>,
    pub mode: XdpModeConfig,
    /// Capacity of the IPv4 blocklist (hosts and networks together).
    pub blocklist_v4_capacity: u32,
    pub blocklist_v6_capacity: u32,
    pub allowlist_v4_capacity: u32,
    pub allowlist_v6_capacity: u32,
    /// How many source keys the rate limiter is sized for. The table holds at least twice as
    /// many slots, four per bucket; a new source whose bucket is full replaces the source with
    /// the earliest arrival time there, never one over its limit.
    pub ratelimit_sources: u32,
    /// Level of the messages the XDP program itself logs (through aya-log into our log).
    pub log_level: KernelLogLevel,
    /// Pin the XDP link and every map under [`XdpConfig::pin_dir`], so the program keeps
    /// enforcing while no daemon runs and the next daemon adopts it without a gap. Off: the
    /// program is detached when the daemon stops.
    pub pin: bool,
    /// The bpffs directory of the pins (bpffs is mounted at /sys/fs/bpf when missing).
    pub pin_dir: PathBuf,
    pub ratelimit: RateConfig,
    /// Drop events from the kernel (audit log, metrics, `gateway stats --top`).
    pub events: EventsConfig,
}

/// Drop events: the XDP program reports dropped sources through a ring buffer, at most one
/// event per source per second.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct EventsConfig {
    pub enabled: bool,
    /// Events each CPU sends per second at most, whatever the number of sources; further drops
    /// are carried over to their source's next event.
    pub max_per_second: u32,
    /// Sources whose last event time the kernel keeps (24 bytes each, rounded up to a power of
    /// two); sources beyond that share slots and may get more than one event per second,
    /// within `max_per_second`.
    pub sources: u32,
}

impl Default for EventsConfig {
    fn default() -> Self {
        EventsConfig {
            enabled: true,
            max_per_second: 1000,
            sources: 65_536,
        }
    }
}

impl Default for XdpConfig {
    fn default() -> Self {
        XdpConfig {
            enabled: true,
            interface: None,
            mode: XdpModeConfig::Auto,
            blocklist_v4_capacity: 1_000_000,
            blocklist_v6_capacity: 1_000_000,
            allowlist_v4_capacity: 65_536,
            allowlist_v6_capacity: 65_536,
            ratelimit_sources: 1_000_000,
            log_level: KernelLogLevel::Off,
            pin: true,
            pin_dir: DEFAULT_PIN_DIR.into(),
            ratelimit: RateConfig::default(),
            events: EventsConfig::default(),
        }
    }
}

/// How the XDP program is attached.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum XdpModeConfig {
    /// Native (driver) mode, falling back to generic (skb) mode when the driver lacks XDP.
    #[default]
    Auto,
    /// Native mode only: fail when the driver lacks XDP.
    Native,
    /// Generic mode: works with every driver, after the kernel has built a socket buffer.
    Skb,
}

#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum KernelLogLevel {
    #[default]
    Off,
    Error,
    Warn,
    Info,
    Debug,
}

impl KernelLogLevel {
    /// The value of aya-log-ebpf's `AYA_LOG_LEVEL` global: 0 logs nothing.
    pub fn aya_level(self) -> u8 {
        match self {
            KernelLogLevel::Off => 0,
            KernelLogLevel::Error => 1,
            KernelLogLevel::Warn => 2,
            KernelLogLevel::Info => 3,
            KernelLogLevel::Debug => 4,
        }
    }
}

/// The per-source packet rate limit enforced in XDP.
#[derive(Clone, Copy, Debug, Deserialize, serde::Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct RateConfig {
    /// Packets per second per source key; 0 turns the limit off.
    pub pps: u64,
    /// Packets a source may send at once above its rate. Defaults to one second's worth.
    pub burst: u64,
    /// Sources are keyed by their address masked to this many bits (IPv4).
    pub prefix4: u32,
    /// Sources are keyed by their address masked to this many bits (IPv6).
    pub prefix6: u32,
}

impl Default for RateConfig {
    fn default() -> Self {
        RateConfig {
            pps: 0,
            burst: 0,
            prefix4: 32,
            prefix6: 64,
        }
    }
}

impl RateConfig {
    /// The kernel settings for this rate (a zero burst means one second's worth of packets).
    pub fn settings(&self) -> Result<Settings, String> {
        self.check().map_err(|(_, message)| message)
    }

    /// The burst in force: a zero burst means one second's worth of packets.
    pub fn effective_burst(&self) -> u64 {
        if self.burst == 0 {
            self.pps
        } else {
            self.burst
        }
    }

    /// [`RateConfig::settings`], with the key at fault on error.
    fn check(&self) -> Result<Settings, (&'static str, String)> {
        use gateway_common::ratelimit::{RateError::*, MAX_BURST, MAX_PPS};
        let burst = self.effective_burst();
        Settings::rate(self.pps, burst, self.prefix4, self.prefix6).map_err(|e| match e {
            PpsTooHigh => ("pps", format!("pps {} is above {MAX_PPS}", self.pps)),
            BurstZero => ("burst", "burst must be at least 1".to_string()),
            BurstTooHigh => ("burst", format!("burst {burst} is above {MAX_BURST}")),
            Prefix4TooLong => (
                "prefix4",
                format!("prefix4 {} is not in 0..=32", self.prefix4),
            ),
            Prefix6TooLong => (
                "prefix6",
                format!("prefix6 {} is not in 0..=128", self.prefix6),
            ),
        })
    }
}

impl fmt::Display for RateConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.pps == 0 {
            write!(f, "off (keys /{} and /{})", self.prefix4, self.prefix6)
        } else {
            write!(
                f,
                "{} packets/s, burst {}, per /{} (IPv4) and /{} (IPv6) source",
                self.pps,
                self.effective_burst(),
                self.prefix4,
                self.prefix6
            )
        }
    }
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct StateConfig {
    /// Directory of the state file (`lists.json`); created when missing.
    pub dir: PathBuf,
}

impl Default for StateConfig {
    fn default() -> Self {
        StateConfig {
            dir: DEFAULT_STATE_DIR.into(),
        }
    }
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    /// The Unix socket the CLI talks to; only root (and the daemon's own user) may use it.
    pub socket: PathBuf,
    /// HTTP listener for `GET /metrics` (Prometheus) and `GET /healthz`; absent: none.
    pub metrics_listen: Option<SocketAddr>,
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            socket: DEFAULT_ADMIN_SOCKET.into(),
            metrics_listen: None,
        }
    }
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// A tracing filter such as `info` or `gateway=debug`; RUST_LOG overrides it.
    pub level: String,
    pub format: LogFormat,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            level: "info".into(),
            format: LogFormat::Text,
        }
    }
}

#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// A configuration error, already phrased for the operator: `FILE:LINE: KEY: what is wrong`.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(String);

impl Config {
    /// Reads, parses and validates `path`.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError(format!("{}: cannot read: {e}", path.display())))?;
        Config::parse(&text, path)
    }

    /// Parses and validates `text`; `path` is only used in error messages.
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let mut config: Config = toml::from_str(text).map_err(|e| {
            let line = e.span().map(|s| line_of_offset(text, s.start));
            let message = e.message().trim_end();
            match line {
                Some(line) => ConfigError(format!("{}:{line}: {message}", path.display())),
                None => ConfigError(format!("{}: {message}", path.display())),
            }
        })?;
        config.resolve_paths(path.parent().unwrap_or(Path::new(".")));
        if let Err((key, message)) = config.validate() {
            let line = line_of_key(text, &key)
                .map(|l| format!(":{l}"))
                .unwrap_or_default();
            return Err(ConfigError(format!(
                "{}{line}: {}: {message}",
                path.display(),
                display_key(&key)
            )));
        }
        Ok(config)
    }

    /// Semantic checks serde cannot make. On error: the key path and what is wrong with it.
    fn validate(&self) -> Result<(), (Vec<String>, String)> {
        self.validate_xdp_and_rest()
            .map_err(|(key, m)| (key.iter().map(|k| k.to_string()).collect(), m))?;
        self.autoban.validate()?;
        self.validate_proxy()
    }

    fn validate_proxy(&self) -> Result<(), (Vec<String>, String)> {
        let key = |parts: &[&str]| parts.iter().map(|p| p.to_string()).collect::<Vec<_>>();
        let p = &self.proxy;
        for (k, d) in [
            ("connect_timeout", p.connect_timeout),
            ("timeout", p.timeout),
            ("header_read_timeout", p.header_read_timeout),
            ("idle_timeout", p.idle_timeout),
        ] {
            if d.is_zero() {
                return Err((key(&["proxy", k]), "must be above zero".into()));
            }
        }
        if p.workers > 256 {
            return Err((
                key(&["proxy", "workers"]),
                format!("{} is not in 0..=256", p.workers),
            ));
        }
        if p.max_connections == 0 {
            return Err((
                key(&["proxy", "max_connections"]),
                "must be at least 1".into(),
            ));
        }
        // hyper reads a request head into a buffer of at least 8 KiB.
        if !(8192..=1 << 20).contains(&p.max_header_bytes) {
            return Err((
                key(&["proxy", "max_header_bytes"]),
                format!("{} is not in 8192..=1048576", p.max_header_bytes),
            ));
        }
        if !(1..=1000).contains(&p.max_headers) {
            return Err((
                key(&["proxy", "max_headers"]),
                format!("{} is not in 1..=1000", p.max_headers),
            ));
        }
        let mut seen = std::collections::HashSet::new();
        let tls_listen = p.tls.iter().flat_map(|t| t.listen.iter());
        for (i, addr) in p.listen.iter().chain(tls_listen).enumerate() {
            if !seen.insert(addr) {
                let k = if i < p.listen.len() { "listen" } else { "tls" };
                return Err((key(&["proxy", k]), format!("{addr} is listed twice")));
            }
        }
        if let Some(tls) = &p.tls {
            if tls.listen.is_empty() {
                return Err((
                    key(&["proxy", "tls", "listen"]),
                    "needs at least one address".into(),
                ));
            }
            if tls.certificates.is_empty() {
                return Err((
                    key(&["proxy", "tls", "certificates"]),
                    "needs at least one certificate (cert and key PEM files)".into(),
                ));
            }
            for (i, c) in tls.certificates.iter().enumerate() {
                if let Err(m) = crate::tls::load_certified_key(c) {
                    return Err((
                        key(&["proxy", "tls", "certificates", &i.to_string(), "cert"]),
                        m,
                    ));
                }
            }
        }
        for (name, u) in &self.upstreams {
            let at = |k: &str| key(&["upstreams", name, k]);
            if u.targets.is_empty() {
                return Err((at("targets"), "needs at least one target".into()));
            }
            if let Some(t) = u.targets.iter().find(|t| !(1..=1000).contains(&t.weight)) {
                return Err((
                    at("targets"),
                    format!("{}: weight {} is not in 1..=1000", t.address, t.weight),
                ));
            }
            match (&u.hash_on, u.balance) {
                (Some(_), b) if b != Balance::Hash => {
                    return Err((at("hash_on"), "needs balance = \"hash\"".into()))
                }
                (Some(on), _) => {
                    let ok = on == "client_ip"
                        || on.strip_prefix("header:").is_some_and(|h| {
                            hyper::header::HeaderName::from_bytes(h.as_bytes()).is_ok()
                        });
                    if !ok {
                        return Err((
                            at("hash_on"),
                            format!("`{on}` is neither client_ip nor header:NAME"),
                        ));
                    }
                }
                (None, _) => {}
            }
            if u.max_requests_per_target == 0 {
                return Err((at("max_requests_per_target"), "must be at least 1".into()));
            }
            if !(0.0..=1.0).contains(&u.retry_budget) {
                return Err((
                    at("retry_budget"),
                    format!("{} is not in 0..=1", u.retry_budget),
                ));
            }
            if u.retries > 10 {
                return Err((at("retries"), format!("{} is not in 0..=10", u.retries)));
            }
            if u.outlier.ejection_time.is_zero() {
                return Err((
                    key(&["upstreams", name, "outlier", "ejection_time"]),
                    "must be above zero".into(),
                ));
            }
            if let Some(h) = &u.health_check {
                let hk = |k: &str| key(&["upstreams", name, "health_check", k]);
                if !h.path.starts_with('/')
                    || h.path.chars().any(|c| c.is_whitespace() || c.is_control())
                {
                    return Err((hk("path"), format!("`{}` is not a path", h.path)));
                }
                if h.interval.is_zero() {
                    return Err((hk("interval"), "must be above zero".into()));
                }
                if h.timeout.is_zero() {
                    return Err((hk("timeout"), "must be above zero".into()));
                }
                if h.healthy_threshold == 0 {
                    return Err((hk("healthy_threshold"), "must be at least 1".into()));
                }
                if h.unhealthy_threshold == 0 {
                    return Err((hk("unhealthy_threshold"), "must be at least 1".into()));
                }
            }
            if let Some(t) = &u.tls {
                let tk = |k: &str| key(&["upstreams", name, "tls", k]);
                if t.cert.is_some() != t.key.is_some() {
                    return Err((tk("cert"), "cert and key go together (mutual TLS)".into()));
                }
                if let Some(n) = &t.server_name {
                    if rustls_pki_types::ServerName::try_from(n.as_str()).is_err() {
                        return Err((
                            tk("server_name"),
                            format!("`{n}` is not a host name or address"),
                        ));
                    }
                }
                // The CA bundle first, so its errors name `ca`; then the whole client config
                // (the client certificate and key).
                let ca =
                    t.ca.clone()
                        .unwrap_or_else(|| crate::tls::SYSTEM_CA_BUNDLE.into());
                if let Err(m) = crate::tls::load_certs(&ca) {
                    return Err((tk("ca"), m));
                }
                if let Err(m) = crate::tls::client_config(t) {
                    return Err((tk("cert"), m));
                }
            }
        }
        let mut names = std::collections::HashSet::new();
        for (i, route) in self.routes.iter().enumerate() {
            let index = i.to_string();
            let at = |k: &str| key(&["routes", &index, k]);
            let whole = || key(&["routes", &index]);
            if let Some(name) = &route.name {
                if name.is_empty()
                    || name.len() > 64
                    || !name
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
                {
                    return Err((
                        at("name"),
                        format!("`{name}` is not 1 to 64 letters, digits, -, _ or ."),
                    ));
                }
                if !names.insert(name) {
                    return Err((at("name"), format!("`{name}` names another route too")));
                }
            }
            if let Some(host) = &route.host {
                if let Err(m) = check_host_pattern(host) {
                    return Err((at("host"), m));
                }
            }
            if route.path.is_some() && route.path_prefix.is_some() {
                return Err((
                    at("path_prefix"),
                    "set either path or path_prefix, not both".into(),
                ));
            }
            if let Err((k, m)) = crate::proxy::route::check(route) {
                return Err((at(k), m));
            }
            if route.strip_prefix && route.path_prefix.is_none() {
                return Err((at("strip_prefix"), "needs path_prefix".into()));
            }
            for m in &route.methods {
                if m.is_empty() || !m.bytes().all(|b| b.is_ascii_uppercase()) {
                    return Err((
                        at("methods"),
                        format!("`{m}` is not a method such as GET or POST (upper case)"),
                    ));
                }
            }
            match (&route.upstream, &route.respond) {
                (Some(_), Some(_)) => {
                    return Err((
                        at("respond"),
                        "set either upstream or respond, not both".into(),
                    ))
                }
                (None, None) => {
                    return Err((
                        whole(),
                        "needs upstream (forward) or respond (fixed response)".into(),
                    ))
                }
                (Some(name), None) if !self.upstreams.contains_key(name) => {
                    let known: Vec<&str> = self.upstreams.keys().map(String::as_str).collect();
                    return Err((
                        at("upstream"),
                        format!(
                            "no upstream `{name}` (defined: {})",
                            if known.is_empty() {
                                "none".to_string()
                            } else {
                                known.join(", ")
                            }
                        ),
                    ));
                }
                (None, Some(respond)) if !(200..=599).contains(&respond.status) => {
                    return Err((
                        key(&["routes", &index, "respond", "status"]),
                        format!("{} is not a status in 200..=599", respond.status),
                    ));
                }
                _ => {}
            }
            if route.respond.is_some() {
                for (k, set) in [
                    ("rewrite", route.rewrite.is_some()),
                    ("strip_prefix", route.strip_prefix),
                    ("timeout", route.timeout.is_some()),
                    ("connect_timeout", route.connect_timeout.is_some()),
                ] {
                    if set {
                        return Err((
                            at(k),
                            "applies to forwarding routes only (this one responds)".into(),
                        ));
                    }
                }
            }
            for (k, t) in [
                ("timeout", route.timeout),
                ("connect_timeout", route.connect_timeout),
            ] {
                if t.is_some_and(|t| t.is_zero()) {
                    return Err((at(k), "must be above zero".into()));
                }
            }
            self.validate_route_security(route).map_err(|(mut k, m)| {
                k.splice(0..0, key(&["routes", &index]));
                (k, m)
            })?;
        }
        let nest = |top: &str, r: Result<(), (Vec<String>, String)>| {
            r.map_err(|(mut k, m)| {
                k.insert(0, top.to_string());
                (k, m)
            })
        };
        nest("auth", self.auth.validate())?;
        nest("inspect", self.inspect.validate())?;
        nest("security_headers", self.security_headers.validate())?;
        if self.audit.output.is_empty() {
            return Err((
                key(&["audit", "output"]),
                "must not be empty (stdout, off or a path)".into(),
            ));
        }
        Ok(())
    }

    /// The security settings of one route; on error the key below the route.
    fn validate_route_security(&self, route: &RouteConfig) -> Result<(), (Vec<String>, String)> {
        let nest = |top: &str, r: Result<(), (Vec<String>, String)>| {
            r.map_err(|(mut k, m)| {
                k.insert(0, top.to_string());
                (k, m)
            })
        };
        if let Some(a) = &route.auth {
            nest("auth", a.validate(&self.auth))?;
        }
        for (i, l) in route.rate_limits.iter().enumerate() {
            nest("rate_limits", nest(&i.to_string(), l.validate()))?;
        }
        let mut names = std::collections::HashSet::new();
        for (i, l) in route.rate_limits.iter().enumerate() {
            if let Some(n) = &l.name {
                if !names.insert(n) || n.is_empty() || n.contains(['"', '\\']) {
                    return Err((
                        vec!["rate_limits".into(), i.to_string(), "name".into()],
                        format!("`{n}` is empty, has a quote or backslash, or names another limit"),
                    ));
                }
            }
            let needs_auth = matches!(l.key.as_str(), "subject" | "api_key");
            if needs_auth
                && route
                    .auth
                    .as_ref()
                    .is_none_or(|a| a.mode == crate::proxy::auth::AuthMode::Off)
            {
                return Err((
                    vec!["rate_limits".into(), i.to_string(), "key".into()],
                    format!("`{}` needs [routes.auth] on this route", l.key),
                ));
            }
        }
        if let Some(v) = &route.validate {
            nest("validate", v.validate())?;
        }
        if let Some(i) = &route.inspect {
            nest("inspect", i.validate())?;
        }
        if let Some(c) = &route.cors {
            nest("cors", c.validate())?;
        }
        if let Some(h) = &route.security_headers {
            nest("security_headers", h.validate())?;
        }
        Ok(())
    }

    /// Makes the relative paths of certificates, keys, CA bundles and the audit file relative
    /// to `base` (the config file's directory).
    fn resolve_paths(&mut self, base: &Path) {
        let fix = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        if let Some(tls) = self.proxy.tls.as_mut() {
            for c in &mut tls.certificates {
                fix(&mut c.cert);
                fix(&mut c.key);
            }
        }
        for u in self.upstreams.values_mut() {
            if let Some(t) = u.tls.as_mut() {
                for p in [&mut t.ca, &mut t.cert, &mut t.key].into_iter().flatten() {
                    fix(p);
                }
            }
        }
        self.auth.resolve_paths(base);
        for r in &mut self.routes {
            if let Some(v) = r.validate.as_mut() {
                v.resolve_paths(base);
            }
        }
        let out = &mut self.audit.output;
        if !matches!(out.as_str(), "stdout" | "off" | "-" | "") && Path::new(out).is_relative() {
            *out = base.join(&*out).to_string_lossy().into_owned();
        }
    }

    fn validate_xdp_and_rest(&self) -> Result<(), (Vec<&'static str>, String)> {
        let xdp = &self.xdp;
        if xdp.enabled {
            match xdp.interface.as_deref() {
                None => {
                    return Err((
                        vec!["xdp", "interface"],
                        "required when xdp.enabled is true (the interface to attach to)".into(),
                    ))
                }
                Some(name)
                    if name.is_empty() || name.len() > 15 || name.contains(['/', ' ', '\0']) =>
                {
                    return Err((
                        vec!["xdp", "interface"],
                        format!("`{name}` is not a valid interface name"),
                    ))
                }
                Some(_) => {}
            }
        }
        for (key, value) in [
            ("blocklist_v4_capacity", xdp.blocklist_v4_capacity),
            ("blocklist_v6_capacity", xdp.blocklist_v6_capacity),
            ("allowlist_v4_capacity", xdp.allowlist_v4_capacity),
            ("allowlist_v6_capacity", xdp.allowlist_v6_capacity),
            ("ratelimit_sources", xdp.ratelimit_sources),
        ] {
            if value == 0 || value > MAX_CAPACITY {
                return Err((
                    vec!["xdp", key],
                    format!("{value} is not in 1..={MAX_CAPACITY}"),
                ));
            }
        }
        if xdp.pin {
            let dir = &xdp.pin_dir;
            if !dir.is_absolute() || dir.parent().is_none() {
                return Err((
                    vec!["xdp", "pin_dir"],
                    format!(
                        "`{}` is not an absolute directory below / (e.g. {DEFAULT_PIN_DIR})",
                        dir.display()
                    ),
                ));
            }
            if dir
                .components()
                .any(|c| matches!(c, std::path::Component::ParentDir))
            {
                return Err((
                    vec!["xdp", "pin_dir"],
                    format!("`{}` must not contain `..`", dir.display()),
                ));
            }
        }
        if let Err((key, message)) = xdp.ratelimit.check() {
            return Err((vec!["xdp", "ratelimit", key], message));
        }
        if xdp.events.max_per_second == 0 || xdp.events.max_per_second > 1_000_000 {
            return Err((
                vec!["xdp", "events", "max_per_second"],
                format!("{} is not in 1..=1000000", xdp.events.max_per_second),
            ));
        }
        if xdp.events.sources == 0 || xdp.events.sources > 1 << 24 {
            return Err((
                vec!["xdp", "events", "sources"],
                format!("{} is not in 1..={}", xdp.events.sources, 1 << 24),
            ));
        }
        if self.state.dir.as_os_str().is_empty() {
            return Err((vec!["state", "dir"], "must not be empty".into()));
        }
        if self.admin.socket.as_os_str().is_empty() {
            return Err((vec!["admin", "socket"], "must not be empty".into()));
        }
        if self.admin.socket.as_os_str().len() > 107 {
            return Err((
                vec!["admin", "socket"],
                "longer than a Unix socket path may be (107 bytes)".into(),
            ));
        }
        if let Err(e) = tracing_subscriber::EnvFilter::try_new(&self.log.level) {
            return Err((
                vec!["log", "level"],
                format!("`{}` is not a valid filter: {e}", self.log.level),
            ));
        }
        Ok(())
    }
}

fn line_of_offset(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].matches('\n').count() + 1
}

/// A key path as the operator reads it: `routes[2].upstream`.
fn display_key(key: &[String]) -> String {
    let mut out = String::new();
    for part in key {
        if !out.is_empty() && part.parse::<usize>().is_ok() {
            out.push_str(&format!("[{part}]"));
        } else {
            if !out.is_empty() {
                out.push('.');
            }
            out.push_str(part);
        }
    }
    out
}

/// The line where `key` (a path of table names, array indexes and a key) is set, if it is;
/// else the line of the deepest part of the path that is there.
fn line_of_key(text: &str, key: &[String]) -> Option<usize> {
    let doc = toml_edit::ImDocument::parse(text).ok()?;
    let mut item = doc.as_item();
    let mut span = None;
    for part in key {
        if let Some(array) = item.as_array_of_tables() {
            let Some(table) = part.parse().ok().and_then(|i| array.get(i)) else {
                break;
            };
            span = table.span().or(span);
            // An element of an array of tables is a table; keep walking inside it.
            let mut inner: &dyn toml_edit::TableLike = table;
            let rest = &key[key.iter().position(|p| std::ptr::eq(p, part))? + 1..];
            for part in rest {
                let Some((k, value)) = inner.get_key_value(part) else {
                    break;
                };
                span = k.span().or_else(|| value.span()).or(span);
                match value.as_table_like() {
                    Some(t) => inner = t,
                    None => break,
                }
            }
            break;
        }
        let Some(table) = item.as_table_like() else {
            break;
        };
        let Some((k, value)) = table.get_key_value(part) else {
            break;
        };
        span = k.span().or_else(|| value.span());
        item = value;
    }
    span.map(|s| line_of_offset(text, s.start))
}

/// Checks a route's host pattern: a host name, or `*.` and a host name.
fn check_host_pattern(host: &str) -> Result<(), String> {
    let name = host.strip_prefix("*.").unwrap_or(host);
    let valid_label = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    if name.is_empty() || name.len() > 253 || !name.split('.').all(valid_label) {
        return Err(format!(
            "`{host}` is not a host name or a wildcard such as *.example.com"
        ));
    }
    if host.bytes().any(|b| b.is_ascii_uppercase()) {
        return Err(format!("`{host}` must be lower case"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, String> {
        Config::parse(text, Path::new("gw.toml")).map_err(|e| e.to_string())
    }

    #[test]
    fn minimal_and_defaults() {
        let c = parse("[xdp]\ninterface = \"eth0\"\n").unwrap();
        assert_eq!(c.xdp.interface.as_deref(), Some("eth0"));
        assert_eq!(c.xdp.blocklist_v4_capacity, 1_000_000);
        assert_eq!(c.xdp.blocklist_v6_capacity, 1_000_000);
        assert_eq!(c.xdp.mode, XdpModeConfig::Auto);
        assert_eq!(c.state.dir, PathBuf::from(DEFAULT_STATE_DIR));
        assert_eq!(c.admin.socket, PathBuf::from(DEFAULT_ADMIN_SOCKET));
        assert!(!c.xdp.ratelimit.settings().unwrap().rate_limited());
        let c = parse("[xdp]\nenabled = false\n").unwrap();
        assert!(!c.xdp.enabled);
        assert!(c.xdp.pin);
        assert_eq!(c.xdp.pin_dir, PathBuf::from(DEFAULT_PIN_DIR));
    }

    #[test]
    fn pin_dir_must_be_absolute_without_dot_dot() {
        for (dir, expected) in [
            ("bpf/gateway", "not an absolute directory"),
            ("/", "not an absolute directory"),
            ("/sys/fs/bpf/../gateway", "must not contain `..`"),
        ] {
            let err = parse(&format!(
                "[xdp]\ninterface = \"eth0\"\npin_dir = \"{dir}\"\n"
            ))
            .unwrap_err();
            assert!(
                err.starts_with("gw.toml:3: xdp.pin_dir:") && err.contains(expected),
                "{dir}: {err}"
            );
        }
        // Not pinning: the directory does not matter.
        let c = parse("[xdp]\ninterface = \"eth0\"\npin = false\npin_dir = \"x\"\n").unwrap();
        assert!(!c.xdp.pin);
    }

    #[test]
    fn errors_name_file_line_and_key() {
        let err = parse("[xdp]\ninterface = \"eth0\"\nmode = \"turbo\"\n").unwrap_err();
        assert!(err.starts_with("gw.toml:3:"), "{err}");
        let err = parse("[xdp]\ninterface = \"eth0\"\nintrface = \"x\"\n").unwrap_err();
        assert!(
            err.starts_with("gw.toml:3:") && err.contains("intrface"),
            "{err}"
        );
        let err = parse("[xdp]\ninterface = \"eth0\"\n[xdp.ratelimit]\npps = 10\nprefix4 = 33\n")
            .unwrap_err();
        assert!(
            err.starts_with("gw.toml:5: xdp.ratelimit.prefix4:"),
            "{err}"
        );
        let err = parse("[xdp]\ninterface = \"eth0\"\nblocklist_v4_capacity = 0\n").unwrap_err();
        assert!(
            err.starts_with("gw.toml:3: xdp.blocklist_v4_capacity:"),
            "{err}"
        );
        let err = parse("[xdp]\nenabled = true\n").unwrap_err();
        assert!(err.contains("xdp.interface: required"), "{err}");
        let err = parse("[xdp]\ninterface = 5\n").unwrap_err();
        assert!(err.starts_with("gw.toml:2:"), "{err}");
        assert!(parse("[xdp\n").is_err());
        let err = parse("[xdp]\ninterface = \"eth0\"\n[xdp.ratelimit]\npps = -1\n").unwrap_err();
        assert!(err.starts_with("gw.toml:4:"), "{err}");
    }

    #[test]
    fn proxy_errors_name_the_route_and_key() {
        let base = "[xdp]\nenabled = false\n[upstreams.a]\ntargets = [\"127.0.0.1:1\"]\n";
        let cases = [
            (
                "[[routes]]\npath = \"/\"\n",
                ":5: routes[0]: needs upstream",
            ),
            (
                "[[routes]]\npath = \"x\"\nupstream = \"a\"\n",
                ":6: routes[0].path: `x` does not start with /",
            ),
            (
                "[[routes]]\nupstream = \"a\"\nstrip_prefix = true\n",
                ":7: routes[0].strip_prefix: needs path_prefix",
            ),
            (
                "[[routes]]\nhost = \"Bad Host\"\nupstream = \"a\"\n",
                ":6: routes[0].host:",
            ),
            (
                "[[routes]]\nmethods = [\"get\"]\nupstream = \"a\"\n",
                ":6: routes[0].methods: `get`",
            ),
            (
                "[[routes]]\nupstream = \"a\"\nrespond = { status = 200 }\n",
                ":7: routes[0].respond: set either",
            ),
            (
                "[[routes]]\nrespond = { status = 99 }\n",
                ":6: routes[0].respond.status: 99",
            ),
            ("[[routes]]\nupstream = \"a\"\ntimeout = \"soon\"\n", ":7:"),
            (
                "[upstreams.b]\ntargets = []\n",
                ":6: upstreams.b.targets: needs at least one target",
            ),
            ("[proxy]\nlisten = [\"nowhere\"]\n", ":6:"),
            (
                "[proxy]\nmax_header_bytes = 100\n",
                ":6: proxy.max_header_bytes: 100 is not in 8192..=1048576",
            ),
            (
                "[proxy]\nlisten = [\"127.0.0.1:1\", \"127.0.0.1:1\"]\n",
                ":6: proxy.listen: 127.0.0.1:1 is listed twice",
            ),
            (
                "[upstreams.b]\ntargets = [\"127.0.0.1:2\"]\nhash_on = \"client_ip\"\n",
                ":7: upstreams.b.hash_on: needs balance",
            ),
            (
                "[upstreams.b]\ntargets = [\"127.0.0.1:2\"]\nbalance = \"hash\"\nhash_on = \"cookie\"\n",
                ":8: upstreams.b.hash_on: `cookie`",
            ),
            (
                "[upstreams.b]\ntargets = [\"127.0.0.1:2\"]\nbalance = \"random\"\n",
                ":7:",
            ),
            (
                "[upstreams.b]\ntargets = [{ address = \"127.0.0.1:2\", wieght = 2 }]\n",
                ":6:",
            ),
            (
                "[upstreams.b]\ntargets = [\"127.0.0.1:2\"]\nhealth_check = { path = \"health\" }\n",
                ":7: upstreams.b.health_check.path: `health` is not a path",
            ),
            (
                "[upstreams.b]\ntargets = [\"127.0.0.1:2\"]\ntls = { cert = \"c.pem\" }\n",
                ":7: upstreams.b.tls.cert: cert and key go together",
            ),
            (
                "[[routes]]\nname = \"x\"\nupstream = \"a\"\n[[routes]]\nname = \"x\"\nupstream = \"a\"\n",
                ":9: routes[1].name: `x` names another route too",
            ),
            (
                "[[routes]]\nheaders = { X-Up = \"1\" }\nupstream = \"a\"\n",
                ":6: routes[0].headers: `X-Up` is not a lower-case header name",
            ),
            (
                "[[routes]]\nrewrite = \"/x\"\nupstream = \"a\"\n",
                ":6: routes[0].rewrite: needs path or path_prefix",
            ),
            (
                "[[routes]]\npath = \"/a\"\nrespond = { status = 200 }\ntimeout = \"1s\"\n",
                ":8: routes[0].timeout: applies to forwarding routes only",
            ),
        ];
        for (extra, expected) in cases {
            let err = parse(&format!("{base}{extra}")).unwrap_err();
            assert!(err.contains(expected), "{extra:?}: {err}");
        }
    }

    #[test]
    fn the_example_config_loads() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/gateway.toml");
        let c = Config::load(&path).unwrap();
        assert_eq!(c.xdp.interface.as_deref(), Some("eth0"));
        assert_eq!(c.xdp.ratelimit.pps, 20000);
        assert_eq!(c.proxy.listen, ["0.0.0.0:8080".parse().unwrap()]);
        let api = &c.upstreams["api"];
        assert_eq!(api.targets[1].weight, 2);
        assert_eq!(api.health_check, Some(HealthCheckConfig::default()));
        let names: Vec<&str> = c.routes.iter().filter_map(|r| r.name.as_deref()).collect();
        // orders before api, whose /v1 prefix would otherwise take orders requests past auth.
        assert_eq!(names, ["health", "users", "orders", "api", "public"]);
        let orders = &c.routes[2];
        let validate = orders.validate.as_ref().unwrap();
        assert_eq!(validate.methods, ["GET", "POST"]);
        assert_eq!(validate.max_body_bytes, Some(65536));
        assert_eq!(
            orders.inspect.as_ref().unwrap().mode,
            crate::proxy::inspect::InspectMode::Block
        );
        let auth = orders.auth.as_ref().unwrap();
        assert_eq!(auth.providers, ["corp", "partners"]);
        assert_eq!(auth.scopes, ["orders:read"]);
        let public = &c.routes[4];
        assert_eq!(public.rate_limits[0].burst, Some(20));
        assert_eq!(public.rate_limits[1].key, "route");
        let cors = public.cors.as_ref().unwrap();
        assert_eq!(cors.max_age, Some(Duration::from_secs(600)));
        assert_eq!(c.routes[3].timeout, Some(Duration::from_secs(10)));
        assert_eq!(c.routes[1].rewrite.as_deref(), Some("/users/{id}"));
        // The providers: key files relative to the example, every other key a default.
        use crate::proxy::auth::{
            config::{ApiKeyConfig, JwtConfig},
            ProviderConfig,
        };
        let examples = path.parent().unwrap();
        assert_eq!(
            c.auth.providers["corp"],
            ProviderConfig::Jwt(JwtConfig {
                algorithms: vec![jsonwebtoken::Algorithm::RS256],
                issuer: Some("https://idp.example.com/".into()),
                audiences: vec!["api".into()],
                public_key_file: Some(examples.join("keys/idp.pem")),
                ..JwtConfig::default()
            })
        );
        assert_eq!(
            c.auth.providers["partners"],
            ProviderConfig::ApiKey(ApiKeyConfig {
                keys_file: Some(examples.join("keys/partners.toml")),
                ..ApiKeyConfig::default()
            })
        );
        assert_eq!(c.auth.providers.len(), 2);
        assert_eq!(c.auth.realm, "gateway");
        assert_eq!(
            c.admin.metrics_listen,
            Some("127.0.0.1:9901".parse().unwrap())
        );
        let rule = &c.autoban.rules["bad-credentials"];
        assert_eq!(rule.on, ["auth_failure"]);
        assert_eq!(
            (rule.threshold, rule.prefix_v4, rule.prefix_v6),
            (20, 32, 128)
        );
        assert_eq!(rule.ttl, Duration::from_secs(3600));
        // Every other key the example sets is a default.
        let defaults = Config {
            xdp: XdpConfig {
                interface: c.xdp.interface.clone(),
                ratelimit: c.xdp.ratelimit,
                ..XdpConfig::default()
            },
            proxy: ProxyConfig {
                listen: c.proxy.listen.clone(),
                ..ProxyConfig::default()
            },
            upstreams: BTreeMap::from([(
                "api".to_string(),
                UpstreamConfig {
                    targets: api.targets.clone(),
                    health_check: api.health_check.clone(),
                    ..UpstreamConfig::default()
                },
            )]),
            routes: c.routes.clone(),
            auth: c.auth.clone(),
            admin: AdminConfig {
                metrics_listen: c.admin.metrics_listen,
                ..AdminConfig::default()
            },
            autoban: crate::autoban::AutobanConfig {
                rules: c.autoban.rules.clone(),
                ..Default::default()
            },
            ..Config::default()
        };
        assert_eq!(c, defaults);
    }

    #[test]
    fn rate_defaults_burst_to_one_second() {
        let r = RateConfig {
            pps: 1000,
            burst: 0,
            prefix4: 24,
            prefix6: 48,
        };
        let s = r.settings().unwrap();
        assert_eq!(s.interval_ns, 1_000_000);
        assert_eq!(s.burst_ns, 1_000_000_000);
        assert_eq!((s.prefix4, s.prefix6), (24, 48));
    }
}
