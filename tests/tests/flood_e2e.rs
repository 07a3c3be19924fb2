//! Handshake flood (issue 4, "keep working under attack"): an attacker on
//! the Internet side floods the hub with initiations that carry a valid
//! mac1 for spoke s2, most of them spoofed from spoke s1's authenticated
//! endpoint (the worst case: a known source), the rest from its own
//! address with many ports (strangers). Meanwhile:
//!
//! - the XDP program copies at most INITIATION_COPIES_PER_SEC a second per
//!   source address to the controller, so the flood (two addresses) never
//!   fills the ring and never puts the whole hub under load;
//! - existing sessions keep relaying (XDP; the controller is not involved);
//! - a fresh spoke (s4) comes up during the flood and completes handshakes
//!   with the hub, s1 and s3 within FIRST_CONTACT, and with the flood's
//!   target s2 at most one cookie round trip later (the shield may demand
//!   one for initiations to s2; WireGuard answers it on its next retry);
//! - s2's WireGuard sees only a bounded number of initiations (the shield
//!   forwards a spoofed source only until its rate trips, then demands
//!   cookies the attacker never receives);
//! - the hub's counters account for it (cookie replies, rate-limited drops).
//!
//! Rates achieved are printed. Run as root:
//! `cargo test -p relay-tests --release --test flood_e2e -- --nocapture`.

use std::net::Ipv4Addr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use relay_tests::capture::{Capture, read_wg_frames};
use relay_tests::inject::Datagram;
use relay_tests::topology::{HUB_ADDR, HUB_PORT, leftovers};
use relay_tests::wg::conf_public_key;
use relay_tests::{Hub, HubKind, Topology, cmd};
use relay_user::core::keys::Mac1Key;

/// First contact of the fresh spoke with spokes the flood does not target:
/// before WireGuard's first retry (REKEY_TIMEOUT, 5 s), i.e. no initiation
/// of it was lost to the flood. (Measured 0.3-2.3 s on 2 busy cores; 2 s
/// without a flood, see clients_e2e.)
const FIRST_CONTACT: Duration = Duration::from_secs(5);
/// With the flood's target: one cookie round trip (REKEY_TIMEOUT 5 s plus
/// WireGuard's jitter of up to 1/3 s) plus FIRST_CONTACT.
const VIA_COOKIE: Duration = Duration::from_millis(7500);
/// Pings per established pair during the flood.
const PINGS: u32 = 20;
/// How long the attacker floods.
const FLOOD_FOR: Duration = Duration::from_secs(10);
/// Sender threads in the attacker namespace (the machine has 2 cores,
/// shared by attacker, router, hub and spokes).
const FLOOD_THREADS: usize = 2;
/// Distinct initiations cycled through by each sender.
const POOL: usize = 4096;
/// One in this many flood frames comes from the attacker's own address
/// (a stranger), the rest claim s1's endpoint.
const STRANGER_EVERY: usize = 4;
/// Marks flood frames (bytes 16..24, inside the encrypted static).
const MARKER: &[u8; 8] = b"RHFLOOD!";
/// At most this many initiations may reach s2 during the flood: the
/// spoofed source's burst before its rate trips plus the legitimate
/// handshakes (s4 and retries), far below the flood.
const MAX_AT_TARGET: usize = 200;

#[test]
fn flood_e2e() {
    cmd::require_root();
    let prefix = scenario().unwrap_or_else(|e| panic!("flood_e2e failed: {e:#}"));
    let left = leftovers(&prefix);
    assert!(
        left.is_empty(),
        "cleanup left things behind:\n{}",
        left.join("\n")
    );
}

fn scenario() -> anyhow::Result<String> {
    let topo = Topology::builder()
        .spokes(4)
        .xdp_pass(env!("CARGO_BIN_EXE_xdp-pass"))
        .attacker()
        .build()?;
    let prefix = topo.prefix.clone();
    let mut hub = Hub::start(&topo, HubKind::Relayhub)?;
    let r = run(&topo, &mut hub);
    if r.is_err() {
        eprintln!("[{prefix}] hub log (last 40 lines):\n{}", hub.log_tail(40));
    }
    let report = hub.stop();
    r?;
    ensure!(report.clean_exit, "hub exit: {}", report.status);
    drop(hub);
    drop(topo);
    Ok(prefix)
}

