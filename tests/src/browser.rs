//! A real browser for the console's tests: headless Chromium driven by
//! chromedriver over the W3C WebDriver protocol (JSON over HTTP, spoken
//! with curl inside the namespace both run in). Debian's `chromium` and
//! `chromium-driver`, installed by `cargo xtask setup`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use serde_json::{Value, json};

use crate::cmd::{self, Proc};
use crate::netns::Netns;

/// chromedriver's port inside the namespace.
const DRIVER_PORT: u16 = 9515;

pub struct Browser<'a> {
    ns: &'a Netns,
    driver: Proc,
    session: String,
}

/// Skips (with a message) where Chromium is not installed.
pub fn require_chromium() {
    for bin in ["chromium", "chromedriver"] {
        assert!(
            cmd::run(&["sh", "-c", &format!("command -v {bin}")]).is_ok(),
            "{bin} is not installed: run `cargo xtask setup` (Debian: chromium chromium-driver)"
        );
    }
}

impl<'a> Browser<'a> {
    /// Starts chromedriver in `ns` and opens a headless Chromium session;
    /// the profile and logs go under `workdir`.
    pub fn start(ns: &'a Netns, workdir: &Path) -> anyhow::Result<Browser<'a>> {
        let mut driver = ns.spawn(
            "chromedriver",
            &[
                "chromedriver",
                &format!("--port={DRIVER_PORT}"),
                "--allowed-ips=127.0.0.1",
            ],
            workdir,
            false,
        )?;
        driver
            .wait_output("started successfully", Duration::from_secs(20))
            .context("chromedriver did not start")?;
        let profile = workdir.join("chromium-profile");
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": "/usr/bin/chromium",
                "args": [
                    "--headless=new", "--no-sandbox", "--disable-gpu",
                    "--disable-dev-shm-usage", "--window-size=1280,1000",
                    format!("--user-data-dir={}", profile.display()),
                ],
            },
        }}});
        let mut b = Browser {
            ns,
            driver,
            session: String::new(),
        };
        let v = b.call("POST", "/session", Some(caps))?;
        b.session = v["sessionId"]
            .as_str()
            .with_context(|| format!("no session id in {v}"))?
            .to_owned();
        Ok(b)
    }

    /// One WebDriver command: its `value`, or the error it reports.
    fn call(&self, method: &str, path: &str, body: Option<Value>) -> anyhow::Result<Value> {
        let url = format!("http://127.0.0.1:{DRIVER_PORT}{path}");
        let body = body.map(|b| b.to_string());
        let mut argv = vec!["curl", "-sS", "-m", "60", "-X", method, &url];
        if let Some(b) = &body {
            argv.extend(["-H", "Content-Type: application/json", "--data-binary", b]);
        }
        let out = self.ns.output(&argv, Duration::from_secs(70))?.checked()?;
        let v: Value =
            serde_json::from_str(&out).with_context(|| format!("{method} {path}: {out}"))?;
        if let Some(e) = v["value"]["error"].as_str() {
            bail!(
                "{method} {path}: {e}: {}",
                v["value"]["message"].as_str().unwrap_or("")
            );
        }
        Ok(v["value"].clone())
    }

    fn session_call(&self, method: &str, path: &str, body: Option<Value>) -> anyhow::Result<Value> {
        self.call(method, &format!("/session/{}{path}", self.session), body)
    }

    pub fn goto(&self, url: &str) -> anyhow::Result<()> {
        self.session_call("POST", "/url", Some(json!({ "url": url })))
            .map(|_| ())
    }

    /// Runs `script` (a function body) in the page; its return value.
    pub fn eval(&self, script: &str) -> anyhow::Result<Value> {
        self.session_call(
            "POST",
            "/execute/sync",
            Some(json!({ "script": script, "args": [] })),
        )
    }

    /// Saves a PNG of the window to `path`.
    pub fn screenshot(&self, path: &Path) -> anyhow::Result<()> {
        let v = self.session_call("GET", "/screenshot", None)?;
        let b64 = v.as_str().context("screenshot is not a string")?;
        let tmp = path.with_extension("b64");
        std::fs::write(&tmp, b64)?;
        let (src, dst) = (
            tmp.to_str().context("utf-8 path")?,
            path.to_str().context("utf-8 path")?,
        );
        cmd::run(&["sh", "-c", &format!("base64 -d '{src}' > '{dst}'")])?;
        let _ = std::fs::remove_file(&tmp);
        Ok(())
    }
}

impl Drop for Browser<'_> {
    fn drop(&mut self) {
        if !self.session.is_empty() {
            let _ = self.session_call("DELETE", "", None);
        }
        self.driver.stop(Duration::from_secs(5));
    }
}

/// Where tests keep what a person may want to look at afterwards
/// (`target/test-artifacts/`).
pub fn artifact_dir() -> anyhow::Result<PathBuf> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/test-artifacts");
    std::fs::create_dir_all(&dir)?;
    Ok(dir.canonicalize()?)
}
