//! The hub under test: the real relayhub binary, or (baseline / harness
//! self-check) plain wireguard-go as a decrypting routing hub.

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use crate::cmd::{self, Proc};
use crate::netns::Netns;
use crate::prom::Metrics;
use crate::topology::{HUB_PORT, Topology};
use crate::wg::{self, WgQuick};

/// Which hub runs in the hub namespace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HubKind {
    /// The real relayhub binary: relays spoke-to-spoke frames without
    /// decrypting them.
    Relayhub,
    /// The predecessor architecture: wireguard-go on the hub, routing between
    /// spokes by AllowedIPs with ip_forward on (decrypts and re-encrypts every
    /// spoke-to-spoke packet). Benchmark baseline and harness self-check.
    DecryptingWireguardGo,
}

/// Default overlay network and the hub's address in it.
pub const HUB_TUNNEL_ADDR: Ipv4Addr = Ipv4Addr::new(10, 88, 0, 1);
/// Metrics/API address inside the hub namespace.
pub const METRICS_ADDR: &str = "127.0.0.1:9851";

/// Where the relayhub binary is: `$RELAYHUB_BIN`, else release then debug
/// under `$CARGO_TARGET_DIR` (run or build time) and `<workspace>/target`.
pub fn relayhub_bin() -> anyhow::Result<PathBuf> {
    if let Some(p) = std::env::var_os("RELAYHUB_BIN") {
        let p = PathBuf::from(p);
        anyhow::ensure!(p.is_file(), "RELAYHUB_BIN={} does not exist", p.display());
        return Ok(p);
    }
    let workspace = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut dirs: Vec<PathBuf> = Vec::new();
    if let Some(d) = std::env::var_os("CARGO_TARGET_DIR") {
        dirs.push(d.into());
    }
    if let Some(d) = option_env!("CARGO_TARGET_DIR") {
        dirs.push(d.into());
    }
    dirs.push(workspace.join("target"));
    let mut tried = Vec::new();
    for profile in ["release", "debug"] {
        for d in &dirs {
            let p = d.join(profile).join("relayhub");
            if p.is_file() {
                return Ok(p);
            }
            tried.push(p.display().to_string());
        }
    }
    bail!(
        "relayhub binary not found (tried {}); build it with `cargo build --release -p relay-user` \
         or `cargo xtask build`, or set RELAYHUB_BIN",
        tried.join(", ")
    )
}

/// Does this relayhub binary have the `run` subcommand (i.e. is it the hub,
/// not an early skeleton)?
pub fn relayhub_has_run(bin: &std::path::Path) -> bool {
    let Some(b) = bin.to_str() else { return false };
    cmd::run_timeout(&[b, "--help"], Duration::from_secs(10))
        .map(|o| {
            o.success()
                && o.stdout
                    .lines()
                    .any(|l| l.trim_start().starts_with("run ") || l.trim() == "run")
        })
        .unwrap_or(false)
}

/// The hub process(es) in the topology's hub namespace. Stopped on drop.
pub struct Hub<'t> {
    pub kind: HubKind,
    ns: &'t Netns,
    pub nic: String,
    /// The hub's own WireGuard interface (in the hub namespace).
    pub wg_iface: String,
    pub endpoint: String,
    /// The hub's IPv6 endpoint (dual-stack topologies).
    pub endpoint6: String,
    pub state_dir: PathBuf,
    workdir: PathBuf,
    bin: Option<PathBuf>,
    proc: Option<Proc>,
    wg: Option<WgQuick>,
    hub_public: String,
    next_host: u8,
    pub start_time: Duration,
    /// `--store X` from the run options: every CLI call gets it too, so it
    /// works on the hub's store.
    store_args: Vec<String>,
}

/// What happened when the hub was stopped.
#[derive(Debug)]
pub struct StopReport {
    pub clean_exit: bool,
    pub status: String,
    pub wg_iface_removed: bool,
    pub xdp_detached: bool,
}

