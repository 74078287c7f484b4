//! `cargo xtask bench proxy`: what the reverse proxy costs, next to nginx and HAProxy in the
//! same run.
//!
//! ```text
//!                   direct:  ----------------------------------------->
//!   wrk --latency   gateway: --> 127.0.0.1:G  gateway run -----------> bench-upstream
//!   (load)          nginx:   --> 127.0.0.1:N  nginx, keep-alive ----->  127.0.0.1:U
//!                   haproxy: --> 127.0.0.1:H  haproxy, keep-alive --->
//! ```
//!
//! The upstream (`tests/src/bin/bench_upstream.rs`) answers every request 200 with 13 bytes on
//! one thread. nginx is the reference for the plain proxy (GET /): a reverse proxy with as many
//! workers as the gateway has runtime threads, bound each to its own CPU as the gateway binds
//! its workers (`worker_cpu_affinity auto`), and keep-alive connections to the upstream.
//! HAProxy is the reference for the secured routes (see `secured.rs`): the same POST with a
//! bearer token, verified with `jwt_verify`, on the plain route and on routes with HS256 and
//! RS256 tokens. Two more gateway cases report what a first-seen RS256 token costs (its token
//! cache off) and how fast bad tokens are refused.
//!
//! Method: after a short warm-up of each case, every round runs each case once for the same
//! time, in an order rotated from round to round, so that a slow phase of a noisy machine hits
//! all of them alike, and reversed every other round, so that each case follows each of its
//! neighbours (the gateway follows the upstream alone in one round, nginx in the next); the
//! table shows the median over the rounds. A target that compares two cases is judged on the
//! median of their ratios round by round (as `bench flood` does): the two runs of a round are
//! close in time, while the medians of two cases may come from rounds far apart, when the
//! machine ran at different speeds. Around every run the CPU time
//! (user + system, from `/proc/PID/stat`) of the proxy is read: the gateway's process, or
//! nginx's master and workers. The load generator, the proxy and the upstream share the
//! machine's cores, so requests per second say as much about the machine as about the proxy;
//! requests per proxy CPU-second compare the proxies. The gateway's peak RSS is its `VmHWM`.
//!
//! A response other than 2xx/3xx or a socket error fails its case: the bench still prints and
//! writes everything, then exits non-zero. A missed target is printed as FAIL and the exit
//! status stays 0, as with `bench xdp`.
//!
//! All traffic stays on 127.0.0.1. Every process the bench starts is stopped on every way out
//! (drop guards; Ctrl-C; `PR_SET_PDEATHSIG` should the xtask itself be killed), and its
//! temporary directory is removed.

use std::{
    collections::BTreeSet,
    fmt,
    fs::{self, DirBuilder, File},
    io::{self, ErrorKind, Read as _, Write as _},
    net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream},
    os::unix::{fs::DirBuilderExt as _, process::CommandExt as _},
    path::{Path, PathBuf},
    process::{self, Child, Command, Stdio},
    sync::atomic::{AtomicBool, Ordering},
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, ensure, Context as _, Result};
use clap::Args;
use serde_json::{json, Value};

use super::secured::{self, Request, Tokens};
use crate::{
    setup,
    util::{self, describe, exec, toml_string},
};

/// What the bench runs besides what `cargo xtask setup` installs. Installed here on demand
/// rather than by every setup: on a host with an init system Debian's nginx package starts a
/// default site on port 80.
pub const DEBIAN_PACKAGES: &[&str] = &["wrk", "nginx", "haproxy", "openssl"];

/// The upstream's answer to every request.
const BODY: &[u8] = b"hello, world\n";
/// Targets: the gateway's requests per proxy CPU-second at least nginx's...
const MIN_CPU_RATIO: f64 = 1.0;
/// ... its p99 latency at most this many times nginx's...
const MAX_P99_RATIO: f64 = 1.2;
/// ... and its peak RSS under this.
const MAX_RSS_BYTES: u64 = 64 << 20;
/// Share of the plain route's requests per proxy CPU-second a secured route keeps, with the
/// same token repeated.
const MIN_SECURED_SHARE: f64 = 0.85;
/// The gateway's secured route against HAProxy's, requests per proxy CPU-second.
const MIN_RS256_VS_HAPROXY: f64 = 1.5;
const MIN_HS256_VS_HAPROXY: f64 = 1.0;

/// As many nginx workers as the gateway has runtime threads (`gateway/src/daemon.rs`).
const NGINX_WORKERS: u32 = 2;
/// Idle keep-alive connections to the upstream that each nginx worker keeps.
const NGINX_UPSTREAM_KEEPALIVE: u32 = 64;

const STARTUP_TIMEOUT: Duration = Duration::from_secs(10);
const STOP_TIMEOUT: Duration = Duration::from_secs(5);
/// How much longer than its `-d` a wrk run may take before it is killed.
const WRK_GRACE: Duration = Duration::from_secs(15);
/// For the one request that checks each case before the load.
const CHECK_TIMEOUT: Duration = Duration::from_secs(5);
/// A run during which other processes took more than this share of a core is flagged as noisy.
const NOISE_SHARE: f64 = 0.1;
/// Lines of a process's log shown when it fails.
const LOG_TAIL_LINES: usize = 30;

/// Set by the Ctrl-C handler; checked between and during runs.
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

#[derive(Args, Debug)]
pub struct Options {
    /// Seconds of load per case and round.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..=300))]
    pub duration: u32,
    /// Connections wrk keeps open.
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub connections: u32,
    /// wrk threads (at most --connections).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=64))]
    pub threads: u32,
    /// Rounds; each runs every case once, in an order rotated per round and reversed every
    /// other round. Single runs on a
    /// 2-core machine swing by 10% and more: fewer than 5 make a coin toss of the targets.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..=100))]
    pub rounds: u32,
    /// Seconds of unmeasured load per case before the first round (0: none).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(0..=60))]
    pub warmup: u32,
    /// Where to write the results as JSON [default: target/bench/proxy.json].
    #[arg(long, value_name = "PATH")]
    pub out: Option<PathBuf>,
    /// Run this gateway binary instead of building target/release/gateway.
    #[arg(long, value_name = "PATH")]
    pub gateway_bin: Option<PathBuf>,
}

