//! The running hub: the IO shell around the sans-IO core. [`run`] sets it
//! up and runs the event loop; [`Hub`] owns the datapath, the hub's
//! WireGuard, the handshake router and the raw sender, and moves events
//! between them; `api` serves its state over HTTP.

mod api;
mod fallback_reader;
pub mod metrics;
mod run;

pub use api::{HubStatus, SpokeStatus};
pub use run::{
    ADDRESS_REFRESH, ENDPOINT_REFRESH, HEALTH_SAMPLE, REGISTRY_POLL, RunConfig, SESSION_SWEEP, run,
};

use std::collections::HashMap;
use std::time::{Instant, SystemTime};

use relay_common::wire::INITIATION_LEN;

use crate::core::fallback_frame;
use crate::core::health::{SpokeHealth, Thresholds};
use crate::core::outcome::InitiationResult;
use crate::core::policy::SlotPolicy;
use crate::core::reconcile::{Op, Reconciler, SlotChange};
use crate::core::registry::Registry;
use crate::core::router::{Action, Outcome, Router};
use crate::core::sessions;
use crate::datapath::{Datapath, ktime_ns};
use crate::hub::metrics::Metrics;
use crate::io::hub_wg::HubWg;
use crate::io::sender::RawSender;
use crate::store::policy::PolicyWatch;

/// What the hub knows about one registered spoke.
pub(crate) struct SpokeMeta {
    pub(crate) name: String,
    pub(crate) address: std::net::Ipv4Addr,
    pub(crate) public_key: wireguard_control::Key,
    pub(crate) health: SpokeHealth,
    pub(crate) last_handshake: Option<SystemTime>,
}

/// Facts about this hub for `/v1/hub`.
pub(crate) struct HubFacts {
    pub(crate) public_key: String,
    pub(crate) address: String,
    pub(crate) port: u16,
    pub(crate) iface: String,
    pub(crate) wg_iface: String,
    pub(crate) started: Instant,
}

/// The running hub: the sans-IO parts and the IO adapters they drive.
pub(crate) struct Hub {
    pub(crate) router: Router,
    pub(crate) sender: RawSender,
    pub(crate) metrics: Metrics,
    /// Registered slots and the endpoints installed in the maps.
    pub(crate) slots: Reconciler,
    pub(crate) registry_stamp: Option<u64>,
    /// policy.json, polled with the registry.
    pub(crate) policy: PolicyWatch,
    pub(crate) spokes: HashMap<u32, SpokeMeta>,
    pub(crate) thresholds: Thresholds,
    pub(crate) facts: HubFacts,
    // Fields drop in order: detach XDP first, then remove the interface.
    pub(crate) datapath: Datapath,
    pub(crate) wg: HubWg,
}

impl Hub {
    /// Apply a (new) registry: clear slots that lost their key, hand every
    /// key to the router, keep health history where the key stayed, make
    /// the hub's WireGuard peers match.
    pub(crate) fn apply_registry(&mut self, reg: &Registry) -> anyhow::Result<()> {
        let (changes, ops) = self
            .slots
            .registry(reg.spokes().iter().map(|s| (s.public_key.0, s.id)));
        for c in &changes {
            match *c {
                // Same slot, new key: drop its state before re-keying.
                SlotChange::Rekeyed(slot) => {
                    self.router.set_endpoint(slot, None);
                }
                SlotChange::Removed(slot) => self.router.remove_spoke(slot),
            }
            tracing::info!(slot = c.slot(), "spoke removed from the relay");
        }
        self.apply_ops(&ops)?;
        for s in reg.spokes() {
            self.router.set_spoke(s.id, &s.public_key.0);
        }
        let mut old = std::mem::take(&mut self.spokes);
        for s in reg.spokes() {
            // Health history survives unless the slot now names another key.
            let kept = old.remove(&s.id).filter(|m| m.public_key == s.public_key);
            let (health, last_handshake) = kept
                .map(|m| (m.health, m.last_handshake))
                .unwrap_or_default();
            self.spokes.insert(
                s.id,
                SpokeMeta {
                    name: s.name.clone(),
                    address: s.address,
                    public_key: s.public_key.clone(),
                    health,
                    last_handshake,
                },
            );
        }
        // Names may have moved between slots.
        self.apply_policy();
        let peers: Vec<_> = reg
            .spokes()
            .iter()
            .map(|s| (s.public_key.clone(), s.address))
            .collect();
        self.wg.sync_peers(&peers)?;
        tracing::info!(spokes = reg.spokes().len(), "registry applied");
        Ok(())
    }

