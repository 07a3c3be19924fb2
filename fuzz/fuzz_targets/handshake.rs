//! The handshake router: arbitrary initiation copies (raw ring-buffer
//! records, and initiations with a valid mac1 for a chosen key so the
//! fuzzer gets past BLAKE2s) interleaved with endpoint changes, spoke
//! re-keying, time steps and retries of held initiations.
//!
//! Invariants: no panic; an initiation is only forwarded to the spoke whose
//! current key its mac1 matches, from a different registered spoke whose
//! authenticated endpoint it came from, to that destination's current
//! endpoint, with the session entry that sends the response back; held
//! initiations stay bounded.
//!
//! Which spoke has which authenticated endpoint is checked against the
//! target's own [`Endpoints`] model (the endpoints as the target set them),
//! never against the router's tables: a router that kept a stale endpoint,
//! trusted the ring buffer's slot or mixed up two spokes' endpoints would
//! agree with itself.
#![no_main]

use std::collections::HashMap;
use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use relay_common::wire::{INITIATION_LEN, INITIATION_MAC1_OFF, SENDER_OFF};
use relay_common::{Endpoint, InitiationEvent, NO_SLOT, SESSION_FROM_INITIATION};
use relay_user::core::keys::Mac1Key;
use relay_user::core::router::{Action, MAX_HELD, Outcome, Router};

/// Spokes 1..=SPOKES; slot SPOKES + 1 is never registered.
const SPOKES: u32 = 6;

fn key(n: u8) -> [u8; 32] {
    [n.wrapping_mul(37).wrapping_add(1); 32]
}

/// A small set of endpoints, so that spokes share and steal them.
fn endpoint(n: u8) -> Endpoint {
    match n % 10 {
        i @ 0..=6 => Endpoint::v4([203, 0, 113, i], 1000 + u16::from(i % 4)),
        i => {
            let mut a = [0u8; 16];
            a[0] = 0x20;
            a[1] = 0x01;
            a[15] = i;
            Endpoint::v6(a, 2000)
        }
    }
}

struct Input<'a>(&'a [u8]);

impl<'a> Input<'a> {
    fn byte(&mut self) -> Option<u8> {
        let (&b, rest) = self.0.split_first()?;
        self.0 = rest;
        Some(b)
    }
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Some(a)
    }
}

/// The authenticated endpoints as the target reported them to the router
/// (the hub's WireGuard in production): an endpoint belongs to at most one
/// registered spoke, the one that authenticated from it last; a spoke that
/// is removed, or moves, no longer has its old endpoint; an unregistered
/// slot has none (reports for it are ignored); re-keying keeps it.
#[derive(Default)]
struct Endpoints {
    of: HashMap<u32, Endpoint>,
}

impl Endpoints {
    fn set(&mut self, registered: bool, slot: u32, ep: Option<Endpoint>) {
        if !registered {
            return;
        }
        self.of.remove(&slot);
        if let Some(ep) = ep {
            self.of.retain(|_, e| *e != ep);
            self.of.insert(slot, ep);
        }
    }

    fn remove(&mut self, slot: u32) {
        self.of.remove(&slot);
    }

    fn get(&self, slot: u32) -> Option<Endpoint> {
        self.of.get(&slot).copied()
    }

    /// The registered spoke whose authenticated endpoint `ep` is.
    fn owner(&self, ep: &Endpoint) -> Option<u32> {
        self.of.iter().find(|(_, e)| *e == ep).map(|(&s, _)| s)
    }
}

struct State {
    router: Router,
    /// Current key byte of each registered slot.
    keys: HashMap<u32, u8>,
    /// The model of the authenticated endpoints.
    eps: Endpoints,
    /// Every initiation given to the router (a held one may be forwarded
    /// by a later `retry_held`).
    seen: Vec<InitiationEvent>,
}

