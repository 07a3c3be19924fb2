//! Published services on the hub: a listener per service on the hub's
//! public addresses and its tunnel address, a proxy per connection (TCP)
//! or per client flow (UDP) to a healthy backend over the hub's own
//! WireGuard, and a health check per backend.
//!
//! The proxy ends the client's connection at the hub and opens its own to
//! the backend: backends see the hub's tunnel address (10.88.0.1) as the
//! source, never the client's (README "Published services"). The hub's
//! forwarding is not involved, so a service opens no path but to the
//! `SPOKE:PORT`s it names. Which backend takes a connection and when one
//! is healthy is decided in [`crate::core::publish`].

use std::collections::{BTreeMap, HashMap};
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};
use tokio::runtime::Handle;
use tokio::task::JoinHandle;

use crate::core::publish::{
    Balancer, CHECK_INTERVAL, CHECK_TIMEOUT, Listen, Proto, Service, Target,
};
use crate::core::registry::Registry;

/// Connecting to a backend takes at most this long before the next one
/// is tried (and the failure counts against the backend's health).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Connections (TCP) or flows (UDP) one service proxies at once; more are
/// refused rather than exhausting the hub's file descriptors.
const MAX_ACTIVE: u64 = 4096;
/// A UDP flow (one client address) is forgotten after this much silence.
const FLOW_IDLE: Duration = Duration::from_secs(60);
/// Ended UDP flows are dropped from the table this often.
const SWEEP: Duration = Duration::from_secs(5);

/// Counters of one backend; kept across restarts of its service (a
/// backend added to a service keeps the others' counts).
#[derive(Default)]
pub struct BackendCounters {
    /// Connections (TCP) or flows (UDP) it took.
    pub connections: AtomicU64,
    pub active: AtomicU64,
    /// Bytes from clients to the backend, and back.
    pub bytes_in: AtomicU64,
    pub bytes_out: AtomicU64,
    /// Failed health checks and failed connects.
    pub failures: AtomicU64,
}

pub struct Backend {
    pub target: Target,
    pub addr: SocketAddr,
    pub counters: Arc<BackendCounters>,
}

/// A running service as metrics and the API see it.
pub struct ServiceState {
    pub name: String,
    pub listen: Listen,
    pub backends: Vec<Backend>,
    pub balancer: Mutex<Balancer>,
    /// Connections or flows refused: no healthy backend, or too many.
    pub rejected: Arc<AtomicU64>,
    /// The addresses it listens on, or why it does not (yet).
    pub bound: Mutex<Vec<(SocketAddr, Result<(), String>)>>,
    /// UDP without a probe: backends follow their spoke's WireGuard.
    pub follows_spokes: bool,
}

impl ServiceState {
    fn pick(&self, tried: &[usize]) -> Option<usize> {
        self.balancer.lock().expect("balancer lock").pick(tried)
    }

    fn record(&self, i: usize, ok: bool) {
        if !ok {
            self.backends[i].counters.failures.fetch_add(1, Relaxed);
        }
        let mut b = self.balancer.lock().expect("balancer lock");
        if b.health[i].record(ok) {
            let state = b.health[i].label();
            drop(b);
            tracing::info!(service = %self.name, backend = %self.backends[i].target, state, "backend health changed");
        }
    }

    /// Per backend: (target, state label).
    pub fn health(&self) -> Vec<(String, &'static str)> {
        let b = self.balancer.lock().expect("balancer lock");
        self.backends
            .iter()
            .zip(&b.health)
            .map(|(be, h)| (be.target.to_string(), h.label()))
            .collect()
    }
}

/// What a running service was started from: a change restarts it.
#[derive(Clone, PartialEq)]
struct Spec {
    service: Service,
    backends: Vec<(Target, SocketAddr)>,
    addrs: Vec<IpAddr>,
}

