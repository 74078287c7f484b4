//! Map names and the `#[repr(C)]` keys and values stored in them.
//!
//! Map names are the symbols of the statics in `gateway-ebpf`; the kernel keeps at most 15
//! characters of a map name, so every name here fits in 15.

/// Exact IPv4 hosts to drop: key `[u8; 4]` (network order), value [`LIST_ENTRY`].
pub const BLOCK4_HOST: &str = "BLOCK4_HOST";
/// IPv4 prefixes to drop: LPM trie keyed by `Key<[u8; 4]>`.
pub const BLOCK4_NET: &str = "BLOCK4_NET";
/// Exact IPv6 hosts to drop: key `[u8; 16]`.
pub const BLOCK6_HOST: &str = "BLOCK6_HOST";
/// IPv6 prefixes to drop: LPM trie keyed by `Key<[u8; 16]>`.
pub const BLOCK6_NET: &str = "BLOCK6_NET";
/// Exact IPv4 hosts that bypass the blocklist and the rate limit.
pub const ALLOW4_HOST: &str = "ALLOW4_HOST";
/// IPv4 prefixes that bypass the blocklist and the rate limit.
pub const ALLOW4_NET: &str = "ALLOW4_NET";
/// Exact IPv6 hosts that bypass the blocklist and the rate limit.
pub const ALLOW6_HOST: &str = "ALLOW6_HOST";
/// IPv6 prefixes that bypass the blocklist and the rate limit.
pub const ALLOW6_NET: &str = "ALLOW6_NET";
/// Per-source rate-limit state: LRU hash from [`crate::net::RateKey`] to a GCRA
/// theoretical arrival time (`u64`, nanoseconds of `bpf_ktime_get_ns`).
pub const RATE_STATE: &str = "RATE_STATE";
/// One-slot array holding the [`Settings`] the program runs with.
pub const SETTINGS: &str = "SETTINGS";
/// Per-CPU array of [`Counter`]s, indexed by [`Verdict`].
pub const VERDICTS: &str = "VERDICTS";

/// IPv4 prefix coverage of the blocklist, one bit per /24: see [`cover`].
pub const BLOCK4_COVER: &str = "BLOCK4_COVER";
/// IPv4 prefix coverage of the allowlist, one bit per /24: see [`cover`].
pub const ALLOW4_COVER: &str = "ALLOW4_COVER";

/// The IPv4 coverage bitmaps that spare most packets an LPM trie walk.
///
/// Each is an array of `u64` words with two halves of [`WORDS`](cover::WORDS) words each, one
/// bit per /24 network of the IPv4 space:
/// - `FULL` (words `0..WORDS`): the /24 lies entirely inside a listed prefix of length 0..=24,
///   so every address in it is listed: decided without the trie.
/// - `PARTIAL` (words `WORDS..2*WORDS`): a listed prefix longer than /24 lies inside the /24,
///   so the trie decides.
///
/// An address whose /24 has neither bit is not covered by any prefix of the list. The daemon
/// keeps the bitmaps in step with the trie.
pub mod cover {
    /// Words per half: 2^24 /24 networks, 64 per word.
    pub const WORDS: u32 = 1 << 18;
    /// Entries of a coverage array.
    pub const ENTRIES: u32 = 2 * WORDS;

    /// The /24 index of an IPv4 address (network byte order octets).
    #[inline(always)]
    pub const fn slash24(addr: [u8; 4]) -> u32 {
        u32::from_be_bytes(addr) >> 8
    }

    /// Word index (in the FULL half) and bit of a /24 index.
    #[inline(always)]
    pub const fn word_bit(slash24: u32) -> (u32, u64) {
        (slash24 >> 6, 1u64 << (slash24 & 63))
    }
}

/// Every list map, for code that walks them all.
pub const LIST_MAPS: [&str; 8] = [
    BLOCK4_HOST,
    BLOCK4_NET,
    BLOCK6_HOST,
    BLOCK6_NET,
    ALLOW4_HOST,
    ALLOW4_NET,
    ALLOW6_HOST,
    ALLOW6_NET,
];

/// The value stored for every list entry. The kernel only asks whether a key is present.
pub const LIST_ENTRY: u32 = 1;

/// Bits of [`Settings::lists`]: a list map is looked up only when its bit is set, so empty lists
/// cost nothing per packet. Userspace sets a bit before the first insert and clears it after
/// the last removal.
pub mod list_bit {
    pub const BLOCK4_HOST: u32 = 1 << 0;
    pub const BLOCK4_NET: u32 = 1 << 1;
    pub const BLOCK6_HOST: u32 = 1 << 2;
    pub const BLOCK6_NET: u32 = 1 << 3;
    pub const ALLOW4_HOST: u32 = 1 << 4;
    pub const ALLOW4_NET: u32 = 1 << 5;
    pub const ALLOW6_HOST: u32 = 1 << 6;
    pub const ALLOW6_NET: u32 = 1 << 7;
}

/// What the program runs with; one slot of the [`SETTINGS`] array, rewritten by the daemon at
/// run time (no reload).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Settings {
    /// Nanoseconds between two packets at the allowed rate; 0 turns the rate limit off.
    pub interval_ns: u64,
    /// How far ahead of now a source's theoretical arrival time may run: `interval_ns * burst`.
    pub burst_ns: u64,
    /// Rate-limit key prefix for IPv4 sources (0..=32).
    pub prefix4: u32,
    /// Rate-limit key prefix for IPv6 sources (0..=128).
    pub prefix6: u32,
    /// Which list maps hold entries: bits of [`list_bit`].
    pub lists: u32,
    pub _pad: u32,
}
const _: () = assert!(core::mem::size_of::<Settings>() == 32);

/// Packets and bytes seen for one verdict on one CPU.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counter {
    pub packets: u64,
    pub bytes: u64,
}
const _: () = assert!(core::mem::size_of::<Counter>() == 16);

/// Every outcome of the program; the index into [`VERDICTS`].
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Passed to the stack: not IP, or an IP source that is neither listed nor over its rate.
    Passed = 0,
    /// Passed because the source is on the allowlist (no blocklist, no rate limit).
    Allowlisted = 1,
    /// Dropped: the source is on the blocklist.
    DroppedBlocklist = 2,
    /// Dropped: the source exceeded its packet rate.
    DroppedRatelimit = 3,
    /// Dropped: truncated or malformed Ethernet, VLAN, IPv4 or IPv6 header.
    Malformed = 4,
}

impl Verdict {
    pub const COUNT: u32 = 5;
    pub const ALL: [Verdict; Self::COUNT as usize] = [
        Verdict::Passed,
        Verdict::Allowlisted,
        Verdict::DroppedBlocklist,
        Verdict::DroppedRatelimit,
        Verdict::Malformed,
    ];

    /// The stable name used in `gateway stats`, metrics and JSON.
    pub const fn name(self) -> &'static str {
        match self {
            Verdict::Passed => "passed",
            Verdict::Allowlisted => "allowlisted",
            Verdict::DroppedBlocklist => "dropped_blocklist",
            Verdict::DroppedRatelimit => "dropped_ratelimit",
            Verdict::Malformed => "malformed",
        }
    }

    /// Whether the packet goes on to the stack (`XDP_PASS`) or dies here (`XDP_DROP`).
    pub const fn passes(self) -> bool {
        matches!(self, Verdict::Passed | Verdict::Allowlisted)
    }
}

#[cfg(feature = "user")]
mod pod {
    unsafe impl aya::Pod for super::Settings {}
    unsafe impl aya::Pod for super::Counter {}
}