/// Base64 WireGuard key -> bytes.
fn decode_key(b64: &str) -> anyhow::Result<[u8; 32]> {
    const ALPHA: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut bits = 0u32;
    let mut n = 0;
    let mut out = Vec::with_capacity(32);
    for c in b64.trim().trim_end_matches('=').bytes() {
        let v = ALPHA.iter().position(|&a| a == c).context("base64")? as u32;
        bits = (bits << 6) | v;
        n += 6;
        if n >= 8 {
            n -= 8;
            out.push((bits >> n) as u8);
        }
    }
    out.try_into()
        .map_err(|_| anyhow::anyhow!("not a 32-byte key: {b64}"))
}

fn run(topo: &Topology, hub: &mut Hub<'_>) -> anyhow::Result<()> {
    let p = format!("[{}]", topo.prefix);
    let names = ["s1", "s2", "s3", "s4"];
    let mut added = Vec::new();
    for n in names {
        added.push(hub.add_spoke(n)?);
    }
    let mut texts = Vec::new();
    for (n, a) in names.iter().zip(&added) {
        texts.push(hub.current_config(n, a)?);
    }
    let keys: Vec<String> = texts
        .iter()
        .map(|t| conf_public_key(t))
        .collect::<anyhow::Result<_>>()?;
    hub.wait_for_peers(&keys)?;
    let addrs: Vec<Ipv4Addr> = texts
        .iter()
        .map(|t| relay_tests::wg::conf_address(t))
        .collect::<anyhow::Result<_>>()?;
    // s1..s3 up and talking; s4 comes up during the flood.
    let mut up = Vec::new();
    for (i, text) in texts.iter().enumerate().take(3) {
        up.push(topo.spoke_up(i, text)?);
    }
    for (a, (name, host)) in names.iter().zip(&topo.spokes).enumerate().take(3) {
        for (b, addr) in addrs.iter().enumerate().take(3) {
            if a != b {
                let dst = addr.to_string();
                cmd::wait_for(
                    &format!("{name} to ping {dst}"),
                    Duration::from_secs(15),
                    Duration::from_millis(20),
                    || Ok(host.ns.ping_once(&dst).then_some(())),
                )?;
            }
        }
    }
    eprintln!("{p} s1, s2, s3 up and reachable");

    // s1's endpoint as the hub authenticated it (its NAT's mapping).
    let endpoints = topo.hub.exec(&["wg", "show", &hub.wg_iface, "endpoints"])?;
    let s1_ep = endpoints
        .lines()
        .find_map(|l| {
            let mut it = l.split_whitespace();
            (it.next()? == keys[0]).then(|| it.next().map(str::to_string))?
        })
        .context("s1 has no endpoint at the hub")?;
    let (s1_ip, s1_port) = s1_ep.rsplit_once(':').context("endpoint")?;
    let s1_ip: Ipv4Addr = s1_ip.parse()?;
    let s1_port: u16 = s1_port.parse()?;
    eprintln!("{p} spoofing s1's endpoint {s1_ip}:{s1_port}");

    let att = topo.attacker.as_ref().context("no attacker host")?;
    topo.allow_spoofing()?;

    // Initiations s2's WireGuard receives.
    let s2 = &topo.spokes[1];
    let cap = Capture::start_filtered(
        &s2.ns,
        &s2.lan_if,
        &topo.workdir,
        "s2-initiations",
        &["udp", "and", "udp[8]", "=", "1"],
    )?;
    let s2_key = decode_key(&keys[1])?;
    let pool = flood_pool(&s2_key, (s1_ip, s1_port), att.addr);
    let m0 = hub.metrics()?;

    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicU64::new(0));
    let t_flood = Instant::now();
    let mut senders = Vec::new();
    for t in 0..FLOOD_THREADS {
        let ns = att.ns.name.clone();
        let pool = pool.clone();
        let stop = stop.clone();
        let sent = sent.clone();
        senders.push(thread::spawn(move || flood(&ns, &pool, t, &stop, &sent)));
    }

    // During the flood.
    thread::sleep(Duration::from_secs(1));
    let rate_1s = sent.load(Ordering::Relaxed) as f64 / t_flood.elapsed().as_secs_f64();
    eprintln!("{p} flooding at {rate_1s:.0} initiations/s");
    let mut checks = Vec::new();
    // Existing sessions, including the target's and the spoofed spoke's.
    for (a, b) in [(0, 1), (2, 1), (1, 0)] {
        // Established sessions are relayed by XDP by receiver index, which
        // the flood (initiations) never touches; but the flood saturates
        // both cores (~870k frames/s through veths), and a frame, any
        // frame, is then sometimes dropped before XDP (seen: 1 ping in 150
        // across runs). A session the flood broke would lose them all.
        let ping = topo.spokes[a].ns.ping(&addrs[b].to_string(), PINGS, 0.1)?;
        ensure!(
            ping.lost() <= PINGS / 10,
            "{} -> {} lost {} of {PINGS} pings during the flood",
            names[a],
            names[b],
            ping.lost()
        );
        checks.push(format!(
            "{}->{} {}/{PINGS}",
            names[a],
            names[b],
            PINGS - ping.lost()
        ));
    }
    // A fresh spoke: handshakes with the hub, s3, the target s2 and s1 (the
    // flood spoofs s1's endpoint), all tried at once.
    let t4 = Instant::now();
    up.push(topo.spoke_up(3, &texts[3])?);
    let fresh: Vec<(usize, Option<Duration>)> = thread::scope(|sc| {
        let hs: Vec<_> = [2usize, 1, 0]
            .into_iter()
            .map(|b| {
                let dst = addrs[b].to_string();
                let ns = &topo.spokes[3].ns;
                sc.spawn(move || {
                    while t4.elapsed() < Duration::from_secs(25) {
                        if ns.ping_once(&dst) {
                            return (b, Some(t4.elapsed()));
                        }
                    }
                    (b, None)
                })
            })
            .collect();
        hs.into_iter()
            .map(|h| h.join().expect("ping thread"))
            .collect()
    });
    let fresh_report: Vec<String> = fresh
        .iter()
        .map(|(b, t)| match t {
            Some(t) => format!("s4->{} after {:.1}s", names[*b], t.as_secs_f64()),
            None => format!("s4->{} never", names[*b]),
        })
        .collect();
    for &(b, t) in &fresh {
        let bound = if b == 1 { VIA_COOKIE } else { FIRST_CONTACT };
        ensure!(
            t.is_some_and(|t| t <= bound),
            "fresh spoke s4 during the flood: {} (bound {bound:?}): {fresh_report:?}",
            names[b]
        );
    }
    let mut fresh = fresh_report;
    // The hub's own WireGuard (wireguard-go here) still gets the flood's
    // leftovers within the per-source budget and, starved of CPU by the
    // flood, may call itself under load and answer s4 with a cookie: one
    // retry of s4's.
    let hub_addr = relay_tests::hub::HUB_TUNNEL_ADDR.to_string();
    cmd::wait_for(
        "fresh spoke s4 to ping the hub's tunnel address during the flood",
        VIA_COOKIE.saturating_sub(t4.elapsed()),
        Duration::from_millis(50),
        || Ok(topo.spokes[3].ns.ping_once(&hub_addr).then_some(())),
    )?;
    fresh.push(format!("s4->hub after {:.1}s", t4.elapsed().as_secs_f64()));
    eprintln!(
        "{p} during the flood: {} ; {}",
        checks.join(", "),
        fresh.join(", ")
    );
    let m_mid = hub.metrics()?;

    // Let the flood run its course.
    while t_flood.elapsed() < FLOOD_FOR {
        thread::sleep(Duration::from_millis(100));
    }
    stop.store(true, Ordering::Relaxed);
    for s in senders {
        s.join()
            .map_err(|_| anyhow::anyhow!("flood thread panicked"))??;
    }
    let flood_secs = t_flood.elapsed().as_secs_f64();
    let total = sent.load(Ordering::Relaxed);
    thread::sleep(Duration::from_millis(500));
    let m1 = hub.metrics()?;
    let frames = read_wg_frames(&cap.finish())?;
    let at_target = frames.iter().filter(|f| f.kind == 1).count();

    let d = |name: &str, labels: &[(&str, &str)]| m1.value(name, labels) - m0.value(name, labels);
    let ev = |e: &str| d("relayhub_xdp_events_total", &[("event", e)]);
    let init = |r: &str| {
        d(
            "relayhub_handshakes_total",
            &[("type", "initiation"), ("result", r)],
        )
    };
    let seen = ev("seen");
    let queued = ev("initiations_queued");
    let ring_full = ev("initiations_ring_full");
    let not_copied = ev("initiations_not_copied");
    // Passed on to the hub's own WireGuard: a few per source address and
    // second; the rest are dropped in XDP (still routed above).
    let not_passed = ev("initiations_not_passed");
    let relayed = init("relayed");
    let cookies = init("cookie_sent");
    let limited = init("rate_limited");
    // Every outcome the controller counts (the list had drifted when it
    // was spelled out here: "denied" and "index_conflict" were missing).
    let handled: f64 = relay_user::core::outcome::InitiationResult::ALL
        .iter()
        .map(|r| init(r.label()))
        .sum();
    let reasons: Vec<String> = [
        "scan_budget",
        "cookie_budget",
        "proven_rate",
        "stranger_under_load",
    ]
    .iter()
    .map(|r| {
        format!(
            "{r}={}",
            d("relayhub_rate_limited_initiations_total", &[("reason", r)])
        )
    })
    .collect();
    eprintln!(
        "{p} flood: {total} initiations in {flood_secs:.1}s = {:.0}/s from {FLOOD_THREADS} threads; \
         hub XDP saw {seen} frames ({:.0}/s), queued {queued} initiations to the controller ({:.0}/s), \
         not copied {not_copied}, ring full {ring_full}, not passed to the hub's WireGuard {not_passed}; controller handled {handled} ({:.0}/s): relayed {relayed}, \
         cookie replies {cookies}, rate-limited {limited} ({}); mac2 valid {} invalid {}; \
         s2 received {at_target} initiations ({:.1}/s)",
        total as f64 / flood_secs,
        seen / flood_secs,
        queued / flood_secs,
        handled / flood_secs,
        reasons.join(" "),
        d("relayhub_mac2_checks_total", &[("result", "valid")]),
        d("relayhub_mac2_checks_total", &[("result", "invalid")]),
        at_target as f64 / flood_secs,
    );
    let mid_cookies = m_mid.value(
        "relayhub_handshakes_total",
        &[("type", "initiation"), ("result", "cookie_sent")],
    );
    ensure!(
        total > 0 && seen >= 0.5 * total as f64,
        "the flood did not reach the hub: it saw {seen} frames of {total} sent"
    );
    ensure!(
        not_passed >= 0.9 * seen,
        "only {not_passed} of {seen} flood initiations kept from the hub's own WireGuard"
    );
    ensure!(
        not_copied >= 0.9 * seen && ring_full == 0.0,
        "the flood reached the controller: {not_copied} of {seen} kept from it, ring full {ring_full}"
    );
    // Two flood addresses, a copy budget each (plus a second's slack at
    // each end of the windows), and the spokes' own few.
    let copy_bound =
        2.0 * f64::from(relay_common::INITIATION_COPIES_PER_SEC) * (flood_secs + 2.0) + 100.0;
    ensure!(
        queued <= copy_bound && handled <= copy_bound,
        "the controller got {queued} copies, handled {handled} (bound {copy_bound:.0})"
    );
    ensure!(
        cookies >= 1.0 && mid_cookies >= 1.0,
        "no cookie replies under load"
    );
    ensure!(
        limited >= 0.9 * (handled - relayed - cookies).max(0.0) && limited > 0.5 * handled,
        "most flood initiations should be rate limited: {limited} of {handled}"
    );
    ensure!(
        at_target <= MAX_AT_TARGET,
        "s2 received {at_target} initiations during the flood (bound {MAX_AT_TARGET})"
    );
    Ok(())
}

