//! Gateway services (issue 14), egress: spokes that use the hub as their
//! exit reach an "internet" host through the hub's nftables masquerade.
//!
//! Topology: the harness's (hub behind a router, spokes behind NATs), s1
//! an IPv4 spoke behind NAT44, s2 an IPv6-only spoke (its underlay to the
//! hub is IPv6; its tunnel address is IPv4), and an "internet" namespace
//! with 198.18.0.80 on a link to the router. Both spokes are added with
//! `--exit` (their hub peer gets AllowedIPs 0.0.0.0/0).
//!
//! Checks, one `key=value` line each:
//! - before the policy names them, the hub forwards nothing for them
//!   (`egress_before_policy=0/2`);
//! - `policy exit allow` each: both reach the host (`egress_ok=2/2`), and
//!   the host sees the hub's public address (`egress_masqueraded=1`);
//! - spoke to spoke stays blind: s1 -> s2 pings are relayed, none of them
//!   on the hub's WireGuard (`egress_spoke_frames_on_hub_wg=0`);
//! - `policy exit deny s2` stops s2's egress, s1's goes on
//!   (`egress_after_deny=1/2`), although the router routes the tunnel
//!   network back to the hub: the hub's forward filter stops it;
//! - the hub's table is gone when it stops (`egress_table_left=0`).
//!
//! Run as root: `cargo test -p relay-tests --release --test gateway_e2e -- --nocapture`.

use std::time::Duration;

use anyhow::Context;
use relay_tests::capture::Capture;
use relay_tests::netns::{Netns, Veth};
use relay_tests::topology::{HUB_ADDR, leftovers};
use relay_tests::wg::{self, WgQuick};
use relay_tests::{Hub, HubKind, Topology, cmd};

const INTERNET: &str = "198.18.0.80";
const INTERNET_ROUTER: &str = "198.18.0.1";

#[test]
fn gateway_egress_e2e() {
    cmd::require_root();
    let prefix = run().unwrap_or_else(|e| panic!("gateway_egress_e2e failed: {e:#}"));
    let left = leftovers(&prefix);
    assert!(left.is_empty(), "cleanup left:\n{}", left.join("\n"));
}

fn run() -> anyhow::Result<String> {
    let topo = Topology::builder()
        .spokes(1)
        .ipv6_only_spokes(1)
        .xdp_pass(env!("CARGO_BIN_EXE_xdp-pass"))
        .build()?;
    let prefix = topo.prefix.clone();
    let inet = Netns::new(&format!("{prefix}inet"))?;
    let link = Veth::new(
        &format!("{prefix}ia"),
        &topo.router,
        &format!("{prefix}ib"),
        &inet,
    )?;
    topo.router.exec(&[
        "ip",
        "addr",
        "add",
        &format!("{INTERNET_ROUTER}/24"),
        "dev",
        &link.a,
    ])?;
    inet.exec(&[
        "ip",
        "addr",
        "add",
        &format!("{INTERNET}/24"),
        "dev",
        &link.b,
    ])?;
    inet.exec(&["ip", "route", "add", "default", "via", INTERNET_ROUTER])?;
    // The router could even route answers to the tunnel network back to
    // the hub: what keeps a spoke that may not exit from getting out is
    // the hub's forward filter, not a missing route.
    topo.router.exec(&[
        "ip",
        "route",
        "add",
        "10.88.0.0/24",
        "via",
        &HUB_ADDR.to_string(),
    ])?;
    let mut hub = Hub::start(&topo, HubKind::Relayhub)?;
    let table = format!(
        "relayhub_{}",
        hub.wg_iface
            .replace(|c: char| !c.is_ascii_alphanumeric(), "_")
    );
    let r = checks(&topo, &mut hub, &inet, &link, &table);
    if r.is_err() {
        eprintln!("hub log tail:\n{}", hub.log_tail(40));
        eprintln!(
            "hub's nftables:\n{}",
            topo.hub
                .exec(&["nft", "list", "ruleset"])
                .unwrap_or_default()
        );
    }
    let report = hub.stop();
    // The table goes with the hub.
    let left = topo
        .hub
        .exec(&["nft", "list", "tables"])
        .unwrap_or_default();
    let table_left = usize::from(left.contains(&table));
    println!("egress_table_left={table_left}");
    drop(hub);
    drop(link);
    drop(inet);
    drop(topo);
    r?;
    anyhow::ensure!(report.clean_exit, "hub did not exit cleanly: {report:?}");
    anyhow::ensure!(table_left == 0, "the hub left its table behind:\n{left}");
    Ok(prefix)
}

