//! The XDP program itself, run by the kernel on crafted frames with BPF_PROG_TEST_RUN: every
//! frame layout and every broken header, with the verdict and the counters checked.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use aya::programs::{TestRun as _, TestRunOptions};
use gateway::{
    config::{RateConfig, XdpConfig},
    lists::{Enforcer as _, ListKind},
    net::parse_net,
    xdp::Kernel,
};
use gateway_common::Verdict;
use integration_tests::frames::{self, ETH_P_8021AD, ETH_P_8021Q};

const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;
const D: [u8; 6] = [2, 0, 0, 0, 0, 1];
const S: [u8; 6] = [2, 0, 0, 0, 0, 2];

fn run(kernel: &mut Kernel, frame: &[u8]) -> u32 {
    kernel
        .program_mut()
        .test_run(TestRunOptions {
            data_in: Some(frame),
            repeat: 1,
            ..TestRunOptions::default()
        })
        .expect("test run")
        .return_value
}

/// Small capacities, so the tests load fast.
fn small_config() -> XdpConfig {
    XdpConfig {
        blocklist_v4_capacity: 1000,
        blocklist_v6_capacity: 1000,
        ratelimit_sources: 1000,
        ..XdpConfig::default()
    }
}

fn kernel() -> Kernel {
    Kernel::load(&small_config()).expect("load the XDP program (root?)")
}

fn nets(list: &[&str]) -> Vec<ipnet::IpNet> {
    list.iter().map(|n| parse_net(n).unwrap()).collect()
}

fn v4(a: &str) -> Ipv4Addr {
    a.parse().unwrap()
}

fn v6(a: &str) -> Ipv6Addr {
    a.parse().unwrap()
}

/// Every layout of a frame from `src`: untagged, 802.1Q, QinQ with both outer TPIDs.
fn layouts(src: IpAddr) -> Vec<Vec<u8>> {
    let tag_sets: [&[(u16, u16)]; 5] = [
        &[],
        &[(ETH_P_8021Q, 10)],
        &[(ETH_P_8021AD, 20)],
        &[(ETH_P_8021AD, 20), (ETH_P_8021Q, 30)],
        &[(0x9100, 20), (ETH_P_8021Q, 30)],
    ];
    tag_sets
        .iter()
        .map(|tags| match src {
            IpAddr::V4(a) => frames::udp4_frame(D, S, tags, a, v4("198.18.0.1"), 9, b"x"),
            IpAddr::V6(a) => frames::udp6_frame(D, S, tags, a, v6("2001:db8::1"), 9, b"x"),
        })
        .collect()
}

#[test]
fn verdicts_for_every_layout_and_list() {
    let mut k = kernel();
    k.insert(
        ListKind::Block,
        &nets(&[
            "203.0.113.7/32",
            "198.51.100.0/24",
            "0.0.0.0/1",
            "2001:db8:bad::1/128",
            "2001:db8:dead::/48",
        ]),
    )
    .unwrap();
    k.insert(
        ListKind::Allow,
        &nets(&["198.51.100.9/32", "2001:db8:dead:beef::/64"]),
    )
    .unwrap();
    let cases: &[(&str, u32, Verdict)] = &[
        ("203.0.113.7", XDP_DROP, Verdict::DroppedBlocklist),
        ("198.51.100.200", XDP_DROP, Verdict::DroppedBlocklist),
        ("10.1.2.3", XDP_DROP, Verdict::DroppedBlocklist), // inside 0.0.0.0/1
        ("198.51.100.9", XDP_PASS, Verdict::Allowlisted),
        ("203.0.113.8", XDP_PASS, Verdict::Passed),
        ("2001:db8:bad::1", XDP_DROP, Verdict::DroppedBlocklist),
        ("2001:db8:bad::2", XDP_PASS, Verdict::Passed),
        ("2001:db8:dead:1::5", XDP_DROP, Verdict::DroppedBlocklist),
        ("2001:db8:dead:beef::5", XDP_PASS, Verdict::Allowlisted),
    ];
    for (src, action, verdict) in cases {
        let src: IpAddr = src.parse().unwrap();
        for frame in layouts(src) {
            let before = k.counters().unwrap()[*verdict as usize];
            assert_eq!(
                run(&mut k, &frame),
                *action,
                "{src} in {:02x?}",
                &frame[12..20]
            );
            let after = k.counters().unwrap()[*verdict as usize];
            assert_eq!(
                after.packets,
                before.packets + 1,
                "{src}: {verdict:?} not counted"
            );
            assert_eq!(after.bytes, before.bytes + frame.len() as u64);
        }
    }
}

