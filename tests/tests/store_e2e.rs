//! The hub on the shared store (etcd, run in the hub's namespace on its
//! loopback): a spoke added by another hub's CLI (its own state directory,
//! the hub key copied as README says) is a peer of the running hub within
//! about a second, and so is a policy change; with etcd stopped the hub
//! keeps relaying, /healthz stays 200 but says "degraded", the metric says
//! 0 and the CLI fails with one line naming the store; once etcd is back
//! the hub says ok again and picks up a spoke added after the outage. The
//! hub lists itself under hubs/ while it runs.
//!
//! Run as root: `cargo test -p relay-tests --release --test store_e2e -- --nocapture`.

use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use relay_tests::hub::{HUB_TUNNEL_ADDR, relayhub_bin};
use relay_tests::mesh::Mesh;
use relay_tests::topology::leftovers;
use relay_tests::{Hub, HubKind, Topology, cmd, wg};
use testkit::etcd::Etcd;

/// README: the hubs see another hub's CLI change "within about a second"
/// (polled every 250 ms); the margin is for a loaded 2-core machine.
const PICKUP_BUDGET: Duration = Duration::from_millis(1500);
/// A stopped etcd refuses connections: seen at the next poll.
const DETECT_BUDGET: Duration = Duration::from_secs(2);
/// A frozen one answers nothing: seen after a poll and a call timeout (2 s).
const FROZEN_BUDGET: Duration = Duration::from_secs(4);

#[test]
fn store_e2e() {
    cmd::require_root();
    let prefix = run().unwrap_or_else(|e| panic!("store_e2e failed: {e:#}"));
    let left = leftovers(&prefix);
    assert!(left.is_empty(), "cleanup left:\n{}", left.join("\n"));
    eprintln!("[{prefix}] store_e2e: cleanup left nothing behind");
}

fn run() -> anyhow::Result<String> {
    let topo = Topology::builder()
        .spokes(3)
        .xdp_pass(env!("CARGO_BIN_EXE_xdp-pass"))
        .build()?;
    let prefix = topo.prefix.clone();
    // Dropped before the topology (its data is under the workdir).
    let mut etcd = Etcd::start_in(&format!("{prefix}etcd"), &topo.workdir, Some(&topo.hub))?;
    let url = etcd.url();
    let mut hub = Hub::start_with(&topo, HubKind::Relayhub, &["--store", &url])?;
    let result = checks(&topo, &mut hub, &mut etcd, &url);
    if result.is_err() {
        eprintln!("hub log tail:\n{}", hub.log_tail(50));
    }
    let report = hub.stop();
    result?;
    ensure!(report.clean_exit, "hub did not exit cleanly: {report:?}");
    ensure!(
        report.wg_iface_removed && report.xdp_detached,
        "hub left state behind: {report:?}"
    );
    drop(hub);
    drop(etcd);
    drop(topo);
    Ok(prefix)
}

/// The CLI of a second hub on the same store: its own state directory
/// with the first hub's key and TLS identity copied in.
struct OtherHub<'t> {
    topo: &'t Topology,
    state: String,
    url: String,
    bin: String,
}

impl OtherHub<'_> {
    fn output(&self, args: &[&str]) -> anyhow::Result<cmd::Output> {
        let mut argv = vec![
            self.bin.as_str(),
            "--state-dir",
            &self.state,
            "--store",
            &self.url,
        ];
        argv.extend_from_slice(args);
        self.topo.hub.output(&argv, Duration::from_secs(20))
    }

    fn cli(&self, args: &[&str]) -> anyhow::Result<String> {
        self.output(args)?.checked()
    }
}

/// Wait (bounded) until the hub's WireGuard lists `key`; how long it took.
fn until_peer(hub: &Hub<'_>, topo: &Topology, key: &str, t0: Instant) -> anyhow::Result<Duration> {
    cmd::wait_for(
        "the hub's WireGuard to list the new spoke",
        Duration::from_secs(10),
        Duration::from_millis(10),
        || {
            let peers = topo.hub.exec(&["wg", "show", &hub.wg_iface, "peers"])?;
            Ok(peers.contains(key).then_some(()))
        },
    )?;
    Ok(t0.elapsed())
}

fn store_up(hub: &Hub<'_>) -> anyhow::Result<f64> {
    Ok(hub
        .metrics()?
        .value("relayhub_store_up", &[("backend", "etcd")]))
}