impl<'t> Hub<'t> {
    /// Start the hub and wait until it is ready (relayhub: GET /healthz is
    /// 200; wireguard-go: interface up).
    pub fn start(topo: &'t Topology, kind: HubKind) -> anyhow::Result<Hub<'t>> {
        Self::start_with(topo, kind, &[])
    }

    /// [`Hub::start`] with extra `relayhub run` options (relayhub only).
    pub fn start_with(
        topo: &'t Topology,
        kind: HubKind,
        run_args: &[&str],
    ) -> anyhow::Result<Hub<'t>> {
        let t0 = Instant::now();
        let state_dir = topo.workdir.join("state");
        std::fs::create_dir_all(&state_dir)?;
        std::fs::set_permissions(
            &state_dir,
            std::os::unix::fs::PermissionsExt::from_mode(0o700),
        )?;
        let mut hub = Hub {
            kind,
            ns: &topo.hub,
            nic: topo.hub_nic.clone(),
            wg_iface: format!("{}wg", topo.prefix),
            endpoint: topo.hub_endpoint(),
            endpoint6: topo.hub_endpoint6(),
            state_dir,
            workdir: topo.workdir.clone(),
            bin: None,
            proc: None,
            wg: None,
            hub_public: String::new(),
            next_host: 2,
            start_time: Duration::ZERO,
            store_args: Vec::new(),
        };
        match kind {
            HubKind::Relayhub => hub.start_relayhub(run_args)?,
            HubKind::DecryptingWireguardGo => hub.start_decrypting()?,
        }
        hub.start_time = t0.elapsed();
        eprintln!("[hub] {kind:?} ready in {:?}", hub.start_time);
        Ok(hub)
    }

