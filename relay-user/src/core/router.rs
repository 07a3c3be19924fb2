//! Handshake routing, sans-IO: an initiation copy from the XDP program plus
//! the controller's tables in, a routing decision out.
//!
//! An initiation names its responder only through mac1, a keyed BLAKE2s of
//! the message under a key derived from the responder's public key. The hub
//! knows every spoke's public key, so it can tell which spoke an initiation
//! is for without being able to read it.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use relay_common::wire::{COOKIE_REPLY_LEN, INITIATION_LEN, KEY_LEN, MSG_INITIATION, SENDER_OFF};
use relay_common::{Endpoint, InitiationEvent, SESSION_FROM_INITIATION, SessionKey, SessionValue};

use crate::core::cookie::{CookieJar, Mac2, clear_mac2};
use crate::core::keys::{CookieKey, Mac1Key};
use crate::core::outcome::InitiationResult;
use crate::core::shield::{Limits, Shield, ShieldStats, Standing};

/// How long an initiation waits for its sender's or destination's
/// authenticated endpoint before it is dropped. WireGuard retries after
/// REKEY_TIMEOUT (5 s); holding about a second turns a first-contact race
/// into a short delay instead of a 5 s stall.
pub const HOLD_FOR: Duration = Duration::from_millis(1200);
/// Bound on held initiations (oldest dropped first).
pub const MAX_HELD: usize = 1024;
/// Two spokes initiating to each other at once must not have both
/// initiations arrive while the other's is in flight: each would consume
/// the other's, overwrite its own handshake state, and both would wait as
/// responders until WireGuard's 5 s retry. So an initiation B->A that
/// comes within this delay after A->B was forwarded is held until the
/// delay has passed: by then B has answered A (a hub-to-spoke round trip),
/// and if B's answer was lost to a race on B, B's own initiation still
/// gets through. Longer than any sane hub-spoke-hub round trip.
pub const CROSS_DELAY: Duration = Duration::from_millis(500);
/// Destinations remembered per source, tried before the full scan.
pub const RECENT_PER_SOURCE: usize = 8;

/// What happened to one initiation (its metric label is [`Outcome::result`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Sent to the destination spoke.
    Relayed { src: u32, dst: u32 },
    /// mac1 is the hub's own: its WireGuard already has the frame.
    ToHub,
    /// Waiting for an authenticated endpoint.
    Held,
    /// No registered key matches mac1.
    NoMatch,
    /// The sender is not an authenticated spoke (after holding).
    UnknownSource,
    /// The destination has no authenticated endpoint (after holding).
    NoDestination,
    /// A spoke initiating to itself.
    Loop,
    /// The hub's policy does not let these two spokes talk.
    Denied,
    /// Not a well-formed initiation.
    Malformed,
    /// Held queue overflow.
    Overflow,
    /// Held back: the opposite initiation was just forwarded (see
    /// [`CROSS_DELAY`]).
    Delayed,
    /// A held copy replaced by a newer initiation from the same sender to
    /// the same spoke (a retransmission).
    Superseded,
    /// Under load without a valid mac2: answered with a cookie reply on
    /// behalf of the destination spoke (see [`crate::core::shield`]).
    CookieSent,
    /// Dropped by the flood shield (scan or cookie budget spent, a proven
    /// source over its rate, or a stranger under load).
    RateLimited,
}

impl Outcome {
    /// The metric result this outcome counts as.
    pub fn result(&self) -> InitiationResult {
        match self {
            Outcome::Relayed { .. } => InitiationResult::Relayed,
            Outcome::ToHub => InitiationResult::ToHub,
            Outcome::Held => InitiationResult::Held,
            Outcome::NoMatch => InitiationResult::NoMatch,
            Outcome::UnknownSource => InitiationResult::UnknownSource,
            Outcome::NoDestination => InitiationResult::NoDestination,
            Outcome::Loop => InitiationResult::Loop,
            Outcome::Denied => InitiationResult::Denied,
            Outcome::Malformed => InitiationResult::Malformed,
            Outcome::Overflow => InitiationResult::Overflow,
            Outcome::Delayed => InitiationResult::Delayed,
            Outcome::Superseded => InitiationResult::Superseded,
            Outcome::CookieSent => InitiationResult::CookieSent,
            Outcome::RateLimited => InitiationResult::RateLimited,
        }
    }
}

/// Something the IO shell must do.
// The frame travels by value: a 148-byte copy per initiation is cheaper
// than an allocation, and nothing keeps many Actions alive.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Install the session entry, then send `frame` from `from` to `to`.
    Forward {
        session: (SessionKey, SessionValue),
        from: Endpoint,
        to: Endpoint,
        frame: [u8; INITIATION_LEN],
    },
    /// Re-read the hub's authenticated endpoints soon, then call
    /// [`Router::retry_held`].
    Refresh,
    /// Send a cookie reply `from` (the hub address the initiation came to)
    /// `to` (its source).
    Reply {
        from: Endpoint,
        to: Endpoint,
        frame: [u8; COOKIE_REPLY_LEN],
    },
}

struct SpokeEntry {
    key: Mac1Key,
    cookie: CookieKey,
    endpoint: Option<Endpoint>,
}

/// The flood shield and the hub's cookie secret.
struct Flood {
    shield: Shield,
    jar: CookieJar,
}

struct Held {
    event: InitiationEvent,
    dst: u32,
    /// Not forwarded before this (crossing initiations).
    not_before: Instant,
    deadline: Instant,
}