pub fn run(opts: Options) -> Result<()> {
    ensure!(
        opts.threads <= opts.connections,
        "--threads {} is more than --connections {}: wrk needs a connection per thread",
        opts.threads,
        opts.connections
    );
    setup::run()?;
    setup::debian_packages(DEBIAN_PACKAGES)?;
    let gateway_bin = match &opts.gateway_bin {
        Some(bin) => fs::canonicalize(bin).with_context(|| format!("finding {}", bin.display()))?,
        None => {
            util::build_gateway(true)?;
            util::gateway_release_bin()
        }
    };
    exec(util::cargo().args([
        "build",
        "--profile",
        util::TOOLS_PROFILE,
        "-p",
        "integration-tests",
        "--bin",
        "bench-upstream",
    ]))?;
    let upstream_bin = util::tools_bin("bench-upstream");
    let out = opts
        .out
        .clone()
        .unwrap_or_else(|| util::target_dir().join("bench").join("proxy.json"));

    ctrlc::set_handler(|| {
        eprintln!("\ninterrupted: stopping");
        INTERRUPTED.store(true, Ordering::SeqCst);
    })
    .context("installing the Ctrl-C handler")?;

    // Declared first, so dropped last: after every process that uses it has stopped.
    let dir = TempDir::create()?;
    let started = Instant::now();
    let load_at_start = fs::read_to_string("/proc/loadavg").unwrap_or_default();

    let upstream_addr = free_addr()?;
    let upstream = Proc::spawn(
        "bench-upstream",
        Command::new(&upstream_bin)
            .arg("--listen")
            .arg(upstream_addr.to_string()),
        dir.path().join("upstream.log"),
    )?;
    upstream.wait_listening(upstream_addr)?;

    let tokens = Tokens::make(dir.path()).context("making keys and tokens with openssl")?;
    let gateway_addr = free_addr()?;
    let gateway_config = dir.path().join("gateway.toml");
    write(
        &gateway_config,
        &gateway_config_text(
            &dir,
            gateway_addr,
            upstream_addr,
            &secured::gateway_routes(&tokens, dir.path())?,
        ),
    )?;
    let gateway = Proc::spawn(
        "the gateway",
        Command::new(&gateway_bin)
            .arg("run")
            .arg("--config")
            .arg(&gateway_config)
            .env("NO_COLOR", "1"),
        dir.path().join("gateway.log"),
    )?;
    gateway.wait_listening(gateway_addr)?;

    // The CPUs the references' workers are bound to, as the gateway binds its own.
    let cpus = reference_cpus();
    let nginx_addr = free_addr()?;
    let nginx_config = dir.path().join("nginx.conf");
    write(
        &nginx_config,
        &nginx_config_text(&dir, nginx_addr, upstream_addr, !cpus.is_empty()),
    )?;
    let nginx = Proc::spawn(
        "nginx",
        Command::new(nginx_bin())
            .arg("-c")
            .arg(&nginx_config)
            .arg("-p")
            .arg(dir.path())
            .args(["-e", "stderr", "-g", "daemon off; master_process on;"]),
        dir.path().join("nginx.log"),
    )?;
    nginx.wait_listening(nginx_addr)?;

    let haproxy_addr = free_addr()?;
    let haproxy_config = dir.path().join("haproxy.cfg");
    write(
        &haproxy_config,
        &secured::haproxy_config_text(haproxy_addr, upstream_addr, NGINX_WORKERS, &cpus, &tokens)?,
    )?;
    let haproxy = Proc::spawn(
        "haproxy",
        Command::new("haproxy")
            .arg("-db")
            .arg("-f")
            .arg(&haproxy_config),
        dir.path().join("haproxy.log"),
    )?;
    haproxy.wait_listening(haproxy_addr)?;

    let targets = Case::ALL
        .iter()
        .map(|&case| {
            let (addr, proxy) = match case.proxy() {
                Proxy::None => (upstream_addr, None),
                Proxy::Gateway => (gateway_addr, Some(&gateway)),
                Proxy::Nginx => (nginx_addr, Some(&nginx)),
                Proxy::Haproxy => (haproxy_addr, Some(&haproxy)),
            };
            Ok(Target {
                case,
                addr,
                proxy,
                script: case.request().wrk_script(&tokens, dir.path())?,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    for target in &targets {
        check_answer(target.addr, target.case.request(), &tokens)
            .with_context(|| format!("checking {}", target.case))?;
    }
    eprintln!(
        "upstream {upstream_addr}, gateway {gateway_addr}, nginx {nginx_addr}, haproxy \
         {haproxy_addr}: each answers as expected"
    );

    let wrk = Wrk {
        threads: opts.threads,
        connections: opts.connections,
        output: dir.path().join("wrk.out"),
    };
    if opts.warmup > 0 {
        for target in &targets {
            let (load, _) = wrk.run(target.addr, target.script.as_deref(), opts.warmup)?;
            if target.case.errors(&load) > 0 {
                eprintln!(
                    "warning: warm-up of {}: {}",
                    target.case,
                    load.describe_errors()
                );
            }
        }
    }

    let mut runs: Vec<Run> = Vec::new();
    for round in 0..opts.rounds {
        for position in 0..targets.len() {
            let target = &targets[run_order(round as usize, position, targets.len())];
            let run = target.measure(&wrk, &upstream, opts.duration)?;
            eprintln!(
                "round {}/{} {:<8} {}",
                round + 1,
                opts.rounds,
                target.case.to_string(),
                run.summary()
            );
            runs.push(Run {
                round: round + 1,
                position: position + 1,
                ..run
            });
        }
    }
    let gateway_rss = peak_rss(gateway.pid()).context("reading the gateway's peak RSS")?;
    let nginx_rss = nginx_peak_rss(&nginx)?;
    gateway.check_running()?;
    nginx.check_running()?;
    haproxy.check_running()?;
    upstream.check_running()?;

    let results = Results::new(&runs, gateway_rss, nginx_rss);
    results.print(&opts);
    let json = results.json(&opts, &cpus, &load_at_start, started.elapsed());
    if let Some(parent) = out.parent().filter(|p| !p.as_os_str().is_empty()) {
        fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    }
    let mut text = serde_json::to_string_pretty(&json)?;
    text.push('\n');
    write(&out, &text)?;
    println!("results: {}", out.display());

    let failed: Vec<String> = Case::ALL
        .iter()
        .filter_map(|case| {
            let errors: u64 = results.runs_of(*case).map(Run::errors).sum();
            (errors > 0).then(|| format!("{case} ({errors} errors)"))
        })
        .collect();
    if !failed.is_empty() {
        bail!(
            "cases with failed requests: {} (see the table and {})",
            failed.join(", "),
            out.display()
        );
    }
    Ok(())
}

/// One of the things measured.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Case {
    /// wrk against the upstream itself.
    Direct,
    Gateway,
    Nginx,
    /// The secured cases' baseline: their POST on a route without security.
    GatewayPost,
    GatewayHs256,
    GatewayRs256,
    /// RS256 with the token cache off: what a first-seen token costs.
    GatewayRs256Uncached,
    /// RS256 with a broken signature: the cost of refusing.
    GatewayBadToken,
    HaproxyPost,
    HaproxyHs256,
    HaproxyRs256,
}

/// Which process a case goes through.
enum Proxy {
    None,
    Gateway,
    Nginx,
    Haproxy,
}

impl Case {
    const ALL: [Case; 11] = [
        Case::Direct,
        Case::Gateway,
        Case::Nginx,
        Case::GatewayPost,
        Case::GatewayHs256,
        Case::GatewayRs256,
        Case::GatewayRs256Uncached,
        Case::GatewayBadToken,
        Case::HaproxyPost,
        Case::HaproxyHs256,
        Case::HaproxyRs256,
    ];

    fn name(self) -> &'static str {
        match self {
            Case::Direct => "direct",
            Case::Gateway => "gateway",
            Case::Nginx => "nginx",
            Case::GatewayPost => "gateway-post",
            Case::GatewayHs256 => "gateway-hs256",
            Case::GatewayRs256 => "gateway-rs256",
            Case::GatewayRs256Uncached => "gateway-rs256-uncached",
            Case::GatewayBadToken => "gateway-bad-token",
            Case::HaproxyPost => "haproxy-post",
            Case::HaproxyHs256 => "haproxy-hs256",
            Case::HaproxyRs256 => "haproxy-rs256",
        }
    }

    fn proxy(self) -> Proxy {
        match self {
            Case::Direct => Proxy::None,
            Case::Nginx => Proxy::Nginx,
            Case::HaproxyPost | Case::HaproxyHs256 | Case::HaproxyRs256 => Proxy::Haproxy,
            _ => Proxy::Gateway,
        }
    }

    fn request(self) -> Request {
        match self {
            Case::Direct | Case::Gateway | Case::Nginx => Request::Get,
            Case::GatewayPost | Case::HaproxyPost => Request::PostPlain,
            Case::GatewayHs256 | Case::HaproxyHs256 => Request::PostHs256,
            Case::GatewayRs256 | Case::HaproxyRs256 => Request::PostRs256,
            Case::GatewayRs256Uncached => Request::PostRs256Uncached,
            Case::GatewayBadToken => Request::PostBadToken,
        }
    }

    /// Failed requests: socket errors, and answers other than the case expects (2xx/3xx, or
    /// for the bad token, a refusal).
    fn errors(self, load: &Load) -> u64 {
        let socket: u64 = load.socket_errors.iter().sum();
        if self.request().expected_status() >= 400 {
            socket + load.requests.saturating_sub(load.non_2xx_3xx)
        } else {
            socket + load.non_2xx_3xx
        }
    }
}

impl fmt::Display for Case {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A case's address and, behind a proxy, the proxy's process.
struct Target<'a> {
    case: Case,
    addr: SocketAddr,
    proxy: Option<&'a Proc>,
    /// The wrk script that sends the case's request; `None`: GET /.
    script: Option<PathBuf>,
}

impl Target<'_> {
    /// One run of wrk against the case, with the CPU time of its proxy and of the upstream.
    fn measure(&self, wrk: &Wrk, upstream: &Proc, seconds: u32) -> Result<Run> {
        let what = || format!("measuring {}", self.case);
        let proxy_before = self.proxy.map(Proc::cpu).transpose().with_context(what)?;
        let upstream_before = upstream.cpu().with_context(what)?;
        let machine_before = machine_busy_ticks().with_context(what)?;
        let (load, wrk_cpu_s) = wrk
            .run(self.addr, self.script.as_deref(), seconds)
            .with_context(what)?;
        let machine_after = machine_busy_ticks().with_context(what)?;
        let upstream_after = upstream.cpu().with_context(what)?;
        let proxy_cpu_s = match (self.proxy, proxy_before) {
            (Some(proxy), Some(before)) => {
                proxy.check_running()?;
                Some(proxy.cpu().with_context(what)?.seconds_since(&before)?)
            }
            _ => None,
        };
        let upstream_cpu_s = upstream_after.seconds_since(&upstream_before)?;
        let machine_cpu_s = (machine_after - machine_before) as f64 / clock_ticks_per_s();
        Ok(Run {
            case: self.case,
            round: 0,
            position: 0,
            load,
            proxy_cpu_s,
            upstream_cpu_s,
            wrk_cpu_s,
            other_cpu_s: (machine_cpu_s - wrk_cpu_s - upstream_cpu_s - proxy_cpu_s.unwrap_or(0.0))
                .max(0.0),
        })
    }
}

/// One wrk run of one case.
struct Run {
    case: Case,
    /// 1-based.
    round: u32,
    /// Where in its round the case ran, 1-based.
    position: usize,
    load: Load,
    /// `None` for the direct case.
    proxy_cpu_s: Option<f64>,
    upstream_cpu_s: f64,
    wrk_cpu_s: f64,
    /// The CPU time the whole machine spent during the run beyond wrk, the proxy and the
    /// upstream: other processes, interrupts. Noise, when it is more than a little.
    other_cpu_s: f64,
}

impl Run {
    fn errors(&self) -> u64 {
        self.case.errors(&self.load)
    }

    fn requests_per_proxy_cpu_s(&self) -> Option<f64> {
        self.proxy_cpu_s
            .filter(|cpu| *cpu > 0.0)
            .map(|cpu| self.load.requests as f64 / cpu)
    }

    fn summary(&self) -> String {
        let mut line = format!(
            "{:>9.0} req/s  p50 {:>9}  p99 {:>9}",
            self.load.requests_per_s,
            latency(self.load.p50_us),
            latency(self.load.p99_us)
        );
        if let (Some(cpu), Some(per_cpu)) = (self.proxy_cpu_s, self.requests_per_proxy_cpu_s()) {
            line += &format!("  proxy CPU {cpu:.2} s  {per_cpu:.0} req/CPU-s");
        }
        if self.is_noisy() {
            line += &format!("  (busy machine: {:.2} CPU-s elsewhere)", self.other_cpu_s);
        }
        if self.errors() > 0 {
            line += &format!("  ERRORS: {}", self.load.describe_errors());
        }
        line
    }

    /// Whether something else took more than [`NOISE_SHARE`] of a core during the run.
    fn is_noisy(&self) -> bool {
        self.other_cpu_s > NOISE_SHARE * self.load.seconds
    }

    fn json(&self) -> Value {
        json!({
            "round": self.round,
            "position": self.position,
            "requests": self.load.requests,
            "seconds": self.load.seconds,
            "requests_per_s": round1(self.load.requests_per_s),
            "p50_us": self.load.p50_us,
            "p99_us": self.load.p99_us,
            "proxy_cpu_s": self.proxy_cpu_s,
            "requests_per_proxy_cpu_s": self.requests_per_proxy_cpu_s().map(round1),
            "upstream_cpu_s": self.upstream_cpu_s,
            "wrk_cpu_s": round3(self.wrk_cpu_s),
            "other_cpu_s": round3(self.other_cpu_s),
            "non_2xx_3xx": self.load.non_2xx_3xx,
            "socket_errors": {
                "connect": self.load.socket_errors[0],
                "read": self.load.socket_errors[1],
                "write": self.load.socket_errors[2],
                "timeout": self.load.socket_errors[3],
            },
        })
    }
}

/// The medians of one case over its rounds.
struct Medians {
    requests_per_s: f64,
    p50_us: f64,
    p99_us: f64,
    proxy_cpu_s: Option<f64>,
    requests_per_proxy_cpu_s: Option<f64>,
    upstream_cpu_s: f64,
    wrk_cpu_s: f64,
    other_cpu_s: f64,
    errors: u64,
}

impl Medians {
    fn of<'a>(runs: impl Iterator<Item = &'a Run> + Clone) -> Medians {
        let of = |f: fn(&Run) -> f64| median(&runs.clone().map(f).collect::<Vec<_>>());
        let of_some = |f: fn(&Run) -> Option<f64>| {
            let values: Option<Vec<f64>> = runs.clone().map(f).collect();
            values.filter(|v| !v.is_empty()).map(|v| median(&v))
        };
        Medians {
            requests_per_s: of(|r| r.load.requests_per_s),
            p50_us: of(|r| r.load.p50_us),
            p99_us: of(|r| r.load.p99_us),
            proxy_cpu_s: of_some(|r| r.proxy_cpu_s),
            requests_per_proxy_cpu_s: of_some(Run::requests_per_proxy_cpu_s),
            upstream_cpu_s: of(|r| r.upstream_cpu_s),
            wrk_cpu_s: of(|r| r.wrk_cpu_s),
            other_cpu_s: of(|r| r.other_cpu_s),
            errors: runs.clone().map(Run::errors).sum(),
        }
    }

    fn json(&self) -> Value {
        json!({
            "requests_per_s": round1(self.requests_per_s),
            "p50_us": round1(self.p50_us),
            "p99_us": round1(self.p99_us),
            "proxy_cpu_s": self.proxy_cpu_s.map(round3),
            "requests_per_proxy_cpu_s": self.requests_per_proxy_cpu_s.map(round1),
            "upstream_cpu_s": round3(self.upstream_cpu_s),
            "wrk_cpu_s": round3(self.wrk_cpu_s),
            "other_cpu_s": round3(self.other_cpu_s),
            "errors": self.errors,
        })
    }
}

