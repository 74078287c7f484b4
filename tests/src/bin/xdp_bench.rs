//! `cargo xtask bench xdp`: what the gateway's XDP program costs per packet, as the kernel itself
//! measures it (BPF_PROG_TEST_RUN with `repeat`), next to xdp-filter from xdp-tools on the same
//! frames. Needs root.
//!
//! Ours: the program loaded (not attached) with the daemon's default map sizes, holding per
//! address family 100,000 blocklist entries (50,000 hosts, 50,000 prefixes: /24 or /64), 1,000
//! allowlisted hosts and 1,000 allowlisted prefixes, and 100,000 sources tracked by the rate
//! limiter (each sent one frame before anything is measured).
//!
//! Reference: xdp-filter loaded on a veth pair inside a network namespace of our own, with
//! features `ipv4,ipv6`: its smallest program that filters on addresses, hence the cheapest
//! reference. Its source maps are filled to their capacity, which xdp-filter fixes at 10,000 per
//! family, with our first blocked hosts. xdp-filter has no prefixes, no allowlist and no rate
//! limit, so those rows have no reference.
//!
//! Method: 64-byte UDP frames; one measurement is one BPF_PROG_TEST_RUN call of `repeat` runs,
//! whose mean the kernel reports in whole nanoseconds. Each round measures every path of ours,
//! each followed by its reference, so a slow phase of a noisy machine hits both alike; the table
//! shows the median over the rounds and the minimum. Every call's return value is checked, and
//! for ours also which verdict counter grew: a path that takes another branch fails the bench.
//!
//! Addresses only ever appear as map keys and in frames handed to BPF_PROG_TEST_RUN; no packet
//! leaves the machine, and the namespace gets no addresses at all.

use std::{
    borrow::Cow,
    fmt, fs,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::{Path as FsPath, PathBuf},
    process::{self, Command},
    sync::atomic::{AtomicBool, Ordering},
    time::Instant,
};

use anyhow::{anyhow, bail, ensure, Context as _, Result};
use aya::{
    maps::{Map, MapData, MapInfo, PerCpuHashMap, PerCpuValues},
    programs::{ProgramInfo, TestRun as _, TestRunOptions, Xdp},
    util::nr_cpus,
    Pod,
};
use aya_obj::programs::XdpAttachType;
use clap::Parser;
use gateway::{
    config::{RateConfig, XdpConfig},
    lists::{Enforcer as _, ListKind},
    xdp::Kernel,
};
use gateway_common::{
    ratelimit::{MAX_BURST, MAX_PPS},
    Verdict,
};
use integration_tests::frames::{udp4_64, udp6_64};
use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use serde_json::{json, Value};

/// The floor for `--repeat`.
const MIN_REPEAT: u32 = 1_000_000;
/// `--repeat` with `--quick`, for development.
const QUICK_REPEAT: u32 = 10_000;
/// Targets: every path below this many ns per packet...
const MAX_NS: f64 = 100.0;
/// ... and at most this many times xdp-filter's cost on its comparable path.
const MAX_RATIO: f64 = 1.5;

const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;
const FRAME_BYTES: usize = 64;

/// Per family: blocked hosts, blocked prefixes, allowlisted hosts and prefixes, tracked sources.
const BLOCK_HOSTS: u32 = 50_000;
const BLOCK_NETS: u32 = 50_000;
const ALLOW_HOSTS: u32 = 1_000;
const ALLOW_NETS: u32 = 1_000;
const TRACKED: u32 = 100_000;
/// Which member of each generated set the measured frames come from. Below xdp-filter's
/// capacity, so its maps hold the same blocked host.
const PROBE: u32 = 1_234;
const PREFIX4: u8 = 24;
const PREFIX6: u8 = 64;

/// Rate limit off: no state lookup at all.
const RATE_OFF: RateConfig = RateConfig {
    pps: 0,
    burst: 0,
    prefix4: 32,
    prefix6: 64,
};
/// Rate limit on and never reached: every frame pays the state lookup and update, and passes.
const RATE_HIGH: RateConfig = RateConfig {
    pps: MAX_PPS,
    burst: MAX_BURST,
    prefix4: 32,
    prefix6: 64,
};
/// One frame per second: after its first frame, a source is over its rate.
const RATE_LOW: RateConfig = RateConfig {
    pps: 1,
    burst: 1,
    prefix4: 32,
    prefix6: 64,
};

