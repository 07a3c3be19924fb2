//! Initiations: a copy goes to the controller through the ring buffer and
//! the frame itself to the hub's own WireGuard, each within a per-source
//! budget.

use aya_ebpf::{maps::LruHashMap, programs::XdpContext};
use core::mem::MaybeUninit;
use core::ptr::addr_of_mut;
use relay_common::{Endpoint, InitiationEvent, PassWindow, counter, wire::INITIATION_LEN};

use crate::{
    counters,
    maps::{INIT_BUDGET, INITIATIONS},
    mem,
    parse::{Ip, check, fill_endpoint},
};

const SECOND_NS: u64 = 1_000_000_000;

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
            mem::load_be16(udp),
        );
        fill_endpoint::<I>(
            addr_of_mut!((*ev).dst),
            h.add(I::DST_OFF),
            mem::load_be16(udp.add(2)),
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

/// Whether this initiation may go on to the hub's own WireGuard: at most
/// `per_sec` a second from one source address. Only initiations with the
/// hub's mac1 matter to it (a few per spoke per two minutes); a flood of
/// others would only keep it busy rejecting them while real spokes wait.
#[inline(always)]
pub fn may_pass<I: Ip>(ctx: &XdpContext, per_sec: u32, now: u64) -> Result<bool, ()> {
    Ok(take::<I>(ctx, &INIT_BUDGET, per_sec, now)?.taken())
}

/// What [`take`] found.
pub enum Budget {
    Taken,
    /// Spent for the rest of the address's window, which ends at `until`.
    Spent {
        until: u64,
    },
}

impl Budget {
    #[inline(always)]
    pub fn taken(&self) -> bool {
        matches!(self, Self::Taken)
    }
}

/// Take one from the source address's budget of `per_sec` a second in
/// `budget`. Windows are per address, not per port, so a flood from many
/// ports of one address shares one. Updates race across CPUs; an overrun
/// by a few frames is harmless.
#[inline(always)]
pub fn take<I: Ip>(
    ctx: &XdpContext,
    budget: &LruHashMap<Endpoint, PassWindow>,
    per_sec: u32,
    now: u64,
) -> Result<Budget, ()> {
    let h = check(ctx, 0, I::WG_OFF)?;
    let mut key = MaybeUninit::<Endpoint>::uninit();
    // SAFETY: the source address is inside the checked header.
    let key = unsafe {
        fill_endpoint::<I>(key.as_mut_ptr(), h.add(I::SRC_OFF), 0);
        key.assume_init_ref()
    };
    match budget.get_ptr_mut(key) {
        // SAFETY: a map value of this map's type.
        Some(w) => unsafe {
            if now.wrapping_sub((*w).start_ns) >= SECOND_NS {
                (*w).start_ns = now;
                (*w).count = 1;
                Ok(Budget::Taken)
            } else if (*w).count < per_sec {
                (*w).count += 1;
                Ok(Budget::Taken)
            } else {
                Ok(Budget::Spent {
                    until: (*w).start_ns + SECOND_NS,
                })
            }
        },
        None => {
            let w = PassWindow {
                start_ns: now,
                count: 1,
                _pad: 0,
            };
            // A full map evicts the least recently used window.
            let _ = budget.insert(key, w, 0);
            Ok(Budget::Taken)
        }
    }
}
