//! The client matrix with the Linux kernel's WireGuard: two kernel spokes
//! in QEMU guests (Debian's kernel, booted by virtme-ng under software
//! emulation, see `relay_tests::guest`), with a wireguard-go and a
//! boringtun spoke, every spoke run the way README "Clients" says:
//!
//! - s1 (IPv4, behind NAT44): kernel WireGuard in guest k1, the file as is;
//! - s2 (IPv4, behind NAT44): wireguard-go, the file as is;
//! - s3 (IPv6-only, behind a firewall): kernel WireGuard in guest k3;
//! - s4 (IPv6-only, behind a firewall): boringtun through
//!   contrib/boringtun-relayhub with the README's `PostUp` ping.
//!
//! So kernel WireGuard is tested over both families, to each client and to
//! itself, within a family and across (s1 <-> s3 is IPv4 <-> IPv6).
//!
//! The spokes come up in the order s1, s2, s4, s3: one kernel spoke long
//! before the others (its first initiations to them fail and it retries on
//! WireGuard's 5 s timer), one last (its first initiations arrive while the
//! hub is learning its endpoint).
//!
//! Asserted: the guests' interfaces are the kernel's (`wireguard` links on
//! the booted kernel); first contact: all 12 ordered pairs, tried at once,
//! ping within 2 s of the last interface coming up (measured on the host,
//! including the guest agent's delay to start its pings and the guest
//! starting processes under emulation, so an upper bound: the log says
//! which echo was answered first); every peer of a kernel spoke still has
//! the hub as endpoint; then every pair pings without loss.
//!
//! Ignored by the plain test run (it boots two guests, about a minute):
//! `cargo xtask test-guests` installs what it needs and runs it.

use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use relay_tests::guest::{Guest, GuestKit, Pending};
use relay_tests::netns::Ping;
use relay_tests::topology::{HUB_ADDR, HUB_ADDR6, HUB_PORT};
use relay_tests::wg::{BORINGTUN_POST_UP, Client, WgQuick, with_interface_line};
use relay_tests::{Hub, Topology, relayhub_scenario};

/// The promise: every pair talks within this after the last spoke is up.
const FIRST_CONTACT: Duration = Duration::from_secs(2);
/// How long a pair is tried before the test gives up on it (longer than
/// the promise, so a miss is measured, not cut off).
const GIVE_UP: Duration = Duration::from_secs(20);
/// Boot bound for a guest under software emulation (about 30 s alone,
/// longer while the other boots on the same 2 cores).
const BOOT: Duration = Duration::from_secs(300);

#[derive(Clone, Copy, PartialEq)]
enum Impl {
    Kernel,
    User(Client),
}

struct Spoke {
    name: &'static str,
    ipv6: bool,
    imp: Impl,
    post_up: bool,
}

const SPOKES: [Spoke; 4] = [
    Spoke {
        name: "s1",
        ipv6: false,
        imp: Impl::Kernel,
        post_up: false,
    },
    Spoke {
        name: "s2",
        ipv6: false,
        imp: Impl::User(Client::WireguardGo),
        post_up: false,
    },
    Spoke {
        name: "s3",
        ipv6: true,
        imp: Impl::Kernel,
        post_up: false,
    },
    Spoke {
        name: "s4",
        ipv6: true,
        imp: Impl::User(Client::Boringtun),
        post_up: true,
    },
];

/// Order in which the spokes' interfaces come up (indices into SPOKES).
const UP_ORDER: [usize; 4] = [0, 1, 3, 2];

#[test]
#[ignore = "boots two QEMU guests (about a minute): run by `cargo xtask test-guests`"]
fn kernel_clients_e2e() {
    let kit = GuestKit::from_env().unwrap_or_else(|e| panic!("{e:#}"));
    relayhub_scenario(
        "kernel_clients_e2e",
        Topology::builder()
            .spokes(2)
            .ipv6_only_spokes(2)
            .xdp_pass(env!("CARGO_BIN_EXE_xdp-pass")),
        |topo, hub| checks(topo, hub, &kit),
    );
}

fn label(i: usize) -> String {
    let s = &SPOKES[i];
    let imp = match s.imp {
        Impl::Kernel => "kernel",
        Impl::User(c) => c.name(),
    };
    format!("{}({imp},{})", s.name, if s.ipv6 { "v6" } else { "v4" })
}

