//! Zero-touch onboarding: a fresh node with only curl, wg-quick and
//! wireguard-go joins with the line `relayhub token create` printed; the
//! spokes already there pick it up through `relayhub-sync`. A second node
//! runs the container entrypoint (contrib/spoke/relayhub-node, outside
//! Docker) with the line of a token for a policy group in RELAYHUB_JOIN,
//! and gets exactly the peers its group allows. An IPv6-only node joins
//! over IPv6 and gets the hub's IPv6 endpoint.
//!
//! Also, against the real enrollment endpoint (TLS, pinned): every way a
//! join can be refused (malformed, unknown, expired, used up, revoked
//! tokens; a wrong pin; bad keys and names; oversized and malformed
//! requests; a name or key already taken; too many attempts) gives a clear
//! error and registers nothing, and the hub restarting in the middle of an
//! enrollment registers nothing and loses no token use.
//!
//! Run as root: `cargo test -p relay-tests --release --test join_e2e -- --nocapture`.

use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use relay_tests::netns::Netns;
use relay_tests::topology::{HUB_ADDR, HUB_ADDR6};
use relay_tests::wg::{self, WgQuick};
use relay_tests::{Hub, Topology, cmd, relayhub_scenario};

/// From the end of the join to every peer answering, with the others'
/// sync run right after it (the bound).
const REACH_BUDGET: Duration = Duration::from_secs(2);
const ENROLL_PORT: u16 = 51821;

#[test]
fn join_e2e() {
    relayhub_scenario(
        "join_e2e",
        Topology::builder()
            .spokes(4)
            .ipv6_only_spokes(1)
            .xdp_pass(env!("CARGO_BIN_EXE_xdp-pass")),
        checks,
    );
}

/// One answer of the enrollment endpoint, as curl saw it.
#[derive(Debug)]
struct Answer {
    /// curl's exit code (0: a response arrived, whatever its status).
    curl: i32,
    status: u16,
    body: String,
}

/// POST `fields` (already url-encoded `k=v` pairs) to /v1/join from `ns`.
fn post(ns: &Netns, pin: &str, fields: &[String]) -> anyhow::Result<Answer> {
    let url = format!("https://{HUB_ADDR}:{ENROLL_PORT}/v1/join");
    let mut argv: Vec<String> = [
        "curl",
        "-sS",
        "--max-time",
        "10",
        "--pinnedpubkey",
        pin,
        "-k",
        "-w",
        "\n%{http_code}",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    for f in fields {
        argv.push("--data-urlencode".into());
        argv.push(f.clone());
    }
    argv.push(url);
    let o = ns.output(&argv, Duration::from_secs(15))?;
    let out = o.stdout.trim_end();
    let (body, code) = out.rsplit_once('\n').unwrap_or(("", out));
    Ok(Answer {
        curl: o.status.code().unwrap_or(-1),
        status: code.trim().parse().unwrap_or(0),
        body: body.trim().to_string(),
    })
}

fn fields(token: &str, key: &str, name: &str) -> Vec<String> {
    vec![
        format!("token={token}"),
        format!("public_key={key}"),
        format!("name={name}"),
    ]
}

/// The registered spoke names (`spoke list`).
fn names(hub: &Hub<'_>) -> anyhow::Result<Vec<String>> {
    let out = hub.cli(&["spoke", "list"])?;
    Ok(out
        .lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().next().map(str::to_string))
        .collect())
}

/// `token create ARGS`: the join line, its pin and its token.
fn token(hub: &Hub<'_>, args: &[&str]) -> anyhow::Result<(String, String, String)> {
    let mut argv = vec!["token", "create", "--endpoint", &hub.endpoint];
    argv.extend_from_slice(args);
    let line = hub.cli(&argv)?.trim().to_string();
    ensure!(
        line.starts_with("curl ") && line.lines().count() == 1,
        "token create printed more than the line: {line:?}"
    );
    let pin = line
        .split('\'')
        .nth(1)
        .context("no quoted pin in the join line")?
        .to_string();
    let tok = line
        .rsplit(' ')
        .next()
        .context("no token at the end of the join line")?
        .to_string();
    Ok((line, pin, tok))
}

fn token_uses(hub: &Hub<'_>, tok: &str) -> anyhow::Result<String> {
    let id = tok.split('.').nth(1).context("token id")?;
    let list = hub.cli(&["token", "list"])?;
    let row = list
        .lines()
        .find(|l| l.starts_with(id))
        .with_context(|| format!("token {id} not listed:\n{list}"))?;
    // STATE may be two words ("used up"): USES is the n/m column.
    Ok(row
        .split_whitespace()
        .find(|w| w.contains('/') && w.bytes().all(|b| b.is_ascii_digit() || b == b'/'))
        .unwrap_or("")
        .to_string())
}

