//! Hub failover (issue 12, the takeover): the active hub dies while two
//! spoke pairs exchange 200 frames/s each; the standby takes over.
//!
//! The standby is set up as in `replica_e2e`: a second relayhub in its own
//! namespace on the hub's state directory (the shared store), following the
//! active over a private link, and holding the hub's address on its own
//! link to the router. Three wireguard-go spokes (the first behind a NAT
//! that randomises ports) ping each other through the active. Then the
//! active fails: its relayhub is SIGKILLed and its link goes down. What
//! keepalived would do is done by hand, at once: the router's route to
//! the hub's address moves to the standby's link (the gratuitous ARP) and
//! the standby gets SIGUSR1 (notify_master). Measured and printed as
//! `failover_gap_ms=N handshakes_after=N hub_tunnel_ms=N`: the longest
//! spoke-to-spoke interruption (lost pings x 5 ms, worst of the two
//! flows), new spoke-to-spoke handshakes across the failover (asserted 0),
//! and until every spoke pings the hub's tunnel address again (the
//! standby's WireGuard initiates to every spoke on promotion).
//!
//! `keepalived_failover_e2e`: the same with keepalived doing its part: the
//! hubs and the router share one L2 segment (a bridge in the router
//! namespace), one keepalived per hub (VRRPv3, unicast, 100 ms adverts)
//! holds the shared address, and the standby's notify_master sets the
//! default route's source and sends SIGUSR1. The gap then includes
//! keepalived's detection of the dead active.
//!
//! `split_brain_e2e`: both hubs active at once, each getting part of the
//! spokes' traffic (see [`split_brain`]).
//!
//! Not here yet: fail-back, losing the active's whole namespace.
//!
//! Run as root: `cargo test -p relay-tests --release --test failover_e2e -- --nocapture`
//! (both tests; they run one at a time).

use std::time::{Duration, Instant};

use anyhow::Context;
use relay_tests::hub::relayhub_bin;
use relay_tests::mesh::Mesh;
use relay_tests::netns::{Netns, Ping, Veth};
use relay_tests::topology::HUB_ADDR;
use relay_tests::{Hub, HubKind, Topology, cmd};
use serde_json::Value;

const ACTIVE_LINK: &str = "10.254.0.1";
const STANDBY_LINK: &str = "10.254.0.2";
const REPLICA_PORT: &str = "51823";
/// 200 frames/s per flow.
const INTERVAL_MS: u64 = 5;
const PINGS: u64 = 1200;

/// What happens once the mesh is up.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// The active dies; the standby takes over.
    Failover,
    /// Both hubs are active and each gets part of the spokes' traffic.
    SplitBrain,
    /// As Failover, with keepalived moving the address and promoting.
    Keepalived,
}

/// One at a time: the gap is measured in milliseconds, and two hubs plus
/// spokes per test already load a small machine.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

#[test]
fn failover_e2e() {
    scenario("failover_e2e", Mode::Failover);
}

#[test]
fn keepalived_failover_e2e() {
    scenario("keepalived_failover_e2e", Mode::Keepalived);
}

#[test]
fn split_brain_e2e() {
    scenario("split_brain_e2e", Mode::SplitBrain);
}

fn scenario(name: &str, mode: Mode) {
    cmd::require_root();
    let _one = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    // Not `relayhub_scenario_with`: the active is killed, so it cannot
    // exit cleanly; its interfaces go with the hub namespace.
    let run = || -> anyhow::Result<String> {
        let topo = Topology::builder()
            .spokes(3)
            .random_fully(0)
            .xdp_pass(env!("CARGO_BIN_EXE_xdp-pass"))
            .build()?;
        let prefix = topo.prefix.clone();
        let mut hub = Hub::start_with(
            &topo,
            HubKind::Relayhub,
            &["--replica-listen", "0.0.0.0:51823"],
        )?;
        let r = checks(&topo, &mut hub, mode);
        if r.is_err() {
            let log = hub.log();
            let lines: Vec<&str> = log.lines().collect();
            eprintln!(
                "hub log tail:\n{}",
                lines[lines.len().saturating_sub(50)..].join("\n")
            );
        }
        hub.stop();
        drop(hub);
        drop(topo);
        r.map(|()| prefix)
    };
    let prefix = run().unwrap_or_else(|e| panic!("{name} failed: {e:#}"));
    let left = relay_tests::topology::leftovers(&prefix);
    assert!(left.is_empty(), "cleanup left:\n{}", left.join("\n"));
}

