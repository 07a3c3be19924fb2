//! Another hub beside the topology's, in its own namespace with a public
//! link to the router; the relayhub in it is started, stopped and
//! signalled by the test. Two shapes: a standby ([`HubHost::new`],
//! `<prefix>sb`, with a private link to the hub namespace for
//! replication; the replication and failover tests) and a peer hub of a
//! mesh ([`HubHost::peer`], its own address; the mesh tests).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use serde_json::Value;

use crate::Topology;
use crate::cmd::{self, Proc};
use crate::hub::relayhub_bin;
use crate::netns::{Netns, Veth};
use crate::topology::HUB_ADDR;

/// The hubs' addresses on their private link (a /30).
pub const ACTIVE_LINK: &str = "10.254.0.1";
pub const STANDBY_LINK: &str = "10.254.0.2";
/// `--replica-listen` port on both hubs.
pub const REPLICA_PORT: u16 = 51823;
/// The standby's metrics/API address (in its own namespace).
pub const STANDBY_METRICS: &str = "127.0.0.1:9851";
/// The router's and the standby's own addresses on the standby's public
/// link (a /30) when it is routed rather than bridged.
pub const ROUTER_PUBLIC: &str = "10.254.1.1";
const STANDBY_PUBLIC: &str = "10.254.1.2";

/// `HOST:PORT` of a hub's replication listener on the private link.
pub fn replica_addr(link_addr: &str) -> String {
    format!("{link_addr}:{REPLICA_PORT}")
}

/// The standby of the failover tests.
pub type StandbyHost = HubHost;

/// The host's namespace and links. Its relayhub is stopped on drop; the
/// namespace goes last (fields drop in order).
pub struct HubHost {
    /// Hub namespace (`a`) <-> standby (`b`), addressed (standby only).
    pub link: Option<Veth>,
    /// Router (`a`) <-> standby (`b`), not addressed until
    /// [`StandbyHost::route_public`] (or the test bridges it).
    pub public: Veth,
    pub wg_iface: String,
    /// The standby's own state directory (the hub key copied in).
    pub state: PathBuf,
    workdir: PathBuf,
    xdp_pass: Option<Proc>,
    proc: Option<Proc>,
    starts: u32,
    pub ns: Netns,
}

impl HubHost {
    /// A mesh peer hub named `name` (`k` = 1, 2, ...): its namespace
    /// `<prefix><name>` on a /30 to the router, 10.254.(20+k).2 its own
    /// address (and endpoint), the router's end 10.254.(20+k).1.
    pub fn peer(topo: &Topology, name: &str, k: u8, xdp_pass: &str) -> anyhow::Result<HubHost> {
        let p = &topo.prefix;
        let ns = Netns::new(&format!("{p}{name}"))?;
        let public = Veth::new(
            &format!("{p}x{name}"),
            &topo.router,
            &format!("{p}y{name}"),
            &ns,
        )?;
        let (router, own) = (
            format!("10.254.{}.1", 20 + k),
            format!("10.254.{}.2", 20 + k),
        );
        topo.router.exec(&[
            "ip",
            "addr",
            "add",
            &format!("{router}/30"),
            "dev",
            &public.a,
        ])?;
        ns.exec(&["ip", "addr", "add", &format!("{own}/30"), "dev", &public.b])?;
        ns.exec(&["ip", "route", "add", "default", "via", &router])?;
        ns.sysctl("net.ipv4.ip_forward", "1")?;
        Self::finish(topo, ns, None, public, name, xdp_pass)
    }

    /// A peer hub's own address (its endpoint's IP; see [`HubHost::peer`]).
    pub fn peer_addr(k: u8) -> String {
        format!("10.254.{}.2", 20 + k)
    }

    /// The router's address on a peer hub's link.
    pub fn peer_router_addr(k: u8) -> String {
        format!("10.254.{}.1", 20 + k)
    }