fn checks(topo: &Topology, hub: &mut Hub<'_>) -> anyhow::Result<()> {
    // Two spokes the operator added by hand, up and talking.
    let mut spokes: Vec<WgQuick> = Vec::new();
    let mut addrs = Vec::new();
    let mut keys = Vec::new();
    let mut texts = Vec::new();
    let added: Vec<String> = ["s1", "s2"]
        .iter()
        .map(|n| hub.add_spoke(n))
        .collect::<anyhow::Result<_>>()?;
    for (i, (name, add)) in ["s1", "s2"].iter().zip(&added).enumerate() {
        // After both are added: each file lists the other.
        let text = hub.current_config(name, add)?;
        keys.push(wg::conf_public_key(&text)?);
        addrs.push(wg::conf_address(&text)?);
        texts.push((i, text));
    }
    // They come up after the restart below: a hub restarted without
    // --keep-on-exit loses its sessions with them (restart_e2e covers the
    // restart without loss).

    let (line, pin, tok) = token(hub, &["--uses", "1"])?;
    eprintln!("[join] the line to paste: {line}");
    let router = &topo.router;
    let (_, node_public) = wg::genkey()?;
    let before = names(hub)?;

    // Refusals, from the router's namespace (its own rate-limit budget).
    let mut refused = 0;
    let mut expect = |what: &str, f: Vec<String>, status: u16, says: &str| -> anyhow::Result<()> {
        let a = post(router, &pin, &f)?;
        ensure!(
            a.curl == 0 && a.status == status && a.body.contains(says),
            "{what}: expected {status} saying {says:?}, got {a:?}"
        );
        eprintln!("[join] {what}: {} {}", a.status, a.body);
        refused += 1;
        Ok(())
    };
    expect(
        "malformed token",
        fields("hello", &node_public, "n3"),
        403,
        "malformed join token",
    )?;
    let unknown = format!("rhj1.{}.{}", "0".repeat(8), "0".repeat(32));
    expect(
        "unknown token",
        fields(&unknown, &node_public, "n3"),
        403,
        "unknown join token",
    )?;
    expect(
        "bad public key",
        fields(&tok, "not-a-key", "n3"),
        400,
        "public_key is not a WireGuard public key",
    )?;
    expect(
        "bad name",
        fields(&tok, &node_public, "no spaces"),
        400,
        "name:",
    )?;
    expect(
        "missing field",
        vec![format!("token={tok}")],
        400,
        "missing field",
    )?;
    expect(
        "name taken",
        fields(&tok, &node_public, "s1"),
        409,
        "already registered",
    )?;
    expect(
        "key taken",
        fields(&tok, &keys[0], "n3"),
        409,
        "already registered as spoke",
    )?;
    let (_, _, short) = token(hub, &["--expires", "1s"])?;
    thread::sleep(Duration::from_millis(1100));
    expect(
        "expired token",
        fields(&short, &node_public, "n3"),
        403,
        "expired",
    )?;
    let (_, _, revoked) = token(hub, &[])?;
    hub.cli(&["token", "revoke", &revoked])?;
    expect(
        "revoked token",
        fields(&revoked, &node_public, "n3"),
        403,
        "revoked",
    )?;
    // Oversized and malformed requests come from the node's address (the
    // router's budget of attempts is measured below).
    let node_ns = &topo.spokes[2].ns;
    // Oversized: hyper/axum refuse the body before any field is read.
    let big = post(
        node_ns,
        &pin,
        &fields(&tok, &node_public, &"x".repeat(4096)),
    )?;
    ensure!(big.status == 413, "oversized request: {big:?}");
    // A wrong pin: curl stops before sending anything (exit 90).
    let wrong_pin = "sha256//AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=";
    let w = post(router, wrong_pin, &fields(&tok, &node_public, "n3"))?;
    ensure!(w.curl == 90 && w.status == 0, "wrong pin: {w:?}");
    eprintln!("[join] wrong pin: curl exit {}", w.curl);
    // Not a form at all.
    let junk = node_ns.output(
        &[
            "curl",
            "-sS",
            "-k",
            "--pinnedpubkey",
            &pin,
            "-H",
            "Content-Type: application/json",
            "--data",
            "{\"token\": 1}",
            "-w",
            "\n%{http_code}",
            &format!("https://{HUB_ADDR}:{ENROLL_PORT}/v1/join"),
        ],
        Duration::from_secs(15),
    )?;
    ensure!(
        junk.stdout.trim_end().ends_with("415"),
        "JSON body: {:?}",
        junk.stdout
    );
    ensure!(names(hub)? == before, "a refused join registered something");
    ensure!(token_uses(hub, &tok)? == "0/1", "a refused join took a use");
    // Too many attempts from one address: refused with Retry-After, and
    // never more than the bound (10 a minute) got through.
    let mut limited = None;
    for n in 0..12 {
        let a = post(router, &pin, &fields("hello", &node_public, "n3"))?;
        if a.status == 429 {
            limited = Some((n, a));
            break;
        }
    }
    let (n, a) = limited.context("12 more attempts from one address were never rate-limited")?;
    ensure!(
        refused + n <= 10 && a.body.contains("too many join attempts"),
        "rate limit: {refused} + {n} attempts passed before a 429 ({a:?})"
    );
    eprintln!(
        "[join] rate limit: 429 after {} attempts from one address: {}",
        refused + n,
        a.body
    );

    // The hub restarts in the middle of an enrollment: the request head and
    // half the body have arrived when it stops.
    let (_, _, tok2) = token(hub, &[])?;
    let half = format!("token={tok2}&public_key=");
    let workdir = &topo.workdir;
    let partial = topo.spokes[2].ns.spawn(
        "partial-join",
        &[
            "sh",
            "-c",
            &format!(
                "{{ printf '%s' '{half}'; sleep 20; }} | curl -sS -k --pinnedpubkey '{pin}' -X POST \
                 -H 'Content-Type: application/x-www-form-urlencoded' -T - \
                 https://{HUB_ADDR}:{ENROLL_PORT}/v1/join"
            ),
        ],
        workdir,
        false,
    )?;
    cmd::wait_for(
        "the partial join to be connected",
        Duration::from_secs(5),
        Duration::from_millis(20),
        || {
            let ss = topo.hub.exec(&[
                "ss",
                "-tnH",
                "state",
                "established",
                &format!("( sport = :{ENROLL_PORT} )"),
            ])?;
            Ok((!ss.trim().is_empty()).then_some(()))
        },
    )?;
    let took = hub.restart(&[])?;
    drop(partial);
    eprintln!("[join] hub restarted in {took:?} with an enrollment half-received");
    ensure!(
        names(hub)? == before,
        "the interrupted join registered something"
    );
    ensure!(
        token_uses(hub, &tok2)? == "0/1",
        "the interrupted join took a use"
    );
    hub.wait_for_peers(&keys)?;
    for (i, text) in &texts {
        spokes.push(topo.spoke_up(*i, text)?);
    }
    for (i, dst) in [(0, addrs[1]), (1, addrs[0])] {
        cmd::wait_for(
            "the hand-added spokes to reach each other",
            Duration::from_secs(10),
            Duration::from_millis(10),
            || Ok(topo.spokes[i].ns.ping_once(&dst.to_string()).then_some(())),
        )?;
    }

    // The real join: the printed line, as pasted on a node.
    let node = &topo.spokes[2];
    let j3 = Joiner::new(topo, 2)?;
    let t0 = Instant::now();
    let joined = j3.run_line(&node.ns, "n3", &line)?;
    let conf = j3.conf.clone();
    let text = std::fs::read_to_string(&conf).unwrap_or_default();
    let iface = j3.iface.clone();
    ensure!(
        joined.success(),
        "the join line failed: {}\n{}",
        joined.stdout,
        joined.stderr
    );
    let join_took = t0.elapsed();
    eprintln!("[join] joined in {join_took:?}: {}", joined.stdout.trim());
    check_private_file(&conf)?;
    ensure!(
        token_uses(hub, &tok)? == "1/1",
        "the join did not take the token's use"
    );
    // The others pick it up through sync, right after the join.
    let t1 = Instant::now();
    for (s, (i, _)) in spokes.iter().zip(&texts) {
        sync(&topo.spokes[*i].ns, &s.ifname)?;
    }
    let n3 = wg::conf_address(&text)?.to_string();
    let mut targets: Vec<String> = addrs.iter().map(|a| a.to_string()).collect();
    targets.push("10.88.0.1".into());
    let mut reached = Vec::new();
    for dst in &targets {
        cmd::wait_for(
            &format!("the joined node to reach {dst}"),
            Duration::from_secs(10),
            Duration::from_millis(10),
            || Ok(node.ns.ping_once(dst).then_some(())),
        )?;
        reached.push((dst.clone(), t1.elapsed()));
    }
    for (i, _) in &texts {
        cmd::wait_for(
            "a spoke to reach the joined node",
            Duration::from_secs(10),
            Duration::from_millis(10),
            || Ok(topo.spokes[*i].ns.ping_once(&n3).then_some(())),
        )?;
    }
    let all = t1.elapsed();
    eprintln!("[join] after the sync: {reached:?}; both ways in {all:?}");
    ensure!(
        all <= REACH_BUDGET,
        "the joined node reached every peer only after {all:?} (bound {REACH_BUDGET:?})"
    );
    // Used up now: the same line again admits nobody.
    let again = post(router, &pin, &fields(&tok, &node_public, "n4"));
    if let Ok(a) = again
        && a.status != 429
    {
        ensure!(
            a.status == 403 && a.body.contains("used up"),
            "a used-up token: {a:?}"
        );
    }
    let after = names(hub)?;
    ensure!(
        after.len() == before.len() + 1 && after.contains(&"n3".to_string()),
        "registry after the join: {after:?}"
    );
    ipv6_node(topo, hub)?;
    let others = [
        (&topo.spokes[0].ns, spokes[0].ifname.as_str()),
        (&node.ns, iface.as_str()),
    ];
    container_node(
        topo,
        hub,
        &others,
        [&keys[0], &keys[1], &wg::conf_public_key(&text)?],
        &addrs[0].to_string(),
        &n3,
    )
}

