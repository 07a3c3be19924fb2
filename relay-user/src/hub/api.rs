//! What the hub serves over HTTP: the status API's data (`GET /v1/hub`,
//! `GET /v1/spokes`), the metrics exposition and health.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime};

use serde::{Deserialize, Serialize};

use crate::datapath::{CrossPath, ktime_ns};
use crate::hub::Hub;
use crate::hub::metrics::{self, Snapshot};
use crate::io::http;

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct HubStatus {
    pub version: String,
    pub public_key: String,
    pub address: String,
    pub port: u16,
    pub iface: String,
    pub xdp_mode: String,
    pub wg_iface: String,
    pub uptime_secs: u64,
    /// PersistentKeepalive the health thresholds assume.
    pub keepalive_secs: u16,
    pub up_within_secs: u64,
    pub down_after_secs: u64,
    /// The hub's own underlay addresses (the source of cross-family
    /// frames), as currently installed.
    #[serde(default)]
    pub underlay_v4: Option<String>,
    #[serde(default)]
    pub underlay_v6: Option<String>,
    /// `xdp` or `userspace` (`--cross-family-path`).
    #[serde(default)]
    pub cross_family_path: String,
    /// Where the registry, policy and tokens are: the state directory's
    /// path or `etcd://.../PREFIX/`.
    #[serde(default)]
    pub store: String,
    /// The store answered the last poll (false: degraded, relaying with
    /// the last registry and policy).
    #[serde(default = "yes")]
    pub store_up: bool,
    /// Hub-to-hub replication of the relay tables, when on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replication: Option<ReplicationStatus>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ReplicationStatus {
    /// `active` or `standby`.
    pub role: String,
    /// Active: connections open (standbys, and any still in the handshake).
    /// Standby: 1 while following (a snapshot
    /// completed on the current connection).
    pub connected: u32,
    /// Standby: seconds since the last message from the active was
    /// applied (it sends at least a heartbeat every 200 ms).
    pub lag_seconds: Option<f64>,
    /// Standby: entries in the replicated tables.
    pub endpoints: usize,
    pub sessions: usize,
    /// Standby: complete snapshots applied (one per connection).
    pub snapshots: u64,
    /// Records sent (active) or applied (standby).
    pub records: u64,
    /// Times this hub was promoted to active (SIGUSR1) since it started.
    #[serde(default)]
    pub takeovers: u64,
}

