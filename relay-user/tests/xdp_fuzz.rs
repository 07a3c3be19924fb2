//! Randomised and mutated frames through the XDP relay with
//! BPF_PROG_TEST_RUN, checked against an independent reference model.
//!
//! Needs root (BPF, network namespaces). Run with
//! `cargo test -p relay-user --release --test xdp_fuzz -- --nocapture`.
//!
//! The program runs in [`PASSES`], each under one hub configuration
//! written with `relay_user::datapath::hub_config` (the controller's
//! builder): as in production (both hub addresses, so only frames to the
//! hub's address count (`pass_not_for_hub`) and IPv4 <-> IPv6 spokes are
//! relayed by rebuilding the headers), with the userspace cross-family
//! path, with one address only, and with none (`port-only`).
//!
//! Replayable: a seeded PRNG (seed printed; fresh every run) generates
//! - fully random bytes of every length 0..=1500 (the kernel refuses
//!   frames shorter than an Ethernet header: those must be refused);
//! - valid frames (IPv4 / IPv6, message types 1-4 and others, registered,
//!   inactive, stale and unknown sources, session hits and misses, full /
//!   zero / wrong UDP checksums), then mutated: bit flips, byte writes,
//!   truncation, IP and UDP length lies, IPv4 options, IPv4 fragments,
//!   IPv6 extension header chains, VLAN tags, wrong ports and types,
//!   trailing junk.
//!
//! For every frame the model ([`Model::expect`], plain Rust written from the
//! wire formats, DESIGN.md's data path and README "Dual-stack", not from
//! the program) gives the action, the exact output bytes of a relayed frame
//! (checksums by full recomputation; a cross-family frame's new header
//! built from scratch), the counter deltas, the ring-buffer event, the
//! userspace fallback sample and the session the frame teaches. Checked:
//! - the action equals the model's, per frame;
//! - a relayed (TX / REDIRECT) frame equals the model's bytes, per frame; a
//!   passed frame is unmodified;
//! - independently of the model: nothing is ever relayed for a frame whose
//!   source is not an active registered endpoint, and a relayed frame goes
//!   to an active registered spoke's endpoint; where the pass configures a
//!   hub address, a relayed frame was addressed to it and leaves from the
//!   hub's address and port of its new family;
//! - per frame, with a fallback reader: the fallback samples equal the
//!   model's (none, or the frame as received with its destination and
//!   reason);
//! - per batch: every global and per-slot counter, the last-rx /
//!   last-keepalive timestamps, the initiation events (in order) and the
//!   whole session table equal the model's.
//!
//! Environment:
//! - `RELAYHUB_FUZZ_SEED` (decimal or 0x hex): the seed, to replay a run
//!   (default: a fresh random seed, printed);
//! - `RELAYHUB_FUZZ_ITERS`: frames to run over all passes (default
//!   [`DEFAULT_ITERS`]; a failure replays with the same value);
//! - `RELAYHUB_FUZZ_PASS=name`: run that pass only (same frames as in the
//!   whole run);
//! - `RELAYHUB_FUZZ_STRICT=1`: also fail on the known deviations (see
//!   [`Deviations`]) instead of only reporting them.
//!
//! Longer run: `RELAYHUB_FUZZ_ITERS=20000000
//! cargo test -p relay-user --release --test xdp_fuzz -- --nocapture`.

use std::{
    collections::{BTreeMap, HashMap as StdHashMap, HashSet},
    net::{Ipv4Addr, Ipv6Addr},
    time::Instant,
};

use aya::maps::{MapData, PerfEventArray, perf::PerfEvent, perf::PerfEventArrayBuffer};
use relay_common::{
    Endpoint, FAMILY_V6, FallbackMeta, INITIATION_COPIES_PER_SEC, InitiationEvent, MAP_FALLBACK,
    MAX_SLOTS, NO_SLOT, PROOF_REPORTS_PER_SEC, ProofEvent, SESSION_FROM_INITIATION,
    SESSION_FROM_RESPONSE, SLOT_ACTIVE, SessionKey, SpokeSlot, counter, wire::RESPONSE_LEN,
};
use relay_user::datapath::CrossPath;
use testkit::{
    checksum::{fold, sum16},
    frame::{Addr, Csum, Frame},
    netns::Entered,
    wg::{cookie_reply, initiation, response, transport},
    xdp::{
        Harness, SlotDelta, XDP_DROP, XDP_PASS, XDP_REDIRECT, XDP_TX,
        topo::{self, GW_MAC, GW2_MAC, HUB_MAC, HUB2_MAC},
    },
};

/// Frames per run by default (measured: see SECURITY.md).
const DEFAULT_ITERS: u64 = 3_000_000;
/// Frames between full state comparisons (counters, ring, sessions);
/// `RELAYHUB_FUZZ_BATCH=1` compares after every frame (slow; to pin down a
/// counter mismatch).
const BATCH: usize = 2000;

const PORT: u16 = 51820;
/// MTU of the ingress NIC (veth default).
const MTU1: usize = 1500;
/// MTU of the second NIC: relays to C larger than this cannot be sent.
const MTU2: usize = 1000;
const HUB4: [u8; 4] = [198, 51, 100, 1];
const HUB6: [u8; 16] = [0x20, 0x01, 0x0d, 0xb8, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];

/// One pass of the run: the hub configuration the program runs under
/// (written with `relay_user::datapath::hub_config`, the controller's own
/// builder) and the model predicts from.
#[derive(Clone, Copy, Debug)]
struct Pass {
    name: &'static str,
    /// The hub's configured addresses. A family with an address: only
    /// frames to that address are the hub's (others are passed as
    /// `pass_not_for_hub`), and spokes of the other family can be relayed
    /// into it (this address is the new source). Without: anything to the
    /// port counts, and no relay into that family.
    v4: Option<[u8; 4]>,
    v6: Option<[u8; 16]>,
    /// `--cross-family-path userspace`: every cross-family frame goes to
    /// the controller.
    userspace: bool,
    /// The fallback perf buffers have a reader (the controller opens
    /// them); without one a fallback frame is dropped (`fallback_full`).
    reader: bool,
    /// Percent of the frames.
    share: u64,
}

/// The passes, in order. The hub as it runs in production (both
/// addresses, the XDP cross-family path, the fallback reader) gets the
/// largest share; `port-only` is the program without addresses (the
/// check off, as before the hub had addresses).
const PASSES: [Pass; 5] = [
    Pass {
        name: "production",
        v4: Some(HUB4),
        v6: Some(HUB6),
        userspace: false,
        reader: true,
        share: 40,
    },
    Pass {
        name: "production-userspace-cross",
        v4: Some(HUB4),
        v6: Some(HUB6),
        userspace: true,
        reader: true,
        share: 15,
    },
    Pass {
        name: "ipv4-address-only",
        v4: Some(HUB4),
        v6: None,
        userspace: false,
        reader: true,
        share: 10,
    },
    Pass {
        name: "ipv6-address-only-no-reader",
        v4: None,
        v6: Some(HUB6),
        userspace: false,
        reader: false,
        share: 10,
    },
    Pass {
        name: "port-only",
        v4: None,
        v6: None,
        userspace: false,
        reader: true,
        share: 25,
    },
];

impl Pass {
    /// The hub's configured address in the family of `v6`.
    fn hub_addr(&self, v6: bool) -> Option<&[u8]> {
        if v6 {
            self.v6.as_ref().map(|a| &a[..])
        } else {
            self.v4.as_ref().map(|a| &a[..])
        }
    }
}

/// How the hub's routing table reaches a spoke.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Route {
    /// Via the gateway with a permanent neighbour on the ingress NIC: TX.
    Gw,
    /// Via the second NIC (MTU [`MTU2`]): REDIRECT.
    Nic2,
    /// Via a gateway without neighbour entry: back to the L2 sender (TX).
    NoNeigh,
    /// No route: drop.
    None,
}

#[derive(Clone, Copy, Debug)]
struct SpokeDef {
    slot: u32,
    ep: Endpoint,
    active: bool,
    route: Route,
}

const fn v4(slot: u32, a: [u8; 4], port: u16, route: Route) -> SpokeDef {
    SpokeDef {
        slot,
        ep: Endpoint::v4(a, port),
        active: true,
        route,
    }
}

const fn v6(slot: u32, a: [u8; 16], port: u16, route: Route) -> SpokeDef {
    SpokeDef {
        slot,
        ep: Endpoint::v6(a, port),
        active: true,
        route,
    }
}

const fn v6a(net: u8, last: u8) -> [u8; 16] {
    [
        0x20, 0x01, 0x0d, 0xb8, 0, net, 0, 0, 0, 0, 0, 0, 0, 0, 0, last,
    ]
}

