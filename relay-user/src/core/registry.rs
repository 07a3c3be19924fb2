//! The spoke registry: who may use the hub, their tunnel addresses and their
//! XDP slots (sans IO; where it is kept is `store::registry`).
//!
//! A spoke's `id` is its slot in the XDP maps: the lowest free id >= 1, kept
//! for the spoke's lifetime and independent of its address. Its address is
//! the lowest free host of the tunnel network, never the network, broadcast
//! or hub address.
//!
//! The registry sits behind `store::registry::RegistryStore` so that the
//! embedded file store can later be swapped for a shared store (etcd or
//! similar) without touching the callers.

use std::collections::HashSet;
use std::fmt;
use std::hash::Hash;
use std::io;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::core::publish::{Proto, Service, Target, parse_probe, probe_hex};
use serde::{Deserialize, Serialize};
use wireguard_control::Key;

/// The registry file format version this build reads and writes.
pub const REGISTRY_VERSION: u32 = 1;

/// Longest spoke name (names become Prometheus label values and comments).
pub const MAX_NAME_LEN: usize = 32;

/// Highest spoke id: ids index the XDP slot array, slot 0 is never used.
pub const MAX_SPOKE_ID: u32 = relay_common::maps::MAX_SLOTS - 1;

/// Everything that can go wrong with the registry or its store.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error(
        "invalid spoke name {name:?}: {reason}; use 1 to {MAX_NAME_LEN} characters of A-Z a-z 0-9 . _ -"
    )]
    InvalidName { name: String, reason: &'static str },
    #[error("a spoke named {0:?} already exists; pick another name or remove it first")]
    DuplicateName(String),
    #[error(
        "spoke {existing:?} already uses this public key; every spoke needs its own key pair (wg genkey)"
    )]
    DuplicateKey { existing: String },
    #[error("that public key is the hub's own key; give the spoke its own key pair (wg genkey)")]
    HubKey,
    #[error(
        "the public key is all zeros, which WireGuard rejects; generate a real one (wg genkey | wg pubkey)"
    )]
    ZeroKey,
    #[error("no spoke named {0:?}; `relayhub spoke list` shows the registered spokes")]
    NotFound(String),
    #[error(
        "tunnel network {net} is full ({used} spokes); remove unused spokes or use a larger --net"
    )]
    NetworkFull { net: TunnelNet, used: usize },
    #[error("all {MAX_SPOKE_ID} spoke slots are in use; remove unused spokes first")]
    SlotsFull,
    #[error(
        "spoke {name:?} has address {address}, which is not a usable host of the tunnel network {net}; \
         run with the --net the spokes were added with, or remove the spoke"
    )]
    OutsideNet {
        name: String,
        address: Ipv4Addr,
        net: TunnelNet,
    },
    #[error(
        "{path}: {detail}; fix the file by hand (it is JSON written by relayhub) or restore it from a backup"
    )]
    Corrupt { path: PathBuf, detail: String },
    #[error(
        "{path}: registry format version {found} is not supported (this relayhub reads version {REGISTRY_VERSION}); \
         use the relayhub release that wrote it"
    )]
    UnsupportedVersion { path: PathBuf, found: u64 },
    #[error("{path}: {source}; check that the state directory exists and is writable by this user")]
    Io { path: PathBuf, source: io::Error },
    #[error("{0}")]
    Service(String),
    /// For other store implementations (a shared store's own failures).
    #[error("{0}")]
    Other(String),
}

impl RegistryError {
    pub(crate) fn io(path: &Path, source: io::Error) -> Self {
        RegistryError::Io {
            path: path.to_owned(),
            source,
        }
    }
}

/// Errors parsing a tunnel network such as `10.88.0.0/24`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TunnelNetError {
    #[error("tunnel network {0:?} is not of the form A.B.C.D/PREFIX, for example 10.88.0.0/24")]
    Syntax(String),
    #[error(
        "tunnel network prefix /{0} is too long; it must be /30 or shorter to leave room for the hub and a spoke"
    )]
    PrefixTooLong(u8),
    #[error("tunnel network {given} has host bits set; did you mean {suggest}?")]
    HostBits { given: String, suggest: String },
}

/// The tunnel network: an IPv4 prefix whose first host is the hub, and
/// optionally an IPv6 prefix (`--network6`) that gives every tunnel
/// address an IPv6 twin.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TunnelNet {
    pub network: Ipv4Addr,
    pub prefix: u8,
    pub hub: Ipv4Addr,
    pub v6: Option<Net6>,
}

/// The tunnel's IPv6 prefix (`--network6`, e.g. `fd88::/96`): the IPv6
/// address of tunnel address `a.b.c.d` is the prefix with `a.b.c.d` in
/// its last 32 bits. Derived, not allocated: the registry stays as it is,
/// and every hub and CLI of a store computes the same addresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Net6 {
    pub network: std::net::Ipv6Addr,
    pub prefix: u8,
}

impl Net6 {
    /// The IPv6 twin of tunnel address `v4`.
    pub fn host(&self, v4: Ipv4Addr) -> std::net::Ipv6Addr {
        (u128::from(self.network) | u128::from(u32::from(v4))).into()
    }
}

impl FromStr for Net6 {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let bad = |why: &str| {
            format!("--network6 {s:?}: {why}; give an IPv6 prefix of at most /96, e.g. fd88::/96")
        };
        let (addr, prefix) = s.trim().split_once('/').ok_or_else(|| bad("no /PREFIX"))?;
        let network: std::net::Ipv6Addr = addr.parse().map_err(|_| bad("not an IPv6 address"))?;
        let prefix: u8 = prefix.parse().map_err(|_| bad("bad prefix length"))?;
        if !(8..=96).contains(&prefix) {
            return Err(bad(
                "the prefix must leave the last 32 bits for the IPv4 tunnel address",
            ));
        }
        if u128::from(network) & (u128::MAX >> prefix) != 0 {
            return Err(bad("it has host bits set"));
        }
        Ok(Net6 { network, prefix })
    }
}

impl fmt::Display for Net6 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

impl TunnelNet {
    /// The network with the hub on its first host.
    pub fn new(network: Ipv4Addr, prefix: u8) -> Result<Self, TunnelNetError> {
        if prefix > 30 {
            return Err(TunnelNetError::PrefixTooLong(prefix));
        }
        let mask = mask(prefix);
        let bits = u32::from(network);
        if bits & !mask != 0 {
            return Err(TunnelNetError::HostBits {
                given: format!("{network}/{prefix}"),
                suggest: format!("{}/{prefix}", Ipv4Addr::from(bits & mask)),
            });
        }
        Ok(TunnelNet {
            network,
            prefix,
            hub: Ipv4Addr::from(bits + 1),
            v6: None,
        })
    }

