//! `relay-bench scale`: the XDP program against the size of its tables and
//! on both CPUs at once, in the kernel (BPF_PROG_TEST_RUN, BPF statistics
//! off), without a NIC or a generator in the way.
//!
//! Tables: the product's object sized as `relayhub run --max-spokes
//! --max-sessions` would size it, filled with live spokes and sessions,
//! then (a) the hit on the fixed point repeated 1,000,000 times (its
//! entries hot in the caches) and (b) one run each on frames of sampled
//! sessions spread over the whole table (repeat 1: entries, their slots
//! and next hops mostly cold, as for a hub whose traffic is spread over
//! many spokes). Kernel memory = memlock of every map.
//!
//! CPUs: the hot hit run on one CPU, then on both at once (one thread
//! pinned to each, the same loaded program and maps): frames per second
//! of both over one. The program shares nothing per frame between CPUs
//! but the read-mostly tables (counters, next hops are per CPU; a session
//! is written once a second), so this is the ceiling for spreading a
//! NIC's receive over cores; an end-to-end multi-queue figure needs more
//! cores than this machine's two, one of which the generator would take.

use std::net::Ipv4Addr;
use std::os::fd::AsFd;
use std::time::Instant;

use relay_common::Endpoint;
use testkit::frame::udp4_frame;
use testkit::wg::transport_with_counter;

use crate::packet::{med, spread};
use crate::synth::{self, HUB_IP, HUB_PORT, XdpHub};
use crate::{bpfraw, sys};

/// One table size to measure.
struct Case {
    name: &'static str,
    /// Map capacities.
    slots: u32,
    sessions: u32,
    /// Live entries.
    spokes: u32,
    live_sessions: u32,
}

const CASES: [Case; 3] = [
    Case {
        name: "default capacity, 64 spokes",
        slots: relay_common::MAX_SLOTS,
        sessions: relay_common::MAX_SESSIONS,
        spokes: 64,
        live_sessions: 64,
    },
    Case {
        name: "default capacity, full",
        slots: relay_common::MAX_SLOTS,
        sessions: relay_common::MAX_SESSIONS,
        spokes: 16_000,
        live_sessions: 120_000,
    },
    Case {
        name: "100k spokes, 1M sessions",
        slots: 131_072,
        sessions: 1_310_720,
        spokes: 100_000,
        live_sessions: 1_000_000,
    },
];

/// Sampled sessions per cold measurement.
const SAMPLES: u32 = 4096;

/// Slot of the i-th scale spoke (1-based), around the fixed point's slots.
fn slot(i: u32) -> u32 {
    if i >= synth::FIX_SLOT { i + 16 } else { i }
}

fn endpoint_ip(i: u32) -> Ipv4Addr {
    Ipv4Addr::new(10, 64 + (i >> 16) as u8, (i >> 8) as u8, i as u8)
}

/// Session j: from spoke (j mod spokes) + 1 to the next spoke, with a
/// receiver index of its own.
fn session(j: u32, spokes: u32) -> (u32, u32, u32) {
    let src = j % spokes + 1;
    let dst = src % spokes + 1;
    (src, 0x6000_0000 ^ j.wrapping_mul(0x9e37_79b9), dst)
}

/// One table size's figures.
pub struct TableRow {
    pub name: &'static str,
    pub slots: u32,
    pub sessions: u32,
    pub spokes: u32,
    pub live_sessions: u32,
    pub mem: u64,
    pub hot: f64,
    pub hot_net: f64,
    pub spread: f64,
    pub spread_net: f64,
}

/// What `relay-bench scale` (and `relay-bench run`) measure.
pub struct ScaleResults {
    pub reps: usize,
    /// Load average (1, 5, 15 min) when the measurement started.
    pub load: [f64; 3],
    /// The program alone on the bench's 64 spokes, statistics off: hit,
    /// miss unknown source, miss no session, empty program (ns/frame).
    pub alone: [f64; 4],
    pub tables: Vec<TableRow>,
    /// Frames/s on one CPU and on both at once, per repetition.
    pub one_cpu: Vec<f64>,
    pub two_cpus: Vec<f64>,
}

