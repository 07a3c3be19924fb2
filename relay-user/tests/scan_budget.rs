//! The mac1 search stays cheap at scale: with 10k registered spokes a full
//! scan costs 10k BLAKE2s, so first contacts are budgeted (see
//! relay_user::core::shield). Measured here, in process, with simulated time:
//!
//! - the cost of one full scan without the shield;
//! - a flood of 100k first-contact initiations/s from authenticated spoke
//!   endpoints (the attacker spoofs them) for 2 simulated seconds: CPU the
//!   router spends per simulated second stays bounded by the scan budget;
//! - during it, a source that proved its address (valid mac2) still gets
//!   its first contact scanned and routed, and rekeys to recent
//!   destinations never need the budget.
//!
//! Figures are printed (`-- --nocapture`); bounds are checked only in
//! release builds (debug BLAKE2s is an order of magnitude slower).

use std::time::{Duration, Instant};

use relay_common::{InitiationEvent, NO_SLOT};
use relay_user::core::keys::{Mac1Key, mac2};
use relay_user::core::router::{Action, Outcome, RECENT_PER_SOURCE, Router};
use relay_user::core::shield::Limits;
use testkit::wg::{initiation_event, mac1_initiation, spoke_endpoint as ep, spoke_key as key};

/// A first-contact initiation from spoke `src` to spoke `dst` (valid mac1).
fn event(src: u32, dst: u32, sender: u32) -> InitiationEvent {
    let mac1 = Mac1Key::for_public_key(&key(dst));
    initiation_event(ep(src), NO_SLOT, mac1_initiation(&mac1, sender))
}

#[test]
fn first_contacts_with_10k_spokes_are_budgeted() {
    let release = !cfg!(debug_assertions);
    let n: u32 = if release { 10_000 } else { 1_000 };
    let build = |shield: bool, now: Instant| {
        let mut r = Router::new(&key(u32::MAX));
        for i in 1..=n {
            r.set_spoke(i, &key(i));
            r.set_endpoint(i, Some(ep(i)));
        }
        if shield {
            r.enable_shield(Limits::default(), now);
        }
        r
    };

    // 1. Full scans without the shield (first contacts, distinct sources).
    let t0 = Instant::now();
    let mut r = build(false, t0);
    let mut now = t0;
    let scans = 200;
    let t = Instant::now();
    for k in 0..scans {
        now += Duration::from_secs(2);
        let src = 1 + k;
        let dst = 1 + (k * 7919 + 13) % n;
        let (o, _) = r.on_initiation(&event(src, dst, k), now);
        assert!(
            matches!(o, Outcome::Relayed { .. } | Outcome::Loop),
            "{o:?}"
        );
    }
    let per_scan = t.elapsed() / scans;
    eprintln!(
        "{n} spokes, no shield: first contact {per_scan:?} each = {:.0}/s on one core",
        1.0 / per_scan.as_secs_f64()
    );

    // 2. Shielded: 100k/s first contacts from spoofed spoke endpoints for
    //    2 simulated seconds.
    let t0 = Instant::now();
    let mut r = build(true, t0);
    let rate: u32 = if release { 100_000 } else { 10_000 };
    let secs = 2;
    let mut counts = std::collections::BTreeMap::<&str, u64>::new();
    // Built before timing: only the router's work is measured.
    let events: Vec<(Instant, InitiationEvent)> = (0..rate * secs)
        .map(|k| {
            let now = t0 + Duration::from_micros(1_000_000 * k as u64 / rate as u64);
            let src = 1 + k % n;
            // A new destination each time round (no recent-destination hits).
            let dst = 1 + (k.wrapping_mul(7919) + k / n + 1) % n;
            (now, event(src, dst, k))
        })
        .collect();
    // The router's cost is CPU time of this thread: wall time on a loaded
    // 2-core machine would count other processes' work against it.
    let cpu = thread_cpu();
    for (now, ev) in &events {
        let (o, _) = r.on_initiation(ev, *now);
        *counts.entry(o.result().label()).or_default() += 1;
    }
    let cpu = thread_cpu() - cpu;
    let st = r.shield_stats().unwrap();
    let checked = r.keys_checked();
    let events_n = (rate * secs) as u64;
    eprintln!(
        "{n} spokes, shield on, {rate}/s spoofed first contacts for {secs} s: router CPU {:.3} s per \
         simulated second; outcomes {counts:?}; scans denied {}; {checked} mac1 keys checked \
         ({:.0}/s, {:.1} full scans)",
        cpu.as_secs_f64() / secs as f64,
        st.scan_denied,
        checked as f64 / secs as f64,
        checked as f64 / n as f64,
    );
    // What the budget allows: its burst and rate in keys, plus the cheap
    // checks every initiation gets (the hub's key and the source's recent
    // destinations, at most RECENT + 1), plus one scan that may overrun
    // the budget it was admitted under.
    let l = Limits::default();
    let cheap_per_event = 1 + RECENT_PER_SOURCE as u64;
    let max_keys = l.scan_keys.burst
        + l.scan_keys.per_sec * secs as f64
        + (cheap_per_event * events_n) as f64
        + n as f64;
    assert!(
        (checked as f64) <= max_keys,
        "{checked} keys checked > budget {max_keys}"
    );
    assert!(
        checked >= events_n,
        "{checked} keys checked for {events_n} initiations: the count misses checks"
    );
    if release {
        assert!(
            cpu.as_secs_f64() / (secs as f64) < 0.6,
            "router CPU {cpu:?} for {secs} simulated seconds"
        );
    }

    // 3. Still under load: an unproven first contact finds the budget
    //    spent (dropped; WireGuard retries in 5 s), but a source that
    //    proved its address (its cookie from an earlier exchange) may use
    //    the reserve: scanned and routed.
    let now = t0 + Duration::from_secs(secs as u64);
    let (src, dst) = (n / 2, n / 3);
    let (o, _) = r.on_initiation(&event(src, dst, 0xfeed), now);
    if release {
        assert_eq!(o, Outcome::RateLimited);
    }
    let cookie = r.cookie_for(&ep(src), now).unwrap();
    let mut ev = event(src, dst, 0xfeee);
    let m = mac2(&cookie, &ev.frame);
    ev.frame[132..].copy_from_slice(&m);
    let (o, a) = r.on_initiation(&ev, now + Duration::from_millis(1));
    assert_eq!(o, Outcome::Relayed { src, dst });
    let Some(Action::Forward { frame, .. }) = a else {
        panic!("{a:?}")
    };
    assert_eq!(frame[132..], [0u8; 16]);
    // A rekey to that (now recent) destination needs no scan at all: the
    // hub's key and the recent destinations only.
    let denied = r.shield_stats().unwrap().scan_denied;
    let before = r.keys_checked();
    let mut ev = event(src, dst, 0xfeef);
    let m = mac2(&cookie, &ev.frame);
    ev.frame[132..].copy_from_slice(&m);
    let (o, _) = r.on_initiation(&ev, now + Duration::from_millis(600));
    assert_eq!(o, Outcome::Relayed { src, dst });
    assert_eq!(r.shield_stats().unwrap().scan_denied, denied);
    let rekey_keys = r.keys_checked() - before;
    assert!(
        rekey_keys <= 1 + RECENT_PER_SOURCE as u64,
        "a rekey to a recent destination checked {rekey_keys} keys (a scan)"
    );
}

/// CPU time this thread has used (CLOCK_THREAD_CPUTIME_ID).
fn thread_cpu() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid timespec to fill.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime(CLOCK_THREAD_CPUTIME_ID)");
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}
