//! bench/RESULTS.md and bench/results.png.

use std::fmt::Write as _;
use std::path::Path;

use plotters::prelude::*;

use crate::All;
use crate::loadgen::percentile;
use crate::packet::{Mode, med, spread};
use crate::real::RealMode;

fn f(x: f64) -> String {
    if !x.is_finite() {
        "–".into()
    } else if x >= 100.0 {
        format!("{x:.0}")
    } else {
        format!("{x:.1}")
    }
}

/// "median (min–max)".
fn ms(v: impl Iterator<Item = f64> + Clone) -> String {
    let m = med(v.clone());
    let (a, b) = spread(v);
    if a.is_finite() && a != b {
        format!("{} ({}–{})", f(m), f(a), f(b))
    } else {
        f(m)
    }
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name")?
                .split_once(':')
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_default();
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let n = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    format!("{cpu}, {n} vCPUs, Linux {}", kernel.trim())
}

fn date() -> String {
    crate::sys::sh("date -u '+%Y-%m-%d %H:%M UTC'")
        .unwrap_or_default()
        .trim()
        .to_string()
}

fn packet(all: &All, m: Mode) -> Option<&crate::packet::ModeResult> {
    all.packet.iter().find(|(k, _)| *k == m).map(|(_, r)| r)
}

fn fixed_ns(all: &All, m: Mode, size: usize) -> f64 {
    packet(all, m)
        .and_then(|r| r.fixed.iter().find(|(p, _)| *p == size))
        .map(|(_, v)| med(v.iter().map(|s| s.hub_ns_per_pkt)))
        .unwrap_or(f64::NAN)
}

/// The results of real-spoke mode `m`, if it ran.
fn real(all: &All, m: RealMode) -> Option<&crate::real::RealResult> {
    all.real.modes.iter().find(|(k, _)| *k == m).map(|(_, r)| r)
}

/// Median over repetitions of one column of mode `m`'s UDP row at `size`
/// (`pick`: the whole hub's or the NAPI thread's ns per packet).
fn real_udp(
    all: &All,
    m: RealMode,
    size: usize,
    pick: fn(&crate::real::UdpRow) -> &Vec<f64>,
) -> f64 {
    real(all, m)
        .and_then(|r| r.udp.iter().find(|u| u.0 == size))
        .map(|u| med(pick(u).iter().copied()))
        .unwrap_or(f64::NAN)
}

fn real_ns(all: &All, m: RealMode, size: usize) -> f64 {
    real_udp(all, m, size, |u| &u.1)
}

fn real_napi_ns(all: &All, m: RealMode, size: usize) -> f64 {
    real_udp(all, m, size, |u| &u.3)
}

fn real_tcp(all: &All, m: RealMode) -> f64 {
    real(all, m)
        .map(|r| med(r.tcp_mbps.iter().copied()))
        .unwrap_or(f64::NAN)
}

/// Median share of `cpu` left idle during a mode's TCP runs (0..1).
fn tcp_idle(r: &crate::real::RealResult, cpu: usize) -> f64 {
    med(r
        .tcp_idle
        .iter()
        .map(|v| v.get(cpu).copied().unwrap_or(f64::NAN)))
}

fn real_tcp_idle(all: &All, m: RealMode, cpu: usize) -> f64 {
    real(all, m).map_or(f64::NAN, |r| tcp_idle(r, cpu))
}

