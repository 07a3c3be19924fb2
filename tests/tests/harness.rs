//! Self-checks of the test network itself (no hub): the NATs really are
//! outbound-only, and dropping the topology leaves nothing behind.

use relay_tests::topology::{HUB_ADDR, leftovers};
use relay_tests::{Topology, cmd};

#[test]
fn nats_block_unsolicited_inbound_and_cleanup_is_complete() {
    cmd::require_root();
    let topo = Topology::builder()
        .spokes(3)
        .random_fully(2)
        .xdp_pass(env!("CARGO_BIN_EXE_xdp-pass"))
        .build()
        .expect("build topology");
    let prefix = topo.prefix.clone();
    for i in 0..topo.nats.len() {
        let msg = topo.check_nat_blocks_inbound(i).expect("NAT check");
        eprintln!("[{prefix}] {msg}");
    }
    // Outbound works from every spoke, and the hub sees the NAT's address.
    for s in &topo.spokes {
        assert!(
            s.ns.ping_once(&HUB_ADDR.to_string()),
            "{} cannot reach the hub underlay",
            s.name
        );
    }
    let ns_count = topo.namespaces().len();
    assert!(!leftovers(&prefix).is_empty());
    drop(topo);
    let left = leftovers(&prefix);
    assert!(
        left.is_empty(),
        "cleanup left things behind:\n{}",
        left.join("\n")
    );
    eprintln!("[{prefix}] {ns_count} namespaces created and removed, nothing left");
}

#[test]
fn cleanup_happens_on_panic() {
    cmd::require_root();
    let prefix = std::sync::Mutex::new(String::new());
    let r = std::panic::catch_unwind(|| {
        let topo = Topology::builder()
            .spokes(1)
            .build()
            .expect("build topology");
        *prefix.lock().unwrap() = topo.prefix.clone();
        panic!("deliberate panic with a live topology");
    });
    assert!(r.is_err());
    let prefix = prefix.into_inner().unwrap();
    assert!(!prefix.is_empty());
    let left = leftovers(&prefix);
    assert!(
        left.is_empty(),
        "cleanup after panic left things behind:\n{}",
        left.join("\n")
    );
}
