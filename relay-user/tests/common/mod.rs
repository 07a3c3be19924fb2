//! Frame building, checksums and the network namespace helper shared by
//! the XDP tests (`xdp_golden`, `xdp_fuzz`). Frames are built from scratch
//! with full checksum computation, never by the program's incremental update.
#![allow(dead_code)]

pub mod wggo;

use std::{
    fs::File,
    net::{Ipv4Addr, Ipv6Addr},
    process::Command,
    sync::atomic::{AtomicU32, Ordering},
};

use relay_common::SlotCounters;

/// A slot's counts without its timestamps (what a case expects to change).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SlotDelta {
    pub rx_packets: u64,
    pub rx_bytes: u64,
    pub tx_packets: u64,
    pub tx_bytes: u64,
    pub rx_keepalives: u64,
    pub hub_packets: u64,
    pub hub_keepalives: u64,
}

/// A slot's per-CPU values summed ([`SlotCounters::accumulate`]): the
/// counts, `last_rx_ns` and `last_keepalive_ns`.
pub fn slot_totals<'a>(
    per_cpu: impl IntoIterator<Item = &'a SlotCounters>,
) -> (SlotDelta, u64, u64) {
    let mut c = SlotCounters::default();
    for v in per_cpu {
        c.accumulate(v);
    }
    let d = SlotDelta {
        rx_packets: c.rx_packets,
        rx_bytes: c.rx_bytes,
        tx_packets: c.tx_packets,
        tx_bytes: c.tx_bytes,
        rx_keepalives: c.rx_keepalives,
        hub_packets: c.hub_packets,
        hub_keepalives: c.hub_keepalives,
    };
    (d, c.last_rx_ns, c.last_keepalive_ns)
}

#[derive(Clone, Copy, Debug)]
pub enum Addr {
    V4(Ipv4Addr),
    V6(Ipv6Addr),
}

// ---------------------------------------------------------------------------
// Frame construction, from scratch.

/// One's complement sum of `data` (big-endian words, odd tail padded).
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

pub fn fold(mut acc: u64) -> u16 {
    while acc >> 16 != 0 {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    acc as u16
}

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

/// Full UDP checksum of `udp` (header with checksum field zero + payload).
pub fn udp_checksum(src: Addr, dst: Addr, udp: &[u8]) -> u16 {
    let acc = sum16(&pseudo_header(src, dst, udp.len()), 0);
    match !fold(sum16(udp, acc)) {
        0 => 0xffff,
        c => c,
    }
}

#[derive(Clone, Copy, PartialEq, Debug)]
pub enum Csum {
    /// Complete, correct checksum (as from a real wire).
    Full,
    /// IPv4 "no checksum".
    Zero,
}

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
    pub fn udp(&self) -> Vec<u8> {
        let len = 8 + self.payload.len();
        let mut u = Vec::with_capacity(len);
        u.extend(self.sport.to_be_bytes());
        u.extend(self.dport.to_be_bytes());
        u.extend((len as u16).to_be_bytes());
        u.extend([0, 0]);
        u.extend(&self.payload);
        if self.csum == Csum::Full {
            let c = udp_checksum(self.src, self.dst, &u);
            u[6..8].copy_from_slice(&c.to_be_bytes());
        }
        u
    }

    pub fn build(&self) -> Vec<u8> {
        let udp = self.udp();
        let mut f = Vec::new();
        f.extend(self.eth_dst);
        f.extend(self.eth_src);
        match (self.src, self.dst) {
            (Addr::V4(s), Addr::V4(d)) => {
                f.extend(0x0800u16.to_be_bytes());
                let mut ip = vec![0x45, 0];
                ip.extend(((20 + udp.len()) as u16).to_be_bytes());
                ip.extend([0x12, 0x34, 0x40, 0x00, self.ttl, 17, 0, 0]);
                ip.extend(s.octets());
                ip.extend(d.octets());
                let c = !fold(sum16(&ip, 0));
                ip[10..12].copy_from_slice(&c.to_be_bytes());
                f.extend(ip);
            }
            (Addr::V6(s), Addr::V6(d)) => {
                f.extend(0x86ddu16.to_be_bytes());
                f.extend([0x60, 0, 0, 0]);
                f.extend((udp.len() as u16).to_be_bytes());
                f.extend([17, self.ttl]);
                f.extend(s.octets());
                f.extend(d.octets());
            }
            _ => panic!("mixed families"),
        }
        f.extend(udp);
        f
    }
}

