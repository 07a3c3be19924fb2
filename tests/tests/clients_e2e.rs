//! The client matrix in userspace: wireguard-go and boringtun spokes, two
//! behind NAT44 (IPv4) and two IPv6-only behind outbound-only firewalls,
//! each run the way README "Clients" tells its users:
//!
//! - s1 (IPv4) and s3 (IPv6): wireguard-go, the `spoke add` file as is;
//! - s2 (IPv4): boringtun through contrib/boringtun-relayhub with WG_SUDO=1
//!   and the README's `PostUp` ping of the hub;
//! - s4 (IPv6): boringtun the same way but without the `PostUp` line, so it
//!   never handshakes with the hub first: the hub learns its endpoint only
//!   by proving it (a handshake in the hub's name) when s4's first
//!   initiations to other spokes arrive from an unknown source.
//!
//! Asserted: first contact: all 12 ordered pairs, tried at once, ping
//! within 2 s of the last spoke's interface coming up; then every pair
//! pings without loss; s4's endpoint was proven by the hub.
//!
//! Kernel WireGuard runs in QEMU guests, in its own xtask step
//! (`kernel_clients_e2e`, `cargo xtask test-guests`).
//!
//! Run as root: `cargo test -p relay-tests --release --test clients_e2e -- --nocapture`.

use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use relay_tests::wg::{BORINGTUN_POST_UP, Client, with_interface_line};
use relay_tests::{Hub, Topology, relayhub_scenario};

/// The promise: every pair talks within this after the last spoke is up.
const FIRST_CONTACT: Duration = Duration::from_secs(2);
/// How long a pair is tried before the test gives up on it (longer than
/// the promise, so a miss is measured, not cut off).
const GIVE_UP: Duration = Duration::from_secs(20);

#[test]
fn clients_e2e() {
    relayhub_scenario(
        "clients_e2e",
        Topology::builder()
            .spokes(2)
            .ipv6_only_spokes(2)
            .xdp_pass(env!("CARGO_BIN_EXE_xdp-pass")),
        checks,
    );
}

fn checks(topo: &Topology, hub: &mut Hub<'_>) -> anyhow::Result<()> {
    let spokes = [
        ("s1", false, Client::WireguardGo, false),
        ("s2", false, Client::Boringtun, true),
        ("s3", true, Client::WireguardGo, false),
        ("s4", true, Client::Boringtun, false),
    ];
    let mut texts = Vec::new();
    for &(name, v6, _, post_up) in &spokes {
        let added = if v6 {
            hub.add_spoke_ipv6(name)?
        } else {
            hub.add_spoke(name)?
        };
        texts.push((added, post_up));
    }
    let mut confs = Vec::new();
    for (&(name, ..), (added, post_up)) in spokes.iter().zip(&texts) {
        let c = hub.current_config(name, added)?;
        confs.push(if *post_up {
            with_interface_line(&c, BORINGTUN_POST_UP)
        } else {
            c
        });
    }
    let keys: Vec<String> = texts
        .iter()
        .map(|(t, _)| relay_tests::wg::conf_public_key(t))
        .collect::<anyhow::Result<_>>()?;
    hub.wait_for_peers(&keys)?;
    let m0 = hub.metrics()?;

    let mut up = Vec::new();
    for (i, (&(name, _, client, _), conf)) in spokes.iter().zip(&confs).enumerate() {
        up.push(
            topo.spoke_up_with(i, conf, client)
                .with_context(|| format!("{name} on {}", client.name()))?,
        );
    }
    let t_up = Instant::now();
    let addrs: Vec<String> = up
        .iter()
        .map(|w| w.address().map(|a| a.to_string()))
        .collect::<anyhow::Result<_>>()?;

    // Every ordered pair at once, as users' traffic would start.
    let times: Vec<(usize, usize, Option<Duration>)> = thread::scope(|s| {
        let mut hs = Vec::new();
        for a in 0..spokes.len() {
            for (b, dst) in addrs.iter().enumerate() {
                if a == b {
                    continue;
                }
                let ns = &topo.spokes[a].ns;
                let dst = dst.clone();
                hs.push(s.spawn(move || {
                    while t_up.elapsed() < GIVE_UP {
                        if ns.ping_once(&dst) {
                            return (a, b, Some(t_up.elapsed()));
                        }
                    }
                    (a, b, None)
                }));
            }
        }
        hs.into_iter()
            .map(|h| h.join().expect("ping thread"))
            .collect()
    });
    let name = |i: usize| format!("{}({})", spokes[i].0, spokes[i].2.name());
    let report: Vec<String> = times
        .iter()
        .map(|&(a, b, t)| match t {
            Some(t) => format!("{}->{} {:.2}s", name(a), name(b), t.as_secs_f64()),
            None => format!("{}->{} never", name(a), name(b)),
        })
        .collect();
    eprintln!("[clients] first contact: {}", report.join(", "));
    let m1 = hub.metrics()?;
    let proven = m1.value("relayhub_endpoint_proofs_total", &[("result", "proven")])
        - m0.value("relayhub_endpoint_proofs_total", &[("result", "proven")]);
    eprintln!("[clients] endpoint proofs +{proven}");
    let slow: Vec<&String> = times
        .iter()
        .zip(&report)
        .filter(|((_, _, t), _)| t.is_none_or(|t| t > FIRST_CONTACT))
        .map(|(_, r)| r)
        .collect();
    ensure!(
        slow.is_empty(),
        "first contact over {FIRST_CONTACT:?} after the last spoke came up: {slow:?}"
    );
    ensure!(
        proven >= 1.0,
        "s4 never handshook with the hub, yet no endpoint was proven (proofs +{proven})"
    );

    // Steady state: every pair, no loss.
    for a in 0..spokes.len() {
        for (b, dst) in addrs.iter().enumerate() {
            if a == b {
                continue;
            }
            let r = topo.spokes[a].ns.ping(dst, 5, 0.1)?;
            ensure!(r.lost() == 0, "{} -> {}: {r:?}", name(a), name(b));
        }
    }
    eprintln!("[clients] all 12 pairs: 5 of 5 pings each");
    Ok(())
}
