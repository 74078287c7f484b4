//! The keyed hashes of the list table and the rate-limit table, computed alike by the program
//! and by the daemon.
//!
//! Not cryptographic: the seed is secret and random per load, and the worst an attacker who
//! guessed bucket collisions could do is push list keys to the overflow map (a slower lookup)
//! or evict rate-limit slots (which fails open for the evicted source).

/// The 64-bit finalizer of SplitMix64: every input bit affects every output bit.
#[inline(always)]
pub const fn mix(mut x: u64) -> u64 {
    x ^= x >> 30;
    x = x.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x ^= x >> 27;
    x = x.wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// The fingerprint of a rate-limit source key, stored in its slot instead of the 16-byte key.
/// Two keys share one with probability 2^-64 (and would then share a limit).
#[inline(always)]
pub const fn rate_fingerprint(seed: u64, hi: u64, lo: u64) -> u64 {
    // A different seed than the list table's, so that the two never line up.
    let h = mix(seed.rotate_left(32) ^ hi ^ 0x5261_7465);
    mix(h ^ lo)
}

/// The rate-table bucket of a fingerprint: its top bits, independent of the bits that decide
/// equality only in the rare case of a shared bucket.
#[inline(always)]
pub const fn rate_bucket(fingerprint: u64, buckets_mask: u32) -> u32 {
    (fingerprint >> 32) as u32 & buckets_mask
}

/// The fingerprint of a source address in the drop-event table: the address halves as the
/// program loads them (an IPv4 address in `hi`, `lo` zero) and its family.
#[inline(always)]
pub const fn event_fingerprint(seed: u64, family: u32, hi: u64, lo: u64) -> u64 {
    // Another salt than the rate table's, so a source's slots in the two tables are unrelated.
    let h = mix(seed.rotate_left(16) ^ hi ^ 0x4576_656e_7400 ^ family as u64);
    mix(h ^ lo)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mix_spreads_neighbouring_inputs() {
        // Consecutive inputs (neighbouring addresses) land in different buckets of a small
        // table more often than not.
        let words: [u32; 64] = core::array::from_fn(|i| rate_bucket(mix(i as u64), 1023));
        let mut distinct = 0;
        for (i, w) in words.iter().enumerate() {
            if !words[..i].contains(w) {
                distinct += 1;
            }
        }
        assert!(distinct > 55, "{distinct} distinct words of 64");
    }

    #[test]
    fn buckets_stay_in_range_and_depend_on_the_seed() {
        let bucket = |seed, hi, lo| rate_bucket(rate_fingerprint(seed, hi, lo), 255);
        assert!(bucket(1, 0, 7) <= 255 && bucket(2, 0, 7) <= 255);
        let differ = (0..64u64)
            .filter(|s| bucket(*s, 3, 4) != bucket(*s + 64, 3, 4))
            .count();
        assert!(differ > 56);
    }
}
