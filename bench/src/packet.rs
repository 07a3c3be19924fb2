//! Packet-rate phases with synthetic spokes: the load generator sits on the
//! router's end of the hub link (where the Internet is in the test
//! topology), the hub's receive path runs in a NAPI kernel thread pinned
//! to CPU 0, everything else (generator, sink) on CPU 1.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;
use relay_tests::Topology;

use crate::bpfraw;
use crate::loadgen::{LiveGen, PacketSocket, percentile};
use crate::synth::{self, Spoke, XdpHub};
use crate::sys;

pub const HUB_CPU: usize = 0;
pub const AUX_CPU: usize = 1;
pub const SIZES: [usize; 3] = [64, 512, 1420];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    XdpNative,
    XdpGeneric,
    Userspace,
    Reflector,
}

impl Mode {
    pub fn name(self) -> &'static str {
        match self {
            Mode::XdpNative => "relayhub XDP native",
            Mode::XdpGeneric => "relayhub XDP generic",
            Mode::Userspace => "userspace index relay",
            Mode::Reflector => "XDP reflector",
        }
    }
}

/// One measurement at one offered load.
#[derive(Clone, Copy, Debug, Default)]
pub struct Sample {
    /// Frames the sink matched as relayed, and every frame that reached
    /// the router's interface meanwhile (the difference is not a relay).
    pub relayed: u64,
    pub arrived: u64,
    pub offered_pps: f64,
    pub delivered_pps: f64,
    pub loss: f64,
    /// Hub CPU (NAPI thread + relay process) per delivered frame.
    pub hub_ns_per_pkt: f64,
    /// XDP program run time per run (BPF stats), XDP modes only.
    pub prog_ns: f64,
}

pub struct Config {
    pub reps: usize,
    pub fixed_pps: f64,
    pub window: Duration,
    pub step: Duration,
    pub rates: Vec<f64>,
    pub latency_samples: usize,
}

#[derive(Default, Debug, Clone)]
pub struct ModeResult {
    /// Per payload size: samples at the fixed load.
    pub fixed: Vec<(usize, Vec<Sample>)>,
    /// Per repetition: the ramp (64-byte payload).
    pub ramps: Vec<Vec<Sample>>,
    /// Per repetition: max lossless delivered pps and the 2x sample.
    pub max_lossless: Vec<f64>,
    /// Per repetition: the ramp ended because the generator could not
    /// offer more, not because the relay lost frames (max is a lower bound).
    pub gen_limited: Vec<bool>,
    pub overload: Vec<Sample>,
    /// Round-trip times generator -> hub -> generator, µs.
    pub rtt_us: Vec<f64>,
    /// BPF_PROG_TEST_RUN (ns/frame, action): hit, miss (unknown source),
    /// miss (no session), the empty XDP_PASS program (the test run's own cost).
    pub test_run: Option<[(f64, u32); 4]>,
    pub memlock: Vec<(String, u64)>,
}

pub struct Bench<'t> {
    pub topo: &'t Topology,
    hub_mac: [u8; 6],
    gen_mac: [u8; 6],
    spokes: Vec<Spoke>,
    frames: Vec<(usize, Vec<Vec<u8>>)>,
    /// Generator: BPF_PROG_TEST_RUN live frames (else AF_PACKET).
    pub live: bool,
}