/// Registered spokes (with an endpoint in ENDPOINT_SLOTS).
const SPOKES: [SpokeDef; 10] = [
    v4(1, [203, 0, 113, 10], 40000, Route::Gw),
    v4(2, [203, 0, 113, 20], 50000, Route::Gw),
    v4(3, [100, 64, 0, 30], 60000, Route::Nic2),
    v6(4, v6a(0x99, 0x10), 41000, Route::Gw),
    v6(5, v6a(0x99, 0x20), 51000, Route::Gw),
    // Known endpoint, slot not active.
    SpokeDef {
        active: false,
        ..v4(7, [203, 0, 113, 70], 47000, Route::Gw)
    },
    v4(8, [203, 0, 114, 40], 45000, Route::NoNeigh),
    v4(9, [10, 255, 0, 9], 1234, Route::None),
    v6(10, v6a(0xde, 0x09), 1235, Route::None),
    // Same address as slot 1, other port.
    v4(11, [203, 0, 113, 10], 40001, Route::Gw),
];
/// Active, no endpoint.
const SLOT_NO_ENDPOINT: u32 = 6;
/// Never written: zero (inactive, no endpoint).
const SLOT_EMPTY: u32 = 12;
/// An ENDPOINT_SLOTS entry pointing past the SLOTS array.
const STALE: SpokeDef = v4(MAX_SLOTS + 5, [203, 0, 113, 80], 48000, Route::Gw);
/// Slot counters compared per batch.
const NSLOTS: u32 = 14;
/// Session destinations.
const DESTS: [u32; 14] = [
    1,
    2,
    3,
    4,
    5,
    SLOT_NO_ENDPOINT,
    7,
    8,
    9,
    10,
    11,
    SLOT_EMPTY,
    MAX_SLOTS + 7,
    MAX_SLOTS - 1,
];

// ---------------------------------------------------------------------------
// PRNG: splitmix64.

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn range(&mut self, lo: usize, hi_incl: usize) -> usize {
        lo + self.below(hi_incl - lo + 1)
    }
    /// True with probability `pct` percent.
    fn pct(&mut self, pct: u32) -> bool {
        (self.next() % 100) < pct as u64
    }
    fn u8(&mut self) -> u8 {
        self.next() as u8
    }
    fn u16(&mut self) -> u16 {
        self.next() as u16
    }
    fn u32(&mut self) -> u32 {
        self.next() as u32
    }
    fn fill(&mut self, b: &mut [u8]) {
        for x in b {
            *x = self.u8();
        }
    }
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        let mut v = vec![0; n];
        self.fill(&mut v);
        v
    }
    fn pick<T: Copy>(&mut self, v: &[T]) -> T {
        v[self.below(v.len())]
    }
}

fn env_u64(name: &str) -> Option<u64> {
    let v = std::env::var(name).ok()?;
    let v = v.trim();
    let r = match v.strip_prefix("0x") {
        Some(h) => u64::from_str_radix(h, 16),
        None => v.parse(),
    };
    Some(r.unwrap_or_else(|e| panic!("{name}={v}: {e}")))
}

// ---------------------------------------------------------------------------
// The reference model.

fn be16(f: &[u8], off: usize) -> u16 {
    u16::from_be_bytes([f[off], f[off + 1]])
}

fn le32(f: &[u8], off: usize) -> u32 {
    u32::from_le_bytes(f[off..off + 4].try_into().unwrap())
}

fn ctr(name: &str) -> Option<u32> {
    counter::NAMES
        .iter()
        .position(|n| *n == name)
        .map(|i| i as u32)
}

fn ctr_req(name: &str) -> u32 {
    ctr(name).unwrap_or_else(|| panic!("counter {name}"))
}

/// What the program must do with one frame.
#[derive(Debug, Default)]
struct Expect {
    /// None: test_run must refuse the frame (shorter than Ethernet).
    action: Option<u32>,
    /// For TX / REDIRECT.
    output: Option<Vec<u8>>,
    counters: Vec<(u32, u64)>,
    slots: Vec<(u32, SlotDelta)>,
    rx_seen: Option<u32>,
    keepalive_seen: Option<u32>,
    event: Option<InitiationEvent>,
    /// Why (for coverage statistics and messages).
    reason: &'static str,
    /// A relay of a frame not addressed to a hub address.
    foreign_dst: bool,
    /// The userspace fallback sample: (destination, reason counter, the
    /// frame as received).
    sample: Option<(Endpoint, u32, Vec<u8>)>,
    /// The proof report, if the source's budget allows one.
    proof: Option<ProofEvent>,
}

impl Expect {
    fn pass(reason: &'static str) -> Self {
        Self {
            action: Some(XDP_PASS),
            reason,
            ..Default::default()
        }
    }
    fn count(mut self, c: u32) -> Self {
        self.counters.push((c, 1));
        self
    }
}

struct Model {
    endpoint_slots: StdHashMap<Endpoint, u32>,
    slots: StdHashMap<u32, (SpokeSlot, Route)>,
    baseline: BTreeMap<(u32, u32), (u32, u32)>,
    sessions: BTreeMap<(u32, u32), (u32, u32)>,
    /// Sessions by source slot (for hits), rebuilt with the table.
    by_src: StdHashMap<u32, Vec<u32>>,
    ifindex: u32,
    pass: Pass,
    c: Counters,
    /// Responses whose sender index was another pair's entry (not learned).
    learn_conflicts: u64,
}

/// Counter indices the model uses (looked up by name where they may not
/// exist in every version of the program).
struct Counters {
    seen: u32,
    malformed: u32,
    unsupported: u32,
    unknown: u32,
    no_session: u32,
    hub_response: Option<u32>,
    hub_cookie: Option<u32>,
    drop_loop: u32,
    no_dest: u32,
    cross: u32,
    learned: u32,
    learn_conflict: Option<u32>,
    no_route: u32,
    too_big: u32,
    fallback: u32,
    relayed: u32,
    bytes: u32,
    transport: u32,
    response: u32,
    cookie: u32,
    keepalives: u32,
    /// Relayed packets by family pair.
    v4_to_v4: u32,
    v6_to_v6: u32,
    v4_to_v6: u32,
    v6_to_v4: u32,
    not_for_hub: u32,
    no_checksum: u32,
    userspace_fallback: u32,
    fallback_full: u32,
}

impl Counters {
    fn new() -> Self {
        Self {
            seen: ctr_req("seen"),
            malformed: ctr_req("pass_malformed"),
            unsupported: ctr_req("pass_unsupported"),
            unknown: ctr_req("pass_unknown_source"),
            no_session: ctr_req("pass_no_session"),
            hub_response: ctr("hub_response"),
            hub_cookie: ctr("hub_cookie"),
            drop_loop: ctr_req("drop_loop"),
            no_dest: ctr_req("drop_no_destination"),
            cross: ctr_req("pass_cross_family"),
            learned: ctr_req("response_learned"),
            learn_conflict: ctr("learn_conflict"),
            no_route: ctr_req("drop_no_route"),
            // A too-big frame is a fib_lookup failure unless the program
            // counts it separately.
            too_big: ctr("drop_too_big").unwrap_or(ctr_req("drop_no_route")),
            fallback: ctr_req("fib_fallback"),
            relayed: ctr_req("relayed_packets"),
            bytes: ctr_req("relayed_bytes"),
            transport: ctr_req("relayed_transport"),
            response: ctr_req("relayed_response"),
            cookie: ctr_req("relayed_cookie"),
            keepalives: ctr_req("relayed_keepalives"),
            v4_to_v4: ctr_req("relayed_v4_to_v4"),
            v6_to_v6: ctr_req("relayed_v6_to_v6"),
            v4_to_v6: ctr_req("relayed_v4_to_v6"),
            v6_to_v4: ctr_req("relayed_v6_to_v4"),
            not_for_hub: ctr_req("pass_not_for_hub"),
            no_checksum: ctr_req("no_checksum"),
            userspace_fallback: ctr_req("userspace_fallback"),
            fallback_full: ctr_req("drop_fallback_full"),
        }
    }
}

/// The model of a per-source-address budget (proof reports, initiation
/// copies): at most `per_sec` in a window of one second from the first. The program reads the clock once per frame somewhere in
/// [k0, k1]; a window end inside that interval may go either way, and
/// then the address is uncertain for the rest of the batch.
type StartRange = (u64, u64);

struct Budget {
    per_sec: u32,
    /// Per address: the range the window's start lies in, and its count.
    windows: StdHashMap<(u8, [u8; 16]), (StartRange, u32)>,
    uncertain: HashSet<(u8, [u8; 16])>,
}

impl Budget {
    fn new(per_sec: u32) -> Self {
        Self {
            per_sec,
            windows: StdHashMap::new(),
            uncertain: HashSet::new(),
        }
    }

    /// Whether `reported` fits the budget; updates the model.
    fn observe(&mut self, key: (u8, [u8; 16]), k0: u64, k1: u64, reported: bool) -> bool {
        const SECOND: u64 = 1_000_000_000;
        if self.uncertain.contains(&key) {
            return true;
        }
        let Some(((lo, hi), count)) = self.windows.get(&key).copied() else {
            self.windows.insert(key, ((k0, k1), 1));
            return reported;
        };
        if k0.saturating_sub(hi) >= SECOND {
            self.windows.insert(key, ((k0, k1), 1));
            return reported;
        }
        if k1.saturating_sub(lo) < SECOND {
            let allowed = count < self.per_sec;
            if allowed {
                self.windows.insert(key, ((lo, hi), count + 1));
            }
            return reported == allowed;
        }
        self.uncertain.insert(key);
        true
    }
}

/// IPv6 extension headers the program walks (and ESP).
fn is_ext(nh: u8) -> bool {
    matches!(nh, 0 | 43 | 44 | 60 | 51 | 50 | 135 | 139 | 140)
}

/// Is a frame with IPv6 extension headers UDP to the hub port, looking at
/// no more than 4 headers? `None`: the chain runs past the frame.
fn ext_chain_to_port(f: &[u8], mut nh: u8) -> Option<bool> {
    let mut off = 54;
    for _ in 0..4 {
        if off + 4 > f.len() {
            return None;
        }
        let h = &f[off..off + 4];
        match nh {
            17 => return Some(be16(h, 2) == PORT),
            44 => {
                if be16(h, 2) & 0xfff8 != 0 {
                    return Some(false);
                }
                off += 8;
            }
            51 => off += (h[1] as usize + 2) * 4,
            0 | 43 | 60 | 135 | 139 | 140 => off += (h[1] as usize + 1) * 8,
            _ => return Some(false),
        }
        nh = h[0];
    }
    Some(false)
}

