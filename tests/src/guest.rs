//! Linux kernel WireGuard spokes: a QEMU guest booted with virtme-ng over
//! the host's root filesystem (so it runs the host's wg-quick, ping and
//! shell) on a spoke's LAN, where it takes the spoke's underlay address and
//! so sits behind that spoke's NAT or IPv6 firewall:
//!
//! ```text
//!   [prefix-sK] bridge <prefix>sKb: <prefix>sKl (veth to the NAT/firewall) + tap <prefix>sKg ── guest eth (spoke's address)
//! ```
//!
//! Software emulation (TCG): this machine's /dev/kvm cannot boot a stock
//! kernel, and a guest boots in about 30 s alone. Commands and results go
//! through a directory shared with the guest (`--rwdir`): an agent in the
//! guest runs `cmd.N` as it appears and writes `out.N` as it goes, then
//! `rc.N`. QEMU and the tap live in the spoke's namespace, so they go with
//! it even if the guard below never runs.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use crate::cmd::{self, Proc};
use crate::topology::Topology;

/// What boots a guest: virtme-ng's `vng` and the kernel version it boots
/// (its image at /usr/lib/modules/VERSION/vmlinuz), as `cargo xtask setup`
/// installs them.
#[derive(Clone, Debug)]
pub struct GuestKit {
    pub vng: PathBuf,
    pub kernel: String,
}

impl GuestKit {
    /// From `RELAYHUB_VNG` and `RELAYHUB_GUEST_KERNEL`, which
    /// `cargo xtask test-guests` sets.
    pub fn from_env() -> anyhow::Result<GuestKit> {
        let var = |k: &str| {
            std::env::var(k).with_context(|| {
                format!(
                    "{k} is not set: run `cargo xtask test-guests` (it installs QEMU, \
                     the guest kernel and virtme-ng, and sets RELAYHUB_VNG and \
                     RELAYHUB_GUEST_KERNEL)"
                )
            })
        };
        let kit = GuestKit {
            vng: var("RELAYHUB_VNG")?.into(),
            kernel: var("RELAYHUB_GUEST_KERNEL")?,
        };
        anyhow::ensure!(
            kit.vng.is_file(),
            "RELAYHUB_VNG={} does not exist: run `cargo xtask setup`",
            kit.vng.display()
        );
        let image = Path::new("/usr/lib/modules")
            .join(&kit.kernel)
            .join("vmlinuz");
        anyhow::ensure!(
            image.is_file(),
            "no guest kernel at {}: run `cargo xtask setup`",
            image.display()
        );
        Ok(kit)
    }
}

/// One booting or running guest; see the module docs. Dropping it powers
/// the guest off (then kills QEMU) and removes its bridge and tap.
pub struct Guest {
    /// "k1", "k2", ...: for messages and log file names.
    pub name: String,
    /// The shared directory (host path = guest path).
    pub dir: PathBuf,
    /// `uname -r` in the guest, once ready.
    pub kernel: String,
    ns: String,
    tap: String,
    bridge: String,
    vng: Mutex<Proc>,
    next: AtomicU32,
}

/// A command started in a guest ([`Guest::start`]).
pub struct Pending<'g> {
    guest: &'g Guest,
    n: u32,
}

/// What a guest command printed (stdout and stderr together) and its exit code.
#[derive(Debug)]
pub struct GuestOutput {
    pub rc: i32,
    pub out: String,
}

impl GuestOutput {
    /// `Ok(output)` if the command exited 0.
    pub fn checked(self, what: &str) -> anyhow::Result<String> {
        anyhow::ensure!(
            self.rc == 0,
            "{what} failed (exit {}): {}",
            self.rc,
            self.out.trim()
        );
        Ok(self.out)
    }
}