/// The handshake router's tables.
#[derive(Default)]
pub struct Router {
    hub: Option<Mac1Key>,
    spokes: HashMap<u32, SpokeEntry>,
    by_endpoint: HashMap<Endpoint, u32>,
    recent: HashMap<u32, VecDeque<u32>>,
    held: VecDeque<Held>,
    /// When an initiation src -> dst was last forwarded.
    forwarded: HashMap<(u32, u32), Instant>,
    superseded: u64,
    /// Rate limits and cookies; off unless enabled.
    flood: Option<Flood>,
    /// Which spoke pairs may talk (default: all).
    policy: crate::core::policy::SlotPolicy,
    /// mac1 computations so far (one per key tried): what a scan costs.
    keys_checked: std::cell::Cell<u64>,
    /// Hub mesh: an initiation on a mesh port is for the spoke the port
    /// names; no other key is tried.
    mesh: Option<MeshPorts>,
}

/// Hub mesh: which spoke each mesh port of this hub names.
#[derive(Debug, Default)]
struct MeshPorts {
    base: u16,
    hub_port: u16,
    /// Mesh index -> slot, for the spokes homed here.
    slots: HashMap<u16, u32>,
}

impl Router {
    pub fn new(hub_public_key: &[u8; KEY_LEN]) -> Self {
        Self {
            hub: Some(Mac1Key::for_public_key(hub_public_key)),
            ..Default::default()
        }
    }

    /// Turn on the handshake flood shield: rate limits, cookie replies on
    /// behalf of spokes, mac2 checks (see [`crate::core::shield`]).
    pub fn enable_shield(&mut self, limits: Limits, now: Instant) {
        self.enable_shield_with(Shield::new(limits, now), CookieJar::new(now));
    }

    /// [`Router::enable_shield`] with given state (tests: seeded secrets).
    pub fn enable_shield_with(&mut self, shield: Shield, jar: CookieJar) {
        self.flood = Some(Flood { shield, jar });
    }

    /// The shield's counts, if it is on.
    pub fn shield_stats(&self) -> Option<ShieldStats> {
        self.flood.as_ref().map(|f| f.shield.stats)
    }

    /// The cookie the hub gives `src` now (tests, diagnostics).
    pub fn cookie_for(
        &mut self,
        src: &Endpoint,
        now: Instant,
    ) -> Option<crate::core::keys::Cookie> {
        self.flood.as_mut().map(|f| f.jar.cookie(src, now))
    }

    /// Hub mesh: initiations to port `base + index` (not `hub_port`) are
    /// for `slots[index]` only, and for nobody when the port names no
    /// spoke homed here (`base` 0: no mesh).
    pub fn set_mesh_ports(&mut self, base: u16, hub_port: u16, slots: HashMap<u16, u32>) {
        self.mesh = (base != 0).then_some(MeshPorts {
            base,
            hub_port,
            slots,
        });
    }

    /// Register or re-key a spoke.
    pub fn set_spoke(&mut self, slot: u32, public_key: &[u8; KEY_LEN]) {
        let key = Mac1Key::for_public_key(public_key);
        let cookie = CookieKey::for_public_key(public_key);
        match self.spokes.get_mut(&slot) {
            Some(e) => {
                e.key = key;
                e.cookie = cookie;
            }
            None => {
                self.spokes.insert(
                    slot,
                    SpokeEntry {
                        key,
                        cookie,
                        endpoint: None,
                    },
                );
            }
        }
    }

    pub fn remove_spoke(&mut self, slot: u32) {
        if let Some(e) = self.spokes.remove(&slot)
            && let Some(ep) = e.endpoint
        {
            self.by_endpoint.remove(&ep);
        }
        self.recent.remove(&slot);
        if let Some(f) = self.flood.as_mut() {
            f.shield.forget_destination(slot);
        }
        self.forwarded.retain(|&(a, b), _| a != slot && b != slot);
        for r in self.recent.values_mut() {
            r.retain(|&d| d != slot);
        }
    }

    /// Replace the policy; held initiations are checked again on retry.
    pub fn set_policy(&mut self, policy: crate::core::policy::SlotPolicy) {
        self.policy = policy;
    }

