//! The `gateway` command line: the daemon (`run`), config checking, and the client commands that
//! talk to a running daemon over its admin socket.

use std::{
    fmt::Write as _,
    path::{Path, PathBuf},
    process::ExitCode,
    time::Duration,
};

use clap::{Args, Parser, Subcommand};
use serde_json::Value;

use crate::{
    admin::{self, Request, Response},
    config::{Config, DEFAULT_ADMIN_SOCKET, DEFAULT_PIN_DIR},
    daemon,
    lists::{self, ListKind},
    net,
};

/// eBPF-accelerated API gateway: XDP blocklist and per-source rate limiting at the NIC, and a
/// TLS-terminating reverse proxy.
#[derive(Debug, Parser)]
#[command(name = "gateway", version, propagate_version = true)]
pub struct Cli {
    /// The daemon's admin socket (client commands).
    #[arg(long, global = true, env = "GATEWAY_ADMIN_SOCKET", default_value = DEFAULT_ADMIN_SOCKET, value_name = "PATH")]
    socket: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the daemon: load the lists, attach XDP, serve the proxy and the admin socket
    /// (SIGHUP reloads the config; SIGINT/SIGTERM stop it gracefully).
    ///
    /// The XDP link and maps are pinned (xdp.pin_dir): after the daemon stops or crashes the
    /// kernel keeps enforcing the last lists and rate limit, and the next daemon adopts the
    /// program without a gap, reconciling the maps with the state file. `gateway detach`
    /// removes the program.
    Run {
        #[arg(long, short, value_name = "FILE")]
        config: PathBuf,
    },
    /// Check a config file and exit: 0 when valid, 1 with FILE:LINE: KEY: ERROR otherwise.
    CheckConfig {
        #[arg(value_name = "FILE")]
        config: PathBuf,
    },
    /// Manage the blocklist: sources dropped in XDP. Entries the auto-ban rules add show with
    /// origin `auto:RULE`, their reason and expiry, and are removed like any other.
    #[command(subcommand)]
    Block(ListCommand),
    /// Manage the allowlist: sources that bypass the blocklist and the rate limit.
    #[command(subcommand)]
    Allow(ListCommand),
    /// Show or change the per-source packet rate limit enforced in XDP.
    #[command(subcommand)]
    Ratelimit(RateCommand),
    /// Reload the running daemon's config file (as SIGHUP does): routes, upstreams, listeners,
    /// certificates, limits, the audit output and the XDP rate limit change without dropping
    /// connections; an invalid file is refused and the old config keeps serving.
    Reload,
    /// Detach the XDP program and remove its pins (link and maps under xdp.pin_dir).
    ///
    /// Works with or without a running daemon: one that answers on the admin socket lets go of
    /// the program and keeps serving without XDP until it is restarted; otherwise the pinned
    /// link is detached and the pins removed directly. Stopping the daemon alone leaves the
    /// pinned program enforcing.
    Detach {
        /// Take the pin directory and the admin socket from this config file.
        #[arg(long, short, value_name = "FILE")]
        config: Option<PathBuf>,
        /// The pin directory when no daemon answers [default: /sys/fs/bpf/gateway, or
        /// xdp.pin_dir of --config].
        #[arg(long, value_name = "DIR", conflicts_with = "config")]
        pin_dir: Option<PathBuf>,
    },
    /// Show the XDP verdict counters (summed over CPUs), list sizes and the rate limit; with
    /// --top N also the N sources the XDP program dropped most, by reason (from its drop
    /// events, at most one per source per second).
    Stats {
        #[arg(long)]
        json: bool,
        /// Also list the N sources dropped most (1 to 1024).
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=1024))]
        top: Option<u32>,
    },
    /// Print the SHA-256 of an API key, the `sha256` of an `[[auth.providers.NAME.keys]]`
    /// entry. The key is read from standard input (one line), so it stays out of the shell's
    /// history and the process list.
    HashKey {
        /// Make a new random key (256 bits, base64url) and print it above its hash.
        #[arg(long)]
        generate: bool,
    },
}

