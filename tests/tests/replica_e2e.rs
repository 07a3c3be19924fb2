//! Relay-state replication between an active and a standby hub (issue 12,
//! part 2): the standby's XDP tables follow the active's, sessions the
//! active's XDP program learned from responses included.
//!
//! The active is the usual hub (`--replica-listen` on a private link); the
//! standby is a second relayhub in its own namespace (`<prefix>sb`), on a
//! veth to the hub namespace, with a copy of the hub's state directory
//! (same hub key) and `--standby-of`. It owns no public address and sees
//! no spoke traffic. Three stock wireguard-go spokes handshake pairwise
//! through the active; then both hubs' SESSIONS maps (bpftool, by the
//! program attached to each hub's NIC) must be identical, entries learned
//! from responses included. The lag: 20 entries written into the active's
//! map with bpftool (as the XDP program writes a learned one) and deleted
//! again, each timed until the standby's map shows it (printed; asserted
//! under 1 s). Then the hub's address moves to the standby (the router's
//! route to it now points at the standby's public link, as a VRRP
//! failover's gratuitous ARP moves the neighbour entry) while s1 pings s2
//! every 50 ms: the standby's XDP program relays the existing session
//! (asserted: at most 1 s of pings lost, at least 100 frames relayed by the
//! standby, the spokes' latest-handshake times unchanged). Then a spoke is
//! removed on the active: its endpoint and sessions go from the standby
//! too.
//!
//! keepalived, the takeover of the hub's own WireGuard sessions and split
//! brain are in `failover_e2e`.
//!
//! Run as root: `cargo test -p relay-tests --release --test replica_e2e -- --nocapture`.

use std::time::{Duration, Instant};

use anyhow::Context;
use relay_tests::mesh::Mesh;
use relay_tests::sessions;
use relay_tests::standby::{ACTIVE_LINK, StandbyHost, replica_addr};
use relay_tests::topology::HUB_ADDR;
use relay_tests::{Hub, Topology, cmd, relayhub_scenario_with};

#[test]
fn replica_e2e() {
    relayhub_scenario_with(
        "replica_e2e",
        Topology::builder()
            .spokes(3)
            .xdp_pass(env!("CARGO_BIN_EXE_xdp-pass")),
        // Any address: the private link is made after the hub starts.
        &["--replica-listen", "0.0.0.0:51823"],
        checks,
    );
}