pub fn write(all: &All, out: &Path, command: &str) -> anyhow::Result<()> {
    std::fs::create_dir_all(out)?;
    let mut s = String::new();
    let w = &mut s;
    writeln!(w, "# relayhub benchmark results\n")?;
    if all.smoke {
        writeln!(
            w,
            "**Smoke run: a harness check with tiny windows, not a measurement.**\n"
        )?;
    }
    writeln!(
        w,
        "- command: `{command}` (as root; took {:.0} s)",
        all.elapsed.as_secs_f64()
    )?;
    writeln!(w, "- machine: {}", machine())?;
    writeln!(w, "- date: {}", date())?;
    writeln!(
        w,
        "- load average (1, 5, 15 min): {} at the start, {} at the end",
        crate::sys::loadavg_text(all.load.0),
        crate::sys::loadavg_text(all.load.1)
    )?;
    writeln!(
        w,
        "- every number is the median of the repetitions, (min–max) where they differ; compare ratios within this run, not absolute values across runs\n"
    )?;
    writeln!(w, "![results](results.png)\n")?;

    writeln!(w, "## Packet rate with synthetic spokes\n")?;
    writeln!(
        w,
        "64 synthetic spokes in 32 pairs send WireGuard-shaped transport frames (type 4, payload + 32 bytes of header and tag) from the router's end of the hub link (AF_PACKET sendmmsg, PACKET_QDISC_BYPASS, pinned to CPU 1). Modes 1 and 2 are the product's XDP object (`relay` from relay-ebpf, embedded in relay-user) loaded by the bench with its maps filled with the spokes' endpoints and sessions, as the controller would (no controller, no hub WireGuard); mode 3 is `relay-bench urelay` fed the same table; mode 5 is a hand-assembled reflector (swap MACs, IPs, ports; XDP_TX). The hub NIC's receive path runs in a threaded-NAPI kernel thread pinned to CPU 0 (SCHED_FIFO), with the userspace relay; hub CPU = CPU time of those threads (schedstat) / frames delivered back at the router, counted by the far end's XDP sink: only a frame that is the expected relay (type 4 from the hub's address and port to a spoke's endpoint, carrying the receiver index of that spoke's peer; for the reflector, its own) counts; the sink drops every frame.\n"
    )?;
    writeln!(
        w,
        "### Hub CPU per relayed packet at {:.0} packets/s offered (ns)\n",
        all.fixed_pps
    )?;
    writeln!(
        w,
        "| mode | 64 B | 512 B | 1420 B | XDP program ns/run (BPF stats, 64 B) | loss 64 B |"
    )?;
    writeln!(w, "|---|---|---|---|---|---|")?;
    for (m, r) in &all.packet {
        let cell = |p: usize| {
            r.fixed
                .iter()
                .find(|(q, _)| *q == p)
                .map(|(_, v)| ms(v.iter().map(|s| s.hub_ns_per_pkt)))
                .unwrap_or_default()
        };
        let prog = r
            .fixed
            .first()
            .map(|(_, v)| ms(v.iter().map(|s| s.prog_ns)))
            .unwrap_or_default();
        let loss = r
            .fixed
            .first()
            .map(|(_, v)| format!("{:.2}%", 100.0 * med(v.iter().map(|s| s.loss))))
            .unwrap_or_default();
        writeln!(
            w,
            "| {} | {} | {} | {} | {} | {} |",
            m.name(),
            cell(64),
            cell(512),
            cell(1420),
            prog,
            loss
        )?;
    }
    writeln!(
        w,
        "\n### Maximum lossless rate on one core and behaviour at 2x (64 B)\n"
    )?;
    writeln!(
        w,
        "Ramp of offered loads (1 s steps); lossless = at most 0.5 % lost. Then twice that rate is offered (as far as the generator gets: its achieved rate is shown). \"≥\": the ramp ended at the generator's ceiling with no loss, so the relay's own maximum is higher.\n"
    )?;
    writeln!(
        w,
        "| mode | max lossless (kpps) | vs reflector | offered at 2x (kpps) | delivered at 2x (kpps) | delivered at 2x / max |"
    )?;
    writeln!(w, "|---|---|---|---|---|---|")?;
    let refl = packet(all, Mode::Reflector)
        .map(|r| med(r.max_lossless.iter().copied()))
        .unwrap_or(f64::NAN);
    for (m, r) in &all.packet {
        let mx = med(r.max_lossless.iter().copied());
        let ge = if r.gen_limited.iter().any(|&g| g) {
            "≥ "
        } else {
            ""
        };
        writeln!(
            w,
            "| {} | {ge}{} | {:.2} | {} | {} | {:.2} |",
            m.name(),
            ms(r.max_lossless.iter().map(|x| x / 1e3)),
            mx / refl,
            ms(r.overload.iter().map(|s| s.offered_pps / 1e3)),
            ms(r.overload.iter().map(|s| s.delivered_pps / 1e3)),
            med(r.overload.iter().map(|s| s.delivered_pps)) / mx
        )?;
    }
    writeln!(
        w,
        "\n### Round trip generator → hub → generator, one frame in flight (µs)\n"
    )?;
    writeln!(w, "| mode | p50 | p99 | p50 added vs reflector |")?;
    writeln!(w, "|---|---|---|---|")?;
    let r50 = packet(all, Mode::Reflector)
        .map(|r| percentile(&r.rtt_us, 50.0))
        .unwrap_or(f64::NAN);
    for (m, r) in &all.packet {
        let p50 = percentile(&r.rtt_us, 50.0);
        writeln!(
            w,
            "| {} | {} | {} | {} |",
            m.name(),
            f(p50),
            f(percentile(&r.rtt_us, 99.0)),
            f(p50 - r50)
        )?;
    }
    if let Some(tr) = packet(all, Mode::XdpNative).and_then(|r| r.test_run) {
        writeln!(
            w,
            "\n### The XDP program alone (BPF_PROG_TEST_RUN, repeat 1,000,000, 64 B payload)\n"
        )?;
        writeln!(
            w,
            "ns/frame as the kernel reports it (BPF run-time statistics on, as for the whole run); net = minus the empty program's ns/frame, i.e. BPF_PROG_TEST_RUN's own cost per repeat. Breakdown by step: \"Profile\" below.\n"
        )?;
        writeln!(w, "| case | ns/frame | net of test-run overhead | action |")?;
        writeln!(w, "|---|---|---|---|")?;
        let empty = tr[3].0;
        for (name, (ns, a)) in [
            "hit: relayed (lookups, bpf_fib_lookup, rewrite, XDP_TX)",
            "miss: unknown source (XDP_PASS)",
            "miss: known source, no session (XDP_PASS)",
            "empty program (hand-assembled XDP_PASS): test-run overhead",
        ]
        .iter()
        .zip(tr)
        {
            writeln!(w, "| {name} | {} | {} | {a} |", f(ns), f(ns - empty))?;
        }
    }
    if let Some(r) = packet(all, Mode::XdpNative) {
        writeln!(
            w,
            "\n### Kernel memory of the XDP maps at default capacity (memlock)\n"
        )?;
        writeln!(w, "| map | bytes | per entry |")?;
        writeln!(w, "|---|---|---|")?;
        for (name, b) in &r.memlock {
            let cap = match name.as_str() {
                "SESSIONS" => relay_common::MAX_SESSIONS as f64,
                "ENDPOINT_SLOTS" | "SLOTS" | "SLOT_COUNTERS" => relay_common::MAX_SLOTS as f64,
                _ => f64::NAN,
            };
            writeln!(w, "| {name} | {b} | {} |", f(*b as f64 / cap))?;
        }
    }

    writeln!(
        w,
        "\n## Handshake initiation routing (relay_user::core::router::Router, in process)\n"
    )?;
    writeln!(
        w,
        "warm = the destination is among the sender's recent destinations (rekeys); first contact = a (source, destination) pair that never talked before: a mac1 scan over the registered spokes. Every initiation is checked to be relayed; keys = mac1 computations per initiation, counted by the router. Controller memory = RSS growth while registering the spokes / N.\n"
    )?;
    writeln!(
        w,
        "| registered spokes | warm initiations/s | keys/warm | first-contact initiations/s | keys/first contact | controller bytes/spoke |"
    )?;
    writeln!(w, "|---|---|---|---|---|---|")?;
    for h in &all.handshake {
        writeln!(
            w,
            "| {} | {} | {:.1} | {} | {:.0} | {} |",
            h.spokes,
            f(h.warm_per_s),
            h.warm_keys,
            f(h.cold_per_s),
            h.cold_keys,
            f(h.bytes_per_spoke)
        )?;
    }

    writeln!(w, "\n## Hub mesh: two hubs vs one\n")?;
    let c = &all.mesh_cost;
    if !c.single.is_empty() {
        let (s1, t2, ratio) = c.net();
        writeln!(
            w,
            "A frame between spokes homed on two hubs crosses both hubs' XDP programs; one hub relays it once. Measured in the kernel with BPF_PROG_TEST_RUN on the product's program (repeat {}, 64 B payload, {} interleaved rounds, BPF statistics on): the mesh fixed point alternates hub G's relay (local spoke -> peer hub, from the spoke's mesh port) and hub H's (peer hub -> local spoke) on one frame, every run checked by the mesh_in/mesh_out counters; the single hub's case is the relay of the packet-rate bench's hit in the same loaded program. Net = minus the empty program's cost once per hub.\n",
            c.repeat,
            c.single.len()
        )?;
        writeln!(w, "| path | ns/frame | net | vs one hub (net) |")?;
        writeln!(w, "|---|---|---|---|")?;
        writeln!(
            w,
            "| one hub | {} | {} | 1.00 |",
            ms(c.single.iter().copied()),
            f(s1)
        )?;
        writeln!(
            w,
            "| two hubs (G + H) | {} | {} | {ratio:.2} |",
            ms(c.two_hubs.iter().copied()),
            f(t2)
        )?;
        writeln!(
            w,
            "| empty program (per run) | {} | – | – |",
            ms(c.empty.iter().copied())
        )?;
    }
    if !all.mesh_hs.is_empty() {
        writeln!(
            w,
            "\nInitiation routing end to end: on one hub (as above), and over three hubs, each with every spoke registered (spoke i homed on hub i mod 3, the others at their home's address and mesh port). Across two hubs an initiation meets two routers: its home hub's (mac1 over recent destinations, then a scan) and the responder's, which only checks the key of the spoke its mesh port names. keys = mac1 computations per initiation over both hubs.\n"
        )?;
        writeln!(
            w,
            "| spokes | one hub warm/s | three hubs warm/s (keys) | one hub first contact/s (keys) | three hubs first contact/s (keys) | first contacts across two hubs |"
        )?;
        writeln!(w, "|---|---|---|---|---|---|")?;
        for (one, three) in &all.mesh_hs {
            writeln!(
                w,
                "| {} | {} | {} ({:.1}) | {} ({:.0}) | {} ({:.0}) | {:.0} % |",
                one.spokes,
                f(one.warm_per_s),
                f(three.warm_per_s),
                three.warm_keys,
                f(one.cold_per_s),
                one.cold_keys,
                f(three.cold_per_s),
                three.cold_keys,
                100.0 * three.cold_cross
            )?;
        }
    }

    if !all.real.modes.is_empty() {
        writeln!(w, "\n## Real wireguard-go spokes behind NATs\n")?;
        writeln!(
            w,
            "The harness topology (hub behind a router, each spoke behind an outbound-only NAT), two wireguard-go spokes and iperf3 pinned to CPU 1, the hub (NIC NAPI thread and hub processes) and the router's NAPI thread for the hub link on CPU 0 (on CPU 1 it woke the spokes' core for every ~2.6 frames the fast hub returned and the TCP row measured that core, not the hub). The TCP row is bounded by CPU 1 (the spokes' encryption, iperf3, NATs): CPU idle during it is shown per CPU. relayhub modes run the real `relayhub run` binary (`--xdp-mode` via RELAYHUB_XDP_MODE) with its controller and its own WireGuard; its hub CPU includes both. The direct wire is a veth between the two spoke namespaces. The IPv4 <-> IPv6 rows relay between an IPv4 spoke behind NAT44 and an IPv6-only spoke behind a stateful firewall (`--cross-family-path xdp` / `userspace`); iperf3 runs from the IPv4 to the IPv6 spoke.\n"
        )?;
        writeln!(
            w,
            "| mode | TCP Mbit/s | vs direct | CPU idle during TCP (0 hub / 1 spokes) | hub ns/pkt UDP 64 B | 512 B | 1420 B | NAPI thread only, 1420 B |"
        )?;
        writeln!(w, "|---|---|---|---|---|---|---|---|")?;
        let direct = real_tcp(all, RealMode::Direct);
        for (m, r) in &all.real.modes {
            let cell = |p: usize| {
                r.udp
                    .iter()
                    .find(|u| u.0 == p)
                    .map(|u| ms(u.1.iter().copied()))
                    .unwrap_or("–".into())
            };
            let napi = r
                .udp
                .iter()
                .find(|u| u.0 == 1420)
                .map(|u| ms(u.3.iter().copied()))
                .unwrap_or("–".into());
            let idle = |c: usize| tcp_idle(r, c);
            writeln!(
                w,
                "| {} | {} | {:.2} | {:.0} % / {:.0} % | {} | {} | {} | {} |",
                m.name(),
                ms(r.tcp_mbps.iter().copied()),
                med(r.tcp_mbps.iter().copied()) / direct,
                100.0 * idle(0),
                100.0 * idle(1),
                cell(64),
                cell(512),
                cell(1420),
                napi
            )?;
        }
        writeln!(
            w,
            "\nUDP at {:.0} packets/s offered per size (inner packet sizes, iperf3 -u).",
            all.real.udp_pps
        )?;
        writeln!(
            w,
            "\nWhere the TCP runs lost frames, per second (medians; every socket of this phase has the 7 MiB buffers current wireguard-go sets for itself: net.core.rmem_default and wmem_default, as Debian's wireguard-go 0.0.20220316 sets none; a veth drops what its peer cannot take, a full backlog or, for the hub's XDP_TX, a full ring):\n"
        )?;
        writeln!(
            w,
            "| mode | TCP retransmits/s | spokes' UDP sockets full/s | out of the hub's link/s | out of the router's hub link/s | out of the spokes' links/s |"
        )?;
        writeln!(w, "|---|---|---|---|---|---|")?;
        for (m, r) in &all.real.modes {
            let l = crate::real::tcp_losses(r, all.real.tcp_secs.max(1));
            writeln!(
                w,
                "| {} | {:.0} | {:.0} | {:.0} | {:.0} | {:.0} |",
                m.name(),
                l[0],
                l[1],
                l[2],
                l[3],
                l[4]
            )?;
        }
    }

    if let Some(sc) = &all.scale {
        writeln!(
            w,
            "\n## The XDP program alone, table scale and both CPUs (`relay-bench scale`)\n"
        )?;
        writeln!(w, "{}", crate::scale::markdown(sc))?;
    }
    if let Some(c) = &all.cores {
        writeln!(w, "\n## All cores, end to end (`relay-bench cores`)\n")?;
        writeln!(
            w,
            "The hub NIC's receive spread over every CPU (a veth with one queue per CPU), against one CPU, in the same run. A closed loop instead of a generator (a generator needs a CPU of its own, which this machine does not have to spare): frames are seeded once per CPU and then circulate between the hub's XDP program and a far end that answers every relayed frame as its destination spoke would (the pair's receiver index, addresses swapped); veth keeps each frame on the CPU that seeded it. Each CPU carries its own spoke pairs. Rate = frames through the hub per second; the reflector loop is the medium and the far end alone.\n"
        )?;
        writeln!(w, "{}", crate::cores::markdown(c))?;
    }
    if let Some(idle) = &all.idle {
        writeln!(w, "\n## An idle full mesh (`relay-bench idle`)\n")?;
        writeln!(
            w,
            "The real `relayhub run` (native XDP, its own wireguard-go, everything of the hub on CPU 0) with N simulated spokes (one thread on CPU 1, per spoke a UDP socket on its own address and boringtun `Tunn`s driven by their timers, as stock WireGuard behaves while nothing is sent), each with the printed files' timers: new = PersistentKeepalive 25 s on the hub peer only (this release), old = on every peer. Hub CPU over a {} s window after every spoke has handshaken, as shares of one core: the controller, the hub's wireguard-go, the hub NIC's NAPI thread.\n",
            idle.secs
        )?;
        writeln!(w, "{}", crate::idle::markdown(idle))?;
    }

    writeln!(w, "\n## Against the targets\n")?;
    let x = fixed_ns(all, Mode::XdpNative, 64);
    let u = fixed_ns(all, Mode::Userspace, 64);
    let dx = real_ns(all, RealMode::RelayhubNative, 1420);
    let dd = real_ns(all, RealMode::Decrypting, 1420);
    writeln!(w, "| target | measured |")?;
    writeln!(w, "|---|---|")?;
    // Gross: whole hub CPU per packet, the veth medium included; net: minus
    // what the medium costs anyway (the reflector, which does no lookup;
    // for real spokes the NIC's NAPI thread under relayhub, which is the
    // receive and XDP_TX path every mode pays).
    // A net ratio only where both nets are positive (a short or noisy run
    // can put the medium's figure above a mode's).
    let net = |a: f64, b: f64, base: f64| {
        let (na, nb) = (a - base, b - base);
        if na > 0.0 && nb > 0.0 {
            format!("{:.3} = 1/{:.0}", na / nb, nb / na)
        } else {
            "n/a (the medium cost more than a mode in this run)".to_owned()
        }
    };
    let xr = fixed_ns(all, Mode::Reflector, 64);
    writeln!(
        w,
        "| XDP CPU/packet ≤ 1/10 of the userspace relay | gross {:.2} of it; net of the reflector ({} ns) {} (synthetic, 64 B at {:.0} pps) |",
        x / u,
        f(xr),
        net(x, u, xr),
        all.fixed_pps
    )?;
    let napi_x = real_napi_ns(all, RealMode::RelayhubNative, 1420);
    writeln!(
        w,
        "| XDP CPU/packet ≤ 1/30 of the decrypting hub | gross {:.2} of it; net of the NIC's NAPI thread ({} ns) {} (real spokes, 1420 B, whole hub incl. controller) |",
        dx / dd,
        f(napi_x),
        net(dx, dd, napi_x)
    )?;
    let xm = packet(all, Mode::XdpNative)
        .map(|r| med(r.max_lossless.iter().copied()))
        .unwrap_or(f64::NAN);
    writeln!(
        w,
        "| lossless rate ≥ 90 % of the reflector | {:.0} % |",
        100.0 * xm / refl
    )?;
    let ov = packet(all, Mode::XdpNative)
        .map(|r| med(r.overload.iter().map(|s| s.delivered_pps)))
        .unwrap_or(f64::NAN);
    writeln!(
        w,
        "| at 2x load still ≥ 90 % of max | {:.0} % |",
        100.0 * ov / xm
    )?;
    if let Some(sc) = &all.scale {
        let (m1, m2) = sc.misses_net();
        writeln!(
            w,
            "| XDP program hit ≤ 100 ns net, statistics off | {} ns net ({} ns gross; the test run's own {} ns) |",
            f(sc.hit_net()),
            f(sc.alone[0]),
            f(sc.alone[3])
        )?;
        writeln!(
            w,
            "| XDP program misses ≤ 60 ns net, statistics off | {} and {} ns net (unknown source; known source, no session) |",
            f(m1),
            f(m2)
        )?;
        let e2e = all
            .cores
            .as_ref()
            .and_then(|c| {
                let (rl, rf) = (
                    c.row(crate::cores::Hub::Relay)?,
                    c.row(crate::cores::Hub::Reflector)?,
                );
                let ((m, lo, hi), (rm, ..)) = (rl.ratio(), rf.ratio());
                Some(format!(
                    "end to end {m:.2}x ({lo:.2}-{hi:.2}; {:.2} -> {:.2} Mfps) with the receive on {} queues and CPUs, the reflector {rm:.2}x in the same run; ",
                    rl.one_rate() / 1e6,
                    rl.all_rate() / 1e6,
                    c.cpus
                ))
            })
            .unwrap_or_default();
        writeln!(
            w,
            "| all cores: ≥ 1.8x of one core | {e2e}the program alone {:.2}x (in-kernel test runs on both CPUs) |",
            sc.cpu_ratio()
        )?;
        if let Some(big) = sc.tables.last() {
            writeln!(
                w,
                "| 1M sessions and 100k spokes: memory and hit cost | {:.0} MiB of kernel memory; hit {:.0} ns net hot, {:.0} ns net spread over the table (default capacity: see the table above) |",
                big.mem as f64 / f64::from(1u32 << 20),
                big.hot_net,
                big.spread_net
            )?;
        }
    }
    if let Some(text) = all.idle.as_ref().and_then(crate::idle::target_text) {
        writeln!(w, "| idle mesh of 10k spokes ≤ 5 % of a core | {text} |")?;
    }
    // The row is bound by the spokes' CPU, which through a hub also
    // carries both NATs and the router: say so beside the ratio.
    writeln!(
        w,
        "| throughput within 5 % of direct | {:.0} % of direct, bound by the spokes' CPU ({:.0} % idle during it; the hub's CPU {:.0} % idle), which through any hub also carries both NATs and the router; the decrypting hub {:.0} % |",
        100.0 * real_tcp(all, RealMode::RelayhubNative) / real_tcp(all, RealMode::Direct),
        100.0 * real_tcp_idle(all, RealMode::RelayhubNative, 1),
        100.0 * real_tcp_idle(all, RealMode::RelayhubNative, 0),
        100.0 * real_tcp(all, RealMode::Decrypting) / real_tcp(all, RealMode::Direct)
    )?;
    let h10k = all.handshake.iter().find(|h| h.spokes == 10_000);
    writeln!(
        w,
        "| 100k initiations/s with 10k spokes | {} |",
        h10k.map(|h| format!(
            "{} warm, {} first contact",
            f(h.warm_per_s),
            f(h.cold_per_s)
        ))
        .unwrap_or("not run".into())
    )?;
    let path = out.join(if all.smoke {
        "RESULTS-smoke.md"
    } else {
        "RESULTS.md"
    });
    // Hand-written analysis after the marker survives reruns.
    if let Some(hand) = std::fs::read_to_string(&path)
        .ok()
        .and_then(|old| old.find(HAND_WRITTEN).map(|i| old[i..].to_string()))
    {
        s.push('\n');
        s.push_str(&hand);
    }
    std::fs::write(path, s)?;
    plot(
        all,
        &out.join(if all.smoke {
            "results-smoke.png"
        } else {
            "results.png"
        }),
    )?;
    Ok(())
}

