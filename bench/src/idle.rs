//! `relay-bench idle`: what an idle full mesh of N spokes costs the hub.
//!
//! The hub is the real `relayhub run` (native XDP, its own wireguard-go) in
//! the harness topology, everything of it on CPU 0. The spokes are
//! simulated by one thread on CPU 1 in a host of their own on the router
//! ([`SimHost`]): per spoke a UDP socket on its own address and boringtun
//! `Tunn`s driven by their timers, which is all stock WireGuard does while
//! nothing is sent. Registering thousands of spokes through the
//! CLI is too slow, so the registry is written with relay-user's own store
//! code before the hub starts.
//!
//! Timers: `new` (only the hub peer has PersistentKeepalive 25): the hub
//! sees N keepalives per 25 s and a rekey per spoke per 2 min, all for its
//! own WireGuard. `old` (every peer had it): every spoke pair also keeps a
//! session through the hub, N(N-1)/25 relayed keepalives/s and N(N-1)/240
//! relayed initiations/s. `old` is simulated only up to [`OLD_MAX`] spokes;
//! larger meshes are computed from the extra cost measured there.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use boringtun::noise::handshake::parse_handshake_anon;
use boringtun::noise::{Packet, Tunn, TunnResult};
use boringtun::x25519::{PublicKey, StaticSecret};
use rand::Rng;
use relay_tests::netns::{Netns, Veth};
use relay_tests::topology::{HUB_ADDR, HUB_PORT};
use relay_tests::{Hub, HubKind, Topology};
use relay_user::core::registry::TunnelNet;
use relay_user::store::registry::RegistryStore;

use crate::packet::{AUX_CPU, HUB_CPU};
use crate::sys;

/// Timers as the printed spoke configs set them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Timers {
    /// PersistentKeepalive on the hub peer only.
    New,
    /// PersistentKeepalive on every peer (spoke-to-spoke sessions too).
    Old,
}

impl Timers {
    fn name(self) -> &'static str {
        match self {
            Timers::New => "new",
            Timers::Old => "old",
        }
    }
}

/// Largest mesh `--timers old` simulates: N(N-1) Tunns in one thread.
pub const OLD_MAX: usize = 100;
/// The target: an idle mesh of this many spokes ...
const TARGET_SPOKES: usize = 10_000;
/// ... costs the hub at most this share of one core.
const TARGET_CORE: f64 = 0.05;
/// A /16 so that 10k spokes get addresses (the default is a /24).
const NETWORK: &str = "10.88.0.0/16";
const KEEPALIVE_SECS: u16 = 25;
/// REKEY_AFTER_TIME: the initiator of a session starts a new handshake
/// when it sends (keepalives count) on a session this old.
const REKEY_AFTER: Duration = Duration::from_secs(120);
/// How often every Tunn's timers run (boringtun rounds them to ~1 s).
const TICK: Duration = Duration::from_millis(200);
/// After the last first handshake was sent, every session must be up within this.
const SETTLE: Duration = Duration::from_secs(30);
/// The simulated spokes' addresses, one each (see [`SimHost`]).
const SIM_NET: Ipv4Addr = Ipv4Addr::new(100, 64, 0, 0);

pub struct Opts {
    pub spokes: Vec<usize>,
    pub secs: u64,
    pub timers: Timers,
}

/// One measured window.
#[derive(Clone, Debug)]
pub struct Row {
    n: usize,
    timers: Timers,
    /// Frames/s received and sent by the hub's NIC.
    in_pps: f64,
    out_pps: f64,
    /// Initiations/s the controller routed to the hub's WireGuard and to spokes.
    hs_to_hub: f64,
    hs_relayed: f64,
    /// Frames/s relayed by the XDP program.
    xdp_pps: f64,
    /// Shares of one core.
    ctl: f64,
    wg: f64,
    napi: f64,
    sim: f64,
    load: f64,
    /// Of the window, as the simulator saw it (per second).
    sim_sent: f64,
    sim_recv: f64,
    sim_cookies: f64,
    sim_problems: String,
    wg_go: bool,
    /// The hub's share in each of [`SLICES`] equal parts of the window:
    /// how much the figure moves within one run.
    hub_slices: Vec<f64>,
}

/// Parts of the measurement window sampled on their own.
const SLICES: u32 = 3;

impl Row {
    fn hub(&self) -> f64 {
        self.ctl + self.wg + self.napi
    }

    /// "lo-hi" of the window's parts, in % of a core.
    fn slice_range(&self) -> String {
        if self.hub_slices.is_empty() {
            return "-".into();
        }
        let (lo, hi) = crate::packet::spread(self.hub_slices.iter().copied());
        format!("{:.2}-{:.2}", 100.0 * lo, 100.0 * hi)
    }
}

