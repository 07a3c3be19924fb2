//! Phases with real wireguard-go spokes (the harness topology: hub behind a
//! router, spokes behind NATs): TCP throughput spoke to spoke (iperf3) and
//! hub CPU per relayed packet at a fixed UDP rate. Spokes and iperf3 run on
//! CPU 1, everything of the hub (its NIC's NAPI thread and processes) on
//! CPU 0.

use std::net::Ipv4Addr;
use std::time::Duration;

use anyhow::Context;
use relay_tests::netns::Veth;
use relay_tests::topology::HUB_ADDR;
use relay_tests::{Hub, HubKind, Topology, cmd, wg};

use crate::packet::{AUX_CPU, HUB_CPU, med};
use crate::sys;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RealMode {
    RelayhubNative,
    RelayhubGeneric,
    Userspace,
    Decrypting,
    Direct,
    /// relayhub between an IPv4 spoke (NAT44) and an IPv6-only spoke
    /// (stateful firewall): the XDP program rebuilds every frame.
    CrossXdp,
    /// The same with `--cross-family-path userspace`: every frame through
    /// the controller's fallback.
    CrossUserspace,
}

impl RealMode {
    pub fn name(self) -> &'static str {
        match self {
            RealMode::RelayhubNative => "relayhub XDP native (real binary)",
            RealMode::RelayhubGeneric => "relayhub XDP generic (real binary)",
            RealMode::Userspace => "userspace index relay",
            RealMode::Decrypting => "decrypting wireguard-go hub",
            RealMode::Direct => "direct spoke-to-spoke wire",
            RealMode::CrossXdp => "relayhub IPv4 <-> IPv6, XDP",
            RealMode::CrossUserspace => "relayhub IPv4 <-> IPv6, userspace fallback",
        }
    }

    /// Short name for `relay-bench real --modes`.
    pub fn key(self) -> &'static str {
        match self {
            RealMode::RelayhubNative => "native",
            RealMode::RelayhubGeneric => "generic",
            RealMode::Userspace => "userspace",
            RealMode::Decrypting => "decrypting",
            RealMode::Direct => "direct",
            RealMode::CrossXdp => "cross-xdp",
            RealMode::CrossUserspace => "cross-userspace",
        }
    }

    fn cross_path(self) -> Option<&'static str> {
        match self {
            RealMode::CrossXdp => Some("xdp"),
            RealMode::CrossUserspace => Some("userspace"),
            _ => None,
        }
    }
}

/// (inner packet size, hub ns per relayed packet per repetition, received
/// pps, NAPI-thread-only ns per packet per repetition)
pub type UdpRow = (usize, Vec<f64>, f64, Vec<f64>);

#[derive(Default, Debug, Clone)]
pub struct RealResult {
    pub tcp_mbps: Vec<f64>,
    /// Per repetition, each CPU's idle fraction during the TCP run.
    pub tcp_idle: Vec<Vec<f64>>,
    /// Per repetition, the TCP sender's retransmitted segments.
    pub tcp_retransmits: Vec<u64>,
    /// Per repetition, the drop counters that grew during the TCP run
    /// ([`sys::drop_counters`], namespace prefix stripped).
    pub tcp_drops: Vec<Vec<(String, u64)>>,
    pub udp: Vec<UdpRow>,
}

#[derive(Default, Debug, Clone)]
pub struct RealResults {
    pub modes: Vec<(RealMode, RealResult)>,
    pub udp_pps: f64,
    /// Seconds per TCP run.
    pub tcp_secs: u32,
}

