//! The hub's own WireGuard interface (10.88.0.1), driven through
//! wireguard-control: kernel backend where the module exists, wireguard-go
//! (userspace backend) where it does not.
//!
//! Besides being a peer itself, the hub's WireGuard is the authority on
//! where each spoke is: it only moves a peer's endpoint after a packet from
//! that peer authenticated, so its view is what the relay trusts.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, SystemTime};

use crate::core::registry::Net6;
use relay_common::Endpoint;
use relay_common::wire::REJECT_AFTER_SECS;
use wireguard_control::{Backend, Device, DeviceUpdate, InterfaceName, Key, PeerConfigBuilder};

#[derive(Debug, thiserror::Error)]
pub enum HubWgError {
    #[error("invalid WireGuard interface name {0:?} (1-15 characters, no '/' or spaces)")]
    Name(String),
    #[error(
        "interface {0} already exists and is not this hub's WireGuard interface ({1}). Remove it with `ip link del {0}`, or pick another --wg-iface"
    )]
    Exists(String, &'static str),
    #[error(
        "starting the hub's WireGuard interface {name} ({backend}) failed: {source}. The kernel has no WireGuard module, so wireguard-go is needed: `apt-get install wireguard-go`"
    )]
    Start {
        name: String,
        backend: String,
        source: std::io::Error,
    },
    #[error("WireGuard interface {name}: {source}")]
    Io {
        name: String,
        source: std::io::Error,
    },
    #[error("`ip {args}` failed: {stderr}")]
    Ip { args: String, stderr: String },
}

/// A peer as the hub's WireGuard reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerStatus {
    pub public_key: Key,
    /// Only set while the endpoint is backed by a recent handshake.
    pub endpoint: Option<Endpoint>,
    pub last_handshake: Option<SystemTime>,
    pub rx_bytes: u64,
    pub tx_bytes: u64,
}

pub struct HubWg {
    name: InterfaceName,
    name_str: String,
    backend: Backend,
    /// Found running with the hub's key (left by a previous relayhub).
    adopted: bool,
    /// Leave the interface up when dropped.
    keep_on_drop: bool,
    /// `--network6`: the peers' IPv6 twins are allowed IPs too.
    net6: Option<Net6>,
}

/// The backend for logs: "kernel", or the userspace implementation
/// wireguard-control starts (WG_USERSPACE_IMPLEMENTATION, then
/// WG_QUICK_USERSPACE_IMPLEMENTATION, else wireguard-go).
fn backend_label(backend: Backend) -> String {
    if backend == Backend::Kernel {
        return "kernel".into();
    }
    std::env::var("WG_USERSPACE_IMPLEMENTATION")
        .or_else(|_| std::env::var("WG_QUICK_USERSPACE_IMPLEMENTATION"))
        .unwrap_or_else(|_| "wireguard-go".into())
}

/// A peer endpoint stays trusted this long after its last handshake:
/// WireGuard itself discards session keys after 3 x REJECT_AFTER.
pub const ENDPOINT_TRUST: Duration = Duration::from_secs(3 * REJECT_AFTER_SECS);

fn ip(args: &[&str]) -> Result<(), HubWgError> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| HubWgError::Ip {
            args: args.join(" "),
            stderr: e.to_string(),
        })?;
    if !out.status.success() {
        return Err(HubWgError::Ip {
            args: args.join(" "),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(())
}

/// Prefixes other than `prefix` with which `address` is on `name`.
fn stale_prefixes(name: &str, address: Ipv4Addr, prefix: u8) -> Vec<u8> {
    let Ok(out) = Command::new("ip")
        .args(["-4", "-o", "address", "show", "dev", name])
        .output()
    else {
        return Vec::new();
    };
    let want = address.to_string();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let mut w = l.split_whitespace().skip_while(|w| *w != "inet").skip(1);
            let (a, p) = w.next()?.split_once('/')?;
            let p: u8 = p.parse().ok()?;
            (a == want && p != prefix).then_some(p)
        })
        .collect()
}

/// Checked before anything on the system changes.
fn interface_name(name: &str) -> Result<InterfaceName, HubWgError> {
    name.parse().map_err(|_| HubWgError::Name(name.into()))
}

fn link_exists(name: &str) -> bool {
    Path::new("/sys/class/net").join(name).exists()
}

