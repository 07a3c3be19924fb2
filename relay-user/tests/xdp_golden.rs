//! Golden-packet tests of the XDP relay, run in the kernel with
//! BPF_PROG_TEST_RUN (Katran style): a table of cases, each an input frame,
//! the expected action, the expected output frame and the expected counter
//! deltas.
//!
//! Needs root (BPF, network namespaces). Run with
//! `cargo test -p relay-user --test xdp_golden`.
//!
//! Each test creates its own network namespace (`rhg-<pid>-<n>`, removed by
//! a drop guard) with a veth pair whose end `rhg0` plays the hub's NIC: the
//! hub addresses, a gateway with a PERMANENT neighbour entry and routes to
//! the spokes' networks, so that `bpf_fib_lookup` from the program gives
//! known results. The test thread enters the namespace so that the ingress
//! ifindex passed in `ctx_in` resolves there.
//!
//! Expected frames are built from scratch with full checksum computation
//! (never by applying the program's incremental update), and every output
//! frame's checksums are verified by full recomputation as well.

use std::{
    collections::BTreeMap,
    net::{Ipv4Addr, Ipv6Addr},
};

use aya::maps::{MapData, PerfEventArray, perf::PerfEventArrayBuffer};
use relay_common::{
    Endpoint, FAMILY_V4, FAMILY_V6, FallbackMeta, MAP_FALLBACK, NO_SLOT, SESSION_FROM_INITIATION,
    SESSION_FROM_RESPONSE, SLOT_ACTIVE, SLOT_REMOTE, SessionValue,
    counter::{self, *},
};
use relay_user::{core::fallback_frame as fallback, datapath::CrossPath, io::sender};
use testkit::{
    checksum::{fold, sum16, verify_frame as verify_checksums},
    frame::{Addr, Csum, Frame, mac},
    netns::Entered,
    wg::{cookie_reply, initiation, keepalive, response, transport, wg_header},
    xdp::{
        Harness, SlotDelta, XDP_DROP, XDP_PASS, XDP_REDIRECT, XDP_TX, pin_to_cpu0,
        topo::{self, GW_MAC, GW2_MAC, HUB_MAC, HUB2_MAC},
    },
};

// ---------------------------------------------------------------------------
// Topology constants.

const PORT: u16 = 51820;

/// Some other L2 neighbour a frame arrived from (fallback cases).
const OTHER_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0xaa];

const HUB4: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 1);
const HUB6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 1);

/// Spokes: (slot, address, port).
const A: Spoke = Spoke::v4(1, [203, 0, 113, 10], 40000);
const B: Spoke = Spoke::v4(2, [203, 0, 113, 20], 50000);
/// Behind the second NIC: relaying to it is an XDP_REDIRECT.
const C: Spoke = Spoke::v4(3, [100, 64, 0, 30], 60000);
const D: Spoke = Spoke::v6(4, [0x2001, 0xdb8, 0x99, 0, 0, 0, 0, 0x10], 41000);
const E: Spoke = Spoke::v6(5, [0x2001, 0xdb8, 0x99, 0, 0, 0, 0, 0x20], 51000);
/// Active, no endpoint.
const SLOT_NO_ENDPOINT: u32 = 6;
/// Endpoint known but slot not active.
const INACTIVE: Spoke = Spoke::v4(7, [203, 0, 113, 70], 47000);
/// Routed via a gateway without neighbour entry: NO_NEIGH -> fallback.
const F: Spoke = Spoke::v4(8, [203, 0, 114, 40], 45000);
/// No route at all.
const G: Spoke = Spoke::v4(9, [10, 255, 0, 9], 1234);
/// Not registered at all.
const STRANGER: Spoke = Spoke::v4(0, [203, 0, 113, 99], 40000);
const MAX_TEST_SLOT: u32 = 12;

// Sessions (sender slot, receiver index) -> destination slot.
const R_A_TO_B: u32 = 0x1111_1111;
const R_LOOP: u32 = 0x3333_3333;
const R_NO_DEST: u32 = 0x4444_4444;
const R_CROSS: u32 = 0x5555_5555;
const R_D_TO_E: u32 = 0x6666_6666;
const R_A_TO_C: u32 = 0x7777_7777;
const R_A_TO_F: u32 = 0x8888_8888;
const R_A_TO_G: u32 = 0x9999_9999;
const R_A_TO_INACTIVE: u32 = 0x1212_1212;
/// A's sender index in its initiation to B (B's response is sent to it).
const IDX_A: u32 = 0xaaaa_0001;
/// B's sender index in its response.
const IDX_B: u32 = 0xbbbb_0001;
/// A second handshake of A, answered with a cookie reply by B.
const IDX_A2: u32 = 0xaaaa_0002;
/// A's index of a handshake answered by C.
const IDX_A4: u32 = 0xaaaa_0004;
/// No session anywhere: the hub's own.
const R_HUB: u32 = 0xdead_beef;

#[derive(Clone, Copy, Debug)]
struct Spoke {
    slot: u32,
    addr: Addr,
    port: u16,
}

impl Spoke {
    const fn v4(slot: u32, a: [u8; 4], port: u16) -> Self {
        Self {
            slot,
            addr: Addr::V4(Ipv4Addr::new(a[0], a[1], a[2], a[3])),
            port,
        }
    }

    const fn v6(slot: u32, a: [u16; 8], port: u16) -> Self {
        Self {
            slot,
            addr: Addr::V6(Ipv6Addr::new(
                a[0], a[1], a[2], a[3], a[4], a[5], a[6], a[7],
            )),
            port,
        }
    }

    fn endpoint(&self) -> Endpoint {
        match self.addr {
            Addr::V4(a) => Endpoint::v4(a.octets(), self.port),
            Addr::V6(a) => Endpoint::v6(a.octets(), self.port),
        }
    }

    fn family(&self) -> u8 {
        match self.addr {
            Addr::V4(_) => FAMILY_V4,
            Addr::V6(_) => FAMILY_V6,
        }
    }

    /// The hub address of the same family.
    fn hub(&self) -> Addr {
        match self.addr {
            Addr::V4(_) => Addr::V4(HUB4),
            Addr::V6(_) => Addr::V6(HUB6),
        }
    }
}

/// The golden cases' frames: what arrives from a spoke, and what the hub
/// must send for it.
trait SpokeFrame: Sized {
    fn from_spoke(s: &Spoke, payload: Vec<u8>) -> Self;
    fn relayed_to(&self, to: &Spoke, eth_dst: [u8; 6], eth_src: [u8; 6]) -> Self;
}

impl SpokeFrame for Frame {
    /// A frame from spoke `s` to the hub port, as it arrives at the hub.
    fn from_spoke(s: &Spoke, payload: Vec<u8>) -> Self {
        Self {
            eth_dst: HUB_MAC,
            eth_src: GW_MAC,
            src: s.addr,
            dst: s.hub(),
            ttl: 57,
            sport: s.port,
            dport: PORT,
            payload,
            csum: Csum::Full,
        }
    }

    /// What the hub must send to spoke `to` for `self` (built afresh),
    /// from the hub's address in `to`'s family.
    fn relayed_to(&self, to: &Spoke, eth_dst: [u8; 6], eth_src: [u8; 6]) -> Self {
        Self {
            eth_dst,
            eth_src,
            src: to.hub(),
            dst: to.addr,
            ttl: 64,
            sport: self.dport,
            dport: to.port,
            payload: self.payload.clone(),
            csum: self.csum,
        }
    }
}

/// The hub's NICs: `rhg0` (towards spokes A, B, F, G and the IPv6 ones)
/// and `rhg1` (towards C).
fn topology(ns: &Entered, forwarding: bool) -> (u32, u32) {
    topo::two_nics(ns, "rhg", None, forwarding)
}

// ---------------------------------------------------------------------------
// The program and its maps.

struct Hub {
    h: Harness,
    cross: CrossPath,
    /// The userspace fallback's perf buffers, once opened.
    fallback: Vec<PerfEventArrayBuffer<MapData>>,
}

impl std::ops::Deref for Hub {
    type Target = Harness;
    fn deref(&self) -> &Harness {
        &self.h
    }
}

impl std::ops::DerefMut for Hub {
    fn deref_mut(&mut self) -> &mut Harness {
        &mut self.h
    }
}

#[derive(Clone, Debug)]
struct Snapshot {
    counters: Vec<u64>,
    slots: Vec<(SlotDelta, u64, u64)>,
}

impl Hub {
    fn load(ifindex: u32) -> Self {
        let mut hub = Self {
            h: Harness::load(ifindex),
            cross: CrossPath::Xdp,
            fallback: Vec::new(),
        };
        hub.set_port(PORT);
        for s in [A, B, C, D, E, F, G] {
            hub.add_spoke(&s, true);
        }
        hub.add_spoke(&INACTIVE, false);
        hub.set_slot(SLOT_NO_ENDPOINT, Endpoint::default(), true)
            .unwrap();
        for (src, receiver, dst) in [
            (A.slot, R_A_TO_B, B.slot),
            (A.slot, R_LOOP, A.slot),
            (A.slot, R_NO_DEST, SLOT_NO_ENDPOINT),
            (A.slot, R_A_TO_INACTIVE, INACTIVE.slot),
            (A.slot, R_CROSS, D.slot),
            (D.slot, R_D_TO_E, E.slot),
            (A.slot, R_A_TO_C, C.slot),
            (A.slot, R_A_TO_F, F.slot),
            (A.slot, R_A_TO_G, G.slot),
            // Installed by the controller when it routed A's initiations.
            (B.slot, IDX_A, A.slot),
            (B.slot, IDX_A2, A.slot),
            (C.slot, IDX_A4, A.slot),
        ] {
            hub.add_session(src, receiver, dst);
        }
        hub
    }

    /// Port and the hub's own addresses (for cross-family relay).
    fn set_config(&mut self, port: u16, v4: Option<Ipv4Addr>, v6: Option<Ipv6Addr>) {
        // The controller's own builder: the same bytes the hub installs.
        let c = relay_user::datapath::hub_config(port, v4, v6, self.cross);
        self.config.set(0, c, 0).unwrap();
    }

    /// The hub's configuration with a per-source initiation budget, as the
    /// controller writes it (`Datapath::set_initiation_budget`).
    fn set_initiation_budget(&mut self, per_sec: u32) {
        let c = relay_common::HubConfig {
            init_pass_per_sec: per_sec,
            ..relay_user::datapath::hub_config(PORT, Some(HUB4), Some(HUB6), self.cross)
        };
        self.config.set(0, c, 0).unwrap();
    }

