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

pub(crate) use crate::core::role::Role;
use crate::core::role::{Request, Roles, Steps};

/// Replication state the API and metrics show.
#[derive(Default)]
pub(crate) struct Replication {
    pub(crate) roles: Roles,
    /// Standby: the replicated tables and the stream's position.
    pub(crate) replica: crate::core::replica::Replica,
    /// Standby: a snapshot completed on the current connection.
    pub(crate) following: bool,
    /// Connections from standbys open now (authenticated or not).
    pub(crate) followers: u32,
    /// Records sent, over all connections.
    pub(crate) records_sent: u64,
}

impl Replication {
    pub(crate) fn role(&self) -> Role {
        self.roles.role()
    }

    /// Active: standbys connected; standby: 1 while following.
    pub(crate) fn connected(&self) -> u32 {
        match self.role() {
            Role::Active => self.followers,
            Role::Standby => u32::from(self.following),
            Role::Off => 0,
        }
    }
}

/// Port of the datagram that makes the hub's WireGuard handshake with a
/// spoke on takeover (discard: nothing on the spoke needs to answer it).
const NUDGE_PORT: u16 = 9;

impl Hub {
    /// A role change from keepalived's notify scripts (SIGUSR1: active,
    /// SIGUSR2: standby). What changes is `core::role`'s to decide; this
    /// carries out the part done under the hub lock and returns the steps
    /// for the caller's tasks (stop or start following). `None`: nothing
    /// changed.
    pub(crate) fn change_role(&mut self, req: Request) -> Option<Steps> {
        let steps = self.replication.roles.request(req)?;
        if steps.stop_following {
            self.replication.following = false;
        }
        if steps.adopt {
            self.adopt_tables();
        } else {
            tracing::info!("this hub is a standby now");
        }
        Some(steps)
    }

    /// Become the active hub: take the tables the standby wrote into the
    /// maps as this hub's own, so the reconciler, endpoint refresh, proofs
    /// and the session sweep go on from them, and have the hub's WireGuard
    /// initiate to every spoke whose endpoint is known at once instead of
    /// waiting for the spokes' next handshake (up to 2 minutes).
    fn adopt_tables(&mut self) {
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
                endpoints.push((m.public_key.clone(), m.address, addr));
                nudge.push(m.address);
            }
        }
        // Fresh sessions with every spoke, in two updates for all: one
        // UAPI/netlink call per spoke would hold the hub lock for seconds
        // at 10k spokes.
        if let Err(e) = self.wg.restart_sessions(&endpoints) {
            tracing::warn!(error = %e, "takeover: pointing the hub's WireGuard at the spokes");
        }
        self.refresh_hub_addresses();
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
            takeovers = self.replication.roles.takeovers(),
            "takeover: this hub is active"
        );
    }

    /// What the maps hold now, as replicated tables (a standby about to
    /// follow diffs the first snapshot against this).
    fn tables_in_maps(&mut self) -> Tables {
        Tables {
            endpoints: self.datapath.installed_endpoints(),
            sessions: self
                .datapath
                .sessions()
                .into_iter()
                .map(|(k, v)| {
                    (
                        k,
                        Session {
                            dst_slot: v.dst_slot,
                            flags: v.flags,
                        },
                    )
                })
                .collect(),
        }
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
            // A standby's tables are a copy at best: never serve them (two
            // standbys would otherwise follow each other's stale copies).
            if !g.replication.roles.serves() {
                tracing::debug!(%peer, "replication: connection refused (this hub is not active)");
                continue;
            }
            if g.replication.followers >= MAX_CONNECTIONS {
                tracing::debug!(%peer, "replication: connection refused (limit)");
                continue;
            }
            g.replication.followers += 1;
        }
        drop(h);
        let hub = hub.clone();
        tokio::spawn(async move {
            tracing::info!(%peer, "replication: standby connected");
            let r = serve_one(stream, &hub, &base, map_id).await;
            if let Some(h) = hub.upgrade() {
                h.lock().expect("hub lock").replication.followers -= 1;
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
        let Some(endpoints) = hub.upgrade().map(|h| {
            let g = h.lock().expect("hub lock");
            g.replication
                .roles
                .serves()
                .then(|| g.slots.installed_all().clone())
        }) else {
            return Ok(());
        };
        // Demoted: the standby reconnects and finds the new active.
        let Some(endpoints) = endpoints else {
            tracing::info!("replication: this hub is a standby now: closing the stream");
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

/// Follow the active at `addr` until aborted (promotion) or the process
/// ends, reconnecting with backoff.
pub(crate) async fn follow(addr: String, hub: Arc<Mutex<Hub>>, base: [u8; 32]) {
    // The maps may hold this hub's own tables (it was active, or kept its
    // pinned maps across a restart): the first snapshot is diffed against
    // them, so what the active does not have is removed.
    {
        let mut h = hub.lock().expect("hub lock");
        let maps = h.tables_in_maps();
        tracing::debug!(
            endpoints = maps.endpoints.len(),
            sessions = maps.sessions.len(),
            "replication: the maps before following"
        );
        h.replication.replica.rebase(maps);
    }
    let mut backoff = Duration::from_millis(200);
    let mut said = String::new();
    loop {
        if !hub.lock().expect("hub lock").replication.roles.follows() {
            return;
        }
        let started = Instant::now();
        let r = follow_once(&addr, &hub, &base).await;
        hub.lock().expect("hub lock").replication.following = false;
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
        // Promoted between the read and the lock: the maps are this hub's
        // own now; the abort is on its way.
        if !h.replication.roles.follows() {
            return Ok(());
        }
        let now = Instant::now();
        while let Some(m) = dec.next_message()? {
            ops.clear();
            h.replication.replica.on_message(&m, now, &mut ops)?;
            h.apply_replica_ops(&ops);
        }
        if h.replication.replica.synced() {
            h.replication.following = true;
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
