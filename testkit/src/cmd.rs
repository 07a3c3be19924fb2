//! Running commands with timeouts, and background processes that are stopped
//! when their guard drops.

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

/// Default limit for one short command (ip, iptables, wg, ...).
pub const SHORT: Duration = Duration::from_secs(20);

/// Fail with a clear message unless we run as root.
pub fn require_root() {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert!(
        euid == 0,
        "relay-tests create network namespaces, veths, iptables rules and WireGuard \
         interfaces: run them as root (e.g. `sudo -E cargo test -p relay-tests --release`); \
         euid is {euid}"
    );
}

/// Tools the harness runs. Missing ones fail the test with a clear message
/// (they are silent otherwise: a missing `ping` looks like packet loss).
pub const TOOLS: &[(&str, &str)] = &[
    ("ip", "iproute2"),
    ("ss", "iproute2"),
    ("ping", "iputils-ping"),
    ("iptables", "iptables"),
    ("ethtool", "ethtool"),
    ("wg", "wireguard-tools"),
    ("wg-quick", "wireguard-tools"),
    ("wireguard-go", "wireguard-go"),
    ("iperf3", "iperf3"),
    ("tcpdump", "tcpdump"),
    ("curl", "curl"),
];

/// Fail with the apt packages to install unless every tool in [`TOOLS`] is on PATH.
pub fn require_tools() {
    let path = std::env::var("PATH").unwrap_or_default();
    let missing: Vec<&(&str, &str)> = TOOLS
        .iter()
        .filter(|(t, _)| {
            !path
                .split(':')
                .chain(["/usr/sbin", "/sbin"])
                .any(|d| Path::new(d).join(t).is_file())
        })
        .collect();
    assert!(
        missing.is_empty(),
        "missing tools: {}; install with `apt-get install -y {}`",
        missing
            .iter()
            .map(|(t, _)| *t)
            .collect::<Vec<_>>()
            .join(", "),
        missing
            .iter()
            .map(|(_, p)| *p)
            .collect::<Vec<_>>()
            .join(" ")
    );
}

/// What a finished command printed.
#[derive(Debug)]
pub struct Output {
    pub argv: Vec<String>,
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl Output {
    pub fn success(&self) -> bool {
        self.status.success()
    }

    /// `Ok(stdout)` if the command succeeded, else an error with its stderr.
    pub fn checked(self) -> anyhow::Result<String> {
        if self.status.success() {
            Ok(self.stdout)
        } else {
            bail!(
                "`{}` failed ({}): {}{}",
                self.argv.join(" "),
                self.status,
                self.stderr.trim(),
                if self.stdout.trim().is_empty() {
                    String::new()
                } else {
                    format!(" | stdout: {}", self.stdout.trim())
                }
            )
        }
    }
}

fn to_strings<S: AsRef<str>>(argv: &[S]) -> Vec<String> {
    argv.iter().map(|s| s.as_ref().to_string()).collect()
}

/// Run `argv`, killing it after `timeout`. A timeout is an error.
pub fn run_timeout<S: AsRef<str>>(argv: &[S], timeout: Duration) -> anyhow::Result<Output> {
    let argv = to_strings(argv);
    let mut child = Command::new(&argv[0])
        .args(&argv[1..])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("spawn `{}`", argv.join(" ")))?;
    let mut out = child.stdout.take().expect("piped");
    let mut err = child.stderr.take().expect("piped");
    let t_out = thread::spawn(move || {
        let mut s = Vec::new();
        let _ = out.read_to_end(&mut s);
        s
    });
    let t_err = thread::spawn(move || {
        let mut s = Vec::new();
        let _ = err.read_to_end(&mut s);
        s
    });
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(st) = child.try_wait()? {
            break st;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            // Readers may hang if a grandchild keeps the pipe; do not join them.
            bail!("`{}` timed out after {:?}", argv.join(" "), timeout);
        }
        thread::sleep(Duration::from_millis(5));
    };
    // A daemonising command (wg-quick starting wireguard-go) may leave a
    // grandchild holding the pipes: give the readers a bounded time only.
    let join = |t: thread::JoinHandle<Vec<u8>>| -> String {
        let until = Instant::now() + Duration::from_secs(2);
        while !t.is_finished() && Instant::now() < until {
            thread::sleep(Duration::from_millis(5));
        }
        if t.is_finished() {
            String::from_utf8_lossy(&t.join().unwrap_or_default()).into_owned()
        } else {
            String::from("<output still held open by a background process>")
        }
    };
    Ok(Output {
        stdout: join(t_out),
        stderr: join(t_err),
        status,
        argv,
    })
}