    /// A mesh member: mesh ports from `base` (the hub's addresses as in
    /// the golden cases).
    fn set_mesh(&mut self, base: u16) {
        let c = relay_common::HubConfig {
            mesh_base: base,
            ..relay_user::datapath::hub_config(PORT, Some(HUB4), Some(HUB6), self.cross)
        };
        self.config.set(0, c, 0).unwrap();
    }

    fn set_port(&mut self, port: u16) {
        self.h.set_port(port).unwrap();
    }

    fn add_spoke(&mut self, s: &Spoke, active: bool) {
        self.h.set_spoke(s.slot, s.endpoint(), active).unwrap();
    }

    fn add_session(&mut self, src_slot: u32, receiver: u32, dst_slot: u32) {
        self.h
            .set_session(src_slot, receiver, dst_slot, SESSION_FROM_INITIATION, 0)
            .unwrap();
    }

    fn session(&self, src_slot: u32, receiver: u32) -> Option<SessionValue> {
        self.h.session(src_slot, receiver)
    }

    /// Run the program on `frame`: (action, output frame).
    fn run(&self, frame: &[u8]) -> Result<(u32, Vec<u8>), aya::programs::ProgramError> {
        self.run_n(frame, 1)
    }

    fn snapshot(&self) -> Snapshot {
        Snapshot {
            counters: self.counter_totals(),
            slots: self.slot_snapshot(MAX_TEST_SLOT),
        }
    }

    /// A snapshot to compare a run against: slot timestamps cleared first
    /// (see `clear_slot_times`).
    fn before(&mut self) -> Snapshot {
        self.clear_slot_times(MAX_TEST_SLOT);
        self.snapshot()
    }

    /// Open the fallback perf buffers (as the controller does).
    fn open_fallback(&mut self) {
        let map = self.ebpf.take_map(MAP_FALLBACK).expect("FALLBACK map");
        let mut perf = PerfEventArray::try_from(map).unwrap();
        for cpu in aya::util::online_cpus().unwrap() {
            self.fallback.push(perf.open(cpu, Some(8)).unwrap());
        }
    }

    /// Samples waiting in the fallback perf buffers.
    fn drain_fallback(&mut self) -> Vec<Vec<u8>> {
        let mut scratch = Box::new([0u8; fallback::SAMPLE_MAX]);
        let mut out = Vec::new();
        for buf in &mut self.fallback {
            relay_user::datapath::perf::drain(buf, &mut scratch, |ev| match ev {
                relay_user::datapath::perf::Event::Sample(s) => out.push(s.to_vec()),
                relay_user::datapath::perf::Event::Lost(n) => panic!("{n} fallback samples lost"),
            });
        }
        out
    }
}

// ---------------------------------------------------------------------------
// Cases.

struct ExpectedEvent {
    src: Endpoint,
    dst: Endpoint,
    src_slot: u32,
    frame: Vec<u8>,
}

struct Case {
    name: String,
    input: Vec<u8>,
    action: u32,
    /// Expected output for TX / redirect; PASS must leave the frame as is.
    output: Option<Vec<u8>>,
    counters: Vec<(u32, u64)>,
    slots: Vec<(u32, SlotDelta)>,
    event: Option<ExpectedEvent>,
    /// Slots whose last_rx_ns must advance.
    rx_seen: Vec<u32>,
}

impl Case {
    fn new(name: impl Into<String>, input: Vec<u8>, action: u32) -> Self {
        Self {
            name: name.into(),
            input,
            action,
            output: None,
            counters: Vec::new(),
            slots: Vec::new(),
            event: None,
            rx_seen: Vec::new(),
        }
    }

    fn output(mut self, f: Vec<u8>) -> Self {
        self.output = Some(f);
        self
    }

    fn counters(mut self, c: &[(u32, u64)]) -> Self {
        self.counters.extend_from_slice(c);
        self
    }

    fn slot(mut self, slot: u32, d: SlotDelta) -> Self {
        self.slots.push((slot, d));
        self
    }

    fn rx_seen(mut self, slot: u32) -> Self {
        self.rx_seen.push(slot);
        self
    }
}

fn name_of(idx: u32) -> &'static str {
    counter::NAMES[idx as usize]
}

fn action_name(a: u32) -> &'static str {
    ["ABORTED", "DROP", "PASS", "TX", "REDIRECT"]
        .get(a as usize)
        .copied()
        .unwrap_or("?")
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn check_case(hub: &mut Hub, case: &Case) {
    // Each case starts with fresh per-source proof windows and an empty
    // proof ring (the budget has its own case).
    hub.clear_proof_budget();
    hub.clear_copy_budget();
    hub.drain_proofs();
    let before = hub.before();
    let (action, out) = hub
        .run(&case.input)
        .unwrap_or_else(|e| panic!("{}: test_run: {e}", case.name));
    let after = hub.snapshot();
    assert_eq!(
        action_name(action),
        action_name(case.action),
        "{}: action",
        case.name
    );
    match (&case.output, action) {
        (Some(expected), _) => {
            assert_eq!(
                hex(&out),
                hex(expected),
                "{}: output frame (got vs expected)",
                case.name
            );
            verify_checksums(&out);
        }
        (None, XDP_PASS) => {
            assert_eq!(
                hex(&out),
                hex(&case.input),
                "{}: PASS must not modify",
                case.name
            )
        }
        (None, XDP_TX | XDP_REDIRECT) => panic!("{}: no expected output", case.name),
        _ => {}
    }

    let expected: BTreeMap<u32, u64> = case.counters.iter().copied().collect();
    for i in 0..counter::COUNT {
        let d = after.counters[i as usize] - before.counters[i as usize];
        assert_eq!(
            d,
            expected.get(&i).copied().unwrap_or(0),
            "{}: counter {} delta",
            case.name,
            name_of(i)
        );
    }
    let expected: BTreeMap<u32, SlotDelta> = case.slots.iter().copied().collect();
    for i in 0..MAX_TEST_SLOT {
        let (a, rx_a, _) = after.slots[i as usize];
        let (b, rx_b, _) = before.slots[i as usize];
        let d = a.since(&b);
        assert_eq!(
            d,
            expected.get(&i).copied().unwrap_or_default(),
            "{}: slot {i} counters delta",
            case.name
        );
        if case.rx_seen.contains(&i) {
            assert!(
                rx_a > rx_b,
                "{}: slot {i} last_rx_ns not updated",
                case.name
            );
        } else {
            assert_eq!(rx_a, rx_b, "{}: slot {i} last_rx_ns changed", case.name);
        }
    }

    let events = hub.drain_events();
    match &case.event {
        None => assert!(events.is_empty(), "{}: unexpected ring event", case.name),
        Some(e) => {
            assert_eq!(events.len(), 1, "{}: ring events", case.name);
            let ev = &events[0];
            assert_eq!(ev.src, e.src, "{}: event src", case.name);
            assert_eq!(ev.dst, e.dst, "{}: event dst", case.name);
            assert_eq!(ev.src_slot, e.src_slot, "{}: event src_slot", case.name);
            assert_eq!(ev.ifindex, hub.ifindex, "{}: event ifindex", case.name);
            assert_eq!(hex(&ev.frame), hex(&e.frame), "{}: event frame", case.name);
        }
    }
}

/// Counters of a relayed frame of `len` payload bytes and `kind`, from
/// spoke `from` to spoke `to` (the family counter).
fn relayed(kind: u32, len: usize, keepalive: bool, from: &Spoke, to: &Spoke) -> Vec<(u32, u64)> {
    let mut v = vec![
        (SEEN, 1),
        (RELAYED_PACKETS, 1),
        (RELAYED_BYTES, len as u64),
        (kind, 1),
        (counter::relayed_family(from.family(), to.family()), 1),
    ];
    if keepalive {
        v.push((RELAYED_KEEPALIVES, 1));
    }
    v
}

fn rx(len: usize, keepalive: bool) -> SlotDelta {
    SlotDelta {
        rx_packets: 1,
        rx_bytes: len as u64,
        rx_keepalives: keepalive as u64,
        ..Default::default()
    }
}

fn tx(len: usize) -> SlotDelta {
    SlotDelta {
        tx_packets: 1,
        tx_bytes: len as u64,
        ..Default::default()
    }
}

/// A relay case: `from` sends `payload`, the hub sends it on to `to`.
fn relay_case(
    name: &str,
    from: &Spoke,
    to: &Spoke,
    payload: Vec<u8>,
    csum: Csum,
    kind: u32,
) -> Case {
    let len = payload.len();
    let keepalive = kind == RELAYED_TRANSPORT && len == 32;
    let mut input = Frame::from_spoke(from, payload);
    input.csum = csum;
    let output = input.relayed_to(to, GW_MAC, HUB_MAC).build();
    Case::new(name, input.build(), XDP_TX)
        .output(output)
        .counters(&relayed(kind, len, keepalive, from, to))
        .slot(from.slot, rx(len, keepalive))
        .slot(to.slot, tx(len))
        .rx_seen(from.slot)
}

fn ipv4_with_options(frame: &[u8]) -> Vec<u8> {
    // Insert 4 NOP option bytes after the 20-byte header; fix IHL, length
    // and header checksum.
    let mut f = frame[..34].to_vec();
    f.extend([1, 1, 1, 1]);
    f.extend(&frame[34..]);
    f[14] = 0x46;
    let tot = u16::from_be_bytes([f[16], f[17]]) + 4;
    f[16..18].copy_from_slice(&tot.to_be_bytes());
    f[24] = 0;
    f[25] = 0;
    let c = !fold(sum16(&f[14..38], 0));
    f[24..26].copy_from_slice(&c.to_be_bytes());
    f
}

fn set_ipv4_frag(frame: &[u8], flags_off: u16) -> Vec<u8> {
    let mut f = frame.to_vec();
    f[20..22].copy_from_slice(&flags_off.to_be_bytes());
    f[24] = 0;
    f[25] = 0;
    let c = !fold(sum16(&f[14..34], 0));
    f[24..26].copy_from_slice(&c.to_be_bytes());
    f
}

/// Insert an 8-byte IPv6 extension header `nh_ext` before the UDP header.
fn ipv6_with_ext(frame: &[u8], ext: u8) -> Vec<u8> {
    let mut f = frame[..54].to_vec();
    f[20] = ext;
    let plen = u16::from_be_bytes([f[18], f[19]]) + 8;
    f[18..20].copy_from_slice(&plen.to_be_bytes());
    if ext == 44 {
        // Fragment header: next 17, reserved, offset 0 + M, id.
        f.extend([17, 0, 0, 1, 0, 0, 0, 42]);
    } else {
        // Hop-by-hop / routing / destination options: next 17, len 0, PadN.
        f.extend([17, 0, 1, 4, 0, 0, 0, 0]);
    }
    f.extend(&frame[54..]);
    f
}