/// One prebuilt IPv4/UDP packet and where it goes.
#[derive(Clone)]
struct Pkt {
    bytes: Vec<u8>,
}

fn packet(src: Ipv4Addr, sport: u16, payload: &[u8]) -> Vec<u8> {
    Datagram {
        src,
        sport,
        dst: HUB_ADDR,
        dport: HUB_PORT,
        payload: payload.to_vec(),
    }
    .packet()
}

/// Distinct initiations for `target` (valid mac1, zero mac2): most from
/// `spoofed`, every [`STRANGER_EVERY`]th from `own` with varying ports.
fn flood_pool(target: &[u8; 32], spoofed: (Ipv4Addr, u16), own: Ipv4Addr) -> Arc<Vec<Pkt>> {
    let mac1 = Mac1Key::for_public_key(target);
    let pool = (0..POOL)
        .map(|i| {
            let mut m = [0u8; 148];
            let mut x = (i as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15);
            for b in m.iter_mut() {
                x ^= x >> 29;
                x = x.wrapping_mul(0xbf58_476d_1ce4_e5b9);
                *b = x as u8;
            }
            m[0] = 1;
            m[1..4].fill(0);
            m[16..24].copy_from_slice(MARKER);
            testkit::wg::set_mac1(&mut m, &mac1);
            m[132..].fill(0);
            let (src, port) = if i % STRANGER_EVERY == 0 {
                (own, 20000 + (i as u16 % 40000))
            } else {
                spoofed
            };
            Pkt {
                bytes: packet(src, port, &m),
            }
        })
        .collect();
    Arc::new(pool)
}