impl Guest {
    /// Start booting a guest on spoke `i`'s LAN (0-based; an IPv4 spoke
    /// behind its NAT or an IPv6-only spoke behind its firewall). Returns
    /// at once; [`Guest::wait_ready`] waits for the boot.
    pub fn start(topo: &Topology, i: usize, kit: &GuestKit) -> anyhow::Result<Guest> {
        let spoke = &topo.spokes[i];
        let name = format!("k{}", i + 1);
        let p = &topo.prefix;
        let tap = format!("{p}{}g", spoke.name);
        let bridge = format!("{p}{}b", spoke.name);
        let dir = topo.workdir.join(&name);
        std::fs::create_dir_all(&dir)?;

        // The guest's underlay: the spoke's own address and its gateway.
        let (addr, family, gw, lan_ns, lan_if) = match spoke.lan_addr6 {
            None => {
                let nat = &topo.nats[i];
                (
                    format!("{}/24", spoke.lan_addr),
                    "-4",
                    nat.lan_addr.to_string(),
                    &nat.ns,
                    &nat.lan_if,
                )
            }
            Some(a6) => {
                let fw = &topo.firewalls[i - topo.nats.len()];
                (
                    format!("{a6}/64 nodad"),
                    "-6",
                    fw.lan_addr.to_string(),
                    &fw.ns,
                    &fw.lan_if,
                )
            }
        };
        // Bridge the spoke's veth and the guest's tap, and move the
        // spoke's address to the guest: no forwarding hop (and no second
        // NAT) between the guest and its NAT. The NAT forgets the spoke
        // namespace's MAC so its next frame to that address asks again.
        let ns = &spoke.ns;
        ns.sh(&format!(
            "ip link add {bridge} type bridge forward_delay 0
             ip tuntap add dev {tap} mode tap
             ip addr flush dev {lan} scope global
             ip link set {lan} master {bridge}
             ip link set {tap} master {bridge}
             ip link set {tap} up
             ip link set {bridge} up",
            lan = spoke.lan_if
        ))
        .with_context(|| format!("bridge for guest {name} in {}", ns.name))?;
        lan_ns.exec(&["ip", "neigh", "flush", "dev", lan_if])?;

        // A MAC per guest; each guest is on its own LAN anyway.
        let mac = format!("52:54:00:72:68:{:02x}", i + 1);
        let d = dir.to_str().context("utf-8 path")?;
        std::fs::write(
            dir.join("agent.sh"),
            agent_script(d, &mac, &addr, family, &gw),
        )?;

        let netdev = format!(
            "-netdev tap,id=n0,ifname={tap},script=no,downscript=no \
             -device virtio-net-pci,netdev=n0,mac={mac},csum=off,guest_csum=off,gso=off"
        );
        let vng = kit.vng.to_str().context("utf-8 path")?;
        // vng runs virtme-run, from its own venv's bin.
        let bin = kit.vng.parent().context("vng's directory")?;
        let path = format!(
            "PATH={}:{}",
            bin.display(),
            std::env::var("PATH").unwrap_or_default()
        );
        // virtme-run's temporary files (the script's exit code) stay in the
        // work directory even if it is killed.
        let tmp = topo.workdir.join(format!("{name}-tmp"));
        std::fs::create_dir_all(&tmp)?;
        let tmpdir = format!("TMPDIR={}", tmp.display());
        let argv = [
            "env",
            &path,
            &tmpdir,
            vng,
            "--disable-kvm",
            "--disable-microvm",
            "-r",
            &kit.kernel,
            "--memory",
            "512M",
            "--cpus",
            "1",
            "--rwdir",
            d,
            &format!("--qemu-opts={netdev}"),
            "--exec",
            &format!("sh {d}/agent.sh"),
        ];
        // stdin stays open: the guest's console reads it.
        let proc = ns.spawn(&format!("{name}-vng"), &argv, &topo.workdir, true)?;
        Ok(Guest {
            name,
            dir,
            kernel: String::new(),
            ns: ns.name.clone(),
            tap,
            bridge,
            vng: Mutex::new(proc),
            next: AtomicU32::new(0),
        })
    }