fn yes() -> bool {
    true
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct SpokeStatus {
    pub name: String,
    pub id: u32,
    pub address: String,
    pub public_key: String,
    /// Current authenticated endpoint (NAT mapping), if any.
    pub endpoint: Option<String>,
    /// up, stale or down (see `relayhub status --help`).
    pub state: String,
    /// Last handshake with the hub's own WireGuard, unix seconds.
    pub last_handshake_unix: Option<u64>,
    pub last_frame_secs_ago: Option<f64>,
    pub last_keepalive_secs_ago: Option<f64>,
    /// Observed interval between keepalives to the hub.
    pub keepalive_interval_secs: Option<f64>,
    pub missed_keepalives: u64,
    pub keepalives_to_hub: u64,
    pub keepalives_relayed: u64,
    /// Relayed from this spoke to others (XDP).
    pub relayed_in_packets: u64,
    pub relayed_in_bytes: u64,
    /// Relayed from others to this spoke (XDP).
    pub relayed_out_packets: u64,
    pub relayed_out_bytes: u64,
    /// Relay session entries naming this spoke.
    pub sessions: u64,
    /// Times its endpoint moved (NAT rebinding, roaming).
    pub roams: u64,
    /// Hub mesh: the peer hub it is homed on (absent: homed here).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer_hub: Option<String>,
    /// Hub mesh: its mesh port on its home hub (peer hubs send its frames
    /// there, and its frames to them leave from it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mesh_port: Option<u16>,
}

/// A published service as `GET /v1/services` shows it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ServiceStatus {
    pub name: String,
    /// `tcp/PORT` or `udp/PORT`.
    pub listen: String,
    /// Where it listens (`ADDR:PORT`), and where it could not (with why).
    pub listening: Vec<String>,
    #[serde(default)]
    pub listen_errors: Vec<String>,
    /// Connections (or UDP flows) refused: no healthy backend, or too many.
    pub rejected: u64,
    pub backends: Vec<BackendStatus>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct BackendStatus {
    /// `SPOKE:PORT`.
    pub backend: String,
    /// `up`, `down` or `unknown` (not checked yet).
    pub state: String,
    pub connections: u64,
    pub active: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub failures: u64,
}

impl Hub {
    pub(crate) fn service_statuses(&self) -> Vec<ServiceStatus> {
        use std::sync::atomic::Ordering::Relaxed;
        self.publisher
            .states()
            .iter()
            .map(|s| {
                let bound = s.bound.lock().expect("bound lock").clone();
                (s, bound)
            })
            .map(|(s, bound)| ServiceStatus {
                name: s.name.clone(),
                listen: s.listen.to_string(),
                listening: bound
                    .iter()
                    .filter(|(_, r)| r.is_ok())
                    .map(|(a, _)| a.to_string())
                    .collect(),
                listen_errors: bound
                    .iter()
                    .filter_map(|(a, r)| r.as_ref().err().map(|e| format!("{a}: {e}")))
                    .collect(),
                rejected: s.rejected.load(Relaxed),
                backends: s
                    .health()
                    .into_iter()
                    .zip(&s.backends)
                    .map(|((backend, state), b)| BackendStatus {
                        backend,
                        state: state.to_owned(),
                        connections: b.counters.connections.load(Relaxed),
                        active: b.counters.active.load(Relaxed),
                        bytes_in: b.counters.bytes_in.load(Relaxed),
                        bytes_out: b.counters.bytes_out.load(Relaxed),
                        failures: b.counters.failures.load(Relaxed),
                    })
                    .collect(),
            })
            .collect()
    }

    pub(crate) fn spoke_statuses(&self) -> Vec<SpokeStatus> {
        let now_ns = ktime_ns();
        let age = |ns: u64| (ns != 0).then(|| now_ns.saturating_sub(ns) as f64 / 1e9);
        let entries = self.datapath.sessions();
        let mut sessions: HashMap<u32, u64> = HashMap::new();
        for (k, v) in &entries {
            *sessions.entry(k.src_slot).or_default() += 1;
            if v.dst_slot != k.src_slot {
                *sessions.entry(v.dst_slot).or_default() += 1;
            }
        }
        let mut counters = crate::datapath::SlotTable::default();
        self.datapath
            .read_slot_counters(self.spoke_slots_end(), &mut counters);
        let mut out: Vec<SpokeStatus> = self
            .spokes
            .iter()
            .map(|(&slot, m)| {
                let c = counters.get(slot);
                let silence = age(c.last_rx_ns);
                let silence_d = crate::core::health::silence(c.last_rx_ns, now_ns);
                SpokeStatus {
                    name: m.name.clone(),
                    id: slot,
                    address: m.address.to_string(),
                    public_key: m.public_key.to_base64(),
                    endpoint: self
                        .router
                        .endpoint(slot)
                        .and_then(|e| crate::io::hub_wg::to_socket_addr(&e))
                        .map(|a| a.to_string()),
                    state: self.thresholds.classify(silence_d).label().to_string(),
                    last_handshake_unix: m
                        .last_handshake
                        .and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok())
                        .map(|d| d.as_secs()),
                    last_frame_secs_ago: silence,
                    last_keepalive_secs_ago: age(c.last_keepalive_ns),
                    keepalive_interval_secs: m.health.keepalive_interval(),
                    missed_keepalives: self.thresholds.missed(silence_d),
                    keepalives_to_hub: c.hub_keepalives,
                    keepalives_relayed: c.rx_keepalives,
                    relayed_in_packets: c.rx_packets,
                    relayed_in_bytes: c.rx_bytes,
                    relayed_out_packets: c.tx_packets,
                    relayed_out_bytes: c.tx_bytes,
                    sessions: sessions.get(&slot).copied().unwrap_or(0),
                    roams: m.health.roams(),
                    peer_hub: self
                        .remote
                        .contains_key(&slot)
                        .then(|| self.registry.get_by_id(slot).and_then(|s| s.home.clone()))
                        .flatten(),
                    mesh_port: self.registry.get_by_id(slot).and_then(|s| {
                        let home = self.registry.hub(s.home.as_deref()?)?;
                        relay_common::mesh_port(home.mesh_base, u32::from(s.mesh_index))
                            .filter(|_| s.mesh_index != 0)
                    }),
                }
            })
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }

    pub(crate) fn hub_status(&self) -> HubStatus {
        let f = &self.facts;
        HubStatus {
            version: env!("CARGO_PKG_VERSION").to_string(),
            public_key: f.public_key.clone(),
            address: f.address.clone(),
            port: f.port,
            iface: f.iface.clone(),
            xdp_mode: self.datapath.mode().to_string(),
            wg_iface: f.wg_iface.clone(),
            uptime_secs: f.started.elapsed().as_secs(),
            keepalive_secs: self.thresholds.keepalive.as_secs() as u16,
            up_within_secs: self.thresholds.up_within().as_secs(),
            down_after_secs: self.thresholds.down_after().as_secs(),
            underlay_v4: self.datapath.hub_addresses().0.map(|a| a.to_string()),
            underlay_v6: self.datapath.hub_addresses().1.map(|a| a.to_string()),
            cross_family_path: match self.datapath.cross_path() {
                CrossPath::Xdp => "xdp",
                CrossPath::Userspace => "userspace",
            }
            .to_string(),
            store: self.store.location.clone(),
            store_up: self.store.up,
            replication: self.replication_status(),
        }
    }

    pub(crate) fn replication_status(&self) -> Option<ReplicationStatus> {
        use crate::hub::replica::Role;
        let r = &self.replication;
        let rep = &r.replica;
        match r.role() {
            Role::Off => None,
            Role::Active => Some(ReplicationStatus {
                role: r.role().label().into(),
                connected: r.connected(),
                lag_seconds: None,
                endpoints: 0,
                sessions: 0,
                snapshots: 0,
                records: r.records_sent,
                takeovers: r.roles.takeovers(),
            }),
            Role::Standby => Some(ReplicationStatus {
                role: r.role().label().into(),
                connected: r.connected(),
                lag_seconds: rep.lag(Instant::now()).map(|d| d.as_secs_f64()),
                endpoints: rep.tables().endpoints.len(),
                sessions: rep.tables().sessions.len(),
                snapshots: rep.stats.snapshots,
                records: rep.stats.records,
                takeovers: r.roles.takeovers(),
            }),
        }
    }

    pub(crate) fn snapshot(&self) -> Snapshot {
        Snapshot {
            xdp: self.datapath.counters(),
            sessions: self.datapath.sessions().len() as u64,
            spokes: self.spoke_statuses(),
            held_initiations: self.router.held_len() as u64,
            prog_stats: self.datapath.prog_stats(),
            store: (self.store.backend, self.store.up),
            replication: self.replication_status(),
            mesh_drops: self.datapath.mesh_drops(),
            egress_users: self.egress.users() as u64,
            services: self.service_statuses(),
        }
    }
}

