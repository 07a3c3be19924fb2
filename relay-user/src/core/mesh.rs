//! Hub mesh, sans IO: which spokes are this hub's own, where the others'
//! frames go, and from which port a forwarded initiation leaves.
//!
//! Every hub of a mesh has every spoke in its tables, in the same slot
//! (the registry id). A spoke homed on another hub H is a slot whose
//! endpoint is (H's address, H's mesh port for the spoke): to this hub,
//! H *is* that spoke. So a frame between spokes on two hubs crosses both
//! in XDP with the tables and lookups of a single hub; only the source
//! port changes: towards H it is this hub's mesh port of the sending
//! spoke, which names that spoke on H (see relay-ebpf, `SLOT_REMOTE`).

use std::collections::HashMap;

use relay_common::{Endpoint, mesh_port};

use crate::core::registry::{Registry, Spoke};

/// Where a spoke's frames go, seen from one hub.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Placement {
    /// Homed here (or no mesh): its endpoint is what its NAT shows.
    Local,
    /// Homed on a peer hub: this is that hub's address and the spoke's
    /// mesh port there.
    Remote(Endpoint),
    /// Homed on a hub that has no mesh port for its id: unreachable from
    /// here (the registry refuses to make such a spoke; a hand-edited one
    /// is left out rather than sent to a wrong port).
    Unplaced,
}

/// Where `spoke` is for hub `me` (`None`: this hub has no mesh name).
pub fn placement(reg: &Registry, me: Option<&str>, spoke: &Spoke) -> Placement {
    let Some(home) = spoke.home.as_deref() else {
        return Placement::Local;
    };
    if me == Some(home) {
        return Placement::Local;
    }
    let Some(hub) = reg.hub(home) else {
        return Placement::Unplaced;
    };
    match mesh_port(hub.mesh_base, u32::from(spoke.mesh_index)).filter(|_| spoke.mesh_index != 0) {
        Some(port) => Placement::Remote(match hub.endpoint.ip() {
            std::net::IpAddr::V4(a) => Endpoint::v4(a.octets(), port),
            std::net::IpAddr::V6(a) => Endpoint::v6(a.octets(), port),
        }),
        None => Placement::Unplaced,
    }
}

/// The remote slots of `reg` for hub `me`, with their endpoints.
pub fn remote_slots(reg: &Registry, me: Option<&str>) -> HashMap<u32, Endpoint> {
    reg.spokes()
        .iter()
        .filter_map(|s| match placement(reg, me, s) {
            Placement::Remote(ep) => Some((s.id, ep)),
            _ => None,
        })
        .collect()
}

/// The spokes homed on hub `me`, slot -> mesh index: their mesh ports
/// here are `base + index` (the XDP program finds a local source's in its
/// slot flags; the router maps a mesh port back to its spoke).
pub fn local_indices(reg: &Registry, me: Option<&str>) -> HashMap<u32, u16> {
    let Some(me) = me else {
        return HashMap::new();
    };
    reg.spokes()
        .iter()
        .filter(|s| s.home.as_deref() == Some(me) && s.mesh_index != 0)
        .map(|s| (s.id, s.mesh_index))
        .collect()
}

/// This hub's first mesh port: its entry's in the registry, or 0 (no mesh:
/// mesh ports are not relayed at all).
pub fn own_base(reg: &Registry, me: Option<&str>) -> u16 {
    me.and_then(|m| reg.hub(m)).map_or(0, |h| h.mesh_base)
}