/// One target of the issue, judged.
struct Check {
    name: &'static str,
    /// The figure in words, e.g. `48000 req/CPU-s vs nginx's 46000`.
    detail: String,
    value: Option<f64>,
    limit: String,
    met: bool,
}

struct Results<'a> {
    runs: &'a [Run],
    medians: Vec<(Case, Medians)>,
    gateway_rss: u64,
    /// nginx's master and workers together, for comparison.
    nginx_rss: u64,
    checks: Vec<Check>,
    /// Figures reported without a target: name, value, detail.
    reported: Vec<(&'static str, Option<f64>, String)>,
}

impl<'a> Results<'a> {
    fn new(runs: &'a [Run], gateway_rss: u64, nginx_rss: u64) -> Results<'a> {
        let medians: Vec<(Case, Medians)> = Case::ALL
            .iter()
            .map(|case| (*case, Medians::of(runs.iter().filter(|r| r.case == *case))))
            .collect();
        let get = |case: Case| {
            &medians
                .iter()
                .find(|(c, _)| *c == case)
                .expect("all cases")
                .1
        };
        let per_cpu = |case: Case| get(case).requests_per_proxy_cpu_s;
        let versus = |a: Case, b: Case| {
            format!("{} vs {}", optional(per_cpu(a), 0), optional(per_cpu(b), 0))
        };
        // `a` against `b` on `figure`, round by round: the median ratio, and the detail.
        let paired = |a: Case, b: Case, figure: fn(&Run) -> Option<f64>, medians: String| {
            let ratios = round_ratios(runs, a, b, figure);
            let value = (!ratios.is_empty()).then(|| median(&ratios));
            let (low, high) = ratios
                .iter()
                .fold((f64::INFINITY, f64::NEG_INFINITY), |(l, h), r| {
                    (l.min(*r), h.max(*r))
                });
            let detail = match value {
                Some(_) => format!("rounds {low:.2} to {high:.2}; medians {medians}"),
                None => format!("medians {medians}"),
            };
            (value, detail)
        };
        // Requests per proxy CPU-second, `a` over `b`.
        let cpu_ratio =
            |a: Case, b: Case| paired(a, b, Run::requests_per_proxy_cpu_s, versus(a, b));
        let at_least = |name: &'static str, a: Case, b: Case, min: f64| {
            let (value, detail) = cpu_ratio(a, b);
            Check {
                name,
                detail,
                value,
                limit: format!(">= {min:.2}"),
                met: value.is_some_and(|r| r >= min),
            }
        };
        let (gateway, nginx) = (get(Case::Gateway), get(Case::Nginx));
        let (p99_ratio, p99_detail) = paired(
            Case::Gateway,
            Case::Nginx,
            |r| Some(r.load.p99_us),
            format!("{} vs {}", latency(gateway.p99_us), latency(nginx.p99_us)),
        );
        let mib = |bytes: u64| bytes as f64 / f64::from(1 << 20);
        let checks = vec![
            at_least(
                "requests per proxy CPU-second, gateway / nginx",
                Case::Gateway,
                Case::Nginx,
                MIN_CPU_RATIO,
            ),
            Check {
                name: "p99 latency, gateway / nginx",
                detail: p99_detail,
                value: p99_ratio,
                limit: format!("<= {MAX_P99_RATIO:.2}"),
                met: p99_ratio.is_some_and(|r| r <= MAX_P99_RATIO),
            },
            Check {
                name: "gateway peak RSS (VmHWM), MiB",
                detail: format!(
                    "nginx's master and workers together: {:.1} MiB",
                    mib(nginx_rss)
                ),
                value: Some(mib(gateway_rss)),
                limit: format!("< {}", MAX_RSS_BYTES >> 20),
                met: gateway_rss < MAX_RSS_BYTES,
            },
            at_least(
                "secured RS256 route / plain route, gateway, same token",
                Case::GatewayRs256,
                Case::GatewayPost,
                MIN_SECURED_SHARE,
            ),
            at_least(
                "secured HS256 route / plain route, gateway, same token",
                Case::GatewayHs256,
                Case::GatewayPost,
                MIN_SECURED_SHARE,
            ),
            at_least(
                "RS256 secured requests per proxy CPU-second, gateway / haproxy",
                Case::GatewayRs256,
                Case::HaproxyRs256,
                MIN_RS256_VS_HAPROXY,
            ),
            at_least(
                "HS256 secured requests per proxy CPU-second, gateway / haproxy",
                Case::GatewayHs256,
                Case::HaproxyHs256,
                MIN_HS256_VS_HAPROXY,
            ),
        ];
        let us = |case: Case| per_cpu(case).map(|r| 1e6 / r);
        let share = |name: &'static str, a: Case, b: Case| {
            let (value, detail) = cpu_ratio(a, b);
            (name, value, detail)
        };
        let reported = vec![
            (
                "first-seen RS256 token: proxy CPU per request, us",
                us(Case::GatewayRs256Uncached),
                format!(
                    "token cache off; with the same token cached: {} us",
                    optional(us(Case::GatewayRs256), 1)
                ),
            ),
            (
                "bad tokens refused per proxy CPU-second",
                per_cpu(Case::GatewayBadToken),
                "RS256, broken signature, answered 401".to_string(),
            ),
            share(
                "haproxy: HS256 share of its plain requests per CPU-second",
                Case::HaproxyHs256,
                Case::HaproxyPost,
            ),
            share(
                "haproxy: RS256 share of its plain requests per CPU-second",
                Case::HaproxyRs256,
                Case::HaproxyPost,
            ),
        ];
        Results {
            runs,
            medians,
            gateway_rss,
            nginx_rss,
            checks,
            reported,
        }
    }

    fn runs_of(&self, case: Case) -> impl Iterator<Item = &Run> + Clone {
        self.runs.iter().filter(move |r| r.case == case)
    }

    fn print(&self, opts: &Options) {
        println!(
            "\nmedian of {} round(s) of {} s each; wrk -t{} -c{}; nginx with {NGINX_WORKERS} workers",
            opts.rounds, opts.duration, opts.threads, opts.connections
        );
        println!(
            "{:<22} {:>9} {:>10} {:>10} {:>12} {:>16} {:>7}",
            "case", "req/s", "p50", "p99", "proxy CPU s", "req/proxy CPU-s", "errors"
        );
        for (case, m) in &self.medians {
            println!(
                "{:<22} {:>9.0} {:>10} {:>10} {:>12} {:>16} {:>7}",
                case.name(),
                m.requests_per_s,
                latency(m.p50_us),
                latency(m.p99_us),
                optional(m.proxy_cpu_s, 2),
                optional(m.requests_per_proxy_cpu_s, 0),
                m.errors
            );
        }
        let noisy = self.runs.iter().filter(|r| r.is_noisy()).count();
        if noisy > 0 {
            println!(
                "note: during {noisy} of {} runs other processes took more than {:.0}% of a \
                 core; the figures are noisier than usual",
                self.runs.len(),
                NOISE_SHARE * 100.0
            );
        }
        println!("\nreported:");
        for (name, value, detail) in &self.reported {
            println!("  {name}: {} ({detail})", optional(*value, 2));
        }
        println!("\ntargets:");
        for check in &self.checks {
            println!(
                "  {}  {}: {} ({}; target {})",
                if check.met { "PASS" } else { "FAIL" },
                check.name,
                optional(check.value, 2),
                check.detail,
                check.limit
            );
        }
        if self.checks.iter().all(|c| c.met) {
            println!("all targets met");
        } else {
            let missed: Vec<&str> = self
                .checks
                .iter()
                .filter(|c| !c.met)
                .map(|c| c.name)
                .collect();
            println!("MISSED: {}", missed.join("; "));
        }
    }

    /// `cpus`: those the references' workers were bound to.
    fn json(&self, opts: &Options, cpus: &[usize], load_at_start: &str, took: Duration) -> Value {
        let cases: serde_json::Map<String, Value> = self
            .medians
            .iter()
            .map(|(case, m)| {
                let rounds: Vec<Value> = self.runs_of(*case).map(Run::json).collect();
                (
                    case.name().to_string(),
                    json!({ "median": m.json(), "rounds": rounds }),
                )
            })
            .collect();
        let checks: Vec<Value> = self
            .checks
            .iter()
            .map(|c| {
                json!({
                    "name": c.name,
                    "value": c.value.map(round3),
                    "target": c.limit,
                    "detail": c.detail,
                    "met": c.met,
                })
            })
            .collect();
        json!({
            "bench": "proxy",
            "statistic": "median over rounds; a target comparing two cases: the median of \
                          their ratios round by round; requests per proxy CPU-second = \
                          requests wrk completed / (user + system CPU seconds of the proxy's \
                          processes)",
            "parameters": {
                "duration_s": opts.duration,
                "rounds": opts.rounds,
                "warmup_s": opts.warmup,
                "connections": opts.connections,
                "threads": opts.threads,
                "order": Case::ALL.iter().map(|c| c.name()).collect::<Vec<_>>().join(", ")
                    + ", rotated by one each round and reversed every other round",
                "secured_request": format!(
                    "POST with a {}-byte JSON body and a bearer token",
                    secured::POST_BODY.len()
                ),
                "haproxy": {
                    "version": package_version("haproxy"),
                    "threads": NGINX_WORKERS,
                    "cpus": cpus,
                },
                "load_generator": format!("wrk {}", package_version("wrk")),
                "response_body_bytes": BODY.len(),
                "upstream": "bench-upstream: hyper HTTP/1.1, keep-alive, one thread",
                "nginx": {
                    "version": package_version("nginx"),
                    "workers": NGINX_WORKERS,
                    "worker_cpus": cpus,
                    "upstream_keepalive": NGINX_UPSTREAM_KEEPALIVE,
                },
            },
            "machine": {
                "cpus": thread::available_parallelism().map(|n| n.get()).ok(),
                "kernel": fs::read_to_string("/proc/sys/kernel/osrelease")
                    .map(|s| s.trim().to_string())
                    .ok(),
                "loadavg_at_start": load_at_start.trim(),
            },
            "cases": cases,
            "reported": self
                .reported
                .iter()
                .map(|(name, value, detail)| json!({
                    "name": name,
                    "value": value.map(round3),
                    "detail": detail,
                }))
                .collect::<Vec<_>>(),
            "gateway_peak_rss_bytes": self.gateway_rss,
            "nginx_peak_rss_bytes": self.nginx_rss,
            "targets": {
                "checks": checks,
                "all_met": self.checks.iter().all(|c| c.met),
            },
            "seconds": round1(took.as_secs_f64()),
        })
    }
}

