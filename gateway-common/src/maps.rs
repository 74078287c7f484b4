//! Map names and the `#[repr(C)]` keys and values stored in them.
//!
//! Map names are the symbols of the statics in `gateway-ebpf`; the kernel keeps at most 15
//! characters of a map name, so every name here fits in 15.

/// The list keys of both families: an array of [`ListBucket`]s, `Settings::list_buckets_mask +
/// 1` of them, indexed by the key's fingerprint (see [`lists`]).
pub const LIST_TABLE: &str = "LIST_TABLE";
/// IPv4 keys whose bucket in [`LIST_TABLE`] was full: hash map from [`lists::Key4`] to flags.
pub const LIST4: &str = "LIST4";
/// IPv6 keys whose bucket in [`LIST_TABLE`] was full: hash map from [`lists::Key6`] to flags.
pub const LIST6: &str = "LIST6";
/// Per-source rate-limit state: an array of [`RateBucket`]s, `Settings::rate_buckets_mask + 1`
/// of them, indexed by a keyed hash of the source key.
pub const RATE_STATE: &str = "RATE_STATE";
/// One-slot array holding the [`Settings`] the program runs with.
pub const SETTINGS: &str = "SETTINGS";
/// Per-CPU array of [`Counter`]s, indexed by [`Verdict`].
pub const VERDICTS: &str = "VERDICTS";
/// Ring buffer of [`events::DropEvent`]s: sampled drops, for the daemon (audit log, metrics,
/// `gateway stats --top`).
pub const EVENTS: &str = "EVENTS";
/// When each source last got a drop event: an array of [`events::EventSlot`]s,
/// `Settings::event_slots_mask + 1` of them, indexed by a keyed hash of the source address.
pub const EVENT_STATE: &str = "EVENT_STATE";
/// Per-CPU one-slot array of [`events::EventBudget`]: the events each CPU may still send this
/// second, and what it could not send.
pub const EVENT_BUDGET: &str = "EVENT_BUDGET";

/// How the blocklist and the allowlist are laid out for the kernel.
///
/// Every listed network is stored under keys whose prefix length is a multiple of the family's
/// stride ([`STRIDE4`](lists::STRIDE4) = 4, [`STRIDE6`](lists::STRIDE6) = 8), a "target"
/// length: a network of length `len` becomes the `2^(target - len)` networks of the next
/// target length that make it up (at most 8 for IPv4, 128 for IPv6). The strides trade keys
/// per network against lookups per packet (one per target length in use: at most 9 for IPv4,
/// 17 for IPv6); IPv4 feeds are full of prefixes of every length, IPv6 feeds mostly use
/// lengths that are multiples of 8 or close to them. A key carries the [`BLOCK`](lists::BLOCK) and [`ALLOW`](lists::ALLOW) flags of every listed
/// network stored under it.
///
/// Keys live in [`LIST_TABLE`](super::LIST_TABLE), a four-way hash table in an array: a key's
/// keyed 64-bit fingerprint picks its bucket and is stored in one of the bucket's slots with
/// the flags. A key whose bucket is full goes to the family's overflow hash map
/// ([`LIST4`](super::LIST4), [`LIST6`](super::LIST6)) and the bucket counts it.
///
/// Per packet the program masks the source to each target length that holds keys
/// (`Settings::targets4` / `targets6`) and reads one bucket for each: array reads that the
/// verifier inlines, no helper call, no trie walk. Only a bucket with overflowed keys costs a
/// hash lookup.
///
/// IPv4 fingerprints are exact (a bijection of length and address). IPv6 fingerprints of two
/// different keys are equal with probability 2^-64 under the secret seed; the daemon keeps the
/// keys themselves and never stores two keys with one fingerprint in the table.
pub mod lists {
    /// The source is on the blocklist.
    pub const BLOCK: u32 = 1;
    /// The source is on the allowlist (wins over [`BLOCK`]).
    pub const ALLOW: u32 = 2;
    /// IPv4 target prefix lengths are multiples of this.
    pub const STRIDE4: u32 = 4;
    /// IPv6 target prefix lengths are multiples of this.
    pub const STRIDE6: u32 = 8;

    /// An IPv4 key: a target length and the address masked to it (network byte order).
    #[repr(C)]
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
    pub struct Key4 {
        pub len: u32,
        pub addr: [u8; 4],
    }

    /// An IPv6 key: a target length and the address masked to it (network byte order).
    #[repr(C)]
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
    pub struct Key6 {
        pub len: u32,
        pub addr: [u8; 16],
    }