/// Replace the UDP payload by `payload` (bad messages), keeping the
/// frame consistent (lengths and checksums recomputed).
fn with_payload(from: &Spoke, payload: Vec<u8>) -> Vec<u8> {
    Frame::from_spoke(from, payload).build()
}

fn pass_case(name: &str, input: Vec<u8>, counters: &[(u32, u64)]) -> Case {
    Case::new(name, input, XDP_PASS).counters(counters)
}

fn table() -> Vec<Case> {
    let mut v = Vec::new();
    let ka = SlotDelta::default;

    // Relays.
    v.push(relay_case(
        "transport A->B, full checksum",
        &A,
        &B,
        transport(R_A_TO_B, 100),
        Csum::Full,
        RELAYED_TRANSPORT,
    ));
    v.push(relay_case(
        "transport A->B, UDP checksum 0",
        &A,
        &B,
        transport(R_A_TO_B, 37),
        Csum::Zero,
        RELAYED_TRANSPORT,
    ));
    v.push(relay_case(
        "keepalive A->B",
        &A,
        &B,
        keepalive(R_A_TO_B),
        Csum::Full,
        RELAYED_TRANSPORT,
    ));
    {
        // Trailing Ethernet padding after the IP packet is kept untouched.
        let mut c = relay_case(
            "transport A->B with Ethernet padding",
            &A,
            &B,
            transport(R_A_TO_B, 1),
            Csum::Full,
            RELAYED_TRANSPORT,
        );
        c.input.extend([0xee; 6]);
        c.output.as_mut().unwrap().extend([0xee; 6]);
        v.push(c);
    }
    {
        let mut c = relay_case(
            "response B->A (learns A's entry)",
            &B,
            &A,
            response(IDX_B, IDX_A),
            Csum::Full,
            RELAYED_RESPONSE,
        );
        c.counters.push((RESPONSE_LEARNED, 1));
        v.push(c);
    }
    v.push(relay_case(
        "transport A->B on the learned entry",
        &A,
        &B,
        transport(IDX_B, 64),
        Csum::Full,
        RELAYED_TRANSPORT,
    ));
    {
        // C answers A with B's live index as its sender index: relayed, but
        // A's entry for that index keeps pointing at B.
        let mut c = relay_case(
            "response C->A reusing B's live index (not learned)",
            &C,
            &A,
            response(IDX_B, IDX_A4),
            Csum::Full,
            RELAYED_RESPONSE,
        );
        c.counters.push((LEARN_CONFLICT, 1));
        v.push(c);
    }
    v.push(relay_case(
        "transport A->B on the learned entry, after the conflict",
        &A,
        &B,
        transport(IDX_B, 64),
        Csum::Full,
        RELAYED_TRANSPORT,
    ));
    {
        // B repeats its response: the same pair's entry is refreshed.
        let mut c = relay_case(
            "response B->A again (same pair: refreshed)",
            &B,
            &A,
            response(IDX_B, IDX_A),
            Csum::Full,
            RELAYED_RESPONSE,
        );
        c.counters.push((RESPONSE_LEARNED, 1));
        v.push(c);
    }
    v.push(relay_case(
        "cookie reply B->A",
        &B,
        &A,
        cookie_reply(IDX_A2),
        Csum::Full,
        RELAYED_COOKIE,
    ));
    v.push(relay_case(
        "transport D->E over IPv6",
        &D,
        &E,
        transport(R_D_TO_E, 200),
        Csum::Full,
        RELAYED_TRANSPORT,
    ));
    v.push(relay_case(
        "keepalive D->E over IPv6",
        &D,
        &E,
        keepalive(R_D_TO_E),
        Csum::Full,
        RELAYED_TRANSPORT,
    ));
    {
        // Through the other NIC: XDP_REDIRECT with that NIC's addresses.
        let payload = transport(R_A_TO_C, 48);
        let len = payload.len();
        let input = Frame::from_spoke(&A, payload);
        let output = input.relayed_to(&C, GW2_MAC, HUB2_MAC).build();
        v.push(
            Case::new("transport A->C redirect", input.build(), XDP_REDIRECT)
                .output(output)
                .counters(&relayed(RELAYED_TRANSPORT, len, false, &A, &C))
                .slot(A.slot, rx(len, false))
                .slot(C.slot, tx(len))
                .rx_seen(A.slot),
        );
    }
    {
        // Gateway without neighbour entry: NO_NEIGH -> back to the sender
        // of the frame (Ethernet addresses swapped).
        let payload = transport(R_A_TO_F, 10);
        let len = payload.len();
        let mut input = Frame::from_spoke(&A, payload);
        input.eth_src = OTHER_MAC;
        let output = input.relayed_to(&F, OTHER_MAC, HUB_MAC).build();
        let mut counters = relayed(RELAYED_TRANSPORT, len, false, &A, &F);
        counters.push((FIB_FALLBACK, 1));
        v.push(
            Case::new(
                "transport A->F, no neighbour: fallback",
                input.build(),
                XDP_TX,
            )
            .output(output)
            .counters(&counters)
            .slot(A.slot, rx(len, false))
            .slot(F.slot, tx(len))
            .rx_seen(A.slot),
        );
    }
    v.push(
        Case::new(
            "transport A->G, no route",
            with_payload(&A, transport(R_A_TO_G, 10)),
            XDP_DROP,
        )
        .counters(&[(SEEN, 1), (DROP_NO_ROUTE, 1)])
        .rx_seen(A.slot),
    );

    // Passed to the hub's own WireGuard.
    {
        let p = transport(R_HUB, 20);
        let len = p.len();
        let _ = len;
        v.push(
            pass_case(
                "transport A->hub (no session)",
                with_payload(&A, p),
                &[(SEEN, 1), (PASS_NO_SESSION, 1)],
            )
            .slot(
                A.slot,
                SlotDelta {
                    hub_packets: 1,
                    ..ka()
                },
            )
            .rx_seen(A.slot),
        );
    }
    v.push(
        pass_case(
            "keepalive A->hub (no session)",
            with_payload(&A, keepalive(R_HUB)),
            &[(SEEN, 1), (PASS_NO_SESSION, 1)],
        )
        .slot(
            A.slot,
            SlotDelta {
                hub_packets: 1,
                hub_keepalives: 1,
                ..ka()
            },
        )
        .rx_seen(A.slot),
    );
    v.push(
        pass_case(
            "response B->hub (no session)",
            with_payload(&B, response(0x1234, R_HUB)),
            &[(SEEN, 1), (PASS_NO_SESSION, 1), (HUB_RESPONSE, 1)],
        )
        .slot(
            B.slot,
            SlotDelta {
                hub_packets: 1,
                ..ka()
            },
        )
        .rx_seen(B.slot),
    );
    v.push(
        pass_case(
            "cookie reply B->hub (no session)",
            with_payload(&B, cookie_reply(R_HUB)),
            &[(SEEN, 1), (PASS_NO_SESSION, 1), (HUB_COOKIE, 1)],
        )
        .slot(
            B.slot,
            SlotDelta {
                hub_packets: 1,
                ..ka()
            },
        )
        .rx_seen(B.slot),
    );
    v.push(
        pass_case(
            "transport from IPv6 D with unknown receiver",
            with_payload(&D, transport(R_A_TO_B, 20)),
            &[(SEEN, 1), (PASS_NO_SESSION, 1)],
        )
        .slot(
            D.slot,
            SlotDelta {
                hub_packets: 1,
                ..ka()
            },
        )
        .rx_seen(D.slot),
    );

    // Unknown sources: transport frames (and responses) are also reported
    // to the controller as possible moved endpoints (see
    // proof_reports_from_unknown_sources); cookie replies are not.
    v.push(pass_case(
        "transport from a stranger",
        with_payload(&STRANGER, transport(R_A_TO_B, 20)),
        &[(SEEN, 1), (PASS_UNKNOWN_SOURCE, 1), (PROOF_REPORTED, 1)],
    ));
    v.push(pass_case(
        "transport from A's address, other port",
        with_payload(&Spoke { port: 40001, ..A }, transport(R_A_TO_B, 20)),
        &[(SEEN, 1), (PASS_UNKNOWN_SOURCE, 1), (PROOF_REPORTED, 1)],
    ));
    v.push(pass_case(
        "transport from an inactive slot",
        with_payload(&INACTIVE, transport(R_A_TO_B, 20)),
        &[(SEEN, 1), (PASS_UNKNOWN_SOURCE, 1), (PROOF_REPORTED, 1)],
    ));
    v.push(pass_case(
        "cookie reply from a stranger",
        with_payload(&STRANGER, cookie_reply(IDX_A2)),
        &[(SEEN, 1), (PASS_UNKNOWN_SOURCE, 1)],
    ));

    // Initiations.
    for (name, from, slot) in [
        ("initiation from A", A, A.slot),
        ("initiation from a stranger", STRANGER, NO_SLOT),
        ("initiation from IPv6 D", D, D.slot),
    ] {
        let m = initiation(0x0102_0304);
        let mut c = pass_case(
            name,
            with_payload(&from, m.clone()),
            &[(SEEN, 1), (INITIATIONS_QUEUED, 1)],
        );
        let hub_ep = match from.hub() {
            Addr::V4(a) => Endpoint::v4(a.octets(), PORT),
            Addr::V6(a) => Endpoint::v6(a.octets(), PORT),
        };
        c.event = Some(ExpectedEvent {
            src: from.endpoint(),
            dst: hub_ep,
            src_slot: slot,
            frame: m,
        });
        if slot != NO_SLOT {
            c = c.rx_seen(slot);
        }
        v.push(c);
    }

    // Sessions that go nowhere.
    v.push(
        Case::new(
            "loop A->A",
            with_payload(&A, transport(R_LOOP, 20)),
            XDP_DROP,
        )
        .counters(&[(SEEN, 1), (DROP_LOOP, 1)])
        .rx_seen(A.slot),
    );
    v.push(
        Case::new(
            "destination without endpoint",
            with_payload(&A, transport(R_NO_DEST, 20)),
            XDP_DROP,
        )
        .counters(&[(SEEN, 1), (DROP_NO_DESTINATION, 1)])
        .rx_seen(A.slot),
    );
    v.push(
        Case::new(
            "destination slot inactive",
            with_payload(&A, transport(R_A_TO_INACTIVE, 20)),
            XDP_DROP,
        )
        .counters(&[(SEEN, 1), (DROP_NO_DESTINATION, 1)])
        .rx_seen(A.slot),
    );
    v.push(
        pass_case(
            "cross family A(v4)->D(v6)",
            with_payload(&A, transport(R_CROSS, 20)),
            &[(SEEN, 1), (PASS_CROSS_FAMILY, 1)],
        )
        .rx_seen(A.slot),
    );

    // Malformed WireGuard.
    let good = transport(R_A_TO_B, 20);
    let mut bad: Vec<(&str, Vec<u8>)> = Vec::new();
    for (i, b) in [(1usize, 1u8), (2, 0x80), (3, 0xff)] {
        let mut m = good.clone();
        m[i] = b;
        bad.push(("reserved byte set", m));
    }
    for t in [0u8, 5, 0xff] {
        let mut m = good.clone();
        m[0] = t;
        bad.push(("bad type", m));
    }
    let mut m = initiation(1);
    m.pop();
    bad.push(("initiation 147 bytes", m));
    let mut m = initiation(1);
    m.push(0);
    bad.push(("initiation 149 bytes", m));
    let mut m = response(1, IDX_A);
    m.push(0);
    bad.push(("response 93 bytes", m));
    let mut m = response(1, IDX_A);
    m.pop();
    bad.push(("response 91 bytes", m));
    let mut m = cookie_reply(IDX_A2);
    m.pop();
    bad.push(("cookie 63 bytes", m));
    let mut m = cookie_reply(IDX_A2);
    m.push(0);
    bad.push(("cookie 65 bytes", m));
    let mut m = keepalive(R_A_TO_B);
    m.pop();
    bad.push(("transport 31 bytes", m));
    bad.push(("4-byte message", wg_header(4)));
    bad.push(("3-byte message", vec![4, 0, 0]));
    bad.push(("empty UDP payload", Vec::new()));
    for (name, m) in bad {
        v.push(pass_case(
            &format!("malformed: {name}"),
            with_payload(&A, m),
            &[(SEEN, 1), (PASS_MALFORMED, 1)],
        ));
    }
    {
        // UDP length larger than the IP payload.
        let mut f = with_payload(&A, transport(R_A_TO_B, 20));
        let l = u16::from_be_bytes([f[38], f[39]]) + 1;
        f[38..40].copy_from_slice(&l.to_be_bytes());
        v.push(pass_case(
            "malformed: UDP length > IP payload",
            f,
            &[(SEEN, 1), (PASS_MALFORMED, 1)],
        ));
    }
    {
        // IP total length beyond the frame.
        let mut f = with_payload(&A, transport(R_A_TO_B, 20));
        let l = u16::from_be_bytes([f[16], f[17]]) + 1;
        f[16..18].copy_from_slice(&l.to_be_bytes());
        v.push(pass_case(
            "malformed: IP total length > frame",
            f,
            &[(SEEN, 1), (PASS_MALFORMED, 1)],
        ));
    }

    // Not for the fast path at the IP layer.
    let plain = with_payload(&A, transport(R_A_TO_B, 20));
    v.push(pass_case(
        "IPv4 options to the hub port",
        ipv4_with_options(&plain),
        &[(PASS_UNSUPPORTED, 1)],
    ));
    {
        let mut f = Frame::from_spoke(&A, transport(R_A_TO_B, 20));
        f.dport = 9999;
        v.push(pass_case(
            "IPv4 options to another port",
            ipv4_with_options(&f.build()),
            &[],
        ));
    }
    v.push(pass_case(
        "IPv4 first fragment (MF)",
        set_ipv4_frag(&plain, 0x2000),
        &[(PASS_UNSUPPORTED, 1)],
    ));
    v.push(pass_case(
        "IPv4 non-first fragment",
        set_ipv4_frag(&plain, 0x0010),
        &[],
    ));
    v.push(pass_case(
        "IPv4 last fragment",
        set_ipv4_frag(&plain, 0x0020 | 0x4000),
        &[],
    ));
    {
        let mut f = plain.clone();
        f[23] = 6; // TCP
        v.push(pass_case("IPv4 TCP", f, &[]));
    }
    {
        let mut f = Frame::from_spoke(&A, transport(R_A_TO_B, 20));
        f.dport = PORT + 1;
        v.push(pass_case("IPv4 UDP to another port", f.build(), &[]));
    }
    {
        let mut f = plain.clone();
        f[12] = 0x08;
        f[13] = 0x06; // ARP
        v.push(pass_case("ARP ethertype", f, &[]));
        let mut f = plain.clone();
        f[12] = 0x81;
        f[13] = 0x00; // VLAN
        v.push(pass_case("VLAN tag", f, &[]));
        let mut f = plain.clone();
        f[14] = 0x65; // version 6 in an IPv4 ethertype
        v.push(pass_case("IPv4 ethertype, version 6", f, &[]));
    }
    let plain6 = with_payload(&D, transport(R_D_TO_E, 20));
    for ext in [0u8, 43, 60, 44] {
        v.push(pass_case(
            &format!("IPv6 extension header {ext} to the hub port"),
            ipv6_with_ext(&plain6, ext),
            &[(PASS_UNSUPPORTED, 1)],
        ));
    }
    {
        let mut f = Frame::from_spoke(&D, transport(R_D_TO_E, 20));
        f.dport = 9999;
        v.push(pass_case(
            "IPv6 extension header to another port",
            ipv6_with_ext(&f.build(), 0),
            &[],
        ));
        let mut x = plain6.clone();
        x[20] = 50; // ESP: cannot tell
        v.push(pass_case("IPv6 ESP", x, &[]));
        let mut x = plain6.clone();
        x[20] = 58; // ICMPv6
        v.push(pass_case("IPv6 ICMPv6", x, &[]));
        f.dport = PORT + 1;
        v.push(pass_case("IPv6 UDP to another port", f.build(), &[]));
    }
    v
}

