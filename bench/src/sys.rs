//! Namespaces, CPU accounting and pinning.

use std::fs::File;
use std::os::fd::AsRawFd;

use anyhow::{Context, bail};

/// Run `f` on a thread that entered network namespace `ns` first (sockets,
/// interface names and XDP attachments then resolve there).
pub fn in_netns<T: Send>(
    ns: &str,
    f: impl FnOnce() -> anyhow::Result<T> + Send,
) -> anyhow::Result<T> {
    std::thread::scope(|s| {
        s.spawn(|| {
            let fd = File::open(format!("/var/run/netns/{ns}"))
                .with_context(|| format!("open netns {ns}"))?;
            // SAFETY: setns on this thread only, with a valid fd.
            if unsafe { libc::setns(fd.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                bail!("setns {ns}: {}", std::io::Error::last_os_error());
            }
            f()
        })
        .join()
        .map_err(|_| anyhow::anyhow!("thread in netns {ns} panicked"))?
    })
}

/// Pin the calling thread to `cpu`.
pub fn pin_self(cpu: usize) {
    // SAFETY: a zeroed cpu_set_t is valid; CPU_SET stays in bounds for small cpus.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set);
    }
}

/// Pin every thread of `pid` to `cpu`.
pub fn pin_pid(pid: u32, cpu: usize) {
    for tid in tids(pid) {
        // SAFETY: as above; tid is a thread we (or our children) own.
        unsafe {
            let mut set: libc::cpu_set_t = std::mem::zeroed();
            libc::CPU_SET(cpu, &mut set);
            libc::sched_setaffinity(tid as i32, size_of::<libc::cpu_set_t>(), &set);
        }
    }
}

pub fn tids(pid: u32) -> Vec<u32> {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| e.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// CPU time (ns) a thread has run: first field of schedstat.
pub fn thread_ns(pid: u32, tid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/schedstat"))
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// Total CPU time (ns) of all threads of `pids`.
pub fn cpu_ns(pids: &[u32]) -> u64 {
    pids.iter()
        .map(|&p| tids(p).into_iter().map(|t| thread_ns(p, t)).sum::<u64>())
        .sum()
}

/// Kernel threads running the NAPI poll of `iface` (threaded NAPI):
/// comm is `napi/<iface>-<id>`, cut to 15 characters.
pub fn napi_threads(iface: &str) -> Vec<u32> {
    let want: String = format!("napi/{iface}-").chars().take(15).collect();
    let mut v = Vec::new();
    if let Ok(rd) = std::fs::read_dir("/proc") {
        for e in rd.flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
                continue;
            };
            if let Ok(c) = std::fs::read_to_string(format!("/proc/{pid}/comm"))
                && c.trim_end().starts_with(&want)
            {
                v.push(pid);
            }
        }
    }
    v
}

