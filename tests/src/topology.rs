//! The test network: a hub with one NIC behind a router, and spokes each
//! behind its own outbound-only NAT connected to that router.
//!
//! ```text
//!   [prefix-hub] h0 198.51.100.1/24 ─── rh 198.51.100.254 [prefix-r] (xdp_pass on rh)
//!                                                         │ rn1 203.0.113.5/30 ── n1w 203.0.113.6 [prefix-n1] n1l 192.168.1.1 ── s1l 192.168.1.2 [prefix-s1]
//!                                                         │ rn2 203.0.113.9/30 ── n2w 203.0.113.10 [prefix-n2] ...                  [prefix-s2]
//!                                                         │ rn3 203.0.113.13/30 ─ n3w 203.0.113.14 [prefix-n3] (--random-fully)     [prefix-s3]
//! ```
//!
//! The router knows only the hub subnet and the NAT WANs (like the Internet:
//! no routes to the spoke LANs). Each NAT masquerades on its WAN and accepts
//! from the WAN only ESTABLISHED,RELATED (forwarded or to itself).
//!
//! With [`TopologyBuilder::ipv6_only_spokes`] the hub link is dual-stack
//! (hub 2001:db8:100::1/64, router 2001:db8:100::fe) and IPv6-only spokes
//! follow the IPv4 ones, each behind a stateful IPv6 firewall (routed, no
//! NAT: only outbound and ESTABLISHED,RELATED inbound, plus neighbour
//! discovery):
//!
//! ```text
//!   [prefix-r] rf<k> 2001:db8:f<k>::1/64 ── f<k>w 2001:db8:f<k>::2 [prefix-f<k>] f<k>l 2001:db8:a<k>::1 ── 2001:db8:a<k>::2 [prefix-s<k>]
//! ```

use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context;

use crate::cmd::{self, Proc};
use crate::netns::{Netns, Veth};

/// Hub underlay address and the router's address on the hub link.
pub const HUB_ADDR: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 1);
pub const ROUTER_HUB_ADDR: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 254);
/// The same in IPv6 (dual-stack topologies only).
pub const HUB_ADDR6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x100, 0, 0, 0, 0, 1);
pub const ROUTER_HUB_ADDR6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x100, 0, 0, 0, 0, 0xfe);
/// WireGuard port of the hub.
pub const HUB_PORT: u16 = 51820;

/// A unique prefix for names of namespaces, links and files of one test:
/// `rh` + 4 hex digits, not in use by any namespace, link or /tmp directory.
pub fn unique_prefix() -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let taken = cmd::run(&["ip", "netns", "list"]).unwrap_or_default()
        + &cmd::run(&["ip", "-o", "link"]).unwrap_or_default();
    for _ in 0..64 {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .subsec_nanos();
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let mut x = (std::process::id() as u64) << 32 ^ (nanos as u64) ^ ((n as u64) << 17);
        // splitmix64 finaliser
        x = (x ^ (x >> 30)).wrapping_mul(0xbf58476d1ce4e5b9);
        x = (x ^ (x >> 27)).wrapping_mul(0x94d049bb133111eb);
        x ^= x >> 31;
        let p = format!("rh{:04x}", x & 0xffff);
        if !taken.contains(&p) && !Path::new("/tmp").join(&p).exists() {
            return p;
        }
    }
    panic!("no free name prefix found");
}

/// One outbound-only NAT.
pub struct Nat {
    pub ns: Netns,
    pub wan_if: String,
    pub wan_addr: Ipv4Addr,
    pub lan_if: String,
    pub lan_addr: Ipv4Addr,
    pub router_if: String,
    pub router_addr: Ipv4Addr,
    pub random_fully: bool,
}

/// One stateful IPv6 firewall (routed, no NAT) in front of an IPv6-only spoke.
pub struct Firewall6 {
    pub ns: Netns,
    pub wan_if: String,
    pub wan_addr: Ipv6Addr,
    pub lan_if: String,
    pub lan_addr: Ipv6Addr,
    pub router_if: String,
    pub router_addr: Ipv6Addr,
}

