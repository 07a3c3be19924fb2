//! Sends handshake frames to spokes from the hub's address and port.
//!
//! The hub's own WireGuard owns the UDP port, so the controller cannot bind
//! it; it writes whole IP packets on send-only raw sockets instead
//! (IPPROTO_RAW never receives, so the kernel does not copy every incoming
//! packet to us).

use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddrV4, SocketAddrV6};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use relay_common::{Endpoint, FAMILY_V4, FAMILY_V6};

const TTL: u8 = 64;

pub struct RawSender {
    v4: OwnedFd,
    v6: Option<OwnedFd>,
    buf: Vec<u8>,
    /// The hub's own addresses, the source of initiations relayed across
    /// families (see [`RawSender::set_hub_addresses`]).
    hub_v4: Option<Ipv4Addr>,
    hub_v6: Option<Ipv6Addr>,
}

fn raw_socket(domain: libc::c_int) -> io::Result<OwnedFd> {
    // SAFETY: plain socket(2); the fd is owned immediately.
    let fd = unsafe {
        libc::socket(
            domain,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            libc::IPPROTO_RAW,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh, valid descriptor.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

impl RawSender {
    pub fn new() -> io::Result<Self> {
        let v4 = raw_socket(libc::AF_INET)?;
        // A host without IPv6 still relays IPv4.
        let v6 = raw_socket(libc::AF_INET6).ok();
        Ok(Self {
            v4,
            v6,
            buf: Vec::with_capacity(1500),
            hub_v4: None,
            hub_v6: None,
        })
    }

    /// The hub's addresses in each family (the same the XDP program uses,
    /// see `Datapath::set_hub_addresses`).
    pub fn set_hub_addresses(&mut self, v4: Option<Ipv4Addr>, v6: Option<Ipv6Addr>) {
        self.hub_v4 = v4;
        self.hub_v6 = v6;
    }

    /// The source for a datagram to `to` that arrived at the hub as `from`:
    /// `from` itself, or across families the hub's own address in `to`'s
    /// family with the same port.
    pub fn source_for(&self, from: &Endpoint, to: &Endpoint) -> io::Result<Endpoint> {
        if from.family == to.family {
            return Ok(*from);
        }
        let no_addr = |fam: &str| {
            io::Error::new(
                io::ErrorKind::AddrNotAvailable,
                format!(
                    "cross-family relay: the hub has no {fam} address on its underlay interface"
                ),
            )
        };
        match to.family {
            FAMILY_V4 => self
                .hub_v4
                .map(|a| Endpoint::v4(a.octets(), from.port))
                .ok_or_else(|| no_addr("IPv4")),
            FAMILY_V6 => self
                .hub_v6
                .map(|a| Endpoint::v6(a.octets(), from.port))
                .ok_or_else(|| no_addr("IPv6")),
            _ => Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "endpoint without address family",
            )),
        }
    }

    /// Send `payload` as one UDP datagram `from` -> `to`. Across families
    /// the source is the hub's own address in `to`'s family (see
    /// [`RawSender::source_for`]).
    pub fn send(&mut self, from: &Endpoint, to: &Endpoint, payload: &[u8]) -> io::Result<()> {
        let from = &self.source_for(from, to)?;
        self.buf.clear();
        match to.family {
            FAMILY_V4 => {
                build_v4(&mut self.buf, from, to, payload);
                let dst = SocketAddrV4::new(v4_addr(to), 0);
                let sa = nix::sys::socket::SockaddrIn::from(dst);
                nix::sys::socket::sendto(
                    self.v4.as_raw_fd(),
                    &self.buf,
                    &sa,
                    nix::sys::socket::MsgFlags::empty(),
                )?;
            }
            FAMILY_V6 => {
                let fd = self.v6.as_ref().ok_or_else(|| {
                    io::Error::new(io::ErrorKind::Unsupported, "no IPv6 raw socket")
                })?;
                build_v6(&mut self.buf, from, to, payload);
                let dst = SocketAddrV6::new(Ipv6Addr::from(to.addr), 0, 0, 0);
                let sa = nix::sys::socket::SockaddrIn6::from(dst);
                nix::sys::socket::sendto(
                    fd.as_raw_fd(),
                    &self.buf,
                    &sa,
                    nix::sys::socket::MsgFlags::empty(),
                )?;
            }
            _ => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "endpoint without address family",
                ));
            }
        }
        Ok(())
    }
}

