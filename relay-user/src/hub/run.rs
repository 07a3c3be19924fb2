//! Setting the hub up and its event loop: the loop only feeds events to
//! [`Hub`] and waits for the next one.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use aya::maps::{MapData, RingBuf};
use relay_common::{InitiationEvent, ProofEvent};
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;
use tokio::signal::unix::{SignalKind, signal};

use crate::core::health::Thresholds;
use crate::core::reconcile::Reconciler;
use crate::core::registry::TunnelNet;
use crate::core::router::Router;
use crate::datapath::{AttachMode, Capacity, CrossPath, Datapath, IfaceLock, PinDir};
use crate::hub::api::HubApi;
use crate::hub::fallback_reader::fallback_reader;
use crate::hub::metrics::Metrics;
use crate::hub::{Hub, HubFacts};
use crate::io::http;
use crate::io::hub_wg::HubWg;
use crate::io::sender::RawSender;
use crate::store::backend::{Polled, Shared, Stamps};
use crate::store::dir::StateDir;
use crate::store::etcd::EtcdError;
use crate::store::policy::PolicyWatch;
use crate::store::{Store, StoreSpec};

/// How often the hub's authenticated endpoints are re-read. Roaming and
/// first contact wait on this, so it is short; a read is one UAPI/netlink
/// round trip.
pub const ENDPOINT_REFRESH: Duration = Duration::from_millis(200);
/// A stat(2) per poll (one etcd transaction on a shared store); spokes
/// added while the hub runs must be peers of the hub before their first
/// handshake arrives, also when another hub's CLI added them.
pub const REGISTRY_POLL: Duration = Duration::from_millis(250);
pub const SESSION_SWEEP: Duration = Duration::from_secs(10);
/// Health samples: one counter read per spoke each time, at most this
/// often (see [`health_sample_period`](super::health_sample_period)).
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
    /// Initiations/s one source address may pass to the hub's WireGuard
    /// (0 = no limit).
    pub initiations_per_source: u32,
    /// TCP port of the peer list on the hub's tunnel address (0 = off).
    pub peers_port: u16,
    /// TCP port of the enrollment endpoint (0 = off).
    pub enroll_port: u16,
    /// `--endpoint`: what joined nodes' files name.
    pub endpoint: Option<String>,
    /// `--store`: where the registry, policy and tokens are.
    pub store: StoreSpec,
    /// `--replica-listen`: serve the relay tables to a standby hub.
    pub replica_listen: Option<SocketAddr>,
    /// `--standby-of`: follow the active hub's relay tables (HOST:PORT).
    pub standby_of: Option<String>,
    /// `--hub-name`: this hub's name among the mesh's hubs.
    pub hub_name: Option<String>,
    /// `--protect-metrics`: /metrics and /healthz need the API token too.
    pub protect_metrics: bool,
    /// `--dns-port` on the tunnel address (0 = no DNS) and `--dns-zone`.
    pub dns_port: u16,
    pub dns_zone: String,
}

/// Polls the store every [`REGISTRY_POLL`] off the event loop (an etcd
/// call may take up to its timeout) and hands each result to the loop,
/// which applies what changed and tracks whether the store answers.
async fn poll_store(
    store: Store,
    mut seen: Stamps,
    tx: tokio::sync::mpsc::Sender<Result<Polled, EtcdError>>,
) {
    let mut tick = tokio::time::interval(REGISTRY_POLL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let s = store.clone();
        let Ok(polled) = tokio::task::spawn_blocking(move || s.poll(Some(seen))).await else {
            return;
        };
        if let Ok(p) = &polled {
            seen = p.stamps;
        }
        if tx.send(polled).await.is_err() {
            return;
        }
    }
}

