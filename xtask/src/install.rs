//! `cargo xtask install`: the release binary, the systemd unit and the
//! example settings, under DESTDIR (a package's staging root) or /.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

/// Where the unit and the settings go (systemd and relayhub look there).
const UNIT: &str = "/etc/systemd/system/relayhub.service";
const SETTINGS: &str = "/etc/relayhub/relayhub.toml";

/// `path` (absolute) under `destdir`.
fn under(destdir: &Path, path: &Path) -> PathBuf {
    destdir.join(path.strip_prefix("/").unwrap_or(path))
}

/// The unit with its ExecStart running `bin`.
pub fn unit_for(unit: &str, bin: &Path) -> Result<String> {
    let mut out = String::new();
    let mut found = 0;
    for line in unit.lines() {
        match line.strip_prefix("ExecStart=") {
            Some(cmd) => {
                let (prog, args) = cmd.split_once(' ').unwrap_or((cmd, ""));
                if Path::new(prog).file_name().is_none_or(|n| n != "relayhub") {
                    bail!("the unit's ExecStart runs {prog}, not relayhub");
                }
                found += 1;
                out.push_str(&format!("ExecStart={} {args}", bin.display()));
            }
            None => out.push_str(line),
        }
        out.push('\n');
    }
    if found != 1 {
        bail!("the unit has {found} ExecStart lines, expected one");
    }
    Ok(out)
}

/// Write `bytes` to `path` with `mode`, through a temporary file and a
/// rename: a running relayhub's binary cannot be opened for writing
/// (ETXTBSY), and no reader ever sees half a file.
fn write_new(path: &Path, bytes: &[u8], mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = path.parent().context("no parent directory")?;
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let name = path.file_name().context("no file name")?.to_string_lossy();
    let tmp = dir.join(format!(".{name}.new"));
    std::fs::write(&tmp, bytes).with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("cannot chmod {}", tmp.display()))?;
    std::fs::rename(&tmp, path)
        .with_context(|| format!("cannot move {} to {}", tmp.display(), path.display()))
}

/// What can be refused before building.
pub fn check_args(destdir: Option<&Path>, prefix: &Path) -> Result<()> {
    if !prefix.is_absolute() {
        bail!(
            "--prefix {} is not absolute (the unit's ExecStart needs an absolute path)",
            prefix.display()
        );
    }
    if destdir.is_none() && !crate::setup::is_root() {
        bail!("installing into / needs root: run as root, or stage with --destdir DIR");
    }
    Ok(())
}

/// Install `bin` as PREFIX/bin/relayhub, contrib/'s unit (ExecStart
/// pointed at it) and example settings (only where there are none yet)
/// under `destdir`, and print what to do next.
pub fn install(bin: &Path, contrib: &Path, destdir: Option<&Path>, prefix: &Path) -> Result<()> {
    check_args(destdir, prefix)?;
    let root = destdir.unwrap_or(Path::new("/"));
    let installed_bin = prefix.join("bin/relayhub");

    let binary = std::fs::read(bin).with_context(|| format!("cannot read {}", bin.display()))?;
    let target = under(root, &installed_bin);
    write_new(&target, &binary, 0o755)?;
    eprintln!("installed {}", target.display());

    let unit_src = contrib.join("systemd/relayhub.service");
    let unit = std::fs::read_to_string(&unit_src)
        .with_context(|| format!("cannot read {}", unit_src.display()))?;
    let unit =
        unit_for(&unit, &installed_bin).with_context(|| format!("in {}", unit_src.display()))?;
    // Ours to replace: local changes belong in drop-ins (systemctl edit).
    let target = under(root, Path::new(UNIT));
    write_new(&target, unit.as_bytes(), 0o644)?;
    eprintln!("installed {}", target.display());

    let settings_src = contrib.join("relayhub.toml");
    let target = under(root, Path::new(SETTINGS));
    if target.exists() {
        eprintln!(
            "kept {} (exists; the example is {})",
            target.display(),
            settings_src.display()
        );
    } else {
        let example = std::fs::read(&settings_src)
            .with_context(|| format!("cannot read {}", settings_src.display()))?;
        write_new(&target, &example, 0o644)?;
        eprintln!("installed {}", target.display());
    }

    if destdir.is_some() {
        eprintln!(
            "\nstaged under {}; on the hub, after copying:",
            root.display()
        );
    } else {
        eprintln!("\nnext:");
    }
    eprintln!(
        "  edit {SETTINGS} (every key is commented out at its default)\n  \
         systemctl daemon-reload\n  \
         systemctl enable --now relayhub\n  \
         systemctl status relayhub; {} status\n\
         An upgrade is the same install then `systemctl restart relayhub`: \
         the relay keeps running meanwhile (--keep-on-exit).\n\
         The hub needs iproute2, and wireguard-go where the kernel has no WireGuard module.",
        installed_bin.display()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unit_runs_the_installed_binary() {
        let unit =
            "[Service]\nExecStart=/usr/local/bin/relayhub run --keep-on-exit\nRestart=on-failure\n";
        assert_eq!(
            unit_for(unit, Path::new("/opt/rh/bin/relayhub")).unwrap(),
            "[Service]\nExecStart=/opt/rh/bin/relayhub run --keep-on-exit\nRestart=on-failure\n"
        );
        assert!(unit_for("[Service]\nExecStart=/bin/true\n", Path::new("/x")).is_err());
        assert!(unit_for("[Service]\n", Path::new("/x")).is_err());
        assert_eq!(
            under(Path::new("/tmp/d"), Path::new("/etc/x")),
            Path::new("/tmp/d/etc/x")
        );
    }
}