impl ScaleResults {
    pub fn hit_net(&self) -> f64 {
        self.alone[0] - self.alone[3]
    }
    pub fn misses_net(&self) -> (f64, f64) {
        (self.alone[1] - self.alone[3], self.alone[2] - self.alone[3])
    }
    /// Both CPUs over one (medians).
    pub fn cpu_ratio(&self) -> f64 {
        med(self.two_cpus.iter().copied()) / med(self.one_cpu.iter().copied())
    }
}

pub fn run(reps: usize) -> anyhow::Result<()> {
    let r = measure(reps, false)?;
    print!("{}", markdown(&r));
    Ok(())
}

pub fn measure(reps: usize, smoke: bool) -> anyhow::Result<ScaleResults> {
    relay_tests::cmd::require_root();
    let topo = relay_tests::Topology::builder().spokes(1).build()?;
    sys::prime_hub_neighbour(&topo)?;
    let nic = topo.hub_nic.clone();
    let load = sys::loadavg();
    let repeat: u32 = if smoke { 10_000 } else { 1_000_000 };
    sys::in_netns(&topo.hub.name, move || {
        let ifindex = sys::ifindex(&nic)?;
        let pass = bpfraw::load("pass", &bpfraw::pass())?;
        let frames = synth::test_frames(64);

        // The program alone, as `relay-bench prof` times it.
        let mut hub = XdpHub::load(&synth::spokes(64))?;
        let (alone, _) = crate::prof::time_cases(&mut hub, &pass, ifindex, repeat, reps, None)?;
        let alone = [0, 1, 2, 3].map(|i| med(alone[i].iter().copied()));

        // Both CPUs at once, the same loaded program.
        let fd = hub.prog_fd()?;
        let per_run = repeat.saturating_mul(2);
        let per_sec = |threads: usize| -> anyhow::Result<f64> {
            let t0 = Instant::now();
            std::thread::scope(|s| {
                let hs: Vec<_> = (0..threads)
                    .map(|cpu| {
                        let f = &frames[0];
                        s.spawn(move || {
                            sys::pin_self(cpu);
                            bpfraw::test_run(fd, f, ifindex, per_run)
                        })
                    })
                    .collect();
                for h in hs {
                    let (_, a) = h.join().map_err(|_| anyhow::anyhow!("test run thread"))??;
                    anyhow::ensure!(a == 3, "not relayed (action {a})");
                }
                Ok(())
            })?;
            Ok(threads as f64 * f64::from(per_run) / t0.elapsed().as_secs_f64())
        };
        let (mut one_cpu, mut two_cpus) = (vec![], vec![]);
        for _ in 0..reps {
            one_cpu.push(per_sec(1)?);
            two_cpus.push(per_sec(2)?);
        }
        drop(hub);

        let mut tables = Vec::new();
        for c in &CASES {
            let mut hub = XdpHub::load_sized(c.slots, c.sessions)?;
            for i in 1..=c.spokes {
                hub.spoke(
                    slot(i),
                    Endpoint::v4(endpoint_ip(i).octets(), HUB_PORT),
                    true,
                )?;
            }
            for j in 0..c.live_sessions {
                let (src, rx, dst) = session(j, c.spokes);
                hub.session(slot(src), rx, slot(dst))?;
            }
            let mem: u64 = hub.memlock.values().sum();
            // Sampled sessions, spread over the table (a stride coprime
            // with the count).
            let samples = if smoke { 256 } else { SAMPLES };
            let sample: Vec<Vec<u8>> = (0..samples)
                .map(|k| {
                    let j = (u64::from(k) * 7_919 % u64::from(c.live_sessions)) as u32;
                    let (src, rx, _) = session(j, c.spokes);
                    udp4_frame(
                        [2, 0, 0, 0, 0, 1],
                        [2, 0, 0, 0, 0, 1],
                        endpoint_ip(src),
                        HUB_PORT,
                        HUB_IP,
                        HUB_PORT,
                        &transport_with_counter(rx, 1, 64),
                        false,
                    )
                })
                .collect();
            let (mut hot, mut spread_, mut empty1, mut empty) = (vec![], vec![], vec![], vec![]);
            for _ in 0..reps {
                let fd = hub.prog_fd()?;
                let (t, a) = bpfraw::test_run(fd, &frames[0], ifindex, repeat)?;
                anyhow::ensure!(a == 3, "the fixed point was not relayed (action {a})");
                hot.push(t);
                empty.push(bpfraw::test_run(pass.as_fd(), &frames[0], ifindex, repeat)?.0);
                let mut ts = Vec::with_capacity(sample.len());
                for f in &sample {
                    let (t, a) = bpfraw::test_run(fd, f, ifindex, 1)?;
                    anyhow::ensure!(a == 3, "a sampled session was not relayed (action {a})");
                    ts.push(t);
                }
                spread_.push(med(ts.into_iter()));
                let ts: Vec<f64> = sample
                    .iter()
                    .map(|f| bpfraw::test_run(pass.as_fd(), f, ifindex, 1).map(|r| r.0))
                    .collect::<Result<_, _>>()?;
                empty1.push(med(ts.into_iter()));
            }
            let (h, e, sp, e1) = (
                med(hot.iter().copied()),
                med(empty.iter().copied()),
                med(spread_.iter().copied()),
                med(empty1.iter().copied()),
            );
            tables.push(TableRow {
                name: c.name,
                slots: c.slots,
                sessions: c.sessions,
                spokes: c.spokes,
                live_sessions: c.live_sessions,
                mem,
                hot: h,
                hot_net: h - e,
                spread: sp,
                spread_net: sp - e1,
            });
        }
        Ok(ScaleResults {
            reps,
            load,
            alone,
            tables,
            one_cpu,
            two_cpus,
        })
    })
}