pub fn run(opts: &Opts) -> anyhow::Result<()> {
    relay_tests::cmd::require_root();
    anyhow::ensure!(!opts.spokes.is_empty(), "--spokes lists no mesh size");
    anyhow::ensure!(opts.secs > 0, "--secs must be at least 1");
    let max = opts.spokes.iter().copied().max().unwrap_or(0);
    anyhow::ensure!(
        opts.spokes
            .iter()
            .all(|&n| (1..=relay_common::MAX_SLOTS as usize).contains(&n)),
        "--spokes: 1 to {} (the XDP slot maps' capacity)",
        relay_common::MAX_SLOTS
    );
    raise_nofile(max + 256)?;
    let window = Duration::from_secs(opts.secs);
    let mut rows = Vec::new();
    let mut computed = Vec::new();
    match opts.timers {
        Timers::New => {
            for &n in &opts.spokes {
                rows.push(measure(n, Timers::New, window).with_context(|| format!("{n} spokes"))?);
            }
        }
        Timers::Old => {
            let (small, large): (Vec<usize>, Vec<usize>) =
                opts.spokes.iter().partition(|&&n| n <= OLD_MAX);
            let Some(&base) = small.iter().max() else {
                bail!(
                    "--timers old simulates at most {OLD_MAX} spokes (N(N-1) spoke-to-spoke sessions in one \
                     thread); larger meshes are computed from a measured one: include a size <= {OLD_MAX} \
                     in --spokes, e.g. --spokes 100,1000,10000"
                );
            };
            for &n in &small {
                rows.push(measure(n, Timers::Old, window).with_context(|| format!("{n} spokes"))?);
            }
            if !large.is_empty() {
                // The extra cost of the spoke-to-spoke timers is the old
                // row minus a new-timers row of the same mesh.
                let b = measure(base, Timers::New, window)
                    .with_context(|| format!("{base} spokes, new-timers baseline"))?;
                let o = rows
                    .iter()
                    .find(|r| r.n == base)
                    .cloned()
                    .context("the measured old-timers row")?;
                rows.push(b.clone());
                computed = large.iter().map(|&n| Computed::new(n, &o, &b)).collect();
            }
        }
    }
    print_table(&rows, &computed, opts.secs);
    Ok(())
}

/// The extra hub cost of old timers at a size too large to simulate.
#[derive(Clone, Debug)]
pub struct Computed {
    n: usize,
    keepalives: f64,
    initiations: f64,
    /// Share of one core on top of the new-timers cost at `n`.
    extra: f64,
    /// Measured at (spokes, extra share, extra frames/s in).
    base: (usize, f64, f64),
}

impl Computed {
    /// Scale the measured extra cost by the number of spoke pairs: the
    /// frame mix (keepalives, rekeys) is the same per pair.
    fn new(n: usize, old: &Row, new: &Row) -> Computed {
        let pairs = |n: usize| (n * n.saturating_sub(1)) as f64;
        let extra = (old.hub() - new.hub()).max(0.0);
        Computed {
            n,
            keepalives: pairs(n) / f64::from(KEEPALIVE_SECS),
            initiations: pairs(n) / (2.0 * REKEY_AFTER.as_secs_f64()),
            extra: extra * pairs(n) / pairs(old.n).max(1.0),
            base: (old.n, extra, old.in_pps - new.in_pps),
        }
    }
}

/// What `relay-bench run` reports: new timers at each of `sizes`, old
/// timers measured at the smallest and computed for the others.
pub struct IdleResults {
    pub secs: u64,
    pub rows: Vec<Row>,
    pub computed: Vec<Computed>,
}

pub fn results(sizes: &[usize], secs: u64) -> anyhow::Result<IdleResults> {
    let max = sizes.iter().copied().max().unwrap_or(0);
    raise_nofile(max + 256)?;
    let window = Duration::from_secs(secs);
    let mut rows = Vec::new();
    for &n in sizes {
        rows.push(measure(n, Timers::New, window).with_context(|| format!("{n} spokes"))?);
    }
    let mut computed = Vec::new();
    if let Some(&base) = sizes.iter().filter(|&&n| n <= OLD_MAX).min() {
        let old = measure(base, Timers::Old, window)
            .with_context(|| format!("{base} spokes, old timers"))?;
        let new = rows
            .iter()
            .find(|r| r.n == base)
            .cloned()
            .context("the new-timers row")?;
        computed = sizes
            .iter()
            .filter(|&&n| n > base)
            .map(|&n| Computed::new(n, &old, &new))
            .collect();
        rows.push(old);
    }
    Ok(IdleResults {
        secs,
        rows,
        computed,
    })
}

/// The results as a RESULTS.md section body.
pub fn markdown(r: &IdleResults) -> String {
    use std::fmt::Write as _;
    let mut w = String::new();
    let _ = writeln!(
        w,
        "| spokes | timers | hub packets/s in | out | initiations to the hub/s | relayed initiations/s | XDP relayed/s | hub CPU (% of one core) | in thirds of the window | controller | hub WireGuard | NIC NAPI | simulator | load |"
    );
    let _ = writeln!(
        w,
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
    );
    for r in &r.rows {
        let _ = writeln!(
            w,
            "| {} | {} | {:.1} | {:.1} | {:.2} | {:.2} | {:.1} | **{:.2}** | {} | {:.2} | {:.2} | {:.2} | {:.1} | {:.2} |",
            r.n,
            r.timers.name(),
            r.in_pps,
            r.out_pps,
            r.hs_to_hub,
            r.hs_relayed,
            r.xdp_pps,
            100.0 * r.hub(),
            r.slice_range(),
            100.0 * r.ctl,
            100.0 * r.wg,
            100.0 * r.napi,
            100.0 * r.sim,
            r.load
        );
    }
    if let Some(c) = r.computed.first() {
        let (n0, extra, frames) = c.base;
        let _ = writeln!(
            w,
            "\nOld timers (PersistentKeepalive on every peer), **computed, not measured**: the extra hub cost over new timers measured at {n0} spokes ({:.2} % of a core for {frames:.0} extra frames/s in) scaled by the number of spoke pairs:\n",
            100.0 * extra
        );
        let _ = writeln!(
            w,
            "| spokes | relayed keepalives/s | relayed initiations/s | extra hub CPU (% of one core) | |"
        );
        let _ = writeln!(w, "|---|---|---|---|---|");
        for c in &r.computed {
            let _ = writeln!(
                w,
                "| {} | {:.0} | {:.0} | ~{:.0} | {} |",
                c.n,
                c.keepalives,
                c.initiations,
                100.0 * c.extra,
                if c.initiations > 2000.0 {
                    "beyond the flood shield's 2,000 initiations/s: the hub would demand cookies and drop"
                } else {
                    ""
                }
            );
        }
    }
    w
}

