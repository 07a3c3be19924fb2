//! Raw IPv4/UDP and IPv6/UDP frames sent from inside a namespace with any
//! source address and port (the attacker of the security tests), and the
//! WireGuard messages they carry.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use anyhow::Context;

use testkit::frame::{self, Addr, Csum};

use crate::netns::Netns;

/// One IPv4/UDP datagram to send.
#[derive(Clone, Debug)]
pub struct Datagram {
    pub src: Ipv4Addr,
    pub sport: u16,
    pub dst: Ipv4Addr,
    pub dport: u16,
    pub payload: Vec<u8>,
}

/// One IPv6/UDP datagram to send.
#[derive(Clone, Debug)]
pub struct Datagram6 {
    pub src: Ipv6Addr,
    pub sport: u16,
    pub dst: Ipv6Addr,
    pub dport: u16,
    pub payload: Vec<u8>,
}

/// A datagram [`send`] can put on the wire as a whole IP packet.
pub trait RawPacket {
    /// The IP packet: header + UDP with a full checksum.
    fn packet(&self) -> Vec<u8>;
    fn dst(&self) -> IpAddr;
}

fn udp_packet(src: Addr, dst: Addr, sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
    let udp = frame::udp(src, dst, sport, dport, payload, Csum::Full);
    frame::ip_packet(src, dst, 0x5248, 64, &udp)
}

impl Datagram {
    /// The IP packet: header + UDP with a full checksum.
    pub fn packet(&self) -> Vec<u8> {
        udp_packet(
            Addr::V4(self.src),
            Addr::V4(self.dst),
            self.sport,
            self.dport,
            &self.payload,
        )
    }
}

impl RawPacket for Datagram {
    fn packet(&self) -> Vec<u8> {
        Datagram::packet(self)
    }
    fn dst(&self) -> IpAddr {
        self.dst.into()
    }
}

impl Datagram6 {
    /// The IP packet: header + UDP with a full checksum.
    pub fn packet(&self) -> Vec<u8> {
        udp_packet(
            Addr::V6(self.src),
            Addr::V6(self.dst),
            self.sport,
            self.dport,
            &self.payload,
        )
    }
}

impl RawPacket for Datagram6 {
    fn packet(&self) -> Vec<u8> {
        Datagram6::packet(self)
    }
    fn dst(&self) -> IpAddr {
        self.dst.into()
    }
}

/// Send `datagrams` through raw sockets (IPPROTO_RAW: the header is ours,
/// source included) opened inside `ns` (a helper thread enters the
/// namespace; the caller's thread does not move). Returns how many the
/// kernel accepted.
pub fn send<D: RawPacket>(ns: &Netns, datagrams: &[D]) -> anyhow::Result<usize> {
    let path = format!("/run/netns/{}", ns.name);
    let packets: Vec<(IpAddr, Vec<u8>)> = datagrams.iter().map(|d| (d.dst(), d.packet())).collect();
    std::thread::spawn(move || -> anyhow::Result<usize> {
        use std::os::fd::AsRawFd;
        let f = std::fs::File::open(&path).with_context(|| format!("open {path}"))?;
        // SAFETY: plain syscalls on valid descriptors; this thread only
        // sends and then exits, so its namespace change dies with it.
        unsafe {
            anyhow::ensure!(
                libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) == 0,
                "setns {path}: {}",
                std::io::Error::last_os_error()
            );
            let raw = |family| {
                let fd = libc::socket(family, libc::SOCK_RAW, libc::IPPROTO_RAW);
                anyhow::ensure!(fd >= 0, "raw socket: {}", std::io::Error::last_os_error());
                Ok(fd)
            };
            let (fd4, fd6) = (raw(libc::AF_INET)?, raw(libc::AF_INET6)?);
            let mut sent = 0;
            for (dst, p) in &packets {
                let n = match dst {
                    IpAddr::V4(d) => {
                        let sa = libc::sockaddr_in {
                            sin_family: libc::AF_INET as libc::sa_family_t,
                            sin_port: 0,
                            sin_addr: libc::in_addr {
                                s_addr: u32::from_ne_bytes(d.octets()),
                            },
                            sin_zero: [0; 8],
                        };
                        libc::sendto(
                            fd4,
                            p.as_ptr().cast(),
                            p.len(),
                            0,
                            (&sa as *const libc::sockaddr_in).cast(),
                            size_of::<libc::sockaddr_in>() as libc::socklen_t,
                        )
                    }
                    IpAddr::V6(d) => {
                        let sa = libc::sockaddr_in6 {
                            sin6_family: libc::AF_INET6 as libc::sa_family_t,
                            sin6_port: 0,
                            sin6_flowinfo: 0,
                            sin6_addr: libc::in6_addr {
                                s6_addr: d.octets(),
                            },
                            sin6_scope_id: 0,
                        };
                        libc::sendto(
                            fd6,
                            p.as_ptr().cast(),
                            p.len(),
                            0,
                            (&sa as *const libc::sockaddr_in6).cast(),
                            size_of::<libc::sockaddr_in6>() as libc::socklen_t,
                        )
                    }
                };
                if n == p.len() as isize {
                    sent += 1;
                }
                // Keep well inside every queue.
                std::thread::sleep(std::time::Duration::from_micros(200));
            }
            libc::close(fd4);
            libc::close(fd6);
            Ok(sent)
        }
    })
    .join()
    .map_err(|_| anyhow::anyhow!("injector thread panicked"))?
}

