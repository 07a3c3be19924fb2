//! Userspace fallback of the cross-family fast path.
//!
//! A frame between an IPv4 and an IPv6 spoke that the XDP program cannot
//! rebuild itself (the driver refused `bpf_xdp_adjust_head`, the IPv4 frame
//! has no UDP checksum, or `--cross-family-path userspace`) arrives here
//! whole, as a perf sample: a [`FallbackMeta`] header (destination endpoint,
//! reason) and the frame as received. [`parse`] checks it (sans IO); the
//! controller then sends the WireGuard message on from its raw sockets, from
//! the hub's address in the destination's family and the hub port, exactly
//! as the fast path would have.
//!
//! The program validated the frame before handing it over; it is parsed
//! again here because userspace does not trust a kernel buffer's layout.

use relay_common::{
    Endpoint, FAMILY_V4, FAMILY_V6, FallbackMeta,
    counter::{ADJUST_HEAD_FAILED, NO_CHECKSUM, USERSPACE_FALLBACK},
};

const ETH_LEN: usize = 14;
const IPPROTO_UDP: u8 = 17;
const META_LEN: usize = std::mem::size_of::<FallbackMeta>();

/// Largest sample [`crate::datapath::perf::drain`] reassembles when it wraps the ring: header
/// plus a jumbo frame.
pub const SAMPLE_MAX: usize = META_LEN + 9216 + 64;

/// Why the fast path handed a frame over.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    /// The driver refused `bpf_xdp_adjust_head`.
    AdjustHeadFailed,
    /// IPv4 frame without UDP checksum to an IPv6 spoke.
    NoChecksum,
    /// `--cross-family-path userspace`.
    Configured,
}

impl Reason {
    pub const ALL: [Reason; 3] = [
        Reason::AdjustHeadFailed,
        Reason::NoChecksum,
        Reason::Configured,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Reason::AdjustHeadFailed => "adjust_head_failed",
            Reason::NoChecksum => "no_checksum",
            Reason::Configured => "configured",
        }
    }

    fn from_counter(c: u32) -> Option<Self> {
        match c {
            ADJUST_HEAD_FAILED => Some(Reason::AdjustHeadFailed),
            NO_CHECKSUM => Some(Reason::NoChecksum),
            USERSPACE_FALLBACK => Some(Reason::Configured),
            _ => None,
        }
    }
}

/// A frame to send on.
#[derive(Debug, PartialEq, Eq)]
pub struct Relay<'a> {
    /// The hub address and port the frame was sent to (the hub's port is
    /// the source port of the relayed frame).
    pub hub: Endpoint,
    /// The destination spoke.
    pub to: Endpoint,
    /// The sending spoke's address family.
    pub from_family: u8,
    /// The WireGuard message (UDP payload), untouched.
    pub payload: &'a [u8],
    pub reason: Reason,
}

/// Why a sample was not relayed.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum Reject {
    #[error("sample shorter than its header or its frame length")]
    Short,
    #[error("unknown reason {0}")]
    Reason(u32),
    #[error("destination endpoint without address family")]
    Destination,
    #[error("frame: {0}")]
    Frame(&'static str),
}

fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

