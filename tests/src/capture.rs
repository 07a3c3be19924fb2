//! tcpdump on an interface of a namespace, read back as (src, dst) pairs.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;

use crate::cmd::{self, Proc};
use crate::netns::Netns;

/// A running `tcpdump -ni IF -w FILE`; stopped (SIGTERM) on drop.
pub struct Capture {
    proc: Proc,
    pub file: PathBuf,
}

/// One captured IPv4 packet.
#[derive(Debug, Clone)]
pub struct Packet {
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub line: String,
}

impl Capture {
    /// Start capturing; returns once tcpdump is listening.
    pub fn start(ns: &Netns, iface: &str, dir: &Path, name: &str) -> anyhow::Result<Capture> {
        Self::start_filtered(ns, iface, dir, name, &[])
    }

    /// Start capturing with a pcap filter (e.g. `["udp", "port", "51820"]`).
    pub fn start_filtered(
        ns: &Netns,
        iface: &str,
        dir: &Path,
        name: &str,
        filter: &[&str],
    ) -> anyhow::Result<Capture> {
        let file = dir.join(format!("{name}.pcap"));
        let f = file.to_str().context("utf-8 path")?;
        let mut argv = vec!["tcpdump", "-ni", iface, "-s", "128", "-U", "-w", f];
        argv.extend_from_slice(filter);
        let mut proc = ns.spawn(name, &argv, dir, false)?;
        proc.wait_output("listening on", Duration::from_secs(10))
            .with_context(|| format!("tcpdump on {iface} in {}", ns.name))?;
        Ok(Capture { proc, file })
    }

    /// Stop capturing; the file stays (read it with [`read_wg_frames`]).
    pub fn finish(mut self) -> PathBuf {
        self.proc.stop(Duration::from_secs(5));
        self.file.clone()
    }

    /// What the capture has written so far (`-U`: whole packets as they
    /// are read; a packet being written may be cut off, so tcpdump's
    /// complaint about a truncated file is ignored).
    pub fn so_far(&self) -> anyhow::Result<Vec<Packet>> {
        let f = self.file.to_str().context("utf-8 path")?;
        let out = cmd::run_timeout(&["tcpdump", "-nr", f], Duration::from_secs(30))?;
        Ok(parse_tcpdump(&out.stdout))
    }

    /// `tcpdump -n` text of what the capture has written so far (any
    /// family; [`Capture::so_far`] parses IPv4 only).
    pub fn text(&self) -> anyhow::Result<String> {
        let f = self.file.to_str().context("utf-8 path")?;
        Ok(cmd::run_timeout(&["tcpdump", "-nr", f], Duration::from_secs(30))?.stdout)
    }

    /// Wait (bounded) until the capture holds a packet matching `want`:
    /// under load tcpdump may read a packet from the kernel well after it
    /// passed, and stopping it then loses what it has not read.
    pub fn wait_for(
        &self,
        what: &str,
        timeout: Duration,
        want: impl Fn(&Packet) -> bool,
    ) -> anyhow::Result<()> {
        cmd::wait_for(what, timeout, Duration::from_millis(50), || {
            Ok(self.so_far()?.iter().any(&want).then_some(()))
        })
        .map(|_| ())
    }

    /// Stop and read the capture back.
    pub fn stop(mut self) -> anyhow::Result<Vec<Packet>> {
        self.proc.stop(Duration::from_secs(5));
        let f = self.file.to_str().context("utf-8 path")?;
        let text = cmd::run_timeout(&["tcpdump", "-nr", f], Duration::from_secs(30))?.checked()?;
        Ok(parse_tcpdump(&text))
    }
}