/// The 10k-spoke new-timers row's hub share of one core, if measured.
pub fn target_share(r: &IdleResults) -> Option<f64> {
    target_row(r).map(Row::hub)
}

/// The target's row (10k spokes, new timers) in words: the whole hub, then
/// relayhub's own part and the hub's WireGuard's, whose cost is set by the
/// implementation (its handshakes with the spokes).
pub fn target_text(r: &IdleResults) -> Option<String> {
    let x = target_row(r)?;
    // What a hub WireGuard may spend per handshake for the whole hub to
    // hold 5 %: the implementation, not relayhub, sets that part.
    let per_handshake = if x.hs_to_hub > 0.0 {
        format!(
            ": {:.0} us of its CPU per handshake; the whole hub holds 5 % with a hub WireGuard that takes under {:.0} us",
            1e6 * x.wg / x.hs_to_hub,
            1e6 * (0.05 - x.ctl - x.napi).max(0.0) / x.hs_to_hub
        )
    } else {
        String::new()
    };
    Some(format!(
        "{:.1} % in all ({} % in thirds of the window): relayhub {:.1} % (controller {:.2}, NIC NAPI {:.2}), the hub's wireguard-go {:.1} % ({:.0} handshakes/s with the spokes, one per spoke every ~2 min{per_handshake})",
        100.0 * x.hub(),
        x.slice_range(),
        100.0 * (x.ctl + x.napi),
        100.0 * x.ctl,
        100.0 * x.napi,
        100.0 * x.wg,
        x.hs_to_hub,
    ))
}

fn target_row(r: &IdleResults) -> Option<&Row> {
    r.rows
        .iter()
        .find(|x| x.n == TARGET_SPOKES && x.timers == Timers::New)
}

fn print_table(rows: &[Row], computed: &[Computed], secs: u64) {
    let r = IdleResults {
        secs,
        rows: rows.to_vec(),
        computed: computed.to_vec(),
    };
    println!(
        "idle mesh, hub cost over a {secs} s window (shares of one core; hub = relayhub controller + hub WireGuard + NIC NAPI)\n"
    );
    print!("{}", markdown(&r));
    if let (Some(share), Some(text)) = (target_share(&r), target_text(&r)) {
        println!(
            "\n10k spokes <= 5 % of a core: {}: {text}",
            if share <= TARGET_CORE { "PASS" } else { "FAIL" },
        );
    }
    for r in rows {
        println!(
            "  {} spokes, {} timers: simulator sent {:.1}/s, received {:.1}/s, cookie replies {:.2}/s{}{}",
            r.n,
            r.timers.name(),
            r.sim_sent,
            r.sim_recv,
            r.sim_cookies,
            if r.sim_problems.is_empty() {
                String::new()
            } else {
                format!("; {}", r.sim_problems)
            },
            if r.wg_go {
                ""
            } else {
                "; no wireguard-go process: the hub's WireGuard is the kernel's, its CPU is not in `wg`"
            }
        );
    }
}

/// Let this process hold a socket per spoke.
fn raise_nofile(want: usize) -> anyhow::Result<()> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: valid pointer to an rlimit.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        bail!("getrlimit: {}", std::io::Error::last_os_error());
    }
    if lim.rlim_cur as usize >= want {
        return Ok(());
    }
    anyhow::ensure!(
        lim.rlim_max as usize >= want,
        "RLIMIT_NOFILE hard limit {} is below the {want} file descriptors needed (one socket per spoke); raise it (ulimit -Hn)",
        lim.rlim_max
    );
    lim.rlim_cur = lim.rlim_max;
    // SAFETY: as above.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) } != 0 {
        bail!("setrlimit: {}", std::io::Error::last_os_error());
    }
    Ok(())
}

/// Write the hub's key and a registry of `publics` into `dir` with
/// relay-user's store; returns the hub's public key.
fn write_registry(dir: &Path, publics: &[PublicKey]) -> anyhow::Result<PublicKey> {
    let state = relay_user::store::dir::StateDir::open(dir)?;
    let hub = state.hub_public_key()?;
    let net: TunnelNet = NETWORK.parse().context("tunnel network")?;
    state
        .registry()
        .update(&mut |r| {
            for (i, p) in publics.iter().enumerate() {
                let key = wireguard_control::Key(p.to_bytes());
                r.add_spoke(&format!("sim{i}"), key, &net, Some(&hub))?;
            }
            Ok(())
        })
        .context("write the registry")?;
    Ok(PublicKey::from(hub.0))
}