fn checks(topo: &Topology, hub: &mut Hub<'_>, kit: &GuestKit) -> anyhow::Result<()> {
    // Both guests boot at once: half the wall time, and each waits for
    // its own agent.
    let t_boot = Instant::now();
    let mut guests: Vec<Option<Guest>> = Vec::new();
    for (i, s) in SPOKES.iter().enumerate() {
        guests.push(match s.imp {
            Impl::Kernel => Some(Guest::start(topo, i, kit)?),
            Impl::User(_) => None,
        });
    }
    for g in guests.iter_mut().flatten() {
        g.wait_ready(BOOT)?;
        ensure!(
            g.kernel == kit.kernel,
            "guest {} booted {} instead of {}",
            g.name,
            g.kernel,
            kit.kernel
        );
        eprintln!(
            "[kernel] guest {} ready {:.1}s after both started booting (kernel {})",
            g.name,
            t_boot.elapsed().as_secs_f64(),
            g.kernel
        );
    }

    let mut confs = Vec::new();
    let mut keys = Vec::new();
    for s in &SPOKES {
        let added = if s.ipv6 {
            hub.add_spoke_ipv6(s.name)?
        } else {
            hub.add_spoke(s.name)?
        };
        keys.push(relay_tests::wg::conf_public_key(&added)?);
        confs.push(added);
    }
    for (s, conf) in SPOKES.iter().zip(confs.iter_mut()) {
        let c = hub.current_config(s.name, conf)?;
        *conf = if s.post_up {
            with_interface_line(&c, BORINGTUN_POST_UP)
        } else {
            c
        };
    }
    hub.wait_for_peers(&keys)?;
    let addrs: Vec<String> = confs
        .iter()
        .map(|c| relay_tests::wg::conf_address(c).map(|a| a.to_string()))
        .collect::<anyhow::Result<_>>()?;

    // Every ordered pair at once, as users' traffic would start. A guest
    // probe is a command for the guest's agent: the last guest's waits
    // right behind its wg-quick up, the other starts as soon as that is up.
    let dsts = |a: usize| -> Vec<(usize, String)> {
        (0..SPOKES.len())
            .filter(|&b| b != a)
            .map(|b| (b, addrs[b].clone()))
            .collect()
    };
    // Host spokes' interfaces (wg-quick down on drop); the guests' go
    // with the guests.
    let mut host_up: Vec<Option<WgQuick>> = (0..SPOKES.len()).map(|_| None).collect();
    let mut probes = Vec::new();
    let mut t_up = Instant::now();
    for (k, &i) in UP_ORDER.iter().enumerate() {
        let s = &SPOKES[i];
        let last = k + 1 == UP_ORDER.len();
        match (s.imp, &guests[i]) {
            (Impl::Kernel, Some(g)) => {
                let up = g.start_wg_quick_up(&confs[i])?;
                if last {
                    probes.push((i, g.start_cmd(&probe_script(&dsts(i)))?));
                }
                t_up = up.wait()?;
            }
            (Impl::User(c), _) => {
                host_up[i] = Some(
                    topo.spoke_up_with(i, &confs[i], c)
                        .with_context(|| format!("{} on {}", s.name, c.name()))?,
                );
                t_up = Instant::now();
            }
            (Impl::Kernel, None) => unreachable!("every kernel spoke has a guest"),
        }
    }
    for (a, g) in guests.iter().enumerate() {
        if let Some(g) = g
            && !probes.iter().any(|(i, _)| *i == a)
        {
            probes.push((a, g.start_cmd(&probe_script(&dsts(a)))?));
        }
    }
    let times: PairTimes = thread::scope(|sc| {
        let mut hs = Vec::new();
        for (a, p) in probes {
            let ds = dsts(a);
            hs.push(sc.spawn(move || watch_probes(a, p, &ds, t_up)));
        }
        for (a, u) in host_up.iter().enumerate() {
            if u.is_some() {
                for (b, dst) in dsts(a) {
                    let ns = &topo.spokes[a].ns;
                    hs.push(sc.spawn(move || {
                        while t_up.elapsed() < GIVE_UP {
                            if ns.ping_once(&dst) {
                                return Ok(vec![(a, b, Some(t_up.elapsed()))]);
                            }
                        }
                        Ok(vec![(a, b, None)])
                    }));
                }
            }
        }
        hs.into_iter()
            .map(|h| h.join().expect("probe thread"))
            .collect::<anyhow::Result<Vec<_>>>()
            .map(|v| v.into_iter().flatten().collect())
    })?;
    let report: Vec<String> = times
        .iter()
        .map(|&(a, b, t)| match t {
            Some(t) => format!("{}->{} {:.2}s", label(a), label(b), t.as_secs_f64()),
            None => format!("{}->{} never", label(a), label(b)),
        })
        .collect();
    eprintln!(
        "[kernel] first contact after the last interface: {}",
        report.join(", ")
    );
    let slow: Vec<&String> = times
        .iter()
        .zip(&report)
        .filter(|((_, _, t), _)| t.is_none_or(|t| t > FIRST_CONTACT))
        .map(|(_, r)| r)
        .collect();
    ensure!(
        slow.is_empty(),
        "first contact over {FIRST_CONTACT:?} after the last spoke came up: {slow:?}"
    );

    // The guests run the kernel's WireGuard, and relay never moved a
    // peer's endpoint off the hub.
    for (i, g) in guests.iter().enumerate() {
        let Some(g) = g else { continue };
        let link = g
            .run("ip -d link show wgk", Duration::from_secs(20))?
            .checked("ip -d link show wgk")?;
        ensure!(
            link.contains("wireguard"),
            "guest {}'s wgk is not a kernel WireGuard link: {link}",
            g.name
        );
        let hub_ep = if SPOKES[i].ipv6 {
            format!("[{HUB_ADDR6}]:{HUB_PORT}")
        } else {
            format!("{HUB_ADDR}:{HUB_PORT}")
        };
        let eps = g
            .run("wg show wgk endpoints", Duration::from_secs(20))?
            .checked("wg show wgk endpoints")?;
        let off: Vec<&str> = eps.lines().filter(|l| !l.ends_with(&hub_ep)).collect();
        // The hub and the three other spokes.
        ensure!(
            eps.lines().count() == SPOKES.len() && off.is_empty(),
            "{}: every peer's endpoint must be the hub {hub_ep}: {eps}",
            label(i)
        );
    }

    // Steady state: every pair, no loss. With a deadline (-w) ping waits
    // for every answer until then; with -W it waits only twice the largest
    // round trip after the last echo, and a guest's round trip under
    // emulation varies more than that: a late answer counted as lost.
    for (a, guest) in guests.iter().enumerate() {
        for (b, dst) in dsts(a) {
            let argv = ["ping", "-n", "-c", "5", "-i", "0.1", "-w", "5", &dst];
            let out = match guest {
                Some(g) => g.run(&argv.join(" "), Duration::from_secs(30))?.out,
                None => {
                    topo.spokes[a]
                        .ns
                        .output(&argv, Duration::from_secs(10))?
                        .stdout
                }
            };
            let r = Ping::parse(&out).with_context(|| format!("{} -> {}", label(a), label(b)))?;
            ensure!(r.lost() == 0, "{} -> {}: {r:?}\n{out}", label(a), label(b));
        }
    }
    eprintln!("[kernel] all 12 pairs: 5 of 5 pings each");
    drop(host_up);
    for g in guests.iter_mut().flatten() {
        g.stop();
    }
    Ok(())
}