    fn start_relayhub(&mut self, run_args: &[&str]) -> anyhow::Result<()> {
        let bin = relayhub_bin()?;
        anyhow::ensure!(
            relayhub_has_run(&bin),
            "{} has no `run` subcommand in --help: not the hub yet (rebuild it?)",
            bin.display()
        );
        eprintln!("[hub] relayhub binary: {}", bin.display());
        let bin_s = bin.to_str().context("utf-8 path")?.to_string();
        let state = self.state_dir.to_str().context("utf-8 path")?.to_string();
        let rust_log = std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into());
        let rust_log = format!("RUST_LOG={rust_log}");
        let mut argv = vec![
            "env",
            &rust_log,
            "NO_COLOR=1",
            &bin_s,
            "--state-dir",
            &state,
            "run",
            "--iface",
            &self.nic,
            "--wg-iface",
            &self.wg_iface,
        ];
        // Loopback unless the test binds the API elsewhere (it then still
        // answers on METRICS_ADDR's port on loopback).
        if !run_args.contains(&"--metrics-addr") {
            argv.extend(["--metrics-addr", METRICS_ADDR]);
        }
        argv.extend_from_slice(run_args);
        // Global options the CLI must be given as the hub was.
        self.store_args = ["--store", "--network6"]
            .iter()
            .filter_map(|flag| run_args.iter().position(|a| a == flag))
            .flat_map(|i| run_args[i..(i + 2).min(run_args.len())].iter())
            .map(|s| s.to_string())
            .collect();
        let mut proc = self.ns.spawn("relayhub", &argv, &self.workdir, false)?;
        let url = format!("http://{METRICS_ADDR}/healthz");
        let ns = self.ns;
        let res = cmd::wait_for(
            "relayhub /healthz",
            Duration::from_secs(20),
            Duration::from_millis(50),
            || {
                if let Some(st) = proc.try_exit() {
                    bail!(
                        "relayhub exited ({st}) before becoming ready:\n{}",
                        proc.stderr_tail(40)
                    );
                }
                let o = ns.output(
                    &["curl", "-fsS", "-m", "1", "-o", "/dev/null", &url],
                    Duration::from_secs(5),
                )?;
                Ok(o.success().then_some(()))
            },
        );
        if let Err(e) = res {
            let tail = proc.stderr_tail(40);
            return Err(e.context(format!("relayhub log tail:\n{tail}")));
        }
        self.bin = Some(bin);
        self.proc = Some(proc);
        Ok(())
    }

    fn start_decrypting(&mut self) -> anyhow::Result<()> {
        let (private, public) = wg::genkey()?;
        self.hub_public = public;
        self.ns.sysctl("net.ipv4.ip_forward", "1")?;
        let text = format!(
            "[Interface]\nPrivateKey = {private}\nAddress = {HUB_TUNNEL_ADDR}/24\nListenPort = {HUB_PORT}\n"
        );
        self.wg = Some(WgQuick::up(self.ns, &self.wg_iface, &text, &self.workdir)?);
        Ok(())
    }

    /// The relayhub's pid (for signals), while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.proc.as_ref().map(Proc::pid)
    }

    /// SIGKILL the hub's relayhub (a failure, not a stop: nothing is
    /// cleaned up) and forget it; [`Hub::restart`] starts it again.
    pub fn kill(&mut self) {
        if let Some(mut p) = self.proc.take() {
            cmd::signal(p.pid(), libc::SIGKILL);
            p.stop(Duration::from_secs(5));
        }
    }

    /// Stop the hub (SIGTERM; it removes its interface and detaches XDP)
    /// and start it again on the same state directory, with `run_args`.
    pub fn restart(&mut self, run_args: &[&str]) -> anyhow::Result<Duration> {
        anyhow::ensure!(self.kind == HubKind::Relayhub, "relayhub only");
        let t0 = Instant::now();
        if let Some(mut p) = self.proc.take() {
            let (st, in_time) = p.stop(Duration::from_secs(10));
            anyhow::ensure!(
                in_time && st.is_some_and(|s| s.success()),
                "relayhub did not stop cleanly for a restart: {st:?}\n{}",
                p.stderr_tail(20)
            );
        }
        self.start_relayhub(run_args)?;
        Ok(t0.elapsed())
    }

    fn relayhub(&self, args: &[&str]) -> anyhow::Result<String> {
        let bin = self
            .bin
            .as_ref()
            .context("relayhub not started")?
            .to_str()
            .context("utf-8")?;
        let state = self.state_dir.to_str().context("utf-8 path")?;
        let mut argv = vec![bin, "--state-dir", state];
        argv.extend(self.store_args.iter().map(String::as_str));
        argv.extend_from_slice(args);
        // In the hub namespace in case the CLI talks to the running hub.
        self.ns.output(&argv, Duration::from_secs(20))?.checked()
    }

    /// Register a spoke; returns its complete wg-quick file.
    pub fn add_spoke(&mut self, name: &str) -> anyhow::Result<String> {
        match self.kind {
            HubKind::Relayhub => {
                let text = self.relayhub(&["spoke", "add", name, "--endpoint", &self.endpoint])?;
                anyhow::ensure!(
                    text.contains("PrivateKey") && text.contains("[Peer]"),
                    "`spoke add {name}` printed no complete wg-quick file:\n{text}"
                );
                Ok(text)
            }
            HubKind::DecryptingWireguardGo => {
                let (private, public) = wg::genkey()?;
                let addr = Ipv4Addr::new(10, 88, 0, self.next_host);
                self.next_host += 1;
                self.ns.exec(&[
                    "wg",
                    "set",
                    &self.wg_iface,
                    "peer",
                    &public,
                    "allowed-ips",
                    &format!("{addr}/32"),
                ])?;
                Ok(format!(
                    "[Interface]\nPrivateKey = {private}\nAddress = {addr}/32\n\n\
                     [Peer]\nPublicKey = {}\nAllowedIPs = 10.88.0.0/24\nEndpoint = {}\nPersistentKeepalive = 25\n",
                    self.hub_public, self.endpoint
                ))
            }
        }
    }

    /// Register an IPv6-only spoke (`spoke add NAME --family ipv6
    /// --endpoint [HUB6]:PORT`, relayhub only); returns its wg-quick file.
    pub fn add_spoke_ipv6(&mut self, name: &str) -> anyhow::Result<String> {
        anyhow::ensure!(self.kind == HubKind::Relayhub, "relayhub only");
        let text = self.relayhub(&[
            "spoke",
            "add",
            name,
            "--family",
            "ipv6",
            "--endpoint",
            &self.endpoint6,
        ])?;
        anyhow::ensure!(
            text.contains("PrivateKey") && text.contains("[Peer]"),
            "`spoke add {name} --family ipv6` printed no complete wg-quick file:\n{text}"
        );
        Ok(text)
    }

    /// The spoke's current wg-quick file (every spoke registered so far),
    /// with the private key taken from `add_text` (what `spoke add` printed).
    /// relayhub: `spoke config NAME` (which omits the key) plus that key;
    /// the wireguard-go hub: `add_text` itself (spokes only peer the hub).
    pub fn current_config(&self, name: &str, add_text: &str) -> anyhow::Result<String> {
        if self.kind != HubKind::Relayhub {
            return Ok(add_text.to_string());
        }
        let key = wg::conf_private_key(add_text).context("no PrivateKey in `spoke add` output")?;
        let conf = self.relayhub(&["spoke", "config", name, "--endpoint", &self.endpoint])?;
        anyhow::ensure!(
            !conf.contains(&key),
            "`spoke config {name}` printed the spoke's private key"
        );
        wg::with_private_key(&conf, &key)
    }

    /// Wait (bounded) until the hub's own WireGuard lists every key as a
    /// peer: it picks up registry changes asynchronously, and a spoke's
    /// first handshake before that would cost a 5 s retry.
    pub fn wait_for_peers(&self, keys: &[String]) -> anyhow::Result<()> {
        cmd::wait_for(
            "the hub's WireGuard to list every spoke as a peer",
            Duration::from_secs(10),
            Duration::from_millis(20),
            || {
                let peers = self.ns.exec(&["wg", "show", &self.wg_iface, "peers"])?;
                Ok(keys
                    .iter()
                    .all(|k| peers.contains(k.as_str()))
                    .then_some(()))
            },
        )
    }

    /// `spoke config|list|remove` etc. (relayhub only).
    pub fn cli(&self, args: &[&str]) -> anyhow::Result<String> {
        anyhow::ensure!(
            self.kind == HubKind::Relayhub,
            "CLI only exists for relayhub"
        );
        self.relayhub(args)
    }

    /// Scrape /metrics (relayhub); empty for the wireguard-go hub.
    pub fn metrics(&self) -> anyhow::Result<Metrics> {
        if self.kind != HubKind::Relayhub {
            return Ok(Metrics::default());
        }
        let url = format!("http://{METRICS_ADDR}/metrics");
        let text = self
            .ns
            .output(&["curl", "-fsS", "-m", "3", &url], Duration::from_secs(10))?
            .checked()?;
        Ok(Metrics::parse(&text))
    }

    /// GET /healthz: (status code, body).
    pub fn health(&self) -> anyhow::Result<(u16, String)> {
        let url = format!("http://{METRICS_ADDR}/healthz");
        let out = self
            .ns
            .output(
                &["curl", "-sS", "-m", "3", "-w", "\n%{http_code}", &url],
                Duration::from_secs(10),
            )?
            .checked()?;
        let (body, code) = out.trim_end().rsplit_once('\n').unwrap_or(("", out.trim()));
        Ok((code.parse().unwrap_or(0), format!("{}\n", body.trim_end())))
    }

    /// GET `path` of the hub's HTTP API (e.g. `/v1/spokes`) as JSON.
    pub fn api_json(&self, path: &str) -> anyhow::Result<serde_json::Value> {
        let url = format!("http://{METRICS_ADDR}{path}");
        let out = self
            .ns
            .output(&["curl", "-fsS", "-m", "3", &url], Duration::from_secs(10))?
            .checked()?;
        serde_json::from_str(&out).with_context(|| format!("{path}: not JSON: {out}"))
    }

    /// The hub's stderr so far (relayhub).
    pub fn log(&self) -> String {
        self.proc.as_ref().map(|p| p.stderr()).unwrap_or_default()
    }

    /// The last `n` lines of [`Hub::log`], for failure reports.
    pub fn log_tail(&self, n: usize) -> String {
        self.proc
            .as_ref()
            .map(|p| p.stderr_tail(n))
            .unwrap_or_default()
    }

    /// Is the hub process still running?
    pub fn alive(&mut self) -> bool {
        match &mut self.proc {
            Some(p) => p.try_exit().is_none(),
            None => true,
        }
    }

    /// Stop the hub (SIGTERM, bounded wait) and report whether it cleaned up
    /// its WireGuard interface and XDP program.
    pub fn stop(&mut self) -> StopReport {
        let (clean_exit, status) = match self.proc.as_mut() {
            Some(p) => {
                let (st, in_time) = p.stop(Duration::from_secs(10));
                (
                    in_time && st.is_some_and(|s| s.success()),
                    format!("{st:?}"),
                )
            }
            None => (true, "n/a".into()),
        };
        self.proc = None;
        if let Some(mut w) = self.wg.take() {
            w.down();
        }
        // A command that fails proves nothing: only a listing that lacks
        // the interface (or the program) counts as removed (detached).
        let wg_iface_removed = match self.ns.exec(&["ip", "-o", "link"]) {
            Ok(links) => !links.contains(&format!(": {}:", self.wg_iface)),
            Err(e) => {
                eprintln!("[hub] cannot list links to check the WireGuard interface: {e:#}");
                false
            }
        };
        let xdp_detached = match self.ns.exec(&["ip", "-d", "link", "show", &self.nic]) {
            Ok(nic) => !nic.contains("prog/xdp") && !nic.contains(" xdp"),
            Err(e) => {
                eprintln!("[hub] cannot show {} to check XDP: {e:#}", self.nic);
                false
            }
        };
        // Whatever the hub left behind is ours to remove.
        if !wg_iface_removed {
            let _ = self.ns.exec(&["ip", "link", "del", &self.wg_iface]);
        }
        wg::kill_userspace_wg(&self.wg_iface);
        let _ = std::fs::remove_file(format!("/var/run/wireguard/{}.sock", self.wg_iface));
        StopReport {
            clean_exit,
            status,
            wg_iface_removed,
            xdp_detached,
        }
    }
}

impl Drop for Hub<'_> {
    fn drop(&mut self) {
        if self.proc.is_some() || self.wg.is_some() {
            let r = self.stop();
            eprintln!("[hub] stopped on drop: {r:?}");
        }
    }
}