/// These tests load BPF and create namespaces: they need root. Failing
/// (rather than skipping) keeps a non-root run from passing vacuously.
fn is_root() -> bool {
    assert!(
        nix::unistd::geteuid().is_root(),
        "xdp_golden needs root (BPF, network namespaces): run `cargo xtask test`"
    );
    true
}

#[test]
fn golden_cases() {
    if !is_root() {
        return;
    }
    let ns = Entered::new();
    let (ifindex, _) = topology(&ns, true);
    let mut hub = Hub::load(ifindex);
    let cases = table();
    for case in &cases {
        check_case(&mut hub, case);
    }

    // The response taught (A, B's index) -> B.
    let learned = hub.session(A.slot, IDX_B).expect("learned entry");
    assert_eq!(learned.dst_slot, B.slot);
    assert_eq!(learned.flags, SESSION_FROM_RESPONSE);
    assert_ne!(learned.last_seen_ns, 0);
    // Used sessions were refreshed (they started at 0).
    assert_ne!(hub.session(A.slot, R_A_TO_B).unwrap().last_seen_ns, 0);
    assert_ne!(hub.session(D.slot, R_D_TO_E).unwrap().last_seen_ns, 0);
    // Sessions that only dropped were not.
    assert_eq!(hub.session(A.slot, R_LOOP).unwrap().last_seen_ns, 0);
    // Keepalive timestamps (cleared before every case): a keepalive from A
    // to B sets A's.
    hub.clear_slot_times(MAX_TEST_SLOT);
    assert_eq!(hub.snapshot().slots[A.slot as usize].2, 0);
    assert_eq!(
        hub.run(&with_payload(&A, keepalive(R_A_TO_B))).unwrap().0,
        XDP_TX
    );
    assert_ne!(hub.snapshot().slots[A.slot as usize].2, 0);
    eprintln!("{} golden cases passed", cases.len());

    // last_seen_ns is refreshed at most once a second: a second frame
    // right after the first leaves it alone.
    let t0 = hub.session(A.slot, R_A_TO_B).unwrap().last_seen_ns;
    let f = with_payload(&A, transport(R_A_TO_B, 20));
    assert_eq!(hub.run(&f).unwrap().0, XDP_TX);
    assert_eq!(hub.session(A.slot, R_A_TO_B).unwrap().last_seen_ns, t0);
    // An old entry is refreshed.
    hub.add_session(A.slot, R_A_TO_B, B.slot);
    assert_eq!(hub.run(&f).unwrap().0, XDP_TX);
    assert!(hub.session(A.slot, R_A_TO_B).unwrap().last_seen_ns > t0);

    // Port 0 = not configured: everything passes, nothing counted.
    hub.set_port(0);
    let f = with_payload(&A, transport(R_A_TO_B, 20));
    check_case(&mut hub, &Case::new("port 0: pass all", f, XDP_PASS));
}

#[test]
fn truncated_frames() {
    if !is_root() {
        return;
    }
    let ns = Entered::new();
    let (ifindex, _) = topology(&ns, true);
    let hub = Hub::load(ifindex);
    let frames = [
        with_payload(&A, transport(R_A_TO_B, 20)),
        with_payload(&B, response(IDX_B, IDX_A)),
        with_payload(&A, initiation(7)),
        with_payload(&D, transport(R_D_TO_E, 20)),
        ipv6_with_ext(&with_payload(&D, transport(R_D_TO_E, 20)), 0),
        ipv4_with_options(&with_payload(&A, transport(R_A_TO_B, 20))),
    ];
    for full in &frames {
        // The whole frame relays (or passes); every cut must pass. The
        // kernel refuses frames shorter than an Ethernet header.
        for len in 14..full.len() {
            let cut = &full[..len];
            let before = hub.snapshot();
            let (action, out) = hub.run(cut).expect("test_run");
            let after = hub.snapshot();
            assert_eq!(action, XDP_PASS, "cut at {len} of {}", full.len());
            assert_eq!(out, cut, "cut at {len}: frame modified");
            for i in [
                RELAYED_PACKETS,
                INITIATIONS_QUEUED,
                DROP_LOOP,
                DROP_NO_ROUTE,
            ] {
                assert_eq!(
                    after.counters[i as usize],
                    before.counters[i as usize],
                    "cut at {len}: {}",
                    name_of(i)
                );
            }
        }
    }
}

