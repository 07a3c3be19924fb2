//! `relay-bench`: relayhub's benchmark driver (run by `cargo xtask bench`),
//! its load generator and its userspace-relay baseline. See bench/RESULTS.md.

mod bpfraw;
mod cores;
mod hs;
mod idle;
mod loadgen;
mod mesh;
mod packet;
mod prof;
mod real;
mod report;
mod scale;
mod synth;
mod sys;
mod urelay;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "relay-bench", about = "relayhub benchmarks (run as root)")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run every mode and write RESULTS.md and results.png to --out.
    Run {
        /// Short run that only checks the harness works (CI).
        #[arg(long)]
        smoke: bool,
        #[arg(long, default_value = "bench")]
        out: PathBuf,
        /// Skip the phases with real wireguard-go spokes.
        #[arg(long)]
        no_real: bool,
        /// The command line to record in RESULTS.md.
        #[arg(long, default_value = "cargo xtask bench")]
        command: String,
    },
    /// The XDP program alone under BPF_PROG_TEST_RUN (hit, misses, empty
    /// program), for profiling; see RESULTS.md, "Profile".
    Prof {
        /// Another build of the relay object (default: the embedded one).
        #[arg(long)]
        object: Option<PathBuf>,
        #[arg(long, default_value_t = 1_000_000)]
        repeat: u32,
        #[arg(long, default_value_t = 7)]
        reps: usize,
        /// With the kernel's BPF run-time statistics on (as in `run`).
        #[arg(long)]
        stats: bool,
        /// Write `bpftool prog show` and the xlated dump of the program here.
        #[arg(long)]
        dump: Option<PathBuf>,
        /// Only one case (0 hit, 1 miss unknown source, 2 miss no session,
        /// 3 empty program), e.g. under `perf record -e cpu-clock`.
        #[arg(long)]
        only: Option<usize>,
    },
    /// The XDP program against table size (default capacity vs 100k
    /// spokes and 1M sessions: memory, hot and spread hits) and on both
    /// CPUs at once (in-kernel test runs, BPF statistics off).
    Scale {
        #[arg(long, default_value_t = 5)]
        reps: usize,
    },
    /// The relay rate with the hub NIC's receive spread over every CPU
    /// against one CPU: frames circulating between the hub's XDP program
    /// and a far end that answers as the destination spoke, on a
    /// multi-queue veth; the reflector as the medium's baseline.
    Cores {
        #[arg(long, default_value_t = 5)]
        reps: usize,
        /// The smoke plan's short windows.
        #[arg(long)]
        smoke: bool,
    },
    /// Handshake initiation routing alone (in process, no root needed):
    /// warm rekeys and first contacts for each number of spokes.
    Hs {
        /// Numbers of registered spokes.
        #[arg(long, value_delimiter = ',', default_value = "10,1000,10000")]
        spokes: Vec<usize>,
        /// Milliseconds per case.
        #[arg(long, default_value_t = 1000)]
        ms: u64,
    },
    /// Hub mesh alone: a frame through two hubs vs one (in-kernel test
    /// runs), and initiation routing over three hubs vs one.
    Mesh {
        /// Registered spokes for the routing part.
        #[arg(long, default_value_t = 100_000)]
        spokes: usize,
        /// Milliseconds per routing case.
        #[arg(long, default_value_t = 1000)]
        ms: u64,
        #[arg(long, default_value_t = 5)]
        reps: usize,
    },
    /// What an idle full mesh costs the hub: the real hub, N simulated
    /// spokes that only keep their sessions alive (as root).
    Idle {
        /// Numbers of spokes.
        #[arg(long, value_delimiter = ',', default_value = "100,1000,10000")]
        spokes: Vec<usize>,
        /// Measurement window per mesh, seconds (after the warm-up).
        #[arg(long, default_value_t = 60)]
        secs: u64,
        /// new: PersistentKeepalive on the hub peer only; old: on every
        /// peer (simulated up to 100 spokes, larger meshes computed).
        #[arg(long, value_enum, default_value = "new")]
        timers: idle::Timers,
    },
    /// Only the phases with real wireguard-go spokes (as in `run`), with
    /// the drop counters that grew during each TCP run.
    Real {
        /// Modes by short name (native, generic, userspace, decrypting,
        /// direct, cross-xdp, cross-userspace); default: all.
        #[arg(long, value_delimiter = ',')]
        modes: Vec<String>,
        /// The smoke plan (1 s runs, one repetition).
        #[arg(long)]
        smoke: bool,
        /// Keep the kernel's default socket buffers (208 KiB) instead of
        /// the 7 MiB current wireguard-go sets for itself.
        #[arg(long)]
        kernel_buffers: bool,
    },
    /// The userspace index relay baseline (started by `run`).
    Urelay {
        #[arg(long)]
        port: u16,
        #[arg(long)]
        table: String,
    },
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().cmd {
        Cmd::Urelay { port, table } => urelay::run(port, &table),
        Cmd::Idle {
            spokes,
            secs,
            timers,
        } => idle::run(&idle::Opts {
            spokes,
            secs,
            timers,
        }),
        Cmd::Hs { spokes, ms } => {
            handshake_rows(&spokes, Duration::from_millis(ms));
            Ok(())
        }
        Cmd::Prof {
            object,
            repeat,
            reps,
            stats,
            dump,
            only,
        } => prof::run(&prof::Opts {
            object,
            repeat,
            reps,
            stats,
            dump,
            only,
        }),
        Cmd::Run {
            smoke,
            out,
            no_real,
            command,
        } => run(smoke, &out, no_real, &command),
        Cmd::Scale { reps } => scale::run(reps),
        Cmd::Cores { reps, smoke } => cores::run(reps, smoke),
        Cmd::Real {
            modes,
            smoke,
            kernel_buffers,
        } => {
            relay_tests::cmd::require_root();
            let exe = std::env::current_exe()?;
            let r = real::run(
                smoke,
                exe.to_str().context("utf-8 path")?,
                &modes,
                kernel_buffers,
            )?;
            for (m, x) in &r.modes {
                println!(
                    "{}: TCP {:?} Mbit/s, retransmits {:?}",
                    m.name(),
                    x.tcp_mbps,
                    x.tcp_retransmits
                );
            }
            Ok(())
        }
        Cmd::Mesh { spokes, ms, reps } => {
            relay_tests::cmd::require_root();
            let _stats = aya::sys::enable_stats(aya::sys::Stats::RunTime).ok();
            mesh_rows(reps, 1_000_000, &[spokes], Duration::from_millis(ms))?;
            Ok(())
        }
    }
}