/// What one wrk run reported.
#[derive(Debug, PartialEq)]
struct Load {
    requests: u64,
    seconds: f64,
    requests_per_s: f64,
    p50_us: f64,
    p99_us: f64,
    non_2xx_3xx: u64,
    /// connect, read, write, timeout.
    socket_errors: [u64; 4],
}

impl Load {
    fn describe_errors(&self) -> String {
        let [connect, read, write, timeout] = self.socket_errors;
        format!(
            "{} responses not 2xx/3xx; socket errors: connect {connect}, read {read}, write \
             {write}, timeout {timeout}",
            self.non_2xx_3xx
        )
    }
}

/// How wrk is run.
struct Wrk {
    threads: u32,
    connections: u32,
    /// Where each run's output goes (overwritten).
    output: PathBuf,
}

impl Wrk {
    /// Runs wrk for `seconds`; returns its report and the CPU seconds wrk itself used.
    fn run(&self, addr: SocketAddr, script: Option<&Path>, seconds: u32) -> Result<(Load, f64)> {
        check_interrupted()?;
        let out = File::create(&self.output)
            .with_context(|| format!("creating {}", self.output.display()))?;
        let mut cmd = Command::new("wrk");
        cmd.arg("--latency")
            .arg(format!("-t{}", self.threads))
            .arg(format!("-c{}", self.connections))
            .arg(format!("-d{seconds}s"));
        if let Some(script) = script {
            cmd.arg("-s").arg(script);
        }
        cmd.arg(format!("http://{addr}/"))
            .stdin(Stdio::null())
            .stdout(out.try_clone().context("duplicating a file handle")?)
            .stderr(out);
        die_with_parent(&mut cmd);
        let line = describe(&cmd);
        // wrk is the only child reaped while it runs, so it is all that these grow by.
        let children_before = children_cpu_s();
        let mut child = ChildGuard(
            cmd.spawn()
                .with_context(|| format!("could not start `{line}`"))?,
        );
        let deadline = Instant::now() + Duration::from_secs(seconds.into()) + WRK_GRACE;
        let status = loop {
            if let Some(status) = child.0.try_wait().context("waiting for wrk")? {
                break status;
            }
            check_interrupted()?;
            ensure!(
                Instant::now() < deadline,
                "`{line}` still ran {} s after its duration; killed it",
                WRK_GRACE.as_secs()
            );
            thread::sleep(Duration::from_millis(20));
        };
        let wrk_cpu_s = children_cpu_s() - children_before;
        let text = fs::read_to_string(&self.output)
            .with_context(|| format!("reading {}", self.output.display()))?;
        ensure!(
            status.success(),
            "`{line}` failed ({status}):\n{}",
            text.trim_end()
        );
        let load =
            parse_wrk(&text).with_context(|| format!("parsing the output of `{line}`:\n{text}"))?;
        Ok((load, wrk_cpu_s))
    }
}

