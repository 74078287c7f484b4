//! `flood-bench` (run by `cargo xtask bench flood`): the legitimate client's throughput and p99
//! under a flood, and what dropping the flood costs the gateway's receive path, for XDP, for the
//! same blocklist in an nftables set (netdev ingress) and for no protection, in one run.
//!
//! Topology: see `integration_tests::flood`. The flood (trafgen, 64-byte UDP and TCP SYN frames
//! from random hosts of a blocked /24) reaches the gateway's veth `g0` as XDP frames through a
//! redirect hop, as from a NIC's receive ring. `g0`'s NAPI runs threaded, pinned to CPU 1;
//! trafgen (and the hop, in its softirq) run on CPU 0. Receive CPU time is the NAPI thread's
//! user + system time over the flood (from `/proc/PID/stat`); everything `g0` receives is
//! processed there: XDP, the nftables ingress hook, the stack. The legitimate client's few
//! packets go through it too, in every case alike.
//!
//! Cases, in this order: `no flood` (XDP attached), `xdp`, `nftables` (the daemon with XDP off,
//! the blocked /24 in a netdev ingress set on `g0`), `none` (XDP off, no nftables). Dropped
//! packets: the XDP `dropped_blocklist` counter, the nftables rule's counter; with no protection
//! nothing is dropped before the stack, and the figure is per packet `g0` received.

use std::{
    fs,
    path::PathBuf,
    process::Command,
    sync::Arc,
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, ensure, Context as _, Result};
use clap::Parser;
use integration_tests::{
    flood::{self, Flood, Legit, Topology, BLOCKED_NET},
    harness::{sh, Daemon, Setup},
    web::Pki,
};
use serde_json::{json, Value};

/// The issue's target: XDP's receive CPU per dropped packet at most this share of nftables'.
const MAX_XDP_VS_NFT: f64 = 0.25;
/// Where `g0`'s NAPI thread runs; trafgen binds itself to CPU 0.
const NAPI_CPU: usize = 1;
const NFT_TABLE: &str = "gwflood";
/// Interrupt coalescing on the gateway's veth (`Topology::coalesce`): 200 us, as NICs default to
/// tens to hundreds of microseconds.
const COALESCE_NS: u64 = 200_000;
const COALESCE_DEFER: u32 = 100;

#[derive(Parser, Debug)]
#[command(about = "Legitimate HTTPS traffic under a flood: XDP vs nftables vs nothing")]
struct Options {
    /// Where to write the results as JSON (parent directories are created).
    #[arg(long, default_value = "target/bench/flood.json")]
    out: PathBuf,
    /// Seconds of flood (and of legitimate load) per case.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=30))]
    duration: u32,
    /// Flood rate, packets per second; 0: as fast as trafgen goes.
    #[arg(long, default_value_t = 0)]
    pps: u64,
    /// Keep-alive HTTPS connections of the legitimate client, each in a closed loop.
    #[arg(long, default_value_t = 4)]
    connections: usize,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Case {
    NoFlood,
    Xdp,
    Nftables,
    None,
}

impl Case {
    const ALL: [Case; 4] = [Case::NoFlood, Case::Xdp, Case::Nftables, Case::None];
    fn name(self) -> &'static str {
        match self {
            Case::NoFlood => "no flood",
            Case::Xdp => "flood + xdp",
            Case::Nftables => "flood + nftables",
            Case::None => "flood, unprotected",
        }
    }
    fn xdp(self) -> bool {
        matches!(self, Case::NoFlood | Case::Xdp)
    }
}

struct Run {
    case: Case,
    legit: Legit,
    sent: Option<flood::Sent>,
    dropped: u64,
    received: u64,
    lost_at_hop: u64,
    rx_cpu_ns: u64,
    flood_seconds: f64,
    /// The same flood again without the client: what the receive CPU figures come from.
    alone: Option<Box<Run>>,
}

