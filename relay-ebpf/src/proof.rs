//! Frames from sources that are not authenticated spoke endpoints, reported
//! to the controller within a per-source budget: a transport frame names a
//! live session by its receiver index (a spoke whose NAT mapping moved),
//! and a response may answer the controller's proof handshake. The
//! controller proves the endpoint before anything moves; the frame itself
//! still goes up the stack.

use aya_ebpf::programs::XdpContext;
use core::ptr::addr_of_mut;
use relay_common::{
    PROOF_REPORTS_PER_SEC, ProofEvent, counter,
    wire::{MSG_RESPONSE, RESPONSE_LEN},
};

use crate::{
    counters,
    initiation::{self, Budget},
    maps::{PROOF_BUDGET, PROOFS},
    mem,
    parse::{Ip, check, fill_endpoint, read},
};

/// Transport header bytes the controller needs (type, receiver, counter).
const TRANSPORT_HEAD: usize = 16;

/// Report a response or transport frame (`kind`, `len` checked by
/// `parse::wireguard`) from an unknown source. `Some(until)`: the source
/// address's budget is spent until then.
#[inline(always)]
pub fn report<I: Ip>(ctx: &XdpContext, kind: u8, len: usize, now: u64) -> Result<Option<u64>, ()> {
    if let Budget::Spent { until } =
        initiation::take::<I>(ctx, &PROOF_BUDGET, PROOF_REPORTS_PER_SEC, now)?
    {
        return Ok(Some(until));
    }
    let h = check(ctx, 0, I::WG_OFF)?;
    // Copied to the stack first: a copy straight from the packet was
    // merged by LLVM across the two lengths into one loop the verifier
    // could not tie to either bounds check.
    let mut msg = [0u8; RESPONSE_LEN];
    if kind == MSG_RESPONSE {
        msg = read::<RESPONSE_LEN>(ctx, I::WG_OFF)?;
    } else {
        let head = read::<TRANSPORT_HEAD>(ctx, I::WG_OFF)?;
        // SAFETY: both are stack arrays of at least TRANSPORT_HEAD bytes.
        unsafe { mem::copy_bytes(msg.as_mut_ptr(), head.as_ptr(), TRANSPORT_HEAD) };
    }
    let Some(mut entry) = PROOFS.reserve::<ProofEvent>(0) else {
        counters::inc(counter::PROOF_RING_FULL);
        return Ok(None);
    };
    let ev = entry.as_mut_ptr();
    // SAFETY: `ev` is the reserved record; header offsets are inside the
    // checked header.
    unsafe {
        let udp = h.add(I::UDP_OFF);
        fill_endpoint::<I>(
            addr_of_mut!((*ev).src),
            h.add(I::SRC_OFF),
            mem::load_be16(udp),
        );
        fill_endpoint::<I>(
            addr_of_mut!((*ev).dst),
            h.add(I::DST_OFF),
            mem::load_be16(udp.add(2)),
        );
        addr_of_mut!((*ev).len).write(len as u32);
        let frame = addr_of_mut!((*ev).frame).cast::<u8>();
        mem::copy_bytes(frame, msg.as_ptr(), RESPONSE_LEN);
    }
    entry.submit(0);
    counters::inc(counter::PROOF_REPORTED);
    Ok(None)
}