/// The container entrypoint on node 4, joining group `web`, which may not
/// reach s2.
fn container_node(
    topo: &Topology,
    hub: &Hub<'_>,
    others: &[(&Netns, &str)],
    [s1_key, s2_key, n3_key]: [&str; 3],
    s1_addr: &str,
    n3_addr: &str,
) -> anyhow::Result<()> {
    hub.cli(&["policy", "group", "web", "n3"])?;
    hub.cli(&["policy", "deny", "@web", "s2"])?;
    let (line, _, tok) = token(hub, &["--group", "web"])?;
    let node = &topo.spokes[3];
    // Before the entrypoint, so its interface goes down after it is gone.
    let j4 = Joiner::new(topo, 3)?;
    let iface = j4.iface.clone();
    let t0 = Instant::now();
    let mut entry = node.ns.spawn(
        "relayhub-node",
        &[
            vec![
                "env".to_string(),
                format!("RELAYHUB_JOIN={line}"),
                "RELAYHUB_SYNC_INTERVAL=2".into(),
            ],
            j4.env("n4"),
            vec![
                "sh".into(),
                concat!(
                    env!("CARGO_MANIFEST_DIR"),
                    "/../contrib/spoke/relayhub-node"
                )
                .into(),
            ],
        ]
        .concat(),
        &topo.workdir,
        false,
    )?;
    cmd::wait_for(
        "the container node to join",
        Duration::from_secs(15),
        Duration::from_millis(20),
        || {
            if let Some(st) = entry.try_exit() {
                bail!("relayhub-node exited ({st}):\n{}", entry.stderr_tail(20));
            }
            Ok(entry.stdout().contains(" is up.").then_some(()))
        },
    )?;
    // The others pick it up at their next sync.
    for (ns, ifname) in others {
        sync(ns, ifname)?;
    }
    for dst in [s1_addr, n3_addr] {
        let r = cmd::wait_for(
            &format!("the container node to reach {dst}"),
            Duration::from_secs(15),
            Duration::from_millis(20),
            || {
                if let Some(st) = entry.try_exit() {
                    bail!("relayhub-node exited ({st}):\n{}", entry.stderr_tail(20));
                }
                Ok(node.ns.ping_once(dst).then_some(()))
            },
        );
        r.with_context(|| entry.stderr_tail(20))?;
    }
    eprintln!(
        "[join] container node: joined and reached s1 and n3 in {:?}",
        t0.elapsed()
    );
    let peers = node.ns.exec(&["wg", "show", &iface, "peers"])?;
    let mut got: Vec<&str> = peers.split_whitespace().collect();
    got.sort_unstable();
    let hub_key = hub.api_json("/v1/hub")?["public_key"]
        .as_str()
        .context("/v1/hub public_key")?
        .to_string();
    ensure!(
        [hub_key.as_str(), s1_key, n3_key]
            .iter()
            .all(|k| got.contains(k))
            && !got.contains(&s2_key),
        "group web may reach all but s2: the container node's peers are {got:?} (hub {hub_key}, s1 {s1_key}, n3 {n3_key}, s2 {s2_key})"
    );
    let show = hub.cli(&["policy", "show"])?;
    ensure!(
        show.lines().any(|l| l.contains("web") && l.contains("n4")),
        "n4 not in group web:\n{show}"
    );
    ensure!(token_uses(hub, &tok)? == "1/1", "group token not used");
    // The entrypoint syncs on its own every 2 s and keeps running.
    thread::sleep(Duration::from_millis(2500));
    ensure!(
        entry.try_exit().is_none(),
        "relayhub-node stopped: {}",
        entry.stderr_tail(20)
    );
    Ok(())
}