/// The results as RESULTS.md sections.
pub fn markdown(r: &ScaleResults) -> String {
    use std::fmt::Write as _;
    let mut w = String::new();
    let _ = writeln!(
        w,
        "BPF_PROG_TEST_RUN, BPF run-time statistics **off** (as a hub runs unless `--bpf-stats`), {} repetitions, load average {} when it started; net = minus the empty program's ns/frame (the test run's own cost).\n",
        r.reps,
        sys::loadavg_text(r.load)
    );
    let _ = writeln!(w, "| case (64 B payload, 64 spokes) | ns/frame | net |");
    let _ = writeln!(w, "|---|---|---|");
    for (i, name) in [
        "hit: relayed",
        "miss: unknown source",
        "miss: known source, no session",
        "empty program",
    ]
    .iter()
    .enumerate()
    {
        let _ = writeln!(
            w,
            "| {name} | {:.0} | {:.0} |",
            r.alone[i],
            r.alone[i] - r.alone[3]
        );
    }
    let _ = writeln!(
        w,
        "\n**Both CPUs at once** (one test-run thread pinned to each, the same program and maps): {:.1} Mframes/s vs {:.1} on one CPU, **{:.2}x** ({}).\n",
        med(r.two_cpus.iter().copied()) / 1e6,
        med(r.one_cpu.iter().copied()) / 1e6,
        r.cpu_ratio(),
        {
            let (a, b) = spread(r.two_cpus.iter().zip(&r.one_cpu).map(|(t, o)| t / o));
            format!("{a:.2}-{b:.2} per repetition")
        }
    );
    let _ = writeln!(
        w,
        "**Tables**: the object sized as `--max-spokes`/`--max-sessions` would size it and filled; hot = the fixed point repeated (its entries in cache); spread = one run each on {SAMPLES} sessions spread over the whole table (entries, slots and next hops mostly cold). Kernel memory = memlock of all maps (preallocated: the same empty or full).\n"
    );
    let _ = writeln!(
        w,
        "| tables | capacity (slots / sessions) | live (spokes / sessions) | kernel memory MiB | hot hit ns (net) | spread hit ns (net) |"
    );
    let _ = writeln!(w, "|---|---|---|---|---|---|");
    for t in &r.tables {
        let _ = writeln!(
            w,
            "| {} | {} / {} | {} / {} | {:.1} | {:.0} ({:.0}) | {:.0} ({:.0}) |",
            t.name,
            t.slots,
            t.sessions,
            t.spokes,
            t.live_sessions,
            t.mem as f64 / f64::from(1u32 << 20),
            t.hot,
            t.hot_net,
            t.spread,
            t.spread_net
        );
    }
    w
}