    /// The same network with IPv6 twins of its addresses (`--network6`).
    pub fn with_v6(self, v6: Option<Net6>) -> Self {
        TunnelNet { v6, ..self }
    }

    /// The IPv6 twin of `addr`, with `--network6`.
    pub fn addr6(&self, addr: Ipv4Addr) -> Option<std::net::Ipv6Addr> {
        self.v6.map(|n| n.host(addr))
    }

    /// The hub's IPv6 tunnel address, with `--network6`.
    pub fn hub6(&self) -> Option<std::net::Ipv6Addr> {
        self.addr6(self.hub)
    }

    pub fn netmask(&self) -> Ipv4Addr {
        Ipv4Addr::from(mask(self.prefix))
    }

    pub fn broadcast(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.network) | !mask(self.prefix))
    }

    /// Whether `addr` lies inside the network (including network and broadcast).
    pub fn contains(&self, addr: Ipv4Addr) -> bool {
        u32::from(addr) & mask(self.prefix) == u32::from(self.network)
    }

    /// Whether `addr` may be given to a spoke: inside, and not the network,
    /// broadcast or hub address.
    pub fn is_spoke_host(&self, addr: Ipv4Addr) -> bool {
        self.contains(addr) && addr != self.network && addr != self.broadcast() && addr != self.hub
    }

    /// How many spoke addresses the network holds.
    pub fn spoke_capacity(&self) -> u64 {
        let hosts = (1u64 << (32 - self.prefix)) - 2;
        if self.contains(self.hub) && self.hub != self.network && self.hub != self.broadcast() {
            hosts - 1
        } else {
            hosts
        }
    }
}

fn mask(prefix: u8) -> u32 {
    if prefix == 0 {
        0
    } else {
        u32::MAX << (32 - u32::from(prefix))
    }
}

impl Default for TunnelNet {
    fn default() -> Self {
        TunnelNet::new(Ipv4Addr::new(10, 88, 0, 0), 16).expect("valid default network")
    }
}

impl FromStr for TunnelNet {
    type Err = TunnelNetError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let syntax = || TunnelNetError::Syntax(s.to_owned());
        let (addr, prefix) = s.trim().split_once('/').ok_or_else(syntax)?;
        let addr: Ipv4Addr = addr.parse().map_err(|_| syntax())?;
        if prefix.is_empty() || prefix.len() > 2 || !prefix.bytes().all(|b| b.is_ascii_digit()) {
            return Err(syntax());
        }
        let prefix: u8 = prefix.parse().map_err(|_| syntax())?;
        if prefix > 32 {
            return Err(syntax());
        }
        TunnelNet::new(addr, prefix)
    }
}

impl fmt::Display for TunnelNet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

/// One registered spoke. The registry keeps only its public key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Spoke {
    /// XDP slot, >= 1, stable for the spoke's lifetime.
    pub id: u32,
    pub name: String,
    pub address: Ipv4Addr,
    pub public_key: Key,
    /// When the spoke was added (seconds since the Unix epoch).
    pub added_unix: u64,
    /// Which of the hub's endpoints its config names.
    pub family: Family,
    /// Hub mesh: the hub the spoke dials (its home), by name; `None` for a
    /// store without hubs (every hub of it serves every spoke).
    pub home: Option<String>,
    /// Hub mesh: the spoke's mesh port on its home hub is `mesh_base +
    /// mesh_index` (0: not homed). Unique among the spokes of one home, so
    /// each hub has its own 65535 - base ports, whatever the ids.
    pub mesh_index: u16,
    /// Its file routes internet traffic (0.0.0.0/0) to the hub, which
    /// forwards it if the policy lets the spoke exit (`spoke add --exit`).
    pub exit: bool,
}

/// A member of a hub mesh: its own address, and the ports where peer hubs
/// send frames for the spokes homed on it (`mesh_base + mesh index`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MeshHub {
    pub name: String,
    /// Where its spokes dial it, and where peer hubs send to (a literal
    /// address: the XDP program matches frames by it).
    pub endpoint: std::net::SocketAddr,
    pub mesh_base: u16,
}

/// Does mesh index `i` give a port on `hub` (in range, not the hub port)?
fn mesh_index_fits(hub: &MeshHub, i: u16) -> bool {
    i != 0
        && relay_common::mesh_port(hub.mesh_base, u32::from(i))
            .is_some_and(|p| p != hub.endpoint.port())
}

/// The first mesh port unless `hub add --mesh-base` says otherwise.
pub const DEFAULT_MESH_BASE: u16 = 40000;

/// The address family of the hub endpoint a spoke dials (`--family`).
/// (A clap value too: the command line names it the same way.)
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Family {
    /// The hub's IPv4 (or last given) endpoint: the default.
    #[default]
    Ipv4,
    /// The hub's IPv6 endpoint, for IPv6-only spokes.
    Ipv6,
}

impl Family {
    pub fn is_ipv4(&self) -> bool {
        *self == Family::Ipv4
    }
}

/// Checks a spoke name: 1..=32 characters of `[A-Za-z0-9._-]`.
pub fn validate_name(name: &str) -> Result<(), RegistryError> {
    let reason = if name.is_empty() {
        Some("it is empty")
    } else if name.len() > MAX_NAME_LEN {
        Some("it is too long")
    } else if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    {
        Some("it contains a character that is not allowed")
    } else {
        None
    };
    match reason {
        Some(reason) => Err(RegistryError::InvalidName {
            name: name.to_owned(),
            reason,
        }),
        None => Ok(()),
    }
}

/// The set of registered spokes, ordered by id.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Registry {
    spokes: Vec<Spoke>,
    /// Hub mesh members, by name (empty: no mesh).
    hubs: Vec<MeshHub>,
    /// Published services, by name.
    services: Vec<Service>,
}

impl Registry {
    pub fn new() -> Self {
        Self::default()
    }

    /// All spokes, ordered by id.
    pub fn spokes(&self) -> &[Spoke] {
        &self.spokes
    }

    /// The mesh's hubs, ordered by name.
    pub fn hubs(&self) -> &[MeshHub] {
        &self.hubs
    }

    pub fn hub(&self, name: &str) -> Option<&MeshHub> {
        self.hubs.iter().find(|h| h.name == name)
    }

