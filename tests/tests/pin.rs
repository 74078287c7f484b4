//! Crash safety and zero-downtime restarts: the XDP link and maps pinned on bpffs keep
//! enforcing while no daemon runs, and the next daemon adopts them without a gap. Real kernel,
//! real XDP on a veth pair in namespaces made here, real packets. Run as root with
//! `cargo xtask test` (one test at a time).

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    path::Path,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    thread,
    time::{Duration, Instant},
};

use integration_tests::harness::{send_retrying, sh, xdp_attached, Daemon, Net, Setup, GW4};

fn v4(d: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(198, 18, 0, d))
}

fn v6(last: u16) -> IpAddr {
    IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, last))
}

/// Sends from each of `sources` to the gateway's IPv4 address, one datagram per source every
/// millisecond, until dropped; then says how many each sent.
struct Stream {
    stop: Arc<AtomicBool>,
    handle: Option<thread::JoinHandle<Vec<usize>>>,
}

impl Stream {
    fn start(net: &Net, sources: &[IpAddr], port: u16) -> Stream {
        let sockets: Vec<_> = sources.iter().map(|s| net.sender(*s)).collect();
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let handle = thread::spawn(move || {
            let mut sent = vec![0usize; sockets.len()];
            let to = SocketAddr::new(GW4.into(), port);
            // Bounded: at most two minutes, whatever the test does.
            let deadline = Instant::now() + Duration::from_secs(120);
            while !flag.load(Ordering::Relaxed) && Instant::now() < deadline {
                for (socket, n) in sockets.iter().zip(sent.iter_mut()) {
                    send_retrying(socket, b"during-restart", to);
                    *n += 1;
                }
                thread::sleep(Duration::from_millis(1));
            }
            sent
        });
        Stream {
            stop,
            handle: Some(handle),
        }
    }

    fn finish(mut self) -> Vec<usize> {
        self.stop.store(true, Ordering::Relaxed);
        self.handle
            .take()
            .expect("running")
            .join()
            .expect("sender thread")
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(handle) = self.handle.take() {
            let _ = handle.join();
        }
    }
}

/// max_entries of a pinned map, as bpftool reports it.
fn max_entries(pin: &Path) -> u64 {
    let out = sh(
        "bpftool",
        &["-j", "map", "show", "pinned", pin.to_str().unwrap()],
    );
    let v: serde_json::Value = serde_json::from_str(&out).expect("bpftool json");
    v["max_entries"].as_u64().expect("max_entries")
}

