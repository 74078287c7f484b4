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
    pub state: StateConfig,
    pub admin: AdminConfig,
    pub log: LogConfig,
}

/// The reverse proxy's listeners and defaults.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ProxyConfig {
    /// Plain HTTP listeners (`"ADDR:PORT"`); none turns the proxy off.
    pub listen: Vec<SocketAddr>,
    /// Time to open a connection to an upstream target.
    #[serde(deserialize_with = "duration")]
    pub connect_timeout: Duration,
    /// Time for an upstream to answer with its response head, unless the route says otherwise.
    #[serde(deserialize_with = "duration")]
    pub timeout: Duration,
}

impl Default for ProxyConfig {
    fn default() -> Self {
        ProxyConfig {
            listen: Vec::new(),
            connect_timeout: Duration::from_secs(5),
            timeout: Duration::from_secs(30),
        }
    }
}

/// A pool of upstream targets.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct UpstreamConfig {
    /// `"ADDR:PORT"` of every target; requests go round-robin over them.
    pub targets: Vec<SocketAddr>,
}

/// One routing rule: what it matches and what it does.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RouteConfig {
    /// Host to match: exact (`api.example.com`) or a wildcard (`*.example.com`, which matches
    /// one or more labels in front of `example.com`). Absent: any host.
    pub host: Option<String>,
    /// Exact path to match.
    pub path: Option<String>,
    /// Path prefix to match, on segment boundaries: `/api` matches `/api` and `/api/x`, not
    /// `/apix`.
    pub path_prefix: Option<String>,
    /// Methods to match; empty: any.
    pub methods: Vec<String>,
    /// Forward to this upstream pool.
    pub upstream: Option<String>,
    /// Remove `path_prefix` from the path before forwarding.
    pub strip_prefix: bool,
    /// Time for the upstream to answer with its response head (overrides `proxy.timeout`).
    #[serde(default, deserialize_with = "optional_duration")]
    pub timeout: Option<Duration>,
    /// Answer with this fixed response instead of forwarding.
    pub respond: Option<RespondConfig>,
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

fn duration<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let text = String::deserialize(d)?;
    humantime::parse_duration(&text).map_err(|e| {
        serde::de::Error::custom(format!(
            "`{text}` is not a duration such as 500ms, 5s or 1m: {e}"
        ))
    })
}

fn optional_duration<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
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
    pub ratelimit: RateConfig,
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
            ratelimit: RateConfig::default(),
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
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            socket: DEFAULT_ADMIN_SOCKET.into(),
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
        let config: Config = toml::from_str(text).map_err(|e| {
            let line = e.span().map(|s| line_of_offset(text, s.start));
            let message = e.message().trim_end();
            match line {
                Some(line) => ConfigError(format!("{}:{line}: {message}", path.display())),
                None => ConfigError(format!("{}: {message}", path.display())),
            }
        })?;
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
        self.validate_proxy()
    }

    fn validate_proxy(&self) -> Result<(), (Vec<String>, String)> {
        let key = |parts: &[&str]| parts.iter().map(|p| p.to_string()).collect::<Vec<_>>();
        if self.proxy.connect_timeout.is_zero() {
            return Err((
                key(&["proxy", "connect_timeout"]),
                "must be above zero".into(),
            ));
        }
        if self.proxy.timeout.is_zero() {
            return Err((key(&["proxy", "timeout"]), "must be above zero".into()));
        }
        for (name, upstream) in &self.upstreams {
            if upstream.targets.is_empty() {
                return Err((
                    key(&["upstreams", name, "targets"]),
                    "needs at least one target".into(),
                ));
            }
        }
        for (i, route) in self.routes.iter().enumerate() {
            let index = i.to_string();
            let at = |k: &str| key(&["routes", &index, k]);
            let whole = || key(&["routes", &index]);
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
            for (k, p) in [("path", &route.path), ("path_prefix", &route.path_prefix)] {
                if let Some(p) = p {
                    if !p.starts_with('/')
                        || p.contains(['?', '#'])
                        || p.chars().any(char::is_whitespace)
                    {
                        return Err((at(k), format!("`{p}` is not a path (it must start with / and hold no query, fragment or space)")));
                    }
                }
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
            if route.timeout.is_some_and(|t| t.is_zero()) {
                return Err((at("timeout"), "must be above zero".into()));
            }
        }
        Ok(())
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
        if let Err((key, message)) = xdp.ratelimit.check() {
            return Err((vec!["xdp", "ratelimit", key], message));
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
                ":6: routes[0].path: `x` is not a path",
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
        assert_eq!(c.upstreams["api"].targets.len(), 2);
        assert_eq!(c.routes.len(), 2);
        assert_eq!(c.routes[1].timeout, Some(Duration::from_secs(10)));
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
            upstreams: c.upstreams.clone(),
            routes: c.routes.clone(),
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