    /// The target length an IPv4 network of length `len` is stored at.
    #[inline(always)]
    pub const fn target4(len: u32) -> u32 {
        len.div_ceil(STRIDE4) * STRIDE4
    }

    /// The target length an IPv6 network of length `len` is stored at.
    #[inline(always)]
    pub const fn target6(len: u32) -> u32 {
        len.div_ceil(STRIDE6) * STRIDE6
    }

    /// The bit of an IPv4 target length in `Settings::targets4`.
    #[inline(always)]
    pub const fn target_bit4(target: u32) -> u32 {
        1 << (target / STRIDE4)
    }

    /// The bit of an IPv6 target length in `Settings::targets6`.
    #[inline(always)]
    pub const fn target_bit6(target: u32) -> u32 {
        1 << (target / STRIDE6)
    }

    /// The mask of a `len`-bit IPv4 prefix, for an address read as a little-endian `u32`
    /// from its network-order bytes (what a plain load gives the program).
    #[inline(always)]
    pub const fn mask4(len: u32) -> u32 {
        ((crate::net::mask64(len) >> 32) as u32).swap_bytes()
    }

    /// The masks of a `len`-bit IPv6 prefix for the two halves of the address, each read as
    /// a little-endian `u64` from its network-order bytes.
    #[inline(always)]
    pub const fn mask6(len: u32) -> (u64, u64) {
        let hi = if len >= 64 { 64 } else { len };
        let lo = len.saturating_sub(64);
        (
            crate::net::mask64(hi).swap_bytes(),
            crate::net::mask64(lo).swap_bytes(),
        )
    }

    /// The two halves of an IPv6 address, each read little-endian from its network-order
    /// bytes: what a plain 8-byte load gives the program.
    #[inline(always)]
    pub const fn halves(addr: [u8; 16]) -> (u64, u64) {
        let [a0, a1, a2, a3, a4, a5, a6, a7, b0, b1, b2, b3, b4, b5, b6, b7] = addr;
        (
            u64::from_le_bytes([a0, a1, a2, a3, a4, a5, a6, a7]),
            u64::from_le_bytes([b0, b1, b2, b3, b4, b5, b6, b7]),
        )
    }

    /// The fingerprint of an IPv4 key (`addr` as in [`mask4`]). Never equal for two keys.
    #[inline(always)]
    pub const fn fingerprint4(seed: u64, len: u32, addr: u32) -> u64 {
        crate::hash::mix(seed ^ ((len as u64) << 32) ^ addr as u64)
    }

    /// The fingerprint of an IPv6 key (halves as in [`mask6`]).
    #[inline(always)]
    pub const fn fingerprint6(seed: u64, len: u32, hi: u64, lo: u64) -> u64 {
        let h = crate::hash::mix(seed ^ hi ^ (0x100 | len as u64));
        crate::hash::mix(h.rotate_left(17) ^ lo)
    }

    /// The bucket of a fingerprint: its top bits.
    #[inline(always)]
    pub const fn bucket(fingerprint: u64, buckets_mask: u32) -> u32 {
        (fingerprint >> 32) as u32 & buckets_mask
    }

    impl Key4 {
        pub const fn fingerprint(&self, seed: u64) -> u64 {
            fingerprint4(seed, self.len, u32::from_le_bytes(self.addr))
        }
    }

    impl Key6 {
        pub const fn fingerprint(&self, seed: u64) -> u64 {
            let (hi, lo) = halves(self.addr);
            fingerprint6(seed, self.len, hi, lo)
        }
    }

    /// Slots per [`ListBucket`].
    pub const WAYS: usize = 4;

    /// A bucket of [`LIST_TABLE`](super::LIST_TABLE): one cache line.
    #[repr(C)]
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
    pub struct ListBucket {
        /// Fingerprints of the keys held; 0 is an empty slot (a key whose fingerprint is 0
        /// goes to the overflow map).
        pub fingerprints: [u64; WAYS],
        /// Flags of the key in the same slot.
        pub flags: [u32; WAYS],
        /// Keys of this bucket held in the overflow map instead.
        pub overflow: u32,
        pub _pad: [u32; 3],
    }
    const _: () = assert!(core::mem::size_of::<ListBucket>() == 64);
}

/// One source's rate-limit state: a fingerprint of its key (`crate::hash::rate_fingerprint`)
/// and its GCRA theoretical arrival time.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RateSlot {
    pub fingerprint: u64,
    /// Theoretical arrival time in nanoseconds of the program's clock; 0 for an empty slot,
    /// which then behaves exactly like a new source.
    pub tat: u64,
}

/// Slots per [`RateBucket`].
pub const RATE_WAYS: usize = 4;