    /// Adds (or updates) mesh hub `name`. Its spokes' mesh ports must fit
    /// under 65536.
    pub fn set_hub(&mut self, hub: MeshHub) -> Result<(), RegistryError> {
        validate_name(&hub.name)?;
        if hub.mesh_base == 0 || hub.mesh_base == hub.endpoint.port() {
            return Err(RegistryError::Other(format!(
                "mesh base {} for hub {:?}: pick a port range above the hub port, e.g. {DEFAULT_MESH_BASE}",
                hub.mesh_base, hub.name
            )));
        }
        if let Some(s) = self
            .spokes
            .iter()
            .find(|s| s.home.as_deref() == Some(&hub.name) && !mesh_index_fits(&hub, s.mesh_index))
        {
            return Err(RegistryError::Other(format!(
                "spoke {:?} (mesh index {}) would have no mesh port above {} (or would take the hub port {}): pick another --mesh-base",
                s.name,
                s.mesh_index,
                hub.mesh_base,
                hub.endpoint.port()
            )));
        }
        match self.hubs.iter_mut().find(|h| h.name == hub.name) {
            Some(h) => *h = hub,
            None => {
                self.hubs.push(hub);
                self.hubs.sort_by(|a, b| a.name.cmp(&b.name));
            }
        }
        Ok(())
    }

    /// Removes mesh hub `name`; refused while spokes are homed on it.
    pub fn remove_hub(&mut self, name: &str) -> Result<MeshHub, RegistryError> {
        let pos = self
            .hubs
            .iter()
            .position(|h| h.name == name)
            .ok_or_else(|| {
                RegistryError::Other(format!(
                    "no hub named {name:?} in the mesh; `relayhub hub list` shows them"
                ))
            })?;
        let homed: Vec<String> = self
            .spokes
            .iter()
            .filter(|s| s.home.as_deref() == Some(name))
            .map(|s| format!("{:?}", s.name))
            .collect();
        if !homed.is_empty() {
            return Err(RegistryError::Other(format!(
                "hub {name:?} is the home of {}: move them first (`relayhub spoke move NAME --hub OTHER`)",
                homed.join(", ")
            )));
        }
        Ok(self.hubs.remove(pos))
    }

    /// Homes spoke `name` on mesh hub `hub` (which must exist, with a mesh
    /// port for the spoke's id).
    pub fn set_home(&mut self, name: &str, hub: &str) -> Result<(), RegistryError> {
        let h = self.hub(hub).cloned().ok_or_else(|| {
            RegistryError::Other(format!(
                "no hub named {hub:?} in the mesh; add it with `relayhub hub add {hub} --endpoint IP:PORT`"
            ))
        })?;
        let spoke = self
            .spokes
            .iter()
            .find(|s| s.name == name)
            .ok_or_else(|| RegistryError::NotFound(name.to_owned()))?;
        if spoke.home.as_deref() == Some(hub) {
            return Ok(());
        }
        let index = self.free_mesh_index(&h).ok_or_else(|| {
            RegistryError::Other(format!(
                "hub {hub:?} has no free mesh port above its base {} for another spoke: give it a lower one (`relayhub hub add {hub} --endpoint {} --mesh-base N`)",
                h.mesh_base, h.endpoint
            ))
        })?;
        let spoke = self
            .spokes
            .iter_mut()
            .find(|s| s.name == name)
            .expect("found above");
        spoke.home = Some(hub.to_owned());
        spoke.mesh_index = index;
        Ok(())
    }

    /// The lowest mesh index no spoke homed on `hub` has, whose port is
    /// in range and not the hub port.
    fn free_mesh_index(&self, hub: &MeshHub) -> Option<u16> {
        let used: HashSet<u16> = self
            .spokes
            .iter()
            .filter(|s| s.home.as_deref() == Some(&hub.name))
            .map(|s| s.mesh_index)
            .collect();
        (1..=u16::MAX)
            .take_while(|&i| relay_common::mesh_port(hub.mesh_base, u32::from(i)).is_some())
            .find(|&i| !used.contains(&i) && mesh_index_fits(hub, i))
    }

    pub fn len(&self) -> usize {
        self.spokes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.spokes.is_empty()
    }

    pub fn get(&self, name: &str) -> Option<&Spoke> {
        self.spokes.iter().find(|s| s.name == name)
    }

    pub fn get_by_id(&self, id: u32) -> Option<&Spoke> {
        self.spokes
            .binary_search_by_key(&id, |s| s.id)
            .ok()
            .map(|i| &self.spokes[i])
    }

    pub fn get_by_key(&self, public_key: &Key) -> Option<&Spoke> {
        self.spokes.iter().find(|s| &s.public_key == public_key)
    }

    /// Registers a spoke, giving it the lowest free id and address.
    pub fn add(
        &mut self,
        name: &str,
        public_key: Key,
        net: &TunnelNet,
    ) -> Result<&Spoke, RegistryError> {
        self.add_spoke(name, public_key, net, None)
    }

    /// Like [`Registry::add`], also refusing the hub's own public key.
    pub fn add_spoke(
        &mut self,
        name: &str,
        public_key: Key,
        net: &TunnelNet,
        hub_public_key: Option<&Key>,
    ) -> Result<&Spoke, RegistryError> {
        validate_name(name)?;
        if self.get(name).is_some() {
            return Err(RegistryError::DuplicateName(name.to_owned()));
        }
        if self.service(name).is_some() {
            // One DNS name, one meaning.
            return Err(RegistryError::Service(format!(
                "{name:?} is the name of a published service; pick another name"
            )));
        }
        if public_key == Key::zero() {
            return Err(RegistryError::ZeroKey);
        }
        if hub_public_key == Some(&public_key) {
            return Err(RegistryError::HubKey);
        }
        if let Some(existing) = self.get_by_key(&public_key) {
            return Err(RegistryError::DuplicateKey {
                existing: existing.name.clone(),
            });
        }
        self.check_net(net)?;
        let address = self.free_address(net)?;
        let id = self.free_id()?;
        let added_unix = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or(Duration::ZERO)
            .as_secs();
        let pos = self.spokes.partition_point(|s| s.id < id);
        self.spokes.insert(
            pos,
            Spoke {
                id,
                name: name.to_owned(),
                address,
                public_key,
                added_unix,
                family: Family::Ipv4,
                home: None,
                mesh_index: 0,
                exit: false,
            },
        );
        Ok(&self.spokes[pos])
    }

    /// Sets the hub endpoint family spoke `name` dials.
    pub fn set_family(&mut self, name: &str, family: Family) -> Result<(), RegistryError> {
        let spoke = self
            .spokes
            .iter_mut()
            .find(|s| s.name == name)
            .ok_or_else(|| RegistryError::NotFound(name.to_owned()))?;
        spoke.family = family;
        Ok(())
    }

    /// Whether spoke `name`'s file routes internet traffic to the hub.
    pub fn set_exit(&mut self, name: &str, exit: bool) -> Result<(), RegistryError> {
        let spoke = self
            .spokes
            .iter_mut()
            .find(|s| s.name == name)
            .ok_or_else(|| RegistryError::NotFound(name.to_owned()))?;
        spoke.exit = exit;
        Ok(())
    }