    /// After adopting pinned maps: clear slots the registry no longer has
    /// (removed while no controller ran), with their sessions.
    pub(crate) fn forget_unregistered(&mut self) -> anyhow::Result<()> {
        let (stale, ops) = self.slots.forget_unregistered();
        self.apply_ops(&ops)?;
        for slot in stale {
            tracing::info!(slot, "pinned slot no longer registered: removed");
        }
        Ok(())
    }

    /// Carry out the reconciler's map operations.
    pub(crate) fn apply_ops(&mut self, ops: &[Op]) -> anyhow::Result<()> {
        for op in ops {
            match *op {
                Op::Endpoint { slot, old, new } => {
                    self.datapath.set_spoke_endpoint(slot, old, new)?
                }
                Op::DropSessions { slot } => {
                    let entries = self.datapath.sessions();
                    for k in sessions::involving(&entries, slot) {
                        self.datapath.remove_session(&k);
                    }
                }
            }
        }
        Ok(())
    }

    /// Hand the policy (in slot terms) to the router and close the relayed
    /// sessions it no longer allows; WireGuard's re-handshakes between such
    /// spokes are then denied by the router.
    pub(crate) fn apply_policy(&mut self) {
        let names = self.spokes.iter().map(|(&s, m)| (s, m.name.clone()));
        let policy = SlotPolicy::new(self.policy.current(), names);
        let entries = self.datapath.sessions();
        let gone = sessions::denied(&entries, |a, b| policy.allows(a, b));
        self.router.set_policy(policy);
        for k in &gone {
            self.datapath.remove_session(k);
        }
        self.metrics.policy_closed_sessions += gone.len() as u64;
        if !gone.is_empty() {
            tracing::info!(closed = gone.len(), "policy: relayed sessions closed");
        }
    }

    /// Re-read policy.json; apply it if it changed. An invalid file keeps
    /// the previous policy in force.
    pub(crate) fn poll_policy(&mut self) {
        match self.policy.poll() {
            Ok(false) => {}
            Ok(true) => {
                tracing::info!(
                    file = %self.policy.store().path().display(),
                    policy = if self.policy.current().is_some() { "file" } else { "allow all" },
                    "policy applied"
                );
                self.apply_policy();
            }
            Err(e) => tracing::error!(error = %e, "policy not applied; keeping the previous one"),
        }
    }

    /// Re-read the hub's authenticated endpoints and mirror them into the
    /// router and the BPF maps.
    pub(crate) fn refresh_endpoints(&mut self) -> anyhow::Result<()> {
        let peers = self.wg.peers()?;
        for p in &peers {
            let Some(slot) = self.slots.slot_of(&p.public_key.0) else {
                continue;
            };
            if let Some(m) = self.spokes.get_mut(&slot) {
                m.last_handshake = p.last_handshake;
                m.health.on_endpoint(p.endpoint);
            }
            if self.router.set_endpoint(slot, p.endpoint) {
                tracing::info!(
                    slot,
                    endpoint = ?p.endpoint.and_then(|e| crate::io::hub_wg::to_socket_addr(&e)),
                    "spoke endpoint"
                );
            }
        }
        let router = &self.router;
        let ops = self
            .slots
            .endpoints(router.slots().map(|s| (s, router.endpoint(s))));
        self.apply_ops(&ops)
    }

