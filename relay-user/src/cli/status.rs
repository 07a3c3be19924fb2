//! `relayhub status`: fetch the hub's status API and render it.

use std::fmt::Write as _;
use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use anyhow::{Context as _, bail};

pub use crate::hub::{HubStatus, SpokeStatus};

/// Where the hub's API is, and its token if this user can read it (the
/// API needs it when bound beyond loopback).
#[derive(Debug, Clone)]
pub struct ApiClient {
    pub addr: SocketAddr,
    pub token: Option<String>,
}

impl ApiClient {
    /// The API at `addr`, with the token from `state_dir` if readable.
    pub fn new(addr: SocketAddr, state_dir: &std::path::Path) -> Self {
        let token = std::fs::read_to_string(state_dir.join(crate::store::dir::API_TOKEN_FILE))
            .ok()
            .map(|t| t.trim().to_owned())
            .filter(|t| !t.is_empty());
        ApiClient { addr, token }
    }

    /// GET `path` with a short timeout. Plain HTTP/1.1, usually on a
    /// loopback address: no client library needed.
    pub fn fetch(&self, path: &str) -> anyhow::Result<String> {
        let addr = self.addr;
        let mut s =
            TcpStream::connect_timeout(&addr, Duration::from_secs(3)).with_context(|| {
                format!(
                    "connecting to the hub at {addr}: is `relayhub run` running? (--metrics-addr)"
                )
            })?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        let auth = self
            .token
            .as_deref()
            .map(|t| format!("Authorization: Bearer {t}\r\n"))
            .unwrap_or_default();
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: {addr}\r\n{auth}Connection: close\r\n\r\n"
        )?;
        let mut buf = Vec::new();
        s.take(64 << 20).read_to_end(&mut buf)?;
        let text = String::from_utf8(buf).context("non-UTF-8 answer from the hub")?;
        let (head, body) = text
            .split_once("\r\n\r\n")
            .context("malformed HTTP answer from the hub")?;
        let status = head.split_whitespace().nth(1).unwrap_or("");
        if status != "200" {
            bail!("GET {path}: HTTP {status}: {}", body.trim());
        }
        Ok(body.to_string())
    }

    pub fn fetch_all(&self) -> anyhow::Result<(HubStatus, Vec<SpokeStatus>)> {
        let hub = serde_json::from_str(&self.fetch("/v1/hub")?).context("parsing /v1/hub")?;
        let spokes =
            serde_json::from_str(&self.fetch("/v1/spokes")?).context("parsing /v1/spokes")?;
        Ok((hub, spokes))
    }
}

fn ago(secs: Option<f64>) -> String {
    match secs {
        None => "never".into(),
        Some(s) if s < 120.0 => format!("{s:.0}s ago"),
        Some(s) if s < 7200.0 => format!("{:.0}m ago", s / 60.0),
        Some(s) => format!("{:.0}h ago", s / 3600.0),
    }
}

fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KB", "MB", "GB", "TB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1000.0 && u < UNITS.len() - 1 {
        v /= 1000.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// A readable table.
pub fn render_table(hub: &HubStatus, spokes: &[SpokeStatus], now_unix: u64) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "relayhub {} on {} ({} XDP), hub {} port {}, up {}s; states: up < {}s silent, down > {}s",
        hub.version,
        hub.iface,
        hub.xdp_mode,
        hub.address,
        hub.port,
        hub.uptime_secs,
        hub.up_within_secs,
        hub.down_after_secs
    );
    let _ = writeln!(
        out,
        "underlay IPv4 {}, IPv6 {}; IPv4 <-> IPv6 relay path: {}",
        hub.underlay_v4.as_deref().unwrap_or("none"),
        hub.underlay_v6.as_deref().unwrap_or("none"),
        if hub.cross_family_path.is_empty() {
            "?"
        } else {
            &hub.cross_family_path
        }
    );
    let header = [
        "NAME",
        "ADDRESS",
        "STATE",
        "ENDPOINT",
        "LAST FRAME",
        "HANDSHAKE",
        "KEEPALIVE",
        "IN",
        "OUT",
        "SESS",
        "ROAMS",
    ];
    let mut rows: Vec<Vec<String>> = vec![header.iter().map(|s| s.to_string()).collect()];
    for s in spokes {
        let hs = s
            .last_handshake_unix
            .map(|t| ago(Some(now_unix.saturating_sub(t) as f64)))
            .unwrap_or_else(|| "never".into());
        let ka = match s.keepalive_interval_secs {
            Some(i) => format!("{i:.1}s, {} missed", s.missed_keepalives),
            None => format!("-, {} missed", s.missed_keepalives),
        };
        rows.push(vec![
            s.name.clone(),
            s.address.clone(),
            s.state.clone(),
            s.endpoint.clone().unwrap_or_else(|| "-".into()),
            ago(s.last_frame_secs_ago),
            hs,
            ka,
            format!("{} / {}", s.relayed_in_packets, bytes(s.relayed_in_bytes)),
            format!("{} / {}", s.relayed_out_packets, bytes(s.relayed_out_bytes)),
            s.sessions.to_string(),
            s.roams.to_string(),
        ]);
    }
    let widths: Vec<usize> = (0..header.len())
        .map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0))
        .collect();
    for r in &rows {
        let line: Vec<String> = r
            .iter()
            .zip(&widths)
            .map(|(cell, w)| format!("{cell:<w$}"))
            .collect();
        let _ = writeln!(out, "{}", line.join("  ").trim_end());
    }
    if spokes.is_empty() {
        let _ = writeln!(out, "(no spokes registered: `relayhub spoke add NAME`)");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hub() -> HubStatus {
        HubStatus {
            version: "0.1.0".into(),
            public_key: "k".into(),
            address: "10.88.0.1".into(),
            port: 51820,
            iface: "eth0".into(),
            xdp_mode: "native".into(),
            wg_iface: "relayhub0".into(),
            uptime_secs: 5,
            keepalive_secs: 25,
            up_within_secs: 30,
            down_after_secs: 80,
            underlay_v4: Some("198.51.100.1".into()),
            underlay_v6: None,
            cross_family_path: "xdp".into(),
            store: "/var/lib/relayhub".into(),
            store_up: true,
            replication: None,
        }
    }

    #[test]
    fn table_lists_spokes_aligned() {
        let s = SpokeStatus {
            name: "web1".into(),
            id: 1,
            address: "10.88.0.2".into(),
            public_key: "pk".into(),
            endpoint: Some("203.0.113.5:40000".into()),
            state: "up".into(),
            last_handshake_unix: Some(1000 - 90),
            last_frame_secs_ago: Some(2.2),
            last_keepalive_secs_ago: None,
            keepalive_interval_secs: Some(25.04),
            missed_keepalives: 0,
            keepalives_to_hub: 3,
            keepalives_relayed: 0,
            relayed_in_packets: 10,
            relayed_in_bytes: 1500,
            relayed_out_packets: 9,
            relayed_out_bytes: 999,
            sessions: 2,
            roams: 1,
            peer_hub: None,
            mesh_port: None,
        };
        let t = render_table(&hub(), std::slice::from_ref(&s), 1000);
        let lines: Vec<&str> = t.lines().collect();
        assert!(lines[0].contains("eth0") && lines[0].contains("down > 80s"));
        assert_eq!(
            lines[1],
            "underlay IPv4 198.51.100.1, IPv6 none; IPv4 <-> IPv6 relay path: xdp"
        );
        assert!(lines[2].starts_with("NAME"));
        assert!(lines[3].starts_with("web1  10.88.0.2  up"), "{t}");
        assert!(lines[3].contains("2s ago") && lines[3].contains("90s ago"));
        assert!(lines[3].contains("25.0s, 0 missed"));
        assert!(lines[3].contains("10 / 1.5 KB") && lines[3].contains("9 / 999 B"));
        // Columns line up: STATE starts at the same offset in both lines.
        assert_eq!(lines[2].find("STATE"), lines[3].find("up "));
        // Round trip through JSON (the API's wire format).
        let json = serde_json::to_string(std::slice::from_ref(&s)).unwrap();
        let back: Vec<SpokeStatus> = serde_json::from_str(&json).unwrap();
        assert_eq!(back, vec![s]);
        assert!(render_table(&hub(), &[], 0).contains("no spokes registered"));
    }
}