#[test]
fn malformed_and_truncated_frames_never_pass_and_never_bypass() {
    let mut k = kernel();
    // Block everything: a frame that slipped past the parser as "passed" would show here.
    k.insert(ListKind::Block, &nets(&["0.0.0.0/0", "::/0"]))
        .unwrap();
    for (name, frame) in frames::malformed(D, S, v4("198.18.0.2"), v6("2001:db8::2")) {
        let before = k.counters().unwrap()[Verdict::Malformed as usize].packets;
        assert_eq!(run(&mut k, &frame), XDP_DROP, "{name}");
        assert_eq!(
            k.counters().unwrap()[Verdict::Malformed as usize].packets,
            before + 1,
            "{name}"
        );
    }
    // Every truncation of every valid layout is dropped: malformed when the IP header is cut,
    // never passed. (Frames shorter than 14 bytes are refused by BPF_PROG_TEST_RUN itself.)
    for src in ["198.18.0.2", "2001:db8::2"] {
        for frame in layouts(src.parse().unwrap()) {
            for cut in 14..frame.len() {
                let action = run(&mut k, &frame[..cut]);
                assert_eq!(action, XDP_DROP, "{src} cut to {cut} bytes passed");
            }
            assert_eq!(
                run(&mut k, &frame),
                XDP_DROP,
                "{src}: blocked by ::/0 or 0.0.0.0/0"
            );
        }
    }
    // Not IP passes: ARP, LLDP, and a tagged ARP.
    for (tags, ethertype) in [
        (&[][..], 0x0806u16),
        (&[], 0x88cc),
        (&[(ETH_P_8021Q, 5)][..], 0x0806),
    ] {
        let mut f = frames::ethernet(D, S, tags, ethertype);
        f.extend_from_slice(&[0; 46]);
        assert_eq!(run(&mut k, &f), XDP_PASS);
    }
}

#[test]
fn rate_limit_is_a_token_bucket_per_source_key() {
    let mut k = kernel();
    let rate = RateConfig {
        pps: 1,
        burst: 3,
        prefix4: 24,
        prefix6: 64,
    }
    .settings()
    .unwrap();
    k.set_rate(rate).unwrap();
    let a = frames::udp4_64(v4("198.18.5.1"));
    let same_key = frames::udp4_64(v4("198.18.5.200"));
    let other = frames::udp4_64(v4("198.18.6.1"));
    // Burst of 3 per /24, then drops (at 1 pps nothing refills during the test).
    let got: Vec<u32> = (0..5).map(|_| run(&mut k, &a)).collect();
    assert_eq!(got, [XDP_PASS, XDP_PASS, XDP_PASS, XDP_DROP, XDP_DROP]);
    assert_eq!(
        run(&mut k, &same_key),
        XDP_DROP,
        "same /24 shares the bucket"
    );
    assert_eq!(run(&mut k, &other), XDP_PASS, "another /24 has its own");
    let a6 = frames::udp6_64(v6("2001:db8:1:2::1"));
    let same6 = frames::udp6_64(v6("2001:db8:1:2:ffff::9"));
    let got: Vec<u32> = (0..4).map(|_| run(&mut k, &a6)).collect();
    assert_eq!(got, [XDP_PASS, XDP_PASS, XDP_PASS, XDP_DROP]);
    assert_eq!(run(&mut k, &same6), XDP_DROP, "same /64 shares the bucket");
    assert!(k.counters().unwrap()[Verdict::DroppedRatelimit as usize].packets >= 4);
    // Allowlisted sources are never limited.
    k.insert(ListKind::Allow, &nets(&["198.18.5.0/24"]))
        .unwrap();
    assert!((0..10).all(|_| run(&mut k, &a) == XDP_PASS));
    // Off at run time: everything passes.
    k.set_rate(RateConfig::default().settings().unwrap())
        .unwrap();
    assert!((0..10).all(|_| run(&mut k, &same_key) == XDP_PASS));
}

/// The kernel's verdict for an IPv4 source, by test run.
fn blocked4(k: &mut Kernel, addr: Ipv4Addr) -> bool {
    run(k, &frames::udp4_64(addr)) == XDP_DROP
}

