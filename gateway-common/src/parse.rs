//! Frame parsing: Ethernet, up to [`VLAN_MAX_DEPTH`] VLAN tags, then the IPv4 or IPv6 source.
//!
//! Written against the small [`Frame`] trait so that the XDP program (bounds-checked reads of
//! the packet) and userspace tests and fuzzers (byte slices) run the same code.

/// How many VLAN tags (802.1Q, 802.1ad, or the pre-standard 0x9100) are walked. A frame with
/// more tags than this is malformed for us: its IP source is out of reach, so it must not pass
/// around the checks.
pub const VLAN_MAX_DEPTH: usize = 2;

pub const ETH_HLEN: usize = 14;
pub const VLAN_HLEN: usize = 4;
pub const IPV4_MIN_HLEN: usize = 20;
pub const IPV6_HLEN: usize = 40;

pub const ETH_P_IP: u16 = 0x0800;
pub const ETH_P_IPV6: u16 = 0x86DD;
pub const ETH_P_8021Q: u16 = 0x8100;
pub const ETH_P_8021AD: u16 = 0x88A8;
pub const ETH_P_QINQ1: u16 = 0x9100;

/// Read access to a frame. Implementations return `None` for any read past the end.
// A frame is never asked whether it is empty: the parser only compares lengths.
#[allow(clippy::len_without_is_empty)]
pub trait Frame {
    /// Bytes in the frame.
    fn len(&self) -> usize;
    /// `N` bytes at `offset`, or `None` when they are not all inside the frame.
    fn read<const N: usize>(&self, offset: usize) -> Option<[u8; N]>;
}

impl Frame for [u8] {
    fn len(&self) -> usize {
        <[u8]>::len(self)
    }

    fn read<const N: usize>(&self, offset: usize) -> Option<[u8; N]> {
        let end = offset.checked_add(N)?;
        let bytes = self.get(offset..end)?;
        let mut out = [0u8; N];
        out.copy_from_slice(bytes);
        Some(out)
    }
}

/// The source the checks apply to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    /// Not IPv4 or IPv6 (ARP, LLDP, ...): passes untouched.
    NotIp,
    V4([u8; 4]),
    V6([u8; 16]),
}

/// Why a frame is malformed. Such frames are counted and dropped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Malformed {
    /// Shorter than an Ethernet header.
    TruncatedEthernet,
    /// A VLAN tag cut short.
    TruncatedVlan,
    /// More than [`VLAN_MAX_DEPTH`] VLAN tags.
    TooManyVlans,
    /// IPv4 header shorter than 20 bytes or than its own IHL says.
    TruncatedIpv4,
    /// EtherType IPv4 but the version field is not 4.
    BadIpv4Version,
    /// IHL below 5 (20 bytes).
    BadIpv4HeaderLength,
    /// Total length shorter than the header, or longer than the frame.
    BadIpv4TotalLength,
    /// IPv6 header shorter than 40 bytes.
    TruncatedIpv6,
    /// EtherType IPv6 but the version field is not 6.
    BadIpv6Version,
}

#[inline(always)]
const fn is_vlan(ethertype: u16) -> bool {
    matches!(ethertype, ETH_P_8021Q | ETH_P_8021AD | ETH_P_QINQ1)
}

/// Walks the headers of `frame` and returns the IP source, or why the frame is malformed.
#[inline(always)]
pub fn source<F: Frame + ?Sized>(frame: &F) -> Result<Source, Malformed> {
    let [hi, lo] = frame.read::<2>(12).ok_or(Malformed::TruncatedEthernet)?;
    let mut ethertype = u16::from_be_bytes([hi, lo]);
    let mut offset = ETH_HLEN;
    for _ in 0..VLAN_MAX_DEPTH {
        if !is_vlan(ethertype) {
            break;
        }
        // TCI (2 bytes) then the encapsulated EtherType.
        let [hi, lo] = frame
            .read::<2>(offset + 2)
            .ok_or(Malformed::TruncatedVlan)?;
        ethertype = u16::from_be_bytes([hi, lo]);
        offset += VLAN_HLEN;
    }
    if is_vlan(ethertype) {
        return Err(Malformed::TooManyVlans);
    }
    match ethertype {
        ETH_P_IP => ipv4_source(frame, offset),
        ETH_P_IPV6 => ipv6_source(frame, offset),
        _ => Ok(Source::NotIp),
    }
}

