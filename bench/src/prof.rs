//! `relay-bench prof`: the XDP program alone under BPF_PROG_TEST_RUN, for
//! profiling (bench/RESULTS.md, "Profile"). Loads the product's object or
//! another build of it (`--object`: variants with steps compiled out),
//! fills its maps like the packet-rate bench, and times a hit, two misses
//! and the empty XDP_PASS program (BPF_PROG_TEST_RUN's own cost per
//! repeat), interleaved, `--reps` times; optionally with the kernel's BPF
//! run-time statistics on (as during `relay-bench run`) and with bpftool's
//! xlated dump of the loaded program.

use std::os::fd::AsFd;
use std::path::PathBuf;

use crate::packet::{med, spread};
use crate::{bpfraw, synth, sys};

pub struct Opts {
    pub object: Option<PathBuf>,
    pub repeat: u32,
    pub reps: usize,
    pub stats: bool,
    pub dump: Option<PathBuf>,
    /// Only this case (0 hit, 1 miss unknown source, 2 miss no session, 3
    /// empty program): for `perf record`.
    pub only: Option<usize>,
}

/// ns/frame per repetition (interleaved) and the action of the cases
/// [`synth::test_frames`] (hit, miss unknown source, miss no session) on
/// `hub`'s program, then of the empty program `pass` on the hit frame
/// (the test run's own cost); `only`: one case of the four.
pub fn time_cases(
    hub: &mut synth::XdpHub,
    pass: &std::os::fd::OwnedFd,
    ifindex: u32,
    repeat: u32,
    reps: usize,
    only: Option<usize>,
) -> anyhow::Result<(Vec<Vec<f64>>, [u32; 4])> {
    let frames = synth::test_frames(64);
    let mut ns = vec![Vec::new(); 4];
    let mut act = [0u32; 4];
    for _ in 0..reps {
        for (i, f) in frames.iter().enumerate() {
            if only.is_some_and(|o| o != i) {
                continue;
            }
            let (t, a) = bpfraw::test_run(hub.prog_fd()?, f, ifindex, repeat)?;
            ns[i].push(t);
            act[i] = a;
        }
        if only.is_none_or(|o| o == 3) {
            let (t, a) = bpfraw::test_run(pass.as_fd(), &frames[0], ifindex, repeat)?;
            ns[3].push(t);
            act[3] = a;
        }
    }
    Ok((ns, act))
}

pub fn run(o: &Opts) -> anyhow::Result<()> {
    relay_tests::cmd::require_root();
    let object = match &o.object {
        Some(p) => std::fs::read(p)?,
        None => relay_user::EBPF_OBJECT.to_vec(),
    };
    let topo = relay_tests::Topology::builder().spokes(1).build()?;
    sys::prime_hub_neighbour(&topo)?;
    let nic = topo.hub_nic.clone();
    let dump = o.dump.clone();
    let (repeat, reps, stats, only) = (o.repeat, o.reps, o.stats, o.only);
    let rows = sys::in_netns(&topo.hub.name, move || {
        let ifindex = sys::ifindex(&nic)?;
        let sp = synth::spokes(64);
        let mut hub = synth::XdpHub::load_object(&object, &sp)?;
        if let Some(d) = &dump {
            let id = hub.prog_id()?;
            std::fs::create_dir_all(d)?;
            let out = sys::sh(&format!(
                "bpftool prog show id {id}; bpftool prog dump xlated id {id}"
            ))?;
            std::fs::write(d.join("relay.xlated"), out)?;
            // No jited dump: Debian's bpftool is built without libbfd
            // (`prog show` above gives the jited size).
        }
        let pass = bpfraw::load("pass", &bpfraw::pass())?;
        let _stats = if stats {
            Some(aya::sys::enable_stats(aya::sys::Stats::RunTime)?)
        } else {
            None
        };
        time_cases(&mut hub, &pass, ifindex, repeat, reps, only)
    })?;
    let (ns, act) = rows;
    let empty = med(ns[3].iter().copied());
    println!(
        "repeat {repeat}, {reps} reps, BPF stats {}; ns/frame median (min-max), net = median - empty program median",
        if stats { "on" } else { "off" }
    );
    for (i, name) in [
        "hit",
        "miss unknown source",
        "miss no session",
        "empty XDP_PASS",
    ]
    .iter()
    .enumerate()
    {
        if ns[i].is_empty() {
            continue;
        }
        let m = med(ns[i].iter().copied());
        let (a, b) = spread(ns[i].iter().copied());
        println!(
            "{name:<22} {m:>6.1} ({a:.0}-{b:.0})  net {:>6.1}  action {}",
            m - empty,
            act[i]
        );
    }
    Ok(())
}
