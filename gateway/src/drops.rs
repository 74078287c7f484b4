//! What the kernel reports back: drop events from the XDP program's ring buffer.
//!
//! The program sends at most one event per source per second (and a bounded number per CPU),
//! each with the packets dropped since the source's previous one. The daemon reads them as the
//! ring buffer's file descriptor turns readable and feeds
//! - the audit log: `{"type":"xdp_drop","time":...,"source":"198.18.0.3","reason":"dropped_blocklist","packets":120}`;
//! - the metric `gateway_xdp_drop_events_total{reason}`;
//! - [`Top`], the sources dropped most, which `gateway stats --top N` shows.

use std::{
    collections::{BTreeSet, HashMap},
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    sync::{Arc, Mutex},
};

use aya::maps::{MapData, RingBuf};
use gateway_common::{
    maps::events::{DropEvent, FAMILY_V4, FAMILY_V6},
    Verdict,
};
use serde::Serialize;
use tokio::io::{unix::AsyncFd, Interest};

use crate::{audit::Audit, metrics::METRICS};

/// Sources (by reason) the top table keeps; `gateway stats --top N` shows at most this many.
pub const TOP_CAPACITY: usize = 1024;

/// One decoded drop event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Dropped {
    pub source: IpAddr,
    pub verdict: Verdict,
    pub packets: u64,
}

impl Dropped {
    /// Decodes a ring-buffer record; `None` for anything that is not a well-formed event.
    pub fn decode(bytes: &[u8]) -> Option<Dropped> {
        if bytes.len() < size_of::<DropEvent>() {
            return None;
        }
        // SAFETY: the length is checked; DropEvent is plain old data of any bit pattern.
        let e: DropEvent = unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast()) };
        let source = match e.family {
            FAMILY_V4 => IpAddr::V4(Ipv4Addr::new(e.addr[0], e.addr[1], e.addr[2], e.addr[3])),
            FAMILY_V6 => IpAddr::V6(Ipv6Addr::from(e.addr)),
            _ => return None,
        };
        let verdict = Verdict::from_u32(e.verdict).filter(|v| !v.passes())?;
        Some(Dropped {
            source,
            verdict,
            packets: e.packets.max(1),
        })
    }
}

/// A row of the top table.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Row {
    pub source: String,
    pub reason: &'static str,
    /// Packets dropped (an estimate once the table has been full: at most `error` too many).
    pub packets: u64,
    /// Overcount bound from the space-saving algorithm (0 while the table never filled).
    pub error: u64,
    pub events: u64,
    /// RFC 3339.
    pub last_seen: String,
}

#[derive(Clone, Copy, Debug)]
struct Stat {
    packets: u64,
    error: u64,
    events: u64,
    last_ms: u64,
}

type Key = (IpAddr, u32);

/// The sources dropped most, by reason: a space-saving table of at most `capacity` entries
/// (Metwally et al.). A new source when the table is full replaces the entry with the fewest
/// packets and inherits its count as a possible overcount, so the heavy droppers are always
/// there whatever the number of sources, and memory stays bounded.
pub struct Top {
    capacity: usize,
    stats: HashMap<Key, Stat>,
    /// (packets, key) of every entry, for the minimum.
    order: BTreeSet<(u64, Key)>,
}

impl Top {
    pub fn new(capacity: usize) -> Top {
        Top {
            capacity: capacity.max(1),
            stats: HashMap::new(),
            order: BTreeSet::new(),
        }
    }

    pub fn add(&mut self, drop: &Dropped, now_ms: u64) {
        let key = (drop.source, drop.verdict as u32);
        if let Some(s) = self.stats.get_mut(&key) {
            self.order.remove(&(s.packets, key));
            s.packets = s.packets.saturating_add(drop.packets);
            s.events += 1;
            s.last_ms = now_ms;
            self.order.insert((s.packets, key));
            return;
        }
        let mut error = 0;
        if self.stats.len() >= self.capacity {
            if let Some((min, victim)) = self.order.pop_first() {
                self.stats.remove(&victim);
                error = min;
            }
        }
        let packets = error.saturating_add(drop.packets);
        self.stats.insert(
            key,
            Stat {
                packets,
                error,
                events: 1,
                last_ms: now_ms,
            },
        );
        self.order.insert((packets, key));
    }

    /// The `n` entries with the most packets, most first.
    pub fn top(&self, n: usize) -> Vec<Row> {
        self.order
            .iter()
            .rev()
            .take(n)
            .filter_map(|(_, key)| {
                let s = self.stats.get(key)?;
                let reason = Verdict::from_u32(key.1).map_or("unknown", Verdict::name);
                Some(Row {
                    source: key.0.to_string(),
                    reason,
                    packets: s.packets,
                    error: s.error,
                    events: s.events,
                    last_seen: humantime::format_rfc3339_seconds(
                        std::time::UNIX_EPOCH + std::time::Duration::from_millis(s.last_ms),
                    )
                    .to_string(),
                })
            })
            .collect()
    }

    pub fn len(&self) -> usize {
        self.stats.len()
    }

    pub fn is_empty(&self) -> bool {
        self.stats.is_empty()
    }
}

#[derive(Serialize)]
struct AuditLine<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    time: String,
    source: String,
    reason: &'a str,
    packets: u64,
}

