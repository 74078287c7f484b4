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
//! uncounted and no atomics are needed.
#![no_std]
#![no_main]

use aya_ebpf::{
    bindings::{xdp_action, BPF_F_NO_PREALLOC},
    helpers::bpf_ktime_get_ns,
    macros::{map, xdp},
    maps::{lpm_trie::Key, Array, HashMap, LpmTrie, LruHashMap, PerCpuArray},
    programs::XdpContext,
};
use aya_log_ebpf::debug;
use gateway_common::{
    maps::{cover, list_bit},
    net::{rate_key_v4, rate_key_v6, RateKey},
    parse::{self, Frame, Source},
    ratelimit, Counter, Settings, Verdict,
};

// Sizes here are placeholders: the daemon sets every list's and the rate table's capacity from
// its config before loading (EbpfLoader::map_max_entries). Hash maps are not preallocated, so a
// million-entry capacity costs memory only for the entries present; LPM tries require it.
const DEFAULT_ENTRIES: u32 = 1024;

#[map]
static BLOCK4_HOST: HashMap<[u8; 4], u32> =
    HashMap::with_max_entries(DEFAULT_ENTRIES, BPF_F_NO_PREALLOC);
#[map]
static BLOCK4_NET: LpmTrie<[u8; 4], u32> =
    LpmTrie::with_max_entries(DEFAULT_ENTRIES, BPF_F_NO_PREALLOC);
#[map]
static BLOCK6_HOST: HashMap<[u8; 16], u32> =
    HashMap::with_max_entries(DEFAULT_ENTRIES, BPF_F_NO_PREALLOC);
#[map]
static BLOCK6_NET: LpmTrie<[u8; 16], u32> =
    LpmTrie::with_max_entries(DEFAULT_ENTRIES, BPF_F_NO_PREALLOC);
#[map]
static ALLOW4_HOST: HashMap<[u8; 4], u32> =
    HashMap::with_max_entries(DEFAULT_ENTRIES, BPF_F_NO_PREALLOC);
#[map]
static ALLOW4_NET: LpmTrie<[u8; 4], u32> =
    LpmTrie::with_max_entries(DEFAULT_ENTRIES, BPF_F_NO_PREALLOC);
#[map]
static ALLOW6_HOST: HashMap<[u8; 16], u32> =
    HashMap::with_max_entries(DEFAULT_ENTRIES, BPF_F_NO_PREALLOC);
#[map]
static ALLOW6_NET: LpmTrie<[u8; 16], u32> =
    LpmTrie::with_max_entries(DEFAULT_ENTRIES, BPF_F_NO_PREALLOC);

/// IPv4 prefix coverage per /24 (gateway_common::maps::cover): most packets skip the trie.
#[map]
static BLOCK4_COVER: Array<u64> = Array::with_max_entries(cover::ENTRIES, 0);
#[map]
static ALLOW4_COVER: Array<u64> = Array::with_max_entries(cover::ENTRIES, 0);

/// Theoretical arrival time per source key. An LRU map: a flood of spoofed sources evicts the
/// least recently seen keys instead of filling the map and locking new sources out.
#[map]
static RATE_STATE: LruHashMap<RateKey, u64> = LruHashMap::with_max_entries(DEFAULT_ENTRIES, 0);

#[map]
static SETTINGS: Array<Settings> = Array::with_max_entries(1, 0);

#[map]
static VERDICTS: PerCpuArray<Counter> = PerCpuArray::with_max_entries(Verdict::COUNT, 0);

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
    let lists = settings.lists;
    match source {
        Source::NotIp => Verdict::Passed,
        Source::V4(addr) => {
            if (lists & list_bit::ALLOW4_HOST != 0 && ALLOW4_HOST.get_ptr(&addr).is_some())
                || (lists & list_bit::ALLOW4_NET != 0
                    && net4_listed(&ALLOW4_COVER, &ALLOW4_NET, addr))
            {
                return Verdict::Allowlisted;
            }
            if (lists & list_bit::BLOCK4_HOST != 0 && BLOCK4_HOST.get_ptr(&addr).is_some())
                || (lists & list_bit::BLOCK4_NET != 0
                    && net4_listed(&BLOCK4_COVER, &BLOCK4_NET, addr))
            {
                return Verdict::DroppedBlocklist;
            }
            rate_limit(settings, || rate_key_v4(addr, settings.prefix4))
        }
        Source::V6(addr) => {
            let key = Key::new(128, addr);
            if (lists & list_bit::ALLOW6_HOST != 0 && ALLOW6_HOST.get_ptr(&addr).is_some())
                || (lists & list_bit::ALLOW6_NET != 0 && ALLOW6_NET.get(&key).is_some())
            {
                return Verdict::Allowlisted;
            }
            if (lists & list_bit::BLOCK6_HOST != 0 && BLOCK6_HOST.get_ptr(&addr).is_some())
                || (lists & list_bit::BLOCK6_NET != 0 && BLOCK6_NET.get(&key).is_some())
            {
                return Verdict::DroppedBlocklist;
            }
            rate_limit(settings, || rate_key_v6(addr, settings.prefix6))
        }
    }
}

/// Whether a prefix of an IPv4 list covers `addr`: the coverage bitmap answers for prefixes up
/// to /24 and rules out /24s without longer prefixes, so the trie is walked only for addresses
/// whose /24 holds a longer prefix.
#[inline(always)]
fn net4_listed(cover: &Array<u64>, trie: &LpmTrie<[u8; 4], u32>, addr: [u8; 4]) -> bool {
    let (word, bit) = cover::word_bit(cover::slash24(addr));
    if cover.get(word).is_some_and(|w| w & bit != 0) {
        return true;
    }
    if cover.get(cover::WORDS + word).is_some_and(|w| w & bit != 0) {
        return trie.get(&Key::new(32, addr)).is_some();
    }
    false
}

/// One GCRA step for `key` (see gateway_common::ratelimit).
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
    let key = &key();
    // SAFETY: a helper call with no arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    match RATE_STATE.get_ptr_mut(key) {
        Some(tat) => {
            // SAFETY: the pointer comes from a successful lookup; an LRU eviction racing with
            // us can at worst make us read or write a recycled slot, which only skews a limit.
            match ratelimit::admit(
                now,
                unsafe { *tat },
                settings.interval_ns,
                settings.burst_ns,
            ) {
                Some(next) => {
                    unsafe { *tat = next };
                    Verdict::Passed
                }
                None => Verdict::DroppedRatelimit,
            }
        }
        None => {
            // A new source starts with a full bucket: its first packet always passes.
            let next = now.saturating_add(settings.interval_ns);
            // Failure to insert (memory pressure) fails open for this one packet.
            let _ = RATE_STATE.insert(key, &next, 0);
            Verdict::Passed
        }
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