/// Send the pool round-robin with sendmmsg on a raw socket inside `ns`
/// until `stop`.
fn flood(
    ns: &str,
    pool: &[Pkt],
    offset: usize,
    stop: &AtomicBool,
    sent: &AtomicU64,
) -> anyhow::Result<()> {
    use std::os::fd::AsRawFd;
    const BATCH: usize = 64;
    let f = std::fs::File::open(format!("/run/netns/{ns}"))?;
    // SAFETY: plain syscalls on valid descriptors and buffers that outlive
    // them; this thread's namespace change dies with it.
    unsafe {
        ensure!(
            libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) == 0,
            "setns: {}",
            std::io::Error::last_os_error()
        );
        let fd = libc::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_RAW);
        ensure!(fd >= 0, "raw socket: {}", std::io::Error::last_os_error());
        let mut sa: libc::sockaddr_in = std::mem::zeroed();
        sa.sin_family = libc::AF_INET as libc::sa_family_t;
        sa.sin_addr.s_addr = u32::from_ne_bytes(HUB_ADDR.octets());
        let mut iov: Vec<libc::iovec> = Vec::with_capacity(BATCH);
        let mut hdrs: Vec<libc::mmsghdr> = Vec::with_capacity(BATCH);
        let mut i = offset * pool.len() / FLOOD_THREADS.max(1);
        while !stop.load(Ordering::Relaxed) {
            iov.clear();
            hdrs.clear();
            for _ in 0..BATCH {
                let p = &pool[i % pool.len()];
                i += 1;
                iov.push(libc::iovec {
                    iov_base: p.bytes.as_ptr() as *mut libc::c_void,
                    iov_len: p.bytes.len(),
                });
            }
            for v in iov.iter_mut() {
                let mut h: libc::mmsghdr = std::mem::zeroed();
                h.msg_hdr.msg_name = (&mut sa as *mut libc::sockaddr_in).cast();
                h.msg_hdr.msg_namelen = size_of::<libc::sockaddr_in>() as libc::socklen_t;
                h.msg_hdr.msg_iov = v;
                h.msg_hdr.msg_iovlen = 1;
                hdrs.push(h);
            }
            let n = libc::sendmmsg(fd, hdrs.as_mut_ptr(), BATCH as libc::c_uint, 0);
            if n > 0 {
                sent.fetch_add(n as u64, Ordering::Relaxed);
            } else {
                // ENOBUFS and friends: let the queues drain.
                std::thread::yield_now();
            }
        }
        libc::close(fd);
    }
    Ok(())
}
