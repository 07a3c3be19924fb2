//! Hub-to-hub replication of the relay tables over TCP, the IO around
//! `core::replica`: the active serves the stream (`--replica-listen`), the
//! standby follows it (`--standby-of`) and writes what it receives into its
//! own maps. Plain TCP with a MAC per message and no encryption: run it on
//! a link only the hubs reach (README, High availability).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use aya::maps::MapData;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::core::replica::{
    CHALLENGE_LEN, Decoder, Encoder, HELLO_LEN, Handshake, NONCE_LEN, Publisher, Session, TICK,
    Tables,
};
use crate::datapath::read_sessions_batch;
use crate::hub::Hub;

/// Connecting and the handshake must finish within this.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// The active sends at least a heartbeat every [`TICK`]; this much silence
/// means the link or the active is gone.
pub const READ_TIMEOUT: Duration = Duration::from_secs(3);
/// Connections the active holds at once, authenticated or not (a standby
/// needs one; the rest bounds what strangers can hold open).
pub const MAX_CONNECTIONS: u32 = 4;
/// Reconnect attempts back off up to this.
pub const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// Which side of replication this hub is on.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) enum Role {
    #[default]
    Off,
    Active,
    Standby,
}

impl Role {
    pub(crate) fn label(self) -> &'static str {
        match self {
            Role::Off => "off",
            Role::Active => "active",
            Role::Standby => "standby",
        }
    }
}

/// Replication state the API and metrics show.
#[derive(Default)]
pub(crate) struct Replication {
    pub(crate) role: Role,
    /// Standby: the replicated tables and the stream's position.
    pub(crate) replica: crate::core::replica::Replica,
    /// Standby: a snapshot completed on the current connection. Active:
    /// standbys connected.
    pub(crate) connected: u32,
    /// Active: records sent, over all connections.
    pub(crate) records_sent: u64,
    /// Promotions to active since the start.
    pub(crate) takeovers: u64,
}

/// Port of the datagram that makes the hub's WireGuard handshake with a
/// spoke on takeover (discard: nothing on the spoke needs to answer it).
const NUDGE_PORT: u16 = 9;