/// Start `count` pings at 200/s from spoke `from` to spoke `to` (tunnel
/// addresses), in the background.
fn flow(
    topo: &Topology,
    mesh: &Mesh,
    from: usize,
    to: usize,
    count: u64,
) -> std::thread::JoinHandle<anyhow::Result<Ping>> {
    let interval = format!("0.{INTERVAL_MS:03}");
    let dst = mesh.addrs[to].to_string();
    let argv = topo.spokes[from].ns.argv(&[
        "ping",
        "-n",
        "-q",
        "-c",
        &count.to_string(),
        "-i",
        &interval,
        "-W",
        "1",
        &dst,
    ]);
    std::thread::spawn(move || -> anyhow::Result<Ping> {
        let out = cmd::run_timeout(&argv, Duration::from_secs(30))?;
        Ping::parse(&out.stdout)
    })
}

fn standby_metrics(sb: &Netns) -> anyhow::Result<relay_tests::prom::Metrics> {
    let out = sb.output(
        &["curl", "-fsS", "-m", "1", "http://127.0.0.1:9851/metrics"],
        Duration::from_secs(3),
    )?;
    anyhow::ensure!(out.success(), "standby metrics: {}", out.stderr);
    Ok(relay_tests::prom::Metrics::parse(&out.stdout))
}

fn standby_status(sb: &Netns) -> anyhow::Result<Value> {
    let out = sb.output(
        &["curl", "-fsS", "-m", "1", "http://127.0.0.1:9851/v1/hub"],
        Duration::from_secs(3),
    )?;
    anyhow::ensure!(out.success(), "standby API: {}", out.stderr);
    Ok(serde_json::from_str::<Value>(&out.stdout)?["replication"].clone())
}

