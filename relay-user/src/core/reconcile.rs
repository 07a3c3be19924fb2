//! Reconciliation, sans IO: the registry (which key owns which slot) and
//! the endpoints the hub's WireGuard authenticated, turned into the map
//! operations that bring the XDP tables there.
//!
//! The controller's loop feeds it (a new registry, adopted maps, the
//! router's current endpoints) and applies the [`Op`]s it returns; the
//! rules live here, tested without maps:
//!
//! - a slot whose key left the registry, or that now names another key, is
//!   cleared in the maps together with every relay session naming it;
//! - after adopting pinned maps, slots the registry no longer has (removed
//!   while no controller ran) are cleared the same way;
//! - a slot's endpoint is written only when it differs from what the maps
//!   hold, so unchanged spokes see no map writes.

use std::collections::{HashMap, HashSet};
use std::net::{Ipv4Addr, Ipv6Addr};

use relay_common::Endpoint;

/// One change to the datapath's tables.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    /// Move `slot` from endpoint `old` to `new` (None: no endpoint).
    Endpoint {
        slot: u32,
        old: Option<Endpoint>,
        new: Option<Endpoint>,
    },
    /// Remove every relay session that names `slot`.
    DropSessions { slot: u32 },
}

/// What a registry change did to a slot the hub knew.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SlotChange {
    /// The slot is no longer registered.
    Removed(u32),
    /// The slot is registered under another key now: its old state goes.
    Rekeyed(u32),
}

impl SlotChange {
    pub fn slot(self) -> u32 {
        match self {
            SlotChange::Removed(s) | SlotChange::Rekeyed(s) => s,
        }
    }
}

/// The registry's slots and the endpoints installed in the maps.
#[derive(Debug, Default)]
pub struct Reconciler {
    /// Endpoint each slot has in the BPF maps.
    installed: HashMap<u32, Endpoint>,
    /// Registered spokes: public key -> slot.
    by_key: HashMap<[u8; 32], u32>,
}

impl Reconciler {
    pub fn new() -> Self {
        Self::default()
    }

    /// Start from what adopted (pinned) maps already hold.
    pub fn adopt(installed: HashMap<u32, Endpoint>) -> Self {
        Self {
            installed,
            by_key: HashMap::new(),
        }
    }

    /// The slot registered for `public_key`.
    pub fn slot_of(&self, public_key: &[u8; 32]) -> Option<u32> {
        self.by_key.get(public_key).copied()
    }

    /// Every registered slot.
    pub fn live_slots(&self) -> HashSet<u32> {
        self.by_key.values().copied().collect()
    }

    /// Every slot's endpoint as the maps hold it.
    pub fn installed_all(&self) -> &HashMap<u32, Endpoint> {
        &self.installed
    }

    /// The endpoint the maps hold for `slot`.
    pub fn installed(&self, slot: u32) -> Option<Endpoint> {
        self.installed.get(&slot).copied()
    }

    /// A new registry, as (public key, slot) pairs. Returns the slots that
    /// lost their key (for the router and the health trackers) and the map
    /// operations that clear them.
    pub fn registry(
        &mut self,
        spokes: impl IntoIterator<Item = ([u8; 32], u32)>,
    ) -> (Vec<SlotChange>, Vec<Op>) {
        let wanted: HashMap<[u8; 32], u32> = spokes.into_iter().collect();
        let live: HashSet<u32> = wanted.values().copied().collect();
        let mut changes: Vec<SlotChange> = self
            .by_key
            .iter()
            .filter(|(k, slot)| wanted.get(*k) != Some(slot))
            .map(|(_, &slot)| {
                if live.contains(&slot) {
                    SlotChange::Rekeyed(slot)
                } else {
                    SlotChange::Removed(slot)
                }
            })
            .collect();
        // Stable order: callers log and apply them one by one.
        changes.sort_by_key(|c| c.slot());
        let mut ops = Vec::new();
        for c in &changes {
            self.clear(c.slot(), &mut ops);
        }
        self.by_key = wanted;
        (changes, ops)
    }

