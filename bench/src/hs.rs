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
    /// Initiations/s for a first contact (full mac1 scan).
    pub cold_per_s: f64,
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

/// Route initiations with `n` registered spokes for about `budget` per case.
pub fn bench(n: usize, budget: Duration) -> HsResult {
    let rss0 = rss_bytes();
    let mut r = Router::new(&key(u32::MAX));
    let n32 = n as u32;
    for i in 1..=n32 {
        r.set_spoke(i, &key(i));
        r.set_endpoint(i, Some(ep(i)));
    }
    let rss1 = rss_bytes();
    let keys: Vec<Mac1Key> = (0..=n32.min(64))
        .map(|i| Mac1Key::for_public_key(&key(i)))
        .collect();
    // Warm: spoke 1 initiates again and again to its recent peers 2..=min(n, 8).
    let peers: Vec<u32> = (2..=n32.clamp(2, 8)).collect();
    let evs: Vec<InitiationEvent> = (0..1024u32)
        .map(|k| {
            let d = peers[k as usize % peers.len()];
            initiation(1, &keys[d as usize], 0x1000 + k)
        })
        .collect();
    let mut now = Instant::now();
    for e in &evs[..peers.len()] {
        r.on_initiation(e, now);
    }
    let mut done = 0u64;
    let t = Instant::now();
    while t.elapsed() < budget {
        for e in &evs {
            // Past the crossing window, so every initiation is routed.
            now += Duration::from_secs(2);
            let (o, _) = r.on_initiation(e, now);
            debug_assert!(matches!(o, Outcome::Relayed { .. }));
        }
        done += evs.len() as u64;
    }
    let warm = done as f64 / t.elapsed().as_secs_f64();
    // Cold: first contacts from fresh sources to the last-registered spoke
    // (worst case of the scan order is unknown: HashMap order; use many).
    let mut done = 0u64;
    let t = Instant::now();
    let mut src = 2u32;
    while t.elapsed() < budget || done < 3 {
        let dkey = Mac1Key::for_public_key(&key(1 + (src * 7919) % n32));
        let e = initiation(src.min(n32), &dkey, 0x8000_0000 + src);
        now += Duration::from_secs(2);
        std::hint::black_box(r.on_initiation(&e, now));
        done += 1;
        src = 2 + (src + 1) % n32.max(3);
    }
    let cold = done as f64 / t.elapsed().as_secs_f64();
    HsResult {
        spokes: n,
        warm_per_s: warm,
        cold_per_s: cold,
        bytes_per_spoke: rss1.saturating_sub(rss0) as f64 / n as f64,
    }
}