/// A host on the Internet side of the router (like the NATs' WANs) that
/// is not a spoke: the attacker of the security tests. It may send raw
/// frames with any source address ([`crate::inject`]).
pub struct Attacker {
    pub ns: Netns,
    pub iface: String,
    pub addr: Ipv4Addr,
    /// [`ATTACKER_ADDR6`] in dual-stack topologies.
    pub addr6: Option<Ipv6Addr>,
    pub router_if: String,
    pub router_addr: Ipv4Addr,
}

/// The attacker's address and the router's on the attacker link.
pub const ATTACKER_ADDR: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 66);
pub const ROUTER_ATTACKER_ADDR: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 254);
/// The same in IPv6 (dual-stack topologies only).
pub const ATTACKER_ADDR6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x66, 0, 0, 0, 0, 0x66);
pub const ROUTER_ATTACKER_ADDR6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x66, 0, 0, 0, 0, 0xfe);

/// One spoke namespace (its WireGuard comes later, see [`crate::wg`]).
pub struct SpokeHost {
    /// "s1", "s2", ...
    pub name: String,
    pub ns: Netns,
    pub lan_if: String,
    /// Unspecified (0.0.0.0) for an IPv6-only spoke.
    pub lan_addr: Ipv4Addr,
    /// The spoke's IPv6 address (IPv6-only spokes).
    pub lan_addr6: Option<Ipv6Addr>,
}

/// Builder for [`Topology`].
pub struct TopologyBuilder {
    spokes: usize,
    random_fully: Vec<usize>,
    xdp_pass: Option<PathBuf>,
    ipv6_only: usize,
    attacker: bool,
}

impl TopologyBuilder {
    /// Number of spokes (1..=50).
    pub fn spokes(mut self, n: usize) -> Self {
        self.spokes = n;
        self
    }

    /// The NAT of spoke `i` (0-based) randomises source ports (`--random-fully`).
    pub fn random_fully(mut self, i: usize) -> Self {
        self.random_fully.push(i);
        self
    }

    /// Add `n` IPv6-only spokes after the [`spokes`](Self::spokes) IPv4 ones
    /// (each behind a stateful IPv6 firewall), and make the hub link
    /// dual-stack. `nats[i]` still belongs to `spokes[i]` for the IPv4
    /// spokes; `firewalls[j]` to `spokes[ipv4 count + j]`.
    pub fn ipv6_only_spokes(mut self, n: usize) -> Self {
        self.ipv6_only = n;
        self
    }

    /// Add an attacker host `<prefix>-a` ([`ATTACKER_ADDR`]; with
    /// [`ipv6_only_spokes`](Self::ipv6_only_spokes) also [`ATTACKER_ADDR6`])
    /// attached to the router like a NAT's WAN: it reaches the hub, sees
    /// nothing else.
    pub fn attacker(mut self) -> Self {
        self.attacker = true;
        self
    }

    /// Attach `xdp_pass` (this binary: CARGO_BIN_EXE_xdp-pass) to the
    /// router's end of the hub link so the hub's XDP_TX frames get through.
    pub fn xdp_pass(mut self, bin: impl Into<PathBuf>) -> Self {
        self.xdp_pass = Some(bin.into());
        self
    }

    pub fn build(self) -> anyhow::Result<Topology> {
        Topology::build(self)
    }
}