/// xdp-filter's per-CPU value for "drop this source" (MAP_FLAG_SRC in its common_kern_user.h).
const XDP_FILTER_FLAG_SRC: u64 = 1;
/// The features we load xdp-filter with (see the module docs).
const XDP_FILTER_FEATURES: &str = "ipv4,ipv6";
/// Where xdp-filter pins its programs, one directory per interface.
const XDP_FILTER_PINS: &str = "/sys/fs/bpf/xdp-filter/programs";
const BPFFS: &str = "/sys/fs/bpf";

#[derive(Parser, Debug)]
#[command(about = "XDP cost per packet (BPF_PROG_TEST_RUN), ours next to xdp-filter")]
struct Options {
    /// Where to write the results as JSON (parent directories are created).
    #[arg(long, default_value = "target/bench/xdp.json")]
    out: PathBuf,
    /// Runs per BPF_PROG_TEST_RUN call; the kernel reports their mean. At least 1,000,000
    /// unless --quick [default: 1,000,000; 10,000 with --quick].
    #[arg(long)]
    repeat: Option<u32>,
    /// Rounds; each measures every path once, ours and the reference alternating.
    #[arg(long, default_value_t = 11, value_parser = clap::value_parser!(u32).range(1..))]
    rounds: u32,
    /// Development mode: allows --repeat below 1,000,000. Not for published numbers.
    #[arg(long)]
    quick: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Family {
    V4,
    V6,
}

const FAMILIES: [Family; 2] = [Family::V4, Family::V6];

/// The address plans, all disjoint: IPv4 in private and shared address space, IPv6 in
/// 2001:db8::/32.
impl Family {
    fn name(self) -> &'static str {
        match self {
            Family::V4 => "ipv4",
            Family::V6 => "ipv6",
        }
    }

    fn frame(self, source: IpAddr) -> Vec<u8> {
        match source {
            IpAddr::V4(a) => udp4_64(a),
            IpAddr::V6(a) => udp6_64(a),
        }
    }

    /// The `i`-th of `TRACKED` sources: 10.200.0.0/13, or one /64 each under 2001:db8:100::/40.
    fn tracked(self, i: u32) -> IpAddr {
        match self {
            Family::V4 => at("10.200.0.0", u128::from(i) + 1),
            Family::V6 => at("2001:db8:100::", (u128::from(i) << 64) + 1),
        }
    }

    /// The `i`-th blocked host: 172.16.0.0/12, or 2001:db8:200::/64.
    fn block_host(self, i: u32) -> IpAddr {
        match self {
            Family::V4 => at("172.16.0.0", u128::from(i) + 1),
            Family::V6 => at("2001:db8:200::", u128::from(i) + 1),
        }
    }

    /// The `i`-th blocked prefix: a /24 from 10.0.0.0/24 on (up to 10.195.79.0/24), or a /64
    /// under 2001:db8:300::/48.
    fn block_net(self, i: u32) -> IpNet {
        match self {
            Family::V4 => prefix(at("10.0.0.0", u128::from(i) << 8)),
            Family::V6 => prefix(at("2001:db8:300::", u128::from(i) << 64)),
        }
    }

    /// The `i`-th allowlisted host: 100.64.0.0/22, or 2001:db8:400::/64.
    fn allow_host(self, i: u32) -> IpAddr {
        match self {
            Family::V4 => at("100.64.0.0", u128::from(i) + 1),
            Family::V6 => at("2001:db8:400::", u128::from(i) + 1),
        }
    }

    /// The `i`-th allowlisted prefix: a /24 from 100.65.0.0, or a /64 under 2001:db8:500::/48.
    fn allow_net(self, i: u32) -> IpNet {
        match self {
            Family::V4 => prefix(at("100.65.0.0", u128::from(i) << 8)),
            Family::V6 => prefix(at("2001:db8:500::", u128::from(i) << 64)),
        }
    }
}

/// The prefix (/24 or /64) that starts at `addr`.
fn prefix(addr: IpAddr) -> IpNet {
    match addr {
        IpAddr::V4(a) => IpNet::V4(Ipv4Net::new(a, PREFIX4).expect("valid prefix")),
        IpAddr::V6(a) => IpNet::V6(Ipv6Net::new(a, PREFIX6).expect("valid prefix")),
    }
}