/// Parse one sample: [`FallbackMeta`], then `frame_len` bytes of frame
/// (the kernel pads the sample; trailing bytes are ignored).
pub fn parse(sample: &[u8]) -> Result<Relay<'_>, Reject> {
    let meta_bytes = sample.get(..META_LEN).ok_or(Reject::Short)?;
    // SAFETY: META_LEN bytes of a repr(C) plain-data struct; unaligned read.
    let meta: FallbackMeta = unsafe { std::ptr::read_unaligned(meta_bytes.as_ptr().cast()) };
    let reason = Reason::from_counter(meta.reason).ok_or(Reject::Reason(meta.reason))?;
    if !matches!(meta.dst.family, FAMILY_V4 | FAMILY_V6) {
        return Err(Reject::Destination);
    }
    let frame = sample
        .get(META_LEN..META_LEN + meta.frame_len as usize)
        .ok_or(Reject::Short)?;
    let bad = Reject::Frame;
    if frame.len() < ETH_LEN {
        return Err(bad("shorter than an Ethernet header"));
    }
    let ip = &frame[ETH_LEN..];
    // (IP header length, IP payload length, family, destination address).
    let (hdr_len, ip_payload_len, from_family, hub) = match be16(frame, 12) {
        0x0800 => {
            if ip.len() < 20 || ip[0] != 0x45 {
                return Err(bad("not an IPv4 header without options"));
            }
            if ip[9] != IPPROTO_UDP {
                return Err(bad("not UDP"));
            }
            let total = be16(ip, 2) as usize;
            if total < 20 || total > ip.len() {
                return Err(bad("IPv4 total length outside the frame"));
            }
            let mut a = [0u8; 4];
            a.copy_from_slice(&ip[16..20]);
            (20, total - 20, FAMILY_V4, Endpoint::v4(a, 0))
        }
        0x86dd => {
            if ip.len() < 40 || ip[0] >> 4 != 6 {
                return Err(bad("not an IPv6 header"));
            }
            if ip[6] != IPPROTO_UDP {
                return Err(bad("not UDP (or extension headers)"));
            }
            let plen = be16(ip, 4) as usize;
            if 40 + plen > ip.len() {
                return Err(bad("IPv6 payload length outside the frame"));
            }
            let mut a = [0u8; 16];
            a.copy_from_slice(&ip[24..40]);
            (40, plen, FAMILY_V6, Endpoint::v6(a, 0))
        }
        _ => return Err(bad("neither IPv4 nor IPv6")),
    };
    let udp = &ip[hdr_len..hdr_len + ip_payload_len];
    if udp.len() < 8 {
        return Err(bad("shorter than a UDP header"));
    }
    let udp_len = be16(udp, 4) as usize;
    if udp_len < 8 || udp_len > udp.len() {
        return Err(bad("UDP length outside the IP payload"));
    }
    Ok(Relay {
        hub: Endpoint {
            port: be16(udp, 2),
            ..hub
        },
        to: meta.dst,
        from_family,
        payload: &udp[8..udp_len],
        reason,
    })
}

/// The controller's counts of the fallback path.
#[derive(Clone, Debug, Default)]
pub struct FallbackStats {
    /// Samples received, by [`Reason::ALL`] index.
    pub received: [u64; 3],
    /// Frames sent on, by (from IPv6, to IPv6).
    pub sent: [[u64; 2]; 2],
    /// Samples the kernel dropped (perf buffer full).
    pub lost: u64,
    /// Samples that did not parse.
    pub malformed: u64,
}

impl FallbackStats {
    pub fn received(&mut self, r: Reason) {
        let i = Reason::ALL.iter().position(|x| *x == r).unwrap_or(0);
        self.received[i] += 1;
    }

    pub fn sent(&mut self, from: u8, to: u8) {
        self.sent[usize::from(from == FAMILY_V6)][usize::from(to == FAMILY_V6)] += 1;
    }