/// The whole test network. Dropping it kills every process in its
/// namespaces, deletes them and its work directory.
pub struct Topology {
    pub prefix: String,
    /// `/tmp/<prefix>`: configs, logs, captures.
    pub workdir: PathBuf,
    /// Field order is drop order: processes, then links, then namespaces.
    xdp_pass: Option<Proc>,
    links: Vec<Veth>,
    pub spokes: Vec<SpokeHost>,
    pub nats: Vec<Nat>,
    /// IPv6 firewalls of the IPv6-only spokes (after the IPv4 spokes).
    pub firewalls: Vec<Firewall6>,
    /// See [`TopologyBuilder::attacker`].
    pub attacker: Option<Attacker>,
    pub hub: Netns,
    pub hub_nic: String,
    pub router: Netns,
    pub router_hub_if: String,
    _sockets_guard: SocketGuard,
    _workdir_guard: DirGuard,
}

/// Removes stale WireGuard control sockets of our interfaces after the
/// namespaces (and so their wireguard-go processes) are gone.
struct SocketGuard(String);

impl Drop for SocketGuard {
    fn drop(&mut self) {
        remove_wg_sockets(&self.0);
    }
}

struct DirGuard(PathBuf);

impl Drop for DirGuard {
    fn drop(&mut self) {
        if std::env::var_os("RELAY_TESTS_KEEP_LOGS").is_none() {
            let _ = std::fs::remove_dir_all(&self.0);
        } else {
            eprintln!("keeping {}", self.0.display());
        }
    }
}

impl Topology {
    /// Let the router forward frames with spoofed sources from the attacker
    /// (no reverse-path filter), as much of the Internet does: the spoofing
    /// checks of the security tests depend on those frames reaching the hub.
    /// (IPv6 has no reverse-path filter sysctl; the router forwards spoofed
    /// IPv6 sources anyway.)
    pub fn allow_spoofing(&self) -> anyhow::Result<()> {
        let att = self.attacker.as_ref().context("no attacker host")?;
        for k in ["all", "default", &att.router_if] {
            self.router
                .sysctl(&format!("net.ipv4.conf.{k}.rp_filter"), "0")?;
        }
        Ok(())
    }

    /// Id of the XDP program attached to the hub's NIC (the hub's relay,
    /// whatever else is loaded on the machine).
    pub fn hub_xdp_prog_id(&self) -> anyhow::Result<u64> {
        let out = self
            .hub
            .exec(&["ip", "-d", "-j", "link", "show", "dev", &self.hub_nic])?;
        let link: serde_json::Value = serde_json::from_str(&out)?;
        link[0]["xdp"]["prog"]["id"]
            .as_u64()
            .with_context(|| format!("no XDP program on the hub's NIC {}", self.hub_nic))
    }

    /// Send the router's traffic for the hub's address out of `dev` (a
    /// link of the router): what a VRRP failover's gratuitous ARP does to
    /// the neighbour entry, done by hand.
    pub fn route_hub_address(&self, dev: &str) -> anyhow::Result<()> {
        self.router
            .exec(&[
                "ip",
                "route",
                "replace",
                &format!("{HUB_ADDR}/32"),
                "dev",
                dev,
            ])
            .map(|_| ())
    }

    /// An on-path observer on the router's hub link: every UDP frame to
    /// or from the hub port, as `<workdir>/sniff.pcap`.
    pub fn sniff_hub_link(&self) -> anyhow::Result<crate::capture::Capture> {
        crate::capture::Capture::start_filtered(
            &self.router,
            &self.router_hub_if,
            &self.workdir,
            "sniff",
            &["udp", "port", "51820"],
        )
    }

    pub fn builder() -> TopologyBuilder {
        TopologyBuilder {
            spokes: 3,
            random_fully: vec![],
            xdp_pass: None,
            ipv6_only: 0,
            attacker: false,
        }
    }

