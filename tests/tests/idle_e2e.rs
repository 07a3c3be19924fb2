//! An idle mesh (issue 18): the printed files put PersistentKeepalive on
//! the hub peer only, and that keepalive alone keeps each spoke's NAT
//! mapping open for all of its peers (they share the one UDP 5-tuple to
//! the hub), so an idle mesh costs the hub N keepalives per interval
//! instead of N x (N-1) relayed ones.
//!
//! Three spokes behind outbound-only NATs whose UDP conntrack timeouts are
//! cut to NAT_TIMEOUT (default Linux: 30 s, home routers often less);
//! PK (RELAYHUB_KEEPALIVE, what `spoke add` prints) is below it, as 25 s
//! is below 30 s by default. Checks, one `key=value` line each:
//! - every printed file has exactly one PersistentKeepalive, on the hub
//!   peer, and wireguard-go runs with it off for the other peers;
//! - after the mesh has talked, it goes idle for IDLE (longer than the NAT
//!   timeout plus WireGuard's 10 s passive keepalive): no frame is relayed
//!   in its second half (`idle_relayed_frames=0`);
//! - s1 then reaches s2 on the first try (`idle_pair_reached=1`,
//!   `idle_pair_first_answer_s`);
//! - the control: s3 has its hub keepalive turned off before the idle
//!   period, so its mapping expires and s1 cannot reach it
//!   (`control_unreached_without_hub_keepalive=1`): the check above can
//!   fail, and it is the hub keepalive that holds the mapping open; with it
//!   back on, s1 reaches s3 again (`control_recovered_s`).
//!
//! Run as root: `cargo test -p relay-tests --release --test idle_e2e -- --nocapture`.

use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use relay_tests::mesh::Mesh;
use relay_tests::{Hub, Topology, cmd, relayhub_scenario};

const KEEPALIVE: u64 = 4;
const NAT_TIMEOUT: u64 = 10;
/// NAT timeout + WireGuard's passive keepalive (10 s after data it did not
/// answer) + margin: every mapping without a keepalive has expired by then.
const IDLE: u64 = NAT_TIMEOUT + 10 + 8;

#[test]
fn idle_e2e() {
    // SAFETY: set before this test starts any thread or child; this test
    // binary has no other test reading the environment.
    unsafe {
        std::env::set_var("RELAYHUB_KEEPALIVE", KEEPALIVE.to_string());
    }
    relayhub_scenario(
        "idle_e2e",
        Topology::builder()
            .spokes(3)
            .xdp_pass(env!("CARGO_BIN_EXE_xdp-pass")),
        checks,
    );
}

fn relayed(hub: &Hub<'_>) -> anyhow::Result<f64> {
    Ok(hub
        .metrics()?
        .value("relayhub_relayed_packets_total", &[("path", "xdp")]))
}

fn checks(topo: &Topology, hub: &mut Hub<'_>) -> anyhow::Result<()> {
    for nat in &topo.nats {
        nat.ns.sysctl(
            "net.netfilter.nf_conntrack_udp_timeout",
            &NAT_TIMEOUT.to_string(),
        )?;
        nat.ns.sysctl(
            "net.netfilter.nf_conntrack_udp_timeout_stream",
            &NAT_TIMEOUT.to_string(),
        )?;
    }
    let mesh = Mesh::up(topo, hub)?;

    // The files as printed, and as wireguard-go runs them.
    let ifname = |i: usize| format!("{}{}", topo.prefix, topo.spokes[i].name);
    let mut hub_key = String::new();
    for (i, name) in mesh.names.iter().enumerate() {
        let conf = hub.cli(&["spoke", "config", name, "--endpoint", &topo.hub_endpoint()])?;
        let sections: Vec<&str> = conf.split("\n[Peer]\n").skip(1).collect();
        let with_ka: Vec<usize> = (0..sections.len())
            .filter(|&j| sections[j].contains("PersistentKeepalive"))
            .collect();
        ensure!(
            with_ka == [0] && sections[0].contains(&format!("PersistentKeepalive = {KEEPALIVE}\n")),
            "{name}: PersistentKeepalive must be on the hub peer (first) only:\n{conf}"
        );
        let ka = topo.spokes[i]
            .ns
            .exec(&["wg", "show", &ifname(i), "persistent-keepalive"])?;
        let on: Vec<&str> = ka.lines().filter(|l| !l.ends_with("off")).collect();
        ensure!(
            on.len() == 1,
            "{name}: keepalive on for {on:?}, expected the hub only:\n{ka}"
        );
        hub_key = on[0].split_whitespace().next().unwrap_or("").to_string();
    }
    eprintln!("idle_keepalive_on_hub_peer_only=3/3");

    // The control: s3 without its hub keepalive (nothing else keeps its
    // mapping: the hub sends spokes nothing unasked).
    let s3 = &topo.spokes[2].ns;
    let s3_hub_keepalive = |secs: u64| {
        let secs = secs.to_string();
        let argv = [
            "wg",
            "set",
            &ifname(2),
            "peer",
            &hub_key,
            "persistent-keepalive",
            &secs,
        ];
        s3.exec(&argv).map(drop)
    };
    s3_hub_keepalive(0)?;

    eprintln!("[idle] mesh idle for {IDLE} s (NAT UDP timeout {NAT_TIMEOUT} s, PK {KEEPALIVE} s)");
    std::thread::sleep(Duration::from_secs(IDLE - NAT_TIMEOUT));
    let r0 = relayed(hub)?;
    std::thread::sleep(Duration::from_secs(NAT_TIMEOUT));
    let idle_relayed = relayed(hub)? - r0;
    eprintln!("idle_relayed_frames={idle_relayed}");
    ensure!(
        idle_relayed == 0.0,
        "{idle_relayed} frames relayed between idle spokes in {NAT_TIMEOUT} s: spoke peers keep each other alive"
    );

    let s1 = &topo.spokes[0].ns;
    let t = Instant::now();
    let reached = s1.ping_once(&mesh.addrs[1].to_string());
    let first = t.elapsed().as_secs_f64();
    eprintln!("idle_pair_reached={}", u8::from(reached));
    eprintln!("idle_pair_first_answer_s={first:.3}");
    ensure!(
        reached,
        "s1 could not reach s2 after {IDLE} s idle: the hub keepalive did not keep s2's NAT mapping"
    );

    let s3_addr = mesh.addrs[2].to_string();
    let unreached = (0..3).all(|_| !s1.ping_once(&s3_addr));
    eprintln!(
        "control_unreached_without_hub_keepalive={}",
        u8::from(unreached)
    );
    ensure!(
        unreached,
        "s1 reached s3 whose NAT mapping should have expired: the NAT timeout is not in force, \
         so this test could not tell a kept mapping from an expired one"
    );

    let t = Instant::now();
    s3_hub_keepalive(KEEPALIVE)?;
    cmd::wait_for(
        "s1 to reach s3 with its hub keepalive back on",
        Duration::from_secs(15),
        Duration::from_millis(10),
        || Ok(s1.ping_once(&s3_addr).then_some(())),
    )
    .context("s3's hub keepalive did not reopen its mapping")?;
    eprintln!("control_recovered_s={:.2}", t.elapsed().as_secs_f64());
    Ok(())
}
