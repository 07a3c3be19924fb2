//! The hub mesh's marks in the slot table (in the kernel, no pins): a
//! local spoke's mesh index and a remote spoke's peer hub index live in
//! the slot flags, whichever writer put the endpoint there first, and the
//! peer hubs' drop counters keep their counts when a hub leaves.

use relay_common::{Endpoint, SLOT_ACTIVE, SLOT_MESH_SHIFT, SLOT_REMOTE, SpokeSlot, slot_mesh};
use relay_user::datapath::{Capacity, Datapath};

fn is_root() -> bool {
    // SAFETY: plain syscall.
    unsafe { libc::geteuid() == 0 }
}

fn load() -> Datapath {
    Datapath::load(
        relay_user::EBPF_OBJECT,
        &Capacity::default(),
        51820,
        0,
        None,
    )
    .expect("load the relay program")
}

#[test]
fn mesh_marks_follow_the_registry_in_either_order() {
    if !is_root() {
        return;
    }
    let mut dp = load();
    let a = Endpoint::v4([203, 0, 113, 1], 40001);
    let b = Endpoint::v4([203, 0, 113, 2], 40002);
    // A standby's replica writes spoke 1's endpoint before the registry
    // says it is homed here with mesh index 5...
    dp.set_spoke_endpoint(1, None, Some(a)).unwrap();
    assert_eq!(dp.slot(1).unwrap().flags, SLOT_ACTIVE, "no index known yet");
    dp.set_local_mesh([(1, 5), (2, 6)].into()).unwrap();
    let flags = dp.slot(1).unwrap().flags;
    assert_eq!(
        (flags & SLOT_REMOTE, slot_mesh(flags)),
        (0, 5),
        "rewritten when the index came"
    );
    // ...and spoke 2's after: written with its index at once.
    dp.set_spoke_endpoint(2, None, Some(b)).unwrap();
    assert_eq!(
        dp.slot(2).unwrap(),
        SpokeSlot {
            endpoint: b,
            flags: SLOT_ACTIVE | (6 << SLOT_MESH_SHIFT)
        }
    );
    // A remote spoke carries its home hub's drop-counter index.
    dp.set_mesh_peers(&[("west".into(), "192.0.2.7".parse().unwrap())])
        .unwrap();
    let west = dp.mesh_peer("west");
    assert_ne!(west, 0);
    dp.set_remote_slots([(3, west)].into());
    let r = Endpoint::v4([192, 0, 2, 7], 40003);
    dp.set_spoke_endpoint(3, None, Some(r)).unwrap();
    let flags = dp.slot(3).unwrap().flags;
    assert_eq!((flags & SLOT_REMOTE, slot_mesh(flags)), (SLOT_REMOTE, west));
    // A hub that leaves keeps its (zero) counts in the totals; a new one
    // may take its index.
    dp.set_mesh_peers(&[("east".into(), "192.0.2.8".parse().unwrap())])
        .unwrap();
    let totals = dp.mesh_drops();
    assert!(
        totals.contains_key("west") && totals.contains_key("east"),
        "{totals:?}"
    );
    assert_eq!(dp.mesh_peer("west"), 0);
}
