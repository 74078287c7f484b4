//! `cargo xtask demo`: the XDP layer at work between two network namespaces.
//!
//! ```text
//!  netns gwdemo-<pid>-gw                      netns gwdemo-<pid>-cl
//!    gateway run (XDP on gwd<pid>g)             xtask demo-send (UDP to port 9)
//!    gwd<pid>g 198.18.0.1/24   <---- veth ----  gwd<pid>c 198.18.0.2, .3, .4/24
//!              2001:db8::1/64                             2001:db8::2/64
//! ```
//!
//! The client sends bounded bursts of UDP datagrams to the discard port; between bursts the
//! demo changes the lists and the rate limit with the `gateway` CLI and prints `gateway stats`.
//! Everything it creates (the daemon, both namespaces and with them the veth pair, a temporary
//! directory) is removed on every way out: success, error, panic and Ctrl-C.

use std::{
    fs::{self, DirBuilder, File},
    io::ErrorKind,
    net::{IpAddr, SocketAddr, UdpSocket},
    os::unix::fs::DirBuilderExt as _,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex, MutexGuard, PoisonError},
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};
use clap::Args;

use crate::{
    setup,
    util::{self, describe, exec, output, toml_string},
};

/// The gateway's addresses.
const GATEWAY_V4: &str = "198.18.0.1";
const GATEWAY_V6: &str = "2001:db8::1";
/// Client sources, one per part of the story.
const BLOCKED_HOST: &str = "198.18.0.2";
const FLOODER: &str = "198.18.0.3";
const FRIEND: &str = "198.18.0.4";
const CLIENT_V6: &str = "2001:db8::2";
/// The discard port: nothing listens there, and nothing needs to, since XDP counts every packet
/// on its way in.
const PORT: u16 = 9;

/// Upper bounds for the hidden sender, whatever it is asked for.
const MAX_SEND_COUNT: u32 = 100_000;
const MAX_SEND_TIME: Duration = Duration::from_secs(10);

const STARTUP_TIMEOUT: Duration = Duration::from_secs(10);
const STOP_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Args, Debug)]
pub struct Options {
    /// Run this gateway binary instead of building target/release/gateway.
    #[arg(long, value_name = "PATH")]
    pub gateway_bin: Option<PathBuf>,
}

/// `cargo xtask demo-send`: sends `count` UDP datagrams from `from` to `to`.
#[derive(Args, Debug)]
pub struct SendOptions {
    /// Source address to bind (must be an address of this network namespace).
    #[arg(long)]
    pub from: IpAddr,
    /// Destination address and port.
    #[arg(long)]
    pub to: SocketAddr,
    /// Number of datagrams.
    #[arg(long, default_value_t = 1,
          value_parser = clap::value_parser!(u32).range(1..=i64::from(MAX_SEND_COUNT)))]
    pub count: u32,
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

    let lab = Arc::new(Lab::new(gateway_bin)?);
    let _cleanup = CleanupOnDrop(lab.clone());
    let on_interrupt = lab.clone();
    ctrlc::set_handler(move || {
        eprintln!("\ninterrupted: cleaning up");
        on_interrupt.cleanup();
        std::process::exit(130);
    })
    .context("installing the Ctrl-C handler")?;

    lab.create_network()?;
    lab.start_gateway()?;
    lab.tour()?;
    println!("\ndemo finished; cleaning up");
    Ok(())
}

/// The hidden sender, run by the demo inside the client namespace.
pub fn send(opts: SendOptions) -> Result<()> {
    let socket = UdpSocket::bind(SocketAddr::new(opts.from, 0))
        .with_context(|| format!("binding a UDP socket to {}", opts.from))?;
    let payload = b"gateway xdp demo";
    let deadline = Instant::now() + MAX_SEND_TIME;
    let mut sent = 0;
    while sent < opts.count && Instant::now() < deadline {
        socket
            .send_to(payload, opts.to)
            .with_context(|| format!("sending from {} to {}", opts.from, opts.to))?;
        sent += 1;
    }
    println!("   sent {sent} UDP datagrams {} -> {}", opts.from, opts.to);
    Ok(())
}