#[test]
fn sigkill_keeps_blocked_sources_blocked_and_a_restart_adopts_without_a_gap() {
    let net = Net::new();
    let setup = Setup::new();
    let config = setup.write_config(&net.gw_if, "", "");
    for s in [v4(3), v4(5), v4(9), v4(20), v6(3)] {
        net.add_client_addr(s);
    }
    let daemon = Daemon::start(&net.gw_ns, &setup, &config);
    setup.ok(&[
        "block",
        "add",
        "198.18.0.3",
        "198.18.0.16/28",
        "2001:db8::3",
    ]);
    setup.ok(&["block", "add", "198.18.0.9", "--ttl", "2s"]);
    // The control source: allowlisted, so it passes whatever else happens.
    setup.ok(&["allow", "add", "198.18.0.2"]);
    let pins = setup.pin_dir();
    assert!(pins.join("link_native").exists(), "link not pinned");
    for map in [
        "LIST_TABLE",
        "LIST4",
        "LIST6",
        "RATE_STATE",
        "SETTINGS",
        "VERDICTS",
    ] {
        assert!(pins.join(map).exists(), "{map} not pinned");
    }
    let rx = net.receiver(5101);
    net.send(v4(3), 5101, 10, 10);
    let (dropped_before, _) = setup.verdict("dropped_blocklist");
    assert!(dropped_before >= 10);

    // A crash: nothing runs in userspace any more, the kernel still drops.
    daemon.kill();
    assert!(xdp_attached(&net.gw_ns, &net.gw_if), "detached by SIGKILL");
    thread::sleep(Duration::from_millis(2100));
    for s in [v4(3), v4(20), v6(3), v4(9), v4(2), v4(5)] {
        net.send(s, 5101, 20, 10);
    }
    let got = rx.collect();
    for blocked in [v4(3), v4(20), v6(3)] {
        assert_eq!(
            got.get(&blocked),
            None,
            "{blocked} passed with no daemon: {got:?}"
        );
    }
    // Nothing in userspace expires TTLs while no daemon runs: the kernel keeps the entry.
    assert_eq!(got.get(&v4(9)), None, "{got:?}");
    assert_eq!(got.get(&v4(2)), Some(&20), "{got:?}");
    assert_eq!(got.get(&v4(5)), Some(&20), "{got:?}");

    // While no daemon ran, the state file gained an entry the kernel lacks.
    let state_path = setup.state_dir().join("lists.json");
    let mut state: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&state_path).unwrap()).unwrap();
    let block = state["block"].as_array_mut().unwrap();
    let mut extra = block[0].clone();
    extra["net"] = "198.18.0.5/32".into();
    block.push(extra);
    std::fs::write(&state_path, serde_json::to_vec(&state).unwrap()).unwrap();

    // The restart, with the blocked and the control source sending all along.
    let stream = Stream::start(&net, &[v4(3), v4(2)], 5101);
    thread::sleep(Duration::from_millis(200));
    let started = Instant::now();
    let daemon = Daemon::start(&net.gw_ns, &setup, &config);
    let restart = started.elapsed();
    thread::sleep(Duration::from_millis(200));
    let sent = stream.finish();
    let got = rx.collect();
    eprintln!("restart took {restart:?}; sent {sent:?} during it; received {got:?}");
    assert!(
        sent[0] > 100,
        "the stream was too slow to test anything: {sent:?}"
    );
    assert_eq!(
        got.get(&v4(3)),
        None,
        "the blocked source got through during the restart: {got:?}"
    );
    assert_eq!(
        got.get(&v4(2)),
        Some(&sent[1]),
        "the control source lost packets: {got:?}"
    );
    let log = daemon.log_text();
    assert!(
        log.contains("adopted the pinned XDP link"),
        "no adoption in the log:\n{log}"
    );
    assert!(
        log.contains("1 added") && log.contains("1 stale removed"),
        "reconciliation not in the log:\n{log}"
    );
    // The counters live in a pinned map too: nothing was lost.
    let (dropped_after, _) = setup.verdict("dropped_blocklist");
    assert!(
        dropped_after >= dropped_before + 20 * 4 + sent[0] as u64,
        "dropped_blocklist {dropped_before} -> {dropped_after}, expected at least {} more",
        80 + sent[0]
    );

    // Every entry is back: listed and enforced; the expired one is gone from both.
    let listed = setup.listed("block");
    assert_eq!(
        listed,
        ["198.18.0.3", "198.18.0.5", "198.18.0.16/28", "2001:db8::3"],
        "{listed:?}"
    );
    assert_eq!(setup.listed("allow"), ["198.18.0.2"]);
    for s in [v4(3), v4(5), v4(20), v6(3), v4(9)] {
        net.send(s, 5101, 10, 10);
    }
    let got = rx.collect();
    for blocked in [v4(3), v4(5), v4(20), v6(3)] {
        assert_eq!(got.get(&blocked), None, "{blocked} passed: {got:?}");
    }
    assert_eq!(
        got.get(&v4(9)),
        Some(&10),
        "stale entry still enforced: {got:?}"
    );
    // And the daemon manages them as before.
    setup.ok(&["block", "rm", "198.18.0.3"]);
    net.send(v4(3), 5101, 10, 10);
    assert_eq!(rx.collect().get(&v4(3)), Some(&10));
}

