//! The web console (issue 15) in a real browser: headless Chromium
//! (chromedriver, WebDriver) opens `GET /` of a live hub whose API is
//! bound beyond loopback, and the test reads the rendered DOM.
//!
//! Checks, one `key=value` line each:
//! - without the token the page and /v1/* are refused, /metrics stays
//!   open; with it (bearer) they answer (`console_refused_without_token=1`);
//! - the browser logs in with `/?token=` (a cookie from then on) and the
//!   page lists every spoke, up (`console_spokes_listed=3/3`), with the
//!   hub's facts, the throughput chart and the handshake table;
//! - s3 stops: while the page stays open (it refreshes itself), s3 turns
//!   "down" within its bound (3 x PK + 5 s, plus one refresh and one
//!   sample), the others stay up (`console_down_after_s=N`);
//! - screenshots: `target/test-artifacts/console-up.png`, `console-down.png`.
//!
//! PK is 2 s here (RELAYHUB_KEEPALIVE): the bounds play out in seconds.
//!
//! Run as root: `cargo test -p relay-tests --release --test console_e2e -- --nocapture`.

use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use relay_tests::browser::{self, Browser};
use relay_tests::mesh::Mesh;
use relay_tests::topology::HUB_ADDR;
use relay_tests::{Hub, Topology, relayhub_scenario_with};

const KEEPALIVE: u64 = 2;
const DOWN_AFTER: f64 = (3 * KEEPALIVE + 5) as f64;
/// The page refreshes every 2 s and the hub samples every 2 s.
const SLACK: f64 = 2.0 + 2.0 + 2.0;
const PORT: u16 = 9851;

#[test]
fn console_e2e() {
    browser::require_chromium();
    // SAFETY: set before this test starts any thread or child; this test
    // binary has no other test reading the environment.
    unsafe {
        std::env::set_var("RELAYHUB_KEEPALIVE", KEEPALIVE.to_string());
    }
    relayhub_scenario_with(
        "console_e2e",
        Topology::builder()
            .spokes(3)
            .xdp_pass(env!("CARGO_BIN_EXE_xdp-pass")),
        &["--metrics-addr", &format!("0.0.0.0:{PORT}")],
        checks,
    );
}

/// `curl` in the hub's namespace against its public address: the code.
fn code(topo: &Topology, path: &str, token: Option<&str>) -> anyhow::Result<u16> {
    let url = format!("http://{HUB_ADDR}:{PORT}{path}");
    let auth = token.map(|t| format!("Authorization: Bearer {t}"));
    let mut argv = vec![
        "curl",
        "-sS",
        "-m",
        "5",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
    ];
    if let Some(a) = &auth {
        argv.extend(["-H", a]);
    }
    argv.push(&url);
    let out = topo.hub.output(&argv, Duration::from_secs(10))?.checked()?;
    Ok(out.trim().parse()?)
}

/// `name=state` for every spoke row the page shows.
fn rows(b: &Browser<'_>) -> anyhow::Result<Vec<(String, String)>> {
    let v = b.eval(
        "return Array.from(document.querySelectorAll('#spoke-table tr[data-spoke]'))\
         .map(r => [r.dataset.spoke, r.querySelector('td.state').textContent]);",
    )?;
    Ok(v.as_array()
        .into_iter()
        .flatten()
        .filter_map(|r| Some((r[0].as_str()?.to_owned(), r[1].as_str()?.to_owned())))
        .collect())
}

fn checks(topo: &Topology, hub: &mut Hub<'_>) -> anyhow::Result<()> {
    let mut mesh = Mesh::up(topo, hub)?;
    let token = hub.cli(&["status", "--token"])?.trim().to_owned();
    ensure!(token.len() == 64, "status --token printed {token:?}");

    // Beyond loopback: the page and /v1/* need the token, /metrics not.
    let refused = [
        code(topo, "/", None)?,
        code(topo, "/v1/spokes", None)?,
        code(topo, "/", Some("wrong"))?,
    ];
    let open = [
        code(topo, "/metrics", None)?,
        code(topo, "/", Some(&token))?,
        code(topo, "/v1/spokes", Some(&token))?,
    ];
    let ok = refused == [401; 3] && open == [200; 3];
    println!("console_refused_without_token={}", u8::from(ok));
    ensure!(
        ok,
        "without token {refused:?} (want 401s), /metrics and with token {open:?} (want 200s)"
    );
    // The CLI finds the token in the state directory.
    let status = hub.cli(&["status", "--metrics-addr", &format!("{HUB_ADDR}:{PORT}")])?;
    ensure!(
        status.contains("s3"),
        "relayhub status with the token:\n{status}"
    );

    let b = Browser::start(&topo.hub, &topo.workdir)?;
    b.goto(&format!("http://{HUB_ADDR}:{PORT}/?token={token}"))?;
    let want: Vec<String> = mesh.names.clone();
    relay_tests::cmd::wait_for(
        "the page to list every spoke up",
        Duration::from_secs(30),
        Duration::from_millis(300),
        || {
            let r = rows(&b)?;
            Ok((r.len() == want.len() && r.iter().all(|(_, s)| s == "up")).then_some(()))
        },
    )
    .with_context(|| format!("rows: {:?}", rows(&b).ok()))?;
    let listed = rows(&b)?
        .iter()
        .filter(|(n, s)| want.contains(n) && s == "up")
        .count();
    println!("console_spokes_listed={listed}/{}", want.len());
    // The rest of the page: facts, chart (after two samples), handshakes.
    relay_tests::cmd::wait_for(
        "the throughput chart",
        Duration::from_secs(15),
        Duration::from_millis(300),
        || {
            Ok(
                b.eval("return document.querySelector('#chart polyline') !== null;")?
                    .as_bool()
                    .unwrap_or(false)
                    .then_some(()),
            )
        },
    )?;
    let text = b
        .eval("return document.body.innerText;")?
        .as_str()
        .unwrap_or("")
        .to_owned();
    for want in [
        "version",
        "public key",
        "XDP",
        "Handshake initiations",
        "relayed",
        "Policy",
    ] {
        ensure!(text.contains(want), "the page lacks {want:?}:\n{text}");
    }
    let dir = browser::artifact_dir()?;
    b.screenshot(&dir.join("console-up.png"))?;

    // s3 stops; the page, left open, shows it down within its bound.
    mesh.down(2);
    let t0 = Instant::now();
    let limit = DOWN_AFTER + SLACK;
    let down_at = loop {
        let r = rows(&b)?;
        let s3 = r.iter().find(|(n, _)| n == "s3").map(|(_, s)| s.clone());
        for (n, s) in r.iter().filter(|(n, _)| n != "s3") {
            ensure!(s == "up", "{n} went {s} while only s3 stopped");
        }
        if s3.as_deref() == Some("down") {
            break t0.elapsed().as_secs_f64();
        }
        ensure!(
            t0.elapsed().as_secs_f64() < limit + 5.0,
            "s3 still {s3:?} on the page {:.0} s after it stopped",
            t0.elapsed().as_secs_f64()
        );
        std::thread::sleep(Duration::from_millis(250));
    };
    println!("console_down_after_s={down_at:.1}");
    ensure!(
        down_at <= limit,
        "s3 shown down after {down_at:.1} s, bound {limit} s"
    );
    b.screenshot(&dir.join("console-down.png"))?;
    eprintln!("[console] screenshots in {}", dir.display());
    Ok(())
}
