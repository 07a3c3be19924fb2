//! Cross-family relay: a frame from an IPv4 spoke to an IPv6 spoke and back.
//!
//! The IP header changes size (20 <-> 40 bytes), so the Ethernet and IP
//! headers are rebuilt in front of the untouched UDP header and payload:
//! `bpf_xdp_adjust_head` by -20 (IPv4 -> IPv6) or +20 (IPv6 -> IPv4). The
//! UDP header does not move relative to the end of the frame, so the
//! payload is never copied.
//!
//! The UDP checksum is updated incrementally (RFC 1624 eqn. 3): the pseudo
//! header's length and protocol words are the same in both families (the
//! IPv6 32-bit length's upper half is zero), so only the addresses and the
//! ports change the sum: - old src - old dst + new src + new dst - old sport
//! - old dport + new sport + new dport.
//!
//! The hub's own address in the destination's family (the new source) comes
//! from the controller through [`HubConfig`]. Everything is read from the
//! frame or the map value in place; no address is copied to the stack.

use aya_ebpf::{
    EbpfContext, bindings::xdp_md, helpers::generated::bpf_xdp_adjust_head, programs::XdpContext,
};
use relay_common::{Endpoint, FAMILY_V4, HUB_V4_SET, HUB_V6_SET, HubConfig, counter};

use crate::{
    csum::{fold, sum_words},
    maps::CONFIG,
    mem,
    parse::{ETH_LEN, ETH_P_IP, ETH_P_IPV6, IPPROTO_UDP, Ip, V4, V6, check, read},
    rewrite::RELAY_TTL,
};

/// Bytes the IP header grows by from IPv4 to IPv6.
const GROW: i32 = (V6::IP_LEN - V4::IP_LEN) as i32;

/// The hub configuration if it has an address in the family other than
/// `I` (the new source address of a frame from an `I` spoke relayed to the
/// other family).
#[inline(always)]
pub fn hub_config<I: Ip>() -> Option<&'static HubConfig> {
    let c = CONFIG.get(0)?;
    let need = if I::FAMILY == FAMILY_V4 {
        HUB_V6_SET
    } else {
        HUB_V4_SET
    };
    (c.flags & need != 0).then_some(c)
}

/// [`rebuild`]'s result: the frame was rebuilt in the other family; or,
/// as `Err`, the counter to count before passing the (unmodified) frame.
pub type Rebuilt = Result<(), u32>;

/// Return codes of the out-of-line halves (a plain u32 in R0, no
/// aggregate return through the stack): rebuilt, frame too short, or else
/// the counter index of [`Rebuilt`]'s `Err`.
const DONE: u32 = u32::MAX;
const SHORT: u32 = u32::MAX - 1;

/// Rebuild a frame from an `I` spoke for the other family: Ethernet type,
/// IP header (source = the hub's address from `cfg`, destination = `dst`,
/// hop limit [`RELAY_TTL`]), UDP ports (source = `sport`, the hub port or
/// a mesh port, destination = `dst.port`) and checksums. `ip_payload_len` is the
/// frame's IP payload length (kept as is). Ethernet addresses are left to
/// [`crate::forward`].
#[inline(always)]
pub fn rebuild<I: Ip>(
    ctx: &XdpContext,
    dst: &Endpoint,
    cfg: &HubConfig,
    ip_payload_len: usize,
    sport: u16,
) -> Result<Rebuilt, ()> {
    let rc = if I::FAMILY == FAMILY_V4 {
        v4_to_v6(ctx, dst, cfg, ip_payload_len, sport)
    } else {
        v6_to_v4(ctx, dst, cfg, ip_payload_len, sport)
    };
    match rc {
        DONE => Ok(Ok(())),
        SHORT => Err(()),
        counter => Ok(Err(counter)),
    }
}

/// `check` for the out-of-line halves: `SHORT` on a short frame.
macro_rules! check_or_short {
    ($ctx:expr, $len:expr) => {
        match check($ctx, 0, $len) {
            Ok(h) => h,
            Err(()) => return SHORT,
        }
    };
}

#[inline(always)]
fn adjust_head(ctx: &XdpContext, delta: i32) -> bool {
    // SAFETY: plain helper call on this program's context.
    unsafe { bpf_xdp_adjust_head(ctx.as_ptr() as *mut xdp_md, delta) == 0 }
}

/// [`sum_words`] of one address as its own BPF function: inlined, LLVM
/// loads all 36 words of an IPv6 -> IPv4 update before adding them up and
/// spills them (448 bytes of stack).
///
/// # Safety
/// `p` readable for `2 * WORDS` bytes.
#[inline(never)]
unsafe fn addr_sum<const WORDS: usize, const NOT: bool>(p: *const u8) -> u32 {
    unsafe { sum_words(p, WORDS, NOT) }
}

/// `!fold(acc)`, with a computed 0 sent as 0xffff (0 means "none").
#[inline(always)]
fn finish(acc: u32) -> u16 {
    match !fold(acc) {
        0 => 0xffff,
        c => c,
    }
}

