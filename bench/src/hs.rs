//! Handshake initiation routing, in process: relay_user::core::router::Router
//! with N registered spokes, initiations addressed by mac1.

use std::time::{Duration, Instant};

use relay_common::InitiationEvent;
use relay_user::core::keys::Mac1Key;
use relay_user::core::router::{Outcome, Router};
use testkit::wg::{initiation_event, mac1_initiation, spoke_endpoint as ep, spoke_key as key};

#[derive(Debug, Clone, Copy)]
pub struct HsResult {
    pub spokes: usize,
    /// Initiations/s when the destination is among the source's recent
    /// destinations (steady state: rekeys every 2 minutes).
    pub warm_per_s: f64,
    /// mac1 keys checked per warm initiation.
    pub warm_keys: f64,
    /// Initiations/s for a first contact: a source that never initiated to
    /// that destination (full mac1 scan).
    pub cold_per_s: f64,
    /// mac1 keys checked per first contact (about N/2 for a scan).
    pub cold_keys: f64,
    /// Controller memory per registered spoke (RSS delta / N), bytes.
    pub bytes_per_spoke: f64,
}

fn rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
        .unwrap_or(0)
        * 4096
}

fn initiation(src: u32, dst_key: &Mac1Key, sender: u32) -> InitiationEvent {
    initiation_event(ep(src), src, mac1_initiation(dst_key, sender))
}

/// A router with spokes 1..=n registered, each at its endpoint.
fn router(n: u32) -> Router {
    let mut r = Router::new(&key(u32::MAX));
    for i in 1..=n {
        r.set_spoke(i, &key(i));
        r.set_endpoint(i, Some(ep(i)));
    }
    r
}

/// The warm case's initiations: 1,024 from spoke 1 to its peers
/// 2..=min(n, 8) in turn, (destination, event); and how many peers (the
/// first that many events, routed once, make them recent).
fn warm_events(n: u32) -> (usize, Vec<(u32, InitiationEvent)>) {
    let peers: Vec<u32> = (2..=n.clamp(2, 8)).collect();
    let evs = (0..1024u32)
        .map(|k| {
            let d = peers[k as usize % peers.len()];
            (
                d,
                initiation(1, &Mac1Key::for_public_key(&key(d)), 0x1000 + k),
            )
        })
        .collect();
    (peers.len(), evs)
}

/// Route `e` and insist that it was relayed from `src` to `dst`: a bench
/// of a router that drops its input would measure nothing.
fn route(r: &mut Router, e: &InitiationEvent, now: Instant, src: u32, dst: u32) {
    let (o, _) = r.on_initiation(e, now);
    assert_eq!(
        o,
        Outcome::Relayed { src, dst },
        "bench initiation not relayed"
    );
}