/// Drain `ring` of fixed-size records of type `T` (the eBPF side writes
/// exactly one `T` per record).
fn read_events<T: Copy>(ring: &mut RingBuf<MapData>, out: &mut Vec<T>) {
    while let Some(item) = ring.next() {
        if item.len() >= std::mem::size_of::<T>() {
            // SAFETY: the record is at least one T long and T (InitiationEvent,
            // ProofEvent) is plain old data; read_unaligned copes with alignment.
            out.push(unsafe { std::ptr::read_unaligned(item.as_ptr().cast::<T>()) });
        }
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
    // Role changes, from keepalived's notify scripts (README, High
    // availability): a signal needs no network path and only root (or the
    // service's user) can send it. Registered first: SIGUSR1's default
    // action ends the process, and keepalived may notify while the hub is
    // still starting; a registered signal waits in its stream until the
    // event loop reads it.
    let mut sigpromote = signal(SignalKind::user_defined1())?;
    let mut sigdemote = signal(SignalKind::user_defined2())?;
    let state = StateDir::open(&cfg.state_dir)?;
    let store = Store::open(&cfg.store, &state)?;
    let hub_key = state.hub_key()?;
    let hub_public = hub_key.get_public();
    // Spokes of a shared store may fail over to any of its hubs.
    store.check_shared(Shared::HubPublicKey, &hub_public.to_base64())?;
    // Without its registry the hub would start empty and drop every
    // spoke: a store that does not answer now is an error.
    let first = store
        .poll(None)
        .map_err(|e| anyhow::anyhow!("{e} (the hub reads its registry from there at start)"))?;
    let stamps = first.stamps;
    let first_endpoint_ips = first.endpoint_ips;
    let registry = first
        .registry
        .unwrap_or_else(|| Ok(crate::core::registry::Registry::new()))?;
    // The file does not record the network: catch a changed --network.
    registry.check_net(&cfg.net)?;
    if let Some(name) = &cfg.hub_name
        && registry.hub(name).is_none()
    {
        anyhow::bail!(
            "--hub-name {name}: no hub of that name in the mesh; add it first with \
             `relayhub hub add {name} --endpoint IP:PORT` (`relayhub hub list` shows the mesh)"
        );
    }
    if cfg.hub_name.is_none() && !registry.hubs().is_empty() {
        tracing::warn!(
            hubs = registry.hubs().len(),
            "the store has a hub mesh but this hub has no --hub-name: it serves only spokes without a home hub"
        );
    }
    let policy_text = first.policy.transpose()?.flatten();
    let policy = PolicyWatch::new(store.policy().location(), policy_text)?;

    // Fail early on everything that can be checked before touching the system.
    let listener = http::bind(cfg.metrics_addr).await.with_context(|| {
        format!(
            "binding the metrics address {} (--metrics-addr)",
            cfg.metrics_addr
        )
    })?;
    let replica_listener = match cfg.replica_listen {
        Some(a) => Some(super::replica::bind(a).await?),
        None => None,
    };
    let mut sender = RawSender::new().context("opening raw sockets (run as root)")?;
    // One hub per interface: adopting pins would otherwise let a second
    // hub take over a running one's program silently.
    let _lock = IfaceLock::acquire(&cfg.iface)?;
    let _wg_lock = IfaceLock::acquire(&format!("wg-{}", cfg.wg_iface))?;
    let pins = PinDir::for_iface(&cfg.pin_dir, &cfg.iface);
    let mut datapath = Datapath::load(object, &cfg.capacity, cfg.port, ebpf_log_level(), pins)?;
    datapath.set_cross_path(cfg.cross_path);
    datapath.set_initiation_budget(cfg.initiations_per_source);
    // Dual-stack: the hub's own address per family, for cross-family relay.
    let (hub_v4, hub_v6) = crate::io::netinfo::hub_addresses(&cfg.iface, &first_endpoint_ips)?;
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
        cfg.net.v6,
    )?;
    let mut hub = Hub {
        router: {
            let mut r = Router::new(&hub_public.0);
            r.enable_shield(crate::core::shield::Limits::default(), Instant::now());
            r
        },
        sender,
        metrics: Metrics::default(),
        slots: Reconciler::new(),
        registry_stamp: Some(stamps.registry),
        registry: crate::core::registry::Registry::new(),
        policy,
        store: crate::hub::StoreStatus {
            backend: store.backend(),
            location: store.describe(),
            up: true,
            error: None,
        },
        spokes: HashMap::new(),
        thresholds: Thresholds::new(cfg.keepalive),
        facts: HubFacts {
            public_key: hub_public.to_base64(),
            hub_public_key: hub_public.clone(),
            net: cfg.net,
            keepalive: cfg.keepalive,
            address: cfg.net.hub.to_string(),
            port: cfg.port,
            iface: cfg.iface.clone(),
            wg_iface: cfg.wg_iface.clone(),
            started: Instant::now(),
        },
        prover: crate::core::proof::Prover::new(&hub_key.0, crate::core::proof::Limits::default()),
        proven: HashMap::new(),
        endpoints_read: Instant::now(),
        endpoints_asked: true,
        health_read: None,
        receivers: HashMap::new(),
        receivers_read: None,
        probe_turn: 0,
        endpoint_ips: first_endpoint_ips,
        mesh_name: cfg.hub_name.clone(),
        local_mesh: Default::default(),
        remote: HashMap::new(),
        replication: super::replica::Replication {
            roles: crate::core::role::Roles::new(
                cfg.replica_listen.is_some(),
                cfg.standby_of.is_some(),
            ),
            ..Default::default()
        },
        datapath: {
            datapath.attach(&cfg.iface, cfg.xdp_mode)?;
            datapath
        },
        egress: crate::io::egress::EgressTable::new(&cfg.wg_iface),
        publisher: {
            let mut p = super::publish::Publisher::new(cfg.net.hub)
                .context("starting the published services' runtime")?;
            p.set_public(hub_v4, hub_v6);
            p
        },
        names: None,
        history: Default::default(),
        slot_table: Default::default(),
        wg,
    };
    if hub.datapath.adopted() {
        // Start from what the adopted maps hold, so unchanged spokes see
        // no map writes and slots removed meanwhile are cleared.
        hub.slots = Reconciler::adopt(hub.datapath.installed_endpoints());
    }
    // DNS: the zone is checked before the hub touches anything else.
    let dns = if cfg.dns_port != 0 {
        let zone = crate::core::names::Zone::new(&cfg.dns_zone, &registry, &cfg.net)
            .map_err(|e| anyhow::anyhow!("--dns-zone: {e}"))?;
        let names = super::dns::Names::new(zone);
        let addr = SocketAddr::from((cfg.net.hub, cfg.dns_port));
        // Names are a convenience: a hub that cannot serve them (port 53
        // taken by another resolver on the tunnel address) still relays.
        match super::dns::serve(addr, names.clone()).await {
            Ok(server) => {
                tracing::info!(%addr, zone = %cfg.dns_zone, "DNS for the spokes' and services' names");
                hub.names = Some((cfg.dns_zone.clone(), names));
                Some(server)
            }
            Err(e) => {
                tracing::warn!("{e:#}; the hub runs without DNS");
                None
            }
        }
    } else {
        None
    };
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
    // SAFETY (both rings and the logger): each owns its map fd for as long
    // as the AsyncFd holds it, and as_raw_fd() always returns that same fd.
    let mut ring = unsafe { AsyncFd::register_with_interest(ring, Interest::READABLE) }
        .map_err(|e| anyhow::anyhow!("polling the initiation ring buffer: {e}"))?;
    let proofs = hub
        .datapath
        .take_proofs()
        .context("proof ring buffer already taken")?;
    let mut proofs = unsafe { AsyncFd::register_with_interest(proofs, Interest::READABLE) }
        .map_err(|e| anyhow::anyhow!("polling the proof ring buffer: {e}"))?;
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

    let peers_listener = match cfg.peers_port {
        0 => None,
        port => Some(super::peers::bind(&cfg.wg_iface, cfg.net.hub, port)?),
    };
    let hub = Arc::new(Mutex::new(hub));
    // The token exists from the first start on (`relayhub status --token`);
    // it guards the API only where others can reach it.
    let token = state.api_token()?;
    let auth = if cfg.metrics_addr.ip().is_loopback() {
        http::Auth::open()
    } else {
        tracing::info!(addr = %cfg.metrics_addr, protect_metrics = cfg.protect_metrics, "the console and /v1/* need the API token (relayhub status --token)");
        http::Auth {
            token: Some(token.into()),
            metrics_open: !cfg.protect_metrics,
        }
    };
    let http_task = tokio::spawn(http::serve(listener, Arc::new(HubApi(hub.clone())), auth));
    let enroll_task = match cfg.enroll_port {
        0 => None,
        port => {
            let (acceptor, pin) = super::enroll::tls_acceptor(&state)?;
            // Join lines made on another hub of the store carry its pin.
            store.check_shared(Shared::EnrollPin, &pin)?;
            let listener = super::enroll::bind(port).await?;
            tracing::info!(addr = ?listener.local_addr().ok(), pin, "enrollment endpoint (TLS) listening");
            let enroller = Arc::new(super::enroll::Enroller {
                state: state.clone(),
                store: store.clone(),
                net: cfg.net,
                port: cfg.port,
                keepalive: cfg.keepalive,
                endpoint: cfg.endpoint.clone(),
                hub_name: cfg.hub_name.clone(),
                pin,
                limiter: super::enroll::limiter(),
                serial: tokio::sync::Mutex::new(()),
                hub: Arc::downgrade(&hub),
            });
            Some(tokio::spawn(http::serve_app(
                listener,
                super::enroll::router(enroller),
                Some(acceptor),
            )))
        }
    };
    let peers_task = peers_listener.map(|l| {
        tracing::info!(addr = ?l.local_addr().ok(), "serving the spokes' peer lists over the tunnel");
        tokio::spawn(http::serve_app(l, super::peers::router(Arc::downgrade(&hub)), None))
    });
    let mut fallback_tasks = Vec::with_capacity(fallback_bufs.len());
    for buf in fallback_bufs {
        // SAFETY: as for the ring buffers: the buffer owns its perf event
        // fd while the AsyncFd holds it, and as_raw_fd() is always that fd.
        let fd = unsafe { AsyncFd::register_with_interest(buf, Interest::READABLE) }
            .map_err(|e| anyhow::anyhow!("polling a fallback perf buffer: {e}"))?;
        fallback_tasks.push(tokio::spawn(fallback_reader(fd, hub.clone())));
    }

    // Replication keys off the hub key both hubs share.
    let replica_base = crate::core::replica::base_key(&hub_key.0);
    // Serving checks the role on every accept and tick: the task runs for
    // as long as the hub does, whatever its role.
    let serve_task = match replica_listener {
        Some(l) => {
            let map_id = hub.lock().expect("hub lock").datapath.sessions_map_id()?;
            tracing::info!(addr = ?l.local_addr().ok(), "serving the relay tables to standby hubs while active");
            Some(tokio::spawn(super::replica::serve(
                l,
                Arc::downgrade(&hub),
                replica_base,
                map_id,
            )))
        }
        None => None,
    };
    let follow = |active: &str| {
        tracing::info!(%active, "standby: following the active hub's relay tables");
        tokio::spawn(super::replica::follow(
            active.to_owned(),
            hub.clone(),
            replica_base,
        ))
    };
    let mut follow_task = match &cfg.standby_of {
        Some(active) if hub.lock().expect("hub lock").replication.roles.follows() => {
            Some(follow(active))
        }
        _ => None,
    };
    let mut sigint = signal(SignalKind::interrupt())?;
    let mut sigterm = signal(SignalKind::terminate())?;
    let mut endpoint_tick = tokio::time::interval(ENDPOINT_REFRESH);
    // On a shared store, this hub is listed under hubs/ while it runs.
    let membership = match &store {
        Store::Etcd(e) => {
            let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
                .map(|h| h.trim().to_owned())
                .unwrap_or_default();
            let name = format!("{host}-{}", cfg.wg_iface);
            let started = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0);
            let info = serde_json::json!({
                "public_key": hub_public.to_base64(),
                "iface": cfg.iface,
                "endpoint": cfg.endpoint,
                "metrics_addr": cfg.metrics_addr.to_string(),
                "version": env!("CARGO_PKG_VERSION"),
                "started_unix": started,
            });
            Some(e.register(&name, info.to_string()))
        }
        Store::Dir(_) => None,
    };
    let (poll_tx, mut poll_rx) = tokio::sync::mpsc::channel(1);
    let poll_task = tokio::spawn(poll_store(store.clone(), stamps, poll_tx));
    let mut sweep_tick = tokio::time::interval(SESSION_SWEEP);
    let mut health_tick = tokio::time::interval(HEALTH_SAMPLE);
    let mut address_tick = tokio::time::interval(ADDRESS_REFRESH);
    let mut history_tick = tokio::time::interval(crate::core::history::SAMPLE_EVERY);
    for t in [
        &mut history_tick,
        &mut address_tick,
        &mut endpoint_tick,
        &mut sweep_tick,
        &mut health_tick,
    ] {
        t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    }
    let mut events: Vec<InitiationEvent> = Vec::with_capacity(64);
    let mut proof_events: Vec<ProofEvent> = Vec::with_capacity(16);
    let mut logger = logger;
    loop {
        // A delayed (crossing) initiation falls due at a precise time.
        // So does probing for the sender of a held one.
        let due = {
            let h = hub.lock().expect("hub lock");
            let held = h.router.next_due(Instant::now());
            match (held, h.next_probe_due()) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            }
        };
        let due = due.map(tokio::time::Instant::from_std);
        tokio::select! {
            _ = sigint.recv() => break,
            _ = sigterm.recv() => break,
            req = async {
                tokio::select! {
                    _ = sigpromote.recv() => crate::core::role::Request::Promote,
                    _ = sigdemote.recv() => crate::core::role::Request::Demote,
                }
            } => {
                let steps = hub.lock().expect("hub lock").change_role(req);
                if let Some(steps) = steps {
                    if steps.stop_following && let Some(t) = follow_task.take() {
                        t.abort();
                        let _ = t.await;
                    }
                    if steps.start_following && let Some(active) = &cfg.standby_of {
                        follow_task = Some(follow(active));
                    }
                }
            }
            _ = async {
                match due {
                    Some(t) => tokio::time::sleep_until(t).await,
                    None => std::future::pending().await,
                }
            } => {
                let mut h = hub.lock().expect("hub lock");
                h.retry_held();
                h.probe_settled(Instant::now());
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
                    refresh |= h.on_initiation(ev, now);
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
            guard = proofs.readable_mut() => {
                let mut guard = guard?;
                guard.clear_ready();
                proof_events.clear();
                read_events(guard.get_inner_mut(), &mut proof_events);
                let mut h = hub.lock().expect("hub lock");
                let now = Instant::now();
                for ev in &proof_events {
                    h.on_proof_event(ev, now);
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
                if h.endpoints_due(Instant::now())
                    && let Err(e) = h.refresh_endpoints()
                {
                    tracing::warn!(error = %e, "endpoint refresh");
                }
                h.retry_held();
            }
            Some(polled) = poll_rx.recv() => {
                hub.lock().expect("hub lock").on_store_poll(polled);
            }
            _ = address_tick.tick() => {
                hub.lock().expect("hub lock").refresh_hub_addresses();
            }
            _ = health_tick.tick() => {
                let mut hub = hub.lock().expect("hub lock");
                if hub.health_due(Instant::now()) {
                    hub.observe_health();
                }
            }
            _ = history_tick.tick() => {
                hub.lock().expect("hub lock").sample_history();
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
    for t in [
        peers_task,
        enroll_task,
        Some(poll_task),
        serve_task,
        follow_task,
    ]
    .into_iter()
    .flatten()
    {
        t.abort();
        let _ = t.await;
    }
    for t in fallback_tasks {
        t.abort();
        let _ = t.await;
    }
    if let Some(mut server) = dns {
        server.shutdown_token().cancel();
        let _ = tokio::time::timeout(Duration::from_secs(1), server.block_until_done()).await;
    }
    drop(membership);
    drop(ring);
    drop(proofs);
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