struct Running {
    spec: Spec,
    state: Arc<ServiceState>,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for Running {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// The hub's published services.
pub struct Publisher {
    /// Their own runtime thread: proxied traffic never delays the
    /// controller's event loop (handshake routing, map updates).
    rt: Option<tokio::runtime::Runtime>,
    /// The hub's tunnel address: a listen address of every service.
    tunnel: Ipv4Addr,
    /// The hub's public addresses (re-read with the hub's addresses).
    public: Vec<IpAddr>,
    running: BTreeMap<String, Running>,
    /// Counters by (service, backend), kept while the pair is published.
    counters: HashMap<(String, Target), Arc<BackendCounters>>,
    rejected: HashMap<String, Arc<AtomicU64>>,
    /// The last registry's services with their local backends.
    wanted: Vec<(Service, Vec<(Target, SocketAddr)>)>,
}

impl Publisher {
    pub fn new(tunnel: Ipv4Addr) -> io::Result<Self> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("relayhub-publish")
            .enable_all()
            .build()?;
        Ok(Publisher {
            rt: Some(rt),
            tunnel,
            public: Vec::new(),
            running: BTreeMap::new(),
            counters: HashMap::new(),
            rejected: HashMap::new(),
            wanted: Vec::new(),
        })
    }

    fn handle(&self) -> Handle {
        self.rt
            .as_ref()
            .expect("publisher runtime")
            .handle()
            .clone()
    }

    pub fn states(&self) -> Vec<Arc<ServiceState>> {
        self.running.values().map(|r| r.state.clone()).collect()
    }

    /// The registry's services; `local(name)` is the tunnel address of a
    /// spoke this hub reaches over its WireGuard (`None`: a spoke homed on
    /// another mesh hub, which that hub's listeners serve).
    pub fn set_services(&mut self, reg: &Registry, local: impl Fn(&str) -> Option<Ipv4Addr>) {
        self.wanted = reg
            .services()
            .iter()
            .map(|v| {
                let backends = v
                    .backends
                    .iter()
                    .filter_map(|t| {
                        local(&t.spoke).map(|a| (t.clone(), SocketAddr::from((a, t.port))))
                    })
                    .collect();
                (v.clone(), backends)
            })
            .collect();
        self.reconcile();
    }

    /// The hub's public addresses changed.
    pub fn set_public(&mut self, v4: Option<Ipv4Addr>, v6: Option<std::net::Ipv6Addr>) {
        let public: Vec<IpAddr> = v4
            .map(IpAddr::V4)
            .into_iter()
            .chain(v6.map(IpAddr::V6))
            .collect();
        if public != self.public {
            self.public = public;
            self.reconcile();
        }
    }

    /// Whether a running service's backends follow their spokes' health.
    pub fn follows_spokes(&self) -> bool {
        self.running.values().any(|r| r.state.follows_spokes)
    }

    /// UDP services without a probe: each backend is as healthy as its
    /// spoke's WireGuard (`up(spoke name)`).
    pub fn follow_spokes(&self, up: impl Fn(&str) -> bool) {
        for r in self.running.values() {
            if !r.state.follows_spokes {
                continue;
            }
            let mut b = r.state.balancer.lock().expect("balancer lock");
            for (i, be) in r.state.backends.iter().enumerate() {
                if b.health[i].set(up(&be.target.spoke)) {
                    tracing::info!(service = %r.state.name, backend = %be.target, state = b.health[i].label(), "backend health changed (its spoke's WireGuard)");
                }
            }
        }
    }

    fn reconcile(&mut self) {
        let mut addrs = self.public.clone();
        addrs.push(IpAddr::V4(self.tunnel));
        let wanted: BTreeMap<String, Spec> = self
            .wanted
            .iter()
            .map(|(service, backends)| {
                let spec = Spec {
                    service: service.clone(),
                    backends: backends.clone(),
                    addrs: addrs.clone(),
                };
                (service.name.clone(), spec)
            })
            .collect();
        self.running
            .retain(|name, r| wanted.get(name).is_some_and(|w| *w == r.spec));
        self.counters.retain(|(svc, t), _| {
            wanted
                .get(svc)
                .is_some_and(|w| w.service.backends.contains(t))
        });
        self.rejected.retain(|svc, _| wanted.contains_key(svc));
        for (name, spec) in wanted {
            if self.running.contains_key(&name) {
                continue;
            }
            let r = self.start(spec);
            self.running.insert(name, r);
        }
    }

    fn start(&mut self, spec: Spec) -> Running {
        let rt = self.handle();
        let _rt = rt.enter();
        let svc = &spec.service;
        let backends = spec
            .backends
            .iter()
            .map(|(t, a)| Backend {
                target: t.clone(),
                addr: *a,
                counters: self
                    .counters
                    .entry((svc.name.clone(), t.clone()))
                    .or_default()
                    .clone(),
            })
            .collect::<Vec<_>>();
        let rejected = self.rejected.entry(svc.name.clone()).or_default().clone();
        let mut tasks = Vec::new();
        let bound = spec
            .addrs
            .iter()
            .map(|ip| {
                let at = SocketAddr::new(*ip, svc.listen.port);
                (at, Err("starting".to_owned()))
            })
            .collect::<Vec<_>>();
        let follows_spokes = svc.listen.proto == Proto::Udp && svc.udp_probe.is_none();
        let state = Arc::new(ServiceState {
            name: svc.name.clone(),
            listen: svc.listen,
            balancer: Mutex::new(Balancer::new(backends.len())),
            backends,
            rejected,
            bound: Mutex::new(bound),
            follows_spokes,
        });
        tracing::info!(service = %svc.name, listen = %svc.listen, backends = state.backends.len(), "publishing");
        for slot in 0..spec.addrs.len() {
            tasks.push(rt.spawn(listen(state.clone(), slot)));
        }
        if !follows_spokes {
            for i in 0..state.backends.len() {
                tasks.push(rt.spawn(check_backend(state.clone(), i, svc.udp_probe.clone())));
            }
        }
        Running { spec, state, tasks }
    }
}

/// Binds the service's `slot`th address and serves it. A service that
/// was just restarted (its backends changed) may find its old socket not
/// yet closed: the bind is retried for up to 2 s.
async fn listen(state: Arc<ServiceState>, slot: usize) {
    let at = state.bound.lock().expect("bound lock")[slot].0;
    let mut tries = 0;
    loop {
        let r = match state.listen.proto {
            Proto::Tcp => bind_tcp(at).map(Ok),
            Proto::Udp => bind_udp(at).map(|s| Err(Arc::new(s))),
        };
        match r {
            Ok(sock) => {
                state.bound.lock().expect("bound lock")[slot].1 = Ok(());
                match sock {
                    Ok(l) => accept_tcp(l, state).await,
                    Err(s) => serve_udp(s, state).await,
                }
                return;
            }
            Err(e) if e.kind() == io::ErrorKind::AddrInUse && tries < 20 => {
                tries += 1;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => {
                tracing::error!(service = %state.name, addr = %at, error = %e, "published service cannot listen there");
                state.bound.lock().expect("bound lock")[slot].1 = Err(e.to_string());
                return;
            }
        }
    }
}

fn bind_tcp(at: SocketAddr) -> io::Result<tokio::net::TcpListener> {
    // std sets SO_REUSEADDR: a restarted hub binds again at once.
    let l = std::net::TcpListener::bind(at)?;
    l.set_nonblocking(true)?;
    tokio::net::TcpListener::from_std(l)
}

fn bind_udp(at: SocketAddr) -> io::Result<UdpSocket> {
    // One socket per address, so answers leave from the address the
    // client sent to.
    let s = std::net::UdpSocket::bind(at)?;
    s.set_nonblocking(true)?;
    UdpSocket::from_std(s)
}

/// Health checks of backend `i`, forever: a TCP connect, or the UDP
/// probe answered, within [`CHECK_TIMEOUT`], every [`CHECK_INTERVAL`].
async fn check_backend(state: Arc<ServiceState>, i: usize, probe: Option<Vec<u8>>) {
    let addr = state.backends[i].addr;
    let mut tick = tokio::time::interval(CHECK_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let ok = match &probe {
            None => tokio::time::timeout(CHECK_TIMEOUT, TcpStream::connect(addr))
                .await
                .is_ok_and(|r| r.is_ok()),
            Some(p) => tokio::time::timeout(CHECK_TIMEOUT, udp_probe(addr, p))
                .await
                .is_ok_and(|r| r.is_ok()),
        };
        state.record(i, ok);
    }
}

async fn udp_probe(addr: SocketAddr, probe: &[u8]) -> io::Result<()> {
    let s = UdpSocket::bind(unspecified(addr)).await?;
    s.connect(addr).await?;
    s.send(probe).await?;
    let mut buf = [0u8; 64];
    // Any answer will do; an ICMP "port unreachable" is an error here.
    s.recv(&mut buf).await.map(|_| ())
}

fn unspecified(like: SocketAddr) -> SocketAddr {
    match like {
        SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        SocketAddr::V6(_) => (std::net::Ipv6Addr::UNSPECIFIED, 0).into(),
    }
}

impl Drop for Publisher {
    fn drop(&mut self) {
        self.running.clear();
        // Dropped on the hub's own runtime, which may not block.
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

/// Holds one unit of a backend's (and the service's) active count.
struct Active(Arc<BackendCounters>);

impl Drop for Active {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Relaxed);
    }
}

fn total_active(state: &ServiceState) -> u64 {
    state
        .backends
        .iter()
        .map(|b| b.counters.active.load(Relaxed))
        .sum()
}

async fn accept_tcp(l: tokio::net::TcpListener, state: Arc<ServiceState>) {
    loop {
        let (client, peer) = match l.accept().await {
            Ok(c) => c,
            Err(e) => {
                // EMFILE and the like: back off instead of spinning.
                tracing::warn!(service = %state.name, error = %e, "accept");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        if total_active(&state) >= MAX_ACTIVE {
            state.rejected.fetch_add(1, Relaxed);
            continue;
        }
        tokio::spawn(proxy_tcp(client, peer, state.clone()));
    }
}

/// Connects to a healthy backend (the next one if it fails) and relays
/// both ways until both sides are done.
async fn proxy_tcp(client: TcpStream, peer: SocketAddr, state: Arc<ServiceState>) {
    let mut tried = Vec::new();
    let (backend, i) = loop {
        let Some(i) = state.pick(&tried) else {
            state.rejected.fetch_add(1, Relaxed);
            tracing::debug!(service = %state.name, client = %peer, "no healthy backend");
            return;
        };
        tried.push(i);
        let addr = state.backends[i].addr;
        match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr)).await {
            Ok(Ok(s)) => {
                tracing::debug!(service = %state.name, client = %peer, backend = %state.backends[i].target, "proxying");
                break (s, i);
            }
            _ => state.record(i, false),
        }
    };
    let c = state.backends[i].counters.clone();
    c.connections.fetch_add(1, Relaxed);
    c.active.fetch_add(1, Relaxed);
    let _active = Active(c.clone());
    let _ = client.set_nodelay(true);
    let _ = backend.set_nodelay(true);
    let (cr, cw) = client.into_split();
    let (br, bw) = backend.into_split();
    tokio::join!(pump(cr, bw, &c.bytes_in), pump(br, cw, &c.bytes_out));
}

/// Copies until EOF or an error, counting bytes as they pass (a long
/// connection shows in the metrics while it lasts), then half-closes.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    bytes: &AtomicU64,
) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if to.write_all(&buf[..n]).await.is_err() {
                    break;
                }
                bytes.fetch_add(n as u64, Relaxed);
            }
        }
    }
    let _ = to.shutdown().await;
}

