//! Every systemd unit under contrib/ (relayhub.service, and whatever
//! *.service/*.timer/*.socket/*.path comes later) passes `systemd-analyze
//! verify` with no complaint. verify only warns on unknown keys and bad
//! values (exit 0), so any line naming a unit fails too. It also wants
//! ExecStart's program to exist: relayhub is pointed at the built binary.

use std::path::{Path, PathBuf};
use std::process::Command;

const UNIT_SUFFIXES: [&str; 4] = ["service", "timer", "socket", "path"];

/// A temporary directory, removed on drop.
struct Dir(PathBuf);

impl Dir {
    fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!(
            "relayhub-contrib-units-{}-{name}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Dir(dir)
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn contrib() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../contrib")
}

/// Every unit file below `dir`.
fn units(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                todo.push(p);
            } else if p
                .extension()
                .and_then(|x| x.to_str())
                .is_some_and(|x| UNIT_SUFFIXES.contains(&x))
            {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

/// `text` with every Exec*= command whose program is relayhub running
/// `bin` instead (keeps systemd's `-@:+!` prefixes and the arguments).
fn point_at(text: &str, bin: &Path) -> String {
    let mut out = String::new();
    for line in text.lines() {
        let rewritten = line.split_once('=').and_then(|(key, value)| {
            if !key.trim().starts_with("Exec") {
                return None;
            }
            let value = value.trim_start();
            let prog_at = value.find(|c| !"-@:+!".contains(c))?;
            let (prefix, rest) = value.split_at(prog_at);
            let (prog, args) = rest.split_once(' ').unwrap_or((rest, ""));
            // Our programs, where this checkout has them: the built
            // binary, the spoke scripts in contrib/spoke.
            let name = Path::new(prog).file_name()?.to_str()?;
            let ours = match name {
                "relayhub" => bin.to_path_buf(),
                "relayhub-sync" | "relayhub-join" | "relayhub-node" => {
                    Path::new(env!("CARGO_MANIFEST_DIR"))
                        .join("../contrib/spoke")
                        .join(name)
                }
                _ => return None,
            };
            Some(format!("{key}={prefix}{} {args}", ours.display()))
        });
        out.push_str(rewritten.as_deref().unwrap_or(line));
        out.push('\n');
    }
    out
}

/// Copy `units` into `dir` (one directory, so timers find their services)
/// pointed at the built relayhub, and verify them all. Err: what systemd
/// said about them.
fn verify(units: &[PathBuf], dir: &Path) -> Result<(), String> {
    let bin = Path::new(env!("CARGO_BIN_EXE_relayhub"));
    let mut copies = Vec::new();
    for u in units {
        let name = u.file_name().unwrap();
        let copy = dir.join(name);
        assert!(!copy.exists(), "two units named {name:?} under contrib/");
        std::fs::write(&copy, point_at(&std::fs::read_to_string(u).unwrap(), bin)).unwrap();
        copies.push(copy);
    }
    let out = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .args(&copies)
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run systemd-analyze ({e}): `cargo xtask setup` installs it (Debian package systemd)"
            )
        });
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // Lines about other units (the system's own) are not ours to fix.
    let ours: Vec<&str> = said
        .lines()
        .filter(|l| {
            l.contains(&*dir.to_string_lossy())
                || copies.iter().any(|c| {
                    c.file_name()
                        .is_some_and(|n| l.contains(&*n.to_string_lossy()))
                })
        })
        .collect();
    // systemd ignores capability names it does not know, silently.
    let mut unknown_caps = Vec::new();
    for u in units {
        for line in std::fs::read_to_string(u).unwrap().lines() {
            let Some((key, value)) = line.split_once('=') else {
                continue;
            };
            if ["CapabilityBoundingSet", "AmbientCapabilities"].contains(&key.trim()) {
                for cap in value.split_whitespace().map(|c| c.trim_start_matches('~')) {
                    if !CAPABILITIES.contains(&cap) {
                        unknown_caps.push(format!("{}: unknown capability {cap}", u.display()));
                    }
                }
            }
        }
    }
    if out.status.success() && ours.is_empty() && unknown_caps.is_empty() {
        Ok(())
    } else {
        Err(format!("{}\n{said}{}", out.status, unknown_caps.join("\n")))
    }
}

