//! The kernel reports back: drop events from the XDP program's ring buffer, at most one per
//! source per second, reach the audit log, the metrics and `gateway stats --top N`.
//! Run as root with `cargo xtask test` (one test at a time).

use std::{
    net::{IpAddr, Ipv4Addr},
    thread,
    time::{Duration, Instant},
};

use integration_tests::{
    harness::{in_netns, Daemon, Net, Setup},
    web,
};
use serde_json::Value;

const METRICS: &str = "127.0.0.1:9901";

fn v4(d: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(198, 18, 0, d))
}

fn audit(path: &std::path::Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).expect("audit line is JSON"))
        .collect()
}

fn scrape(ns: &str) -> String {
    in_netns(ns, || {
        use std::io::{Read as _, Write as _};
        let mut s = std::net::TcpStream::connect(METRICS).expect("metrics listener");
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: m\r\nConnection: close\r\n\r\n")
            .unwrap();
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        out
    })
}

#[test]
fn drop_events_are_sampled_per_source_and_reach_audit_metrics_and_top() {
    let net = Net::new();
    let setup = Setup::new();
    let log = setup.dir.path().join("audit.log");
    let (blocked, flooder, fine) = (v4(3), v4(4), v4(2));
    for a in [blocked, flooder] {
        net.add_client_addr(a);
    }
    let extra = format!("[audit]\noutput = \"{}\"\n", log.display());
    let config = setup.write_config(&net.gw_if, "", &extra);
    let text = std::fs::read_to_string(&config).unwrap().replacen(
        "[admin]\n",
        &format!("[admin]\nmetrics_listen = \"{METRICS}\"\n"),
        1,
    );
    std::fs::write(&config, text).unwrap();
    let _daemon = Daemon::start(&net.gw_ns, &setup, &config);
    setup.ok(&["block", "add", &blocked.to_string()]);
    setup.ok(&["ratelimit", "set", "--pps", "20", "--burst", "20"]);

    // Three and a half seconds of traffic: 10 packets every 50 ms from the blocked source and
    // the flooder.
    let rx = net.receiver(5001);
    let started = Instant::now();
    let mut sent = 0u64;
    let mut round = 0;
    while started.elapsed() < Duration::from_millis(3500) {
        net.send(blocked, 5001, 10, 64);
        net.send(flooder, 5001, 10, 64);
        if round % 2 == 0 {
            // 10 packets/s: well within the limit.
            net.send(fine, 5001, 1, 64);
        }
        round += 1;
        sent += 10;
        thread::sleep(Duration::from_millis(50));
    }
    let seconds = started.elapsed().as_secs_f64();
    let received = rx.collect();
    assert_eq!(received.get(&blocked), None, "a blocked source got through");
    assert!(received.get(&flooder).copied().unwrap_or(0) < sent as usize / 2);
    thread::sleep(Duration::from_millis(300));

    let lines = audit(&log);
    let events = |source: IpAddr| -> Vec<&Value> {
        lines
            .iter()
            .filter(|l| l["type"] == "xdp_drop" && l["source"] == source.to_string())
            .collect()
    };
    let of_blocked = events(blocked);
    // At most one per second (one more for a race between two CPUs), and one at least for
    // every second but the last.
    assert!(
        of_blocked.len() >= 3 && of_blocked.len() as f64 <= seconds.ceil() + 1.0,
        "{} events in {seconds:.1} s: {of_blocked:?}",
        of_blocked.len()
    );
    assert!(of_blocked
        .iter()
        .all(|e| e["reason"] == "dropped_blocklist"));
    // Every event carries the drops since the last one: together nearly all that was sent
    // (the drops after the last event wait for the next one).
    let packets: u64 = of_blocked
        .iter()
        .map(|e| e["packets"].as_u64().expect("packets"))
        .sum();
    assert!(
        packets <= sent && packets as f64 >= sent as f64 * (seconds - 1.2) / seconds,
        "{packets} packets in events of {sent} sent"
    );
    let of_flooder = events(flooder);
    assert!(
        !of_flooder.is_empty() && of_flooder.len() as f64 <= seconds.ceil() + 1.0,
        "{of_flooder:?}"
    );
    assert!(of_flooder
        .iter()
        .all(|e| e["reason"] == "dropped_ratelimit"));
    assert!(events(fine).is_empty(), "a passing source got drop events");

    // `gateway stats --top`: the blocked source first (it lost every packet), by reason.
    let text = setup.ok(&["stats", "--top", "5"]);
    assert!(text.contains("top dropped sources"), "{text}");
    let first = text
        .lines()
        .skip_while(|l| !l.starts_with("SOURCE"))
        .nth(1)
        .unwrap_or_default();
    assert!(
        first.starts_with("198.18.0.3") && first.contains("dropped_blocklist"),
        "{text}"
    );
    assert!(
        text.lines()
            .any(|l| l.starts_with("198.18.0.4") && l.contains("dropped_ratelimit")),
        "{text}"
    );
    let json: Value = serde_json::from_str(&setup.ok(&["stats", "--json", "--top", "1"])).unwrap();
    let top = json["top"].as_array().expect("top rows");
    assert_eq!(top.len(), 1);
    assert_eq!(top[0]["source"], "198.18.0.3");
    assert_eq!(top[0]["events"].as_u64(), Some(of_blocked.len() as u64));
    assert_eq!(top[0]["packets"].as_u64(), Some(packets));
    // Without --top there is no table; N is checked.
    assert!(!setup.ok(&["stats"]).contains("top dropped"));
    let out = setup.cli(&["stats", "--top", "0"]);
    assert_eq!(out.status.code(), Some(2));

    let metrics = scrape(&net.gw_ns);
    assert_eq!(
        web::metric(
            &metrics,
            "gateway_xdp_drop_events_total{reason=\"dropped_blocklist\"}"
        ),
        Some(of_blocked.len() as f64),
        "{metrics}"
    );
    assert_eq!(
        web::metric(
            &metrics,
            "gateway_xdp_drop_events_unsent_total{why=\"lost\"}"
        ),
        Some(0.0),
        "{metrics}"
    );
}

#[test]
fn drop_events_can_be_turned_off() {
    let net = Net::new();
    let setup = Setup::new();
    let log = setup.dir.path().join("audit.log");
    net.add_client_addr(v4(3));
    let extra = format!(
        "[xdp.events]\nenabled = false\n[audit]\noutput = \"{}\"\n",
        log.display()
    );
    let config = setup.write_config(&net.gw_if, "", &extra);
    let _daemon = Daemon::start(&net.gw_ns, &setup, &config);
    setup.ok(&["block", "add", "198.18.0.3"]);
    net.send(v4(3), 5001, 50, 64);
    thread::sleep(Duration::from_millis(500));
    assert_eq!(setup.verdict("dropped_blocklist").0, 50);
    assert!(audit(&log).iter().all(|l| l["type"] != "xdp_drop"));
    let json: Value = serde_json::from_str(&setup.ok(&["stats", "--json", "--top", "5"])).unwrap();
    assert_eq!(json["top"], serde_json::json!([]));
}