/// One's complement sum of `data` reduced mod 0xffff.
fn ones(data: &[u8]) -> u64 {
    sum16(data, 0) % 0xffff
}

impl Model {
    fn new(ifindex: u32, pass: Pass, rng: &mut Rng) -> Self {
        let mut endpoint_slots = StdHashMap::new();
        let mut slots = StdHashMap::new();
        for s in SPOKES {
            endpoint_slots.insert(s.ep, s.slot);
            slots.insert(
                s.slot,
                (
                    SpokeSlot {
                        endpoint: s.ep,
                        flags: if s.active { SLOT_ACTIVE } else { 0 },
                    },
                    s.route,
                ),
            );
        }
        endpoint_slots.insert(STALE.ep, STALE.slot);
        slots.insert(
            SLOT_NO_ENDPOINT,
            (
                SpokeSlot {
                    endpoint: Endpoint::default(),
                    flags: SLOT_ACTIVE,
                },
                Route::None,
            ),
        );
        // Sessions: from every registered slot (and some that are not) to
        // every kind of destination, a few receivers each.
        let mut baseline = BTreeMap::new();
        let srcs: Vec<u32> = SPOKES
            .iter()
            .map(|s| s.slot)
            .chain([SLOT_NO_ENDPOINT, SLOT_EMPTY, STALE.slot, 0])
            .collect();
        for &src in &srcs {
            for &dst in &DESTS {
                for _ in 0..2 {
                    baseline.insert((src, rng.u32()), (dst, SESSION_FROM_INITIATION));
                }
            }
        }
        let mut m = Self {
            endpoint_slots,
            slots,
            sessions: baseline.clone(),
            baseline,
            by_src: StdHashMap::new(),
            ifindex,
            pass,
            c: Counters::new(),
            learn_conflicts: 0,
        };
        m.index();
        m
    }

    fn index(&mut self) {
        self.by_src.clear();
        for &(src, receiver) in self.sessions.keys() {
            self.by_src.entry(src).or_default().push(receiver);
        }
    }

    fn reset_sessions(&mut self) {
        self.sessions = self.baseline.clone();
        self.index();
    }

    /// Slot state as the program reads it: out of range is "no entry".
    fn slot(&self, slot: u32) -> Option<(SpokeSlot, Route)> {
        if slot >= MAX_SLOTS {
            return None;
        }
        Some(
            self.slots
                .get(&slot)
                .copied()
                .unwrap_or((SpokeSlot::default(), Route::None)),
        )
    }

    /// An active registered endpoint's slot.
    fn source_slot(&self, ep: &Endpoint) -> Option<u32> {
        let slot = *self.endpoint_slots.get(ep)?;
        let (s, _) = self.slot(slot)?;
        (s.flags & SLOT_ACTIVE != 0).then_some(slot)
    }