    pub fn slots(&self) -> impl Iterator<Item = u32> + '_ {
        self.spokes.keys().copied()
    }

    pub fn endpoint(&self, slot: u32) -> Option<Endpoint> {
        self.spokes.get(&slot).and_then(|e| e.endpoint)
    }

    /// Record a spoke's authenticated endpoint (from the hub's WireGuard).
    /// Returns true when it changed.
    pub fn set_endpoint(&mut self, slot: u32, endpoint: Option<Endpoint>) -> bool {
        let Some(e) = self.spokes.get_mut(&slot) else {
            return false;
        };
        if e.endpoint == endpoint {
            return false;
        }
        if let Some(old) = e.endpoint
            && self.by_endpoint.get(&old) == Some(&slot)
        {
            self.by_endpoint.remove(&old);
        }
        e.endpoint = endpoint;
        if let Some(new) = endpoint {
            // Another spoke behind the same address:port lost it (its NAT
            // mapping was reused): the newest authentication wins.
            if let Some(prev) = self.by_endpoint.insert(new, slot)
                && prev != slot
                && let Some(p) = self.spokes.get_mut(&prev)
            {
                p.endpoint = None;
            }
        }
        true
    }

    pub fn slot_of(&self, endpoint: &Endpoint) -> Option<u32> {
        self.by_endpoint.get(endpoint).copied()
    }

    /// The destination of the newest initiation held from `src`.
    pub fn held_destination(&self, src: &Endpoint) -> Option<u32> {
        self.held
            .iter()
            .rev()
            .find(|h| h.event.src == *src)
            .map(|h| h.dst)
    }

    /// Spokes an initiation to `dst` from the unauthenticated `src` may
    /// come from, most likely first, at most `max`: spokes last
    /// authenticated at the same address (a NAT that moved the port), then
    /// spokes with no authenticated endpoint (first contact from clients
    /// that do not handshake with the hub first). Only pairs the policy
    /// allows. `rotate` picks where the second group starts, so that
    /// retries reach every such spoke in turn.
    pub fn initiator_candidates(
        &self,
        src: &Endpoint,
        dst: u32,
        max: usize,
        rotate: usize,
    ) -> Vec<u32> {
        let mut same_addr = Vec::new();
        let mut unseen = Vec::new();
        for (&slot, e) in &self.spokes {
            if slot == dst || !self.policy.allows(slot, dst) {
                continue;
            }
            match e.endpoint {
                Some(ep) if ep.family == src.family && ep.addr == src.addr => same_addr.push(slot),
                Some(_) => {}
                None => unseen.push(slot),
            }
        }
        same_addr.sort_unstable();
        unseen.sort_unstable();
        if !unseen.is_empty() {
            let at = rotate % unseen.len();
            unseen.rotate_left(at);
        }
        same_addr.into_iter().chain(unseen).take(max).collect()
    }

    pub fn held_len(&self) -> usize {
        self.held.len()
    }

    /// Which registered key an initiation is for: recent destinations of
    /// `src` first, then every spoke.
    pub fn match_mac1(&self, src: Option<u32>, frame: &[u8; INITIATION_LEN]) -> Option<Target> {
        self.match_cheap(src, frame)
            .or_else(|| self.match_full(src, frame))
    }

    /// mac1 keys tried since the router was made: one BLAKE2s each, the
    /// cost the scan budget bounds.
    pub fn keys_checked(&self) -> u64 {
        self.keys_checked.get()
    }

    /// Does `frame` carry `key`'s mac1 (counted in [`Self::keys_checked`]).
    fn check(&self, key: &Mac1Key, frame: &[u8; INITIATION_LEN]) -> bool {
        self.keys_checked.set(self.keys_checked.get() + 1);
        key.matches(frame)
    }

    /// The hub's key and the recent destinations of `src` (a few MACs).
    fn match_cheap(&self, src: Option<u32>, frame: &[u8; INITIATION_LEN]) -> Option<Target> {
        if self.hub.is_some_and(|k| self.check(&k, frame)) {
            return Some(Target::Hub);
        }
        let recent = src.and_then(|s| self.recent.get(&s));
        if let Some(r) = recent {
            for &slot in r {
                if self
                    .spokes
                    .get(&slot)
                    .is_some_and(|e| self.check(&e.key, frame))
                {
                    return Some(Target::Spoke(slot));
                }
            }
        }
        None
    }

    /// Every other registered key (one MAC per spoke).
    fn match_full(&self, src: Option<u32>, frame: &[u8; INITIATION_LEN]) -> Option<Target> {
        let recent = src.and_then(|s| self.recent.get(&s));
        self.spokes
            .iter()
            .filter(|(slot, _)| !recent.is_some_and(|r| r.contains(slot)))
            .find(|(_, e)| self.check(&e.key, frame))
            .map(|(&slot, _)| Target::Spoke(slot))
    }

    /// Route one initiation copy.
    pub fn on_initiation(
        &mut self,
        event: &InitiationEvent,
        now: Instant,
    ) -> (Outcome, Option<Action>) {
        let frame = &event.frame;
        if frame[0] != MSG_INITIATION || frame[1..4] != [0, 0, 0] {
            return (Outcome::Malformed, None);
        }
        if self.forwarded.len() > MAX_HELD {
            self.forwarded
                .retain(|_, t| now.saturating_duration_since(*t) < CROSS_DELAY);
        }
        let src = self.slot_of(&event.src);
        let named = self.mesh.as_ref().and_then(|m| {
            let index = relay_common::mesh_slot(m.base, m.hub_port, event.dst.port)?;
            Some(
                u16::try_from(index)
                    .ok()
                    .and_then(|i| m.slots.get(&i).copied()),
            )
        });
        let (dst, event) = match (named, self.flood.is_some()) {
            // From a peer hub (XDP passes mesh initiations from its spokes'
            // endpoints only), for the spoke the port names: one mac1,
            // whatever the number of spokes, and no way to reach another.
            (Some(d), _) => match d.and_then(|d| Some((d, self.spokes.get(&d)?))) {
                Some((d, e)) if self.check(&e.key, frame) => (d, *event),
                _ => return (Outcome::NoMatch, None),
            },
            (None, false) => match self.match_mac1(src, frame) {
                None => return (Outcome::NoMatch, None),
                Some(Target::Hub) => return (Outcome::ToHub, None),
                Some(Target::Spoke(d)) => (d, *event),
            },
            (None, true) => match self.shield_gate(src, event, now) {
                Ok(v) => v,
                Err(r) => return r,
            },
        };
        let event = &event;
        match self.decide(src, dst, event, now) {
            Decision::Forward(o, a) => (o, Some(a)),
            Decision::Final(o) => (o, None),
            Decision::Delay(until) => {
                let outcome = self.hold(event, dst, until, now);
                let outcome = if outcome == Outcome::Held {
                    Outcome::Delayed
                } else {
                    outcome
                };
                (outcome, None)
            }
            Decision::Wait(_) => {
                let outcome = self.hold(event, dst, now, now);
                (outcome, Some(Action::Refresh))
            }
        }
    }

    /// The flood shield's early path: rate limits, budgeted mac1 scan,
    /// mac2 check or cookie reply. `Ok` is the destination and the event to
    /// route on (mac2 cleared if the hub checked it).
    #[allow(clippy::result_large_err)] // the Err is the final answer, used once
    fn shield_gate(
        &mut self,
        src: Option<u32>,
        event: &InitiationEvent,
        now: Instant,
    ) -> Result<(u32, InitiationEvent), (Outcome, Option<Action>)> {
        let limited = Err((Outcome::RateLimited, None));
        let f = self.flood.as_mut().expect("shield on");
        let over = f.shield.observe_source(&event.src, now);
        let proven = match f.jar.check(&event.src, &event.frame, now) {
            Mac2::Absent => false,
            Mac2::Valid => {
                f.shield.stats.mac2_valid += 1;
                true
            }
            Mac2::Invalid => {
                f.shield.stats.mac2_invalid += 1;
                false
            }
        };
        if proven && !f.shield.admit_proven(&event.src, now) {
            return limited;
        }
        if over && !proven && src.is_none() {
            // Never forwardable before the hub's WireGuard authenticates
            // it; not worth a scan or a cookie while under load.
            f.shield.deny_stranger();
            return limited;
        }
        let target = match self.match_cheap(src, &event.frame) {
            Some(t) => Some(t),
            None => {
                let standing = match (proven, src) {
                    (true, _) => Standing::Proven,
                    (false, Some(_)) => Standing::Known,
                    (false, None) => Standing::Stranger,
                };
                let n = self.spokes.len();
                let f = self.flood.as_mut().expect("shield on");
                if !f.shield.allow_scan(n, standing, now) {
                    return limited;
                }
                self.match_full(src, &event.frame)
            }
        };
        let dst = match target {
            None => return Err((Outcome::NoMatch, None)),
            // The hub's own WireGuard has its own cookie logic.
            Some(Target::Hub) => return Err((Outcome::ToHub, None)),
            Some(Target::Spoke(d)) => d,
        };
        let cookie_key = self.spokes.get(&dst).expect("matched spoke").cookie;
        let f = self.flood.as_mut().expect("shield on");
        let dst_over = f.shield.observe_destination(dst, now);
        let mut ev = *event;
        if proven {
            // The hub's cookie means nothing to the spoke (which, under
            // load itself, would check mac2 against its own cookie).
            clear_mac2(&mut ev.frame);
        } else if over || dst_over {
            if src.is_none() {
                f.shield.deny_stranger();
                return limited;
            }
            if !f.shield.allow_cookie(&event.src, now) {
                return limited;
            }
            let frame = f.jar.reply(&cookie_key, &event.src, &event.frame, now);
            return Err((
                Outcome::CookieSent,
                Some(Action::Reply {
                    from: event.dst,
                    to: event.src,
                    frame,
                }),
            ));
        }
        Ok((dst, ev))
    }

    /// Queue an initiation; a retransmission replaces the copy it
    /// supersedes, and the queue is bounded (oldest dropped).
    fn hold(
        &mut self,
        event: &InitiationEvent,
        dst: u32,
        not_before: Instant,
        now: Instant,
    ) -> Outcome {
        let before = self.held.len();
        self.held
            .retain(|h| !(h.dst == dst && h.event.src == event.src));
        if self.held.len() != before {
            self.superseded += 1;
        }
        let outcome = if self.held.len() >= MAX_HELD {
            self.held.pop_front();
            Outcome::Overflow
        } else {
            Outcome::Held
        };
        self.held.push_back(Held {
            event: *event,
            dst,
            not_before,
            deadline: not_before.max(now) + HOLD_FOR,
        });
        outcome
    }

    /// Held copies replaced by retransmissions since the last call.
    pub fn take_superseded(&mut self) -> u64 {
        std::mem::take(&mut self.superseded)
    }

    /// After an endpoint refresh (or on a timer): route held initiations
    /// that can now be routed, drop the ones past their deadline.
    pub fn retry_held(&mut self, now: Instant) -> Vec<(Outcome, Option<Action>)> {
        self.forwarded
            .retain(|_, t| now.saturating_duration_since(*t) < CROSS_DELAY);
        let mut out = Vec::new();
        let mut keep = VecDeque::new();
        let held = std::mem::take(&mut self.held);
        // Newest first: of two crossing initiations the newer one goes
        // first (its sender's handshake state is the current one); the
        // other is delayed by CROSS_DELAY.
        for h in held.into_iter().rev() {
            if now < h.not_before {
                keep.push_front(h);
                continue;
            }
            let src = self.slot_of(&h.event.src);
            let dst = match self.match_mac1(src, &h.event.frame) {
                Some(Target::Spoke(d)) => d,
                // Keys changed while it waited.
                Some(Target::Hub) => {
                    out.push((Outcome::ToHub, None));
                    continue;
                }
                None => {
                    out.push((Outcome::NoMatch, None));
                    continue;
                }
            };
            match self.decide(src, dst, &h.event, now) {
                Decision::Forward(o, a) => out.push((o, Some(a))),
                Decision::Final(o) => out.push((o, None)),
                Decision::Delay(until) => keep.push_front(Held {
                    not_before: until,
                    deadline: until + HOLD_FOR,
                    ..h
                }),
                Decision::Wait(why) if now >= h.deadline => out.push((why, None)),
                Decision::Wait(_) => keep.push_front(h),
            }
        }
        self.held = keep;
        out
    }

    /// Earliest deadline of a held initiation.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.held.iter().map(|h| h.deadline).min()
    }

    /// When a delayed initiation becomes due (the IO shell should call
    /// [`Router::retry_held`] then).
    pub fn next_due(&self, now: Instant) -> Option<Instant> {
        self.held
            .iter()
            .map(|h| h.not_before)
            .filter(|&t| t > now)
            .min()
    }

    fn decide(
        &mut self,
        src: Option<u32>,
        dst: u32,
        event: &InitiationEvent,
        now: Instant,
    ) -> Decision {
        let Some(src) = src else {
            return Decision::Wait(Outcome::UnknownSource);
        };
        if src == dst {
            return Decision::Final(Outcome::Loop);
        }
        if !self.policy.allows(src, dst) {
            return Decision::Final(Outcome::Denied);
        }
        let Some(to) = self.endpoint(dst) else {
            return Decision::Wait(Outcome::NoDestination);
        };
        if let Some(&t) = self.forwarded.get(&(dst, src))
            && now < t + CROSS_DELAY
        {
            return Decision::Delay(t + CROSS_DELAY);
        }
        self.forwarded.insert((src, dst), now);
        let recent = self.recent.entry(src).or_default();
        if let Some(pos) = recent.iter().position(|&d| d == dst) {
            recent.remove(pos);
        } else if recent.len() >= RECENT_PER_SOURCE {
            recent.pop_back();
        }
        recent.push_front(dst);
        let sender = u32::from_le_bytes(
            event.frame[SENDER_OFF..SENDER_OFF + 4]
                .try_into()
                .expect("4 bytes"),
        );
        // The responder answers with receiver = the initiator's sender
        // index; that frame must find its way back to `src`.
        let session = (
            SessionKey {
                src_slot: dst,
                receiver: sender,
            },
            SessionValue {
                dst_slot: src,
                flags: SESSION_FROM_INITIATION,
                last_seen_ns: 0,
            },
        );
        Decision::Forward(
            Outcome::Relayed { src, dst },
            Action::Forward {
                session,
                from: event.dst,
                to,
                frame: event.frame,
            },
        )
    }
}