/// IPv4 -> IPv6: grow the head by 20 bytes, then write the IPv6 header over
/// the new room and the old IPv4 header (read first for the checksum).
// Own BPF function (own stack frame): inlined, its address sums and the
// same-family rewrite's spill slots together exceed the 512-byte stack.
#[inline(never)]
fn v4_to_v6(
    ctx: &XdpContext,
    dst: &Endpoint,
    cfg: &HubConfig,
    ip_payload_len: usize,
    new_sport: u16,
) -> u32 {
    {
        let h = check_or_short!(ctx, V4::WG_OFF);
        // SAFETY: inside the checked header.
        let csum = unsafe { mem::load_be16(h.add(V4::UDP_OFF + 6)) };
        if csum == 0 {
            // IPv6 needs a checksum; summing the payload is not done here.
            return counter::NO_CHECKSUM;
        }
    }
    if !adjust_head(ctx, -GROW) {
        return counter::ADJUST_HEAD_FAILED;
    }
    // After the move: Ethernet + IPv6 room at 0..54, the old IPv4 header at
    // 34..54, UDP at 54 (= V6::UDP_OFF) as before relative to the payload.
    let h = check_or_short!(ctx, V6::WG_OFF);
    const OLD_IP: usize = ETH_LEN + GROW as usize;
    // SAFETY: every offset is < V6::WG_OFF (checked); `dst` and `cfg` are
    // map values with 16-byte addresses.
    unsafe {
        // The old Ethernet addresses (at 20..32 now) for the fallback path
        // of forward(), which sends the frame back where it came from.
        mem::copy(h, h.add(GROW as usize), 12);
        let udp = h.add(V6::UDP_OFF);
        let old_src = h.add(OLD_IP + 12);
        let old_dst = h.add(OLD_IP + 16);
        let csum = mem::load_be16(udp.add(6));
        let sport = mem::load_be16(udp);
        let dport = mem::load_be16(udp.add(2));
        let acc = (!csum) as u32
            + addr_sum::<2, true>(old_src)
            + addr_sum::<2, true>(old_dst)
            + addr_sum::<8, false>(cfg.hub_v6.as_ptr())
            + addr_sum::<8, false>(dst.addr.as_ptr())
            + (!sport) as u32
            + (!dport) as u32
            + new_sport as u32
            + dst.port as u32;
        let c = finish(acc);

        mem::store_be16(udp, new_sport);
        mem::store_be16(udp.add(2), dst.port);
        mem::store_be16(udp.add(6), c);

        // IPv6 header (overwrites the old IPv4 addresses, used above).
        let ip = h.add(ETH_LEN);
        *ip = 0x60;
        *ip.add(1) = 0;
        *ip.add(2) = 0;
        *ip.add(3) = 0;
        mem::store_be16(ip.add(4), ip_payload_len as u16);
        *ip.add(6) = IPPROTO_UDP;
        *ip.add(7) = RELAY_TTL;
        mem::copy(h.add(V6::SRC_OFF), cfg.hub_v6.as_ptr(), 16);
        mem::copy(h.add(V6::DST_OFF), dst.addr.as_ptr(), 16);
        mem::store_be16(h.add(12), ETH_P_IPV6);
    }
    DONE
}

/// IPv6 -> IPv4: compute the checksum while the IPv6 header is there,
/// shrink the head by 20 bytes, then write the IPv4 header in place.
#[inline(never)]
fn v6_to_v4(
    ctx: &XdpContext,
    dst: &Endpoint,
    cfg: &HubConfig,
    ip_payload_len: usize,
    new_sport: u16,
) -> u32 {
    let c = {
        let h = check_or_short!(ctx, V6::WG_OFF);
        // SAFETY: inside the checked header; map values as above.
        unsafe {
            let udp = h.add(V6::UDP_OFF);
            let csum = mem::load_be16(udp.add(6));
            let sport = mem::load_be16(udp);
            let dport = mem::load_be16(udp.add(2));
            let acc = (!csum) as u32
                + addr_sum::<8, true>(h.add(V6::SRC_OFF))
                + addr_sum::<8, true>(h.add(V6::DST_OFF))
                + addr_sum::<2, false>(cfg.hub_v4.as_ptr())
                + addr_sum::<2, false>(dst.addr.as_ptr())
                + (!sport) as u32
                + (!dport) as u32
                + new_sport as u32
                + dst.port as u32;
            finish(acc)
        }
    };
    // The Ethernet addresses go with the shrunk head; keep them (12 bytes)
    // for the fallback path of forward().
    let Ok(macs) = read::<12>(ctx, 0) else {
        return SHORT;
    };
    if !adjust_head(ctx, GROW) {
        return counter::ADJUST_HEAD_FAILED;
    }
    let h = check_or_short!(ctx, V4::WG_OFF);
    // SAFETY: every offset is < V4::WG_OFF (checked); map values as above.
    unsafe {
        mem::copy_bytes(h, macs.as_ptr(), 12);
        let udp = h.add(V4::UDP_OFF);
        mem::store_be16(udp, new_sport);
        mem::store_be16(udp.add(2), dst.port);
        mem::store_be16(udp.add(6), c);

        let ip = h.add(ETH_LEN);
        *ip = 0x45;
        *ip.add(1) = 0;
        mem::store_be16(ip.add(2), (ip_payload_len + V4::IP_LEN) as u16);
        // Identification 0 with DF (RFC 6864: atomic datagram).
        *ip.add(4) = 0;
        *ip.add(5) = 0;
        *ip.add(6) = 0x40;
        *ip.add(7) = 0;
        *ip.add(8) = RELAY_TTL;
        *ip.add(9) = IPPROTO_UDP;
        *ip.add(10) = 0;
        *ip.add(11) = 0;
        mem::copy(h.add(V4::SRC_OFF), cfg.hub_v4.as_ptr(), 4);
        mem::copy(h.add(V4::DST_OFF), dst.addr.as_ptr(), 4);
        let hc = !fold(sum_words(ip, 10, false));
        mem::store_be16(ip.add(10), hc);
        mem::store_be16(h.add(12), ETH_P_IP);
    }
    DONE
}