/// A bucket of the rate-limit table: four slots in one cache line. A source takes whichever
/// slot holds its fingerprint; a new source replaces the slot with the earliest arrival time,
/// the one least likely to be over its limit.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RateBucket {
    pub slots: [RateSlot; RATE_WAYS],
}
const _: () = assert!(core::mem::size_of::<RateBucket>() == 64);

/// What the program runs with; one slot of the [`SETTINGS`] array, rewritten by the daemon at
/// run time (no reload).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Settings {
    /// Nanoseconds between two packets at the allowed rate; 0 turns the rate limit off.
    pub interval_ns: u64,
    /// How far ahead of now a source's theoretical arrival time may run: `interval_ns * burst`.
    pub burst_ns: u64,
    /// Nanoseconds per kernel tick (jiffy): the program's clock is `jiffies * tick_ns`.
    pub tick_ns: u64,
    /// Secret seed of the list and rate-table fingerprints, random per load, so that no one
    /// outside can aim sources at a chosen bucket.
    pub seed: u64,
    /// Rate-limit key prefix for IPv4 sources (0..=32).
    pub prefix4: u32,
    /// Rate-limit key prefix for IPv6 sources (0..=128).
    pub prefix6: u32,
    /// Target lengths that hold IPv4 keys: bits of [`lists::target_bit4`].
    pub targets4: u32,
    /// Target lengths that hold IPv6 keys: bits of [`lists::target_bit6`].
    pub targets6: u32,
    /// Buckets in [`LIST_TABLE`] minus one (a power of two minus one).
    pub list_buckets_mask: u32,
    /// Buckets in [`RATE_STATE`] minus one (a power of two minus one).
    pub rate_buckets_mask: u32,
    /// Least nanoseconds between two drop events of one source; 0 turns drop events off.
    pub event_interval_ns: u64,
    /// Drop events each CPU may send per `event_interval_ns` at most, whatever the sources.
    pub events_per_cpu: u32,
    /// Slots in [`EVENT_STATE`] minus one (a power of two minus one).
    pub event_slots_mask: u32,
}
const _: () = assert!(core::mem::size_of::<Settings>() == 72);

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

/// Drop events: what the program tells the daemon about the packets it drops.
///
/// Per source address the program sends at most one event per `Settings::event_interval_ns`
/// (one second), carrying the drops of that source since its previous event; each CPU sends at
/// most `Settings::events_per_cpu` events per interval whatever the number of sources, so a
/// flood from random sources costs the kernel one array read and a few writes per packet, and
/// the daemon a bounded number of events.
pub mod events {
    /// `family` of an IPv4 source (the address in the first four bytes).
    pub const FAMILY_V4: u32 = 4;
    /// `family` of an IPv6 source.
    pub const FAMILY_V6: u32 = 6;

    /// One sampled drop.
    #[repr(C)]
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
    pub struct DropEvent {
        /// The source address in network order: IPv4 in the first four bytes, the rest zero.
        pub addr: [u8; 16],
        /// [`FAMILY_V4`] or [`FAMILY_V6`].
        pub family: u32,
        /// Why the packet was dropped: a [`Verdict`](crate::Verdict) as `u32` (never cast
        /// back without checking; see `Verdict::from_u32`).
        pub verdict: u32,
        /// Packets of this source dropped since its previous event, this one included.
        /// Approximate: CPUs add to it without atomics.
        pub packets: u64,
    }
    const _: () = assert!(core::mem::size_of::<DropEvent>() == 32);

    /// One source's sampling state in [`EVENT_STATE`](super::EVENT_STATE).
    #[repr(C)]
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
    pub struct EventSlot {
        /// Fingerprint of the source address ([`crate::hash::event_fingerprint`]); 0 is empty.
        pub fingerprint: u64,
        /// When its last event was sent (the program's clock, nanoseconds).
        pub last_ns: u64,
        /// Drops since then.
        pub packets: u64,
    }
    const _: () = assert!(core::mem::size_of::<EventSlot>() == 24);

    /// One CPU's event budget in [`EVENT_BUDGET`](super::EVENT_BUDGET).
    #[repr(C)]
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
    pub struct EventBudget {
        /// Start of the current interval.
        pub window_ns: u64,
        /// Events sent in it.
        pub sent: u64,
        /// Events not sent because the budget was spent (the drops are carried to the source's
        /// next event).
        pub suppressed: u64,
        /// Events not sent because the ring buffer was full.
        pub lost: u64,
    }
    const _: () = assert!(core::mem::size_of::<EventBudget>() == 32);