/// Kills and reaps a short-lived child (wrk) on every way out.
struct ChildGuard(Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// Reads wrk's report (with `--latency`):
///
/// ```text
///   Latency Distribution
///      50%  331.00us
///      ...
///      99%    1.21ms
///   455133 requests in 5.00s, 41.24MB read
///   Non-2xx or 3xx responses: 12
///   Socket errors: connect 0, read 3, write 0, timeout 0
/// Requests/sec:  91010.12
/// ```
///
/// The last two lines before `Requests/sec` appear only when their counts are not zero.
fn parse_wrk(text: &str) -> Result<Load> {
    let mut requests = None;
    let mut seconds = None;
    let mut requests_per_s = None;
    let mut p50_us = None;
    let mut p99_us = None;
    let mut non_2xx_3xx = 0;
    let mut socket_errors = [0; 4];
    for line in text.lines().map(str::trim) {
        if let Some(value) = line.strip_prefix("50%") {
            p50_us = Some(parse_duration_us(value.trim())?);
        } else if let Some(value) = line.strip_prefix("99%") {
            p99_us = Some(parse_duration_us(value.trim())?);
        } else if let Some((count, rest)) = line.split_once(" requests in ") {
            requests = Some(count.trim().parse::<u64>().context("request count")?);
            let took = rest.split(',').next().unwrap_or_default().trim();
            seconds = Some(parse_duration_us(took)? / 1e6);
        } else if let Some(value) = line.strip_prefix("Requests/sec:") {
            requests_per_s = Some(value.trim().parse::<f64>().context("Requests/sec")?);
        } else if let Some(value) = line.strip_prefix("Non-2xx or 3xx responses:") {
            non_2xx_3xx = value.trim().parse().context("Non-2xx or 3xx responses")?;
        } else if let Some(value) = line.strip_prefix("Socket errors:") {
            for part in value.split(',') {
                let (name, count) = part
                    .trim()
                    .split_once(' ')
                    .with_context(|| format!("socket errors: {part:?}"))?;
                let slot = match name {
                    "connect" => 0,
                    "read" => 1,
                    "write" => 2,
                    "timeout" => 3,
                    _ => bail!("unknown kind of socket error {name:?}"),
                };
                socket_errors[slot] = count.trim().parse().context("socket error count")?;
            }
        }
    }
    Ok(Load {
        requests: requests.context("no `N requests in` line")?,
        seconds: seconds.context("no run time")?,
        requests_per_s: requests_per_s.context("no `Requests/sec:` line")?,
        p50_us: p50_us.context("no 50% latency")?,
        p99_us: p99_us.context("no 99% latency")?,
        non_2xx_3xx,
        socket_errors,
    })
}

/// A wrk duration (`331.00us`, `1.21ms`, `2.00s`, `1.50m`, `1.00h`) in microseconds.
fn parse_duration_us(text: &str) -> Result<f64> {
    const UNITS: [(&str, f64); 5] = [
        ("us", 1.0),
        ("ms", 1e3),
        ("s", 1e6),
        ("m", 60e6),
        ("h", 3600e6),
    ];
    let (number, scale) = UNITS
        .iter()
        .find_map(|(unit, scale)| text.strip_suffix(unit).map(|n| (n, *scale)))
        .with_context(|| format!("no unit in the duration {text:?}"))?;
    let number: f64 = number
        .parse()
        .with_context(|| format!("the duration {text:?}"))?;
    Ok(number * scale)
}

/// A process the bench started: stopped on drop (SIGTERM, then SIGKILL), and with it any child
/// process of its own that outlives it (nginx's workers).
struct Proc {
    name: &'static str,
    child: Child,
    log: PathBuf,
}

impl Proc {
    /// Starts `cmd` with its standard output and error going to `log`.
    fn spawn(name: &'static str, cmd: &mut Command, log: PathBuf) -> Result<Proc> {
        check_interrupted()?;
        let file = File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        cmd.stdin(Stdio::null())
            .stdout(file.try_clone().context("duplicating a file handle")?)
            .stderr(file);
        die_with_parent(cmd);
        let child = cmd
            .spawn()
            .with_context(|| format!("could not start {name}: `{}`", describe(cmd)))?;
        Ok(Proc { name, child, log })
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits until `addr` accepts connections; fails if the process exits first or it takes
    /// longer than [`STARTUP_TIMEOUT`].
    fn wait_listening(&self, addr: SocketAddr) -> Result<()> {
        let deadline = Instant::now() + STARTUP_TIMEOUT;
        loop {
            check_interrupted()?;
            self.check_running()?;
            if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                return Ok(());
            }
            ensure!(
                Instant::now() < deadline,
                "{} did not accept connections on {addr} within {} s{}",
                self.name,
                STARTUP_TIMEOUT.as_secs(),
                self.log_tail()
            );
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// Fails with the end of its log when the process has exited.
    fn check_running(&self) -> Result<()> {
        // Not `try_wait`, which needs `&mut` and would reap it: a zombie's state is Z.
        let state = Stat::read(self.pid()).map(|s| s.state);
        if matches!(state, Ok('Z' | 'X')) || state.is_err() {
            bail!("{} exited unexpectedly{}", self.name, self.log_tail());
        }
        Ok(())
    }

    /// The CPU time of the process (all its threads) and of its children (nginx's workers).
    fn cpu(&self) -> Result<CpuSample> {
        let mut processes = BTreeSet::new();
        let mut ticks = 0;
        for (pid, stat) in
            std::iter::once((self.pid(), Stat::read(self.pid())?)).chain(children(self.pid())?)
        {
            ticks += stat.ticks;
            processes.insert((pid, stat.start));
        }
        Ok(CpuSample {
            what: self.name,
            processes,
            ticks,
        })
    }

    fn log_tail(&self) -> String {
        let log = fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        let tail = &lines[lines.len().saturating_sub(LOG_TAIL_LINES)..];
        format!(
            "\n--- {} output (last {} lines of {}) ---\n{}",
            self.name,
            tail.len(),
            self.log.display(),
            tail.join("\n")
        )
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let children = children(self.pid()).unwrap_or_default();
        util::stop(&mut self.child, self.name, STOP_TIMEOUT);
        // Whatever outlived its parent (only after a SIGKILL): the same pid and start time is
        // the same process.
        for (pid, stat) in children {
            if Stat::read(pid).is_ok_and(|now| now.start == stat.start) {
                // SAFETY: kill has no memory-safety preconditions.
                unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
            }
        }
    }
}

/// CPU ticks used so far by a set of processes.
struct CpuSample {
    what: &'static str,
    /// (pid, start time): which processes were counted.
    processes: BTreeSet<(u32, u64)>,
    ticks: u64,
}

impl CpuSample {
    /// The CPU seconds from `before` to `self`, over the same processes.
    fn seconds_since(&self, before: &CpuSample) -> Result<f64> {
        ensure!(
            self.processes == before.processes,
            "the processes of {} changed during the run (one died or was replaced): {:?} -> {:?}",
            self.what,
            before.processes,
            self.processes
        );
        Ok((self.ticks - before.ticks) as f64 / clock_ticks_per_s())
    }
}

/// What the bench reads from `/proc/PID/stat`.
struct Stat {
    state: char,
    ppid: u32,
    /// utime + stime, in clock ticks.
    ticks: u64,
    /// Start time after boot, in clock ticks: with the pid, names a process.
    start: u64,
}

impl Stat {
    fn read(pid: u32) -> Result<Stat> {
        let path = format!("/proc/{pid}/stat");
        let text = fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
        Stat::parse(&text).with_context(|| format!("parsing {path}: {text:?}"))
    }

    /// Fields after the command name, which is in parentheses and may hold anything.
    fn parse(text: &str) -> Result<Stat> {
        let (_, rest) = text.rsplit_once(')').context("no `)`")?;
        let fields: Vec<&str> = rest.split_whitespace().collect();
        // Numbered as in proc(5), from 3 (state) on.
        let field = |n: usize| -> Result<u64> {
            let text = fields.get(n - 3).with_context(|| format!("no field {n}"))?;
            text.parse().with_context(|| format!("field {n}: {text:?}"))
        };
        Ok(Stat {
            state: fields
                .first()
                .and_then(|s| s.chars().next())
                .context("no state")?,
            ppid: u32::try_from(field(4)?).context("ppid")?,
            ticks: field(14)? + field(15)?,
            start: field(22)?,
        })
    }
}

/// The processes whose parent is `pid`.
fn children(pid: u32) -> Result<Vec<(u32, Stat)>> {
    let mut found = Vec::new();
    for entry in fs::read_dir("/proc").context("reading /proc")? {
        let Ok(entry) = entry else { continue };
        let Some(child) = entry.file_name().to_str().and_then(|n| n.parse().ok()) else {
            continue;
        };
        // Processes come and go while we look; one that went is no child of ours.
        if let Ok(stat) = Stat::read(child) {
            if stat.ppid == pid {
                found.push((child, stat));
            }
        }
    }
    Ok(found)
}

/// The CPU ticks the whole machine has spent busy since boot (the `cpu` line of /proc/stat:
/// everything but idle and iowait).
fn machine_busy_ticks() -> Result<u64> {
    let text = fs::read_to_string("/proc/stat").context("reading /proc/stat")?;
    let line = text
        .lines()
        .find_map(|l| l.strip_prefix("cpu "))
        .context("no `cpu` line in /proc/stat")?;
    let fields: Vec<u64> = line
        .split_whitespace()
        .map(|f| f.parse().with_context(|| format!("/proc/stat: {line:?}")))
        .collect::<Result<_>>()?;
    ensure!(fields.len() >= 8, "/proc/stat: {line:?}");
    // user nice system idle iowait irq softirq steal; guest time is already in user.
    Ok(fields[0] + fields[1] + fields[2] + fields[5] + fields[6] + fields[7])
}

/// The CPU seconds of this process's children that have been reaped so far.
fn children_cpu_s() -> f64 {
    // SAFETY: an all-zero rusage is valid, and getrusage only writes into it.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `usage` is a valid, writable rusage.
    if unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut usage) } != 0 {
        return 0.0;
    }
    let seconds = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    seconds(usage.ru_utime) + seconds(usage.ru_stime)
}

fn clock_ticks_per_s() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 {
        ticks as f64
    } else {
        100.0
    }
}

