//! Hub failover (issue 12): two hubs share one public address and one hub
//! identity, with the registry in etcd; two spoke pairs exchange 200
//! frames/s each while the active fails and the standby takes over.
//!
//! The setup, in every test here: etcd in a namespace of its own with a
//! link to each hub; the active is the topology's hub (`--store etcd://`,
//! `--replica-listen` on a private link to the standby); the standby is a
//! second relayhub in its own namespace ([`StandbyHost`]) on the same
//! store with the hub key copied in, `--standby-of` the active and
//! `--replica-listen` for when it is promoted. Three wireguard-go spokes
//! (the first behind a NAT that randomises ports) ping each other through
//! the active. Printed for every takeover as `failover_gap_ms=N
//! handshakes_after=N hub_tunnel_ms=N event=E`: the longest
//! spoke-to-spoke interruption (lost pings x 5 ms, the worse of two
//! flows), spoke-to-spoke handshakes across it (asserted 0), and until
//! every spoke pings the hub's tunnel address again (the new active's
//! WireGuard initiates to every spoke on promotion).
//!
//! - `failover_e2e`: the active's relayhub is SIGKILLed and its link goes
//!   down; keepalived's part is done by hand at once (the router's route
//!   to the shared address moves, the standby gets SIGUSR1). Then fail
//!   back (the old active comes back as a standby of the new one, follows
//!   it, and is promoted while the other is demoted), a restart of the
//!   standby (0 pings lost, it follows again), and etcd down for 60 s
//!   while both flows and a hub-tunnel flow run (0 lost; both hubs say
//!   degraded, then converge: a spoke added after etcd is back is a peer
//!   of both).
//! - `failover_netns_e2e`: the active's whole namespace is lost (every
//!   process in it SIGKILLed, the namespace deleted with its links).
//! - `keepalived_failover_e2e`: keepalived does its part: the hubs and
//!   the router share one L2 segment (a bridge in the router namespace),
//!   one keepalived per hub (VRRPv3, unicast, 100 ms adverts, the README's
//!   health check on relayhub) holds the shared address, and the standby's
//!   notify_master sets the default route's source and sends SIGUSR1. The
//!   gap then includes keepalived's detection of the dead active.
//! - `split_brain_e2e`: both hubs active at once, each getting part of
//!   the spokes' traffic (see [`split_brain`]).
//!
//! Run as root: `cargo test -p relay-tests --release --test failover_e2e -- --nocapture`
//! (the tests run one at a time).

use std::time::{Duration, Instant};

use anyhow::Context;
use relay_tests::mesh::Mesh;
use relay_tests::netns::{Netns, Ping, Veth};
use relay_tests::sessions;
use relay_tests::standby::{ACTIVE_LINK, STANDBY_LINK, StandbyHost, replica_addr};
use relay_tests::topology::{HUB_ADDR, ROUTER_HUB_ADDR};
use relay_tests::{Hub, HubKind, Topology, cmd};
use testkit::etcd::Etcd;

/// 200 frames/s per flow.
const INTERVAL_MS: u64 = 5;
/// Pings per flow around a takeover (6 s).
const PINGS: u32 = 1200;
/// The issue's limits.
const GAP_LIMIT_MS: u64 = 2000;
const HUB_TUNNEL_LIMIT: Duration = Duration::from_secs(3);
/// How long etcd stays down while traffic flows.
const ETCD_OUTAGE: Duration = Duration::from_secs(60);

/// What happens once the mesh is up.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Mode {
    /// The active's relayhub is killed and its link goes down; then fail
    /// back, restart the standby, etcd down.
    Failover,
    /// The active's whole namespace is lost.
    NamespaceLost,
    /// As Failover's first part, with keepalived moving the address and
    /// promoting.
    Keepalived,
    /// Both hubs are active and each gets part of the spokes' traffic.
    SplitBrain,
}

/// One at a time: the gap is measured in milliseconds, and two hubs plus
/// spokes per test already load a small machine.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

#[test]
fn failover_e2e() {
    scenario("failover_e2e", Mode::Failover);
}

#[test]
fn failover_netns_e2e() {
    scenario("failover_netns_e2e", Mode::NamespaceLost);
}

#[test]
fn keepalived_failover_e2e() {
    scenario("keepalived_failover_e2e", Mode::Keepalived);
}

#[test]
fn split_brain_e2e() {
    scenario("split_brain_e2e", Mode::SplitBrain);
}

