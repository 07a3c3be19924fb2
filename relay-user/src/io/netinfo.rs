//! Guessing the hub's public endpoint from the local routing table, and
//! normalising `--endpoint HOST[:PORT]`. Reads /proc and getifaddrs only;
//! sends no traffic.

use std::fs;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

#[derive(Debug, thiserror::Error)]
pub enum NetInfoError {
    #[error("cannot read {path}: {source}; pass --endpoint HOST[:PORT] explicitly")]
    Read {
        path: &'static str,
        source: std::io::Error,
    },
    #[error(
        "this host has no default route, so the hub's address cannot be guessed; pass --endpoint HOST[:PORT]"
    )]
    NoDefaultRoute,
    #[error("cannot list the addresses of {interface}: {source}; pass --endpoint HOST[:PORT]")]
    Addresses {
        interface: String,
        source: nix::Error,
    },
    #[error(
        "the default-route interface {0} has no usable IPv4 or IPv6 address; pass --endpoint HOST[:PORT]"
    )]
    NoAddress(String),
    #[error("invalid endpoint {given:?}: {reason}; use HOST, HOST:PORT, IPV6 or [IPV6]:PORT")]
    BadEndpoint { given: String, reason: &'static str },
}

const RTF_UP: u32 = 0x0001;
const RTF_REJECT: u32 = 0x0200;

/// The interface of the default route: IPv4 (/proc/net/route) first, then IPv6.
pub fn default_route_interface() -> Result<String, NetInfoError> {
    let read = |path: &'static str| match fs::read_to_string(path) {
        Ok(t) => Ok(Some(t)),
        // No IPv6 (or IPv4) stack: not an error, just no route there.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(NetInfoError::Read { path, source }),
    };
    if let Some(iface) = read("/proc/net/route")?
        .as_deref()
        .and_then(parse_ipv4_default_route)
    {
        return Ok(iface);
    }
    if let Some(iface) = read("/proc/net/ipv6_route")?
        .as_deref()
        .and_then(parse_ipv6_default_route)
    {
        return Ok(iface);
    }
    Err(NetInfoError::NoDefaultRoute)
}

/// The lowest-metric up default route in /proc/net/route format.
pub fn parse_ipv4_default_route(text: &str) -> Option<String> {
    text.lines()
        .skip(1)
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() < 8 {
                return None;
            }
            let flags = u32::from_str_radix(f[3], 16).ok()?;
            let metric: u32 = f[6].parse().ok()?;
            let default = f[1] == "00000000" && f[7] == "00000000";
            (default && flags & RTF_UP != 0 && flags & RTF_REJECT == 0 && f[0] != "lo")
                .then(|| (metric, f[0].to_owned()))
        })
        .min_by_key(|(metric, _)| *metric)
        .map(|(_, iface)| iface)
}

/// The lowest-metric up default route in /proc/net/ipv6_route format
/// (skipping the kernel's unreachable default on `lo`).
pub fn parse_ipv6_default_route(text: &str) -> Option<String> {
    text.lines()
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() < 10 {
                return None;
            }
            let default = f[0].bytes().all(|b| b == b'0') && f[1] == "00";
            let metric = u32::from_str_radix(f[5], 16).ok()?;
            let flags = u32::from_str_radix(f[8], 16).ok()?;
            (default && flags & RTF_UP != 0 && flags & RTF_REJECT == 0 && f[9] != "lo")
                .then(|| (metric, f[9].to_owned()))
        })
        .min_by_key(|(metric, _)| *metric)
        .map(|(_, iface)| iface)
}

/// Every IPv4/IPv6 address of interface `name`, in getifaddrs order.
pub fn interface_addresses(name: &str) -> Result<Vec<IpAddr>, NetInfoError> {
    let addrs = nix::ifaddrs::getifaddrs().map_err(|source| NetInfoError::Addresses {
        interface: name.to_owned(),
        source,
    })?;
    Ok(addrs
        .filter(|a| a.interface_name == name)
        .filter_map(|a| {
            let sa = a.address?;
            if let Some(v4) = sa.as_sockaddr_in() {
                Some(IpAddr::V4(v4.ip()))
            } else {
                sa.as_sockaddr_in6().map(|v6| IpAddr::V6(v6.ip()))
            }
        })
        .collect())
}

/// `host:port` for the first usable IPv4 address of the default-route
/// interface, else its best IPv6 address as `[addr]:port`.
///
/// Behind NAT this is the hub's private address; spokes then need
/// `--endpoint` with the public name or address.
pub fn default_endpoint(port: u16) -> Result<String, NetInfoError> {
    let iface = default_route_interface()?;
    let addrs = interface_addresses(&iface)?;
    let ip = pick_endpoint_address(&addrs).ok_or(NetInfoError::NoAddress(iface))?;
    Ok(format_endpoint(ip, port))
}