    fn build(b: TopologyBuilder) -> anyhow::Result<Topology> {
        cmd::require_root();
        cmd::require_tools();
        anyhow::ensure!((1..=50).contains(&b.spokes), "1..=50 spokes");
        anyhow::ensure!(b.ipv6_only <= 9, "0..=9 IPv6-only spokes");
        let p = unique_prefix();
        let workdir = PathBuf::from("/tmp").join(&p);
        std::fs::create_dir_all(&workdir)?;
        let guard = DirGuard(workdir.clone());
        let t0 = std::time::Instant::now();

        // Namespaces are created first so that a failure later still
        // deletes everything through the guards in `partial`.
        let router = Netns::new(&format!("{p}-r"))?;
        let hub = Netns::new(&format!("{p}-hub"))?;
        let mut links = Vec::new();
        let hub_nic = format!("{p}h0");
        let router_hub_if = format!("{p}rh");
        links.push(Veth::new(&hub_nic, &hub, &router_hub_if, &router)?);

        let mut topo = Topology {
            prefix: p.clone(),
            workdir,
            xdp_pass: None,
            links,
            spokes: vec![],
            nats: vec![],
            firewalls: vec![],
            attacker: None,
            hub,
            hub_nic,
            router,
            router_hub_if,
            _sockets_guard: SocketGuard(p.clone()),
            _workdir_guard: guard,
        };

        // Router.
        let r = &topo.router;
        r.exec(&[
            "ip",
            "addr",
            "add",
            &format!("{ROUTER_HUB_ADDR}/24"),
            "dev",
            &topo.router_hub_if,
        ])?;
        r.sysctl("net.ipv4.ip_forward", "1")?;

        // Hub: one NIC, default route via the router; forwarding on the NIC
        // so the XDP program's bpf_fib_lookup succeeds.
        let h = &topo.hub;
        h.exec(&[
            "ip",
            "addr",
            "add",
            &format!("{HUB_ADDR}/24"),
            "dev",
            &topo.hub_nic,
        ])?;
        h.exec(&[
            "ip",
            "route",
            "add",
            "default",
            "via",
            &ROUTER_HUB_ADDR.to_string(),
        ])?;
        h.sysctl(&format!("net.ipv4.conf.{}.forwarding", topo.hub_nic), "1")?;

        for i in 1..=b.spokes {
            let nat_ns = Netns::new(&format!("{p}-n{i}"))?;
            let spoke_ns = Netns::new(&format!("{p}-s{i}"))?;
            let router_if = format!("{p}rn{i}");
            let wan_if = format!("{p}n{i}w");
            let lan_if = format!("{p}n{i}l");
            let spoke_if = format!("{p}s{i}l");
            topo.links
                .push(Veth::new(&router_if, &topo.router, &wan_if, &nat_ns)?);
            topo.links
                .push(Veth::new(&lan_if, &nat_ns, &spoke_if, &spoke_ns)?);
            let router_addr = Ipv4Addr::new(203, 0, 113, (4 * i + 1) as u8);
            let wan_addr = Ipv4Addr::new(203, 0, 113, (4 * i + 2) as u8);
            let lan_addr = Ipv4Addr::new(192, 168, i as u8, 1);
            let spoke_addr = Ipv4Addr::new(192, 168, i as u8, 2);
            let random_fully = b.random_fully.contains(&(i - 1));

            topo.router.exec(&[
                "ip",
                "addr",
                "add",
                &format!("{router_addr}/30"),
                "dev",
                &router_if,
            ])?;

            nat_ns.exec(&[
                "ip",
                "addr",
                "add",
                &format!("{wan_addr}/30"),
                "dev",
                &wan_if,
            ])?;
            nat_ns.exec(&[
                "ip",
                "addr",
                "add",
                &format!("{lan_addr}/24"),
                "dev",
                &lan_if,
            ])?;
            nat_ns.exec(&[
                "ip",
                "route",
                "add",
                "default",
                "via",
                &router_addr.to_string(),
            ])?;
            nat_ns.sysctl("net.ipv4.ip_forward", "1")?;
            let masq = if random_fully { " --random-fully" } else { "" };
            nat_ns.sh(&format!(
                "iptables -t nat -A POSTROUTING -o {wan_if} -j MASQUERADE{masq}
                 iptables -P FORWARD DROP
                 iptables -A FORWARD -i {lan_if} -o {wan_if} -j ACCEPT
                 iptables -A FORWARD -i {wan_if} -o {lan_if} -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT
                 iptables -A INPUT -i {wan_if} -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT
                 iptables -A INPUT -i {wan_if} -j DROP"
            ))
            .with_context(|| format!("iptables in {}", nat_ns.name))?;

            spoke_ns.exec(&[
                "ip",
                "addr",
                "add",
                &format!("{spoke_addr}/24"),
                "dev",
                &spoke_if,
            ])?;
            spoke_ns.exec(&[
                "ip",
                "route",
                "add",
                "default",
                "via",
                &lan_addr.to_string(),
            ])?;

            topo.nats.push(Nat {
                ns: nat_ns,
                wan_if,
                wan_addr,
                lan_if,
                lan_addr,
                router_if,
                router_addr,
                random_fully,
            });
            topo.spokes.push(SpokeHost {
                name: format!("s{i}"),
                ns: spoke_ns,
                lan_if: spoke_if,
                lan_addr: spoke_addr,
                lan_addr6: None,
            });
        }

        // The attacker first: a dual-stack hub link gives it IPv6 as well.
        if b.attacker {
            topo.add_attacker()?;
        }

        if b.ipv6_only > 0 {
            topo.add_ipv6_spokes(b.spokes, b.ipv6_only)?;
        }

        if let Some(bin) = &b.xdp_pass {
            let bin = bin.to_str().context("utf-8 path")?;
            let mut proc =
                topo.router
                    .spawn("xdp-pass", &[bin, &topo.router_hub_if], &topo.workdir, true)?;
            proc.wait_output("attached", Duration::from_secs(10))
                .context("attach xdp_pass to the router's end of the hub link")?;
            topo.xdp_pass = Some(proc);
        }

        // Underlay sanity: every spoke reaches the hub through its NAT
        // (IPv6-only spokes: through their firewall, to the hub's IPv6).
        for s in &topo.spokes {
            let hub = match s.lan_addr6 {
                Some(_) => HUB_ADDR6.to_string(),
                None => HUB_ADDR.to_string(),
            };
            anyhow::ensure!(
                s.ns.ping_once(&hub) || s.ns.ping_once(&hub),
                "spoke {} cannot reach the hub underlay {hub} through its NAT/firewall",
                s.name
            );
        }
        if let Some(att) = topo.attacker.as_ref().filter(|a| a.addr6.is_some()) {
            let hub = HUB_ADDR6.to_string();
            anyhow::ensure!(
                att.ns.ping_once(&hub) || att.ns.ping_once(&hub),
                "the attacker cannot reach the hub underlay {hub}"
            );
        }
        eprintln!(
            "[{p}] topology with {} spokes up in {:?}",
            b.spokes,
            t0.elapsed()
        );
        Ok(topo)
    }