impl Run {
    /// Receive CPU per dropped packet (unprotected: per packet received), ns, from the run of
    /// the flood alone.
    fn ns_per_packet(&self) -> Option<f64> {
        let alone = self.alone.as_deref()?;
        let n = if self.case == Case::None {
            alone.received
        } else {
            alone.dropped
        };
        (n > 0).then(|| alone.rx_cpu_ns as f64 / n as f64)
    }
    fn dropped_per_s(&self) -> f64 {
        self.dropped as f64 / self.flood_seconds.max(1e-9)
    }
    fn json(&self) -> Value {
        let alone = self.alone.as_deref().map(|a| {
            json!({
                "flood_sent": a.sent.map(|s| s.packets),
                "flood_seconds": round1(a.flood_seconds),
                "lost_at_hop": a.lost_at_hop,
                "received": a.received,
                "dropped": a.dropped,
                "dropped_per_s": round1(a.dropped_per_s()),
                "rx_cpu_s": round3(a.rx_cpu_ns as f64 / 1e9),
            })
        });
        json!({
            "flood_alone": alone,
            "legit_requests_per_s": round1(self.legit.requests_per_s()),
            "legit_ok": self.legit.ok,
            "legit_failed": self.legit.failed,
            "legit_p50_us": self.legit.percentile_us(0.50),
            "legit_p99_us": self.legit.percentile_us(0.99),
            "flood_sent": self.sent.map(|s| s.packets),
            "flood_seconds": round1(self.flood_seconds),
            "lost_at_hop": self.lost_at_hop,
            "received": self.received,
            "dropped": self.dropped,
            "dropped_per_s": round1(self.dropped_per_s()),
            "rx_cpu_s": round3(self.rx_cpu_ns as f64 / 1e9),
            "rx_ns_per_dropped_packet_flood_alone": self.ns_per_packet().map(round1),
        })
    }
}

fn round1(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}
fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

fn main() -> Result<()> {
    let opts = Options::parse();
    ensure!(
        unsafe { libc::geteuid() } == 0,
        "flood-bench creates namespaces and loads XDP programs: run it as root"
    );
    ensure!(
        thread::available_parallelism().map_or(0, |n| n.get()) > NAPI_CPU,
        "flood-bench needs at least {} CPUs",
        NAPI_CPU + 1
    );
    let start = Instant::now();
    let topo = Topology::new();
    topo.set_threaded(true);
    let setup = Setup::new();
    let pki = Arc::new(Pki::new(setup.dir.path()));
    let cert = pki.issue("gw", &["gw.test"]);
    let upstream = flood::NsUpstream::start(&topo.gw_ns);
    let proxy = flood::proxy_config(&cert.cert, &cert.key, upstream.addr);
    let _hop = topo.redirect_hop();
    let mut runs = Vec::new();
    for case in Case::ALL {
        if !flood::wait_for_quiet(Duration::from_secs(600)) {
            bail!("wrk kept running for 10 minutes: not flooding over someone's measurement");
        }
        eprintln!("case: {}", case.name());
        let xdp_keys = if case.xdp() {
            "mode = \"native\""
        } else {
            "enabled = false"
        };
        let config = setup.write_config(&topo.g0, xdp_keys, &proxy);
        let daemon = Daemon::start(&topo.gw_ns, &setup, &config);
        if case.xdp() {
            setup.ok(&["block", "add", BLOCKED_NET, "--reason", "flood bench"]);
        }
        let _nft = (case == Case::Nftables).then(|| Nft::add(&topo));
        // Attaching or detaching XDP may re-create the NAPI instance, and its thread.
        topo.set_threaded(true);
        topo.coalesce(COALESCE_NS, COALESCE_DEFER);
        topo.pin_napi(NAPI_CPU);
        let napi = topo.napi_thread().context("g0's NAPI thread")?;
        // Warm-up: the client's TLS sessions, the daemon's first requests.
        flood::legit_client(
            &topo,
            pki.clone(),
            opts.connections,
            Duration::ZERO,
            Duration::from_millis(500),
        );
        let mut run = measure(&topo, &setup, &pki, case, napi, &opts, true);
        if case != Case::NoFlood {
            run.alone = Some(Box::new(measure(
                &topo, &setup, &pki, case, napi, &opts, false,
            )));
        }
        drop(daemon);
        eprintln!(
            "  {:.0} req/s, p99 {:?} us; dropped {} of {:?}, {:?} ns/packet",
            run.legit.requests_per_s(),
            run.legit.percentile_us(0.99),
            run.dropped,
            run.sent.map(|s| s.packets),
            run.ns_per_packet()
        );
        runs.push(run);
    }
    report(&opts, &runs, start.elapsed())
}

