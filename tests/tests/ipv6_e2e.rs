//! Dual-stack end to end: an IPv4-only spoke behind NAT44 and an IPv6-only
//! spoke behind a stateful IPv6 firewall (outbound only), both stock
//! wireguard-go, the real relayhub on a dual-stack underlay. Spoke-to-spoke
//! traffic crosses families (IPv4 frame in, IPv6 frame out and back) and
//! must be relayed by XDP; with `--cross-family-path userspace` (what a
//! driver refusing `bpf_xdp_adjust_head` leads to) by the controller's
//! userspace fallback instead, and counted there. On the XDP path the hub
//! is then renumbered while running (new IPv6 address, picked up without a
//! restart), the IPv6 spoke roams (new port, then a new address: the hub's
//! endpoint for it moves and a roam is counted), and an attacker on the
//! IPv6 side sends frames with the IPv6 spoke's live receiver indices from
//! its old endpoint, its address with another port and its own address:
//! the endpoint stays, no roam is counted, traffic keeps flowing.
//!
//! Run as root: `cargo test -p relay-tests --release --test ipv6_e2e -- --nocapture`.

use std::collections::BTreeSet;
use std::net::Ipv6Addr;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use relay_tests::capture;
use relay_tests::hub::HUB_TUNNEL_ADDR;
use relay_tests::inject::{self, Datagram6};
use relay_tests::prom::Metrics;
use relay_tests::topology::HUB_PORT;
use relay_tests::wg::WgQuick;
use relay_tests::{Hub, Topology, cmd, relayhub_scenario_with};

/// Pings per direction.
const PINGS: u32 = 10;
/// iperf3 seconds per direction.
const IPERF_SECS: u32 = 3;

#[test]
fn ipv4_ipv6_cross_family_relay() {
    run("xdp");
}

#[test]
fn ipv4_ipv6_cross_family_userspace_fallback() {
    run("userspace");
}

/// `path`: the `--cross-family-path` and the `path` label of the relayed
/// counters that must grow.
fn run(path: &'static str) {
    let topo = Topology::builder()
        .spokes(1)
        .ipv6_only_spokes(1)
        .xdp_pass(env!("CARGO_BIN_EXE_xdp-pass"));
    // Roaming and spoofing run on the XDP path only.
    let topo = if path == "xdp" { topo.attacker() } else { topo };
    relayhub_scenario_with(
        &format!("ipv6_e2e ({path} path)"),
        topo,
        &["--cross-family-path", path],
        |topo, hub| {
            let p = format!("[{} dual-stack, {path} path]", topo.prefix);
            eprintln!("{p} {}", topo.check_nat_blocks_inbound(0)?);
            eprintln!("{p} {}", topo.check_firewall6_blocks_inbound(0)?);
            checks(topo, hub, &p, path)
        },
    );
}

/// The hub's new IPv6 address after renumbering (same /64).
const HUB_ADDR6_NEW: &str = "2001:db8:100::2";