/// Run `argv` with the [`SHORT`] timeout; `Ok(stdout)` only on success.
pub fn run<S: AsRef<str>>(argv: &[S]) -> anyhow::Result<String> {
    run_timeout(argv, SHORT)?.checked()
}

/// Poll `f` every `every` until it returns `Some`, at most `timeout`.
pub fn wait_for<T>(
    what: &str,
    timeout: Duration,
    every: Duration,
    mut f: impl FnMut() -> anyhow::Result<Option<T>>,
) -> anyhow::Result<T> {
    let deadline = Instant::now() + timeout;
    let mut last_err = None;
    loop {
        match f() {
            Ok(Some(v)) => return Ok(v),
            Ok(None) => {}
            Err(e) => last_err = Some(e),
        }
        if Instant::now() >= deadline {
            match last_err {
                Some(e) => {
                    bail!("timed out after {timeout:?} waiting for {what}; last error: {e:#}")
                }
                None => bail!("timed out after {timeout:?} waiting for {what}"),
            }
        }
        thread::sleep(every);
    }
}

/// Send `sig` to `pid` (a process this test started).
pub fn signal(pid: u32, sig: i32) {
    // SAFETY: kill(2) with a pid we own.
    unsafe {
        libc::kill(pid as libc::pid_t, sig);
    }
}

/// A background process; stopped (SIGTERM, then SIGKILL) when dropped.
/// stdout and stderr go to files so a chatty process can never block.
pub struct Proc {
    pub name: String,
    child: Child,
    stdin: Option<ChildStdin>,
    pub stdout_path: PathBuf,
    pub stderr_path: PathBuf,
    exit: Option<ExitStatus>,
}

impl Proc {
    /// Spawn `argv`; output goes to `<logdir>/<name>.out` / `.err`.
    /// With `keep_stdin` the child's stdin is a pipe that closes on drop.
    pub fn spawn<S: AsRef<str>>(
        name: &str,
        argv: &[S],
        logdir: &Path,
        keep_stdin: bool,
    ) -> anyhow::Result<Proc> {
        let argv = to_strings(argv);
        let stdout_path = logdir.join(format!("{name}.out"));
        let stderr_path = logdir.join(format!("{name}.err"));
        let child = Command::new(&argv[0])
            .args(&argv[1..])
            .stdin(if keep_stdin {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(File::create(&stdout_path)?)
            .stderr(File::create(&stderr_path)?)
            .spawn()
            .with_context(|| format!("spawn `{}`", argv.join(" ")))?;
        let mut child = child;
        let stdin = child.stdin.take();
        Ok(Proc {
            name: name.to_string(),
            child,
            stdin,
            stdout_path,
            stderr_path,
            exit: None,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn stdout(&self) -> String {
        std::fs::read_to_string(&self.stdout_path).unwrap_or_default()
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    /// Last `n` lines of stderr, for error messages.
    pub fn stderr_tail(&self, n: usize) -> String {
        let s = self.stderr();
        let lines: Vec<&str> = s.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// `Some(status)` if the process has exited.
    pub fn try_exit(&mut self) -> Option<ExitStatus> {
        if self.exit.is_none() {
            self.exit = self.child.try_wait().ok().flatten();
        }
        self.exit
    }

    /// Wait for a line containing `needle` on stdout or stderr; fail early if
    /// the process exits.
    pub fn wait_output(&mut self, needle: &str, timeout: Duration) -> anyhow::Result<()> {
        let name = self.name.clone();
        wait_for(
            &format!("`{needle}` from {name}"),
            timeout,
            Duration::from_millis(20),
            || {
                if self.stdout().contains(needle) || self.stderr().contains(needle) {
                    return Ok(Some(()));
                }
                if let Some(st) = self.try_exit() {
                    bail!(
                        "{name} exited ({st}) before printing `{needle}`: {}",
                        self.stderr_tail(20)
                    );
                }
                Ok(None)
            },
        )
    }

    /// SIGTERM (and close stdin), wait up to `grace`, then SIGKILL.
    /// Returns the exit status and whether it stopped within `grace`.
    pub fn stop(&mut self, grace: Duration) -> (Option<ExitStatus>, bool) {
        if let Some(st) = self.try_exit() {
            return (Some(st), true);
        }
        self.stdin.take();
        signal(self.pid(), libc::SIGTERM);
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if let Some(st) = self.try_exit() {
                return (Some(st), true);
            }
            thread::sleep(Duration::from_millis(10));
        }
        let _ = self.child.kill();
        self.exit = self.child.wait().ok();
        (self.exit, false)
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.stop(Duration::from_secs(3));
    }
}
