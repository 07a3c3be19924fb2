//! Spokes pull their peer lists from the hub over the tunnel.
//!
//! Run as root: `cargo test -p relay-tests --release --test sync_e2e -- --nocapture`.

use anyhow::{Context, ensure};
use relay_tests::mesh::Mesh;
use relay_tests::{Hub, Topology, relayhub_scenario};

#[test]
fn sync_e2e() {
    relayhub_scenario(
        "sync_e2e",
        Topology::builder()
            .spokes(3)
            .xdp_pass(env!("CARGO_BIN_EXE_xdp-pass")),
        checks,
    );
}

fn checks(topo: &Topology, hub: &mut Hub<'_>) -> anyhow::Result<()> {
    let mesh = Mesh::up(topo, hub)?;
    for (i, s) in topo.spokes.iter().enumerate() {
        let out =
            s.ns.exec(&[
                "curl",
                "-sS",
                "--max-time",
                "5",
                "http://10.88.0.1:51822/v1/peers",
            ])
            .with_context(|| format!("peer list from {}", mesh.names[i]))?;
        eprintln!("[sync] {}:\n{out}", mesh.names[i]);
        ensure!(out.starts_with("# relayhub peer list v1\n"), "{out}");
    }
    Ok(())
}