/// The simulated spokes' host: a namespace routed from the router (like
/// the NATs' WANs), where all of [`SIM_NET`]/16 is local, so every spoke
/// binds its own address. Not one NAT address for all: the hub budgets
/// initiations per source address in XDP (`--initiations-per-source`, 64/s
/// by default), and 10k spokes' first handshakes and rekeys from one
/// address would be dropped there, which real spokes never are.
struct SimHost {
    _link: Veth,
    ns: Netns,
}

impl SimHost {
    fn new(topo: &Topology) -> anyhow::Result<SimHost> {
        let p = &topo.prefix;
        let ns = Netns::new(&format!("{p}-sim"))?;
        let (rif, sif) = (format!("{p}rq"), format!("{p}q0"));
        let link = Veth::new(&rif, &topo.router, &sif, &ns)?;
        let net = format!("{SIM_NET}/16");
        topo.router
            .exec(&["ip", "addr", "add", "172.30.0.1/30", "dev", &rif])?;
        topo.router
            .exec(&["ip", "route", "add", &net, "via", "172.30.0.2"])?;
        ns.exec(&["ip", "addr", "add", "172.30.0.2/30", "dev", &sif])?;
        ns.exec(&["ip", "route", "add", "default", "via", "172.30.0.1"])?;
        ns.exec(&["ip", "route", "add", "local", &net, "dev", "lo"])?;
        Ok(SimHost { _link: link, ns })
    }

    /// Spoke `i`'s address.
    fn addr(i: usize) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(SIM_NET) + 1 + i as u32)
    }
}

/// CPU time (ns) of the hub's parts.
#[derive(Clone, Copy)]
struct HubCpu {
    ctl: u64,
    wg: u64,
    napi: u64,
}

/// The hub namespace's processes: relayhub (and anything else but
/// wireguard-go) and the hub's wireguard-go.
fn hub_pids(topo: &Topology) -> (Vec<u32>, Vec<u32>) {
    topo.hub.pids().into_iter().partition(|p| {
        std::fs::read_to_string(format!("/proc/{p}/comm")).is_ok_and(|c| {
            let c = c.trim_end();
            !(c.starts_with("wireguard-go") || c.starts_with("boringtun"))
        })
    })
}

fn hub_cpu(ctl: &[u32], wg: &[u32], napi: &[u32]) -> HubCpu {
    HubCpu {
        ctl: sys::cpu_ns(ctl),
        wg: sys::cpu_ns(wg),
        napi: sys::cpu_ns(napi),
    }
}

/// (rx, tx) packets of `iface` in namespace `ns`.
fn nic_packets(ns: &str, iface: &str) -> anyhow::Result<(u64, u64)> {
    let s = sys::ns_sh(
        ns,
        &format!(
            "cat /sys/class/net/{iface}/statistics/rx_packets /sys/class/net/{iface}/statistics/tx_packets"
        ),
    )?;
    let v: Vec<u64> = s
        .split_whitespace()
        .filter_map(|x| x.parse().ok())
        .collect();
    match v[..] {
        [rx, tx] => Ok((rx, tx)),
        _ => bail!("counters of {iface}: {s:?}"),
    }
}

/// The hub's /metrics. Not `Hub::metrics`: with a series per spoke the
/// exposition is ~9 MB at 10k spokes and can take longer than its 3 s.
fn scrape(topo: &Topology) -> anyhow::Result<relay_tests::prom::Metrics> {
    let url = format!("http://{}/metrics", relay_tests::hub::METRICS_ADDR);
    let out = topo
        .hub
        .output(&["curl", "-fsS", "-m", "30", &url], Duration::from_secs(40))?;
    anyhow::ensure!(out.success(), "scraping {url} failed");
    Ok(relay_tests::prom::Metrics::parse(&out.stdout))
}

