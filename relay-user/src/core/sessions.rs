//! Session table rules, sans-IO: which relay entries to drop.
//!
//! The XDP program creates and refreshes entries; the controller sweeps
//! them. An entry is kept while frames use it. WireGuard stops using a
//! session's indices after REJECT_AFTER (180 s) at most, so an entry idle
//! longer than that plus a margin can never be needed again.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use relay_common::wire::REJECT_AFTER_SECS;
use relay_common::{SessionKey, SessionValue};

/// Idle time after which an entry is dropped.
pub const IDLE_EXPIRY: Duration = Duration::from_secs(REJECT_AFTER_SECS + 30);

/// Keys to delete: idle past [`IDLE_EXPIRY`] at `now_ns` (ktime), or naming
/// a slot that is no longer registered.
pub fn sweep<'a>(
    entries: impl IntoIterator<Item = &'a (SessionKey, SessionValue)>,
    now_ns: u64,
    live_slots: &HashSet<u32>,
) -> Vec<SessionKey> {
    let idle_ns = IDLE_EXPIRY.as_nanos() as u64;
    entries
        .into_iter()
        .filter(|(k, v)| {
            !live_slots.contains(&k.src_slot)
                || !live_slots.contains(&v.dst_slot)
                || now_ns.saturating_sub(v.last_seen_ns) > idle_ns
        })
        .map(|(k, _)| *k)
        .collect()
}

/// Whether a routed initiation may install its entry (`dst_slot` = the
/// initiator) over what the table holds for that key: only where there is
/// none or it names the same initiator (a retransmission). Overwriting
/// another pair's live entry would let a spoke that knows its index divert
/// that session; ended sessions' entries age out through [`sweep`]. The
/// XDP program applies the same rule to learned responses.
pub fn may_install(existing: Option<&SessionValue>, dst_slot: u32) -> bool {
    existing.is_none_or(|v| v.dst_slot == dst_slot)
}

/// Keys whose entries involve `slot` (removed spoke).
pub fn involving<'a>(
    entries: impl IntoIterator<Item = &'a (SessionKey, SessionValue)>,
    slot: u32,
) -> Vec<SessionKey> {
    entries
        .into_iter()
        .filter(|(k, v)| k.src_slot == slot || v.dst_slot == slot)
        .map(|(k, _)| *k)
        .collect()
}

/// Keys whose entries relay between two spokes that `allows` no longer
/// lets reach each other (policy change): entry (src, idx) -> dst names
/// the pair src <-> dst.
pub fn denied<'a>(
    entries: impl IntoIterator<Item = &'a (SessionKey, SessionValue)>,
    allows: impl Fn(u32, u32) -> bool,
) -> Vec<SessionKey> {
    entries
        .into_iter()
        .filter(|(k, v)| !allows(k.src_slot, v.dst_slot))
        .map(|(k, _)| *k)
        .collect()
}

/// Receiver index -> the slot whose frames carry it (entry (src, idx)
/// names src as the sender). Indices are random 32-bit numbers chosen by
/// each receiver, so two pairs rarely share one; if they do, the entry
/// used last wins.
pub fn senders_by_receiver<'a>(
    entries: impl IntoIterator<Item = &'a (SessionKey, SessionValue)>,
) -> HashMap<u32, u32> {
    let mut by: HashMap<u32, (u32, u64)> = HashMap::new();
    for (k, v) in entries {
        let e = by.entry(k.receiver).or_insert((k.src_slot, v.last_seen_ns));
        if v.last_seen_ns > e.1 {
            *e = (k.src_slot, v.last_seen_ns);
        }
    }
    by.into_iter().map(|(r, (s, _))| (r, s)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn senders_by_receiver_names_the_sender() {
        let e = |src, receiver, dst, seen| {
            (
                SessionKey {
                    src_slot: src,
                    receiver,
                },
                SessionValue {
                    dst_slot: dst,
                    last_seen_ns: seen,
                    ..Default::default()
                },
            )
        };
        // 1 -> 2 carries 2's index 0xaa, 2 -> 1 carries 1's index 0xbb; a
        // stale pair 3 -> 4 happens to reuse 0xaa.
        let entries = [e(1, 0xaa, 2, 50), e(2, 0xbb, 1, 50), e(3, 0xaa, 4, 10)];
        let m = senders_by_receiver(&entries);
        assert_eq!(m.get(&0xaa), Some(&1));
        assert_eq!(m.get(&0xbb), Some(&2));
        assert_eq!(m.get(&0xcc), None);
    }

    #[test]
    fn install_never_takes_another_pairs_entry() {
        let v = |dst_slot| SessionValue {
            dst_slot,
            flags: 0,
            last_seen_ns: 0,
        };
        assert!(may_install(None, 3));
        assert!(may_install(Some(&v(3)), 3));
        assert!(!may_install(Some(&v(4)), 3));
    }

    fn e(src: u32, rx: u32, dst: u32, seen: u64) -> (SessionKey, SessionValue) {
        (
            SessionKey {
                src_slot: src,
                receiver: rx,
            },
            SessionValue {
                dst_slot: dst,
                flags: 0,
                last_seen_ns: seen,
            },
        )
    }

    #[test]
    fn idle_entries_expire_after_reject_plus_margin() {
        let s = 1_000_000_000u64;
        let now = 1000 * s;
        let live: HashSet<u32> = [1, 2].into();
        let entries = [
            e(1, 10, 2, now - 5 * s),
            e(2, 11, 1, now - (REJECT_AFTER_SECS + 29) * s),
            e(1, 12, 2, now - (REJECT_AFTER_SECS + 31) * s),
        ];
        let gone = sweep(&entries, now, &live);
        assert_eq!(gone, vec![entries[2].0]);
    }

    #[test]
    fn entries_of_unregistered_slots_go() {
        let live: HashSet<u32> = [1, 2].into();
        let entries = [e(1, 1, 2, 100), e(3, 2, 1, 100), e(1, 3, 3, 100)];
        let gone = sweep(&entries, 100, &live);
        assert_eq!(gone, vec![entries[1].0, entries[2].0]);
        assert_eq!(involving(&entries, 3), vec![entries[1].0, entries[2].0]);
    }

    #[test]
    fn entries_between_denied_pairs_go() {
        // 1 <-> 2 denied (both directions of both sessions), 1 <-> 3 allowed.
        let entries = [
            e(1, 10, 2, 0),
            e(2, 11, 1, 0),
            e(1, 12, 3, 0),
            e(3, 13, 1, 0),
            e(2, 14, 1, 0),
        ];
        let allows = |a: u32, b: u32| (a.min(b), a.max(b)) != (1, 2);
        let gone = denied(&entries, allows);
        assert_eq!(gone, vec![entries[0].0, entries[1].0, entries[4].0]);
        assert!(denied(&entries, |_, _| true).is_empty());
    }

    #[test]
    fn clock_before_entry_is_not_expiry() {
        // An entry stamped slightly after our clock read must not underflow.
        let live: HashSet<u32> = [1, 2].into();
        assert!(sweep(&[e(1, 1, 2, 500)], 100, &live).is_empty());
    }
}