    /// Unregisters a spoke; its id and address become free for reuse.
    /// Refused while a published service names it as a backend.
    pub fn remove(&mut self, name: &str) -> Result<Spoke, RegistryError> {
        let pos = self
            .spokes
            .iter()
            .position(|s| s.name == name)
            .ok_or_else(|| RegistryError::NotFound(name.to_owned()))?;
        if let Some(svc) = self
            .services
            .iter()
            .find(|v| v.backends.iter().any(|b| b.spoke == name))
        {
            return Err(RegistryError::Service(format!(
                "spoke {name:?} is a backend of published service {:?}; `relayhub publish remove {}` (or publish it without {name}) first",
                svc.name, svc.name
            )));
        }
        Ok(self.spokes.remove(pos))
    }

    /// Published services, by name.
    pub fn services(&self) -> &[Service] {
        &self.services
    }

    pub fn service(&self, name: &str) -> Option<&Service> {
        self.services.iter().find(|v| v.name == name)
    }

    /// Publishes a service: its name is free (no spoke, no service), its
    /// backends are registered spokes, each once, and no other service
    /// listens on its protocol and port.
    pub fn publish(&mut self, svc: Service) -> Result<(), RegistryError> {
        self.check_service(&svc)?;
        if self.service(&svc.name).is_some() {
            return Err(RegistryError::Service(format!(
                "service {:?} is published already; `relayhub publish remove {}` first",
                svc.name, svc.name
            )));
        }
        self.services.push(svc);
        self.services.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(())
    }

    fn check_service(&self, svc: &Service) -> Result<(), RegistryError> {
        let err = |m: String| Err(RegistryError::Service(m));
        validate_name(&svc.name)?;
        if self.get(&svc.name).is_some() {
            return err(format!(
                "{:?} is the name of a spoke (names are DNS names too); pick another service name",
                svc.name
            ));
        }
        if svc.backends.is_empty() {
            return err(format!(
                "service {:?} has no backend (--to SPOKE:PORT)",
                svc.name
            ));
        }
        for (i, b) in svc.backends.iter().enumerate() {
            if self.get(&b.spoke).is_none() {
                return err(format!(
                    "service {:?}: no spoke named {:?}; `relayhub spoke list` shows the registered spokes",
                    svc.name, b.spoke
                ));
            }
            if svc.backends[..i].contains(b) {
                return err(format!(
                    "service {:?}: backend {b} is named twice",
                    svc.name
                ));
            }
        }
        if svc.udp_probe.is_some() && svc.listen.proto != Proto::Udp {
            return err(format!(
                "service {:?}: a UDP probe is for UDP services; TCP backends are checked by connecting",
                svc.name
            ));
        }
        if let Some(other) = self
            .services
            .iter()
            .find(|v| v.listen == svc.listen && v.name != svc.name)
        {
            return err(format!(
                "service {:?} listens on {} already",
                other.name, svc.listen
            ));
        }
        Ok(())
    }

    /// Withdraws a published service.
    pub fn unpublish(&mut self, name: &str) -> Result<Service, RegistryError> {
        let pos = self
            .services
            .iter()
            .position(|v| v.name == name)
            .ok_or_else(|| {
                RegistryError::Service(format!(
                    "no published service named {name:?}; `relayhub publish list` shows them"
                ))
            })?;
        Ok(self.services.remove(pos))
    }

    /// Checks that every spoke's address is a usable host of `net` (the
    /// registry does not record the network; a changed `--net` is caught
    /// here rather than producing unroutable configs).
    pub fn check_net(&self, net: &TunnelNet) -> Result<(), RegistryError> {
        match self.spokes.iter().find(|s| !net.is_spoke_host(s.address)) {
            Some(s) => Err(RegistryError::OutsideNet {
                name: s.name.clone(),
                address: s.address,
                net: *net,
            }),
            None => Ok(()),
        }
    }

    fn free_id(&self) -> Result<u32, RegistryError> {
        // Spokes are sorted by id: the first gap is the lowest free id.
        let mut want = 1u32;
        for s in &self.spokes {
            if s.id != want {
                break;
            }
            want += 1;
        }
        if want > MAX_SPOKE_ID {
            Err(RegistryError::SlotsFull)
        } else {
            Ok(want)
        }
    }

    fn free_address(&self, net: &TunnelNet) -> Result<Ipv4Addr, RegistryError> {
        let used: HashSet<u32> = self.spokes.iter().map(|s| u32::from(s.address)).collect();
        let first = u32::from(net.network) + 1;
        let last = u32::from(net.broadcast()) - 1;
        // In a network wider than /24, no address ending in .0 or .255:
        // spokes configured when the default network was a /24 (their
        // Address line says /24) take those for their subnet's network and
        // broadcast addresses and could not reach such a peer.
        let wide = net.prefix < 24;
        (first..=last)
            .map(Ipv4Addr::from)
            .filter(|a| !wide || !matches!(a.octets()[3], 0 | 255))
            .find(|&a| a != net.hub && !used.contains(&u32::from(a)))
            .ok_or(RegistryError::NetworkFull {
                net: *net,
                used: self.spokes.len(),
            })
    }

