//! A registered spoke cannot take over another pair's relay session.
//!
//! Three stock wireguard-go spokes behind NATs; s3 turns insider. It knows
//! every live index of the s1 <-> s2 sessions (read here from the hub's
//! session map with bpftool, standing in for an on-path observer) and sends,
//! from its own authenticated endpoint (its WireGuard port, through its
//! NAT):
//!
//! - responses relayed to s1 (over s3's own session with s1) whose sender
//!   index is the index s1 uses to reach s2: response learning would point
//!   s1's entry at s3;
//! - initiations to s2, with valid mac1, whose sender index is the index s2
//!   uses to reach s1: the controller would install s2's entry towards s3.
//!
//! Asserted: every s1 <-> s2 entry still names its pair, the program counts
//! `learn_conflict` and the controller `index_conflict`, and s1 <-> s2 pings
//! lose nothing afterwards.
//!
//! Run as root: `cargo test -p relay-tests --release --test takeover_e2e -- --nocapture`.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{Context, ensure};
use relay_tests::inject::{self, Datagram};
use relay_tests::mesh::Mesh;
use relay_tests::topology::{HUB_ADDR, HUB_PORT};
use relay_tests::{Hub, Topology, relayhub_scenario};

#[test]
fn takeover_e2e() {
    relayhub_scenario(
        "takeover_e2e",
        Topology::builder()
            .spokes(3)
            .xdp_pass(env!("CARGO_BIN_EXE_xdp-pass")),
        checks,
    );
}

/// (sender slot, receiver index) -> destination slot.
type Table = BTreeMap<(u32, u32), u32>;

/// The hub's relay session table: the SESSIONS map of the program
/// attached to the hub's NIC (other tests may load relay programs too).
fn sessions(topo: &Topology) -> anyhow::Result<Table> {
    let id = relay_tests::sessions::map_id(&topo.hub, &topo.hub_nic)?;
    Ok(relay_tests::sessions::dump(&id)?
        .into_iter()
        .map(|(k, (dst, _flags))| (k, dst))
        .collect())
}

fn checks(topo: &Topology, hub: &mut Hub<'_>) -> anyhow::Result<()> {
    let mesh = Mesh::up(topo, hub)?;
    let spokes = hub.api_json("/v1/spokes")?;
    let by_name: BTreeMap<String, (u32, String)> = spokes
        .as_array()
        .context("/v1/spokes")?
        .iter()
        .map(|s| {
            (
                s["name"].as_str().unwrap_or("?").to_string(),
                (
                    s["id"].as_u64().unwrap_or(0) as u32,
                    s["public_key"].as_str().unwrap_or("").to_string(),
                ),
            )
        })
        .collect();
    let slot = |n: &str| by_name.get(n).map(|s| s.0).context(n.to_string());
    let (s1, s2, m) = (slot("s1")?, slot("s2")?, slot("s3")?);
    let s2_key = inject::base64_key(&by_name["s2"].1)?;

    let before = sessions(topo)?;
    let pick = |src: u32, dst: u32| -> Vec<u32> {
        before
            .iter()
            .filter(|((s, _), d)| *s == src && **d == dst)
            .map(|((_, r), _)| *r)
            .collect()
    };
    let (s1_to_s2, s2_to_s1, m_to_s1) = (pick(s1, s2), pick(s2, s1), pick(m, s1));
    eprintln!(
        "[takeover] slots s1={s1} s2={s2} s3={m}; entries s1->s2 {s1_to_s2:x?}, s2->s1 {s2_to_s1:x?}, s3->s1 {m_to_s1:x?}"
    );
    ensure!(
        !s1_to_s2.is_empty() && !s2_to_s1.is_empty() && !m_to_s1.is_empty(),
        "the mesh left no entry to attack: {before:?}"
    );

    // s3's own endpoint: its LAN address and WireGuard port (its NAT maps
    // them to the endpoint the hub authenticated).
    let host = &topo.spokes[2];
    let wg3 = mesh.spokes[2].as_ref().context("s3 up")?;
    let port: u16 = host
        .ns
        .exec(&["wg", "show", &wg3.ifname, "listen-port"])?
        .trim()
        .parse()
        .context("s3 listen port")?;
    let from = |payload: Vec<u8>| Datagram {
        src: host.lan_addr,
        sport: port,
        dst: HUB_ADDR,
        dport: HUB_PORT,
        payload,
    };
    let mut frames = Vec::new();
    for (i, x) in s1_to_s2.iter().enumerate() {
        frames.push(from(inject::response(*x, m_to_s1[0], i as u32)));
    }
    for (i, y) in s2_to_s1.iter().enumerate() {
        frames.push(from(inject::initiation(&s2_key, *y, 100 + i as u32)));
    }
    let m0 = hub.metrics()?;
    let sent = inject::send(&host.ns, &frames)?;
    ensure!(
        sent == frames.len(),
        "sent {sent} of {} frames",
        frames.len()
    );
    std::thread::sleep(Duration::from_millis(500));
    let m1 = hub.metrics()?;
    let xdp = |m: &relay_tests::prom::Metrics, e: &str| {
        m.value("relayhub_xdp_events_total", &[("event", e)])
    };
    let conflicts = |m: &relay_tests::prom::Metrics| {
        m.value(
            "relayhub_handshakes_total",
            &[("type", "initiation"), ("result", "index_conflict")],
        )
    };
    let learn = xdp(&m1, "learn_conflict") - xdp(&m0, "learn_conflict");
    let install = conflicts(&m1) - conflicts(&m0);
    eprintln!(
        "[takeover] {sent} frames from s3's endpoint: learn_conflict +{learn}, index_conflict +{install}"
    );
    ensure!(
        learn >= s1_to_s2.len() as f64,
        "the program counted {learn} refused takeovers for {} responses",
        s1_to_s2.len()
    );
    ensure!(
        install >= s2_to_s1.len() as f64,
        "the controller counted {install} refused takeovers for {} initiations",
        s2_to_s1.len()
    );

    let after = sessions(topo)?;
    for (src, list, dst) in [(s1, &s1_to_s2, s2), (s2, &s2_to_s1, s1)] {
        for r in list {
            // An entry may have aged out meanwhile (not here: seconds), but
            // it must never name s3.
            let now = after.get(&(src, *r)).copied();
            ensure!(
                now == Some(dst),
                "entry ({src}, {r:#x}) names {now:?} after the attack (was {dst})"
            );
        }
    }

    let (a1, a2) = (mesh.addrs[0], mesh.addrs[1]);
    for (i, dst, what) in [(0, a2, "s1 -> s2"), (1, a1, "s2 -> s1")] {
        let r = topo.spokes[i].ns.ping(&dst.to_string(), 10, 0.1)?;
        eprintln!("[takeover] ping {what}: {}/{}", r.received, r.transmitted);
        ensure!(r.lost() == 0, "{what} after the attack: {r:?}");
    }
    Ok(())
}