    fn expect(&mut self, f: &[u8]) -> Expect {
        let c = &self.c;
        if f.len() < 14 {
            return Expect {
                reason: "refused (< 14 bytes)",
                ..Default::default()
            };
        }
        let v6 = match be16(f, 12) {
            0x0800 => false,
            0x86dd => true,
            _ => return Expect::pass("not IP"),
        };
        // IP layer: (IP header length, IP payload length per the header).
        let (ip_hlen, ip_payload_len) = if !v6 {
            if f.len() < 34 {
                return Expect::pass("short IPv4 header");
            }
            let ip = &f[14..34];
            if ip[0] >> 4 != 4 || ip[9] != 17 {
                return Expect::pass("not IPv4 UDP");
            }
            let ihl = (ip[0] & 0x0f) as usize;
            let frag = be16(ip, 6);
            if ihl < 5 || frag & 0x1fff != 0 {
                return Expect::pass("bad IHL or non-first fragment");
            }
            let dport_off = 14 + ihl * 4 + 2;
            if dport_off + 2 > f.len() || be16(f, dport_off) != PORT {
                return Expect::pass("not to the hub port");
            }
            if ihl != 5 || frag & 0x2000 != 0 {
                return Expect::pass("IPv4 options or first fragment").count(c.unsupported);
            }
            let tot = be16(ip, 2) as usize;
            if tot < 28 || 14 + tot > f.len() {
                return Expect::pass("IPv4 length").count(c.seen).count(c.malformed);
            }
            // The kernel would drop it; the relay must not re-checksum it.
            if fold(sum16(ip, 0)) != 0xffff {
                return Expect::pass("bad IPv4 header checksum")
                    .count(c.seen)
                    .count(c.malformed);
            }
            (20, tot - 20)
        } else {
            if f.len() < 22 {
                return Expect::pass("short IPv6 header");
            }
            if f[14] >> 4 != 6 {
                return Expect::pass("not IPv6");
            }
            let nh = f[20];
            if nh != 17 {
                if is_ext(nh) && ext_chain_to_port(f, nh) == Some(true) {
                    return Expect::pass("IPv6 extension headers").count(c.unsupported);
                }
                return Expect::pass("not IPv6 UDP");
            }
            if f.len() < 58 || be16(f, 56) != PORT {
                return Expect::pass("not to the hub port");
            }
            let pl = be16(f, 18) as usize;
            if pl < 8 || 54 + pl > f.len() {
                return Expect::pass("IPv6 length").count(c.seen).count(c.malformed);
            }
            (40, pl)
        };
        // Addressed to the hub: with an address configured in this family,
        // only that address is the hub's; the hub merely routes the rest
        // (relaying it would send frames from a foreign source).
        let dst_off = if v6 { 38 } else { 30 };
        if let Some(hub) = self.pass.hub_addr(v6)
            && f[dst_off..dst_off + hub.len()] != *hub
        {
            return Expect::pass("not for the hub").count(c.not_for_hub);
        }
        let udp_off = 14 + ip_hlen;
        let wg_off = udp_off + 8;
        let malformed = |why| Expect::pass(why).count(c.seen).count(c.malformed);
        let udp_len = be16(f, udp_off + 4) as usize;
        if udp_len < 12 || udp_len > ip_payload_len {
            return malformed("UDP length");
        }
        let len = udp_len - 8;
        let kind = f[wg_off];
        if f[wg_off + 1..wg_off + 4] != [0, 0, 0] {
            return malformed("WireGuard reserved bytes");
        }
        let ok = match kind {
            1 => len == 148,
            2 => len == 92,
            3 => len == 64,
            4 => len >= 32,
            _ => false,
        };
        if !ok {
            return malformed("WireGuard type or length");
        }

        let (src_addr, dst_addr) = if v6 {
            (&f[22..38], &f[38..54])
        } else {
            (&f[26..30], &f[30..34])
        };
        let endpoint = |a: &[u8], port| {
            if v6 {
                Endpoint::v6(a.try_into().unwrap(), port)
            } else {
                Endpoint::v4(a.try_into().unwrap(), port)
            }
        };
        let src_ep = endpoint(src_addr, be16(f, udp_off));
        let src = self.source_slot(&src_ep);
        let mut e = Expect::pass("").count(c.seen);
        e.rx_seen = src;

        if kind == 1 {
            // Copied (and counted queued) within the source address's copy
            // budget: checked per frame against the budget model.
            e.reason = "initiation";
            e.event = Some(InitiationEvent {
                src: src_ep,
                dst: endpoint(dst_addr, be16(f, udp_off + 2)),
                src_slot: src.unwrap_or(NO_SLOT),
                ifindex: self.ifindex,
                frame: f[wg_off..wg_off + 148].try_into().unwrap(),
            });
            return e;
        }
        let Some(slot) = src else {
            e.reason = "unknown source";
            if kind == 2 || kind == 4 {
                // What the controller needs to prove a moved endpoint: a
                // response whole, a transport frame's header.
                let copied = if kind == 2 { RESPONSE_LEN } else { 16 };
                let mut head = [0u8; RESPONSE_LEN];
                head[..copied].copy_from_slice(&f[wg_off..wg_off + copied]);
                e.proof = Some(ProofEvent {
                    src: src_ep,
                    dst: endpoint(dst_addr, be16(f, udp_off + 2)),
                    len: len as u32,
                    frame: head,
                });
            }
            return e.count(c.unknown);
        };
        let receiver = le32(f, wg_off + if kind == 2 { 8 } else { 4 });
        let keepalive = kind == 4 && len == 32;
        let key = (slot, receiver);
        let Some(&(dst_slot, _)) = self.sessions.get(&key) else {
            e.reason = "no session (hub's own)";
            e.counters.push((c.no_session, 1));
            match (kind, c.hub_response, c.hub_cookie) {
                (2, Some(i), _) | (3, _, Some(i)) => e.counters.push((i, 1)),
                _ => {}
            }
            e.slots.push((
                slot,
                SlotDelta {
                    hub_packets: 1,
                    hub_keepalives: keepalive as u64,
                    ..Default::default()
                },
            ));
            if keepalive {
                e.keepalive_seen = Some(slot);
            }
            return e;
        };
        if dst_slot == slot {
            e.reason = "loop";
            e.action = Some(XDP_DROP);
            return e.count(c.drop_loop);
        }
        let dst = match self.slot(dst_slot) {
            Some((s, route)) if s.flags & SLOT_ACTIVE != 0 && s.endpoint.family != 0 => {
                (s.endpoint, route)
            }
            _ => {
                e.reason = "no destination";
                e.action = Some(XDP_DROP);
                return e.count(c.no_dest);
            }
        };
        let (dst_ep, route) = dst;
        // Across families the new source is the hub's address in the
        // destination's family: without one, the frame is passed.
        let cross = dst_ep.family != src_ep.family;
        let out_v6 = dst_ep.family == FAMILY_V6;
        let hub_addr: Vec<u8> = if !cross {
            dst_addr.to_vec()
        } else {
            match self.pass.hub_addr(out_v6) {
                Some(a) => a.to_vec(),
                None => {
                    e.reason = "cross family";
                    return e.count(c.cross);
                }
            }
        };
        if kind == 2 {
            // The responder's sender index, seen from the initiator.
            // Insert-if-absent: another pair's entry is never taken over;
            // the same pair's is refreshed (flags kept).
            let k = (dst_slot, le32(f, wg_off + 4));
            match self.sessions.get(&k) {
                None => {
                    self.by_src.entry(k.0).or_default().push(k.1);
                    self.sessions.insert(k, (slot, SESSION_FROM_RESPONSE));
                    e.counters.push((c.learned, 1));
                }
                Some(&(d, _)) if d == slot => e.counters.push((c.learned, 1)),
                Some(_) => {
                    self.learn_conflicts += 1;
                    if let Some(i) = c.learn_conflict {
                        e.counters.push((i, 1));
                    }
                }
            }
        }
        let csum_in = be16(f, udp_off + 6);
        let spoke_deltas = |e: &mut Expect| {
            e.slots.push((
                slot,
                SlotDelta {
                    rx_packets: 1,
                    rx_bytes: len as u64,
                    rx_keepalives: keepalive as u64,
                    ..Default::default()
                },
            ));
            e.slots.push((
                dst_slot,
                SlotDelta {
                    tx_packets: 1,
                    tx_bytes: len as u64,
                    ..Default::default()
                },
            ));
        };

        // The userspace fallback (README "Dual-stack"): every cross-family
        // frame with `--cross-family-path userspace`, and an IPv4 frame
        // without UDP checksum for an IPv6 spoke (IPv6 needs one). The
        // frame goes whole to the controller and is dropped here; with no
        // reader it is only dropped.
        let fallback = if !cross {
            None
        } else if self.pass.userspace {
            Some(c.userspace_fallback)
        } else if !v6 && csum_in == 0 {
            Some(c.no_checksum)
        } else {
            None
        };
        if let Some(why) = fallback {
            e.action = Some(XDP_DROP);
            if why != c.userspace_fallback {
                e.counters.push((why, 1));
            }
            if !self.pass.reader {
                e.reason = if why == c.no_checksum {
                    "to userspace: no checksum, no reader (dropped)"
                } else {
                    "to userspace: configured, no reader (dropped)"
                };
                return e.count(c.fallback_full);
            }
            e.reason = if why == c.no_checksum {
                "to userspace: no checksum"
            } else {
                "to userspace: configured"
            };
            e.counters.push((c.userspace_fallback, 1));
            spoke_deltas(&mut e);
            if keepalive {
                e.keepalive_seen = Some(slot);
            }
            e.sample = Some((dst_ep, why, f.to_vec()));
            return e;
        }

        // The relayed frame, from scratch: Ethernet (addresses below), the
        // IP header (the input's, rewritten; or a new one in the other
        // family), then the input's UDP header (ports and checksum below),
        // payload and any trailing bytes.
        let out_alen = if out_v6 { 16 } else { 4 };
        let ip_out: Vec<u8> = if !cross {
            let alen = if v6 { 16 } else { 4 };
            let (s_off, d_off) = if v6 { (8, 24) } else { (12, 16) };
            let mut ip = f[14..14 + ip_hlen].to_vec();
            ip[s_off..s_off + alen].copy_from_slice(&hub_addr);
            ip[d_off..d_off + alen].copy_from_slice(&dst_ep.addr[..alen]);
            ip[if v6 { 7 } else { 8 }] = 64;
            if !v6 {
                ip[10] = 0;
                ip[11] = 0;
                let h = !fold(sum16(&ip, 0));
                ip[10..12].copy_from_slice(&h.to_be_bytes());
            }
            ip
        } else if out_v6 {
            // Version 6, class and flow label 0, the same payload length,
            // UDP, hop limit 64.
            let mut ip = vec![0x60, 0, 0, 0];
            ip.extend((ip_payload_len as u16).to_be_bytes());
            ip.extend([17, 64]);
            ip.extend(&hub_addr);
            ip.extend(&dst_ep.addr);
            ip
        } else {
            // IHL 5, TOS 0, id 0 with DF (an atomic datagram), TTL 64, UDP.
            let mut ip = vec![0x45, 0];
            ip.extend(((ip_payload_len + 20) as u16).to_be_bytes());
            ip.extend([0, 0, 0x40, 0, 64, 17, 0, 0]);
            ip.extend(&hub_addr);
            ip.extend(&dst_ep.addr[..4]);
            let h = !fold(sum16(&ip, 0));
            ip[10..12].copy_from_slice(&h.to_be_bytes());
            ip
        };
        let mut out = vec![0; 12];
        out.extend(if out_v6 { 0x86ddu16 } else { 0x0800 }.to_be_bytes());
        out.extend(&ip_out);
        let out_udp = out.len();
        out.extend(&f[udp_off..]);
        out[out_udp..out_udp + 2].copy_from_slice(&PORT.to_be_bytes());
        out[out_udp + 2..out_udp + 4].copy_from_slice(&dst_ep.port.to_be_bytes());
        // UDP checksum: zero stays zero on IPv4 (an IPv4 zero never reaches
        // IPv6: fallback above); otherwise whatever error the input
        // checksum had is kept (a correct one stays correct). The pseudo
        // headers of both families sum alike (same length and protocol).
        if csum_in != 0 || v6 {
            let pseudo = |a: &[u8], b: &[u8]| {
                let mut p = a.to_vec();
                p.extend(b);
                p.extend([0, 0, 0, 17]);
                p.extend((udp_len as u16).to_be_bytes());
                p
            };
            let residual_in =
                (ones(&pseudo(src_addr, dst_addr)) + ones(&f[udp_off..udp_off + udp_len])) % 0xffff;
            out[out_udp + 6] = 0;
            out[out_udp + 7] = 0;
            let s_out = (ones(&pseudo(&hub_addr, &dst_ep.addr[..out_alen]))
                + ones(&out[out_udp..out_udp + udp_len]))
                % 0xffff;
            let c = match (residual_in + 0xffff - s_out) % 0xffff {
                0 => 0xffff,
                c => c as u16,
            };
            out[out_udp + 6..out_udp + 8].copy_from_slice(&c.to_be_bytes());
        }
        let ip_len = ip_out.len() + ip_payload_len;
        // The egress MTU is checked before the neighbour (fib_lookup).
        let mtu = if route == Route::Nic2 { MTU2 } else { MTU1 };
        if route != Route::None && ip_len > mtu {
            e.reason = if cross && out_v6 {
                "too big for the egress NIC (grown to IPv6)"
            } else {
                "too big for the egress NIC"
            };
            e.action = Some(XDP_DROP);
            return e.count(c.too_big);
        }
        let (action, macs) = match route {
            Route::Gw => (XDP_TX, Some((GW_MAC, HUB_MAC))),
            Route::Nic2 => (XDP_REDIRECT, Some((GW2_MAC, HUB2_MAC))),
            Route::NoNeigh => {
                e.counters.push((c.fallback, 1));
                (XDP_TX, None)
            }
            Route::None => {
                e.reason = "no route";
                e.action = Some(XDP_DROP);
                return e.count(c.no_route);
            }
        };
        match macs {
            Some((d, s)) => {
                out[0..6].copy_from_slice(&d);
                out[6..12].copy_from_slice(&s);
            }
            None => {
                out[0..6].copy_from_slice(&f[6..12]);
                out[6..12].copy_from_slice(&f[0..6]);
            }
        }
        e.reason = match (cross, out_v6, kind, keepalive) {
            (true, true, ..) => "relayed IPv4 -> IPv6",
            (true, false, ..) => "relayed IPv6 -> IPv4",
            (_, _, 2, _) => "relayed response",
            (_, _, 3, _) => "relayed cookie reply",
            (_, _, _, true) => "relayed keepalive",
            _ => "relayed transport",
        };
        e.action = Some(action);
        e.output = Some(out);
        e.counters.extend([
            (c.relayed, 1),
            (c.bytes, len as u64),
            (
                match kind {
                    4 => c.transport,
                    2 => c.response,
                    _ => c.cookie,
                },
                1,
            ),
        ]);
        if keepalive {
            e.counters.push((c.keepalives, 1));
            e.keepalive_seen = Some(slot);
        }
        e.counters.push((
            match (v6, out_v6) {
                (false, false) => c.v4_to_v4,
                (false, true) => c.v4_to_v6,
                (true, false) => c.v6_to_v4,
                (true, true) => c.v6_to_v6,
            },
            1,
        ));
        spoke_deltas(&mut e);
        e.foreign_dst = dst_addr != (if v6 { &HUB6[..] } else { &HUB4[..] });
        e
    }
}

// ---------------------------------------------------------------------------
// Frame generation.