/// capabilities(7), Linux 6.x.
const CAPABILITIES: [&str; 41] = [
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_DAC_READ_SEARCH",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETPCAP",
    "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST",
    "CAP_NET_ADMIN",
    "CAP_NET_RAW",
    "CAP_IPC_LOCK",
    "CAP_IPC_OWNER",
    "CAP_SYS_MODULE",
    "CAP_SYS_RAWIO",
    "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE",
    "CAP_SYS_PACCT",
    "CAP_SYS_ADMIN",
    "CAP_SYS_BOOT",
    "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE",
    "CAP_SYS_TIME",
    "CAP_SYS_TTY_CONFIG",
    "CAP_MKNOD",
    "CAP_LEASE",
    "CAP_AUDIT_WRITE",
    "CAP_AUDIT_CONTROL",
    "CAP_SETFCAP",
    "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN",
    "CAP_SYSLOG",
    "CAP_WAKE_ALARM",
    "CAP_BLOCK_SUSPEND",
    "CAP_AUDIT_READ",
    "CAP_PERFMON",
    "CAP_BPF",
    "CAP_CHECKPOINT_RESTORE",
];

#[test]
fn every_unit_verifies() {
    let found = units(&contrib());
    let names: Vec<String> = found
        .iter()
        .map(|p| p.strip_prefix(contrib()).unwrap().display().to_string())
        .collect();
    assert!(
        names.iter().any(|n| n == "systemd/relayhub.service"),
        "{names:?}"
    );
    let d = Dir::new("all");
    if let Err(e) = verify(&found, &d.0) {
        panic!("systemd-analyze verify on {names:?}: {e}");
    }
    eprintln!("verified {names:?}");
}

/// The check is not vacuous: a unit with a typo in a key, an unknown
/// capability or a missing program fails it.
#[test]
fn a_broken_unit_fails() {
    let good = std::fs::read_to_string(contrib().join("systemd/relayhub.service")).unwrap();
    for (from, to) in [
        ("ProtectHome=yes", "ProtectHom=yes"),
        ("CAP_BPF CAP_PERFMON", "CAP_BPF CAP_PERFMONN"),
        (
            "RestrictAddressFamilies=AF_INET ",
            "RestrictAddressFamilies=AF_INTE ",
        ),
        (
            "ExecStart=/usr/local/bin/relayhub",
            "ExecStart=/nonexistent/relay-hub",
        ),
    ] {
        assert!(good.contains(from), "{from}");
        let d = Dir::new("broken");
        let unit = d.0.join("src").join("relayhub.service");
        std::fs::create_dir_all(unit.parent().unwrap()).unwrap();
        std::fs::write(&unit, good.replacen(from, to, 1)).unwrap();
        let out = d.0.join("out");
        std::fs::create_dir_all(&out).unwrap();
        assert!(verify(&[unit], &out).is_err(), "{to} passed");
    }
}

/// The service restarts without loss: `run --keep-on-exit`, restarted on
/// failure, and its wireguard-go child outlives a restart.
#[test]
fn relayhub_service_keeps_state_across_restarts() {
    let unit = std::fs::read_to_string(contrib().join("systemd/relayhub.service")).unwrap();
    let has = |line: &str| unit.lines().any(|l| l.trim() == line);
    assert!(
        unit.lines()
            .any(|l| l.starts_with("ExecStart=") && l.ends_with(" run --keep-on-exit")),
        "{unit}"
    );
    for line in [
        "Restart=on-failure",
        "KillMode=process",
        "StateDirectory=relayhub",
        "ReadWritePaths=/sys/fs/bpf",
        "RuntimeDirectoryPreserve=yes",
    ] {
        assert!(has(line), "no {line}");
    }
}