    /// Parses the registry file format. `path` only names the source in errors.
    pub fn from_json(text: &str, path: &Path) -> Result<Registry, RegistryError> {
        let corrupt = |detail: String| RegistryError::Corrupt {
            path: path.to_owned(),
            detail,
        };
        // The version first, so a newer format is reported as such rather
        // than as whatever field it happens to trip over.
        let probe: VersionProbe =
            serde_json::from_str(text).map_err(|e| corrupt(json_detail(&e)))?;
        match probe.version {
            None => return Err(corrupt("it has no \"version\" field".to_owned())),
            Some(v) if v != u64::from(REGISTRY_VERSION) => {
                return Err(RegistryError::UnsupportedVersion {
                    path: path.to_owned(),
                    found: v,
                });
            }
            Some(_) => {}
        }
        let file: RegistryFile =
            serde_json::from_str(text).map_err(|e| corrupt(json_detail(&e)))?;
        let mut spokes = Vec::with_capacity(file.spokes.len());
        let mut names = HashSet::new();
        let mut ids = HashSet::new();
        let mut addresses = HashSet::new();
        let mut keys = HashSet::new();
        for (i, rec) in file.spokes.into_iter().enumerate() {
            let what = format!("spoke #{} ({:?})", i + 1, rec.name);
            validate_name(&rec.name).map_err(|e| corrupt(format!("{what}: {e}")))?;
            if rec.id == 0 || rec.id > MAX_SPOKE_ID {
                return Err(corrupt(format!(
                    "{what}: id {} is outside 1..={MAX_SPOKE_ID}",
                    rec.id
                )));
            }
            let public_key = parse_key(&rec.public_key).ok_or_else(|| {
                corrupt(format!(
                    "{what}: public_key is not a base64 WireGuard key (44 characters)"
                ))
            })?;
            if !names.insert(rec.name.clone()) {
                return Err(corrupt(format!("{what}: the name appears twice")));
            }
            if !ids.insert(rec.id) {
                return Err(corrupt(format!("{what}: id {} appears twice", rec.id)));
            }
            if !addresses.insert(rec.address) {
                return Err(corrupt(format!(
                    "{what}: address {} appears twice",
                    rec.address
                )));
            }
            if !keys.insert(public_key.clone()) {
                return Err(corrupt(format!("{what}: the public key appears twice")));
            }
            spokes.push(Spoke {
                id: rec.id,
                name: rec.name,
                address: rec.address,
                public_key,
                added_unix: rec.added_unix,
                family: rec.family,
                home: rec.home,
                mesh_index: rec.mesh_index,
                exit: rec.exit,
            });
        }
        spokes.sort_by_key(|s| s.id);
        let mut hubs: Vec<MeshHub> = Vec::with_capacity(file.hubs.len());
        for rec in file.hubs {
            let what = format!("hub {:?}", rec.name);
            validate_name(&rec.name).map_err(|e| corrupt(format!("{what}: {e}")))?;
            if hubs.iter().any(|h| h.name == rec.name) {
                return Err(corrupt(format!("{what}: the name appears twice")));
            }
            hubs.push(MeshHub {
                name: rec.name,
                endpoint: rec.endpoint,
                mesh_base: rec.mesh_base,
            });
        }
        hubs.sort_by(|a, b| a.name.cmp(&b.name));
        let mut indices = HashSet::new();
        for s in &mut spokes {
            let Some(home) = &s.home else {
                continue;
            };
            let Some(hub) = hubs.iter().find(|h| &h.name == home) else {
                return Err(corrupt(format!(
                    "spoke {:?}: home hub {home:?} is not among the hubs",
                    s.name
                )));
            };
            if s.mesh_index == 0 {
                // Written by the first mesh release: port = base + id.
                s.mesh_index = u16::try_from(s.id).unwrap_or(0);
            }
            if !mesh_index_fits(hub, s.mesh_index) {
                return Err(corrupt(format!(
                    "spoke {:?}: mesh index {} gives no port on hub {home:?} (base {})",
                    s.name, s.mesh_index, hub.mesh_base
                )));
            }
            if !indices.insert((home.clone(), s.mesh_index)) {
                return Err(corrupt(format!(
                    "spoke {:?}: mesh index {} is used twice on hub {home:?}",
                    s.name, s.mesh_index
                )));
            }
        }
        let mut reg = Registry {
            spokes,
            hubs,
            services: Vec::new(),
        };
        for rec in file.services {
            let what = format!("service {:?}", rec.name);
            let listen = rec
                .listen
                .parse()
                .map_err(|e| corrupt(format!("{what}: {e}")))?;
            let backends = rec
                .backends
                .iter()
                .map(|b| b.parse())
                .collect::<Result<Vec<Target>, String>>()
                .map_err(|e| corrupt(format!("{what}: {e}")))?;
            let udp_probe = rec
                .udp_probe
                .as_deref()
                .map(parse_probe)
                .transpose()
                .map_err(|e| corrupt(format!("{what}: {e}")))?;
            reg.publish(Service {
                name: rec.name,
                listen,
                backends,
                udp_probe,
            })
            .map_err(|e| corrupt(e.to_string()))?;
        }
        Ok(reg)
    }

    /// The registry file format: pretty JSON, one spoke per object, ending in a newline.
    pub fn to_json(&self) -> String {
        let file = RegistryFile {
            version: u64::from(REGISTRY_VERSION),
            spokes: self
                .spokes
                .iter()
                .map(|s| SpokeRecord {
                    id: s.id,
                    name: s.name.clone(),
                    address: s.address,
                    public_key: s.public_key.to_base64(),
                    added_unix: s.added_unix,
                    family: s.family,
                    home: s.home.clone(),
                    mesh_index: s.mesh_index,
                    exit: s.exit,
                })
                .collect(),
            hubs: self
                .hubs
                .iter()
                .map(|h| HubRecord {
                    name: h.name.clone(),
                    endpoint: h.endpoint,
                    mesh_base: h.mesh_base,
                })
                .collect(),
            services: self
                .services
                .iter()
                .map(|v| ServiceRecord {
                    name: v.name.clone(),
                    listen: v.listen.to_string(),
                    backends: v.backends.iter().map(|b| b.to_string()).collect(),
                    udp_probe: v.udp_probe.as_deref().map(probe_hex),
                })
                .collect(),
        };
        let mut out = serde_json::to_string_pretty(&file).expect("registry serializes");
        out.push('\n');
        out
    }
}

/// Strict base64 WireGuard key: exactly 44 characters, 32 bytes, canonical.
pub fn parse_key(s: &str) -> Option<Key> {
    use base64::Engine as _;
    let s = s.trim();
    if s.len() != 44 {
        return None;
    }
    let bytes = base64::engine::general_purpose::STANDARD.decode(s).ok()?;
    let bytes: [u8; 32] = bytes.try_into().ok()?;
    Some(Key(bytes))
}

fn json_detail(e: &serde_json::Error) -> String {
    use serde_json::error::Category;
    let what = match e.classify() {
        Category::Io => "could not be read",
        Category::Syntax => "is not valid JSON",
        Category::Data => "does not have the expected fields",
        Category::Eof => "ends too early (truncated?)",
    };
    // serde_json's Display already ends in "at line L column C".
    format!("{what}: {e}")
}