/// The peak resident set size of `pid` (`VmHWM`), in bytes.
fn peak_rss(pid: u32) -> Result<u64> {
    let path = format!("/proc/{pid}/status");
    let text = fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    let line = text
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .with_context(|| format!("no VmHWM in {path}"))?;
    let kib: u64 = line
        .trim()
        .strip_suffix("kB")
        .unwrap_or(line)
        .trim()
        .parse()
        .with_context(|| format!("VmHWM in {path}: {line:?}"))?;
    Ok(kib * 1024)
}

/// The sum of the peak RSS of nginx's master and workers (shared pages counted in each).
fn nginx_peak_rss(nginx: &Proc) -> Result<u64> {
    let mut total = peak_rss(nginx.pid())?;
    for (pid, _) in children(nginx.pid())? {
        total += peak_rss(pid)?;
    }
    Ok(total)
}

/// Sends the case's request once and checks the answer: 200 with the upstream's body, or the
/// refusal the case expects.
fn check_answer(addr: SocketAddr, request: Request, tokens: &Tokens) -> Result<()> {
    let mut stream = TcpStream::connect_timeout(&addr, CHECK_TIMEOUT)
        .with_context(|| format!("connecting to {addr}"))?;
    stream.set_read_timeout(Some(CHECK_TIMEOUT))?;
    stream.set_write_timeout(Some(CHECK_TIMEOUT))?;
    stream
        .write_all(request.raw(addr, tokens).as_bytes())
        .with_context(|| format!("sending a request to {addr}"))?;
    let mut response = Vec::new();
    stream
        .read_to_end(&mut response)
        .with_context(|| format!("reading the answer from {addr}"))?;
    let text = String::from_utf8_lossy(&response);
    let status = text.lines().next().unwrap_or_default();
    let expected = request.expected_status();
    if expected == 200 {
        ensure!(
            status.starts_with("HTTP/1.1 200 ") && response.ends_with(BODY),
            "expected 200 and \"{}\" from {addr}{}, got:\n{text}",
            BODY.escape_ascii(),
            request.path()
        );
    } else {
        ensure!(
            status.starts_with(&format!("HTTP/1.1 {expected} ")),
            "expected {expected} from {addr}{}, got:\n{text}",
            request.path()
        );
    }
    Ok(())
}

