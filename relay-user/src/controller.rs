//! The hub's run loop: the IO shell around the sans-IO parts. It owns the
//! datapath, the hub's WireGuard, the handshake router and the raw sender,
//! and moves events between them.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use anyhow::Context as _;
use aya::maps::{MapData, RingBuf};
use relay_common::wire::INITIATION_LEN;
use relay_common::{Endpoint, InitiationEvent};
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;
use tokio::signal::unix::{SignalKind, signal};

use crate::datapath::{AttachMode, Capacity, CrossPath, Datapath, IfaceLock, PinDir, ktime_ns};
use crate::fallback::{self, SAMPLE_MAX};
use crate::handshake::{Action, Outcome, Router};
use crate::health::{SpokeHealth, Thresholds};
use crate::hubwg::HubWg;
use crate::metrics::{Metrics, Snapshot};
use crate::policy::{PolicyStore, PolicyWatch, SlotPolicy};
use crate::registry::{Registry, RegistryStore, TunnelNet};
use crate::sender::RawSender;
use crate::state::StateDir;
use crate::status::{HubStatus, SpokeStatus};
use crate::{http, metrics, sessions};

/// How often the hub's authenticated endpoints are re-read. Roaming and
/// first contact wait on this, so it is short; a read is one UAPI/netlink
/// round trip.
pub const ENDPOINT_REFRESH: Duration = Duration::from_millis(200);
/// A stat(2) per poll; spokes added while the hub runs must be peers of
/// the hub before their first handshake arrives.
pub const REGISTRY_POLL: Duration = Duration::from_millis(250);
pub const SESSION_SWEEP: Duration = Duration::from_secs(10);
/// Health samples: one counter read per spoke each time.
pub const HEALTH_SAMPLE: Duration = Duration::from_secs(1);
/// The hub's own addresses (the source of cross-family frames) are re-read
/// this often: renumbering the underlay needs no restart.
pub const ADDRESS_REFRESH: Duration = Duration::from_secs(5);

pub struct RunConfig {
    pub state_dir: PathBuf,
    pub iface: String,
    pub port: u16,
    pub net: TunnelNet,
    pub wg_iface: String,
    pub metrics_addr: SocketAddr,
    pub xdp_mode: AttachMode,
    pub capacity: Capacity,
    /// PersistentKeepalive spokes use (health thresholds).
    pub keepalive: u16,
    /// Enable the kernel's BPF run-time statistics while running.
    pub bpf_stats: bool,
    /// bpffs directory for the pinned maps and XDP link (per interface
    /// below it); not on bpffs = nothing pinned.
    pub pin_dir: PathBuf,
    /// On SIGINT/SIGTERM leave XDP attached, the maps pinned and the hub's
    /// WireGuard up, for an upgrade or restart.
    pub keep_on_exit: bool,
    /// Which path relays between IPv4 and IPv6 spokes.
    pub cross_path: CrossPath,
}

/// What the hub knows about one registered spoke.
struct SpokeMeta {
    name: String,
    address: std::net::Ipv4Addr,
    public_key: wireguard_control::Key,
    health: SpokeHealth,
    last_handshake: Option<SystemTime>,
}

/// Facts about this hub for `/v1/hub`.
struct HubFacts {
    public_key: String,
    address: String,
    port: u16,
    iface: String,
    wg_iface: String,
    started: Instant,
}

struct Hub {
    router: Router,
    sender: RawSender,
    metrics: Metrics,
    /// Endpoint each slot has in the BPF maps.
    installed: HashMap<u32, Endpoint>,
    /// Registered spokes: public key -> slot.
    by_key: HashMap<[u8; 32], u32>,
    registry_stamp: Option<u64>,
    /// policy.json, polled with the registry.
    policy: PolicyWatch,
    spokes: HashMap<u32, SpokeMeta>,
    thresholds: Thresholds,
    facts: HubFacts,
    // Fields drop in order: detach XDP first, then remove the interface.
    datapath: Datapath,
    wg: HubWg,
}