#[inline(always)]
fn ipv4_source<F: Frame + ?Sized>(frame: &F, offset: usize) -> Result<Source, Malformed> {
    let h = frame
        .read::<IPV4_MIN_HLEN>(offset)
        .ok_or(Malformed::TruncatedIpv4)?;
    if h[0] >> 4 != 4 {
        return Err(Malformed::BadIpv4Version);
    }
    let header_len = usize::from(h[0] & 0x0f) * 4;
    if header_len < IPV4_MIN_HLEN {
        return Err(Malformed::BadIpv4HeaderLength);
    }
    // `offset` is at most ETH_HLEN + VLAN_MAX_DEPTH * VLAN_HLEN, so this cannot underflow once
    // the 20-byte read above succeeded.
    let available = frame.len() - offset;
    if header_len > available {
        return Err(Malformed::TruncatedIpv4);
    }
    let total_len = usize::from(u16::from_be_bytes([h[2], h[3]]));
    if total_len < header_len || total_len > available {
        return Err(Malformed::BadIpv4TotalLength);
    }
    Ok(Source::V4([h[12], h[13], h[14], h[15]]))
}

#[inline(always)]
fn ipv6_source<F: Frame + ?Sized>(frame: &F, offset: usize) -> Result<Source, Malformed> {
    let [first] = frame.read::<1>(offset).ok_or(Malformed::TruncatedIpv6)?;
    if first >> 4 != 6 {
        // Checked before the length so that a short frame with a wrong version reports the
        // version; either way it is dropped.
        if frame.len() < offset + IPV6_HLEN {
            return Err(Malformed::TruncatedIpv6);
        }
        return Err(Malformed::BadIpv6Version);
    }
    let src = frame
        .read::<16>(offset + 8)
        .ok_or(Malformed::TruncatedIpv6)?;
    if frame.len() < offset + IPV6_HLEN {
        return Err(Malformed::TruncatedIpv6);
    }
    Ok(Source::V6(src))
}

#[cfg(test)]
mod tests {
    use super::*;

    extern crate std;
    use std::vec::Vec;

    fn eth(ethertype: u16) -> Vec<u8> {
        let mut f = Vec::from([0x02, 0, 0, 0, 0, 1, 0x02, 0, 0, 0, 0, 2]);
        f.extend_from_slice(&ethertype.to_be_bytes());
        f
    }

    fn ipv4(src: [u8; 4], payload: usize) -> Vec<u8> {
        let total = (20 + payload) as u16;
        let mut h = Vec::from([0x45, 0, 0, 0, 0, 0, 0x40, 0, 64, 17, 0, 0]);
        h[2..4].copy_from_slice(&total.to_be_bytes());
        h.extend_from_slice(&src);
        h.extend_from_slice(&[198, 18, 0, 1]);
        h.resize(20 + payload, 0xab);
        h
    }