#[test]
fn fib_fallback_when_forwarding_disabled() {
    if !is_root() {
        return;
    }
    let ns = Entered::new();
    let (ifindex, _) = topology(&ns, false);
    let mut hub = Hub::load(ifindex);
    for (name, from, to, r) in [
        ("v4 forwarding disabled", A, B, R_A_TO_B),
        ("v6 forwarding disabled", D, E, R_D_TO_E),
    ] {
        let payload = transport(r, 30);
        let len = payload.len();
        let mut input = Frame::from_spoke(&from, payload);
        input.eth_src = OTHER_MAC;
        let output = input.relayed_to(&to, OTHER_MAC, HUB_MAC).build();
        let mut counters = relayed(RELAYED_TRANSPORT, len, false, &from, &to);
        counters.push((FIB_FALLBACK, 1));
        let case = Case::new(name, input.build(), XDP_TX)
            .output(output)
            .counters(&counters)
            .slot(from.slot, rx(len, false))
            .slot(to.slot, tx(len))
            .rx_seen(from.slot);
        check_case(&mut hub, &case);
    }
}

#[test]
fn initiation_ring_full() {
    if !is_root() {
        return;
    }
    let ns = Entered::new();
    let (ifindex, _) = topology(&ns, true);
    let mut hub = Hub::load(ifindex);
    // 256 KiB of ~200-byte records: 2000 initiations overflow it. From
    // 2000 addresses: one address may only have INITIATION_COPIES_PER_SEC
    // copied (see initiation_copy_budget_per_address).
    const N: u32 = 2000;
    let payload = initiation(9);
    let frames: Vec<Vec<u8>> = (0..N)
        .map(|i| {
            let from = Spoke::v4(0, [198, 18, (i / 256) as u8, (i % 256) as u8], 40000);
            with_payload(&from, payload.clone())
        })
        .collect();
    let before = hub.before();
    for f in &frames {
        let (action, out) = hub.run(f).expect("test_run");
        assert_eq!(action, XDP_PASS);
        assert_eq!(&out, f);
    }
    let after = hub.snapshot();
    let d = |i: u32| after.counters[i as usize] - before.counters[i as usize];
    let (queued, full) = (d(INITIATIONS_QUEUED), d(INITIATIONS_RING_FULL));
    assert_eq!(d(SEEN), N as u64);
    assert_eq!(d(INITIATIONS_NOT_COPIED), 0);
    assert_eq!(queued + full, N as u64);
    assert!(queued > 0 && full > 0, "queued {queued}, full {full}");
    let events = hub.drain_events();
    assert_eq!(events.len() as u64, queued);
    assert!(
        events
            .iter()
            .all(|e| e.src_slot == NO_SLOT && e.frame[..] == payload[..])
    );
    let f = with_payload(&A, initiation(9));
    // Room again after draining.
    check_case(&mut hub, &{
        let mut c = pass_case(
            "initiation after drain",
            f.clone(),
            &[(SEEN, 1), (INITIATIONS_QUEUED, 1)],
        )
        .rx_seen(A.slot);
        c.event = Some(ExpectedEvent {
            src: A.endpoint(),
            dst: Endpoint::v4(HUB4.octets(), PORT),
            src_slot: A.slot,
            frame: f[42..].to_vec(),
        });
        c
    });
}

/// The per-source budget of initiations passed to the hub's own WireGuard:
/// within one second a source address passes `BUDGET` initiations, the
/// next is dropped (still copied to the controller) and counted; another
/// address has its own budget; a new second starts a new window; budget 0
/// (every other case) passes all.
#[test]
fn initiation_budget_per_source() {
    if !is_root() {
        return;
    }
    const BUDGET: u32 = 3;
    let ns = Entered::new();
    let (ifindex, _) = topology(&ns, true);
    let mut hub = Hub::load(ifindex);
    hub.set_initiation_budget(BUDGET);
    let stranger = with_payload(&STRANGER, initiation(0x51));
    // The stranger from another port of the same address shares the window.
    let mut other_port = Frame::from_spoke(&STRANGER, initiation(0x52));
    other_port.sport = STRANGER.port + 1;
    let other_port = other_port.build();
    let spoke = with_payload(&A, initiation(0x53));
    let before = hub.before();
    let (action, _) = hub.run_n(&stranger, BUDGET).unwrap();
    assert_eq!(action, XDP_PASS, "within the budget");
    let (action, out) = hub.run(&other_port).unwrap();
    assert_eq!(
        action, XDP_DROP,
        "over the budget (same address, other port)"
    );
    assert_eq!(out, other_port, "dropped unchanged");
    let (action, _) = hub.run(&spoke).unwrap();
    assert_eq!(action, XDP_PASS, "another address has its own budget");
    let after = hub.snapshot();
    let d = |i: u32| after.counters[i as usize] - before.counters[i as usize];
    assert_eq!(d(INITIATIONS_NOT_PASSED), 1);
    assert_eq!(
        d(INITIATIONS_QUEUED),
        u64::from(BUDGET) + 2,
        "every one is still routed"
    );
    let events = hub.drain_events();
    assert_eq!(events.len(), BUDGET as usize + 2);
    // A new second, a new window.
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let (action, _) = hub.run(&stranger).unwrap();
    assert_eq!(action, XDP_PASS, "the next second");
    // No budget: no limit.
    hub.set_initiation_budget(0);
    let (action, _) = hub.run_n(&stranger, 10 * BUDGET).unwrap();
    assert_eq!(action, XDP_PASS);
    hub.drain_events();
}

/// Initiation copies to the controller: at most INITIATION_COPIES_PER_SEC
/// a second per source address (ports share it); the frames themselves
/// still go on (to the hub's own WireGuard within its own budget).
#[test]
fn initiation_copy_budget_per_address() {
    if !is_root() {
        return;
    }
    let ns = Entered::new();
    let (ifindex, _) = topology(&ns, true);
    let mut hub = Hub::load(ifindex);
    let per_sec = relay_common::INITIATION_COPIES_PER_SEC;
    let from_a = with_payload(&A, initiation(0x71));
    let mut other_port = Frame::from_spoke(
        &Spoke {
            port: A.port + 1,
            ..A
        },
        initiation(0x72),
    );
    other_port.sport = A.port + 1;
    let other_port = other_port.build();
    let before = hub.before();
    let (action, _) = hub.run_n(&from_a, per_sec - 2).unwrap();
    assert_eq!(action, XDP_PASS);
    let (action, out) = hub.run_n(&other_port, 5).unwrap();
    assert_eq!(
        (action, out),
        (XDP_PASS, other_port.clone()),
        "over the copy budget, still passed"
    );
    let copied = hub.drain_events();
    assert_eq!(copied.len(), per_sec as usize);
    hub.run(&with_payload(&B, initiation(0x73))).unwrap();
    assert_eq!(
        hub.drain_events().len(),
        1,
        "another address, another budget"
    );
    let after = hub.snapshot();
    let d = |i: u32| after.counters[i as usize] - before.counters[i as usize];
    assert_eq!(d(INITIATIONS_QUEUED), u64::from(per_sec) + 1);
    assert_eq!(d(INITIATIONS_NOT_COPIED), 3);
    std::thread::sleep(std::time::Duration::from_millis(1100));
    hub.run(&other_port).unwrap();
    assert_eq!(hub.drain_events().len(), 1, "the next second");
}

/// Frames from sources that are not authenticated endpoints reach the
/// controller as proof events: a transport frame's header (its receiver
/// index names a live session's sender), a response whole (it may answer
/// the controller's probe); at most PROOF_REPORTS_PER_SEC a second per
/// source address. The frames themselves still pass.
#[test]
fn proof_reports_from_unknown_sources() {
    if !is_root() {
        return;
    }
    let ns = Entered::new();
    let (ifindex, _) = topology(&ns, true);
    let mut hub = Hub::load(ifindex);
    let hub_ep = Endpoint::v4(HUB4.octets(), PORT);
    let data = transport(R_A_TO_B, 64);
    let resp = response(0x7777_0001, 0x4242_4242);
    let before = hub.before();
    for (payload, copied) in [(data.clone(), 16), (resp.clone(), 92)] {
        let frame = with_payload(&STRANGER, payload.clone());
        let (action, out) = hub.run(&frame).unwrap();
        assert_eq!((action, out), (XDP_PASS, frame), "passed unchanged");
        let got = hub.drain_proofs();
        assert_eq!(got.len(), 1, "one proof event");
        let ev = &got[0];
        assert_eq!(ev.src, STRANGER.endpoint());
        assert_eq!(ev.dst, hub_ep);
        assert_eq!(ev.len as usize, payload.len());
        assert_eq!(&ev.frame[..copied], &payload[..copied]);
        assert!(
            ev.frame[copied..].iter().all(|&b| b == 0),
            "zero after the copy"
        );
    }
    // An authenticated spoke's frames for the hub's own sessions, and
    // initiations (routed through their own ring), are not proof events.
    for frame in [
        with_payload(&A, transport(0x0bad_0bad, 32)),
        with_payload(&STRANGER, initiation(0x61)),
        with_payload(&STRANGER, cookie_reply(0x4242_4242)),
    ] {
        hub.run(&frame).unwrap();
    }
    assert!(hub.drain_proofs().is_empty());
    hub.drain_events();
    let after = hub.snapshot();
    let d = |i: u32| after.counters[i as usize] - before.counters[i as usize];
    assert_eq!(d(PROOF_REPORTED), 2);
    assert_eq!(d(PROOF_RING_FULL), 0);

    // The budget: per address (ports share it), per second.
    hub.clear_proof_budget();
    let per_sec = relay_common::PROOF_REPORTS_PER_SEC;
    let mut other_port = Frame::from_spoke(&STRANGER, data.clone());
    other_port.sport = STRANGER.port + 1;
    let other_port = other_port.build();
    let before = hub.before();
    hub.run_n(&with_payload(&STRANGER, data.clone()), per_sec - 1)
        .unwrap();
    hub.run_n(&other_port, 3).unwrap();
    assert_eq!(hub.drain_proofs().len(), per_sec as usize);
    let another = Spoke::v4(0, [203, 0, 113, 98], 40000);
    hub.run(&with_payload(&another, data.clone())).unwrap();
    assert_eq!(
        hub.drain_proofs().len(),
        1,
        "another address, another budget"
    );
    let after = hub.snapshot();
    let d = |i: u32| after.counters[i as usize] - before.counters[i as usize];
    assert_eq!(d(PROOF_REPORTED), u64::from(per_sec) + 1);
    assert_eq!(d(PASS_UNKNOWN_SOURCE), u64::from(per_sec) + 3);
    std::thread::sleep(std::time::Duration::from_millis(1100));
    hub.run(&other_port).unwrap();
    assert_eq!(hub.drain_proofs().len(), 1, "the next second");
}

