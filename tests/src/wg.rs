//! Stock WireGuard (wg-quick + wireguard-go) in a namespace, and helpers
//! for wg-quick files.

use std::net::Ipv4Addr;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};

use crate::cmd;
use crate::netns::Netns;

/// A userspace WireGuard implementation, run the way README "Clients"
/// tells its users to run it under wg-quick.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Client {
    WireguardGo,
    /// boringtun-cli through contrib/boringtun-relayhub (one unconnected
    /// UDP socket), with `WG_SUDO=true` (keep root: wg-quick runs it as root already).
    Boringtun,
}

impl Client {
    pub fn name(self) -> &'static str {
        match self {
            Client::WireguardGo => "wireguard-go",
            Client::Boringtun => "boringtun",
        }
    }

    /// The environment `wg-quick up` runs with.
    fn env(self) -> Vec<String> {
        match self {
            Client::WireguardGo => vec!["WG_QUICK_USERSPACE_IMPLEMENTATION=wireguard-go".into()],
            Client::Boringtun => vec![
                format!(
                    "WG_QUICK_USERSPACE_IMPLEMENTATION={}",
                    boringtun_wrapper().display()
                ),
                // boringtun-cli 0.7 takes a boolean here ("1" is refused).
                "WG_SUDO=true".into(),
            ],
        }
    }
}

/// contrib/boringtun-relayhub in this checkout.
pub fn boringtun_wrapper() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../contrib/boringtun-relayhub")
}

/// A wg-quick interface running on a userspace WireGuard inside a
/// namespace. Dropping it runs `wg-quick down`, kills its process and
/// removes its control socket.
pub struct WgQuick {
    pub ns: String,
    pub ifname: String,
    pub conf: PathBuf,
    pub text: String,
}

impl WgQuick {
    /// Save `text` as `<dir>/<ifname>.conf` and `wg-quick up` it in `ns`.
    /// The interface name must be unique machine-wide: wireguard-go's
    /// control sockets live in /var/run/wireguard, shared by all namespaces.
    pub fn up(
        ns: &Netns,
        ifname: &str,
        text: &str,
        dir: &std::path::Path,
    ) -> anyhow::Result<WgQuick> {
        Self::up_with(ns, ifname, text, dir, Client::WireguardGo)
    }

    /// [`WgQuick::up`] on `client`.
    pub fn up_with(
        ns: &Netns,
        ifname: &str,
        text: &str,
        dir: &std::path::Path,
        client: Client,
    ) -> anyhow::Result<WgQuick> {
        anyhow::ensure!(
            ifname.len() <= 15,
            "interface name {ifname} is longer than 15 characters"
        );
        let conf = dir.join(format!("{ifname}.conf"));
        std::fs::write(&conf, text)?;
        std::fs::set_permissions(&conf, std::fs::Permissions::from_mode(0o600))?;
        let wg = WgQuick {
            ns: ns.name.clone(),
            ifname: ifname.into(),
            conf,
            text: text.into(),
        };
        let conf_s = wg.conf.to_str().context("utf-8 path")?;
        let env = client.env();
        let mut argv = vec!["env"];
        argv.extend(env.iter().map(String::as_str));
        argv.extend(["wg-quick", "up", conf_s]);
        ns.output(&argv, Duration::from_secs(20))?
            .checked()
            .with_context(|| format!("wg-quick up {ifname} ({}) in {}", client.name(), ns.name))?;
        Ok(wg)
    }

    fn ns_argv<'a>(&'a self, argv: &[&'a str]) -> Vec<&'a str> {
        let mut v = vec!["ip", "netns", "exec", self.ns.as_str()];
        v.extend_from_slice(argv);
        v
    }

    /// `wg show IF endpoints` as (public key, endpoint) pairs.
    pub fn endpoints(&self) -> anyhow::Result<Vec<(String, String)>> {
        let out = cmd::run(&self.ns_argv(&["wg", "show", &self.ifname, "endpoints"]))?;
        Ok(out
            .lines()
            .filter_map(|l| {
                let mut it = l.split_whitespace();
                Some((it.next()?.to_string(), it.next()?.to_string()))
            })
            .collect())
    }

    /// `wg show IF latest-handshakes` as (public key, unix seconds).
    pub fn latest_handshakes(&self) -> anyhow::Result<Vec<(String, u64)>> {
        let out = cmd::run(&self.ns_argv(&["wg", "show", &self.ifname, "latest-handshakes"]))?;
        Ok(out
            .lines()
            .filter_map(|l| {
                let mut it = l.split_whitespace();
                Some((it.next()?.to_string(), it.next()?.parse().ok()?))
            })
            .collect())
    }

    /// [`latest_handshakes`](Self::latest_handshakes) of every spoke in
    /// `spokes` with the others, leaving out the hub's own peer
    /// (`hub_key`, which handshakes again with a new active hub), sorted:
    /// compare two of these to see whether spokes handshook again.
    pub fn spoke_handshakes<'a>(
        spokes: impl IntoIterator<Item = &'a WgQuick>,
        hub_key: &str,
    ) -> anyhow::Result<Vec<(String, u64)>> {
        let mut all = Vec::new();
        for s in spokes {
            all.extend(
                s.latest_handshakes()?
                    .into_iter()
                    .filter(|(k, _)| k != hub_key),
            );
        }
        all.sort();
        Ok(all)
    }

    /// The interface's tunnel address (first IPv4 `Address`).
    pub fn address(&self) -> anyhow::Result<Ipv4Addr> {
        conf_address(&self.text)
    }

