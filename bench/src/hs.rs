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
    let peers: Vec<u32> = (2..=n32.clamp(2, 8)).collect();
    let evs: Vec<(u32, InitiationEvent)> = (0..1024u32)
        .map(|k| {
            let d = peers[k as usize % peers.len()];
            (
                d,
                initiation(1, &Mac1Key::for_public_key(&key(d)), 0x1000 + k),
            )
        })
        .collect();
    let mut now = Instant::now();
    for (d, e) in &evs[..peers.len()] {
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