fn checks(topo: &Topology, hub: &mut Hub<'_>, mode: Mode) -> anyhow::Result<()> {
    let sb = Netns::new(&format!("{}sb", topo.prefix))?;
    let link = Veth::new(
        &format!("{}ra", topo.prefix),
        &topo.hub,
        &format!("{}rb", topo.prefix),
        &sb,
    )?;
    topo.hub.exec(&[
        "ip",
        "addr",
        "add",
        &format!("{ACTIVE_LINK}/30"),
        "dev",
        &link.a,
    ])?;
    sb.exec(&[
        "ip",
        "addr",
        "add",
        &format!("{STANDBY_LINK}/30"),
        "dev",
        &link.b,
    ])?;
    let public = Veth::new(
        &format!("{}rp", topo.prefix),
        &topo.router,
        &format!("{}sp", topo.prefix),
        &sb,
    )?;
    if mode == Mode::Keepalived {
        one_segment(topo, hub, &sb, &public)?;
    } else {
        sb.exec(&[
            "ip",
            "addr",
            "add",
            &format!("{HUB_ADDR}/32"),
            "dev",
            &public.b,
        ])?;
        sb.exec(&["ip", "addr", "add", "10.254.1.2/30", "dev", &public.b])?;
        // From the hub's address: the standby's WireGuard initiates to the
        // spokes on takeover, and its source must be the address their NATs
        // have mappings for (keepalived: a virtual_routes entry with src).
        sb.exec(&[
            "ip",
            "route",
            "add",
            "default",
            "via",
            "10.254.1.1",
            "src",
            &HUB_ADDR.to_string(),
        ])?;
        sb.sysctl("net.ipv4.ip_forward", "1")?;
        topo.router
            .exec(&["ip", "addr", "add", "10.254.1.1/30", "dev", &public.a])?;
    }
    // The standby's XDP_TX frames need an XDP program on the veth peer.
    let mut xdp_pass = topo.router.spawn(
        "xdp-pass-standby",
        &[env!("CARGO_BIN_EXE_xdp-pass"), public.a.as_str()],
        &topo.workdir,
        true,
    )?;
    xdp_pass.wait_output("attached", Duration::from_secs(10))?;
    // The same store as the active (a shared store, as with etcd): the
    // standby's WireGuard must know the spokes the active registers.
    let state = hub.state_dir.clone();
    let bin = relayhub_bin()?;
    let active = format!("{ACTIVE_LINK}:{REPLICA_PORT}");
    let wg2 = format!("{}wg2", topo.prefix);
    let argv = [
        "env",
        "RUST_LOG=info",
        "NO_COLOR=1",
        bin.to_str().context("utf-8")?,
        "--state-dir",
        state.to_str().context("utf-8")?,
        "run",
        "--iface",
        &public.b,
        "--wg-iface",
        &wg2,
        "--metrics-addr",
        "127.0.0.1:9851",
        "--peers-port",
        "0",
        "--standby-of",
        &active,
    ];
    let mut standby = sb.spawn("relayhub-standby", &argv, &topo.workdir, false)?;
    let r = (|| -> anyhow::Result<()> {
        cmd::wait_for(
            "the standby to follow the active",
            Duration::from_secs(20),
            Duration::from_millis(50),
            || {
                if let Some(st) = standby.try_exit() {
                    anyhow::bail!("standby exited ({st}):\n{}", standby.stderr_tail(30));
                }
                Ok(standby_status(&sb)
                    .ok()
                    .filter(|r| r["connected"] == 1)
                    .map(|_| ()))
            },
        )?;
        let _keepalived = match mode {
            Mode::Keepalived => Some(start_keepalived(topo, hub, &sb, &public.b, standby.pid())?),
            _ => None,
        };
        let hub_key = hub.api_json("/v1/hub")?["public_key"]
            .as_str()
            .context("hub public key")?
            .to_string();
        let mesh = Mesh::up(topo, hub)?;
        // Every pair has pinged: wait for the standby to hold all
        // endpoints and the sessions (both directions of three pairs).
        cmd::wait_for(
            "the standby to hold the spokes' endpoints and sessions",
            Duration::from_secs(5),
            Duration::from_millis(50),
            || {
                let st = standby_status(&sb)?;
                Ok(
                    (st["endpoints"] == 3 && st["sessions"].as_u64().unwrap_or(0) >= 6)
                        .then_some(()),
                )
            },
        )?;
        // One more tick, for entries learned from the last responses.
        std::thread::sleep(Duration::from_millis(500));

        let spokes: Vec<_> = mesh
            .spokes
            .iter()
            .map(|s| s.as_ref().context("spoke up"))
            .collect::<anyhow::Result<_>>()?;
        // Handshakes between spokes; the hub's own peer is expected to
        // handshake again (with the standby's WireGuard).
        let spoke_handshakes = || -> anyhow::Result<Vec<(String, u64)>> {
            let mut all = Vec::new();
            for s in &spokes {
                all.extend(
                    s.latest_handshakes()?
                        .into_iter()
                        .filter(|(k, _)| *k != hub_key),
                );
            }
            all.sort();
            Ok(all)
        };
        if mode == Mode::SplitBrain {
            return split_brain(
                topo,
                hub,
                &sb,
                &public.a,
                &mesh,
                standby.pid(),
                spoke_handshakes,
            );
        }
        let before = spoke_handshakes()?;

        // Two flows at 200 frames/s: s1 -> s2 (s1's NAT randomises
        // ports) and s3 -> s1.
        let flows = [
            flow(topo, &mesh, 0, 1, PINGS),
            flow(topo, &mesh, 2, 0, PINGS),
        ];
        std::thread::sleep(Duration::from_millis(1500));

        // The active fails: process and link.
        let killed: Vec<u32> = topo
            .hub
            .pids()
            .into_iter()
            .filter(|p| {
                std::fs::read_to_string(format!("/proc/{p}/comm"))
                    .is_ok_and(|c| matches!(c.trim(), "relayhub" | "keepalived"))
            })
            .collect();
        anyhow::ensure!(
            !killed.is_empty(),
            "no relayhub process in the hub namespace"
        );
        // Link first: a killed keepalived could still say goodbye.
        topo.hub
            .exec(&["ip", "link", "set", "dev", &hub.nic, "down"])?;
        for &p in &killed {
            cmd::signal(p, libc::SIGKILL);
        }
        let failed = Instant::now();
        if mode == Mode::Failover {
            // keepalived's part, by hand: the address moves, notify_master.
            topo.router.exec(&[
                "ip",
                "route",
                "replace",
                &format!("{HUB_ADDR}/32"),
                "dev",
                &public.a,
            ])?;
            cmd::signal(standby.pid(), libc::SIGUSR1);
        }

        // The hub's tunnel address answers every spoke again.
        let mut tunnel = Vec::new();
        for s in &topo.spokes {
            let argv =
                s.ns.argv(&["ping", "-n", "-q", "-c", "1", "-W", "0.2", "10.88.0.1"]);
            tunnel.push(std::thread::spawn(move || -> anyhow::Result<Duration> {
                loop {
                    let out = cmd::run_timeout(&argv, Duration::from_secs(2))?;
                    if out.success() {
                        return Ok(failed.elapsed());
                    }
                    anyhow::ensure!(
                        failed.elapsed() < Duration::from_secs(10),
                        "no answer from the hub's tunnel address after 10 s"
                    );
                }
            }));
        }
        let mut hub_tunnel = Duration::ZERO;
        for t in tunnel {
            hub_tunnel = hub_tunnel.max(t.join().map_err(|_| anyhow::anyhow!("ping thread"))??);
        }
        let mut lost = 0;
        for f in flows {
            let p = f.join().map_err(|_| anyhow::anyhow!("ping thread"))??;
            eprintln!("[failover] flow: {}/{} received", p.received, p.transmitted);
            lost = lost.max(p.transmitted - p.received);
        }
        let after = spoke_handshakes()?;
        let new_handshakes = before.iter().zip(&after).filter(|(a, b)| a != b).count()
            + before.len().abs_diff(after.len());
        let st = standby_status(&sb)?;
        eprintln!("[failover] standby after the takeover: {st}");
        let gap_ms = u64::from(lost) * INTERVAL_MS;
        println!(
            "failover_gap_ms={gap_ms} handshakes_after={new_handshakes} hub_tunnel_ms={}",
            hub_tunnel.as_millis()
        );
        anyhow::ensure!(st["role"] == "active", "standby not active: {st}");
        anyhow::ensure!(st["takeovers"] == 1, "takeovers: {st}");
        anyhow::ensure!(
            new_handshakes == 0,
            "spokes handshook with each other again: {before:?} -> {after:?}"
        );
        anyhow::ensure!(gap_ms <= 2000, "spoke-to-spoke gap {gap_ms} ms");
        anyhow::ensure!(
            hub_tunnel <= Duration::from_secs(3),
            "hub tunnel back after {hub_tunnel:?}"
        );
        drop(mesh);
        Ok(())
    })();
    if r.is_err() {
        eprintln!("standby log tail:\n{}", standby.stderr_tail(40));
        eprintln!(
            "standby's WireGuard:\n{}",
            sb.exec(&["wg", "show", &wg2]).unwrap_or_default()
        );
        if let Some(s) = topo.spokes.first() {
            eprintln!(
                "s1's WireGuard:\n{}",
                s.ns.exec(&["wg", "show"]).unwrap_or_default()
            );
        }
    }
    let (status, clean) = standby.stop(Duration::from_secs(5));
    xdp_pass.stop(Duration::from_secs(2));
    drop(public);
    drop(link);
    drop(sb);
    r?;
    anyhow::ensure!(clean, "standby did not exit cleanly: {status:?}");
    Ok(())
}