/// Where a TCP run lost frames, per second (medians over the runs): the
/// sender's retransmits, then the drops: at the spokes' UDP sockets (a
/// full receive buffer), and on the links out of the hub, the router and
/// the spokes (a veth drops what its peer cannot take: a full backlog, or
/// for the hub's XDP_TX a full ring).
pub fn tcp_losses(r: &RealResult, secs: u32) -> [f64; 5] {
    let per_s = |f: &dyn Fn(&str) -> bool| {
        med(r.tcp_drops.iter().map(|d| {
            d.iter().filter(|(k, _)| f(k)).map(|(_, v)| *v).sum::<u64>() as f64 / f64::from(secs)
        }))
    };
    let link_out =
        |ns: &'static str| move |k: &str| k.starts_with(ns) && k.ends_with(".tx_dropped");
    [
        med(r
            .tcp_retransmits
            .iter()
            .map(|&n| n as f64 / f64::from(secs))),
        per_s(&|k| {
            k.starts_with("-s") && (k.ends_with("/udp4_InErrors") || k.ends_with("/Udp6InErrors"))
        }),
        per_s(&link_out("-hub/")),
        per_s(&link_out("-r/")),
        per_s(&link_out("-s")),
    ]
}

/// wireguard-go's `socketBufferSize` (conn/controlfns.go, 7 << 20).
pub const WG_GO_SOCKET_BUFFER: &str = "7340032";

struct Plan {
    reps: usize,
    tcp_secs: u32,
    udp_secs: u32,
    udp_pps: f64,
}

/// `only`: these modes instead of all (by [`RealMode::key`]);
/// `kernel_buffers`: leave the sockets at the kernel's default buffers
/// (what the rows measured before this bench set wireguard-go's).
pub fn run(
    smoke: bool,
    self_exe: &str,
    only: &[String],
    kernel_buffers: bool,
) -> anyhow::Result<RealResults> {
    let plan = if smoke {
        Plan {
            reps: 1,
            tcp_secs: 1,
            udp_secs: 1,
            udp_pps: 2000.0,
        }
    } else {
        Plan {
            reps: 3,
            tcp_secs: 4,
            udp_secs: 3,
            udp_pps: 10_000.0,
        }
    };
    let modes: &[RealMode] = if smoke {
        &[
            RealMode::RelayhubNative,
            RealMode::Userspace,
            RealMode::Decrypting,
            RealMode::Direct,
            RealMode::CrossXdp,
            RealMode::CrossUserspace,
        ]
    } else {
        &[
            RealMode::RelayhubNative,
            RealMode::RelayhubGeneric,
            RealMode::Userspace,
            RealMode::Decrypting,
            RealMode::Direct,
            RealMode::CrossXdp,
            RealMode::CrossUserspace,
        ]
    };
    // The socket buffers current wireguard-go gives itself (7 MiB, with
    // SO_RCVBUFFORCE/SO_SNDBUFFORCE since 2023) for every socket of this
    // phase: Debian's 0.0.20220316 sets none, and with the kernel's
    // 208 KiB default the receiving spoke's socket overflowed in every
    // TCP run (RcvbufErrors = the sender's retransmits), most behind the
    // fastest hub. The row then measured that buffer, not the hub.
    let _buffers = if kernel_buffers {
        None
    } else {
        Some([
            sys::SysctlGuard::set("net.core.rmem_default", WG_GO_SOCKET_BUFFER)?,
            sys::SysctlGuard::set("net.core.wmem_default", WG_GO_SOCKET_BUFFER)?,
        ])
    };
    let mut out = RealResults {
        udp_pps: plan.udp_pps,
        tcp_secs: plan.tcp_secs,
        ..Default::default()
    };
    for &m in modes {
        if !only.is_empty() && !only.iter().any(|k| k == m.key()) {
            continue;
        }
        let r = one(m, &plan, self_exe).with_context(|| m.name())?;
        out.modes.push((m, r));
    }
    Ok(out)
}

