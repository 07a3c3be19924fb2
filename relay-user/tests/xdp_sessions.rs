//! Session-table properties of the XDP relay, run in the kernel with
//! BPF_PROG_TEST_RUN (issue 4, items 3 and 4):
//!
//! - `index_collisions_never_cross`: two spokes that use the same receiver
//!   index (installed by the controller, or learned from responses whose
//!   sender indices are equal too) each reach their own peer. A table keyed
//!   by the receiver index alone would send one pair's frames to the other.
//! - `session_churn_stays_bounded_and_live_sessions_relay`: thousands of
//!   short-lived handshakes (controller entry + learned response entry each)
//!   through a small SESSIONS map: the LRU bound holds, a session in use
//!   survives the churn, and `relay_user::core::sessions::sweep` applied to the
//!   real map's entries removes exactly the idle ones (and those naming
//!   unregistered slots), after which their indices no longer relay.
//!
//! Needs root (BPF, network namespaces). Run with
//! `cargo test -p relay-user --release --test xdp_sessions`.

use std::collections::HashSet;
use std::net::Ipv4Addr;
use std::time::Duration;

use relay_common::{
    Endpoint, SESSION_FROM_INITIATION, SESSION_FROM_RESPONSE, SessionKey, SessionValue, counter,
};
use relay_user::core::sessions::{IDLE_EXPIRY, sweep};
use testkit::{
    checksum::verify_frame as verify_checksums,
    frame::{Addr, Csum, Frame, mac},
    netns::Entered,
    wg::{cookie_reply, keepalive, response, transport},
    xdp::{Harness, XDP_PASS, XDP_TX, ktime_ns},
};

const PORT: u16 = 51820;
const HUB_MAC: [u8; 6] = [0x02, 0, 0, 0, 0x5e, 0x01];
const PEER_MAC: [u8; 6] = [0x02, 0, 0, 0, 0x5e, 0x02];
const GW_MAC: [u8; 6] = [0x02, 0, 0, 0, 0x5e, 0xfe];
const HUB4: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 1);

#[derive(Clone, Copy, Debug)]
struct Spoke {
    slot: u32,
    addr: Ipv4Addr,
    port: u16,
}

const fn spoke(slot: u32, last: u8, port: u16) -> Spoke {
    Spoke {
        slot,
        addr: Ipv4Addr::new(203, 0, 113, last),
        port,
    }
}

const A: Spoke = spoke(1, 10, 40001);
const B: Spoke = spoke(2, 20, 40002);
const C: Spoke = spoke(3, 30, 40003);
const D: Spoke = spoke(4, 40, 40004);
/// Not registered.
const STRANGER: Spoke = spoke(0, 99, 40001);

impl Spoke {
    fn endpoint(&self) -> Endpoint {
        Endpoint::v4(self.addr.octets(), self.port)
    }

    fn frame(&self, payload: Vec<u8>) -> Vec<u8> {
        Frame {
            eth_dst: HUB_MAC,
            eth_src: GW_MAC,
            src: Addr::V4(self.addr),
            dst: Addr::V4(HUB4),
            ttl: 60,
            sport: self.port,
            dport: PORT,
            payload,
            csum: Csum::Full,
        }
        .build()
    }
}

/// A namespace with the hub's NIC (`rhs0`), a gateway with a permanent
/// neighbour entry and a route to the spokes, so relayed frames are XDP_TX.
fn topology(ns: &Entered) -> u32 {
    ns.veth("rhs0", HUB_MAC, "rhs0p", PEER_MAC);
    for dev in ["lo", "rhs0", "rhs0p"] {
        ns.ip(&format!("link set {dev} up"));
    }
    ns.ip("addr add 198.51.100.1/24 dev rhs0");
    ns.ip(&format!(
        "neigh add 198.51.100.254 lladdr {} nud permanent dev rhs0",
        mac(GW_MAC)
    ));
    ns.ip("route add 203.0.113.0/24 via 198.51.100.254 dev rhs0");
    ns.sysctl("net.ipv4.conf.rhs0.forwarding=1");
    ns.ifindex("rhs0")
}

struct Relay(Harness);

impl std::ops::Deref for Relay {
    type Target = Harness;
    fn deref(&self) -> &Harness {
        &self.0
    }
}