    /// After adopting pinned maps and applying the registry: clear the
    /// slots the maps hold that the registry no longer has.
    pub fn forget_unregistered(&mut self) -> (Vec<u32>, Vec<Op>) {
        let live = self.live_slots();
        let mut stale: Vec<u32> = self
            .installed
            .keys()
            .copied()
            .filter(|s| !live.contains(s))
            .collect();
        stale.sort_unstable();
        let mut ops = Vec::new();
        for &slot in &stale {
            self.clear(slot, &mut ops);
        }
        (stale, ops)
    }

    /// The endpoints the router now holds, per slot: the writes that bring
    /// the maps there (none for slots that did not change).
    pub fn endpoints(
        &mut self,
        want: impl IntoIterator<Item = (u32, Option<Endpoint>)>,
    ) -> Vec<Op> {
        let mut ops = Vec::new();
        for (slot, new) in want {
            let old = self.installed.get(&slot).copied();
            if new == old {
                continue;
            }
            match new {
                Some(e) => self.installed.insert(slot, e),
                None => self.installed.remove(&slot),
            };
            ops.push(Op::Endpoint { slot, old, new });
        }
        ops
    }

    fn clear(&mut self, slot: u32, ops: &mut Vec<Op>) {
        let old = self.installed.remove(&slot);
        ops.push(Op::Endpoint {
            slot,
            old,
            new: None,
        });
        ops.push(Op::DropSessions { slot });
    }
}

/// The hub's own addresses per family.
pub type HubAddresses = (Option<Ipv4Addr>, Option<Ipv6Addr>);

