//! Hub mesh: what a frame costs when it crosses two hubs instead of one,
//! measured in the kernel with BPF_PROG_TEST_RUN on the product's program
//! (see `synth::XdpHub::enable_mesh` for the fixed point that alternates
//! the two hubs' roles), beside the single hub's relay of the same frame
//! in the same loaded program, interleaved.

use std::os::fd::AsFd;

use relay_common::counter;

use crate::packet::med;
use crate::{bpfraw, synth, sys};

#[derive(Debug, Clone, Default)]
pub struct MeshCost {
    /// ns/frame per rep: one hub relaying a spoke's frame to a local spoke.
    pub single: Vec<f64>,
    /// ns per frame crossing two hubs (G's relay + H's relay) per rep.
    pub two_hubs: Vec<f64>,
    /// The empty program per rep (BPF_PROG_TEST_RUN's own cost per run).
    pub empty: Vec<f64>,
    pub repeat: u32,
}

impl MeshCost {
    /// (single, two hubs, their ratio), medians net of the test-run
    /// overhead (once for the single hub, twice across two).
    pub fn net(&self) -> (f64, f64, f64) {
        let e = med(self.empty.iter().copied());
        let s = med(self.single.iter().copied()) - e;
        let t = med(self.two_hubs.iter().copied()) - 2.0 * e;
        (s, t, t / s)
    }
}

/// `reps` interleaved rounds of `repeat` runs each, in the hub namespace
/// of `topo` (a route and neighbour for the fixed point's address).
pub fn run(topo: &relay_tests::Topology, reps: usize, repeat: u32) -> anyhow::Result<MeshCost> {
    anyhow::ensure!(
        repeat.is_multiple_of(2),
        "an even repeat alternates G and H evenly"
    );
    sys::prime_hub_neighbour(topo)?;
    let nic = topo.hub_nic.clone();
    sys::in_netns(&topo.hub.name, move || {
        let ifindex = sys::ifindex(&nic)?;
        let mut hub = synth::XdpHub::load(&synth::spokes(64))?;
        hub.enable_mesh()?;
        let pass = bpfraw::load("pass", &bpfraw::pass())?;
        let single = synth::test_frames(64)[0].clone();
        let mesh = synth::mesh_frame(64);
        let mut r = MeshCost {
            repeat,
            ..Default::default()
        };
        for _ in 0..reps {
            let (t, a) = bpfraw::test_run(hub.prog_fd()?, &single, ifindex, repeat)?;
            anyhow::ensure!(a == 3, "single-hub frame not relayed (action {a})");
            r.single.push(t);
            // Both roles ran, half the runs each: a bench of a frame that
            // was dropped would measure nothing.
            let (i0, o0) = (
                hub.counter(counter::MESH_IN)?,
                hub.counter(counter::MESH_OUT)?,
            );
            let (t, a) = bpfraw::test_run(hub.prog_fd()?, &mesh, ifindex, repeat)?;
            let (i1, o1) = (
                hub.counter(counter::MESH_IN)?,
                hub.counter(counter::MESH_OUT)?,
            );
            anyhow::ensure!(
                a == 3 && i1 - i0 == u64::from(repeat / 2) && o1 - o0 == u64::from(repeat / 2),
                "mesh frame: action {a}, mesh_in +{}, mesh_out +{} of {repeat} runs",
                i1 - i0,
                o1 - o0
            );
            // Per run the mean of G's and H's cost: a frame pays both.
            r.two_hubs.push(2.0 * t);
            let (t, _) = bpfraw::test_run(pass.as_fd(), &single, ifindex, repeat)?;
            r.empty.push(t);
        }
        Ok(r)
    })
}
