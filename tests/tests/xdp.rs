//! The XDP layer in the real kernel: the real `gateway` daemon attached to a veth pair in
//! namespaces made here, real traffic from the client side, outcomes and counters asserted.
//! Run as root with `cargo xtask test` (one test at a time).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use integration_tests::{
    frames,
    harness::{xdp_attached, Daemon, Net, Setup, GW4, GW6},
};

fn v4(d: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(198, 18, 0, d))
}

fn v6(last: u16) -> IpAddr {
    IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, last))
}

/// A gateway attached to a fresh veth pair, with the given extra config.
fn start(xdp_keys: &str, extra: &str) -> (Net, Setup, Daemon) {
    let net = Net::new();
    let setup = Setup::new();
    let config = setup.write_config(&net.gw_if, xdp_keys, extra);
    let daemon = Daemon::start(&net.gw_ns, &setup, &config);
    (net, setup, daemon)
}

/// Bytes of a UDP datagram with `payload` bytes as XDP sees it (Ethernet included).
fn frame_len(from: IpAddr, payload: usize) -> u64 {
    (14 + if from.is_ipv4() { 20 } else { 40 } + 8 + payload) as u64
}

#[test]
fn blocked_hosts_and_networks_are_dropped_others_pass() {
    let (net, setup, daemon) = start("", "");
    assert!(xdp_attached(&net.gw_ns, &net.gw_if));
    assert!(
        daemon.log_text().contains("mode=\"native\"") || daemon.log_text().contains("native"),
        "{}",
        daemon.log_text()
    );
    let sources = [
        v4(2),
        v4(3),
        v4(17),
        v4(40),
        v6(2),
        v6(3),
        v6(0x105),
        v6(0x200),
    ];
    for s in &sources[1..] {
        if *s != v6(2) {
            net.add_client_addr(*s);
        }
    }
    setup.ok(&["block", "add", "198.18.0.3", "--reason", "host"]);
    setup.ok(&[
        "block",
        "add",
        "198.18.0.16/28",
        "2001:db8::3",
        "2001:db8::100/120",
    ]);
    let listed = setup.listed("block");
    assert_eq!(
        listed,
        [
            "198.18.0.3",
            "198.18.0.16/28",
            "2001:db8::3",
            "2001:db8::100/120"
        ]
    );
    let rx = net.receiver(5001);
    let (dropped0, bytes0) = setup.verdict("dropped_blocklist");
    const N: usize = 50;
    for s in sources {
        net.send(s, 5001, N, 100);
    }
    let got = rx.collect();
    for pass in [v4(2), v4(40), v6(2), v6(0x200)] {
        assert_eq!(got.get(&pass), Some(&N), "{pass} should pass: {got:?}");
    }
    for blocked in [v4(3), v4(17), v6(3), v6(0x105)] {
        assert_eq!(
            got.get(&blocked),
            None,
            "{blocked} should be dropped: {got:?}"
        );
    }
    let (dropped, bytes) = setup.verdict("dropped_blocklist");
    assert_eq!(
        dropped - dropped0,
        4 * N as u64,
        "dropped_blocklist counts every blocked packet"
    );
    let expected_bytes: u64 = [v4(3), v4(17), v6(3), v6(0x105)]
        .iter()
        .map(|s| frame_len(*s, 100) * N as u64)
        .sum();
    assert_eq!(bytes - bytes0, expected_bytes);
    assert!(setup.verdict("passed").0 >= 4 * N as u64);

    // Live removal: the host passes again at once.
    setup.ok(&["block", "rm", "198.18.0.3"]);
    setup.ok(&["block", "rm", "2001:db8::100/120"]);
    net.send(v4(3), 5001, N, 10);
    net.send(v6(0x105), 5001, N, 10);
    let got = rx.collect();
    assert_eq!(got.get(&v4(3)), Some(&N), "{got:?}");
    assert_eq!(got.get(&v6(0x105)), Some(&N), "{got:?}");
    // Clearing the list lets everyone through.
    assert!(setup.ok(&["block", "clear"]).contains("2 removed"));
    net.send(v4(17), 5001, N, 10);
    assert_eq!(rx.collect().get(&v4(17)), Some(&N));
    assert!(setup.listed("block").is_empty());
    // SIGTERM leaves the pinned program enforcing; `gateway detach` takes it off.
    assert!(daemon.stop().success());
    assert!(
        xdp_attached(&net.gw_ns, &net.gw_if),
        "pinned program detached by SIGTERM"
    );
    let pin_dir = setup.pin_dir();
    setup.ok(&["detach", "--pin-dir", pin_dir.to_str().unwrap()]);
    assert!(!xdp_attached(&net.gw_ns, &net.gw_if));
}