/// A source for a generated frame.
#[derive(Clone, Copy)]
enum Source {
    Spoke(SpokeDef),
    Stranger,
}

struct Gen {
    rng: Rng,
}

impl Gen {
    fn mac(&mut self) -> [u8; 6] {
        if self.rng.pct(80) {
            HUB_MAC
        } else {
            let mut m = [0; 6];
            self.rng.fill(&mut m);
            m
        }
    }

    /// A well-formed frame from some source to the hub port.
    fn valid(&mut self, model: &Model) -> Vec<u8> {
        let r = &mut self.rng;
        let src = match r.below(10) {
            0..=6 => Source::Spoke(r.pick(&SPOKES)),
            7 => Source::Spoke(STALE),
            _ => Source::Stranger,
        };
        let (slot, mut src_addr, mut sport) = match src {
            Source::Spoke(s) => {
                let a = if s.ep.family == 6 {
                    Addr::V6(Ipv6Addr::from(s.ep.addr))
                } else {
                    let a: [u8; 4] = s.ep.addr[..4].try_into().unwrap();
                    Addr::V4(Ipv4Addr::from(a))
                };
                (Some(s.slot), a, s.ep.port)
            }
            Source::Stranger => {
                let a = if r.pct(50) {
                    Addr::V6(Ipv6Addr::from(
                        r.next() as u128 | ((r.next() as u128) << 64),
                    ))
                } else {
                    Addr::V4(Ipv4Addr::from(r.u32()))
                };
                (None, a, r.u16())
            }
        };
        if r.pct(5) {
            // Known address, other port (or the other way round).
            sport = sport.wrapping_add(1 + r.below(3) as u16);
        }
        if r.pct(2) {
            src_addr = match src_addr {
                Addr::V4(a) => Addr::V4(Ipv4Addr::from(u32::from(a) ^ 1)),
                Addr::V6(a) => Addr::V6(Ipv6Addr::from(u128::from(a) ^ 1)),
            };
        }
        let v6 = matches!(src_addr, Addr::V6(_));
        let dst = if r.pct(92) {
            if v6 {
                Addr::V6(HUB6.into())
            } else {
                Addr::V4(HUB4.into())
            }
        } else if v6 {
            Addr::V6(Ipv6Addr::from(r.next() as u128))
        } else {
            Addr::V4(Ipv4Addr::from(r.u32()))
        };
        // The receiver: a live session of this source, or anything.
        let receiver = match slot.and_then(|s| model.by_src.get(&s)) {
            Some(v) if r.pct(75) => r.pick(v),
            _ => r.u32(),
        };
        let max_data = 1500 - 14 - if v6 { 40 } else { 20 } - 8 - 32;
        let kind = match r.below(20) {
            0..=1 => 1,
            2..=5 => 2,
            6..=7 => 3,
            8..=18 => 4,
            _ => r.u8(),
        };
        let mut payload = match kind {
            1 => {
                let mut m = initiation(r.u32());
                r.fill(&mut m[8..]);
                m
            }
            2 => {
                // Sometimes a sender index the initiator already uses for
                // another session (index takeover attempts).
                let taken = slot
                    .and_then(|s| model.sessions.get(&(s, receiver)))
                    .and_then(|(dst, _)| model.by_src.get(dst));
                let sender = match taken {
                    Some(v) if r.pct(30) => r.pick(v),
                    _ => r.u32(),
                };
                let mut m = response(sender, receiver);
                r.fill(&mut m[12..]);
                m
            }
            3 => {
                let mut m = cookie_reply(receiver);
                r.fill(&mut m[8..]);
                m
            }
            _ => {
                let data = match r.below(4) {
                    0 => 0,
                    1 => r.below(64),
                    2 => r.below(max_data + 1),
                    _ => max_data,
                };
                let mut m = transport(receiver, data);
                m[0] = kind;
                r.fill(&mut m[8..]);
                m
            }
        };
        if r.pct(3) {
            // A wrong length for the type.
            if r.pct(50) && payload.len() > 4 {
                payload.truncate(r.range(4, payload.len() - 1));
            } else {
                let n = r.range(1, 40);
                payload.extend(r.bytes(n));
            }
        }
        let csum = if !v6 && r.pct(25) {
            Csum::Zero
        } else {
            Csum::Full
        };
        let frame = Frame {
            eth_dst: self.mac(),
            eth_src: {
                let mut m = GW_MAC;
                if self.rng.pct(30) {
                    self.rng.fill(&mut m);
                }
                m
            },
            src: src_addr,
            dst,
            ttl: self.rng.u8(),
            sport,
            dport: PORT,
            payload,
            csum,
        };
        let mut f = frame.build();
        let r = &mut self.rng;
        if r.pct(8) {
            // A wrong UDP checksum (v6: possibly zero).
            let off = if v6 { 60 } else { 40 };
            let c = if r.pct(30) { 0 } else { r.u16() };
            f[off..off + 2].copy_from_slice(&c.to_be_bytes());
        }
        if r.pct(20) {
            // IP header fields that do not matter: id, tos, flow label.
            if v6 {
                f[15] = r.u8();
                f[16] = r.u8();
                f[17] = r.u8();
            } else {
                f[15] = r.u8();
                f[18] = r.u8();
                f[19] = r.u8();
                fix_ipv4_csum(&mut f);
            }
        }
        if r.pct(5) {
            // Ethernet padding.
            let n = r.range(1, 40);
            f.extend(r.bytes(n));
        }
        f
    }

    fn mutate(&mut self, f: &mut Vec<u8>) {
        let r = &mut self.rng;
        let v6 = f.len() >= 14 && be16(f, 12) == 0x86dd;
        let udp = if v6 { 54 } else { 34 };
        match r.below(14) {
            0 => {
                // Bit flips, mostly in the headers.
                for _ in 0..r.range(1, 4) {
                    if f.is_empty() {
                        break;
                    }
                    let end = if r.pct(80) { f.len().min(100) } else { f.len() };
                    let i = r.below(end);
                    f[i] ^= 1 << r.below(8);
                }
            }
            1 => {
                // Random bytes written.
                for _ in 0..r.range(1, 3) {
                    if f.is_empty() {
                        break;
                    }
                    let end = f.len().min(100);
                    let i = r.below(end);
                    f[i] = r.u8();
                }
            }
            2 => {
                // Truncation, often inside the headers.
                let n = if r.pct(60) {
                    r.below(f.len().min(100) + 1)
                } else {
                    r.below(f.len() + 1)
                };
                f.truncate(n);
            }
            3 => {
                // IP length lies.
                let off = if v6 { 18 } else { 16 };
                if f.len() >= off + 2 {
                    let old = be16(f, off);
                    let new = lie(r, old);
                    f[off..off + 2].copy_from_slice(&new.to_be_bytes());
                    if !v6 && r.pct(70) {
                        fix_ipv4_csum(f);
                    }
                }
            }
            4 => {
                // UDP length lies.
                if f.len() >= udp + 8 {
                    let old = be16(f, udp + 4);
                    let new = lie(r, old);
                    f[udp + 4..udp + 6].copy_from_slice(&new.to_be_bytes());
                }
            }
            5 if !v6 => ipv4_options(r, f),
            5 | 6 if v6 => ipv6_ext(r, f),
            6 => {
                // IPv4 fragment flags and offsets.
                if f.len() >= 34 {
                    let v: u16 = match r.below(4) {
                        0 => 0x2000,
                        1 => 0x2000 | r.range(1, 0x1fff) as u16,
                        2 => r.range(1, 0x1fff) as u16,
                        _ => r.u16(),
                    };
                    f[20..22].copy_from_slice(&v.to_be_bytes());
                    fix_ipv4_csum(f);
                }
            }
            7 => {
                // WireGuard type and reserved bytes.
                if f.len() >= udp + 12 {
                    let i = udp + 8 + r.below(4);
                    f[i] = if r.pct(50) { r.below(6) as u8 } else { r.u8() };
                }
            }
            8 => {
                // VLAN tag, other ethertypes.
                if f.len() >= 14 {
                    if r.pct(50) {
                        let tag = [0x81, 0x00, 0, r.u8()];
                        f.splice(12..12, tag);
                    } else {
                        let any = r.u16();
                        let t = r.pick(&[0x0800u16, 0x86dd, 0x0806, 0x88a8, any]);
                        f[12..14].copy_from_slice(&t.to_be_bytes());
                    }
                }
            }
            9 => {
                // Ports.
                if f.len() >= udp + 4 {
                    let i = udp + 2 * r.below(2);
                    let any = r.u16();
                    let p = r.pick(&[PORT, PORT + 1, PORT - 1, 0, any]);
                    f[i..i + 2].copy_from_slice(&p.to_be_bytes());
                }
            }
            10 => {
                // IP version / protocol / next header.
                if f.len() >= 34 {
                    if r.pct(50) {
                        f[14] = (r.u8() & 0xf0) | (f[14] & 0x0f);
                    } else if v6 {
                        f[20] = r.pick(&[6, 17, 58, 0, 43, 44, 60, 51, 50, 135, 139, 140, 59]);
                    } else {
                        let any = r.u8();
                        f[23] = r.pick(&[6, 17, 1, 0, any]);
                        fix_ipv4_csum(f);
                    }
                }
            }
            11 => {
                // Trailing junk.
                let n = r.range(1, 64);
                f.extend(r.bytes(n));
            }
            12 => {
                // IHL.
                if f.len() > 14 && !v6 {
                    f[14] = 0x40 | r.below(16) as u8;
                    if r.pct(50) {
                        fix_ipv4_csum(f);
                    }
                }
            }
            _ => {
                // Random tail after the WireGuard header.
                if f.len() > udp + 12 {
                    let from = r.range(udp + 12, f.len() - 1);
                    r.fill(&mut f[from..]);
                }
            }
        }
    }
}