/// etcd's namespace and address on each hub's link to it.
const ETCD_ACTIVE: &str = "10.254.2.1";
const ETCD_STANDBY: &str = "10.254.3.1";

fn store_url(etcd_addr: &str) -> String {
    format!("etcd://{etcd_addr}:2379")
}

/// etcd in a namespace of its own, with a link to each hub: losing the
/// active's namespace must not take the store with it.
struct Store {
    etcd: Etcd,
    _links: [Veth; 2],
    _ns: Netns,
}

impl Store {
    fn start(topo: &Topology, sb: &Netns) -> anyhow::Result<Store> {
        let p = &topo.prefix;
        let ns = Netns::new(&format!("{p}et"))?;
        let mut links = Vec::new();
        for (a, hub_ns, etcd_addr, hub_addr) in [
            ("ea", &topo.hub, ETCD_ACTIVE, "10.254.2.2"),
            ("es", sb, ETCD_STANDBY, "10.254.3.2"),
        ] {
            let v = Veth::new(&format!("{p}{a}"), hub_ns, &format!("{p}{a}x"), &ns)?;
            hub_ns.exec(&["ip", "addr", "add", &format!("{hub_addr}/30"), "dev", &v.a])?;
            ns.exec(&["ip", "addr", "add", &format!("{etcd_addr}/30"), "dev", &v.b])?;
            links.push(v);
        }
        let etcd = Etcd::start_in(&format!("{p}etcd"), &topo.workdir, Some(&ns))?;
        let links: [Veth; 2] = links.try_into().map_err(|_| anyhow::anyhow!("two links"))?;
        Ok(Store {
            etcd,
            _links: links,
            _ns: ns,
        })
    }
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
        // The private link first: the active's --replica-listen binds to it.
        let mut sb = StandbyHost::new(&topo, env!("CARGO_BIN_EXE_xdp-pass"))?;
        let mut store = Store::start(&topo, &sb.ns)?;
        let url = store_url(ETCD_ACTIVE);
        let listen = replica_addr(ACTIVE_LINK);
        let mut hub = Hub::start_with(
            &topo,
            HubKind::Relayhub,
            &["--store", &url, "--replica-listen", &listen],
        )?;
        let r = checks(&topo, &mut hub, &mut sb, &mut store, mode);
        if r.is_err() {
            eprintln!("hub log tail:\n{}", hub.log_tail(50));
            eprintln!("standby log tail:\n{}", sb.log_tail(40));
            eprintln!(
                "standby's WireGuard:\n{}",
                sb.ns
                    .exec(&["wg", "show", &sb.wg_iface])
                    .unwrap_or_default()
            );
            if let Some(s) = topo.spokes.first() {
                eprintln!(
                    "s1's WireGuard:\n{}",
                    s.ns.exec(&["wg", "show"]).unwrap_or_default()
                );
            }
        }
        if mode != Mode::NamespaceLost {
            hub.stop();
        }
        let (status, clean) = sb.stop();
        drop(hub);
        drop(sb);
        drop(store);
        drop(topo);
        r?;
        anyhow::ensure!(clean, "standby did not exit cleanly: {status}");
        Ok(prefix)
    };
    let prefix = run().unwrap_or_else(|e| panic!("{name} failed: {e:#}"));
    let left = relay_tests::topology::leftovers(&prefix);
    assert!(left.is_empty(), "cleanup left:\n{}", left.join("\n"));
}

/// `--standby-of` the other hub and `--replica-listen` for when promoted:
/// both hubs of a pair run like this after the first start.
fn pair_args<'a>(url: &'a str, me: &'a str, other: &'a str) -> [&'a str; 6] {
    [
        "--store",
        url,
        "--replica-listen",
        me,
        "--standby-of",
        other,
    ]
}