/// A guest's first-contact probe: one ping per destination, all at once,
/// each sending every 50 ms until its first answer (one process each: a
/// fork costs tens of ms under emulation), then printing `ok DST` and,
/// after that, `seq DST N`: the first answered echo was the Nth sent.
fn probe_script(dsts: &[(usize, String)]) -> String {
    let list: Vec<&str> = dsts.iter().map(|(_, d)| d.as_str()).collect();
    format!(
        r#"echo start
for dst in {list}; do
    (
        if r=$(ping -n -c 1 -i 0.05 -w {give_up} "$dst" 2>&1); then
            echo "ok $dst"
            echo "seq $dst $(echo "$r" | sed -n 's/.*icmp_seq=\([0-9]*\).*/\1/p')"
        else
            echo "never $dst"
        fi
    ) &
done
wait
"#,
        give_up = GIVE_UP.as_secs(),
        list = list.join(" ")
    )
}

/// (source, destination, first contact after the last interface came up).
type PairTimes = Vec<(usize, usize, Option<Duration>)>;

/// Watch a guest's probe output from the host: each pair's time is when
/// its `ok` line appeared, after `t_up` (an upper bound: it includes the
/// agent starting the command and the write reaching the host).
fn watch_probes(
    a: usize,
    p: Pending<'_>,
    dsts: &[(usize, String)],
    t_up: Instant,
) -> anyhow::Result<PairTimes> {
    let mut seen: Vec<Option<Duration>> = vec![None; dsts.len()];
    let mut started = None;
    let deadline = t_up + GIVE_UP + Duration::from_secs(20);
    loop {
        let out = p.output_so_far();
        if started.is_none() && out.lines().any(|l| l == "start") {
            started = Some(t_up.elapsed());
        }
        for (k, (_, dst)) in dsts.iter().enumerate() {
            if seen[k].is_none() && out.lines().any(|l| l == format!("ok {dst}")) {
                seen[k] = Some(t_up.elapsed());
            }
        }
        if p.done() || Instant::now() > deadline {
            break;
        }
        thread::sleep(Duration::from_millis(5));
    }
    let out = p.wait(Duration::from_secs(10))?.out;
    // Which echo was answered first tells the network's part of the time
    // from the guest's CPU's (starting processes under emulation).
    let seqs: Vec<String> = out
        .lines()
        .filter_map(|l| l.strip_prefix("seq "))
        .map(|l| match l.split_once(' ') {
            Some((dst, n)) => format!("{dst} echo #{n}"),
            None => l.to_string(),
        })
        .collect();
    eprintln!(
        "[kernel] {} started its probes {} after the last interface; first answers: {}",
        label(a),
        started.map_or("?".into(), |s| format!("{:.2}s", s.as_secs_f64())),
        seqs.join(", ")
    );
    Ok(dsts
        .iter()
        .zip(seen)
        .map(|((b, _), t)| (a, *b, t))
        .collect())
}