/// Both hubs active at once (keepalived split brain): the standby is
/// promoted while the active runs, and the router sends s3's traffic (by
/// its NAT's address) to the standby, the rest to the active. s1 -> s2,
/// s3 -> s1 and s2 -> s3 ping at 200/s: every frame from s3 is relayed by
/// the standby, every reply to it by the active. Each hub relays only by
/// its own (slot, receiver index) tables, copies of the same state, so
/// every ping is answered (WireGuard at a spoke drops anything not meant
/// for it), the spokes do not handshake with each other again, and the
/// standby's per-spoke counters show s3's frames went to s1 and s2 only.
fn split_brain(
    topo: &Topology,
    hub: &Hub<'_>,
    sb: &Netns,
    standby_link: &str,
    mesh: &Mesh,
    standby_pid: u32,
    spoke_handshakes: impl Fn() -> anyhow::Result<Vec<(String, u64)>>,
) -> anyhow::Result<()> {
    let before = spoke_handshakes()?;
    cmd::signal(standby_pid, libc::SIGUSR1);
    cmd::wait_for(
        "the standby to be active",
        Duration::from_secs(5),
        Duration::from_millis(20),
        || Ok((standby_status(sb)?["role"] == "active").then_some(())),
    )?;
    let nat3 = topo.nats[2].wan_addr.to_string();
    topo.router.exec(&[
        "ip", "rule", "add", "from", &nat3, "lookup", "100", "pref", "100",
    ])?;
    topo.router.exec(&[
        "ip",
        "route",
        "add",
        &format!("{HUB_ADDR}/32"),
        "dev",
        standby_link,
        "table",
        "100",
    ])?;
    let sb0 = standby_metrics(sb)?;
    let act0 = hub.metrics()?;
    const N: u64 = 400;
    let flows = [
        flow(topo, mesh, 0, 1, N),
        flow(topo, mesh, 2, 0, N),
        flow(topo, mesh, 1, 2, N),
    ];
    let mut lost = 0;
    for f in flows {
        let p = f.join().map_err(|_| anyhow::anyhow!("ping thread"))??;
        eprintln!("[split] flow: {}/{} received", p.received, p.transmitted);
        lost += p.lost();
    }
    let after = spoke_handshakes()?;
    let (sb1, act1) = (standby_metrics(sb)?, hub.metrics()?);
    let d =
        |a: &relay_tests::prom::Metrics, b: &relay_tests::prom::Metrics, spoke: &str, dir: &str| {
            let l = [("spoke", spoke), ("direction", dir)];
            b.value("relayhub_spoke_relayed_packets_total", &l)
                - a.value("relayhub_spoke_relayed_packets_total", &l)
        };
    let sb_in3 = d(&sb0, &sb1, "s3", "in");
    let sb_out = [
        d(&sb0, &sb1, "s1", "out"),
        d(&sb0, &sb1, "s2", "out"),
        d(&sb0, &sb1, "s3", "out"),
    ];
    let act_in3 = d(&act0, &act1, "s3", "in");
    let act_out3 = d(&act0, &act1, "s3", "out");
    eprintln!(
        "[split] standby: from s3 {sb_in3}, to s1/s2/s3 {sb_out:?}; active: from s3 {act_in3}, to s3 {act_out3}"
    );
    println!(
        "split_brain_lost={lost} split_brain_handshakes_after={} standby_relayed={sb_in3} standby_to_s3={}",
        usize::from(before != after),
        sb_out[2]
    );
    anyhow::ensure!(lost <= 3, "{lost} pings lost with both hubs active");
    anyhow::ensure!(
        before == after,
        "spokes handshook with each other again: {before:?} -> {after:?}"
    );
    // s3's 2 x 400 frames (requests to s1, replies to s2) through the
    // standby, none of them back to s3 or anywhere else.
    anyhow::ensure!(
        sb_in3 >= 790.0,
        "the standby relayed {sb_in3} frames from s3"
    );
    anyhow::ensure!(
        sb_out[2] == 0.0,
        "the standby relayed {} frames to s3",
        sb_out[2]
    );
    anyhow::ensure!(
        sb_out[0] + sb_out[1] == sb_in3 && sb_out[0] >= 395.0 && sb_out[1] >= 395.0,
        "the standby relayed s3's {sb_in3} frames as {sb_out:?}"
    );
    // And the active relayed everything to s3, nothing from it.
    anyhow::ensure!(
        act_in3 == 0.0,
        "the active relayed {act_in3} frames from s3"
    );
    anyhow::ensure!(
        act_out3 >= 790.0,
        "the active relayed {act_out3} frames to s3"
    );
    Ok(())
}