#[test]
fn sigterm_leaves_the_program_enforcing_and_detach_removes_everything() {
    let net = Net::new();
    let setup = Setup::new();
    let config = setup.write_config(&net.gw_if, "", "[xdp.ratelimit]\npps = 10\nburst = 10\n");
    net.add_client_addr(v4(3));
    net.add_client_addr(v4(6));
    let daemon = Daemon::start(&net.gw_ns, &setup, &config);
    setup.ok(&["block", "add", "198.18.0.3"]);
    setup.ok(&["allow", "add", "198.18.0.2"]);
    assert!(daemon.stop().success());
    assert!(xdp_attached(&net.gw_ns, &net.gw_if), "detached by SIGTERM");
    let rx = net.receiver(5102);
    net.send(v4(3), 5102, 10, 10);
    net.send(v4(2), 5102, 10, 10);
    // The rate limit is enforced too: 200 at once from a flooder, about the burst passes.
    net.send(v4(6), 5102, 200, 10);
    let got = rx.collect();
    assert_eq!(got.get(&v4(3)), None, "{got:?}");
    assert_eq!(got.get(&v4(2)), Some(&10), "{got:?}");
    let flood = got.get(&v4(6)).copied().unwrap_or(0);
    assert!(
        (1..=30).contains(&flood),
        "rate limit not enforced: {got:?}"
    );

    // Without a daemon, detach works on the pins.
    let pins = setup.pin_dir();
    let out = setup.ok(&["detach", "--pin-dir", pins.to_str().unwrap()]);
    assert!(
        out.contains("XDP detached") && out.contains("map pins"),
        "{out}"
    );
    assert!(!xdp_attached(&net.gw_ns, &net.gw_if));
    assert!(!pins.exists(), "pins left behind");
    net.send(v4(3), 5102, 10, 10);
    assert_eq!(rx.collect().get(&v4(3)), Some(&10));
    let out = setup.ok(&["detach", "--pin-dir", pins.to_str().unwrap()]);
    assert!(out.contains("nothing was pinned"), "{out}");

    // With a daemon: it lets go of the program and serves on without XDP.
    let daemon = Daemon::start(&net.gw_ns, &setup, &config);
    assert!(xdp_attached(&net.gw_ns, &net.gw_if));
    assert!(setup.stats()["xdp"]["pinned"]
        .as_str()
        .is_some_and(|p| p.ends_with("link_native")));
    let out = setup.ok(&["detach", "--config", config.to_str().unwrap()]);
    assert!(
        out.contains("XDP detached from") && out.contains("keeps running without XDP"),
        "{out}"
    );
    assert!(!xdp_attached(&net.gw_ns, &net.gw_if));
    assert!(!pins.exists(), "pins left behind");
    assert!(setup.stats()["xdp"].is_null());
    assert_eq!(setup.listed("block"), ["198.18.0.3"], "the lists are kept");
    assert!(daemon.stop().success());
    assert!(!xdp_attached(&net.gw_ns, &net.gw_if));
    // A non-bpffs directory is refused, never emptied.
    let err = setup.fails(&["detach", "--pin-dir", setup.dir.path().to_str().unwrap()]);
    assert!(err.contains("not on a bpf filesystem"), "{err}");
    assert!(setup.dir.path().join("gateway.toml").exists());
}

#[test]
fn new_map_sizes_replace_the_maps_without_a_gap() {
    let net = Net::new();
    let setup = Setup::new();
    let small = "blocklist_v4_capacity = 1000\nblocklist_v6_capacity = 1000\nallowlist_v4_capacity = 100\nallowlist_v6_capacity = 100\nratelimit_sources = 1000\n";
    let config = setup.write_config(&net.gw_if, small, "");
    net.add_client_addr(v4(3));
    net.add_client_addr(v6(3));
    let daemon = Daemon::start(&net.gw_ns, &setup, &config);
    setup.ok(&["block", "add", "198.18.0.3", "2001:db8::3"]);
    setup.ok(&["allow", "add", "198.18.0.2"]);
    let table = setup.pin_dir().join("LIST_TABLE");
    let before = max_entries(&table);
    daemon.kill();

    let config = setup.write_config(&net.gw_if, &small.replace("1000", "100000"), "");
    let rx = net.receiver(5103);
    let stream = Stream::start(&net, &[v4(3), v4(2)], 5103);
    thread::sleep(Duration::from_millis(200));
    let daemon = Daemon::start(&net.gw_ns, &setup, &config);
    thread::sleep(Duration::from_millis(200));
    let sent = stream.finish();
    let got = rx.collect();
    assert!(sent[0] > 100, "{sent:?}");
    assert_eq!(got.get(&v4(3)), None, "blocked source passed: {got:?}");
    assert_eq!(got.get(&v4(2)), Some(&sent[1]), "{got:?}");
    let log = daemon.log_text();
    assert!(
        log.contains("do not fit this program and config")
            && log.contains("LIST_TABLE: pinned with")
            && log.contains("refilling them from the state file"),
        "no clear message in:\n{log}"
    );
    let after = max_entries(&table);
    assert!(after > before, "LIST_TABLE still has {before} entries");
    for s in [v4(3), v6(3)] {
        net.send(s, 5103, 10, 10);
    }
    let got = rx.collect();
    assert!(
        !got.contains_key(&v4(3)) && !got.contains_key(&v6(3)),
        "{got:?}"
    );
    // The same sizes again: adopted, nothing recreated.
    drop(daemon);
    let daemon = Daemon::start(&net.gw_ns, &setup, &config);
    let log = daemon.log_text();
    assert!(
        !log.contains("do not fit") && log.contains("3 keys kept"),
        "{log}"
    );
    assert_eq!(max_entries(&table), after);
}

