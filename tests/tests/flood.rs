//! Flood absorption against the real binary and kernel: a legitimate client sends steady HTTPS
//! requests through the gateway while an attacker floods it with trafgen (UDP and TCP SYN, from
//! a blocked network and from a few sources far above the per-source rate), its frames arriving
//! at the gateway's veth as XDP frames through a redirect hop (see `integration_tests::flood`).
//! At least 99% of the legitimate requests must succeed, and the XDP counters must account for
//! the flood as trafgen counted it.
//! Run as root with `cargo xtask test` (one test at a time).

use std::{sync::Arc, thread, time::Duration};

use integration_tests::{
    flood::{self, Flood, Topology, BLOCKED_NET, RATE_SOURCES},
    harness::{Daemon, Setup},
    web::Pki,
};

/// The flood's rate, packets per second: far above every source's limit, well within what one
/// core drops.
const FLOOD_PPS: u64 = 40_000;
const FLOOD_SECONDS: f64 = 3.0;
/// The per-source limit: the legitimate client (25 requests per second on one connection, about
/// two packets each) stays under it; each rate-limited attacker sends ~2,500 per second.
const PPS: u64 = 200;
const BURST: u64 = 400;

#[test]
fn legitimate_https_clients_are_served_while_xdp_drops_a_flood() {
    assert!(
        flood::wait_for_quiet(Duration::from_secs(600)),
        "wrk kept running for 10 minutes; not flooding over someone's measurement"
    );
    let topo = Topology::new();
    let setup = Setup::new();
    let pki = Arc::new(Pki::new(setup.dir.path()));
    let cert = pki.issue("gw", &["gw.test"]);
    let upstream = flood::NsUpstream::start(&topo.gw_ns);
    let extra = format!(
        "[xdp.ratelimit]\npps = {PPS}\nburst = {BURST}\n{}",
        flood::proxy_config(&cert.cert, &cert.key, upstream.addr)
    );
    let config = setup.write_config(&topo.g0, "mode = \"native\"", &extra);
    let daemon = Daemon::start(&topo.gw_ns, &setup, &config);
    setup.ok(&["block", "add", BLOCKED_NET, "--reason", "flood test"]);
    let _hop = topo.redirect_hop();

    // The path works before the flood.
    let warm = flood::legit_client(
        &topo,
        pki.clone(),
        1,
        Duration::ZERO,
        Duration::from_millis(300),
    );
    assert!(
        warm.ok > 0 && warm.failed == 0,
        "no legitimate request got through before the flood: {warm:?}\n{}",
        daemon.log_text()
    );

    let before = setup.stats();
    let (legit, sent) = {
        let topo = &topo;
        let pki = pki.clone();
        thread::scope(|s| {
            let client = s.spawn(|| {
                flood::legit_client(
                    topo,
                    pki,
                    1,
                    Duration::from_millis(40),
                    Duration::from_secs(5),
                )
            });
            thread::sleep(Duration::from_secs(1));
            let sent = flood::trafgen(
                topo,
                &[
                    Flood::UdpBlocked,
                    Flood::SynBlocked,
                    Flood::UdpRate,
                    Flood::SynRate,
                ],
                FLOOD_PPS,
                FLOOD_SECONDS,
                setup.dir.path(),
            );
            (client.join().expect("client thread"), sent)
        })
    };
    // Drops are counted per CPU as they happen; give the last batch a moment.
    thread::sleep(Duration::from_millis(200));
    let after = setup.stats();
    let lost = topo.hop_losses();
    let delta = |name: &str| {
        let p = |v: &serde_json::Value| v["verdicts"][name]["packets"].as_u64().expect("packets");
        p(&after) - p(&before)
    };
    let (blocked, limited, passed) = (
        delta("dropped_blocklist"),
        delta("dropped_ratelimit"),
        delta("passed"),
    );
    eprintln!(
        "trafgen sent {} packets ({} left a0) in {:.1} s; XDP dropped {blocked} blocked, {limited} \
         over rate, passed {passed}; {lost} lost at the hop; legitimate: {} ok, {} failed, p99 {:?} us",
        sent.packets,
        sent.tx_packets,
        sent.seconds,
        legit.ok,
        legit.failed,
        legit.percentile_us(0.99)
    );

    assert!(
        sent.packets >= (FLOOD_PPS as f64 * FLOOD_SECONDS * 0.5) as u64,
        "trafgen sent only {} packets",
        sent.packets
    );
    assert!(
        legit.total() >= 50,
        "too few legitimate requests: {legit:?}"
    );
    assert!(
        legit.success_share() >= 0.99,
        "only {} of {} legitimate requests succeeded (first error: {:?})",
        legit.ok,
        legit.total(),
        legit.first_error
    );
    // Half the frames come from the blocked network: each one must be dropped as such.
    let per_kind = sent.packets / 2;
    assert!(
        blocked as f64 >= per_kind as f64 * 0.95,
        "XDP dropped {blocked} blocked packets of the {per_kind} trafgen sent from {BLOCKED_NET}"
    );
    // The other half from RATE_SOURCES sources, each far above PPS: all but each source's burst
    // and PPS per second are dropped (the bound is loose for a slow machine).
    let allowed = u64::from(RATE_SOURCES) * (BURST + PPS * (FLOOD_SECONDS.ceil() as u64 + 1));
    assert!(
        limited + allowed >= per_kind * 95 / 100 && limited >= per_kind / 2,
        "XDP dropped {limited} of the {per_kind} packets trafgen sent from {RATE_SOURCES} sources \
         over {PPS} pps (at most {allowed} may pass)"
    );
    assert!(
        blocked + limited >= sent.packets * 80 / 100,
        "XDP dropped {} of the {} flood packets",
        blocked + limited,
        sent.packets
    );
    drop(daemon);
}
