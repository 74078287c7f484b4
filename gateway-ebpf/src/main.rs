//! The gateway's XDP program.
//!
//! Per frame: parse Ethernet, up to two VLAN tags and the IP source, then
//!
//! ```text
//!   malformed ──────────────────────────────────────────────► DROP  (malformed)
//!   not IP ─────────────────────────────────────────────────► PASS  (passed)
//!   IP source ─► allowlist? ─yes──────────────────────────────► PASS  (allowlisted)
//!                   │no
//!                   ▼
//!                blocklist? ─yes──────────────────────────────► DROP  (dropped_blocklist)
//!                   │no
//!                   ▼
//!                over its rate? ─yes──────────────────────────► DROP  (dropped_ratelimit)
//!                   │no
//!                   ▼
//!                PASS  (passed)
//! ```
//!
//! Every path ends in [`finish`], which counts the verdict in a per-CPU array, so no path goes
//! uncounted and no atomics are needed. A drop of an IP source is also offered to [`sample`],
//! which sends the daemon at most one event per source per second through a ring buffer.
#![no_std]
#![no_main]

use aya_ebpf::{
    bindings::{xdp_action, BPF_F_NO_PREALLOC},
    helpers::bpf_jiffies64,
    macros::{map, xdp},
    maps::{Array, HashMap, PerCpuArray, RingBuf},
    programs::XdpContext,
};
use aya_log_ebpf::debug;
use gateway_common::{
    hash,
    maps::{
        events::{self, DropEvent, EventBudget, EventSlot, FAMILY_V4, FAMILY_V6},
        lists::{self, Key4, Key6, ListBucket, ALLOW},
        RateBucket,
    },
    net::{rate_key_v4, rate_key_v6, RateKey},
    parse::{self, Frame, Source},
    ratelimit, Counter, Settings, Verdict,
};

// Sizes here are placeholders: the daemon sets every map's capacity from its config before
// loading (EbpfLoader::map_max_entries). The list maps are not preallocated, so a large
// capacity costs memory only for the entries present.
const DEFAULT_ENTRIES: u32 = 1024;

/// Both lists of both families (gateway_common::maps::lists).
#[map]
static LIST_TABLE: Array<ListBucket> = Array::with_max_entries(DEFAULT_ENTRIES, 0);
/// IPv4 keys whose bucket was full.
#[map]
static LIST4: HashMap<Key4, u32> = HashMap::with_max_entries(DEFAULT_ENTRIES, BPF_F_NO_PREALLOC);
/// IPv6 keys whose bucket was full.
#[map]
static LIST6: HashMap<Key6, u32> = HashMap::with_max_entries(DEFAULT_ENTRIES, BPF_F_NO_PREALLOC);

/// Rate-limit state: a four-way hash table of sources. Fixed size, so a flood of spoofed sources
/// replaces other new sources instead of filling the table and locking new sources out.
#[map]
static RATE_STATE: Array<RateBucket> = Array::with_max_entries(DEFAULT_ENTRIES, 0);

#[map]
static SETTINGS: Array<Settings> = Array::with_max_entries(1, 0);

#[map]
static VERDICTS: PerCpuArray<Counter> = PerCpuArray::with_max_entries(Verdict::COUNT, 0);

/// Sampled drop events for the daemon: 256 KiB, about 6,500 events of 40 bytes with the
/// ring's header, far more than the per-CPU budget lets the program send per second.
#[map]
static EVENTS: RingBuf = RingBuf::with_byte_size(256 * 1024, 0);

/// When each source last got an event: one slot per hash, fixed size, so random sources
/// replace each other instead of filling a map.
#[map]
static EVENT_STATE: Array<EventSlot> = Array::with_max_entries(DEFAULT_ENTRIES, 0);

/// Each CPU's event budget for the current second.
#[map]
static EVENT_BUDGET: PerCpuArray<EventBudget> = PerCpuArray::with_max_entries(1, 0);

/// Bounds-checked view of the packet for the shared parser.
struct Packet<'a>(&'a XdpContext);