#[test]
fn allowlisted_sources_bypass_blocklist_and_rate_limit() {
    let (net, setup, _daemon) = start("", "[xdp.ratelimit]\npps = 10\nburst = 5\n");
    for s in [v4(4), v4(5), v6(4)] {
        net.add_client_addr(s);
    }
    setup.ok(&["block", "add", "198.18.0.0/24", "2001:db8::/64"]);
    let out = setup.ok(&[
        "allow",
        "add",
        "198.18.0.4",
        "2001:db8::4",
        "--reason",
        "monitoring",
    ]);
    assert!(
        out.contains("also on the blocklist") || out.contains("added"),
        "{out}"
    );
    let rx = net.receiver(5002);
    let (allowed0, _) = setup.verdict("allowlisted");
    const N: usize = 300;
    net.send(v4(4), 5002, N, 20);
    net.send(v6(4), 5002, N, 20);
    net.send(v4(5), 5002, 20, 20);
    let got = rx.collect();
    assert_eq!(
        got.get(&v4(4)),
        Some(&N),
        "allowlisted IPv4 source limited or blocked: {got:?}"
    );
    assert_eq!(
        got.get(&v6(4)),
        Some(&N),
        "allowlisted IPv6 source limited or blocked: {got:?}"
    );
    assert_eq!(got.get(&v4(5)), None, "blocked neighbour passed: {got:?}");
    assert_eq!(setup.verdict("allowlisted").0 - allowed0, 2 * N as u64);
    // Off the allowlist, the same source is blocked again.
    setup.ok(&["allow", "rm", "198.18.0.4"]);
    net.send(v4(4), 5002, 10, 20);
    assert_eq!(rx.collect().get(&v4(4)), None);
    assert_eq!(setup.listed("allow"), ["2001:db8::4"]);
}