/// Run a command, Ok(stdout) on success.
pub fn sh(script: &str) -> anyhow::Result<String> {
    let out = std::process::Command::new("sh")
        .args(["-ec", script])
        .output()
        .with_context(|| format!("sh -ec {script}"))?;
    if !out.status.success() {
        bail!(
            "`{script}` failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `ip netns exec NS sh -ec SCRIPT` (sysfs of the namespace is mounted).
pub fn ns_sh(ns: &str, script: &str) -> anyhow::Result<String> {
    let out = std::process::Command::new("ip")
        .args(["netns", "exec", ns, "sh", "-ec", script])
        .output()
        .with_context(|| format!("ip netns exec {ns}"))?;
    if !out.status.success() {
        bail!(
            "[{ns}] `{script}` failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Make `iface`'s receive path run in its own NAPI kernel thread and pin
/// that thread to `cpu`. GRO on creates the veth's NAPI context when no
/// native XDP program does. Returns the thread pids.
pub fn threaded_napi(ns: &str, iface: &str, cpu: usize) -> anyhow::Result<Vec<u32>> {
    ns_sh(
        ns,
        &format!(
            "ethtool -K {iface} gro on >/dev/null 2>&1 || true
             echo 0 > /sys/class/net/{iface}/threaded
             echo 1 > /sys/class/net/{iface}/threaded"
        ),
    )?;
    let mut pids = Vec::new();
    for _ in 0..50 {
        pids = napi_threads(iface);
        if !pids.is_empty() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    if pids.is_empty() {
        bail!("no NAPI thread for {iface} after enabling threaded NAPI");
    }
    for &p in &pids {
        pin_pid(p, cpu);
    }
    Ok(pids)
}

/// rx_packets of an interface.
pub fn rx_packets(ns: &str, iface: &str) -> u64 {
    ns_sh(
        ns,
        &format!("cat /sys/class/net/{iface}/statistics/rx_packets"),
    )
    .ok()
    .and_then(|s| s.trim().parse().ok())
    .unwrap_or(0)
}

pub fn mac_of(ns: &str, iface: &str) -> anyhow::Result<[u8; 6]> {
    let s = ns_sh(ns, &format!("cat /sys/class/net/{iface}/address"))?;
    let v: Vec<u8> = s
        .trim()
        .split(':')
        .filter_map(|h| u8::from_str_radix(h, 16).ok())
        .collect();
    v.try_into()
        .map_err(|_| anyhow::anyhow!("bad MAC of {iface}: {s}"))
}

/// SCHED_FIFO priority 10 for every thread of `pid`.
pub fn fifo(pid: u32) {
    for tid in tids(pid) {
        let p = libc::sched_param { sched_priority: 10 };
        // SAFETY: valid param pointer.
        unsafe { libc::sched_setscheduler(tid as i32, libc::SCHED_FIFO, &p) };
    }
}

/// A neighbour entry for the hub's default route in `topo`'s hub
/// namespace, as after traffic: a relayed frame's bpf_fib_lookup then
/// succeeds (XDP_TX) instead of NO_NEIGH.
pub fn prime_hub_neighbour(topo: &relay_tests::Topology) -> anyhow::Result<()> {
    ns_sh(
        &topo.hub.name,
        &format!(
            "ping -c1 -W1 {} >/dev/null || true",
            relay_tests::topology::ROUTER_HUB_ADDR
        ),
    )?;
    Ok(())
}

/// The index of interface `name` in the calling thread's namespace (0:
/// none).
pub fn ifindex(name: &str) -> anyhow::Result<u32> {
    let c = std::ffi::CString::new(name)?;
    // SAFETY: valid C string.
    Ok(unsafe { libc::if_nametoindex(c.as_ptr()) })
}

/// Per CPU (cpu0, cpu1, ...): (idle + iowait, total) jiffies from /proc/stat.
pub fn cpu_times() -> Vec<(u64, u64)> {
    std::fs::read_to_string("/proc/stat")
        .unwrap_or_default()
        .lines()
        .filter(|l| l.starts_with("cpu") && l.as_bytes().get(3).is_some_and(u8::is_ascii_digit))
        .map(|l| {
            let v: Vec<u64> = l
                .split_whitespace()
                .skip(1)
                .filter_map(|x| x.parse().ok())
                .collect();
            let idle = v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0);
            (idle, v.iter().sum())
        })
        .collect()
}

/// Each CPU's idle fraction since `before` ([`cpu_times`]).
pub fn idle_since(before: &[(u64, u64)]) -> Vec<f64> {
    cpu_times()
        .iter()
        .zip(before)
        .map(|(a, b)| (a.0 - b.0) as f64 / (a.1 - b.1).max(1) as f64)
        .collect()
}

/// The router's end of the hub link ready for what the hub sends with
/// XDP_TX: such frames reach a veth peer only if XDP runs there too (an
/// XDP_PASS program), and the peer's receive runs in a threaded-NAPI
/// thread pinned to `cpu`. Detached when the returned link drops.
pub fn router_receives_xdp(
    topo: &relay_tests::Topology,
    cpu: usize,
) -> anyhow::Result<crate::bpfraw::XdpLink> {
    use crate::bpfraw;
    let rif = topo.router_hub_if.clone();
    let link = in_netns(&topo.router.name, || {
        bpfraw::attach(
            bpfraw::load("pass", &bpfraw::pass())?,
            &rif,
            bpfraw::XDP_FLAGS_DRV_MODE,
        )
    })?;
    threaded_napi(&topo.router.name, &rif, cpu)?;
    Ok(link)
}

/// The load average (1, 5, 15 min) from /proc/loadavg; NaN if unreadable.
pub fn loadavg() -> [f64; 3] {
    let text = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let mut f = text
        .split_whitespace()
        .map(|x| x.parse().unwrap_or(f64::NAN));
    [(); 3].map(|_| f.next().unwrap_or(f64::NAN))
}

/// [`loadavg`] as /proc/loadavg writes it.
pub fn loadavg_text(l: [f64; 3]) -> String {
    format!("{:.2} {:.2} {:.2}", l[0], l[1], l[2])
}

/// Where frames are lost on the way, as cumulative counters named
/// `ns/what` (only those that can be non-zero): every namespace whose name
/// starts with `prefix` — UDP receive errors of its sockets (a full
/// receive buffer among them) and each link's drop counters from
/// `ethtool -S` and `ip -s link` — and each CPU's backlog drops
/// (/proc/net/softnet_stat, shared by all namespaces).
pub fn drop_counters(prefix: &str) -> std::collections::BTreeMap<String, u64> {
    let mut out = std::collections::BTreeMap::new();
    let namespaces = sh("ip netns list").unwrap_or_default();
    let script = r#"
awk '/^Udp:/ {if (!h) {split($0, k); h=1} else {for (i=2;i<=NF;i++) if (k[i]=="InErrors"||k[i]=="RcvbufErrors") print "udp4_" k[i], $i}}' /proc/net/snmp
awk '$1=="Udp6InErrors"||$1=="Udp6RcvbufErrors" {print $1, $2}' /proc/net/snmp6
for l in $(ls /sys/class/net); do
  for c in rx_dropped tx_dropped; do echo "$l.$c $(cat /sys/class/net/$l/statistics/$c)"; done
  ethtool -S "$l" 2>/dev/null | awk -v l="$l" '/drops|errors/ {sub(":", "", $1); print l "." $1, $2}'
done
"#;
    for ns in namespaces
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| n.starts_with(prefix))
    {
        for line in ns_sh(ns, script).unwrap_or_default().lines() {
            let mut f = line.split_whitespace();
            if let (Some(k), Some(Ok(v))) = (f.next(), f.next().map(str::parse::<u64>)) {
                out.insert(format!("{ns}/{k}"), v);
            }
        }
    }
    let softnet = std::fs::read_to_string("/proc/net/softnet_stat").unwrap_or_default();
    for (cpu, line) in softnet.lines().enumerate() {
        // Second column: frames dropped because the backlog was full.
        if let Some(v) = line.split_whitespace().nth(1)
            && let Ok(v) = u64::from_str_radix(v, 16)
        {
            out.insert(format!("cpu{cpu}/backlog_drops"), v);
        }
    }
    out
}

/// Counters of [`drop_counters`] that grew from `a` to `b`.
pub fn grown(
    a: &std::collections::BTreeMap<String, u64>,
    b: &std::collections::BTreeMap<String, u64>,
) -> Vec<(String, u64)> {
    b.iter()
        .filter_map(|(k, &v)| {
            let d = v.saturating_sub(a.get(k).copied().unwrap_or(0));
            (d > 0).then(|| (k.clone(), d))
        })
        .collect()
}

/// A sysctl of the initial namespace set until dropped, then put back.
pub struct SysctlGuard {
    path: String,
    old: String,
}

impl SysctlGuard {
    /// `key` in dotted form (`net.core.rmem_default`).
    pub fn set(key: &str, value: &str) -> anyhow::Result<Self> {
        let path = format!("/proc/sys/{}", key.replace('.', "/"));
        let old = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
        std::fs::write(&path, value).with_context(|| format!("setting {key} = {value}"))?;
        Ok(Self {
            path,
            old: old.trim().to_string(),
        })
    }
}

impl Drop for SysctlGuard {
    fn drop(&mut self) {
        if let Err(e) = std::fs::write(&self.path, &self.old) {
            eprintln!("putting {} back to {}: {e}", self.path, self.old);
        }
    }
}