#[test]
fn ipv4_prefixes_follow_adds_and_removals() {
    let mut k = kernel();
    let n = |s: &str| nets(&[s]);
    k.insert(ListKind::Block, &n("10.0.0.0/8")).unwrap();
    k.insert(ListKind::Block, &n("10.1.0.0/16")).unwrap();
    k.insert(ListKind::Block, &n("192.0.2.128/25")).unwrap();
    k.insert(ListKind::Block, &n("192.0.2.64/27")).unwrap();
    assert!(blocked4(&mut k, v4("10.200.3.4")));
    assert!(blocked4(&mut k, v4("192.0.2.200")));
    assert!(blocked4(&mut k, v4("192.0.2.70")));
    assert!(
        !blocked4(&mut k, v4("192.0.2.5")),
        "same /24, outside both longer prefixes"
    );
    assert!(!blocked4(&mut k, v4("192.0.3.200")));
    // Removing the /8 keeps the /16 inside it.
    k.remove(ListKind::Block, &n("10.0.0.0/8")).unwrap();
    assert!(blocked4(&mut k, v4("10.1.2.3")));
    assert!(!blocked4(&mut k, v4("10.2.0.1")));
    k.remove(ListKind::Block, &n("192.0.2.128/25")).unwrap();
    assert!(!blocked4(&mut k, v4("192.0.2.200")));
    assert!(
        blocked4(&mut k, v4("192.0.2.70")),
        "the other longer prefix of the /24 stays"
    );
    k.remove(ListKind::Block, &n("192.0.2.64/27")).unwrap();
    assert!(!blocked4(&mut k, v4("192.0.2.70")));
    // The whole space, then nothing.
    k.insert(ListKind::Block, &n("0.0.0.0/0")).unwrap();
    assert!(
        blocked4(&mut k, v4("203.0.113.9"))
            && blocked4(&mut k, v4("255.255.255.255"))
            && blocked4(&mut k, v4("0.0.0.1"))
    );
    k.remove(ListKind::Block, &n("0.0.0.0/0")).unwrap();
    k.remove(ListKind::Block, &n("10.1.0.0/16")).unwrap();
    assert!(!blocked4(&mut k, v4("10.1.2.3")) && !blocked4(&mut k, v4("203.0.113.9")));
}

/// Random prefixes in and out, checked against `IpNet::contains` on random and boundary
/// addresses: the kernel's answer (list table plus overflow maps) matches the list.
#[test]
fn ipv4_and_ipv6_lists_agree_with_a_reference_model() {
    let (in_table, overflowed) = agree_with_model(&mut kernel());
    assert!(in_table > 0, "nothing was listed at the end");
    println!("default table: {in_table} keys in the table, {overflowed} overflowed");
}

/// The same with a list table of 4 buckets (16 slots): nearly every key overflows, and keys
/// move in and out of the table as slots free up.
#[test]
fn lists_agree_with_the_model_when_buckets_overflow() {
    let mut k = Kernel::load_with_list_buckets(&small_config(), 4).expect("load (root?)");
    let (in_table, overflowed) = agree_with_model(&mut k);
    assert!(in_table <= 16, "{in_table} keys in 16 slots");
    assert!(overflowed > 100, "only {overflowed} keys overflowed");
}