/// Renumber the hub's IPv6 address while it runs: the hub must pick up the
/// new address (no restart) as the source of frames to IPv6 spokes, or the
/// IPv6 spoke's stateful firewall, which now only expects replies from the
/// new address, drops them.
fn renumber(
    topo: &Topology,
    hub: &Hub<'_>,
    p: &str,
    s1: &WgQuick,
    s2: &WgQuick,
) -> anyhow::Result<()> {
    let old = relay_tests::topology::HUB_ADDR6.to_string();
    let t = Instant::now();
    topo.hub.exec(&[
        "ip",
        "-6",
        "addr",
        "add",
        &format!("{HUB_ADDR6_NEW}/64"),
        "dev",
        &hub.nic,
        "nodad",
    ])?;
    topo.hub.exec(&[
        "ip",
        "-6",
        "addr",
        "del",
        &format!("{old}/64"),
        "dev",
        &hub.nic,
    ])?;
    cmd::wait_for(
        "the hub to log its new IPv6 address",
        Duration::from_secs(15),
        Duration::from_millis(100),
        || {
            Ok(hub
                .log()
                .lines()
                .any(|l| {
                    l.contains("addresses for cross-family relay changed")
                        && l.contains(HUB_ADDR6_NEW)
                })
                .then_some(()))
        },
    )?;
    eprintln!(
        "{p} hub renumbered {old} -> {HUB_ADDR6_NEW}, picked up after {:?}",
        t.elapsed()
    );
    let info = hub.api_json("/v1/hub")?;
    ensure!(
        info["underlay_v6"] == HUB_ADDR6_NEW,
        "/v1/hub after renumbering: {info}"
    );
    // The IPv6 spoke now dials the new address for every peer.
    let n2 = &topo.spokes[1].ns;
    let endpoint = format!("[{HUB_ADDR6_NEW}]:{}", relay_tests::topology::HUB_PORT);
    for (peer, _) in s2.endpoints()? {
        n2.exec(&[
            "wg", "set", &s2.ifname, "peer", &peer, "endpoint", &endpoint,
        ])?;
    }
    let (n1, a1, a2) = (
        &topo.spokes[0].ns,
        s1.address()?.to_string(),
        s2.address()?.to_string(),
    );
    cmd::wait_for(
        "s2 -> s1 after renumbering",
        Duration::from_secs(15),
        Duration::from_millis(100),
        || Ok(n2.ping_once(&a1).then_some(())),
    )?;
    let m0 = hub.metrics()?;
    for (ns, dst, what) in [(n1, &a2, "s1(v4) -> s2(v6)"), (n2, &a1, "s2(v6) -> s1(v4)")] {
        let r = ns.ping(dst, PINGS, 0.1)?;
        ensure!(r.lost() == 0, "{what} after renumbering: {r:?}");
        eprintln!(
            "{p} after renumbering, ping {what}: {}/{}",
            r.received, r.transmitted
        );
    }
    let m1 = hub.metrics()?;
    let d46 = family(&m1, "ipv4", "ipv6") - family(&m0, "ipv4", "ipv6");
    ensure!(
        d46 >= f64::from(PINGS),
        "v4->v6 relayed +{d46} for {PINGS} echo requests after renumbering"
    );
    roam(topo, hub, p, &a1, s2)?;
    let (old, new, rx) = roam_address(topo, hub, p, &a1)?;
    spoof(topo, hub, p, &a2, old, new, &rx)
}

/// The IPv6 spoke roams (its WireGuard port changes, as after a restart or
/// a firewall rebinding): its next frame to the hub authenticates the new
/// endpoint, and relay to and from it resumes.
fn roam(topo: &Topology, hub: &Hub<'_>, p: &str, a1: &str, s2: &WgQuick) -> anyhow::Result<()> {
    let n2 = &topo.spokes[1].ns;
    let before = spoke_endpoint(hub, "s2")?;
    n2.exec(&["wg", "set", &s2.ifname, "listen-port", "47123"])?;
    let t = Instant::now();
    // Any frame to the hub does (a keepalive would, PersistentKeepalive later).
    let _ = n2.ping_once(&HUB_TUNNEL_ADDR.to_string());
    cmd::wait_for(
        "s2 -> s1 after roaming",
        Duration::from_secs(15),
        Duration::from_millis(50),
        || Ok(n2.ping_once(a1).then_some(())),
    )?;
    let after = spoke_endpoint(hub, "s2")?;
    eprintln!(
        "{p} s2 roamed {before} -> {after}; relay resumed after {:?}",
        t.elapsed()
    );
    ensure!(
        after.ends_with(":47123") && after != before,
        "the hub's endpoint of s2 is {after} (was {before}), expected port 47123"
    );
    let r = n2.ping(a1, PINGS, 0.1)?;
    ensure!(r.lost() == 0, "s2 -> s1 after roaming: {r:?}");
    Ok(())
}