#[derive(Debug, Subcommand)]
enum ListCommand {
    /// Add addresses or CIDRs (all or none); re-adding one updates its TTL and reason.
    Add {
        #[arg(value_name = "IP|CIDR", required = true)]
        nets: Vec<String>,
        #[command(flatten)]
        meta: EntryMeta,
    },
    /// Remove addresses or CIDRs (all must be listed, or nothing changes).
    #[command(visible_alias = "remove")]
    Rm {
        #[arg(value_name = "IP|CIDR", required = true)]
        nets: Vec<String>,
    },
    /// Remove every entry.
    Clear,
    /// List the entries.
    #[command(visible_alias = "ls")]
    List {
        #[arg(long)]
        json: bool,
    },
    /// Add every address or CIDR in FILE (one per line, `#` or `;` comments); a bad line aborts
    /// the import and nothing is applied. FILE `-` reads stdin.
    Import {
        #[arg(value_name = "FILE")]
        file: PathBuf,
        #[command(flatten)]
        meta: EntryMeta,
    },
}

#[derive(Debug, Args)]
struct EntryMeta {
    /// Remove the entry after this long, e.g. 90s, 10m, 12h, 7d.
    #[arg(long, value_parser = parse_ttl)]
    ttl: Option<Duration>,
    /// Why it is listed (shown by `list`).
    #[arg(long, value_name = "TEXT")]
    reason: Option<String>,
}

#[derive(Debug, Subcommand)]
enum RateCommand {
    /// Set packets per second and burst per source (0 pps turns the limit off). Overrides the
    /// config until `ratelimit reset`, also across restarts.
    Set {
        #[arg(long)]
        pps: u64,
        /// Packets a source may send at once; defaults to one second's worth (= pps).
        #[arg(long)]
        burst: Option<u64>,
        /// Count IPv4 sources per /N network (default: unchanged).
        #[arg(long, value_parser = clap::value_parser!(u32).range(0..=32))]
        prefix4: Option<u32>,
        /// Count IPv6 sources per /N network (default: unchanged).
        #[arg(long, value_parser = clap::value_parser!(u32).range(0..=128))]
        prefix6: Option<u32>,
    },
    /// Show the rate limit in force and where it comes from (config or override).
    Show {
        #[arg(long)]
        json: bool,
    },
    /// Drop the override and go back to the config's rate limit.
    Reset,
}

const MAX_TTL: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

fn parse_ttl(text: &str) -> Result<Duration, String> {
    let ttl = humantime::parse_duration(text)
        .map_err(|e| format!("`{text}` is not a duration like 90s, 10m, 12h or 7d ({e})"))?;
    if ttl.is_zero() {
        return Err("the TTL must be longer than zero".into());
    }
    if ttl > MAX_TTL {
        return Err("the TTL may be at most 10 years; leave it out for a permanent entry".into());
    }
    Ok(ttl)
}

/// Runs the command line; the process exit code: 0 success, 1 failure, 2 usage error.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("error: {message}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<(), String> {
    let socket = cli.socket.as_path();
    match cli.command {
        Command::Run { config } => daemon::run(&config),
        Command::CheckConfig { config } => {
            Config::load(&config).map_err(|e| e.to_string())?;
            println!("{}: ok", config.display());
            Ok(())
        }
        Command::Block(cmd) => list_command(socket, ListKind::Block, cmd),
        Command::Allow(cmd) => list_command(socket, ListKind::Allow, cmd),
        Command::Ratelimit(cmd) => rate_command(socket, cmd),
        Command::Reload => {
            print_message(&call(socket, &Request::Reload)?);
            Ok(())
        }
        Command::Stats { json, top } => {
            let data = call(socket, &Request::Stats { top })?.data;
            print_data(&data, json, format_stats);
            Ok(())
        }
        Command::HashKey { generate } => hash_key(generate),
        Command::Detach { config, pin_dir } => detach(socket, config.as_deref(), pin_dir),
    }
}

/// `gateway detach`: through the daemon when one answers (it holds the link), else directly
/// on the pins.
fn detach(socket: &Path, config: Option<&Path>, pin_dir: Option<PathBuf>) -> Result<(), String> {
    let (socket, dir) = match config {
        Some(path) => {
            let config = Config::load(path).map_err(|e| e.to_string())?;
            (config.admin.socket, config.xdp.pin_dir)
        }
        None => (
            socket.to_path_buf(),
            pin_dir.unwrap_or_else(|| DEFAULT_PIN_DIR.into()),
        ),
    };
    if std::os::unix::net::UnixStream::connect(&socket).is_ok() {
        print_message(&call(&socket, &Request::Detach)?);
        return Ok(());
    }
    println!("{}", crate::xdp::detach_pins(&dir)?);
    Ok(())
}

