//! Map lookups: source endpoint -> slot, relay sessions, destinations.

use aya_ebpf::bindings::BPF_NOEXIST;
use core::ptr::addr_of_mut;
use relay_common::{
    Endpoint, MeshDrops, NO_SLOT, SESSION_FROM_RESPONSE, SLOT_ACTIVE, SOURCE_CACHE_STRANGER_TTL_NS,
    SOURCE_CACHE_TTL_NS, SessionKey, SessionValue, SourceCache, SpokeSlot, source_cache_index_of,
};

use crate::maps::{ENDPOINT_SLOTS, MESH_DROPS, MESH_HUBS, SESSIONS, SLOTS, SOURCE_CACHE};

/// Refresh a session's `last_seen_ns` at most this often.
const REFRESH_NS: u64 = 1_000_000_000;

/// This CPU's `SOURCE_CACHE` entry for `src`.
#[inline(always)]
pub fn source_entry(src: &Endpoint) -> Option<*mut SourceCache> {
    SOURCE_CACHE.get_ptr_mut(source_cache_index_of(words(src)))
}

/// The active slot of an authenticated spoke endpoint and its flags
/// (`SLOT_REMOTE`: homed on a peer hub, the endpoint is that hub's mesh
/// port).
///
/// Through `entry` (see [`source_entry`]): a hit costs an array entry and
/// a compare with the slot's endpoint, where `ENDPOINT_SLOTS` costs a
/// jhash of the 20-byte key, a bucket walk and a `memcmp` call (about a
/// tenth of a relayed frame's time in the profile). A spoke entry must
/// still find its slot active with this very endpoint; a stranger entry
/// is only kept for `SOURCE_CACHE_STRANGER_TTL_NS` (the controller also
/// empties it when it installs the endpoint). A wrong or evicted entry
/// only costs the lookup.
#[inline(always)]
pub fn source_slot(
    src: &Endpoint,
    entry: Option<*mut SourceCache>,
    now: u64,
) -> Option<(u32, u32)> {
    if let Some(c) = entry {
        // SAFETY: this CPU's map value, valid for the program run.
        let (stamp, slot) = unsafe { ((*c).stamp_ns, (*c).slot) };
        let age = now.wrapping_sub(stamp);
        if slot == NO_SLOT {
            // SAFETY: as above.
            if age < SOURCE_CACHE_STRANGER_TTL_NS && same_endpoint(unsafe { &(*c).endpoint }, src) {
                return None;
            }
        } else if age < SOURCE_CACHE_TTL_NS
            && let Some(s) = SLOTS.get(slot)
            && s.flags & SLOT_ACTIVE != 0
            && same_endpoint(&s.endpoint, src)
        {
            return Some((slot, s.flags));
        }
    }
    // SAFETY: the value is a plain u32 read right away.
    let found = unsafe { ENDPOINT_SLOTS.get(src) }
        .copied()
        .and_then(|slot| Some((slot, SLOTS.get(slot)?)));
    match found {
        Some((slot, s)) if s.flags & SLOT_ACTIVE != 0 => {
            if let Some(c) = entry
                && same_endpoint(&s.endpoint, src)
            {
                fill(c, src, slot, now);
            }
            Some((slot, s.flags))
        }
        _ => {
            if let Some(c) = entry {
                // A stranger's budget window outlives its entry.
                // SAFETY: as above.
                let keep = unsafe { (*c).slot == NO_SLOT && same_endpoint(&(*c).endpoint, src) };
                if !keep {
                    // SAFETY: as above.
                    unsafe { (*c).quiet_until_ns = 0 };
                }
                fill(c, src, NO_SLOT, now);
            }
            None
        }
    }
}

#[inline(always)]
fn fill(c: *mut SourceCache, src: &Endpoint, slot: u32, now: u64) {
    // SAFETY: this CPU's map value; Endpoint is 4-byte aligned in both.
    unsafe {
        (*c).stamp_ns = now;
        (*c).slot = slot;
        core::ptr::write(addr_of_mut!((*c).endpoint).cast::<[u32; 5]>(), words(src));
    }
}

/// Whether a stranger's frame may not be reported now: its address's proof
/// budget is spent until the end of the window seen last (see [`spent`]).
/// `entry` is the one [`source_slot`] just answered "no spoke" from, so
/// it is that stranger's.
#[inline(always)]
pub fn quiet(entry: Option<*mut SourceCache>, now: u64) -> bool {
    // SAFETY: this CPU's map value; source_slot just filled it for `src`.
    entry.is_some_and(|c| unsafe { (*c).slot == NO_SLOT && now < (*c).quiet_until_ns })
}

/// The stranger's proof budget is spent until `until`.
#[inline(always)]
pub fn spent(entry: Option<*mut SourceCache>, until: u64) {
    if let Some(c) = entry {
        // SAFETY: as above.
        unsafe {
            if (*c).slot == NO_SLOT {
                (*c).quiet_until_ns = until;
            }
        }
    }
}

/// An endpoint's 20 bytes as five words (it is 4-byte aligned); the same
/// as `Endpoint::words`, read in place.
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