impl HubWg {
    /// Create and configure the interface: key, port, address, up. An
    /// existing WireGuard interface with the hub's private key (a previous
    /// relayhub's, left running: wireguard-go outlives a killed relayhub)
    /// is adopted as it is, peers and sessions included, so spokes'
    /// sessions with the hub carry on.
    pub fn up(
        name: &str,
        private_key: &Key,
        port: u16,
        address: Ipv4Addr,
        prefix: u8,
        net6: Option<Net6>,
    ) -> Result<Self, HubWgError> {
        let iname = interface_name(name)?;
        if link_exists(name) {
            return Self::adopt(iname, name, private_key, port, (address, prefix), net6);
        }
        // Kernel WireGuard when the module can make the link; else wireguard-go.
        let backend = if ip(&["link", "add", "dev", name, "type", "wireguard"]).is_ok() {
            Backend::Kernel
        } else {
            Backend::Userspace
        };
        let backend_name = backend_label(backend);
        let hub = Self {
            name: iname,
            name_str: name.to_string(),
            backend,
            adopted: false,
            keep_on_drop: false,
            net6,
        };
        DeviceUpdate::new()
            .set_private_key(private_key.clone())
            .set_listen_port(port)
            .replace_peers()
            .apply(&hub.name, backend)
            .map_err(|source| HubWgError::Start {
                name: name.into(),
                backend: backend_name.clone(),
                source,
            })?;
        let cidr = format!("{address}/{prefix}");
        ip(&["address", "add", &cidr, "dev", name])?;
        hub.add_address6(address)?;
        ip(&["link", "set", "dev", name, "up"])?;
        tracing::info!(iface = name, backend = %backend_name, %cidr, ipv6 = ?net6.map(|n| n.host(address)), port, "hub WireGuard up");
        Ok(hub)
    }

    fn adopt(
        iname: InterfaceName,
        name: &str,
        private_key: &Key,
        port: u16,
        (address, prefix): (Ipv4Addr, u8),
        net6: Option<Net6>,
    ) -> Result<Self, HubWgError> {
        let sock = Path::new("/var/run/wireguard").join(format!("{name}.sock"));
        let tries: &[Backend] = if sock.exists() {
            &[Backend::Userspace, Backend::Kernel]
        } else {
            &[Backend::Kernel]
        };
        let Some(dev) = tries
            .iter()
            .find_map(|&b| Device::get(&iname, b).ok().map(|d| (d, b)))
        else {
            return Err(HubWgError::Exists(name.into(), "not a WireGuard interface"));
        };
        let (dev, backend) = dev;
        if dev.private_key.as_ref() != Some(private_key) {
            return Err(HubWgError::Exists(
                name.into(),
                "a WireGuard interface with another key",
            ));
        }
        let hub = Self {
            name: iname,
            name_str: name.to_string(),
            backend,
            adopted: true,
            // Until the controller decides: a failed start leaves it be.
            keep_on_drop: true,
            net6,
        };
        if dev.listen_port != Some(port) {
            DeviceUpdate::new()
                .set_listen_port(port)
                .apply(&hub.name, backend)
                .map_err(|source| HubWgError::Io {
                    name: name.into(),
                    source,
                })?;
        }
        let cidr = format!("{address}/{prefix}");
        ip(&["address", "replace", &cidr, "dev", name])?;
        // `replace` keys on address and prefix: the hub's address with the
        // network it had before (a /24 from the earlier default) would stay.
        for old in stale_prefixes(name, address, prefix) {
            let old = format!("{address}/{old}");
            ip(&["address", "del", &old, "dev", name])?;
            tracing::info!(iface = name, %old, new = %cidr, "tunnel network changed: old address removed");
        }
        hub.add_address6(address)?;
        ip(&["link", "set", "dev", name, "up"])?;
        tracing::info!(
            iface = name,
            backend = %backend_label(backend),
            peers = dev.peers.len(),
            %cidr,
            port,
            "adopted the running hub WireGuard interface"
        );
        Ok(hub)
    }

    /// The hub's IPv6 tunnel address, with `--network6` (nodad: it is
    /// the only one of its kind on this link).
    fn add_address6(&self, hub: Ipv4Addr) -> Result<(), HubWgError> {
        let Some(n) = self.net6 else {
            return Ok(());
        };
        let cidr = format!("{}/{}", n.host(hub), n.prefix);
        ip(&[
            "-6",
            "address",
            "replace",
            &cidr,
            "dev",
            &self.name_str,
            "nodad",
        ])
    }

    pub fn name(&self) -> &str {
        &self.name_str
    }

    /// Whether the interface was found running and adopted.
    pub fn adopted(&self) -> bool {
        self.adopted
    }