    /// Wait (at most `timeout`) until the agent in the guest runs, with
    /// its NIC addressed. Fails early if QEMU exits.
    pub fn wait_ready(&mut self, timeout: Duration) -> anyhow::Result<Duration> {
        let t0 = Instant::now();
        let ready = self.dir.join("ready");
        let failed = self.dir.join("failed");
        cmd::wait_for(
            &format!("guest {} to boot", self.name),
            timeout,
            Duration::from_millis(100),
            || {
                if let Ok(s) = std::fs::read_to_string(&failed) {
                    bail!("guest {}: {}", self.name, s.trim());
                }
                if ready.is_file() {
                    return Ok(Some(()));
                }
                self.check_alive()?;
                Ok(None)
            },
        )
        .with_context(|| self.log_tail())?;
        self.kernel = std::fs::read_to_string(&ready)?.trim().to_string();
        Ok(t0.elapsed())
    }

    /// Fail with the end of QEMU's output if the guest is gone.
    fn check_alive(&self) -> anyhow::Result<()> {
        let mut vng = self.vng.lock().expect("vng lock");
        if let Some(st) = vng.try_exit() {
            bail!("guest {}: vng exited ({st})", self.name);
        }
        Ok(())
    }

    /// The last lines of the guest's console and vng's messages.
    pub fn log_tail(&self) -> String {
        let vng = self.vng.lock().expect("vng lock");
        let tail = |s: String| {
            let lines: Vec<&str> = s.lines().collect();
            lines[lines.len().saturating_sub(30)..].join("\n")
        };
        format!(
            "guest {} console:\n{}\nvng stderr:\n{}",
            self.name,
            tail(vng.stdout()),
            tail(vng.stderr())
        )
    }

    /// Start `script` (sh) in the guest; commands run one at a time, in
    /// the order they were started.
    pub fn start_cmd(&self, script: &str) -> anyhow::Result<Pending<'_>> {
        let n = self.next.fetch_add(1, Ordering::SeqCst);
        let tmp = self.dir.join(format!(".cmd.{n}"));
        std::fs::write(&tmp, script)?;
        // A rename: the agent never sees half a script.
        std::fs::rename(&tmp, self.dir.join(format!("cmd.{n}")))?;
        Ok(Pending { guest: self, n })
    }

    /// Run `script` (sh) in the guest and wait for it, at most `timeout`.
    pub fn run(&self, script: &str, timeout: Duration) -> anyhow::Result<GuestOutput> {
        self.start_cmd(script)?.wait(timeout)
    }

    /// `wg-quick up` the file `text` as interface `wgk`. Returns when the
    /// host saw it up (wg-quick returned in the guest; a few ms late at most).
    pub fn wg_quick_up(&self, text: &str) -> anyhow::Result<Instant> {
        self.start_wg_quick_up(text)?.wait()
    }

    /// Start [`Guest::wg_quick_up`]; commands started before
    /// [`WgUp::wait`] run right after it in the guest.
    pub fn start_wg_quick_up(&self, text: &str) -> anyhow::Result<WgUp<'_>> {
        use std::os::unix::fs::PermissionsExt;
        let conf = self.dir.join("wgk.conf");
        std::fs::write(&conf, text)?;
        std::fs::set_permissions(&conf, std::fs::Permissions::from_mode(0o600))?;
        let p = self.start_cmd(&format!(
            "wg-quick up {} && echo {}",
            conf.display(),
            WgUp::MARK
        ))?;
        Ok(WgUp(p))
    }

    /// Power the guest off and wait for QEMU to exit (bounded), then kill
    /// whatever is left of it. Also done on drop.
    pub fn stop(&mut self) {
        let _ = std::fs::write(self.dir.join("stop"), "");
        let mut vng = self.vng.lock().expect("vng lock");
        let deadline = Instant::now() + Duration::from_secs(15);
        while vng.try_exit().is_none() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        vng.stop(Duration::from_secs(3));
        drop(vng);
        kill_qemu(&self.tap);
        let _ = cmd::run(&["ip", "-n", &self.ns, "link", "del", &self.tap]);
        let _ = cmd::run(&["ip", "-n", &self.ns, "link", "del", &self.bridge]);
    }
}

impl Drop for Guest {
    fn drop(&mut self) {
        self.stop();
    }
}

