//! Ethernet / IPv4 / IPv6 / UDP frames, built from scratch with complete
//! checksums (see [`crate::checksum`]).

use std::net::{Ipv4Addr, Ipv6Addr};

use crate::checksum;

pub const ETHERTYPE_IPV4: u16 = 0x0800;
pub const ETHERTYPE_IPV6: u16 = 0x86dd;
/// The IPv4 identification [`Frame::build`] writes.
pub const FRAME_IP_ID: u16 = 0x1234;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Addr {
    V4(Ipv4Addr),
    V6(Ipv6Addr),
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Csum {
    /// Complete, correct checksum (as from a real wire).
    Full,
    /// IPv4 "no checksum".
    Zero,
}

/// A UDP datagram (header + `payload`) from `src:sport` to `dst:dport`.
pub fn udp(src: Addr, dst: Addr, sport: u16, dport: u16, payload: &[u8], csum: Csum) -> Vec<u8> {
    let len = 8 + payload.len();
    let mut u = Vec::with_capacity(len);
    u.extend(sport.to_be_bytes());
    u.extend(dport.to_be_bytes());
    u.extend((len as u16).to_be_bytes());
    u.extend([0, 0]);
    u.extend(payload);
    if csum == Csum::Full {
        let c = checksum::udp(src, dst, &u);
        u[6..8].copy_from_slice(&c.to_be_bytes());
    }
    u
}

/// An IPv4 header (20 bytes, DF, protocol UDP, checksum filled in) for
/// `payload_len` bytes of UDP.
pub fn ipv4_header(src: Ipv4Addr, dst: Ipv4Addr, id: u16, ttl: u8, payload_len: usize) -> Vec<u8> {
    let mut ip = vec![0x45, 0];
    ip.extend(((20 + payload_len) as u16).to_be_bytes());
    ip.extend(id.to_be_bytes());
    ip.extend([0x40, 0x00, ttl, 17, 0, 0]);
    ip.extend(src.octets());
    ip.extend(dst.octets());
    let c = checksum::ipv4_header(&ip);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    ip
}

/// An IPv6 header (next header UDP) for `payload_len` bytes of UDP.
pub fn ipv6_header(src: Ipv6Addr, dst: Ipv6Addr, hop_limit: u8, payload_len: usize) -> Vec<u8> {
    let mut ip = vec![0x60, 0, 0, 0];
    ip.extend((payload_len as u16).to_be_bytes());
    ip.extend([17, hop_limit]);
    ip.extend(src.octets());
    ip.extend(dst.octets());
    ip
}

/// The IP packet (header + `udp`) of `src` -> `dst`; `ip_id` is the IPv4
/// identification (unused for IPv6).
pub fn ip_packet(src: Addr, dst: Addr, ip_id: u16, ttl: u8, udp: &[u8]) -> Vec<u8> {
    let mut p = match (src, dst) {
        (Addr::V4(s), Addr::V4(d)) => ipv4_header(s, d, ip_id, ttl, udp.len()),
        (Addr::V6(s), Addr::V6(d)) => ipv6_header(s, d, ttl, udp.len()),
        _ => panic!("mixed families"),
    };
    p.extend(udp);
    p
}

/// The Ethernet frame of `packet` (IPv4 or IPv6 by its version nibble).
pub fn ethernet(eth_dst: [u8; 6], eth_src: [u8; 6], packet: &[u8]) -> Vec<u8> {
    let ethertype = match packet.first().map(|b| b >> 4) {
        Some(4) => ETHERTYPE_IPV4,
        Some(6) => ETHERTYPE_IPV6,
        v => panic!("IP version {v:?}"),
    };
    let mut f = Vec::with_capacity(14 + packet.len());
    f.extend(eth_dst);
    f.extend(eth_src);
    f.extend(ethertype.to_be_bytes());
    f.extend(packet);
    f
}

/// An Ethernet/IP/UDP frame, field by field.
#[derive(Clone, Debug)]
pub struct Frame {
    pub eth_dst: [u8; 6],
    pub eth_src: [u8; 6],
    pub src: Addr,
    pub dst: Addr,
    pub ttl: u8,
    pub sport: u16,
    pub dport: u16,
    pub payload: Vec<u8>,
    pub csum: Csum,
}

impl Frame {
    /// The UDP datagram (header + payload).
    pub fn udp(&self) -> Vec<u8> {
        udp(
            self.src,
            self.dst,
            self.sport,
            self.dport,
            &self.payload,
            self.csum,
        )
    }

    /// The frame's bytes (IPv4 identification [`FRAME_IP_ID`]).
    pub fn build(&self) -> Vec<u8> {
        self.build_with_ip_id(FRAME_IP_ID)
    }

    /// The frame's bytes with IPv4 identification `ip_id`.
    pub fn build_with_ip_id(&self, ip_id: u16) -> Vec<u8> {
        let packet = ip_packet(self.src, self.dst, ip_id, self.ttl, &self.udp());
        ethernet(self.eth_dst, self.eth_src, &packet)
    }
}

/// An Ethernet/IPv4/UDP frame with TTL 64 and IPv4 identification 0, full
/// IPv4 and UDP checksums (UDP checksum 0 when `no_udp_csum`): the load
/// generators' frames.
#[allow(clippy::too_many_arguments)]
pub fn udp4_frame(
    dst_mac: [u8; 6],
    src_mac: [u8; 6],
    src: Ipv4Addr,
    sport: u16,
    dst: Ipv4Addr,
    dport: u16,
    payload: &[u8],
    no_udp_csum: bool,
) -> Vec<u8> {
    Frame {
        eth_dst: dst_mac,
        eth_src: src_mac,
        src: Addr::V4(src),
        dst: Addr::V4(dst),
        ttl: 64,
        sport,
        dport,
        payload: payload.to_vec(),
        csum: if no_udp_csum { Csum::Zero } else { Csum::Full },
    }
    .build_with_ip_id(0)
}

/// `m` as `aa:bb:cc:dd:ee:ff` (for `ip link ... address`).
pub fn mac(m: [u8; 6]) -> String {
    m.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checksum;

    #[test]
    fn frames_verify() {
        let v4 = Frame {
            eth_dst: [2, 0, 0, 0, 0, 1],
            eth_src: [2, 0, 0, 0, 0, 2],
            src: Addr::V4(Ipv4Addr::new(203, 0, 113, 10)),
            dst: Addr::V4(Ipv4Addr::new(198, 51, 100, 1)),
            ttl: 57,
            sport: 40000,
            dport: 51820,
            payload: vec![4, 0, 0, 0, 1, 2, 3],
            csum: Csum::Full,
        };
        let f = v4.build();
        assert_eq!(f.len(), 14 + 20 + 8 + 7);
        assert_eq!(&f[18..20], &FRAME_IP_ID.to_be_bytes());
        checksum::verify_frame(&f);
        let v6 = Frame {
            src: Addr::V6("2001:db8::1".parse().unwrap()),
            dst: Addr::V6("2001:db8::2".parse().unwrap()),
            ..v4.clone()
        };
        let f = v6.build();
        assert_eq!(f.len(), 14 + 40 + 8 + 7);
        checksum::verify_frame(&f);
        let g = udp4_frame(
            [1; 6],
            [2; 6],
            Ipv4Addr::new(10, 0, 0, 1),
            1,
            Ipv4Addr::new(10, 0, 0, 2),
            2,
            &[9; 5],
            true,
        );
        assert_eq!(&g[18..20], &[0, 0]);
        assert_eq!(&g[40..42], &[0, 0]);
        checksum::verify_frame(&g);
    }
}
