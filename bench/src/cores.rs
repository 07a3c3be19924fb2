//! `relay-bench cores`: the relay rate with the hub NIC's receive spread
//! over every CPU, against one CPU, end to end through a multi-queue veth
//! (one receive queue per CPU), in the same run.
//!
//! Why a closed loop instead of a generator: a generator needs CPU of its
//! own, and on a two-core machine it takes what the second queue needs (a
//! live-frames generator also holds its CPU so that NAPI on it never runs).
//! Here frames are seeded once and then circulate: the hub's XDP program
//! relays a frame from spoke A to B out of the link; the far end's
//! [`bpfraw::mirror`] answers it as B (B's receiver index, addresses
//! swapped) back into the hub, which relays it to A, and so on. No process
//! runs during the measurement; both CPUs do nothing but the two XDP
//! programs and veth's NAPI.
//!
//! Each CPU keeps its own frames: veth hands an XDP_TX'd frame to the peer
//! queue numbered by the sending CPU and NAPI polls on the CPU that
//! scheduled it, so a frame seeded from CPU c is relayed on c until its
//! deadline (carried in the frame; the mirror drops it after that). One
//! CPU: frames seeded from CPU 0 only. All CPUs: the same number seeded
//! from every CPU, each CPU with its own spoke pairs.
//!
//! The same loop with the reflector as the hub (no lookup, addresses
//! swapped) is the medium's own scaling, measured in the same run.

use std::os::fd::OwnedFd;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use testkit::frame::udp4_frame;
use testkit::netns::Netns;
use testkit::wg::transport_with_counter;

use crate::bpfraw::{self, Counter};
use crate::packet::{med, spread};
use crate::synth::{self, HUB_IP, HUB_PORT, XdpHub};
use crate::sys;

const HUB_IF: &str = "rbc-hub";
const WIRE_IF: &str = "rbc-wire";
/// The hub's next hop on the link (a permanent neighbour: the wire's MAC).
const GATEWAY: &str = "198.51.100.254";
/// Spoke pairs per CPU and frames seeded per pair.
const PAIRS_PER_CPU: u32 = 8;
const COPIES: u32 = 16;
/// Frames in flight per CPU: below veth's 256-frame queue, so nothing is
/// lost to a full ring and every CPU always has work.
pub const IN_FLIGHT: u32 = PAIRS_PER_CPU * COPIES;
/// The frames' own deadline: the bench stops each loop after its window
/// (the far end's stop flag); this bounds a loop whose bench died.
const SAFETY_DEADLINE: Duration = Duration::from_secs(30);

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Hub {
    Reflector,
    Relay,
}

impl Hub {
    pub fn name(self) -> &'static str {
        match self {
            Hub::Reflector => "XDP reflector",
            Hub::Relay => "relayhub XDP",
        }
    }
}

/// One window: hub frames/s and each CPU's busy fraction.
#[derive(Clone, Debug)]
pub struct Window {
    pub rate: f64,
    pub busy: Vec<f64>,
}

#[derive(Clone, Debug)]
pub struct Row {
    pub hub: Hub,
    /// Per repetition: seeded from CPU 0 only, and from every CPU.
    pub one: Vec<Window>,
    pub all: Vec<Window>,
}

impl Row {
    fn rates(v: &[Window]) -> impl Iterator<Item = f64> + '_ {
        v.iter().map(|w| w.rate)
    }
    pub fn one_rate(&self) -> f64 {
        med(Self::rates(&self.one))
    }
    pub fn all_rate(&self) -> f64 {
        med(Self::rates(&self.all))
    }
    /// Per repetition all / one: (median, min, max).
    pub fn ratio(&self) -> (f64, f64, f64) {
        let r = || self.all.iter().zip(&self.one).map(|(a, o)| a.rate / o.rate);
        let (lo, hi) = spread(r());
        (med(r()), lo, hi)
    }
    /// Median busy fraction of each CPU over the windows in `v`.
    pub fn busy(v: &[Window]) -> Vec<f64> {
        let n = v.first().map_or(0, |w| w.busy.len());
        (0..n).map(|c| med(v.iter().map(|w| w.busy[c]))).collect()
    }
}