/// The namespaces, files and daemon of one demo run.
struct Lab {
    gateway_ns: String,
    client_ns: String,
    gateway_if: String,
    client_if: String,
    dir: PathBuf,
    gateway_bin: PathBuf,
    /// This binary, for `demo-send` inside the client namespace.
    xtask_bin: PathBuf,
    /// What exists now and must go; shared with the Ctrl-C handler.
    live: Mutex<Live>,
}

/// Every resource is recorded here before it is created, so cleanup never misses one.
#[derive(Default)]
struct Live {
    gateway: Option<Child>,
    netns: Vec<String>,
    dir: Option<PathBuf>,
}

struct CleanupOnDrop(Arc<Lab>);

impl Drop for CleanupOnDrop {
    fn drop(&mut self) {
        self.0.cleanup();
    }
}

impl Lab {
    fn new(gateway_bin: PathBuf) -> Result<Self> {
        // Interface names must fit in 15 bytes: "gwd" + at most 7 pid digits + 1.
        let pid = std::process::id();
        Ok(Lab {
            gateway_ns: format!("gwdemo-{pid}-gw"),
            client_ns: format!("gwdemo-{pid}-cl"),
            gateway_if: format!("gwd{pid}g"),
            client_if: format!("gwd{pid}c"),
            dir: std::env::temp_dir().join(format!("gwdemo-{pid}")),
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

    fn live(&self) -> MutexGuard<'_, Live> {
        // A panic elsewhere must not stop the cleanup.
        self.live.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn create_network(&self) -> Result<()> {
        println!(
            "\n==> network: {} <-veth-> {}",
            self.gateway_ns, self.client_ns
        );
        for ns in [&self.gateway_ns, &self.client_ns] {
            self.live().netns.push(ns.clone());
            ip(&["netns", "add", ns])?;
            // No IPv6 router solicitations: they would show up in the `passed` counter.
            // `default` because the veth ends are created after this.
            exec(
                Command::new("ip")
                    .args(["netns", "exec", ns, "sysctl", "-q", "-w"])
                    .arg("net.ipv6.conf.default.router_solicitations=0"),
            )?;
        }
        ip(&[
            "link",
            "add",
            &self.gateway_if,
            "netns",
            &self.gateway_ns,
            "type",
            "veth",
            "peer",
            "name",
            &self.client_if,
            "netns",
            &self.client_ns,
        ])?;
        let gateway_addrs = [GATEWAY_V4, GATEWAY_V6];
        let client_addrs = [BLOCKED_HOST, FLOODER, FRIEND, CLIENT_V6];
        for (ns, dev, addrs) in [
            (&self.gateway_ns, &self.gateway_if, &gateway_addrs[..]),
            (&self.client_ns, &self.client_if, &client_addrs[..]),
        ] {
            for addr in addrs {
                if addr.contains(':') {
                    ip(&[
                        "-n",
                        ns,
                        "addr",
                        "add",
                        &format!("{addr}/64"),
                        "dev",
                        dev,
                        "nodad",
                    ])?;
                } else {
                    ip(&["-n", ns, "addr", "add", &format!("{addr}/24"), "dev", dev])?;
                }
            }
            ip(&["-n", ns, "link", "set", "lo", "up"])?;
            ip(&["-n", ns, "link", "set", dev, "up"])?;
        }
        // Static neighbours: no ARP or neighbour discovery, so the counters show the demo's
        // datagrams and little else.
        let gateway_mac = mac(&self.gateway_ns, &self.gateway_if)?;
        let client_mac = mac(&self.client_ns, &self.client_if)?;
        for (ns, dev, addrs, lladdr) in [
            (
                &self.client_ns,
                &self.client_if,
                &gateway_addrs[..],
                &gateway_mac,
            ),
            (
                &self.gateway_ns,
                &self.gateway_if,
                &client_addrs[..],
                &client_mac,
            ),
        ] {
            for addr in addrs {
                ip(&[
                    "-n",
                    ns,
                    "neigh",
                    "replace",
                    addr,
                    "lladdr",
                    lladdr,
                    "dev",
                    dev,
                    "nud",
                    "permanent",
                ])?;
            }
        }
        println!(
            "   {}: {} {GATEWAY_V4}/24 {GATEWAY_V6}/64",
            self.gateway_ns, self.gateway_if
        );
        println!(
            "   {}: {} {BLOCKED_HOST} {FLOODER} {FRIEND} (/24) {CLIENT_V6}/64",
            self.client_ns, self.client_if
        );
        Ok(())
    }

    fn start_gateway(&self) -> Result<()> {
        self.live().dir = Some(self.dir.clone());
        if self.dir.exists() {
            // Left by an earlier run whose pid we now have.
            fs::remove_dir_all(&self.dir)
                .with_context(|| format!("removing stale {}", self.dir.display()))?;
        }
        DirBuilder::new()
            .mode(0o700)
            .create(&self.dir)
            .with_context(|| format!("creating {}", self.dir.display()))?;
        let config = format!(
            "# Written by `cargo xtask demo`.\n\
             [xdp]\n\
             enabled = true\n\
             interface = {iface}\n\
             mode = \"auto\"\n\
             \n\
             [xdp.ratelimit]\n\
             pps = 0\n\
             burst = 0\n\
             \n\
             [state]\n\
             dir = {state}\n\
             \n\
             [admin]\n\
             socket = {socket}\n",
            iface = toml_string(&self.gateway_if),
            state = toml_string(&self.dir.join("state").to_string_lossy()),
            socket = toml_string(&self.socket().to_string_lossy()),
        );
        fs::write(self.config(), config)
            .with_context(|| format!("writing {}", self.config().display()))?;

        let log = File::create(self.log())
            .with_context(|| format!("creating {}", self.log().display()))?;
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.gateway_ns])
            .arg(&self.gateway_bin)
            .arg("run")
            .arg("--config")
            .arg(self.config())
            // The log goes to a file and is then shown indented: no colour codes.
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(log.try_clone().context("duplicating the log file handle")?)
            .stderr(log);
        println!("\n==> start: {}", describe(&cmd));
        // `ip netns exec` execs the command, so this child is the daemon itself.
        let child = cmd
            .spawn()
            .with_context(|| format!("could not start `{}`", describe(&cmd)))?;
        self.live().gateway = Some(child);
        self.wait_ready()?;
        println!("   daemon log so far ({}):", self.log().display());
        for line in fs::read_to_string(self.log()).unwrap_or_default().lines() {
            println!("   | {line}");
        }
        Ok(())
    }

    /// Waits until the daemon answers on its admin socket, or fails with its log.
    fn wait_ready(&self) -> Result<()> {
        let deadline = Instant::now() + STARTUP_TIMEOUT;
        let mut last_error = String::from("the admin socket does not exist yet");
        loop {
            if let Some(status) = self.gateway_exit()? {
                bail!(
                    "the gateway exited during startup ({status}){}",
                    self.log_tail()
                );
            }
            if self.socket().exists() {
                match output(&mut self.cli(&["stats"])) {
                    Ok(_) => return Ok(()),
                    Err(error) => last_error = format!("{error:#}"),
                }
            }
            if Instant::now() >= deadline {
                bail!(
                    "the gateway did not answer on {} within {} s: {last_error}{}",
                    self.socket().display(),
                    STARTUP_TIMEOUT.as_secs(),
                    self.log_tail()
                );
            }
            thread::sleep(Duration::from_millis(100));
        }
    }

    fn gateway_exit(&self) -> Result<Option<std::process::ExitStatus>> {
        match self.live().gateway.as_mut() {
            Some(child) => child.try_wait().context("checking on the gateway"),
            None => Ok(None),
        }
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

    /// The steps of the demo: a change, traffic, the counters.
    fn tour(&self) -> Result<()> {
        let v4 = |host: &str| format!("{host}:{PORT}");
        let gw4 = v4(GATEWAY_V4);
        let gw6 = format!("[{GATEWAY_V6}]:{PORT}");

        step(
            0,
            "the daemon has attached its XDP program; nothing is blocked or limited",
            "all counters near zero",
        );
        self.gateway(&["stats"])?;

        step(
            1,
            &format!("20 datagrams from {BLOCKED_HOST}"),
            "passed +20",
        );
        self.send(BLOCKED_HOST, &gw4, 20)?;
        self.gateway(&["stats"])?;

        step(
            2,
            &format!("block the host {BLOCKED_HOST}, then send the same 20"),
            "dropped_blocklist +20, passed unchanged",
        );
        self.gateway(&["block", "add", BLOCKED_HOST, "--reason", "demo"])?;
        self.send(BLOCKED_HOST, &gw4, 20)?;
        self.gateway(&["stats"])?;

        step(
            3,
            &format!("IPv6: block {CLIENT_V6}/128, then send 20 from it"),
            "dropped_blocklist +20",
        );
        self.gateway(&[
            "block",
            "add",
            &format!("{CLIENT_V6}/128"),
            "--reason",
            "demo",
        ])?;
        self.send(CLIENT_V6, &gw6, 20)?;
        self.gateway(&["stats"])?;

        step(
            4,
            &format!("block the range 198.18.0.4/30 (.4 to .7), then send 20 from {FRIEND}"),
            "dropped_blocklist +20",
        );
        self.gateway(&[
            "block",
            "add",
            "198.18.0.4/30",
            "--ttl",
            "10m",
            "--reason",
            "demo",
        ])?;
        self.send(FRIEND, &gw4, 20)?;
        self.gateway(&["stats"])?;

        step(
            5,
            &format!("allowlist {FRIEND}: the allowlist wins over the blocklist"),
            "allowlisted +20",
        );
        self.gateway(&["allow", "add", FRIEND])?;
        self.send(FRIEND, &gw4, 20)?;
        self.gateway(&["stats"])?;

        step(
            6,
            &format!("rate limit 10 packets/s per source, burst 5; 200 at once from {FLOODER}"),
            "passed about +5, dropped_ratelimit about +195",
        );
        self.gateway(&["ratelimit", "set", "--pps", "10", "--burst", "5"])?;
        self.gateway(&["ratelimit", "show"])?;
        self.send(FLOODER, &gw4, 200)?;
        self.gateway(&["stats"])?;

        step(
            7,
            &format!("200 at once from the allowlisted {FRIEND}"),
            "allowlisted +200: the allowlist bypasses the rate limit",
        );
        self.send(FRIEND, &gw4, 200)?;
        self.gateway(&["stats"])?;

        step(
            8,
            "what is blocked now",
            "the host, the IPv6 host and the range",
        );
        self.gateway(&["block", "list"])?;
        Ok(())
    }

    /// `gateway --socket SOCK ARGS`, with its command line and output shown.
    fn gateway(&self, args: &[&str]) -> Result<()> {
        println!("   $ gateway {}", args.join(" "));
        exec(&mut self.cli(args))
    }

    fn cli(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(&self.gateway_bin);
        cmd.arg("--socket").arg(self.socket()).args(args);
        cmd
    }

    fn send(&self, from: &str, to: &str, count: u32) -> Result<()> {
        exec(
            Command::new("ip")
                .args(["netns", "exec", &self.client_ns])
                .arg(&self.xtask_bin)
                .args(["demo-send", "--from", from, "--to", to, "--count"])
                .arg(count.to_string()),
        )
    }

    /// Stops the daemon, deletes the namespaces (and with them the veth pair and the XDP
    /// attachment) and the temporary directory. Safe to call more than once and from the
    /// Ctrl-C handler; it holds the lock throughout so two callers never interleave.
    fn cleanup(&self) {
        let mut live = self.live();
        if let Some(child) = live.gateway.take() {
            stop(child);
        }
        while let Some(ns) = live.netns.pop() {
            if Path::new("/run/netns").join(&ns).exists() {
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

/// Stops the daemon and says so.
fn stop(mut child: Child) {
    if let Some(status) = util::stop(&mut child, "the gateway", STOP_TIMEOUT) {
        println!("   gateway stopped ({status})");
    }
}

fn step(n: u32, what: &str, expect: &str) {
    println!("\n==> {n}. {what}\n   expect: {expect}");
}

fn ip(args: &[&str]) -> Result<()> {
    exec(Command::new("ip").args(args))
}

/// The MAC address of `dev` in `ns`, from `ip -j link show`.
fn mac(ns: &str, dev: &str) -> Result<String> {
    let json = output(Command::new("ip").args(["-n", ns, "-j", "link", "show", "dev", dev]))?;
    let links: serde_json::Value =
        serde_json::from_str(&json).context("parsing `ip -j link show`")?;
    links[0]["address"]
        .as_str()
        .map(str::to_owned)
        .with_context(|| format!("no MAC address for {dev} in {ns}"))
}
