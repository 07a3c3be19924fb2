//! The hub's run loop: the IO shell around the sans-IO parts. It owns the
//! datapath, the hub's WireGuard, the handshake router and the raw sender,
//! and moves events between them.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use aya::maps::{MapData, RingBuf};
use relay_common::wire::INITIATION_LEN;
use relay_common::{Endpoint, InitiationEvent};
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;
use tokio::signal::unix::{SignalKind, signal};

use crate::datapath::{AttachMode, Capacity, Datapath, ktime_ns};
use crate::handshake::{Action, Outcome, Router};
use crate::hubwg::HubWg;
use crate::metrics::{Metrics, Snapshot};
use crate::registry::{Registry, RegistryStore, TunnelNet};
use crate::sender::RawSender;
use crate::state::StateDir;
use crate::{http, metrics, sessions};

/// How often the hub's authenticated endpoints are re-read. Roaming and
/// first contact wait on this, so it is short; a read is one UAPI/netlink
/// round trip.
pub const ENDPOINT_REFRESH: Duration = Duration::from_millis(200);
/// A stat(2) per poll; spokes added while the hub runs must be peers of
/// the hub before their first handshake arrives.
pub const REGISTRY_POLL: Duration = Duration::from_millis(250);
pub const SESSION_SWEEP: Duration = Duration::from_secs(10);

pub struct RunConfig {
    pub state_dir: PathBuf,
    pub iface: String,
    pub port: u16,
    pub net: TunnelNet,
    pub wg_iface: String,
    pub metrics_addr: SocketAddr,
    pub xdp_mode: AttachMode,
    pub capacity: Capacity,
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
        self.by_key = wanted;
        let peers: Vec<_> = reg
            .spokes()
            .iter()
            .map(|s| (s.public_key.clone(), s.address))
            .collect();
        self.wg.sync_peers(&peers)?;
        tracing::info!(spokes = reg.spokes().len(), "registry applied");
        Ok(())
    }

    /// Re-read the hub's authenticated endpoints and mirror them into the
    /// router and the BPF maps.
    fn refresh_endpoints(&mut self) -> anyhow::Result<()> {
        let peers = self.wg.peers()?;
        for p in &peers {
            if let Some(&slot) = self.by_key.get(&p.public_key.0)
                && self.router.set_endpoint(slot, p.endpoint)
            {
                tracing::info!(slot, endpoint = ?p.endpoint.and_then(|e| crate::hubwg::to_socket_addr(&e)), "spoke endpoint");
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
        self.metrics.initiation(outcome.label());
        match action {
            None => false,
            Some(Action::Refresh) => true,
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
                        self.metrics.userspace_packets.inc();
                        self.metrics.userspace_bytes.inc_by(INITIATION_LEN as u64);
                    }
                    Err(e) => {
                        self.metrics.send_errors.inc();
                        tracing::warn!(error = %e, "sending initiation to spoke");
                    }
                }
                tracing::debug!(?outcome, "initiation routed");
                false
            }
        }
    }

    fn retry_held(&mut self) {
        if self.router.held_len() == 0 {
            return;
        }
        for (o, a) in self.router.retry_held(Instant::now()) {
            self.handle(o, a);
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

    fn snapshot(&self) -> Snapshot {
        Snapshot {
            xdp: self.datapath.counters(),
            sessions: self.datapath.sessions().len() as u64,
            spokes_registered: self.by_key.len() as u64,
            spokes_up: self.installed.len() as u64,
            held_initiations: self.router.held_len() as u64,
        }
    }
}

struct HubApi(Arc<Mutex<Hub>>);

impl http::Api for HubApi {
    fn metrics(&self) -> String {
        let hub = self.0.lock().expect("hub lock");
        metrics::render(&hub.metrics, &hub.snapshot())
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

/// Run the hub until SIGINT/SIGTERM.
pub async fn run(cfg: RunConfig, object: &[u8]) -> anyhow::Result<()> {
    let state = StateDir::open(&cfg.state_dir)?;
    let store = state.registry();
    let registry = store.load()?;
    // The file does not record the network: catch a changed --network.
    registry.check_net(&cfg.net)?;
    let stamp = store.stamp().ok();
    let hub_key = state.hub_key()?;
    let hub_public = hub_key.get_public();

    // Fail early on everything that can be checked before touching the system.
    let listener = http::bind(cfg.metrics_addr).await.with_context(|| {
        format!(
            "binding the metrics address {} (--metrics-addr)",
            cfg.metrics_addr
        )
    })?;
    let sender = RawSender::new().context("opening raw sockets (run as root)")?;
    let mut datapath = Datapath::load(object, &cfg.capacity, cfg.port)?;

    let wg = HubWg::up(
        &cfg.wg_iface,
        &hub_key,
        cfg.port,
        cfg.net.hub,
        cfg.net.prefix,
    )?;
    let mut hub = Hub {
        router: Router::new(&hub_public.0),
        sender,
        metrics: Metrics::default(),
        installed: HashMap::new(),
        by_key: HashMap::new(),
        registry_stamp: stamp,
        datapath: {
            datapath.attach(&cfg.iface, cfg.xdp_mode)?;
            datapath
        },
        wg,
    };
    hub.apply_registry(&registry)?;
    hub.refresh_endpoints()?;
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

    let mut sigint = signal(SignalKind::interrupt())?;
    let mut sigterm = signal(SignalKind::terminate())?;
    let mut endpoint_tick = tokio::time::interval(ENDPOINT_REFRESH);
    let mut registry_tick = tokio::time::interval(REGISTRY_POLL);
    let mut sweep_tick = tokio::time::interval(SESSION_SWEEP);
    for t in [&mut endpoint_tick, &mut registry_tick, &mut sweep_tick] {
        t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    }
    let mut events = Vec::with_capacity(64);
    let mut logger = logger;
    loop {
        tokio::select! {
            _ = sigint.recv() => break,
            _ = sigterm.recv() => break,
            guard = ring.readable_mut() => {
                let mut guard = guard?;
                events.clear();
                read_events(guard.get_inner_mut(), &mut events);
                guard.clear_ready();
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
            }
            _ = sweep_tick.tick() => {
                hub.lock().expect("hub lock").sweep_sessions();
            }
        }
    }
    tracing::info!("shutting down: detaching XDP and removing the hub's WireGuard interface");
    http_task.abort();
    let _ = http_task.await;
    drop(ring);
    drop(logger);
    let hub = Arc::try_unwrap(hub)
        .map_err(|_| anyhow::anyhow!("hub still shared at shutdown"))?
        .into_inner()
        .expect("hub lock");
    drop(hub);
    Ok(())
}