/// A loopback address with a port that was free a moment ago. Another process could take it
/// before ours binds it; [`check_answer`] would then see a stranger's answer and fail.
fn free_addr() -> Result<SocketAddr> {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .context("finding a free port on 127.0.0.1")
}

/// The gateway with `secured` (providers and routes) and then one route for every other path
/// to the upstream, XDP off, and no audit log (nginx has no access log either).
fn gateway_config_text(
    dir: &TempDir,
    listen: SocketAddr,
    upstream: SocketAddr,
    secured: &str,
) -> String {
    format!(
        "# Written by `cargo xtask bench proxy`.\n\
         [xdp]\n\
         enabled = false\n\
         \n\
         [state]\n\
         dir = {state}\n\
         \n\
         [admin]\n\
         socket = {socket}\n\
         \n\
         [log]\n\
         level = \"warn\"\n\
         \n\
         # Like nginx's `access_log off`: no line per request.\n\
         [audit]\n\
         output = \"off\"\n\
         \n\
         [proxy]\n\
         listen = [\"{listen}\"]\n\
         \n\
         [upstreams.bench]\n\
         targets = [\"{upstream}\"]\n\
         \n\
         {secured}\
         [[routes]]\n\
         upstream = \"bench\"\n",
        state = toml_string(&dir.path().join("state").to_string_lossy()),
        socket = toml_string(&dir.path().join("admin.sock").to_string_lossy()),
    )
}

/// nginx as a plain reverse proxy with keep-alive to the upstream; every path it writes is in
/// `dir`. `daemon` and `master_process` come on the command line.
/// With `bind`, its workers are bound each to its own CPU (see [`reference_cpus`]).
fn nginx_config_text(
    dir: &TempDir,
    listen: SocketAddr,
    upstream: SocketAddr,
    bind: bool,
) -> String {
    let path = |name: &str| dir.path().join(name).to_string_lossy().into_owned();
    format!(
        "# Written by `cargo xtask bench proxy`.\n\
         worker_processes {NGINX_WORKERS};\n\
         {affinity}\
         pid {pid};\n\
         error_log stderr warn;\n\
         \n\
         events {{\n\
         \x20   worker_connections 1024;\n\
         }}\n\
         \n\
         http {{\n\
         \x20   access_log off;\n\
         \x20   client_body_temp_path {body};\n\
         \x20   proxy_temp_path {proxy};\n\
         \x20   fastcgi_temp_path {fastcgi};\n\
         \x20   uwsgi_temp_path {uwsgi};\n\
         \x20   scgi_temp_path {scgi};\n\
         \n\
         \x20   upstream bench {{\n\
         \x20       server {upstream};\n\
         \x20       keepalive {NGINX_UPSTREAM_KEEPALIVE};\n\
         \x20   }}\n\
         \n\
         \x20   server {{\n\
         \x20       listen {listen};\n\
         \x20       location / {{\n\
         \x20           proxy_pass http://bench;\n\
         \x20           proxy_http_version 1.1;\n\
         \x20           proxy_set_header Connection \"\";\n\
         \x20       }}\n\
         \x20   }}\n\
         }}\n",
        // Bound to CPUs as the gateway binds its workers (`proxy.pin_workers`, on by default).
        affinity = if bind {
            "worker_cpu_affinity auto;\n"
        } else {
            ""
        },
        pid = path("nginx.pid"),
        body = path("nginx-client-body"),
        proxy = path("nginx-proxy"),
        fastcgi = path("nginx-fastcgi"),
        uwsgi = path("nginx-uwsgi"),
        scgi = path("nginx-scgi"),
    )
}

/// The CPUs the references' workers are bound to, one each: the first [`NGINX_WORKERS`] this
/// process may use, read as the gateway reads them (`sched_getaffinity`; `proxy.pin_workers`
/// binds worker i to the i-th); empty, and the workers not bound, when there are fewer, as the
/// gateway then does.
fn reference_cpus() -> Vec<usize> {
    // SAFETY: a zeroed `cpu_set_t` is an empty set, and the kernel writes at most its size.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: as above; pid 0 is this thread.
    let r = unsafe { libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) };
    if r != 0 {
        return Vec::new();
    }
    let cpus: Vec<usize> = (0..libc::CPU_SETSIZE as usize)
        // SAFETY: `c` is below the set's size.
        .filter(|&c| unsafe { libc::CPU_ISSET(c, &set) })
        .take(NGINX_WORKERS as usize)
        .collect();
    if cpus.len() < NGINX_WORKERS as usize {
        return Vec::new();
    }
    cpus
}

/// Debian's nginx lives in /usr/sbin, which a user's PATH may lack.
fn nginx_bin() -> PathBuf {
    let sbin = Path::new("/usr/sbin/nginx");
    if sbin.exists() {
        sbin.to_path_buf()
    } else {
        PathBuf::from("nginx")
    }
}

fn package_version(package: &str) -> String {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Version}", package])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_else(|| "unknown".into())
}

