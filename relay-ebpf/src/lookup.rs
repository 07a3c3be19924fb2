//! Map lookups: source endpoint -> slot, relay sessions, destinations.

use aya_ebpf::bindings::BPF_NOEXIST;
use relay_common::{
    Endpoint, MeshDrops, SESSION_FROM_RESPONSE, SLOT_ACTIVE, SOURCE_CACHE_ENTRIES,
    SOURCE_CACHE_TTL_NS, SessionKey, SessionValue, SpokeSlot,
};

use crate::maps::{ENDPOINT_SLOTS, MESH_DROPS, MESH_HUBS, SESSIONS, SLOTS, SOURCE_CACHE};

/// Refresh a session's `last_seen_ns` at most this often.
const REFRESH_NS: u64 = 1_000_000_000;

/// The active slot of an authenticated spoke endpoint and its flags
/// (`SLOT_REMOTE`: homed on a peer hub, the endpoint is that hub's mesh
/// port).
///
/// Through the per-CPU `SOURCE_CACHE`: a hit costs a multiply, an array
/// entry and a compare with the slot's endpoint, where `ENDPOINT_SLOTS`
/// costs a jhash of the 20-byte key, a bucket walk and a `memcmp` call
/// (about a tenth of a hit's time in the profile). A wrong or stale entry
/// only costs that lookup: the slot must still hold this endpoint.
#[inline(always)]
pub fn source_slot(src: &Endpoint, now: u64) -> Option<(u32, u32)> {
    let cached = SOURCE_CACHE.get_ptr_mut(source_cache_index(src));
    if let Some(c) = cached {
        // SAFETY: this CPU's map value, valid for the program run.
        let (stamp, slot) = unsafe { ((*c).stamp_ns, (*c).slot) };
        if now.wrapping_sub(stamp) < SOURCE_CACHE_TTL_NS
            && let Some(s) = SLOTS.get(slot)
            && s.flags & SLOT_ACTIVE != 0
            && same_endpoint(&s.endpoint, src)
        {
            return Some((slot, s.flags));
        }
    }
    // SAFETY: the value is a plain u32 read right away.
    let slot = *unsafe { ENDPOINT_SLOTS.get(src) }?;
    let s = SLOTS.get(slot)?;
    if s.flags & SLOT_ACTIVE == 0 {
        return None;
    }
    if let Some(c) = cached
        && same_endpoint(&s.endpoint, src)
    {
        // SAFETY: as above.
        unsafe {
            (*c).stamp_ns = now;
            (*c).slot = slot;
        }
    }
    Some((slot, s.flags))
}

/// `SOURCE_CACHE` index of `src`: its words folded and spread by a
/// multiplicative hash (a source can only evict others' entries, which
/// costs them a lookup).
#[inline(always)]
fn source_cache_index(src: &Endpoint) -> u32 {
    let w = words(src);
    let x = w[0] ^ w[1] ^ w[2] ^ w[3] ^ w[4];
    x.wrapping_mul(0x9e37_79b1) >> (32 - SOURCE_CACHE_ENTRIES.trailing_zeros())
}

/// An endpoint's 20 bytes as five words (it is 4-byte aligned).
#[inline(always)]
fn words(ep: &Endpoint) -> [u32; 5] {
    // SAFETY: Endpoint is 20 bytes, repr(C), aligned to 4, no padding.
    unsafe { core::ptr::read((ep as *const Endpoint).cast::<[u32; 5]>()) }
}

#[inline(always)]
fn same_endpoint(a: &Endpoint, b: &Endpoint) -> bool {
    let (a, b) = (words(a), words(b));
    a[0] == b[0] && a[1] == b[1] && a[2] == b[2] && a[3] == b[3] && a[4] == b[4]
}

/// Which of `MESH_DROPS` a mesh frame from a source that is no spoke homed
/// on a peer hub counts against: the registered peer hub at that address,
/// or 0.
#[inline(always)]
pub fn mesh_peer_of(src: &Endpoint) -> u32 {
    let mut addr = *src;
    addr.port = 0;
    // SAFETY: the value is a plain u32 read right away.
    unsafe { MESH_HUBS.get(addr) }.copied().unwrap_or(0)
}

/// Why a mesh frame was dropped (the fields of `MeshDrops`).
#[derive(Clone, Copy)]
pub enum MeshDrop {
    Source,
    Transit,
    NoSession,
}

/// Count a dropped mesh frame for peer hub `peer`.
#[inline(always)]
pub fn mesh_drop(peer: u32, why: MeshDrop) {
    if let Some(d) = MESH_DROPS.get_ptr_mut(peer) {
        // SAFETY: per-CPU map value of this run.
        let d: &mut MeshDrops = unsafe { &mut *d };
        match why {
            MeshDrop::Source => d.source += 1,
            MeshDrop::Transit => d.transit += 1,
            MeshDrop::NoSession => d.no_session += 1,
        }
    }
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

/// What [`learn_response`] did.
pub enum Learned {
    /// New entry, or the same pair's entry refreshed.
    Yes,
    /// The key belongs to another pair's session: left alone. Overwriting
    /// would let a spoke that knows a live index (it cannot read one, but
    /// may guess or have sniffed the underlay) divert that session.
    Conflict,
    /// Neither (the entry vanished between the two map operations).
    No,
}

/// A relayed response from `responder_slot` carries the responder's
/// sender index: frames from `initiator_slot` will use it as receiver.
/// Insert-if-absent; an existing entry is only refreshed when it already
/// names `responder_slot` (entries of ended sessions age out through the
/// controller's sweep and the LRU).
#[inline(always)]
pub fn learn_response(initiator_slot: u32, sender: u32, responder_slot: u32, now: u64) -> Learned {
    let key = SessionKey {
        src_slot: initiator_slot,
        receiver: sender,
    };
    let value = SessionValue {
        dst_slot: responder_slot,
        flags: SESSION_FROM_RESPONSE,
        last_seen_ns: now,
    };
    if SESSIONS.insert(key, value, u64::from(BPF_NOEXIST)).is_ok() {
        return Learned::Yes;
    }
    match SESSIONS.get_ptr_mut(key) {
        // SAFETY: pointer from a map lookup in this program run.
        Some(v) if unsafe { (*v).dst_slot } == responder_slot => {
            // SAFETY: as above.
            unsafe { (*v).last_seen_ns = now };
            Learned::Yes
        }
        Some(_) => Learned::Conflict,
        None => Learned::No,
    }
}