/// An IPv6-only node joins with a line for the hub's IPv6 address: its
/// file names the hub's IPv6 endpoint and it reaches the hub.
fn ipv6_node(topo: &Topology, hub: &Hub<'_>) -> anyhow::Result<()> {
    let line = hub
        .cli(&["token", "create", "--endpoint", &format!("[{HUB_ADDR6}]")])?
        .trim()
        .to_string();
    ensure!(
        line.contains(&format!("https://[{HUB_ADDR6}]:{ENROLL_PORT}/v1/join.sh")),
        "{line}"
    );
    let node = &topo.spokes[4];
    let j5 = Joiner::new(topo, 4)?;
    let joined = j5.run_line(&node.ns, "n5", &line)?;
    let conf = j5.conf.clone();
    ensure!(
        joined.success(),
        "IPv6 join: {}\n{}",
        joined.stdout,
        joined.stderr
    );
    let text = std::fs::read_to_string(&conf)?;
    let want = format!("Endpoint = [{HUB_ADDR6}]:51820");
    ensure!(
        text.lines()
            .all(|l| !l.starts_with("Endpoint") || l == want),
        "the IPv6 node's file names another endpoint than {want}:\n{text}"
    );
    cmd::wait_for(
        "the IPv6 node to reach the hub",
        Duration::from_secs(10),
        Duration::from_millis(20),
        || Ok(node.ns.ping_once("10.88.0.1").then_some(())),
    )?;
    eprintln!("[join] IPv6-only node joined over IPv6; its peers' endpoint is {want}");
    Ok(())
}