#[allow(clippy::large_enum_variant)] // see Action
enum Decision {
    Forward(Outcome, Action),
    /// Might succeed once endpoints are refreshed.
    Wait(Outcome),
    /// Forward no earlier than this.
    Delay(Instant),
    Final(Outcome),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    Hub,
    Spoke(u32),
}

#[cfg(test)]
mod tests {
    use super::*;
    use relay_common::NO_SLOT;
    use relay_common::wire::{INITIATION_MAC1_OFF, MAC_LEN};

    fn key(n: u8) -> [u8; 32] {
        [n; 32]
    }

    /// An initiation addressed (by mac1) to `responder`, with `sender` index.
    fn initiation(responder: &[u8; 32], sender: u32) -> [u8; INITIATION_LEN] {
        let mut f = [0u8; INITIATION_LEN];
        f[0] = MSG_INITIATION;
        f[SENDER_OFF..SENDER_OFF + 4].copy_from_slice(&sender.to_le_bytes());
        for (i, b) in f[8..INITIATION_MAC1_OFF].iter_mut().enumerate() {
            *b = i as u8;
        }
        let mac = Mac1Key::for_public_key(responder).mac(&f[..INITIATION_MAC1_OFF]);
        f[INITIATION_MAC1_OFF..INITIATION_MAC1_OFF + MAC_LEN].copy_from_slice(&mac);
        f
    }