pub struct All {
    pub smoke: bool,
    pub packet: Vec<(packet::Mode, packet::ModeResult)>,
    pub handshake: Vec<hs::HsResult>,
    pub mesh_cost: mesh::MeshCost,
    /// (one hub, three hubs) per number of spokes.
    pub mesh_hs: Vec<(hs::HsResult, hs::MeshHsResult)>,
    pub real: real::RealResults,
    pub fixed_pps: f64,
    pub elapsed: Duration,
    /// The XDP program with statistics off, table scale, both CPUs.
    pub scale: Option<scale::ScaleResults>,
    /// An idle mesh of simulated spokes.
    pub idle: Option<idle::IdleResults>,
    /// The relay loop on one CPU and on all, end to end.
    pub cores: Option<cores::CoresResults>,
    /// Load average (1, 5, 15 min) at the start and at the end.
    pub load: ([f64; 3], [f64; 3]),
}

fn run(smoke: bool, out: &std::path::Path, no_real: bool, command: &str) -> anyhow::Result<()> {
    relay_tests::cmd::require_root();
    let t0 = Instant::now();
    let load_start = sys::loadavg();
    let self_exe = std::env::current_exe()?
        .to_str()
        .context("utf-8 path")?
        .to_string();
    // BPF run-time statistics while the fd lives (the "ns/run" column);
    // dropped before the measurements that must run without them.
    let stats = aya::sys::enable_stats(aya::sys::Stats::RunTime).ok();

    let cfg = if smoke {
        packet::Config {
            reps: 1,
            fixed_pps: 20_000.0,
            window: Duration::from_millis(300),
            step: Duration::from_millis(300),
            rates: vec![50_000.0, 200_000.0],
            latency_samples: 50,
        }
    } else {
        packet::Config {
            reps: 3,
            fixed_pps: 100_000.0,
            window: Duration::from_secs(2),
            step: Duration::from_secs(1),
            rates: vec![
                50e3, 100e3, 150e3, 200e3, 300e3, 400e3, 500e3, 600e3, 700e3, 800e3, 1e6, 1.2e6,
                1.5e6, 2e6,
            ],
            latency_samples: 2000,
        }
    };
    eprintln!("== packet rate, synthetic spokes ==");
    let mut packet_res = Vec::new();
    {
        let topo = relay_tests::Topology::builder().spokes(1).build()?;
        let b = packet::Bench::new(&topo, 64)?;
        for mode in [
            packet::Mode::Reflector,
            packet::Mode::XdpNative,
            packet::Mode::XdpGeneric,
            packet::Mode::Userspace,
        ] {
            let r = b
                .run_mode(mode, &cfg, &self_exe)
                .with_context(|| mode.name())?;
            packet_res.push((mode, r));
        }
    }
    eprintln!("== handshake routing (in process) ==");
    let sizes: &[usize] = if smoke {
        &[10, 1000]
    } else {
        &[10, 1000, 10_000, 100_000]
    };
    let budget = Duration::from_millis(if smoke { 100 } else { 1000 });
    let handshake = handshake_rows(sizes, budget);
    eprintln!("== hub mesh ==");
    let (mesh_cost, mesh_hs) = if smoke {
        mesh_rows(1, 100_000, &[1000], budget)?
    } else {
        mesh_rows(5, 1_000_000, &[100_000], budget)?
    };
    let real = if no_real {
        real::RealResults::default()
    } else {
        eprintln!("== real wireguard-go spokes ==");
        real::run(smoke, &self_exe, &[], false)?
    };
    drop(stats);
    eprintln!("== the XDP program: statistics off, table scale, both CPUs ==");
    let scale = scale::measure(if smoke { 1 } else { 5 }, smoke)?;
    eprintln!("== all cores: the relay loop on one CPU and on every CPU ==");
    let cores = cores::measure(if smoke { 1 } else { 5 }, smoke)?;
    eprintln!("== an idle mesh of simulated spokes ==");
    let idle = if smoke {
        idle::results(&[20], 2)?
    } else {
        idle::results(&[100, 1000, 10_000], 30)?
    };
    let all = All {
        smoke,
        packet: packet_res,
        handshake,
        mesh_cost,
        mesh_hs,
        real,
        fixed_pps: cfg.fixed_pps,
        elapsed: t0.elapsed(),
        scale: Some(scale),
        idle: Some(idle),
        cores: Some(cores),
        load: (load_start, sys::loadavg()),
    };
    report::write(&all, out, command)?;
    eprintln!("bench done in {:?}", t0.elapsed());
    Ok(())
}