fn one(mode: RealMode, plan: &Plan, self_exe: &str) -> anyhow::Result<RealResult> {
    let topo = if mode.cross_path().is_some() {
        Topology::builder().spokes(1).ipv6_only_spokes(1).build()?
    } else {
        Topology::builder().spokes(2).build()?
    };
    // The router's receive from the hub on the hub's CPU: on the spokes'
    // CPU it preempted them for every few frames the fast hub returned,
    // and the TCP row measured that instead of the hub
    // (notes/bench-tcp-inversion.md in the design notes).
    let _pass = sys::router_receives_xdp(&topo, HUB_CPU)?;
    // SAFETY: single-threaded here; the hub process inherits it.
    match mode {
        RealMode::RelayhubGeneric => unsafe { std::env::set_var("RELAYHUB_XDP_MODE", "generic") },
        _ => unsafe { std::env::set_var("RELAYHUB_XDP_MODE", "native") },
    }
    let mut hub = None;
    let mut urelay = None;
    let mut _direct = None;
    let texts: Vec<String> = match mode {
        RealMode::CrossXdp | RealMode::CrossUserspace => {
            let path = mode.cross_path().unwrap_or("xdp");
            let mut h = Hub::start_with(&topo, HubKind::Relayhub, &["--cross-family-path", path])?;
            let added = [h.add_spoke("s1")?, h.add_spoke_ipv6("s2")?];
            let t = vec![
                h.current_config("s1", &added[0])?,
                h.current_config("s2", &added[1])?,
            ];
            std::thread::sleep(Duration::from_millis(800));
            hub = Some(h);
            t
        }
        RealMode::RelayhubNative | RealMode::RelayhubGeneric | RealMode::Decrypting => {
            let kind = if mode == RealMode::Decrypting {
                HubKind::DecryptingWireguardGo
            } else {
                HubKind::Relayhub
            };
            let mut h = Hub::start(&topo, kind)?;
            let added = [h.add_spoke("s1")?, h.add_spoke("s2")?];
            let t = vec![
                h.current_config("s1", &added[0])?,
                h.current_config("s2", &added[1])?,
            ];
            if kind == HubKind::Relayhub {
                // The hub must have both spokes as peers before they start.
                std::thread::sleep(Duration::from_millis(800));
            }
            hub = Some(h);
            t
        }
        RealMode::Userspace => {
            let keys = [wg::genkey()?, wg::genkey()?];
            let mut table = String::new();
            let mut t = Vec::new();
            for i in 0..2 {
                let port = 51821 + i as u16;
                table += &format!(
                    "ep {} {port} {}\nkey {} {}\n",
                    topo.nats[i].wan_addr,
                    i + 1,
                    i + 1,
                    keys[i].1
                );
                let o = 1 - i;
                t.push(format!(
                    "[Interface]\nPrivateKey = {}\nAddress = 10.88.0.{}/32\nListenPort = {port}\n\n[Peer]\nPublicKey = {}\nAllowedIPs = 10.88.0.{}/32\nEndpoint = {HUB_ADDR}:51820\nPersistentKeepalive = 25\n",
                    keys[i].0, i + 2, keys[o].1, o + 2
                ));
            }
            let path = topo.workdir.join("urelay-real.table");
            std::fs::write(&path, table)?;
            let p = path.to_str().context("utf-8")?;
            let mut proc = topo.hub.spawn(
                "urelay",
                &[self_exe, "urelay", "--port", "51820", "--table", p],
                &topo.workdir,
                false,
            )?;
            proc.wait_output("ready", Duration::from_secs(5))?;
            urelay = Some(proc);
            t
        }
        RealMode::Direct => {
            let (a, b) = (format!("{}d1", topo.prefix), format!("{}d2", topo.prefix));
            _direct = Some(Veth::new(&a, &topo.spokes[0].ns, &b, &topo.spokes[1].ns)?);
            topo.spokes[0]
                .ns
                .exec(&["ip", "addr", "add", "172.31.0.1/30", "dev", &a])?;
            topo.spokes[1]
                .ns
                .exec(&["ip", "addr", "add", "172.31.0.2/30", "dev", &b])?;
            let keys = [wg::genkey()?, wg::genkey()?];
            (0..2)
                .map(|i| {
                    let o = 1 - i;
                    format!(
                        "[Interface]\nPrivateKey = {}\nAddress = 10.88.0.{}/32\nListenPort = 51820\n\n[Peer]\nPublicKey = {}\nAllowedIPs = 10.88.0.{}/32\nEndpoint = 172.31.0.{}:51820\nPersistentKeepalive = 25\n",
                        keys[i].0, i + 2, keys[o].1, o + 2, o + 1
                    )
                })
                .collect()
        }
    };
    let hub_napi = if mode == RealMode::Direct {
        vec![]
    } else {
        sys::threaded_napi(&topo.hub.name, &topo.hub_nic, HUB_CPU)?
    };
    let spokes = [topo.spoke_up(0, &texts[0])?, topo.spoke_up(1, &texts[1])?];
    for s in &topo.spokes {
        for p in s.ns.pids() {
            sys::pin_pid(p, AUX_CPU);
        }
    }
    let hub_pids = || {
        let mut v = topo.hub.pids();
        v.extend(&hub_napi);
        v
    };
    if mode != RealMode::Direct {
        for p in hub_pids() {
            sys::pin_pid(p, HUB_CPU);
        }
    }
    let dst = wg::conf_address(&texts[1])?;
    cmd::wait_for(
        "spoke-to-spoke ping",
        Duration::from_secs(20),
        Duration::from_millis(100),
        || Ok(topo.spokes[0].ns.ping_once(&dst.to_string()).then_some(())),
    )?;
    let mut res = RealResult::default();
    for _ in 0..plan.reps {
        let d0 = sys::drop_counters(&topo.prefix);
        let s0 = sys::cpu_times();
        let r = iperf(&topo, dst, &["-t", &plan.tcp_secs.to_string()])?;
        res.tcp_idle.push(sys::idle_since(&s0));
        let drops: Vec<(String, u64)> = sys::grown(&d0, &sys::drop_counters(&topo.prefix))
            .into_iter()
            .map(|(k, v)| (k.trim_start_matches(topo.prefix.as_str()).to_string(), v))
            .collect();
        eprintln!(
            "    TCP {:.0} Mbit/s, {} retransmits, drops {drops:?}",
            r.bps / 1e6,
            r.retransmits
        );
        anyhow::ensure!(r.bps > 0.0, "{}: TCP delivered nothing", mode.name());
        res.tcp_mbps.push(r.bps / 1e6);
        res.tcp_retransmits.push(r.retransmits);
        res.tcp_drops.push(drops);
    }
    // The path check counts from here: the UDP runs only.
    let m0 = hub
        .as_ref()
        .filter(|h| h.kind == HubKind::Relayhub)
        .map(|h| h.metrics())
        .transpose()?;
    eprintln!(
        "  {:<36} TCP {:.0} Mbit/s",
        mode.name(),
        med(res.tcp_mbps.iter().copied())
    );
    if mode != RealMode::Direct {
        for inner in crate::packet::SIZES {
            let len = inner - 28;
            let bps = plan.udp_pps * (len as f64) * 8.0;
            let mut v = Vec::new();
            let mut napi = Vec::new();
            let mut rate = 0.0;
            for _ in 0..plan.reps {
                let n0 = sys::cpu_ns(&hub_napi);
                let c0 = sys::cpu_ns(&hub_pids());
                let pkts = iperf(
                    &topo,
                    dst,
                    &[
                        "-u",
                        "-b",
                        &format!("{bps:.0}"),
                        "-l",
                        &len.to_string(),
                        "-t",
                        &plan.udp_secs.to_string(),
                    ],
                )?
                .pkts;
                let c1 = sys::cpu_ns(&hub_pids());
                let n1 = sys::cpu_ns(&hub_napi);
                anyhow::ensure!(pkts > 0, "{}: UDP {inner} B delivered nothing", mode.name());
                v.push((c1 - c0) as f64 / pkts.max(1) as f64);
                napi.push((n1 - n0) as f64 / pkts.max(1) as f64);
                rate = pkts as f64 / plan.udp_secs as f64;
            }
            eprintln!(
                "  {:<36} UDP {inner} B @ {:.0} pps: hub {:.0} ns/pkt",
                mode.name(),
                rate,
                med(v.iter().copied())
            );
            res.udp.push((inner, v, rate, napi));
        }
    }
    if let (Some(h), Some(m0)) = (hub.as_ref(), m0.as_ref()) {
        check_path(mode, m0, &h.metrics()?, &res)?;
    }
    drop(spokes);
    drop(urelay);
    drop(hub);
    Ok(res)
}

