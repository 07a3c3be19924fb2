//! Header parsing: Ethernet, IPv4 / IPv6, UDP, WireGuard message header.
//!
//! Every packet access goes through [`check`], the one bounds check. All
//! offsets past the IP header are compile-time constants per family (the
//! program is monomorphised over [`Ip`]), which keeps the verifier's job
//! trivial. Only the "is this for the hub port?" probes of frames we will not
//! relay (IPv4 options, IPv6 extension headers) use variable offsets.

use aya_ebpf::programs::XdpContext;
use core::{mem::size_of, ptr::addr_of_mut};
use relay_common::{
    Endpoint, FAMILY_V4, FAMILY_V6, HUB_V4_SET, HUB_V6_SET, HubConfig,
    wire::{
        COOKIE_REPLY_LEN, INITIATION_LEN, MSG_COOKIE_REPLY, MSG_INITIATION, MSG_RESPONSE,
        MSG_TRANSPORT, RESPONSE_LEN, TRANSPORT_MIN_LEN,
    },
};

use crate::{
    csum::{fold64, sum32},
    mem,
};

pub const ETH_LEN: usize = 14;
pub const ETH_P_IP: u16 = 0x0800;
pub const ETH_P_IPV6: u16 = 0x86dd;
pub const IPPROTO_UDP: u8 = 17;
pub const UDP_LEN: usize = 8;
/// WireGuard's smallest message header we look at: type + reserved.
pub const WG_HDR_MIN: usize = 4;

/// The single bounds check: `len` bytes at byte `off` of the frame are
/// readable and writable; returns a pointer to them, or `Err` when the frame
/// is too short. With constant `off`/`len` this is the `data + N > data_end`
/// test the verifier wants.
#[inline(always)]
pub fn check(ctx: &XdpContext, off: usize, len: usize) -> Result<*mut u8, ()> {
    let start = ctx.data();
    let end = ctx.data_end();
    if start + off + len > end {
        return Err(());
    }
    Ok((start + off) as *mut u8)
}

/// A pointer to a `T` at byte `off` of the frame (see [`check`]).
#[inline(always)]
pub fn ptr_at<T>(ctx: &XdpContext, off: usize) -> Result<*mut T, ()> {
    Ok(check(ctx, off, size_of::<T>())?.cast())
}

/// Copy of the `N` bytes at `off`.
#[inline(always)]
pub fn read<const N: usize>(ctx: &XdpContext, off: usize) -> Result<[u8; N], ()> {
    // SAFETY: ptr_at checked that N bytes are inside the frame.
    Ok(unsafe { *ptr_at::<[u8; N]>(ctx, off)? })
}

#[inline(always)]
pub const fn be16(hi: u8, lo: u8) -> u16 {
    ((hi as u16) << 8) | lo as u16
}

/// Frame length (the kernel caps XDP frames far below `usize` limits).
#[inline(always)]
pub fn frame_len(ctx: &XdpContext) -> usize {
    ctx.data_end() - ctx.data()
}

/// The UDP ports the program relays on: the hub port, and with a mesh
/// every port from `mesh_base` up (`mesh_base + slot`, see
/// `relay_common::mesh_port`).
#[derive(Clone, Copy)]
pub struct Ports {
    pub hub: u16,
    pub mesh_base: u16,
}

impl Ports {
    #[inline(always)]
    pub fn relays(self, port: u16) -> bool {
        port == self.hub || self.is_mesh(port)
    }

    #[inline(always)]
    pub fn is_mesh(self, port: u16) -> bool {
        self.mesh_base != 0 && port >= self.mesh_base && port != self.hub
    }
}

/// What the IP layer says about a frame.
pub enum L3 {
    /// Not UDP to the hub port (or cannot tell): XDP_PASS, uncounted.
    Ignore,
    /// UDP to the hub port that the fast path does not handle (IPv4 options,
    /// fragments, IPv6 extension headers): XDP_PASS + PASS_UNSUPPORTED.
    Unsupported,
    /// UDP to the hub port whose IP length does not fit the frame:
    /// SEEN + PASS_MALFORMED.
    Malformed,
    /// UDP to the hub port, plain header; the IP payload length (the UDP
    /// header and payload, per the IP header, already checked to be inside
    /// the frame).
    Udp { ip_payload_len: usize },
}

/// An address family with its fixed header layout (no options, no
/// extension headers).
pub trait Ip {
    /// `relay_common::FAMILY_*`.
    const FAMILY: u8;
    /// `AF_INET` / `AF_INET6` for bpf_fib_lookup.
    const AF: u8;
    const IP_LEN: usize;
    /// Frame offsets of the source and destination addresses.
    const SRC_OFF: usize;
    const DST_OFF: usize;
    /// TTL / hop limit.
    const TTL_OFF: usize;
    const UDP_OFF: usize = ETH_LEN + Self::IP_LEN;
    const WG_OFF: usize = Self::UDP_OFF + UDP_LEN;
    /// Whether a UDP checksum of zero means "none" (IPv4) and stays zero.
    const ZERO_CSUM_OK: bool;
    /// Whether the IP header has a checksum (IPv4).
    const HEADER_CSUM: bool;