impl Frame for Packet<'_> {
    #[inline(always)]
    fn len(&self) -> usize {
        self.0.data_end() - self.0.data()
    }

    #[inline(always)]
    fn read<const N: usize>(&self, offset: usize) -> Option<[u8; N]> {
        let start = self.0.data();
        // The comparison is on the packet pointer itself, the form the verifier accepts as a
        // bounds check for the access below.
        if start + offset + N > self.0.data_end() {
            return None;
        }
        // SAFETY: the N bytes at start + offset lie inside the packet (checked above).
        Some(unsafe { core::ptr::read_unaligned((start + offset) as *const [u8; N]) })
    }
}

#[xdp]
pub fn gateway(ctx: XdpContext) -> u32 {
    let verdict = decide(&ctx);
    finish(&ctx, verdict)
}

/// The one exit: count, then turn the verdict into an XDP action.
#[inline(always)]
fn finish(ctx: &XdpContext, verdict: Verdict) -> u32 {
    if let Some(counter) = VERDICTS.get_ptr_mut(verdict as u32) {
        // SAFETY: per-CPU slot; XDP runs with preemption off, so nothing else touches it now.
        unsafe {
            (*counter).packets += 1;
            (*counter).bytes += (ctx.data_end() - ctx.data()) as u64;
        }
    }
    if verdict.passes() {
        xdp_action::XDP_PASS
    } else {
        xdp_action::XDP_DROP
    }
}

#[inline(always)]
fn decide(ctx: &XdpContext) -> Verdict {
    let source = match parse::source(&Packet(ctx)) {
        Ok(source) => source,
        Err(why) => {
            // Compiled out at run time unless the daemon loads us with kernel log level debug.
            debug!(ctx, "malformed frame: {}", why as u32);
            return Verdict::Malformed;
        }
    };
    let Some(settings) = SETTINGS.get(0) else {
        return Verdict::Passed;
    };
    match source {
        Source::NotIp => Verdict::Passed,
        Source::V4(addr) => {
            let raw = u32::from_le_bytes(addr);
            let verdict = match list_verdict(listed4(settings, raw)) {
                Some(verdict) => verdict,
                None => rate_limit(settings, || rate_key_v4(addr, settings.prefix4)),
            };
            if !verdict.passes() {
                let mut full = [0u8; 16];
                full[..4].copy_from_slice(&addr);
                sample(settings, verdict, FAMILY_V4, raw as u64, 0, full);
            }
            verdict
        }
        Source::V6(addr) => {
            let verdict = match list_verdict(listed6(settings, &addr)) {
                Some(verdict) => verdict,
                None => rate_limit(settings, || rate_key_v6(addr, settings.prefix6)),
            };
            if !verdict.passes() {
                let (hi, lo) = lists::halves(addr);
                sample(settings, verdict, FAMILY_V6, hi, lo, addr);
            }
            verdict
        }
    }
}

/// The verdict of the list flags, if they decide one: the allowlist wins over the blocklist.
#[inline(always)]
fn list_verdict(flags: u32) -> Option<Verdict> {
    if flags & ALLOW != 0 {
        Some(Verdict::Allowlisted)
    } else if flags != 0 {
        Some(Verdict::DroppedBlocklist)
    } else {
        None
    }
}

/// Where a key stands in the list table.
enum Found {
    /// In a slot, with these flags.
    Flags(u32),
    /// Not in the table, but its bucket has overflowed keys: ask the overflow map.
    AskOverflow,
    /// Not listed.
    No,
}

/// Looks `fingerprint` up in its bucket.
#[inline(always)]
fn find(s: &Settings, fingerprint: u64) -> Found {
    let Some(b) = LIST_TABLE.get(lists::bucket(fingerprint, s.list_buckets_mask)) else {
        return Found::No;
    };
    let ways = b.fingerprints;
    if ways[0] == fingerprint {
        Found::Flags(b.flags[0])
    } else if ways[1] == fingerprint {
        Found::Flags(b.flags[1])
    } else if ways[2] == fingerprint {
        Found::Flags(b.flags[2])
    } else if ways[3] == fingerprint {
        Found::Flags(b.flags[3])
    } else if b.overflow != 0 {
        Found::AskOverflow
    } else {
        Found::No
    }
}