/// `[addr]:port` for the best IPv6 address (global, else unique local) of
/// the IPv6 default-route interface (else of the IPv4 one).
pub fn default_endpoint6(port: u16) -> Result<String, NetInfoError> {
    let iface = match fs::read_to_string("/proc/net/ipv6_route")
        .ok()
        .as_deref()
        .and_then(parse_ipv6_default_route)
    {
        Some(i) => i,
        None => default_route_interface()?,
    };
    let v6: Vec<IpAddr> = interface_addresses(&iface)?
        .into_iter()
        .filter(IpAddr::is_ipv6)
        .collect();
    let ip = pick_endpoint_address(&v6).ok_or(NetInfoError::NoAddress(iface))?;
    Ok(format_endpoint(ip, port))
}

/// First usable IPv4 address, else a global unicast IPv6 address, else any
/// other usable IPv6 address (unique local). Loopback, link-local,
/// unspecified and multicast addresses are never picked.
pub fn pick_endpoint_address(addrs: &[IpAddr]) -> Option<IpAddr> {
    let v4 = addrs.iter().find_map(|a| match a {
        IpAddr::V4(v4) if usable_v4(v4) => Some(*a),
        _ => None,
    });
    let v6 = |global: bool| {
        addrs.iter().find_map(|a| match a {
            IpAddr::V6(v6) if usable_v6(v6) && (!global || v6.segments()[0] & 0xe000 == 0x2000) => {
                Some(*a)
            }
            _ => None,
        })
    };
    v4.or_else(|| v6(true)).or_else(|| v6(false))
}

/// The hub's own address in each family on its underlay interface: the
/// source of frames relayed across families (an IPv4 spoke's frame leaves
/// towards an IPv6 spoke from the hub's IPv6 address, and back). It must be
/// the address spokes of that family send to, so an address in `prefer`
/// (the endpoints given with `--endpoint`) wins when the interface has it;
/// otherwise the first usable IPv4 address and the first global (else
/// unique local) IPv6 address.
pub fn pick_hub_addresses(
    addrs: &[IpAddr],
    prefer: &[IpAddr],
) -> (Option<Ipv4Addr>, Option<Ipv6Addr>) {
    let preferred = |want_v4: bool| {
        prefer
            .iter()
            .find(|p| p.is_ipv4() == want_v4 && addrs.contains(p))
            .copied()
    };
    let v4 = preferred(true)
        .or_else(|| {
            addrs
                .iter()
                .find(|a| matches!(a, IpAddr::V4(v4) if usable_v4(v4)))
                .copied()
        })
        .and_then(|a| match a {
            IpAddr::V4(a) => Some(a),
            IpAddr::V6(_) => None,
        });
    let v6_only: Vec<IpAddr> = addrs.iter().filter(|a| a.is_ipv6()).copied().collect();
    let v6 = preferred(false)
        .or_else(|| pick_endpoint_address(&v6_only))
        .and_then(|a| match a {
            IpAddr::V6(a) => Some(a),
            IpAddr::V4(_) => None,
        });
    (v4, v6)
}

/// [`pick_hub_addresses`] for interface `iface`.
pub fn hub_addresses(
    iface: &str,
    prefer: &[IpAddr],
) -> Result<(Option<Ipv4Addr>, Option<Ipv6Addr>), NetInfoError> {
    Ok(pick_hub_addresses(&interface_addresses(iface)?, prefer))
}

/// The IP address of a `host:port` / `[v6]:port` endpoint, if it is a
/// literal address (not a DNS name).
pub fn endpoint_ip(endpoint: &str) -> Option<IpAddr> {
    endpoint
        .parse::<std::net::SocketAddr>()
        .ok()
        .map(|sa| sa.ip())
        .or_else(|| endpoint.parse().ok())
}

fn usable_v4(a: &Ipv4Addr) -> bool {
    !(a.is_loopback()
        || a.is_link_local()
        || a.is_unspecified()
        || a.is_multicast()
        || a.is_broadcast())
}

fn usable_v6(a: &Ipv6Addr) -> bool {
    let link_local = a.segments()[0] & 0xffc0 == 0xfe80;
    !(a.is_loopback()
        || a.is_unspecified()
        || a.is_multicast()
        || link_local
        || a.to_ipv4_mapped().is_some())
}