/// `base + offset`.
fn offset(base: IpAddr, offset: u128) -> IpAddr {
    match base {
        IpAddr::V4(a) => {
            let offset = u32::try_from(offset).expect("offset fits IPv4");
            IpAddr::V4(Ipv4Addr::from(u32::from(a) + offset))
        }
        IpAddr::V6(a) => IpAddr::V6(Ipv6Addr::from(u128::from(a) + offset)),
    }
}

/// The constant address `base` plus `n`.
fn at(base: &str, n: u128) -> IpAddr {
    offset(base.parse().expect("constant address"), n)
}

/// One path through our program.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Path {
    PassRateOff,
    PassRateOn,
    BlockedHost,
    BlockedCidr,
    RateLimited,
    Allowlisted,
}

const PATHS: [Path; 6] = [
    Path::PassRateOff,
    Path::PassRateOn,
    Path::BlockedHost,
    Path::BlockedCidr,
    Path::RateLimited,
    Path::Allowlisted,
];

/// xdp-filter's paths that compare with ours.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum RefPath {
    /// Source and destination looked up, neither listed.
    Pass,
    /// Source listed.
    Blocked,
}

impl RefPath {
    fn name(self) -> &'static str {
        match self {
            RefPath::Pass => "pass",
            RefPath::Blocked => "blocked source",
        }
    }
}

impl Path {
    fn name(self) -> &'static str {
        match self {
            Path::PassRateOff => "pass (rate limit off)",
            Path::PassRateOn => "pass (rate limit on)",
            Path::BlockedHost => "blocked exact host",
            Path::BlockedCidr => "blocked by CIDR",
            Path::RateLimited => "rate-limited",
            Path::Allowlisted => "allowlisted",
        }
    }

    fn verdict(self) -> Verdict {
        match self {
            Path::PassRateOff | Path::PassRateOn => Verdict::Passed,
            Path::BlockedHost | Path::BlockedCidr => Verdict::DroppedBlocklist,
            Path::RateLimited => Verdict::DroppedRatelimit,
            Path::Allowlisted => Verdict::Allowlisted,
        }
    }

    fn rate(self) -> RateConfig {
        match self {
            Path::PassRateOff => RATE_OFF,
            Path::RateLimited => RATE_LOW,
            _ => RATE_HIGH,
        }
    }

    /// The measured frame's source. Pass and rate-limited sources are tracked (two different
    /// ones: the low rate must never touch the pass source's state); the CIDR source lies inside
    /// a blocked prefix and is no blocked host.
    fn source(self, family: Family) -> IpAddr {
        match self {
            Path::PassRateOff | Path::PassRateOn => family.tracked(PROBE),
            Path::RateLimited => family.tracked(PROBE + 1),
            Path::BlockedHost => family.block_host(PROBE),
            Path::BlockedCidr => offset(family.block_net(PROBE).addr(), 77),
            Path::Allowlisted => family.allow_host(PROBE % ALLOW_HOSTS),
        }
    }

    fn reference(self) -> Option<RefPath> {
        match self {
            Path::PassRateOff | Path::PassRateOn => Some(RefPath::Pass),
            Path::BlockedHost => Some(RefPath::Blocked),
            Path::BlockedCidr | Path::RateLimited | Path::Allowlisted => None,
        }
    }
}

impl fmt::Display for Path {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

fn action(passes: bool) -> u32 {
    if passes {
        XDP_PASS
    } else {
        XDP_DROP
    }
}

fn action_name(action: u32) -> &'static str {
    match action {
        0 => "XDP_ABORTED",
        XDP_DROP => "XDP_DROP",
        XDP_PASS => "XDP_PASS",
        3 => "XDP_TX",
        4 => "XDP_REDIRECT",
        _ => "unknown",
    }
}

/// One BPF_PROG_TEST_RUN call: the return value of the last run and the mean ns per run.
fn test_run(program: &Xdp, frame: &[u8], repeat: u32) -> Result<(u32, f64)> {
    check_interrupted()?;
    let result = program.test_run(TestRunOptions {
        data_in: Some(frame),
        repeat,
        ..TestRunOptions::new()
    });
    // A signal ends a test run early with EINTR: say why, not how.
    check_interrupted()?;
    let result = result.context("BPF_PROG_TEST_RUN")?;
    Ok((result.return_value, result.duration.as_nanos() as f64))
}

/// Set by SIGINT or SIGTERM. Catching them (instead of dying) lets the namespace and xdp-filter
/// guards run; a test run in progress returns EINTR at once.
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::Relaxed);
}

