//! The running hub: the IO shell around the sans-IO core. [`run`] sets it
//! up and runs the event loop; [`Hub`] owns the datapath, the hub's
//! WireGuard, the handshake router and the raw sender, and moves events
//! between them; `api` serves its state over HTTP.

mod api;
pub mod console;
pub mod dns;
pub mod enroll;
mod fallback_reader;
pub mod metrics;
pub mod peers;
pub mod publish;
mod replica;
mod run;

pub use api::{BackendStatus, HubStatus, ServiceStatus, SpokeStatus};
pub use run::{
    ADDRESS_REFRESH, ENDPOINT_REFRESH, HEALTH_SAMPLE, REGISTRY_POLL, RunConfig, SESSION_SWEEP, run,
};

use std::collections::HashMap;
use std::time::{Duration, Instant, SystemTime};

use relay_common::wire::{INITIATION_LEN, MSG_RESPONSE, MSG_TRANSPORT, RECEIVER_OFF};
use relay_common::{Endpoint, InitiationEvent, ProofEvent};

use crate::core::fallback_frame;
use crate::core::health::{SpokeHealth, Thresholds};
use crate::core::outcome::InitiationResult;
use crate::core::policy::PolicyError;
use crate::core::policy::SlotPolicy;
use crate::core::proof::{Proven, Prover};
use crate::core::reconcile::{Op, Reconciler, SlotChange};
use crate::core::registry::Registry;
use crate::core::router::{Action, Outcome, Router};
use crate::core::sessions;
use crate::datapath::{Datapath, ktime_ns};
use crate::hub::metrics::Metrics;
use crate::io::hub_wg::HubWg;
use crate::io::sender::RawSender;
use crate::store::backend::Polled;
use crate::store::etcd::EtcdError;
use crate::store::policy::PolicyWatch;

/// Spokes probed for one initiation from an unknown source.
pub const PROBES_PER_INITIATION: usize = 4;
/// The session table is re-read for an unknown receiver index at most this
/// often (a full map walk).
pub const RECEIVERS_REREAD: Duration = Duration::from_secs(2);

/// How often the hub's WireGuard endpoints are re-read without a reason
/// (see [`Hub::endpoints_due`]): every tick ([`ENDPOINT_REFRESH`]) for
/// small hubs, then 3 ms per spoke (30 s at 10,000 spokes), at most
/// [`ENDPOINT_READ_MAX`]. What it still catches alone: an endpoint whose
/// handshake aged out (after 9 minutes), and the last handshake times
/// `status` shows (on a big hub up to this period old). At 10,000 spokes
/// a read every 10 s cost wireguard-go 0.4 % of a core.
pub fn endpoint_read_period(spokes: usize) -> Duration {
    (Duration::from_millis(3) * u32::try_from(spokes).unwrap_or(u32::MAX))
        .clamp(ENDPOINT_REFRESH, ENDPOINT_READ_MAX)
}

pub const ENDPOINT_READ_MAX: Duration = Duration::from_secs(30);

/// How often the health pass reads every spoke's counters: each
/// [`HEALTH_SAMPLE`] for up to 3,333 spokes, then 300 us per spoke (3 s at
/// 10,000), at most [`HEALTH_SAMPLE_MAX`]. The read copies every slot's
/// per-CPU counters out of the kernel (72 bytes per spoke and CPU) and
/// feeds each spoke's tracker: at 10,000 idle spokes, once a second, about
/// a third of the controller's 0.8 % of a core. Health states, the
/// per-spoke byte counts of status and metrics, and the states UDP gateway
/// services follow lag by up to this period; health thresholds are
/// PersistentKeepalive multiples (25 s by default).
pub fn health_sample_period(spokes: usize) -> Duration {
    (Duration::from_micros(300) * u32::try_from(spokes).unwrap_or(u32::MAX))
        .clamp(HEALTH_SAMPLE, HEALTH_SAMPLE_MAX)
}

pub const HEALTH_SAMPLE_MAX: Duration = Duration::from_secs(5);