/// A node about to join: its directory, interface and file, and a guard
/// that takes the interface down whatever happens (made before anything
/// runs on it, so it is dropped last).
struct Joiner {
    dir: String,
    iface: String,
    conf: PathBuf,
    _guard: WgQuick,
}

impl Joiner {
    /// For topology host `i` (node N = i + 1).
    fn new(topo: &Topology, i: usize) -> anyhow::Result<Joiner> {
        let dir = topo.workdir.join(format!("node{}", i + 1));
        std::fs::create_dir_all(&dir)?;
        let iface = format!("{}j{}", topo.prefix, i + 1);
        let conf = dir.join(format!("{iface}.conf"));
        Ok(Joiner {
            dir: dir.to_str().context("utf-8")?.to_string(),
            _guard: WgQuick {
                ns: topo.spokes[i].ns.name.clone(),
                ifname: iface.clone(),
                conf: conf.clone(),
                text: String::new(),
            },
            iface,
            conf,
        })
    }

    /// The environment the join scripts read, for spoke `name`.
    fn env(&self, name: &str) -> Vec<String> {
        vec![
            format!("RELAYHUB_WG_DIR={}", self.dir),
            format!("RELAYHUB_IFACE={}", self.iface),
            format!("RELAYHUB_NAME={name}"),
            "WG_QUICK_USERSPACE_IMPLEMENTATION=wireguard-go".into(),
        ]
    }

    /// Paste the join line on the node, as `name`.
    fn run_line(&self, ns: &Netns, name: &str, line: &str) -> anyhow::Result<cmd::Output> {
        let argv = [
            vec!["env".to_string()],
            self.env(name),
            vec!["sh".into(), "-c".into(), line.into()],
        ]
        .concat();
        ns.output(&argv, Duration::from_secs(30))
    }
}

/// Run contrib/spoke/relayhub-sync IFACE in `ns`, as the spoke's timer would.
fn sync(ns: &Netns, iface: &str) -> anyhow::Result<()> {
    ns.output(
        &[
            "sh",
            concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../contrib/spoke/relayhub-sync"
            ),
            iface,
        ],
        Duration::from_secs(15),
    )?
    .checked()
    .map(|_| ())
    .with_context(|| format!("relayhub-sync {iface}"))
}

/// The node's file holds its private key: only root may read it.
fn check_private_file(conf: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    let mode = std::fs::metadata(conf)?.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        bail!("{} has mode {mode:o}", conf.display());
    }
    let text = std::fs::read_to_string(conf)?;
    ensure!(
        wg::conf_private_key(&text).is_some(),
        "no PrivateKey in the joined node's file:\n{text}"
    );
    Ok(())
}