fn checks(
    topo: &Topology,
    hub: &mut Hub<'_>,
    inet: &Netns,
    link: &Veth,
    table: &str,
) -> anyhow::Result<()> {
    let t1 = hub.cli(&["spoke", "add", "s1", "--exit", "--endpoint", &hub.endpoint])?;
    let t2 = hub.cli(&[
        "spoke",
        "add",
        "s2",
        "--exit",
        "--family",
        "ipv6",
        "--endpoint",
        &hub.endpoint6,
    ])?;
    for (name, t) in [("s1", &t1), ("s2", &t2)] {
        anyhow::ensure!(
            t.contains("AllowedIPs = 0.0.0.0/0") && t.contains("policy exit allow"),
            "{name}'s file should route everything to the hub and say the policy decides:\n{t}"
        );
    }
    // `spoke set` switches it either way and prints the file.
    let off = hub.cli(&["spoke", "set", "s1", "--no-exit"])?;
    let on = hub.cli(&["spoke", "set", "s1", "--exit"])?;
    anyhow::ensure!(
        !off.contains("0.0.0.0/0") && off.contains("AllowedIPs = 10.88.0.1/32"),
        "`spoke set s1 --no-exit`:\n{off}"
    );
    anyhow::ensure!(
        on.contains("AllowedIPs = 0.0.0.0/0"),
        "`spoke set s1 --exit`:\n{on}"
    );
    // The files with both spokes as peers.
    let conf1 = hub.current_config("s1", &t1)?;
    let key2 = wg::conf_private_key(&t2).context("s2 key")?;
    let conf2 = wg::with_private_key(&hub.cli(&["spoke", "config", "s2"])?, &key2)?;
    let keys = [wg::conf_public_key(&t1)?, wg::conf_public_key(&t2)?];
    hub.wait_for_peers(&keys)?;
    let spokes: Vec<WgQuick> = vec![topo.spoke_up(0, &conf1)?, topo.spoke_up(1, &conf2)?];
    let addr2 = wg::conf_address(&t2)?.to_string();
    for (i, s) in topo.spokes.iter().enumerate() {
        cmd::wait_for(
            &format!("s{} to reach the hub's tunnel address", i + 1),
            Duration::from_secs(10),
            Duration::from_millis(50),
            || Ok(s.ns.ping_once("10.88.0.1").then_some(())),
        )?;
    }

    // Not exit users yet: the hub forwards nothing for them.
    let before = topo
        .spokes
        .iter()
        .filter(|s| {
            s.ns.ping("198.18.0.80", 2, 0.2)
                .is_ok_and(|p| p.received > 0)
        })
        .count();
    println!("egress_before_policy={before}/2");
    anyhow::ensure!(
        before == 0,
        "{before} spokes reached the internet host before the policy let them"
    );

    let capture = Capture::start_filtered(inet, &link.b, &topo.workdir, "inet", &["icmp"])?;
    hub.cli(&["policy", "exit", "allow", "s1"])?;
    let out = hub.cli(&["policy", "exit", "allow", "s2"])?;
    anyhow::ensure!(out.contains("exit through the hub: s1 s2"), "{out}");
    let mut ok = 0;
    for (i, s) in topo.spokes.iter().enumerate() {
        let r = cmd::wait_for(
            &format!("s{} to reach {INTERNET} through the hub", i + 1),
            Duration::from_secs(10),
            Duration::from_millis(100),
            || Ok(s.ns.ping_once(INTERNET).then_some(())),
        );
        match r {
            Ok(()) => ok += 1,
            Err(e) => eprintln!("[egress] {e:#}"),
        }
    }
    println!("egress_ok={ok}/2");
    let nft = topo.hub.exec(&["nft", "list", "table", "inet", table])?;
    anyhow::ensure!(
        ok == 2,
        "egress through the hub: {ok}/2; the hub's table:\n{nft}"
    );
    // What the host saw: the hub's public address, never a tunnel address.
    capture.wait_for(
        "the internet host to see the hub's address",
        Duration::from_secs(10),
        |p| p.src == HUB_ADDR,
    )?;
    let seen = capture.stop()?;
    let tunnel = seen
        .iter()
        .filter(|p| p.src.octets()[..2] == [10, 88])
        .count();
    println!("egress_masqueraded={}", usize::from(tunnel == 0));
    anyhow::ensure!(
        tunnel == 0,
        "{tunnel} packets reached the host from tunnel addresses"
    );

    // Spoke to spoke stays relayed, blind: never on the hub's WireGuard.
    let on_wg =
        Capture::start_filtered(&topo.hub, &hub.wg_iface, &topo.workdir, "hubwg", &["icmp"])?;
    cmd::wait_for(
        "s1 to reach s2",
        Duration::from_secs(10),
        Duration::from_millis(50),
        || Ok(topo.spokes[0].ns.ping_once(&addr2).then_some(())),
    )?;
    let p = topo.spokes[0].ns.ping(&addr2, 10, 0.05)?;
    anyhow::ensure!(p.lost() == 0, "s1 -> s2: {p:?}");
    // The capture is not blind: s1's ping to the hub shows there.
    let _ = topo.spokes[0].ns.ping("10.88.0.1", 2, 0.1)?;
    on_wg.wait_for(
        "the hub's WireGuard capture to show s1's ping to the hub",
        Duration::from_secs(10),
        |p| p.dst.octets() == [10, 88, 0, 1],
    )?;
    let between = on_wg
        .stop()?
        .into_iter()
        .filter(|p| p.src.octets()[..2] == [10, 88] && p.dst.octets()[..2] == [10, 88])
        .filter(|p| p.src.octets()[3] != 1 && p.dst.octets()[3] != 1)
        .count();
    println!("egress_spoke_frames_on_hub_wg={between}");
    anyhow::ensure!(
        between == 0,
        "{between} spoke-to-spoke packets on the hub's WireGuard"
    );

    // s2 is no exit user any more: its egress stops, s1's goes on.
    hub.cli(&["policy", "exit", "deny", "s2"])?;
    cmd::wait_for(
        "s2's egress to stop",
        Duration::from_secs(10),
        Duration::from_millis(100),
        || Ok((!topo.spokes[1].ns.ping_once(INTERNET)).then_some(())),
    )?;
    let after = topo
        .spokes
        .iter()
        .filter(|s| s.ns.ping(INTERNET, 2, 0.2).is_ok_and(|p| p.received > 0))
        .count();
    println!("egress_after_deny={after}/2");
    anyhow::ensure!(
        after == 1 && topo.spokes[0].ns.ping_once(INTERNET),
        "after `policy exit deny s2`: {after}/2 reach the host (want s1 only)"
    );
    drop(spokes);
    Ok(())
}