/// RESULTS.md from this line on is written by hand and kept by reruns.
const HAND_WRITTEN: &str = "<!-- written by hand below; `relay-bench run` keeps it -->";

fn font() -> bool {
    for p in [
        "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
        "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
    ] {
        if let Ok(b) = std::fs::read(p) {
            let b: &'static [u8] = Box::leak(b.into_boxed_slice());
            if plotters::style::register_font("sans-serif", FontStyle::Normal, b).is_ok() {
                return true;
            }
        }
    }
    false
}

/// Two panels of bars: hub CPU per packet (64 B, log scale) and max
/// lossless rate. Labels need a TTF font (fonts-dejavu-core); without one
/// the bars are drawn unlabelled.
fn plot(all: &All, path: &Path) -> anyhow::Result<()> {
    let text = font();
    let root = BitMapBackend::new(path, (1000, 420)).into_drawing_area();
    root.fill(&WHITE)?;
    let (l, r) = root.split_horizontally(500);
    let colors = [
        RGBColor(31, 119, 180),
        RGBColor(255, 127, 14),
        RGBColor(44, 160, 44),
        RGBColor(214, 39, 40),
        RGBColor(148, 103, 189),
    ];
    // Left: hub ns/packet.
    let mut bars: Vec<(String, f64)> = all
        .packet
        .iter()
        .map(|(m, _)| (short(m.name()), fixed_ns(all, *m, 64)))
        .collect();
    bars.push((
        "decrypt hub*".into(),
        real_ns(all, RealMode::Decrypting, 64),
    ));
    bars.push((
        "relayhub*".into(),
        real_ns(all, RealMode::RelayhubNative, 64),
    ));
    panel(
        &l,
        "hub CPU ns/packet, 64 B (log)",
        &bars,
        true,
        text,
        &colors,
    )?;
    let bars: Vec<(String, f64)> = all
        .packet
        .iter()
        .map(|(m, r)| (short(m.name()), med(r.max_lossless.iter().copied()) / 1e3))
        .collect();
    panel(
        &r,
        "max lossless kpps, one core",
        &bars,
        false,
        text,
        &colors,
    )?;
    root.present()?;
    Ok(())
}

