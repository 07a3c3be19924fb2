//! DNS names for spokes, sans IO: what the hub answers for a question, as
//! the authoritative server of its zone and of nothing else.
//!
//! `NAME.ZONE` is spoke NAME's tunnel address, or, for a published
//! service NAME, the hub's tunnel address (where spokes reach the service
//! through the tunnel; the registry keeps spoke and service names
//! apart). Anything outside the zone
//! is refused (the hub is never a resolver, open or not); inside it, an
//! unknown name is NXDOMAIN and a known name asked for another type has
//! no data. The DNS server (hickory-server, in `io`) only carries these
//! answers on the wire.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr};

use crate::core::registry::{Registry, TunnelNet};

/// The zone unless `--dns-zone` says otherwise (`.internal` is reserved
/// for private use: it never resolves on the internet).
pub const DEFAULT_ZONE: &str = "relayhub.internal";

/// The types a question may ask for, as far as the zone cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QType {
    A,
    /// IPv6 twins, with `--network6`.
    Aaaa,
    Any,
    /// The zone's SOA, at its apex.
    Soa,
    /// Any other type (MX, TXT, ...): the zone has none of them.
    Other,
}

/// What to answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// Authoritative, with these A (IPv4) and AAAA (IPv6) records.
    Records(Vec<IpAddr>),
    /// Authoritative: the zone's SOA record.
    Soa,
    /// Authoritative: the name exists, not with that type (or it is the
    /// zone's apex).
    NoData,
    /// Authoritative: no such name in the zone.
    NxDomain,
    /// Not the hub's zone: refused, never looked up elsewhere.
    Refused,
}

/// The zone's names (lower case, no trailing dot).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Zone {
    origin: String,
    names: HashMap<String, Ipv4Addr>,
    /// `--network6`: every name has its address's IPv6 twin too.
    net: TunnelNet,
}

/// `name` in lower case without a trailing dot; `None` if it is no valid
/// DNS name (empty labels, labels over 63 bytes, over 253 in all, bytes
/// other than letters, digits, `-` and `_`).
pub fn normalize(name: &str) -> Option<String> {
    let n = name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase();
    let ok = !n.is_empty()
        && n.len() <= 253
        && n.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        });
    ok.then_some(n)
}

impl Zone {
    /// The zone `origin` (e.g. `relayhub.internal`) with the registry's
    /// spokes and services (at the hub's tunnel address in `net`); an
    /// invalid zone name is an error for `--dns-zone`.
    pub fn new(origin: &str, reg: &Registry, net: &TunnelNet) -> Result<Zone, String> {
        let hub = net.hub;
        let origin = normalize(origin).ok_or_else(|| {
            format!("{origin:?} is not a DNS zone name (labels of letters, digits, - and _, separated by dots)")
        })?;
        let mut names = HashMap::new();
        for s in reg.spokes() {
            // Spoke names may hold dots: more labels, still under the zone.
            if let Some(n) = normalize(&format!("{}.{origin}", s.name)) {
                names.insert(n, s.address);
            }
        }
        for v in reg.services() {
            if let Some(n) = normalize(&format!("{}.{origin}", v.name)) {
                names.entry(n).or_insert(hub);
            }
        }
        Ok(Zone {
            origin,
            names,
            net: *net,
        })
    }

    pub fn origin(&self) -> &str {
        &self.origin
    }

    /// Whether `name` (normalized) is the zone or below it.
    fn in_zone(&self, name: &str) -> bool {
        name == self.origin
            || name
                .strip_suffix(self.origin.as_str())
                .is_some_and(|rest| rest.ends_with('.'))
    }

