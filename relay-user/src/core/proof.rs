//! Proving a spoke's new endpoint, sans IO (DESIGN.md, "Proving a moved
//! endpoint in one round trip").
//!
//! The hub holds its own private key, so it can ask a candidate address
//! "are you spoke S?" in a way only S can answer: a WireGuard handshake
//! initiation in the hub's name to S's public key (fresh ephemeral, TAI64N
//! now), sent to the candidate from the hub's port. Only S's private key
//! produces a response that verifies; only then does the endpoint move.
//! The response is never confirmed (the hub sends nothing on the new
//! keypair), so S stays responder and keeps using its current session with
//! the hub's real WireGuard: a responder may not send on a new keypair
//! before it receives data on it.
//!
//! A candidate that is handshaking with the hub's own WireGuard is not
//! probed: that handshake authenticates it anyway, and a probe (an
//! initiation from the same key) can cost it that handshake: in attack_e2e
//! a wireguard-go spoke probed while its first initiation to the hub was
//! in flight completed it only on its retry 5 s later.
//!
//! The reverse order happens too: a spoke's initiations to its peers and
//! to the hub leave together, and the one to a peer may arrive first. So
//! the sender of a held initiation is probed only after a short settle
//! time ([`Limits::settle`]), by which its initiation to the hub, if any,
//! has arrived (and marks it as handshaking) or its handshake with the hub
//! has completed (and authenticated the endpoint, releasing what it held).
//!
//! Probes are bounded per (spoke, candidate), per candidate address and in
//! total: the hub answers at most a few frames a second per address with a
//! frame about the size of an initiation, so it is never a useful
//! reflector.
//!
//! The Noise IK initiator and the response check are boringtun's (`Tunn`):
//! the hub needs exactly the first two messages of WireGuard's handshake
//! and must never send the third.

use std::collections::{HashMap, HashSet, VecDeque};
use std::time::{Duration, Instant};

use boringtun::noise::{Tunn, TunnResult};
use boringtun::x25519::{PublicKey, StaticSecret};
use relay_common::Endpoint;
use relay_common::wire::{
    INITIATION_LEN, KEY_LEN, MSG_RESPONSE, MSG_TRANSPORT, RESPONSE_LEN, RESPONSE_RECEIVER_OFF,
    SENDER_OFF,
};

/// Bounds on probes.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// A (spoke, candidate) pair is probed again no sooner than this: a
    /// lost probe or answer is retried on the next frame after it.
    pub per_pair_interval: Duration,
    /// Probes to one candidate address per second.
    pub per_address_per_sec: u32,
    /// Probes per second in total.
    pub total_per_sec: u32,
    /// An unanswered probe is forgotten after this.
    pub answer_within: Duration,
    /// A source that sent the hub's WireGuard an initiation this recently
    /// is not probed (longer than REKEY_TIMEOUT plus a round trip).
    pub hub_handshake_grace: Duration,
    /// Probes waiting for an answer at once (and sources waiting to
    /// settle).
    pub max_pending: usize,
    /// The sender of a held initiation is probed this long after it, not
    /// at once (see the module docs).
    pub settle: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            per_pair_interval: Duration::from_millis(250),
            per_address_per_sec: 4,
            total_per_sec: 200,
            answer_within: Duration::from_secs(2),
            hub_handshake_grace: Duration::from_secs(6),
            max_pending: 1024,
            settle: Duration::from_millis(150),
        }
    }
}

/// Counts for the metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProofStats {
    /// Probes sent.
    pub sent: u64,
    /// Probes answered with a valid response from the probed address.
    pub proven: u64,
    /// Responses to a probe that did not verify or came from elsewhere.
    pub rejected: u64,
    /// Probes not answered in time.
    pub expired: u64,
    /// Probes not sent: a bound was reached.
    pub limited: u64,
    /// Probes not sent: the candidate is handshaking with the hub itself.
    pub deferred: u64,
}

/// One probe for the IO shell to send: `frame` from `from` (the hub
/// address the triggering frame came to) to `to` (the candidate).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Probe {
    pub from: Endpoint,
    pub to: Endpoint,
    pub frame: [u8; INITIATION_LEN],
}

/// A spoke's endpoint, proven by its response.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Proven {
    pub slot: u32,
    pub endpoint: Endpoint,
}

struct Pending {
    slot: u32,
    candidate: Endpoint,
    tunn: Box<Tunn>,
    deadline: Instant,
}

/// A one-second window of a count.
#[derive(Clone, Copy)]
struct Window {
    start: Instant,
    count: u32,
}