/// The IPv6 spoke's address changes (a new address in its /64 becomes its
/// source, the old one is removed), its port stays: relay resumes, the
/// hub's endpoint for it moves to the new address and a roam is counted.
/// Returns its old and new endpoint and the receiver indices it sent from
/// the new one (a capture of the hub link, as an on-path observer sees it).
fn roam_address(
    topo: &Topology,
    hub: &Hub<'_>,
    p: &str,
    a1: &str,
) -> anyhow::Result<(Endpoint6, Endpoint6, BTreeSet<u32>)> {
    let host = &topo.spokes[1];
    let n2 = &host.ns;
    let old_addr = host.lan_addr6.context("s2 is an IPv6 spoke")?;
    let new_addr = Ipv6Addr::from(u128::from(old_addr) + 1);
    let before = spoke_endpoint(hub, "s2")?;
    let old = parse_endpoint6(&before)?;
    ensure!(
        old.0 == old_addr,
        "s2's endpoint {before} is not its address"
    );
    let roams0 = roams(&hub.metrics()?, "s2");
    let sniff = topo.sniff_hub_link()?;
    n2.exec(&[
        "ip",
        "-6",
        "addr",
        "add",
        &format!("{new_addr}/64"),
        "dev",
        &host.lan_if,
        "nodad",
    ])?;
    n2.exec(&[
        "ip",
        "-6",
        "addr",
        "del",
        &format!("{old_addr}/64"),
        "dev",
        &host.lan_if,
    ])?;
    let t = Instant::now();
    let _ = n2.ping_once(&HUB_TUNNEL_ADDR.to_string());
    cmd::wait_for(
        "s2 -> s1 after s2's address changed",
        Duration::from_secs(15),
        Duration::from_millis(50),
        || Ok(n2.ping_once(a1).then_some(())),
    )?;
    let resumed = t.elapsed();
    let after = spoke_endpoint(hub, "s2")?;
    let r = n2.ping(a1, PINGS, 0.1)?;
    let d_roams = roams(&hub.metrics()?, "s2") - roams0;
    let frames = capture::read_wg_frames(&sniff.finish())?;
    eprintln!(
        "{p} s2's address {old_addr} -> {new_addr}: hub endpoint {before} -> {after}, \
         relay resumed after {resumed:?}, roams +{d_roams}"
    );
    let new = (new_addr, old.1);
    ensure!(
        parse_endpoint6(&after)? == new,
        "the hub's endpoint of s2 is {after} (was {before}), expected [{new_addr}]:{}",
        old.1
    );
    ensure!(r.lost() == 0, "s2 -> s1 after its address changed: {r:?}");
    ensure!(
        d_roams >= 1.0,
        "relayhub_spoke_roams_total{{spoke=\"s2\"}} +{d_roams} for an address change"
    );
    let src = format!("{new_addr}.{}", old.1);
    let rx: BTreeSet<u32> = frames
        .iter()
        .filter(|f| f.src == src && f.kind == 4)
        .filter_map(|f| f.receiver)
        .collect();
    ensure!(
        !rx.is_empty(),
        "sniffed no transport frame from s2's new endpoint {src}"
    );
    Ok((old, new, rx))
}