/// Marks every message built here (bytes 16..24 of the WireGuard message,
/// inside the captured snap length), so captures can tell them apart.
pub const MARKER: &[u8; 8] = b"RHATTACK";
pub const MARKER_OFF: usize = 16;

fn message(kind: u8, len: usize, seed: u32) -> Vec<u8> {
    let mut m: Vec<u8> = (0..len)
        .map(|i| (i as u32).wrapping_mul(2654435761).wrapping_add(seed) as u8)
        .collect();
    m[0] = kind;
    m[1..4].fill(0);
    m[MARKER_OFF..MARKER_OFF + 8].copy_from_slice(MARKER);
    m
}

/// A handshake initiation with `sender` index whose mac1 is valid for the
/// responder `public_key` (mac2 zero).
pub fn initiation(public_key: &[u8; 32], sender: u32, seed: u32) -> Vec<u8> {
    let mut m = message(1, 148, seed);
    m[4..8].copy_from_slice(&sender.to_le_bytes());
    testkit::wg::set_mac1(
        &mut m,
        &relay_user::core::keys::Mac1Key::for_public_key(public_key),
    );
    m[132..148].fill(0);
    m
}

/// An initiation whose mac1 matches no key.
pub fn initiation_bad_mac(sender: u32, seed: u32) -> Vec<u8> {
    let mut m = message(1, 148, seed);
    m[4..8].copy_from_slice(&sender.to_le_bytes());
    m[132..148].fill(0);
    m
}

pub fn response(sender: u32, receiver: u32, seed: u32) -> Vec<u8> {
    let mut m = message(2, 92, seed);
    m[4..8].copy_from_slice(&sender.to_le_bytes());
    m[8..12].copy_from_slice(&receiver.to_le_bytes());
    m
}

pub fn cookie(receiver: u32, seed: u32) -> Vec<u8> {
    let mut m = message(3, 64, seed);
    m[4..8].copy_from_slice(&receiver.to_le_bytes());
    m
}

/// A transport message of `len` bytes (32 is a keepalive).
pub fn transport(receiver: u32, len: usize, seed: u32) -> Vec<u8> {
    let mut m = message(4, len.max(32), seed);
    m[4..8].copy_from_slice(&receiver.to_le_bytes());
    m
}