    /// On drop: leave the interface running for the next relayhub (`true`)
    /// or remove it (`false`). Defaults to `true` only for an adopted
    /// interface.
    pub fn set_keep_on_drop(&mut self, keep: bool) {
        self.keep_on_drop = keep;
    }

    pub fn is_up(&self) -> bool {
        Device::get(&self.name, self.backend).is_ok()
    }

    /// Make the peer set exactly `spokes` (public key, tunnel address),
    /// touching only peers that changed so live sessions stay up.
    pub fn sync_peers(&self, spokes: &[(Key, Ipv4Addr)]) -> Result<(), HubWgError> {
        let dev = self.device()?;
        let current: HashMap<Key, Vec<(IpAddr, u8)>> = dev
            .peers
            .iter()
            .map(|p| {
                let ips = p
                    .config
                    .allowed_ips
                    .iter()
                    .map(|a| (a.address, a.cidr))
                    .collect();
                (p.config.public_key.clone(), ips)
            })
            .collect();
        let (set, remove) = peer_changes(&current, spokes, self.net6);
        let mut update = DeviceUpdate::new();
        for (key, addr) in &set {
            let mut peer = PeerConfigBuilder::new(key)
                .replace_allowed_ips()
                .add_allowed_ip(IpAddr::V4(*addr), 32);
            if let Some(n) = self.net6 {
                peer = peer.add_allowed_ip(IpAddr::V6(n.host(*addr)), 128);
            }
            update = update.add_peer(peer);
        }
        for key in &remove {
            update = update.remove_peer_by_key(key);
        }
        if !set.is_empty() || !remove.is_empty() {
            update
                .apply(&self.name, self.backend)
                .map_err(|source| HubWgError::Io {
                    name: self.name_str.clone(),
                    source,
                })?;
        }
        Ok(())
    }

    /// Point the hub's own WireGuard at a spoke's proven endpoint, so that
    /// its traffic to the spoke follows the relay's.
    pub fn set_endpoint(&self, key: &Key, endpoint: SocketAddr) -> Result<(), HubWgError> {
        DeviceUpdate::new()
            .add_peer(PeerConfigBuilder::new(key).set_endpoint(endpoint))
            .apply(&self.name, self.backend)
            .map_err(|source| HubWgError::Io {
                name: self.name_str.clone(),
                source,
            })
    }

    /// [`set_endpoint`](Self::set_endpoint) for many spokes in one update
    /// (a takeover points the hub's WireGuard at every known spoke).
    pub fn set_endpoints(&self, endpoints: &[(Key, SocketAddr)]) -> Result<(), HubWgError> {
        if endpoints.is_empty() {
            return Ok(());
        }
        let mut u = DeviceUpdate::new();
        for (key, endpoint) in endpoints {
            u = u.add_peer(PeerConfigBuilder::new(key).set_endpoint(*endpoint));
        }
        u.apply(&self.name, self.backend)
            .map_err(|source| HubWgError::Io {
                name: self.name_str.clone(),
                source,
            })
    }

    /// Drop the hub's sessions with these spokes and set them up again
    /// (public key, tunnel address, endpoint), so the next packet to each
    /// starts a handshake. For a takeover: sessions this interface still
    /// holds from an earlier time as active (or that a restarted hub
    /// adopted with the interface) are stale, as the spokes have since
    /// handshaken with the other hub; sending on them would go unanswered
    /// until WireGuard's own timers gave up on them (15 s and more).
    /// Two updates: the peers' removal, then their return.
    pub fn restart_sessions(
        &self,
        spokes: &[(Key, Ipv4Addr, SocketAddr)],
    ) -> Result<(), HubWgError> {
        if spokes.is_empty() {
            return Ok(());
        }
        let io = |source| HubWgError::Io {
            name: self.name_str.clone(),
            source,
        };
        let mut gone = DeviceUpdate::new();
        for (key, _, _) in spokes {
            gone = gone.remove_peer_by_key(key);
        }
        gone.apply(&self.name, self.backend).map_err(io)?;
        let mut back = DeviceUpdate::new();
        for (key, addr, endpoint) in spokes {
            back = back.add_peer(
                PeerConfigBuilder::new(key)
                    .add_allowed_ip(IpAddr::V4(*addr), 32)
                    .set_endpoint(*endpoint),
            );
        }
        back.apply(&self.name, self.backend).map_err(io)
    }