/// An attacker on the IPv6 side claims to be s2 with its live receiver
/// indices (and initiations with valid mac1s) from s2's old endpoint, from
/// its current address with another port and from the attacker's own
/// address. Every such frame must reach the hub, and none may move s2's
/// endpoint, count a roam or be relayed; s1 -> s2 keeps working.
fn spoof(
    topo: &Topology,
    hub: &Hub<'_>,
    p: &str,
    a2: &str,
    old: Endpoint6,
    current: Endpoint6,
    rx: &BTreeSet<u32>,
) -> anyhow::Result<()> {
    let att = topo.attacker.as_ref().context("no attacker host")?;
    let att6 = att.addr6.context("the attacker has no IPv6 address")?;
    let hub6: Ipv6Addr = HUB_ADDR6_NEW.parse()?;
    let keys: Vec<[u8; 32]> = hub
        .cli(&["spoke", "list"])?
        .lines()
        .skip(1)
        .filter_map(|l| inject::base64_key(l.split_whitespace().nth(2)?).ok())
        .collect();
    ensure!(
        keys.len() == 2,
        "spoke keys from `spoke list`: {}",
        keys.len()
    );
    let mut attack = Vec::new();
    let mut seed = 0;
    let sources = [old, (current.0, current.1 ^ 0x0100), (att6, current.1)];
    for &(src, sport) in &sources {
        let mut push = |payload| {
            attack.push(Datagram6 {
                src,
                sport,
                dst: hub6,
                dport: HUB_PORT,
                payload,
            })
        };
        for &r in rx {
            seed += 1;
            push(inject::transport(r, 96, seed));
            push(inject::transport(r, 32, seed));
            push(inject::cookie(r, seed));
        }
        for k in &keys {
            seed += 1;
            push(inject::initiation(k, seed, seed));
        }
    }
    let initiations = sources.len() * keys.len();
    let unknown = |m: &Metrics| {
        m.value(
            "relayhub_dropped_frames_total",
            &[("stage", "xdp"), ("reason", "unknown_source")],
        )
    };
    let before = spoke_endpoint(hub, "s2")?;
    let m0 = hub.metrics()?;
    let sniff = topo.sniff_hub_link()?;
    let n1 = &topo.spokes[0].ns;
    let (sent, injected, pings) = thread::scope(|s| -> anyhow::Result<_> {
        let ping = s.spawn(|| n1.ping(a2, 40, 0.05));
        thread::sleep(Duration::from_millis(300));
        let sent = inject::send(&att.ns, &attack)?;
        let injected = Instant::now();
        Ok((sent, injected, ping.join().expect("ping thread")?))
    })?;
    // Past the controller's hold (1.2 s) and several endpoint refreshes.
    thread::sleep(Duration::from_millis(1500).saturating_sub(injected.elapsed()));
    let m1 = hub.metrics()?;
    let still = spoke_endpoint(hub, "s2")?;
    let hub_dst = format!("{hub6}.{HUB_PORT}");
    let srcs: Vec<String> = sources
        .iter()
        .map(|(a, port)| format!("{a}.{port}"))
        .collect();
    let udp = capture::read_udp_frames(&sniff.finish())?;
    let reached = inject::marked(&udp)
        .iter()
        .filter(|f| f.dst == hub_dst && srcs.contains(&f.src))
        .count();
    let d_roams = roams(&m1, "s2") - roams(&m0, "s2");
    let d_unknown = unknown(&m1) - unknown(&m0);
    eprintln!(
        "{p} attacker sent {sent} IPv6 frames claiming to be s2 ({} receiver indices, from {srcs:?}); \
         {reached} reached the hub link; endpoint {before} -> {still}, roams +{d_roams}, \
         xdp unknown_source +{d_unknown}; s1 -> s2 meanwhile: {}/{}",
        rx.len(),
        pings.received,
        pings.transmitted
    );
    ensure!(sent == attack.len(), "injected {sent} of {}", attack.len());
    // Or the checks below would pass without having been tried.
    ensure!(
        reached == attack.len(),
        "only {reached} of {} spoofed IPv6 frames reached the hub link",
        attack.len()
    );
    ensure!(
        still == before,
        "frames claiming to be s2 moved its endpoint: {before} -> {still}"
    );
    ensure!(
        d_roams == 0.0,
        "a roam was counted for the attacker's frames"
    );
    ensure!(
        pings.lost() == 0,
        "s1 -> s2 lost pings during the attack: {pings:?}"
    );
    // Nothing of it was relayed: every non-initiation frame came from a
    // source that is no spoke's endpoint.
    let want = (attack.len() - initiations) as f64;
    ensure!(
        d_unknown >= want,
        "xdp unknown_source +{d_unknown} < {want} non-initiation frames"
    );
    Ok(())
}

/// An IPv6 endpoint: address and port.
type Endpoint6 = (Ipv6Addr, u16);

/// `[addr]:port` as /v1/spokes shows it.
fn parse_endpoint6(s: &str) -> anyhow::Result<Endpoint6> {
    let sa: std::net::SocketAddrV6 = s
        .parse()
        .with_context(|| format!("not an IPv6 endpoint: {s}"))?;
    Ok((*sa.ip(), sa.port()))
}

fn roams(m: &Metrics, spoke: &str) -> f64 {
    m.value("relayhub_spoke_roams_total", &[("spoke", spoke)])
}

/// The hub's authenticated endpoint of spoke `name` (/v1/spokes).
fn spoke_endpoint(hub: &Hub<'_>, name: &str) -> anyhow::Result<String> {
    let v = hub.api_json("/v1/spokes")?;
    v.as_array()
        .and_then(|a| a.iter().find(|s| s["name"] == name))
        .and_then(|s| s["endpoint"].as_str())
        .map(str::to_string)
        .ok_or_else(|| anyhow::anyhow!("no endpoint for {name} in /v1/spokes"))
}

fn on_path(m: &Metrics, name: &str, path: &str) -> f64 {
    m.value(name, &[("path", path)])
}

fn family(m: &Metrics, from: &str, to: &str) -> f64 {
    m.value(
        "relayhub_relayed_family_packets_total",
        &[("from", from), ("to", to)],
    )
}

