//! Hub mesh (issue 13): three active hubs on one store, each with its own
//! address and two wireguard-go spokes behind NATs; spokes homed on
//! different hubs reach each other through XDP on both hubs.
//!
//! etcd runs in the router's namespace (every hub reaches it over its
//! link). h1 is the topology's hub (198.51.100.1); h2 and h3 are hubs in
//! namespaces of their own on links to the router (`HubHost::peer`),
//! with the hub key copied. The registry names the three hubs and homes
//! s1, s2 on h1, s3, s4 on h2, s5, s6 on h3 (`spoke add --hub`); every
//! spoke's peers have its home hub as Endpoint.
//!
//! Checks, printed as `mesh_pairs_ok=N/M` and friends:
//! - all 15 spoke pairs ping each other both ways;
//! - s1 -> s3 (h1 -> h2) 100 pings: both hubs' XDP relayed at least the
//!   200 frames (requests and replies), as mesh_out and mesh_in;
//! - no spoke-to-spoke frame on any hub's WireGuard interface (tcpdump
//!   there for the whole test: nothing between two spokes' addresses);
//! - drops by reason per peer hub: frames from h2's address to h1's mesh
//!   ports (from no spoke's mesh port; from s3's towards s5, homed on a
//!   third hub; from s3's with no session) count against h2 on h1;
//! - policy across hubs: `policy deny s2 s6` (h1, h3) stops that pair and
//!   leaves s2 -> s5 alone;
//! - h3 killed (relayhub SIGKILLed, link down) while s1..s4 ping each
//!   other: those pairs lose nothing;
//! - h4 added at runtime (`hub add`, then its relayhub) with s7 homed on
//!   it: s7 reaches s1..s4 and they reach it.
//!
//! Run as root: `cargo test -p relay-tests --release --test mesh_e2e -- --nocapture`.

use std::time::Duration;

use anyhow::Context;
use relay_tests::capture::Capture;
use relay_tests::hub::relayhub_bin;
use relay_tests::standby::HubHost;
use relay_tests::topology::{HUB_ADDR, HUB_PORT, ROUTER_HUB_ADDR, leftovers};
use relay_tests::wg::WgQuick;
use relay_tests::{Hub, HubKind, Topology, cmd, prom::Metrics};
use testkit::etcd::Etcd;

/// Spokes per hub, and which hub each spoke (s1..s6) is homed on.
const HOMES: [&str; 6] = ["h1", "h1", "h2", "h2", "h3", "h3"];

#[test]
fn mesh_e2e() {
    cmd::require_root();
    let prefix = run().unwrap_or_else(|e| panic!("mesh_e2e failed: {e:#}"));
    let left = leftovers(&prefix);
    assert!(left.is_empty(), "cleanup left:\n{}", left.join("\n"));
}

/// A mesh member that is a failover pair: h1 is the topology's hub
/// (active) and a standby with the same `--hub-name` following it; h2 a
/// peer hub. s1, s2 homed on h1, s3, s4 on h2. h1's active dies (link
/// down, SIGKILL), the address moves to the standby, which is promoted:
/// the flows across the two hubs (s1 <-> s3, s4 -> s2) continue within
/// the single hub's failover gap, h2's own pair (s3 -> s4) loses nothing,
/// and nobody handshakes again.
#[test]
fn mesh_failover_pair_e2e() {
    cmd::require_root();
    let prefix = run_pair().unwrap_or_else(|e| panic!("mesh_failover_pair_e2e failed: {e:#}"));
    let left = leftovers(&prefix);
    assert!(left.is_empty(), "cleanup left:\n{}", left.join("\n"));
}