    /// Frames sent from family `from` to `to`.
    pub fn sent_count(&self, from: u8, to: u8) -> u64 {
        self.sent[usize::from(from == FAMILY_V6)][usize::from(to == FAMILY_V6)]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(dst: Endpoint, reason: u32, frame_len: usize) -> Vec<u8> {
        let m = FallbackMeta {
            dst,
            reason,
            frame_len: frame_len as u32,
        };
        // SAFETY: repr(C) plain data without padding (size asserted in
        // relay-common).
        unsafe { std::slice::from_raw_parts((&raw const m).cast::<u8>(), META_LEN) }.to_vec()
    }

    fn v4_frame(payload: &[u8], pad: usize) -> Vec<u8> {
        let mut f = vec![0u8; 12];
        f.extend_from_slice(&[0x08, 0x00]);
        let total = (20 + 8 + payload.len()) as u16;
        f.extend_from_slice(&[0x45, 0]);
        f.extend_from_slice(&total.to_be_bytes());
        f.extend_from_slice(&[0, 0, 0x40, 0, 64, 17, 0, 0]);
        f.extend_from_slice(&[203, 0, 113, 10, 198, 51, 100, 1]);
        f.extend_from_slice(&40000u16.to_be_bytes());
        f.extend_from_slice(&51820u16.to_be_bytes());
        f.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
        f.extend_from_slice(&[0, 0]);
        f.extend_from_slice(payload);
        f.extend(std::iter::repeat_n(0, pad));
        f
    }

    fn v6_frame(payload: &[u8]) -> Vec<u8> {
        let mut f = vec![0u8; 12];
        f.extend_from_slice(&[0x86, 0xdd]);
        f.extend_from_slice(&[0x60, 0, 0, 0]);
        f.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
        f.extend_from_slice(&[17, 64]);
        let mut src = [0u8; 16];
        src[0] = 0x20;
        src[15] = 0x10;
        let mut dst = [0u8; 16];
        dst[0] = 0x20;
        dst[15] = 1;
        f.extend_from_slice(&src);
        f.extend_from_slice(&dst);
        f.extend_from_slice(&41000u16.to_be_bytes());
        f.extend_from_slice(&51820u16.to_be_bytes());
        f.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
        f.extend_from_slice(&[0x12, 0x34]);
        f.extend_from_slice(payload);
        f
    }

    fn sample(dst: Endpoint, reason: u32, frame: &[u8], trailer: usize) -> Vec<u8> {
        let mut s = meta(dst, reason, frame.len());
        s.extend_from_slice(frame);
        s.extend(std::iter::repeat_n(0xee, trailer));
        s
    }

    const D6: Endpoint = Endpoint::v6(
        [0x20, 1, 0xd, 0xb8, 0, 0x99, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10],
        41000,
    );
    const A4: Endpoint = Endpoint::v4([203, 0, 113, 10], 40000);

    #[test]
    fn v4_frame_to_v6_spoke() {
        let payload: Vec<u8> = (0..64u8).collect();
        // Ethernet padding after the IP packet and sample padding after
        // the frame are both ignored.
        let frame = v4_frame(&payload, 6);
        let s = sample(D6, ADJUST_HEAD_FAILED, &frame, 4);
        let r = parse(&s).unwrap();
        assert_eq!(r.payload, &payload[..]);
        assert_eq!(r.to, D6);
        assert_eq!(r.hub, Endpoint::v4([198, 51, 100, 1], 51820));
        assert_eq!(r.from_family, FAMILY_V4);
        assert_eq!(r.reason, Reason::AdjustHeadFailed);
    }

    #[test]
    fn v6_frame_to_v4_spoke() {
        let payload = [4u8, 0, 0, 0, 9, 9, 9, 9];
        let frame = v6_frame(&payload);
        let s = sample(A4, USERSPACE_FALLBACK, &frame, 0);
        let r = parse(&s).unwrap();
        assert_eq!(r.payload, &payload[..]);
        assert_eq!(r.to, A4);
        assert_eq!(r.hub.family, FAMILY_V6);
        assert_eq!(r.hub.port, 51820);
        assert_eq!(r.hub.addr[15], 1);
        assert_eq!(r.from_family, FAMILY_V6);
        assert_eq!(r.reason, Reason::Configured);
    }

    #[test]
    fn rejects_bad_samples_without_panicking() {
        let frame = v4_frame(&[1, 2, 3, 4], 0);
        let good = sample(D6, NO_CHECKSUM, &frame, 0);
        assert!(parse(&good).is_ok());
        assert_eq!(parse(&good[..10]), Err(Reject::Short));
        // Frame length beyond the sample.
        assert_eq!(parse(&good[..good.len() - 1]), Err(Reject::Short));
        assert_eq!(parse(&sample(D6, 99, &frame, 0)), Err(Reject::Reason(99)));
        assert_eq!(
            parse(&sample(Endpoint::default(), NO_CHECKSUM, &frame, 0)),
            Err(Reject::Destination)
        );
        let mutate = |at: usize, v: u8| {
            let mut f = frame.clone();
            f[at] = v;
            parse(&sample(D6, NO_CHECKSUM, &f, 0)).map(|_| ())
        };
        assert!(mutate(12, 0x99).is_err()); // ethertype
        assert!(mutate(14, 0x46).is_err()); // IPv4 options
        assert!(mutate(23, 6).is_err()); // TCP
        assert!(mutate(16, 0xff).is_err()); // total length
        assert!(mutate(38, 0xff).is_err()); // UDP length
        assert!(mutate(39, 7).is_err()); // UDP length < 8
        // Every truncation and every single-byte value at every offset:
        // Ok or Err, never a panic.
        for n in 0..good.len() {
            let _ = parse(&good[..n]);
        }
        for at in META_LEN..good.len() {
            for v in [0u8, 1, 7, 8, 0x45, 0x60, 0x7f, 0x80, 0xff] {
                let mut s = good.clone();
                s[at] = v;
                let _ = parse(&s);
            }
        }
    }

    #[test]
    fn stats_by_family_and_reason() {
        let mut s = FallbackStats::default();
        s.sent(FAMILY_V4, FAMILY_V6);
        s.sent(FAMILY_V4, FAMILY_V6);
        s.sent(FAMILY_V6, FAMILY_V4);
        s.received(Reason::NoChecksum);
        assert_eq!(s.sent_count(FAMILY_V4, FAMILY_V6), 2);
        assert_eq!(s.sent_count(FAMILY_V6, FAMILY_V4), 1);
        assert_eq!(s.sent_count(FAMILY_V4, FAMILY_V4), 0);
        assert_eq!(s.received, [0, 1, 0]);
    }
}