/// Parse `tcpdump -n` lines: `TIME IP SRC[.PORT] > DST[.PORT]: ...`.
pub fn parse_tcpdump(text: &str) -> Vec<Packet> {
    let addr = |s: &str| -> Option<Ipv4Addr> {
        let s = s.trim_end_matches(':');
        let parts: Vec<&str> = s.split('.').collect();
        if parts.len() < 4 {
            return None;
        }
        parts[..4].join(".").parse().ok()
    };
    text.lines()
        .filter_map(|l| {
            let toks: Vec<&str> = l.split_whitespace().collect();
            let i = toks.iter().position(|t| *t == "IP")?;
            if toks.get(i + 2) != Some(&">") {
                return None;
            }
            Some(Packet {
                src: addr(toks.get(i + 1)?)?,
                dst: addr(toks.get(i + 3)?)?,
                line: l.to_string(),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use crate::inject::{self, Datagram, Datagram6};

    /// `tcpdump -n -tt -x` output for one packet.
    fn dump(line: &str, packet: &[u8]) -> String {
        let mut s = format!("{line}\n");
        for (i, chunk) in packet.chunks(16).enumerate() {
            let words: Vec<String> = chunk
                .chunks(2)
                .map(|w| w.iter().map(|b| format!("{b:02x}")).collect())
                .collect();
            s += &format!("\t0x{:04x}:  {}\n", i * 16, words.join(" "));
        }
        s
    }

    #[test]
    fn parses_wireguard_frames_of_both_families() {
        let t4 = inject::transport(0x1234_5678, 96, 1);
        let t6 = inject::transport(0x9abc_def0, 32, 2);
        let p4 = Datagram {
            src: "203.0.113.6".parse().unwrap(),
            sport: 40001,
            dst: "198.51.100.1".parse().unwrap(),
            dport: 51820,
            payload: t4.clone(),
        }
        .packet();
        let p6 = Datagram6 {
            src: "2001:db8:a2::3".parse().unwrap(),
            sport: 47123,
            dst: "2001:db8:100::2".parse().unwrap(),
            dport: 51820,
            payload: t6.clone(),
        }
        .packet();
        let text = dump(
            "1764465123.000001 IP 203.0.113.6.40001 > 198.51.100.1.51820: UDP, length 96",
            &p4,
        ) + &dump(
            "1764465123.000002 IP6 2001:db8:a2::3.47123 > 2001:db8:100::2.51820: UDP, length 32",
            &p6,
        );
        let wg = super::parse_wg_frames(&text);
        assert_eq!(wg.len(), 2);
        assert_eq!(
            (wg[0].src.as_str(), wg[0].kind, wg[0].receiver),
            ("203.0.113.6.40001", 4, Some(0x1234_5678))
        );
        assert_eq!(
            (wg[1].src.as_str(), wg[1].kind, wg[1].receiver, wg[1].len),
            ("2001:db8:a2::3.47123", 4, Some(0x9abc_def0), 32)
        );
        let udp = super::parse_udp_frames(&text);
        assert_eq!(udp.len(), 2);
        assert_eq!(udp[0].payload, t4);
        assert_eq!(udp[1].payload, t6);
        assert_eq!(udp[1].dst, "2001:db8:100::2.51820");
        assert_eq!(inject::marked(&udp).len(), 2);
    }

    #[test]
    fn parses_icmp_and_tcp_lines() {
        let p = super::parse_tcpdump(
            "12:00:00.000001 IP 10.88.0.2 > 10.88.0.1: ICMP echo request, id 1, seq 1, length 64\n\
             12:00:00.000002 IP 10.88.0.3.5201 > 10.88.0.2.40000: Flags [S.], seq 1\n\
             12:00:00.000003 IP6 fe80::1 > ff02::2: ICMP6, router solicitation\n",
        );
        assert_eq!(p.len(), 2);
        assert_eq!(p[0].src.to_string(), "10.88.0.2");
        assert_eq!(p[1].dst.to_string(), "10.88.0.2");
    }
}

/// One WireGuard frame seen on the underlay (`tcpdump -x`; IPv4 without
/// options or IPv6 without extension headers).
#[derive(Debug, Clone)]
pub struct WgFrame {
    /// Seconds since the epoch (from `tcpdump -tt`).
    pub time: f64,
    pub src: String,
    pub dst: String,
    /// 1 initiation, 2 response, 3 cookie, 4 transport.
    pub kind: u8,
    pub len: usize,
    /// Type 1/2: sender index.
    pub sender: Option<u32>,
    /// Type 2/3/4: receiver index.
    pub receiver: Option<u32>,
}

impl WgFrame {
    pub fn kind_name(&self) -> &'static str {
        match (self.kind, self.len) {
            (1, _) => "initiation",
            (2, _) => "response",
            (3, _) => "cookie",
            (4, 32) => "keepalive",
            (4, _) => "transport",
            _ => "?",
        }
    }
}

/// Read a capture of WireGuard UDP frames taken with `-s 128` or more.
pub fn read_wg_frames(file: &Path) -> anyhow::Result<Vec<WgFrame>> {
    let f = file.to_str().context("utf-8 path")?;
    let text = cmd::run_timeout(&["tcpdump", "-nr", f, "-tt", "-x"], Duration::from_secs(30))?
        .checked()?;
    Ok(parse_wg_frames(&text))
}

/// Parse `tcpdump -n -tt -x` output of IPv4/UDP and IPv6/UDP WireGuard frames.
pub fn parse_wg_frames(text: &str) -> Vec<WgFrame> {
    let mut frames = Vec::new();
    let mut cur: Option<(f64, String, String, usize, Vec<u8>)> = None;
    let finish = |c: Option<(f64, String, String, usize, Vec<u8>)>, out: &mut Vec<WgFrame>| {
        let Some((time, src, dst, len, bytes)) = c else {
            return;
        };
        // IPv4 without options, or IPv6 without extension headers.
        let udp_payload = if bytes.first().map(|b| b >> 4) == Some(6) {
            48
        } else {
            28
        };
        let p = &bytes.get(udp_payload..).unwrap_or(&[]);
        let le = |o: usize| {
            p.get(o..o + 4)
                .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        };
        let Some(&kind) = p.first() else { return };
        let (sender, receiver) = match kind {
            1 => (le(4), None),
            2 => (le(4), le(8)),
            3 | 4 => (None, le(4)),
            _ => (None, None),
        };
        out.push(WgFrame {
            time,
            src,
            dst,
            kind,
            len,
            sender,
            receiver,
        });
    };
    for line in text.lines() {
        if let Some(hex) = line.trim_start().strip_prefix("0x") {
            if let Some((_, rest)) = hex.split_once(':')
                && let Some(c) = cur.as_mut()
            {
                for word in rest.split_whitespace() {
                    for i in (0..word.len()).step_by(2) {
                        if let Ok(b) = u8::from_str_radix(&word[i..(i + 2).min(word.len())], 16) {
                            c.4.push(b);
                        }
                    }
                }
            }
            continue;
        }
        finish(cur.take(), &mut frames);
        let toks: Vec<&str> = line.split_whitespace().collect();
        if toks.len() < 5 || !matches!(toks[1], "IP" | "IP6") || toks[3] != ">" {
            continue;
        }
        let Ok(time) = toks[0].parse::<f64>() else {
            continue;
        };
        let len = line
            .rsplit("length ")
            .next()
            .and_then(|l| l.trim().parse().ok())
            .unwrap_or(0);
        cur = Some((
            time,
            toks[2].to_string(),
            toks[4].trim_end_matches(':').to_string(),
            len,
            Vec::new(),
        ));
    }
    finish(cur.take(), &mut frames);
    frames
}

/// One captured IPv4/UDP or IPv6/UDP datagram with its payload (as far as
/// captured).
#[derive(Debug, Clone)]
pub struct UdpFrame {
    /// Seconds since the epoch (from `tcpdump -tt`).
    pub time: f64,
    /// `a.b.c.d.port` or `2001:db8::1.port` as tcpdump prints it.
    pub src: String,
    pub dst: String,
    /// UDP payload bytes (truncated to the snap length).
    pub payload: Vec<u8>,
}

/// Read every IPv4/UDP and IPv6/UDP datagram of a capture with its payload.
pub fn read_udp_frames(file: &Path) -> anyhow::Result<Vec<UdpFrame>> {
    let f = file.to_str().context("utf-8 path")?;
    let text = cmd::run_timeout(&["tcpdump", "-nr", f, "-tt", "-x"], Duration::from_secs(30))?
        .checked()?;
    Ok(parse_udp_frames(&text))
}

/// Parse `tcpdump -n -tt -x` output: IPv4/UDP and IPv6/UDP datagrams and
/// their payloads.
pub fn parse_udp_frames(text: &str) -> Vec<UdpFrame> {
    let mut out = Vec::new();
    let mut cur: Option<(f64, String, String, Vec<u8>)> = None;
    let finish = |c: Option<(f64, String, String, Vec<u8>)>, out: &mut Vec<UdpFrame>| {
        let Some((time, src, dst, bytes)) = c else {
            return;
        };
        // IPv4 or IPv6 (no extension headers), UDP.
        let header = match bytes.first().map(|b| b >> 4) {
            Some(4) if bytes.len() >= 28 && bytes[9] == 17 => usize::from(bytes[0] & 0x0f) * 4,
            Some(6) if bytes.len() >= 48 && bytes[6] == 17 => 40,
            _ => return,
        };
        out.push(UdpFrame {
            time,
            src,
            dst,
            payload: bytes.get(header + 8..).unwrap_or(&[]).to_vec(),
        });
    };
    for line in text.lines() {
        if let Some(hex) = line.trim_start().strip_prefix("0x") {
            if let Some((_, rest)) = hex.split_once(':')
                && let Some(c) = cur.as_mut()
            {
                for word in rest.split_whitespace() {
                    for i in (0..word.len()).step_by(2) {
                        if let Ok(b) = u8::from_str_radix(&word[i..(i + 2).min(word.len())], 16) {
                            c.3.push(b);
                        }
                    }
                }
            }
            continue;
        }
        finish(cur.take(), &mut out);
        let toks: Vec<&str> = line.split_whitespace().collect();
        if toks.len() < 5 || !matches!(toks[1], "IP" | "IP6") || toks[3] != ">" {
            continue;
        }
        let Ok(time) = toks[0].parse::<f64>() else {
            continue;
        };
        cur = Some((
            time,
            toks[2].to_string(),
            toks[4].trim_end_matches(':').to_string(),
            Vec::new(),
        ));
    }
    finish(cur.take(), &mut out);
    out
}