fn lie(r: &mut Rng, old: u16) -> u16 {
    match r.below(5) {
        0 => old.wrapping_add(r.range(1, 8) as u16),
        1 => old.wrapping_sub(r.range(1, 8) as u16),
        2 => 0,
        3 => 0xffff,
        _ => r.u16(),
    }
}

fn fix_ipv4_csum(f: &mut [u8]) {
    if f.len() >= 34 && be16(f, 12) == 0x0800 {
        let ihl = ((f[14] & 0x0f) as usize * 4).clamp(20, f.len() - 14);
        f[24] = 0;
        f[25] = 0;
        let c = !fold(sum16(&f[14..14 + ihl], 0));
        f[24..26].copy_from_slice(&c.to_be_bytes());
    }
}

/// Insert 4..40 bytes of IPv4 options (NOP, EOL or random).
fn ipv4_options(r: &mut Rng, f: &mut Vec<u8>) {
    if f.len() < 34 {
        return;
    }
    let words = r.range(1, 10);
    let opts: Vec<u8> = match r.below(3) {
        0 => vec![1; words * 4],
        1 => {
            let mut v = vec![0; words * 4];
            v[0] = 1;
            v
        }
        _ => r.bytes(words * 4),
    };
    f.splice(34..34, opts);
    f[14] = 0x40 | (5 + words) as u8;
    if r.pct(80) {
        let tot = be16(f, 16).wrapping_add(words as u16 * 4);
        f[16..18].copy_from_slice(&tot.to_be_bytes());
    }
    fix_ipv4_csum(f);
}

/// Insert a chain of IPv6 extension headers before the UDP header.
fn ipv6_ext(r: &mut Rng, f: &mut Vec<u8>) {
    if f.len() < 54 {
        return;
    }
    let n = r.range(1, 5);
    let mut chain = Vec::new();
    let mut types = Vec::new();
    for _ in 0..n {
        types.push(r.pick(&[0u8, 43, 44, 60, 51, 135, 139, 140, 50]));
    }
    let first = types[0];
    for (i, &t) in types.iter().enumerate() {
        let next = types.get(i + 1).copied().unwrap_or(17);
        match t {
            44 => {
                let off_flags: u16 = match r.below(3) {
                    0 => 1,       // offset 0, M
                    1 => 0,       // atomic fragment
                    _ => r.u16(), // maybe a non-first fragment
                };
                chain.push(next);
                chain.push(0);
                chain.extend(off_flags.to_be_bytes());
                chain.extend(r.u32().to_be_bytes());
            }
            51 => {
                // AH: payload length in 4-octet units minus 2.
                let units = r.range(1, 4);
                chain.push(next);
                chain.push(units as u8);
                chain.extend(vec![0; 2]);
                chain.extend(r.bytes((units + 2) * 4 - 4));
            }
            50 => {
                chain.push(next);
                chain.extend(r.bytes(7));
            }
            _ => {
                let units = r.below(3);
                chain.push(next);
                chain.push(units as u8);
                chain.extend([1, 4, 0, 0, 0, 0]);
                chain.extend(vec![0; units * 8]);
            }
        }
    }
    let grow = chain.len() as u16;
    f.splice(54..54, chain);
    f[20] = first;
    if r.pct(80) {
        let pl = be16(f, 18).wrapping_add(grow);
        f[18..20].copy_from_slice(&pl.to_be_bytes());
    }
}

// ---------------------------------------------------------------------------
// The program and its maps.

/// The harness filled from the model's tables, and the fallback perf
/// buffers when the pass has a reader.
struct Hub(Harness, Vec<PerfEventArrayBuffer<MapData>>);

#[derive(Clone, Debug)]
struct Snapshot {
    counters: Vec<u64>,
    /// Per slot: deltas-able counters, last_rx_ns, last_keepalive_ns.
    slots: Vec<(SlotDelta, u64, u64)>,
}

impl Hub {
    fn load(ifindex: u32, model: &Model) -> Self {
        let mut hub = Harness::load(ifindex);
        let pass = model.pass;
        // The controller's own builder: the bytes the hub installs.
        let cfg = relay_user::datapath::hub_config(
            PORT,
            pass.v4.map(Ipv4Addr::from),
            pass.v6.map(Ipv6Addr::from),
            if pass.userspace {
                CrossPath::Userspace
            } else {
                CrossPath::Xdp
            },
        );
        hub.config.set(0, cfg, 0).unwrap();
        for (ep, slot) in &model.endpoint_slots {
            hub.endpoint_slots.insert(ep, slot, 0).unwrap();
        }
        for (slot, (s, _)) in &model.slots {
            hub.slots.set(*slot, s, 0).unwrap();
        }
        for (&(src_slot, receiver), &(dst, flags)) in &model.baseline {
            hub.set_session(src_slot, receiver, dst, flags, 0).unwrap();
        }
        let mut fallback = Vec::new();
        if pass.reader {
            let map = hub.ebpf.take_map(MAP_FALLBACK).expect("FALLBACK map");
            let mut perf = PerfEventArray::try_from(map).unwrap();
            for cpu in aya::util::online_cpus().unwrap() {
                fallback.push(perf.open(cpu, Some(8)).unwrap());
            }
        }
        Self(hub, fallback)
    }

    /// The fallback samples waiting (read with aya directly, not with the
    /// controller's reader): (destination, reason, frame).
    fn drain_fallback(&mut self) -> Vec<(Endpoint, u32, Vec<u8>)> {
        let mut out = Vec::new();
        for buf in &mut self.1 {
            if !buf.readable() {
                continue;
            }
            buf.for_each(|ev| match ev {
                PerfEvent::Sample { head, tail } => {
                    let mut s = head.to_vec();
                    s.extend_from_slice(tail);
                    let meta_len = size_of::<FallbackMeta>();
                    assert!(s.len() >= meta_len, "short fallback sample");
                    let dst = Endpoint {
                        addr: s[0..16].try_into().unwrap(),
                        port: u16::from_ne_bytes([s[16], s[17]]),
                        family: s[18],
                        _pad: s[19],
                    };
                    let reason = u32::from_ne_bytes(s[20..24].try_into().unwrap());
                    let n = u32::from_ne_bytes(s[24..28].try_into().unwrap()) as usize;
                    assert!(meta_len + n <= s.len(), "fallback sample: frame_len {n}");
                    out.push((dst, reason, s[meta_len..meta_len + n].to_vec()));
                }
                PerfEvent::Lost { count } => panic!("{count} fallback samples lost"),
            });
        }
        out
    }

    /// Run the program once on `frame`: (action, output) or the kernel's
    /// refusal.
    fn run(&mut self, frame: &[u8]) -> Result<(u32, &[u8]), aya::programs::ProgramError> {
        self.0.run_once(frame)
    }

    fn snapshot(&self) -> Snapshot {
        Snapshot {
            counters: self.0.counter_totals(),
            slots: self.0.slot_snapshot(NSLOTS),
        }
    }

    /// A snapshot to compare a batch against: slot timestamps cleared
    /// first (see `clear_slot_times`).
    fn before(&mut self) -> Snapshot {
        self.0.clear_slot_times(NSLOTS);
        self.snapshot()
    }

    fn drain_events(&mut self) -> Vec<InitiationEvent> {
        self.0.drain_events()
    }

    fn session_table(&self) -> BTreeMap<(u32, u32), (u32, u32)> {
        self.0.session_table()
    }

    /// Back to the model's baseline: learned entries removed, overwritten
    /// ones restored.
    fn reset_sessions(&mut self, model: &Model) {
        for (k, v) in self.session_table() {
            match model.baseline.get(&k) {
                Some(b) if *b == v => {}
                Some(&(dst_slot, flags)) => {
                    self.0.set_session(k.0, k.1, dst_slot, flags, 0).unwrap()
                }
                None => self
                    .0
                    .sessions
                    .remove(&SessionKey {
                        src_slot: k.0,
                        receiver: k.1,
                    })
                    .unwrap(),
            }
        }
    }
}

/// The hub's NICs in a fresh namespace ([`topo::two_nics`]): `rhf0`
/// (ingress; gateway with a permanent neighbour towards 203.0.113.0/24 and
/// 2001:db8:99::/64, a gateway without neighbour towards 203.0.114.0/24)
/// and `rhf1` (MTU [`MTU2`], so no IPv6, towards 100.64.0.0/24).
/// 10.255.0.0/16 and 2001:db8:de::/64 have no route.
fn topology(ns: &Entered) -> u32 {
    topo::two_nics(ns, "rhf", Some(MTU2), true).0
}

// ---------------------------------------------------------------------------
// The run.

/// Known deviations from what a relay should ideally do, counted and
/// reported (and failures with `RELAYHUB_FUZZ_STRICT=1`):
/// - `foreign_dst`: a frame to the hub port but not to a hub address is
///   relayed, and the relayed frame carries that address as its source.
///   Only in a family without a configured hub address (the program's
///   check is off there: the `port-only` pass); where the pass configures
///   one, such a relay fails the run.
#[derive(Default)]
struct Deviations {
    foreign_dst: u64,
    first: Vec<String>,
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn action_name(a: u32) -> &'static str {
    ["ABORTED", "DROP", "PASS", "TX", "REDIRECT"]
        .get(a as usize)
        .copied()
        .unwrap_or("?")
}

