//! End-to-end test harness for relayhub.
//!
//! Everything here is a guard: namespaces, veths, background processes,
//! WireGuard interfaces and the hub are removed when dropped, also when a
//! test panics. Every name carries a per-test prefix (`rh` + 4 hex digits)
//! so concurrent tests and leftovers never collide.
//!
//! - [`topology::Topology`]: hub behind a router, spokes behind NATs.
//! - [`hub::Hub`]: the real relayhub binary, or wireguard-go as a decrypting
//!   hub ([`hub::HubKind`]).
//! - [`wg::WgQuick`]: a stock wg-quick/wireguard-go spoke.
//! - [`guest::Guest`]: a kernel WireGuard spoke in a QEMU guest on a
//!   spoke's LAN.
//! - [`capture::Capture`]: tcpdump; [`prom::Metrics`]: /metrics parser.

pub mod browser;
pub mod capture;
pub mod guest;
pub mod hub;
pub mod inject;
pub mod mesh;
// Commands and namespaces live in the test toolkit; re-exported so the
// harness and the tests keep one path for them.
pub use testkit::{cmd, netns};
pub mod prom;
pub mod sessions;
pub mod standby;
pub mod topology;
pub mod wg;

pub use hub::{Hub, HubKind};
pub use topology::Topology;

/// The usual shape of a relayhub end-to-end test: build the topology,
/// start the real hub, run `checks`, print the hub's log tail if they fail,
/// stop the hub (it must exit cleanly, with its WireGuard interface removed
/// and XDP detached), tear everything down and check that nothing is left
/// behind. Panics with the whole error chain on failure.
pub fn relayhub_scenario(
    name: &str,
    builder: topology::TopologyBuilder,
    checks: impl FnOnce(&Topology, &mut Hub<'_>) -> anyhow::Result<()>,
) {
    relayhub_scenario_with(name, builder, &[], checks)
}

/// [`relayhub_scenario`] with extra `relayhub run` options.
pub fn relayhub_scenario_with(
    name: &str,
    builder: topology::TopologyBuilder,
    run_args: &[&str],
    checks: impl FnOnce(&Topology, &mut Hub<'_>) -> anyhow::Result<()>,
) {
    cmd::require_root();
    let run = move || -> anyhow::Result<String> {
        let topo = builder.build()?;
        let prefix = topo.prefix.clone();
        let mut hub = Hub::start_with(&topo, HubKind::Relayhub, run_args)?;
        let result = checks(&topo, &mut hub);
        if result.is_err() {
            eprintln!("hub log tail:\n{}", hub.log_tail(50));
        }
        let report = hub.stop();
        result?;
        anyhow::ensure!(report.clean_exit, "hub did not exit cleanly: {report:?}");
        anyhow::ensure!(
            report.wg_iface_removed && report.xdp_detached,
            "hub left state behind: {report:?}"
        );
        drop(hub);
        drop(topo);
        Ok(prefix)
    };
    let prefix = run().unwrap_or_else(|e| panic!("{name} failed: {e:#}"));
    let left = topology::leftovers(&prefix);
    assert!(left.is_empty(), "cleanup left:\n{}", left.join("\n"));
    eprintln!("[{prefix}] {name}: cleanup left nothing behind");
}

impl Topology {
    /// iperf3 (TCP, `secs` seconds) from spoke `client` to spoke `server`
    /// listening on tunnel address `addr`: (received bits/s, received bytes).
    pub fn iperf(
        &self,
        server: usize,
        client: usize,
        addr: &str,
        secs: u32,
    ) -> anyhow::Result<(f64, u64)> {
        use anyhow::Context as _;
        use std::time::Duration;
        let _srv = self.iperf3_server(server, addr, &[])?;
        let out = self.spokes[client]
            .ns
            .output(
                &[
                    "iperf3",
                    "-c",
                    addr,
                    "-t",
                    &secs.to_string(),
                    "-J",
                    "--connect-timeout",
                    "3000",
                ],
                Duration::from_secs(u64::from(secs) + 27),
            )?
            .checked()?;
        let v: serde_json::Value = serde_json::from_str(&out).context("iperf3 -J output")?;
        let sum = &v["end"]["sum_received"];
        let bps = sum["bits_per_second"]
            .as_f64()
            .context("no end.sum_received.bits_per_second")?;
        Ok((bps, sum["bytes"].as_u64().unwrap_or(0)))
    }

    /// A one-shot iperf3 server in spoke `server`'s namespace bound to
    /// `addr`, listening when this returns (killed when the handle drops).
    /// `prefix` goes before the command (e.g. `taskset -c 1`).
    pub fn iperf3_server(
        &self,
        server: usize,
        addr: &str,
        prefix: &[&str],
    ) -> anyhow::Result<cmd::Proc> {
        use std::time::Duration;
        let ns = &self.spokes[server].ns;
        let mut argv = prefix.to_vec();
        argv.extend_from_slice(&["iperf3", "-s", "-1", "-B", addr]);
        let proc = ns.spawn("iperf3-server", &argv, &self.workdir, false)?;
        cmd::wait_for(
            "iperf3 server listening",
            Duration::from_secs(5),
            Duration::from_millis(30),
            || {
                Ok(ns
                    .exec(&["ss", "-ltnH", "sport", "= :5201"])?
                    .contains("5201")
                    .then_some(()))
            },
        )?;
        Ok(proc)
    }

    /// Bring up spoke `i` (0-based) with the wg-quick file `text`, as
    /// interface `<prefix><spoke name>` (unique machine-wide).
    pub fn spoke_up(&self, i: usize, text: &str) -> anyhow::Result<wg::WgQuick> {
        self.spoke_up_with(i, text, wg::Client::WireguardGo)
    }

    /// [`Topology::spoke_up`] on `client`.
    pub fn spoke_up_with(
        &self,
        i: usize,
        text: &str,
        client: wg::Client,
    ) -> anyhow::Result<wg::WgQuick> {
        let s = &self.spokes[i];
        wg::WgQuick::up_with(
            &s.ns,
            &format!("{}{}", self.prefix, s.name),
            text,
            &self.workdir,
            client,
        )
    }
}
