//! Egress through the hub, sans IO: the nftables table that forwards and
//! masquerades the internet traffic of the spokes the policy lets exit.
//!
//! The table is relayhub's own (`inet relayhub_<wg iface>`), replaced
//! whole in one `nft -f` transaction and deleted when nobody may exit or
//! the hub stops; nothing outside it is touched. Its forward chain only
//! ever concerns the hub's WireGuard interface: exit users out (new
//! flows), answers back in (conntrack), nothing else in or out of it, and
//! never WireGuard to WireGuard (spoke-to-spoke traffic is relayed blind
//! by XDP, never routed through the hub's decrypting interface).

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::net::{Ipv4Addr, Ipv6Addr};

/// The table's name for the hub WireGuard interface `wg_iface` (one hub
/// per interface; nft names take letters, digits and underscores).
pub fn table_name(wg_iface: &str) -> String {
    let safe: String = wg_iface
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    format!("relayhub_{safe}")
}

/// What the table says: who exits, through which WireGuard interface, and
/// the source ports masquerading may pick (`None`: the kernel's choice).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Egress {
    pub wg_iface: String,
    /// Tunnel addresses of the spokes that may exit.
    pub users: BTreeSet<Ipv4Addr>,
    /// Their IPv6 twins (`--network6`; empty without): their IPv6
    /// traffic is forwarded and masqueraded the same way.
    pub users6: BTreeSet<Ipv6Addr>,
    pub ports: Option<(u16, u16)>,
}

/// Masquerading's source ports on a hub whose mesh ports start at
/// `mesh_base` (0: no mesh) and whose hub port is `hub_port`: below both,
/// so an answer to a masqueraded flow never lands on a port the XDP
/// program relays (it could look like WireGuard). `None` when that range
/// would be too small to be worth restricting to (the kernel's default
/// then, with the rare collision documented).
pub fn masquerade_ports(mesh_base: u16, hub_port: u16) -> Option<(u16, u16)> {
    let top = match mesh_base {
        0 => hub_port,
        b => b.min(hub_port),
    };
    (top > 2048).then(|| (1024, top - 1))
}

