//! Network namespaces for tests, each removed with every process in it by
//! a drop guard: [`Netns`] (commands run inside through `ip netns exec`),
//! [`Entered`] (the calling thread lives inside, for BPF test runs and
//! sockets), [`WgGoNs`] (a wireguard-go peer for interop tests) and
//! [`Veth`] pairs. Generated names carry a caller's prefix, the process id
//! and a sequence number so that concurrent tests never collide.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use anyhow::Context;

use crate::cmd::{self, Output, Proc};

static NS_SEQ: AtomicU32 = AtomicU32::new(0);

/// [`cmd::run`] for set-up steps that cannot fail in a working test: panic
/// with the command and its stderr instead.
fn run(args: &[&str]) {
    if let Err(e) = cmd::run(args) {
        panic!("{e:#}");
    }
}

/// Move the calling thread into the network namespace of `ns`.
pub fn enter(ns: &File) -> std::io::Result<()> {
    // SAFETY: plain syscall on a valid descriptor.
    if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

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
        self.ping_in_background(dst, count, interval)
            .join()
            .map_err(|_| anyhow::anyhow!("ping thread panicked"))?
    }

    /// [`Netns::ping`] in a thread of its own: a flow that runs while the
    /// test does something else (a failover, an outage).
    pub fn ping_in_background(
        &self,
        dst: &str,
        count: u32,
        interval: f64,
    ) -> JoinHandle<anyhow::Result<Ping>> {
        // ping's own schedule slips on a loaded machine (a 60 s flow at
        // 200/s ran 67 s while fuzzing shared the CPUs): half again as long.
        let timeout = Duration::from_secs_f64(count as f64 * interval * 1.5 + 5.0);
        let argv = self.argv(&[
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
        ]);
        let (name, dst) = (self.name.clone(), dst.to_owned());
        thread::spawn(move || {
            let out = cmd::run_timeout(&argv, timeout)?;
            Ping::parse(&out.stdout)
                .with_context(|| format!("ping {dst} from {name}: {}{}", out.stdout, out.stderr))
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
    /// Never this process: a test thread that entered the namespace
    /// ([`Entered`]) has left it by then, and must not be signalled if not.
    fn destroy(&mut self) {
        let me = std::process::id();
        for sig in [libc::SIGTERM, libc::SIGKILL] {
            let pids: Vec<u32> = self.pids().into_iter().filter(|&p| p != me).collect();
            if pids.is_empty() {
                break;
            }
            for pid in &pids {
                cmd::signal(*pid, sig);
            }
            let deadline = Instant::now() + Duration::from_secs(2);
            while Instant::now() < deadline && self.pids().iter().any(|&p| p != me) {
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

/// A namespace the calling thread lives in until dropped (then it returns
/// to the namespace it came from and the namespace is destroyed).
pub struct Entered {
    orig: File,
    pub ns: Netns,
}

impl Entered {
    /// A namespace named `rhg-<pid>-<n>`, entered by the calling thread.
    pub fn new() -> Self {
        Self::with_prefix("rhg")
    }

    /// A namespace named `<prefix>-<pid>-<n>`, entered by the calling thread.
    pub fn with_prefix(prefix: &str) -> Self {
        let name = format!(
            "{prefix}-{}-{}",
            std::process::id(),
            NS_SEQ.fetch_add(1, Ordering::Relaxed)
        );
        let ns = Netns::new(&name).expect("create netns");
        let orig = File::open("/proc/thread-self/ns/net").expect("own netns");
        let f = File::open(format!("/run/netns/{name}")).expect("netns file");
        enter(&f).expect("setns");
        Entered { orig, ns }
    }

    pub fn name(&self) -> &str {
        &self.ns.name
    }

    /// `ip -n NAME ARGS...` (`args` split at whitespace).
    pub fn ip(&self, args: &str) {
        let mut v = vec!["ip", "-n", &self.ns.name];
        v.extend(args.split_whitespace());
        run(&v);
    }

    /// `sysctl -w KEY=VALUE` inside.
    pub fn sysctl(&self, kv: &str) {
        let (key, value) = kv.split_once('=').expect("KEY=VALUE");
        if let Err(e) = self.ns.sysctl(key, value) {
            panic!("{e:#}");
        }
    }

    /// A veth pair `a` (MAC `a_mac`) / `b` (MAC `b_mac`) in this namespace.
    pub fn veth(&self, a: &str, a_mac: [u8; 6], b: &str, b_mac: [u8; 6]) {
        self.ip(&format!(
            "link add {a} address {} type veth peer name {b} address {}",
            crate::frame::mac(a_mac),
            crate::frame::mac(b_mac)
        ));
    }

    /// The ifindex of `dev` (the calling thread is inside).
    pub fn ifindex(&self, dev: &str) -> u32 {
        let c = std::ffi::CString::new(dev).unwrap();
        // SAFETY: valid NUL-terminated name.
        let i = unsafe { libc::if_nametoindex(c.as_ptr()) };
        assert_ne!(i, 0, "ifindex of {dev}");
        i
    }
}

impl Default for Entered {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for Entered {
    fn drop(&mut self) {
        // Leave before `ns` is destroyed.
        let _ = enter(&self.orig);
    }
}

/// The namespace `<prefix>-<pid>` (lo up) and its wireguard-go interface
/// `<prefix><pid>`, for wireguard-go initiating to a UDP socket of the
/// test in the same namespace; processes in it are killed and it is
/// deleted on drop. The calling thread stays where it is.
pub struct WgGoNs {
    pub name: String,
    pub ifname: String,
    _ns: Netns,
}

impl WgGoNs {
    pub fn new(prefix: &str) -> Self {
        let tag = format!("{:04x}", std::process::id() & 0xffff);
        let name = format!("{prefix}-{tag}");
        // A leftover of an earlier run with the same (truncated) pid.
        let _ = Command::new("ip").args(["netns", "del", &name]).status();
        WgGoNs {
            ifname: format!("{prefix}{tag}"),
            _ns: Netns::new(&name).expect("create netns"),
            name,
        }
    }

    /// Run `f` on a thread that entered the namespace (sockets it opens
    /// live there).
    pub fn spawn_inside<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> JoinHandle<T> {
        let path = format!("/run/netns/{}", self.name);
        std::thread::spawn(move || {
            let ns = File::open(&path).expect("netns file");
            enter(&ns).expect("setns");
            f()
        })
    }

    /// Start wireguard-go with private key `private` (base64), one peer
    /// `peer` (public key, base64) at `endpoint` (persistent keepalive 1 s,
    /// so it initiates at once), interface up.
    pub fn initiate(&self, private: &str, peer: &str, endpoint: &str) {
        let keyfile = std::env::temp_dir().join(format!("{}.key", self.name));
        std::fs::write(&keyfile, private).unwrap();
        run(&[
            "ip",
            "netns",
            "exec",
            &self.name,
            "wireguard-go",
            &self.ifname,
        ]);
        run(&[
            "ip",
            "netns",
            "exec",
            &self.name,
            "wg",
            "set",
            &self.ifname,
            "private-key",
            keyfile.to_str().unwrap(),
            "peer",
            peer,
            "endpoint",
            endpoint,
            "allowed-ips",
            "10.99.0.2/32",
            "persistent-keepalive",
            "1",
        ]);
        let _ = std::fs::remove_file(&keyfile);
        run(&["ip", "-n", &self.name, "link", "set", &self.ifname, "up"]);
    }
}