impl Window {
    /// Whether one more fits, without taking it.
    fn has_room(w: &Option<Window>, per_sec: u32, now: Instant) -> bool {
        match w {
            Some(win) if now.saturating_duration_since(win.start) < Duration::from_secs(1) => {
                win.count < per_sec
            }
            _ => true,
        }
    }

    fn take(w: &mut Option<Window>, per_sec: u32, now: Instant) -> bool {
        match w {
            Some(win) if now.saturating_duration_since(win.start) < Duration::from_secs(1) => {
                if win.count >= per_sec {
                    return false;
                }
                win.count += 1;
                true
            }
            _ => {
                *w = Some(Window {
                    start: now,
                    count: 1,
                });
                true
            }
        }
    }
}

/// Outstanding probes and their bounds.
pub struct Prover {
    hub_secret: StaticSecret,
    limits: Limits,
    /// By the probe's sender index (the response's receiver index).
    pending: HashMap<u32, Pending>,
    last_pair: HashMap<(u32, Endpoint), Instant>,
    per_address: HashMap<[u8; 16], Option<Window>>,
    total: Option<Window>,
    /// When an initiation for the hub's own WireGuard last came from each
    /// endpoint.
    hub_handshakes: HashMap<Endpoint, Instant>,
    /// Sources of held initiations waiting to settle, with the hub address
    /// their initiation came to, in due order (one settle time for all).
    settling: VecDeque<(Instant, Endpoint, Endpoint)>,
    settling_set: HashSet<Endpoint>,
    next_index: u32,
    pub stats: ProofStats,
}

impl Prover {
    pub fn new(hub_private: &[u8; KEY_LEN], limits: Limits) -> Self {
        Self {
            hub_secret: StaticSecret::from(*hub_private),
            limits,
            pending: HashMap::new(),
            last_pair: HashMap::new(),
            per_address: HashMap::new(),
            total: None,
            hub_handshakes: HashMap::new(),
            settling: VecDeque::new(),
            settling_set: HashSet::new(),
            next_index: rand::random(),
            stats: ProofStats::default(),
        }
    }

    /// An initiation for the hub's own WireGuard came from `src`.
    pub fn on_hub_initiation(&mut self, src: Endpoint, now: Instant) {
        if self.hub_handshakes.len() >= self.limits.max_pending {
            let grace = self.limits.hub_handshake_grace;
            self.hub_handshakes
                .retain(|_, t| now.saturating_duration_since(*t) < grace);
        }
        self.hub_handshakes.insert(src, now);
    }

    /// Whether `candidate` is handshaking with the hub's own WireGuard.
    pub fn handshaking(&self, candidate: &Endpoint, now: Instant) -> bool {
        self.hub_handshakes
            .get(candidate)
            .is_some_and(|t| now.saturating_duration_since(*t) < self.limits.hub_handshake_grace)
    }

    /// A held initiation came from `src` (to the hub address `hub`):
    /// probe for its sender once it settles. False if `src` already waits
    /// or too many do.
    pub fn settle(&mut self, src: Endpoint, hub: Endpoint, now: Instant) -> bool {
        if self.settling.len() >= self.limits.max_pending || !self.settling_set.insert(src) {
            return false;
        }
        self.settling
            .push_back((now + self.limits.settle, src, hub));
        true
    }

    /// When the next settling source falls due.
    pub fn next_settled(&self) -> Option<Instant> {
        self.settling.front().map(|&(t, _, _)| t)
    }

    /// The next source that has settled by `now` (and the hub address its
    /// initiation came to).
    pub fn take_settled(&mut self, now: Instant) -> Option<(Endpoint, Endpoint)> {
        let &(due, src, hub) = self.settling.front()?;
        if due > now {
            return None;
        }
        self.settling.pop_front();
        self.settling_set.remove(&src);
        Some((src, hub))
    }

    pub fn pending_len(&self) -> usize {
        self.pending.len()
    }

    /// Whether a probe to `addr` would be sent now as far as the address
    /// and total bounds go: callers check this before any work to pick
    /// candidates.
    pub fn has_room(&self, addr: &[u8; 16], now: Instant) -> bool {
        self.pending.len() < self.limits.max_pending
            && Window::has_room(&self.total, self.limits.total_per_sec, now)
            && self
                .per_address
                .get(addr)
                .is_none_or(|w| Window::has_room(w, self.limits.per_address_per_sec, now))
    }

