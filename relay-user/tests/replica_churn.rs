//! Replication cost at scale (issue 12): two loaded copies of the relay
//! program stand for the active and the standby hub. The active's
//! SESSIONS map holds 100k entries; each round, the churn of one
//! replication tick (entries of rekeyed pairs added, expired ones removed)
//! is written to it, and the standby's map is brought level the way the
//! hub does it: walk the active's maps, `Publisher` diff, encode, decode,
//! `Replica` apply, map writes. Prints the walk time and the time from a
//! tick's start to the standby's map matching; asserts that the standby
//! converges (learned-from-response entries included) and that a tick
//! fits well inside the replication interval.
//!
//! Needs root (BPF). `cargo test -p relay-user --release --test replica_churn -- --nocapture`.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use aya::maps::IterableMap as _;
use relay_common::{
    Endpoint, SESSION_FROM_INITIATION, SESSION_FROM_RESPONSE, SessionKey, SessionValue,
};
use relay_user::core::replica::{
    Decoder, Encoder, MapOp, Publisher, Replica, Session, TAG_LEN, TICK, Tables,
};
use relay_user::datapath::read_sessions_batch;
use testkit::xdp::{Harness, ktime_ns};

const SPOKES: u32 = 10_000;
const ENTRIES: u32 = 100_000;

/// The session table by aya's iterator: two syscalls per entry.
fn walk(h: &Harness) -> Vec<(SessionKey, SessionValue)> {
    h.maps.sessions.iter().filter_map(Result::ok).collect()
}

/// The active's tables as the hub reads them: the session table in
/// batches, the endpoints by a walk (at most one per spoke).
fn read(h: &Harness) -> Tables {
    let mut entries = Vec::new();
    read_sessions_batch(h.maps.sessions.map(), &mut entries).expect("batch lookup");
    let sessions = entries
        .into_iter()
        .map(|(k, v): (SessionKey, SessionValue)| {
            (
                k,
                Session {
                    dst_slot: v.dst_slot,
                    flags: v.flags,
                },
            )
        })
        .collect();
    let endpoints = h
        .maps
        .endpoint_slots
        .iter()
        .filter_map(Result::ok)
        .map(|(ep, slot): (Endpoint, u32)| (slot, ep))
        .collect();
    Tables {
        endpoints,
        sessions,
    }
}

fn apply(h: &mut Harness, ops: &[MapOp]) {
    for op in ops {
        match *op {
            MapOp::Endpoint { slot, new, .. } => {
                if let Some(ep) = new {
                    h.set_spoke(slot, ep, true).expect("endpoint");
                }
            }
            MapOp::Session(k, s) => h
                .set_session(k.src_slot, k.receiver, s.dst_slot, s.flags, ktime_ns())
                .expect("session"),
            MapOp::NoSession(k) => {
                let _ = h.maps.sessions.remove(&k);
            }
        }
    }
}

fn session_table(h: &Harness) -> HashMap<SessionKey, Session> {
    read(h).sessions
}

#[test]
fn standby_converges_at_100k_sessions_with_rekey_churn() {
    // Two instances of the program: maps are per load.
    let mut active = Harness::load(1);
    let mut standby = Harness::load(1);
    for slot in 0..SPOKES {
        let ep = Endpoint::v4([10, (slot >> 8) as u8, slot as u8, 1], 40000);
        active.set_spoke(slot, ep, true).unwrap();
    }
    let mut rng = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let t = Instant::now();
    let mut live: Vec<SessionKey> = Vec::with_capacity(ENTRIES as usize);
    for _ in 0..ENTRIES / 2 {
        // One pair's two entries: the controller's and the learned one.
        let (a, b) = (
            (next() % SPOKES as u64) as u32,
            (next() % SPOKES as u64) as u32,
        );
        let (ia, ib) = (next() as u32, next() as u32);
        active
            .set_session(b, ia, a, SESSION_FROM_INITIATION, ktime_ns())
            .unwrap();
        active
            .set_session(a, ib, b, SESSION_FROM_RESPONSE, ktime_ns())
            .unwrap();
        live.push(SessionKey {
            src_slot: b,
            receiver: ia,
        });
        live.push(SessionKey {
            src_slot: a,
            receiver: ib,
        });
    }
    eprintln!("fill {} entries: {:?}", live.len(), t.elapsed());

    let key = [1u8; TAG_LEN];
    let mut publisher = Publisher::new();
    let mut enc = Encoder::new(key);
    let mut dec = Decoder::new(key);
    let mut replica = Replica::new();
    let mut ops = Vec::new();

    let mut sync = |active: &Harness, standby: &mut Harness| -> (Duration, Duration, usize) {
        let t0 = Instant::now();
        let tables = read(active);
        let walk = t0.elapsed();
        let n = publisher.tick(&tables, &mut enc);
        dec.push(enc.bytes());
        let bytes = enc.bytes().len();
        enc.clear();
        ops.clear();
        while let Some(m) = dec.next_message().expect("decode") {
            replica
                .on_message(&m, Instant::now(), &mut ops)
                .expect("apply");
        }
        apply(standby, &ops);
        let _ = n;
        (walk, t0.elapsed(), bytes)
    };

    let t = Instant::now();
    let walked = walk(&active);
    let walk_time = t.elapsed();
    let t = Instant::now();
    let mut batched = Vec::new();
    read_sessions_batch(active.maps.sessions.map(), &mut batched).unwrap();
    let batch_time = t.elapsed();
    assert_eq!(walked.len(), batched.len());
    eprintln!(
        "read {} entries: iterator {walk_time:?}, batch lookup {batch_time:?}",
        walked.len()
    );

    let (walk, total, bytes) = sync(&active, &mut standby);
    eprintln!(
        "snapshot: read {walk:?}, walk+diff+encode+apply {total:?}, {} KiB",
        bytes / 1024
    );
    assert_eq!(session_table(&standby), session_table(&active));

    // Rekey churn of one tick: with k peers per spoke, 10k spokes make
    // 5k*k pairs; each rekey (every 120 s) adds 2 entries, and 2 expire:
    // 10k*k/120 adds/s. k = 10 gives 833 adds + 833 removes per second,
    // 167 + 167 per 200 ms tick; test a 10x heavier tick.
    let per_tick = 1_667usize;
    let mut worst = Duration::ZERO;
    let mut walks = Duration::ZERO;
    for _ in 0..10 {
        for _ in 0..per_tick / 2 {
            let i = (next() % live.len() as u64) as usize;
            let gone = live.swap_remove(i);
            let _ = active.maps.sessions.remove(&gone);
            let (a, b) = (
                (next() % SPOKES as u64) as u32,
                (next() % SPOKES as u64) as u32,
            );
            let k = SessionKey {
                src_slot: a,
                receiver: next() as u32,
            };
            active
                .set_session(k.src_slot, k.receiver, b, SESSION_FROM_RESPONSE, ktime_ns())
                .unwrap();
            live.push(k);
        }
        let (walk, total, _) = sync(&active, &mut standby);
        walks += walk;
        worst = worst.max(total);
    }
    eprintln!(
        "churn tick ({per_tick} changes): read {:?} avg, tick to standby map {worst:?} worst",
        walks / 10
    );
    assert_eq!(session_table(&standby), session_table(&active));
    assert_eq!(read(&standby).endpoints, read(&active).endpoints);
    // The lag bound the README quotes: a change waits at most one TICK,
    // plus this.
    assert!(
        worst < TICK * 5,
        "one tick took {worst:?} at {ENTRIES} entries"
    );
}