fn checks(
    topo: &Topology,
    hub: &mut Hub<'_>,
    sb: &mut StandbyHost,
    store: &mut Store,
    mode: Mode,
) -> anyhow::Result<()> {
    if mode == Mode::Keepalived {
        one_segment(topo, hub, sb)?;
    } else {
        sb.route_public(topo, true)?;
    }
    // The same store; the hub key copied as README says.
    sb.copy_state(&hub.state_dir, false)?;
    let (sb_url, sb_listen, a_listen) = (
        store_url(ETCD_STANDBY),
        replica_addr(STANDBY_LINK),
        replica_addr(ACTIVE_LINK),
    );
    sb.start(&[], &pair_args(&sb_url, &sb_listen, &a_listen))?;
    let t = sb.wait_following(0, 0)?;
    eprintln!("[failover] standby following after {t:?}");
    let _keepalived = match mode {
        Mode::Keepalived => Some(start_keepalived(
            topo,
            hub,
            sb,
            sb.pid().context("standby pid")?,
        )?),
        _ => None,
    };
    let hub_key = hub.api_json("/v1/hub")?["public_key"]
        .as_str()
        .context("hub public key")?
        .to_string();
    let mesh = Mesh::up(topo, hub)?;
    // Every pair has pinged: the standby holds all endpoints and the
    // sessions (both directions of three pairs).
    sb.wait_following(3, 6)?;
    // One more tick, for entries learned from the last responses.
    std::thread::sleep(Duration::from_millis(500));
    let spokes: Vec<_> = mesh
        .spokes
        .iter()
        .map(|s| s.as_ref().context("spoke up"))
        .collect::<anyhow::Result<_>>()?;
    // Handshakes between spokes; the hub's own peer is expected to
    // handshake again (with the new active's WireGuard).
    let spoke_handshakes =
        || relay_tests::wg::WgQuick::spoke_handshakes(spokes.iter().copied(), &hub_key);
    if mode == Mode::SplitBrain {
        return split_brain(topo, hub, sb, &mesh, spoke_handshakes);
    }

    // The active fails.
    let event = match mode {
        Mode::NamespaceLost => "namespace_lost",
        Mode::Keepalived => "keepalived",
        _ => "kill_link",
    };
    takeover(topo, &mesh, &spoke_handshakes, event, || {
        match mode {
            Mode::NamespaceLost => {
                hub.kill();
                // Everything in it, then the namespace and its links.
                for p in topo.hub.pids() {
                    cmd::signal(p, libc::SIGKILL);
                }
                cmd::run(&["ip", "netns", "del", &topo.hub.name])?;
            }
            _ => {
                let mut killed: Vec<u32> = topo
                    .hub
                    .pids()
                    .into_iter()
                    .filter(|p| {
                        std::fs::read_to_string(format!("/proc/{p}/comm"))
                            .is_ok_and(|c| c.trim() == "keepalived")
                    })
                    .collect();
                killed.extend(hub.pid());
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
                hub.kill();
            }
        }
        if mode != Mode::Keepalived {
            // keepalived's part, by hand: the address moves, notify_master.
            topo.route_hub_address(&sb.public.a)?;
            sb.signal(libc::SIGUSR1)?;
        }
        Ok(())
    })?;
    let st = sb.status()?;
    eprintln!("[failover] standby after the takeover: {st}");
    anyhow::ensure!(st["role"] == "active", "standby not active: {st}");
    anyhow::ensure!(st["takeovers"] == 1, "takeovers: {st}");
    if mode != Mode::Failover {
        return Ok(());
    }

    // Fail back: the old active comes back as a standby of the new one.
    topo.hub
        .exec(&["ip", "link", "set", "dev", &hub.nic, "up"])?;
    // The kernel dropped the default route with the link.
    topo.hub.exec(&[
        "ip",
        "route",
        "replace",
        "default",
        "via",
        &ROUTER_HUB_ADDR.to_string(),
    ])?;
    let url = store_url(ETCD_ACTIVE);
    let t0 = Instant::now();
    hub.restart(&pair_args(&url, &a_listen, &sb_listen))?;
    cmd::wait_for(
        "the old active to follow the new one",
        Duration::from_secs(20),
        Duration::from_millis(20),
        || {
            let r = &hub.api_json("/v1/hub")?["replication"];
            Ok((r["role"] == "standby"
                && r["connected"] == 1
                && r["endpoints"] == 3
                && r["sessions"].as_u64().unwrap_or(0) >= 6)
                .then_some(()))
        },
    )?;
    eprintln!(
        "[failback] the old active follows the new one {:?} after its start",
        t0.elapsed()
    );
    let sb_map = sessions::map_id(&sb.ns, &sb.public.b)?;
    const PLANTED: (u32, u32) = (1, 0x5eed_0001);
    takeover(topo, &mesh, &spoke_handshakes, "failback", || {
        // As keepalived with preemption: the returning hub takes the
        // address and is promoted, the other is demoted.
        topo.route_hub_address(&topo.router_hub_if)?;
        cmd::signal(hub.pid().context("hub pid")?, libc::SIGUSR1);
        cmd::wait_for(
            "the old active to be active again",
            Duration::from_secs(3),
            Duration::from_millis(5),
            || Ok((hub.api_json("/v1/hub")?["replication"]["role"] == "active").then_some(())),
        )?;
        // An entry only the hub being demoted has (as if its XDP program
        // had learned it in the moment both were active): following the
        // other again, it must go from its map.
        sessions::plant(&sb_map, PLANTED.0, PLANTED.1, 2)?;
        sb.signal(libc::SIGUSR2)?;
        Ok(())
    })?;
    let a = hub.api_json("/v1/hub")?["replication"].clone();
    anyhow::ensure!(
        a["role"] == "active" && a["takeovers"] == 1,
        "the old active after failing back: {a}"
    );
    let t = sb.wait_following(3, 6)?;
    eprintln!("[failback] the standby follows again {t:?} after failing back");
    let a_map = sessions::map_id(&topo.hub, &hub.nic)?;
    let (a, b) = cmd::wait_for(
        "the standby's session table to match the active's again",
        Duration::from_secs(3),
        Duration::from_millis(20),
        || {
            let (a, b) = (sessions::dump(&a_map)?, sessions::dump(&sb_map)?);
            Ok((a == b).then_some((a, b)))
        },
    )
    .with_context(|| format!("planted entry {PLANTED:x?} on the standby"))?;
    anyhow::ensure!(!b.contains_key(&PLANTED) && !a.is_empty(), "{a:?} / {b:?}");

    // Restart the standby while traffic flows: nothing is lost, and it
    // follows the active again.
    let flows = [
        flow(topo, &mesh, 0, 1, PINGS),
        flow(topo, &mesh, 2, 0, PINGS),
    ];
    std::thread::sleep(Duration::from_millis(1000));
    let t0 = Instant::now();
    let (status, clean) = sb.stop();
    anyhow::ensure!(clean, "standby did not stop cleanly: {status}");
    sb.start(&[], &pair_args(&sb_url, &sb_listen, &a_listen))?;
    sb.wait_following(3, 6)?;
    let restart = t0.elapsed();
    let lost = join_flows(flows, "standby restart")?;
    println!(
        "standby_restart_following_ms={} standby_restart_lost={lost}",
        restart.as_millis()
    );
    anyhow::ensure!(lost == 0, "{lost} pings lost while the standby restarted");

    etcd_outage(topo, hub, sb, store, &mesh)
}