/// Decode standard base64 (a WireGuard key).
pub fn base64_key(s: &str) -> anyhow::Result<[u8; 32]> {
    let val = |c: u8| -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32)
    };
    let mut out = Vec::new();
    let (mut acc, mut bits) = (0u32, 0);
    for c in s.trim().bytes().filter(|&c| c != b'=') {
        acc = (acc << 6) | val(c).with_context(|| format!("not base64: {s}"))?;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    out.try_into()
        .map_err(|v: Vec<u8>| anyhow::anyhow!("key of {} bytes: {s}", v.len()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use testkit::checksum::{fold, sum16};

    #[test]
    fn initiation_mac1_matches_its_key_only() {
        let k = [7u8; 32];
        let m: [u8; 148] = initiation(&k, 5, 1).try_into().unwrap();
        assert!(relay_user::core::keys::Mac1Key::for_public_key(&k).matches(&m));
        assert!(!relay_user::core::keys::Mac1Key::for_public_key(&[8; 32]).matches(&m));
        assert_eq!(&m[MARKER_OFF..MARKER_OFF + 8], MARKER);
    }

    #[test]
    fn base64_keys() {
        assert_eq!(
            base64_key("AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE=").unwrap(),
            [1u8; 32]
        );
        assert!(base64_key("AQE=").is_err());
    }

    #[test]
    fn udp6_checksum_verifies() {
        let d = Datagram6 {
            src: "2001:db8:a2::2".parse().unwrap(),
            sport: 47123,
            dst: "2001:db8:100::2".parse().unwrap(),
            dport: 51820,
            payload: transport(9, 33, 0),
        };
        let p = d.packet();
        assert_eq!(p[0] >> 4, 6);
        assert_eq!(p[6], 17);
        assert_eq!(&p[8..24], &d.src.octets());
        assert!(testkit::checksum::udp_ok(
            Addr::V6(d.src),
            Addr::V6(d.dst),
            &p[40..]
        ));
    }

    #[test]
    fn udp_checksum_verifies() {
        let d = Datagram {
            src: Ipv4Addr::new(192, 0, 2, 66),
            sport: 1234,
            dst: Ipv4Addr::new(198, 51, 100, 1),
            dport: 51820,
            payload: transport(9, 33, 0),
        };
        let p = d.packet();
        assert_eq!(fold(sum16(&p[..20], 0)), 0xffff);
        let mut pseudo = Vec::new();
        pseudo.extend(d.src.octets());
        pseudo.extend(d.dst.octets());
        pseudo.extend([0, 17]);
        pseudo.extend(((p.len() - 20) as u16).to_be_bytes());
        assert_eq!(fold(sum16(&p[20..], sum16(&pseudo, 0))), 0xffff);
        assert!(testkit::checksum::udp_ok(
            Addr::V4(d.src),
            Addr::V4(d.dst),
            &p[20..]
        ));
    }
}

/// What an on-path observer of the hub link learns from a capture of
/// WireGuard frames (see [`crate::capture::read_wg_frames`]).
#[derive(Debug, Default, Clone)]
pub struct Sniffed {
    /// Every source endpoint (`a.b.c.d.port`) that sent to the hub port,
    /// with the receiver indices of the transport frames it sent.
    pub receivers_by_src: std::collections::BTreeMap<String, std::collections::BTreeSet<u32>>,
    /// Sender indices of initiations and responses (any direction).
    pub senders: std::collections::BTreeSet<u32>,
}

impl Sniffed {
    pub fn from_frames(frames: &[crate::capture::WgFrame], hub: Ipv4Addr) -> Sniffed {
        let mut s = Sniffed::default();
        let hub_prefix = format!("{hub}.");
        for f in frames {
            if let Some(x) = f.sender {
                s.senders.insert(x);
            }
            if f.src.starts_with(&hub_prefix) {
                continue;
            }
            let e = s.receivers_by_src.entry(f.src.clone()).or_default();
            if f.kind == 4
                && let Some(r) = f.receiver
            {
                e.insert(r);
            }
        }
        s
    }

    /// Every receiver index seen in transport frames to the hub.
    pub fn receivers(&self) -> std::collections::BTreeSet<u32> {
        self.receivers_by_src.values().flatten().copied().collect()
    }

    /// Source ports `addr` used towards the hub (its NAT mappings).
    pub fn ports_of(&self, addr: Ipv4Addr) -> Vec<u16> {
        let p = format!("{addr}.");
        self.receivers_by_src
            .keys()
            .filter_map(|k| k.strip_prefix(&p)?.parse().ok())
            .collect()
    }
}

/// Frames of a capture that carry [`MARKER`].
pub fn marked(frames: &[crate::capture::UdpFrame]) -> Vec<&crate::capture::UdpFrame> {
    frames
        .iter()
        .filter(|f| f.payload.get(MARKER_OFF..MARKER_OFF + 8) == Some(&MARKER[..]))
        .collect()
}