    fn finish(
        topo: &Topology,
        ns: Netns,
        link: Option<Veth>,
        public: Veth,
        name: &str,
        xdp_pass: &str,
    ) -> anyhow::Result<HubHost> {
        let mut pass = topo.router.spawn(
            &format!("xdp-pass-{name}"),
            &[xdp_pass, public.a.as_str()],
            &topo.workdir,
            true,
        )?;
        pass.wait_output("attached", Duration::from_secs(10))?;
        let state = topo.workdir.join(format!("{name}-state"));
        std::fs::create_dir_all(&state)?;
        std::fs::set_permissions(&state, std::os::unix::fs::PermissionsExt::from_mode(0o700))?;
        Ok(HubHost {
            ns,
            link,
            public,
            wg_iface: format!("{}w{name}", topo.prefix),
            state,
            workdir: topo.workdir.clone(),
            xdp_pass: Some(pass),
            proc: None,
            starts: 0,
        })
    }

    /// The standby: build the namespace and both links; `xdp_pass` (the
    /// test's `CARGO_BIN_EXE_xdp-pass`) goes on the router's end of the
    /// public link, where the standby's XDP_TX frames arrive.
    pub fn new(topo: &Topology, xdp_pass: &str) -> anyhow::Result<HubHost> {
        let p = &topo.prefix;
        let ns = Netns::new(&format!("{p}sb"))?;
        let link = Veth::new(&format!("{p}ra"), &topo.hub, &format!("{p}rb"), &ns)?;
        topo.hub.exec(&[
            "ip",
            "addr",
            "add",
            &format!("{ACTIVE_LINK}/30"),
            "dev",
            &link.a,
        ])?;
        ns.exec(&[
            "ip",
            "addr",
            "add",
            &format!("{STANDBY_LINK}/30"),
            "dev",
            &link.b,
        ])?;
        let public = Veth::new(&format!("{p}rp"), &topo.router, &format!("{p}sp"), &ns)?;
        let mut h = Self::finish(topo, ns, Some(link), public, "standby", xdp_pass)?;
        h.wg_iface = format!("{p}wg2");
        Ok(h)
    }

    /// The standby holds the hub's address on its public link from the
    /// start (listed first: the address its XDP program relays for) but the
    /// router sends nothing there until its route moves. With `src_hub`,
    /// the default route's source is the hub's address (what the notify
    /// script sets on promotion): the standby's WireGuard then initiates
    /// from the address the spokes' NATs have mappings for.
    pub fn route_public(&self, topo: &Topology, src_hub: bool) -> anyhow::Result<()> {
        let dev = &self.public.b;
        let ns = &self.ns;
        ns.exec(&["ip", "addr", "add", &format!("{HUB_ADDR}/32"), "dev", dev])?;
        ns.exec(&[
            "ip",
            "addr",
            "add",
            &format!("{STANDBY_PUBLIC}/30"),
            "dev",
            dev,
        ])?;
        let hub = HUB_ADDR.to_string();
        let mut route = vec!["ip", "route", "add", "default", "via", ROUTER_PUBLIC];
        if src_hub {
            route.extend(["src", hub.as_str()]);
        }
        ns.exec(&route)?;
        ns.sysctl("net.ipv4.ip_forward", "1")?;
        topo.router.exec(&[
            "ip",
            "addr",
            "add",
            &format!("{ROUTER_PUBLIC}/30"),
            "dev",
            &self.public.a,
        ])?;
        Ok(())
    }

    /// Copy the files a second hub needs from the first hub's state
    /// directory (README, Shared store): the hub key and the enrollment
    /// identity. With a state-directory store, `all` copies the registry
    /// and the rest too.
    pub fn copy_state(&self, from: &Path, all: bool) -> anyhow::Result<()> {
        let names: Vec<String> = if all {
            std::fs::read_dir(from)?
                .filter_map(Result::ok)
                .filter(|e| e.path().is_file())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        } else {
            vec!["hub.key".into(), "enroll.pem".into()]
        };
        for n in names {
            std::fs::copy(from.join(&n), self.state.join(&n)).with_context(|| n.clone())?;
        }
        Ok(())
    }