/// Route initiations with `n` registered spokes for about `budget` per case.
pub fn bench(n: usize, budget: Duration) -> HsResult {
    assert!(n >= 2, "the bench needs two spokes");
    let rss0 = rss_bytes();
    let n32 = n as u32;
    let mut r = router(n32);
    let rss1 = rss_bytes();
    // Warm: spoke 1 initiates again and again to its recent peers 2..=min(n, 8).
    let (peers, evs) = warm_events(n32);
    let mut now = Instant::now();
    for (d, e) in &evs[..peers] {
        now += Duration::from_secs(2);
        route(&mut r, e, now, 1, *d);
    }
    let keys0 = r.keys_checked();
    let mut done = 0u64;
    let t = Instant::now();
    while t.elapsed() < budget {
        for (d, e) in &evs {
            // Past the crossing window, so every initiation is routed.
            now += Duration::from_secs(2);
            route(&mut r, e, now, 1, *d);
        }
        done += evs.len() as u64;
    }
    let warm = done as f64 / t.elapsed().as_secs_f64();
    let warm_keys = (r.keys_checked() - keys0) as f64 / done as f64;

    // First contacts: every (source, destination) pair at most once, so the
    // destination is never among the source's recent ones; the pairs are
    // spread over sources and destinations (the scan order is the
    // HashMap's). When the pairs run out (small N), a fresh router is
    // built outside the timed part.
    let pairs_per_round = n as u64 * (n as u64 - 1);
    let pair = |i: u64| {
        let src = (i % n as u64) as u32 + 1;
        let off = (i / n as u64) % (n as u64 - 1) + 1;
        let dst = (src - 1 + off as u32) % n32 + 1;
        (src, dst)
    };
    let mut r = router(n32);
    let (mut done, mut keys, mut timed) = (0u64, 0u64, Duration::ZERO);
    let mut i = 0u64;
    while timed < budget || done < 3 {
        if i == pairs_per_round {
            r = router(n32);
            i = 0;
        }
        let (src, dst) = pair(i);
        i += 1;
        let e = initiation(
            src,
            &Mac1Key::for_public_key(&key(dst)),
            0x8000_0000 + i as u32,
        );
        now += Duration::from_secs(2);
        let k0 = r.keys_checked();
        let t = Instant::now();
        route(&mut r, &e, now, src, dst);
        timed += t.elapsed();
        keys += r.keys_checked() - k0;
        done += 1;
    }
    let cold = done as f64 / timed.as_secs_f64();
    HsResult {
        spokes: n,
        warm_per_s: warm,
        warm_keys,
        cold_per_s: cold,
        cold_keys: keys as f64 / done as f64,
        bytes_per_spoke: rss1.saturating_sub(rss0) as f64 / n as f64,
    }
}

/// Initiation routing across a hub mesh, end to end.
#[derive(Debug, Clone, Copy)]
pub struct MeshHsResult {
    pub spokes: usize,
    pub hubs: usize,
    /// Initiations/s through every router an initiation meets: its home
    /// hub's, and the responder's home hub's when that is another.
    pub warm_per_s: f64,
    pub warm_keys: f64,
    pub cold_per_s: f64,
    pub cold_keys: f64,
    /// Share of the timed first contacts that crossed two hubs.
    pub cold_cross: f64,
}

/// Mesh ports of the bench's hubs start here (every hub's spokes fit:
/// 100k over three hubs is 33,334 each).
const MESH_BASE: u16 = 10_000;

/// `hubs` routers, each with all `n` spokes registered as the product
/// registers them on a mesh member: spoke i homed on hub (i - 1) % hubs
/// with mesh index (i - 1) / hubs + 1; its own spokes at their endpoints,
/// the others at their home hub's address and mesh port.
struct MeshBench {
    routers: Vec<Router>,
    hubs: u32,
}

/// Hub `h`'s address in the mesh bench.
fn hub_addr(h: u32) -> relay_common::Endpoint {
    relay_common::Endpoint::v4([198, 51, 100, h as u8 + 1], 51820)
}

/// Spoke `i`'s mesh index on its home hub.
fn mesh_index(hubs: u32, i: u32) -> u16 {
    ((i - 1) / hubs + 1) as u16
}

impl MeshBench {
    fn new(n: u32, hubs: u32) -> Self {
        let addr = hub_addr;
        let routers = (0..hubs)
            .map(|h| {
                let mut r = Router::new(&key(u32::MAX - h));
                let mut local = std::collections::HashMap::new();
                for i in 1..=n {
                    r.set_spoke(i, &key(i));
                    let (home, index) = ((i - 1) % hubs, mesh_index(hubs, i));
                    if home == h {
                        r.set_endpoint(i, Some(ep(i)));
                        local.insert(index, i);
                    } else {
                        let mut e = addr(home);
                        e.port = MESH_BASE + index;
                        r.set_endpoint(i, Some(e));
                    }
                }
                r.set_mesh_ports(MESH_BASE, 51820, local);
                r
            })
            .collect();
        Self { routers, hubs }
    }

    fn home(&self, i: u32) -> usize {
        ((i - 1) % self.hubs) as usize
    }