pub struct CoresResults {
    pub cpus: usize,
    pub reps: usize,
    pub window: Duration,
    pub load: [f64; 3],
    pub rows: Vec<Row>,
    /// Frames the relay program counted as relayed over the mirror's
    /// answers to it (1.0: every frame the mirror saw was the product's
    /// relay; the reflector would leave it 0).
    pub relayed_per_answer: f64,
}

impl CoresResults {
    pub fn row(&self, hub: Hub) -> Option<&Row> {
        self.rows.iter().find(|r| r.hub == hub)
    }
}

/// The two namespaces and the multi-queue link between them.
struct Link {
    hub: Netns,
    wire: Netns,
    hub_mac: [u8; 6],
    wire_mac: [u8; 6],
}

impl Link {
    fn new(queues: usize) -> anyhow::Result<Self> {
        let pid = std::process::id();
        let hub = Netns::new(&format!("rbc-{pid}-hub"))?;
        let wire = Netns::new(&format!("rbc-{pid}-wire"))?;
        let q = queues.to_string();
        testkit::cmd::run(&[
            "ip",
            "link",
            "add",
            HUB_IF,
            "netns",
            &hub.name,
            "numtxqueues",
            &q,
            "numrxqueues",
            &q,
            "type",
            "veth",
            "peer",
            "name",
            WIRE_IF,
            "netns",
            &wire.name,
            "numtxqueues",
            &q,
            "numrxqueues",
            &q,
        ])
        .context("create the multi-queue hub link")?;
        wire.sh(&format!("ip link set {WIRE_IF} up"))?;
        let wire_mac = sys::mac_of(&wire.name, WIRE_IF)?;
        let mac = testkit::frame::mac(wire_mac);
        // The relay's FIB lookup needs forwarding on and a resolved next
        // hop: the spokes' addresses are behind the wire.
        hub.sh(&format!(
            "sysctl -qw net.ipv4.conf.all.forwarding=1
             ip addr add {HUB_IP}/24 dev {HUB_IF}
             ip link set {HUB_IF} up
             ip neigh replace {GATEWAY} lladdr {mac} nud permanent dev {HUB_IF}
             ip route add default via {GATEWAY}"
        ))?;
        let hub_mac = sys::mac_of(&hub.name, HUB_IF)?;
        Ok(Self {
            hub,
            wire,
            hub_mac,
            wire_mac,
        })
    }
}

/// Monotonic clock in ns: what bpf_ktime_get_ns reads.
fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid pointer to a timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// CPU index `i`'s spoke pairs: slots 2p+1, 2p+2 for its pairs p.
fn pair_first_slots(i: usize) -> impl Iterator<Item = u32> {
    let base = i as u32 * PAIRS_PER_CPU;
    (base..base + PAIRS_PER_CPU).map(|p| 2 * p + 1)
}

struct Bench {
    link: Link,
    counter: Counter,
    /// Non-zero: the far end drops the loop's frames.
    stop: Counter,
    _mirror: bpfraw::XdpLink,
    seeder: OwnedFd,
    wire_ifindex: u32,
    spokes: Vec<synth::Spoke>,
    settle: Duration,
    window: Duration,
}

impl Bench {
    fn new(cpus: usize, settle: Duration, window: Duration) -> anyhow::Result<Self> {
        let link = Link::new(cpus)?;
        let counter = Counter::per_cpu("rbc_answers")?;
        let stop = Counter::new("rbc_stop")?;
        let prog = bpfraw::load(
            "rbc_mirror",
            &bpfraw::mirror(&counter, &stop, HUB_IP, HUB_PORT),
        )?;
        let mirror = sys::in_netns(&link.wire.name, || {
            bpfraw::attach(prog, WIRE_IF, bpfraw::XDP_FLAGS_DRV_MODE)
        })?;
        let wire_ifindex = sys::in_netns(&link.wire.name, || sys::ifindex(WIRE_IF))?;
        Ok(Self {
            link,
            counter,
            stop,
            _mirror: mirror,
            seeder: bpfraw::load("rbc_gen", &bpfraw::tx())?,
            wire_ifindex,
            spokes: synth::spokes(2 * PAIRS_PER_CPU * cpus as u32),
            settle,
            window,
        })
    }