fn measure(
    topo: &Topology,
    setup: &Setup,
    pki: &Arc<Pki>,
    case: Case,
    napi: i32,
    opts: &Options,
    with_client: bool,
) -> Run {
    let seconds = f64::from(opts.duration);
    let dropped = || match case {
        Case::Xdp | Case::NoFlood => setup.verdict("dropped_blocklist").0,
        Case::Nftables => Nft::dropped(topo),
        Case::None => 0,
    };
    let received = || flood::dev_stat(&topo.gw_ns, &topo.g0, "rx_packets");
    let (d0, r0, c0, l0) = (
        dropped(),
        received(),
        flood::cpu_ns(napi),
        topo.hop_losses(),
    );
    let flood_start = Instant::now();
    let (legit, sent) = thread::scope(|s| {
        let pki = pki.clone();
        let client = s.spawn(move || {
            if !with_client {
                return Legit::default();
            }
            flood::legit_client(
                topo,
                pki,
                opts.connections,
                Duration::ZERO,
                Duration::from_secs_f64(seconds),
            )
        });
        let sent = (case != Case::NoFlood).then(|| {
            flood::trafgen(
                topo,
                &[Flood::UdpBlocked, Flood::SynBlocked],
                opts.pps,
                seconds,
                setup.dir.path(),
            )
        });
        (client.join().expect("client thread"), sent)
    });
    let flood_seconds = sent.map_or(flood_start.elapsed().as_secs_f64(), |s| s.seconds);
    thread::sleep(Duration::from_millis(100));
    Run {
        case,
        legit,
        sent,
        dropped: dropped() - d0,
        received: received() - r0,
        lost_at_hop: topo.hop_losses() - l0,
        rx_cpu_ns: flood::cpu_ns(napi) - c0,
        flood_seconds,
        alone: None,
    }
}

/// The blocklist as an nftables set in a netdev ingress hook on `g0`; removed on drop.
struct Nft {
    ns: String,
}

impl Nft {
    fn add(topo: &Topology) -> Nft {
        let rules = format!(
            "table netdev {NFT_TABLE} {{\n  set blocked {{ type ipv4_addr; flags interval; elements = {{ {BLOCKED_NET} }} }}\n  chain ingress {{ type filter hook ingress device \"{}\" priority -500; policy accept; ip saddr @blocked counter drop; }}\n}}\n",
            topo.g0
        );
        let path = std::env::temp_dir().join(format!("gwflood-{}.nft", std::process::id()));
        fs::write(&path, rules).unwrap();
        sh(
            "ip",
            &[
                "netns",
                "exec",
                &topo.gw_ns,
                "nft",
                "-f",
                path.to_str().unwrap(),
            ],
        );
        let _ = fs::remove_file(&path);
        Nft {
            ns: topo.gw_ns.clone(),
        }
    }

    fn dropped(topo: &Topology) -> u64 {
        let text = sh(
            "ip",
            &[
                "netns",
                "exec",
                &topo.gw_ns,
                "nft",
                "list",
                "chain",
                "netdev",
                NFT_TABLE,
                "ingress",
            ],
        );
        text.split_whitespace()
            .skip_while(|w| *w != "packets")
            .nth(1)
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    }
}

impl Drop for Nft {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args([
                "netns", "exec", &self.ns, "nft", "delete", "table", "netdev", NFT_TABLE,
            ])
            .status();
    }
}

fn us(v: Option<u64>) -> String {
    v.map_or("-".into(), |v| format!("{:.1} ms", v as f64 / 1000.0))
}