fn catch_signals() {
    let handler = on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
    for signal in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
        unsafe { libc::signal(signal, handler) };
    }
}

fn check_interrupted() -> Result<()> {
    ensure!(
        !INTERRUPTED.load(Ordering::Relaxed),
        "interrupted; cleaning up"
    );
    Ok(())
}

fn text_error(e: String) -> anyhow::Error {
    anyhow!(e)
}

/// Our program, loaded and filled.
struct Ours {
    kernel: Kernel,
    rate_state_entries: usize,
}

impl Ours {
    fn load() -> Result<Ours> {
        let started = Instant::now();
        let mut kernel = Kernel::load(&XdpConfig::default()).map_err(text_error)?;
        for family in FAMILIES {
            let block: Vec<IpNet> = (0..BLOCK_HOSTS)
                .map(|i| IpNet::from(family.block_host(i)))
                .chain((0..BLOCK_NETS).map(|i| family.block_net(i)))
                .collect();
            kernel
                .insert(ListKind::Block, &block)
                .map_err(text_error)
                .with_context(|| format!("loading the {} blocklist", family.name()))?;
            let allow: Vec<IpNet> = (0..ALLOW_HOSTS)
                .map(|i| IpNet::from(family.allow_host(i)))
                .chain((0..ALLOW_NETS).map(|i| family.allow_net(i)))
                .collect();
            kernel
                .insert(ListKind::Allow, &allow)
                .map_err(text_error)
                .with_context(|| format!("loading the {} allowlist", family.name()))?;
        }
        // Track sources the way traffic does: one frame from each, with the rate limit on.
        kernel
            .set_rate(RATE_HIGH.settings().map_err(text_error)?)
            .map_err(text_error)?;
        let before = kernel.counters().map_err(text_error)?;
        for family in FAMILIES {
            for i in 0..TRACKED {
                let frame = family.frame(family.tracked(i));
                let (ret, _) = test_run(kernel.program_mut(), &frame, 1)?;
                ensure!(
                    ret == XDP_PASS,
                    "first frame from tracked source {} returned {}",
                    family.tracked(i),
                    action_name(ret)
                );
            }
        }
        let after = kernel.counters().map_err(text_error)?;
        let passed =
            after[Verdict::Passed as usize].packets - before[Verdict::Passed as usize].packets;
        ensure!(
            passed == 2 * u64::from(TRACKED),
            "{passed} of {} first frames counted as passed",
            2 * TRACKED
        );
        let rate_state_entries = kernel.tracked_sources().map_err(text_error)?;
        // A four-way table: a few sources whose bucket filled up replaced one another.
        ensure!(
            rate_state_entries >= (2 * TRACKED as usize) * 99 / 100,
            "the rate limiter tracks {rate_state_entries} sources after {} were sent a frame",
            2 * TRACKED
        );
        eprintln!(
            "ours: loaded {} blocklist and {} allowlist entries per family, {rate_state_entries} \
             tracked sources ({:.1} s)",
            BLOCK_HOSTS + BLOCK_NETS,
            ALLOW_HOSTS + ALLOW_NETS,
            started.elapsed().as_secs_f64()
        );
        Ok(Ours {
            kernel,
            rate_state_entries,
        })
    }

    /// Measures one path and checks that every run took it.
    fn measure(&mut self, path: Path, family: Family, repeat: u32) -> Result<f64> {
        let what = || format!("ours, {path}, {}", family.name());
        self.kernel
            .set_rate(path.rate().settings().map_err(text_error)?)
            .map_err(text_error)?;
        let frame = family.frame(path.source(family));
        let before = self.kernel.counters().map_err(text_error)?;
        let (ret, ns) = test_run(self.kernel.program_mut(), &frame, repeat).with_context(what)?;
        let after = self.kernel.counters().map_err(text_error)?;
        let expected = action(path.verdict().passes());
        ensure!(
            ret == expected,
            "{}: returned {}, expected {}",
            what(),
            action_name(ret),
            action_name(expected)
        );
        let grew = |v: Verdict| after[v as usize].packets - before[v as usize].packets;
        let counted: u64 = Verdict::ALL.iter().map(|v| grew(*v)).sum();
        ensure!(
            counted == u64::from(repeat),
            "{}: {counted} verdicts counted for {repeat} runs",
            what()
        );
        // A rate-limited source passes one frame whenever its bucket refilled since last time.
        let slack = u64::from(path == Path::RateLimited);
        let hits = grew(path.verdict());
        ensure!(
            hits + slack >= u64::from(repeat),
            "{}: only {hits} of {repeat} runs counted as {}; per verdict: {}",
            what(),
            path.verdict().name(),
            Verdict::ALL
                .iter()
                .map(|v| format!("{} {}", v.name(), grew(*v)))
                .collect::<Vec<_>>()
                .join(", ")
        );
        Ok(ns)
    }
}