fn v4_addr(e: &Endpoint) -> Ipv4Addr {
    Ipv4Addr::new(e.addr[0], e.addr[1], e.addr[2], e.addr[3])
}

/// One's-complement sum of `data` as big-endian 16-bit words.
pub fn csum_add(mut sum: u32, data: &[u8]) -> u32 {
    let mut chunks = data.chunks_exact(2);
    for c in &mut chunks {
        sum += u32::from(u16::from_be_bytes([c[0], c[1]]));
    }
    if let [last] = chunks.remainder() {
        sum += u32::from(*last) << 8;
    }
    sum
}

pub fn csum_fold(mut sum: u32) -> u16 {
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

fn udp_header(buf: &mut Vec<u8>, from: &Endpoint, to: &Endpoint, payload: &[u8]) -> usize {
    let at = buf.len();
    buf.extend_from_slice(&from.port.to_be_bytes());
    buf.extend_from_slice(&to.port.to_be_bytes());
    buf.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    buf.extend_from_slice(&[0, 0]);
    buf.extend_from_slice(payload);
    at
}

/// Fill the UDP checksum at `udp` given the pseudo-header sum.
fn finish_udp(buf: &mut [u8], udp: usize, pseudo: u32) {
    let sum = csum_add(pseudo, &buf[udp..]);
    let mut c = csum_fold(sum);
    if c == 0 {
        c = 0xffff;
    }
    buf[udp + 6..udp + 8].copy_from_slice(&c.to_be_bytes());
}

pub fn build_v4(buf: &mut Vec<u8>, from: &Endpoint, to: &Endpoint, payload: &[u8]) {
    let total = (20 + 8 + payload.len()) as u16;
    buf.extend_from_slice(&[0x45, 0]);
    buf.extend_from_slice(&total.to_be_bytes());
    // id 0 (the kernel fills it), DF.
    buf.extend_from_slice(&[0, 0, 0x40, 0, TTL, libc::IPPROTO_UDP as u8, 0, 0]);
    buf.extend_from_slice(&from.addr[..4]);
    buf.extend_from_slice(&to.addr[..4]);
    let ip_csum = csum_fold(csum_add(0, &buf[..20]));
    buf[10..12].copy_from_slice(&ip_csum.to_be_bytes());
    let udp = udp_header(buf, from, to, payload);
    let mut pseudo = csum_add(0, &from.addr[..4]);
    pseudo = csum_add(pseudo, &to.addr[..4]);
    pseudo += u32::from(libc::IPPROTO_UDP as u8) + u32::from(8 + payload.len() as u16);
    finish_udp(buf, udp, pseudo);
}

pub fn build_v6(buf: &mut Vec<u8>, from: &Endpoint, to: &Endpoint, payload: &[u8]) {
    let len = (8 + payload.len()) as u16;
    buf.extend_from_slice(&[0x60, 0, 0, 0]);
    buf.extend_from_slice(&len.to_be_bytes());
    buf.extend_from_slice(&[libc::IPPROTO_UDP as u8, TTL]);
    buf.extend_from_slice(&from.addr);
    buf.extend_from_slice(&to.addr);
    let udp = udp_header(buf, from, to, payload);
    let mut pseudo = csum_add(0, &from.addr);
    pseudo = csum_add(pseudo, &to.addr);
    pseudo += u32::from(len) + u32::from(libc::IPPROTO_UDP as u8);
    finish_udp(buf, udp, pseudo);
}

#[cfg(test)]
mod tests {
    use super::*;
    // Verified with the test toolkit's checksum and packet code (written
    // from RFC 768 / 1071 / 8200, not from this file): never with
    // `csum_add` / `csum_fold`, which would agree with their own mistakes.
    use testkit::{
        checksum::{fold, sum16, udp_ok},
        frame::{Addr, Csum, ip_packet, udp},
    };

    fn addr(e: &Endpoint) -> Addr {
        match e.family {
            FAMILY_V4 => Addr::V4(v4_addr(e)),
            _ => Addr::V6(Ipv6Addr::from(e.addr)),
        }
    }

    /// Deterministic payload bytes of length `n`.
    fn payload(n: usize, seed: u32) -> Vec<u8> {
        let mut x = seed.wrapping_mul(2_654_435_761) | 1;
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                x as u8
            })
            .collect()
    }

    /// Build `from` -> `to` with `payload` and check it against testkit:
    /// the IPv4 header and UDP checksums verify, the UDP checksum is never
    /// 0, and the whole packet equals testkit's (IPv4 id 0 with DF, TTL
    /// 64, full UDP checksum).
    fn check(from: &Endpoint, to: &Endpoint, payload: &[u8]) -> Vec<u8> {
        let mut buf = Vec::new();
        let ip_len = if to.family == FAMILY_V4 {
            build_v4(&mut buf, from, to, payload);
            assert_eq!(fold(sum16(&buf[..20], 0)), 0xffff, "IPv4 header checksum");
            20
        } else {
            build_v6(&mut buf, from, to, payload);
            40
        };
        assert_eq!(buf.len(), ip_len + 8 + payload.len());
        let (src, dst) = (addr(from), addr(to));
        let u = &buf[ip_len..];
        assert_ne!(&u[6..8], &[0, 0], "UDP checksum 0 (none / invalid in IPv6)");
        assert!(
            udp_ok(src, dst, u),
            "UDP checksum, {} bytes of payload",
            payload.len()
        );
        let expected = ip_packet(
            src,
            dst,
            0,
            64,
            &udp(src, dst, from.port, to.port, payload, Csum::Full),
        );
        assert_eq!(buf, expected, "{} bytes of payload", payload.len());
        buf
    }

    /// A payload of `n` bytes whose UDP checksum computes to 0 (so it must
    /// be sent as 0xffff): the last two bytes complete the sum to 0xffff.
    fn zero_sum_payload(from: &Endpoint, to: &Endpoint, n: usize) -> Vec<u8> {
        let mut p = payload(n, 7);
        p[n - 2] = 0;
        p[n - 1] = 0;
        let mut u = udp(addr(from), addr(to), from.port, to.port, &p, Csum::Zero);
        u[6..8].copy_from_slice(&[0, 0]);
        let (src, dst) = (addr(from), addr(to));
        let pseudo = testkit::checksum::pseudo_header(src, dst, u.len());
        let s = fold(sum16(&u, sum16(&pseudo, 0)));
        p[n - 2..].copy_from_slice(&(!s).to_be_bytes());
        p
    }

    const LENGTHS: [usize; 9] = [1, 2, 31, 32, 64, 92, 147, 148, 1203];

    #[test]
    fn v4_packets_verify_with_testkit() {
        let from = Endpoint::v4([198, 51, 100, 1], 51820);
        let to = Endpoint::v4([203, 0, 113, 7], 40001);
        for (k, n) in LENGTHS.into_iter().enumerate() {
            check(&from, &to, &payload(n, k as u32));
        }
        let p = zero_sum_payload(&from, &to, 148);
        let buf = check(&from, &to, &p);
        assert_eq!(
            &buf[26..28],
            &[0xff, 0xff],
            "a computed 0 is sent as 0xffff"
        );
    }

    #[test]
    fn cross_family_source_is_the_hubs_own_address() {
        let Ok(mut s) = RawSender::new() else {
            // Raw sockets need root; the logic is checked where they open.
            return;
        };
        let from4 = Endpoint::v4([198, 51, 100, 1], 51820);
        let to6 = Endpoint::v6(
            Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 9).octets(),
            4000,
        );
        let to4 = Endpoint::v4([203, 0, 113, 7], 4001);
        assert_eq!(s.source_for(&from4, &to4).unwrap(), from4);
        let e = s.source_for(&from4, &to6).unwrap_err();
        assert!(e.to_string().contains("no IPv6 address"), "{e}");
        let hub6 = Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 1);
        s.set_hub_addresses(Some(Ipv4Addr::new(198, 51, 100, 1)), Some(hub6));
        assert_eq!(
            s.source_for(&from4, &to6).unwrap(),
            Endpoint::v6(hub6.octets(), 51820)
        );
        let from6 = Endpoint::v6(hub6.octets(), 51820);
        assert_eq!(s.source_for(&from6, &to4).unwrap(), from4);
    }

    #[test]
    fn v6_packets_verify_with_testkit() {
        let from = Endpoint::v6(
            Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 1).octets(),
            51820,
        );
        let to = Endpoint::v6(
            Ipv6Addr::new(0x2001, 0xdb8, 0x99, 0, 0, 0, 0, 0x10).octets(),
            5555,
        );
        for (k, n) in LENGTHS.into_iter().enumerate() {
            check(&from, &to, &payload(n, 100 + k as u32));
        }
        let p = zero_sum_payload(&from, &to, 92);
        let buf = check(&from, &to, &p);
        assert_eq!(
            &buf[46..48],
            &[0xff, 0xff],
            "a computed 0 is sent as 0xffff"
        );
    }
}