fn hash_key(generate: bool) -> Result<(), String> {
    use std::io::{BufRead as _, Read as _};
    let key = if generate {
        let mut bytes = [0u8; 32];
        std::fs::File::open("/dev/urandom")
            .and_then(|mut f| f.read_exact(&mut bytes))
            .map_err(|e| format!("reading /dev/urandom: {e}"))?;
        use base64::Engine as _;
        let key = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
        println!("key:    {key}");
        key
    } else {
        let mut line = String::new();
        std::io::stdin()
            .lock()
            .read_line(&mut line)
            .map_err(|e| format!("reading the key from standard input: {e}"))?;
        let key = line.trim_end_matches(['\n', '\r']).to_string();
        if key.is_empty() {
            return Err("no key on standard input".into());
        }
        key
    };
    println!("sha256: {}", crate::proxy::auth::hash_key(&key));
    Ok(())
}

/// Calls the daemon; a refusal becomes the error.
fn call(socket: &Path, request: &Request) -> Result<Response, String> {
    let response = admin::call(socket, request)?;
    if response.ok {
        Ok(response)
    } else {
        Err(response
            .error
            .unwrap_or_else(|| "the daemon refused without saying why".into()))
    }
}

/// Prints a daemon answer as pretty JSON or through `format` (which ends its own lines).
fn print_data(data: &Value, json: bool, format: impl Fn(&Value) -> String) {
    if json {
        println!("{}", serde_json::to_string_pretty(data).unwrap_or_default());
    } else {
        print!("{}", format(data));
    }
}

/// Checks addresses locally (a typo is reported without a round trip) and writes them in the
/// canonical form the daemon parses again.
fn canonical(nets: &[String]) -> Result<Vec<String>, String> {
    nets.iter()
        .map(|n| net::parse_net(n).map(|n| n.to_string()))
        .collect()
}

fn print_message(response: &Response) {
    if let Some(message) = &response.message {
        println!("{message}");
    }
}

fn list_command(socket: &Path, list: ListKind, cmd: ListCommand) -> Result<(), String> {
    match cmd {
        ListCommand::Add { nets, meta } => add(socket, list, canonical(&nets)?, meta, "cli"),
        ListCommand::Rm { nets } => {
            let nets = canonical(&nets)?;
            print_message(&call(socket, &Request::Remove { list, nets })?);
            Ok(())
        }
        ListCommand::Clear => {
            print_message(&call(socket, &Request::Clear { list })?);
            Ok(())
        }
        ListCommand::List { json } => {
            let data = call(socket, &Request::List { list })?.data;
            print_data(&data, json, format_list);
            Ok(())
        }
        ListCommand::Import { file, meta } => {
            let nets = read_feed(&file)?;
            if nets.is_empty() {
                return Err(format!("{}: no addresses in the file", file.display()));
            }
            add(socket, list, nets, meta, "import")
        }
    }
}

fn add(
    socket: &Path,
    list: ListKind,
    nets: Vec<String>,
    meta: EntryMeta,
    origin: &str,
) -> Result<(), String> {
    if let Some(reason) = &meta.reason {
        lists::check_reason(reason)?;
    }
    let request = Request::Add {
        list,
        nets,
        ttl_ms: meta.ttl.map(|t| t.as_millis() as u64),
        reason: meta.reason,
        origin: origin.into(),
    };
    print_message(&call(socket, &request)?);
    Ok(())
}

/// Reads a threat feed: one address or CIDR per line, blank lines and `#`/`;` comments ignored.
/// The first bad line is reported with its number; nothing is returned then.
pub fn read_feed(path: &Path) -> Result<Vec<String>, String> {
    let bytes = if path == Path::new("-") {
        let mut buf = Vec::new();
        std::io::Read::read_to_end(&mut std::io::stdin(), &mut buf)
            .map_err(|e| format!("stdin: {e}"))?;
        buf
    } else {
        std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?
    };
    parse_feed(&bytes).map_err(|(line, error, more)| {
        let more = if more > 0 {
            format!(" (and {more} more bad lines)")
        } else {
            String::new()
        };
        format!(
            "{}:{line}: {error}; nothing was imported{more}",
            path.display()
        )
    })
}