/// A private directory for the configs, logs, state and sockets of one run; removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn create() -> Result<TempDir> {
        let path = std::env::temp_dir().join(format!("gateway-bench-proxy-{}", process::id()));
        if path.exists() {
            // Left by an earlier run whose pid we now have.
            fs::remove_dir_all(&path)
                .with_context(|| format!("removing stale {}", path.display()))?;
        }
        DirBuilder::new()
            .mode(0o700)
            .create(&path)
            .with_context(|| format!("creating {}", path.display()))?;
        Ok(TempDir(path))
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        match fs::remove_dir_all(&self.0) {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::NotFound => {}
            Err(e) => eprintln!("warning: removing {}: {e}", self.0.display()),
        }
    }
}

/// Makes the kernel kill the child should the xtask die without stopping it (SIGKILL, a
/// crash): its drop guard would not run then.
fn die_with_parent(cmd: &mut Command) {
    // SAFETY: the closure runs between fork and exec and only calls prctl, which is
    // async-signal-safe and touches no memory of ours.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong) == -1 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

fn check_interrupted() -> Result<()> {
    ensure!(!INTERRUPTED.load(Ordering::SeqCst), "interrupted");
    Ok(())
}

fn write(path: &Path, text: &str) -> Result<()> {
    fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}

/// A latency for people: `412 us`, `1.23 ms`, `2.00 s`.
fn latency(us: f64) -> String {
    if us < 1e3 {
        format!("{us:.0} us")
    } else if us < 1e6 {
        format!("{:.2} ms", us / 1e3)
    } else {
        format!("{:.2} s", us / 1e6)
    }
}

/// `value` with `decimals`, or `-`.
fn optional(value: Option<f64>, decimals: usize) -> String {
    value.map_or_else(|| "-".into(), |v| format!("{v:.decimals$}"))
}

/// Which of `n` cases runs at `position` (0-based) of `round` (0-based): the order rotated by
/// one each round, and reversed in every second round.
fn run_order(round: usize, position: usize, n: usize) -> usize {
    let position = if round % 2 == 1 {
        n - 1 - position
    } else {
        position
    };
    (position + round) % n
}

/// `a`'s figure over `b`'s, for every round that has both.
fn round_ratios(runs: &[Run], a: Case, b: Case, figure: fn(&Run) -> Option<f64>) -> Vec<f64> {
    let of = |case: Case, round: u32| {
        runs.iter()
            .find(|r| r.case == case && r.round == round)
            .and_then(figure)
    };
    let rounds: BTreeSet<u32> = runs.iter().map(|r| r.round).collect();
    rounds
        .into_iter()
        .filter_map(|round| of(a, round).zip(of(b, round)))
        .filter(|(_, b)| *b > 0.0)
        .map(|(a, b)| a / b)
        .collect()
}

fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let mid = v.len() / 2;
    if v.is_empty() {
        f64::NAN
    } else if v.len() % 2 == 1 {
        v[mid]
    } else {
        (v[mid - 1] + v[mid]) / 2.0
    }
}

fn round1(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    const WRK_OUTPUT: &str = "\
Running 5s test @ http://127.0.0.1:8080/
  1 threads and 32 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency   349.10us  108.41us   4.69ms   90.59%
    Req/Sec    91.48k     4.39k   97.45k    72.00%
  Latency Distribution
     50%  331.00us
     75%  371.00us
     90%  427.00us
     99%    1.21ms
  455133 requests in 5.00s, 41.24MB read
  Non-2xx or 3xx responses: 12
  Socket errors: connect 0, read 3, write 0, timeout 7
Requests/sec:  91010.12
Transfer/sec:      8.25MB
";

    #[test]
    fn parses_wrk() {
        assert_eq!(
            parse_wrk(WRK_OUTPUT).unwrap(),
            Load {
                requests: 455_133,
                seconds: 5.0,
                requests_per_s: 91_010.12,
                p50_us: 331.0,
                p99_us: 1210.0,
                non_2xx_3xx: 12,
                socket_errors: [0, 3, 0, 7],
            }
        );
    }

    #[test]
    fn parses_wrk_without_errors() {
        let clean: String = WRK_OUTPUT
            .lines()
            .filter(|l| !l.contains("Non-2xx") && !l.contains("Socket errors"))
            .map(|l| format!("{l}\n"))
            .collect();
        let load = parse_wrk(&clean).unwrap();
        assert_eq!(Case::Gateway.errors(&load), 0);
        assert_eq!(Case::GatewayBadToken.errors(&load), load.requests);
        assert!(parse_wrk("Running 5s test @ http://127.0.0.1:8080/\n").is_err());
    }

    #[test]
    fn parses_wrk_durations() {
        for (text, us) in [
            ("331.00us", 331.0),
            ("1.21ms", 1210.0),
            ("2.00s", 2e6),
            ("1.50m", 90e6),
            ("1.00h", 3600e6),
        ] {
            assert_eq!(parse_duration_us(text).unwrap(), us, "{text}");
        }
        assert!(parse_duration_us("12").is_err());
        assert!(parse_duration_us("xms").is_err());
    }

    #[test]
    fn parses_proc_stat() {
        // A command name with a space and a parenthesis.
        let text = "4242 (nginx: w) rker) S 4241 4241 4241 0 -1 4194624 100 0 0 0 \
                    250 75 0 0 20 0 1 0 123456 10000000 500 18446744073709551615";
        let stat = Stat::parse(text).unwrap();
        assert_eq!(stat.state, 'S');
        assert_eq!(stat.ppid, 4241);
        assert_eq!(stat.ticks, 325);
        assert_eq!(stat.start, 123_456);
    }

    #[test]
    fn every_round_runs_every_case_and_neighbours_swap() {
        let n = 11;
        let order = |round| (0..n).map(|p| run_order(round, p, n)).collect::<Vec<_>>();
        for round in 0..6 {
            let mut seen = order(round);
            seen.sort_unstable();
            assert_eq!(seen, (0..n).collect::<Vec<_>>(), "round {round}");
        }
        assert_eq!(order(0)[..3], [0, 1, 2]);
        // Reversed: case 1 (the gateway) now runs after case 2 (nginx).
        let second = order(1);
        let at = |case| second.iter().position(|c| *c == case).unwrap();
        assert_eq!(at(1), at(2) + 1, "{second:?}");
    }

    #[test]
    fn ratios_pair_the_runs_of_a_round() {
        let run = |case, round, requests| Run {
            case,
            round,
            position: 1,
            load: Load {
                requests,
                seconds: 1.0,
                requests_per_s: requests as f64,
                p50_us: 1.0,
                p99_us: 2.0,
                non_2xx_3xx: 0,
                socket_errors: [0; 4],
            },
            proxy_cpu_s: Some(1.0),
            upstream_cpu_s: 0.0,
            wrk_cpu_s: 0.0,
            other_cpu_s: 0.0,
        };
        // Round 3 has no nginx run: it gives no ratio.
        let runs = [
            run(Case::Gateway, 1, 110),
            run(Case::Nginx, 1, 100),
            run(Case::Nginx, 2, 50),
            run(Case::Gateway, 2, 45),
            run(Case::Gateway, 3, 200),
        ];
        let ratios = round_ratios(
            &runs,
            Case::Gateway,
            Case::Nginx,
            Run::requests_per_proxy_cpu_s,
        );
        assert_eq!(ratios, vec![1.1, 0.9]);
        // The ratio of the medians would be 110 / 75.
        assert!((median(&ratios) - 1.0).abs() < 1e-9);
    }

    #[test]
    fn medians() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
        assert!(median(&[]).is_nan());
    }
}
