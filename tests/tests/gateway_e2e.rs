//! Gateway services (issue 14). Two tests, side by side:
//!
//! `gateway_egress_e2e`: spokes that use the hub as their exit reach an
//! "internet" host through the hub's nftables masquerade. The hub runs
//! with `--network6 fd88::/96` (IPv6 twins of the tunnel addresses). s1
//! is an IPv4 spoke behind NAT44, s2 an IPv6-only spoke (its underlay to
//! the hub is IPv6), the "internet" namespace has 198.18.0.80 and
//! 2001:db8:18::80 on a link to the router. Both spokes are added with
//! `--exit` (their hub peer gets AllowedIPs 0.0.0.0/0, ::/0). Checks:
//! - before the policy names them, the hub forwards nothing for them
//!   (`egress_before_policy=0/2`);
//! - `policy exit allow` each: both reach both hosts (`egress_ok=2/2`,
//!   `egress6_ok=2/2`), which see only the hub's public addresses
//!   (`egress_masqueraded=1`, `egress6_masqueraded=1`);
//! - spoke to spoke stays blind: s1 -> s2 pings are relayed, over IPv4
//!   and their IPv6 twins (`egress_spoke6_ok=1`), none of them on the
//!   hub's WireGuard (`egress_spoke_frames_on_hub_wg=0`); DNS answers
//!   AAAA with the twins (`dns_aaaa_ok=1`); relayhub-sync reads the peer
//!   list with twins and changes nothing (`egress_sync6_unchanged=1`);
//! - `policy exit deny s2` stops s2's egress, s1's goes on
//!   (`egress_after_deny=1/2`), although the router routes the tunnel
//!   network back to the hub: the hub's forward filter stops it;
//! - the hub's table is gone when it stops (`egress_table_left=0`).
//!
//! `gateway_services_e2e`: published services and names (see there).
//!
//! Run as root: `cargo test -p relay-tests --release --test gateway_e2e -- --nocapture`.

use std::time::Duration;

use anyhow::Context;
use relay_tests::capture::Capture;
use relay_tests::netns::{Netns, Veth};
use relay_tests::topology::{HUB_ADDR, HUB_ADDR6, leftovers};
use relay_tests::wg::{self, WgQuick};
use relay_tests::{Hub, HubKind, Topology, cmd};

const INTERNET: &str = "198.18.0.80";
const INTERNET_ROUTER: &str = "198.18.0.1";
const INTERNET6: &str = "2001:db8:18::80";
const INTERNET6_ROUTER: &str = "2001:db8:18::1";
/// The tunnel's IPv6 prefix in the egress test (`--network6`).
const NETWORK6: &str = "fd88::/96";

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
    let (inet, link) = internet(&topo)?;
    // IPv6 inside the tunnel: exit spokes route ::/0 to the hub as well.
    let mut hub = Hub::start_with(&topo, HubKind::Relayhub, &["--network6", NETWORK6])?;
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

/// An "internet" namespace with [`INTERNET`] on a link to the router.
/// The router even routes the tunnel network to the hub: what keeps a
/// spoke that may not exit from getting out (and the internet from
/// getting in) is the hub's filter, not a missing route.
fn internet(topo: &Topology) -> anyhow::Result<(Netns, Veth)> {
    let prefix = &topo.prefix;
    let inet = Netns::new(&format!("{prefix}inet"))?;
    let link = Veth::new(
        &format!("{prefix}ia"),
        &topo.router,
        &format!("{prefix}ib"),
        &inet,
    )?;
    let router_addr = format!("{INTERNET_ROUTER}/24");
    topo.router
        .exec(&["ip", "addr", "add", &router_addr, "dev", &link.a])?;
    let addr = format!("{INTERNET}/24");
    inet.exec(&["ip", "addr", "add", &addr, "dev", &link.b])?;
    inet.exec(&["ip", "route", "add", "default", "via", INTERNET_ROUTER])?;
    let router6 = format!("{INTERNET6_ROUTER}/64");
    topo.router
        .exec(&["ip", "-6", "addr", "add", &router6, "dev", &link.a, "nodad"])?;
    let addr6 = format!("{INTERNET6}/64");
    inet.exec(&["ip", "-6", "addr", "add", &addr6, "dev", &link.b, "nodad"])?;
    inet.exec(&[
        "ip",
        "-6",
        "route",
        "add",
        "default",
        "via",
        INTERNET6_ROUTER,
    ])?;
    let hub = HUB_ADDR.to_string();
    topo.router
        .exec(&["ip", "route", "add", "10.88.0.0/24", "via", &hub])?;
    Ok((inet, link))
}