#[test]
fn a_new_interface_gets_the_program_and_the_old_one_is_released() {
    let net = Net::new();
    let setup = Setup::new();
    let config = setup.write_config(&net.gw_if, "", "");
    let daemon = Daemon::start(&net.gw_ns, &setup, &config);
    setup.ok(&["block", "add", "198.18.0.3"]);
    drop(daemon);
    assert!(xdp_attached(&net.gw_ns, &net.gw_if));
    let config = setup.write_config("lo", "", "");
    let daemon = Daemon::start(&net.gw_ns, &setup, &config);
    assert!(xdp_attached(&net.gw_ns, "lo"));
    assert!(
        !xdp_attached(&net.gw_ns, &net.gw_if),
        "the old interface kept the program"
    );
    let log = daemon.log_text();
    assert!(log.contains("on another interface"), "{log}");
    let pins = setup.pin_dir();
    assert!(pins.join("link_skb").exists() && !pins.join("link_native").exists());
    assert_eq!(setup.listed("block"), ["198.18.0.3"]);
}

/// The capabilities the systemd unit grants (CapabilityBoundingSet of dist/gateway.service)
/// are enough: start, attach, pin, manage the lists, adopt after a crash.
#[test]
fn the_units_capabilities_are_enough() {
    let unit = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../dist/gateway.service"),
    )
    .expect("dist/gateway.service");
    let caps: Vec<String> = unit
        .lines()
        .find_map(|l| l.strip_prefix("CapabilityBoundingSet="))
        .expect("CapabilityBoundingSet in the unit")
        .split_whitespace()
        .map(|c| format!("+{}", c.trim_start_matches("CAP_").to_ascii_lowercase()))
        .collect();
    assert!(caps.contains(&"+bpf".to_string()), "{caps:?}");
    let bounding = format!("-all,{}", caps.join(","));
    let wrapper = [
        "setpriv",
        "--bounding-set",
        &bounding,
        "--inh-caps",
        "-all",
        "--",
    ];
    let net = Net::new();
    let setup = Setup::new();
    let config = setup.write_config(&net.gw_if, "", "");
    // As systemd does at boot: bpffs mounted, which the daemon could not do without
    // CAP_SYS_ADMIN.
    gateway::xdp::pin::prepare_dir(&setup.pin_dir()).expect("bpffs at /sys/fs/bpf");
    net.add_client_addr(v4(3));
    let daemon = Daemon::start_wrapped(&net.gw_ns, &setup, &config, &wrapper);
    let status = std::fs::read_to_string(format!("/proc/{}/status", daemon.pid())).unwrap();
    let eff = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .map(|v| u64::from_str_radix(v.trim(), 16).unwrap())
        .unwrap();
    const CAP_SYS_ADMIN: u32 = 21;
    assert_eq!(
        eff & (1 << CAP_SYS_ADMIN),
        0,
        "the daemon still has CAP_SYS_ADMIN"
    );
    setup.ok(&["block", "add", "198.18.0.3"]);
    daemon.kill();
    let daemon = Daemon::start_wrapped(&net.gw_ns, &setup, &config, &wrapper);
    assert!(daemon.log_text().contains("adopted the pinned XDP link"));
    let rx = net.receiver(5104);
    net.send(v4(3), 5104, 10, 10);
    net.send(v4(2), 5104, 10, 10);
    let got = rx.collect();
    assert_eq!(got.get(&v4(3)), None, "{got:?}");
    assert_eq!(got.get(&v4(2)), Some(&10), "{got:?}");
}