    fn ipv6(src: [u8; 16]) -> Vec<u8> {
        let mut h = Vec::from([0x60, 0, 0, 0, 0, 8, 17, 64]);
        h.extend_from_slice(&src);
        h.extend_from_slice(&[0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
        h.resize(48, 0);
        h
    }

    fn tagged(tags: &[u16], inner: u16) -> Vec<u8> {
        let Some((first, rest)) = tags.split_first() else {
            return eth(inner);
        };
        let mut f = eth(*first);
        for (i, _) in tags.iter().enumerate() {
            f.extend_from_slice(&[0, 100]);
            let next = rest.get(i).copied().unwrap_or(inner);
            f.extend_from_slice(&next.to_be_bytes());
        }
        f
    }

    const SRC4: [u8; 4] = [198, 18, 7, 9];
    const SRC6: [u8; 16] = [0x20, 0x01, 0x0d, 0xb8, 0, 7, 0, 0, 0, 0, 0, 0, 0, 0, 0, 9];

    #[test]
    fn plain_and_tagged_sources() {
        let cases: &[(&str, &[u16])] = &[
            ("untagged", &[]),
            ("802.1Q", &[ETH_P_8021Q]),
            ("802.1ad", &[ETH_P_8021AD]),
            ("QinQ 802.1ad + 802.1Q", &[ETH_P_8021AD, ETH_P_8021Q]),
            ("0x9100 + 802.1Q", &[ETH_P_QINQ1, ETH_P_8021Q]),
        ];
        for (name, tags) in cases {
            let mut f = tagged(tags, ETH_P_IP);
            f.extend(ipv4(SRC4, 8));
            assert_eq!(source(&f[..]), Ok(Source::V4(SRC4)), "{name} v4");
            let mut f = tagged(tags, ETH_P_IPV6);
            f.extend(ipv6(SRC6));
            assert_eq!(source(&f[..]), Ok(Source::V6(SRC6)), "{name} v6");
        }
    }

    #[test]
    fn non_ip_passes_untouched() {
        let mut f = eth(0x0806);
        f.resize(42, 0);
        assert_eq!(source(&f[..]), Ok(Source::NotIp));
        let mut f = tagged(&[ETH_P_8021Q], 0x88cc);
        f.resize(60, 0);
        assert_eq!(source(&f[..]), Ok(Source::NotIp));
    }

    #[test]
    fn malformed_frames() {
        let mut three = tagged(&[ETH_P_8021AD, ETH_P_8021Q, ETH_P_8021Q], ETH_P_IP);
        three.extend(ipv4(SRC4, 8));
        assert_eq!(source(&three[..]), Err(Malformed::TooManyVlans));

        let short_tag = &tagged(&[ETH_P_8021Q], ETH_P_IP)[..16];
        assert_eq!(source(short_tag), Err(Malformed::TruncatedVlan));

        let mut f = eth(ETH_P_IP);
        f.extend(&ipv4(SRC4, 0)[..19]);
        assert_eq!(source(&f[..]), Err(Malformed::TruncatedIpv4));

        let mut f = eth(ETH_P_IP);
        let mut h = ipv4(SRC4, 8);
        h[0] = 0x65;
        f.extend(h);
        assert_eq!(source(&f[..]), Err(Malformed::BadIpv4Version));

        let mut f = eth(ETH_P_IP);
        let mut h = ipv4(SRC4, 8);
        h[0] = 0x44;
        f.extend(h);
        assert_eq!(source(&f[..]), Err(Malformed::BadIpv4HeaderLength));

        let mut f = eth(ETH_P_IP);
        let mut h = ipv4(SRC4, 8);
        h[0] = 0x4f; // 60-byte header in a 28-byte packet
        f.extend(h);
        assert_eq!(source(&f[..]), Err(Malformed::TruncatedIpv4));

        for total in [0u16, 19, 29, 1500] {
            let mut f = eth(ETH_P_IP);
            let mut h = ipv4(SRC4, 8);
            h[2..4].copy_from_slice(&total.to_be_bytes());
            f.extend(h);
            assert_eq!(
                source(&f[..]),
                Err(Malformed::BadIpv4TotalLength),
                "total {total}"
            );
        }

        let mut f = eth(ETH_P_IPV6);
        f.extend(&ipv6(SRC6)[..39]);
        assert_eq!(source(&f[..]), Err(Malformed::TruncatedIpv6));

        let mut f = eth(ETH_P_IPV6);
        let mut h = ipv6(SRC6);
        h[0] = 0x40;
        f.extend(h);
        assert_eq!(source(&f[..]), Err(Malformed::BadIpv6Version));
    }

    #[test]
    fn every_truncation_is_malformed_never_a_source() {
        for tags in [
            &[][..],
            &[ETH_P_8021Q][..],
            &[ETH_P_8021AD, ETH_P_8021Q][..],
        ] {
            let mut v4 = tagged(tags, ETH_P_IP);
            v4.extend(ipv4(SRC4, 0));
            let mut v6 = tagged(tags, ETH_P_IPV6);
            v6.extend(&ipv6(SRC6)[..IPV6_HLEN]);
            for full in [&v4, &v6] {
                assert!(source(&full[..]).is_ok());
                for cut in 0..full.len() {
                    let r = source(&full[..cut]);
                    assert!(r.is_err(), "cut at {cut} of {} gave {r:?}", full.len());
                }
            }
        }
    }

    proptest::proptest! {
        /// Arbitrary bytes never panic, and anything reported as IPv4 really carries a full
        /// IPv4 header at a VLAN-consistent offset.
        #[test]
        fn arbitrary_frames(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..120)) {
            match source(&bytes[..]) {
                Ok(Source::V4(_)) => proptest::prop_assert!(bytes.len() >= ETH_HLEN + IPV4_MIN_HLEN),
                Ok(Source::V6(_)) => proptest::prop_assert!(bytes.len() >= ETH_HLEN + IPV6_HLEN),
                _ => {}
            }
        }
    }
}