    /// The hub's WireGuard endpoint as spokes see it.
    pub fn hub_endpoint(&self) -> String {
        format!("{HUB_ADDR}:{HUB_PORT}")
    }

    /// The hub's IPv6 WireGuard endpoint (dual-stack topologies).
    pub fn hub_endpoint6(&self) -> String {
        format!("[{HUB_ADDR6}]:{HUB_PORT}")
    }

    /// The attacker host on its own router link (see [`TopologyBuilder::attacker`]).
    fn add_attacker(&mut self) -> anyhow::Result<()> {
        let p = self.prefix.clone();
        let ns = Netns::new(&format!("{p}-a"))?;
        let router_if = format!("{p}ra");
        let iface = format!("{p}a0");
        self.links
            .push(Veth::new(&router_if, &self.router, &iface, &ns)?);
        self.router.exec(&[
            "ip",
            "addr",
            "add",
            &format!("{ROUTER_ATTACKER_ADDR}/24"),
            "dev",
            &router_if,
        ])?;
        ns.exec(&[
            "ip",
            "addr",
            "add",
            &format!("{ATTACKER_ADDR}/24"),
            "dev",
            &iface,
        ])?;
        ns.exec(&[
            "ip",
            "route",
            "add",
            "default",
            "via",
            &ROUTER_ATTACKER_ADDR.to_string(),
        ])?;
        anyhow::ensure!(
            ns.ping_once(&HUB_ADDR.to_string()) || ns.ping_once(&HUB_ADDR.to_string()),
            "the attacker cannot reach the hub underlay"
        );
        self.attacker = Some(Attacker {
            ns,
            iface,
            addr: ATTACKER_ADDR,
            addr6: None,
            router_if,
            router_addr: ROUTER_ATTACKER_ADDR,
        });
        Ok(())
    }

