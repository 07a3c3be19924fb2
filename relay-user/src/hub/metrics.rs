//! Prometheus metrics. Fast-path counts live in per-CPU BPF maps and are
//! read at scrape time (never a per-packet event to userspace); the
//! controller's own counts live here. Per-spoke series are labelled with
//! the spoke's registered name (bounded by the registry).

use std::sync::atomic::AtomicU64;
use std::time::Duration;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::{Registry as PromRegistry, Unit};
use relay_common::{FAMILY_V4, FAMILY_V6, counter};

use crate::core::outcome::InitiationResult;
use crate::hub::SpokeStatus;

type Labels = Vec<(&'static str, String)>;

/// Counts kept by the controller (it holds them under its own lock).
#[derive(Default)]
pub struct Metrics {
    /// Handshake initiations by routing result ([`InitiationResult::index`]).
    initiations: [u64; InitiationResult::ALL.len()],
    /// Frames the controller itself relayed (initiations).
    pub userspace_packets: u64,
    pub userspace_bytes: u64,
    /// Raw-socket send failures.
    pub send_errors: u64,
    /// The flood shield's counts (absent when it is off).
    pub shield: Option<crate::core::shield::ShieldStats>,
    /// Relay sessions closed because the policy stopped allowing the pair.
    pub policy_closed_sessions: u64,
    /// The cross-family userspace fallback.
    pub fallback: crate::core::fallback_frame::FallbackStats,
    /// Endpoint proofs (handshakes in the hub's name to candidate addresses).
    pub proofs: crate::core::proof::ProofStats,
    /// Egress: nft runs that failed (the table is not as the policy says).
    pub egress_errors: u64,
}

impl Metrics {
    pub fn initiation(&mut self, result: InitiationResult) {
        self.initiations[result.index()] += 1;
    }

    pub fn initiations(&self, result: InitiationResult) -> u64 {
        self.initiations[result.index()]
    }
}

/// Values read from the datapath and tables at scrape time.
pub struct Snapshot {
    pub xdp: [u64; counter::COUNT as usize],
    pub sessions: u64,
    pub spokes: Vec<SpokeStatus>,
    pub held_initiations: u64,
    /// The relay program's cumulative run time and run count (zero unless
    /// BPF statistics are enabled).
    pub prog_stats: Option<(Duration, u64)>,
    /// The store's backend (`dir`, `etcd`) and whether its last poll
    /// answered.
    pub store: (&'static str, bool),
    /// Hub-to-hub replication, when on.
    pub replication: Option<crate::hub::api::ReplicationStatus>,
    /// Hub mesh: mesh frames XDP dropped per peer hub, by reason.
    pub mesh_drops: std::collections::BTreeMap<String, relay_common::MeshDrops>,
    /// Egress: spokes the hub forwards to the internet now.
    pub egress_users: u64,
    /// Published services with their backends.
    pub services: Vec<crate::hub::ServiceStatus>,
}

fn labels(pairs: &[(&'static str, &str)]) -> Labels {
    pairs.iter().map(|(k, v)| (*k, v.to_string())).collect()
}

struct Builder {
    reg: PromRegistry,
}

impl Builder {
    fn counters(&mut self, name: &str, help: &str, rows: impl IntoIterator<Item = (Labels, u64)>) {
        let fam = Family::<Labels, Counter>::default();
        for (l, v) in rows {
            fam.get_or_create(&l).inc_by(v);
        }
        self.reg.register(name, help, fam);
    }

    fn gauges(&mut self, name: &str, help: &str, rows: impl IntoIterator<Item = (Labels, f64)>) {
        let fam = Family::<Labels, Gauge<f64, AtomicU64>>::default();
        for (l, v) in rows {
            fam.get_or_create(&l).set(v);
        }
        self.reg.register(name, help, fam);
    }

    fn gauge(&mut self, name: &str, help: &str, v: f64) {
        let g = Gauge::<f64, AtomicU64>::default();
        g.set(v);
        self.reg.register(name, help, g);
    }
}

/// The text exposition of everything.
pub fn render(m: &Metrics, s: &Snapshot) -> String {
    let x = |i: u32| s.xdp[i as usize];
    let mut b = Builder {
        reg: PromRegistry::default(),
    };
    let path = |p: &str| labels(&[("path", p)]);
    b.counters(
        "relayhub_relayed_packets",
        "Frames relayed between spokes, by path (xdp fast path or userspace controller)",
        [
            (path("xdp"), x(counter::RELAYED_PACKETS)),
            (path("userspace"), m.userspace_packets),
        ],
    );
    b.counters(
        "relayhub_relayed_bytes",
        "WireGuard message bytes (UDP payload) relayed between spokes, by path",
        [
            (path("xdp"), x(counter::RELAYED_BYTES)),
            (path("userspace"), m.userspace_bytes),
        ],
    );
    b.counters(
        "relayhub_relayed_family_packets",
        "Frames relayed between spokes (fast path and its userspace fallback), by address family of the sending and receiving spoke",
        [
            ("ipv4", "ipv4"),
            ("ipv4", "ipv6"),
            ("ipv6", "ipv4"),
            ("ipv6", "ipv6"),
        ]
        .map(|(f, t)| {
            let fam = |a: &str| if a == "ipv4" { FAMILY_V4 } else { FAMILY_V6 };
            (
                labels(&[("from", f), ("to", t)]),
                x(counter::relayed_family(fam(f), fam(t)))
                    + m.fallback.sent_count(fam(f), fam(t)),
            )
        }),
    );
    // Frames "passed" to the kernel for these reasons are not relayed; the
    // hub's WireGuard then discards them.
    let mut drops: Vec<(Labels, u64)> = counter::DROP_REASONS
        .iter()
        .zip(s.xdp)
        .filter_map(|(r, v)| Some((labels(&[("stage", "xdp"), ("reason", (*r)?)]), v)))
        .collect();
    drops.extend(InitiationResult::ALL.iter().filter_map(|r| {
        let reason = r.drop_reason()?;
        Some((
            labels(&[("stage", "controller"), ("reason", reason)]),
            m.initiations(*r),
        ))
    }));
    drops.push((
        labels(&[("stage", "controller"), ("reason", "send_error")]),
        m.send_errors,
    ));
    drops.push((
        labels(&[("stage", "controller"), ("reason", "fallback_lost")]),
        m.fallback.lost,
    ));
    drops.push((
        labels(&[("stage", "controller"), ("reason", "fallback_malformed")]),
        m.fallback.malformed,
    ));
    b.counters(
        "relayhub_dropped_frames",
        "Frames not relayed, by stage and reason",
        drops,
    );
    b.counters(
        "relayhub_userspace_fallback_frames",
        "Cross-family frames the XDP program handed to the controller instead of rebuilding them, by reason",
        crate::core::fallback_frame::Reason::ALL
            .iter()
            .zip(m.fallback.received)
            .map(|(r, v)| (labels(&[("reason", r.label())]), v)),
    );
    let mut hs: Vec<(Labels, u64)> = InitiationResult::ALL
        .iter()
        .map(|r| {
            (
                labels(&[("type", "initiation"), ("result", r.label())]),
                m.initiations(*r),
            )
        })
        .collect();
    for (t, relayed, to_hub) in [
        ("response", counter::RELAYED_RESPONSE, counter::HUB_RESPONSE),
        ("cookie", counter::RELAYED_COOKIE, counter::HUB_COOKIE),
    ] {
        hs.push((labels(&[("type", t), ("result", "relayed")]), x(relayed)));
        hs.push((labels(&[("type", t), ("result", "to_hub")]), x(to_hub)));
    }
    b.counters(
        "relayhub_handshakes",
        "WireGuard handshake messages seen by the hub, by type and result",
        hs,
    );
    if let Some(st) = &m.shield {
        b.counters(
            "relayhub_mac2_checks",
            "Initiations carrying a mac2, by whether it is a cookie the hub issued to that source",
            [
                (labels(&[("result", "valid")]), st.mac2_valid),
                (labels(&[("result", "invalid")]), st.mac2_invalid),
            ],
        );
        let c = Counter::<u64>::default();
        c.inc_by(st.cookies_sent);
        b.reg.register(
            "relayhub_cookie_replies",
            "Cookie replies the hub sent on behalf of spokes (handshake flood shield)",
            c,
        );
        b.counters(
            "relayhub_rate_limited_initiations",
            "Initiations dropped by the handshake flood shield, by budget",
            [
                ("scan_budget", st.scan_denied),
                ("cookie_budget", st.cookie_denied),
                ("proven_rate", st.proven_denied),
                ("stranger_under_load", st.stranger_denied),
            ]
            .map(|(r, v)| (labels(&[("reason", r)]), v)),
        );
    }
    b.counters(
        "relayhub_xdp_events",
        "Raw event counts of the XDP program, frames unless named _bytes (see relay-common counter::NAMES)",
        counter::NAMES
            .iter()
            .zip(s.xdp.iter())
            .filter(|(n, _)| !n.ends_with("_bytes"))
            .map(|(n, v)| (labels(&[("event", n)]), *v)),
    );
    let p = &m.proofs;
    b.counters(
        "relayhub_endpoint_proofs",
        "Handshakes the hub sent in its own name to prove a spoke's new endpoint, by result",
        [
            ("sent", p.sent),
            ("proven", p.proven),
            ("rejected", p.rejected),
            ("expired", p.expired),
            ("limited", p.limited),
            ("deferred", p.deferred),
        ]
        .map(|(r, v)| (labels(&[("result", r)]), v)),
    );
    let closed = Counter::<u64>::default();
    closed.inc_by(m.policy_closed_sessions);
    b.reg.register(
        "relayhub_policy_closed_sessions",
        "Relay session entries removed because the policy no longer allows the spoke pair",
        closed,
    );
    b.gauge(
        "relayhub_sessions",
        "Live relay session entries",
        s.sessions as f64,
    );
    b.gauge(
        "relayhub_spokes_registered",
        "Spokes in the registry",
        s.spokes.len() as f64,
    );
    b.gauges(
        "relayhub_spokes",
        "Registered spokes by health state (up, stale, down)",
        ["up", "stale", "down"].iter().map(|st| {
            let n = s.spokes.iter().filter(|p| p.state == *st).count();
            (labels(&[("state", st)]), n as f64)
        }),
    );
    b.gauge(
        "relayhub_held_initiations",
        "Initiations waiting for an authenticated endpoint",
        s.held_initiations as f64,
    );
    if let Some((run_time, runs)) = s.prog_stats {
        let t = Counter::<f64, AtomicU64>::default();
        t.inc_by(run_time.as_secs_f64());
        b.reg.register_with_unit(
            "relayhub_xdp_program_run",
            "Time the kernel spent in the relay XDP program (needs --bpf-stats)",
            Unit::Seconds,
            t,
        );
        let c = Counter::<u64>::default();
        c.inc_by(runs);
        b.reg.register(
            "relayhub_xdp_program_runs",
            "Runs of the relay XDP program (needs --bpf-stats)",
            c,
        );
    }
    b.gauges(
        "relayhub_store_up",
        "1 while the store of the registry, policy and tokens answers; 0 while it does not (degraded: relaying with the last registry and policy)",
        [(
            labels(&[("backend", s.store.0)]),
            if s.store.1 { 1.0 } else { 0.0 },
        )],
    );
    if let Some(r) = &s.replication {
        let role = || labels(&[("role", r.role.as_str())]);
        b.gauges(
            "relayhub_replication_connected",
            "Replication of the relay tables: connections open (active), 1 while following the active (standby)",
            [(role(), f64::from(r.connected))],
        );
        b.gauges(
            "relayhub_role",
            "1 for the role this hub holds (active relays and owns its tables; standby follows the active), 0 for the other",
            ["active", "standby"].map(|x| {
                (
                    labels(&[("role", x)]),
                    if r.role == x { 1.0 } else { 0.0 },
                )
            }),
        );
        let c = Counter::<u64>::default();
        c.inc_by(r.takeovers);
        b.reg.register(
            "relayhub_takeovers",
            "Times this hub was promoted to active (SIGUSR1, e.g. from keepalived's notify_master)",
            c,
        );
        if let Some(lag) = r.lag_seconds {
            b.gauge(
                "relayhub_replication_lag_seconds",
                "Standby: seconds since the last message from the active was applied (heartbeats every 0.2 s)",
                lag,
            );
        }
    }
    per_spoke(&mut b, &s.spokes);
    b.gauge(
        "relayhub_egress_users",
        "Spokes the hub forwards and masquerades to the internet (the policy's exit users homed here)",
        s.egress_users as f64,
    );
    b.counters(
        "relayhub_egress_errors",
        "Failed updates of the egress nftables table (see the log)",
        [(Labels::new(), m.egress_errors)],
    );
    if !s.mesh_drops.is_empty() {
        let hr = |h: &str, r: &str| labels(&[("peer_hub", h), ("reason", r)]);
        b.counters(
            "relayhub_mesh_dropped_frames",
            "Hub mesh: frames XDP dropped per peer hub: source = to a mesh port from the hub's address but no spoke's mesh port there, transit = towards a third hub, no_session = no relay session (frames from addresses of no registered hub: relayhub_dropped_frames_total{stage=\"xdp\",reason=\"mesh_source\"} minus these)",
            s.mesh_drops.iter().flat_map(|(h, d)| {
                [
                    (hr(h, "source"), d.source),
                    (hr(h, "transit"), d.transit),
                    (hr(h, "no_session"), d.no_session),
                ]
            }),
        );
    }
    if !s.services.is_empty() {
        let sb = |v: &str, b: &str| labels(&[("service", v), ("backend", b)]);
        let backends = || {
            s.services
                .iter()
                .flat_map(|v| v.backends.iter().map(move |b| (v.name.as_str(), b)))
        };
        b.gauges(
            "relayhub_service_backend_up",
            "Published services: 1 while the backend is healthy (takes connections), else 0",
            backends().map(|(v, b)| (sb(v, &b.backend), f64::from(u8::from(b.state == "up")))),
        );
        b.counters(
            "relayhub_service_connections",
            "Published services: connections (TCP) or client flows (UDP) proxied to the backend",
            backends().map(|(v, b)| (sb(v, &b.backend), b.connections)),
        );
        b.gauges(
            "relayhub_service_active_connections",
            "Published services: connections or flows open to the backend now",
            backends().map(|(v, b)| (sb(v, &b.backend), b.active as f64)),
        );
        b.counters(
            "relayhub_service_bytes",
            "Published services: bytes proxied, in = from clients to the backend, out = back",
            backends().flat_map(|(v, b)| {
                [
                    (
                        labels(&[("service", v), ("backend", &b.backend), ("direction", "in")]),
                        b.bytes_in,
                    ),
                    (
                        labels(&[
                            ("service", v),
                            ("backend", &b.backend),
                            ("direction", "out"),
                        ]),
                        b.bytes_out,
                    ),
                ]
            }),
        );
        b.counters(
            "relayhub_service_backend_failures",
            "Published services: failed health checks and failed connects to the backend",
            backends().map(|(v, b)| (sb(v, &b.backend), b.failures)),
        );
        b.counters(
            "relayhub_service_rejected",
            "Published services: connections or flows refused (no healthy backend, or too many open)",
            s.services
                .iter()
                .map(|v| (labels(&[("service", &v.name)]), v.rejected)),
        );
        b.gauges(
            "relayhub_service_listening",
            "Published services: addresses the service listens on (the hub's public ones and its tunnel address)",
            s.services
                .iter()
                .map(|v| (labels(&[("service", &v.name)]), v.listening.len() as f64)),
        );
    }
    // A gauge set to 1 rather than an OpenMetrics `info` type: classic
    // Prometheus text parsers (promtool included) reject the latter.
    b.gauges(
        "relayhub_build_info",
        "Build information (value 1)",
        [(labels(&[("version", env!("CARGO_PKG_VERSION"))]), 1.0)],
    );
    let mut out = String::new();
    encode(&mut out, &b.reg).expect("writing to a String cannot fail");
    out
}

/// Convert prometheus-client's OpenMetrics text to the classic Prometheus
/// text format (0.0.4): counter families are named with their `_total`
/// suffix in HELP/TYPE, and the OpenMetrics-only `# UNIT`/`# EOF` lines go.
pub fn to_prometheus_text(openmetrics: &str) -> String {
    let mut counters = std::collections::HashSet::new();
    for line in openmetrics.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ")
            && let Some(name) = rest.strip_suffix(" counter")
        {
            counters.insert(name.to_string());
        }
    }
    let mut out = String::with_capacity(openmetrics.len());
    for line in openmetrics.lines() {
        if line.starts_with("# UNIT ") || line == "# EOF" {
            continue;
        }
        let meta = ["# HELP ", "# TYPE "]
            .iter()
            .find_map(|p| line.strip_prefix(p).map(|rest| (*p, rest)));
        match meta {
            Some((prefix, rest)) => {
                let (name, tail) = rest.split_once(' ').unwrap_or((rest, ""));
                let total = if counters.contains(name) {
                    "_total"
                } else {
                    ""
                };
                out.push_str(&format!("{prefix}{name}{total} {tail}"));
            }
            None => out.push_str(line),
        }
        out.push('\n');
    }
    out
}

fn per_spoke(b: &mut Builder, spokes: &[SpokeStatus]) {
    // Hub mesh: per peer hub, what XDP relayed from and to the spokes
    // homed there (their slots' counters, summed).
    let mut by_hub: std::collections::BTreeMap<&str, [u64; 4]> = Default::default();
    for p in spokes {
        if let Some(h) = &p.peer_hub {
            let t = by_hub.entry(h.as_str()).or_default();
            t[0] += p.relayed_in_packets;
            t[1] += p.relayed_out_packets;
            t[2] += p.relayed_in_bytes;
            t[3] += p.relayed_out_bytes;
        }
    }
    if !by_hub.is_empty() {
        let hd = |h: &str, d: &str| labels(&[("peer_hub", h), ("direction", d)]);
        b.counters(
            "relayhub_mesh_relayed_packets",
            "Hub mesh: frames relayed by XDP per peer hub: in = from spokes homed there, out = to them",
            by_hub
                .iter()
                .flat_map(|(h, t)| [(hd(h, "in"), t[0]), (hd(h, "out"), t[1])]),
        );
        b.counters(
            "relayhub_mesh_relayed_bytes",
            "Hub mesh: WireGuard bytes relayed by XDP per peer hub: in = from spokes homed there, out = to them",
            by_hub
                .iter()
                .flat_map(|(h, t)| [(hd(h, "in"), t[2]), (hd(h, "out"), t[3])]),
        );
    }
    let sp = |p: &SpokeStatus| labels(&[("spoke", &p.name)]);
    let dir = |p: &SpokeStatus, d: &str| labels(&[("spoke", &p.name), ("direction", d)]);
    b.counters(
        "relayhub_spoke_relayed_packets",
        "Frames relayed by XDP per spoke: in = from the spoke, out = to the spoke",
        spokes.iter().flat_map(|p| {
            [
                (dir(p, "in"), p.relayed_in_packets),
                (dir(p, "out"), p.relayed_out_packets),
            ]
        }),
    );
    b.counters(
        "relayhub_spoke_relayed_bytes",
        "WireGuard bytes relayed by XDP per spoke: in = from the spoke, out = to the spoke",
        spokes.iter().flat_map(|p| {
            [
                (dir(p, "in"), p.relayed_in_bytes),
                (dir(p, "out"), p.relayed_out_bytes),
            ]
        }),
    );
    b.counters(
        "relayhub_spoke_keepalives",
        "Keepalives (32-byte transport frames) from the spoke: to the hub, or relayed to other spokes",
        spokes.iter().flat_map(|p| {
            [
                (
                    labels(&[("spoke", &p.name), ("kind", "to_hub")]),
                    p.keepalives_to_hub,
                ),
                (
                    labels(&[("spoke", &p.name), ("kind", "relayed")]),
                    p.keepalives_relayed,
                ),
            ]
        }),
    );
    b.counters(
        "relayhub_spoke_roams",
        "Times the spoke's authenticated endpoint moved (NAT rebinding, roaming)",
        spokes.iter().map(|p| (sp(p), p.roams)),
    );
    b.gauges(
        "relayhub_spoke_last_frame_age_seconds",
        "Seconds since the last frame from the spoke (absent if none since the hub started)",
        spokes
            .iter()
            .filter_map(|p| Some((sp(p), p.last_frame_secs_ago?))),
    );
    b.gauges(
        "relayhub_spoke_last_keepalive_age_seconds",
        "Seconds since the last keepalive from the spoke",
        spokes
            .iter()
            .filter_map(|p| Some((sp(p), p.last_keepalive_secs_ago?))),
    );
    b.gauges(
        "relayhub_spoke_last_handshake_timestamp_seconds",
        "Unix time of the spoke's last handshake with the hub's own WireGuard",
        spokes
            .iter()
            .filter_map(|p| Some((sp(p), p.last_handshake_unix? as f64))),
    );
    b.gauges(
        "relayhub_spoke_keepalive_interval_seconds",
        "Observed interval between keepalives to the hub",
        spokes
            .iter()
            .filter_map(|p| Some((sp(p), p.keepalive_interval_secs?))),
    );
    b.gauges(
        "relayhub_spoke_missed_keepalives",
        "Keepalive intervals since the spoke's last frame",
        spokes.iter().map(|p| (sp(p), p.missed_keepalives as f64)),
    );
    b.gauges(
        "relayhub_spoke_sessions",
        "Relay session entries naming the spoke",
        spokes.iter().map(|p| (sp(p), p.sessions as f64)),
    );
    b.gauges(
        "relayhub_spoke_state",
        "1 for the spoke's current health state (up, stale, down), else 0",
        spokes.iter().flat_map(|p| {
            ["up", "stale", "down"].map(|st| {
                (
                    labels(&[("spoke", &p.name), ("state", st)]),
                    if p.state == st { 1.0 } else { 0.0 },
                )
            })
        }),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spoke(name: &str, state: &str) -> SpokeStatus {
        SpokeStatus {
            name: name.into(),
            id: 1,
            address: "10.88.0.2".into(),
            public_key: "k".into(),
            endpoint: None,
            state: state.into(),
            last_handshake_unix: Some(1_700_000_000),
            last_frame_secs_ago: Some(1.5),
            last_keepalive_secs_ago: None,
            keepalive_interval_secs: Some(25.0),
            missed_keepalives: 0,
            keepalives_to_hub: 4,
            keepalives_relayed: 2,
            relayed_in_packets: 10,
            relayed_in_bytes: 1000,
            relayed_out_packets: 7,
            relayed_out_bytes: 700,
            sessions: 2,
            roams: 1,
            peer_hub: None,
            mesh_port: None,
        }
    }

    #[test]
    fn renders_required_series() {
        let mut m = Metrics {
            userspace_packets: 3,
            ..Default::default()
        };
        m.initiation(InitiationResult::Relayed);
        m.initiation(InitiationResult::NoMatch);
        m.initiation(InitiationResult::Overflow);
        m.initiation(InitiationResult::RateLimited);
        m.initiation(InitiationResult::CookieSent);
        m.shield = Some(crate::core::shield::ShieldStats {
            mac2_valid: 4,
            mac2_invalid: 2,
            cookies_sent: 1,
            ..Default::default()
        });
        m.initiation(InitiationResult::Denied);
        m.policy_closed_sessions = 4;
        m.proofs.sent = 3;
        m.proofs.proven = 2;
        let mut xdp = [0u64; counter::COUNT as usize];
        xdp[counter::RELAYED_PACKETS as usize] = 42;
        xdp[counter::RELAYED_BYTES as usize] = 4200;
        xdp[counter::PASS_UNKNOWN_SOURCE as usize] = 5;
        xdp[counter::HUB_RESPONSE as usize] = 6;
        let text = render(
            &m,
            &Snapshot {
                xdp,
                sessions: 2,
                spokes: vec![
                    spoke("a", "up"),
                    SpokeStatus {
                        peer_hub: Some("west".into()),
                        ..spoke("b", "down")
                    },
                ],
                held_initiations: 0,
                prog_stats: Some((Duration::from_millis(1500), 99)),
                store: ("etcd", false),
                replication: Some(crate::hub::api::ReplicationStatus {
                    role: "standby".into(),
                    connected: 1,
                    lag_seconds: Some(0.25),
                    endpoints: 2,
                    sessions: 4,
                    snapshots: 1,
                    records: 6,
                    takeovers: 2,
                }),
                mesh_drops: [(
                    "west".to_string(),
                    relay_common::MeshDrops {
                        source: 1,
                        transit: 2,
                        no_session: 3,
                    },
                )]
                .into(),
                egress_users: 2,
                services: vec![crate::hub::ServiceStatus {
                    name: "www".into(),
                    listen: "tcp/80".into(),
                    listening: vec!["192.0.2.1:80".into(), "10.88.0.1:80".into()],
                    listen_errors: vec![],
                    rejected: 3,
                    backends: vec![crate::hub::BackendStatus {
                        backend: "web1:8080".into(),
                        state: "up".into(),
                        connections: 7,
                        active: 1,
                        bytes_in: 100,
                        bytes_out: 2000,
                        failures: 2,
                    }],
                }],
            },
        );
        for want in [
            "relayhub_relayed_packets_total{path=\"xdp\"} 42",
            "relayhub_relayed_packets_total{path=\"userspace\"} 3",
            "relayhub_relayed_bytes_total{path=\"xdp\"} 4200",
            "relayhub_handshakes_total{type=\"initiation\",result=\"relayed\"} 1",
            "relayhub_handshakes_total{type=\"response\",result=\"to_hub\"} 6",
            "relayhub_dropped_frames_total{stage=\"xdp\",reason=\"unknown_source\"} 5",
            "relayhub_dropped_frames_total{stage=\"controller\",reason=\"no_match\"} 1",
            "relayhub_dropped_frames_total{stage=\"controller\",reason=\"rate_limited\"} 2",
            "relayhub_dropped_frames_total{stage=\"controller\",reason=\"cookie_required\"} 1",
            "relayhub_handshakes_total{type=\"initiation\",result=\"overflow\"} 1",
            "relayhub_handshakes_total{type=\"initiation\",result=\"rate_limited\"} 1",
            "relayhub_handshakes_total{type=\"initiation\",result=\"cookie_sent\"} 1",
            "relayhub_mac2_checks_total{result=\"valid\"} 4",
            "relayhub_mac2_checks_total{result=\"invalid\"} 2",
            "relayhub_cookie_replies_total 1",
            "relayhub_rate_limited_initiations_total{reason=\"scan_budget\"} 0",
            "relayhub_xdp_events_total{event=\"seen\"} 0",
            "relayhub_handshakes_total{type=\"initiation\",result=\"denied\"} 1",
            "relayhub_dropped_frames_total{stage=\"controller\",reason=\"policy\"} 1",
            "relayhub_policy_closed_sessions_total 4",
            "relayhub_endpoint_proofs_total{result=\"sent\"} 3",
            "relayhub_endpoint_proofs_total{result=\"proven\"} 2",
            "relayhub_endpoint_proofs_total{result=\"limited\"} 0",
            "relayhub_spokes_registered 2.0",
            "relayhub_spokes{state=\"up\"} 1.0",
            "relayhub_spokes{state=\"down\"} 1.0",
            "relayhub_spoke_relayed_packets_total{spoke=\"a\",direction=\"in\"} 10",
            "relayhub_spoke_relayed_bytes_total{spoke=\"b\",direction=\"out\"} 700",
            "relayhub_spoke_keepalives_total{spoke=\"a\",kind=\"to_hub\"} 4",
            "relayhub_spoke_roams_total{spoke=\"a\"} 1",
            "relayhub_spoke_last_frame_age_seconds{spoke=\"a\"} 1.5",
            "relayhub_spoke_last_handshake_timestamp_seconds{spoke=\"a\"} 1700000000.0",
            "relayhub_spoke_state{spoke=\"b\",state=\"down\"} 1.0",
            "relayhub_xdp_program_run_seconds_total 1.5",
            "relayhub_xdp_program_runs_total 99",
            "relayhub_build_info{version=",
            "relayhub_store_up{backend=\"etcd\"} 0.0",
            "relayhub_replication_connected{role=\"standby\"} 1.0",
            "relayhub_replication_lag_seconds 0.25",
            "relayhub_role{role=\"standby\"} 1.0",
            "relayhub_role{role=\"active\"} 0.0",
            "relayhub_takeovers_total 2",
            "relayhub_mesh_relayed_packets_total{peer_hub=\"west\",direction=\"in\"} 10",
            "relayhub_mesh_relayed_bytes_total{peer_hub=\"west\",direction=\"out\"} 700",
            "relayhub_mesh_dropped_frames_total{peer_hub=\"west\",reason=\"transit\"} 2",
            "relayhub_egress_users 2",
            "relayhub_service_backend_up{service=\"www\",backend=\"web1:8080\"} 1",
            "relayhub_service_connections_total{service=\"www\",backend=\"web1:8080\"} 7",
            "relayhub_service_bytes_total{service=\"www\",backend=\"web1:8080\",direction=\"out\"} 2000",
            "relayhub_service_rejected_total{service=\"www\"} 3",
            "relayhub_service_listening{service=\"www\"} 2",
        ] {
            assert!(text.contains(want), "missing {want} in\n{text}");
        }
        let plain = to_prometheus_text(&text);
        assert!(plain.contains("# TYPE relayhub_relayed_packets_total counter\n"));
        assert!(plain.contains("# HELP relayhub_relayed_packets_total Frames relayed"));
        assert!(plain.contains("# TYPE relayhub_sessions gauge\n"));
        assert!(plain.contains("# TYPE relayhub_xdp_program_run_seconds_total counter\n"));
        assert!(!plain.contains("# UNIT") && !plain.contains("# EOF"));
        // Never-seen values are absent rather than zero.
        assert!(!text.contains("relayhub_spoke_last_keepalive_age_seconds{"));
    }
}