/// `addr:port`, IPv6 in brackets.
pub fn format_endpoint(ip: IpAddr, port: u16) -> String {
    match ip {
        IpAddr::V4(a) => format!("{a}:{port}"),
        IpAddr::V6(a) => format!("[{a}]:{port}"),
    }
}

/// Normalises `--endpoint`: `HOST`, `HOST:PORT`, a bare IPv6 address or
/// `[IPV6]` (given `default_port`), or `[IPV6]:PORT`, into `host:port`.
pub fn normalize_endpoint(given: &str, default_port: u16) -> Result<String, NetInfoError> {
    let bad = |reason| NetInfoError::BadEndpoint {
        given: given.to_owned(),
        reason,
    };
    let s = given.trim();
    if s.is_empty() {
        return Err(bad("it is empty"));
    }
    if s.chars()
        .any(|c| c.is_whitespace() || c == '#' || c.is_control())
    {
        return Err(bad("it contains whitespace or '#'"));
    }
    let parse_port = |p: &str| -> Result<u16, NetInfoError> {
        if p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad("the port is not a number"));
        }
        match p.parse::<u16>() {
            Ok(0) | Err(_) => Err(bad("the port must be 1 to 65535")),
            Ok(port) => Ok(port),
        }
    };
    if let Ok(v6) = s.parse::<Ipv6Addr>() {
        return Ok(format_endpoint(IpAddr::V6(v6), default_port));
    }
    if let Some(rest) = s.strip_prefix('[') {
        let (addr, after) = rest.split_once(']').ok_or_else(|| bad("missing ']'"))?;
        let v6: Ipv6Addr = addr
            .parse()
            .map_err(|_| bad("the part in [] is not an IPv6 address"))?;
        let port = match after {
            "" => default_port,
            _ => parse_port(
                after
                    .strip_prefix(':')
                    .ok_or_else(|| bad("expected ':' after ']'"))?,
            )?,
        };
        return Ok(format_endpoint(IpAddr::V6(v6), port));
    }
    let (host, port) = match s.split_once(':') {
        Some((h, p)) => (h, parse_port(p)?),
        None => (s, default_port),
    };
    if host.is_empty() {
        return Err(bad("the host is empty"));
    }
    if !host
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'))
    {
        return Err(bad("the host is not an IPv4 address or DNS name"));
    }
    Ok(format!("{host}:{port}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const ROUTE: &str = "\
Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT
eth1\t00000000\t0102A8C0\t0003\t0\t0\t200\t00000000\t0\t0\t0
eth0\t00000000\t0100000A\t0003\t0\t0\t100\t00000000\t0\t0\t0
eth0\t0000000A\t00000000\t0001\t0\t0\t100\t00FFFFFF\t0\t0\t0
";

    #[test]
    fn ipv4_default_route_lowest_metric() {
        assert_eq!(parse_ipv4_default_route(ROUTE).as_deref(), Some("eth0"));
        let no_default = ROUTE
            .lines()
            .filter(|l| !l.contains("\t00000000\t0"))
            .collect::<Vec<_>>();
        assert_eq!(parse_ipv4_default_route(&no_default.join("\n")), None);
        assert_eq!(parse_ipv4_default_route(""), None);
        // A route that is down does not count.
        let down = "Iface\tDestination\tGateway\tFlags\tRefCnt\tUse\tMetric\tMask\n\
                    eth0\t00000000\t0100000A\t0002\t0\t0\t0\t00000000\t0\t0\t0\n";
        assert_eq!(parse_ipv4_default_route(down), None);
    }

    const ROUTE6: &str = "\
20010db8000000000000000000000000 40 00000000000000000000000000000000 00 00000000000000000000000000000000 00000100 00000001 00000000 00000001     eth0
00000000000000000000000000000000 00 00000000000000000000000000000000 00 fe800000000000000000000000000001 00000400 00000001 00000000 00000003     wan6
00000000000000000000000000000000 00 00000000000000000000000000000000 00 00000000000000000000000000000000 ffffffff 00000001 00000000 00200200       lo
00000000000000000000000000000001 80 00000000000000000000000000000000 00 00000000000000000000000000000000 00000000 00000002 00000000 80200001       lo
";

    #[test]
    fn ipv6_default_route_skips_unreachable_lo() {
        assert_eq!(parse_ipv6_default_route(ROUTE6).as_deref(), Some("wan6"));
        let only_lo: String = ROUTE6
            .lines()
            .filter(|l| l.ends_with("lo"))
            .map(|l| format!("{l}\n"))
            .collect();
        assert_eq!(parse_ipv6_default_route(&only_lo), None);
    }

    fn ips(s: &[&str]) -> Vec<IpAddr> {
        s.iter().map(|a| a.parse().unwrap()).collect()
    }

    #[test]
    fn picks_ipv4_then_global_ipv6() {
        let p = |s: &[&str]| pick_endpoint_address(&ips(s)).map(|a| a.to_string());
        assert_eq!(
            p(&[
                "fe80::1",
                "2001:db8::5",
                "127.0.0.1",
                "169.254.1.1",
                "192.0.2.7"
            ])
            .as_deref(),
            Some("192.0.2.7")
        );
        assert_eq!(
            p(&["fe80::1", "fd00::9", "2001:db8::5"]).as_deref(),
            Some("2001:db8::5")
        );
        assert_eq!(p(&["fe80::1", "fd00::9"]).as_deref(), Some("fd00::9"));
        assert_eq!(p(&["fe80::1", "::1", "::ffff:1.2.3.4"]), None);
        assert_eq!(p(&[]), None);
        assert_eq!(
            p(&["10.0.0.2"]).as_deref(),
            Some("10.0.0.2"),
            "private IPv4 is fine (hub behind a router)"
        );
    }

    #[test]
    fn endpoint_normalisation() {
        let n = |s: &str| normalize_endpoint(s, 51820);
        assert_eq!(n("192.0.2.1").unwrap(), "192.0.2.1:51820");
        assert_eq!(n("192.0.2.1:4000").unwrap(), "192.0.2.1:4000");
        assert_eq!(n("hub.example.com").unwrap(), "hub.example.com:51820");
        assert_eq!(n("hub.example.com:1").unwrap(), "hub.example.com:1");
        assert_eq!(n("2001:db8::1").unwrap(), "[2001:db8::1]:51820");
        assert_eq!(n("[2001:db8::1]").unwrap(), "[2001:db8::1]:51820");
        assert_eq!(n("[2001:db8::1]:443").unwrap(), "[2001:db8::1]:443");
        assert_eq!(n(" 192.0.2.1 ").unwrap(), "192.0.2.1:51820");
        for bad in [
            "",
            "a b",
            "h:0",
            "h:65536",
            "h:x",
            "h:",
            ":80",
            "[2001:db8::1",
            "[x]:1",
            "[::1]x",
            "h#",
            "a/b",
            "h:1:2",
        ] {
            let e = n(bad).unwrap_err();
            assert!(
                e.to_string().contains("--endpoint") || e.to_string().contains("HOST"),
                "{bad}: {e}"
            );
        }
        assert_eq!(format_endpoint("::1".parse().unwrap(), 5), "[::1]:5");
    }

    #[test]
    fn hub_addresses_prefer_given_endpoints() {
        let addrs = ips(&[
            "fe80::1",
            "10.0.0.2",
            "fd00::9",
            "2001:db8::5",
            "2001:db8::6",
        ]);
        assert_eq!(
            pick_hub_addresses(&addrs, &[]),
            (
                Some("10.0.0.2".parse().unwrap()),
                Some("2001:db8::5".parse().unwrap())
            )
        );
        // A given endpoint the interface has wins; one it lacks is ignored.
        let prefer = ips(&["2001:db8::6", "192.0.2.1"]);
        assert_eq!(
            pick_hub_addresses(&addrs, &prefer),
            (
                Some("10.0.0.2".parse().unwrap()),
                Some("2001:db8::6".parse().unwrap())
            )
        );
        assert_eq!(
            pick_hub_addresses(&ips(&["fe80::1", "127.0.0.1"]), &[]),
            (None, None)
        );
        assert_eq!(
            pick_hub_addresses(&ips(&["fd00::9"]), &[]),
            (None, Some("fd00::9".parse().unwrap()))
        );
        assert_eq!(
            endpoint_ip("[2001:db8::1]:51820"),
            Some("2001:db8::1".parse().unwrap())
        );
        assert_eq!(
            endpoint_ip("192.0.2.1:1"),
            Some("192.0.2.1".parse().unwrap())
        );
        assert_eq!(endpoint_ip("hub.example.net:51820"), None);
    }

    /// Reads this machine's real tables; only checks the shape, since the
    /// sandbox may have no default route.
    #[test]
    fn live_lookup_does_not_panic() {
        match default_endpoint(51820) {
            Ok(ep) => assert!(ep.ends_with(":51820"), "{ep}"),
            Err(e) => assert!(e.to_string().contains("--endpoint"), "{e}"),
        }
        assert!(
            interface_addresses("lo")
                .unwrap()
                .iter()
                .any(|a| a.is_loopback())
        );
    }
}