/// The source port of an initiation the controller forwards from
/// `initiator` to `responder`: the hub port towards a local spoke (the
/// Endpoint its peers have), the initiator's mesh port towards a peer hub
/// (which names the initiator there). `None`: both are remote, and a frame
/// crosses at most its two spokes' home hubs.
pub fn forward_port(
    hub_port: u16,
    base: u16,
    initiator_index: u16,
    initiator_remote: bool,
    responder_remote: bool,
) -> Option<u16> {
    match (initiator_remote, responder_remote) {
        (true, true) => None,
        (false, true) if initiator_index == 0 => None,
        (false, true) => mesh_port(base, u32::from(initiator_index)),
        _ => Some(hub_port),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::registry::{MeshHub, TunnelNet};
    use wireguard_control::Key;

    fn key(b: u8) -> Key {
        Key([b; 32])
    }

    fn mesh() -> Registry {
        let mut r = Registry::new();
        let net: TunnelNet = "10.88.0.0/24".parse().unwrap();
        for (name, ep, base) in [
            ("east", "192.0.2.1:51820", 40000),
            ("west", "198.51.100.7:51820", 45000),
        ] {
            r.set_hub(MeshHub {
                name: name.into(),
                endpoint: ep.parse().unwrap(),
                mesh_base: base,
            })
            .unwrap();
        }
        for (i, (name, home)) in [("a", Some("east")), ("b", Some("west")), ("c", None)]
            .into_iter()
            .enumerate()
        {
            r.add(name, key(i as u8 + 1), &net).unwrap();
            if let Some(h) = home {
                r.set_home(name, h).unwrap();
            }
        }
        r
    }

    #[test]
    fn spokes_are_local_at_home_and_the_home_hub_elsewhere() {
        let r = mesh();
        let (a, b, c) = (
            r.get("a").unwrap(),
            r.get("b").unwrap(),
            r.get("c").unwrap(),
        );
        assert_eq!(placement(&r, Some("east"), a), Placement::Local);
        // b (id 2), the first spoke homed on west: west's address, west's
        // base + its mesh index there (1).
        assert_eq!(b.mesh_index, 1);
        assert_eq!(
            placement(&r, Some("east"), b),
            Placement::Remote(Endpoint::v4([198, 51, 100, 7], 45001))
        );
        assert_eq!(
            placement(&r, Some("west"), a),
            Placement::Remote(Endpoint::v4([192, 0, 2, 1], 40001))
        );
        // Without a home: everyone's (a store without a mesh).
        assert_eq!(placement(&r, Some("east"), c), Placement::Local);
        // A hub without a mesh name sees homed spokes as remote.
        assert!(matches!(placement(&r, None, a), Placement::Remote(_)));
        let remote = remote_slots(&r, Some("east"));
        assert_eq!(remote.len(), 1);
        assert!(remote.contains_key(&b.id));
        assert_eq!(own_base(&r, Some("west")), 45000);
        assert_eq!(local_indices(&r, Some("east")), HashMap::from([(a.id, 1)]));
        assert!(local_indices(&r, None).is_empty());
        assert_eq!(own_base(&r, None), 0);
        assert_eq!(own_base(&r, Some("nowhere")), 0);
    }

    #[test]
    fn forwarded_initiations_leave_from_the_port_that_names_the_initiator() {
        // Local -> local and remote -> local: the hub port.
        assert_eq!(forward_port(51820, 40000, 3, false, false), Some(51820));
        assert_eq!(forward_port(51820, 40000, 3, true, false), Some(51820));
        // Local -> remote: the initiator's mesh port here.
        assert_eq!(forward_port(51820, 40000, 3, false, true), Some(40003));
        // Never hub to hub to hub.
        assert_eq!(forward_port(51820, 40000, 3, true, true), None);
        // Past the port range, or no mesh index (not homed here): not sent.
        assert_eq!(forward_port(51820, 65530, 9, false, true), None);
        assert_eq!(forward_port(51820, 40000, 0, false, true), None);
    }

    #[test]
    fn the_registry_keeps_mesh_ports_in_range_and_homes_on_known_hubs() {
        let mut r = mesh();
        assert!(r.set_home("a", "north").is_err());
        // A base that leaves b (id 2) without a port is refused.
        let err = r
            .set_hub(MeshHub {
                name: "west".into(),
                endpoint: "198.51.100.7:51820".parse().unwrap(),
                mesh_base: 65535,
            })
            .unwrap_err();
        assert!(err.to_string().contains("no mesh port"), "{err}");
        // Mesh indices are per home hub, lowest free first, whatever the
        // ids; a move frees the old one; the hub port is never a mesh port.
        let net: TunnelNet = "10.88.0.0/24".parse().unwrap();
        for (i, n) in ["d", "e", "f"].into_iter().enumerate() {
            r.add(n, key(10 + i as u8), &net).unwrap();
            r.set_home(n, "west").unwrap();
        }
        let idx = |r: &Registry, n: &str| r.get(n).unwrap().mesh_index;
        assert_eq!([idx(&r, "b"), idx(&r, "d"), idx(&r, "e")], [1, 2, 3]);
        r.set_home("d", "east").unwrap();
        assert_eq!(idx(&r, "d"), 2, "east: a has 1");
        r.set_home("a", "west").unwrap();
        assert_eq!(idx(&r, "a"), 2, "d's old index on west");
        r.set_home("a", "west").unwrap();
        assert_eq!(idx(&r, "a"), 2, "homing again keeps the index");
        let mut tight = Registry::new();
        tight
            .set_hub(MeshHub {
                name: "t".into(),
                endpoint: "192.0.2.5:51820".parse().unwrap(),
                mesh_base: 51818,
            })
            .unwrap();
        for (i, n) in ["p", "q", "r"].into_iter().enumerate() {
            tight.add(n, key(20 + i as u8), &net).unwrap();
            tight.set_home(n, "t").unwrap();
        }
        // 51819, (51820 is the hub port), 51821, 51822.
        assert_eq!(
            [idx(&tight, "p"), idx(&tight, "q"), idx(&tight, "r")],
            [1, 3, 4]
        );
        // Files of the first mesh release (no mesh_index): base + id.
        let edit = |f: &dyn Fn(&mut serde_json::Value)| {
            let mut v: serde_json::Value = serde_json::from_str(&r.to_json()).unwrap();
            let e = v["spokes"]
                .as_array_mut()
                .unwrap()
                .iter_mut()
                .find(|s| s["name"] == "e")
                .unwrap();
            f(e);
            v.to_string()
        };
        let old = edit(&|e| {
            e.as_object_mut().unwrap().remove("mesh_index");
        });
        let back = Registry::from_json(&old, std::path::Path::new("x")).unwrap();
        assert_eq!(idx(&back, "e"), back.get("e").unwrap().id as u16);
        // Two spokes of one hub with one index: corrupt.
        let dup = edit(&|e| e["mesh_index"] = 1.into());
        let err = Registry::from_json(&dup, std::path::Path::new("x")).unwrap_err();
        assert!(err.to_string().contains("used twice"), "{err}");
        // A hub with spokes is not removed.
        let err = r.remove_hub("west").unwrap_err();
        assert!(err.to_string().contains("\"b\""), "{err}");
        // Round trip through the file format.
        let text = r.to_json();
        let back = Registry::from_json(&text, std::path::Path::new("x")).unwrap();
        assert_eq!(back, r);
        // A file whose spoke names a missing hub is corrupt.
        let bad = text.replace("\"home\": \"west\"", "\"home\": \"gone\"");
        assert!(Registry::from_json(&bad, std::path::Path::new("x")).is_err());
        // Without hubs the format is as before: no "hubs", no "home".
        let mut plain = Registry::new();
        plain
            .add("z", key(9), &"10.88.0.0/24".parse().unwrap())
            .unwrap();
        let t = plain.to_json();
        assert!(!t.contains("hubs") && !t.contains("home"), "{t}");
    }
}
