//! Prometheus metrics. Fast-path counts live in per-CPU BPF maps and are
//! read at scrape time; the controller's own counts live here.

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::Registry;
use relay_common::counter;

type Labels = Vec<(&'static str, String)>;

/// Counters kept by the controller.
#[derive(Default)]
pub struct Metrics {
    /// Handshake initiations by routing outcome.
    pub initiations: Family<Labels, Counter>,
    /// Frames the controller itself relayed (initiations).
    pub userspace_packets: Counter,
    pub userspace_bytes: Counter,
    /// Raw-socket send failures.
    pub send_errors: Counter,
}

impl Metrics {
    pub fn initiation(&self, outcome: &'static str) {
        self.initiations
            .get_or_create(&vec![("result", outcome.to_string())])
            .inc();
    }
}

/// Values read from the datapath and tables at scrape time.
pub struct Snapshot {
    pub xdp: [u64; counter::COUNT as usize],
    pub sessions: u64,
    pub spokes_registered: u64,
    /// Spokes with an authenticated endpoint.
    pub spokes_up: u64,
    pub held_initiations: u64,
}

fn counter_family(reg: &mut Registry, name: &str, help: &str, rows: &[(Labels, u64)]) {
    let fam = Family::<Labels, Counter>::default();
    for (labels, v) in rows {
        fam.get_or_create(labels).inc_by(*v);
    }
    reg.register(name, help, fam);
}

fn gauge(reg: &mut Registry, name: &str, help: &str, v: u64) {
    let g = Gauge::<i64>::default();
    g.set(v as i64);
    reg.register(name, help, g);
}

/// The text exposition of everything.
pub fn render(m: &Metrics, s: &Snapshot) -> String {
    let mut reg = Registry::default();
    let path = |p: &str| vec![("path", p.to_string())];
    counter_family(
        &mut reg,
        "relayhub_relayed_packets",
        "Frames relayed between spokes, by path (xdp fast path or userspace controller)",
        &[
            (path("xdp"), s.xdp[counter::RELAYED_PACKETS as usize]),
            (path("userspace"), m.userspace_packets.get()),
        ],
    );
    counter_family(
        &mut reg,
        "relayhub_relayed_bytes",
        "WireGuard message bytes (UDP payload) relayed between spokes, by path",
        &[
            (path("xdp"), s.xdp[counter::RELAYED_BYTES as usize]),
            (path("userspace"), m.userspace_bytes.get()),
        ],
    );
    let rows: Vec<(Labels, u64)> = counter::NAMES
        .iter()
        .zip(s.xdp.iter())
        .map(|(n, v)| (vec![("counter", n.to_string())], *v))
        .collect();
    counter_family(
        &mut reg,
        "relayhub_xdp_counter",
        "Raw counters of the XDP program (see relay-common counter::NAMES)",
        &rows,
    );
    reg.register(
        "relayhub_handshake_initiations",
        "Handshake initiations seen by the controller, by routing result",
        m.initiations.clone(),
    );
    reg.register(
        "relayhub_send_errors",
        "Controller failures to send a frame to a spoke",
        m.send_errors.clone(),
    );
    gauge(
        &mut reg,
        "relayhub_sessions",
        "Live relay session entries",
        s.sessions,
    );
    gauge(
        &mut reg,
        "relayhub_spokes_registered",
        "Spokes in the registry",
        s.spokes_registered,
    );
    gauge(
        &mut reg,
        "relayhub_spokes_up",
        "Spokes with an authenticated endpoint",
        s.spokes_up,
    );
    gauge(
        &mut reg,
        "relayhub_held_initiations",
        "Initiations waiting for an authenticated endpoint",
        s.held_initiations,
    );
    reg.register(
        "relayhub_build",
        "Build information",
        Info::new(vec![("version", env!("CARGO_PKG_VERSION").to_string())]),
    );
    let mut out = String::new();
    encode(&mut out, &reg).expect("writing to a String cannot fail");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_required_series() {
        let m = Metrics::default();
        m.userspace_packets.inc_by(3);
        m.initiation("relayed");
        let mut xdp = [0u64; counter::COUNT as usize];
        xdp[counter::RELAYED_PACKETS as usize] = 42;
        xdp[counter::RELAYED_BYTES as usize] = 4200;
        let text = render(
            &m,
            &Snapshot {
                xdp,
                sessions: 2,
                spokes_registered: 3,
                spokes_up: 1,
                held_initiations: 0,
            },
        );
        assert!(
            text.contains("relayhub_relayed_packets_total{path=\"xdp\"} 42"),
            "{text}"
        );
        assert!(text.contains("relayhub_relayed_packets_total{path=\"userspace\"} 3"));
        assert!(text.contains("relayhub_relayed_bytes_total{path=\"xdp\"} 4200"));
        assert!(text.contains("relayhub_handshake_initiations_total{result=\"relayed\"} 1"));
        assert!(text.contains("relayhub_xdp_counter_total{counter=\"seen\"} 0"));
        assert!(text.contains("relayhub_spokes_registered 3"));
    }
}