    pub fn down(&mut self) {
        let Some(conf) = self.conf.to_str().map(str::to_string) else {
            return;
        };
        if let Ok(o) = cmd::run_timeout(
            &self.ns_argv(&["wg-quick", "down", &conf]),
            Duration::from_secs(15),
        ) && !o.success()
            && !o.stderr.contains("is not a WireGuard interface")
        {
            eprintln!(
                "warning: wg-quick down {}: {}",
                self.ifname,
                o.stderr.trim()
            );
        }
        kill_userspace_wg(&self.ifname);
        let _ = std::fs::remove_file(format!("/var/run/wireguard/{}.sock", self.ifname));
        let _ = std::fs::remove_file(format!("/var/run/wireguard/{}.name", self.ifname));
    }
}

impl Drop for WgQuick {
    fn drop(&mut self) {
        self.down();
    }
}

/// SIGKILL any `wireguard-go IFNAME` or `boringtun-cli ... IFNAME` process
/// (our interface names are unique).
pub fn kill_userspace_wg(ifname: &str) {
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return;
    };
    for e in rd.flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(c) = std::fs::read(e.path().join("cmdline")) else {
            continue;
        };
        let args: Vec<&[u8]> = c.split(|b| *b == 0).collect();
        let is_wg = args
            .first()
            .is_some_and(|a| a.ends_with(b"wireguard-go") || a.ends_with(b"boringtun-cli"));
        if is_wg && args.contains(&ifname.as_bytes()) {
            cmd::signal(pid, libc::SIGKILL);
        }
    }
}

/// The first IPv4 `Address = a.b.c.d/len` of a wg-quick file.
pub fn conf_address(text: &str) -> anyhow::Result<Ipv4Addr> {
    for l in text.lines() {
        let l = l.trim();
        if let Some((k, v)) = l.split_once('=')
            && k.trim().eq_ignore_ascii_case("Address")
        {
            for a in v.split(',') {
                let a = a.trim().split('/').next().unwrap_or("");
                if let Ok(ip) = a.parse() {
                    return Ok(ip);
                }
            }
        }
    }
    bail!("no IPv4 Address in wg-quick file:\n{text}")
}

/// What README "Clients" tells boringtun users to add to [Interface] so
/// that other spokes can reach it before it sends anything itself.
pub const BORINGTUN_POST_UP: &str = "PostUp = ping -c 1 -W 1 10.88.0.1 > /dev/null &";

/// `text` with `line` added to its [Interface] section.
pub fn with_interface_line(text: &str, line: &str) -> String {
    let mut out = String::new();
    for l in text.lines() {
        out.push_str(l);
        out.push('\n');
        if l.trim().eq_ignore_ascii_case("[Interface]") {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

/// The `PrivateKey` of a wg-quick file (ignoring comments).
pub fn conf_private_key(text: &str) -> Option<String> {
    text.lines().find_map(|l| {
        let (k, v) = l.split_once('=')?;
        k.trim()
            .eq_ignore_ascii_case("PrivateKey")
            .then(|| v.trim().to_string())
    })
}

/// Public key of the interface whose wg-quick file is `text` (`wg pubkey`).
pub fn conf_public_key(text: &str) -> anyhow::Result<String> {
    let private = conf_private_key(text).context("no PrivateKey in the wg-quick file")?;
    let out = std::process::Command::new("sh")
        .args(["-c", "printf '%s' \"$1\" | wg pubkey", "sh", &private])
        .output()?;
    anyhow::ensure!(out.status.success(), "wg pubkey failed");
    Ok(String::from_utf8(out.stdout)?.trim().to_string())
}

/// `text` with a `PrivateKey = key` line added to its [Interface] section
/// (replacing any uncommented PrivateKey line).
pub fn with_private_key(text: &str, key: &str) -> anyhow::Result<String> {
    let mut out = String::new();
    let mut done = false;
    for l in text.lines() {
        if l.split_once('=')
            .is_some_and(|(k, _)| k.trim().eq_ignore_ascii_case("PrivateKey"))
        {
            continue;
        }
        out.push_str(l);
        out.push('\n');
        if !done && l.trim().eq_ignore_ascii_case("[Interface]") {
            out.push_str(&format!("PrivateKey = {key}\n"));
            done = true;
        }
    }
    anyhow::ensure!(done, "no [Interface] section in:\n{text}");
    Ok(out)
}

/// The `Endpoint` values of every [Peer] in a wg-quick file.
pub fn conf_endpoints(text: &str) -> Vec<String> {
    text.lines()
        .filter_map(|l| {
            let (k, v) = l.split_once('=')?;
            k.trim()
                .eq_ignore_ascii_case("Endpoint")
                .then(|| v.trim().to_string())
        })
        .collect()
}

/// A fresh key pair from `wg genkey | wg pubkey`: (private, public).
pub fn genkey() -> anyhow::Result<(String, String)> {
    let private = cmd::run(&["wg", "genkey"])?.trim().to_string();
    let out = std::process::Command::new("wg")
        .arg("pubkey")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            use std::io::Write;
            c.stdin
                .take()
                .expect("piped")
                .write_all(private.as_bytes())?;
            c.wait_with_output()
        })
        .context("wg pubkey")?;
    anyhow::ensure!(out.status.success(), "wg pubkey failed");
    Ok((private, String::from_utf8(out.stdout)?.trim().to_string()))
}