#[test]
fn a_flooding_source_gets_about_its_rate() {
    let (net, setup, _daemon) = start("", "[xdp.ratelimit]\npps = 200\nburst = 20\n");
    for s in [v4(6), v4(7), v6(6)] {
        net.add_client_addr(s);
    }
    let rx = net.receiver(5003);
    let (limited0, _) = setup.verdict("dropped_ratelimit");
    // Two seconds at about 2,000 packets/s from .6 and ::6 each: ten times the rate.
    let flood = |from: IpAddr| {
        let socket = net.sender(from);
        let to = std::net::SocketAddr::new(
            if from.is_ipv4() {
                GW4.into()
            } else {
                GW6.into()
            },
            5003,
        );
        let start = std::time::Instant::now();
        let mut sent = 0usize;
        while start.elapsed() < std::time::Duration::from_secs(2) {
            for _ in 0..20 {
                integration_tests::harness::send_retrying(&socket, b"flood", to);
                sent += 1;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        (sent, start.elapsed().as_secs_f64())
    };
    let (sent4, secs4) = flood(v4(6));
    let (sent6, secs6) = flood(v6(6));
    // A quiet source next to the flood is untouched.
    net.send(v4(7), 5003, 10, 10);
    let got = rx.collect();
    for (src, sent, secs) in [(v4(6), sent4, secs4), (v6(6), sent6, secs6)] {
        let expected = 20.0 + 200.0 * secs;
        let received = *got.get(&src).unwrap_or(&0) as f64;
        assert!(
            sent as f64 > 3.0 * expected,
            "the flood was too slow to test anything: {sent}"
        );
        assert!(
            received > 0.5 * expected && received < 1.5 * expected,
            "{src}: received {received} of {sent} in {secs:.2}s, expected about {expected:.0}"
        );
    }
    assert_eq!(got.get(&v4(7)), Some(&10), "{got:?}");
    let limited = setup.verdict("dropped_ratelimit").0 - limited0;
    let received: usize = got.get(&v4(6)).unwrap_or(&0) + got.get(&v6(6)).unwrap_or(&0);
    assert_eq!(
        limited as usize + received,
        sent4 + sent6,
        "every flood packet is either passed or counted as rate-limited"
    );

    // Runtime change, no reload: off.
    setup.ok(&["ratelimit", "set", "--pps", "0"]);
    net.send(v4(6), 5003, 500, 10);
    assert_eq!(rx.collect().get(&v4(6)), Some(&500));
    let rate: serde_json::Value =
        serde_json::from_str(&setup.ok(&["ratelimit", "show", "--json"])).unwrap();
    assert_eq!(rate["enabled"], false);
    assert_eq!(rate["source"], "override");
    // A /24 key: .6 and .7 share one bucket of burst 5.
    setup.ok(&[
        "ratelimit",
        "set",
        "--pps",
        "1",
        "--burst",
        "5",
        "--prefix4",
        "24",
    ]);
    net.send(v4(6), 5003, 5, 10);
    net.send(v4(7), 5003, 5, 10);
    let got = rx.collect();
    let shared = got.get(&v4(6)).unwrap_or(&0) + got.get(&v4(7)).unwrap_or(&0);
    assert!(
        (5..=6).contains(&shared),
        "a /24 key should let about 5 through in total: {got:?}"
    );
    setup.ok(&["ratelimit", "reset"]);
    let rate: serde_json::Value =
        serde_json::from_str(&setup.ok(&["ratelimit", "show", "--json"])).unwrap();
    assert_eq!(
        (rate["pps"].as_u64(), rate["source"].as_str()),
        (Some(200), Some("config"))
    );
}

#[test]
fn vlan_tagged_frames_are_checked_and_malformed_frames_dropped() {
    let (net, setup, _daemon) = start("", "");
    setup.ok(&[
        "block",
        "add",
        "198.18.10.66",
        "198.18.30.0/25",
        "2001:db8:10::66",
        "2001:db8:30::/96",
    ]);
    // What XDP passes reaches a packet tap on the gateway side; what it drops never does.
    let tap = net.tap();
    let raw = net.raw();
    let (d, s) = (net.gw_mac, net.cl_mac);
    let q = |vid| (frames::ETH_P_8021Q, vid);
    let ad = |vid| (frames::ETH_P_8021AD, vid);
    let qinq1 = |vid| (0x9100u16, vid);
    let ip4 = |a: &str| a.parse::<Ipv4Addr>().unwrap();
    let ip6 = |a: &str| a.parse::<Ipv6Addr>().unwrap();
    // (frame, passes); each payload is a unique marker to find the frame at the tap.
    let mut cases: Vec<(Vec<u8>, bool)> = Vec::new();
    let tag_sets: [&[(u16, u16)]; 4] = [
        &[q(10)],
        &[ad(20), q(30)],
        &[qinq1(20), q(30)],
        &[q(10), q(11)],
    ];
    for tags in tag_sets {
        for (src, passes) in [
            ("198.18.10.7", true),
            ("198.18.10.66", false),
            ("198.18.30.200", true),
            ("198.18.30.9", false),
        ] {
            let marker = format!("gw-vlan-case-{}", cases.len());
            cases.push((
                frames::udp4_frame(
                    d,
                    s,
                    tags,
                    ip4(src),
                    ip4("198.18.0.1"),
                    9,
                    marker.as_bytes(),
                ),
                passes,
            ));
        }
        for (src, passes) in [
            ("2001:db8:10::7", true),
            ("2001:db8:10::66", false),
            ("2001:db8:30:1::7", true),
            ("2001:db8:30::7", false),
        ] {
            let marker = format!("gw-vlan-case-{}", cases.len());
            cases.push((
                frames::udp6_frame(
                    d,
                    s,
                    tags,
                    ip6(src),
                    ip6("2001:db8::1"),
                    9,
                    marker.as_bytes(),
                ),
                passes,
            ));
        }
    }
    let (blocked0, _) = setup.verdict("dropped_blocklist");
    let (malformed0, malformed_bytes0) = setup.verdict("malformed");
    const N: usize = 10;
    for (frame, _) in &cases {
        for _ in 0..N {
            raw.send(frame);
        }
    }
    let bad = frames::malformed(d, s, ip4("198.18.0.2"), ip6("2001:db8::2"));
    for (_, frame) in &bad {
        for _ in 0..N {
            raw.send(frame);
        }
    }
    let seen = tap.receive_all();
    let contains = |frame: &[u8], marker: &[u8]| frame.windows(marker.len()).any(|w| w == marker);
    for (i, (_, passes)) in cases.iter().enumerate() {
        // The marker ends the frame, so case-1 does not match case-11.
        let marker = format!("gw-vlan-case-{i}");
        let arrived = seen
            .iter()
            .filter(|f| f.ends_with(marker.as_bytes()))
            .count();
        let expected = if *passes { N } else { 0 };
        assert_eq!(
            arrived, expected,
            "case {i} (passes: {passes}) arrived {arrived} times"
        );
    }
    let blocked = cases.iter().filter(|c| !c.1).count();
    assert_eq!(
        setup.verdict("dropped_blocklist").0 - blocked0,
        (blocked * N) as u64,
        "tagged blocked sources"
    );
    let (malformed, malformed_bytes) = setup.verdict("malformed");
    let names: Vec<&str> = bad.iter().map(|b| b.0).collect();
    assert_eq!(
        malformed - malformed0,
        (bad.len() * N) as u64,
        "every malformed frame is counted: {names:?}"
    );
    let bytes: usize = bad.iter().map(|(_, f)| f.len() * N).sum();
    assert_eq!(malformed_bytes - malformed_bytes0, bytes as u64);
    for (name, frame) in &bad {
        let tail = &frame[frame.len().saturating_sub(12)..];
        assert!(
            !seen
                .iter()
                .any(|f| f == frame || (f.len() == frame.len() && f.ends_with(tail))),
            "malformed frame passed: {name}"
        );
    }
    // Not IP (LLDP) passes untouched and is counted as passed.
    let (passed0, _) = setup.verdict("passed");
    let mut lldp = frames::ethernet(d, s, &[], 0x88cc);
    lldp.extend_from_slice(b"gw-lldp-marker");
    lldp.resize(60, 0);
    for _ in 0..N {
        raw.send(&lldp);
    }
    let seen = tap.receive_all();
    assert_eq!(
        seen.iter()
            .filter(|f| contains(f, b"gw-lldp-marker"))
            .count(),
        N
    );
    assert!(setup.verdict("passed").0 - passed0 >= N as u64);
}

#[test]
fn changes_survive_restart_and_crash_and_ttls_expire() {
    let net = Net::new();
    let setup = Setup::new();
    let config = setup.write_config(&net.gw_if, "", "");
    for s in [v4(8), v4(9)] {
        net.add_client_addr(s);
    }
    let daemon = Daemon::start(&net.gw_ns, &setup, &config);
    setup.ok(&["block", "add", "198.18.0.8", "--reason", "permanent"]);
    setup.ok(&[
        "block",
        "add",
        "198.18.0.9",
        "--ttl",
        "4s",
        "--reason",
        "short",
    ]);
    setup.ok(&["allow", "add", "2001:db8::77"]);
    setup.ok(&["ratelimit", "set", "--pps", "1000", "--burst", "50"]);
    // The state file is written before the CLI returns.
    let state = std::fs::read_to_string(setup.state_dir().join("lists.json")).unwrap();
    assert!(
        state.contains("198.18.0.8/32") && state.contains("198.18.0.9/32"),
        "{state}"
    );
    assert!(daemon.stop().success());

    // Restart: everything is back and enforced.
    let daemon = Daemon::start(&net.gw_ns, &setup, &config);
    let entries = setup.list("block");
    assert_eq!(entries.len(), 2, "{entries:?}");
    let short = entries
        .iter()
        .find(|e| e["net"] == "198.18.0.9")
        .expect("ttl entry survived");
    assert_eq!(short["reason"], "short");
    assert!(short["expires_in_s"].as_u64().unwrap() <= 4);
    assert_eq!(setup.listed("allow"), ["2001:db8::77"]);
    let rate: serde_json::Value =
        serde_json::from_str(&setup.ok(&["ratelimit", "show", "--json"])).unwrap();
    assert_eq!(
        (rate["pps"].as_u64(), rate["source"].as_str()),
        (Some(1000), Some("override"))
    );
    let rx = net.receiver(5005);
    net.send(v4(8), 5005, 10, 10);
    assert_eq!(
        rx.collect().get(&v4(8)),
        None,
        "blocked entry not enforced after restart"
    );

    // Crash: SIGKILL. Nothing acknowledged is lost.
    setup.ok(&["block", "add", "198.18.0.99"]);
    daemon.kill();
    let daemon = Daemon::start(&net.gw_ns, &setup, &config);
    assert!(setup.listed("block").contains(&"198.18.0.99".to_string()));

    // The TTL runs out (across the restarts above) and the source passes again.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    while setup.listed("block").contains(&"198.18.0.9".to_string()) {
        assert!(
            std::time::Instant::now() < deadline,
            "TTL entry did not expire"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    net.send(v4(9), 5005, 10, 10);
    net.send(v4(8), 5005, 10, 10);
    let got = rx.collect();
    assert_eq!(got.get(&v4(9)), Some(&10), "{got:?}");
    assert_eq!(got.get(&v4(8)), None, "{got:?}");
    assert!(daemon.log_text().contains("entry expired"));
    drop(daemon);

    // Entries that expire while the daemon is down are gone when it comes back.
    let daemon = Daemon::start(&net.gw_ns, &setup, &config);
    setup.ok(&["block", "add", "198.18.0.50", "--ttl", "1s"]);
    daemon.stop();
    std::thread::sleep(std::time::Duration::from_millis(1500));
    let _daemon = Daemon::start(&net.gw_ns, &setup, &config);
    assert!(!setup.listed("block").contains(&"198.18.0.50".to_string()));
}

#[test]
fn bad_input_gets_one_line_errors_and_changes_nothing() {
    let (net, setup, daemon) = start("blocklist_v4_capacity = 3\nblocklist_v6_capacity = 2\n", "");
    setup.ok(&["block", "add", "198.18.0.10", "--reason", "keep"]);
    let before = std::fs::read(setup.state_dir().join("lists.json")).unwrap();
    let cases: &[(&[&str], &str)] = &[
        (&["block", "add", "198.18.0.300"], "not an IPv4 or IPv6"),
        (&["block", "add", "example.com"], "not an IPv4 or IPv6"),
        (&["block", "add", "10.1.2.3/8"], "did you mean 10.0.0.0/8"),
        (
            &["block", "add", "2001:db8::1/32"],
            "did you mean 2001:db8::/32",
        ),
        (&["block", "add", "10.0.0.0/33"], "prefix length"),
        (&["block", "add", "198.18.0.11", "10.0.0.1/8"], "host bits"),
        (&["block", "rm", "198.18.0.12"], "not in the blocklist"),
        (
            &["block", "rm", "198.18.0.10", "198.18.0.12"],
            "not in the blocklist",
        ),
        (&["allow", "rm", "2001:db8::9"], "not in the allowlist"),
        (
            &["block", "add", "198.18.0.20", "198.18.0.21", "198.18.0.22"],
            "blocklist full",
        ),
        (
            &[
                "block",
                "add",
                "2001:db8::20",
                "2001:db8::21",
                "2001:db8::/48",
            ],
            "blocklist full",
        ),
        (
            &["block", "add", "198.18.0.20", "--reason", "a\u{7}b"],
            "control characters",
        ),
        (&["ratelimit", "set", "--pps", "2000000000"], "pps"),
    ];
    for (args, expect) in cases {
        let err = setup.fails(args);
        assert!(err.contains(expect), "gateway {}: {err}", args.join(" "));
    }
    // Usage errors (clap) exit with 2 and change nothing either.
    for args in [
        &["block", "add", "198.18.0.20", "--ttl", "soon"][..],
        &["block", "add", "198.18.0.20", "--ttl", "0s"],
        &["block", "add", "198.18.0.20", "--ttl", "-5m"],
        &["ratelimit", "set", "--pps", "10", "--prefix4", "33"],
        &["block", "add"],
        &["block", "frobnicate"],
    ] {
        let out = setup.cli(args);
        assert_eq!(
            out.status.code(),
            Some(2),
            "gateway {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // A bad import line: reported with its number, nothing applied.
    let feed = setup.dir.path().join("feed.txt");
    std::fs::write(
        &feed,
        "# feed\n198.18.0.30\n198.18.0.31 ; fine\n\n198.18.0.32/24\n",
    )
    .unwrap();
    let err = setup.fails(&["block", "import", feed.to_str().unwrap()]);
    assert!(
        err.contains("feed.txt:5:") && err.contains("nothing was imported"),
        "{err}"
    );
    let err = setup.fails(&["block", "import", "/nonexistent/feed"]);
    assert!(err.contains("/nonexistent/feed"), "{err}");
    assert_eq!(setup.listed("block"), ["198.18.0.10"]);
    assert_eq!(
        std::fs::read(setup.state_dir().join("lists.json")).unwrap(),
        before,
        "state file changed"
    );
    // A good import works and reports what it did.
    std::fs::write(&feed, "# feed\n198.18.0.30\n198.18.0.31 ; fine\n\n").unwrap();
    let out = setup.ok(&[
        "block",
        "import",
        feed.to_str().unwrap(),
        "--reason",
        "feed",
    ]);
    assert!(out.contains("2 added"), "{out}");

    // The daemon not running: a clear error.
    let gone = Setup::new();
    let err = gone.fails(&["block", "list"]);
    assert!(err.contains("not running"), "{err}");

    // A second daemon on the same socket refuses to start.
    let config = setup.dir.path().join("gateway.toml");
    let (code, log) = Daemon::start_fails(&net.gw_ns, &config);
    assert_eq!(code, Some(1), "{log}");
    assert!(log.contains("another gateway daemon is running"), "{log}");
    drop(daemon);

    // A corrupt state file stops the daemon from starting with empty lists.
    std::fs::write(
        setup.state_dir().join("lists.json"),
        "{\"version\":1,\"block\":[",
    )
    .unwrap();
    let (code, log) = Daemon::start_fails(&net.gw_ns, &config);
    assert_eq!(code, Some(1), "{log}");
    assert!(log.contains("corrupt"), "{log}");
    // The program the last daemon pinned keeps enforcing meanwhile.
    assert!(xdp_attached(&net.gw_ns, &net.gw_if));

    // Config errors name file, line and key.
    std::fs::write(
        &config,
        "[xdp]\ninterface = \"eth0\"\n[xdp.ratelimit]\npps = 10\nprefix6 = 129\n",
    )
    .unwrap();
    let out = setup.cli(&["check-config", config.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        err.contains("gateway.toml:5: xdp.ratelimit.prefix6"),
        "{err}"
    );
    let pins = setup.pin_dir();
    setup.ok(&["detach", "--pin-dir", pins.to_str().unwrap()]);
    std::fs::write(
        &config,
        format!(
            "[xdp]\ninterface = \"nosuchdev0\"\npin_dir = \"{}\"\n",
            pins.display()
        ),
    )
    .unwrap();
    let (code, log) = Daemon::start_fails(&net.gw_ns, &config);
    assert_eq!(code, Some(1), "{log}");
    assert!(log.contains("nosuchdev0"), "{log}");
    // A daemon that never attached leaves no pinned maps behind.
    assert!(!pins.exists(), "pins left by a failed start");
}

#[test]
fn falls_back_to_skb_mode_without_driver_support() {
    let net = Net::new();
    // Loopback has no native XDP (this kernel has neither the dummy nor the vlan driver).
    let setup = Setup::new();
    let config = setup.write_config("lo", "", "");
    let daemon = Daemon::start(&net.gw_ns, &setup, &config);
    let log = daemon.log_text();
    assert!(log.contains("falling back to skb"), "{log}");
    let stats = setup.stats();
    assert_eq!(stats["xdp"]["mode"], "skb");
    // Native only: a clear failure. First with the skb link still pinned: its mode cannot
    // change without detaching.
    let config = setup.write_config("lo", "mode = \"native\"\n", "");
    drop(daemon);
    let (code, log) = Daemon::start_fails(&net.gw_ns, &config);
    assert_eq!(code, Some(1), "{log}");
    assert!(
        log.contains("runs in skb mode but xdp.mode asks for native mode")
            && log.contains("gateway detach"),
        "{log}"
    );
    assert!(xdp_attached(&net.gw_ns, "lo"), "the pinned link stays");
    setup.ok(&["detach", "--config", config.to_str().unwrap()]);
    assert!(!xdp_attached(&net.gw_ns, "lo"));
    let (code, log) = Daemon::start_fails(&net.gw_ns, &config);
    assert_eq!(code, Some(1), "{log}");
    assert!(log.contains("native mode"), "{log}");
}

#[test]
fn a_million_line_feed_imports_and_empties_in_seconds() {
    let (net, setup, _daemon) = start("", "");
    net.add_client_addr(v4(2));
    // 1,000,000 entries: 900,000 IPv4 hosts in 10.0.0.0/8 and 100,000 /24 networks in 11/8 and
    // 12/8, plus the test source, as a feed with comments.
    let feed = setup.dir.path().join("big-feed.txt");
    let mut text = String::with_capacity(20_000_000);
    text.push_str("# generated feed\n");
    for i in 0..900_000u32 {
        let [_, b, c, d] = (0x0a00_0000 + i).to_be_bytes();
        text.push_str(&format!("10.{b}.{c}.{d}\n"));
    }
    for i in 0..99_999u32 {
        let [_, b, c, _] = (0x0b00_0000 + (i << 8)).to_be_bytes();
        text.push_str(&format!("{}.{b}.{c}.0/24 ; net\n", 11 + (i >> 16)));
    }
    text.push_str("198.18.0.2\n");
    std::fs::write(&feed, text).unwrap();
    let start = std::time::Instant::now();
    let out = setup.ok(&["block", "import", feed.to_str().unwrap()]);
    let import = start.elapsed();
    assert!(out.contains("1000000 added"), "{out}");
    let stats = setup.stats();
    assert_eq!(stats["lists"]["block"]["v4"], 1_000_000);
    let rx = net.receiver(5006);
    net.send(v4(2), 5006, 10, 10);
    assert_eq!(
        rx.collect().get(&v4(2)),
        None,
        "the feed's last entry is not enforced"
    );
    let start = std::time::Instant::now();
    setup.ok(&["block", "clear"]);
    let clear = start.elapsed();
    net.send(v4(2), 5006, 10, 10);
    assert_eq!(rx.collect().get(&v4(2)), Some(&10));
    eprintln!("1,000,000-line import: {import:?}; clear: {clear:?}");
    // Generous bounds: the issue asks for well under 10 s; the benchmark measures precisely.
    assert!(
        import.as_secs() < 60 && clear.as_secs() < 60,
        "import {import:?}, clear {clear:?}"
    );
}

#[test]
fn kernel_side_log_records_reach_the_daemon_log() {
    let (net, _setup, daemon) = start("log_level = \"debug\"\n", "");
    let raw = net.raw();
    let bad = frames::malformed(
        net.gw_mac,
        net.cl_mac,
        "198.18.0.2".parse().unwrap(),
        "2001:db8::2".parse().unwrap(),
    );
    raw.send(&bad[0].1);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !daemon.log_text().contains("malformed frame") {
        assert!(
            std::time::Instant::now() < deadline,
            "no kernel log record in:\n{}",
            daemon.log_text()
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}