    /// Route `src` -> `dst` on the initiator's home hub and, if the
    /// forwarded copy goes to a peer hub, on that hub too (from the mesh
    /// port that names `src` there, to the one the first hub sent to);
    /// insist both relayed it. Returns whether it crossed two hubs.
    fn route(&mut self, e: &InitiationEvent, now: Instant, src: u32, dst: u32) -> bool {
        let g = self.home(src);
        let (o, a) = self.routers[g].on_initiation(e, now);
        assert_eq!(o, Outcome::Relayed { src, dst }, "mesh bench: first hub");
        let Some(relay_user::core::router::Action::Forward { to, frame, .. }) = a else {
            panic!("mesh bench: no forward from the first hub");
        };
        let h = self.home(dst);
        if h == g {
            return false;
        }
        // Sent on as the hub does: from G's address and the mesh port
        // that names the initiator there.
        let mut from = hub_addr(g as u32);
        from.port = relay_user::core::mesh::forward_port(
            51820,
            MESH_BASE,
            mesh_index(self.hubs, src),
            false,
            true,
        )
        .expect("in range");
        let ev = InitiationEvent {
            src: from,
            dst: to,
            src_slot: src,
            ifindex: 1,
            frame,
        };
        let (o, _) = self.routers[h].on_initiation(&ev, now);
        assert_eq!(o, Outcome::Relayed { src, dst }, "mesh bench: second hub");
        true
    }

    fn keys_checked(&self) -> u64 {
        self.routers.iter().map(|r| r.keys_checked()).sum()
    }
}

/// Route initiations among `n` spokes spread over `hubs` hubs for about
/// `budget` per case (warm, first contact), as [`bench`] does on one hub.
pub fn mesh_bench(n: usize, hubs: usize, budget: Duration) -> MeshHsResult {
    assert!(n >= 2 * hubs, "the mesh bench needs two spokes per hub");
    let (n32, hubs32) = (n as u32, hubs as u32);
    let mut m = MeshBench::new(n32, hubs32);
    // Warm: spoke 1 again and again to 2..=8, most of them on other hubs.
    let (peers, evs) = warm_events(n32);
    let mut now = Instant::now();
    for (d, e) in &evs[..peers] {
        now += Duration::from_secs(2);
        m.route(e, now, 1, *d);
    }
    let keys0 = m.keys_checked();
    let (mut done, t) = (0u64, Instant::now());
    while t.elapsed() < budget {
        for (d, e) in &evs {
            now += Duration::from_secs(2);
            m.route(e, now, 1, *d);
        }
        done += evs.len() as u64;
    }
    let warm = done as f64 / t.elapsed().as_secs_f64();
    let warm_keys = (m.keys_checked() - keys0) as f64 / done as f64;

    // First contacts, spread over sources and destinations as in `bench`,
    // the offset also depending on the source so that destinations fall
    // on every hub (not only the next id's).
    let pair = |i: u64| {
        let src = (i % n as u64) as u32 + 1;
        let off = (i / n as u64 + u64::from(src)) % (n as u64 - 1) + 1;
        (src, (src - 1 + off as u32) % n32 + 1)
    };
    let mut m = MeshBench::new(n32, hubs32);
    let (mut done, mut keys, mut cross, mut timed, mut i) = (0u64, 0u64, 0u64, Duration::ZERO, 0);
    while timed < budget || done < 3 {
        if i == n as u64 * (n as u64 - 1) {
            m = MeshBench::new(n32, hubs32);
            i = 0;
        }
        let (src, dst) = pair(i);
        i += 1;
        let e = initiation(
            src,
            &Mac1Key::for_public_key(&key(dst)),
            0x8000_0000 + i as u32,
        );
        now += Duration::from_secs(2);
        let k0 = m.keys_checked();
        let t = Instant::now();
        cross += u64::from(m.route(&e, now, src, dst));
        timed += t.elapsed();
        keys += m.keys_checked() - k0;
        done += 1;
    }
    MeshHsResult {
        spokes: n,
        hubs,
        warm_per_s: warm,
        warm_keys,
        cold_per_s: done as f64 / timed.as_secs_f64(),
        cold_keys: keys as f64 / done as f64,
        cold_cross: cross as f64 / done as f64,
    }
}