impl Hub {
    /// Become the active hub (keepalived's notify_master, via SIGUSR1):
    /// take the tables the standby wrote into the maps as this hub's own,
    /// so the reconciler, endpoint refresh, proofs and the session sweep go
    /// on from them, and have the hub's WireGuard initiate to every spoke
    /// whose endpoint is known at once instead of waiting for the spokes'
    /// next handshake (up to 2 minutes). The caller stops following the
    /// old active. False if already active.
    pub(crate) fn promote(&mut self, endpoint_ips: &[std::net::IpAddr]) -> bool {
        if self.replication.role == Role::Active {
            return false;
        }
        self.replication.role = Role::Active;
        self.replication.takeovers += 1;
        self.replication.connected = 0;
        let now = Instant::now();
        // The maps are the truth: the replica wrote them, the reconciler
        // (skipped while standby) has not tracked them.
        let installed = self.datapath.installed_endpoints();
        self.slots = crate::core::reconcile::Reconciler::adopt(installed.clone());
        let registry = self.registry.clone();
        if let Err(e) = self
            .apply_registry(&registry)
            .and_then(|()| self.forget_unregistered())
        {
            tracing::warn!(error = %e, "takeover: re-applying the registry");
        }
        let mut nudge = Vec::new();
        let mut endpoints = Vec::new();
        for (&slot, &ep) in &installed {
            let Some(m) = self.spokes.get_mut(&slot) else {
                continue;
            };
            // Proven: stands while the hub's WireGuard has no handshake
            // with the spoke yet (ENDPOINT_TRUST), as after a probe.
            self.proven.insert(slot, (ep, now));
            m.health.on_endpoint(Some(ep));
            self.router.set_endpoint(slot, Some(ep));
            if let Some(addr) = crate::io::hub_wg::to_socket_addr(&ep) {
                endpoints.push((m.public_key.clone(), addr));
                nudge.push(m.address);
            }
        }
        // One update for all: one UAPI/netlink call per spoke would hold
        // the hub lock for seconds at 10k spokes.
        if let Err(e) = self.wg.set_endpoints(&endpoints) {
            tracing::warn!(error = %e, "takeover: pointing the hub's WireGuard at the spokes");
        }
        self.refresh_hub_addresses(endpoint_ips);
        self.read_receivers(now);
        // One datagram into the tunnel per spoke: the hub's WireGuard has no
        // session with it yet, so it sends an initiation right away.
        match std::net::UdpSocket::bind((std::net::Ipv4Addr::UNSPECIFIED, 0)) {
            Ok(sock) => {
                let _ = sock.set_nonblocking(true);
                for a in &nudge {
                    if let Err(e) = sock.send_to(&[0], (*a, NUDGE_PORT)) {
                        tracing::debug!(error = %e, spoke = %a, "takeover: nudging the hub's WireGuard");
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "takeover: socket for the handshake nudge"),
        }
        tracing::info!(
            endpoints = installed.len(),
            initiated = nudge.len(),
            takeovers = self.replication.takeovers,
            "takeover: this hub is active"
        );
        true
    }

    /// Become a standby (keepalived's notify_backup/notify_fault, via
    /// SIGUSR2): the reconciler and the sweep leave the maps alone again.
    /// The XDP program keeps relaying whatever still reaches this hub, by
    /// its own tables: a copy of the active's, so a frame goes nowhere the
    /// active would not send it (split brain). False if already standby.
    pub(crate) fn demote(&mut self) -> bool {
        if self.replication.role == Role::Standby {
            return false;
        }
        self.replication.role = Role::Standby;
        self.replication.connected = 0;
        tracing::info!("this hub is a standby now");
        true
    }
}

/// Serve the stream to standbys (usually one). Connections hold the hub
/// weakly: they must not keep it alive past shutdown.
pub(crate) async fn serve(
    listener: TcpListener,
    hub: Weak<Mutex<Hub>>,
    base: [u8; 32],
    map_id: u32,
) {
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "replication: accept");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Some(h) = hub.upgrade() else { return };
        {
            let mut g = h.lock().expect("hub lock");
            if g.replication.connected >= MAX_CONNECTIONS {
                tracing::debug!(%peer, "replication: connection refused (limit)");
                continue;
            }
            g.replication.connected += 1;
        }
        drop(h);
        let hub = hub.clone();
        tokio::spawn(async move {
            tracing::info!(%peer, "replication: standby connected");
            let r = serve_one(stream, &hub, &base, map_id).await;
            if let Some(h) = hub.upgrade() {
                h.lock().expect("hub lock").replication.connected -= 1;
            }
            match r {
                Ok(()) => tracing::info!(%peer, "replication: standby left"),
                Err(e) => tracing::warn!(%peer, error = %e, "replication: standby dropped"),
            }
        });
    }
}