fn checks(topo: &Topology, hub: &mut Hub<'_>) -> anyhow::Result<()> {
    // The standby's namespace, its private link to the hub and its public
    // link to the router. It holds the hub's address from the start, but
    // the router sends nothing there until the move. A copy of the hub's
    // state directory: same hub key.
    let mut sb = StandbyHost::new(topo, env!("CARGO_BIN_EXE_xdp-pass"))?;
    sb.route_public(topo, false)?;
    sb.copy_state(&hub.state_dir, true)?;
    sb.start(&[], &["--standby-of", &replica_addr(ACTIVE_LINK)])?;
    let r = (|| -> anyhow::Result<()> {
        let t0 = Instant::now();
        sb.wait_following(0, 0)?;
        eprintln!("[replica] standby following after {:?}", t0.elapsed());
        let active_map = sessions::map_id(&topo.hub, &hub.nic)?;
        let standby_map = sessions::map_id(&sb.ns, &sb.public.b)?;

        let mesh = Mesh::up(topo, hub)?;
        let (a, _) = cmd::wait_for(
            "the standby's session table to match the active's",
            Duration::from_secs(5),
            Duration::from_millis(50),
            || {
                let (a, s) = (sessions::dump(&active_map)?, sessions::dump(&standby_map)?);
                Ok((!a.is_empty() && a == s).then_some((a, s)))
            },
        )?;
        let learned = a
            .values()
            .filter(|(_, f)| *f == relay_common::SESSION_FROM_RESPONSE)
            .count();
        anyhow::ensure!(learned > 0, "no learned entries on the active: {a:?}");
        eprintln!(
            "[replica] {} entries ({learned} learned from responses) identical on both hubs",
            a.len()
        );

        // Lag: an entry written into the active's map (as the XDP program
        // writes a learned one) until it is in the standby's map, and its
        // removal likewise; the standby is polled every 10 ms.
        let (&(src, _), &(dst, _)) = a.iter().next().context("an entry")?;
        let mut adds = Vec::new();
        let mut removes = Vec::new();
        for i in 0..20u32 {
            let receiver = 0x5eed_0000 + i;
            let key = (src, receiver);
            let t = Instant::now();
            sessions::plant(&active_map, src, receiver, dst)?;
            cmd::wait_for(
                "the entry on the standby",
                Duration::from_secs(3),
                Duration::from_millis(10),
                || {
                    Ok(sessions::dump(&standby_map)?
                        .contains_key(&key)
                        .then_some(()))
                },
            )?;
            adds.push(t.elapsed());
            let t = Instant::now();
            sessions::remove(&active_map, src, receiver)?;
            cmd::wait_for(
                "the entry gone from the standby",
                Duration::from_secs(3),
                Duration::from_millis(10),
                || Ok((!sessions::dump(&standby_map)?.contains_key(&key)).then_some(())),
            )?;
            removes.push(t.elapsed());
        }
        adds.sort();
        removes.sort();
        eprintln!(
            "[replica] lag, 20 entries (active map write -> in the standby's map): median {:?}, max {:?}; removals: median {:?}, max {:?}",
            adds[10], adds[19], removes[10], removes[19]
        );
        anyhow::ensure!(
            adds[19] < Duration::from_secs(1),
            "replication lag {:?}",
            adds[19]
        );
        let st = sb.status()?;
        eprintln!("[replica] standby: {st}");
        anyhow::ensure!(st["endpoints"] == 3, "standby endpoints: {st}");
        anyhow::ensure!(
            st["lag_seconds"].as_f64().is_some_and(|l| l < 1.0),
            "standby lag: {st}"
        );

        // Move the address: the router now sends frames for it to the
        // standby (as a VRRP failover's gratuitous ARP would), while s1
        // pings s2 every 50 ms. The standby relays the existing s1 <-> s2
        // session with what it replicated: no new handshake.
        let s1 = mesh.spokes[0].as_ref().context("s1 up")?;
        let s2 = mesh.spokes[1].as_ref().context("s2 up")?;
        let handshakes = || -> anyhow::Result<_> {
            let (mut a, mut b) = (s1.latest_handshakes()?, s2.latest_handshakes()?);
            a.sort();
            b.sort();
            Ok((a, b))
        };
        let before = handshakes()?;
        let pinger = topo.spokes[0]
            .ns
            .ping_in_background(&mesh.addrs[1].to_string(), 80, 0.05);
        std::thread::sleep(Duration::from_secs(1));
        topo.route_hub_address(&sb.public.a)?;
        let moved = Instant::now();
        let ping = pinger
            .join()
            .map_err(|_| anyhow::anyhow!("ping thread"))??;
        let after = handshakes()?;
        let relayed =
            sb.metrics()?
                .value("relayhub_relayed_packets_total", &[("path", "xdp")]) as u64;
        eprintln!(
            "[replica] address moved to the standby: s1 -> s2 ping {}/{} received (50 ms apart, move after 1 s, {:?} before the ping ended); standby relayed {relayed} frames in XDP; spokes' latest handshakes unchanged: {}",
            ping.received,
            ping.transmitted,
            moved.elapsed(),
            before == after
        );
        // About 60 pings each way after the move went through the standby.
        anyhow::ensure!(relayed >= 100, "the standby relayed {relayed} frames");
        anyhow::ensure!(
            ping.transmitted - ping.received <= 20,
            "lost {} of {} pings across the move",
            ping.transmitted - ping.received,
            ping.transmitted
        );
        anyhow::ensure!(
            before == after,
            "spokes handshook again across the move: {before:?} -> {after:?}"
        );
        topo.router
            .exec(&["ip", "route", "del", &format!("{HUB_ADDR}/32")])?;

        // A removal on the active reaches the standby as removals.
        let t = Instant::now();
        hub.cli(&["spoke", "remove", "s3"])?;
        cmd::wait_for(
            "s3's endpoint and sessions gone from the standby",
            Duration::from_secs(5),
            Duration::from_millis(20),
            || {
                let (a, s) = (sessions::dump(&active_map)?, sessions::dump(&standby_map)?);
                let st = sb.status()?;
                // The replica's own view matches the map it wrote.
                Ok((a == s && st["endpoints"] == 2 && st["sessions"] == s.len()).then_some(()))
            },
        )?;
        eprintln!(
            "[replica] spoke removal reached the standby {:?} after the CLI returned",
            t.elapsed()
        );
        drop(mesh);
        Ok(())
    })();
    if r.is_err() {
        eprintln!("standby log tail:\n{}", sb.log_tail(40));
    }
    let (status, clean) = sb.stop();
    drop(sb);
    r?;
    anyhow::ensure!(clean, "standby did not exit cleanly: {status}");
    Ok(())
}
