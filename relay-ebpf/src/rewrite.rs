//! Address/port rewrite and checksum maintenance.
//!
//! Everything works on the frame in place through one bounds-checked header
//! pointer: addresses are never copied into registers byte by byte (that
//! blows the 512-byte BPF stack with spills).

use aya_ebpf::programs::XdpContext;
use relay_common::Endpoint;

use crate::{
    csum::{fold64, sum32},
    mem,
    parse::{ETH_LEN, Ip, check},
};

/// Outgoing TTL / hop limit of relayed frames.
pub const RELAY_TTL: u8 = 64;

/// Rewrite a frame for relaying to `dst`: new source = the old destination
/// address (the hub's) and port `sport` (the hub port, or a mesh port when
/// `dst` is a peer hub), new destination = `dst`; TTL / hop limit
/// [`RELAY_TTL`]; checksums fixed. The payload is untouched.
///
/// UDP checksum (RFC 1624 eqn. 3, HC' = ~(~HC + ~m + m')): the pseudo
/// header and port words change from (src, dst, sport, dport) to (dst,
/// dst', sport', dport'), so the sum changes by dst' - src + sport' +
/// dport' - sport - dport. IPv4 with checksum 0 ("none") stays 0; a
/// computed 0 is sent as 0xffff. All sums work on words as they lie in
/// memory (see `csum::sum32`).
#[inline(always)]
pub fn rewrite<I: Ip>(ctx: &XdpContext, dst: &Endpoint, sport: u16) -> Result<(), ()> {
    let h = check(ctx, 0, I::WG_OFF)?;
    // SAFETY: all offsets below are < I::WG_OFF (checked above); `dst` is a
    // map value with a 16-byte address.
    unsafe {
        let src_addr = h.add(I::SRC_OFF);
        let dst_addr = h.add(I::DST_OFF);
        let udp = h.add(I::UDP_OFF);
        let new_addr = dst.addr.as_ptr();
        let words = I::ADDR_LEN / 4;

        // What the addresses add to any sum over them: src -> dst, dst ->
        // dst' is dst' - src. `!x` of a word subtracts it: the source words
        // summed complemented (n words: n * 0xffff_ffff - sum).
        let addr_delta =
            (words as u64 * 0xffff_ffff - sum32(src_addr, words)) + sum32(new_addr, words);

        let csum = mem::load16(udp.add(6));
        if !(I::ZERO_CSUM_OK && csum == 0) {
            let (s, d) = (sport.to_be_bytes(), dst.port.to_be_bytes());
            let new_ports = u32::from_ne_bytes([s[0], s[1], d[0], d[1]]);
            let old_ports = core::ptr::read_unaligned(udp.cast::<u32>());
            let acc = u64::from(!csum) + addr_delta + u64::from(!old_ports) + u64::from(new_ports);
            let c = match !fold64(acc) {
                0 => 0xffff,
                c => c,
            };
            mem::store16(udp.add(6), c);
        }
        if I::HEADER_CSUM {
            // IPv4 header checksum, updated the same way for the addresses
            // and the TTL (the word TTL | protocol). parse::V4 checked the
            // old one, so the update is exact.
            let ip = h.add(ETH_LEN);
            let hc = mem::load16(ip.add(10));
            let ttl_proto = mem::load16(ip.add(8));
            let new_ttl_proto = u16::from_ne_bytes([RELAY_TTL, *ip.add(9)]);
            let acc =
                u64::from(!hc) + addr_delta + u64::from(!ttl_proto) + u64::from(new_ttl_proto);
            mem::store16(ip.add(10), !fold64(acc));
        }

        mem::copy(src_addr, dst_addr, I::ADDR_LEN);
        mem::copy(dst_addr, new_addr, I::ADDR_LEN);
        mem::store_be16(udp, sport);
        mem::store_be16(udp.add(2), dst.port);
        *h.add(I::TTL_OFF) = RELAY_TTL;
    }
    Ok(())
}