/// One mesh: topology, registry, hub, simulated spokes, warm-up, window.
fn measure(n: usize, timers: Timers, window: Duration) -> anyhow::Result<Row> {
    eprintln!("== idle mesh: {n} spokes, {} timers ==", timers.name());
    anyhow::ensure!(
        timers == Timers::New || n <= OLD_MAX,
        "old timers are simulated up to {OLD_MAX} spokes"
    );
    let topo = Topology::builder().spokes(1).build()?;
    // The router's receive runs on the spokes' CPU.
    let _pass = sys::router_receives_xdp(&topo, AUX_CPU)?;
    let host = SimHost::new(&topo)?;

    let t0 = Instant::now();
    let secrets: Vec<StaticSecret> = (0..n)
        .map(|_| StaticSecret::from(rand::random::<[u8; 32]>()))
        .collect();
    let publics: Vec<PublicKey> = secrets.iter().map(PublicKey::from).collect();
    let hub_public = write_registry(&topo.workdir.join("state"), &publics)?;
    eprintln!("  registry of {n} spokes written in {:?}", t0.elapsed());
    let hub = Hub::start_with(
        &topo,
        HubKind::Relayhub,
        &["--network", NETWORK, "--xdp-mode", "native"],
    )?;
    // A spoke handshaking before the hub's WireGuard has its peer would
    // wait for a 5 s retry.
    relay_tests::cmd::wait_for(
        "the hub's WireGuard to have every spoke as a peer",
        Duration::from_secs(120),
        Duration::from_millis(200),
        || {
            let peers = topo.hub.exec(&["wg", "show", &hub.wg_iface, "peers"])?;
            Ok((peers.lines().count() >= n).then_some(()))
        },
    )?;
    eprintln!("  hub up with {n} peers after {:?}", t0.elapsed());
    let napi = sys::threaded_napi(&topo.hub.name, &topo.hub_nic, HUB_CPU)?;
    for p in topo.hub.pids() {
        sys::pin_pid(p, HUB_CPU);
    }

    let plan = Plan {
        n,
        timers,
        warmup: Duration::from_secs_f64((n as f64 / 500.0).max(f64::from(KEEPALIVE_SECS))),
        hub: SocketAddr::new(IpAddr::V4(HUB_ADDR), HUB_PORT),
        hub_public,
        secrets,
        publics,
    };
    let bound = plan.settle_by() + Duration::from_secs(30);
    let counters = Arc::new(Counters::default());
    let stop = Arc::new(AtomicBool::new(false));
    let (ready_tx, ready_rx) = mpsc::channel();
    let sim = {
        let (ns, counters, stop) = (host.ns.name.clone(), counters.clone(), stop.clone());
        std::thread::spawn(move || {
            sys::in_netns(&ns, move || {
                sys::pin_self(AUX_CPU);
                Sim::new(plan, counters)?.run(&stop, ready_tx)
            })
        })
    };
    // Stop the simulator whatever happens next, or its thread outlives the topology.
    let stop_sim = |stop: &AtomicBool| stop.store(true, Relaxed);
    let ready = match ready_rx.recv_timeout(bound) {
        Ok(r) => r,
        Err(e) => {
            stop_sim(&stop);
            let res = sim
                .join()
                .map_err(|_| anyhow::anyhow!("simulator panicked"))?;
            res?;
            bail!("the simulator did not report every session up within {bound:?} ({e})");
        }
    };
    eprintln!(
        "  every session up {:?} after the first initiation; measuring {window:?}",
        ready.took
    );
    let res = window_of(&topo, &napi, &counters, &ready, window);
    stop_sim(&stop);
    let left = sim
        .join()
        .map_err(|_| anyhow::anyhow!("simulator panicked"))??;
    let mut row = res?;
    row.n = n;
    row.timers = timers;
    if left.down > 0 {
        row.sim_problems
            .push_str(&format!("{} sessions down at the end", left.down));
    }
    if !left.errors.is_empty() {
        if !row.sim_problems.is_empty() {
            row.sim_problems.push_str("; ");
        }
        row.sim_problems
            .push_str(&format!("boringtun errors (whole run): {:?}", left.errors));
    }
    drop(hub);
    drop(host);
    drop(topo);
    Ok(row)
}

/// The measurement window: hub CPU, NIC, /metrics and the simulator.
fn window_of(
    topo: &Topology,
    napi: &[u32],
    counters: &Counters,
    ready: &Ready,
    window: Duration,
) -> anyhow::Result<Row> {
    // Threads started since (wireguard-go grows on load) go to CPU 0 too.
    for p in topo.hub.pids() {
        sys::pin_pid(p, HUB_CPU);
    }
    let (ctl, wg) = hub_pids(topo);
    let me = std::process::id();
    // /metrics outside the CPU window: serving it (a series per spoke)
    // costs the controller.
    let m0 = scrape(topo)?;
    let tm0 = Instant::now();
    let c0 = hub_cpu(&ctl, &wg, napi);
    let s0 = sys::thread_ns(me, ready.tid);
    let n0 = nic_packets(&topo.hub.name, &topo.hub_nic)?;
    let k0 = counters.snapshot();
    let t0 = Instant::now();
    let mut hub_slices = Vec::new();
    let (mut cs, mut ts) = (c0, t0);
    for _ in 0..SLICES {
        std::thread::sleep(window / SLICES);
        let c = hub_cpu(&ctl, &wg, napi);
        let t = Instant::now();
        let ns = (c.ctl + c.wg + c.napi).saturating_sub(cs.ctl + cs.wg + cs.napi);
        hub_slices.push(ns as f64 / 1e9 / (t - ts).as_secs_f64());
        (cs, ts) = (c, t);
    }
    let c1 = hub_cpu(&ctl, &wg, napi);
    let s1 = sys::thread_ns(me, ready.tid);
    let n1 = nic_packets(&topo.hub.name, &topo.hub_nic)?;
    let k1 = counters.snapshot();
    let dt = t0.elapsed().as_secs_f64();
    let m1 = scrape(topo)?;
    let dm = tm0.elapsed().as_secs_f64();
    let load = sys::loadavg()[0];
    anyhow::ensure!(s1 > s0, "the simulator thread {} vanished", ready.tid);
    let share = |a: u64, b: u64| b.saturating_sub(a) as f64 / 1e9 / dt;
    let rate = |name: &str, labels: &[(&str, &str)]| {
        (m1.get(name, labels).unwrap_or(0.0) - m0.get(name, labels).unwrap_or(0.0)) / dm
    };
    let init = |result| {
        rate(
            "relayhub_handshakes_total",
            &[("type", "initiation"), ("result", result)],
        )
    };
    let d = |i: usize| k1[i].saturating_sub(k0[i]) as f64 / dt;
    let sent: f64 = (0..5).map(|t| d(Counters::SENT + t)).sum();
    let recv: f64 = (0..5).map(|t| d(Counters::RECV + t)).sum();
    let mut problems = Vec::new();
    for (i, what) in [
        (Counters::SEND_ERRORS, "send errors"),
        (Counters::MISROUTED, "frames for another spoke"),
        (Counters::UNMATCHED, "frames matching no Tunn"),
        (Counters::DECAP_ERRORS, "decapsulation errors"),
    ] {
        if k1[i] > k0[i] {
            problems.push(format!("{} {what}", k1[i] - k0[i]));
        }
    }
    Ok(Row {
        n: 0,
        timers: Timers::New,
        in_pps: (n1.0 - n0.0) as f64 / dt,
        out_pps: (n1.1 - n0.1) as f64 / dt,
        hs_to_hub: init("to_hub"),
        hs_relayed: init("relayed"),
        xdp_pps: rate("relayhub_relayed_packets_total", &[("path", "xdp")]),
        ctl: share(c0.ctl, c1.ctl),
        wg: share(c0.wg, c1.wg),
        napi: share(c0.napi, c1.napi),
        sim: share(s0, s1),
        load,
        sim_sent: sent,
        sim_recv: recv,
        sim_cookies: d(Counters::RECV + 3),
        sim_problems: problems.join(", "),
        wg_go: !wg.is_empty(),
        hub_slices,
    })
}

