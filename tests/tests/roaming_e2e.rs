//! Roaming / NAT rebinding. Spokes use the default PersistentKeepalive
//! (25 s). With a steady ping s1 -> s2 (every 50 ms), s1's NAT is rebound:
//! its MASQUERADE rule gets a new port range and its conntrack table is
//! flushed, so the next packet leaves from a new source port and the hub's
//! frames to the old mapping are dropped by the NAT.
//!
//! Asserted: relaying to and from s1 recovers within 1 s, long before its
//! next keepalive: the hub proves the new endpoint with a handshake in its
//! own name (relayhub_endpoint_proofs_total{result="proven"}); the hub's
//! authenticated endpoint for s1 (/v1/spokes) moves into the new port range
//! and relayhub_spoke_roams_total{spoke="s1"} counts the roam.
//! Then an attacker sends frames claiming to be s1 (s1's live receiver
//! indices, its old endpoint spoofed, its NAT address with another port,
//! the attacker's own address): the hub's endpoint for s1 stays the
//! authenticated one, no roam is counted, and traffic keeps reaching s1.
//!
//! Run as root: `cargo test -p relay-tests --release --test roaming_e2e -- --nocapture`.

use std::thread;
use std::time::Duration;

use anyhow::{Context, ensure};
use relay_tests::capture;
use relay_tests::inject::{self, Datagram, Sniffed};
use relay_tests::mesh::Mesh;
use relay_tests::relayhub_scenario;
use relay_tests::topology::{HUB_ADDR, HUB_PORT};
use relay_tests::{Hub, Topology};

/// The promise: relay resumes within this after the mapping changes.
const RESUME_WITHIN: f64 = 1.0;
const PING_INTERVAL: f64 = 0.05;
const PINGS: u32 = 200;
const NEW_PORTS: (u16, u16) = (30000, 30999);

#[test]
fn roaming_e2e() {
    relayhub_scenario(
        "roaming_e2e",
        Topology::builder()
            .spokes(2)
            .attacker()
            .xdp_pass(env!("CARGO_BIN_EXE_xdp-pass")),
        checks,
    );
}

fn s1_endpoint(hub: &Hub<'_>) -> anyhow::Result<String> {
    let v = hub.api_json("/v1/spokes")?;
    v.as_array()
        .context("/v1/spokes")?
        .iter()
        .find(|s| s["name"] == "s1")
        .and_then(|s| s["endpoint"].as_str())
        .map(str::to_string)
        .context("no endpoint for s1 in /v1/spokes")
}

fn port_of(ep: &str) -> u16 {
    ep.rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .unwrap_or(0)
}