    /// Current peers, with endpoints only where a handshake backs them.
    pub fn peers(&self) -> Result<Vec<PeerStatus>, HubWgError> {
        let dev = self.device()?;
        let now = SystemTime::now();
        Ok(dev
            .peers
            .into_iter()
            .map(|p| PeerStatus {
                endpoint: trusted_endpoint(p.config.endpoint, p.stats.last_handshake_time, now),
                public_key: p.config.public_key,
                last_handshake: p.stats.last_handshake_time,
                rx_bytes: p.stats.rx_bytes,
                tx_bytes: p.stats.tx_bytes,
            })
            .collect())
    }

    fn device(&self) -> Result<Device, HubWgError> {
        Device::get(&self.name, self.backend).map_err(|source| HubWgError::Io {
            name: self.name_str.clone(),
            source,
        })
    }
}

impl Drop for HubWg {
    fn drop(&mut self) {
        if self.keep_on_drop {
            tracing::info!(iface = %self.name_str, "leaving the hub's WireGuard interface up for the next relayhub");
            return;
        }
        // Deleting the link also ends wireguard-go (which may be gone
        // already if it got the same signal as we did).
        if link_exists(&self.name_str)
            && let Err(e) = ip(&["link", "del", "dev", &self.name_str])
        {
            tracing::warn!(iface = %self.name_str, error = %e, "removing the hub's WireGuard interface");
        }
        if self.backend == Backend::Userspace {
            let _ = std::fs::remove_file(format!("/var/run/wireguard/{}.sock", self.name_str));
        }
    }
}

/// What makes the hub's peer set exactly `spokes` (public key, tunnel
/// address): the peers to (re)configure with that one /32 and the peers to
/// remove. A peer already exactly so is not touched, so live sessions
/// stay up.
fn peer_changes(
    current: &HashMap<Key, Vec<(IpAddr, u8)>>,
    spokes: &[(Key, Ipv4Addr)],
    net6: Option<Net6>,
) -> (Vec<(Key, Ipv4Addr)>, Vec<Key>) {
    let want = |addr: &Ipv4Addr| {
        let mut w = vec![(IpAddr::V4(*addr), 32u8)];
        w.extend(net6.map(|n| (IpAddr::V6(n.host(*addr)), 128u8)));
        w
    };
    let set = spokes
        .iter()
        .filter(|(key, addr)| {
            // In any order: the device reports them as it stores them.
            current.get(key).is_none_or(|have| {
                let mut have = have.clone();
                have.sort();
                have != want(addr)
            })
        })
        .cloned()
        .collect();
    let remove = current
        .keys()
        .filter(|key| !spokes.iter().any(|(k, _)| k == *key))
        .cloned()
        .collect();
    (set, remove)
}

/// A peer's endpoint, if a handshake within [`ENDPOINT_TRUST`] of `now`
/// backs it: only then has WireGuard authenticated it recently enough for
/// the relay to send there.
fn trusted_endpoint(
    endpoint: Option<SocketAddr>,
    last_handshake: Option<SystemTime>,
    now: SystemTime,
) -> Option<Endpoint> {
    let fresh = last_handshake
        .and_then(|t| now.duration_since(t).ok())
        .is_some_and(|age| age < ENDPOINT_TRUST);
    endpoint.filter(|_| fresh).map(to_endpoint)
}

pub fn to_endpoint(sa: SocketAddr) -> Endpoint {
    match sa {
        SocketAddr::V4(a) => Endpoint::v4(a.ip().octets(), a.port()),
        SocketAddr::V6(a) => match a.ip().to_ipv4_mapped() {
            Some(v4) => Endpoint::v4(v4.octets(), a.port()),
            None => Endpoint::v6(a.ip().octets(), a.port()),
        },
    }
}