impl Egress {
    /// The `nft -f` script that makes the table exactly this (`None`:
    /// nobody may exit; the table is deleted).
    pub fn script(&self, table: &str) -> Option<String> {
        if self.users.is_empty() {
            return None;
        }
        let wg = &self.wg_iface;
        let users: Vec<String> = self.users.iter().map(ToString::to_string).collect();
        let to = self
            .ports
            .map(|(a, b)| format!(" to :{a}-{b}"))
            .unwrap_or_default();
        let mut s = String::new();
        // Create (if absent), delete, define: one transaction replaces the
        // whole table, whatever was there.
        let _ = writeln!(s, "table inet {table}");
        let _ = writeln!(s, "delete table inet {table}");
        let _ = writeln!(s, "table inet {table} {{");
        let _ = writeln!(s, "  set exit_users {{");
        let _ = writeln!(s, "    type ipv4_addr");
        let _ = writeln!(s, "    elements = {{ {} }}", users.join(", "));
        let _ = writeln!(s, "  }}");
        let users6: Vec<String> = self.users6.iter().map(ToString::to_string).collect();
        if !users6.is_empty() {
            let _ = writeln!(s, "  set exit_users6 {{");
            let _ = writeln!(s, "    type ipv6_addr");
            let _ = writeln!(s, "    elements = {{ {} }}", users6.join(", "));
            let _ = writeln!(s, "  }}");
        }
        let _ = writeln!(s, "  chain forward {{");
        let _ = writeln!(
            s,
            "    type filter hook forward priority filter; policy accept;"
        );
        let _ = writeln!(s, "    iifname \"{wg}\" oifname \"{wg}\" drop");
        let _ = writeln!(s, "    iifname \"{wg}\" ip saddr @exit_users accept");
        if !users6.is_empty() {
            let _ = writeln!(s, "    iifname \"{wg}\" ip6 saddr @exit_users6 accept");
        }
        let _ = writeln!(s, "    iifname \"{wg}\" drop");
        let _ = writeln!(
            s,
            "    oifname \"{wg}\" ct state established,related accept"
        );
        let _ = writeln!(s, "    oifname \"{wg}\" drop");
        let _ = writeln!(s, "  }}");
        let _ = writeln!(s, "  chain postrouting {{");
        let _ = writeln!(
            s,
            "    type nat hook postrouting priority srcnat; policy accept;"
        );
        let mut outs = vec![format!(
            "iifname \"{wg}\" oifname != \"{wg}\" ip saddr @exit_users"
        )];
        if !users6.is_empty() {
            outs.push(format!(
                "iifname \"{wg}\" oifname != \"{wg}\" ip6 saddr @exit_users6"
            ));
        }
        for out in outs {
            if !to.is_empty() {
                // A port range needs a transport protocol match.
                let _ = writeln!(s, "    {out} meta l4proto {{ tcp, udp }} masquerade{to}");
            }
            let _ = writeln!(s, "    {out} masquerade");
        }
        let _ = writeln!(s, "  }}");
        let _ = writeln!(s, "}}");
        Some(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_forwards_only_exit_users_and_never_spoke_to_spoke() {
        assert_eq!(table_name("relayhub0"), "relayhub_relayhub0");
        assert_eq!(table_name("wg-hub.1"), "relayhub_wg_hub_1");
        let e = Egress {
            wg_iface: "rh0".into(),
            users: ["10.88.0.3".parse().unwrap(), "10.88.0.2".parse().unwrap()].into(),
            users6: BTreeSet::new(),
            ports: masquerade_ports(40000, 51820),
        };
        let s = e.script("t").unwrap();
        assert!(
            s.starts_with("table inet t\ndelete table inet t\ntable inet t {\n"),
            "{s}"
        );
        assert!(s.contains("elements = { 10.88.0.2, 10.88.0.3 }"), "{s}");
        // Order matters: WireGuard to WireGuard is dropped before the exit
        // users' accept.
        let wg_wg = s.find("iifname \"rh0\" oifname \"rh0\" drop").unwrap();
        let users = s.find("ip saddr @exit_users accept").unwrap();
        assert!(wg_wg < users);
        assert!(
            s.contains("meta l4proto { tcp, udp } masquerade to :1024-39999\n"),
            "{s}"
        );
        assert!(s.contains("@exit_users masquerade\n"), "{s}");
        assert!(!s.contains("ip6"), "no IPv6 rules without twins:\n{s}");
        // With --network6 the twins exit the same way.
        let six = Egress {
            users6: ["fd88::a58:2".parse().unwrap()].into(),
            ..e.clone()
        };
        let s6 = six.script("t").unwrap();
        for want in [
            "type ipv6_addr\n    elements = { fd88::a58:2 }",
            "iifname \"rh0\" ip6 saddr @exit_users6 accept",
            "oifname != \"rh0\" ip6 saddr @exit_users6 masquerade\n",
        ] {
            assert!(s6.contains(want), "missing {want:?} in\n{s6}");
        }
        assert!(
            s6.find("\n    oifname \"rh0\" drop").unwrap()
                > s6.find("@exit_users6 accept").unwrap()
        );
        // Nobody may exit: no table at all.
        let none = Egress {
            users: BTreeSet::new(),
            ..e
        };
        assert_eq!(none.script("t"), None);
    }

    #[test]
    fn masquerade_stays_below_relayed_ports() {
        assert_eq!(masquerade_ports(0, 51820), Some((1024, 51819)));
        assert_eq!(masquerade_ports(40000, 51820), Some((1024, 39999)));
        assert_eq!(masquerade_ports(60000, 51820), Some((1024, 51819)));
        assert_eq!(masquerade_ports(1500, 51820), None);
    }
}