/// The state the hubs must agree on lives in etcd; with etcd down both
/// keep relaying with their last state, say "degraded", and converge when
/// it is back.
fn etcd_outage(
    topo: &Topology,
    hub: &mut Hub<'_>,
    sb: &StandbyHost,
    store: &mut Store,
    mesh: &Mesh,
) -> anyhow::Result<()> {
    let secs = ETCD_OUTAGE.as_secs() + 2;
    let n = (secs * 1000 / INTERVAL_MS) as u32;
    let flows = [
        flow(topo, mesh, 0, 1, n),
        flow(topo, mesh, 2, 0, n),
        // And the hub's own tunnel, 10/s.
        topo.spokes[1]
            .ns
            .ping_in_background("10.88.0.1", (secs * 10) as u32, 0.1),
    ];
    std::thread::sleep(Duration::from_millis(1000));
    store.etcd.stop();
    let down = Instant::now();
    let store_up =
        |m: &relay_tests::prom::Metrics| m.value("relayhub_store_up", &[("backend", "etcd")]);
    let (detect, _) = cmd::wait_for(
        "both hubs to say degraded",
        Duration::from_secs(10),
        Duration::from_millis(50),
        || {
            let (code, body) = hub.health()?;
            let sb_health = sb.api("/healthz")?;
            Ok((code == 200
                && body.starts_with("degraded")
                && sb_health.starts_with("degraded")
                && store_up(&hub.metrics()?) == 0.0
                && store_up(&sb.metrics()?) == 0.0)
                .then_some(()))
        },
    )
    .map(|r| (down.elapsed(), r))?;
    eprintln!("[etcd] both hubs degraded {detect:?} after etcd stopped");
    std::thread::sleep(ETCD_OUTAGE.saturating_sub(down.elapsed()));
    store.etcd.start_again()?;
    let back = Instant::now();
    cmd::wait_for(
        "both hubs to say ok",
        Duration::from_secs(10),
        Duration::from_millis(50),
        || {
            Ok((hub.health()? == (200, "ok\n".into())
                && store_up(&hub.metrics()?) == 1.0
                && store_up(&sb.metrics()?) == 1.0)
                .then_some(()))
        },
    )?;
    let recovered = back.elapsed();
    let lost = join_flows(flows, "etcd down")?;
    // Converged: a spoke added after the outage is a peer of both hubs.
    let t0 = Instant::now();
    let text = hub.add_spoke("late")?;
    let key = relay_tests::wg::conf_public_key(&text)?;
    cmd::wait_for(
        "both hubs' WireGuard to list the spoke added after the outage",
        Duration::from_secs(10),
        Duration::from_millis(20),
        || {
            let a = topo.hub.exec(&["wg", "show", &hub.wg_iface, "peers"])?;
            let b = sb.ns.exec(&["wg", "show", &sb.wg_iface, "peers"])?;
            Ok((a.contains(&key) && b.contains(&key)).then_some(()))
        },
    )?;
    let converge = t0.elapsed();
    let hubs = hub.cli(&["store", "hubs"])?;
    println!(
        "etcd_down_s={} etcd_down_lost={lost} degraded_ms={} ok_again_ms={} converged_ms={}",
        ETCD_OUTAGE.as_secs(),
        detect.as_millis(),
        recovered.as_millis(),
        converge.as_millis()
    );
    eprintln!("[etcd] store hubs after the outage:\n{hubs}");
    anyhow::ensure!(lost == 0, "{lost} frames lost while etcd was down");
    anyhow::ensure!(
        hubs.lines().filter(|l| l.contains("wg")).count() >= 2,
        "both hubs listed in the store again:\n{hubs}"
    );
    Ok(())
}