fn checks(topo: &Topology, hub: &mut Hub<'_>, p: &str, path: &str) -> anyhow::Result<()> {
    let info = hub.api_json("/v1/hub")?;
    ensure!(
        info["cross_family_path"] == path
            && info["underlay_v6"] == relay_tests::topology::HUB_ADDR6.to_string()
            && info["underlay_v4"] == relay_tests::topology::HUB_ADDR.to_string(),
        "/v1/hub: {info}"
    );
    // s1: IPv4-only behind NAT44; s2: IPv6-only behind the IPv6 firewall.
    let add4 = hub.add_spoke("s1")?;
    let add6 = hub.add_spoke_ipv6("s2")?;
    let conf4 = hub.current_config("s1", &add4)?;
    let conf6 = hub.current_config("s2", &add6)?;
    let eps4 = relay_tests::wg::conf_endpoints(&conf4);
    let eps6 = relay_tests::wg::conf_endpoints(&conf6);
    ensure!(
        eps4.len() == 2 && eps4.iter().all(|e| *e == hub.endpoint),
        "s1 endpoints {eps4:?}, expected {}",
        hub.endpoint
    );
    ensure!(
        eps6.len() == 2 && eps6.iter().all(|e| *e == hub.endpoint6),
        "s2 (`spoke config` without --family) endpoints {eps6:?}, expected {}",
        hub.endpoint6
    );
    let keys: Vec<String> = [&add4, &add6]
        .iter()
        .map(|t| relay_tests::wg::conf_public_key(t))
        .collect::<anyhow::Result<_>>()?;
    hub.wait_for_peers(&keys)?;

    let s1 = topo.spoke_up(0, &conf4)?;
    let s2 = topo.spoke_up(1, &conf6)?;
    let a1 = s1.address()?;
    let a2 = s2.address()?;
    let t0 = Instant::now();
    eprintln!("{p} spokes up: s1 {a1} (IPv4 underlay), s2 {a2} (IPv6 underlay)");
    let result = traffic(topo, hub, p, path, &s1, &s2, t0);
    if result.is_err() {
        for (name, s) in [("s1", &s1), ("s2", &s2)] {
            let out = topo.spokes[if name == "s1" { 0 } else { 1 }]
                .ns
                .exec(&["wg", "show", &s.ifname])
                .unwrap_or_else(|e| format!("{e:#}"));
            eprintln!("{p} diag: wg show {name}:\n{out}");
        }
        if let Ok(m) = hub.metrics() {
            eprintln!(
                "{p} diag: nonzero hub metrics:
  {}",
                m.nonzero()
            );
        }
    }
    result
}