/// The list flags of the IPv4 key of target length `LEN` for `addr` (read little-endian from
/// its network-order bytes), or 0. `LEN` is a constant, so each call is straight-line code.
#[inline(always)]
fn probe4<const LEN: u32>(s: &Settings, addr: u32) -> u32 {
    if s.targets4 & lists::target_bit4(LEN) == 0 {
        return 0;
    }
    let masked = addr & lists::mask4(LEN);
    match find(s, lists::fingerprint4(s.seed, LEN, masked)) {
        Found::Flags(flags) => flags,
        Found::No => 0,
        Found::AskOverflow => {
            let key = Key4 {
                len: LEN,
                addr: masked.to_le_bytes(),
            };
            // SAFETY: the value is copied out at once.
            unsafe { LIST4.get(key) }.copied().unwrap_or(0)
        }
    }
}

/// The IPv6 counterpart of [`probe4`]: `hi` and `lo` are the address halves read
/// little-endian.
#[inline(always)]
fn probe6<const LEN: u32>(s: &Settings, hi: u64, lo: u64) -> u32 {
    if s.targets6 & lists::target_bit6(LEN) == 0 {
        return 0;
    }
    let (mask_hi, mask_lo) = lists::mask6(LEN);
    let (hi, lo) = (hi & mask_hi, lo & mask_lo);
    match find(s, lists::fingerprint6(s.seed, LEN, hi, lo)) {
        Found::Flags(flags) => flags,
        Found::No => 0,
        Found::AskOverflow => {
            let mut addr = [0u8; 16];
            addr[..8].copy_from_slice(&hi.to_le_bytes());
            addr[8..].copy_from_slice(&lo.to_le_bytes());
            let key = Key6 { len: LEN, addr };
            // SAFETY: the value is copied out at once.
            unsafe { LIST6.get(key) }.copied().unwrap_or(0)
        }
    }
}

/// Unions the flags of every target length, longest first, until the allowlist answers.
macro_rules! union_until_allowed {
    ($probe:ident, $args:tt, $($len:literal),+) => {{
        let mut flags = 0;
        $(
            if flags & ALLOW == 0 {
                flags |= $probe::<$len> $args;
            }
        )+
        flags
    }};
}

/// The list flags of an IPv4 source: every listed network that contains it.
#[inline(always)]
fn listed4(s: &Settings, addr: u32) -> u32 {
    union_until_allowed!(probe4, (s, addr), 32, 28, 24, 20, 16, 12, 8, 4, 0)
}

/// The list flags of an IPv6 source.
#[inline(always)]
fn listed6(s: &Settings, addr: &[u8; 16]) -> u32 {
    let (hi, lo) = lists::halves(*addr);
    union_until_allowed!(
        probe6,
        (s, hi, lo),
        128,
        120,
        112,
        104,
        96,
        88,
        80,
        72,
        64,
        56,
        48,
        40,
        32,
        24,
        16,
        8,
        0
    )
}