impl std::ops::DerefMut for Relay {
    fn deref_mut(&mut self) -> &mut Harness {
        &mut self.0
    }
}

impl Relay {
    /// The real object, SESSIONS sized to `sessions` entries (as the
    /// hub's `--max-sessions` would), spokes A..D registered.
    fn load(ifindex: u32, sessions: u32) -> Self {
        let mut r = Harness::load_with(ifindex, |l| {
            l.map_max_entries(relay_common::MAP_SESSIONS, sessions);
        });
        r.set_port(PORT).unwrap();
        for s in [A, B, C, D] {
            r.set_spoke(s.slot, s.endpoint(), true).unwrap();
        }
        Self(r)
    }

    /// What the controller does when it routes an initiation from `from`
    /// (sender index `sender`) to `to`.
    fn route_initiation(&mut self, from: &Spoke, sender: u32, to: &Spoke, now_ns: u64) {
        self.set_session(to.slot, sender, from.slot, SESSION_FROM_INITIATION, now_ns)
            .unwrap();
    }

    fn session(&self, src: &Spoke, receiver: u32) -> Option<SessionValue> {
        self.0.session(src.slot, receiver)
    }

    fn entries(&self) -> Vec<(SessionKey, SessionValue)> {
        self.session_entries()
    }

    /// Run the program once: (action, output frame).
    fn run(&self, frame: &[u8]) -> (u32, Vec<u8>) {
        self.run_n(frame, 1).expect("test_run")
    }

    /// `payload` from `from` must be relayed, unchanged, to `to` (and to
    /// nobody else): XDP_TX with the destination rewritten to `to`.
    fn expect_relayed(&self, what: &str, from: &Spoke, payload: Vec<u8>, to: &Spoke) {
        let (action, out) = self.run(&from.frame(payload.clone()));
        assert_eq!(action, XDP_TX, "{what}: action");
        verify_checksums(&out);
        let dst = Ipv4Addr::new(out[30], out[31], out[32], out[33]);
        let dport = u16::from_be_bytes([out[36], out[37]]);
        assert_eq!(
            (dst, dport),
            (to.addr, to.port),
            "{what}: relayed to the wrong spoke"
        );
        let src = Ipv4Addr::new(out[26], out[27], out[28], out[29]);
        assert_eq!(src, HUB4, "{what}: source must be the hub");
        assert_eq!(&out[42..], &payload[..], "{what}: payload changed");
    }

    /// `payload` from `from` must not be relayed (XDP_PASS, unchanged).
    fn expect_passed(&self, what: &str, from: &Spoke, payload: Vec<u8>) {
        let frame = from.frame(payload);
        let (action, out) = self.run(&frame);
        assert_eq!(action, XDP_PASS, "{what}: action");
        assert_eq!(out, frame, "{what}: a passed frame must be unchanged");
    }
}

