//! Counter updates. All maps here are per CPU, so plain adds are safe.

use relay_common::{
    SlotCounters, counter,
    wire::{MSG_RESPONSE, MSG_TRANSPORT},
};

use crate::maps::{COUNTERS, SLOT_COUNTERS};

/// `COUNTERS[idx] += 1`.
#[inline(always)]
pub fn inc(idx: u32) {
    add(idx, 1);
}

/// `COUNTERS[idx] += v`.
#[inline(always)]
pub fn add(idx: u32, v: u64) {
    if let Some(p) = COUNTERS.get_ptr_mut(idx) {
        // SAFETY: per-CPU array value, valid for the whole program run.
        unsafe { *p += v };
    }
}

/// This CPU's counters of `slot`, if the slot is within the map.
#[inline(always)]
pub fn slot(slot: u32) -> Option<*mut SlotCounters> {
    SLOT_COUNTERS.get_ptr_mut(slot)
}

/// A frame from a spoke went to the hub's own WireGuard.
#[inline(always)]
pub fn to_hub(c: *mut SlotCounters, keepalive: bool, now: u64) {
    // SAFETY: per-CPU map value from this run.
    unsafe {
        (*c).hub_packets += 1;
        if keepalive {
            (*c).hub_keepalives += 1;
            (*c).last_keepalive_ns = now;
        }
    }
}

/// A frame of `kind` with `bytes` of UDP payload was relayed from the spoke
/// whose counters are `src` to `dst_slot`; `family` is its
/// `counter::RELAYED_*_TO_*` index.
#[inline(always)]
pub fn relayed(
    kind: u8,
    bytes: u64,
    keepalive: bool,
    now: u64,
    src: Option<*mut SlotCounters>,
    dst_slot: u32,
    family: u32,
) {
    inc(counter::RELAYED_PACKETS);
    inc(family);
    add(counter::RELAYED_BYTES, bytes);
    inc(match kind {
        MSG_TRANSPORT => counter::RELAYED_TRANSPORT,
        MSG_RESPONSE => counter::RELAYED_RESPONSE,
        _ => counter::RELAYED_COOKIE,
    });
    if keepalive {
        inc(counter::RELAYED_KEEPALIVES);
    }
    spoke_relayed(bytes, keepalive, now, src, dst_slot);
}

/// The per-spoke half of [`relayed`]: also counted for frames handed to
/// the userspace fallback, so per-spoke traffic covers both paths.
#[inline(always)]
pub fn spoke_relayed(
    bytes: u64,
    keepalive: bool,
    now: u64,
    src: Option<*mut SlotCounters>,
    dst_slot: u32,
) {
    if let Some(c) = src {
        // SAFETY: per-CPU map value from this run.
        unsafe {
            (*c).rx_packets += 1;
            (*c).rx_bytes += bytes;
            if keepalive {
                (*c).rx_keepalives += 1;
                // Also a keepalive from this spoke (see SlotCounters).
                (*c).last_keepalive_ns = now;
            }
        }
    }
    if let Some(c) = slot(dst_slot) {
        // SAFETY: per-CPU map value from this run.
        unsafe {
            (*c).tx_packets += 1;
            (*c).tx_bytes += bytes;
        }
    }
}