    /// Address length in bytes.
    const ADDR_LEN: usize;

    /// Look at the IP header of a frame whose ethertype says this family.
    fn parse(ctx: &XdpContext, ports: Ports) -> Result<L3, ()>;
}

pub struct V4;
pub struct V6;

impl Ip for V4 {
    const FAMILY: u8 = FAMILY_V4;
    const AF: u8 = 2;
    const IP_LEN: usize = 20;
    const SRC_OFF: usize = ETH_LEN + 12;
    const DST_OFF: usize = ETH_LEN + 16;
    const TTL_OFF: usize = ETH_LEN + 8;
    const ZERO_CSUM_OK: bool = true;
    const HEADER_CSUM: bool = true;
    const ADDR_LEN: usize = 4;

    /// IHL != 5: we read the destination port at the real offset, so only
    /// UDP with options *to the hub port* counts as PASS_UNSUPPORTED. Non-first
    /// fragments carry no UDP header: we cannot tell their port, so they
    /// pass uncounted; first fragments (MF set, offset 0) to the hub port
    /// count as PASS_UNSUPPORTED.
    #[inline(always)]
    fn parse(ctx: &XdpContext, ports: Ports) -> Result<L3, ()> {
        let ip = check(ctx, ETH_LEN, Self::IP_LEN)?;
        // SAFETY: the 20 bytes of the fixed header were checked.
        let (vihl, proto, frag, tot_len) = unsafe {
            (
                *ip,
                *ip.add(9),
                mem::load_be16(ip.add(6)),
                mem::load_be16(ip.add(2)) as usize,
            )
        };
        if vihl >> 4 != 4 || proto != IPPROTO_UDP {
            return Ok(L3::Ignore);
        }
        let ihl = (vihl & 0x0f) as usize;
        if ihl < 5 || frag & 0x1fff != 0 {
            return Ok(L3::Ignore);
        }
        let dport = check(ctx, ETH_LEN + ihl * 4 + 2, 2)?;
        // SAFETY: 2 bytes checked.
        if !ports.relays(unsafe { mem::load_be16(dport) }) {
            return Ok(L3::Ignore);
        }
        if ihl != 5 || frag & 0x2000 != 0 {
            return Ok(L3::Unsupported);
        }
        if tot_len < Self::IP_LEN + UDP_LEN || ETH_LEN + tot_len > frame_len(ctx) {
            return Ok(L3::Malformed);
        }
        // The cross-family rebuild writes a fresh header and the rewrite
        // updates the checksum from this one: check it first, or a
        // corrupted header the kernel would drop could leave valid.
        // SAFETY: the 20 bytes checked above (no helper call since).
        if fold64(unsafe { sum32(ip, 5) }) != 0xffff {
            return Ok(L3::Malformed);
        }
        Ok(L3::Udp {
            ip_payload_len: tot_len - Self::IP_LEN,
        })
    }
}

/// Whether the frame is addressed to the hub: its destination is the hub's
/// address in this family, when the controller configured one (without it,
/// anything to the port counts).
#[inline(always)]
pub fn to_hub<I: Ip>(ctx: &XdpContext, cfg: &HubConfig) -> Result<bool, ()> {
    let (set, want): (u32, &[u8]) = if I::FAMILY == FAMILY_V4 {
        (HUB_V4_SET, &cfg.hub_v4)
    } else {
        (HUB_V6_SET, &cfg.hub_v6)
    };
    if cfg.flags & set == 0 {
        return Ok(true);
    }
    let h = check(ctx, 0, I::DST_OFF + I::ADDR_LEN)?;
    // Compared in place, word by word: no copy on the BPF stack.
    let mut i = 0;
    while i < I::ADDR_LEN {
        // SAFETY: inside the checked header; want has ADDR_LEN bytes.
        let (got, exp) = unsafe {
            (
                core::ptr::read_unaligned(h.add(I::DST_OFF + i).cast::<u32>()),
                core::ptr::read_unaligned(want.as_ptr().add(i).cast::<u32>()),
            )
        };
        if got != exp {
            return Ok(false);
        }
        i += 4;
    }
    Ok(true)
}

/// IPv6 extension headers (and ESP) that may precede UDP.
#[inline(always)]
const fn is_ext(nh: u8) -> bool {
    matches!(nh, 0 | 43 | 44 | 60 | 51 | 50 | 135 | 139 | 140)
}

/// Maximum extension headers walked to find the UDP port of a frame we
/// will pass anyway (only to decide whether to count it).
const MAX_EXT_WALK: usize = 4;