/// The hub addresses to install after reading `seen` from the interface,
/// with `installed` in the program; `None` when nothing changes. A family
/// whose address vanished keeps the last one: without an address the
/// program would accept relay traffic to any address of that family (see
/// relay-ebpf `parse::to_hub`), and there is no new source to use.
pub fn hub_addresses(installed: HubAddresses, seen: HubAddresses) -> Option<HubAddresses> {
    let next = (seen.0.or(installed.0), seen.1.or(installed.1));
    (next != installed).then_some(next)
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: [u8; 32] = [1; 32];
    const B: [u8; 32] = [2; 32];
    const C: [u8; 32] = [3; 32];

    fn ep(port: u16) -> Endpoint {
        Endpoint::v4([192, 0, 2, 1], port)
    }

    fn registered(pairs: &[([u8; 32], u32)]) -> Reconciler {
        let mut r = Reconciler::new();
        let (changes, ops) = r.registry(pairs.iter().copied());
        assert!(changes.is_empty() && ops.is_empty());
        r
    }

    #[test]
    fn first_registry_changes_nothing_in_the_maps() {
        let r = registered(&[(A, 1), (B, 2)]);
        assert_eq!(r.slot_of(&A), Some(1));
        assert_eq!(r.slot_of(&C), None);
        assert_eq!(r.live_slots(), HashSet::from([1, 2]));
    }

    #[test]
    fn removed_spoke_is_cleared_with_its_sessions() {
        let mut r = registered(&[(A, 1), (B, 2)]);
        r.endpoints([(1, Some(ep(1000))), (2, Some(ep(2000)))]);
        let (changes, ops) = r.registry([(A, 1)]);
        assert_eq!(changes, vec![SlotChange::Removed(2)]);
        assert_eq!(
            ops,
            vec![
                Op::Endpoint {
                    slot: 2,
                    old: Some(ep(2000)),
                    new: None
                },
                Op::DropSessions { slot: 2 },
            ]
        );
        assert_eq!(r.installed(2), None);
        assert_eq!(r.installed(1), Some(ep(1000)));
    }

    #[test]
    fn rekeyed_slot_is_cleared_and_keeps_its_number() {
        let mut r = registered(&[(A, 1), (B, 2)]);
        r.endpoints([(2, Some(ep(2000)))]);
        let (changes, ops) = r.registry([(A, 1), (C, 2)]);
        assert_eq!(changes, vec![SlotChange::Rekeyed(2)]);
        assert_eq!(ops.len(), 2);
        assert_eq!(r.slot_of(&C), Some(2));
        assert_eq!(r.slot_of(&B), None);
    }

    #[test]
    fn moved_key_clears_its_old_slot() {
        let mut r = registered(&[(A, 1), (B, 2)]);
        let (changes, _) = r.registry([(A, 1), (B, 3)]);
        assert_eq!(changes, vec![SlotChange::Removed(2)]);
        assert_eq!(r.slot_of(&B), Some(3));
    }

    #[test]
    fn unchanged_registry_writes_nothing() {
        let mut r = registered(&[(A, 1), (B, 2)]);
        r.endpoints([(1, Some(ep(1000)))]);
        let (changes, ops) = r.registry([(B, 2), (A, 1)]);
        assert!(changes.is_empty());
        assert!(ops.is_empty());
    }

    #[test]
    fn endpoints_write_only_differences() {
        let mut r = registered(&[(A, 1), (B, 2)]);
        let ops = r.endpoints([(1, Some(ep(1000))), (2, None)]);
        assert_eq!(
            ops,
            vec![Op::Endpoint {
                slot: 1,
                old: None,
                new: Some(ep(1000))
            }]
        );
        assert!(r.endpoints([(1, Some(ep(1000))), (2, None)]).is_empty());
        // Roaming: one write from the old mapping to the new one.
        let ops = r.endpoints([(1, Some(ep(1001)))]);
        assert_eq!(
            ops,
            vec![Op::Endpoint {
                slot: 1,
                old: Some(ep(1000)),
                new: Some(ep(1001))
            }]
        );
        // Losing the endpoint clears it.
        let ops = r.endpoints([(1, None)]);
        assert_eq!(
            ops,
            vec![Op::Endpoint {
                slot: 1,
                old: Some(ep(1001)),
                new: None
            }]
        );
        assert_eq!(r.installed(1), None);
    }

    #[test]
    fn adopted_maps_forget_unregistered_slots_only() {
        let mut r = Reconciler::adopt(HashMap::from([(1, ep(1000)), (5, ep(5000))]));
        let (changes, ops) = r.registry([(A, 1)]);
        assert!(changes.is_empty() && ops.is_empty());
        let (stale, ops) = r.forget_unregistered();
        assert_eq!(stale, vec![5]);
        assert_eq!(
            ops,
            vec![
                Op::Endpoint {
                    slot: 5,
                    old: Some(ep(5000)),
                    new: None
                },
                Op::DropSessions { slot: 5 },
            ]
        );
        // The registered slot keeps its adopted endpoint: no write when
        // the router reports the same one.
        assert_eq!(r.installed(1), Some(ep(1000)));
        assert!(r.endpoints([(1, Some(ep(1000)))]).is_empty());
        assert_eq!(r.forget_unregistered(), (vec![], vec![]));
    }

    #[test]
    fn hub_addresses_renumber_but_never_vanish() {
        let a4 = Ipv4Addr::new(198, 51, 100, 1);
        let b4 = Ipv4Addr::new(198, 51, 100, 2);
        let a6: Ipv6Addr = "2001:db8::1".parse().unwrap();
        // First sight, renumbering: installed.
        assert_eq!(
            hub_addresses((None, None), (Some(a4), None)),
            Some((Some(a4), None))
        );
        assert_eq!(
            hub_addresses((Some(a4), None), (Some(b4), Some(a6))),
            Some((Some(b4), Some(a6)))
        );
        // Unchanged: nothing to write.
        assert_eq!(
            hub_addresses((Some(a4), Some(a6)), (Some(a4), Some(a6))),
            None
        );
        // Vanished with no replacement: the last one stays, per family.
        assert_eq!(hub_addresses((Some(a4), Some(a6)), (None, Some(a6))), None);
        assert_eq!(hub_addresses((Some(a4), Some(a6)), (None, None)), None);
        assert_eq!(
            hub_addresses((Some(a4), Some(a6)), (Some(b4), None)),
            Some((Some(b4), Some(a6)))
        );
    }
}