/// How many spokes reach `dst` through the hub (each given 10 s).
fn reaching(topo: &Topology, dst: &str) -> usize {
    let mut ok = 0;
    for (i, s) in topo.spokes.iter().enumerate() {
        let r = cmd::wait_for(
            &format!("s{} to reach {dst} through the hub", i + 1),
            Duration::from_secs(10),
            Duration::from_millis(100),
            || Ok(s.ns.ping_once(dst).then_some(())),
        );
        match r {
            Ok(()) => ok += 1,
            Err(e) => eprintln!("[egress] {e:#}"),
        }
    }
    ok
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
            t.contains("AllowedIPs = 0.0.0.0/0, ::/0") && t.contains("policy exit allow"),
            "{name}'s file should route everything to the hub and say the policy decides:\n{t}"
        );
    }
    // `spoke set` switches it either way and prints the file.
    let off = hub.cli(&["spoke", "set", "s1", "--no-exit"])?;
    let on = hub.cli(&["spoke", "set", "s1", "--exit"])?;
    anyhow::ensure!(
        !off.contains("0.0.0.0/0") && off.contains("AllowedIPs = 10.88.0.1/32, fd88::a58:1/128"),
        "`spoke set s1 --no-exit`:\n{off}"
    );
    anyhow::ensure!(
        on.contains("AllowedIPs = 0.0.0.0/0, ::/0"),
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
            [INTERNET, INTERNET6]
                .iter()
                .any(|dst| s.ns.ping(dst, 2, 0.2).is_ok_and(|p| p.received > 0))
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
    let ok = reaching(topo, INTERNET);
    println!("egress_ok={ok}/2");
    let nft = topo.hub.exec(&["nft", "list", "table", "inet", table])?;
    anyhow::ensure!(
        ok == 2,
        "egress through the hub: {ok}/2; the hub's table:\n{nft}"
    );
    // IPv6 too (::/0 to the hub, masqueraded to the hub's IPv6 address):
    // the IPv4 spoke behind NAT44 reaches an IPv6 host.
    let capture6 = Capture::start_filtered(inet, &link.b, &topo.workdir, "inet6", &["icmp6"])?;
    let ok6 = reaching(topo, INTERNET6);
    println!("egress6_ok={ok6}/2");
    anyhow::ensure!(
        ok6 == 2,
        "IPv6 egress through the hub: {ok6}/2; the hub's table:\n{nft}"
    );
    let hub6 = format!("IP6 {HUB_ADDR6} > {INTERNET6}");
    cmd::wait_for(
        "the IPv6 host to see the hub's address",
        Duration::from_secs(10),
        Duration::from_millis(100),
        || {
            let _ = topo.spokes[0].ns.ping_once(INTERNET6);
            Ok(capture6.text()?.contains(&hub6).then_some(()))
        },
    )?;
    let text6 = capture6.text()?;
    capture6.finish();
    let from_hub6 = text6.contains(&hub6);
    let from_tunnel6 = text6.contains("IP6 fd88:");
    println!(
        "egress6_masqueraded={}",
        u8::from(from_hub6 && !from_tunnel6)
    );
    anyhow::ensure!(
        from_hub6 && !from_tunnel6,
        "the IPv6 host should see only the hub's address:\n{text6}"
    );
    // What the host saw: the hub's public address, never a tunnel address.
    // (Pinging on while waiting: under load tcpdump has been seen to miss
    // the first echo requests although it was already listening.)
    cmd::wait_for(
        "the internet host to see the hub's address",
        Duration::from_secs(10),
        Duration::from_millis(100),
        || {
            let _ = topo.spokes[0].ns.ping_once(INTERNET);
            Ok(capture
                .so_far()?
                .iter()
                .any(|p| p.src == HUB_ADDR)
                .then_some(()))
        },
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
    // And between their IPv6 twins, relayed the same way.
    let twin2 = NETWORK6
        .parse::<relay_user::core::registry::Net6>()
        .map_err(anyhow::Error::msg)?
        .host(addr2.parse()?)
        .to_string();
    let p6 = topo.spokes[0].ns.ping(&twin2, 5, 0.05)?;
    println!("egress_spoke6_ok={}", u8::from(p6.lost() == 0));
    anyhow::ensure!(p6.lost() == 0, "s1 -> s2 over IPv6 twins: {p6:?}");
    // The hub's DNS answers AAAA with the twins.
    let aaaa = probe(
        &topo.spokes[0].ns,
        &["dns", &format!("s2.{ZONE}"), "10.88.0.1", "AAAA"],
    );
    let want = format!("NOERROR aa {twin2}");
    println!("dns_aaaa_ok={}", u8::from(aaaa.as_deref() == Some(&want)));
    anyhow::ensure!(aaaa.as_deref() == Some(&want), "AAAA s2: {aaaa:?}");
    // relayhub-sync reads the peer list with the twins and finds s1's
    // interface as it should be (nothing to change, so no churn).
    let script = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../contrib/spoke/relayhub-sync")
        .canonicalize()?;
    let script = script.to_str().context("utf-8 path")?;
    let out = topo.spokes[0]
        .ns
        .output(&["sh", script, &spokes[0].ifname], Duration::from_secs(40))?
        .checked()?;
    let quiet = out.contains("added 0, changed 0, removed 0, unchanged 1");
    println!("egress_sync6_unchanged={}", u8::from(quiet));
    anyhow::ensure!(quiet, "relayhub-sync on s1 with IPv6 twins:\n{out}");
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

/// Published services and names (issue 14): a client on the "internet"
/// reaches a TCP and a UDP service on the hub's address, spread over two
/// spoke backends; a backend that dies is out within 5 s and comes back;
/// spokes resolve each other's names at the hub.
///
/// Topology: s1 and s2 (IPv4 behind NAT) run the backends on their tunnel
/// addresses; s3 is IPv6-only. Prints `publish_*` and `dns_*` lines.
#[test]
fn gateway_services_e2e() {
    cmd::require_root();
    let prefix = services().unwrap_or_else(|e| panic!("gateway_services_e2e failed: {e:#}"));
    let left = leftovers(&prefix);
    assert!(left.is_empty(), "cleanup left:\n{}", left.join("\n"));
}

const NETPROBE: &str = env!("CARGO_BIN_EXE_netprobe");
const ZONE: &str = "relayhub.internal";

fn services() -> anyhow::Result<String> {
    let topo = Topology::builder()
        .spokes(2)
        .ipv6_only_spokes(1)
        .xdp_pass(env!("CARGO_BIN_EXE_xdp-pass"))
        .build()?;
    let prefix = topo.prefix.clone();
    let (inet, link) = internet(&topo)?;
    let mut hub = Hub::start(&topo, HubKind::Relayhub)?;
    let r = service_checks(&topo, &mut hub, &inet);
    if r.is_err() {
        eprintln!("hub log tail:\n{}", hub.log_tail(60));
        eprintln!(
            "/v1/services: {}",
            hub.api_json("/v1/services")
                .map(|j| j.to_string())
                .unwrap_or_default()
        );
    }
    let report = hub.stop();
    drop(hub);
    drop(link);
    drop(inet);
    drop(topo);
    r?;
    anyhow::ensure!(report.clean_exit, "hub did not exit cleanly: {report:?}");
    Ok(prefix)
}

/// `netprobe ARGS` in `ns`: its output, or `None` if it failed.
fn probe(ns: &Netns, args: &[&str]) -> Option<String> {
    let mut argv = vec![NETPROBE];
    argv.extend_from_slice(args);
    ns.output(&argv, Duration::from_secs(10))
        .ok()
        .filter(|o| o.success())
        .map(|o| o.stdout.trim().to_owned())
}

/// Each backend's state in `/v1/services` for `service`.
fn backend_states(hub: &Hub<'_>, service: &str) -> anyhow::Result<Vec<(String, String)>> {
    let j = hub.api_json("/v1/services")?;
    let svc = j
        .as_array()
        .and_then(|a| a.iter().find(|s| s["name"] == service))
        .with_context(|| format!("{service} not in /v1/services: {j}"))?;
    Ok(svc["backends"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|b| {
            (
                b["backend"].as_str().unwrap_or("").to_owned(),
                b["state"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect())
}

fn wait_state(hub: &Hub<'_>, service: &str, backend: &str, state: &str) -> anyhow::Result<()> {
    cmd::wait_for(
        &format!("{service}'s backend {backend} to be {state}"),
        Duration::from_secs(15),
        Duration::from_millis(50),
        || {
            Ok(backend_states(hub, service)?
                .iter()
                .any(|(b, s)| b == backend && s == state)
                .then_some(()))
        },
    )
}

/// `n` connections from the internet to the hub's TCP service: who
/// answered each (`None`: the connection failed).
fn tcp_clients(inet: &Netns, n: usize) -> Vec<Option<String>> {
    let to = format!("{HUB_ADDR}:8080");
    (0..n)
        .map(|_| probe(inet, &["tcp-get", &to, "5000"]))
        .collect()
}

fn service_checks(topo: &Topology, hub: &mut Hub<'_>, inet: &Netns) -> anyhow::Result<()> {
    let t1 = hub.cli(&["spoke", "add", "s1", "--endpoint", &hub.endpoint])?;
    let t2 = hub.cli(&["spoke", "add", "s2", "--endpoint", &hub.endpoint])?;
    let t3 = hub.cli(&[
        "spoke",
        "add",
        "s3",
        "--family",
        "ipv6",
        "--endpoint",
        &hub.endpoint6,
    ])?;
    // A DNS line only when asked for.
    let plain = hub.cli(&["spoke", "config", "s1"])?;
    let with = hub.cli(&["spoke", "config", "s1", "--dns"])?;
    anyhow::ensure!(
        !plain.contains("DNS") && with.contains(&format!("DNS = 10.88.0.1, {ZONE}\n")),
        "spoke config --dns:\n{with}"
    );
    let conf = |name: &str, t: &str| -> anyhow::Result<String> {
        let key = wg::conf_private_key(t).context("key")?;
        wg::with_private_key(&hub.cli(&["spoke", "config", name])?, &key)
    };
    let confs = [conf("s1", &t1)?, conf("s2", &t2)?, conf("s3", &t3)?];
    let keys = [
        wg::conf_public_key(&t1)?,
        wg::conf_public_key(&t2)?,
        wg::conf_public_key(&t3)?,
    ];
    hub.wait_for_peers(&keys)?;
    let spokes: Vec<WgQuick> = (0..3)
        .map(|i| topo.spoke_up(i, &confs[i]))
        .collect::<anyhow::Result<_>>()?;
    let addrs: Vec<String> = spokes
        .iter()
        .map(|s| s.address().map(|a| a.to_string()))
        .collect::<anyhow::Result<_>>()?;
    for (i, s) in topo.spokes.iter().enumerate() {
        cmd::wait_for(
            &format!("s{} to reach the hub's tunnel address", i + 1),
            Duration::from_secs(10),
            Duration::from_millis(50),
            || Ok(s.ns.ping_once("10.88.0.1").then_some(())),
        )?;
    }

    // Backends on s1 and s2's tunnel addresses: each answers its name.
    let serve = |i: usize, what: &str, port: u16| {
        topo.spokes[i].ns.spawn(
            &format!("{}-{what}-s{}", topo.prefix, i + 1),
            &[
                NETPROBE,
                &format!("serve-{what}"),
                &format!("{}:{port}", addrs[i]),
                &format!("s{}", i + 1),
            ],
            &topo.workdir,
            false,
        )
    };
    let mut tcp = vec![serve(0, "tcp", 8080)?, serve(1, "tcp", 8080)?];
    let _udp = [serve(0, "udp", 5300)?, serve(1, "udp", 5300)?];
    hub.cli(&[
        "publish", "add", "web", "--listen", "tcp/8080", "--to", "s1:8080", "--to", "s2:8080",
    ])?;
    hub.cli(&[
        "publish",
        "add",
        "echo",
        "--listen",
        "udp/5300",
        "--to",
        "s1:5300",
        "--to",
        "s2:5300",
        "--udp-probe",
        "70696e67",
    ])?;
    // A backend must be a spoke, and the list shows what was published.
    let bad = hub.cli(&["publish", "add", "x", "--listen", "tcp/1", "--to", "nope:1"]);
    anyhow::ensure!(bad.is_err(), "a backend that is no spoke was accepted");
    for svc in ["web", "echo"] {
        for b in ["s1", "s2"] {
            let port = if svc == "web" { 8080 } else { 5300 };
            wait_state(hub, svc, &format!("{b}:{port}"), "up")?;
        }
    }
    let list = hub.cli(&["publish", "list"])?;
    anyhow::ensure!(
        list.contains("web") && list.contains("s2:5300") && list.contains(" up "),
        "publish list:\n{list}"
    );

    // Load balanced: connections from the internet spread over both.
    let answers = tcp_clients(inet, 12);
    let used: std::collections::BTreeSet<&str> =
        answers.iter().flatten().map(String::as_str).collect();
    let failed = answers.iter().filter(|a| a.is_none()).count();
    println!("publish_backends_used={}", used.len());
    anyhow::ensure!(
        used.len() == 2 && failed == 0,
        "12 connections: {answers:?}"
    );
    let udp_to = format!("{HUB_ADDR}:5300");
    let udp: std::collections::BTreeSet<String> = (0..8)
        .filter_map(|_| probe(inet, &["udp-get", &udp_to]))
        .collect();
    println!("publish_udp_backends_used={}", udp.len());
    anyhow::ensure!(udp.len() == 2, "UDP answers from {udp:?}");
    // Nothing else of the spokes is reachable from the internet: not
    // another port of the hub, not a backend's port directly (routed to
    // the hub by the router, and forwarded by the hub's kernel: the
    // spoke's WireGuard takes from the hub only what comes from the hub's
    // tunnel address, as relayhub's files say).
    topo.hub.sysctl("net.ipv4.ip_forward", "1")?;
    let stray = [
        probe(inet, &["tcp-get", &format!("{HUB_ADDR}:8081"), "1000"]),
        probe(inet, &["tcp-get", &format!("{}:8080", addrs[0]), "1000"]),
    ]
    .iter()
    .flatten()
    .count();
    println!("publish_unpublished_reachable={stray}");
    anyhow::ensure!(stray == 0, "{stray} unpublished paths answered");

    // Names: every spoke resolves the others and the service.
    let mut asked = 0;
    let mut ok = 0;
    for (i, s) in topo.spokes.iter().enumerate() {
        for (j, want) in addrs.iter().enumerate() {
            if i == j {
                continue;
            }
            asked += 1;
            let name = format!("s{}.{ZONE}", j + 1);
            let got = probe(&s.ns, &["dns", &name, "10.88.0.1"]);
            if got.as_deref() == Some(&format!("NOERROR aa {want}")) {
                ok += 1;
            } else {
                eprintln!("[dns] s{} asking {name}: {got:?}", i + 1);
            }
        }
        asked += 1;
        let got = probe(&s.ns, &["dns", &format!("web.{ZONE}"), "10.88.0.1"]);
        if got.as_deref() == Some("NOERROR aa 10.88.0.1") {
            ok += 1;
        } else {
            eprintln!("[dns] s{} asking web: {got:?}", i + 1);
        }
    }
    println!("dns_ok={ok}/{asked}");
    anyhow::ensure!(ok == asked, "names resolved: {ok}/{asked}");
    // Authoritative for its zone only, never a resolver; not on the
    // internet side at all.
    let s1 = &topo.spokes[0].ns;
    let outside = probe(s1, &["dns", "example.com", "10.88.0.1"]);
    let unknown = probe(s1, &["dns", &format!("nope.{ZONE}"), "10.88.0.1"]);
    let public = probe(inet, &["dns", &format!("s1.{ZONE}"), &HUB_ADDR.to_string()]);
    println!(
        "dns_outside_refused={} dns_unknown_nxdomain={} dns_open_to_internet={}",
        u8::from(outside.as_deref() == Some("REFUSED")),
        u8::from(unknown.as_deref() == Some("NXDOMAIN aa")),
        u8::from(public.is_some())
    );
    anyhow::ensure!(
        outside.as_deref() == Some("REFUSED")
            && unknown.as_deref() == Some("NXDOMAIN aa")
            && public.is_none(),
        "outside: {outside:?}, unknown: {unknown:?}, from the internet: {public:?}"
    );
    // A spoke reaches the service by name through the tunnel.
    let via = probe(&topo.spokes[2].ns, &["tcp-get", "10.88.0.1:8080", "5000"]);
    anyhow::ensure!(
        via.as_deref().is_some_and(|v| v == "s1" || v == "s2"),
        "s3 -> web through the tunnel: {via:?}"
    );

    // The fast path is untouched: spoke-to-spoke frames are still relayed
    // in XDP while the services run.
    let xdp = |h: &Hub<'_>| -> anyhow::Result<f64> {
        Ok(h.metrics()?
            .get("relayhub_relayed_packets_total", &[("path", "xdp")])
            .unwrap_or(0.0))
    };
    let before = xdp(hub)?;
    cmd::wait_for(
        "s1 to reach s2",
        Duration::from_secs(10),
        Duration::from_millis(50),
        || Ok(topo.spokes[0].ns.ping_once(&addrs[1]).then_some(())),
    )?;
    let p = topo.spokes[0].ns.ping(&addrs[1], 10, 0.05)?;
    let relayed = xdp(hub)? - before;
    println!("publish_xdp_relayed={relayed}");
    anyhow::ensure!(
        p.lost() == 0 && relayed >= 20.0,
        "s1 -> s2 beside the services: {p:?}, {relayed} frames relayed in XDP"
    );

    // The backend process on s1 dies: out within 5 s, no client fails
    // meanwhile (a refused connect moves on to the next backend).
    tcp[0].stop(Duration::ZERO);
    let t0 = std::time::Instant::now();
    let mut during = Vec::new();
    while t0.elapsed() < Duration::from_secs(10) {
        during.extend(tcp_clients(inet, 1));
        if backend_states(hub, "web")?
            .iter()
            .any(|(b, s)| b == "s1:8080" && s == "down")
        {
            break;
        }
    }
    let out_s = t0.elapsed().as_secs_f64();
    let after = tcp_clients(inet, 6);
    let lost = during.iter().chain(&after).filter(|a| a.is_none()).count();
    println!("publish_failover_refused_s={out_s:.1} publish_failed_connections={lost}");
    anyhow::ensure!(
        out_s <= 5.0 && lost == 0 && after.iter().all(|a| a.as_deref() == Some("s2")),
        "after s1's backend died: out after {out_s:.1}s, during {during:?}, after {after:?}"
    );
    // It comes back once healthy again.
    tcp[0] = serve(0, "tcp", 8080)?;
    wait_state(hub, "web", "s1:8080", "up")?;
    let back: std::collections::BTreeSet<String> =
        tcp_clients(inet, 6).into_iter().flatten().collect();
    println!("publish_recovered={}", u8::from(back.len() == 2));
    anyhow::ensure!(back.len() == 2, "after s1 came back: {back:?}");

    // The whole node s1 dies (its WireGuard is gone: connects time out):
    // every new connection goes to s2 within 5 s.
    wg::kill_userspace_wg(&spokes[0].ifname);
    let t0 = std::time::Instant::now();
    let failover = loop {
        anyhow::ensure!(
            t0.elapsed() < Duration::from_secs(15),
            "s1 still up 15 s after its node died: {:?}",
            backend_states(hub, "web")?
        );
        if backend_states(hub, "web")?
            .iter()
            .any(|(b, s)| b == "s1:8080" && s == "down")
        {
            break t0.elapsed().as_secs_f64();
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let quick = std::time::Instant::now();
    let after = tcp_clients(inet, 6);
    let took = quick.elapsed();
    println!("publish_failover_s={failover:.1}");
    anyhow::ensure!(
        failover <= 5.0
            && after.iter().all(|a| a.as_deref() == Some("s2"))
            && took < Duration::from_secs(3),
        "node s1 died: out after {failover:.1}s; then {after:?} in {took:?}"
    );
    let m = hub.api_json("/v1/services")?;
    let metrics = hub.metrics()?;
    let conns = |b: &str| {
        metrics
            .get(
                "relayhub_service_connections_total",
                &[("service", "web"), ("backend", b)],
            )
            .unwrap_or(0.0)
    };
    anyhow::ensure!(
        conns("s1:8080") > 0.0 && conns("s2:8080") > 0.0,
        "per-backend connection counters: {m}"
    );
    hub.cli(&["publish", "remove", "web"])?;
    cmd::wait_for(
        "web to stop listening",
        Duration::from_secs(10),
        Duration::from_millis(100),
        || Ok(tcp_clients(inet, 1)[0].is_none().then_some(())),
    )?;
    drop(tcp);
    drop(spokes);
    Ok(())
}