impl Ip for V6 {
    const FAMILY: u8 = FAMILY_V6;
    const AF: u8 = 10;
    const IP_LEN: usize = 40;
    const SRC_OFF: usize = ETH_LEN + 8;
    const DST_OFF: usize = ETH_LEN + 24;
    const TTL_OFF: usize = ETH_LEN + 7;
    const ZERO_CSUM_OK: bool = false;
    const HEADER_CSUM: bool = false;
    const ADDR_LEN: usize = 16;

    /// UDP must follow the fixed header directly. With extension headers we
    /// walk up to [`MAX_EXT_WALK`] of them to see whether the frame is UDP
    /// to the hub port (then PASS_UNSUPPORTED); ESP, non-first fragments,
    /// longer chains and truncated chains pass uncounted.
    #[inline(always)]
    fn parse(ctx: &XdpContext, ports: Ports) -> Result<L3, ()> {
        let ip = read::<8>(ctx, ETH_LEN)?;
        if ip[0] >> 4 != 6 {
            return Ok(L3::Ignore);
        }
        let nh = ip[6];
        if nh != IPPROTO_UDP {
            if is_ext(nh) && ext_to_port(ctx, nh, ports)? {
                return Ok(L3::Unsupported);
            }
            return Ok(L3::Ignore);
        }
        let dport = read::<2>(ctx, Self::UDP_OFF + 2)?;
        if !ports.relays(be16(dport[0], dport[1])) {
            return Ok(L3::Ignore);
        }
        let payload_len = be16(ip[4], ip[5]) as usize;
        if payload_len < UDP_LEN || ETH_LEN + Self::IP_LEN + payload_len > frame_len(ctx) {
            return Ok(L3::Malformed);
        }
        Ok(L3::Udp {
            ip_payload_len: payload_len,
        })
    }
}

/// Walk IPv6 extension headers starting with `nh` right after the fixed
/// header: is this UDP to `port`?
#[inline(always)]
fn ext_to_port(ctx: &XdpContext, mut nh: u8, ports: Ports) -> Result<bool, ()> {
    let mut off = ETH_LEN + V6::IP_LEN;
    for _ in 0..MAX_EXT_WALK {
        let h = read::<4>(ctx, off)?;
        match nh {
            IPPROTO_UDP => return Ok(ports.relays(be16(h[2], h[3]))),
            // Fragment: fixed 8 bytes; only the first fragment has the port.
            44 => {
                if be16(h[2], h[3]) & 0xfff8 != 0 {
                    return Ok(false);
                }
                off += 8;
            }
            // AH: length in 4-octet units minus 2.
            51 => off += (h[1] as usize + 2) * 4,
            0 | 43 | 60 | 135 | 139 | 140 => off += (h[1] as usize + 1) * 8,
            _ => return Ok(false),
        }
        nh = h[0];
    }
    Ok(false)
}

/// An endpoint from the address at `addr` (`I::ADDR_LEN` bytes, network
/// order) and `port` (host order), written in place (keeps it in memory).
///
/// # Safety
/// `ep` must be writable, `addr` readable for `I::ADDR_LEN` bytes.
#[inline(always)]
pub unsafe fn fill_endpoint<I: Ip>(ep: *mut Endpoint, addr: *const u8, port: u16) {
    unsafe {
        let a = addr_of_mut!((*ep).addr).cast::<u8>();
        mem::copy(a, addr, I::ADDR_LEN);
        mem::zero(a.add(I::ADDR_LEN), 16 - I::ADDR_LEN);
        addr_of_mut!((*ep).port).write(port);
        addr_of_mut!((*ep).family).write(I::FAMILY);
        addr_of_mut!((*ep)._pad).write(0);
    }
}

/// A WireGuard message that passed the header and length checks.
pub struct Msg {
    pub kind: u8,
    /// UDP payload length (the whole WireGuard message).
    pub len: usize,
}

/// Check the UDP length against the IP payload and the WireGuard header:
/// `Ok(None)` = malformed.
#[inline(always)]
pub fn wireguard<I: Ip>(ctx: &XdpContext, ip_payload_len: usize) -> Result<Option<Msg>, ()> {
    let udp = read::<8>(ctx, I::UDP_OFF)?;
    let udp_len = be16(udp[4], udp[5]) as usize;
    if udp_len < UDP_LEN + WG_HDR_MIN || udp_len > ip_payload_len {
        return Ok(None);
    }
    let len = udp_len - UDP_LEN;
    let h = read::<4>(ctx, I::WG_OFF)?;
    if h[1] != 0 || h[2] != 0 || h[3] != 0 {
        return Ok(None);
    }
    let ok = match h[0] {
        MSG_INITIATION => len == INITIATION_LEN,
        MSG_RESPONSE => len == RESPONSE_LEN,
        MSG_COOKIE_REPLY => len == COOKIE_REPLY_LEN,
        MSG_TRANSPORT => len >= TRANSPORT_MIN_LEN,
        _ => false,
    };
    Ok(if ok {
        Some(Msg { kind: h[0], len })
    } else {
        None
    })
}