/// The HTTP server's view of the hub.
pub(crate) struct HubApi(pub(crate) Arc<Mutex<Hub>>);

impl http::Api for HubApi {
    fn metrics(&self) -> String {
        let hub = self.0.lock().expect("hub lock");
        metrics::render(&hub.metrics, &hub.snapshot())
    }

    fn hub(&self) -> String {
        let hub = self.0.lock().expect("hub lock");
        serde_json::to_string_pretty(&hub.hub_status()).expect("serializable")
    }

    fn spokes(&self) -> String {
        let hub = self.0.lock().expect("hub lock");
        serde_json::to_string_pretty(&hub.spoke_statuses()).expect("serializable")
    }

    fn services(&self) -> String {
        let hub = self.0.lock().expect("hub lock");
        serde_json::to_string_pretty(&hub.service_statuses()).expect("serializable")
    }

    fn history(&self) -> String {
        let hub = self.0.lock().expect("hub lock");
        serde_json::to_string_pretty(&hub.history.points()).expect("serializable")
    }

    fn console(&self) -> String {
        let hub = self.0.lock().expect("hub lock");
        let status = hub.hub_status();
        let spokes = hub.spoke_statuses();
        let points = hub.history.points();
        let handshakes: Vec<(&'static str, u64)> = crate::core::outcome::InitiationResult::ALL
            .iter()
            .map(|r| (r.label(), hub.metrics.initiations(*r)))
            .collect();
        let services = hub.service_statuses();
        let policy = hub.policy_lines();
        let by_name: HashMap<&str, (f64, f64)> = hub
            .spokes
            .values()
            .map(|m| (m.name.as_str(), m.relayed.rates()))
            .collect();
        let rates = |n: &str| by_name.get(n).copied().unwrap_or_default();
        crate::hub::console::page(&crate::hub::console::Console {
            hub: &status,
            health: hub.health_state(),
            spokes: &spokes,
            rates: &rates,
            points: &points,
            handshakes: &handshakes,
            policy: &policy,
            services: &services,
        })
    }

    fn health(&self) -> Result<Option<String>, String> {
        self.0.lock().expect("hub lock").health_state()
    }
}

impl Hub {
    /// What `/healthz` says: Ok(None) healthy, Ok(Some(why)) degraded (it
    /// relays), Err(why) down.
    pub(crate) fn health_state(&self) -> Result<Option<String>, String> {
        if !self.datapath.is_attached() {
            return Err(format!(
                "XDP program not attached to {}",
                self.datapath.iface()
            ));
        }
        if !self.wg.is_up() {
            return Err(format!(
                "hub WireGuard interface {} is down",
                self.wg.name()
            ));
        }
        if !self.store.up {
            return Ok(Some(format!(
                "store unreachable, relaying with the last registry and policy ({})",
                self.store.error.as_deref().unwrap_or("no answer")
            )));
        }
        Ok(None)
    }