fn traffic(
    topo: &Topology,
    hub: &mut Hub<'_>,
    p: &str,
    path: &str,
    s1: &WgQuick,
    s2: &WgQuick,
    t0: Instant,
) -> anyhow::Result<()> {
    let (n1, n2) = (&topo.spokes[0].ns, &topo.spokes[1].ns);
    let a1 = s1.address()?.to_string();
    let a2 = s2.address()?.to_string();

    // First contact, both directions.
    for (ns, dst, what) in [(n1, &a2, "s1 -> s2"), (n2, &a1, "s2 -> s1")] {
        cmd::wait_for(
            &format!("first contact {what}"),
            Duration::from_secs(15),
            Duration::from_millis(100),
            || Ok(ns.ping_once(dst).then_some(())),
        )?;
        eprintln!("{p} first contact {what} after {:?}", t0.elapsed());
    }

    // Both spokes reach the hub's tunnel address.
    for (ns, who) in [(n1, "s1 (IPv4)"), (n2, "s2 (IPv6)")] {
        let r = ns.ping(&HUB_TUNNEL_ADDR.to_string(), PINGS, 0.1)?;
        ensure!(r.lost() == 0, "{who} -> {HUB_TUNNEL_ADDR}: {r:?}");
        eprintln!(
            "{p} {who} -> hub {HUB_TUNNEL_ADDR}: {}/{} answered",
            r.received, r.transmitted
        );
    }

    // Pings both ways across families, counted on `path`.
    let m0 = hub.metrics()?;
    let mut sent = 0;
    for (ns, dst, what) in [(n1, &a2, "s1(v4) -> s2(v6)"), (n2, &a1, "s2(v6) -> s1(v4)")] {
        let t = Instant::now();
        let r = ns.ping(dst, PINGS, 0.1)?;
        ensure!(r.lost() == 0, "{what}: {r:?}");
        sent += r.transmitted;
        eprintln!(
            "{p} ping {what}: {}/{} in {:?}",
            r.received,
            r.transmitted,
            t.elapsed()
        );
    }
    let m1 = hub.metrics()?;
    let delta = |name: &str, path: &str| on_path(&m1, name, path) - on_path(&m0, name, path);
    let d = delta("relayhub_relayed_packets_total", path);
    let d46 = family(&m1, "ipv4", "ipv6") - family(&m0, "ipv4", "ipv6");
    let d64 = family(&m1, "ipv6", "ipv4") - family(&m0, "ipv6", "ipv4");
    eprintln!("{p} {path} relayed +{d} during {sent} echo requests (v4->v6 +{d46}, v6->v4 +{d64})");
    ensure!(
        d >= 2.0 * sent as f64,
        "{path} path relayed only {d} packets for {sent} echo requests and replies"
    );
    ensure!(
        d46 >= sent as f64 && d64 >= sent as f64,
        "cross-family counters: v4->v6 +{d46}, v6->v4 +{d64} for {sent} echo requests"
    );
    let fallback = |m: &Metrics| {
        m.value(
            "relayhub_userspace_fallback_frames_total",
            &[("reason", "configured")],
        )
    };
    let dfb = fallback(&m1) - fallback(&m0);
    if path == "userspace" {
        // Every spoke-to-spoke frame went through the controller.
        let dx = delta("relayhub_relayed_packets_total", "xdp");
        eprintln!("{p} fallback frames +{dfb}, xdp relayed +{dx}");
        ensure!(dx == 0.0, "xdp relayed {dx} frames with the userspace path");
        ensure!(
            dfb >= 2.0 * sent as f64,
            "only {dfb} fallback frames for {sent} echo requests and replies"
        );
    } else {
        ensure!(dfb == 0.0, "{dfb} frames took the fallback on the xdp path");
    }
    let userspace = m1.value("relayhub_relayed_packets_total", &[("path", "userspace")]);
    eprintln!("{p} userspace (initiations routed, also across families): {userspace}");
    ensure!(
        userspace >= 1.0,
        "no initiation was routed by the controller"
    );

    // iperf3 both ways.
    for (server, client, addr, what) in [
        (1, 0, &a2, "s1(v4) -> s2(v6)"),
        (0, 1, &a1, "s2(v6) -> s1(v4)"),
    ] {
        let m0 = hub.metrics()?;
        let (bps, bytes) = topo.iperf(server, client, addr, IPERF_SECS)?;
        let m1 = hub.metrics()?;
        let db = on_path(&m1, "relayhub_relayed_bytes_total", path)
            - on_path(&m0, "relayhub_relayed_bytes_total", path);
        eprintln!(
            "{p} iperf3 {what}: {:.1} Mbit/s ({bytes} bytes; {path} relayed +{db} bytes)",
            bps / 1e6
        );
        ensure!(bps > 0.0, "iperf3 {what}: zero throughput");
        ensure!(
            db >= bytes as f64,
            "iperf3 {what} moved {bytes} bytes but the {path} path relayed only {db}"
        );
    }

    // Spokes keep the hub as every peer's endpoint, in their own family.
    for (s, want) in [(s1, &hub.endpoint), (s2, &hub.endpoint6)] {
        for (_, ep) in s.endpoints()? {
            ensure!(
                ep == *want,
                "{}: a peer endpoint moved to {ep} (expected {want})",
                s.ifname
            );
        }
    }
    if path == "xdp" {
        renumber(topo, hub, p, s1, s2)?;
    }
    let m = hub.metrics()?;
    let counters: Vec<String> = m
        .samples
        .iter()
        .filter(|s| s.name == "relayhub_xdp_events_total" && s.value != 0.0)
        .map(|s| {
            format!(
                "{}={}",
                s.labels.get("event").map(String::as_str).unwrap_or("?"),
                s.value
            )
        })
        .collect();
    eprintln!("{p} xdp counters: {}", counters.join(" "));
    let event = |c: &str| m.value("relayhub_xdp_events_total", &[("event", c)]);
    for c in [
        "adjust_head_failed",
        "no_checksum",
        "drop_too_big",
        "pass_cross_family",
    ] {
        ensure!(event(c) == 0.0, "xdp counter {c} = {}", event(c));
    }
    // Under iperf3 the fallback may shed load like a full NIC ring (TCP
    // recovers); more than 1% would be a reader that does not keep up.
    let (full, handed) = (event("drop_fallback_full"), event("userspace_fallback"));
    eprintln!("{p} fallback: {handed} frames handed over, {full} dropped (buffer full)");
    ensure!(
        full <= 0.01 * handed,
        "fallback dropped {full} of {} frames",
        full + handed
    );
    let lost = m.value(
        "relayhub_dropped_frames_total",
        &[("stage", "controller"), ("reason", "fallback_lost")],
    );
    eprintln!("{p} fallback samples lost (perf buffer full): {lost}");
    ensure!(hub.alive(), "hub died during the test");
    Ok(())
}