    /// Whether a source whose last event was sent at `last_ns` gets one at `now_ns`.
    #[inline(always)]
    pub const fn due(now_ns: u64, last_ns: u64, interval_ns: u64) -> bool {
        now_ns.wrapping_sub(last_ns) >= interval_ns
    }
}

impl Verdict {
    /// The verdict numbered `n`, if there is one.
    pub const fn from_u32(n: u32) -> Option<Verdict> {
        match n {
            0 => Some(Verdict::Passed),
            1 => Some(Verdict::Allowlisted),
            2 => Some(Verdict::DroppedBlocklist),
            3 => Some(Verdict::DroppedRatelimit),
            4 => Some(Verdict::Malformed),
            _ => None,
        }
    }
}

#[cfg(feature = "user")]
mod pod {
    unsafe impl aya::Pod for super::events::DropEvent {}
    unsafe impl aya::Pod for super::events::EventSlot {}
    unsafe impl aya::Pod for super::events::EventBudget {}
    unsafe impl aya::Pod for super::Settings {}
    unsafe impl aya::Pod for super::Counter {}
    unsafe impl aya::Pod for super::RateBucket {}
    unsafe impl aya::Pod for super::lists::Key4 {}
    unsafe impl aya::Pod for super::lists::Key6 {}
    unsafe impl aya::Pod for super::lists::ListBucket {}
}

#[cfg(test)]
mod tests {
    use super::lists::*;
    use super::{events, Verdict};

    #[test]
    fn verdicts_round_trip_through_u32() {
        for v in Verdict::ALL {
            assert_eq!(Verdict::from_u32(v as u32), Some(v));
        }
        assert_eq!(Verdict::from_u32(Verdict::COUNT), None);
    }

    #[test]
    fn events_are_due_once_per_interval_across_clock_wraps() {
        let s = 1_000_000_000;
        assert!(!events::due(5 * s, 5 * s, s));
        assert!(!events::due(6 * s - 1, 5 * s, s));
        assert!(events::due(6 * s, 5 * s, s));
        assert!(events::due(10, u64::MAX - s, s));
        assert!(!events::due(10, u64::MAX - 5, s));
    }

    use crate::net::{mask_v4, mask_v6};
    use proptest::prelude::*;

    #[test]
    fn targets_round_up_to_the_stride() {
        assert_eq!(
            [0, 1, 4, 5, 8, 22, 25, 32].map(target4),
            [0, 4, 4, 8, 8, 24, 28, 32]
        );
        assert_eq!(
            [0, 1, 7, 8, 9, 48, 65, 127, 128].map(target6),
            [0, 8, 8, 8, 16, 48, 72, 128, 128]
        );
        assert_eq!(target_bit4(32), 1 << 8);
        assert_eq!(target_bit6(128), 1 << 16);
    }

    proptest! {
        /// The program's masks on raw loads equal the byte-wise masks.
        #[test]
        fn raw_masks_match_byte_masks(a in any::<[u8; 4]>(), b in any::<[u8; 16]>(), len in 0u32..=128) {
            let l4 = len.min(32);
            let raw = u32::from_le_bytes(a) & mask4(l4);
            prop_assert_eq!(raw.to_le_bytes(), mask_v4(a, l4));
            let (mh, ml) = mask6(len);
            let hi = u64::from_le_bytes(b[..8].try_into().unwrap()) & mh;
            let lo = u64::from_le_bytes(b[8..].try_into().unwrap()) & ml;
            let mut got = [0u8; 16];
            got[..8].copy_from_slice(&hi.to_le_bytes());
            got[8..].copy_from_slice(&lo.to_le_bytes());
            prop_assert_eq!(got, mask_v6(b, len));
        }

        /// A key's fingerprint computed from its bytes equals the one the program computes
        /// from the masked raw loads.
        #[test]
        fn fingerprints_agree(a in any::<[u8; 4]>(), b in any::<[u8; 16]>(), len in 0u32..=128, seed in any::<u64>()) {
            let l4 = len.min(32);
            let raw = u32::from_le_bytes(a) & mask4(l4);
            let key = Key4 { len: l4, addr: raw.to_le_bytes() };
            prop_assert_eq!(key.fingerprint(seed), fingerprint4(seed, l4, raw));
            let (mh, ml) = mask6(len);
            let hi = u64::from_le_bytes(b[..8].try_into().unwrap()) & mh;
            let lo = u64::from_le_bytes(b[8..].try_into().unwrap()) & ml;
            let key = Key6 { len, addr: mask_v6(b, len) };
            prop_assert_eq!(key.fingerprint(seed), fingerprint6(seed, len, hi, lo));
        }
    }
}
