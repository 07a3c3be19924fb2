//! Internet checksums (RFC 1071), computed over whole headers and payloads.

use crate::frame::Addr;

/// One's complement sum of `data` (big-endian words, odd tail padded)
/// added to `acc`, not yet folded.
pub fn sum16(data: &[u8], mut acc: u64) -> u64 {
    let mut chunks = data.chunks_exact(2);
    for c in &mut chunks {
        acc += u16::from_be_bytes([c[0], c[1]]) as u64;
    }
    if let [b] = chunks.remainder() {
        acc += (*b as u64) << 8;
    }
    acc
}

/// `acc` folded to 16 bits (end-around carry).
pub fn fold(mut acc: u64) -> u16 {
    while acc >> 16 != 0 {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    acc as u16
}

/// The checksum field of an IPv4 header `ip` whose checksum field is zero.
pub fn ipv4_header(ip: &[u8]) -> u16 {
    !fold(sum16(ip, 0))
}

/// The UDP pseudo-header of `src` -> `dst` (IPv4: RFC 768; IPv6: RFC 8200
/// 8.1) for a UDP datagram of `udp_len` bytes.
pub fn pseudo_header(src: Addr, dst: Addr, udp_len: usize) -> Vec<u8> {
    let mut p = Vec::new();
    match (src, dst) {
        (Addr::V4(s), Addr::V4(d)) => {
            p.extend(s.octets());
            p.extend(d.octets());
            p.extend([0, 17]);
            p.extend((udp_len as u16).to_be_bytes());
        }
        (Addr::V6(s), Addr::V6(d)) => {
            p.extend(s.octets());
            p.extend(d.octets());
            p.extend((udp_len as u32).to_be_bytes());
            p.extend([0, 0, 0, 17]);
        }
        _ => panic!("mixed families"),
    }
    p
}

/// Full UDP checksum of `udp` (header with checksum field zero + payload);
/// a computed 0 is sent as 0xffff.
pub fn udp(src: Addr, dst: Addr, udp: &[u8]) -> u16 {
    let acc = sum16(&pseudo_header(src, dst, udp.len()), 0);
    match !fold(sum16(udp, acc)) {
        0 => 0xffff,
        c => c,
    }
}

/// Whether the UDP datagram `udp` (checksum field included) verifies.
pub fn udp_ok(src: Addr, dst: Addr, udp: &[u8]) -> bool {
    let acc = sum16(&pseudo_header(src, dst, udp.len()), 0);
    fold(sum16(udp, acc)) == 0xffff
}

/// Verify the IPv4 header and UDP checksums of an Ethernet frame by full
/// recomputation (and that IPv6 UDP checksums are never zero).
pub fn verify_frame(f: &[u8]) {
    let ethertype = u16::from_be_bytes([f[12], f[13]]);
    let (src, dst, udp_off) = match ethertype {
        0x0800 => {
            let ip = &f[14..34];
            assert_eq!(fold(sum16(ip, 0)), 0xffff, "IPv4 header checksum");
            let s: [u8; 4] = ip[12..16].try_into().unwrap();
            let d: [u8; 4] = ip[16..20].try_into().unwrap();
            (Addr::V4(s.into()), Addr::V4(d.into()), 34)
        }
        0x86dd => {
            let s: [u8; 16] = f[22..38].try_into().unwrap();
            let d: [u8; 16] = f[38..54].try_into().unwrap();
            (Addr::V6(s.into()), Addr::V6(d.into()), 54)
        }
        other => panic!("ethertype {other:#x}"),
    };
    let udp = &f[udp_off..];
    let len = u16::from_be_bytes([udp[4], udp[5]]) as usize;
    let udp = &udp[..len];
    let c = u16::from_be_bytes([udp[6], udp[7]]);
    if c == 0 {
        assert!(matches!(src, Addr::V4(_)), "IPv6 UDP checksum zero");
        return;
    }
    assert!(udp_ok(src, dst, udp), "UDP checksum");
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    #[test]
    fn rfc1071_example() {
        // RFC 1071 section 3: 0001 f203 f4f5 f6f7 sums to ddf2.
        let d = [0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7];
        assert_eq!(fold(sum16(&d, 0)), 0xddf2);
        assert_eq!(fold(sum16(&[0xab], 0)), 0xab00);
    }

    #[test]
    fn udp_checksum_verifies() {
        let (s, d) = (
            Addr::V4(Ipv4Addr::new(192, 0, 2, 66)),
            Addr::V4(Ipv4Addr::new(198, 51, 100, 1)),
        );
        let mut u = vec![0x04, 0xd2, 0xca, 0x6c, 0, 11, 0, 0, 1, 2, 3];
        let c = udp(s, d, &u);
        u[6..8].copy_from_slice(&c.to_be_bytes());
        assert!(udp_ok(s, d, &u));
        u[10] ^= 1;
        assert!(!udp_ok(s, d, &u));
    }
}