/// Parses feed text; on error: (line number, what is wrong, how many other lines are bad).
pub fn parse_feed(bytes: &[u8]) -> Result<Vec<String>, (usize, String, usize)> {
    let mut nets = Vec::new();
    let mut first_error: Option<(usize, String)> = None;
    let mut more = 0;
    let bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
    for (i, raw) in bytes.split(|b| *b == b'\n').enumerate() {
        let result = std::str::from_utf8(raw)
            .map_err(|_| "not UTF-8 text".to_string())
            .and_then(|line| {
                let line = line.split(['#', ';']).next().unwrap_or("").trim();
                if line.is_empty() {
                    return Ok(None);
                }
                if line.contains(char::is_whitespace) {
                    return Err(format!("`{line}`: expected one address or CIDR per line"));
                }
                net::parse_net(line).map(|n| Some(n.to_string()))
            });
        match result {
            Ok(Some(net)) => nets.push(net),
            Ok(None) => {}
            Err(e) if first_error.is_none() => first_error = Some((i + 1, e)),
            Err(_) => more += 1,
        }
    }
    match first_error {
        Some((line, error)) => Err((line, error, more)),
        None => Ok(nets),
    }
}

fn rate_command(socket: &Path, cmd: RateCommand) -> Result<(), String> {
    match cmd {
        RateCommand::Set {
            pps,
            burst,
            prefix4,
            prefix6,
        } => {
            if pps > 0 && burst == Some(0) {
                return Err("--burst must be at least 1".into());
            }
            print_message(&call(
                socket,
                &Request::RateSet {
                    pps,
                    burst,
                    prefix4,
                    prefix6,
                },
            )?);
        }
        RateCommand::Show { json } => {
            let data = call(socket, &Request::RateShow)?.data;
            print_data(&data, json, |d| format!("{}\n", format_rate(d)));
        }
        RateCommand::Reset => print_message(&call(socket, &Request::RateReset)?),
    }
    Ok(())
}

fn format_rate(rate: &Value) -> String {
    let source = rate["source"].as_str().unwrap_or("?");
    if rate["enabled"].as_bool() == Some(true) {
        format!(
            "{} packets/s per source, burst {}, sources keyed by /{} (IPv4) and /{} (IPv6)  [{source}]",
            rate["pps"], rate["burst"], rate["prefix4"], rate["prefix6"]
        )
    } else {
        format!("off  [{source}]")
    }
}

fn format_list(entries: &Value) -> String {
    let entries = entries.as_array().map(Vec::as_slice).unwrap_or_default();
    if entries.is_empty() {
        return "(empty)\n".into();
    }
    let mut out = String::new();
    // Origins are `cli` or `auto:RULE`, rule names as long as their authors like.
    let origin = entries
        .iter()
        .filter_map(|e| e["origin"].as_str())
        .map(str::len)
        .max()
        .unwrap_or(0)
        .max(14);
    let _ = writeln!(
        out,
        "{:<43} {:<origin$} {:<20} {:<12} REASON",
        "NET", "ORIGIN", "ADDED", "EXPIRES IN"
    );
    for e in entries {
        let expires = match e["expires_in_s"].as_u64() {
            Some(s) => humantime::format_duration(Duration::from_secs(s)).to_string(),
            None => "never".into(),
        };
        let _ = writeln!(
            out,
            "{:<43} {:<origin$} {:<20} {:<12} {}",
            e["net"].as_str().unwrap_or(""),
            e["origin"].as_str().unwrap_or(""),
            e["added"].as_str().unwrap_or(""),
            expires,
            e["reason"].as_str().unwrap_or("")
        );
    }
    out
}