impl State {
    /// Check one routing result; `event` when it is known.
    fn check(&self, result: &(Outcome, Option<Action>), event: Option<&InitiationEvent>) {
        match result {
            (
                Outcome::Relayed { src, dst },
                Some(Action::Forward {
                    session,
                    from,
                    to,
                    frame,
                }),
            ) => {
                assert_ne!(src, dst, "relayed a spoke's initiation to itself");
                assert!(
                    self.keys.contains_key(src),
                    "relayed from an unregistered slot {src}"
                );
                let k = self.keys.get(dst).expect("relayed to an unregistered slot");
                assert!(
                    Mac1Key::for_public_key(&key(*k)).matches(frame),
                    "relayed to a spoke whose key does not match mac1"
                );
                assert_eq!(
                    Some(*to),
                    self.eps.get(*dst),
                    "not the destination's authenticated endpoint"
                );
                let sender =
                    u32::from_le_bytes(frame[SENDER_OFF..SENDER_OFF + 4].try_into().unwrap());
                assert_eq!(session.0.src_slot, *dst);
                assert_eq!(session.0.receiver, sender);
                assert_eq!(session.1.dst_slot, *src);
                assert_eq!(session.1.flags, SESSION_FROM_INITIATION);
                // Source authentication: the initiation came from the
                // authenticated endpoint of the spoke it is relayed for.
                match event {
                    Some(ev) => {
                        assert_eq!(&ev.frame, frame);
                        assert_eq!(ev.dst, *from);
                        assert_eq!(
                            self.eps.owner(&ev.src),
                            Some(*src),
                            "source {:?} is not slot {src}'s authenticated endpoint ({:?})",
                            ev.src,
                            self.eps.get(*src)
                        );
                    }
                    // A held initiation: one given to the router before,
                    // with this frame, from `src`'s endpoint now.
                    None => assert!(
                        self.seen.iter().any(|ev| &ev.frame == frame
                            && ev.dst == *from
                            && self.eps.owner(&ev.src) == Some(*src)),
                        "retried initiation relayed for slot {src}, which never sent it from its \
                         authenticated endpoint ({:?})",
                        self.eps.get(*src)
                    ),
                }
            }
            (Outcome::Relayed { .. }, a) => panic!("relayed without a forward action: {a:?}"),
            (Outcome::Held, a) => assert_eq!(*a, Some(Action::Refresh), "held without a refresh"),
            // Overflow while holding for a refresh or while delaying.
            (Outcome::Overflow, a) => assert!(matches!(a, None | Some(Action::Refresh))),
            (o, a) => assert!(a.is_none(), "{o:?} with an action {a:?}"),
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let mut st = State {
        router: Router::new(&key(0)),
        keys: HashMap::new(),
        eps: Endpoints::default(),
        seen: Vec::new(),
    };
    for s in 1..=SPOKES {
        st.router.set_spoke(s, &key(s as u8));
        st.keys.insert(s, s as u8);
    }
    let mut now = Instant::now();
    let mut inp = Input(data);
    while let Some(op) = inp.byte() {
        match op % 8 {
            // A raw ring-buffer record: any bytes are a valid InitiationEvent.
            0 => {
                let Some(b) = inp.take(size_of::<InitiationEvent>()) else {
                    break;
                };
                // SAFETY: InitiationEvent is repr(C) plain integers and byte
                // arrays; every bit pattern is valid; read_unaligned copies.
                let ev = unsafe { std::ptr::read_unaligned(b.as_ptr().cast::<InitiationEvent>()) };
                st.seen.push(ev);
                let r = st.router.on_initiation(&ev, now);
                st.check(&r, Some(&ev));
            }
            // An initiation with a valid mac1 for key `t` (0 = the hub's,
            // 250 = nobody's), from one of the small set of endpoints.
            1..=3 => {
                let (Some(t), Some(src), Some(sender), Some(tweak)) =
                    (inp.byte(), inp.byte(), inp.take(4), inp.byte())
                else {
                    break;
                };
                let mut frame = [0u8; INITIATION_LEN];
                frame[0] = 1;
                frame[SENDER_OFF..SENDER_OFF + 4].copy_from_slice(sender);
                let body = inp.take(16).unwrap_or(&[]);
                frame[8..8 + body.len()].copy_from_slice(body);
                let t = match t % 9 {
                    7 => 0,
                    8 => 250,
                    s => s + 1,
                };
                testkit::wg::set_mac1(&mut frame, &Mac1Key::for_public_key(&key(t)));
                // Sometimes a bad header or a flipped mac bit.
                match tweak % 16 {
                    0 => frame[0] = tweak,
                    1 => frame[2] = 1,
                    2 => frame[INITIATION_MAC1_OFF] ^= 1,
                    _ => {}
                }
                let ev = InitiationEvent {
                    src: endpoint(src),
                    dst: Endpoint::v4([198, 51, 100, 1], 51820),
                    src_slot: if tweak & 0x80 != 0 {
                        NO_SLOT
                    } else {
                        u32::from(src)
                    },
                    ifindex: 2,
                    frame,
                };
                st.seen.push(ev);
                let r = st.router.on_initiation(&ev, now);
                st.check(&r, Some(&ev));
            }
            4 => {
                let Some(b) = inp.byte() else { break };
                let slot = u32::from(b % (SPOKES as u8 + 2));
                let ep = (b & 0x80 == 0).then(|| endpoint(b >> 3));
                st.router.set_endpoint(slot, ep);
                st.eps.set(st.keys.contains_key(&slot), slot, ep);
            }
            5 => {
                for r in st.router.retry_held(now) {
                    st.check(&r, None);
                }
            }
            6 => {
                let Some(b) = inp.byte() else { break };
                now += Duration::from_millis(u64::from(b) * 20);
            }
            _ => {
                let Some(b) = inp.byte() else { break };
                let slot = u32::from(b % (SPOKES as u8 + 2));
                if b & 0x80 != 0 {
                    st.router.remove_spoke(slot);
                    st.keys.remove(&slot);
                    st.eps.remove(slot);
                } else {
                    // Re-key (or register); key bytes 1..=8 collide on purpose.
                    let k = b % 8 + 1;
                    st.router.set_spoke(slot, &key(k));
                    st.keys.insert(slot, k);
                }
            }
        }
        assert!(st.router.held_len() <= MAX_HELD);
    }
});
