//! Address arithmetic: prefix masks and the rate-limit key.

/// Rate-limit state key: the source masked to the configured prefix, IPv4 sources written as
/// IPv4-mapped IPv6 (`::ffff:a.b.c.d`) so one map serves both families.
pub type RateKey = [u8; 16];

/// A 64-bit mask with the top `bits` bits set (`bits` clamped to 0..=64).
#[inline(always)]
pub const fn mask64(bits: u32) -> u64 {
    if bits == 0 {
        0
    } else if bits >= 64 {
        u64::MAX
    } else {
        !(u64::MAX >> bits)
    }
}

/// `addr` with every bit after the first `prefix` cleared (`prefix` clamped to 0..=32).
#[inline(always)]
pub fn mask_v4(addr: [u8; 4], prefix: u32) -> [u8; 4] {
    let bits = if prefix > 32 { 32 } else { prefix };
    // The top 32 bits of a 64-bit mask are the 32-bit mask.
    let mask = (mask64(bits) >> 32) as u32;
    (u32::from_be_bytes(addr) & mask).to_be_bytes()
}

/// `addr` with every bit after the first `prefix` cleared (`prefix` clamped to 0..=128).
/// Two 64-bit halves, not `u128`: the BPF backend has no 128-bit arithmetic.
#[inline(always)]
pub fn mask_v6(addr: [u8; 16], prefix: u32) -> [u8; 16] {
    let bits = if prefix > 128 { 128 } else { prefix };
    let (hi_bits, lo_bits) = if bits >= 64 {
        (64, bits - 64)
    } else {
        (bits, 0)
    };
    let mut hi = [0u8; 8];
    let mut lo = [0u8; 8];
    hi.copy_from_slice(&addr[..8]);
    lo.copy_from_slice(&addr[8..]);
    let hi = u64::from_be_bytes(hi) & mask64(hi_bits);
    let lo = u64::from_be_bytes(lo) & mask64(lo_bits);
    let mut out = [0u8; 16];
    out[..8].copy_from_slice(&hi.to_be_bytes());
    out[8..].copy_from_slice(&lo.to_be_bytes());
    out
}

/// The rate-limit key of an IPv4 source.
#[inline(always)]
pub fn rate_key_v4(addr: [u8; 4], prefix: u32) -> RateKey {
    let m = mask_v4(addr, prefix);
    [
        0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, m[0], m[1], m[2], m[3],
    ]
}

/// The rate-limit key of an IPv6 source.
#[inline(always)]
pub fn rate_key_v6(addr: [u8; 16], prefix: u32) -> RateKey {
    mask_v6(addr, prefix)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v4_masks() {
        let a = [198, 18, 200, 77];
        assert_eq!(mask_v4(a, 32), a);
        assert_eq!(mask_v4(a, 24), [198, 18, 200, 0]);
        assert_eq!(mask_v4(a, 17), [198, 18, 128, 0]);
        assert_eq!(mask_v4(a, 0), [0, 0, 0, 0]);
        assert_eq!(mask_v4(a, 99), a);
    }

    #[test]
    fn v6_masks() {
        let a = [
            0x20, 0x01, 0x0d, 0xb8, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12,
        ];
        assert_eq!(mask_v6(a, 128), a);
        assert_eq!(
            mask_v6(a, 64),
            [0x20, 0x01, 0x0d, 0xb8, 1, 2, 3, 4, 0, 0, 0, 0, 0, 0, 0, 0]
        );
        assert_eq!(
            mask_v6(a, 32),
            [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]
        );
        assert_eq!(
            mask_v6(a, 72),
            [0x20, 0x01, 0x0d, 0xb8, 1, 2, 3, 4, 5, 0, 0, 0, 0, 0, 0, 0]
        );
        assert_eq!(mask_v6(a, 0), [0; 16]);
        assert_eq!(mask_v6(a, 200), a);
    }

    #[test]
    fn rate_keys_do_not_collide_across_families_by_accident() {
        let k4 = rate_key_v4([198, 18, 0, 1], 32);
        assert_eq!(&k4[..12], &[0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff]);
        let k6 = rate_key_v6(
            [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1],
            64,
        );
        assert_ne!(k4, k6);
    }

    proptest::proptest! {
        #[test]
        fn v4_mask_matches_u32_reference(addr: u32, prefix in 0u32..=40) {
            let p = prefix.min(32);
            let reference = if p == 0 { 0 } else { addr & (u32::MAX << (32 - p)) };
            proptest::prop_assert_eq!(mask_v4(addr.to_be_bytes(), prefix), reference.to_be_bytes());
        }

        #[test]
        fn v6_mask_matches_u128_reference(addr: u128, prefix in 0u32..=140) {
            let p = prefix.min(128);
            let reference = if p == 0 { 0 } else { addr & (u128::MAX << (128 - p)) };
            proptest::prop_assert_eq!(mask_v6(addr.to_be_bytes(), prefix), reference.to_be_bytes());
        }
    }
}