    /// Carry out one routing decision; true if a refresh was asked for.
    pub(crate) fn handle(&mut self, outcome: Outcome, action: Option<Action>) -> bool {
        if let Some(Action::Forward {
            session: (key, value),
            ..
        }) = &action
            && !sessions::may_install(self.datapath.session(key).as_ref(), value.dst_slot)
        {
            // The initiator's sender index is another pair's live
            // receiver index at that destination: neither installed nor
            // forwarded (a real initiator retries with a fresh index).
            self.metrics.initiation(InitiationResult::IndexConflict);
            tracing::debug!(
                ?key,
                initiator = value.dst_slot,
                "initiation index in use by another session"
            );
            return false;
        }
        self.metrics.initiation(outcome.result());
        self.metrics.shield = self.router.shield_stats();
        match action {
            None => false,
            Some(Action::Refresh) => true,
            Some(Action::Reply { from, to, frame }) => {
                if let Err(e) = self.sender.send(&from, &to, &frame) {
                    self.metrics.send_errors += 1;
                    tracing::debug!(error = %e, "sending cookie reply");
                }
                false
            }
            Some(Action::Forward {
                session,
                from,
                to,
                frame,
            }) => {
                let (key, mut value) = session;
                value.last_seen_ns = ktime_ns();
                if let Err(e) = self.datapath.insert_session(key, value) {
                    tracing::warn!(error = %e, "installing relay session");
                }
                match self.sender.send(&from, &to, &frame) {
                    Ok(()) => {
                        self.metrics.userspace_packets += 1;
                        self.metrics.userspace_bytes += INITIATION_LEN as u64;
                    }
                    Err(e) => {
                        self.metrics.send_errors += 1;
                        tracing::warn!(error = %e, "sending initiation to spoke");
                    }
                }
                tracing::debug!(?outcome, "initiation routed");
                false
            }
        }
    }

    /// One frame from the fast path's userspace fallback: send it on.
    pub(crate) fn relay_fallback(&mut self, sample: &[u8]) {
        let r = match fallback_frame::parse(sample) {
            Ok(r) => r,
            Err(e) => {
                self.metrics.fallback.malformed += 1;
                tracing::debug!(error = %e, "fallback sample");
                return;
            }
        };
        self.metrics.fallback.received(r.reason);
        match self.sender.send(&r.hub, &r.to, r.payload) {
            Ok(()) => {
                self.metrics.userspace_packets += 1;
                self.metrics.userspace_bytes += r.payload.len() as u64;
                self.metrics.fallback.sent(r.from_family, r.to.family);
            }
            Err(e) => {
                self.metrics.send_errors += 1;
                tracing::debug!(error = %e, "sending a fallback frame");
            }
        }
    }

    /// Re-read the hub's own addresses; install them where they changed.
    pub(crate) fn refresh_hub_addresses(&mut self, endpoint_ips: &[std::net::IpAddr]) {
        let now = match crate::io::netinfo::hub_addresses(self.datapath.iface(), endpoint_ips) {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(error = %e, "reading the hub's addresses");
                return;
            }
        };
        let before = self.datapath.hub_addresses();
        let Some((v4, v6)) = crate::core::reconcile::hub_addresses(before, now) else {
            return;
        };
        match self.datapath.set_hub_addresses(v4, v6) {
            Ok(()) => {
                self.sender.set_hub_addresses(v4, v6);
                tracing::info!(hub_v4 = ?v4, hub_v6 = ?v6, was = ?before, "hub addresses for cross-family relay changed");
            }
            Err(e) => tracing::warn!(error = %e, "installing the hub's addresses"),
        }
    }

    pub(crate) fn retry_held(&mut self) {
        if self.router.held_len() != 0 {
            for (o, a) in self.router.retry_held(Instant::now()) {
                self.handle(o, a);
            }
        }
        for _ in 0..self.router.take_superseded() {
            self.metrics.initiation(InitiationResult::Superseded);
        }
    }

    pub(crate) fn sweep_sessions(&mut self) {
        let live = self.slots.live_slots();
        let entries = self.datapath.sessions();
        let gone = sessions::sweep(&entries, ktime_ns(), &live);
        for k in &gone {
            self.datapath.remove_session(k);
        }
        if !gone.is_empty() {
            tracing::debug!(expired = gone.len(), "session sweep");
        }
    }

    /// Feed every spoke's counters to its health tracker (once a second:
    /// one map read per spoke).
    pub(crate) fn observe_health(&mut self) {
        let now = ktime_ns();
        for (&slot, m) in self.spokes.iter_mut() {
            let c = self.datapath.slot_counters(slot);
            m.health.observe(&c, now);
        }
    }
}