    /// The policy in a few lines, for the console.
    pub(crate) fn policy_lines(&self) -> Vec<String> {
        let Some(p) = self.policy.current() else {
            return vec!["No policy: every spoke may reach every other.".to_owned()];
        };
        let join = |v: Vec<String>| {
            if v.is_empty() {
                "(none)".to_owned()
            } else {
                v.join(", ")
            }
        };
        vec![
            format!("From {}.", self.policy.location()),
            format!(
                "Groups: {}",
                join(
                    p.groups
                        .iter()
                        .map(|(g, m)| format!("@{g} = {}", m.join(" ")))
                        .collect()
                )
            ),
            format!(
                "Allow: {}",
                join(p.allow.iter().map(|r| r.to_string()).collect())
            ),
            format!(
                "Deny: {}",
                join(p.deny.iter().map(|r| r.to_string()).collect())
            ),
            format!(
                "Exit through the hub: {}",
                join(p.exit.iter().map(|t| t.to_string()).collect())
            ),
        ]
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn spoke() -> SpokeStatus {
        SpokeStatus {
            name: "v6node".into(),
            id: 2,
            address: "10.88.0.3".into(),
            public_key: "pk".into(),
            endpoint: Some("[2001:db8:a2::3]:47123".into()),
            state: "up".into(),
            last_handshake_unix: Some(1_764_460_000),
            last_frame_secs_ago: Some(0.5),
            last_keepalive_secs_ago: None,
            keepalive_interval_secs: Some(25.0),
            missed_keepalives: 0,
            keepalives_to_hub: 3,
            keepalives_relayed: 1,
            relayed_in_packets: 10,
            relayed_in_bytes: 1500,
            relayed_out_packets: 9,
            relayed_out_bytes: 999,
            sessions: 2,
            roams: 1,
            peer_hub: None,
            mesh_port: None,
        }
    }

    /// `/v1/spokes` entries as `relayhub status --json`, dashboards and the
    /// end-to-end tests read them: these names and types, absent values as
    /// null (not missing). A renamed field still round-trips through serde,
    /// so only the literal document catches it.
    #[test]
    fn spoke_status_json_shape() {
        assert_eq!(
            serde_json::to_value(spoke()).unwrap(),
            json!({
                "name": "v6node",
                "id": 2,
                "address": "10.88.0.3",
                "public_key": "pk",
                "endpoint": "[2001:db8:a2::3]:47123",
                "state": "up",
                "last_handshake_unix": 1_764_460_000u64,
                "last_frame_secs_ago": 0.5,
                "last_keepalive_secs_ago": null,
                "keepalive_interval_secs": 25.0,
                "missed_keepalives": 0,
                "keepalives_to_hub": 3,
                "keepalives_relayed": 1,
                "relayed_in_packets": 10,
                "relayed_in_bytes": 1500,
                "relayed_out_packets": 9,
                "relayed_out_bytes": 999,
                "sessions": 2,
                "roams": 1
            })
        );
    }

    fn hub() -> serde_json::Value {
        json!({
            "version": "0.1.0",
            "public_key": "k",
            "address": "10.88.0.1",
            "port": 51820,
            "iface": "eth0",
            "xdp_mode": "native",
            "wg_iface": "relayhub0",
            "uptime_secs": 5,
            "keepalive_secs": 25,
            "up_within_secs": 30,
            "down_after_secs": 80,
            "underlay_v4": "198.51.100.1",
            "underlay_v6": null,
            "cross_family_path": "xdp",
            "store": "etcd://10.0.0.5:2379/relayhub/",
            "store_up": false
        })
    }

    /// `/v1/hub`: the same document both ways.
    #[test]
    fn hub_status_json_shape() {
        let h: HubStatus = serde_json::from_value(hub()).unwrap();
        assert_eq!(h.underlay_v4.as_deref(), Some("198.51.100.1"));
        assert_eq!(h.cross_family_path, "xdp");
        assert_eq!(serde_json::to_value(&h).unwrap(), hub());
    }

    /// A status client reads a hub from before dual-stack: the fields it
    /// lacks take their defaults instead of failing the whole document.
    #[test]
    fn hub_status_from_an_older_hub() {
        let mut old = hub();
        for k in [
            "underlay_v4",
            "underlay_v6",
            "cross_family_path",
            "store",
            "store_up",
        ] {
            old.as_object_mut().unwrap().remove(k);
        }
        let h: HubStatus = serde_json::from_value(old).unwrap();
        assert_eq!((h.underlay_v4, h.underlay_v6), (None, None));
        assert_eq!(h.cross_family_path, "");
        assert_eq!((h.store.as_str(), h.store_up), ("", true));
        assert_eq!(h.port, 51820);
        // A field every hub has sent stays required.
        let mut broken = hub();
        broken.as_object_mut().unwrap().remove("port");
        let e = serde_json::from_value::<HubStatus>(broken).unwrap_err();
        assert!(e.to_string().contains("missing field `port`"), "{e}");
    }
}