impl Hub {
    fn apply_registry(&mut self, reg: &Registry) -> anyhow::Result<()> {
        let wanted: HashMap<[u8; 32], u32> = reg
            .spokes()
            .iter()
            .map(|s| (s.public_key.0, s.id))
            .collect();
        let live: HashSet<u32> = wanted.values().copied().collect();
        let removed: Vec<u32> = self
            .by_key
            .iter()
            .filter(|(k, slot)| wanted.get(*k) != Some(slot))
            .map(|(_, &slot)| slot)
            .collect();
        for slot in removed {
            if live.contains(&slot) {
                // Same slot, new key: drop its state before re-keying.
                self.router.set_endpoint(slot, None);
            } else {
                self.router.remove_spoke(slot);
            }
            let old = self.installed.remove(&slot);
            self.datapath.set_spoke_endpoint(slot, old, None)?;
            let entries = self.datapath.sessions();
            for k in sessions::involving(&entries, slot) {
                self.datapath.remove_session(&k);
            }
            tracing::info!(slot, "spoke removed from the relay");
        }
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
        self.by_key = wanted;
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
    fn forget_unregistered(&mut self) -> anyhow::Result<()> {
        let live: HashSet<u32> = self.by_key.values().copied().collect();
        let stale: Vec<u32> = self
            .installed
            .keys()
            .copied()
            .filter(|s| !live.contains(s))
            .collect();
        for slot in stale {
            let old = self.installed.remove(&slot);
            self.datapath.set_spoke_endpoint(slot, old, None)?;
            let entries = self.datapath.sessions();
            for k in sessions::involving(&entries, slot) {
                self.datapath.remove_session(&k);
            }
            tracing::info!(slot, "pinned slot no longer registered: removed");
        }
        Ok(())
    }

    /// Hand the policy (in slot terms) to the router and close the relayed
    /// sessions it no longer allows; WireGuard's re-handshakes between such
    /// spokes are then denied by the router.
    fn apply_policy(&mut self) {
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
    fn poll_policy(&mut self) {
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
    fn refresh_endpoints(&mut self) -> anyhow::Result<()> {
        let peers = self.wg.peers()?;
        for p in &peers {
            let Some(&slot) = self.by_key.get(&p.public_key.0) else {
                continue;
            };
            if let Some(m) = self.spokes.get_mut(&slot) {
                m.last_handshake = p.last_handshake;
                m.health.on_endpoint(p.endpoint);
            }
            if self.router.set_endpoint(slot, p.endpoint) {
                tracing::info!(
                    slot,
                    endpoint = ?p.endpoint.and_then(|e| crate::hubwg::to_socket_addr(&e)),
                    "spoke endpoint"
                );
            }
        }
        let slots: Vec<u32> = self.router.slots().collect();
        for slot in slots {
            let want = self.router.endpoint(slot);
            let have = self.installed.get(&slot).copied();
            if want != have {
                self.datapath.set_spoke_endpoint(slot, have, want)?;
                match want {
                    Some(e) => self.installed.insert(slot, e),
                    None => self.installed.remove(&slot),
                };
            }
        }
        Ok(())
    }

    /// Carry out one routing decision; true if a refresh was asked for.
    fn handle(&mut self, outcome: Outcome, action: Option<Action>) -> bool {
        if let Some(Action::Forward {
            session: (key, value),
            ..
        }) = &action
            && !sessions::may_install(self.datapath.session(key).as_ref(), value.dst_slot)
        {
            // The initiator's sender index is another pair's live
            // receiver index at that destination: neither installed nor
            // forwarded (a real initiator retries with a fresh index).
            self.metrics.initiation("index_conflict");
            tracing::debug!(
                ?key,
                initiator = value.dst_slot,
                "initiation index in use by another session"
            );
            return false;
        }
        self.metrics.initiation(outcome.label());
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
    fn relay_fallback(&mut self, sample: &[u8]) {
        let r = match fallback::parse(sample) {
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
    fn refresh_hub_addresses(&mut self, endpoint_ips: &[std::net::IpAddr]) {
        let now = match crate::netinfo::hub_addresses(self.datapath.iface(), endpoint_ips) {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(error = %e, "reading the hub's addresses");
                return;
            }
        };
        let before = self.datapath.hub_addresses();
        // A family whose address vanished keeps the last one: without an
        // address the program would accept relay traffic to any address of
        // that family (see parse::to_hub), and there is no new source.
        let (v4, v6) = (now.0.or(before.0), now.1.or(before.1));
        if (v4, v6) == before {
            return;
        }
        match self.datapath.set_hub_addresses(v4, v6) {
            Ok(()) => {
                self.sender.set_hub_addresses(v4, v6);
                tracing::info!(hub_v4 = ?v4, hub_v6 = ?v6, was = ?before, "hub addresses for cross-family relay changed");
            }
            Err(e) => tracing::warn!(error = %e, "installing the hub's addresses"),
        }
    }

    fn retry_held(&mut self) {
        if self.router.held_len() != 0 {
            for (o, a) in self.router.retry_held(Instant::now()) {
                self.handle(o, a);
            }
        }
        for _ in 0..self.router.take_superseded() {
            self.metrics.initiation(Outcome::Superseded.label());
        }
    }

    fn sweep_sessions(&mut self) {
        let live: HashSet<u32> = self.by_key.values().copied().collect();
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
    fn observe_health(&mut self) {
        let now = ktime_ns();
        for (&slot, m) in self.spokes.iter_mut() {
            let c = self.datapath.slot_counters(slot);
            m.health.observe(&c, now);
        }
    }

    fn spoke_statuses(&self) -> Vec<SpokeStatus> {
        let now_ns = ktime_ns();
        let age = |ns: u64| (ns != 0).then(|| now_ns.saturating_sub(ns) as f64 / 1e9);
        let entries = self.datapath.sessions();
        let mut sessions: HashMap<u32, u64> = HashMap::new();
        for (k, v) in &entries {
            *sessions.entry(k.src_slot).or_default() += 1;
            if v.dst_slot != k.src_slot {
                *sessions.entry(v.dst_slot).or_default() += 1;
            }
        }
        let mut out: Vec<SpokeStatus> = self
            .spokes
            .iter()
            .map(|(&slot, m)| {
                let c = self.datapath.slot_counters(slot);
                let silence = age(c.last_rx_ns);
                let silence_d = silence.map(Duration::from_secs_f64);
                SpokeStatus {
                    name: m.name.clone(),
                    id: slot,
                    address: m.address.to_string(),
                    public_key: m.public_key.to_base64(),
                    endpoint: self
                        .router
                        .endpoint(slot)
                        .and_then(|e| crate::hubwg::to_socket_addr(&e))
                        .map(|a| a.to_string()),
                    state: self.thresholds.classify(silence_d).label().to_string(),
                    last_handshake_unix: m
                        .last_handshake
                        .and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok())
                        .map(|d| d.as_secs()),
                    last_frame_secs_ago: silence,
                    last_keepalive_secs_ago: age(c.last_keepalive_ns),
                    keepalive_interval_secs: m.health.keepalive_interval(),
                    missed_keepalives: self.thresholds.missed(silence_d),
                    keepalives_to_hub: c.hub_keepalives,
                    keepalives_relayed: c.rx_keepalives,
                    relayed_in_packets: c.rx_packets,
                    relayed_in_bytes: c.rx_bytes,
                    relayed_out_packets: c.tx_packets,
                    relayed_out_bytes: c.tx_bytes,
                    sessions: sessions.get(&slot).copied().unwrap_or(0),
                    roams: m.health.roams(),
                }
            })
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }

    fn hub_status(&self) -> HubStatus {
        let f = &self.facts;
        HubStatus {
            version: env!("CARGO_PKG_VERSION").to_string(),
            public_key: f.public_key.clone(),
            address: f.address.clone(),
            port: f.port,
            iface: f.iface.clone(),
            xdp_mode: self.datapath.mode().to_string(),
            wg_iface: f.wg_iface.clone(),
            uptime_secs: f.started.elapsed().as_secs(),
            keepalive_secs: self.thresholds.keepalive.as_secs() as u16,
            up_within_secs: self.thresholds.up_within().as_secs(),
            down_after_secs: self.thresholds.down_after().as_secs(),
            underlay_v4: self.datapath.hub_addresses().0.map(|a| a.to_string()),
            underlay_v6: self.datapath.hub_addresses().1.map(|a| a.to_string()),
            cross_family_path: match self.datapath.cross_path() {
                CrossPath::Xdp => "xdp",
                CrossPath::Userspace => "userspace",
            }
            .to_string(),
        }
    }

    fn snapshot(&self) -> Snapshot {
        Snapshot {
            xdp: self.datapath.counters(),
            sessions: self.datapath.sessions().len() as u64,
            spokes: self.spoke_statuses(),
            held_initiations: self.router.held_len() as u64,
            prog_stats: self.datapath.prog_stats(),
        }
    }
}

struct HubApi(Arc<Mutex<Hub>>);

impl http::Api for HubApi {
    fn metrics(&self) -> String {
        let hub = self.0.lock().expect("hub lock");
        metrics::render(&hub.metrics, &hub.snapshot())
    }

    fn hub(&self) -> String {
        let hub = self.0.lock().expect("hub lock");
        serde_json::to_string_pretty(&hub.hub_status()).expect("serializable")
    }

    fn spokes(&self) -> String {
        let hub = self.0.lock().expect("hub lock");
        serde_json::to_string_pretty(&hub.spoke_statuses()).expect("serializable")
    }

    fn health(&self) -> Result<(), String> {
        let hub = self.0.lock().expect("hub lock");
        if !hub.datapath.is_attached() {
            return Err(format!(
                "XDP program not attached to {}",
                hub.datapath.iface()
            ));
        }
        if !hub.wg.is_up() {
            return Err(format!("hub WireGuard interface {} is down", hub.wg.name()));
        }
        Ok(())
    }
}

fn read_events(ring: &mut RingBuf<MapData>, out: &mut Vec<InitiationEvent>) {
    while let Some(item) = ring.next() {
        if item.len() >= std::mem::size_of::<InitiationEvent>() {
            // SAFETY: the record is at least one InitiationEvent long and
            // the type is plain old data; read_unaligned copes with alignment.
            out.push(unsafe { std::ptr::read_unaligned(item.as_ptr().cast::<InitiationEvent>()) });
        }
    }
}

/// Relay what one CPU's fallback perf buffer delivers, until aborted.
async fn fallback_reader(
    mut fd: AsyncFd<aya::maps::perf::PerfEventArrayBuffer<MapData>>,
    hub: Arc<Mutex<Hub>>,
) {
    let mut scratch = Box::new([0u8; SAMPLE_MAX]);
    loop {
        let mut guard = match fd.readable_mut().await {
            Ok(g) => g,
            Err(e) => {
                tracing::error!(error = %e, "fallback perf buffer; cross-family frames the fast path cannot rebuild are dropped");
                return;
            }
        };
        // Cleared before draining (see the initiation ring).
        guard.clear_ready();
        let mut h = hub.lock().expect("hub lock");
        fallback::drain(guard.get_inner_mut(), &mut scratch, |ev| match ev {
            fallback::Event::Sample(s) => h.relay_fallback(s),
            fallback::Event::Lost(n) => h.metrics.fallback.lost += n,
        });
    }
}

/// The eBPF side logs at most as verbosely as the controller's log filter
/// (RUST_LOG) lets through, so it stays silent at info.
fn ebpf_log_level() -> u8 {
    use tracing::level_filters::LevelFilter;
    match LevelFilter::current() {
        LevelFilter::OFF => 0,
        LevelFilter::ERROR => 1,
        LevelFilter::WARN => 2,
        LevelFilter::INFO => 3,
        LevelFilter::DEBUG => 4,
        _ => 5,
    }
}

/// Run the hub until SIGINT/SIGTERM.
pub async fn run(cfg: RunConfig, object: &[u8]) -> anyhow::Result<()> {
    let state = StateDir::open(&cfg.state_dir)?;
    let store = state.registry();
    let registry = store.load()?;
    // The file does not record the network: catch a changed --network.
    registry.check_net(&cfg.net)?;
    let stamp = store.stamp().ok();
    let policy = PolicyWatch::open(PolicyStore::in_dir(state.path()))?;
    let hub_key = state.hub_key()?;
    let hub_public = hub_key.get_public();

    // Fail early on everything that can be checked before touching the system.
    let listener = http::bind(cfg.metrics_addr).await.with_context(|| {
        format!(
            "binding the metrics address {} (--metrics-addr)",
            cfg.metrics_addr
        )
    })?;
    let mut sender = RawSender::new().context("opening raw sockets (run as root)")?;
    // One hub per interface: adopting pins would otherwise let a second
    // hub take over a running one's program silently.
    let _lock = IfaceLock::acquire(&cfg.iface)?;
    let _wg_lock = IfaceLock::acquire(&format!("wg-{}", cfg.wg_iface))?;
    let pins = PinDir::for_iface(&cfg.pin_dir, &cfg.iface);
    let mut datapath = Datapath::load(object, &cfg.capacity, cfg.port, ebpf_log_level(), pins)?;
    datapath.set_cross_path(cfg.cross_path);
    // Dual-stack: the hub's own address per family, for cross-family relay.
    let (hub_v4, hub_v6) = crate::netinfo::hub_addresses(&cfg.iface, &state.endpoint_ips())?;
    datapath.set_hub_addresses(hub_v4, hub_v6)?;
    sender.set_hub_addresses(hub_v4, hub_v6);
    tracing::info!(?hub_v4, ?hub_v6, cross_family_path = ?cfg.cross_path, "hub addresses for cross-family relay");
    // Opened before attaching: no fallback frame finds the buffers missing.
    // Without perf events (e.g. a seccomp profile that blocks
    // perf_event_open) the hub still relays; only the rare frames that need
    // the fallback are lost, unless every cross-family frame is to use it.
    let fallback_bufs = match datapath.open_fallback() {
        Ok(b) => b,
        Err(e) if cfg.cross_path == CrossPath::Xdp => {
            tracing::warn!(
                error = %e,
                "userspace fallback unavailable: cross-family frames the XDP program cannot rebuild are dropped (counted as fallback_full)"
            );
            Vec::new()
        }
        Err(e) => {
            return Err(anyhow::Error::new(e)
                .context("--cross-family-path userspace needs the userspace fallback"));
        }
    };

    // Kept open for the hub's lifetime: statistics stay on while it is.
    let _bpf_stats = if cfg.bpf_stats {
        Some(aya::sys::enable_stats(aya::sys::Stats::RunTime).context(
            "enabling BPF run-time statistics (--bpf-stats) needs kernel >= 5.8 and root",
        )?)
    } else {
        None
    };
    let wg = HubWg::up(
        &cfg.wg_iface,
        &hub_key,
        cfg.port,
        cfg.net.hub,
        cfg.net.prefix,
    )?;
    let mut hub = Hub {
        router: {
            let mut r = Router::new(&hub_public.0);
            r.enable_shield(crate::ratelimit::Limits::default(), Instant::now());
            r
        },
        sender,
        metrics: Metrics::default(),
        installed: HashMap::new(),
        by_key: HashMap::new(),
        registry_stamp: stamp,
        policy,
        spokes: HashMap::new(),
        thresholds: Thresholds::new(cfg.keepalive),
        facts: HubFacts {
            public_key: hub_public.to_base64(),
            address: cfg.net.hub.to_string(),
            port: cfg.port,
            iface: cfg.iface.clone(),
            wg_iface: cfg.wg_iface.clone(),
            started: Instant::now(),
        },
        datapath: {
            datapath.attach(&cfg.iface, cfg.xdp_mode)?;
            datapath
        },
        wg,
    };
    if hub.datapath.adopted() {
        // Start from what the adopted maps hold, so unchanged spokes see
        // no map writes and slots removed meanwhile are cleared.
        hub.installed = hub.datapath.installed_endpoints();
    }
    hub.apply_registry(&registry)?;
    hub.forget_unregistered()?;
    hub.refresh_endpoints()?;
    tracing::info!(
        adopted_link = hub.datapath.adopted_link(),
        adopted_maps = hub.datapath.adopted(),
        adopted_wg = hub.wg.adopted(),
        pinned = hub.datapath.pinned(),
        "datapath state"
    );
    tracing::info!(
        iface = %cfg.iface,
        mode = hub.datapath.mode(),
        port = cfg.port,
        hub = %cfg.net.hub,
        public_key = %hub_public.to_base64(),
        metrics = %cfg.metrics_addr,
        "relayhub running"
    );

    let ring = hub
        .datapath
        .take_initiations()
        .context("initiation ring buffer already taken")?;
    // SAFETY (both): the ring buffers own their map fds for as long as the
    // AsyncFd holds them, and as_raw_fd() always returns that same fd.
    let mut ring = unsafe { AsyncFd::register_with_interest(ring, Interest::READABLE) }
        .map_err(|e| anyhow::anyhow!("polling the initiation ring buffer: {e}"))?;
    let logger = match aya_log::EbpfLogger::init(hub.datapath.ebpf_mut()) {
        Ok(l) => Some(
            unsafe { AsyncFd::register_with_interest(l, Interest::READABLE) }
                .map_err(|e| anyhow::anyhow!("polling the eBPF log: {e}"))?,
        ),
        Err(e) => {
            tracing::debug!(error = %e, "no eBPF logger");
            None
        }
    };

    let hub = Arc::new(Mutex::new(hub));
    let http_task = tokio::spawn(http::serve(listener, Arc::new(HubApi(hub.clone()))));
    let mut fallback_tasks = Vec::with_capacity(fallback_bufs.len());
    for buf in fallback_bufs {
        // SAFETY: as for the ring buffers: the buffer owns its perf event
        // fd while the AsyncFd holds it, and as_raw_fd() is always that fd.
        let fd = unsafe { AsyncFd::register_with_interest(buf, Interest::READABLE) }
            .map_err(|e| anyhow::anyhow!("polling a fallback perf buffer: {e}"))?;
        fallback_tasks.push(tokio::spawn(fallback_reader(fd, hub.clone())));
    }

    let mut sigint = signal(SignalKind::interrupt())?;
    let mut sigterm = signal(SignalKind::terminate())?;
    let mut endpoint_tick = tokio::time::interval(ENDPOINT_REFRESH);
    let mut registry_tick = tokio::time::interval(REGISTRY_POLL);
    let mut sweep_tick = tokio::time::interval(SESSION_SWEEP);
    let mut health_tick = tokio::time::interval(HEALTH_SAMPLE);
    let mut address_tick = tokio::time::interval(ADDRESS_REFRESH);
    for t in [
        &mut address_tick,
        &mut endpoint_tick,
        &mut registry_tick,
        &mut sweep_tick,
        &mut health_tick,
    ] {
        t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    }
    let mut events = Vec::with_capacity(64);
    let mut logger = logger;
    loop {
        // A delayed (crossing) initiation falls due at a precise time.
        let due = hub
            .lock()
            .expect("hub lock")
            .router
            .next_due(Instant::now());
        let due = due.map(tokio::time::Instant::from_std);
        tokio::select! {
            _ = sigint.recv() => break,
            _ = sigterm.recv() => break,
            _ = async {
                match due {
                    Some(t) => tokio::time::sleep_until(t).await,
                    None => std::future::pending().await,
                }
            } => {
                hub.lock().expect("hub lock").retry_held();
            }
            guard = ring.readable_mut() => {
                let mut guard = guard?;
                // Cleared before reading: a record submitted meanwhile
                // wakes us again instead of waiting for the next one.
                guard.clear_ready();
                events.clear();
                read_events(guard.get_inner_mut(), &mut events);
                let mut h = hub.lock().expect("hub lock");
                let mut refresh = false;
                let now = Instant::now();
                for ev in &events {
                    let (o, a) = h.router.on_initiation(ev, now);
                    refresh |= h.handle(o, a);
                }
                if refresh {
                    // First contact: the sender's handshake with the hub is
                    // usually in flight; re-read endpoints right away.
                    if let Err(e) = h.refresh_endpoints() {
                        tracing::warn!(error = %e, "endpoint refresh");
                    }
                    h.retry_held();
                }
            }
            guard = async {
                match logger.as_mut() {
                    Some(l) => l.readable_mut().await,
                    None => std::future::pending().await,
                }
            } => {
                let mut guard = guard?;
                guard.get_inner_mut().flush();
                guard.clear_ready();
            }
            _ = endpoint_tick.tick() => {
                let mut h = hub.lock().expect("hub lock");
                if let Err(e) = h.refresh_endpoints() {
                    tracing::warn!(error = %e, "endpoint refresh");
                }
                h.retry_held();
            }
            _ = registry_tick.tick() => {
                let mut h = hub.lock().expect("hub lock");
                match store.stamp() {
                    Ok(s) if Some(s) != h.registry_stamp => match store.load() {
                        Ok(reg) => {
                            h.registry_stamp = Some(s);
                            if let Err(e) = h.apply_registry(&reg) {
                                tracing::error!(error = %e, "applying the registry");
                            }
                        }
                        Err(e) => tracing::error!(error = %e, "registry unreadable; keeping the previous one"),
                    },
                    Ok(_) => {}
                    Err(e) => tracing::warn!(error = %e, "registry stamp"),
                }
                h.poll_policy();
            }
            _ = address_tick.tick() => {
                hub.lock().expect("hub lock").refresh_hub_addresses(&state.endpoint_ips());
            }
            _ = health_tick.tick() => {
                hub.lock().expect("hub lock").observe_health();
            }
            _ = sweep_tick.tick() => {
                hub.lock().expect("hub lock").sweep_sessions();
            }
        }
    }
    if cfg.keep_on_exit {
        tracing::info!(
            "shutting down, keeping XDP attached, maps pinned and the hub's WireGuard up (--keep-on-exit)"
        );
    } else {
        tracing::info!("shutting down: detaching XDP and removing the hub's WireGuard interface");
    }
    http_task.abort();
    let _ = http_task.await;
    for t in fallback_tasks {
        t.abort();
        let _ = t.await;
    }
    drop(ring);
    drop(logger);
    let mut hub = Arc::try_unwrap(hub)
        .map_err(|_| anyhow::anyhow!("hub still shared at shutdown"))?
        .into_inner()
        .expect("hub lock");
    hub.datapath.set_keep_on_drop(cfg.keep_on_exit);
    hub.wg.set_keep_on_drop(cfg.keep_on_exit);
    drop(hub);
    Ok(())
}