/// The hub's own counters say the frames took the path the mode names:
/// the XDP program for the relayhub rows, the userspace fallback for
/// `--cross-family-path userspace`.
fn check_path(
    mode: RealMode,
    m0: &relay_tests::prom::Metrics,
    m1: &relay_tests::prom::Metrics,
    res: &RealResult,
) -> anyhow::Result<()> {
    let d = |name: &str, labels: &[(&str, &str)]| m1.value(name, labels) - m0.value(name, labels);
    // At least one second's worth of each UDP run reached the receiver.
    let udp: f64 = res.udp.iter().map(|(_, _, rate, _)| rate).sum::<f64>();
    let xdp = d("relayhub_relayed_packets_total", &[("path", "xdp")]);
    let userspace = d("relayhub_relayed_packets_total", &[("path", "userspace")]);
    let fallback = d(
        "relayhub_userspace_fallback_frames_total",
        &[("reason", "configured")],
    );
    eprintln!(
        "  {:<36} path: xdp +{xdp}, userspace +{userspace} (fallback configured +{fallback})",
        mode.name()
    );
    match mode {
        RealMode::CrossUserspace => anyhow::ensure!(
            fallback >= udp && xdp < 0.01 * fallback,
            "{}: {fallback} frames through the fallback, {xdp} in XDP, for about {udp:.0} UDP frames a second",
            mode.name()
        ),
        _ => anyhow::ensure!(
            xdp >= udp && userspace < 0.01 * xdp,
            "{}: {xdp} frames relayed in XDP, {userspace} in userspace, for about {udp:.0} UDP frames a second",
            mode.name()
        ),
    }
    Ok(())
}