/// Source endpoint of a frame read naively at the plain-header offsets.
fn naive_source(f: &[u8]) -> Option<Endpoint> {
    match be16(f, 12) {
        0x0800 if f.len() >= 42 => Some(Endpoint::v4(f[26..30].try_into().unwrap(), be16(f, 34))),
        0x86dd if f.len() >= 62 => Some(Endpoint::v6(f[22..38].try_into().unwrap(), be16(f, 54))),
        _ => None,
    }
}

fn naive_destination(f: &[u8]) -> Option<Endpoint> {
    match be16(f, 12) {
        0x0800 if f.len() >= 42 => Some(Endpoint::v4(f[30..34].try_into().unwrap(), be16(f, 36))),
        0x86dd if f.len() >= 62 => Some(Endpoint::v6(f[38..54].try_into().unwrap(), be16(f, 56))),
        _ => None,
    }
}

/// The hub's endpoint in the family of `ep` if the pass configures an
/// address there.
fn hub_endpoint(pass: &Pass, ep: &Endpoint) -> Option<Endpoint> {
    if ep.family == FAMILY_V6 {
        pass.v6.map(|a| Endpoint::v6(a, PORT))
    } else {
        pass.v4.map(|a| Endpoint::v4(a, PORT))
    }
}

/// The seed of pass number `k` (each pass replays on its own).
fn pass_seed(seed: u64, k: usize) -> u64 {
    seed ^ (k as u64 + 1)
        .wrapping_mul(0x9e37_79b9_7f4a_7c15)
        .rotate_left(23)
}

/// Run settings shared by the passes.
struct Run {
    /// The run's seed (printed; a pass derives its own with [`pass_seed`]).
    seed: u64,
    batch: usize,
    strict: bool,
    ifindex: u32,
}

#[test]
fn random_and_mutated_frames() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "xdp_fuzz needs root (BPF, network namespaces): run `cargo xtask test`"
    );
    // A fresh seed every run unless one is given: every run fuzzes new
    // frames, and the printed seed replays a failure.
    let seed = env_u64("RELAYHUB_FUZZ_SEED").unwrap_or_else(rand::random);
    let iters = env_u64("RELAYHUB_FUZZ_ITERS").unwrap_or(DEFAULT_ITERS);
    let batch = env_u64("RELAYHUB_FUZZ_BATCH").map_or(BATCH, |b| b.max(1) as usize);
    let strict = std::env::var("RELAYHUB_FUZZ_STRICT").is_ok_and(|v| v == "1");
    let only = std::env::var("RELAYHUB_FUZZ_PASS").ok();
    if let Some(p) = &only {
        assert!(
            PASSES.iter().any(|x| x.name == p),
            "RELAYHUB_FUZZ_PASS={p}: passes are {:?}",
            PASSES.map(|x| x.name)
        );
    }
    eprintln!(
        "xdp_fuzz: seed {seed:#x}, {iters} frames over {} passes; replay: \
         RELAYHUB_FUZZ_SEED={seed:#x} RELAYHUB_FUZZ_ITERS={iters} [RELAYHUB_FUZZ_PASS=name] \
         cargo test -p relay-user --release --test xdp_fuzz -- --nocapture",
        PASSES.len()
    );
    let ns = Entered::with_prefix("rhf");
    let run = Run {
        seed,
        batch,
        strict,
        ifindex: topology(&ns),
    };
    let started = Instant::now();
    for (k, pass) in PASSES.iter().enumerate() {
        if only.as_deref().is_some_and(|p| p != pass.name) {
            continue;
        }
        run_pass(&run, pass, pass_seed(seed, k), iters * pass.share / 100);
    }
    eprintln!(
        "xdp_fuzz: all passes in {:.1} s (seed {seed:#x})",
        started.elapsed().as_secs_f64()
    );
}