/// Start `count` pings at 200/s from spoke `from` to spoke `to` (tunnel
/// addresses), in the background.
fn flow(
    topo: &Topology,
    mesh: &Mesh,
    from: usize,
    to: usize,
    count: u32,
) -> std::thread::JoinHandle<anyhow::Result<Ping>> {
    topo.spokes[from].ns.ping_in_background(
        &mesh.addrs[to].to_string(),
        count,
        INTERVAL_MS as f64 / 1000.0,
    )
}

/// Wait for the flows; the most any one lost.
fn join_flows(
    flows: impl IntoIterator<Item = std::thread::JoinHandle<anyhow::Result<Ping>>>,
    what: &str,
) -> anyhow::Result<u32> {
    let mut lost = 0;
    for f in flows {
        let p = f.join().map_err(|_| anyhow::anyhow!("ping thread"))??;
        eprintln!("[{what}] flow: {}/{} received", p.received, p.transmitted);
        lost = lost.max(p.lost());
    }
    Ok(lost)
}

/// Two flows at 200 frames/s (s1 -> s2, s1's NAT randomising ports, and
/// s3 -> s1); after 1.5 s `fail` makes the active fail (or hands over).
/// Measures and prints the gap, new spoke-to-spoke handshakes and the
/// hub tunnel's return, and checks them against the issue's limits.
fn takeover(
    topo: &Topology,
    mesh: &Mesh,
    spoke_handshakes: &impl Fn() -> anyhow::Result<Vec<(String, u64)>>,
    event: &str,
    fail: impl FnOnce() -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let before = spoke_handshakes()?;
    let flows = [flow(topo, mesh, 0, 1, PINGS), flow(topo, mesh, 2, 0, PINGS)];
    std::thread::sleep(Duration::from_millis(1500));
    let failed = Instant::now();
    fail()?;
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
    let lost = join_flows(flows, event)?;
    let after = spoke_handshakes()?;
    let new_handshakes = before.iter().zip(&after).filter(|(a, b)| a != b).count()
        + before.len().abs_diff(after.len());
    let gap_ms = u64::from(lost) * INTERVAL_MS;
    println!(
        "failover_gap_ms={gap_ms} handshakes_after={new_handshakes} hub_tunnel_ms={} event={event}",
        hub_tunnel.as_millis()
    );
    anyhow::ensure!(
        new_handshakes == 0,
        "{event}: spokes handshook with each other again: {before:?} -> {after:?}"
    );
    anyhow::ensure!(
        gap_ms <= GAP_LIMIT_MS,
        "{event}: spoke-to-spoke gap {gap_ms} ms"
    );
    anyhow::ensure!(
        hub_tunnel <= HUB_TUNNEL_LIMIT,
        "{event}: hub tunnel back after {hub_tunnel:?}"
    );
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
    sb: &StandbyHost,
    mesh: &Mesh,
    spoke_handshakes: impl Fn() -> anyhow::Result<Vec<(String, u64)>>,
) -> anyhow::Result<()> {
    let before = spoke_handshakes()?;
    sb.signal(libc::SIGUSR1)?;
    cmd::wait_for(
        "the standby to be active",
        Duration::from_secs(5),
        Duration::from_millis(20),
        || Ok((sb.status()?["role"] == "active").then_some(())),
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
        &sb.public.a,
        "table",
        "100",
    ])?;
    let sb0 = sb.metrics()?;
    let act0 = hub.metrics()?;
    const N: u32 = 400;
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
    let (sb1, act1) = (sb.metrics()?, hub.metrics()?);
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
fn one_segment(topo: &Topology, hub: &Hub<'_>, sb: &StandbyHost) -> anyhow::Result<()> {
    let br = format!("{}br", topo.prefix);
    let router_addr = format!("{ROUTER_HUB_ADDR}/24");
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
    r.exec(&["ip", "link", "set", &sb.public.a, "master", &br])?;
    r.exec(&["ip", "addr", "add", &router_addr, "dev", &br])?;
    // keepalived removes the shared address at start (and on a backup):
    // the own address must outlive it.
    topo.hub.sysctl(
        &format!("net.ipv4.conf.{}.promote_secondaries", hub.nic),
        "1",
    )?;
    sb.ns.sysctl(
        &format!("net.ipv4.conf.{}.promote_secondaries", sb.public.b),
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
    sb.ns.exec(&[
        "ip",
        "addr",
        "add",
        &format!("{STANDBY_OWN}/24"),
        "dev",
        &sb.public.b,
    ])?;
    sb.ns.exec(&[
        "ip",
        "route",
        "add",
        "default",
        "via",
        &ROUTER_HUB_ADDR.to_string(),
    ])?;
    sb.ns.sysctl("net.ipv4.ip_forward", "1")?;
    Ok(())
}

/// keepalived on both hubs (VRRPv3, unicast on the shared segment, 100 ms
/// adverts, relayhub's /healthz as a tracked script): the active's first,
/// as MASTER; the standby's as BACKUP, whose notify_master makes the
/// shared address the default route's source and signals its relayhub
/// (README, High availability).
fn start_keepalived(
    topo: &Topology,
    hub: &Hub<'_>,
    sb: &StandbyHost,
    standby_pid: u32,
) -> anyhow::Result<Vec<relay_tests::cmd::Proc>> {
    let dir = &topo.workdir;
    let script = dir.join("relayhub-role");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\ncase \"$1\" in\nactive) ip route replace default via {ROUTER_HUB_ADDR} src {HUB_ADDR}\n  kill -USR1 {standby_pid} ;;\nstandby) kill -USR2 {standby_pid} ;;\nesac\n"
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
                metrics: &str,
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
             vrrp_script relayhub_up {{\n    script \"/usr/bin/curl -fsS -m 1 -o /dev/null http://{metrics}/healthz\"\n    interval 1\n    fall 2\n    rise 1\n    init_fail\n}}\n\
             vrrp_instance relayhub {{\n    state {state}\n    interface {iface}\n    virtual_router_id 51\n\
             priority {prio}\n    advert_int 0.1\n    unicast_src_ip {me}\n    unicast_peer {{\n        {peer}\n    }}\n\
             virtual_ipaddress {{\n        {HUB_ADDR}/24 dev {iface}\n    }}\n    track_script {{\n        relayhub_up\n    }}\n{notify}}}\n"
        );
        let path = dir.join(format!("keepalived-{name}.conf"));
        std::fs::write(&path, text).map(|()| path)
    };
    let mut procs = Vec::new();
    for (ns, name, iface, state, prio, me, peer, metrics, notify) in [
        (
            &topo.hub,
            "active",
            hub.nic.as_str(),
            "MASTER",
            150,
            ACTIVE_OWN,
            STANDBY_OWN,
            relay_tests::hub::METRICS_ADDR,
            false,
        ),
        (
            &sb.ns,
            "standby",
            sb.public.b.as_str(),
            "BACKUP",
            100,
            STANDBY_OWN,
            ACTIVE_OWN,
            relay_tests::standby::STANDBY_METRICS,
            true,
        ),
    ] {
        let path = conf(name, iface, state, prio, me, peer, metrics, notify)?;
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