#[test]
fn index_collisions_never_cross() {
    let ns = Entered::with_prefix("rhc");
    let ifindex = topology(&ns);
    let mut r = Relay::load(ifindex, 1024);
    let now = ktime_ns();

    // Controller-installed: A and C both send with receiver IDX (chosen by
    // B and D respectively, unique only on each of them).
    const IDX: u32 = 0x1dc0_11de;
    r.route_initiation(&B, IDX, &A, now); // (A, IDX) -> B
    r.route_initiation(&D, IDX, &C, now); // (C, IDX) -> D
    for (what, p) in [
        ("transport", transport(IDX, 64)),
        ("keepalive", keepalive(IDX)),
        ("cookie", cookie_reply(IDX)),
    ] {
        r.expect_relayed(&format!("A {what} IDX"), &A, p.clone(), &B);
        r.expect_relayed(&format!("C {what} IDX"), &C, p.clone(), &D);
        // The same index from a spoke without that session, or a stranger:
        // nobody's session.
        r.expect_passed(&format!("B {what} IDX"), &B, p.clone());
        r.expect_passed(&format!("D {what} IDX"), &D, p.clone());
        r.expect_passed(&format!("stranger {what} IDX"), &STRANGER, p);
    }

    // Response learning with equal indices on both sides: A initiates to B
    // and C to D, both with sender index S; B and D both answer with sender
    // index R. The controller installs (B, S) -> A and (D, S) -> C; the
    // responses teach (A, R) -> B and (C, R) -> D.
    const S: u32 = 0x5e5e_0001;
    const R: u32 = 0x7e7e_0002;
    r.route_initiation(&A, S, &B, now);
    r.route_initiation(&C, S, &D, now);
    let learned0 = r.counter(counter::RESPONSE_LEARNED);
    r.expect_relayed("B response (S)", &B, response(R, S), &A);
    r.expect_relayed("D response (S)", &D, response(R, S), &C);
    assert_eq!(r.counter(counter::RESPONSE_LEARNED) - learned0, 2);
    let want = |src: &Spoke, rx: u32, dst: &Spoke, flags: u32| {
        let v = r
            .session(src, rx)
            .unwrap_or_else(|| panic!("no session ({}, {rx:#x})", src.slot));
        assert_eq!(
            (v.dst_slot, v.flags),
            (dst.slot, flags),
            "session ({}, {rx:#x})",
            src.slot
        );
    };
    want(&A, R, &B, SESSION_FROM_RESPONSE);
    want(&C, R, &D, SESSION_FROM_RESPONSE);
    want(&B, S, &A, SESSION_FROM_INITIATION);
    want(&D, S, &C, SESSION_FROM_INITIATION);
    // First data frames both ways, on both colliding sessions.
    r.expect_relayed("A first data (R)", &A, transport(R, 80), &B);
    r.expect_relayed("C first data (R)", &C, transport(R, 80), &D);
    r.expect_relayed("B data (S)", &B, transport(S, 48), &A);
    r.expect_relayed("D data (S)", &D, transport(S, 48), &C);
    r.expect_relayed("A keepalive (R)", &A, keepalive(R), &B);
    r.expect_relayed("C keepalive (R)", &C, keepalive(R), &D);
    // Learned indices are bound to their sender too.
    r.expect_passed("B sends R", &B, transport(R, 16));
    r.expect_passed("D sends R", &D, transport(R, 16));
    r.expect_passed("stranger sends R", &STRANGER, transport(R, 16));

    // Every index each spoke can send to is exactly its own sessions.
    let entries = r.entries();
    assert_eq!(entries.len(), 6, "{entries:?}");
    for (k, v) in &entries {
        assert_ne!(k.src_slot, v.dst_slot, "loop entry {k:?}");
        let pair = (k.src_slot.min(v.dst_slot), k.src_slot.max(v.dst_slot));
        assert!(
            pair == (A.slot, B.slot) || pair == (C.slot, D.slot),
            "entry {k:?} -> {v:?} crosses the pairs"
        );
    }
}