/// Stop the topology's hub and the other hosts, after printing their
/// logs' tails when the test `failed`.
fn stop_all<'h>(failed: bool, hub: &mut Hub<'_>, hosts: impl IntoIterator<Item = &'h mut HubHost>) {
    let mut hosts: Vec<&mut HubHost> = hosts.into_iter().collect();
    if failed {
        eprintln!("h1 log tail:\n{}", hub.log_tail(40));
        for h in &hosts {
            eprintln!("{} log tail:\n{}", h.ns.name, h.log_tail(40));
        }
    }
    hub.stop();
    for h in &mut hosts {
        h.stop();
    }
}

/// `relayhub --state-dir STATE --store URL ARGS...` in the hub namespace.
fn store_cli<'a>(
    topo: &'a Topology,
    state: &'a std::path::Path,
    url: &'a str,
) -> impl Fn(&[&str]) -> anyhow::Result<String> + 'a {
    move |args: &[&str]| {
        let bin = relayhub_bin()?;
        let mut argv = vec![
            bin.to_str().context("utf-8")?,
            "--state-dir",
            state.to_str().context("utf-8")?,
            "--store",
            url,
        ];
        argv.extend_from_slice(args);
        topo.hub.output(&argv, Duration::from_secs(20))?.checked()
    }
}

/// Register `homes[i]` as spoke s{i+1}, then bring each up with its file
/// (every other spoke a peer, its home hub as Endpoint); (spokes, tunnel
/// addresses).
fn spokes_up(
    topo: &Topology,
    cli: &dyn Fn(&[&str]) -> anyhow::Result<String>,
    homes: &[&str],
) -> anyhow::Result<(Vec<WgQuick>, Vec<String>)> {
    let mut private = Vec::new();
    let mut addrs = Vec::new();
    for (i, home) in homes.iter().enumerate() {
        let text = cli(&["spoke", "add", &format!("s{}", i + 1), "--hub", home])?;
        addrs.push(relay_tests::wg::conf_address(&text)?.to_string());
        private.push(relay_tests::wg::conf_private_key(&text).context("private key")?);
    }
    let mut spokes = Vec::new();
    for (i, key) in private.iter().enumerate() {
        let conf = cli(&["spoke", "config", &format!("s{}", i + 1)])?;
        spokes.push(topo.spoke_up(i, &relay_tests::wg::with_private_key(&conf, key)?)?);
    }
    Ok((spokes, addrs))
}

fn run_pair() -> anyhow::Result<String> {
    use relay_tests::standby::{
        ACTIVE_LINK, ROUTER_PUBLIC, STANDBY_LINK, StandbyHost, replica_addr,
    };
    let topo = Topology::builder()
        .spokes(4)
        .xdp_pass(env!("CARGO_BIN_EXE_xdp-pass"))
        .build()?;
    let prefix = topo.prefix.clone();
    // The private link first: the active's --replica-listen binds to it.
    let mut sb = StandbyHost::new(&topo, env!("CARGO_BIN_EXE_xdp-pass"))?;
    let etcd = Etcd::start_in(&format!("{prefix}etcd"), &topo.workdir, Some(&topo.router))?;
    let url = |addr: &str| format!("etcd://{addr}:{}", etcd.client_port);
    let url1 = url(&ROUTER_HUB_ADDR.to_string());
    let state1 = topo.workdir.join("state");
    let cli = store_cli(&topo, &state1, &url1);
    cli(&[
        "hub",
        "add",
        "h1",
        "--endpoint",
        &format!("{HUB_ADDR}:{HUB_PORT}"),
    ])?;
    cli(&[
        "hub",
        "add",
        "h2",
        "--endpoint",
        &format!("{}:{HUB_PORT}", HubHost::peer_addr(2)),
    ])?;
    let mut hub = Hub::start_with(
        &topo,
        HubKind::Relayhub,
        &[
            "--store",
            &url1,
            "--hub-name",
            "h1",
            "--replica-listen",
            &replica_addr(ACTIVE_LINK),
        ],
    )?;
    sb.route_public(&topo, true)?;
    sb.copy_state(&hub.state_dir, false)?;
    sb.start(
        &[],
        &[
            "--store",
            &url(ROUTER_PUBLIC),
            "--hub-name",
            "h1",
            "--replica-listen",
            &replica_addr(STANDBY_LINK),
            "--standby-of",
            &replica_addr(ACTIVE_LINK),
        ],
    )?;
    let mut h2 = HubHost::peer(&topo, "h2", 2, env!("CARGO_BIN_EXE_xdp-pass"))?;
    h2.copy_state(&hub.state_dir, false)?;
    h2.start(
        &["--store", &url(&HubHost::peer_router_addr(2))],
        &["--hub-name", "h2"],
    )?;
    let r = pair_checks(&topo, &mut hub, &mut sb, &h2, &cli);
    stop_all(r.is_err(), &mut hub, [&mut sb, &mut h2]);
    drop(h2);
    drop(sb);
    drop(hub);
    drop(etcd);
    drop(cli);
    drop(topo);
    r.map(|()| prefix)
}