/// What the simulator needs.
struct Plan {
    n: usize,
    timers: Timers,
    /// First handshakes with the hub are spread over this; with old timers
    /// the spoke pairs' over as long again after it. At least one
    /// keepalive interval, so keepalives (timed from each Tunn's creation)
    /// are spread over it as in a mesh that has been up a while.
    warmup: Duration,
    hub: SocketAddr,
    hub_public: PublicKey,
    secrets: Vec<StaticSecret>,
    publics: Vec<PublicKey>,
}

impl Plan {
    fn settle_by(&self) -> Duration {
        match self.timers {
            Timers::New => self.warmup + SETTLE,
            Timers::Old => 2 * self.warmup + SETTLE,
        }
    }
}

/// Counters the simulator bumps and the window reads (frame types 1..=4
/// by index).
#[derive(Default)]
struct Counters([AtomicU64; 14]);

impl Counters {
    const SENT: usize = 0;
    const RECV: usize = 5;
    const SEND_ERRORS: usize = 10;
    const MISROUTED: usize = 11;
    const UNMATCHED: usize = 12;
    const DECAP_ERRORS: usize = 13;

    fn bump(&self, i: usize) {
        self.0[i].fetch_add(1, Relaxed);
    }

    fn snapshot(&self) -> Vec<u64> {
        self.0.iter().map(|c| c.load(Relaxed)).collect()
    }
}

/// The simulator's word that every session is up.
struct Ready {
    tid: u32,
    took: Duration,
}

/// How the simulator ended.
struct Left {
    /// Sessions without a current keypair, or given up.
    down: usize,
    errors: BTreeMap<String, u64>,
}

/// One WireGuard peer of a simulated spoke.
struct Peer {
    tunn: Option<Box<Tunn>>,
    public: PublicKey,
    /// Index for Tunn::new: unique over the simulator, so a frame's
    /// receiver index (index << 8 | a per-handshake byte) names its Tunn.
    index: u32,
    /// This side sends the first initiation and, like stock WireGuard's
    /// initiator, the rekeys.
    initiator: bool,
    up: bool,
    next_rekey: Option<Instant>,
}

struct Spoke {
    sock: UdpSocket,
    secret: StaticSecret,
    public: PublicKey,
    /// 0: the hub; with old timers then every other spoke in order.
    peers: Vec<Peer>,
}

struct Sim {
    plan: Plan,
    spokes: Vec<Spoke>,
    /// Tunns per spoke (1 + the spoke peers).
    stride: usize,
    /// Spoke index by public key (initiations name their sender only
    /// inside the encrypted static).
    by_key: HashMap<[u8; 32], usize>,
    /// (when, spoke, peer) to create the Tunn, sorted.
    schedule: Vec<(Instant, usize, usize)>,
    counters: Arc<Counters>,
    errors: BTreeMap<String, u64>,
    epoll: OwnedFd,
    out: Vec<u8>,
}

