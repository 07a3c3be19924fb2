//! Map lookups: source endpoint -> slot, relay sessions, destinations.

use relay_common::{
    Endpoint, SESSION_FROM_RESPONSE, SLOT_ACTIVE, SessionKey, SessionValue, SpokeSlot,
};

use crate::maps::{ENDPOINT_SLOTS, SESSIONS, SLOTS};

/// Refresh a session's `last_seen_ns` at most this often.
const REFRESH_NS: u64 = 1_000_000_000;

/// The active slot of an authenticated spoke endpoint.
#[inline(always)]
pub fn source_slot(src: &Endpoint) -> Option<u32> {
    // SAFETY: the value is a plain u32 read right away.
    let slot = *unsafe { ENDPOINT_SLOTS.get(src) }?;
    let s = SLOTS.get(slot)?;
    (s.flags & SLOT_ACTIVE != 0).then_some(slot)
}

/// The session entry for a frame from `src_slot` with `receiver`.
#[inline(always)]
pub fn session(src_slot: u32, receiver: u32) -> Option<*mut SessionValue> {
    SESSIONS.get_ptr_mut(SessionKey { src_slot, receiver })
}

/// Mark a session used, touching the entry at most once a second.
#[inline(always)]
pub fn touch(value: *mut SessionValue, now: u64) {
    // SAFETY: pointer from a map lookup in this program run.
    unsafe {
        if now.wrapping_sub((*value).last_seen_ns) > REFRESH_NS {
            (*value).last_seen_ns = now;
        }
    }
}

/// An active destination slot with a current endpoint.
#[inline(always)]
pub fn destination(slot: u32) -> Option<&'static SpokeSlot> {
    let s = SLOTS.get(slot)?;
    (s.flags & SLOT_ACTIVE != 0 && s.endpoint.is_set()).then_some(s)
}

/// A relayed response from `responder_slot` carries the responder's
/// sender index: frames from `initiator_slot` will use it as receiver.
#[inline(always)]
pub fn learn_response(initiator_slot: u32, sender: u32, responder_slot: u32, now: u64) -> bool {
    let key = SessionKey {
        src_slot: initiator_slot,
        receiver: sender,
    };
    let value = SessionValue {
        dst_slot: responder_slot,
        flags: SESSION_FROM_RESPONSE,
        last_seen_ns: now,
    };
    SESSIONS.insert(key, value, 0).is_ok()
}