/// `ping -D` output: icmp_seq numbers answered.
fn answered(out: &str) -> Vec<u32> {
    out.lines()
        .filter(|l| l.contains("bytes from"))
        .filter_map(|l| {
            l.split("icmp_seq=")
                .nth(1)?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
        .collect()
}

fn checks(topo: &Topology, hub: &mut Hub<'_>) -> anyhow::Result<()> {
    let sniff = topo.sniff_hub_link()?;
    let mesh = Mesh::up(topo, hub)?;
    let nat = &topo.nats[0];
    let before = s1_endpoint(hub)?;
    let m_before = hub.metrics()?;
    let roams0 = m_before.value("relayhub_spoke_roams_total", &[("spoke", "s1")]);
    let proven0 = m_before.value("relayhub_endpoint_proofs_total", &[("result", "proven")]);

    // Steady ping s1 -> s2; rebind s1's NAT in the middle.
    let dst = mesh.addrs[1].to_string();
    let out = thread::scope(|s| -> anyhow::Result<_> {
        let ping = s.spawn(|| {
            topo.spokes[0].ns.output(
                &[
                    "ping",
                    "-n",
                    "-i",
                    &PING_INTERVAL.to_string(),
                    "-W",
                    "1",
                    "-c",
                    &PINGS.to_string(),
                    &dst,
                ],
                Duration::from_secs(60),
            )
        });
        thread::sleep(Duration::from_secs(3));
        nat.ns.sh(&format!(
            "iptables -t nat -R POSTROUTING 1 -o {} -p udp -j MASQUERADE --to-ports {}-{}
             conntrack -F 2>/dev/null || true",
            nat.wan_if, NEW_PORTS.0, NEW_PORTS.1
        ))?;
        ping.join().expect("ping thread")
    })?;
    let got = answered(&out.stdout);
    ensure!(
        got.len() > PINGS as usize / 2,
        "ping barely worked: {}",
        out.stdout
    );
    // The outage: the longest run of unanswered echo requests.
    let mut longest = 0u32;
    let mut prev = 0u32; // icmp_seq starts at 1
    for &seq in got.iter().chain([PINGS + 1].iter()) {
        longest = longest.max(seq.saturating_sub(prev + 1));
        prev = prev.max(seq);
    }
    let outage = longest as f64 * PING_INTERVAL;
    let after = s1_endpoint(hub)?;
    let m_after = hub.metrics()?;
    let roams = m_after.value("relayhub_spoke_roams_total", &[("spoke", "s1")]) - roams0;
    let proven = m_after.value("relayhub_endpoint_proofs_total", &[("result", "proven")]) - proven0;
    eprintln!(
        "[roam] s1 endpoint {before} -> {after}; {} of {PINGS} pings answered; outage {outage:.2} s \
         ({longest} x {PING_INTERVAL} s); roams +{roams}; proofs +{proven}",
        got.len()
    );
    let p = port_of(&after);
    ensure!(
        (NEW_PORTS.0..=NEW_PORTS.1).contains(&p),
        "the hub did not learn s1's new endpoint: {before} -> {after}"
    );
    ensure!(longest > 0, "no outage at all: did the NAT rebind?");
    ensure!(
        outage <= RESUME_WITHIN,
        "relaying to/from s1 took {outage:.2} s to recover > {RESUME_WITHIN} s"
    );
    ensure!(
        proven >= 1.0,
        "the new endpoint was not proven by the hub (proofs +{proven})"
    );
    ensure!(
        roams >= 1.0,
        "relayhub_spoke_roams_total{{spoke=\"s1\"}} +{roams}"
    );

    // An attacker claiming to be s1.
    let frames = capture::read_wg_frames(&sniff.finish())?;
    let sniffed = Sniffed::from_frames(&frames, HUB_ADDR);
    let new_ep = format!("{}.{p}", nat.wan_addr);
    let rx = sniffed
        .receivers_by_src
        .get(&new_ep)
        .cloned()
        .unwrap_or_default();
    ensure!(
        !rx.is_empty(),
        "sniffed no index of s1 after the roam: {sniffed:?}"
    );
    let att = topo.attacker.as_ref().context("attacker")?;
    let old_port = port_of(&before);
    let keys: Vec<[u8; 32]> = hub
        .cli(&["spoke", "list"])?
        .lines()
        .skip(1)
        .filter_map(|l| inject::base64_key(l.split_whitespace().nth(2)?).ok())
        .collect();
    let mut attack = Vec::new();
    let mut seed = 0;
    for (src, sport) in [
        (nat.wan_addr, old_port),
        (nat.wan_addr, NEW_PORTS.1 + 7),
        (att.addr, p),
        (att.addr, old_port),
    ] {
        let mut push = |payload| {
            attack.push(Datagram {
                src,
                sport,
                dst: HUB_ADDR,
                dport: HUB_PORT,
                payload,
            })
        };
        for &r in &rx {
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
    let m0 = hub.metrics()?;
    let (sent, back) = thread::scope(|s| -> anyhow::Result<_> {
        let ping = s.spawn(|| topo.spokes[1].ns.ping(&mesh.addrs[0].to_string(), 40, 0.05));
        thread::sleep(Duration::from_millis(300));
        let sent = inject::send(&att.ns, &attack)?;
        Ok((sent, ping.join().expect("ping thread")?))
    })?;
    // Past the controller's hold (1.2 s) and several endpoint refreshes.
    thread::sleep(Duration::from_millis(1500));
    let m1 = hub.metrics()?;
    let still = s1_endpoint(hub)?;
    let d_roams = m1.value("relayhub_spoke_roams_total", &[("spoke", "s1")])
        - m0.value("relayhub_spoke_roams_total", &[("spoke", "s1")]);
    let d_unknown = m1.value(
        "relayhub_dropped_frames_total",
        &[("stage", "xdp"), ("reason", "unknown_source")],
    ) - m0.value(
        "relayhub_dropped_frames_total",
        &[("stage", "xdp"), ("reason", "unknown_source")],
    );
    eprintln!(
        "[roam] attacker sent {sent} frames claiming to be s1: endpoint now {still}, roams +{d_roams}, \
         xdp unknown_source +{d_unknown}; s2 -> s1 meanwhile: {back:?}"
    );
    ensure!(sent == attack.len(), "injected {sent} of {}", attack.len());
    ensure!(
        still == after,
        "frames claiming to be s1 moved its endpoint: {after} -> {still}"
    );
    ensure!(
        d_roams == 0.0,
        "a roam was counted for the attacker's frames"
    );
    ensure!(
        back.lost() == 0,
        "s2 -> s1 lost pings during the attack: {back:?}"
    );
    ensure!(
        d_unknown >= (attack.len() - 4 * keys.len()) as f64,
        "xdp unknown_source +{d_unknown} < {} non-initiation frames",
        attack.len() - 4 * keys.len()
    );
    reflection(topo, hub, &rx.iter().copied().collect::<Vec<_>>(), &after)
}

/// The hub as a reflector, and an attacker racing the real spoke: from
/// many ports of one address (standing in for a victim whose address an
/// attacker spoofs), frames name s1's live session, so the hub probes that
/// address; the attacker then answers the probes it saw with forged
/// responses. The probes stay within their per-address bound, the forged
/// answers are rejected, and s1's endpoint stays where it is.
fn reflection(
    topo: &Topology,
    hub: &mut Hub<'_>,
    rx: &[u32],
    endpoint: &str,
) -> anyhow::Result<()> {
    /// relay_user::core::proof::Limits::default().per_address_per_sec.
    const PROBES_PER_ADDRESS_PER_SEC: usize = 4;
    let att = topo.attacker.as_ref().context("attacker")?;
    let cap = capture::Capture::start_filtered(
        &att.ns,
        &att.iface,
        &topo.workdir,
        "probes",
        &["udp", "and", "udp[8]", "=", "1"],
    )?;
    thread::sleep(Duration::from_millis(300));
    let m0 = hub.metrics()?;
    let t0 = std::time::Instant::now();
    let mut sent = 0;
    for round in 0..3u16 {
        let burst: Vec<Datagram> = (0..200u16)
            .map(|i| Datagram {
                src: att.addr,
                sport: 20000 + round * 200 + i,
                dst: HUB_ADDR,
                dport: HUB_PORT,
                payload: inject::transport(rx[usize::from(i) % rx.len()], 64, u32::from(i)),
            })
            .collect();
        sent += inject::send(&att.ns, &burst)?;
        thread::sleep(Duration::from_millis(500));
    }
    let secs = t0.elapsed().as_secs_f64();
    let to_att = |f: &capture::WgFrame| f.kind == 1 && f.dst.starts_with(&att.addr.to_string());
    let probes: Vec<_> = capture::read_wg_frames(&cap.finish())?
        .into_iter()
        .filter(to_att)
        .collect();
    // Race: once the address's windows have passed (the flood above spent
    // them), the attacker sends one frame naming s1's session from a UDP
    // socket, and answers the probe that comes back with a forged response
    // at once, from the probed address.
    thread::sleep(Duration::from_millis(1100));
    let ns_path = format!("/run/netns/{}", att.ns.name);
    let trigger = inject::transport(rx[0], 64, 99);
    let hub_sa = std::net::SocketAddr::from((HUB_ADDR, HUB_PORT));
    let raced = thread::spawn(move || -> anyhow::Result<(usize, usize)> {
        let ns = std::fs::File::open(&ns_path)?;
        testkit::netns::enter(&ns)?;
        let sock = std::net::UdpSocket::bind(("0.0.0.0", 21000))?;
        sock.set_read_timeout(Some(Duration::from_millis(1500)))?;
        sock.send_to(&trigger, hub_sa)?;
        let (mut probes, mut forged) = (0, 0);
        let mut buf = [0u8; 256];
        while let Ok((n, _)) = sock.recv_from(&mut buf) {
            if n == 148 && buf[0] == 1 {
                probes += 1;
                let sender = u32::from_le_bytes(buf[4..8].try_into()?);
                sock.send_to(&inject::response(0x0bad_f00d, sender, 7), hub_sa)?;
                forged += 1;
            }
        }
        Ok((probes, forged))
    })
    .join()
    .map_err(|_| anyhow::anyhow!("race thread panicked"))??;
    thread::sleep(Duration::from_millis(300));
    let m1 = hub.metrics()?;
    let d = |r: &str| {
        m1.value("relayhub_endpoint_proofs_total", &[("result", r)])
            - m0.value("relayhub_endpoint_proofs_total", &[("result", r)])
    };
    let still = s1_endpoint(hub)?;
    eprintln!(
        "[roam] reflection: {sent} frames naming s1's sessions from 600 ports of {} in {secs:.1} s: \
         {} probes reached it (race: {} forged answers): proofs sent +{}, limited +{}, rejected +{}, proven +{}; \
         s1 endpoint {still}",
        att.addr,
        probes.len(),
        raced.1,
        d("sent"),
        d("limited"),
        d("rejected"),
        d("proven")
    );
    let bound = PROBES_PER_ADDRESS_PER_SEC * (secs.ceil() as usize + 1);
    ensure!(!probes.is_empty(), "no probe reached the address at all");
    ensure!(
        probes.len() <= bound,
        "{} probes to one address in {secs:.1} s > {bound}",
        probes.len()
    );
    ensure!(d("limited") > 0.0, "the per-address bound never applied");
    ensure!(
        raced.1 >= 1 && d("rejected") >= 1.0,
        "no forged answer reached a pending probe ({} probes seen in the race)",
        raced.0
    );
    ensure!(d("proven") == 0.0, "a forged answer proved an endpoint");
    ensure!(
        still == endpoint,
        "probe answers moved s1's endpoint: {endpoint} -> {still}"
    );
    Ok(())
}