// ---------------------------------------------------------------------------
// Cross-family relay (IPv4 spoke <-> IPv6 spoke).

/// D's session towards A (D -> A frames are IPv6 -> IPv4).
const R_D_TO_A: u32 = 0x5656_5656;
/// A's sender index in its initiation to D (D's response goes to it).
const IDX_A3: u32 = 0xaaaa_0003;
/// D's sender index in its response to A.
const IDX_D: u32 = 0xdddd_0001;

/// An IPv4 frame the hub built: identification 0 (DF set, RFC 6864),
/// header checksum recomputed. `Frame::build` writes 0x1234.
fn v4_id0(mut f: Vec<u8>) -> Vec<u8> {
    assert_eq!(&f[12..14], &[0x08, 0x00]);
    f[18] = 0;
    f[19] = 0;
    f[24] = 0;
    f[25] = 0;
    let c = !fold(sum16(&f[14..34], 0));
    f[24..26].copy_from_slice(&c.to_be_bytes());
    f
}

/// A cross-family relay case: `from` sends `payload` to the hub, which
/// sends it to `to` in the other family from its own address there.
fn cross_case(
    name: &str,
    from: &Spoke,
    to: &Spoke,
    payload: Vec<u8>,
    kind: u32,
    macs: ([u8; 6], [u8; 6], [u8; 6]),
) -> Case {
    let (in_src, out_dst, out_src) = macs;
    let len = payload.len();
    let keepalive = kind == RELAYED_TRANSPORT && len == 32;
    let mut input = Frame::from_spoke(from, payload);
    input.eth_src = in_src;
    let mut output = input.relayed_to(to, out_dst, out_src).build();
    if to.family() == FAMILY_V4 {
        output = v4_id0(output);
    }
    Case::new(name, input.build(), XDP_TX)
        .output(output)
        .counters(&relayed(kind, len, keepalive, from, to))
        .slot(from.slot, rx(len, keepalive))
        .slot(to.slot, tx(len))
        .rx_seen(from.slot)
}

#[test]
fn cross_family_golden() {
    if !is_root() {
        return;
    }
    let ns = Entered::new();
    let (ifindex, _) = topology(&ns, true);
    let mut hub = Hub::load(ifindex);
    hub.set_config(PORT, Some(HUB4), Some(HUB6));
    hub.add_session(D.slot, R_D_TO_A, A.slot);
    // The controller routed A's initiation to D: D's response comes back.
    hub.add_session(D.slot, IDX_A3, A.slot);
    let routed = (GW_MAC, GW_MAC, HUB_MAC);
    let mut cases = vec![
        cross_case(
            "transport A(v4) -> D(v6)",
            &A,
            &D,
            transport(R_CROSS, 100),
            RELAYED_TRANSPORT,
            routed,
        ),
        cross_case(
            "keepalive A(v4) -> D(v6)",
            &A,
            &D,
            keepalive(R_CROSS),
            RELAYED_TRANSPORT,
            routed,
        ),
        cross_case(
            "transport D(v6) -> A(v4)",
            &D,
            &A,
            transport(R_D_TO_A, 200),
            RELAYED_TRANSPORT,
            routed,
        ),
        cross_case(
            "keepalive D(v6) -> A(v4)",
            &D,
            &A,
            keepalive(R_D_TO_A),
            RELAYED_TRANSPORT,
            routed,
        ),
        {
            let mut c = cross_case(
                "response D(v6) -> A(v4) (learns A's entry)",
                &D,
                &A,
                response(IDX_D, IDX_A3),
                RELAYED_RESPONSE,
                routed,
            );
            c.counters.push((RESPONSE_LEARNED, 1));
            c
        },
        cross_case(
            "transport A(v4) -> D(v6) on the learned entry",
            &A,
            &D,
            transport(IDX_D, 64),
            RELAYED_TRANSPORT,
            routed,
        ),
        cross_case(
            "cookie reply D(v6) -> A(v4)",
            &D,
            &A,
            cookie_reply(IDX_A3),
            RELAYED_COOKIE,
            routed,
        ),
    ];
    {
        // Maximal IPv4 frame (1500 bytes) grows to 1520 as IPv6: too big
        // for the route's MTU (1500).
        let f = with_payload(&A, transport(R_CROSS, 1500 - 20 - 8 - 32));
        assert_eq!(f.len(), 14 + 1500);
        cases.push(
            Case::new("A(v4) -> D(v6) over the MTU", f, XDP_DROP)
                .counters(&[(SEEN, 1), (DROP_TOO_BIG, 1)])
                .rx_seen(A.slot),
        );
    }
    {
        // IPv4 without UDP checksum: IPv6 needs one, so the frame is for the
        // userspace fallback, whose perf buffers nobody opened here: dropped
        // and counted (cross_family_fallback covers the open case).
        let mut input = Frame::from_spoke(&A, transport(R_CROSS, 20));
        input.csum = Csum::Zero;
        cases.push(
            Case::new(
                "A(v4) -> D(v6) with UDP checksum 0, no fallback reader",
                input.build(),
                XDP_DROP,
            )
            .counters(&[(SEEN, 1), (NO_CHECKSUM, 1), (DROP_FALLBACK_FULL, 1)])
            .rx_seen(A.slot),
        );
    }
    {
        // To the hub port but another host's address (the hub only routes
        // it): never relayed, whatever it carries, in either family.
        let mut v4 = Frame::from_spoke(&A, transport(R_CROSS, 20));
        v4.dst = Addr::V4(Ipv4Addr::new(198, 51, 100, 7));
        let mut v6 = Frame::from_spoke(&D, transport(R_D_TO_A, 20));
        v6.dst = Addr::V6("2001:db8:1::77".parse().unwrap());
        for (name, f) in [
            ("A(v4) to a foreign address", v4),
            ("D(v6) to a foreign address", v6),
        ] {
            cases.push(pass_case(name, f.build(), &[(PASS_NOT_FOR_HUB, 1)]));
        }
        // A corrupted IPv4 header (the kernel would drop it) must not leave
        // with a freshly computed checksum.
        let mut bad = Frame::from_spoke(&A, transport(R_CROSS, 20)).build();
        bad[24] ^= 0x5a;
        cases.push(pass_case(
            "A(v4) with a bad IPv4 header checksum",
            bad,
            &[(SEEN, 1), (PASS_MALFORMED, 1)],
        ));
    }
    for case in &cases {
        check_case(&mut hub, case);
    }
    let learned = hub.session(A.slot, IDX_D).expect("learned entry");
    assert_eq!(learned.dst_slot, D.slot);
    assert_eq!(learned.flags, SESSION_FROM_RESPONSE);

    // Only an IPv4 hub address: IPv6 -> IPv4 still relays, IPv4 -> IPv6
    // passes (counted); and the other way round.
    hub.set_config(PORT, Some(HUB4), None);
    check_case(
        &mut hub,
        &pass_case(
            "A(v4) -> D(v6), hub has no IPv6 address",
            with_payload(&A, transport(R_CROSS, 20)),
            &[(SEEN, 1), (PASS_CROSS_FAMILY, 1)],
        )
        .rx_seen(A.slot),
    );
    check_case(
        &mut hub,
        &cross_case(
            "D(v6) -> A(v4), hub has only an IPv4 address",
            &D,
            &A,
            transport(R_D_TO_A, 20),
            RELAYED_TRANSPORT,
            routed,
        ),
    );
    hub.set_config(PORT, None, Some(HUB6));
    check_case(
        &mut hub,
        &pass_case(
            "D(v6) -> A(v4), hub has no IPv4 address",
            with_payload(&D, transport(R_D_TO_A, 20)),
            &[(SEEN, 1), (PASS_CROSS_FAMILY, 1)],
        )
        .rx_seen(D.slot),
    );
    check_case(
        &mut hub,
        &cross_case(
            "A(v4) -> D(v6), hub has only an IPv6 address",
            &A,
            &D,
            transport(R_CROSS, 20),
            RELAYED_TRANSPORT,
            routed,
        ),
    );
    eprintln!("{} cross-family golden cases passed", cases.len() + 4);
    drop(hub);
    drop(ns);

    // Forwarding disabled: the rebuilt frame goes back to the L2 neighbour
    // it came from (its original Ethernet addresses, swapped).
    let ns = Entered::new();
    let (ifindex, _) = topology(&ns, false);
    let mut hub = Hub::load(ifindex);
    hub.set_config(PORT, Some(HUB4), Some(HUB6));
    hub.add_session(D.slot, R_D_TO_A, A.slot);
    for (name, from, to, r) in [
        ("A(v4) -> D(v6), forwarding disabled", A, D, R_CROSS),
        ("D(v6) -> A(v4), forwarding disabled", D, A, R_D_TO_A),
    ] {
        let mut c = cross_case(
            name,
            &from,
            &to,
            transport(r, 30),
            RELAYED_TRANSPORT,
            (OTHER_MAC, OTHER_MAC, HUB_MAC),
        );
        c.counters.push((FIB_FALLBACK, 1));
        check_case(&mut hub, &c);
    }
}

/// A frame for the userspace fallback: `from` sends `payload` to `to` in
/// the other family. The program must drop it after handing over the
/// untouched frame; the controller's parser must find the payload and
/// destination in it, and the datagram the controller sends (sender's
/// builders) must equal the expected frame built from scratch.
fn check_fallback(hub: &mut Hub, name: &str, from: &Spoke, input: Frame, to: &Spoke, reason: u32) {
    let len = input.payload.len();
    let keepalive = len == 32;
    let wire = input.build();
    let mut counters = vec![(SEEN, 1), (USERSPACE_FALLBACK, 1)];
    if reason != USERSPACE_FALLBACK {
        counters.push((reason, 1));
    }
    let from_slot = from.slot;
    check_case(
        hub,
        &Case::new(name, wire.clone(), XDP_DROP)
            .counters(&counters)
            .slot(from_slot, rx(len, keepalive))
            .slot(to.slot, tx(len))
            .rx_seen(from_slot),
    );
    let samples = hub.drain_fallback();
    assert_eq!(samples.len(), 1, "{name}: fallback samples");
    let s = &samples[0];
    // SAFETY: the sample starts with a FallbackMeta (plain data).
    let meta: FallbackMeta = unsafe { std::ptr::read_unaligned(s.as_ptr().cast()) };
    assert_eq!(meta.dst, to.endpoint(), "{name}: destination");
    assert_eq!(meta.reason, reason, "{name}: reason");
    let off = size_of::<FallbackMeta>();
    assert_eq!(
        hex(&s[off..off + meta.frame_len as usize]),
        hex(&wire),
        "{name}: the frame as received"
    );

    let r = fallback::parse(s).unwrap_or_else(|e| panic!("{name}: parse: {e}"));
    assert_eq!(r.payload, &input.payload[..], "{name}: payload");
    assert_eq!(r.to, to.endpoint());
    let mut tx = sender::RawSender::new().expect("raw sockets (root)");
    tx.set_hub_addresses(Some(HUB4), Some(HUB6));
    let src = tx.source_for(&r.hub, &r.to).unwrap();
    let mut ip = Vec::new();
    if to.family() == FAMILY_V4 {
        sender::build_v4(&mut ip, &src, &r.to, r.payload);
    } else {
        sender::build_v6(&mut ip, &src, &r.to, r.payload);
    }
    let mut expected = input.relayed_to(to, GW_MAC, HUB_MAC);
    // Userspace always sums (IPv6 needs it); the IPv4 id is 0 (DF).
    expected.csum = Csum::Full;
    let mut expected = expected.build();
    if to.family() == FAMILY_V4 {
        expected = v4_id0(expected);
    }
    assert_eq!(hex(&ip), hex(&expected[14..]), "{name}: sent datagram");
    let mut framed = expected[..14].to_vec();
    framed.extend_from_slice(&ip);
    verify_checksums(&framed);
}