    /// Dual-stack hub link and `n` IPv6-only spokes s<first+1>.. behind
    /// stateful IPv6 firewalls.
    fn add_ipv6_spokes(&mut self, first: usize, n: usize) -> anyhow::Result<()> {
        let p = self.prefix.clone();
        for (ns, dev, addr) in [
            (&self.hub, &self.hub_nic, HUB_ADDR6),
            (&self.router, &self.router_hub_if, ROUTER_HUB_ADDR6),
        ] {
            ns.exec(&[
                "ip",
                "-6",
                "addr",
                "add",
                &format!("{addr}/64"),
                "dev",
                dev,
                "nodad",
            ])?;
        }
        self.hub.exec(&[
            "ip",
            "-6",
            "route",
            "add",
            "default",
            "via",
            &ROUTER_HUB_ADDR6.to_string(),
        ])?;
        // Forwarding on the NIC: bpf_fib_lookup answers for IPv6 too.
        self.hub
            .sysctl(&format!("net.ipv6.conf.{}.forwarding", self.hub_nic), "1")?;
        self.router.sysctl("net.ipv6.conf.all.forwarding", "1")?;
        for j in 1..=n {
            let k = first + j;
            let fw = Netns::new(&format!("{p}-f{k}"))?;
            let spoke_ns = Netns::new(&format!("{p}-s{k}"))?;
            let router_if = format!("{p}rf{k}");
            let wan_if = format!("{p}f{k}w");
            let lan_if = format!("{p}f{k}l");
            let spoke_if = format!("{p}s{k}l");
            self.links
                .push(Veth::new(&router_if, &self.router, &wan_if, &fw)?);
            self.links
                .push(Veth::new(&lan_if, &fw, &spoke_if, &spoke_ns)?);
            let net = |hi: u16, host: u16| Ipv6Addr::new(0x2001, 0xdb8, hi, 0, 0, 0, 0, host);
            let router_addr = net(0xf0 + k as u16, 1);
            let wan_addr = net(0xf0 + k as u16, 2);
            let lan_addr = net(0xa0 + k as u16, 1);
            let spoke_addr = net(0xa0 + k as u16, 2);
            let add = |ns: &Netns, a: Ipv6Addr, dev: &str| {
                ns.exec(&[
                    "ip",
                    "-6",
                    "addr",
                    "add",
                    &format!("{a}/64"),
                    "dev",
                    dev,
                    "nodad",
                ])
            };
            add(&self.router, router_addr, &router_if)?;
            add(&fw, wan_addr, &wan_if)?;
            add(&fw, lan_addr, &lan_if)?;
            add(&spoke_ns, spoke_addr, &spoke_if)?;
            // Routed, not NATed: the router knows the spoke LAN via the firewall.
            self.router.exec(&[
                "ip",
                "-6",
                "route",
                "add",
                &format!("{}/64", net(0xa0 + k as u16, 0)),
                "via",
                &wan_addr.to_string(),
            ])?;
            fw.exec(&[
                "ip",
                "-6",
                "route",
                "add",
                "default",
                "via",
                &router_addr.to_string(),
            ])?;
            spoke_ns.exec(&[
                "ip",
                "-6",
                "route",
                "add",
                "default",
                "via",
                &lan_addr.to_string(),
            ])?;
            fw.sysctl("net.ipv6.conf.all.forwarding", "1")?;
            fw.sh(&format!(
                "ip6tables -P FORWARD DROP
                 ip6tables -A FORWARD -i {lan_if} -o {wan_if} -j ACCEPT
                 ip6tables -A FORWARD -i {wan_if} -o {lan_if} -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT
                 ip6tables -A INPUT -i {wan_if} -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT
                 ip6tables -A INPUT -i {wan_if} -p ipv6-icmp --icmpv6-type neighbour-solicitation -j ACCEPT
                 ip6tables -A INPUT -i {wan_if} -p ipv6-icmp --icmpv6-type neighbour-advertisement -j ACCEPT
                 ip6tables -A INPUT -i {wan_if} -j DROP"
            ))
            .with_context(|| format!("ip6tables in {}", fw.name))?;
            self.firewalls.push(Firewall6 {
                ns: fw,
                wan_if,
                wan_addr,
                lan_if,
                lan_addr,
                router_if,
                router_addr,
            });
            self.spokes.push(SpokeHost {
                name: format!("s{k}"),
                ns: spoke_ns,
                lan_if: spoke_if,
                lan_addr: Ipv4Addr::UNSPECIFIED,
                lan_addr6: Some(spoke_addr),
            });
        }
        if let Some(att) = self.attacker.as_mut() {
            for (ns, a, dev) in [
                (&self.router, ROUTER_ATTACKER_ADDR6, &att.router_if),
                (&att.ns, ATTACKER_ADDR6, &att.iface),
            ] {
                ns.exec(&[
                    "ip",
                    "-6",
                    "addr",
                    "add",
                    &format!("{a}/64"),
                    "dev",
                    dev,
                    "nodad",
                ])?;
            }
            att.ns.exec(&[
                "ip",
                "-6",
                "route",
                "add",
                "default",
                "via",
                &ROUTER_ATTACKER_ADDR6.to_string(),
            ])?;
            att.addr6 = Some(ATTACKER_ADDR6);
        }
        // Neighbour discovery needs link-local addresses, which go through
        // duplicate address detection (about a second) on every new link.
        cmd::wait_for(
            "IPv6 duplicate address detection",
            Duration::from_secs(10),
            Duration::from_millis(50),
            || {
                for ns in self.namespaces() {
                    if !ns
                        .exec(&["ip", "-6", "addr", "show", "tentative"])?
                        .trim()
                        .is_empty()
                    {
                        return Ok(None);
                    }
                }
                Ok(Some(()))
            },
        )?;
        Ok(())
    }

