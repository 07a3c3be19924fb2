//! Network namespaces and veth pairs with drop guards.

use std::path::Path;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::Context;

use crate::cmd::{self, Output, Proc};

/// A named network namespace (`ip netns`), deleted on drop together with
/// every process still running in it.
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn new(name: &str) -> anyhow::Result<Netns> {
        cmd::run(&["ip", "netns", "add", name]).with_context(|| format!("create netns {name}"))?;
        let ns = Netns {
            name: name.to_string(),
        };
        ns.exec(&["ip", "link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// `ip netns exec NAME argv...`
    pub fn argv<S: AsRef<str>>(&self, argv: &[S]) -> Vec<String> {
        let mut v = vec![
            "ip".to_string(),
            "netns".into(),
            "exec".into(),
            self.name.clone(),
        ];
        v.extend(argv.iter().map(|s| s.as_ref().to_string()));
        v
    }

    /// Run in the namespace; `Ok(stdout)` on success.
    pub fn exec<S: AsRef<str>>(&self, argv: &[S]) -> anyhow::Result<String> {
        cmd::run(&self.argv(argv))
    }

    /// Run in the namespace with a timeout; any exit status.
    pub fn output<S: AsRef<str>>(&self, argv: &[S], timeout: Duration) -> anyhow::Result<Output> {
        cmd::run_timeout(&self.argv(argv), timeout)
    }

    /// Run a shell snippet in the namespace.
    pub fn sh(&self, script: &str) -> anyhow::Result<String> {
        self.exec(&["sh", "-ec", script])
    }

    /// Start a background process in the namespace.
    pub fn spawn<S: AsRef<str>>(
        &self,
        name: &str,
        argv: &[S],
        logdir: &Path,
        keep_stdin: bool,
    ) -> anyhow::Result<Proc> {
        Proc::spawn(name, &self.argv(argv), logdir, keep_stdin)
    }

    pub fn sysctl(&self, key: &str, value: &str) -> anyhow::Result<()> {
        self.exec(&["sysctl", "-qw", &format!("{key}={value}")])
            .map(|_| ())
    }

    /// Pids of processes whose network namespace is this one.
    pub fn pids(&self) -> Vec<u32> {
        cmd::run(&["ip", "netns", "pids", &self.name])
            .map(|s| {
                s.split_whitespace()
                    .filter_map(|p| p.parse().ok())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// `ping -c COUNT -i INTERVAL -W 1 DST` from this namespace.
    pub fn ping(&self, dst: &str, count: u32, interval: f64) -> anyhow::Result<Ping> {
        let timeout = Duration::from_secs_f64(count as f64 * interval + 5.0);
        let out = self.output(
            &[
                "ping",
                "-n",
                "-q",
                "-c",
                &count.to_string(),
                "-i",
                &interval.to_string(),
                "-W",
                "1",
                dst,
            ],
            timeout,
        )?;
        Ping::parse(&out.stdout).with_context(|| {
            format!(
                "ping {dst} from {}: {}{}",
                self.name, out.stdout, out.stderr
            )
        })
    }

    /// One `ping -c1 -W1`: did it get an answer?
    pub fn ping_once(&self, dst: &str) -> bool {
        self.output(
            &["ping", "-n", "-q", "-c", "1", "-W", "1", dst],
            Duration::from_secs(5),
        )
        .map(|o| o.success())
        .unwrap_or(false)
    }

    /// Kill everything in the namespace and delete it (also done on drop).
    fn destroy(&mut self) {
        for sig in [libc::SIGTERM, libc::SIGKILL] {
            let pids = self.pids();
            if pids.is_empty() {
                break;
            }
            for pid in &pids {
                cmd::signal(*pid, sig);
            }
            let deadline = Instant::now() + Duration::from_secs(2);
            while Instant::now() < deadline && !self.pids().is_empty() {
                thread::sleep(Duration::from_millis(20));
            }
        }
        if let Err(e) = cmd::run(&["ip", "netns", "del", &self.name]) {
            eprintln!("warning: deleting netns {}: {e:#}", self.name);
        }
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        self.destroy();
    }
}

/// Counts from `ping -q`.
#[derive(Debug, Clone, Copy)]
pub struct Ping {
    pub transmitted: u32,
    pub received: u32,
}

impl Ping {
    pub fn parse(out: &str) -> anyhow::Result<Ping> {
        // "5 packets transmitted, 5 received, 0% packet loss, time 801ms"
        let line = out
            .lines()
            .find(|l| l.contains("packets transmitted"))
            .context("no summary line in ping output")?;
        let nums: Vec<u32> = line
            .split(',')
            .take(2)
            .filter_map(|part| part.split_whitespace().next()?.parse().ok())
            .collect();
        anyhow::ensure!(nums.len() == 2, "unexpected ping summary: {line}");
        Ok(Ping {
            transmitted: nums[0],
            received: nums[1],
        })
    }

    pub fn lost(&self) -> u32 {
        self.transmitted - self.received
    }
}

/// A veth pair created directly inside two namespaces; TX checksum offload is
/// off on both ends (a real wire carries complete checksums) and both are up.
/// Deleting either end deletes the pair; it also goes with its namespaces.
pub struct Veth {
    pub a: String,
    pub a_ns: String,
    pub b: String,
    pub b_ns: String,
}

impl Veth {
    pub fn new(a: &str, a_ns: &Netns, b: &str, b_ns: &Netns) -> anyhow::Result<Veth> {
        for n in [a, b] {
            anyhow::ensure!(
                n.len() <= 15,
                "interface name {n} is longer than 15 characters"
            );
        }
        cmd::run(&[
            "ip", "link", "add", a, "netns", &a_ns.name, "type", "veth", "peer", "name", b,
            "netns", &b_ns.name,
        ])
        .with_context(|| format!("create veth {a} ({}) <-> {b} ({})", a_ns.name, b_ns.name))?;
        let v = Veth {
            a: a.into(),
            a_ns: a_ns.name.clone(),
            b: b.into(),
            b_ns: b_ns.name.clone(),
        };
        for (ns, dev) in [(a_ns, a), (b_ns, b)] {
            ns.exec(&["ethtool", "-K", dev, "tx", "off"])?;
            ns.exec(&["ip", "link", "set", dev, "up"])?;
        }
        Ok(v)
    }
}

impl Drop for Veth {
    fn drop(&mut self) {
        // Usually already gone with a namespace; errors are expected then.
        let _ = cmd::run_timeout(
            &["ip", "-n", &self.a_ns, "link", "del", &self.a],
            cmd::SHORT,
        );
    }
}