/// What the hub knows about one registered spoke.
pub(crate) struct SpokeMeta {
    pub(crate) name: String,
    pub(crate) address: std::net::Ipv4Addr,
    pub(crate) public_key: wireguard_control::Key,
    pub(crate) health: SpokeHealth,
    pub(crate) last_handshake: Option<SystemTime>,
    /// Relayed bytes in and out at the last health pass, and the rates
    /// between the last two (the console's).
    pub(crate) relayed: crate::core::history::SpokeRates,
}

/// Facts about this hub for `/v1/hub`.
pub(crate) struct HubFacts {
    pub(crate) public_key: String,
    pub(crate) hub_public_key: wireguard_control::Key,
    pub(crate) net: crate::core::registry::TunnelNet,
    /// PersistentKeepalive the spokes use (and their peer lists carry).
    pub(crate) keepalive: u16,
    pub(crate) address: String,
    pub(crate) port: u16,
    pub(crate) iface: String,
    pub(crate) wg_iface: String,
    pub(crate) started: Instant,
}

/// The store's state as the hub last saw it.
pub(crate) struct StoreStatus {
    /// `dir` or `etcd`.
    pub(crate) backend: &'static str,
    /// The state directory or `etcd://.../PREFIX/`.
    pub(crate) location: String,
    /// The last poll answered.
    pub(crate) up: bool,
    /// Why the last poll failed.
    pub(crate) error: Option<String>,
}

/// The running hub: the sans-IO parts and the IO adapters they drive.
pub(crate) struct Hub {
    pub(crate) router: Router,
    pub(crate) sender: RawSender,
    pub(crate) metrics: Metrics,
    /// Registered slots and the endpoints installed in the maps.
    pub(crate) slots: Reconciler,
    pub(crate) registry_stamp: Option<u64>,
    /// The registry as last applied.
    pub(crate) registry: Registry,
    /// The policy, polled with the registry.
    pub(crate) policy: PolicyWatch,
    /// Whether the store answers (etcd may go away; the hub relays on).
    pub(crate) store: StoreStatus,
    pub(crate) spokes: HashMap<u32, SpokeMeta>,
    pub(crate) thresholds: Thresholds,
    pub(crate) facts: HubFacts,
    /// Handshakes in the hub's name that prove moved endpoints.
    pub(crate) prover: Prover,
    /// Endpoints proven by the prover, per slot, and when: they stand until
    /// the hub's WireGuard reports another authenticated endpoint.
    pub(crate) proven: HashMap<u32, (Endpoint, Instant)>,
    /// When the hub's WireGuard endpoints were last re-read, and whether a
    /// frame from an unknown source asked for it sooner (see
    /// [`Hub::endpoints_due`]).
    pub(crate) endpoints_read: Instant,
    pub(crate) endpoints_asked: bool,
    /// When the health pass last read the counters (see
    /// [`health_sample_period`]).
    pub(crate) health_read: Option<Instant>,
    /// Receiver index -> the slot that sends frames carrying it (from the
    /// session table; see [`Hub::sender_of`]).
    pub(crate) receivers: HashMap<u32, u32>,
    pub(crate) receivers_read: Option<Instant>,
    /// Rotates the first-contact candidates between retries.
    pub(crate) probe_turn: usize,
    /// Hub-to-hub replication of the relay tables.
    pub(crate) replication: replica::Replication,
    /// The literal IPs of the saved endpoints (from the store): which of
    /// the interface's addresses are the hub's.
    pub(crate) endpoint_ips: Vec<std::net::IpAddr>,
    /// Hub mesh: this hub's name among the registry's hubs (`--hub-name`),
    /// and the slots homed on peer hubs with their endpoints there.
    pub(crate) mesh_name: Option<String>,
    /// Hub mesh: the spokes homed here, slot -> mesh index.
    pub(crate) local_mesh: HashMap<u32, u16>,
    pub(crate) remote: HashMap<u32, Endpoint>,