    /// Start relayhub in the namespace with `args` after `run --iface ...`
    /// (`--store`, `--standby-of`, `--replica-listen`, ...); returns when
    /// its API answers.
    pub fn start(&mut self, global: &[&str], args: &[&str]) -> anyhow::Result<()> {
        anyhow::ensure!(self.proc.is_none(), "the standby's relayhub is running");
        let bin = relayhub_bin()?;
        let mut argv: Vec<&str> = vec![
            "env",
            "RUST_LOG=info",
            "NO_COLOR=1",
            bin.to_str().context("utf-8")?,
            "--state-dir",
            self.state.to_str().context("utf-8")?,
        ];
        argv.extend_from_slice(global);
        argv.extend_from_slice(&[
            "run",
            "--iface",
            &self.public.b,
            "--wg-iface",
            &self.wg_iface,
            "--metrics-addr",
            STANDBY_METRICS,
            "--peers-port",
            "0",
        ]);
        argv.extend_from_slice(args);
        self.starts += 1;
        let name = format!("relayhub-{}-{}", self.ns.name, self.starts);
        let mut p = self.ns.spawn(&name, &argv, &self.workdir, false)?;
        let r = cmd::wait_for(
            "the standby's API",
            Duration::from_secs(20),
            Duration::from_millis(50),
            || {
                if let Some(st) = p.try_exit() {
                    anyhow::bail!("standby exited ({st}):\n{}", p.stderr_tail(30));
                }
                Ok(self.api("/healthz").ok().map(|_| ()))
            },
        );
        self.proc = Some(p);
        r.map(|_| ())
    }

    pub fn pid(&self) -> Option<u32> {
        self.proc.as_ref().map(Proc::pid)
    }

    /// SIGUSR1 (promote) or SIGUSR2 (demote), as keepalived's notify
    /// scripts send them.
    pub fn signal(&self, sig: i32) -> anyhow::Result<()> {
        let pid = self
            .pid()
            .context("the standby's relayhub is not running")?;
        cmd::signal(pid, sig);
        Ok(())
    }

    /// GET a path of the standby's API.
    pub fn api(&self, path: &str) -> anyhow::Result<String> {
        let url = format!("http://{STANDBY_METRICS}{path}");
        let out = self
            .ns
            .output(&["curl", "-fsS", "-m", "1", &url], Duration::from_secs(3))?;
        anyhow::ensure!(out.success(), "standby {path}: {}", out.stderr);
        Ok(out.stdout)
    }

    /// `replication` of the standby's `/v1/hub`.
    pub fn status(&self) -> anyhow::Result<Value> {
        Ok(serde_json::from_str::<Value>(&self.api("/v1/hub")?)?["replication"].clone())
    }

    pub fn metrics(&self) -> anyhow::Result<crate::prom::Metrics> {
        Ok(crate::prom::Metrics::parse(&self.api("/metrics")?))
    }

    /// Wait until the standby follows the hub it was pointed at and holds
    /// at least `endpoints` endpoints and `sessions` sessions; how long.
    pub fn wait_following(&mut self, endpoints: u64, sessions: u64) -> anyhow::Result<Duration> {
        let t0 = Instant::now();
        let r = cmd::wait_for(
            "the standby to follow the active",
            Duration::from_secs(20),
            Duration::from_millis(20),
            || {
                if let Some(p) = self.proc.as_mut()
                    && let Some(st) = p.try_exit()
                {
                    anyhow::bail!("standby exited ({st}):\n{}", p.stderr_tail(30));
                }
                Ok(self
                    .status()
                    .ok()
                    .filter(|r| {
                        r["role"] == "standby"
                            && r["connected"] == 1
                            && r["endpoints"].as_u64().unwrap_or(0) >= endpoints
                            && r["sessions"].as_u64().unwrap_or(0) >= sessions
                    })
                    .map(|_| ()))
            },
        );
        r.map(|_| t0.elapsed())
    }

    /// The relayhub's stderr tail (empty when not running).
    pub fn log_tail(&self, n: usize) -> String {
        self.proc
            .as_ref()
            .map(|p| p.stderr_tail(n))
            .unwrap_or_default()
    }

    /// Stop the relayhub (SIGTERM, bounded); whether it exited cleanly.
    pub fn stop(&mut self) -> (String, bool) {
        match self.proc.take() {
            Some(mut p) => {
                let (st, in_time) = p.stop(Duration::from_secs(10));
                (
                    format!("{st:?}"),
                    in_time && st.is_some_and(|s| s.success()),
                )
            }
            None => ("not running".into(), true),
        }
    }
}

impl Drop for HubHost {
    fn drop(&mut self) {
        self.stop();
        if let Some(mut p) = self.xdp_pass.take() {
            p.stop(Duration::from_secs(2));
        }
    }
}