    fn ep(last: u8, port: u16) -> Endpoint {
        Endpoint::v4([203, 0, 113, last], port)
    }

    fn event(src: Endpoint, frame: [u8; INITIATION_LEN]) -> InitiationEvent {
        InitiationEvent {
            src,
            dst: Endpoint::v4([198, 51, 100, 1], 51820),
            src_slot: NO_SLOT,
            ifindex: 2,
            frame,
        }
    }

    fn router() -> Router {
        let mut r = Router::new(&key(0xAA));
        r.set_spoke(1, &key(1));
        r.set_spoke(2, &key(2));
        r.set_spoke(3, &key(3));
        r.set_endpoint(1, Some(ep(1, 1001)));
        r.set_endpoint(2, Some(ep(2, 1002)));
        r
    }

    #[test]
    fn mac1_matches_only_its_key() {
        let f = initiation(&key(2), 7);
        assert!(Mac1Key::for_public_key(&key(2)).matches(&f));
        assert!(!Mac1Key::for_public_key(&key(1)).matches(&f));
        let mut bad = f;
        bad[40] ^= 1;
        assert!(!Mac1Key::for_public_key(&key(2)).matches(&bad));
    }

    #[test]
    fn routes_by_mac1_and_installs_reverse_session() {
        let mut r = router();
        let now = Instant::now();
        let (o, a) = r.on_initiation(&event(ep(1, 1001), initiation(&key(2), 0xdead)), now);
        assert_eq!(o, Outcome::Relayed { src: 1, dst: 2 });
        match a {
            Some(Action::Forward {
                session, to, from, ..
            }) => {
                assert_eq!(
                    session.0,
                    SessionKey {
                        src_slot: 2,
                        receiver: 0xdead
                    }
                );
                assert_eq!(session.1.dst_slot, 1);
                assert_eq!(to, ep(2, 1002));
                assert_eq!(from, Endpoint::v4([198, 51, 100, 1], 51820));
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn mesh_port_names_the_responder() {
        // Spoke 1 homed on a peer hub at 192.0.2.9 (its mesh port 40001
        // there), spokes 2 and 3 here; mesh ports from 40000.
        let mut r = router();
        let peer = Endpoint::v4([192, 0, 2, 9], 40001);
        r.set_endpoint(1, Some(peer));
        // 2 and 3 have mesh indices 2 and 3 here; index 4 names nobody.
        r.set_mesh_ports(40000, 51820, HashMap::from([(2, 2), (3, 3)]));
        let now = Instant::now();
        let on_port = |port, frame| InitiationEvent {
            dst: Endpoint::v4([198, 51, 100, 1], port),
            ..event(peer, frame)
        };
        // For 2, on 2's mesh port: one key tried.
        let k0 = r.keys_checked();
        let (o, a) = r.on_initiation(&on_port(40002, initiation(&key(2), 5)), now);
        assert_eq!(o, Outcome::Relayed { src: 1, dst: 2 });
        assert!(matches!(a, Some(Action::Forward { to, .. }) if to == ep(2, 1002)));
        assert_eq!(r.keys_checked() - k0, 1);
        // For 2, on 3's mesh port: the port decides, so nothing matches
        // (not the hub's key either: nothing on a mesh port is for it).
        let f = initiation(&key(2), 6);
        assert_eq!(r.on_initiation(&on_port(40003, f), now).0, Outcome::NoMatch);
        let f = initiation(&key(0xAA), 7);
        assert_eq!(r.on_initiation(&on_port(40002, f), now).0, Outcome::NoMatch);
        let f = initiation(&key(2), 9);
        assert_eq!(r.on_initiation(&on_port(40004, f), now).0, Outcome::NoMatch);
        // On the hub port: by mac1 as always.
        let (o, _) = r.on_initiation(&on_port(51820, initiation(&key(3), 8)), now);
        assert_ne!(o, Outcome::NoMatch);
    }

    #[test]
    fn hub_and_unknown_keys() {
        let mut r = router();
        let now = Instant::now();
        let (o, a) = r.on_initiation(&event(ep(1, 1001), initiation(&key(0xAA), 1)), now);
        assert_eq!((o, a), (Outcome::ToHub, None));
        let (o, _) = r.on_initiation(&event(ep(1, 1001), initiation(&key(9), 1)), now);
        assert_eq!(o, Outcome::NoMatch);
        let mut f = initiation(&key(2), 1);
        f[1] = 1;
        assert_eq!(
            r.on_initiation(&event(ep(1, 1001), f), now).0,
            Outcome::Malformed
        );
    }

    #[test]
    fn self_initiation_is_a_loop_not_held() {
        let mut r = router();
        let (o, a) = r.on_initiation(&event(ep(1, 1001), initiation(&key(1), 1)), Instant::now());
        assert_eq!((o, a), (Outcome::Loop, None));
        assert_eq!(r.held_len(), 0);
    }

    #[test]
    fn first_contact_is_held_then_routed_after_refresh() {
        let mut r = router();
        let now = Instant::now();
        // Spoke 3 is registered but not yet authenticated by the hub.
        let (o, a) = r.on_initiation(&event(ep(3, 1003), initiation(&key(1), 5)), now);
        assert_eq!((o, a), (Outcome::Held, Some(Action::Refresh)));
        assert!(r.retry_held(now + Duration::from_millis(100)).is_empty());
        assert_eq!(r.held_len(), 1);
        r.set_endpoint(3, Some(ep(3, 1003)));
        let out = r.retry_held(now + Duration::from_millis(200));
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].0, Outcome::Relayed { src: 3, dst: 1 });
        assert_eq!(r.held_len(), 0);
    }

    #[test]
    fn held_initiations_expire() {
        let mut r = router();
        let now = Instant::now();
        // Destination 3 has no endpoint.
        r.on_initiation(&event(ep(1, 1001), initiation(&key(3), 5)), now);
        assert_eq!(r.next_deadline(), Some(now + HOLD_FOR));
        let out = r.retry_held(now + HOLD_FOR);
        assert_eq!(out, vec![(Outcome::NoDestination, None)]);
        // A stranger stays a stranger.
        r.on_initiation(&event(ep(99, 9), initiation(&key(1), 5)), now);
        assert_eq!(
            r.retry_held(now + HOLD_FOR),
            vec![(Outcome::UnknownSource, None)]
        );
    }

    #[test]
    fn crossing_held_initiations_are_staggered() {
        let mut r = router();
        let now = Instant::now();
        // Spoke 1 initiates to 3 before 3 is up: held.
        let (o, _) = r.on_initiation(&event(ep(1, 1001), initiation(&key(3), 11)), now);
        assert_eq!(o, Outcome::Held);
        // A retransmission replaces it.
        let later = now + Duration::from_millis(300);
        r.on_initiation(&event(ep(1, 1001), initiation(&key(3), 12)), later);
        assert_eq!((r.held_len(), r.take_superseded()), (1, 1));
        // Spoke 3 comes up and initiates to 1 before the hub authenticated it.
        let t3 = now + Duration::from_millis(500);
        let (o, _) = r.on_initiation(&event(ep(3, 1003), initiation(&key(1), 31)), t3);
        assert_eq!(o, Outcome::Held);
        r.set_endpoint(3, Some(ep(3, 1003)));
        let t = t3 + Duration::from_millis(5);
        let out = r.retry_held(t);
        // The newest (3 -> 1) goes now; 1 -> 3 waits CROSS_DELAY.
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].0, Outcome::Relayed { src: 3, dst: 1 });
        assert_eq!(r.held_len(), 1);
        assert_eq!(r.next_due(t), Some(t + CROSS_DELAY));
        assert!(
            r.retry_held(t + CROSS_DELAY - Duration::from_millis(1))
                .is_empty()
        );
        let out = r.retry_held(t + CROSS_DELAY);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].0, Outcome::Relayed { src: 1, dst: 3 });
        match &out[0].1 {
            Some(Action::Forward { frame, .. }) => {
                assert_eq!(frame[SENDER_OFF..SENDER_OFF + 4], 12u32.to_le_bytes())
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(r.held_len(), 0);
    }

    #[test]
    fn opposite_initiation_within_the_delay_waits() {
        let mut r = router();
        let now = Instant::now();
        let (o, _) = r.on_initiation(&event(ep(1, 1001), initiation(&key(2), 1)), now);
        assert_eq!(o, Outcome::Relayed { src: 1, dst: 2 });
        let soon = now + Duration::from_millis(50);
        let (o, a) = r.on_initiation(&event(ep(2, 1002), initiation(&key(1), 2)), soon);
        assert_eq!((o, a), (Outcome::Delayed, None));
        assert_eq!(r.next_due(soon), Some(now + CROSS_DELAY));
        // Same direction again (a retry) is fine.
        let (o, _) = r.on_initiation(&event(ep(1, 1001), initiation(&key(2), 3)), soon);
        assert_eq!(o, Outcome::Relayed { src: 1, dst: 2 });
        // That retry restarts the delay for 2 -> 1.
        let out = r.retry_held(now + CROSS_DELAY);
        assert!(out.is_empty(), "{out:?}");
        let out = r.retry_held(soon + CROSS_DELAY);
        assert_eq!(out[0].0, Outcome::Relayed { src: 2, dst: 1 });
        // Later the other side may initiate at once (rekey).
        let t = soon + 3 * CROSS_DELAY;
        let (o, _) = r.on_initiation(&event(ep(1, 1001), initiation(&key(2), 4)), t);
        assert_eq!(o, Outcome::Relayed { src: 1, dst: 2 });
    }

    #[test]
    fn policy_denies_and_held_copies_are_checked_again() {
        let mut r = router();
        let names = |n: u32| (1..=n).map(|s| (s, format!("s{s}")));
        let only_1_2 = crate::core::policy::Policy::from_json(
            r#"{"allow": [["s1", "s2"]]}"#,
            std::path::Path::new("policy.json"),
        )
        .unwrap();
        r.set_policy(crate::core::policy::SlotPolicy::new(
            Some(&only_1_2),
            names(3),
        ));
        let now = Instant::now();
        let (o, _) = r.on_initiation(&event(ep(1, 1001), initiation(&key(2), 1)), now);
        assert_eq!(o, Outcome::Relayed { src: 1, dst: 2 });
        // Denied without holding, even though 3 has no endpoint yet.
        let (o, a) = r.on_initiation(&event(ep(1, 1001), initiation(&key(3), 2)), now);
        assert_eq!((o, a), (Outcome::Denied, None));
        assert_eq!(r.held_len(), 0);
        // A copy held before the policy changed is denied on retry.
        let (o, _) = r.on_initiation(&event(ep(3, 1003), initiation(&key(2), 3)), now);
        assert_eq!(o, Outcome::Held);
        r.set_endpoint(3, Some(ep(3, 1003)));
        let out = r.retry_held(now + Duration::from_millis(10));
        assert_eq!(out, vec![(Outcome::Denied, None)]);
        // Back to allow-all.
        r.set_policy(crate::core::policy::SlotPolicy::default());
        let (o, _) = r.on_initiation(&event(ep(3, 1003), initiation(&key(2), 4)), now);
        assert_eq!(o, Outcome::Relayed { src: 3, dst: 2 });
    }

    #[test]
    fn held_queue_is_bounded() {
        let mut r = router();
        let now = Instant::now();
        for i in 0..MAX_HELD + 10 {
            let (o, _) = r.on_initiation(&event(ep(50, i as u16), initiation(&key(1), 1)), now);
            let want = if i < MAX_HELD {
                Outcome::Held
            } else {
                Outcome::Overflow
            };
            assert_eq!(o, want);
        }
        assert_eq!(r.held_len(), MAX_HELD);
    }

    fn shielded(limits: Limits, now: Instant) -> Router {
        use rand::SeedableRng;
        let mut r = router();
        r.enable_shield_with(
            Shield::new(limits, now),
            CookieJar::with_rng(rand::rngs::StdRng::seed_from_u64(1), now),
        );
        r
    }

    #[test]
    fn under_load_cookie_reply_then_mac2_is_forwarded_cleared() {
        use crate::core::shield::Rate;
        let now = Instant::now();
        let limits = Limits {
            per_destination: Rate::new(1.0, 1.0),
            ..Limits::default()
        };
        let mut r = shielded(limits, now);
        let f = initiation(&key(2), 0x77);
        // Within the destination's budget: forwarded as usual.
        let (o, _) = r.on_initiation(&event(ep(1, 1001), f), now);
        assert_eq!(o, Outcome::Relayed { src: 1, dst: 2 });
        // Over it: a cookie reply on behalf of spoke 2, to the source.
        let (o, a) = r.on_initiation(&event(ep(1, 1001), f), now);
        assert_eq!(o, Outcome::CookieSent);
        let Some(Action::Reply { from, to, frame }) = a else {
            panic!("{a:?}")
        };
        assert_eq!(to, ep(1, 1001));
        assert_eq!(from, Endpoint::v4([198, 51, 100, 1], 51820));
        assert_eq!(frame[4..8], 0x77u32.to_le_bytes());
        let cookie = CookieKey::for_public_key(&key(2))
            .open(
                &frame,
                &f[INITIATION_MAC1_OFF..INITIATION_MAC1_OFF + MAC_LEN],
            )
            .expect("sealed for spoke 2 and this mac1");
        assert_eq!(Some(cookie), r.cookie_for(&ep(1, 1001), now));
        // The retry carries mac2: forwarded with mac2 cleared.
        let mut g = initiation(&key(2), 0x78);
        let m = crate::core::keys::mac2(&cookie, &g);
        g[132..].copy_from_slice(&m);
        let (o, a) = r.on_initiation(&event(ep(1, 1001), g), now);
        assert_eq!(o, Outcome::Relayed { src: 1, dst: 2 });
        let Some(Action::Forward { frame, .. }) = a else {
            panic!("{a:?}")
        };
        assert_eq!(frame[..132], g[..132]);
        assert_eq!(frame[132..], [0u8; 16]);
        // Another source cannot use that cookie.
        let (o, _) = r.on_initiation(&event(ep(2, 1002), g), now);
        assert_eq!(o, Outcome::CookieSent);
        let st = r.shield_stats().unwrap();
        assert_eq!((st.mac2_valid, st.mac2_invalid, st.cookies_sent), (1, 1, 2));
    }

    #[test]
    fn flood_from_a_spoofed_spoke_endpoint_is_bounded() {
        let now = Instant::now();
        let mut r = shielded(Limits::default(), now);
        let l = Limits::default();
        let mut relayed = 0;
        let mut cookies = 0;
        let mut limited = 0;
        // 20k initiations in 0.2 s (100k/s) for spoke 2 from spoke 1's endpoint.
        for i in 0..20_000u32 {
            let t = now + Duration::from_micros(10 * i as u64);
            match r
                .on_initiation(&event(ep(1, 1001), initiation(&key(2), i)), t)
                .0
            {
                Outcome::Relayed { .. } => relayed += 1,
                Outcome::CookieSent => cookies += 1,
                Outcome::RateLimited => limited += 1,
                o => panic!("{o:?}"),
            }
        }
        assert!(
            relayed as f64 <= l.per_source.burst + l.per_source.per_sec,
            "{relayed}"
        );
        let max_cookies = l.cookie_replies_per_source.burst + l.cookie_replies_per_source.per_sec;
        assert!(cookies as f64 <= max_cookies, "{cookies}");
        assert_eq!(relayed + cookies + limited, 20_000);
        // Strangers under load cost no scan and no cookie.
        let checked = r.keys_checked();
        let (o, a) = r.on_initiation(
            &event(ep(99, 9), initiation(&key(2), 1)),
            now + Duration::from_millis(200),
        );
        assert_eq!((o, a), (Outcome::RateLimited, None));
        assert_eq!(
            r.keys_checked(),
            checked,
            "a stranger under load cost mac1 checks"
        );
        // Another spoke still gets a cookie, and with it through.
        r.set_endpoint(3, Some(ep(3, 1003)));
        let t = now + Duration::from_millis(200);
        let f = initiation(&key(3), 5);
        let (o, a) = r.on_initiation(&event(ep(2, 1002), f), t);
        let frame = match (o, a) {
            (Outcome::CookieSent, Some(Action::Reply { frame, .. })) => frame,
            other => panic!("{other:?}"),
        };
        let cookie = CookieKey::for_public_key(&key(3))
            .open(
                &frame,
                &f[INITIATION_MAC1_OFF..INITIATION_MAC1_OFF + MAC_LEN],
            )
            .unwrap();
        let mut g = initiation(&key(3), 6);
        let m = crate::core::keys::mac2(&cookie, &g);
        g[132..].copy_from_slice(&m);
        let (o, _) = r.on_initiation(&event(ep(2, 1002), g), t);
        assert_eq!(o, Outcome::Relayed { src: 2, dst: 3 });
    }

    #[test]
    fn endpoint_moves_between_spokes() {
        let mut r = router();
        // Spoke 2's NAT mapping is reused by spoke 3: newest authentication wins.
        assert!(r.set_endpoint(3, Some(ep(2, 1002))));
        assert_eq!(r.slot_of(&ep(2, 1002)), Some(3));
        assert_eq!(r.endpoint(2), None);
        // Roaming: spoke 1 moves; the old endpoint no longer maps to it.
        assert!(r.set_endpoint(1, Some(ep(1, 2001))));
        assert_eq!(r.slot_of(&ep(1, 1001)), None);
        assert_eq!(r.slot_of(&ep(1, 2001)), Some(1));
        assert!(!r.set_endpoint(1, Some(ep(1, 2001))));
        r.remove_spoke(1);
        assert_eq!(r.slot_of(&ep(1, 2001)), None);
    }

    #[test]
    fn recent_destinations_are_found_first_and_bounded() {
        let mut r = router();
        for s in 10..30 {
            r.set_spoke(s, &key(s as u8));
            r.set_endpoint(s, Some(ep(s as u8, 5000)));
        }
        let now = Instant::now();
        for s in 10..30u32 {
            let (o, _) = r.on_initiation(&event(ep(1, 1001), initiation(&key(s as u8), s)), now);
            assert_eq!(o, Outcome::Relayed { src: 1, dst: s });
        }
        let recent = r.recent.get(&1).unwrap();
        assert_eq!(recent.len(), RECENT_PER_SOURCE);
        assert_eq!(recent[0], 29);
        assert_eq!(
            r.match_mac1(Some(1), &initiation(&key(12), 1)),
            Some(Target::Spoke(12))
        );
    }
}