struct Running {
    xdp: Option<XdpHub>,
    _link: Option<bpfraw::XdpLink>,
    child: Option<Child>,
    pids: Vec<u32>,
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(c) = &mut self.child {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl<'t> Bench<'t> {
    pub fn new(topo: &'t Topology, n_spokes: u32) -> anyhow::Result<Self> {
        let hub_mac = sys::mac_of(&topo.hub.name, &topo.hub_nic)?;
        let gen_mac = sys::mac_of(&topo.router.name, &topo.router_hub_if)?;
        let mac = testkit::frame::mac(gen_mac);
        // The hub's next hop must never need ARP (the sink drops IPv4 only,
        // but keep the path deterministic); the router discards what the
        // hub relays to synthetic spokes.
        sys::ns_sh(
            &topo.hub.name,
            &format!(
                "ip neigh replace 198.51.100.254 lladdr {mac} nud permanent dev {}",
                topo.hub_nic
            ),
        )?;
        sys::ns_sh(
            &topo.router.name,
            "ip route replace blackhole 10.200.0.0/16; ip route replace blackhole 10.201.0.0/16",
        )?;
        let spokes = synth::spokes(n_spokes);
        let frames = SIZES
            .iter()
            .map(|&p| (p, synth::frames(&spokes, hub_mac, gen_mac, p)))
            .collect();
        Ok(Self {
            topo,
            hub_mac,
            gen_mac,
            spokes,
            frames,
            live: std::env::var_os("RELAY_BENCH_LIVE_FRAMES").is_some(),
        })
    }

    fn frames(&self, payload: usize) -> &[Vec<u8>] {
        &self
            .frames
            .iter()
            .find(|(p, _)| *p == payload)
            .expect("size")
            .1
    }

    fn start(&self, mode: Mode, self_exe: &str) -> anyhow::Result<Running> {
        let hub_ns = self.topo.hub.name.clone();
        let nic = self.topo.hub_nic.clone();
        let mut r = Running {
            xdp: None,
            _link: None,
            child: None,
            pids: vec![],
        };
        match mode {
            Mode::XdpNative | Mode::XdpGeneric => {
                let sp = self.spokes.clone();
                let hub = sys::in_netns(&hub_ns, || {
                    let mut h = XdpHub::load(&sp)?;
                    h.attach(&nic, mode == Mode::XdpNative)?;
                    Ok(h)
                })?;
                r.xdp = Some(hub);
            }
            Mode::Reflector => {
                r._link = Some(sys::in_netns(&hub_ns, || {
                    let p = bpfraw::load("reflect", &bpfraw::reflector(synth::HUB_PORT))?;
                    bpfraw::attach(p, &nic, bpfraw::XDP_FLAGS_DRV_MODE)
                })?);
            }
            Mode::Userspace => {
                let table = self.topo.workdir.join("urelay.table");
                std::fs::write(&table, synth::table(&self.spokes))?;
                let mut c = Command::new("ip")
                    .args([
                        "netns",
                        "exec",
                        &hub_ns,
                        "taskset",
                        "-c",
                        &HUB_CPU.to_string(),
                        self_exe,
                        "urelay",
                        "--port",
                        "51820",
                        "--table",
                    ])
                    .arg(&table)
                    .stdout(Stdio::piped())
                    .stderr(Stdio::inherit())
                    .spawn()
                    .context("start the userspace relay")?;
                let mut line = String::new();
                BufReader::new(c.stdout.take().expect("piped")).read_line(&mut line)?;
                anyhow::ensure!(
                    line.trim() == "ready",
                    "userspace relay did not start: {line}"
                );
                r.pids.push(c.id());
                r.child = Some(c);
            }
        }
        r.pids.extend(sys::threaded_napi(&hub_ns, &nic, HUB_CPU)?);
        // Real-time priority for the hub's threads: other work on the
        // machine must not add scheduling delay to the relay path.
        for &p in &r.pids {
            sys::fifo(p);
        }
        Ok(r)
    }

    /// Offer `pps` of `payload`-byte frames for `dur`; delivered = what
    /// the sink's `relayed` counter matched meanwhile.
    fn measure(
        &self,
        run: &mut Running,
        relayed: &bpfraw::Counter,
        payload: usize,
        pps: f64,
        dur: Duration,
    ) -> anyhow::Result<Sample> {
        let rns = self.topo.router.name.clone();
        let rif = self.topo.router_hub_if.clone();
        let frames = self.frames(payload);
        let live = self.live;
        let rx0 = sys::rx_packets(&rns, &rif);
        let relayed0 = relayed.get()?;
        let cpu0 = sys::cpu_ns(&run.pids);
        let st0 = run.xdp.as_mut().map(|x| x.run_stats()).unwrap_or_default();
        let (sent, el) = sys::in_netns(&rns, || {
            sys::pin_self(AUX_CPU);
            if live {
                LiveGen::open(&rif)?.blast(frames, pps, dur)
            } else {
                Ok(PacketSocket::open(&rif, false)?.blast(frames, pps, dur))
            }
        })?;
        std::thread::sleep(Duration::from_millis(30));
        let rx1 = sys::rx_packets(&rns, &rif);
        let cpu1 = sys::cpu_ns(&run.pids);
        let st1 = run.xdp.as_mut().map(|x| x.run_stats()).unwrap_or_default();
        let got = relayed.get()? - relayed0;
        let secs = el.as_secs_f64();
        Ok(Sample {
            relayed: got,
            arrived: rx1.saturating_sub(rx0),
            offered_pps: sent as f64 / secs,
            delivered_pps: got as f64 / secs,
            loss: if sent > 0 {
                1.0 - (got as f64 / sent as f64).min(1.0)
            } else {
                0.0
            },
            hub_ns_per_pkt: if got > 0 {
                (cpu1 - cpu0) as f64 / got as f64
            } else {
                f64::NAN
            },
            prog_ns: if st1.1 > st0.1 {
                (st1.0 - st0.0) as f64 / (st1.1 - st0.1) as f64
            } else {
                f64::NAN
            },
        })
    }

    /// The far end of the hub link: with `count`, the counting sink for
    /// `mode`'s frames (see [`bpfraw::count_relayed`]), else XDP_PASS (the
    /// latency probe reads the frames).
    fn sink(&self, count: Option<(Mode, &bpfraw::Counter)>) -> anyhow::Result<bpfraw::XdpLink> {
        let rif = self.topo.router_hub_if.clone();
        let l = sys::in_netns(&self.topo.router.name, || {
            let insns = match count {
                Some((mode, counter)) => bpfraw::count_relayed(
                    counter,
                    &bpfraw::Expect {
                        hub_ip: synth::HUB_IP,
                        hub_port: synth::HUB_PORT,
                        spokes: self.spokes.len() as u32,
                        reflected: mode == Mode::Reflector,
                    },
                ),
                None => bpfraw::pass(),
            };
            let p = bpfraw::load("sink", &insns)?;
            bpfraw::attach(p, &rif, bpfraw::XDP_FLAGS_DRV_MODE)
        })?;
        for p in sys::threaded_napi(&self.topo.router.name, &rif, AUX_CPU)? {
            sys::fifo(p);
        }
        Ok(l)
    }

    /// Every packet-rate measurement of one mode.
    pub fn run_mode(&self, mode: Mode, cfg: &Config, self_exe: &str) -> anyhow::Result<ModeResult> {
        let mut res = ModeResult::default();
        let relayed = bpfraw::Counter::new("relayed")?;
        let sink = self.sink(Some((mode, &relayed)))?;
        let mut run = self.start(mode, self_exe)?;
        // Warm-up (ARP-free path, NAPI threads scheduled, caches).
        self.measure(
            &mut run,
            &relayed,
            64,
            cfg.fixed_pps,
            Duration::from_millis(300),
        )?;
        for &p in &SIZES {
            let mut v = Vec::new();
            for _ in 0..cfg.reps {
                let s = self.measure(&mut run, &relayed, p, cfg.fixed_pps, cfg.window)?;
                // A mode that relays nothing has no cost to report.
                anyhow::ensure!(
                    s.delivered_pps > 0.0,
                    "{}: no relayed frame delivered at {p} B ({s:?})",
                    mode.name()
                );
                v.push(s);
            }
            eprintln!(
                "  {:<24} {p:>5} B @ {:.0} pps: hub {:.0} ns/pkt, loss {:.2}% ({} relayed, {} arrived at the router)",
                mode.name(),
                cfg.fixed_pps,
                med(v.iter().map(|s| s.hub_ns_per_pkt)),
                100.0 * med(v.iter().map(|s| s.loss)),
                v.iter().map(|s| s.relayed).sum::<u64>(),
                v.iter().map(|s| s.arrived).sum::<u64>()
            );
            res.fixed.push((p, v));
        }
        for _ in 0..cfg.reps {
            let mut ramp = Vec::new();
            let mut best = 0.0f64;
            let mut limited = false;
            for &rate in &cfg.rates {
                let s = self.measure(&mut run, &relayed, 64, rate, cfg.step)?;
                if std::env::var_os("RELAY_BENCH_VERBOSE").is_some() {
                    eprintln!("    step {rate:.0}: {s:?}");
                }
                ramp.push(s);
                if s.loss <= 0.005 {
                    best = best.max(s.delivered_pps);
                }
                if s.loss > 0.05 {
                    break;
                }
                if s.offered_pps < 0.8 * rate {
                    limited = s.loss <= 0.005;
                    break;
                }
            }
            let over = self.measure(&mut run, &relayed, 64, 2.0 * best, cfg.step)?;
            eprintln!(
                "  {:<24} max lossless {:.0} pps; at 2x offered ({:.0} achieved) delivers {:.0} pps",
                mode.name(),
                best,
                over.offered_pps,
                over.delivered_pps
            );
            res.ramps.push(ramp);
            res.max_lossless.push(best);
            res.gen_limited.push(limited);
            res.overload.push(over);
        }
        if let Some(x) = run.xdp.as_mut() {
            let nic = self.topo.hub_nic.clone();
            let tr = sys::in_netns(&self.topo.hub.name, || {
                let c = std::ffi::CString::new(nic.as_str())?;
                // SAFETY: valid C string.
                let ifindex = unsafe { libc::if_nametoindex(c.as_ptr()) };
                x.test_run(ifindex, 64, 1_000_000)
            })?;
            eprintln!(
                "  {:<24} BPF_PROG_TEST_RUN ns/frame: hit {:.1} (action {}), miss unknown source {:.1}, miss no session {:.1}, empty program {:.1}",
                mode.name(),
                tr[0].0,
                tr[0].1,
                tr[1].0,
                tr[2].0,
                tr[3].0
            );
            res.test_run = Some(tr);
            let mut m: Vec<(String, u64)> =
                x.memlock.iter().map(|(k, v)| (k.clone(), *v)).collect();
            m.sort();
            res.memlock = m;
        }
        drop(sink);
        let _pass = self.sink(None)?;
        res.rtt_us = self.latency(mode, cfg.latency_samples)?;
        eprintln!(
            "  {:<24} RTT p50 {:.1} µs p99 {:.1} µs",
            mode.name(),
            percentile(&res.rtt_us, 50.0),
            percentile(&res.rtt_us, 99.0)
        );
        drop(run);
        Ok(res)
    }

    /// Ping-pong: one frame in flight, time until the relayed (or
    /// reflected) frame comes back to the router's end of the link.
    fn latency(&self, mode: Mode, n: usize) -> anyhow::Result<Vec<f64>> {
        let frame = self.frames(64)[0].clone();
        let a = self.spokes[0];
        let want_ip = if mode == Mode::Reflector {
            a.ip
        } else {
            self.spokes[1].ip
        };
        let rif = self.topo.router_hub_if.clone();
        let mut v = sys::in_netns(&self.topo.router.name, || {
            sys::pin_self(AUX_CPU);
            let tx = PacketSocket::open(&rif, false)?;
            let rx = PacketSocket::open(&rif, true)?;
            let mut buf = vec![0u8; 2048];
            let mut v = Vec::with_capacity(n);
            let want = want_ip.octets();
            for _ in 0..n {
                let t = Instant::now();
                if !tx.send(&frame) {
                    continue;
                }
                if rx.recv_match(&mut buf, Duration::from_millis(50), |f| {
                    f.len() > 34 && f[12] == 8 && f[13] == 0 && f[30..34] == want
                }) {
                    v.push(t.elapsed().as_secs_f64() * 1e6);
                }
            }
            Ok(v)
        })?;
        v.sort_by(|a, b| a.total_cmp(b));
        let _ = (self.hub_mac, self.gen_mac);
        Ok(v)
    }
}

/// Median of finite values (NaN if none).
pub fn med(it: impl Iterator<Item = f64>) -> f64 {
    let mut v: Vec<f64> = it.filter(|x| x.is_finite()).collect();
    v.sort_by(|a, b| a.total_cmp(b));
    if v.is_empty() {
        f64::NAN
    } else {
        v[v.len() / 2]
    }
}

/// (min, max) of finite values.
pub fn spread(it: impl Iterator<Item = f64>) -> (f64, f64) {
    it.filter(|x| x.is_finite())
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), x| {
            (a.min(x), b.max(x))
        })
}