    // Fields drop in order: detach XDP first, then remove the interface.
    pub(crate) datapath: Datapath,
    /// Egress: relayhub's nftables table for the exit users.
    pub(crate) egress: crate::io::egress::EgressTable,
    /// Published services: listeners, proxies and health checks.
    pub(crate) publisher: publish::Publisher,
    /// The DNS zone served on the tunnel address (`None`: DNS is off).
    pub(crate) names: Option<(String, dns::Names)>,
    /// Recent throughput, drops and spoke rates for the console.
    pub(crate) history: crate::core::history::History,
    /// Every slot's counters from the last health pass.
    pub(crate) slot_table: crate::datapath::SlotTable,
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
            self.prover.forget(c.slot());
            self.proven.remove(&c.slot());
            tracing::info!(slot = c.slot(), "spoke removed from the relay");
        }
        self.apply_ops(&ops)?;
        for s in reg.spokes() {
            self.router.set_spoke(s.id, &s.public_key.0);
        }
        // Mesh: the slots homed elsewhere get their home hub as endpoint
        // (static: no handshake with this hub authenticates them) and are
        // marked remote in the maps; the rest are this hub's own.
        let me = self.mesh_name.as_deref();
        let remote = crate::core::mesh::remote_slots(reg, me);
        let was_remote: Vec<u32> = self
            .remote
            .keys()
            .filter(|s| !remote.contains_key(s))
            .copied()
            .collect();
        for slot in was_remote {
            // Homed here now: its endpoint comes from the hub's WireGuard.
            self.router.set_endpoint(slot, None);
        }
        for (&slot, &ep) in &remote {
            self.router.set_endpoint(slot, Some(ep));
        }
        let peers: Vec<(String, std::net::IpAddr)> = reg
            .hubs()
            .iter()
            .filter(|h| Some(h.name.as_str()) != me)
            .map(|h| (h.name.clone(), h.endpoint.ip()))
            .collect();
        self.datapath.set_mesh_peers(&peers)?;
        let homes: HashMap<u32, &str> = reg
            .spokes()
            .iter()
            .filter_map(|s| Some((s.id, s.home.as_deref()?)))
            .collect();
        self.datapath.set_remote_slots(
            remote
                .keys()
                .map(|&slot| {
                    let peer = homes.get(&slot).map_or(0, |h| self.datapath.mesh_peer(h));
                    (slot, peer)
                })
                .collect(),
        );
        let local = crate::core::mesh::local_indices(reg, me);
        self.datapath.set_local_mesh(local.clone())?;
        let base = crate::core::mesh::own_base(reg, me);
        self.router.set_mesh_ports(
            base,
            self.facts.port,
            local.iter().map(|(&slot, &i)| (i, slot)).collect(),
        );
        let reindexed = local != self.local_mesh;
        self.local_mesh = local;
        if base != self.datapath.mesh_base() {
            self.datapath.set_mesh_base(base)?;
            tracing::info!(mesh_base = base, hub = ?me, "hub mesh ports");
        }
        // Only when the placement changed: at a takeover the router has
        // no endpoints yet when this runs (they come from the maps just
        // after), and mirroring it then would empty the maps.
        let moved = remote != self.remote || reindexed;
        self.remote = remote;
        if moved {
            self.install_endpoints()?;
        }
        let mut old = std::mem::take(&mut self.spokes);
        for s in reg.spokes() {
            // Health history survives unless the slot now names another key.
            let kept = old.remove(&s.id).filter(|m| m.public_key == s.public_key);
            let (health, last_handshake, relayed) = kept
                .map(|m| (m.health, m.last_handshake, m.relayed))
                .unwrap_or_default();
            self.spokes.insert(
                s.id,
                SpokeMeta {
                    name: s.name.clone(),
                    address: s.address,
                    public_key: s.public_key.clone(),
                    health,
                    last_handshake,
                    relayed,
                },
            );
        }
        // Names may have moved between slots.
        self.apply_policy();
        // The hub's own WireGuard peers with its own spokes only: the
        // others dial their home hub.
        let peers: Vec<_> = reg
            .spokes()
            .iter()
            .filter(|s| !self.remote.contains_key(&s.id))
            .map(|s| (s.public_key.clone(), s.address))
            .collect();
        self.wg.sync_peers(&peers)?;
        self.registry = reg.clone();
        self.apply_egress();
        self.apply_services();
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

    /// Carry out the reconciler's map operations. A standby leaves its
    /// tables to the replica: its own WireGuard sees no spoke (the shared
    /// address is elsewhere), and the active's changes arrive as deltas.
    pub(crate) fn apply_ops(&mut self, ops: &[Op]) -> anyhow::Result<()> {
        if !self.replication.roles.owns_tables() {
            return Ok(());
        }
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
        self.apply_egress();
        for k in &gone {
            self.datapath.remove_session(k);
        }
        self.metrics.policy_closed_sessions += gone.len() as u64;
        if !gone.is_empty() {
            tracing::info!(closed = gone.len(), "policy: relayed sessions closed");
        }
    }

    /// Make the egress table match the policy's exit users among this
    /// hub's own spokes (a spoke exits through its home hub).
    pub(crate) fn apply_egress(&mut self) {
        let policy = self.policy.current();
        let users: std::collections::BTreeSet<std::net::Ipv4Addr> = self
            .registry
            .spokes()
            .iter()
            .filter(|s| !self.remote.contains_key(&s.id))
            .filter(|s| policy.is_some_and(|p| p.may_exit(&s.name)))
            .map(|s| s.address)
            .collect();
        let users6 = users
            .iter()
            .filter_map(|a| self.facts.net.addr6(*a))
            .collect();
        let want = crate::core::egress::Egress {
            wg_iface: self.facts.wg_iface.clone(),
            users,
            users6,
            ports: crate::core::egress::masquerade_ports(
                self.datapath.mesh_base(),
                self.facts.port,
            ),
        };
        if let Err(e) = self.egress.apply(want) {
            self.metrics.egress_errors += 1;
            tracing::error!(
                error = format!("{e:#}"),
                "egress: the exit users' table is not as the policy says"
            );
        }
    }

    /// Published services and DNS names follow the registry. A service's
    /// backends are this hub's own spokes (in a mesh, each hub proxies to
    /// the spokes homed on it).
    pub(crate) fn apply_services(&mut self) {
        let local: HashMap<&str, std::net::Ipv4Addr> = self
            .registry
            .spokes()
            .iter()
            .filter(|s| !self.remote.contains_key(&s.id))
            .map(|s| (s.name.as_str(), s.address))
            .collect();
        self.publisher
            .set_services(&self.registry, |n| local.get(n).copied());
        if let Some((origin, names)) = &self.names {
            match crate::core::names::Zone::new(origin, &self.registry, &self.facts.net) {
                Ok(z) => names.update(z),
                Err(e) => tracing::error!(error = %e, "DNS zone"),
            }
        }
    }

    /// Offer the stored policy text (as just read); apply it if it
    /// changed. An invalid policy keeps the previous one in force.
    pub(crate) fn offer_policy(&mut self, text: Result<Option<String>, PolicyError>) {
        match text.and_then(|t| self.policy.offer(t)) {
            Ok(false) => {}
            Ok(true) => {
                tracing::info!(
                    source = self.policy.location(),
                    policy = if self.policy.current().is_some() {
                        "set"
                    } else {
                        "allow all"
                    },
                    "policy applied"
                );
                self.apply_policy();
            }
            Err(e) => tracing::error!(error = %e, "policy not applied; keeping the previous one"),
        }
    }

    /// Apply one poll of the store. An unreachable store changes nothing
    /// but the hub's health: it relays on with what it has, and the next
    /// poll that answers brings it up to date.
    pub(crate) fn on_store_poll(&mut self, polled: Result<Polled, EtcdError>) {
        let polled = match polled {
            Ok(p) => p,
            Err(e) => {
                if self.store.up {
                    tracing::warn!(
                        store = %self.store.location,
                        error = %e,
                        "store unreachable: relaying with the last registry and policy until it answers"
                    );
                }
                self.store.up = false;
                self.store.error = Some(e.to_string());
                return;
            }
        };
        if !self.store.up {
            tracing::info!(store = %self.store.location, "store reachable again");
            self.store.up = true;
            self.store.error = None;
        }
        if let Some(reg) = polled.registry
            && self.registry_stamp != Some(polled.stamps.registry)
        {
            match reg {
                Ok(reg) => {
                    self.registry_stamp = Some(polled.stamps.registry);
                    if let Err(e) = self.apply_registry(&reg) {
                        tracing::error!(error = %e, "applying the registry");
                    }
                }
                Err(e) => {
                    tracing::error!(error = %e, "registry unreadable; keeping the previous one")
                }
            }
        }
        if let Some(text) = polled.policy {
            self.offer_policy(text);
        }
        self.endpoint_ips = polled.endpoint_ips;
    }

    /// Re-read the hub's authenticated endpoints and mirror them into the
    /// router and the BPF maps.
    pub(crate) fn refresh_endpoints(&mut self) -> anyhow::Result<()> {
        let now = Instant::now();
        self.endpoints_read = now;
        self.endpoints_asked = false;
        let peers = self.wg.peers()?;
        for p in &peers {
            let Some(slot) = self.slots.slot_of(&p.public_key.0) else {
                continue;
            };
            let endpoint = self.merge_proven(slot, p.endpoint, now);
            if let Some(m) = self.spokes.get_mut(&slot) {
                m.last_handshake = p.last_handshake;
                m.health.on_endpoint(endpoint);
            }
            if self.router.set_endpoint(slot, endpoint) {
                tracing::info!(
                    slot,
                    endpoint = ?endpoint.and_then(|e| crate::io::hub_wg::to_socket_addr(&e)),
                    "spoke endpoint"
                );
            }
        }
        self.install_endpoints()
    }

    /// Whether to re-read the hub's WireGuard endpoints on this tick. A
    /// read costs the controller and the WireGuard implementation
    /// O(spokes) (a full peer dump: ~8 us per spoke and read here with
    /// wireguard-go), so it is not done every tick for a big idle hub:
    /// whenever a frame came from an unknown source (a new or roaming
    /// spoke: an initiation or a proof event) or an initiation is held,
    /// otherwise every [`endpoint_read_period`] (rekeys and keepalives
    /// from known endpoints change nothing).
    pub(crate) fn endpoints_due(&self, now: Instant) -> bool {
        self.endpoints_asked
            || self.router.held_len() != 0
            || now.saturating_duration_since(self.endpoints_read)
                >= endpoint_read_period(self.spokes.len())
    }

    /// Mirror the router's endpoints into the BPF maps.
    fn install_endpoints(&mut self) -> anyhow::Result<()> {
        let router = &self.router;
        let ops = self
            .slots
            .endpoints(router.slots().map(|s| (s, router.endpoint(s))));
        self.apply_ops(&ops)
    }

    /// The endpoint to use for `slot`, given what the hub's WireGuard
    /// reports: a proven endpoint stands while WireGuard reports none (a
    /// client that has not handshaken with the hub yet) or the same one;
    /// another endpoint from WireGuard is newer (it authenticated a frame
    /// from there after the proof pointed it at the proven one).
    fn merge_proven(&mut self, slot: u32, wg: Option<Endpoint>, now: Instant) -> Option<Endpoint> {
        let Some(&(ep, at)) = self.proven.get(&slot) else {
            return wg;
        };
        if now.saturating_duration_since(at) >= crate::io::hub_wg::ENDPOINT_TRUST
            || wg.is_some_and(|w| w != ep)
        {
            self.proven.remove(&slot);
            return wg;
        }
        Some(ep)
    }

    /// One initiation copy from the fast path; true if a refresh was asked
    /// for. An initiation from an unknown source is held by the router;
    /// the hub then asks the likely senders to prove they are there.
    pub(crate) fn on_initiation(&mut self, ev: &InitiationEvent, now: Instant) -> bool {
        // A new or roaming spoke: the hub's WireGuard learns its endpoint
        // from this initiation (or its first frame) if it is for the hub.
        if self.router.slot_of(&ev.src).is_none() {
            self.endpoints_asked = true;
        }
        let (o, a) = self.router.on_initiation(ev, now);
        let refresh = self.handle(o, a);
        if o == Outcome::ToHub {
            self.prover.on_hub_initiation(ev.src, now);
        }
        if o == Outcome::Held && self.router.slot_of(&ev.src).is_none() {
            self.prover.settle(ev.src, ev.dst, now);
        }
        refresh
    }

    /// When the next held initiation's sender is due to be probed.
    pub(crate) fn next_probe_due(&self) -> Option<Instant> {
        self.prover.next_settled()
    }

    /// Probe for the senders of held initiations that have settled (see
    /// `core::proof`): those still unknown, still holding an initiation
    /// and not handshaking with the hub's own WireGuard.
    pub(crate) fn probe_settled(&mut self, now: Instant) {
        while let Some((src, hub)) = self.prover.take_settled(now) {
            if self.router.slot_of(&src).is_some()
                || self.prover.handshaking(&src, now)
                || !self.prover.has_room(&src.addr, now)
            {
                continue;
            }
            let Some(dst) = self.router.held_destination(&src) else {
                continue;
            };
            self.probe_turn = self.probe_turn.wrapping_add(PROBES_PER_INITIATION);
            let candidates =
                self.router
                    .initiator_candidates(&src, dst, PROBES_PER_INITIATION, self.probe_turn);
            for slot in candidates {
                self.probe(slot, src, hub, now);
            }
        }
    }

    /// A frame from an unknown source, reported by the fast path: a
    /// transport frame names its sender through the session table (a spoke
    /// whose NAT mapping moved), a response may answer a probe.
    pub(crate) fn on_proof_event(&mut self, ev: &ProofEvent, now: Instant) {
        // The hub's WireGuard may have authenticated this source too.
        self.endpoints_asked = true;
        match ev.frame[0] {
            MSG_RESPONSE => {
                if let Some(p) = self.prover.on_response(&ev.src, &ev.frame, now) {
                    self.on_proven(p, now);
                }
            }
            MSG_TRANSPORT => {
                let receiver = u32::from_le_bytes(
                    ev.frame[RECEIVER_OFF..RECEIVER_OFF + 4]
                        .try_into()
                        .expect("4 bytes"),
                );
                if !self.prover.handshaking(&ev.src, now)
                    && let Some(slot) = self.sender_of(receiver, now)
                    && self.router.endpoint(slot) != Some(ev.src)
                {
                    self.probe(slot, ev.src, ev.dst, now);
                }
            }
            _ => {}
        }
        self.metrics.proofs = self.prover.stats;
    }

    /// The slot whose frames carry `receiver`. A miss re-reads the session
    /// table, at most every [`RECEIVERS_REREAD`]: sessions the fast path
    /// learned itself (from responses) are not otherwise known here.
    fn sender_of(&mut self, receiver: u32, now: Instant) -> Option<u32> {
        if let Some(&s) = self.receivers.get(&receiver) {
            return Some(s);
        }
        if self
            .receivers_read
            .is_some_and(|t| now.saturating_duration_since(t) < RECEIVERS_REREAD)
        {
            return None;
        }
        self.read_receivers(now);
        self.receivers.get(&receiver).copied()
    }

    fn read_receivers(&mut self, now: Instant) {
        let entries = self.datapath.sessions();
        self.receivers = sessions::senders_by_receiver(&entries);
        self.receivers_read = Some(now);
    }

    /// Send a probe to `candidate`, if the prover's bounds allow.
    fn probe(&mut self, slot: u32, candidate: Endpoint, hub: Endpoint, now: Instant) {
        let Some(key) = self.spokes.get(&slot).map(|m| m.public_key.0) else {
            return;
        };
        let Some(p) = self.prover.probe(slot, &key, candidate, hub, now) else {
            self.metrics.proofs = self.prover.stats;
            return;
        };
        self.metrics.proofs = self.prover.stats;
        match self.sender.send(&p.from, &p.to, &p.frame) {
            Ok(()) => {
                tracing::debug!(slot, to = ?crate::io::hub_wg::to_socket_addr(&p.to), "endpoint probe sent")
            }
            Err(e) => {
                self.metrics.send_errors += 1;
                tracing::debug!(error = %e, "sending an endpoint probe");
            }
        }
    }

    /// A spoke answered a probe: move its endpoint (maps, router, the hub's
    /// own WireGuard) and route what waited for it.
    fn on_proven(&mut self, p: Proven, now: Instant) {
        let Proven { slot, endpoint } = p;
        self.proven.insert(slot, (endpoint, now));
        let addr = crate::io::hub_wg::to_socket_addr(&endpoint);
        tracing::info!(slot, endpoint = ?addr, "spoke endpoint proven");
        if let (Some(m), Some(addr)) = (self.spokes.get(&slot), addr)
            && let Err(e) = self.wg.set_endpoint(&m.public_key, addr)
        {
            tracing::warn!(error = %e, slot, "pointing the hub's WireGuard at a proven endpoint");
        }
        if let Some(m) = self.spokes.get_mut(&slot) {
            m.health.on_endpoint(Some(endpoint));
        }
        self.router.set_endpoint(slot, Some(endpoint));
        if let Err(e) = self.install_endpoints() {
            tracing::warn!(error = %e, "installing a proven endpoint");
        }
        self.retry_held();
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
                mut from,
                to,
                frame,
            }) => {
                let (key, mut value) = session;
                // Responder key.src_slot, initiator value.dst_slot: towards
                // a peer hub the initiation leaves from the initiator's
                // mesh port; towards a spoke from the hub port.
                let Some(port) = crate::core::mesh::forward_port(
                    self.facts.port,
                    self.datapath.mesh_base(),
                    self.local_mesh.get(&value.dst_slot).copied().unwrap_or(0),
                    self.remote.contains_key(&value.dst_slot),
                    self.remote.contains_key(&key.src_slot),
                ) else {
                    tracing::debug!(?key, "initiation between two remote spokes: not forwarded");
                    return false;
                };
                from.port = port;
                value.last_seen_ns = ktime_ns();
                // Frames from the responder carry the initiator's index.
                self.receivers.insert(key.receiver, key.src_slot);
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
    pub(crate) fn refresh_hub_addresses(&mut self) {
        let now = match crate::io::netinfo::hub_addresses(self.datapath.iface(), &self.endpoint_ips)
        {
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
                self.publisher.set_public(v4, v6);
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

    /// Write what the replica received into the maps (standby).
    pub(crate) fn apply_replica_ops(&mut self, ops: &[crate::core::replica::MapOp]) {
        use crate::core::replica::MapOp;
        for op in ops {
            let r = match *op {
                MapOp::Endpoint { slot, old, new } => {
                    self.datapath.set_spoke_endpoint(slot, old, new)
                }
                MapOp::Session(key, s) => self.datapath.insert_session(
                    key,
                    relay_common::SessionValue {
                        dst_slot: s.dst_slot,
                        flags: s.flags,
                        // Our clock: the active's means nothing here.
                        last_seen_ns: ktime_ns(),
                    },
                ),
                MapOp::NoSession(key) => {
                    self.datapath.remove_session(&key);
                    Ok(())
                }
            };
            if let Err(e) = r {
                tracing::warn!(error = %e, ?op, "replication: map write");
            }
        }
    }

    pub(crate) fn sweep_sessions(&mut self) {
        // A standby's entries expire when the active's do (as removals).
        if !self.replication.roles.owns_tables() {
            return;
        }
        let live = self.slots.live_slots();
        let entries = self.datapath.sessions();
        let gone = sessions::sweep(&entries, ktime_ns(), &live);
        for k in &gone {
            self.datapath.remove_session(k);
        }
        self.read_receivers(Instant::now());
        self.prover.expire(Instant::now());
        self.metrics.proofs = self.prover.stats;
        if !gone.is_empty() {
            tracing::debug!(expired = gone.len(), "session sweep");
        }
    }

    /// One console sample: relay totals, drops by reason, spoke rates.
    pub(crate) fn sample_history(&mut self) {
        let at = self.facts.started.elapsed().as_secs_f64();
        let x = self.datapath.counters();
        let totals = crate::core::history::Totals {
            packets: x[relay_common::counter::RELAYED_PACKETS as usize]
                + self.metrics.userspace_packets,
            bytes: x[relay_common::counter::RELAYED_BYTES as usize] + self.metrics.userspace_bytes,
            drops: relay_common::counter::DROP_REASONS
                .iter()
                .zip(x)
                .filter_map(|(r, v)| Some(((*r)?, v)))
                .collect(),
        };
        self.history.push(at, totals);
    }

    /// The slot range that covers every registered spoke (what a read of
    /// all spokes' counters asks for).
    pub(crate) fn spoke_slots_end(&self) -> u32 {
        self.spokes.keys().max().map_or(0, |s| s + 1)
    }

    /// Whether the health pass is due (see [`health_sample_period`]).
    pub(crate) fn health_due(&self, now: Instant) -> bool {
        self.health_read.is_none_or(|at| {
            // Half a tick early is on time (the ticks come every
            // HEALTH_SAMPLE, never exactly a period apart).
            now.saturating_duration_since(at) + HEALTH_SAMPLE / 2
                >= health_sample_period(self.spokes.len())
        })
    }

    /// Feed every spoke's counters to its health tracker (one batch read
    /// of the slot counters).
    pub(crate) fn observe_health(&mut self) {
        self.health_read = Some(Instant::now());
        self.datapath
            .read_slot_counters(self.spoke_slots_end(), &mut self.slot_table);
        let now = ktime_ns();
        let at = self.facts.started.elapsed().as_secs_f64();
        // Only UDP services without a probe need the spokes' states.
        let follow = self.publisher.follows_spokes();
        let mut up = HashMap::new();
        for (&slot, m) in self.spokes.iter_mut() {
            let c = self.slot_table.get(slot);
            m.health.observe(&c, now);
            m.relayed.sample(at, (c.rx_bytes, c.tx_bytes));
            if follow {
                let state = self
                    .thresholds
                    .classify(crate::core::health::silence(c.last_rx_ns, now));
                up.insert(m.name.clone(), state == crate::core::health::State::Up);
            }
        }
        if follow {
            self.publisher
                .follow_spokes(|n| up.get(n).copied().unwrap_or(false));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn health_samples_slow_down_with_spokes_only() {
        assert_eq!(health_sample_period(0), HEALTH_SAMPLE);
        assert_eq!(health_sample_period(1_000), HEALTH_SAMPLE);
        assert_eq!(health_sample_period(3_333), HEALTH_SAMPLE);
        assert_eq!(health_sample_period(5_000), Duration::from_millis(1500));
        assert_eq!(health_sample_period(10_000), Duration::from_secs(3));
        assert_eq!(health_sample_period(100_000), HEALTH_SAMPLE_MAX);
        assert_eq!(health_sample_period(usize::MAX), HEALTH_SAMPLE_MAX);
    }

    #[test]
    fn endpoint_reads_slow_down_with_spokes_only() {
        assert_eq!(endpoint_read_period(0), ENDPOINT_REFRESH);
        assert_eq!(endpoint_read_period(100), Duration::from_millis(300));
        assert_eq!(endpoint_read_period(50), ENDPOINT_REFRESH);
        assert_eq!(endpoint_read_period(1_000), Duration::from_secs(3));
        assert_eq!(endpoint_read_period(10_000), ENDPOINT_READ_MAX);
        assert_eq!(endpoint_read_period(usize::MAX), ENDPOINT_READ_MAX);
    }
}