#[derive(Deserialize)]
struct VersionProbe {
    version: Option<u64>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RegistryFile {
    version: u64,
    #[serde(default)]
    spokes: Vec<SpokeRecord>,
    /// Absent without a mesh (files stay as earlier releases wrote them).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    hubs: Vec<HubRecord>,
    /// Absent without published services.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    services: Vec<ServiceRecord>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct ServiceRecord {
    name: String,
    /// `tcp/PORT` or `udp/PORT`.
    listen: String,
    /// `SPOKE:PORT` each.
    backends: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    udp_probe: Option<String>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct HubRecord {
    name: String,
    endpoint: std::net::SocketAddr,
    mesh_base: u16,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct SpokeRecord {
    id: u32,
    name: String,
    address: Ipv4Addr,
    public_key: String,
    #[serde(default)]
    added_unix: u64,
    /// Absent for IPv4: files of IPv4-only hubs stay as earlier releases
    /// wrote them (those kept IPv6 spokes in a side file, see
    /// `store::registry`).
    #[serde(default, skip_serializing_if = "Family::is_ipv4")]
    family: Family,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    home: Option<String>,
    /// Absent in files of the first mesh release, whose mesh ports were
    /// `mesh_base + id`: read as that.
    #[serde(default, skip_serializing_if = "is_zero")]
    mesh_index: u16,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    exit: bool,
}

fn is_zero(v: &u16) -> bool {
    *v == 0
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A valid, non-zero test key.
    pub(crate) fn key(n: u8) -> Key {
        let mut b = [n; 32];
        b[0] = 0xA0;
        Key(b)
    }

    fn net(s: &str) -> TunnelNet {
        s.parse().unwrap()
    }

    #[test]
    fn net6_twins() {
        let n6: Net6 = "fd88::/96".parse().unwrap();
        let n = TunnelNet::default().with_v6(Some(n6));
        assert_eq!(n.hub6().unwrap().to_string(), "fd88::a58:1");
        assert_eq!(
            n.addr6(Ipv4Addr::new(10, 88, 0, 2)).unwrap().to_string(),
            "fd88::a58:2"
        );
        assert_eq!(n6.to_string(), "fd88::/96");
        assert_eq!(TunnelNet::default().hub6(), None);
        for bad in [
            "fd88::",
            "fd88::/97",
            "fd88::1/96",
            "10.0.0.0/8",
            "fd88::/x",
        ] {
            assert!(bad.parse::<Net6>().is_err(), "{bad}");
        }
    }

    #[test]
    fn tunnel_net_parse_display() {
        let n = TunnelNet::default();
        assert_eq!(n.to_string(), "10.88.0.0/16");
        assert_eq!(n.hub, Ipv4Addr::new(10, 88, 0, 1));
        assert_eq!(n, net("10.88.0.0/16"));
        let n = net("10.88.0.0/24");
        assert_eq!(net("192.168.0.0/16").hub, Ipv4Addr::new(192, 168, 0, 1));
        assert_eq!(net("10.0.0.0/30").broadcast(), Ipv4Addr::new(10, 0, 0, 3));
        assert_eq!(net("10.0.0.0/30").spoke_capacity(), 1);
        assert_eq!(net("10.88.0.0/24").spoke_capacity(), 253);
        assert_eq!(
            net("10.88.0.0/24").netmask(),
            Ipv4Addr::new(255, 255, 255, 0)
        );
        assert!(n.contains(Ipv4Addr::new(10, 88, 0, 255)));
        assert!(!n.contains(Ipv4Addr::new(10, 88, 1, 0)));
        assert!(!n.is_spoke_host(n.hub));
        assert!(!n.is_spoke_host(n.network));
        assert!(!n.is_spoke_host(n.broadcast()));
        assert!(n.is_spoke_host(Ipv4Addr::new(10, 88, 0, 2)));
        for bad in [
            "10.88.0.0",
            "10.88.0/24",
            "10.88.0.0/",
            "10.88.0.0/33",
            "x/24",
            "10.88.0.0/+4",
        ] {
            assert!(
                matches!(bad.parse::<TunnelNet>(), Err(TunnelNetError::Syntax(_))),
                "{bad}"
            );
        }
        assert_eq!(
            "10.0.0.0/31".parse::<TunnelNet>(),
            Err(TunnelNetError::PrefixTooLong(31))
        );
        let e = "10.88.0.5/24".parse::<TunnelNet>().unwrap_err();
        assert!(e.to_string().contains("did you mean 10.88.0.0/24"), "{e}");
    }

    #[test]
    fn allocation_lowest_free_and_reuse() {
        let n = TunnelNet::default();
        let mut r = Registry::new();
        for (i, name) in ["a", "b", "c", "d"].iter().enumerate() {
            let s = r.add(name, key(i as u8 + 1), &n).unwrap();
            assert_eq!(s.id, i as u32 + 1);
            assert_eq!(s.address, Ipv4Addr::new(10, 88, 0, i as u8 + 2));
        }
        r.remove("b").unwrap();
        r.remove("c").unwrap();
        let e = r.add("e", key(9), &n).unwrap();
        assert_eq!((e.id, e.address), (2, Ipv4Addr::new(10, 88, 0, 3)));
        let f = r.add("f", key(10), &n).unwrap();
        assert_eq!((f.id, f.address), (3, Ipv4Addr::new(10, 88, 0, 4)));
        let ids: Vec<u32> = r.spokes().iter().map(|s| s.id).collect();
        assert_eq!(ids, [1, 2, 3, 4]);
        assert!(matches!(r.remove("nope"), Err(RegistryError::NotFound(_))));
    }

    #[test]
    fn id_independent_of_address() {
        let n = TunnelNet::default();
        let mut r = Registry::new();
        r.add("a", key(1), &n).unwrap();
        r.add("b", key(2), &n).unwrap();
        r.add("c", key(3), &n).unwrap();
        // Address .3 freed by "b", id 2 too; then "a" (id 1, .2) leaves.
        r.remove("b").unwrap();
        r.remove("a").unwrap();
        let d = r.add("d", key(4), &n).unwrap();
        assert_eq!((d.id, d.address), (1, Ipv4Addr::new(10, 88, 0, 2)));
        // "c" keeps what it had.
        let c = r.get("c").unwrap();
        assert_eq!((c.id, c.address), (3, Ipv4Addr::new(10, 88, 0, 4)));
        assert_eq!(r.get_by_id(3).unwrap().name, "c");
    }

    /// The default network holds the scale target (10k spokes and more),
    /// and skips .0 and .255, which spokes from /24 days would not reach.
    #[test]
    fn wide_network_skips_dot_zero_and_dot_255() {
        let n = TunnelNet::default();
        assert!(n.spoke_capacity() > 65_000);
        let mut r = Registry::new();
        let mut last = Ipv4Addr::UNSPECIFIED;
        for i in 0..600u32 {
            let mut k = [0u8; 32];
            k[..4].copy_from_slice(&i.to_be_bytes());
            k[31] = 1;
            last = r.add(&format!("s{i}"), Key(k), &n).unwrap().address;
            assert!(!matches!(last.octets()[3], 0 | 255), "{last}");
        }
        // .2-.254 of the first /24 (253), .1-.254 of the next two.
        assert_eq!(last, Ipv4Addr::new(10, 88, 2, 93));
        assert!(r.get("s253").unwrap().address == Ipv4Addr::new(10, 88, 1, 1));
        // A /24 still uses all of its hosts.
        let n24: TunnelNet = "10.77.0.0/24".parse().unwrap();
        let mut r = Registry::new();
        for i in 0..253u8 {
            r.add(&format!("t{i}"), key(i.wrapping_add(1)), &n24)
                .unwrap();
        }
        assert_eq!(
            r.get("t252").unwrap().address,
            Ipv4Addr::new(10, 77, 0, 254)
        );
    }

    #[test]
    fn hub_address_skipped_even_when_not_first() {
        let n = TunnelNet {
            hub: Ipv4Addr::new(10, 88, 0, 3),
            ..TunnelNet::default()
        };
        let mut r = Registry::new();
        let a = r.add("a", key(1), &n).unwrap().address;
        let b = r.add("b", key(2), &n).unwrap().address;
        let c = r.add("c", key(3), &n).unwrap().address;
        assert_eq!(
            [a, b, c],
            [
                Ipv4Addr::new(10, 88, 0, 1),
                Ipv4Addr::new(10, 88, 0, 2),
                Ipv4Addr::new(10, 88, 0, 4)
            ]
        );
    }

    #[test]
    fn slash30_holds_one_spoke() {
        let n = net("10.9.9.0/30");
        let mut r = Registry::new();
        assert_eq!(
            r.add("only", key(1), &n).unwrap().address,
            Ipv4Addr::new(10, 9, 9, 2)
        );
        let e = r.add("more", key(2), &n).unwrap_err();
        assert!(matches!(e, RegistryError::NetworkFull { .. }));
        assert!(e.to_string().contains("10.9.9.0/30 is full"), "{e}");
        assert_eq!(r.len(), 1);
    }

    #[test]
    fn slots_full() {
        let n = net("10.0.0.0/8");
        let mut r = Registry::new();
        for i in 1..=MAX_SPOKE_ID {
            r.spokes.push(Spoke {
                id: i,
                name: format!("s{i}"),
                address: Ipv4Addr::from(u32::from(n.hub) + i),
                public_key: Key([0; 32]),
                added_unix: 0,
                family: Default::default(),
                home: None,
                mesh_index: 0,
                exit: false,
            });
        }
        assert!(matches!(
            r.add("x", key(1), &n),
            Err(RegistryError::SlotsFull)
        ));
    }

    #[test]
    fn name_validation() {
        for ok in ["a", "node-1", "vm_2.eu", "A.B-c_d", &"x".repeat(32)] {
            validate_name(ok).unwrap();
        }
        for bad in [
            "",
            &"x".repeat(33),
            "a b",
            "a/b",
            "a\"b",
            "é",
            "a\nb",
            "a{b}",
            "a,b",
            "a=b",
            "#a",
        ] {
            let e = validate_name(bad).unwrap_err();
            assert!(e.to_string().contains("A-Z a-z 0-9 . _ -"), "{e}");
        }
        let mut r = Registry::new();
        assert!(matches!(
            r.add("bad name", key(1), &TunnelNet::default()),
            Err(RegistryError::InvalidName { .. })
        ));
        assert!(r.is_empty());
    }

    #[test]
    fn duplicates_rejected() {
        let n = TunnelNet::default();
        let mut r = Registry::new();
        r.add("a", key(1), &n).unwrap();
        assert!(matches!(
            r.add("a", key(2), &n),
            Err(RegistryError::DuplicateName(_))
        ));
        let e = r.add("b", key(1), &n).unwrap_err();
        assert!(matches!(&e, RegistryError::DuplicateKey { existing } if existing == "a"));
        assert!(matches!(
            r.add_spoke("c", key(7), &n, Some(&key(7))),
            Err(RegistryError::HubKey)
        ));
        assert!(matches!(
            r.add("z", Key::zero(), &n),
            Err(RegistryError::ZeroKey)
        ));
        assert_eq!(r.len(), 1);
    }

    #[test]
    fn check_net_catches_changed_net() {
        let mut r = Registry::new();
        r.add("a", key(1), &TunnelNet::default()).unwrap();
        r.check_net(&TunnelNet::default()).unwrap();
        let other = net("10.99.0.0/24");
        let e = r.check_net(&other).unwrap_err();
        assert!(e.to_string().contains("10.88.0.2"), "{e}");
        assert!(matches!(
            r.add("b", key(2), &other),
            Err(RegistryError::OutsideNet { .. })
        ));
    }

    #[test]
    fn json_round_trip() {
        let n = TunnelNet::default();
        let mut r = Registry::new();
        r.add("a", key(1), &n).unwrap();
        r.add("b", key(2), &n).unwrap();
        r.add("c", key(3), &n).unwrap();
        r.remove("a").unwrap();
        let text = r.to_json();
        assert!(text.contains("\"version\": 1"));
        let back = Registry::from_json(&text, Path::new("x.json")).unwrap();
        assert_eq!(back, r);
        assert_eq!(back.to_json(), text);
        let empty = Registry::from_json("{\"version\": 1}", Path::new("x")).unwrap();
        assert!(empty.is_empty());
        // The exit flag: written only when set, read back.
        assert!(!text.contains("exit"));
        r.set_exit("b", true).unwrap();
        let text = r.to_json();
        assert!(text.contains("\"exit\": true"), "{text}");
        let back = Registry::from_json(&text, Path::new("x.json")).unwrap();
        assert!(back.get("b").unwrap().exit && !back.get("c").unwrap().exit);
        assert!(matches!(
            r.set_exit("zz", true),
            Err(RegistryError::NotFound(_))
        ));
    }

    #[test]
    fn json_exact_format() {
        let mut r = Registry::new();
        r.add("a", key(1), &TunnelNet::default()).unwrap();
        r.spokes[0].added_unix = 1700000000;
        let k = key(1).to_base64();
        let expected = format!(
            "{{\n  \"version\": 1,\n  \"spokes\": [\n    {{\n      \"id\": 1,\n      \"name\": \"a\",\n      \
             \"address\": \"10.88.0.2\",\n      \"public_key\": \"{k}\",\n      \"added_unix\": 1700000000\n    \
             }}\n  ]\n}}\n"
        );
        assert_eq!(r.to_json(), expected);
    }

    fn err_of(text: &str) -> String {
        let e = Registry::from_json(text, Path::new("/s/spokes.json")).unwrap_err();
        let msg = e.to_string();
        assert!(msg.starts_with("/s/spokes.json: "), "{msg}");
        assert!(!msg.contains('\n'), "one line: {msg}");
        msg
    }

    #[test]
    fn corrupt_file_errors() {
        let m = err_of("{\"version\": 1, \"spokes\": [\n  {\"id\": 1,, }\n]}");
        assert!(m.contains("is not valid JSON"), "{m}");
        assert!(m.contains("line 2 column"), "{m}");
        assert!(m.contains("restore it from a backup"), "{m}");
        let m = err_of("{\"version\": 1, \"spokes\": [");
        assert!(m.contains("ends too early"), "{m}");
        let m = err_of("");
        assert!(m.contains("ends too early"), "{m}");
        let m = err_of("[]");
        assert!(m.contains("expected fields"), "{m}");
        let m = err_of("{\"spokes\": []}");
        assert!(m.contains("no \"version\""), "{m}");
        let m = err_of("{\"version\": 2, \"spokes\": {\"new\": \"format\"}}");
        assert!(m.contains("version 2 is not supported"), "{m}");
        let m = err_of("{\"version\": 1, \"spokes\": [], \"extra\": 1}");
        assert!(m.contains("unknown field `extra`"), "{m}");
        let m = err_of(
            "{\"version\": 1, \"spokes\": [{\"id\": 1, \"name\": \"a\", \"address\": \"10.88.0.2\", \"public_key\": \"nope\"}]}",
        );
        assert!(
            m.contains("spoke #1 (\"a\"): public_key is not a base64"),
            "{m}"
        );
        let rec = |id: u32, name: &str, addr: &str, k: u8| {
            format!(
                "{{\"id\": {id}, \"name\": \"{name}\", \"address\": \"{addr}\", \"public_key\": \"{}\"}}",
                key(k).to_base64()
            )
        };
        let two = |a: String, b: String| format!("{{\"version\": 1, \"spokes\": [{a}, {b}]}}");
        let m = err_of(&two(
            rec(1, "a", "10.88.0.2", 1),
            rec(1, "b", "10.88.0.3", 2),
        ));
        assert!(m.contains("id 1 appears twice"), "{m}");
        let m = err_of(&two(
            rec(1, "a", "10.88.0.2", 1),
            rec(2, "a", "10.88.0.3", 2),
        ));
        assert!(m.contains("name appears twice"), "{m}");
        let m = err_of(&two(
            rec(1, "a", "10.88.0.2", 1),
            rec(2, "b", "10.88.0.2", 2),
        ));
        assert!(m.contains("address 10.88.0.2 appears twice"), "{m}");
        let m = err_of(&two(
            rec(1, "a", "10.88.0.2", 1),
            rec(2, "b", "10.88.0.3", 1),
        ));
        assert!(m.contains("public key appears twice"), "{m}");
        let m = err_of(&two(
            rec(0, "a", "10.88.0.2", 1),
            rec(2, "b", "10.88.0.3", 2),
        ));
        assert!(m.contains("id 0 is outside"), "{m}");
        let m = err_of(&two(
            rec(1, "a b", "10.88.0.2", 1),
            rec(2, "b", "10.88.0.3", 2),
        ));
        assert!(m.contains("invalid spoke name"), "{m}");
        // Out-of-order ids are fine and get sorted.
        let r = Registry::from_json(
            &two(rec(5, "a", "10.88.0.2", 1), rec(2, "b", "10.88.0.3", 2)),
            Path::new("x"),
        )
        .unwrap();
        assert_eq!(r.spokes()[0].id, 2);
    }

    #[test]
    fn parse_key_strict() {
        let k = key(3);
        assert_eq!(parse_key(&k.to_base64()), Some(k.clone()));
        assert_eq!(parse_key(&format!(" {}\n", k.to_base64())), Some(k));
        assert_eq!(parse_key(""), None);
        assert_eq!(parse_key("AAAA"), None);
        // 33 bytes / non-canonical trailing bits / bad characters
        assert_eq!(
            parse_key(&format!("{}=", "A".repeat(43))),
            Some(Key::zero())
        );
        assert_eq!(parse_key(&"A".repeat(44)), None);
        assert_eq!(
            parse_key("AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAB="),
            None
        );
        assert_eq!(
            parse_key("AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA*="),
            None
        );
    }
}

#[cfg(test)]
mod service_tests {
    use super::tests::key;
    use super::*;

    fn svc(name: &str, listen: &str, to: &[&str]) -> Service {
        Service {
            name: name.into(),
            listen: listen.parse().unwrap(),
            backends: to.iter().map(|t| t.parse().unwrap()).collect(),
            udp_probe: None,
        }
    }

    #[test]
    fn publish_checks_and_round_trip() {
        let net = TunnelNet::default();
        let mut r = Registry::new();
        r.add("web1", key(1), &net).unwrap();
        r.add("web2", key(2), &net).unwrap();
        let e = |r: &mut Registry, s: Service| r.publish(s).unwrap_err().to_string();
        assert!(e(&mut r, svc("www", "tcp/80", &["nope:80"])).contains("no spoke named \"nope\""));
        assert!(e(&mut r, svc("web1", "tcp/80", &["web2:80"])).contains("name of a spoke"));
        assert!(e(&mut r, svc("www", "tcp/80", &[])).contains("no backend"));
        assert!(e(&mut r, svc("www", "tcp/80", &["web1:80", "web1:80"])).contains("twice"));
        let mut probe_tcp = svc("www", "tcp/80", &["web1:80"]);
        probe_tcp.udp_probe = Some(b"x".to_vec());
        assert!(e(&mut r, probe_tcp).contains("UDP probe"));
        r.publish(svc("www", "tcp/80", &["web1:8080", "web2:8080"]))
            .unwrap();
        assert!(e(&mut r, svc("www", "tcp/81", &["web1:80"])).contains("published already"));
        assert!(e(&mut r, svc("api", "tcp/80", &["web1:80"])).contains("listens on tcp/80"));
        // The same port over UDP is another socket.
        let mut dns = svc("dns", "udp/80", &["web2:53"]);
        dns.udp_probe = Some(vec![0, 1, 2]);
        r.publish(dns).unwrap();
        // A spoke may not take a service's name, nor leave while it backs one.
        assert!(
            r.add("www", key(3), &net)
                .unwrap_err()
                .to_string()
                .contains("published service")
        );
        let gone = r.remove("web1").unwrap_err().to_string();
        assert!(
            gone.contains("backend of published service \"www\""),
            "{gone}"
        );
        // The file keeps them; files without services stay as they were.
        let text = r.to_json();
        assert!(text.contains("\"udp_probe\": \"000102\""), "{text}");
        let back = Registry::from_json(&text, Path::new("r.json")).unwrap();
        assert_eq!(back, r);
        assert_eq!(back.services().len(), 2);
        r.unpublish("www").unwrap();
        r.unpublish("dns").unwrap();
        assert!(r.unpublish("dns").is_err());
        assert!(!r.to_json().contains("services"));
        r.remove("web1").unwrap();
        // A file naming a backend that is no spoke is corrupt.
        let bad = text.replace("\"web2:53\"", "\"ghost:53\"");
        let err = Registry::from_json(&bad, Path::new("r.json"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("ghost"), "{err}");
    }
}
