//! Next hop: bpf_fib_lookup, Ethernet addresses, TX or redirect.
//!
//! The lookup is the most expensive step of a relayed frame (~100 ns), so
//! its result is cached per CPU and destination slot for
//! [`NEXTHOP_TTL_NS`]: a hit checks the destination address, the ingress
//! interface and the length against the entry and copies the two MACs.

use aya_ebpf::{
    EbpfContext,
    bindings::{
        BPF_FIB_LKUP_RET_FRAG_NEEDED, BPF_FIB_LKUP_RET_FWD_DISABLED, BPF_FIB_LKUP_RET_NO_NEIGH,
        BPF_FIB_LKUP_RET_SUCCESS, bpf_fib_lookup, xdp_action,
    },
    helpers::generated::{bpf_fib_lookup as fib_lookup, bpf_redirect},
    programs::XdpContext,
};
use core::{
    mem::{MaybeUninit, size_of},
    ptr::addr_of_mut,
};

use relay_common::{NEXTHOP_ENTRIES, NEXTHOP_TTL_NS, NextHop};

use crate::{
    maps::NEXTHOPS,
    mem,
    parse::{IPPROTO_UDP, Ip, check},
};

pub enum Next {
    /// Routed: XDP_TX or XDP_REDIRECT (the action to return).
    Sent(u32),
    /// Forwarding disabled or no neighbour entry: sent back to the L2
    /// neighbour it came from (XDP_TX).
    BackToSender,
    /// No route: drop.
    NoRoute,
    /// Larger than the route's MTU: drop.
    TooBig,
}

/// TX if the egress is where the frame came in, else a redirect.
#[inline(always)]
fn send(out: u32, ingress: u32) -> Next {
    if out == ingress {
        Next::Sent(xdp_action::XDP_TX)
    } else {
        // SAFETY: plain helper call.
        Next::Sent(unsafe { bpf_redirect(out, 0) } as u32)
    }
}

/// Whether the `I` address at `a` equals the first `ADDR_LEN` bytes of `b`.
///
/// # Safety
/// `a` readable for `I::ADDR_LEN` bytes.
#[inline(always)]
unsafe fn same_addr<I: Ip>(a: *const u8, b: &[u8; 16]) -> bool {
    let mut i = 0;
    while i < I::ADDR_LEN {
        // SAFETY: within both addresses.
        let (x, y) = unsafe {
            (
                core::ptr::read_unaligned(a.add(i).cast::<u32>()),
                core::ptr::read_unaligned(b.as_ptr().add(i).cast::<u32>()),
            )
        };
        if x != y {
            return false;
        }
        i += 4;
    }
    true
}

/// Route the (already rewritten) frame to `dst_slot` whose IP total length
/// is `ip_len` and set its Ethernet addresses.
#[inline(always)]
pub fn forward<I: Ip>(ctx: &XdpContext, ip_len: u16, dst_slot: u32, now: u64) -> Result<Next, ()> {
    let h = check(ctx, 0, I::WG_OFF)?;
    let ifindex = ctx.ingress_ifindex() as u32;
    let cached = NEXTHOPS.get_ptr_mut(dst_slot % NEXTHOP_ENTRIES);
    if let Some(c) = cached {
        // SAFETY: this CPU's map value, valid for the program run; the
        // frame offsets are inside the checked header.
        unsafe {
            let e: &NextHop = &*c;
            if e.family == I::FAMILY
                && e.in_ifindex == ifindex
                && ip_len <= e.max_len
                && now.wrapping_sub(e.stamp_ns) < NEXTHOP_TTL_NS
                && same_addr::<I>(h.add(I::DST_OFF), &e.dst)
            {
                mem::copy(h, e.dmac.as_ptr(), 6);
                mem::copy(h.add(6), e.smac.as_ptr(), 6);
                return Ok(send(e.out_ifindex, ifindex));
            }
        }
    }
    let mut params = MaybeUninit::<bpf_fib_lookup>::uninit();
    // SAFETY: plain C struct (align 4, 64 bytes), all-zero is valid. Zeroed
    // and used in place: moving it would become a memset call.
    let p = unsafe {
        mem::zero32(params.as_mut_ptr().cast(), size_of::<bpf_fib_lookup>() / 4);
        params.assume_init_mut()
    };
    p.family = I::AF;
    p.l4_protocol = IPPROTO_UDP;
    p.__bindgen_anon_1.tot_len = ip_len;
    p.ifindex = ifindex;
    // SAFETY: offsets inside the checked header; the address unions are 16
    // bytes, ADDR_LEN <= 16; ports stay in network order.
    unsafe {
        let udp = h.add(I::UDP_OFF);
        p.sport = u16::from_ne_bytes([*udp, *udp.add(1)]);
        p.dport = u16::from_ne_bytes([*udp.add(2), *udp.add(3)]);
        mem::copy(
            addr_of_mut!(p.__bindgen_anon_3).cast::<u8>(),
            h.add(I::SRC_OFF),
            I::ADDR_LEN,
        );
        mem::copy(
            addr_of_mut!(p.__bindgen_anon_4).cast::<u8>(),
            h.add(I::DST_OFF),
            I::ADDR_LEN,
        );
    }

    // SAFETY: `p` lives on the stack for the call; the size is the struct's.
    let rc = unsafe { fib_lookup(ctx.as_ptr(), p, size_of::<bpf_fib_lookup>() as i32, 0) };
    // Re-check: the pointer must not be carried across the helper call.
    let h = check(ctx, 0, I::WG_OFF)?;
    match rc as u32 {
        BPF_FIB_LKUP_RET_SUCCESS => {
            // SAFETY: 12 bytes checked.
            unsafe {
                mem::copy16(h, p.dmac.as_ptr(), 6);
                mem::copy16(h.add(6), p.smac.as_ptr(), 6);
            }
            if let Some(c) = cached {
                // SAFETY: this CPU's map value; the destination comes from
                // the frame (checked header), not from the lookup, which
                // replaced it with the gateway's address.
                unsafe {
                    (*c).stamp_ns = now;
                    mem::copy((*c).dst.as_mut_ptr(), h.add(I::DST_OFF), I::ADDR_LEN);
                    (*c).in_ifindex = ifindex;
                    (*c).out_ifindex = p.ifindex;
                    (*c).max_len = ip_len;
                    (*c).family = I::FAMILY;
                    mem::copy16((*c).dmac.as_mut_ptr(), p.dmac.as_ptr(), 6);
                    mem::copy16((*c).smac.as_mut_ptr(), p.smac.as_ptr(), 6);
                }
            }
            Ok(send(p.ifindex, ifindex))
        }
        BPF_FIB_LKUP_RET_FWD_DISABLED | BPF_FIB_LKUP_RET_NO_NEIGH => {
            // SAFETY: 12 bytes checked.
            unsafe {
                for i in 0..6 {
                    let d = *h.add(i);
                    *h.add(i) = *h.add(6 + i);
                    *h.add(6 + i) = d;
                }
            }
            Ok(Next::BackToSender)
        }
        BPF_FIB_LKUP_RET_FRAG_NEEDED => Ok(Next::TooBig),
        _ => Ok(Next::NoRoute),
    }
}