/// Deterministic filler bytes.
pub fn filler(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

pub fn wg_header(kind: u8) -> Vec<u8> {
    vec![kind, 0, 0, 0]
}

pub fn initiation(sender: u32) -> Vec<u8> {
    let mut m = wg_header(1);
    m.extend(sender.to_le_bytes());
    m.extend(filler(1, 140));
    assert_eq!(m.len(), 148);
    m
}

pub fn response(sender: u32, receiver: u32) -> Vec<u8> {
    let mut m = wg_header(2);
    m.extend(sender.to_le_bytes());
    m.extend(receiver.to_le_bytes());
    m.extend(filler(2, 80));
    assert_eq!(m.len(), 92);
    m
}

pub fn cookie_reply(receiver: u32) -> Vec<u8> {
    let mut m = wg_header(3);
    m.extend(receiver.to_le_bytes());
    m.extend(filler(3, 56));
    assert_eq!(m.len(), 64);
    m
}

/// Transport message with `data` bytes of ciphertext before the tag.
pub fn transport(receiver: u32, data: usize) -> Vec<u8> {
    let mut m = wg_header(4);
    m.extend(receiver.to_le_bytes());
    m.extend(7u64.to_le_bytes());
    m.extend(filler(4, data + 16));
    m
}

pub fn keepalive(receiver: u32) -> Vec<u8> {
    transport(receiver, 0)
}

/// Verify the IPv4 header and UDP checksums of a frame by full
/// recomputation (and that IPv6 UDP checksums are never zero).
pub fn verify_checksums(f: &[u8]) {
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
    let acc = sum16(&pseudo_header(src, dst, udp.len()), 0);
    assert_eq!(fold(sum16(udp, acc)), 0xffff, "UDP checksum");
}

// ---------------------------------------------------------------------------
// Network namespace.

pub static NS_SEQ: AtomicU32 = AtomicU32::new(0);

pub fn run(args: &[&str]) {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("{args:?}: {e}"));
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A network namespace the test thread lives in until dropped.
pub struct Netns {
    pub name: String,
    pub orig: File,
}

impl Netns {
    /// A namespace named `rhg-<pid>-<n>`, entered by the calling thread.
    pub fn new() -> Self {
        Self::with_prefix("rhg")
    }

    /// A namespace named `<prefix>-<pid>-<n>`, entered by the calling thread.
    pub fn with_prefix(prefix: &str) -> Self {
        let name = format!(
            "{prefix}-{}-{}",
            std::process::id(),
            NS_SEQ.fetch_add(1, Ordering::Relaxed)
        );
        run(&["ip", "netns", "add", &name]);
        let orig = File::open("/proc/thread-self/ns/net").expect("own netns");
        let ns = Self { name, orig };
        let f = File::open(format!("/run/netns/{}", ns.name)).expect("netns file");
        nix::sched::setns(&f, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
        ns
    }

    pub fn ip(&self, args: &str) {
        let mut v = vec!["ip", "-n", &self.name];
        v.extend(args.split_whitespace());
        run(&v);
    }

    pub fn sysctl(&self, kv: &str) {
        run(&["ip", "netns", "exec", &self.name, "sysctl", "-qw", kv]);
    }

    pub fn ifindex(&self, dev: &str) -> u32 {
        // The thread is inside the namespace.
        let c = std::ffi::CString::new(dev).unwrap();
        let i = unsafe { libc::if_nametoindex(c.as_ptr()) };
        assert_ne!(i, 0, "ifindex of {dev}");
        i
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = nix::sched::setns(&self.orig, nix::sched::CloneFlags::CLONE_NEWNET);
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

pub fn mac(m: [u8; 6]) -> String {
    m.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}
