//! WireGuard-shaped frames (Ethernet/IPv4/UDP, complete checksums).

use std::net::Ipv4Addr;

use relay_common::wire::MSG_TRANSPORT;

/// Bytes a transport message adds around its payload: header 16 + tag 16.
pub const WG_OVERHEAD: usize = 32;

fn sum16(data: &[u8], mut acc: u32) -> u32 {
    let mut c = data.chunks_exact(2);
    for w in &mut c {
        acc += u16::from_be_bytes([w[0], w[1]]) as u32;
    }
    if let [b] = c.remainder() {
        acc += (*b as u32) << 8;
    }
    acc
}

fn fold(mut acc: u32) -> u16 {
    while acc >> 16 != 0 {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    acc as u16
}

/// A UDP frame with `payload`, full IPv4 and UDP checksums (UDP checksum 0
/// when `no_udp_csum`).
#[allow(clippy::too_many_arguments)]
pub fn udp_frame(
    dst_mac: [u8; 6],
    src_mac: [u8; 6],
    src: Ipv4Addr,
    sport: u16,
    dst: Ipv4Addr,
    dport: u16,
    payload: &[u8],
    no_udp_csum: bool,
) -> Vec<u8> {
    let udp_len = 8 + payload.len();
    let ip_len = 20 + udp_len;
    let mut f = Vec::with_capacity(14 + ip_len);
    f.extend(dst_mac);
    f.extend(src_mac);
    f.extend([0x08, 0x00]);
    let ip_start = f.len();
    f.extend([
        0x45,
        0,
        (ip_len >> 8) as u8,
        ip_len as u8,
        0,
        0,
        0x40,
        0,
        64,
        17,
        0,
        0,
    ]);
    f.extend(src.octets());
    f.extend(dst.octets());
    let c = !fold(sum16(&f[ip_start..ip_start + 20], 0));
    f[ip_start + 10..ip_start + 12].copy_from_slice(&c.to_be_bytes());
    let udp_start = f.len();
    f.extend(sport.to_be_bytes());
    f.extend(dport.to_be_bytes());
    f.extend((udp_len as u16).to_be_bytes());
    f.extend([0, 0]);
    f.extend(payload);
    if !no_udp_csum {
        let mut acc = sum16(&src.octets(), 0);
        acc = sum16(&dst.octets(), acc);
        acc += 17 + udp_len as u32;
        let c = match !fold(sum16(&f[udp_start..], acc)) {
            0 => 0xffff,
            c => c,
        };
        f[udp_start + 6..udp_start + 8].copy_from_slice(&c.to_be_bytes());
    }
    f
}

/// A transport message (type 4) with `receiver`, `counter` and a
/// `payload_len`-byte "ciphertext" plus tag.
pub fn transport(receiver: u32, counter: u64, payload_len: usize) -> Vec<u8> {
    let mut m = vec![0u8; WG_OVERHEAD + payload_len];
    m[0] = MSG_TRANSPORT;
    m[4..8].copy_from_slice(&receiver.to_le_bytes());
    m[8..16].copy_from_slice(&counter.to_le_bytes());
    for (i, b) in m[16..].iter_mut().enumerate() {
        *b = (i as u8).wrapping_mul(31) ^ 0x5a;
    }
    m
}