    /// Seed [`IN_FLIGHT`] frames from each CPU in `cpus` (CPU index i
    /// with its own pairs), let them circulate, measure one window, and
    /// wait for the loop to drain.
    fn window(&self, cpus: &[usize]) -> anyhow::Result<Window> {
        self.stop.set(0)?;
        let quiet = self.counter.get()?;
        let deadline = monotonic_ns() + SAFETY_DEADLINE.as_nanos() as u64;
        // One thread per pair: each live-frames run ends in an RCU grace
        // period (its page pool's teardown), 20-50 ms while the loop keeps
        // the CPU busy; in parallel they wait for the same ones.
        std::thread::scope(|s| -> anyhow::Result<()> {
            let seeds: Vec<_> = cpus
                .iter()
                .enumerate()
                .flat_map(|(i, &cpu)| pair_first_slots(i).map(move |slot| (cpu, slot)))
                .map(|(cpu, slot)| {
                    s.spawn(move || {
                        sys::in_netns(&self.link.wire.name, || {
                            sys::pin_self(cpu);
                            let sp = self.spokes[slot as usize - 1];
                            let f = udp4_frame(
                                self.link.hub_mac,
                                self.link.wire_mac,
                                sp.ip,
                                sp.port,
                                HUB_IP,
                                HUB_PORT,
                                &transport_with_counter(synth::receiver(slot), deadline, 64),
                                // No UDP checksum: the far end changes the
                                // receiver index without updating it.
                                true,
                            );
                            bpfraw::live_frames(&self.seeder, &f, self.wire_ifindex, COPIES)
                                .context("seed frames (BPF_PROG_TEST_RUN live frames)")
                        })
                    })
                })
                .collect();
            for t in seeds {
                t.join()
                    .map_err(|_| anyhow::anyhow!("seeding thread panicked"))??;
            }
            Ok(())
        })?;
        std::thread::sleep(self.settle);
        let (c0, t0, cpu0) = (self.counter.get()?, Instant::now(), sys::cpu_times());
        std::thread::sleep(self.window);
        let (c1, el, busy) = (
            self.counter.get()?,
            t0.elapsed(),
            sys::idle_since(&cpu0).iter().map(|i| 1.0 - i).collect(),
        );
        if monotonic_ns() >= deadline {
            bail!("the window ended after the frames' deadline: the loop had stopped");
        }
        // Stop the loop; drained when nothing moves any more.
        self.stop.set(1)?;
        let end = Instant::now() + Duration::from_secs(3);
        let mut last = self.counter.get()?;
        loop {
            std::thread::sleep(Duration::from_millis(20));
            let now = self.counter.get()?;
            if now == last {
                break;
            }
            if Instant::now() > end {
                bail!("the relay loop still runs after it was stopped");
            }
            last = now;
        }
        if c1 <= c0 || c0 <= quiet {
            bail!(
                "no frame circulated ({quiet} -> {c0} -> {c1} answers): the hub does not send the frames back"
            );
        }
        Ok(Window {
            rate: (c1 - c0) as f64 / el.as_secs_f64(),
            busy,
        })
    }
}