fn pair_checks(
    topo: &Topology,
    hub: &mut Hub<'_>,
    sb: &mut HubHost,
    h2: &HubHost,
    cli: &dyn Fn(&[&str]) -> anyhow::Result<String>,
) -> anyhow::Result<()> {
    let (spokes, addrs) = spokes_up(topo, cli, &["h1", "h1", "h2", "h2"])?;
    for (x, from) in topo.spokes.iter().take(4).enumerate() {
        for (y, to) in addrs.iter().enumerate() {
            if x != y {
                cmd::wait_for(
                    &format!("s{} to ping s{}", x + 1, y + 1),
                    Duration::from_secs(10),
                    Duration::from_millis(20),
                    || Ok(from.ns.ping_once(to).then_some(())),
                )?;
            }
        }
    }
    // The standby holds h1's two spokes' endpoints and the sessions of
    // their pairs (s1-s2 both ways, and s1, s2 with s3, s4).
    sb.wait_following(2, 10)?;
    std::thread::sleep(Duration::from_millis(500));
    // Between spokes: h1's own peer handshakes again with the standby's
    // WireGuard, as on a single hub.
    let hub_key = hub.api_json("/v1/hub")?["public_key"]
        .as_str()
        .context("hub public key")?
        .to_string();
    let handshakes = || WgQuick::spoke_handshakes(&spokes, &hub_key);
    let before = handshakes()?;
    const PINGS: u32 = 600;
    const INTERVAL: f64 = 0.01;
    let flow = |x: usize, y: usize| {
        topo.spokes[x]
            .ns
            .ping_in_background(&addrs[y], PINGS, INTERVAL)
    };
    let across = [flow(0, 2), flow(2, 0), flow(3, 1)];
    let on_h2 = flow(2, 3);
    std::thread::sleep(Duration::from_millis(1500));
    let h2_before = h2.metrics()?;
    // h1's active fails: link first, then the process; the address moves
    // to the standby and it is promoted (keepalived's part, by hand).
    topo.hub
        .exec(&["ip", "link", "set", "dev", &hub.nic, "down"])?;
    hub.kill();
    topo.route_hub_address(&sb.public.a)?;
    sb.signal(libc::SIGUSR1)?;
    let mut worst = 0;
    for f in across {
        let p = f.join().map_err(|_| anyhow::anyhow!("ping thread"))??;
        eprintln!(
            "[mesh pair] across the hubs: {}/{}",
            p.received, p.transmitted
        );
        worst = worst.max(p.lost());
    }
    let p = on_h2.join().map_err(|_| anyhow::anyhow!("ping thread"))??;
    let after = handshakes()?;
    let h2_after = h2.metrics()?;
    let gap_ms = (f64::from(worst) * INTERVAL * 1000.0) as u64;
    let st = sb.status()?;
    println!(
        "mesh_pair_gap_ms={gap_ms} mesh_pair_h2_only_lost={} mesh_pair_handshakes_after={} mesh_pair_h2_mesh_out={}",
        p.lost(),
        usize::from(before != after),
        xdp_event(&h2_after, "mesh_out") - xdp_event(&h2_before, "mesh_out")
    );
    anyhow::ensure!(st["role"] == "active", "standby not promoted: {st}");
    anyhow::ensure!(p.lost() == 0, "s3 -> s4 (both on h2) lost {}", p.lost());
    anyhow::ensure!(
        gap_ms <= 2000,
        "across the hubs: {worst} pings lost ({gap_ms} ms) at h1's failover"
    );
    anyhow::ensure!(
        before == after,
        "spokes handshook with each other again: {before:?} -> {after:?}"
    );
    // After the failover h2 still relays to h1's address, now the
    // standby: s1 <-> s3 answer.
    let p = topo.spokes[0].ns.ping(&addrs[2], 20, 0.01)?;
    anyhow::ensure!(p.lost() == 0, "s1 -> s3 after the failover: {p:?}");
    Ok(())
}