    /// The answer to a question for `qname` of type `qtype`.
    pub fn answer(&self, qname: &str, qtype: QType) -> Answer {
        let Some(name) = normalize(qname) else {
            return Answer::Refused;
        };
        if !self.in_zone(&name) {
            return Answer::Refused;
        }
        match (self.names.get(&name), qtype) {
            (Some(a), QType::A) => Answer::Records(vec![IpAddr::V4(*a)]),
            (Some(a), QType::Aaaa) => match self.net.addr6(*a) {
                Some(a6) => Answer::Records(vec![IpAddr::V6(a6)]),
                None => Answer::NoData,
            },
            (Some(a), QType::Any) => Answer::Records(
                std::iter::once(IpAddr::V4(*a))
                    .chain(self.net.addr6(*a).map(IpAddr::V6))
                    .collect(),
            ),
            (Some(_), QType::Other | QType::Soa) => Answer::NoData,
            (None, QType::Soa | QType::Any) if name == self.origin => Answer::Soa,
            (None, _) if name == self.origin => Answer::NoData,
            (None, _) => Answer::NxDomain,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::registry::TunnelNet;
    use wireguard_control::Key;

    fn zone() -> Zone {
        let mut r = Registry::new();
        let net: TunnelNet = "10.88.0.0/24".parse().unwrap();
        for (i, n) in ["web1", "DB", "edge.eu"].into_iter().enumerate() {
            r.add(n, Key([i as u8 + 1; 32]), &net).unwrap();
        }
        r.publish(crate::core::publish::Service {
            name: "www".into(),
            listen: "tcp/80".parse().unwrap(),
            backends: vec!["web1:8080".parse().unwrap()],
            udp_probe: None,
        })
        .unwrap();
        Zone::new("Relayhub.Internal.", &r, &net).unwrap()
    }

    #[test]
    fn spokes_by_name_in_the_zone_only() {
        let z = zone();
        assert_eq!(z.origin(), "relayhub.internal");
        let a = |n: &str| z.answer(n, QType::A);
        assert_eq!(
            a("web1.relayhub.internal"),
            Answer::Records(vec!["10.88.0.2".parse().unwrap()])
        );
        // Case and the trailing dot do not matter; dotted names work.
        assert_eq!(
            a("db.RELAYHUB.internal."),
            z.answer("DB.relayhub.internal", QType::Any)
        );
        assert!(matches!(a("edge.eu.relayhub.internal"), Answer::Records(_)));
        assert_eq!(
            z.answer("web1.relayhub.internal", QType::Other),
            Answer::NoData
        );
        assert_eq!(a("relayhub.internal"), Answer::NoData);
        assert_eq!(z.answer("relayhub.internal", QType::Soa), Answer::Soa);
        assert_eq!(
            z.answer("web1.relayhub.internal", QType::Soa),
            Answer::NoData
        );
        // A service is at the hub's tunnel address.
        assert_eq!(
            a("www.relayhub.internal"),
            Answer::Records(vec!["10.88.0.1".parse().unwrap()])
        );
        assert_eq!(a("nope.relayhub.internal"), Answer::NxDomain);
        // Never anything outside the zone, however close.
        for outside in [
            "example.com",
            "web1",
            "web1.relayhub.internal.evil",
            "xrelayhub.internal",
            "internal",
            "",
            "a..relayhub.internal",
        ] {
            assert_eq!(a(outside), Answer::Refused, "{outside:?}");
        }
        assert!(Zone::new("bad zone", &Registry::new(), &TunnelNet::default()).is_err());
        // AAAA: no data without --network6, the twin with it.
        assert_eq!(
            z.answer("web1.relayhub.internal", QType::Aaaa),
            Answer::NoData
        );
        let mut r = Registry::new();
        let net6 = TunnelNet::default().with_v6(Some("fd88::/96".parse().unwrap()));
        r.add("web1", Key([1; 32]), &net6).unwrap();
        let z6 = Zone::new("relayhub.internal", &r, &net6).unwrap();
        assert_eq!(
            z6.answer("web1.relayhub.internal", QType::Aaaa),
            Answer::Records(vec!["fd88::a58:2".parse().unwrap()])
        );
        assert_eq!(
            z6.answer("web1.relayhub.internal", QType::Any),
            Answer::Records(vec![
                "10.88.0.2".parse().unwrap(),
                "fd88::a58:2".parse().unwrap()
            ])
        );
    }
}