/// The standby's own address on the segment it shares with the active
/// and the router (keepalived mode), and the active's.
const ACTIVE_OWN: &str = "198.51.100.2";
const STANDBY_OWN: &str = "198.51.100.3";

/// One L2 segment for both hubs and the router, as VRRP needs: a bridge in
/// the router namespace joins the active's link and the standby's. The
/// shared address is keepalived's to move.
fn one_segment(topo: &Topology, hub: &Hub<'_>, sb: &Netns, public: &Veth) -> anyhow::Result<()> {
    let br = format!("{}br", topo.prefix);
    let router_addr = format!("{}/24", relay_tests::topology::ROUTER_HUB_ADDR);
    let r = &topo.router;
    r.exec(&["ip", "link", "add", &br, "type", "bridge"])?;
    r.exec(&["ip", "link", "set", &br, "up"])?;
    r.exec(&[
        "ip",
        "addr",
        "del",
        &router_addr,
        "dev",
        &topo.router_hub_if,
    ])?;
    r.exec(&["ip", "link", "set", &topo.router_hub_if, "master", &br])?;
    r.exec(&["ip", "link", "set", &public.a, "master", &br])?;
    r.exec(&["ip", "addr", "add", &router_addr, "dev", &br])?;
    // keepalived removes the shared address at start (and on a backup):
    // the own address must outlive it.
    topo.hub.sysctl(
        &format!("net.ipv4.conf.{}.promote_secondaries", hub.nic),
        "1",
    )?;
    sb.sysctl(
        &format!("net.ipv4.conf.{}.promote_secondaries", public.b),
        "1",
    )?;
    topo.hub.exec(&[
        "ip",
        "addr",
        "add",
        &format!("{ACTIVE_OWN}/24"),
        "dev",
        &hub.nic,
    ])?;
    sb.exec(&[
        "ip",
        "addr",
        "add",
        &format!("{STANDBY_OWN}/24"),
        "dev",
        &public.b,
    ])?;
    sb.exec(&[
        "ip",
        "route",
        "add",
        "default",
        "via",
        &relay_tests::topology::ROUTER_HUB_ADDR.to_string(),
    ])?;
    sb.sysctl("net.ipv4.ip_forward", "1")?;
    Ok(())
}