fn checks(topo: &Topology, hub: &mut Hub<'_>, etcd: &mut Etcd, url: &str) -> anyhow::Result<()> {
    let h = hub.health()?;
    ensure!(h == (200, "ok\n".into()), "healthz at start: {h:?}");
    ensure!(store_up(hub)? == 1.0, "relayhub_store_up at start");
    let info = hub.api_json("/v1/hub")?;
    ensure!(
        info["store"] == format!("{url}/relayhub/") && info["store_up"] == true,
        "/v1/hub: {info}"
    );
    let hubs = hub.cli(&["store", "hubs"])?;
    ensure!(
        hubs.lines().count() == 2 && hubs.contains(&format!("-{} ", hub.wg_iface)),
        "store hubs:\n{hubs}"
    );
    // s1, s2 through the hub's own CLI (on etcd), up and talking.
    let mesh = Mesh::up_first(topo, hub, 2)?;
    ensure!(
        !hub.state_dir.join("spokes.json").exists(),
        "the registry went to the state directory"
    );

    // A second hub's admin: another state directory, the key copied.
    let other_dir = topo.workdir.join("state-b");
    std::fs::create_dir_all(&other_dir)?;
    std::fs::set_permissions(
        &other_dir,
        std::os::unix::fs::PermissionsExt::from_mode(0o700),
    )?;
    for f in ["hub.key", "enroll.pem"] {
        std::fs::copy(hub.state_dir.join(f), other_dir.join(f)).with_context(|| f.to_string())?;
    }
    let other = OtherHub {
        topo,
        state: other_dir.to_str().context("utf-8")?.to_owned(),
        url: url.to_owned(),
        bin: relayhub_bin()?.to_str().context("utf-8")?.to_owned(),
    };
    let s3 = other.cli(&["spoke", "add", "s3", "--endpoint", &hub.endpoint])?;
    let t0 = Instant::now();
    let key3 = wg::conf_public_key(&s3)?;
    let took = until_peer(hub, topo, &key3, t0)?;
    eprintln!("[store] s3 added by the other hub's CLI: a peer of the hub after {took:?}");
    ensure!(took <= PICKUP_BUDGET, "picked up after {took:?}");
    let _s3 = topo.spoke_up(2, &s3)?;
    let hub_ip = HUB_TUNNEL_ADDR.to_string();
    cmd::wait_for(
        "s3 to ping the hub",
        Duration::from_secs(10),
        Duration::from_millis(20),
        || Ok(topo.spokes[2].ns.ping_once(&hub_ip).then_some(())),
    )?;

    // A policy change from the other hub applies here too.
    let applied = |h: &Hub<'_>| h.log().matches("policy applied").count();
    let before = applied(hub);
    other.cli(&["policy", "group", "ops", "s3"])?;
    let t0 = Instant::now();
    cmd::wait_for(
        "the hub to apply the other hub's policy change",
        Duration::from_secs(10),
        Duration::from_millis(10),
        || Ok((applied(hub) > before).then_some(())),
    )?;
    let took = t0.elapsed();
    eprintln!("[store] policy change by the other hub's CLI applied after {took:?}");
    ensure!(took <= PICKUP_BUDGET, "policy applied after {took:?}");

    // etcd stops answering (frozen: a partition) and then is gone: each
    // time the hub relays on, degraded, and says so.
    let (a, b) = (mesh.addrs[0].to_string(), mesh.addrs[1].to_string());
    for (how, budget) in [("frozen", FROZEN_BUDGET), ("stopped", DETECT_BUDGET)] {
        if how == "frozen" {
            etcd.pause();
        } else {
            etcd.stop();
        }
        let t0 = Instant::now();
        cmd::wait_for(
            "/healthz to say degraded",
            Duration::from_secs(10),
            Duration::from_millis(20),
            || {
                let (code, body) = hub.health()?;
                ensure!(
                    code == 200,
                    "healthz {code} while the store is down: {body}"
                );
                Ok(body
                    .starts_with("degraded: store unreachable")
                    .then_some(()))
            },
        )?;
        let took = t0.elapsed();
        eprintln!("[store] etcd {how}: /healthz degraded after {took:?}");
        ensure!(took <= budget, "outage seen after {took:?}");
        ensure!(
            store_up(hub)? == 0.0,
            "relayhub_store_up while etcd is down"
        );
        ensure!(
            hub.api_json("/v1/hub")?["store_up"] == false,
            "/v1/hub store_up"
        );
        let p = topo.spokes[0].ns.ping(&b, 10, 0.2)?;
        ensure!(p.lost() == 0, "s1 -> s2 while etcd is {how}: {p:?}");
        let p = topo.spokes[1].ns.ping(&a, 5, 0.2)?;
        ensure!(p.lost() == 0, "s2 -> s1 while etcd is {how}: {p:?}");
        let p = topo.spokes[2].ns.ping(&hub_ip, 5, 0.2)?;
        ensure!(p.lost() == 0, "s3 -> hub while etcd is {how}: {p:?}");
        if how == "frozen" {
            etcd.resume();
            let t0 = Instant::now();
            cmd::wait_for(
                "/healthz to say ok again",
                Duration::from_secs(10),
                Duration::from_millis(20),
                || Ok((hub.health()? == (200, "ok\n".into())).then_some(())),
            )?;
            eprintln!("[store] etcd thawed: /healthz ok after {:?}", t0.elapsed());
        }
    }
    let o = other.output(&["spoke", "add", "s4"])?;
    let err = o.stderr.trim();
    ensure!(
        !o.success()
            && err.lines().count() == 1
            && err.contains(&format!("{url}/relayhub/ (--store)")),
        "CLI while etcd is down: {o:?}"
    );
    let log = hub.log();
    ensure!(
        log.matches("store unreachable").count() == 2,
        "each outage is logged once:\n{log}"
    );

    // etcd is back: the hub says ok again and converges.
    etcd.start_again()?;
    let t0 = Instant::now();
    cmd::wait_for(
        "/healthz to say ok again",
        Duration::from_secs(10),
        Duration::from_millis(20),
        || Ok((hub.health()? == (200, "ok\n".into())).then_some(())),
    )?;
    eprintln!("[store] etcd back: /healthz ok after {:?}", t0.elapsed());
    ensure!(store_up(hub)? == 1.0, "relayhub_store_up after the outage");
    let s4 = other.cli(&["spoke", "add", "s4", "--endpoint", &hub.endpoint])?;
    let t0 = Instant::now();
    let took = until_peer(hub, topo, &wg::conf_public_key(&s4)?, t0)?;
    eprintln!("[store] s4 added after the outage: a peer of the hub after {took:?}");
    ensure!(took <= PICKUP_BUDGET, "picked up after {took:?}");
    let p = topo.spokes[0].ns.ping(&b, 3, 0.2)?;
    ensure!(p.lost() == 0, "s1 -> s2 after the outage: {p:?}");
    ensure!(
        hub.cli(&["store", "hubs"])?.lines().count() == 2,
        "the hub is listed again after the outage"
    );
    Ok(())
}