/// Runs `program args`, returning its standard output; the error names the command and carries
/// its standard error.
fn run(cmd: &mut Command) -> Result<String> {
    let line = format!(
        "{} {}",
        cmd.get_program().to_string_lossy(),
        cmd.get_args()
            .map(|a| a.to_string_lossy())
            .collect::<Vec<_>>()
            .join(" ")
    );
    let out = cmd
        .output()
        .with_context(|| format!("could not start `{line}`"))?;
    ensure!(
        out.status.success(),
        "`{line}` failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr).trim_end()
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A network namespace holding a veth pair; deleted on drop (also when unwinding from a panic).
struct Netns {
    name: String,
    iface: String,
}

impl Netns {
    fn create() -> Result<Netns> {
        let pid = process::id();
        let name = format!("xdp-bench-{pid}");
        run(Command::new("ip").args(["netns", "add", &name]))?;
        let netns = Netns {
            name,
            iface: format!("xb{pid}a"),
        };
        let peer = format!("xb{pid}b");
        run(Command::new("ip").args([
            "-n",
            &netns.name,
            "link",
            "add",
            &netns.iface,
            "type",
            "veth",
            "peer",
            "name",
            &peer,
        ]))?;
        for dev in [&netns.iface, &peer] {
            run(Command::new("ip").args(["-n", &netns.name, "link", "set", dev, "up"]))?;
        }
        Ok(netns)
    }

    /// `program`, to run in the namespace's network but in our mount namespace: `ip netns exec`
    /// would mount a fresh /sys without bpffs, where xdp-filter cannot pin its maps.
    fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net=/run/netns/{}", self.name))
            .arg("--")
            .arg(program);
        cmd
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        if let Err(e) = run(Command::new("ip").args(["netns", "del", &self.name])) {
            eprintln!(
                "warning: could not delete network namespace {}: {e:#}",
                self.name
            );
        }
    }
}

/// xdp-filter loaded in a [`Netns`]: unloaded on drop, before the namespace goes.
struct Loaded {
    netns: Netns,
}

impl Drop for Loaded {
    fn drop(&mut self) {
        let unload = run(self
            .netns
            .command("xdp-filter")
            .args(["unload", &self.netns.iface]));
        // When the load itself failed there is nothing to unload, and no pins either.
        let pinned = FsPath::new(XDP_FILTER_PINS)
            .join(&self.netns.iface)
            .exists();
        if let (Err(e), true) = (unload, pinned) {
            eprintln!(
                "warning: could not unload xdp-filter from {}: {e:#}",
                self.netns.iface
            );
        }
    }
}

/// The reference: xdp-filter's program, opened by its pin, its maps filled.
struct XdpFilter {
    // Declared first so our handle closes before `loaded` unloads the program.
    program: Xdp,
    name: String,
    blocked: [usize; 2],
    _loaded: Loaded,
}

impl XdpFilter {
    fn load() -> Result<XdpFilter> {
        let pins = FsPath::new(XDP_FILTER_PINS);
        if let Ok(entries) = fs::read_dir(pins) {
            let others: Vec<String> = entries
                .filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect();
            ensure!(
                others.is_empty(),
                "xdp-filter is already loaded on {}; its maps are shared by every interface it \
                 runs on, so the bench would add thousands of entries to that filter. Unload it \
                 first (xdp-filter unload --all)",
                others.join(", ")
            );
        }
        let netns = Netns::create().context("creating the namespace for xdp-filter")?;
        let iface = netns.iface.clone();
        // From here on, drop unloads xdp-filter again, even after a partial load.
        let loaded = Loaded { netns };
        // Without its multi-program dispatcher, so that the attached program is xdp-filter's
        // own and not a dispatcher calling it: BPF_PROG_TEST_RUN then measures the filter alone,
        // as it measures ours. The attach mode does not matter to BPF_PROG_TEST_RUN; skb mode
        // works on any interface.
        run(loaded
            .netns
            .command("xdp-filter")
            .env("LIBXDP_SKIP_DISPATCHER", "1")
            .args([
                "load",
                "--features",
                XDP_FILTER_FEATURES,
                "--mode",
                "skb",
                &iface,
            ]))
        .context("loading xdp-filter")?;
        let pin_dir = pins.join(&iface);
        let pinned: Vec<PathBuf> = fs::read_dir(&pin_dir)
            .with_context(|| format!("reading {}", pin_dir.display()))?
            .map(|e| e.map(|e| e.path()))
            .collect::<Result<_, _>>()?;
        let [pin] = pinned.as_slice() else {
            bail!(
                "expected one program pinned in {}, found {pinned:?}",
                pin_dir.display()
            );
        };
        let info = ProgramInfo::from_pin(pin).with_context(|| format!("{}", pin.display()))?;
        let name = info.name_as_str().unwrap_or("?").to_string();
        let map_ids = info
            .map_ids()
            .context("xdp-filter's maps")?
            .unwrap_or_default();
        let program =
            Xdp::from_program_info(info, Cow::Owned(name.clone()), XdpAttachType::Interface)
                .with_context(|| format!("opening xdp-filter's program {name}"))?;
        let mut blocked = [0; 2];
        for id in map_ids {
            let map = MapInfo::from_id(id)?;
            let capacity = map.max_entries();
            match map.name_as_str() {
                Some("filter_ipv4") => {
                    blocked[0] =
                        fill_xdp_filter(id, capacity, |i| match Family::V4.block_host(i) {
                            IpAddr::V4(a) => a.octets(),
                            IpAddr::V6(a) => unreachable!("{a} in the IPv4 plan"),
                        })?;
                }
                Some("filter_ipv6") => {
                    blocked[1] =
                        fill_xdp_filter(id, capacity, |i| match Family::V6.block_host(i) {
                            IpAddr::V6(a) => a.octets(),
                            IpAddr::V4(a) => unreachable!("{a} in the IPv6 plan"),
                        })?;
                }
                _ => {}
            }
        }
        ensure!(
            blocked.iter().all(|n| *n > PROBE as usize),
            "xdp-filter's program {name} lacks filter_ipv4 or filter_ipv6, or they hold fewer \
             than {} entries: {blocked:?}",
            PROBE + 1
        );
        eprintln!(
            "xdp-filter: {name} on {iface}, {} IPv4 and {} IPv6 blocked sources (its capacity)",
            blocked[0], blocked[1]
        );
        Ok(XdpFilter {
            program,
            name,
            blocked,
            _loaded: loaded,
        })
    }

    fn measure(&self, path: RefPath, family: Family, repeat: u32) -> Result<f64> {
        let (source, expected) = match path {
            RefPath::Pass => (Path::PassRateOn.source(family), XDP_PASS),
            RefPath::Blocked => (Path::BlockedHost.source(family), XDP_DROP),
        };
        let (ret, ns) = test_run(&self.program, &family.frame(source), repeat)
            .with_context(|| format!("xdp-filter, {}, {}", path.name(), family.name()))?;
        ensure!(
            ret == expected,
            "xdp-filter, {}, {}: returned {}, expected {}",
            path.name(),
            family.name(),
            action_name(ret),
            action_name(expected)
        );
        Ok(ns)
    }
}

/// Fills xdp-filter's source map `id` (per-CPU hash, key the address in network order) with
/// up to `capacity` of our blocked hosts; returns how many.
fn fill_xdp_filter<K: Pod>(id: u32, capacity: u32, key: impl Fn(u32) -> K) -> Result<usize> {
    let mut map: PerCpuHashMap<MapData, K, u64> =
        Map::from_map_data(MapData::from_id(id)?)?.try_into()?;
    let cpus = nr_cpus().map_err(|(what, e)| anyhow!("{what}: {e}"))?;
    let count = capacity.min(BLOCK_HOSTS);
    for i in 0..count {
        let value = PerCpuValues::try_from(vec![XDP_FILTER_FLAG_SRC; cpus])?;
        map.insert(key(i), value, 0)
            .with_context(|| format!("filling xdp-filter's map {id} (entry {i})"))?;
    }
    Ok(count as usize)
}

/// Makes sure bpffs is mounted (xdp-filter pins its maps there); says so when it mounts it.
fn ensure_bpffs() -> Result<()> {
    let kind = run(Command::new("stat").args(["-f", "-c", "%T", BPFFS]))?;
    if kind.trim() != "bpf_fs" {
        run(Command::new("mount").args(["-t", "bpf", "bpf", BPFFS]))?;
        eprintln!("note: mounted bpffs on {BPFFS} (xdp-filter pins its maps there); left mounted");
    }
    Ok(())
}

fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let mid = v.len() / 2;
    if v.len() % 2 == 1 {
        v[mid]
    } else {
        (v[mid - 1] + v[mid]) / 2.0
    }
}