fn format_stats(data: &Value) -> String {
    let mut out = String::new();
    match data["xdp"]["interface"].as_str() {
        Some(interface) => {
            let pinned = match data["xdp"]["pinned"].as_str() {
                Some(path) => format!(", pinned at {path}"),
                None => String::new(),
            };
            let _ = writeln!(
                out,
                "XDP: attached to {interface} ({} mode{pinned})",
                data["xdp"]["mode"].as_str().unwrap_or("?")
            );
        }
        None => {
            let _ = writeln!(
                out,
                "XDP: disabled (lists are kept but not enforced; the proxy refuses auto-banned clients)"
            );
        }
    }
    let _ = writeln!(out, "rate limit: {}", format_rate(&data["ratelimit"]));
    let l = &data["lists"];
    let _ = writeln!(
        out,
        "blocklist: {} IPv4, {} IPv6 entries ({} by auto-ban); allowlist: {} IPv4, {} IPv6 entries",
        l["block"]["v4"], l["block"]["v6"], l["auto"], l["allow"]["v4"], l["allow"]["v6"]
    );
    if data["verdicts"].is_object() {
        let _ = writeln!(out, "\n{:<20} {:>16} {:>18}", "VERDICT", "PACKETS", "BYTES");
        for verdict in gateway_common::Verdict::ALL {
            let c = &data["verdicts"][verdict.name()];
            let (packets, bytes) = (
                c["packets"].as_u64().unwrap_or(0),
                c["bytes"].as_u64().unwrap_or(0),
            );
            let _ = writeln!(out, "{:<20} {packets:>16} {bytes:>18}", verdict.name());
        }
    }
    if let Some(rows) = data["top"].as_array() {
        let _ = writeln!(out, "\ntop dropped sources (from drop events):");
        if rows.is_empty() {
            let _ = writeln!(out, "(none yet)");
        } else {
            let _ = writeln!(
                out,
                "{:<40} {:<18} {:>12} {:>8}  LAST SEEN",
                "SOURCE", "REASON", "PACKETS", "EVENTS"
            );
        }
        for r in rows {
            let packets = match r["error"].as_u64() {
                Some(e) if e > 0 => format!("~{}", r["packets"]),
                _ => r["packets"].to_string(),
            };
            let _ = writeln!(
                out,
                "{:<40} {:<18} {packets:>12} {:>8}  {}",
                r["source"].as_str().unwrap_or(""),
                r["reason"].as_str().unwrap_or(""),
                // A number, not a `Value`: `Value`'s Display ignores the width.
                r["events"].as_u64().unwrap_or(0),
                r["last_seen"].as_str().unwrap_or("")
            );
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_keep_their_columns() {
        let list = serde_json::json!([
            {"net": "198.51.100.7", "origin": "auto:bad-credentials", "added": "2026-11-23T10:00:00Z",
             "expires_in_s": 3600, "reason": "20 refusals in 1m"},
            {"net": "203.0.113.0/24", "origin": "cli", "added": "2026-11-23T10:00:01Z",
             "expires_in_s": null, "reason": "scanner"},
        ]);
        let text = format_list(&list);
        let column = |line: &str, word: &str| line.find(word).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            column(lines[0], "ADDED"),
            column(lines[1], "2026"),
            "{text}"
        );
        assert_eq!(column(lines[1], "2026"), column(lines[2], "2026"), "{text}");
        let stats = serde_json::json!({
            "xdp": {}, "ratelimit": {}, "lists": {},
            "top": [{"source": "198.51.100.7", "reason": "dropped_blocklist", "packets": 15011,
                     "events": 6, "error": 0, "last_seen": "2026-11-23T10:00:02Z"}],
        });
        let text = format_stats(&stats);
        let header = text.lines().find(|l| l.starts_with("SOURCE")).unwrap();
        let row = text
            .lines()
            .find(|l| l.starts_with("198.51.100.7"))
            .unwrap();
        assert_eq!(
            header.find("EVENTS").unwrap() + "EVENTS".len(),
            row.find(" 6 ").unwrap() + 2,
            "{text}"
        );
    }

    #[test]
    fn feeds_parse_with_comments_and_report_bad_lines() {
        let feed = b"# Spamhaus-style feed\n198.51.100.0/24 ; SBL1\n\n  203.0.113.7  # host\n2001:db8::/32\r\n";
        assert_eq!(
            parse_feed(feed).unwrap(),
            vec!["198.51.100.0/24", "203.0.113.7/32", "2001:db8::/32"]
        );
        let (line, error, more) = parse_feed(b"10.0.0.0/8\n10.0.0.1/8\nbogus\n").unwrap_err();
        assert_eq!((line, more), (2, 1));
        assert!(error.contains("host bits"), "{error}");
        let (line, _, _) = parse_feed(b"10.0.0.1\n\xff\xfe\n").unwrap_err();
        assert_eq!(line, 2);
        let (line, error, _) = parse_feed(b"10.0.0.1 10.0.0.2\n").unwrap_err();
        assert!(line == 1 && error.contains("one address"), "{error}");
    }

    #[test]
    fn ttls() {
        assert_eq!(parse_ttl("10m").unwrap(), Duration::from_secs(600));
        assert!(parse_ttl("0s").is_err());
        assert!(parse_ttl("soon").is_err());
        assert!(parse_ttl("-5m").is_err());
        assert!(parse_ttl("100y").is_err());
    }

    #[test]
    fn cli_is_well_formed() {
        use clap::CommandFactory as _;
        Cli::command().debug_assert();
    }
}