impl Pending<'_> {
    /// What the command has printed so far.
    pub fn output_so_far(&self) -> String {
        std::fs::read_to_string(self.guest.dir.join(format!("out.{}", self.n))).unwrap_or_default()
    }

    /// Whether the command has finished.
    pub fn done(&self) -> bool {
        self.guest.dir.join(format!("rc.{}", self.n)).is_file()
    }

    /// Wait for the command to finish, at most `timeout`.
    pub fn wait(self, timeout: Duration) -> anyhow::Result<GuestOutput> {
        let g = self.guest;
        let rc_path = g.dir.join(format!("rc.{}", self.n));
        let rc = cmd::wait_for(
            &format!("command {} in guest {}", self.n, g.name),
            timeout,
            Duration::from_millis(10),
            || {
                if let Ok(s) = std::fs::read_to_string(&rc_path) {
                    return Ok(Some(s.trim().parse::<i32>().context("exit code")?));
                }
                g.check_alive()?;
                Ok(None)
            },
        )
        .with_context(|| g.log_tail())?;
        Ok(GuestOutput {
            rc,
            out: self.output_so_far(),
        })
    }
}

/// A `wg-quick up` started in a guest ([`Guest::start_wg_quick_up`]).
pub struct WgUp<'g>(Pending<'g>);

impl WgUp<'_> {
    /// Printed after wg-quick returns: the host takes the time from it,
    /// not from the exit code, which the agent writes a few forks later.
    const MARK: &'static str = "wg-quick-up-done";

    /// Wait until the interface is up; returns when the host saw it.
    pub fn wait(self) -> anyhow::Result<Instant> {
        let p = self.0;
        let g = p.guest;
        let what = format!("wg-quick up in guest {}", g.name);
        let up = cmd::wait_for(
            &what,
            Duration::from_secs(60),
            Duration::from_millis(2),
            || {
                if p.output_so_far().lines().any(|l| l == Self::MARK) {
                    return Ok(Some(Instant::now()));
                }
                if p.done() {
                    bail!("no {}", Self::MARK);
                }
                g.check_alive()?;
                Ok(None)
            },
        );
        let out = p.wait(Duration::from_secs(10))?;
        let up = up.with_context(|| format!("{what}: {}", out.out.trim()))?;
        out.checked(&what)?;
        Ok(up)
    }
}

/// SIGKILL the QEMU process attached to `tap` (our names are unique).
fn kill_qemu(tap: &str) {
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return;
    };
    let needle = format!("ifname={tap},");
    for e in rd.flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        if let Ok(c) = std::fs::read(e.path().join("cmdline"))
            && String::from_utf8_lossy(&c).contains(&needle)
        {
            cmd::signal(pid, libc::SIGKILL);
        }
    }
}

/// The guest's init runs this: load the NIC driver and WireGuard (modules
/// in Debian's kernel; virtme-ng loads only what it needs to boot),
/// address the NIC (found by its MAC), then run commands from the shared
/// directory until `stop` appears. Failures before that go to `failed`.
fn agent_script(dir: &str, mac: &str, addr: &str, family: &str, gw: &str) -> String {
    format!(
        r#"d={dir}
fail() {{ echo "$*" > "$d/failed"; exit 1; }}
modprobe virtio_net || fail "modprobe virtio_net"
modprobe wireguard || fail "modprobe wireguard"
nic=
for i in $(seq 100); do
    for n in /sys/class/net/*; do
        [ "$(cat "$n/address")" = "{mac}" ] && nic=${{n##*/}}
    done
    [ -n "$nic" ] && break
    sleep 0.1
done
[ -n "$nic" ] || fail "no NIC with MAC {mac}"
ip link set lo up
ip link set "$nic" up || fail "ip link set $nic up"
ip addr add {addr} dev "$nic" || fail "ip addr add {addr}"
ip {family} route add default via {gw} || fail "ip route add default via {gw}"
uname -r > "$d/.ready" && mv "$d/.ready" "$d/ready"
n=0
while [ ! -e "$d/stop" ]; do
    if [ -e "$d/cmd.$n" ]; then
        sh "$d/cmd.$n" > "$d/out.$n" 2>&1
        echo $? > "$d/.rc.$n"
        mv "$d/.rc.$n" "$d/rc.$n"
        n=$((n + 1))
    else
        sleep 0.05
    fi
done
"#
    )
}