async fn serve_one(
    mut stream: TcpStream,
    hub: &Weak<Mutex<Hub>>,
    base: &[u8; 32],
    map_id: u32,
) -> anyhow::Result<()> {
    stream.set_nodelay(true)?;
    let nonce: [u8; NONCE_LEN] = rand::random();
    stream.write_all(&Handshake::challenge(&nonce)).await?;
    let mut hello = [0u8; HELLO_LEN];
    tokio::time::timeout(HANDSHAKE_TIMEOUT, stream.read_exact(&mut hello))
        .await
        .context("handshake timed out")??;
    let key = Handshake::accept(base, &nonce, &hello)?;
    // An own handle on the session table: reading it takes 20-30 ms at
    // 100k entries, done off the event loop and without the hub lock.
    let mut map = Some(MapData::from_id(map_id).context("opening the session table")?);
    let mut entries = Vec::new();
    let mut publisher = Publisher::new();
    let mut enc = Encoder::new(key);
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let m = map.take().expect("map handle");
        let (m, e, read) = tokio::task::spawn_blocking(move || {
            let r = read_sessions_batch(&m, &mut entries);
            (m, entries, r)
        })
        .await?;
        map = Some(m);
        entries = e;
        read.context("reading the session table")?;
        // Strong only while locked: never across an await.
        let Some(endpoints) = hub
            .upgrade()
            .map(|h| h.lock().expect("hub lock").slots.installed_all().clone())
        else {
            return Ok(());
        };
        let tables = Tables {
            endpoints,
            sessions: entries
                .iter()
                .map(|(k, v)| {
                    (
                        *k,
                        Session {
                            dst_slot: v.dst_slot,
                            flags: v.flags,
                        },
                    )
                })
                .collect(),
        };
        let n = publisher.tick(&tables, &mut enc);
        stream.write_all(enc.bytes()).await?;
        enc.clear();
        if let Some(h) = hub.upgrade() {
            h.lock().expect("hub lock").replication.records_sent += n as u64;
        }
    }
}

/// Follow the active at `addr` until the process ends, reconnecting with
/// backoff.
pub(crate) async fn follow(addr: String, hub: Arc<Mutex<Hub>>, base: [u8; 32]) {
    let mut backoff = Duration::from_millis(200);
    let mut said = String::new();
    loop {
        let started = Instant::now();
        let r = follow_once(&addr, &hub, &base).await;
        hub.lock().expect("hub lock").replication.connected = 0;
        if let Err(e) = r {
            // Once per distinct failure, not every retry.
            let msg = format!("{e:#}");
            if msg != said {
                tracing::warn!(active = %addr, error = %msg, "replication: not following the active; retrying");
                said = msg;
            }
        }
        if started.elapsed() > Duration::from_secs(10) {
            backoff = Duration::from_millis(200);
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

async fn follow_once(addr: &str, hub: &Arc<Mutex<Hub>>, base: &[u8; 32]) -> anyhow::Result<()> {
    let mut s = tokio::time::timeout(HANDSHAKE_TIMEOUT, TcpStream::connect(addr))
        .await
        .context("connect timed out")??;
    s.set_nodelay(true)?;
    let mut challenge = [0u8; CHALLENGE_LEN];
    tokio::time::timeout(HANDSHAKE_TIMEOUT, s.read_exact(&mut challenge))
        .await
        .context("handshake timed out")??;
    let nonce: [u8; NONCE_LEN] = rand::random();
    let (hello, key) = Handshake::hello(base, &challenge, &nonce)?;
    s.write_all(&hello).await?;
    hub.lock()
        .expect("hub lock")
        .replication
        .replica
        .reconnect();
    let mut dec = Decoder::new(key);
    let mut buf = vec![0u8; 64 * 1024];
    let mut ops = Vec::new();
    let mut logged = false;
    loop {
        let n = tokio::time::timeout(READ_TIMEOUT, s.read(&mut buf))
            .await
            .context("the active went silent")??;
        if n == 0 {
            anyhow::bail!("the active closed the stream");
        }
        dec.push(&buf[..n]);
        let mut h = hub.lock().expect("hub lock");
        let now = Instant::now();
        while let Some(m) = dec.next_message()? {
            ops.clear();
            h.replication.replica.on_message(&m, now, &mut ops)?;
            h.apply_replica_ops(&ops);
        }
        if h.replication.replica.synced() {
            h.replication.connected = 1;
            if !logged {
                let t = h.replication.replica.tables();
                tracing::info!(
                    active = %addr,
                    endpoints = t.endpoints.len(),
                    sessions = t.sessions.len(),
                    "replication: following the active"
                );
                logged = true;
            }
        }
    }
}

/// `--replica-listen`: bind early, so a taken port fails the start.
pub(crate) async fn bind(addr: SocketAddr) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr).await.with_context(|| {
        format!("replication listener on {addr} (--replica-listen): is the port taken?")
    })
}