/// The handshake routing bench for each size, printed as it goes.
fn handshake_rows(sizes: &[usize], budget: Duration) -> Vec<hs::HsResult> {
    sizes
        .iter()
        .map(|&n| {
            let r = hs::bench(n, budget);
            eprintln!(
                "  {n:>6} spokes: warm {:.0}/s ({:.1} keys checked each), first contact {:.0}/s ({:.0} keys checked each), {:.0} B/spoke",
                r.warm_per_s, r.warm_keys, r.cold_per_s, r.cold_keys, r.bytes_per_spoke
            );
            r
        })
        .collect()
}

/// The hub mesh rows, printed as they go: a frame through two hubs vs one
/// (`reps` interleaved rounds of `repeat` test runs), and initiation
/// routing with each number of spokes on one hub and over three, in the
/// same invocation.
fn mesh_rows(
    reps: usize,
    repeat: u32,
    sizes: &[usize],
    budget: Duration,
) -> anyhow::Result<(mesh::MeshCost, Vec<(hs::HsResult, hs::MeshHsResult)>)> {
    let topo = relay_tests::Topology::builder().spokes(1).build()?;
    let cost = mesh::run(&topo, reps, repeat)?;
    drop(topo);
    let (s, t, ratio) = cost.net();
    eprintln!(
        "  frame through two hubs: {t:.0} ns vs one hub {s:.0} ns (net of test-run overhead): {ratio:.2}x"
    );
    let mut rows = Vec::new();
    for &n in sizes {
        let one = hs::bench(n, budget);
        let three = hs::mesh_bench(n, 3, budget);
        eprintln!(
            "  {n:>6} spokes: one hub warm {:.0}/s first contact {:.0}/s; three hubs warm {:.0}/s ({:.1} keys) first contact {:.0}/s ({:.0} keys, {:.0} % across two hubs)",
            one.warm_per_s,
            one.cold_per_s,
            three.warm_per_s,
            three.warm_keys,
            three.cold_per_s,
            three.cold_keys,
            100.0 * three.cold_cross
        );
        rows.push((one, three));
    }
    Ok((cost, rows))
}