/// Runs 30 rounds of random changes to both lists, checking the kernel's verdict for boundary
/// and random addresses against the model after each (allowlist wins, then blocklist, else
/// pass), and returns where the kernel kept its keys at the end. Then empties both lists and
/// checks that nothing is left.
fn agree_with_model(k: &mut Kernel) -> (usize, usize) {
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let mut rand = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let mut listed: Vec<(ListKind, ipnet::IpNet)> = Vec::new();
    let mut at_end = (0, 0);
    for round in 0..30 {
        // Mostly inside 10.0.0.0/12 and 2001:db8::/44 so prefixes overlap.
        for _ in 0..20 {
            let r = rand();
            let net = if r % 2 == 0 {
                let len = [0u8, 7, 8, 12, 16, 20, 23, 24, 25, 28, 31, 32][(r >> 8) as usize % 12];
                let addr = Ipv4Addr::from(0x0a00_0000 | ((r >> 16) as u32 & 0x000f_ffff));
                ipnet::IpNet::V4(ipnet::Ipv4Net::new(addr, len).unwrap().trunc())
            } else {
                let len = [1u8, 32, 44, 48, 56, 64, 65, 96, 127, 128][(r >> 8) as usize % 10];
                let low = u128::from((r >> 16) & 0xf_ffff) << 64 | u128::from(rand());
                let addr = Ipv6Addr::from(
                    0x2001_0db8_0000_0000_0000_0000_0000_0000u128
                        | low & 0x0000_0000_000f_ffff_ffff_ffff_ffff_ffff,
                );
                ipnet::IpNet::V6(ipnet::Ipv6Net::new(addr, len).unwrap().trunc())
            };
            // Very short prefixes would cover every probe: keep them rare.
            if net.prefix_len() < 8 && rand() % 4 != 0 {
                continue;
            }
            let kind = if rand() % 4 == 0 {
                ListKind::Allow
            } else {
                ListKind::Block
            };
            if let Some(i) = listed.iter().position(|e| *e == (kind, net)) {
                k.remove(kind, &[net]).unwrap();
                listed.remove(i);
            } else {
                k.insert(kind, &[net]).unwrap();
                listed.push((kind, net));
            }
        }
        // Remove a few at random too.
        for _ in 0..5 {
            if listed.is_empty() {
                break;
            }
            let (kind, net) = listed.remove(rand() as usize % listed.len());
            k.remove(kind, &[net]).unwrap();
        }
        let mut probes: Vec<IpAddr> = Vec::new();
        for (_, net) in &listed {
            probes.push(net.network());
            probes.push(net.broadcast());
        }
        for _ in 0..200 {
            let r = rand();
            probes.push(IpAddr::V4(Ipv4Addr::from(
                0x0a00_0000 | (r as u32 & 0x000f_ffff),
            )));
            let low = u128::from((r >> 16) & 0xf_ffff) << 64 | u128::from(rand());
            probes.push(IpAddr::V6(Ipv6Addr::from(
                0x2001_0db8u128 << 96 | low & 0x0000_0000_000f_ffff_ffff_ffff_ffff_ffff,
            )));
        }
        for probe in probes {
            let covered = |kind| listed.iter().any(|(k, n)| *k == kind && n.contains(&probe));
            let expected = if covered(ListKind::Allow) {
                Verdict::Allowlisted
            } else if covered(ListKind::Block) {
                Verdict::DroppedBlocklist
            } else {
                Verdict::Passed
            };
            assert_eq!(
                verdict(k, probe),
                expected,
                "round {round}: {probe} (listed: {listed:?})"
            );
        }
        at_end = k.list_keys();
    }
    for (kind, net) in listed.drain(..) {
        k.remove(kind, &[net]).unwrap();
    }
    assert_eq!(k.list_keys(), (0, 0), "keys left after removing everything");
    for probe in ["10.0.0.0", "10.15.255.255", "2001:db8::", "2001:db8:f::1"] {
        assert_eq!(verdict(k, probe.parse().unwrap()), Verdict::Passed);
    }
    at_end
}

/// The verdict the kernel counts for one frame from `source`.
fn verdict(k: &mut Kernel, source: IpAddr) -> Verdict {
    let frame = match source {
        IpAddr::V4(a) => frames::udp4_64(a),
        IpAddr::V6(a) => frames::udp6_64(a),
    };
    let before = k.counters().unwrap();
    run(k, &frame);
    let after = k.counters().unwrap();
    let grew: Vec<Verdict> = Verdict::ALL
        .into_iter()
        .filter(|v| after[*v as usize].packets > before[*v as usize].packets)
        .collect();
    assert_eq!(grew.len(), 1, "{source}: counted as {grew:?}");
    grew[0]
}

/// A rate table of one bucket (four slots): a churn of one-packet sources replaces one another,
/// never the source that is over its limit, and the table never tracks more than it holds.
#[test]
fn a_limited_source_survives_a_churn_of_new_sources() {
    let config = XdpConfig {
        ratelimit_sources: 2,
        ..small_config()
    };
    let mut k = Kernel::load(&config).expect("load (root?)");
    let rate = RateConfig {
        pps: 1,
        burst: 2,
        prefix4: 32,
        prefix6: 128,
    };
    k.set_rate(rate.settings().unwrap()).unwrap();
    let limited = frames::udp4_64(v4("198.18.9.9"));
    let got: Vec<u32> = (0..3).map(|_| run(&mut k, &limited)).collect();
    assert_eq!(got, [XDP_PASS, XDP_PASS, XDP_DROP]);
    for i in 0..200u32 {
        let source = if i % 2 == 0 {
            IpAddr::V4(Ipv4Addr::from(0xc612_0a00 + i))
        } else {
            IpAddr::V6(Ipv6Addr::from(
                0x2001_0db8_0000_0000_0000_0000_0000_0000u128 + u128::from(i),
            ))
        };
        let frame = match source {
            IpAddr::V4(a) => frames::udp4_64(a),
            IpAddr::V6(a) => frames::udp6_64(a),
        };
        assert_eq!(run(&mut k, &frame), XDP_PASS, "new source {source}");
    }
    assert!(k.tracked_sources().unwrap() <= 4);
    assert_eq!(
        run(&mut k, &limited),
        XDP_DROP,
        "the limited source lost its state to the churn"
    );
}