impl Sim {
    fn new(plan: Plan, counters: Arc<Counters>) -> anyhow::Result<Sim> {
        let n = plan.n;
        let stride = match plan.timers {
            Timers::New => 1,
            Timers::Old => n,
        };
        anyhow::ensure!(n * stride < 1 << 24, "Tunn indices are 24 bits");
        // SAFETY: plain syscall; the fd is owned below.
        let ep = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if ep < 0 {
            bail!("epoll_create1: {}", std::io::Error::last_os_error());
        }
        // SAFETY: ep is a fresh fd we own.
        let epoll = unsafe { OwnedFd::from_raw_fd(ep) };
        let mut spokes = Vec::with_capacity(n);
        for (i, secret) in plan.secrets.iter().enumerate() {
            let sock = UdpSocket::bind((SimHost::addr(i), HUB_PORT))
                .with_context(|| format!("bind spoke {i}'s UDP socket"))?;
            sock.set_nonblocking(true)?;
            let mut ev = libc::epoll_event {
                events: libc::EPOLLIN as u32,
                u64: i as u64,
            };
            // SAFETY: valid fds and event.
            if unsafe {
                libc::epoll_ctl(
                    epoll.as_raw_fd(),
                    libc::EPOLL_CTL_ADD,
                    sock.as_raw_fd(),
                    &mut ev,
                )
            } != 0
            {
                bail!("epoll_ctl: {}", std::io::Error::last_os_error());
            }
            let peers = (0..stride)
                .map(|k| Peer {
                    tunn: None,
                    public: match k {
                        0 => plan.hub_public,
                        k => plan.publics[other(i, k)],
                    },
                    index: (i * stride + k) as u32,
                    initiator: k == 0 || i < other(i, k),
                    up: false,
                    next_rekey: None,
                })
                .collect();
            spokes.push(Spoke {
                sock,
                secret: secret.clone(),
                public: plan.publics[i],
                peers,
            });
        }
        // Hub sessions evenly over the warm-up; spoke pairs (both Tunns
        // at once, as both ends come up) at random over the next one.
        let t0 = Instant::now();
        let mut rng = rand::thread_rng();
        let mut schedule = Vec::new();
        for i in 0..n {
            schedule.push((t0 + plan.warmup.mul_f64(i as f64 / n as f64), i, 0));
            if plan.timers == Timers::Old {
                for j in i + 1..n {
                    let at = t0 + plan.warmup + plan.warmup.mul_f64(rng.r#gen::<f64>());
                    schedule.push((at, i, peer_of(i, j)));
                    schedule.push((at, j, peer_of(j, i)));
                }
            }
        }
        schedule.sort_by_key(|&(t, _, _)| t);
        let by_key = plan
            .publics
            .iter()
            .enumerate()
            .map(|(i, p)| (p.to_bytes(), i))
            .collect();
        Ok(Sim {
            plan,
            spokes,
            stride,
            by_key,
            schedule,
            counters,
            errors: BTreeMap::new(),
            epoll,
            out: vec![0u8; 2048],
        })
    }

    fn run(mut self, stop: &AtomicBool, ready: mpsc::Sender<Ready>) -> anyhow::Result<Left> {
        // SAFETY: plain syscall.
        let tid = unsafe { libc::gettid() } as u32;
        let t0 = Instant::now();
        let settle_by = t0 + self.plan.settle_by();
        let mut next = 0;
        let mut next_tick = t0;
        let mut reported = false;
        let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; 256];
        let mut buf = vec![0u8; 2048];
        while !stop.load(Relaxed) {
            let now = Instant::now();
            while let Some(&(at, i, k)) = self.schedule.get(next)
                && at <= now
            {
                self.start(i, k);
                next += 1;
            }
            if now >= next_tick {
                let up = self.tick(now);
                next_tick = now + TICK;
                if !reported && next == self.schedule.len() && up == self.total() {
                    reported = true;
                    // The window may not start (the receiver gone): keep going until stopped.
                    let _ = ready.send(Ready {
                        tid,
                        took: t0.elapsed(),
                    });
                } else if !reported && now > settle_by {
                    bail!(
                        "{} of {} sessions up {:?} after the first initiation (boringtun errors: {:?}; counters: {:?})",
                        up,
                        self.total(),
                        t0.elapsed(),
                        self.errors,
                        self.counters.snapshot()
                    );
                }
            }
            // SAFETY: valid epoll fd and buffer.
            let got = unsafe {
                libc::epoll_wait(
                    self.epoll.as_raw_fd(),
                    events.as_mut_ptr(),
                    events.len() as i32,
                    5,
                )
            };
            for e in events.iter().take(got.max(0) as usize) {
                self.drain(e.u64 as usize, &mut buf);
            }
        }
        let down = self
            .spokes
            .iter()
            .flat_map(|s| &s.peers)
            .filter(|p| {
                p.tunn
                    .as_ref()
                    .is_none_or(|t| t.is_expired() || t.time_since_last_handshake().is_none())
            })
            .count();
        Ok(Left {
            down,
            errors: self.errors,
        })
    }

    fn total(&self) -> usize {
        self.spokes.len() * self.stride
    }

    /// Create a peer's Tunn; the initiating side sends its first initiation.
    fn start(&mut self, i: usize, k: usize) {
        let s = &mut self.spokes[i];
        let p = &mut s.peers[k];
        let mut t = Box::new(Tunn::new(
            s.secret.clone(),
            p.public,
            None,
            Some(KEEPALIVE_SECS),
            p.index,
            None,
        ));
        if p.initiator {
            let r = t.format_handshake_initiation(&mut self.out, false);
            emit(r, &s.sock, self.plan.hub, &self.counters, &mut self.errors);
        }
        p.tunn = Some(t);
    }