fn short(n: &str) -> String {
    n.replace("relayhub XDP ", "xdp ")
        .replace("userspace index relay", "userspace")
        .replace("XDP reflector", "reflector")
}

fn panel<DB: DrawingBackend>(
    area: &DrawingArea<DB, plotters::coord::Shift>,
    title: &str,
    bars: &[(String, f64)],
    log: bool,
    text: bool,
    colors: &[RGBColor],
) -> anyhow::Result<()>
where
    DB::ErrorType: 'static,
{
    let vals: Vec<f64> = bars
        .iter()
        .map(|b| if b.1.is_finite() { b.1.max(1e-3) } else { 0.0 })
        .collect();
    let top = vals.iter().copied().fold(1.0, f64::max) * 1.3;
    let n = bars.len() as f64;
    let mut cb = ChartBuilder::on(area);
    cb.margin(15);
    if text {
        cb.caption(title, ("sans-serif", 18))
            .x_label_area_size(60)
            .y_label_area_size(50);
    }
    if log {
        let mut c = cb.build_cartesian_2d(0f64..n, (1f64..top).log_scale())?;
        if text {
            c.configure_mesh()
                .disable_x_mesh()
                .x_labels(0)
                .label_style(("sans-serif", 12))
                .draw()?;
        }
        for (i, v) in vals.iter().enumerate() {
            let col = colors[i % colors.len()];
            c.draw_series(std::iter::once(Rectangle::new(
                [(i as f64 + 0.15, 1.0), (i as f64 + 0.85, v.max(1.0))],
                col.filled(),
            )))?;
            if text {
                c.draw_series(std::iter::once(Text::new(
                    bars[i].0.clone(),
                    (i as f64 + 0.1, 1.0),
                    ("sans-serif", 11)
                        .into_font()
                        .transform(FontTransform::Rotate90),
                )))?;
            }
        }
    } else {
        let mut c = cb.build_cartesian_2d(0f64..n, 0f64..top)?;
        if text {
            c.configure_mesh()
                .disable_x_mesh()
                .x_labels(0)
                .label_style(("sans-serif", 12))
                .draw()?;
        }
        for (i, v) in vals.iter().enumerate() {
            let col = colors[i % colors.len()];
            c.draw_series(std::iter::once(Rectangle::new(
                [(i as f64 + 0.15, 0.0), (i as f64 + 0.85, *v)],
                col.filled(),
            )))?;
            if text {
                c.draw_series(std::iter::once(Text::new(
                    bars[i].0.clone(),
                    (i as f64 + 0.1, top * 0.02),
                    ("sans-serif", 11)
                        .into_font()
                        .transform(FontTransform::Rotate270),
                )))?;
            }
        }
    }
    Ok(())
}