/// keepalived on both hubs (VRRPv3, unicast on the shared segment, 100 ms
/// adverts): the active's first, as MASTER; the standby's as BACKUP, whose
/// notify_master makes the shared address the default route's source and
/// signals its relayhub (README, High availability).
fn start_keepalived(
    topo: &Topology,
    hub: &Hub<'_>,
    sb: &Netns,
    standby_if: &str,
    standby_pid: u32,
) -> anyhow::Result<Vec<relay_tests::cmd::Proc>> {
    let dir = &topo.workdir;
    let script = dir.join("relayhub-role");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\ncase \"$1\" in\nactive) ip route replace default via {} src {HUB_ADDR}\n  kill -USR1 {standby_pid} ;;\nstandby) kill -USR2 {standby_pid} ;;\nesac\n",
            relay_tests::topology::ROUTER_HUB_ADDR
        ),
    )?;
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
    let script = script.to_str().context("utf-8")?;
    let conf = |name: &str,
                iface: &str,
                state: &str,
                prio: u32,
                me: &str,
                peer: &str,
                notify: bool| {
        let notify = if notify {
            format!(
                "    notify_master \"{script} active\"\n    notify_backup \"{script} standby\"\n    notify_fault \"{script} standby\"\n"
            )
        } else {
            String::new()
        };
        let text = format!(
            "global_defs {{\n    vrrp_version 3\n    script_user root\n}}\n\
             vrrp_instance relayhub {{\n    state {state}\n    interface {iface}\n    virtual_router_id 51\n\
             priority {prio}\n    advert_int 0.1\n    unicast_src_ip {me}\n    unicast_peer {{\n        {peer}\n    }}\n\
             virtual_ipaddress {{\n        {HUB_ADDR}/24 dev {iface}\n    }}\n{notify}}}\n"
        );
        let path = dir.join(format!("keepalived-{name}.conf"));
        std::fs::write(&path, text).map(|()| path)
    };
    let mut procs = Vec::new();
    for (ns, name, iface, state, prio, me, peer, notify) in [
        (
            &topo.hub,
            "active",
            hub.nic.as_str(),
            "MASTER",
            150,
            ACTIVE_OWN,
            STANDBY_OWN,
            false,
        ),
        (
            sb,
            "standby",
            standby_if,
            "BACKUP",
            100,
            STANDBY_OWN,
            ACTIVE_OWN,
            true,
        ),
    ] {
        let path = conf(name, iface, state, prio, me, peer, notify)?;
        let pid = dir.join(format!("keepalived-{name}.pid"));
        let vrrp_pid = dir.join(format!("keepalived-{name}-vrrp.pid"));
        let mut p = ns.spawn(
            &format!("keepalived-{name}"),
            &[
                "keepalived",
                "-n",
                "-l",
                "-D",
                "-P",
                "-f",
                path.to_str().context("utf-8")?,
                "-p",
                pid.to_str().context("utf-8")?,
                "-r",
                vrrp_pid.to_str().context("utf-8")?,
            ],
            dir,
            false,
        )?;
        let want = if state == "MASTER" {
            "Entering MASTER STATE"
        } else {
            "Entering BACKUP STATE"
        };
        if let Err(e) = p.wait_output(want, Duration::from_secs(10)) {
            anyhow::bail!(
                "{e:#}\nkeepalived-{name}:\n{}\n{}",
                p.stdout(),
                p.stderr_tail(30)
            );
        }
        procs.push(p);
    }
    Ok(procs)
}