    /// Ask `candidate` whether it is the spoke in `slot` (public key
    /// `spoke_public`); `hub` is the hub address to send from. `None` when
    /// a bound says not now.
    pub fn probe(
        &mut self,
        slot: u32,
        spoke_public: &[u8; KEY_LEN],
        candidate: Endpoint,
        hub: Endpoint,
        now: Instant,
    ) -> Option<Probe> {
        self.expire(now);
        if self.handshaking(&candidate, now) {
            self.stats.deferred += 1;
            return None;
        }
        if self
            .last_pair
            .get(&(slot, candidate))
            .is_some_and(|&t| now.saturating_duration_since(t) < self.limits.per_pair_interval)
        {
            // Not counted as limited: the probe for this pair is in flight.
            return None;
        }
        let addr = self.per_address.entry(candidate.addr).or_default();
        if self.pending.len() >= self.limits.max_pending
            || !Window::take(addr, self.limits.per_address_per_sec, now)
            || !Window::take(&mut self.total, self.limits.total_per_sec, now)
        {
            self.stats.limited += 1;
            return None;
        }
        self.next_index = self.next_index.wrapping_add(1);
        // Tunn uses `index << 8` plus a per-handshake byte as its sender
        // index: the top 24 bits name the probe.
        let mut tunn = Box::new(Tunn::new(
            self.hub_secret.clone(),
            PublicKey::from(*spoke_public),
            None,
            None,
            self.next_index & 0x00ff_ffff,
            None,
        ));
        let mut frame = [0u8; INITIATION_LEN];
        let n = match tunn.format_handshake_initiation(&mut frame, true) {
            TunnResult::WriteToNetwork(b) => b.len(),
            _ => return None,
        };
        if n != INITIATION_LEN {
            return None;
        }
        let sender = u32::from_le_bytes(frame[SENDER_OFF..SENDER_OFF + 4].try_into().ok()?);
        self.pending.insert(
            sender,
            Pending {
                slot,
                candidate,
                tunn,
                deadline: now + self.limits.answer_within,
            },
        );
        self.last_pair.insert((slot, candidate), now);
        self.stats.sent += 1;
        Some(Probe {
            from: hub,
            to: candidate,
            frame,
        })
    }

    /// A response from `src`: the spoke's proven endpoint if it answers a
    /// probe sent to exactly `src` and verifies against the spoke's key.
    pub fn on_response(
        &mut self,
        src: &Endpoint,
        frame: &[u8; RESPONSE_LEN],
        now: Instant,
    ) -> Option<Proven> {
        self.expire(now);
        if frame[0] != MSG_RESPONSE {
            return None;
        }
        let receiver = u32::from_le_bytes(
            frame[RESPONSE_RECEIVER_OFF..RESPONSE_RECEIVER_OFF + 4]
                .try_into()
                .ok()?,
        );
        let p = self.pending.get_mut(&receiver)?;
        if p.candidate != *src {
            // Someone else's answer, or a copy from another address: the
            // endpoint to prove is the one the probe went to.
            self.stats.rejected += 1;
            return None;
        }
        let mut out = [0u8; 256];
        // On success Tunn wants to send a keepalive on the new keypair
        // (a transport frame); the hub drops it, so the spoke never
        // switches to a session the hub's WireGuard does not have.
        let ok = matches!(
            p.tunn.decapsulate(None, frame, &mut out),
            TunnResult::WriteToNetwork(b) if b.first() == Some(&MSG_TRANSPORT)
        );
        let p = self.pending.remove(&receiver)?;
        if !ok {
            self.stats.rejected += 1;
            return None;
        }
        self.stats.proven += 1;
        Some(Proven {
            slot: p.slot,
            endpoint: p.candidate,
        })
    }

    /// Forget probes past their deadline and stale bookkeeping.
    pub fn expire(&mut self, now: Instant) {
        let before = self.pending.len();
        self.pending.retain(|_, p| now < p.deadline);
        self.stats.expired += (before - self.pending.len()) as u64;
        if self.last_pair.len() > self.limits.max_pending {
            let keep = self.limits.per_pair_interval;
            self.last_pair
                .retain(|_, t| now.saturating_duration_since(*t) < keep);
        }
        if self.per_address.len() > self.limits.max_pending {
            self.per_address.retain(|_, w| {
                w.is_some_and(|w| now.saturating_duration_since(w.start) < Duration::from_secs(1))
            });
        }
    }