#[test]
fn session_churn_stays_bounded_and_live_sessions_relay() {
    /// Small on purpose: churn is many times the capacity.
    const CAP: u32 = 512;
    /// Handshakes: each leaves two entries (controller + learned).
    const HANDSHAKES: u32 = 4000;
    /// A live session (C <-> D) is used every this many handshakes.
    const LIVE_EVERY: u32 = 8;

    let ns = Entered::with_prefix("rhc");
    let ifindex = topology(&ns);
    let mut r = Relay::load(ifindex, CAP);

    // The live session C <-> D, established like any other.
    const LIVE_S: u32 = 0xc0c0_0001;
    const LIVE_R: u32 = 0xd0d0_0001;
    r.route_initiation(&C, LIVE_S, &D, ktime_ns());
    r.expect_relayed("live response", &D, response(LIVE_R, LIVE_S), &C);

    let learned0 = r.counter(counter::RESPONSE_LEARNED);
    let mut max_len = 0;
    for i in 0..HANDSHAKES {
        // A fresh handshake A -> B with fresh indices, as WireGuard makes
        // them (every 2 minutes per pair, or after each restart).
        let s = 0x1000_0000 | i;
        let rr = 0x2000_0000 | i;
        r.route_initiation(&A, s, &B, ktime_ns());
        r.expect_relayed("churn response", &B, response(rr, s), &A);
        r.expect_relayed("churn first data", &A, transport(rr, 32), &B);
        if i % LIVE_EVERY == 0 {
            r.expect_relayed("live C -> D during churn", &C, transport(LIVE_R, 32), &D);
            r.expect_relayed("live D -> C during churn", &D, transport(LIVE_S, 32), &C);
        }
        if i % 500 == 0 {
            max_len = max_len.max(r.entries().len());
        }
    }
    let t_churn_end = ktime_ns();
    let learned = r.counter(counter::RESPONSE_LEARNED) - learned0;
    let entries = r.entries();
    max_len = max_len.max(entries.len());
    eprintln!(
        "churn: {HANDSHAKES} handshakes, {learned} responses learned, {} entries now (max seen {max_len}, capacity {CAP})",
        entries.len()
    );
    assert_eq!(learned, HANDSHAKES as u64, "every response must be learned");
    assert!(
        max_len <= CAP as usize,
        "SESSIONS holds {max_len} > {CAP} entries"
    );
    // 2 x HANDSHAKES entries went in; most were evicted.
    assert!(entries.len() < 2 * HANDSHAKES as usize);
    // The newest handshake and the live session still relay both ways.
    let last = HANDSHAKES - 1;
    r.expect_relayed("newest A -> B", &A, transport(0x2000_0000 | last, 64), &B);
    r.expect_relayed("newest B -> A", &B, transport(0x1000_0000 | last, 64), &A);
    r.expect_relayed("live C -> D after churn", &C, transport(LIVE_R, 64), &D);
    r.expect_relayed("live D -> C after churn", &D, transport(LIVE_S, 64), &C);

    // Controller sweep on the real map. Let the churn age past the XDP
    // program's 1 s refresh granularity, use the live session once more,
    // then judge the table at a `now` just past IDLE_EXPIRY after the
    // churn ended: only the live session was used within IDLE_EXPIRY.
    std::thread::sleep(Duration::from_millis(1500));
    r.expect_relayed("live C -> D refresh", &C, transport(LIVE_R, 64), &D);
    r.expect_relayed("live D -> C refresh", &D, transport(LIVE_S, 64), &C);
    for (src, rx) in [(&C, LIVE_R), (&D, LIVE_S)] {
        let v = r.session(src, rx).expect("live entry");
        assert!(
            v.last_seen_ns > t_churn_end + 1_000_000_000,
            "the live entry's last_seen_ns was not refreshed by use"
        );
    }
    // One entry naming a slot that is no longer registered (9).
    r.sessions
        .insert(
            SessionKey {
                src_slot: 9,
                receiver: 0x9999,
            },
            SessionValue {
                dst_slot: A.slot,
                flags: SESSION_FROM_INITIATION,
                last_seen_ns: ktime_ns(),
            },
            0,
        )
        .unwrap();
    let live_slots: HashSet<u32> = [A.slot, B.slot, C.slot, D.slot].into();
    let before = r.entries();

    // At the real time nothing is idle yet: only the unregistered slot goes.
    let gone = sweep(&before, ktime_ns(), &live_slots);
    assert_eq!(
        gone,
        vec![SessionKey {
            src_slot: 9,
            receiver: 0x9999
        }]
    );

    let fake_now = t_churn_end + IDLE_EXPIRY.as_nanos() as u64 + 1_000_000_000;
    let gone = sweep(&before, fake_now, &live_slots);
    for k in &gone {
        r.sessions.remove(k).expect("remove swept entry");
    }
    let after = r.entries();
    let keys: HashSet<(u32, u32)> = after
        .iter()
        .map(|(k, _)| (k.src_slot, k.receiver))
        .collect();
    eprintln!(
        "sweep at ktime + IDLE_EXPIRY: {} of {} entries removed, left {keys:x?}",
        gone.len(),
        before.len()
    );
    assert_eq!(
        keys,
        [(C.slot, LIVE_R), (D.slot, LIVE_S)].into(),
        "after the sweep only the live session may remain"
    );
    assert_eq!(gone.len(), before.len() - 2);
    // Swept indices no longer relay; the live session does.
    let no_session0 = r.counter(counter::PASS_NO_SESSION);
    r.expect_passed("swept A -> B", &A, transport(0x2000_0000 | last, 64));
    r.expect_passed("swept B -> A", &B, transport(0x1000_0000 | last, 64));
    assert_eq!(r.counter(counter::PASS_NO_SESSION) - no_session0, 2);
    r.expect_relayed("live C -> D after sweep", &C, transport(LIVE_R, 64), &D);
    r.expect_relayed("live D -> C after sweep", &D, transport(LIVE_S, 64), &C);
}
