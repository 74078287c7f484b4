//! Builders for Ethernet frames: UDP over IPv4 or IPv6, with 0, 1 or 2 VLAN tags, and the
//! broken variants the XDP program must count as malformed.

use std::net::{Ipv4Addr, Ipv6Addr};

pub const ETH_P_IP: u16 = 0x0800;
pub const ETH_P_IPV6: u16 = 0x86DD;
pub const ETH_P_8021Q: u16 = 0x8100;
pub const ETH_P_8021AD: u16 = 0x88A8;

/// Ethernet header with `tags` VLAN tags (TPID, VLAN id) before `ethertype`.
pub fn ethernet(dst: [u8; 6], src: [u8; 6], tags: &[(u16, u16)], ethertype: u16) -> Vec<u8> {
    let mut f = Vec::with_capacity(64);
    f.extend_from_slice(&dst);
    f.extend_from_slice(&src);
    for (tpid, vid) in tags {
        f.extend_from_slice(&tpid.to_be_bytes());
        f.extend_from_slice(&(vid & 0x0fff).to_be_bytes());
    }
    f.extend_from_slice(&ethertype.to_be_bytes());
    f
}

fn checksum(bytes: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    for chunk in bytes.chunks(2) {
        let word = u16::from_be_bytes([chunk[0], *chunk.get(1).unwrap_or(&0)]);
        sum += u32::from(word);
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// IPv4 + UDP packet (no Ethernet), checksums right (UDP checksum 0: none, valid for IPv4).
pub fn ipv4_udp(src: Ipv4Addr, dst: Ipv4Addr, dport: u16, payload: &[u8]) -> Vec<u8> {
    let total = 20 + 8 + payload.len();
    let mut p = Vec::with_capacity(total);
    p.extend_from_slice(&[
        0x45,
        0,
        (total >> 8) as u8,
        total as u8,
        0,
        0,
        0x40,
        0,
        64,
        17,
        0,
        0,
    ]);
    p.extend_from_slice(&src.octets());
    p.extend_from_slice(&dst.octets());
    let c = checksum(&p[..20]);
    p[10..12].copy_from_slice(&c.to_be_bytes());
    let ulen = (8 + payload.len()) as u16;
    p.extend_from_slice(&40000u16.to_be_bytes());
    p.extend_from_slice(&dport.to_be_bytes());
    p.extend_from_slice(&ulen.to_be_bytes());
    p.extend_from_slice(&[0, 0]);
    p.extend_from_slice(payload);
    p
}

/// IPv6 + UDP packet with a correct UDP checksum (mandatory over IPv6).
pub fn ipv6_udp(src: Ipv6Addr, dst: Ipv6Addr, dport: u16, payload: &[u8]) -> Vec<u8> {
    let ulen = 8 + payload.len();
    let mut p = Vec::with_capacity(40 + ulen);
    p.extend_from_slice(&[0x60, 0, 0, 0, (ulen >> 8) as u8, ulen as u8, 17, 64]);
    p.extend_from_slice(&src.octets());
    p.extend_from_slice(&dst.octets());
    let mut udp = Vec::with_capacity(ulen);
    udp.extend_from_slice(&40000u16.to_be_bytes());
    udp.extend_from_slice(&dport.to_be_bytes());
    udp.extend_from_slice(&(ulen as u16).to_be_bytes());
    udp.extend_from_slice(&[0, 0]);
    udp.extend_from_slice(payload);
    let mut pseudo = Vec::with_capacity(40 + ulen);
    pseudo.extend_from_slice(&src.octets());
    pseudo.extend_from_slice(&dst.octets());
    pseudo.extend_from_slice(&(ulen as u32).to_be_bytes());
    pseudo.extend_from_slice(&[0, 0, 0, 17]);
    pseudo.extend_from_slice(&udp);
    let mut c = checksum(&pseudo);
    if c == 0 {
        c = 0xffff;
    }
    udp[6..8].copy_from_slice(&c.to_be_bytes());
    p.extend_from_slice(&udp);
    p
}

/// A whole frame: Ethernet (with tags) + IPv4/UDP.
pub fn udp4_frame(
    dst: [u8; 6],
    src: [u8; 6],
    tags: &[(u16, u16)],
    from: Ipv4Addr,
    to: Ipv4Addr,
    dport: u16,
    payload: &[u8],
) -> Vec<u8> {
    let mut f = ethernet(dst, src, tags, ETH_P_IP);
    f.extend_from_slice(&ipv4_udp(from, to, dport, payload));
    f
}

/// A whole frame: Ethernet (with tags) + IPv6/UDP.
pub fn udp6_frame(
    dst: [u8; 6],
    src: [u8; 6],
    tags: &[(u16, u16)],
    from: Ipv6Addr,
    to: Ipv6Addr,
    dport: u16,
    payload: &[u8],
) -> Vec<u8> {
    let mut f = ethernet(dst, src, tags, ETH_P_IPV6);
    f.extend_from_slice(&ipv6_udp(from, to, dport, payload));
    f
}

/// A 64-byte IPv4/UDP frame (the benchmark's frame size) from `from`.
pub fn udp4_64(from: Ipv4Addr) -> Vec<u8> {
    udp4_frame(
        [2, 0, 0, 0, 0, 1],
        [2, 0, 0, 0, 0, 2],
        &[],
        from,
        Ipv4Addr::new(198, 18, 0, 1),
        9,
        &[0; 22],
    )
}

/// A 64-byte... IPv6 frames cannot be 64 bytes (14 + 40 + 8 = 62 before payload): 2 bytes of
/// payload make 64.
pub fn udp6_64(from: Ipv6Addr) -> Vec<u8> {
    udp6_frame(
        [2, 0, 0, 0, 0, 1],
        [2, 0, 0, 0, 0, 2],
        &[],
        from,
        "2001:db8::1".parse().unwrap(),
        9,
        &[0; 2],
    )
}

/// Named malformed frames, each of which the program must count as malformed and drop. `src`
/// is the IPv4/IPv6 source written where there is one (use a source that would pass).
pub fn malformed(
    dst: [u8; 6],
    src_mac: [u8; 6],
    v4: Ipv4Addr,
    v6: Ipv6Addr,
) -> Vec<(&'static str, Vec<u8>)> {
    let good4 = ipv4_udp(v4, Ipv4Addr::new(198, 18, 0, 1), 9, &[0; 18]);
    let good6 = ipv6_udp(v6, "2001:db8::1".parse().unwrap(), 9, &[0; 18]);
    let with = |tags: &[(u16, u16)], ethertype: u16, body: &[u8]| {
        let mut f = ethernet(dst, src_mac, tags, ethertype);
        f.extend_from_slice(body);
        f
    };
    let mut v = Vec::new();
    v.push((
        "ipv4 header cut to 19 bytes",
        with(&[], ETH_P_IP, &good4[..19]),
    ));
    v.push(("ipv4 ethertype, empty payload", with(&[], ETH_P_IP, &[])));
    let mut p = good4.clone();
    p[0] = 0x44; // IHL 4: 16-byte header
    v.push(("ipv4 IHL 4", with(&[], ETH_P_IP, &p)));
    let mut p = good4.clone();
    p[0] = 0x4f; // IHL 15: 60-byte header, frame shorter
    v.push((
        "ipv4 IHL 15 beyond the frame",
        with(&[], ETH_P_IP, &p[..46]),
    ));
    let mut p = good4.clone();
    p[0] = 0x65; // version 6 under the IPv4 ethertype
    v.push(("ipv4 ethertype, version 6", with(&[], ETH_P_IP, &p)));
    let mut p = good4.clone();
    p[2..4].copy_from_slice(&2000u16.to_be_bytes()); // total length beyond the frame
    v.push((
        "ipv4 total length beyond the frame",
        with(&[], ETH_P_IP, &p),
    ));
    let mut p = good4.clone();
    p[2..4].copy_from_slice(&10u16.to_be_bytes()); // total length below the header
    v.push((
        "ipv4 total length below the header",
        with(&[], ETH_P_IP, &p),
    ));
    v.push((
        "ipv6 header cut to 39 bytes",
        with(&[], ETH_P_IPV6, &good6[..39]),
    ));
    let mut p = good6.clone();
    p[0] = 0x40;
    v.push(("ipv6 ethertype, version 4", with(&[], ETH_P_IPV6, &p)));
    v.push(("vlan tag cut short", {
        let mut f = ethernet(dst, src_mac, &[], ETH_P_8021Q);
        f.extend_from_slice(&[0, 10]);
        f
    }));
    v.push((
        "three vlan tags",
        with(
            &[(ETH_P_8021AD, 1), (ETH_P_8021Q, 2), (ETH_P_8021Q, 3)],
            ETH_P_IP,
            &good4,
        ),
    ));
    v.push((
        "ipv4 in two tags, header cut",
        with(
            &[(ETH_P_8021AD, 1), (ETH_P_8021Q, 2)],
            ETH_P_IP,
            &good4[..12],
        ),
    ));
    v
}