    /// Forget a spoke's probes (removed or re-keyed).
    pub fn forget(&mut self, slot: u32) {
        self.pending.retain(|_, p| p.slot != slot);
        self.last_pair.retain(|&(s, _), _| s != slot);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A spoke as stock WireGuard runs it (boringtun's responder), with the
    /// hub as its peer.
    struct Spoke {
        public: [u8; 32],
        tunn: Tunn,
    }

    fn key(seed: u8) -> StaticSecret {
        StaticSecret::from([seed; 32])
    }

    fn spoke(seed: u8, hub_private: &[u8; 32]) -> Spoke {
        let secret = key(seed);
        let public = PublicKey::from(&secret).to_bytes();
        let hub_public = PublicKey::from(&StaticSecret::from(*hub_private));
        Spoke {
            public,
            tunn: Tunn::new(secret, hub_public, None, None, seed as u32, None),
        }
    }

    impl Spoke {
        /// What the spoke sends back for `frame` (a response, or nothing).
        fn answer(&mut self, frame: &[u8]) -> Option<[u8; RESPONSE_LEN]> {
            let mut out = [0u8; 256];
            match self.tunn.decapsulate(None, frame, &mut out) {
                TunnResult::WriteToNetwork(b) if b.len() == RESPONSE_LEN => {
                    Some(b.try_into().unwrap())
                }
                _ => None,
            }
        }
    }

    const HUB: [u8; 32] = [7; 32];

    fn ep(last: u8, port: u16) -> Endpoint {
        Endpoint::v4([192, 0, 2, last], port)
    }

    #[test]
    fn the_real_spoke_proves_its_endpoint() {
        let now = Instant::now();
        let mut p = Prover::new(&HUB, Limits::default());
        let mut s = spoke(1, &HUB);
        let probe = p
            .probe(3, &s.public, ep(10, 4000), ep(1, 51820), now)
            .unwrap();
        assert_eq!(probe.to, ep(10, 4000));
        assert_eq!(probe.from, ep(1, 51820));
        let resp = s.answer(&probe.frame).expect("the spoke answers its hub");
        assert_eq!(
            p.on_response(&ep(10, 4000), &resp, now),
            Some(Proven {
                slot: 3,
                endpoint: ep(10, 4000)
            })
        );
        assert_eq!(p.stats.proven, 1);
        // A replayed response proves nothing: the probe is used up.
        assert_eq!(p.on_response(&ep(10, 4000), &resp, now), None);
        assert_eq!(p.pending_len(), 0);
    }

    #[test]
    fn another_key_cannot_answer() {
        let now = Instant::now();
        let mut p = Prover::new(&HUB, Limits::default());
        let real = spoke(1, &HUB);
        // An impostor with its own key pair, claiming to be spoke 1: the
        // probe's mac1 is for spoke 1's key, so a stock peer ignores it,
        // and a forged answer does not verify.
        let mut impostor = spoke(2, &HUB);
        let probe = p
            .probe(3, &real.public, ep(10, 4000), ep(1, 51820), now)
            .unwrap();
        assert_eq!(impostor.answer(&probe.frame), None);
        // Its answer to a probe for its own key, relabelled with this
        // probe's index, still fails the check.
        let mut other = Prover::new(&HUB, Limits::default());
        let own = other
            .probe(4, &impostor.public, ep(10, 4000), ep(1, 51820), now)
            .unwrap();
        let mut forged = impostor.answer(&own.frame).unwrap();
        forged[RESPONSE_RECEIVER_OFF..RESPONSE_RECEIVER_OFF + 4]
            .copy_from_slice(&probe.frame[SENDER_OFF..SENDER_OFF + 4]);
        assert_eq!(p.on_response(&ep(10, 4000), &forged, now), None);
        assert_eq!(p.stats.rejected, 1);
        assert_eq!(p.stats.proven, 0);
    }

    #[test]
    fn an_answer_counts_only_from_the_probed_address() {
        let now = Instant::now();
        let mut p = Prover::new(&HUB, Limits::default());
        let mut s = spoke(1, &HUB);
        let probe = p
            .probe(3, &s.public, ep(10, 4000), ep(1, 51820), now)
            .unwrap();
        let resp = s.answer(&probe.frame).unwrap();
        // Relayed by whoever saw it, from another address.
        assert_eq!(p.on_response(&ep(66, 4000), &resp, now), None);
        assert_eq!(p.on_response(&ep(10, 4001), &resp, now), None);
        assert_eq!(p.stats.rejected, 2);
        // The probe still stands for the real address.
        assert!(p.on_response(&ep(10, 4000), &resp, now).is_some());
    }

    #[test]
    fn late_answers_expire() {
        let now = Instant::now();
        let limits = Limits::default();
        let mut p = Prover::new(&HUB, limits);
        let mut s = spoke(1, &HUB);
        let probe = p
            .probe(3, &s.public, ep(10, 4000), ep(1, 51820), now)
            .unwrap();
        let resp = s.answer(&probe.frame).unwrap();
        let late = now + limits.answer_within;
        assert_eq!(p.on_response(&ep(10, 4000), &resp, late), None);
        assert_eq!(p.stats.expired, 1);
    }

    #[test]
    fn probes_are_bounded() {
        let now = Instant::now();
        let limits = Limits::default();
        let mut p = Prover::new(&HUB, limits);
        let s = spoke(1, &HUB);
        let hub = ep(1, 51820);
        // One pair: once per interval.
        assert!(p.probe(3, &s.public, ep(10, 4000), hub, now).is_some());
        assert!(p.probe(3, &s.public, ep(10, 4000), hub, now).is_none());
        let later = now + limits.per_pair_interval;
        assert!(p.probe(3, &s.public, ep(10, 4000), hub, later).is_some());
        // One address, many ports or spokes: per_address_per_sec a second.
        let mut sent = 2;
        for port in 5000..5100 {
            if p.probe(3, &s.public, ep(10, port), hub, later).is_some() {
                sent += 1;
            }
        }
        assert_eq!(sent, limits.per_address_per_sec);
        assert!(!p.has_room(&ep(10, 0).addr, later));
        assert!(p.has_room(&ep(11, 0).addr, later));
        // In total: total_per_sec a second across addresses.
        let mut total = sent;
        for i in 0..=255u8 {
            for port in [1u16, 2] {
                let c = Endpoint::v4([198, 51, 100, i], port);
                if p.probe(3, &s.public, c, hub, later).is_some() {
                    total += 1;
                }
            }
        }
        assert_eq!(total, limits.total_per_sec);
        assert!(!p.has_room(&ep(12, 0).addr, later), "total spent");
        assert!(p.stats.limited > 0);
        // A new second, a new budget.
        let next = later + Duration::from_secs(1);
        assert!(p.probe(3, &s.public, ep(10, 6000), hub, next).is_some());
    }

    #[test]
    fn a_spoke_handshaking_with_the_hub_is_left_alone() {
        let now = Instant::now();
        let limits = Limits::default();
        let mut p = Prover::new(&HUB, limits);
        let s = spoke(1, &HUB);
        let hub = ep(1, 51820);
        p.on_hub_initiation(ep(10, 4000), now);
        assert!(p.handshaking(&ep(10, 4000), now));
        assert_eq!(p.probe(3, &s.public, ep(10, 4000), hub, now), None);
        assert_eq!(p.stats.deferred, 1);
        // Another port (the NAT moved since) is another endpoint.
        assert!(!p.handshaking(&ep(10, 4001), now));
        // After the grace, the endpoint may be probed again.
        let later = now + limits.hub_handshake_grace;
        assert!(p.probe(3, &s.public, ep(10, 4000), hub, later).is_some());
    }

    #[test]
    fn held_sources_settle_in_order_once_each() {
        let now = Instant::now();
        let limits = Limits {
            max_pending: 2,
            ..Limits::default()
        };
        let mut p = Prover::new(&HUB, limits);
        let hub = ep(1, 51820);
        assert_eq!(p.next_settled(), None);
        assert!(p.settle(ep(10, 4000), hub, now));
        // A second initiation from the same source does not queue it twice.
        assert!(!p.settle(ep(10, 4000), hub, now));
        let later = now + Duration::from_millis(10);
        assert!(p.settle(ep(11, 4000), hub, later));
        // Bounded.
        assert!(!p.settle(ep(12, 4000), hub, later));
        assert_eq!(p.next_settled(), Some(now + limits.settle));
        // Not before its time.
        assert_eq!(p.take_settled(now + limits.settle / 2), None);
        let due = later + limits.settle;
        assert_eq!(p.take_settled(due), Some((ep(10, 4000), hub)));
        assert_eq!(p.take_settled(due), Some((ep(11, 4000), hub)));
        assert_eq!(p.take_settled(due), None);
        // Taken sources may settle again.
        assert!(p.settle(ep(10, 4000), hub, due));
    }

    #[test]
    fn probe_is_initiation_sized() {
        // The reflection bound: one probe is one initiation, the size of
        // the frames that may trigger it at most.
        let now = Instant::now();
        let mut p = Prover::new(&HUB, Limits::default());
        let s = spoke(1, &HUB);
        let probe = p
            .probe(3, &s.public, ep(10, 4000), ep(1, 51820), now)
            .unwrap();
        assert_eq!(probe.frame.len(), INITIATION_LEN);
        assert_eq!(probe.frame[0], relay_common::wire::MSG_INITIATION);
        // mac1 is for the spoke's key, so a stock spoke accepts it.
        let mac1 = crate::core::keys::Mac1Key::for_public_key(&s.public);
        assert!(mac1.matches(&probe.frame));
    }
}