    /// Check that the IPv6 firewall `j` blocks unsolicited inbound traffic
    /// (the router and the hub cannot ping the spoke behind it) while the
    /// spoke reaches outside. Returns a description.
    pub fn check_firewall6_blocks_inbound(&self, j: usize) -> anyhow::Result<String> {
        let fw = &self.firewalls[j];
        let spoke = &self.spokes[self.nats.len() + j];
        let addr = spoke.lan_addr6.context("not an IPv6 spoke")?.to_string();
        let from_router = self.router.ping_once(&addr);
        let from_hub = self.hub.ping_once(&addr);
        let out = spoke.ns.ping_once(&HUB_ADDR6.to_string());
        anyhow::ensure!(
            !from_router && !from_hub,
            "spoke {addr} behind {} answered unsolicited pings (router: {from_router}, hub: {from_hub})",
            fw.ns.name
        );
        anyhow::ensure!(
            out,
            "spoke {} cannot reach the hub's IPv6 address",
            spoke.name
        );
        Ok(format!(
            "IPv6 firewall {}: inbound ping to spoke {addr} blocked, outbound works",
            fw.ns.name
        ))
    }

    /// Every namespace of this topology.
    pub fn namespaces(&self) -> Vec<&Netns> {
        let mut v = vec![&self.router, &self.hub];
        v.extend(self.nats.iter().map(|n| &n.ns));
        v.extend(self.firewalls.iter().map(|f| &f.ns));
        v.extend(self.spokes.iter().map(|s| &s.ns));
        v.extend(self.attacker.iter().map(|a| &a.ns));
        v
    }