struct Flow {
    backend: usize,
    sock: Arc<UdpSocket>,
    task: JoinHandle<()>,
    _active: Active,
}

/// A UDP service on one address: each client address is a flow with its
/// own socket to one backend; answers go back from the service's socket.
async fn serve_udp(listener: Arc<UdpSocket>, state: Arc<ServiceState>) {
    let mut flows: HashMap<SocketAddr, Flow> = HashMap::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut last_sweep = Instant::now();
    loop {
        // Woken at least every few seconds to forget flows that ended.
        let got = tokio::time::timeout(SWEEP, listener.recv_from(&mut buf)).await;
        if last_sweep.elapsed() >= SWEEP {
            flows.retain(|_, f| !f.task.is_finished());
            last_sweep = Instant::now();
        }
        let (n, client) = match got {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => {
                tracing::debug!(service = %state.name, error = %e, "udp recv");
                continue;
            }
            Err(_) => continue,
        };
        // A flow whose backend went down or whose socket gave up moves.
        let stale = flows.get(&client).is_some_and(|f| {
            f.task.is_finished()
                || !state.balancer.lock().expect("balancer lock").health[f.backend].is_up()
        });
        if stale && let Some(f) = flows.remove(&client) {
            f.task.abort();
        }
        let f = match flows.entry(client) {
            std::collections::hash_map::Entry::Occupied(o) => o.into_mut(),
            std::collections::hash_map::Entry::Vacant(v) => {
                if total_active(&state) >= MAX_ACTIVE {
                    state.rejected.fetch_add(1, Relaxed);
                    continue;
                }
                let Some(i) = state.pick(&[]) else {
                    state.rejected.fetch_add(1, Relaxed);
                    continue;
                };
                let be = &state.backends[i];
                let sock = match UdpSocket::bind(unspecified(be.addr)).await {
                    Ok(s) if s.connect(be.addr).await.is_ok() => Arc::new(s),
                    _ => {
                        state.rejected.fetch_add(1, Relaxed);
                        continue;
                    }
                };
                be.counters.connections.fetch_add(1, Relaxed);
                be.counters.active.fetch_add(1, Relaxed);
                let task = tokio::spawn(udp_answers(
                    sock.clone(),
                    listener.clone(),
                    client,
                    be.counters.clone(),
                ));
                v.insert(Flow {
                    backend: i,
                    sock,
                    task,
                    _active: Active(be.counters.clone()),
                })
            }
        };
        if f.sock.send(&buf[..n]).await.is_ok() {
            state.backends[f.backend]
                .counters
                .bytes_in
                .fetch_add(n as u64, Relaxed);
        }
    }
}

/// Backend -> client for one flow, until [`FLOW_IDLE`] of silence.
async fn udp_answers(
    sock: Arc<UdpSocket>,
    listener: Arc<UdpSocket>,
    client: SocketAddr,
    counters: Arc<BackendCounters>,
) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match tokio::time::timeout(FLOW_IDLE, sock.recv(&mut buf)).await {
            Ok(Ok(n)) => {
                if listener.send_to(&buf[..n], client).await.is_ok() {
                    counters.bytes_out.fetch_add(n as u64, Relaxed);
                }
            }
            // An ICMP error for an earlier datagram is not the end of the flow.
            Ok(Err(e)) if e.kind() == io::ErrorKind::ConnectionRefused => {}
            _ => return,
        }
    }
}