/// Reads drop events from `ring` until the runtime stops, into `top`, the metrics and `audit`.
pub async fn read(ring: RingBuf<MapData>, top: Arc<Mutex<Top>>, audit: Arc<Audit>) {
    // SAFETY: the ring buffer owns its map's file descriptor, which stays open and the same
    // for as long as the RingBuf lives, and the AsyncFd owns the RingBuf.
    let registered = unsafe { AsyncFd::register_with_interest(ring, Interest::READABLE) };
    let mut fd = match registered {
        Ok(fd) => fd,
        Err(e) => {
            tracing::error!(error = %e, "cannot poll the drop-event ring buffer; no drop events");
            return;
        }
    };
    let mut batch = Vec::new();
    loop {
        let mut guard = match fd.readable_mut().await {
            Ok(guard) => guard,
            Err(e) => {
                tracing::error!(error = %e, "drop-event ring buffer failed; no more drop events");
                return;
            }
        };
        let ring = guard.get_inner_mut();
        while let Some(item) = ring.next() {
            match Dropped::decode(&item) {
                Some(drop) => batch.push(drop),
                None => tracing::debug!(len = item.len(), "malformed drop event ignored"),
            }
        }
        guard.clear_ready();
        if batch.is_empty() {
            continue;
        }
        let now = crate::lists::now_ms();
        {
            let mut top = top.lock().unwrap_or_else(|p| p.into_inner());
            for drop in &batch {
                top.add(drop, now);
            }
        }
        let time = humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string();
        for drop in batch.drain(..) {
            let reason = drop.verdict.name();
            METRICS.xdp_drop_events.with_label_values(&[reason]).inc();
            audit.record_event(&AuditLine {
                kind: "xdp_drop",
                time: time.clone(),
                source: drop.source.to_string(),
                reason,
                packets: drop.packets,
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(addr: [u8; 16], family: u32, verdict: u32, packets: u64) -> Vec<u8> {
        let e = DropEvent {
            addr,
            family,
            verdict,
            packets,
        };
        // SAFETY: reading the bytes of a plain repr(C) value without padding.
        unsafe {
            std::slice::from_raw_parts(
                (&e as *const DropEvent).cast::<u8>(),
                size_of::<DropEvent>(),
            )
        }
        .to_vec()
    }

    #[test]
    fn events_decode_and_bad_ones_are_refused() {
        let mut v4 = [0u8; 16];
        v4[..4].copy_from_slice(&[198, 18, 0, 3]);
        let d = Dropped::decode(&event(v4, FAMILY_V4, 2, 7)).unwrap();
        assert_eq!(
            (d.source.to_string(), d.verdict, d.packets),
            ("198.18.0.3".into(), Verdict::DroppedBlocklist, 7)
        );
        let v6: [u8; 16] = "2001:db8::9".parse::<Ipv6Addr>().unwrap().octets();
        let d = Dropped::decode(&event(v6, FAMILY_V6, 3, 0)).unwrap();
        assert_eq!(
            (d.source.to_string(), d.verdict, d.packets),
            ("2001:db8::9".into(), Verdict::DroppedRatelimit, 1)
        );
        assert!(Dropped::decode(&event(v6, 5, 3, 1)).is_none(), "bad family");
        assert!(
            Dropped::decode(&event(v6, FAMILY_V6, 0, 1)).is_none(),
            "a pass is no drop"
        );
        assert!(
            Dropped::decode(&event(v6, FAMILY_V6, 99, 1)).is_none(),
            "bad verdict"
        );
        assert!(Dropped::decode(&[0u8; 31]).is_none(), "short");
    }

    fn drop(last: u8, verdict: Verdict, packets: u64) -> Dropped {
        Dropped {
            source: IpAddr::V4(Ipv4Addr::new(198, 18, 1, last)),
            verdict,
            packets,
        }
    }

    #[test]
    fn the_top_table_keeps_heavy_droppers_in_bounded_memory() {
        let mut top = Top::new(8);
        for _ in 0..50 {
            top.add(&drop(1, Verdict::DroppedBlocklist, 100), 1);
            top.add(&drop(2, Verdict::DroppedRatelimit, 40), 2);
            top.add(&drop(1, Verdict::DroppedRatelimit, 10), 3);
        }
        // A flood of one-shot sources.
        for i in 0..5000u32 {
            let source = IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + i));
            top.add(
                &Dropped {
                    source,
                    verdict: Verdict::DroppedBlocklist,
                    packets: 1,
                },
                4,
            );
        }
        assert_eq!(top.len(), 8);
        // Sources above a 1/8 share of all packets are always there, with exact counts here.
        let rows = top.top(2);
        let got: Vec<(&str, &str, u64, u64)> = rows
            .iter()
            .map(|r| (r.source.as_str(), r.reason, r.packets, r.error))
            .collect();
        assert_eq!(
            got,
            [
                ("198.18.1.1", "dropped_blocklist", 5000, 0),
                ("198.18.1.2", "dropped_ratelimit", 2000, 0),
            ]
        );
        assert_eq!(rows[0].events, 50);
        assert_eq!(top.top(100).len(), 8);
        // The one-shot sources' counts are estimates, and say so.
        assert!(top.top(100).iter().any(|r| r.error > 0));
    }
}
