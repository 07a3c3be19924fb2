//! Initiations: a copy goes to the controller through the ring buffer.

use aya_ebpf::programs::XdpContext;
use core::ptr::addr_of_mut;
use relay_common::{InitiationEvent, counter, wire::INITIATION_LEN};

use crate::{
    counters,
    maps::INITIATIONS,
    mem,
    parse::{Ip, be16, check, fill_endpoint},
};

/// Queue a copy of the initiation (length already checked to be
/// [`INITIATION_LEN`]) with its source, the hub address it was sent to,
/// the source slot (or `NO_SLOT`) and the ingress ifindex.
#[inline(always)]
pub fn queue<I: Ip>(ctx: &XdpContext, src_slot: u32) -> Result<(), ()> {
    let h = check(ctx, 0, I::WG_OFF + INITIATION_LEN)?;
    let Some(mut entry) = INITIATIONS.reserve::<InitiationEvent>(0) else {
        counters::inc(counter::INITIATIONS_RING_FULL);
        return Ok(());
    };
    let ev = entry.as_mut_ptr();
    // SAFETY: `ev` is the reserved record; every frame offset is inside the
    // checked range; sizes are fixed.
    unsafe {
        let udp = h.add(I::UDP_OFF);
        fill_endpoint::<I>(
            addr_of_mut!((*ev).src),
            h.add(I::SRC_OFF),
            be16(*udp, *udp.add(1)),
        );
        fill_endpoint::<I>(
            addr_of_mut!((*ev).dst),
            h.add(I::DST_OFF),
            be16(*udp.add(2), *udp.add(3)),
        );
        addr_of_mut!((*ev).src_slot).write(src_slot);
        addr_of_mut!((*ev).ifindex).write(ctx.ingress_ifindex() as u32);
        mem::copy(
            addr_of_mut!((*ev).frame).cast::<u8>(),
            h.add(I::WG_OFF),
            INITIATION_LEN,
        );
    }
    entry.submit(0);
    counters::inc(counter::INITIATIONS_QUEUED);
    Ok(())
}