/// One GCRA step for the source `key` (see gateway_common::ratelimit).
///
/// The clock is `jiffies * tick_ns`: one inlined load instead of a clock-source read (about
/// 35 ns with this machine's mitigations), at the price of tick granularity: a packet counts
/// as arriving at the start of its tick, so over any interval a source gets at most one
/// tick's worth of packets more than `pps * interval + burst`.
///
/// Two CPUs handling the same source at the same instant may both read the old arrival time
/// and admit one packet each where one should pass: a bounded overshoot of a packet per CPU,
/// which we accept rather than pay for an atomic compare-and-swap on every packet.
#[inline(always)]
fn rate_limit(settings: &Settings, key: impl FnOnce() -> RateKey) -> Verdict {
    if !settings.rate_limited() {
        return Verdict::Passed;
    }
    // The key is masked only when the limit is on.
    let (hi, lo) = lists::halves(key());
    let fingerprint = hash::rate_fingerprint(settings.seed, hi, lo);
    let index = hash::rate_bucket(fingerprint, settings.rate_buckets_mask);
    let Some(bucket) = RATE_STATE.get_ptr_mut(index) else {
        return Verdict::Passed;
    };
    // SAFETY: a pointer into the array map's value, valid for the program's run. Another CPU
    // may write the same bucket at once; the worst outcome is a skewed limit for its sources.
    let [s0, s1, s2, s3] = unsafe { &mut (*bucket).slots };
    let slot = if s0.fingerprint == fingerprint {
        s0
    } else if s1.fingerprint == fingerprint {
        s1
    } else if s2.fingerprint == fingerprint {
        s2
    } else if s3.fingerprint == fingerprint {
        s3
    } else {
        // A new source (or one that was replaced) takes the slot with the earliest arrival
        // time and starts with a full bucket: its first packet passes.
        let a = if s0.tat <= s1.tat { s0 } else { s1 };
        let b = if s2.tat <= s3.tat { s2 } else { s3 };
        let slot = if a.tat <= b.tat { a } else { b };
        slot.fingerprint = fingerprint;
        slot.tat = 0;
        slot
    };
    // SAFETY: a helper with no arguments, inlined by the verifier into a load of jiffies.
    let now = unsafe { bpf_jiffies64() }.wrapping_mul(settings.tick_ns);
    match ratelimit::admit(now, slot.tat, settings.interval_ns, settings.burst_ns) {
        Some(next) => {
            slot.tat = next;
            Verdict::Passed
        }
        None => Verdict::DroppedRatelimit,
    }
}

/// Offers a drop to the daemon: sends a [`DropEvent`] when the source's last one is at least
/// `event_interval_ns` old and this CPU has budget left this interval; otherwise only counts
/// the drop in the source's slot, for its next event.
///
/// The slot table is direct-mapped: two sources that share a slot take it from each other and
/// may each get more than one event per interval, which the per-CPU budget bounds. CPUs update
/// a slot without atomics; a race costs an extra event or a miscounted drop, never a wrong
/// verdict.
#[inline(always)]
fn sample(s: &Settings, verdict: Verdict, family: u32, hi: u64, lo: u64, addr: [u8; 16]) {
    if s.event_interval_ns == 0 {
        return;
    }
    let fingerprint = hash::event_fingerprint(s.seed, family, hi, lo);
    let Some(slot) = EVENT_STATE.get_ptr_mut(hash::rate_bucket(fingerprint, s.event_slots_mask))
    else {
        return;
    };
    // SAFETY: a pointer into the array map's value, valid for the program's run; see above
    // for what concurrent writers can do.
    let slot = unsafe { &mut *slot };
    // SAFETY: as in rate_limit: inlined by the verifier into a load of jiffies.
    let now = unsafe { bpf_jiffies64() }.wrapping_mul(s.tick_ns);
    if slot.fingerprint == fingerprint {
        slot.packets += 1;
        if !events::due(now, slot.last_ns, s.event_interval_ns) {
            return;
        }
    } else {
        slot.fingerprint = fingerprint;
        slot.packets = 1;
    }
    let Some(budget) = EVENT_BUDGET.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: per-CPU slot; XDP runs with preemption off, so nothing else touches it now.
    let budget = unsafe { &mut *budget };
    if events::due(now, budget.window_ns, s.event_interval_ns) {
        budget.window_ns = now;
        budget.sent = 0;
    }
    if budget.sent >= s.events_per_cpu as u64 {
        budget.suppressed += 1;
        return;
    }
    let event = DropEvent {
        addr,
        family,
        verdict: verdict as u32,
        packets: slot.packets,
    };
    if EVENTS.output::<DropEvent>(&event, 0).is_ok() {
        budget.sent += 1;
        slot.last_ns = now;
        slot.packets = 0;
    } else {
        budget.lost += 1;
    }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