#[test]
fn cross_family_fallback() {
    if !is_root() {
        return;
    }
    let ns = Entered::new();
    let (ifindex, _) = topology(&ns, true);
    let mut hub = Hub::load(ifindex);
    hub.open_fallback();
    hub.set_config(PORT, Some(HUB4), Some(HUB6));
    hub.add_session(D.slot, R_D_TO_A, A.slot);

    // The fast path cannot sum payloads: an IPv4 frame without checksum
    // to an IPv6 spoke takes the fallback even on the XDP path.
    let mut f = Frame::from_spoke(&A, transport(R_CROSS, 100));
    f.csum = Csum::Zero;
    check_fallback(
        &mut hub,
        "A(v4) -> D(v6), no UDP checksum",
        &A,
        f,
        &D,
        NO_CHECKSUM,
    );
    // Same-family frames and checksummed ones stay on the fast path.
    check_case(
        &mut hub,
        &cross_case(
            "A(v4) -> D(v6) with checksum, XDP path",
            &A,
            &D,
            transport(R_CROSS, 100),
            RELAYED_TRANSPORT,
            (GW_MAC, GW_MAC, HUB_MAC),
        ),
    );
    assert!(hub.drain_fallback().is_empty());

    // --cross-family-path userspace: every cross-family frame, both ways.
    hub.cross = CrossPath::Userspace;
    hub.set_config(PORT, Some(HUB4), Some(HUB6));
    for (name, payload, from, to, reason) in [
        (
            "A(v4) -> D(v6) transport",
            transport(R_CROSS, 300),
            A,
            D,
            USERSPACE_FALLBACK,
        ),
        (
            "A(v4) -> D(v6) keepalive",
            keepalive(R_CROSS),
            A,
            D,
            USERSPACE_FALLBACK,
        ),
        (
            "D(v6) -> A(v4) transport",
            transport(R_D_TO_A, 1200),
            D,
            A,
            USERSPACE_FALLBACK,
        ),
        (
            "D(v6) -> A(v4) keepalive",
            keepalive(R_D_TO_A),
            D,
            A,
            USERSPACE_FALLBACK,
        ),
    ] {
        check_fallback(
            &mut hub,
            name,
            &from,
            Frame::from_spoke(&from, payload),
            &to,
            reason,
        );
    }
    // Same family is unaffected by the setting.
    check_case(
        &mut hub,
        &relay_case(
            "A(v4) -> B(v4) with the userspace cross-family path",
            &A,
            &B,
            transport(R_A_TO_B, 64),
            Csum::Full,
            RELAYED_TRANSPORT,
        ),
    );
    assert!(hub.drain_fallback().is_empty());
    hub.cross = CrossPath::Xdp;
}

/// The next-hop cache: within its lifetime a relayed frame gets the cached
/// gateway MAC even after the neighbour entry changed; afterwards the new
/// one. The thread is pinned to one CPU (the cache is per CPU).
/// The per-CPU source cache never outlives what the slots say: once a
/// spoke moves or is deactivated, its old endpoint is nobody's at once,
/// well within an entry's lifetime; an endpoint remembered as a stranger's
/// is a spoke's as soon as it is installed.
#[test]
fn source_cache_follows_slot_changes() {
    if !is_root() {
        return;
    }
    pin_to_cpu0();
    let ns = Entered::new();
    let (ifindex, _) = topology(&ns, true);
    let mut hub = Hub::load(ifindex);
    let a_to_b = |from: &Spoke| Frame::from_spoke(from, transport(R_A_TO_B, 64));
    let relayed_from = |name: &str, from: &Spoke| {
        let input = a_to_b(from);
        Case::new(name, input.build(), XDP_TX)
            .output(input.relayed_to(&B, GW_MAC, HUB_MAC).build())
            .counters(&relayed(RELAYED_TRANSPORT, 96, false, &A, &B))
            .slot(A.slot, rx(96, false))
            .slot(B.slot, tx(96))
            .rx_seen(A.slot)
    };
    let unknown = |name: &str, from: &Spoke| {
        pass_case(
            name,
            a_to_b(from).build(),
            &[(SEEN, 1), (PASS_UNKNOWN_SOURCE, 1), (PROOF_REPORTED, 1)],
        )
    };
    let started = std::time::Instant::now();
    check_case(&mut hub, &relayed_from("A->B, fills A's entry", &A));
    check_case(&mut hub, &relayed_from("A->B, from the entry", &A));

    // A's next endpoint, while no spoke has it: a stranger, remembered.
    let moved = Spoke::v4(A.slot, [203, 0, 113, 11], 40001);
    check_case(
        &mut hub,
        &unknown("from A's next endpoint, a stranger", &moved),
    );
    // A moves, as the controller moves a spoke: reverse entry first (and
    // the new endpoint's stranger entries emptied, as the controller does).
    hub.endpoint_slots.remove(&A.endpoint()).unwrap();
    hub.add_spoke(&moved, true);
    check_case(&mut hub, &unknown("from A's old endpoint", &A));
    check_case(
        &mut hub,
        &relayed_from("A->B from A's new endpoint", &moved),
    );
    check_case(&mut hub, &relayed_from("again, from the entry", &moved));

    // Deactivated (the endpoint still indexed): nobody's at once.
    hub.add_spoke(&moved, false);
    check_case(&mut hub, &unknown("from deactivated A", &moved));
    assert!(
        started.elapsed() < std::time::Duration::from_nanos(relay_common::SOURCE_CACHE_TTL_NS),
        "the checks ran within one entry lifetime ({:?}), or they prove nothing",
        started.elapsed()
    );
}

#[test]
fn next_hop_cache_expires() {
    if !is_root() {
        return;
    }
    pin_to_cpu0();
    let ns = Entered::new();
    let (ifindex, _) = topology(&ns, true);
    let mut hub = Hub::load(ifindex);
    let new_gw: [u8; 6] = [0x02, 0, 0, 0, 0, 0xfd];
    let relay = |name: &str, gw: [u8; 6]| {
        let len = 64;
        let input = Frame::from_spoke(&A, transport(R_A_TO_B, len));
        Case::new(name, input.build(), XDP_TX)
            .output(input.relayed_to(&B, gw, HUB_MAC).build())
            .counters(&relayed(RELAYED_TRANSPORT, len + 32, false, &A, &B))
            .slot(A.slot, rx(len + 32, false))
            .slot(B.slot, tx(len + 32))
            .rx_seen(A.slot)
    };
    let set_gateway = |gw: [u8; 6]| {
        ns.ip(&format!(
            "neigh replace 198.51.100.254 lladdr {} nud permanent dev rhg0",
            mac(gw)
        ))
    };
    let ttl = std::time::Duration::from_nanos(relay_common::NEXTHOP_TTL_NS);
    let gateway_of = |hub: &mut Hub, len: usize| {
        let frame = Frame::from_spoke(&A, transport(R_A_TO_B, len));
        let (action, out) = hub.run(&frame.build()).unwrap();
        assert_eq!(action, XDP_TX, "{len}-byte frame relayed");
        <[u8; 6]>::try_from(&out[..6]).unwrap()
    };
    // Changing the neighbour takes a process spawn, which a loaded machine
    // can stretch past the cache lifetime: a round whose checks did not all
    // run within one lifetime of the fill proves nothing and is repeated.
    let mut proven = false;
    for round in 0..5 {
        set_gateway(GW_MAC);
        std::thread::sleep(ttl + std::time::Duration::from_millis(100));
        check_case(&mut hub, &relay("A->B, fills the cache", GW_MAC));
        let filled = std::time::Instant::now();
        set_gateway(new_gw);
        let cached = gateway_of(&mut hub, 64);
        // A larger frame than the one that filled the entry is looked up
        // again (its MTU check): it gets the current neighbour at once.
        let bigger = gateway_of(&mut hub, 1200);
        if filled.elapsed() >= ttl {
            eprintln!(
                "next_hop_cache_expires: round {round} took {:?}, repeating",
                filled.elapsed()
            );
            continue;
        }
        assert_eq!(
            cached, GW_MAC,
            "a frame within the lifetime uses the cached next hop"
        );
        assert_eq!(
            bigger, new_gw,
            "a larger frame is looked up again, not served from the cache"
        );
        proven = true;
        break;
    }
    assert!(proven, "no round ran within the cache lifetime");
    std::thread::sleep(ttl + std::time::Duration::from_millis(100));
    check_case(&mut hub, &relay("A->B after the cache lifetime", new_gw));
}

// ---------------------------------------------------------------------------
// Hub mesh: spokes homed on a peer hub are slots whose endpoint is that
// hub's address and the spoke's mesh port there (SLOT_REMOTE).

const MESH_BASE: u16 = 43000;
/// Behind the same gateway as the spokes (the test namespace routes it).
const PEER_HUB: [u8; 4] = [203, 0, 113, 200];
const R1: Spoke = Spoke::v4(10, PEER_HUB, MESH_BASE + 10);
const R2: Spoke = Spoke::v4(11, PEER_HUB, MESH_BASE + 11);
const R_A_TO_R1: u32 = 0x2121_2121;
const R_R1_TO_A: u32 = 0x3131_3131;
const R_R1_TO_R2: u32 = 0x4141_4141;
const R_R1_NONE: u32 = 0x5151_5151;