/// Reconciliation in the kernel itself, in-process: a list table of 4 buckets (16 slots), so
/// nearly every key sits in the overflow maps. A first load fills pinned maps with one set of
/// lists; a second load adopts them and reconciles with another; BPF_PROG_TEST_RUN then shows
/// the kernel enforcing exactly the second set, and emptying the lists leaves nothing behind.
#[test]
fn adoption_reconciles_table_and_overflow_keys_with_the_lists() {
    use aya::programs::{TestRun as _, TestRunOptions};
    use gateway::{config::XdpConfig, lists::Enforcer as _, lists::ListKind, xdp::Kernel};
    use integration_tests::frames;

    let setup = Setup::new();
    let config = XdpConfig {
        blocklist_v4_capacity: 1000,
        blocklist_v6_capacity: 1000,
        ratelimit_sources: 1000,
        pin_dir: setup.pin_dir(),
        ..XdpConfig::default()
    };
    let rate = gateway_common::Settings::default();
    // Deterministic nets of many lengths, overlapping inside 10.0.0.0/12 and 2001:db8::/44.
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    let mut rand = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let mut net = || {
        let r = rand();
        if r % 2 == 0 {
            let len = [8u8, 12, 16, 20, 23, 24, 28, 30, 32][(r >> 8) as usize % 9];
            let addr = Ipv4Addr::from(0x0a00_0000 | ((r >> 16) as u32 & 0x000f_ffff));
            ipnet::IpNet::V4(ipnet::Ipv4Net::new(addr, len).unwrap().trunc())
        } else {
            let len = [32u8, 44, 48, 56, 64, 65, 96, 128][(r >> 8) as usize % 8];
            let addr = Ipv6Addr::from(
                0x2001_0db8_u128 << 96 | u128::from((r >> 16) & 0xf_ffff) << 64 | u128::from(r),
            );
            ipnet::IpNet::V6(ipnet::Ipv6Net::new(addr, len).unwrap().trunc())
        }
    };
    let dedup = |v: Vec<ipnet::IpNet>| {
        let mut v = v;
        v.sort();
        v.dedup();
        v
    };
    let block_a = dedup((0..80).map(|_| net()).collect());
    let allow_a = dedup((0..10).map(|_| net()).collect());
    // The second set: half of each list kept, the rest new.
    let block_b = dedup(
        block_a[..40]
            .iter()
            .copied()
            .chain((0..40).map(|_| net()))
            .collect(),
    );
    let allow_b = dedup(
        allow_a[..5]
            .iter()
            .copied()
            .chain((0..5).map(|_| net()))
            .collect(),
    );

    let mut a = Kernel::load_pinned_with_list_buckets(&config, rate, 4).expect("load (root?)");
    a.fill(&allow_a, &block_a).unwrap();
    let (_, overflowed) = a.list_keys();
    assert!(overflowed > 50, "only {overflowed} keys overflowed");
    // Never attached: without this the unattached load would remove its pins on drop.
    a.keep_pins();
    drop(a);

    let mut b = Kernel::load_pinned_with_list_buckets(&config, rate, 4).expect("load (root?)");
    let summary = b.fill(&allow_b, &block_b).unwrap();
    assert!(
        summary.contains("reconciled")
            && !summary.contains(": 0 keys kept")
            && !summary.contains(", 0 added")
            && !summary.contains(", 0 stale removed"),
        "{summary}"
    );

    // Probes: the first and last address of every net of both sets.
    let probes: Vec<IpAddr> = block_a
        .iter()
        .chain(&allow_a)
        .chain(&block_b)
        .chain(&allow_b)
        .flat_map(|n| [n.network(), n.broadcast()])
        .collect();
    let frame = |src: IpAddr| match src {
        IpAddr::V4(a) => frames::udp4_frame(
            [2, 0, 0, 0, 0, 1],
            [2, 0, 0, 0, 0, 2],
            &[],
            a,
            Ipv4Addr::new(198, 18, 0, 1),
            9,
            b"x",
        ),
        IpAddr::V6(a) => frames::udp6_frame(
            [2, 0, 0, 0, 0, 1],
            [2, 0, 0, 0, 0, 2],
            &[],
            a,
            "2001:db8::1".parse().unwrap(),
            9,
            b"x",
        ),
    };
    let run = |k: &mut Kernel, src: IpAddr| {
        k.program_mut()
            .test_run(TestRunOptions {
                data_in: Some(&frame(src)),
                repeat: 1,
                ..TestRunOptions::default()
            })
            .expect("test run")
            .return_value
    };
    const XDP_DROP: u32 = 1;
    const XDP_PASS: u32 = 2;
    for src in &probes {
        let allowed = allow_b.iter().any(|n| n.contains(src));
        let blocked = block_b.iter().any(|n| n.contains(src));
        let expected = if blocked && !allowed {
            XDP_DROP
        } else {
            XDP_PASS
        };
        assert_eq!(
            run(&mut b, *src),
            expected,
            "{src}: allowed {allowed}, blocked {blocked}; {summary}"
        );
    }
    // Nothing stale: with both lists emptied, everything passes.
    b.remove(ListKind::Block, &block_b).unwrap();
    b.remove(ListKind::Allow, &allow_b).unwrap();
    assert_eq!(b.list_keys(), (0, 0));
    for src in &probes {
        assert_eq!(run(&mut b, *src), XDP_PASS, "{src} still listed");
    }
}