    /// Every started Tunn's timers (keepalives, handshake retries) and the
    /// rekeys; returns how many sessions are up.
    fn tick(&mut self, now: Instant) -> usize {
        let mut up = 0;
        let mut rng = rand::thread_rng();
        for s in &mut self.spokes {
            for p in &mut s.peers {
                let Some(t) = p.tunn.as_mut() else { continue };
                let r = t.update_timers(&mut self.out);
                emit(r, &s.sock, self.plan.hub, &self.counters, &mut self.errors);
                if t.time_since_last_handshake().is_some() {
                    up += 1;
                    if !p.up && p.initiator {
                        // boringtun only rekeys after sending data, never
                        // on keepalives alone; stock WireGuard rekeys a
                        // session it initiated when it is REKEY_AFTER old,
                        // keepalives included. A random first phase gives
                        // the steady-state rate N/120 s from the start.
                        p.next_rekey = Some(now + REKEY_AFTER.mul_f64(rng.r#gen::<f64>()));
                    }
                    p.up = true;
                }
                if let Some(at) = p.next_rekey
                    && now >= at
                {
                    let r = t.format_handshake_initiation(&mut self.out, false);
                    emit(r, &s.sock, self.plan.hub, &self.counters, &mut self.errors);
                    p.next_rekey = Some(now + REKEY_AFTER);
                }
            }
        }
        up
    }

    /// Everything waiting on spoke `i`'s socket.
    fn drain(&mut self, i: usize, buf: &mut [u8]) {
        loop {
            let (len, from) = match self.spokes[i].sock.recv_from(buf) {
                Ok(x) => x,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return,
                Err(e) => {
                    *self.errors.entry(format!("recv: {e}")).or_default() += 1;
                    return;
                }
            };
            let frame = &buf[..len];
            let ty = usize::from(frame.first().copied().unwrap_or(0));
            if (1..=4).contains(&ty) {
                self.counters.bump(Counters::RECV + ty);
            }
            let Some(k) = self.peer_for(i, frame) else {
                self.counters.bump(Counters::UNMATCHED);
                continue;
            };
            let s = &mut self.spokes[i];
            let Some(t) = s.peers[k].tunn.as_mut() else {
                self.counters.bump(Counters::UNMATCHED);
                continue;
            };
            let mut r = t.decapsulate(Some(from.ip()), frame, &mut self.out);
            // A response (or a cookie) may release queued frames: repeat
            // with an empty datagram while it writes.
            while matches!(r, TunnResult::WriteToNetwork(_)) {
                emit(r, &s.sock, self.plan.hub, &self.counters, &mut self.errors);
                r = t.decapsulate(None, &[], &mut self.out);
            }
            if let TunnResult::Err(e) = r {
                self.counters.bump(Counters::DECAP_ERRORS);
                *self.errors.entry(format!("{e:?}")).or_default() += 1;
            }
        }
    }

    /// Which peer of spoke `i` a frame is for: by its receiver index, or
    /// for an initiation by the initiator's static key.
    fn peer_for(&self, i: usize, frame: &[u8]) -> Option<usize> {
        let le = |at: usize| Some(u32::from_le_bytes(frame.get(at..at + 4)?.try_into().ok()?));
        let receiver = match frame.first()? {
            1 => {
                let Ok(Packet::HandshakeInit(init)) = Tunn::parse_incoming_packet(frame) else {
                    return None;
                };
                let s = &self.spokes[i];
                let half = parse_handshake_anon(&s.secret, &s.public, &init).ok()?;
                if half.peer_static_public == self.plan.hub_public.to_bytes() {
                    return Some(0);
                }
                let j = *self.by_key.get(&half.peer_static_public)?;
                return (self.stride > 1 && j != i).then(|| peer_of(i, j));
            }
            2 => le(8)?,
            3 | 4 => le(4)?,
            _ => return None,
        };
        let g = (receiver >> 8) as usize;
        if g / self.stride != i {
            self.counters.bump(Counters::MISROUTED);
            return None;
        }
        Some(g % self.stride)
    }
}

/// The spoke that peer `k >= 1` of spoke `i` is (old timers: every other spoke in order).
fn other(i: usize, k: usize) -> usize {
    if k - 1 < i { k - 1 } else { k }
}

/// The peer index of spoke `j` at spoke `i` (inverse of [`other`]).
fn peer_of(i: usize, j: usize) -> usize {
    if j < i { j + 1 } else { j }
}

/// Send what a Tunn asks to; every peer's endpoint is the hub.
fn emit(
    r: TunnResult<'_>,
    sock: &UdpSocket,
    hub: SocketAddr,
    counters: &Counters,
    errors: &mut BTreeMap<String, u64>,
) {
    match r {
        TunnResult::WriteToNetwork(b) => {
            let ty = usize::from(b.first().copied().unwrap_or(0));
            match sock.send_to(b, hub) {
                Ok(_) if (1..=4).contains(&ty) => counters.bump(Counters::SENT + ty),
                Ok(_) => {}
                Err(_) => counters.bump(Counters::SEND_ERRORS),
            }
        }
        // Given up after REKEY_ATTEMPT_TIME: repeats on every tick, so it
        // is counted once at the end (`Left::down`), not here.
        TunnResult::Err(boringtun::noise::errors::WireGuardError::ConnectionExpired) => {}
        TunnResult::Err(e) => *errors.entry(format!("{e:?}")).or_default() += 1,
        _ => {}
    }
}