/// Mesh indices of the local spokes A and B (not their slots: the port
/// comes from the index in the slot's flags).
const MESH_INDEX_A: u16 = 7;
const MESH_INDEX_B: u16 = 8;

/// The mesh port of `s` on its home hub: a local spoke's index here, a
/// remote spoke's slot number doubles as its index on the peer hub.
fn mesh_port_of(s: &Spoke) -> u16 {
    let index = match s.slot {
        x if x == A.slot => MESH_INDEX_A,
        x if x == B.slot => MESH_INDEX_B,
        x => x as u16,
    };
    relay_common::mesh_port(MESH_BASE, index.into()).unwrap()
}

/// What the peer hub sends here for remote spoke `from`: from `from`'s
/// mesh port there to `to`'s mesh port here.
fn from_peer(from: &Spoke, to: &Spoke, payload: Vec<u8>) -> Frame {
    Frame {
        eth_dst: HUB_MAC,
        eth_src: GW_MAC,
        src: from.addr,
        dst: Addr::V4(HUB4),
        ttl: 61,
        sport: from.port,
        dport: mesh_port_of(to),
        payload,
        csum: Csum::Full,
    }
}

#[test]
fn mesh_golden() {
    if !is_root() {
        return;
    }
    let ns = Entered::new();
    let (ifindex, _) = topology(&ns, true);
    let mut hub = Hub::load(ifindex);
    hub.set_mesh(MESH_BASE);
    // The peer hub has drop counters of its own (index PEER), and its
    // spokes' slots name it.
    const PEER: u32 = 5;
    hub.mesh_hubs
        .insert(Endpoint::v4(PEER_HUB, 0), PEER, 0)
        .unwrap();
    for r in [R1, R2] {
        let flags = SLOT_ACTIVE | SLOT_REMOTE | (PEER << relay_common::SLOT_MESH_SHIFT);
        hub.set_spoke_flags(r.slot, r.endpoint(), flags).unwrap();
    }
    // A and B are homed here with their mesh indices; C is not (a spoke
    // from before the mesh).
    for (s, index) in [(A, MESH_INDEX_A), (B, MESH_INDEX_B)] {
        let flags = SLOT_ACTIVE | (u32::from(index) << relay_common::SLOT_MESH_SHIFT);
        hub.set_spoke_flags(s.slot, s.endpoint(), flags).unwrap();
    }
    const R_C_TO_R1: u32 = 0x6161_6161;
    hub.add_session(C.slot, R_C_TO_R1, R1.slot);
    for (src, receiver, dst) in [
        (A.slot, R_A_TO_R1, R1.slot),
        (R1.slot, R_R1_TO_A, A.slot),
        (R1.slot, R_R1_TO_R2, R2.slot),
        // The same receiver index from another hub's spoke: its own entry.
        (R2.slot, R_R1_TO_A, B.slot),
    ] {
        hub.add_session(src, receiver, dst);
    }
    let mut cases = Vec::new();

    // A (local) -> R1 (remote): to the peer hub, from A's mesh port here,
    // which names A there.
    let input = Frame::from_spoke(&A, transport(R_A_TO_R1, 64));
    let mut out = input.relayed_to(&R1, GW_MAC, HUB_MAC);
    out.sport = mesh_port_of(&A);
    let mut c = Case::new("mesh: local -> remote", input.build(), XDP_TX)
        .output(out.build())
        .counters(&relayed(RELAYED_TRANSPORT, 64 + 32, false, &A, &R1))
        .counters(&[(counter::MESH_OUT, 1)])
        .slot(A.slot, rx(96, false))
        .slot(R1.slot, tx(96))
        .rx_seen(A.slot);
    cases.push(c);

    // R1 (remote) -> A (local): from the peer hub to A's mesh port; sent
    // on from the hub port, as for any frame to a spoke.
    let input = from_peer(&R1, &A, transport(R_R1_TO_A, 64));
    let out = Frame {
        eth_dst: GW_MAC,
        eth_src: HUB_MAC,
        src: Addr::V4(HUB4),
        dst: A.addr,
        ttl: 64,
        sport: PORT,
        dport: A.port,
        payload: input.payload.clone(),
        csum: Csum::Full,
    };
    c = Case::new("mesh: remote -> local", input.build(), XDP_TX)
        .output(out.build())
        .counters(&relayed(RELAYED_TRANSPORT, 96, false, &R1, &A))
        .counters(&[(counter::MESH_IN, 1)])
        .slot(R1.slot, rx(96, false))
        .slot(A.slot, tx(96))
        .rx_seen(R1.slot);
    cases.push(c);

    // The same without a UDP checksum (IPv4 "none" stays none).
    let mut input = from_peer(&R1, &A, transport(R_R1_TO_A, 16));
    input.csum = Csum::Zero;
    let mut o = out.clone();
    o.payload = input.payload.clone();
    o.csum = Csum::Zero;
    cases.push(
        Case::new(
            "mesh: remote -> local, no UDP checksum",
            input.build(),
            XDP_TX,
        )
        .output(o.build())
        .counters(&relayed(RELAYED_TRANSPORT, 48, false, &R1, &A))
        .counters(&[(counter::MESH_IN, 1)])
        .slot(R1.slot, rx(48, false))
        .slot(A.slot, tx(48))
        .rx_seen(R1.slot),
    );

    // Receiver indices are per sender slot here as on one hub: R2's frame
    // with the index R1 uses towards A goes to B, R2's peer.
    let input = from_peer(&R2, &B, transport(R_R1_TO_A, 64));
    let out_b = Frame {
        eth_dst: GW_MAC,
        eth_src: HUB_MAC,
        src: Addr::V4(HUB4),
        dst: B.addr,
        ttl: 64,
        sport: PORT,
        dport: B.port,
        payload: input.payload.clone(),
        csum: Csum::Full,
    };
    cases.push(
        Case::new(
            "mesh: same index, other remote sender",
            input.build(),
            XDP_TX,
        )
        .output(out_b.build())
        .counters(&relayed(RELAYED_TRANSPORT, 96, false, &R2, &B))
        .counters(&[(counter::MESH_IN, 1)])
        .slot(R2.slot, rx(96, false))
        .slot(B.slot, tx(96))
        .rx_seen(R2.slot),
    );

    // Mesh ports take frames only from spokes homed on peer hubs.
    let mut stranger = from_peer(&STRANGER, &A, transport(R_R1_TO_A, 64));
    stranger.sport = 4242;
    cases.push(
        Case::new("mesh: from a stranger", stranger.build(), XDP_DROP)
            .counters(&[(SEEN, 1), (counter::DROP_MESH_SOURCE, 1)]),
    );
    let mut local = Frame::from_spoke(&B, transport(R_R1_TO_A, 64));
    local.dport = mesh_port_of(&A);
    cases.push(
        Case::new("mesh: from a local spoke", local.build(), XDP_DROP)
            .counters(&[(SEEN, 1), (counter::DROP_MESH_SOURCE, 1)]),
    );
    // A spoke with no mesh index here has no port that names it on the
    // peer hub: dropped here, not sent from a wrong port.
    cases.push(
        Case::new(
            "mesh: unhomed local -> remote",
            Frame::from_spoke(&C, transport(R_C_TO_R1, 64)).build(),
            XDP_DROP,
        )
        .counters(&[(SEEN, 1), (counter::DROP_MESH_UNHOMED, 1)])
        .rx_seen(C.slot),
    );
    // From the peer hub's address, but no port of a spoke homed there.
    let mut unknown_port = from_peer(&R1, &A, transport(R_R1_TO_A, 64));
    unknown_port.sport = MESH_BASE + 99;
    cases.push(
        Case::new(
            "mesh: peer hub, no spoke's port",
            unknown_port.build(),
            XDP_DROP,
        )
        .counters(&[(SEEN, 1), (counter::DROP_MESH_SOURCE, 1)]),
    );
    // A frame crosses at most its two spokes' home hubs.
    cases.push(
        Case::new(
            "mesh: remote -> remote",
            from_peer(&R1, &R2, transport(R_R1_TO_R2, 64)).build(),
            XDP_DROP,
        )
        .counters(&[(SEEN, 1), (counter::DROP_MESH_TRANSIT, 1)])
        .rx_seen(R1.slot),
    );
    // Nothing on a mesh port is for the hub's own WireGuard.
    cases.push(
        Case::new(
            "mesh: no session",
            from_peer(&R1, &A, transport(R_R1_NONE, 64)).build(),
            XDP_DROP,
        )
        .counters(&[(SEEN, 1), (counter::DROP_MESH_NO_SESSION, 1)])
        .rx_seen(R1.slot),
    );
    // An initiation from a remote spoke: to the controller (which routes it
    // by mac1), never up the stack.
    let m = initiation(0x0a0b_0c0d);
    let mut c = Case::new(
        "mesh: initiation",
        from_peer(&R1, &A, m.clone()).build(),
        XDP_DROP,
    )
    .counters(&[(SEEN, 1), (INITIATIONS_QUEUED, 1)])
    .rx_seen(R1.slot);
    c.event = Some(ExpectedEvent {
        src: R1.endpoint(),
        dst: Endpoint::v4(HUB4.octets(), mesh_port_of(&A)),
        src_slot: R1.slot,
        frame: m,
    });
    cases.push(c);
    // Below the mesh range and not the hub port: not ours, uncounted.
    let mut other = Frame::from_spoke(&A, transport(R_A_TO_R1, 64));
    other.dport = MESH_BASE - 1;
    cases.push(Case::new(
        "mesh: port below the range",
        other.build(),
        XDP_PASS,
    ));
    // Local relaying is unchanged.
    cases.push(relay_case(
        "mesh: local -> local as before",
        &A,
        &B,
        transport(R_A_TO_B, 64),
        Csum::Full,
        RELAYED_TRANSPORT,
    ));

    for case in &cases {
        check_case(&mut hub, case);
    }
    // Drops by reason per peer hub: the stranger's and the local spoke's
    // frames count against no hub (index 0).
    let want = |source, transit, no_session| relay_common::MeshDrops {
        source,
        transit,
        no_session,
    };
    assert_eq!(
        hub.mesh_drop_totals(PEER),
        want(1, 1, 1),
        "peer hub's drops"
    );
    assert_eq!(hub.mesh_drop_totals(0), want(2, 0, 0), "drops of no hub");
    eprintln!("{} mesh cases passed", cases.len());
}