fn report(opts: &Options, runs: &[Run], took: Duration) -> Result<()> {
    println!(
        "\nflood: trafgen {} ({} s per case), 64-byte UDP + TCP SYN from {BLOCKED_NET} as XDP \
         frames; g0's NAPI thread on CPU {NAPI_CPU}, trafgen on CPU 0; legitimate client: {} \
         HTTPS keep-alive connections, closed loop",
        if opts.pps == 0 {
            "as fast as it goes".to_string()
        } else {
            format!("at {} pps", opts.pps)
        },
        opts.duration,
        opts.connections
    );
    println!(
        "{:<20} {:>9} {:>9} {:>9} {:>7} {:>11} {:>9} {:>11} {:>12} {:>15} {:>13}",
        "case",
        "req/s",
        "p50",
        "p99",
        "failed",
        "flood sent",
        "hop lost",
        "dropped",
        "dropped/s",
        "alone: rx CPU s",
        "rx ns/packet"
    );
    for r in runs {
        println!(
            "{:<20} {:>9.0} {:>9} {:>9} {:>7} {:>11} {:>9} {:>11} {:>12.0} {:>15} {:>13}",
            r.case.name(),
            r.legit.requests_per_s(),
            us(r.legit.percentile_us(0.5)),
            us(r.legit.percentile_us(0.99)),
            r.legit.failed,
            r.sent.map_or("-".into(), |s| s.packets.to_string()),
            r.lost_at_hop,
            r.dropped,
            r.dropped_per_s(),
            r.alone
                .as_deref()
                .map_or("-".into(), |a| format!("{:.2}", a.rx_cpu_ns as f64 / 1e9)),
            r.ns_per_packet().map_or("-".into(), |n| format!("{n:.0}")),
        );
    }
    println!(
        "rx ns/packet: CPU time of g0's NAPI thread per dropped packet (unprotected: per packet \
         received, which the stack then drops or answers), over a second run of the same flood \
         without the client"
    );
    let get = |c: Case| {
        runs.iter()
            .find(|r| r.case == c)
            .and_then(Run::ns_per_packet)
    };
    let ratio = get(Case::Xdp).zip(get(Case::Nftables)).map(|(x, n)| x / n);
    let met = ratio.is_some_and(|r| r <= MAX_XDP_VS_NFT);
    let detail = format!(
        "{} ns vs {} ns",
        get(Case::Xdp).map_or("-".into(), |n| format!("{n:.0}")),
        get(Case::Nftables).map_or("-".into(), |n| format!("{n:.0}"))
    );
    let name = "receive CPU per dropped packet, xdp / nftables";
    println!("\ntargets:");
    println!(
        "  {}  {name}: {} ({detail}; target <= {MAX_XDP_VS_NFT:.2})",
        if met { "PASS" } else { "FAIL" },
        ratio.map_or("-".into(), |r| format!("{r:.2}"))
    );
    let cases: serde_json::Map<String, Value> = runs
        .iter()
        .map(|r| (r.case.name().to_string(), r.json()))
        .collect();
    let doc = json!({
        "bench": "flood",
        "statistic": "one run per case with the client, then the same flood alone; receive CPU \
                      = user + system time of g0's threaded NAPI kernel thread over the flood \
                      alone, divided by the packets dropped (unprotected: received)",
        "parameters": {
            "duration_s": opts.duration,
            "flood_pps": if opts.pps == 0 { Value::from("max") } else { Value::from(opts.pps) },
            "flood": format!("trafgen, 64-byte UDP and TCP SYN frames from random hosts of {BLOCKED_NET}, through an XDP redirect hop"),
            "legit_connections": opts.connections,
            "napi_cpu": NAPI_CPU,
            "trafgen_cpu": 0,
            "order": Case::ALL.iter().map(|c| c.name()).collect::<Vec<_>>().join(", "),
        },
        "machine": {
            "cpus": thread::available_parallelism().map(|n| n.get()).ok(),
            "kernel": fs::read_to_string("/proc/sys/kernel/osrelease").map(|s| s.trim().to_string()).ok(),
        },
        "cases": cases,
        "targets": {
            "checks": [{
                "name": name,
                "value": ratio.map(round3),
                "target": format!("<= {MAX_XDP_VS_NFT:.2}"),
                "detail": detail,
                "met": met,
            }],
            "all_met": met,
        },
        "seconds": round1(took.as_secs_f64()),
    });
    if let Some(dir) = opts.out.parent() {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    fs::write(&opts.out, serde_json::to_string_pretty(&doc)? + "\n")
        .with_context(|| format!("writing {}", opts.out.display()))?;
    println!("results: {}", opts.out.display());
    Ok(())
}