    /// Check that NAT `i` blocks unsolicited inbound traffic: with a route
    /// to the spoke LAN planted on the router (an attacker next to the NAT),
    /// neither the spoke nor the NAT itself answers pings from outside,
    /// while the spoke still reaches outside. Returns a description.
    pub fn check_nat_blocks_inbound(&self, i: usize) -> anyhow::Result<String> {
        let nat = &self.nats[i];
        let spoke = &self.spokes[i];
        let lan = format!("192.168.{}.0/24", i + 1);
        self.router
            .exec(&["ip", "route", "add", &lan, "via", &nat.wan_addr.to_string()])?;
        let to_spoke = self.router.ping_once(&spoke.lan_addr.to_string());
        let to_nat = self.router.ping_once(&nat.wan_addr.to_string());
        let from_hub = self.hub.ping_once(&spoke.lan_addr.to_string());
        let out = spoke.ns.ping_once(&ROUTER_HUB_ADDR.to_string());
        let _ = self.router.exec(&["ip", "route", "del", &lan]);
        anyhow::ensure!(
            !to_spoke,
            "router reached spoke {} behind NAT {}: NAT lets NEW inbound through",
            spoke.lan_addr,
            nat.ns.name
        );
        anyhow::ensure!(
            !to_nat,
            "router reached NAT WAN {}: NAT accepts NEW inbound",
            nat.wan_addr
        );
        anyhow::ensure!(!from_hub, "hub reached spoke {} behind NAT", spoke.lan_addr);
        anyhow::ensure!(out, "spoke {} cannot reach the router", spoke.name);
        Ok(format!(
            "NAT {}: inbound ping to spoke/NAT/from hub blocked, outbound works",
            nat.ns.name
        ))
    }
}

/// What of `prefix` is still on this machine: namespaces, links in the root
/// namespace, processes mentioning it, WireGuard sockets, /tmp files.
pub fn leftovers(prefix: &str) -> Vec<String> {
    let mut v = Vec::new();
    for l in cmd::run(&["ip", "netns", "list"])
        .unwrap_or_default()
        .lines()
    {
        if l.starts_with(prefix) {
            v.push(format!("netns {l}"));
        }
    }
    for l in cmd::run(&["ip", "-o", "link"]).unwrap_or_default().lines() {
        if l.contains(prefix) {
            v.push(format!("link {l}"));
        }
    }
    let me = std::process::id();
    if let Ok(rd) = std::fs::read_dir("/proc") {
        for e in rd.flatten() {
            let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
                continue;
            };
            if pid == me {
                continue;
            }
            if let Ok(c) = std::fs::read(e.path().join("cmdline")) {
                let c = String::from_utf8_lossy(&c).replace('\0', " ");
                if c.contains(prefix) {
                    v.push(format!("process {pid}: {c}"));
                }
            }
        }
    }
    if let Ok(rd) = std::fs::read_dir("/var/run/wireguard") {
        for e in rd.flatten() {
            if e.file_name().to_string_lossy().starts_with(prefix) {
                v.push(format!("file {}", e.path().display()));
            }
        }
    }
    if Path::new("/tmp").join(prefix).exists()
        && std::env::var_os("RELAY_TESTS_KEEP_LOGS").is_none()
    {
        v.push(format!("dir /tmp/{prefix}"));
    }
    v
}

/// Remove `/var/run/wireguard/<prefix>*` (stale sockets of our interfaces).
pub fn remove_wg_sockets(prefix: &str) {
    if let Ok(rd) = std::fs::read_dir("/var/run/wireguard") {
        for e in rd.flatten() {
            if e.file_name().to_string_lossy().starts_with(prefix) {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
}