/// A hub of the mesh as the test sees it: its metrics and its WireGuard.
trait MeshMember {
    fn metrics(&self) -> anyhow::Result<Metrics>;
    fn wg_peers(&self) -> anyhow::Result<String>;
}

struct First<'a, 't>(&'a Hub<'t>, &'a Topology);

impl MeshMember for First<'_, '_> {
    fn metrics(&self) -> anyhow::Result<Metrics> {
        self.0.metrics()
    }
    fn wg_peers(&self) -> anyhow::Result<String> {
        self.1.hub.exec(&["wg", "show", &self.0.wg_iface, "peers"])
    }
}

impl MeshMember for HubHost {
    fn metrics(&self) -> anyhow::Result<Metrics> {
        HubHost::metrics(self)
    }
    fn wg_peers(&self) -> anyhow::Result<String> {
        self.ns.exec(&["wg", "show", &self.wg_iface, "peers"])
    }
}

fn xdp_relayed(m: &Metrics) -> f64 {
    m.value("relayhub_relayed_packets_total", &[("path", "xdp")])
}

fn xdp_event(m: &Metrics, event: &str) -> f64 {
    m.value("relayhub_xdp_events_total", &[("event", event)])
}

fn run() -> anyhow::Result<String> {
    let topo = Topology::builder()
        .spokes(7)
        .xdp_pass(env!("CARGO_BIN_EXE_xdp-pass"))
        .build()?;
    let prefix = topo.prefix.clone();
    let etcd = Etcd::start_in(&format!("{prefix}etcd"), &topo.workdir, Some(&topo.router))?;
    let url1 = format!("etcd://{ROUTER_HUB_ADDR}:{}", etcd.client_port);
    // The mesh before its hubs: a hub refuses a --hub-name the store lacks.
    let state1 = topo.workdir.join("state");
    let cli = store_cli(&topo, &state1, &url1);
    cli(&[
        "hub",
        "add",
        "h1",
        "--endpoint",
        &format!("{HUB_ADDR}:{HUB_PORT}"),
    ])?;
    for k in [2u8, 3] {
        let out = cli(&[
            "hub",
            "add",
            &format!("h{k}"),
            "--endpoint",
            &format!("{}:{HUB_PORT}", HubHost::peer_addr(k)),
        ])?;
        eprint!("[mesh] {out}");
    }
    let mut hub = Hub::start_with(
        &topo,
        HubKind::Relayhub,
        &["--store", &url1, "--hub-name", "h1"],
    )?;
    let mut peers = Vec::new();
    for k in [2u8, 3] {
        let mut h = HubHost::peer(&topo, &format!("h{k}"), k, env!("CARGO_BIN_EXE_xdp-pass"))?;
        h.copy_state(&hub.state_dir, false)?;
        let url = format!(
            "etcd://{}:{}",
            HubHost::peer_router_addr(k),
            etcd.client_port
        );
        h.start(&["--store", &url], &["--hub-name", &format!("h{k}")])?;
        peers.push(h);
    }
    let r = checks(&topo, &mut hub, &mut peers, &cli, &etcd);
    stop_all(r.is_err(), &mut hub, peers.iter_mut());
    drop(peers);
    drop(hub);
    drop(etcd);
    drop(cli);
    drop(topo);
    r.map(|()| prefix)
}

fn checks(
    topo: &Topology,
    hub: &mut Hub<'_>,
    peers: &mut [HubHost],
    cli: &dyn Fn(&[&str]) -> anyhow::Result<String>,
    etcd: &Etcd,
) -> anyhow::Result<()> {
    // Watch every hub's WireGuard interface for frames between spokes.
    let mut captures = vec![Capture::start_filtered(
        &topo.hub,
        &hub.wg_iface,
        &topo.workdir,
        "wg-h1",
        &["icmp"],
    )?];
    for h in peers.iter() {
        captures.push(Capture::start_filtered(
            &h.ns,
            &h.wg_iface,
            &topo.workdir,
            &format!("wg-{}", h.ns.name),
            &["icmp"],
        )?);
    }

    // The spokes, each homed on its hub.
    let mut spokes: Vec<WgQuick> = Vec::new();
    let mut keys = Vec::new();
    let mut addrs = Vec::new();
    let mut private = Vec::new();
    for (i, home) in HOMES.iter().enumerate() {
        let name = format!("s{}", i + 1);
        let text = cli(&["spoke", "add", &name, "--hub", home])?;
        keys.push(relay_tests::wg::conf_public_key(&text)?);
        addrs.push(relay_tests::wg::conf_address(&text)?.to_string());
        private.push(relay_tests::wg::conf_private_key(&text).context("private key")?);
    }
    // The files once all are registered: every other spoke as a peer,
    // each with the spoke's home hub as Endpoint.
    for (i, key) in private.iter().enumerate() {
        let name = format!("s{}", i + 1);
        let conf = cli(&["spoke", "config", &name])?;
        let home = HOMES[i].trim_start_matches('h').parse::<u8>()?;
        let ep = if home == 1 {
            format!("{HUB_ADDR}:{HUB_PORT}")
        } else {
            format!("{}:{HUB_PORT}", HubHost::peer_addr(home))
        };
        anyhow::ensure!(
            conf.matches("Endpoint = ").count() == 6
                && conf.matches(&format!("Endpoint = {ep}\n")).count() == 6,
            "s{}'s file must name its home hub {ep} for the hub and its 5 peers:\n{conf}",
            i + 1
        );
        spokes.push(topo.spoke_up(i, &relay_tests::wg::with_private_key(&conf, key)?)?);
    }
    let first = First(hub, topo);
    let members: Vec<&dyn MeshMember> = {
        let mut v: Vec<&dyn MeshMember> = vec![&first];
        v.extend(peers.iter().map(|h| h as &dyn MeshMember));
        v
    };
    // Each hub's own WireGuard knows its own spokes, and only those.
    for (i, key) in keys.iter().enumerate() {
        let home = HOMES[i].trim_start_matches('h').parse::<usize>()? - 1;
        cmd::wait_for(
            &format!("h{}'s WireGuard to list s{}", home + 1, i + 1),
            Duration::from_secs(10),
            Duration::from_millis(20),
            || {
                Ok(members[home]
                    .wg_peers()?
                    .contains(key.as_str())
                    .then_some(()))
            },
        )?;
        for (j, m) in members.iter().enumerate() {
            if j != home {
                anyhow::ensure!(
                    !m.wg_peers()?.contains(key.as_str()),
                    "h{}'s WireGuard lists s{} (homed on h{})",
                    j + 1,
                    i + 1,
                    home + 1
                );
            }
        }
    }

    // Every pair, both ways.
    let mut ok_pairs = 0;
    let mut failed = Vec::new();
    for a in 0..6 {
        for b in (a + 1)..6 {
            let mut both = true;
            for (x, y) in [(a, b), (b, a)] {
                let r = cmd::wait_for(
                    &format!("s{} to ping s{}", x + 1, y + 1),
                    Duration::from_secs(8),
                    Duration::from_millis(20),
                    || Ok(topo.spokes[x].ns.ping_once(&addrs[y]).then_some(())),
                );
                if r.is_err() {
                    both = false;
                    failed.push(format!("s{} -> s{}", x + 1, y + 1));
                }
            }
            ok_pairs += usize::from(both);
        }
    }
    println!("mesh_pairs_ok={ok_pairs}/15");
    if !failed.is_empty() {
        for (i, m) in members.iter().enumerate() {
            let text = m.metrics().map(|m| m.nonzero()).unwrap_or_default();
            eprintln!("h{} XDP events:\n{text}", i + 1);
        }
    }
    anyhow::ensure!(
        failed.is_empty(),
        "pairs that do not reach each other: {failed:?}"
    );

    // A cross-hub pair: s1 (h1) -> s3 (h2), 100 pings.
    let before: Vec<Metrics> = members[..2]
        .iter()
        .map(|m| m.metrics())
        .collect::<anyhow::Result<_>>()?;
    let p = topo.spokes[0].ns.ping(&addrs[2], 100, 0.01)?;
    anyhow::ensure!(p.lost() == 0, "s1 -> s3: {p:?}");
    let after: Vec<Metrics> = members[..2]
        .iter()
        .map(|m| m.metrics())
        .collect::<anyhow::Result<_>>()?;
    for (i, (b, a)) in before.iter().zip(&after).enumerate() {
        let relayed = xdp_relayed(a) - xdp_relayed(b);
        let (mi, mo) = (
            xdp_event(a, "mesh_in") - xdp_event(b, "mesh_in"),
            xdp_event(a, "mesh_out") - xdp_event(b, "mesh_out"),
        );
        println!(
            "mesh_xdp_relayed_h{}={relayed} mesh_in={mi} mesh_out={mo}",
            i + 1
        );
        anyhow::ensure!(
            relayed >= 200.0 && mi >= 100.0 && mo >= 100.0,
            "h{}: XDP relayed {relayed} (mesh in {mi}, out {mo}) for 100 pings s1 -> s3",
            i + 1
        );
    }

    mesh_drops(topo, hub, &peers[0])?;

    // Policy applies across hubs: s2 (h1) and s6 (h3) denied each other;
    // both hubs close their sessions, and s2 still reaches s5 (h3).
    cli(&["policy", "deny", "s2", "s6"])?;
    cmd::wait_for(
        "s2 -> s6 to stop",
        Duration::from_secs(10),
        Duration::from_millis(100),
        || Ok((!topo.spokes[1].ns.ping_once(&addrs[5])).then_some(())),
    )?;
    std::thread::sleep(Duration::from_secs(1));
    let denied = topo.spokes[1].ns.ping(&addrs[5], 5, 0.1)?;
    let allowed = topo.spokes[1].ns.ping(&addrs[4], 5, 0.1)?;
    println!(
        "mesh_policy_denied_received={} mesh_policy_allowed_received={}",
        denied.received, allowed.received
    );
    anyhow::ensure!(
        denied.received == 0 && allowed.received == 5,
        "policy across hubs: s2 -> s6 {denied:?} (denied), s2 -> s5 {allowed:?}"
    );

    // h3 dies; the pairs among s1..s4 lose nothing.
    let flows: Vec<_> = [(0, 1), (0, 2), (1, 3), (3, 0), (2, 1)]
        .iter()
        .map(|&(x, y)| topo.spokes[x].ns.ping_in_background(&addrs[y], 500, 0.01))
        .collect();
    std::thread::sleep(Duration::from_millis(1500));
    let h3 = &mut peers[1];
    let pid = h3.pid().context("h3 pid")?;
    h3.ns
        .exec(&["ip", "link", "set", "dev", &h3.public.b, "down"])?;
    cmd::signal(pid, libc::SIGKILL);
    let mut lost = 0;
    for f in flows {
        let p = f.join().map_err(|_| anyhow::anyhow!("ping thread"))??;
        lost += p.lost();
    }
    println!("mesh_hub_killed_lost={lost}");
    anyhow::ensure!(lost == 0, "{lost} pings lost among s1..s4 when h3 died");

    // h4 joins at runtime, with s7 homed on it.
    cli(&[
        "hub",
        "add",
        "h4",
        "--endpoint",
        &format!("{}:{HUB_PORT}", HubHost::peer_addr(4)),
    ])?;
    let mut h4 = HubHost::peer(topo, "h4", 4, env!("CARGO_BIN_EXE_xdp-pass"))?;
    h4.copy_state(&hub.state_dir, false)?;
    let url = format!(
        "etcd://{}:{}",
        HubHost::peer_router_addr(4),
        etcd.client_port
    );
    h4.start(&["--store", &url], &["--hub-name", "h4"])?;
    let text = cli(&["spoke", "add", "s7", "--hub", "h4"])?;
    let key7 = relay_tests::wg::conf_public_key(&text)?;
    let addr7 = relay_tests::wg::conf_address(&text)?.to_string();
    cmd::wait_for(
        "h4's WireGuard to list s7",
        Duration::from_secs(10),
        Duration::from_millis(20),
        || Ok(h4.wg_peers()?.contains(key7.as_str()).then_some(())),
    )?;
    spokes.push(topo.spoke_up(6, &text)?);
    // The others learn s7 as a peer (relayhub-sync's job on real nodes).
    for (i, s) in spokes.iter().take(4).enumerate() {
        let home = if i < 2 {
            format!("{HUB_ADDR}:{HUB_PORT}")
        } else {
            format!("{}:{HUB_PORT}", HubHost::peer_addr(2))
        };
        topo.spokes[i].ns.exec(&[
            "wg",
            "set",
            &s.ifname,
            "peer",
            &key7,
            "allowed-ips",
            &format!("{addr7}/32"),
            "endpoint",
            &home,
        ])?;
    }
    let mut reach7 = 0;
    for (i, addr) in addrs.iter().enumerate().take(4) {
        for (x, y, dst) in [(6, i, addr), (i, 6, &addr7)] {
            cmd::wait_for(
                &format!("s{} to ping s{}", x + 1, y + 1),
                Duration::from_secs(20),
                Duration::from_millis(20),
                || Ok(topo.spokes[x].ns.ping_once(dst).then_some(())),
            )?;
        }
        reach7 += 1;
    }
    println!("mesh_new_hub_pairs_ok={reach7}/4");

    // Nothing between two spokes ever reached a hub's WireGuard. (The
    // captures do see what is for a hub: s1 pings h1's tunnel address.)
    let p = topo.spokes[0].ns.ping("10.88.0.1", 3, 0.2)?;
    eprintln!("[mesh] s1 -> h1's tunnel address: {p:?}");
    anyhow::ensure!(
        p.received > 0,
        "s1 does not reach h1's tunnel address: {p:?}"
    );
    // The capture is not blind: it shows those pings (once tcpdump has
    // read them; under load that takes a while). By then it has read
    // everything before them too.
    captures[0].wait_for(
        "h1's capture to show the ping to its own tunnel address",
        Duration::from_secs(10),
        |p| p.dst.octets() == [10, 88, 0, 1],
    )?;
    let mut on_wg = Vec::new();
    for c in captures {
        let packets = c.stop()?;
        for p in packets {
            if p.src.octets()[..3] == [10, 88, 0]
                && p.dst.octets()[..3] == [10, 88, 0]
                && p.src.octets()[3] != 1
                && p.dst.octets()[3] != 1
            {
                on_wg.push(p.line);
            }
        }
    }
    println!("mesh_spoke_frames_on_hub_wg={}", on_wg.len());
    anyhow::ensure!(
        on_wg.is_empty(),
        "spoke-to-spoke frames on a hub's WireGuard:\n{}",
        on_wg.join("\n")
    );
    h4.stop();
    drop(spokes);
    let _ = etcd;
    Ok(())
}

/// Mesh frames h1 drops count against the peer hub they came from, by
/// reason: sent from h2's namespace with h2's address (raw sockets).
fn mesh_drops(topo: &Topology, h1: &Hub<'_>, h2: &HubHost) -> anyhow::Result<()> {
    use relay_tests::inject::{Datagram, send};
    let spokes = h1.api_json("/v1/spokes")?;
    let field = |name: &str, key: &str| -> anyhow::Result<u32> {
        spokes
            .as_array()
            .and_then(|a| a.iter().find(|s| s["name"] == name))
            .and_then(|s| s[key].as_u64())
            .map(|i| i as u32)
            .with_context(|| format!("{name}'s {key} in h1's /v1/spokes:\n{spokes:#}"))
    };
    // Mesh ports: s1's on h1, s3's on h2, s5's on h3 (each hub's first
    // spoke, so all the same number here: base + 1).
    let port = |name| field(name, "mesh_port").map(|p| p as u16);
    let (p1, p3, p5) = (port("s1")?, port("s3")?, port("s5")?);
    let (s3, s5) = (field("s3", "id")?, field("s5", "id")?);
    let h2_addr: std::net::Ipv4Addr = HubHost::peer_addr(2).parse()?;
    let frame = |sport: u16, dport: u16, receiver: u32| Datagram {
        src: h2_addr,
        sport,
        dst: HUB_ADDR,
        dport,
        payload: testkit::wg::transport_with_counter(receiver, 1, 16),
    };
    const N: usize = 5;
    // A session from s3 (h2) to s5 (h3) on h1, which the controller never
    // makes (a frame crosses at most its spokes' two home hubs): planted.
    const TRANSIT_RX: u32 = 0x7300_0000;
    let map = relay_tests::sessions::map_id(&topo.hub, &topo.hub_nic)?;
    relay_tests::sessions::plant(&map, s3, TRANSIT_RX, s5)?;
    let mut frames = Vec::new();
    for i in 0..N as u32 {
        // From h2's address, but from no spoke's mesh port there.
        frames.push(frame(4242, p1, 0x7100_0000 + i));
        // From s3's mesh port on h2, an index h1 has no session for.
        frames.push(frame(p3, p1, 0x7200_0000 + i));
        // From s3's, on the planted session towards a third hub.
        frames.push(frame(p3, p5, TRANSIT_RX));
    }
    let metric = |m: &Metrics, reason: &str| {
        m.get(
            "relayhub_mesh_dropped_frames_total",
            &[("peer_hub", "h2"), ("reason", reason)],
        )
        .unwrap_or(0.0)
    };
    let before = h1.metrics()?;
    let sent = send(&h2.ns, &frames)?;
    anyhow::ensure!(sent == frames.len(), "sent {sent} of {}", frames.len());
    let mut after = before.clone();
    cmd::wait_for(
        "h1 to count h2's dropped mesh frames",
        Duration::from_secs(5),
        Duration::from_millis(50),
        || {
            after = h1.metrics()?;
            let grew = |r| metric(&after, r) - metric(&before, r) >= N as f64;
            Ok((grew("source") && grew("no_session") && grew("transit")).then_some(()))
        },
    )
    .with_context(|| format!("h1's metrics:\n{}", after.nonzero()))?;
    relay_tests::sessions::remove(&map, s3, TRANSIT_RX)?;
    let d = |r| metric(&after, r) - metric(&before, r);
    println!(
        "mesh_drops_h2_source={} mesh_drops_h2_no_session={} mesh_drops_h2_transit={}",
        d("source"),
        d("no_session"),
        d("transit")
    );
    Ok(())
}