/// One pass: `iters` frames through the program configured as `pass`.
fn run_pass(run: &Run, pass: &Pass, pass_seed: u64, iters: u64) {
    let (seed, batch) = (run.seed, run.batch);
    let name = pass.name;
    eprintln!(
        "xdp_fuzz: pass {name}: {iters} frames (hub v4 {:?}, v6 {:?}, cross-family path {}, fallback reader {})",
        pass.v4.map(Ipv4Addr::from),
        pass.v6.map(Ipv6Addr::from),
        if pass.userspace { "userspace" } else { "xdp" },
        pass.reader
    );
    let mut gen_ = Gen {
        rng: Rng(pass_seed),
    };
    let mut model = Model::new(run.ifindex, *pass, &mut gen_.rng);
    let mut hub = Hub::load(run.ifindex, &model);
    let active: HashSet<Endpoint> = SPOKES.iter().filter(|s| s.active).map(|s| s.ep).collect();

    let mut reasons: BTreeMap<&'static str, u64> = BTreeMap::new();
    let mut actions = [0u64; 5];
    let mut dev = Deviations::default();
    let mut random_len = 0usize;
    let mut i = 0u64;
    let started = Instant::now();
    let mut test_run_time = std::time::Duration::ZERO;
    let (mut proofs_reported, mut proofs_withheld) = (0u64, 0u64);
    while i < iters {
        // Budget windows start empty each batch, in the kernel and here.
        hub.0.clear_proof_budget();
        hub.0.clear_copy_budget();
        let mut budget = Budget::new(PROOF_REPORTS_PER_SEC);
        let mut copies = Budget::new(INITIATION_COPIES_PER_SEC);
        let before = hub.before();
        let mut counters = vec![0u64; counter::COUNT as usize];
        let mut slots = vec![SlotDelta::default(); NSLOTS as usize];
        let mut rx_seen = HashSet::new();
        let mut ka_seen = HashSet::new();
        let n = batch.min((iters - i) as usize);
        let mut last = String::new();
        for _ in 0..n {
            let frame = match gen_.rng.below(10) {
                // Fully random bytes, every length in turn.
                0..=1 => {
                    let len = random_len;
                    random_len = (random_len + 1) % 1501;
                    let mut f = gen_.rng.bytes(len);
                    // Often with an IP ethertype, so the random bytes get
                    // past the first check.
                    if len >= 14 && gen_.rng.pct(60) {
                        let t: u16 = if gen_.rng.pct(50) { 0x0800 } else { 0x86dd };
                        f[12..14].copy_from_slice(&t.to_be_bytes());
                        if gen_.rng.pct(50) && len > 14 {
                            f[14] = if t == 0x0800 { 0x45 } else { 0x60 };
                        }
                    }
                    f
                }
                2..=3 => gen_.valid(&model),
                _ => {
                    let mut f = gen_.valid(&model);
                    for _ in 0..gen_.rng.range(1, 3) {
                        gen_.mutate(&mut f);
                    }
                    f
                }
            };
            let exp = model.expect(&frame);
            if batch == 1 {
                last = format!("{} {:?}: {}", exp.reason, exp.counters, hex(&frame));
            }
            let t0 = Instant::now();
            let k0 = testkit::xdp::ktime_ns();
            let got = hub.run(&frame);
            let k1 = testkit::xdp::ktime_ns();
            test_run_time += t0.elapsed();
            let ctx = || {
                format!(
                    "seed {seed:#x}, pass {name}, frame {i}: {} [{}]",
                    exp.reason,
                    hex(&frame)
                )
            };
            let Some(want) = exp.action else {
                assert!(
                    got.is_err(),
                    "{}: test_run accepted a {}-byte frame",
                    ctx(),
                    frame.len()
                );
                *reasons.entry(exp.reason).or_default() += 1;
                i += 1;
                continue;
            };
            let (action, out) = got.unwrap_or_else(|e| panic!("{}: test_run: {e}", ctx()));
            assert_eq!(action_name(action), action_name(want), "{}: action", ctx());
            match action {
                XDP_PASS if out != frame => {
                    panic!("{}: PASS modified the frame: {}", ctx(), hex(out))
                }
                XDP_TX | XDP_REDIRECT => {
                    // Independent of the model: only a registered active
                    // endpoint's frames are relayed, only to another one;
                    // where the hub has an address, only frames to it, and
                    // the relayed frame comes from the hub's address and
                    // port in its own family.
                    let src = naive_source(&frame).expect("relayed frame has a source");
                    assert!(active.contains(&src), "{}: relayed from {src:?}", ctx());
                    let to = naive_destination(out).expect("relayed frame has a destination");
                    assert!(
                        active.contains(&to) && to != src,
                        "{}: relayed to {to:?}",
                        ctx()
                    );
                    let hub_in = naive_destination(&frame).expect("input destination");
                    if let Some(h) = hub_endpoint(pass, &hub_in) {
                        assert_eq!(
                            hub_in,
                            h,
                            "{}: relayed a frame not addressed to the hub",
                            ctx()
                        );
                    }
                    let from = naive_source(out).expect("relayed frame has a source");
                    if let Some(h) = hub_endpoint(pass, &from) {
                        assert_eq!(from, h, "{}: relayed from a foreign source", ctx());
                    }
                    let expected = exp.output.as_ref().expect("model output");
                    if out != expected.as_slice() {
                        panic!(
                            "{}: output (got vs model)\n  {}\n  {}",
                            ctx(),
                            hex(out),
                            hex(expected)
                        );
                    }
                    if exp.foreign_dst {
                        dev.foreign_dst += 1;
                        if dev.first.len() < 3 {
                            dev.first.push(ctx());
                        }
                    }
                }
                _ => {}
            }
            // Initiation copies: exactly the model's event, within the
            // source address's copy budget (drained per frame).
            let got_events = hub.drain_events();
            match &exp.event {
                None => assert!(
                    got_events.is_empty(),
                    "seed {seed:#x}, pass {name}, frame {i}: {}: unexpected initiation event",
                    exp.reason
                ),
                Some(want) => {
                    let copied = !got_events.is_empty();
                    let ok = copies.observe((want.src.family, want.src.addr), k0, k1, copied);
                    assert!(
                        ok,
                        "seed {seed:#x}, pass {name}, frame {i}: copy {copied} breaks the budget of {INITIATION_COPIES_PER_SEC}/s"
                    );
                    if copied {
                        assert_eq!(got_events.len(), 1, "frame {i}: initiation events");
                        let g = &got_events[0];
                        let same = g.src == want.src
                            && g.dst == want.dst
                            && g.src_slot == want.src_slot
                            && g.ifindex == want.ifindex
                            && g.frame == want.frame;
                        assert!(
                            same,
                            "seed {seed:#x}, pass {name}, frame {i}: event got {g:?}, want {want:?}"
                        );
                        counters[counter::INITIATIONS_QUEUED as usize] += 1;
                    } else {
                        counters[counter::INITIATIONS_NOT_COPIED as usize] += 1;
                    }
                }
            }
            // Proof reports: exactly the model's, within the source
            // address's budget (drained per frame: the ring never fills).
            let proofs = hub.0.drain_proofs();
            match &exp.proof {
                None => assert!(
                    proofs.is_empty(),
                    "seed {seed:#x}, pass {name}, frame {i}: {}: unexpected proof report {:?} [{}]",
                    exp.reason,
                    proofs,
                    hex(&frame)
                ),
                Some(want) => {
                    let key = (want.src.family, want.src.addr);
                    let reported = !proofs.is_empty();
                    let ok = budget.observe(key, k0, k1, reported);
                    assert!(
                        ok,
                        "seed {seed:#x}, pass {name}, frame {i}: proof report {reported} breaks the budget of {PROOF_REPORTS_PER_SEC}/s [{}]",
                        hex(&frame)
                    );
                    if reported {
                        assert_eq!(proofs.len(), 1, "frame {i}: proof reports");
                        let g = &proofs[0];
                        assert!(
                            g.src == want.src
                                && g.dst == want.dst
                                && g.len == want.len
                                && g.frame == want.frame,
                            "seed {seed:#x}, pass {name}, frame {i}: proof report got {g:?}, want {want:?}"
                        );
                        counters[counter::PROOF_REPORTED as usize] += 1;
                        proofs_reported += 1;
                    } else {
                        proofs_withheld += 1;
                    }
                }
            }
            // The userspace fallback: exactly the model's sample, if any,
            // and only ever a registered active endpoint's frame.
            if pass.reader {
                let got = hub.drain_fallback();
                for (_, _, f) in &got {
                    let src = naive_source(f).expect("fallback frame has a source");
                    assert!(active.contains(&src), "{}: fallback from {src:?}", ctx());
                }
                let want: Vec<_> = exp.sample.iter().cloned().collect();
                if got != want {
                    let show = |v: &[(Endpoint, u32, Vec<u8>)]| {
                        v.iter()
                            .map(|(d, r, f)| format!("to {d:?} reason {r} [{}]", hex(f)))
                            .collect::<Vec<_>>()
                    };
                    panic!(
                        "{}: fallback samples: got {:?}, model {:?}",
                        ctx(),
                        show(&got),
                        show(&want)
                    );
                }
            }
            actions[action as usize] += 1;
            *reasons.entry(exp.reason).or_default() += 1;
            for (c, v) in &exp.counters {
                counters[*c as usize] += v;
            }
            for (s, d) in &exp.slots {
                if *s < NSLOTS {
                    let t = &mut slots[*s as usize];
                    t.rx_packets += d.rx_packets;
                    t.rx_bytes += d.rx_bytes;
                    t.tx_packets += d.tx_packets;
                    t.tx_bytes += d.tx_bytes;
                    t.rx_keepalives += d.rx_keepalives;
                    t.hub_packets += d.hub_packets;
                    t.hub_keepalives += d.hub_keepalives;
                }
            }
            rx_seen.extend(exp.rx_seen);
            ka_seen.extend(exp.keepalive_seen);
            i += 1;
        }

        // Batch checks: counters, slot counters and timestamps, events,
        // the session table.
        let after = hub.snapshot();
        let at = format!("seed {seed:#x}, pass {name}, batch ending at frame {i} {last}");
        for (c, want) in counters.iter().enumerate() {
            assert_eq!(
                after.counters[c] - before.counters[c],
                *want,
                "{at}: counter {} delta",
                counter::NAMES[c]
            );
        }
        for s in 0..NSLOTS {
            let (a, rx_a, ka_a) = after.slots[s as usize];
            let (b, rx_b, ka_b) = before.slots[s as usize];
            let d = a.since(&b);
            assert_eq!(d, slots[s as usize], "{at}: slot {s} counters delta");
            assert_eq!(
                rx_a > rx_b,
                rx_seen.contains(&s),
                "{at}: slot {s} last_rx_ns"
            );
            assert_eq!(
                ka_a > ka_b,
                ka_seen.contains(&s),
                "{at}: slot {s} last_keepalive_ns"
            );
        }
        let table = hub.session_table();
        if table != model.sessions {
            let extra: Vec<_> = table
                .iter()
                .filter(|(k, v)| model.sessions.get(k) != Some(v))
                .take(5)
                .collect();
            let missing: Vec<_> = model
                .sessions
                .iter()
                .filter(|(k, v)| table.get(k) != Some(v))
                .take(5)
                .collect();
            panic!("{at}: session table differs: kernel-only {extra:?}, model-only {missing:?}");
        }
        hub.reset_sessions(&model);
        model.reset_sessions();
    }
    let secs = started.elapsed().as_secs_f64();
    eprintln!(
        "xdp_fuzz: pass {name}: {i} frames in {secs:.1} s: {:.0} frames/s overall, {:.0} frames/s in test_run",
        i as f64 / secs,
        i as f64 / test_run_time.as_secs_f64()
    );
    eprintln!(
        "xdp_fuzz: pass {name}: actions: PASS {}, DROP {}, TX {}, REDIRECT {}; refused {}",
        actions[2],
        actions[1],
        actions[3],
        actions[4],
        reasons.get("refused (< 14 bytes)").copied().unwrap_or(0)
    );
    eprintln!(
        "xdp_fuzz: pass {name}: proof reports {proofs_reported}, withheld by the budget {proofs_withheld}"
    );
    for (r, n) in &reasons {
        eprintln!("xdp_fuzz:   {n:>9}  {r}");
    }
    if pass.v4.is_none() || pass.v6.is_none() {
        eprintln!(
            "xdp_fuzz: pass {name}: deviations (relayed anyway): {} frames not addressed to a hub address (in a family without a configured hub address)",
            dev.foreign_dst
        );
    }
    for d in &dev.first {
        eprintln!("xdp_fuzz:   e.g. {d}");
    }
    eprintln!(
        "xdp_fuzz: pass {name}: {} responses tried to take over another session's index (not learned)",
        model.learn_conflicts
    );
    // The generator must reach every outcome of this configuration, or
    // the run proves little.
    if iters >= 100_000 {
        assert!(
            model.learn_conflicts > 0,
            "pass {name}: no index takeover attempt generated"
        );
        for r in expected_reasons(pass) {
            assert!(
                reasons.get(r).copied().unwrap_or(0) > 0,
                "pass {name}: never generated: {r}"
            );
        }
        assert!(actions[4] > 0, "pass {name}: never redirected");
    }
    if run.strict {
        assert_eq!(
            dev.foreign_dst, 0,
            "pass {name}: RELAYHUB_FUZZ_STRICT: deviations"
        );
    }
}

/// Every outcome a pass under `pass`'s configuration must reach.
fn expected_reasons(pass: &Pass) -> Vec<&'static str> {
    let mut v = vec![
        "refused (< 14 bytes)",
        "not IP",
        "not to the hub port",
        "IPv4 options or first fragment",
        "IPv6 extension headers",
        "IPv4 length",
        "IPv6 length",
        "UDP length",
        "WireGuard reserved bytes",
        "WireGuard type or length",
        "initiation",
        "unknown source",
        "no session (hub's own)",
        "loop",
        "no destination",
        "too big for the egress NIC",
        "no route",
        "relayed response",
        "relayed cookie reply",
        "relayed keepalive",
        "relayed transport",
    ];
    let (v4, v6) = (pass.v4.is_some(), pass.v6.is_some());
    if v4 || v6 {
        v.push("not for the hub");
    }
    if !(v4 && v6) {
        v.push("cross family");
    }
    if pass.userspace {
        if v4 || v6 {
            v.push(if pass.reader {
                "to userspace: configured"
            } else {
                "to userspace: configured, no reader (dropped)"
            });
        }
    } else {
        if v6 {
            v.push("relayed IPv4 -> IPv6");
            v.push("too big for the egress NIC (grown to IPv6)");
            v.push(if pass.reader {
                "to userspace: no checksum"
            } else {
                "to userspace: no checksum, no reader (dropped)"
            });
        }
        if v4 {
            v.push("relayed IPv6 -> IPv4");
        }
    }
    v
}