/// One iperf3 run's result.
struct Iperf {
    bps: f64,
    /// UDP: datagrams received.
    pkts: u64,
    /// TCP: segments the sender retransmitted.
    retransmits: u64,
}

/// iperf3 from spoke 1 to spoke 2 (`dst`, tunnel address).
fn iperf(topo: &Topology, dst: Ipv4Addr, extra: &[&str]) -> anyhow::Result<Iperf> {
    let cpu = AUX_CPU.to_string();
    let _srv = topo.iperf3_server(1, &dst.to_string(), &["taskset", "-c", &cpu])?;
    let mut argv = vec!["taskset", "-c", &cpu, "iperf3", "-c"];
    let d = dst.to_string();
    argv.push(&d);
    argv.extend_from_slice(&["-J", "--connect-timeout", "3000"]);
    argv.extend_from_slice(extra);
    let out = topo.spokes[0]
        .ns
        .output(&argv, Duration::from_secs(60))?
        .checked()?;
    let v: serde_json::Value = serde_json::from_str(&out).context("iperf3 -J")?;
    let end = &v["end"];
    if !extra.contains(&"-u") {
        return Ok(Iperf {
            bps: end["sum_received"]["bits_per_second"]
                .as_f64()
                .unwrap_or(0.0),
            pkts: 0,
            retransmits: end["sum_sent"]["retransmits"].as_u64().unwrap_or(0),
        });
    }
    let s = &end["sum"];
    let pkts = s["packets"]
        .as_u64()
        .unwrap_or(0)
        .saturating_sub(s["lost_packets"].as_u64().unwrap_or(0));
    Ok(Iperf {
        bps: s["bits_per_second"].as_f64().unwrap_or(0.0),
        pkts,
        retransmits: 0,
    })
}