fn min(values: &[f64]) -> f64 {
    values.iter().copied().fold(f64::INFINITY, f64::min)
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// One row of the results.
struct Row {
    path: Path,
    family: Family,
    ours: Vec<f64>,
    reference: Option<Vec<f64>>,
}

impl Row {
    fn ratio(&self) -> Option<f64> {
        self.reference
            .as_ref()
            .map(|r| median(&self.ours) / median(r))
    }

    fn meets_target(&self) -> bool {
        median(&self.ours) < MAX_NS && self.ratio().is_none_or(|r| r <= MAX_RATIO)
    }

    fn json(&self) -> Value {
        json!({
            "path": self.path.name(),
            "family": self.family.name(),
            "ours_ns": median(&self.ours),
            "ours_ns_min": min(&self.ours),
            "ours_ns_rounds": self.ours,
            "reference_ns": self.reference.as_deref().map(median),
            "reference_ns_min": self.reference.as_deref().map(min),
            "reference_ns_rounds": self.reference,
            "ratio": self.ratio().map(round3),
            "expected_action": if self.path.verdict().passes() { "pass" } else { "drop" },
            "meets_target": self.meets_target(),
        })
    }
}

fn print_table(rows: &[Row]) {
    println!(
        "{:<22} {:<6} {:>8} {:>6} {:>14} {:>6} {:>7}  target",
        "path", "family", "ours ns", "min", "xdp-filter ns", "min", "ratio"
    );
    for row in rows {
        let (reference, reference_min, ratio) = match (&row.reference, row.ratio()) {
            (Some(r), Some(ratio)) => (
                format!("{:.1}", median(r)),
                format!("{:.0}", min(r)),
                format!("{ratio:.2}"),
            ),
            _ => ("n/a".into(), "".into(), "n/a".into()),
        };
        println!(
            "{:<22} {:<6} {:>8.1} {:>6.0} {:>14} {:>6} {:>7}  {}",
            row.path.name(),
            row.family.name(),
            median(&row.ours),
            min(&row.ours),
            reference,
            reference_min,
            ratio,
            if row.meets_target() { "met" } else { "MISSED" }
        );
    }
}

fn main() -> Result<()> {
    let opts = Options::parse();
    catch_signals();
    let repeat = opts
        .repeat
        .unwrap_or(if opts.quick { QUICK_REPEAT } else { MIN_REPEAT });
    ensure!(
        opts.quick || repeat >= MIN_REPEAT,
        "--repeat {repeat} is below {MIN_REPEAT} (allowed only with --quick)"
    );
    ensure!(repeat > 0, "--repeat must be at least 1");
    ensure!(
        unsafe { libc::geteuid() } == 0,
        "xdp-bench loads XDP programs and creates a network namespace: run it as root"
    );
    let kernel_release = fs::read_to_string("/proc/sys/kernel/osrelease")
        .context("reading the kernel release")?
        .trim()
        .to_string();
    for family in FAMILIES {
        for path in PATHS {
            let frame = family.frame(path.source(family));
            ensure!(
                frame.len() == FRAME_BYTES,
                "{path} {} frame is {} bytes",
                family.name(),
                frame.len()
            );
        }
    }

    let mut ours = Ours::load()?;
    let reference = ensure_bpffs().and_then(|()| XdpFilter::load());
    let reference_error = reference.as_ref().err().map(|e| format!("{e:#}"));
    if let Some(e) = &reference_error {
        eprintln!("error: the reference cannot be measured: {e}");
    }
    let reference = reference.ok();

    // A short pass over every path first, so a wrong verdict fails in seconds.
    for family in FAMILIES {
        for path in PATHS {
            ours.measure(path, family, 1_000)?;
        }
        if let Some(r) = &reference {
            for path in [RefPath::Pass, RefPath::Blocked] {
                r.measure(path, family, 1_000)?;
            }
        }
    }

    let mut rows: Vec<Row> = FAMILIES
        .iter()
        .flat_map(|family| {
            PATHS.iter().map(|path| Row {
                path: *path,
                family: *family,
                ours: Vec::new(),
                reference: None,
            })
        })
        .collect();
    eprintln!(
        "measuring {} paths of ours and 4 of xdp-filter, {} rounds of {repeat} runs each",
        rows.len(),
        opts.rounds
    );
    for round in 1..=opts.rounds {
        let started = Instant::now();
        // The reference for (family, path) measured in this round, shared by the rows it serves.
        let mut measured: Vec<(Family, RefPath, f64)> = Vec::new();
        for row in rows.iter_mut() {
            row.ours.push(ours.measure(row.path, row.family, repeat)?);
            let (Some(r), Some(ref_path)) = (&reference, row.path.reference()) else {
                continue;
            };
            let ns = match measured
                .iter()
                .find(|(f, p, _)| *f == row.family && *p == ref_path)
            {
                Some((_, _, ns)) => *ns,
                None => {
                    let ns = r.measure(ref_path, row.family, repeat)?;
                    measured.push((row.family, ref_path, ns));
                    ns
                }
            };
            row.reference.get_or_insert_with(Vec::new).push(ns);
        }
        eprintln!(
            "round {round}/{}: {:.1} s",
            opts.rounds,
            started.elapsed().as_secs_f64()
        );
    }
    let reference_info = reference.as_ref().map(|r| {
        json!({
            "program": r.name,
            "blocked_sources": { "ipv4": r.blocked[0], "ipv6": r.blocked[1] },
        })
    });
    // Unload xdp-filter and delete its namespace now rather than at exit.
    drop(reference);

    print_table(&rows);
    let missed: Vec<String> = rows
        .iter()
        .filter(|r| !r.meets_target())
        .map(|r| format!("{} ({})", r.path.name(), r.family.name()))
        .collect();
    let xdp_tools = run(Command::new("dpkg-query").args(["-W", "-f=${Version}", "xdp-tools"])).ok();
    let results = json!({
        "bench": "xdp",
        "repeat": repeat,
        "rounds": opts.rounds,
        "quick": opts.quick,
        "kernel": kernel_release,
        "frame_bytes": FRAME_BYTES,
        "statistic": "median over rounds of the kernel's mean ns per run (BPF_PROG_TEST_RUN)",
        "paths": rows.iter().map(Row::json).collect::<Vec<_>>(),
        "targets": {
            "max_ns": MAX_NS,
            "max_ratio_to_reference": MAX_RATIO,
            "all_met": missed.is_empty(),
            "missed": missed,
        },
        "setup": {
            "per_family": {
                "blocklist_hosts": BLOCK_HOSTS,
                "blocklist_prefixes": BLOCK_NETS,
                "blocklist_prefix_len": { "ipv4": PREFIX4, "ipv6": PREFIX6 },
                "allowlist_hosts": ALLOW_HOSTS,
                "allowlist_prefixes": ALLOW_NETS,
                "tracked_sources": TRACKED,
            },
            "rate_state_entries": ours.rate_state_entries,
            "rate_limit": {
                "pass (rate limit off)": "off",
                "rate-limited": { "pps": RATE_LOW.pps, "burst": RATE_LOW.burst },
                "every other path": { "pps": RATE_HIGH.pps, "burst": RATE_HIGH.burst },
            },
        },
        "reference": {
            "tool": "xdp-filter",
            "xdp_tools_version": xdp_tools,
            "features": XDP_FILTER_FEATURES,
            "policy": "allow",
            "loaded": reference_info,
            "error": reference_error,
        },
    });
    if let Some(dir) = opts.out.parent().filter(|d| !d.as_os_str().is_empty()) {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let mut text = serde_json::to_string_pretty(&results)?;
    text.push('\n');
    fs::write(&opts.out, text).with_context(|| format!("writing {}", opts.out.display()))?;
    println!("wrote {}", opts.out.display());

    if let Some(e) = reference_error {
        bail!("the reference (xdp-filter) could not be measured: {e}");
    }
    if missed.is_empty() {
        println!(
            "all targets met: every path under {MAX_NS} ns, within {MAX_RATIO}x of xdp-filter"
        );
    } else {
        println!(
            "MISSED: {} (target: under {MAX_NS} ns per packet and within {MAX_RATIO}x of \
             xdp-filter where it has the path)",
            missed.join(", ")
        );
    }
    Ok(())
}
