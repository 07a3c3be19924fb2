//! Attach relayhub's `xdp_pass` program to one interface and keep it attached.
//!
//! Native XDP_TX on a veth only delivers frames when the *peer* veth has an
//! XDP program attached; the end-to-end tests run this on the router's end of
//! the hub link. Usage: `ip netns exec NS xdp-pass IFACE`. Prints `attached`
//! once the program is in place, then waits until stdin reaches EOF or the
//! process gets SIGTERM; the link goes away with the process.

use std::io::Read;

use anyhow::{Context, anyhow};
use aya::programs::{Xdp, XdpMode};

fn main() -> anyhow::Result<()> {
    let iface = std::env::args()
        .nth(1)
        .ok_or_else(|| anyhow!("usage: xdp-pass IFACE"))?;

    // RLIMIT_MEMLOCK: EPERM here, loading works anyway (memcg accounting).
    let rlim = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: plain syscall with a valid pointer.
    let _ = unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &rlim) };

    let mut ebpf =
        aya::Ebpf::load(relay_user::EBPF_OBJECT).context("load relayhub's eBPF object")?;
    let prog: &mut Xdp = ebpf
        .program_mut("xdp_pass")
        .ok_or_else(|| anyhow!("no program `xdp_pass` in relayhub's eBPF object"))?
        .try_into()?;
    prog.load().context("load xdp_pass")?;
    prog.attach(&iface, XdpMode::default())
        .with_context(|| format!("attach xdp_pass to {iface}"))?;
    println!("attached");

    // Wait for EOF on stdin (the test dropped its end) or a signal.
    let mut sink = Vec::new();
    let _ = std::io::stdin().read_to_end(&mut sink);
    drop(ebpf);
    Ok(())
}