/// Interleaved repetitions of (reflector, relay) x (one CPU, all CPUs).
pub fn measure(reps: usize, smoke: bool) -> anyhow::Result<CoresResults> {
    relay_tests::cmd::require_root();
    let cpus = std::thread::available_parallelism()?.get();
    if cpus < 2 {
        bail!("the all-cores bench needs at least two CPUs");
    }
    let load = sys::loadavg();
    let (settle, window) = if smoke {
        (Duration::from_millis(100), Duration::from_millis(300))
    } else {
        (Duration::from_millis(300), Duration::from_secs(2))
    };
    let b = Bench::new(cpus, settle, window)?;
    let all_cpus: Vec<usize> = (0..cpus).collect();
    let mut rows: Vec<Row> = [Hub::Reflector, Hub::Relay]
        .into_iter()
        .map(|hub| Row {
            hub,
            one: vec![],
            all: vec![],
        })
        .collect();
    let (mut relayed, mut answers) = (0u64, 0u64);
    for rep in 0..reps {
        for row in &mut rows {
            let hub_ns = b.link.hub.name.clone();
            let before = b.counter.get()?;
            let (one, all, hub_relayed) = match row.hub {
                Hub::Reflector => {
                    let _link = sys::in_netns(&hub_ns, || {
                        let p = bpfraw::load("rbc_reflect", &bpfraw::reflector(HUB_PORT))?;
                        bpfraw::attach(p, HUB_IF, bpfraw::XDP_FLAGS_DRV_MODE)
                    })?;
                    (b.window(&[0])?, b.window(&all_cpus)?, None)
                }
                Hub::Relay => {
                    let sp = b.spokes.clone();
                    let hub = sys::in_netns(&hub_ns, || {
                        let mut h = XdpHub::load(&sp)?;
                        h.attach(HUB_IF, true)?;
                        Ok(h)
                    })?;
                    let (one, all) = (b.window(&[0])?, b.window(&all_cpus)?);
                    let n = hub.counter(relay_common::counter::RELAYED_PACKETS)?;
                    (one, all, Some(n))
                }
            };
            if let Some(n) = hub_relayed {
                relayed += n;
                answers += b.counter.get()? - before;
            }
            eprintln!(
                "  rep {rep}: {}: one CPU {:.3} Mfps, {cpus} CPUs {:.3} Mfps ({:.2}x), busy {:?} / {:?}",
                row.hub.name(),
                one.rate / 1e6,
                all.rate / 1e6,
                all.rate / one.rate,
                pct(&one.busy),
                pct(&all.busy),
            );
            row.one.push(one);
            row.all.push(all);
        }
    }
    Ok(CoresResults {
        cpus,
        reps,
        window,
        load,
        rows,
        relayed_per_answer: relayed as f64 / answers.max(1) as f64,
    })
}

fn pct(v: &[f64]) -> Vec<u32> {
    v.iter().map(|x| (100.0 * x).round() as u32).collect()
}

pub fn run(reps: usize, smoke: bool) -> anyhow::Result<()> {
    let r = measure(reps, smoke)?;
    print!("{}", markdown(&r));
    Ok(())
}

/// The RESULTS.md section.
pub fn markdown(r: &CoresResults) -> String {
    let mut s = format!(
        "{} repetitions, interleaved; each a {:.1} s window with {} frames in flight per CPU (64 B payload), hub and far end native XDP on a veth with {} queues; load average at the start {}.\n\n",
        r.reps,
        r.window.as_secs_f64(),
        IN_FLIGHT,
        r.cpus,
        sys::loadavg_text(r.load),
    );
    s += &format!(
        "| hub | one CPU (Mfps) | {} CPUs (Mfps) | {} CPUs / one (min-max) | CPU busy, one | CPU busy, all |\n|---|---|---|---|---|---|\n",
        r.cpus, r.cpus
    );
    for row in &r.rows {
        let (m, lo, hi) = row.ratio();
        s += &format!(
            "| {} | {:.3} | {:.3} | {m:.2}x ({lo:.2}-{hi:.2}) | {:?} % | {:?} % |\n",
            row.hub.name(),
            row.one_rate() / 1e6,
            row.all_rate() / 1e6,
            pct(&Row::busy(&row.one)),
            pct(&Row::busy(&row.all)),
        );
    }
    if let (Some(rl), Some(rf)) = (r.row(Hub::Relay), r.row(Hub::Reflector)) {
        // Per frame, one loop turn is the hub program plus the far end's;
        // the reflector's turn costs the medium and the far end alone.
        let net = |a: f64, b: f64| 1e9 / a - 1e9 / b;
        s += &format!(
            "\nPer frame and CPU, relayhub costs {:.0} ns more than the reflector on one CPU and {:.0} ns more on {} CPUs (1 / rate per CPU, relay minus reflector). Relayed frames counted by the relay program per answer of the far end: {:.3}.\n",
            net(rl.one_rate(), rf.one_rate()),
            net(rl.all_rate() / r.cpus as f64, rf.all_rate() / r.cpus as f64),
            r.cpus,
            r.relayed_per_answer,
        );
    }
    s
}