pub fn to_socket_addr(e: &Endpoint) -> Option<SocketAddr> {
    match e.family {
        relay_common::FAMILY_V4 => Some(SocketAddr::from((
            Ipv4Addr::new(e.addr[0], e.addr[1], e.addr[2], e.addr[3]),
            e.port,
        ))),
        relay_common::FAMILY_V6 => {
            Some(SocketAddr::from((std::net::Ipv6Addr::from(e.addr), e.port)))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(b: u8) -> Key {
        Key([b; 32])
    }

    fn v4(a: [u8; 4]) -> Ipv4Addr {
        Ipv4Addr::from(a)
    }

    #[test]
    fn peer_changes_touch_only_what_differs() {
        let current: HashMap<Key, Vec<(IpAddr, u8)>> = [
            (key(1), vec![(IpAddr::V4(v4([10, 88, 0, 2])), 32)]), // as wanted
            (key(2), vec![(IpAddr::V4(v4([10, 88, 0, 9])), 32)]), // readdressed
            (key(3), vec![(IpAddr::V4(v4([10, 88, 0, 4])), 32)]), // unregistered
            // An extra allowed IP (added by hand) would route that
            // network into the spoke: replaced by the one /32.
            (
                key(4),
                vec![
                    (IpAddr::V4(v4([10, 88, 0, 5])), 32),
                    (IpAddr::V4(v4([192, 168, 0, 0])), 16),
                ],
            ),
        ]
        .into();
        let spokes = [
            (key(1), v4([10, 88, 0, 2])),
            (key(2), v4([10, 88, 0, 3])),
            (key(4), v4([10, 88, 0, 5])),
            (key(5), v4([10, 88, 0, 6])), // new
        ];
        let (mut set, remove) = peer_changes(&current, &spokes, None);
        set.sort_by_key(|(k, _)| k.0);
        assert_eq!(
            set,
            vec![
                (key(2), v4([10, 88, 0, 3])),
                (key(4), v4([10, 88, 0, 5])),
                (key(5), v4([10, 88, 0, 6])),
            ]
        );
        assert_eq!(remove, vec![key(3)]);
        // In sync: nothing to apply.
        let now: HashMap<Key, Vec<(IpAddr, u8)>> = spokes
            .iter()
            .map(|(k, a)| (k.clone(), vec![(IpAddr::V4(*a), 32)]))
            .collect();
        assert_eq!(peer_changes(&now, &spokes, None), (vec![], vec![]));
        // An empty registry removes every peer.
        assert_eq!(peer_changes(&now, &[], None).1.len(), 4);
    }

    #[test]
    fn endpoints_are_trusted_while_a_handshake_backs_them() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_764_460_000);
        let ep: SocketAddr = "203.0.113.6:40001".parse().unwrap();
        let want = Some(Endpoint::v4([203, 0, 113, 6], 40001));
        let ago = |s| Some(now - Duration::from_secs(s));
        assert_eq!(trusted_endpoint(Some(ep), ago(5), now), want);
        assert_eq!(
            trusted_endpoint(Some(ep), ago(ENDPOINT_TRUST.as_secs() - 1), now),
            want
        );
        // WireGuard has discarded that session's keys by now.
        assert_eq!(
            trusted_endpoint(Some(ep), ago(ENDPOINT_TRUST.as_secs()), now),
            None
        );
        // Configured or learned, but never authenticated by a handshake.
        assert_eq!(trusted_endpoint(Some(ep), None, now), None);
        assert_eq!(trusted_endpoint(None, ago(5), now), None);
    }

    #[test]
    fn endpoints_convert_both_ways() {
        let v4: SocketAddr = "203.0.113.6:40001".parse().unwrap();
        let v6: SocketAddr = "[2001:db8:a2::3]:47123".parse().unwrap();
        // A dual-stack socket reports IPv4 peers as IPv4-mapped IPv6: the
        // relay keys them as IPv4, like frames on the wire.
        let mapped: SocketAddr = "[::ffff:203.0.113.6]:40001".parse().unwrap();
        assert_eq!(to_endpoint(v4), Endpoint::v4([203, 0, 113, 6], 40001));
        assert_eq!(to_endpoint(mapped), to_endpoint(v4));
        for sa in [v4, v6] {
            assert_eq!(to_socket_addr(&to_endpoint(sa)), Some(sa));
        }
        // The API's text form (`/v1/spokes` "endpoint").
        assert_eq!(
            to_socket_addr(&to_endpoint(v6)).unwrap().to_string(),
            "[2001:db8:a2::3]:47123"
        );
        let unset = Endpoint {
            family: 0,
            ..to_endpoint(v4)
        };
        assert_eq!(to_socket_addr(&unset), None);
    }

    #[test]
    fn interface_names_are_checked() {
        assert!(interface_name("relayhub0").is_ok());
        assert!(interface_name("fifteen-chars-x").is_ok());
        for name in ["", "a/b", "has space", "sixteen-chars-xx"] {
            match interface_name(name) {
                Err(HubWgError::Name(n)) => assert_eq!(n, name),
                Err(e) => panic!("{name:?}: {e}"),
                Ok(_) => panic!("{name:?} accepted"),
            }
        }
        let e = HubWgError::Name("a/b".into()).to_string();
        assert!(e.contains("1-15 characters"), "{e}");
    }
}
