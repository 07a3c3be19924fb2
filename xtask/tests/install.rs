//! `cargo xtask install --destdir TMP`, the command itself: it builds
//! relayhub (release; already built when `cargo xtask test` runs this) and
//! stages the binary, the unit and the settings.

use std::path::{Path, PathBuf};
use std::process::Command;

/// A temporary directory, removed on drop.
struct Dir(PathBuf);

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn install(destdir: &Path, prefix: &str) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_xtask"))
        .arg("install")
        .arg("--destdir")
        .arg(destdir)
        .args(["--prefix", prefix])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{err}");
    err
}

#[test]
fn install_into_a_destdir() {
    use std::os::unix::fs::PermissionsExt as _;
    let d = Dir(std::env::temp_dir().join(format!("relayhub-install-{}", std::process::id())));
    let _ = std::fs::remove_dir_all(&d.0);
    let said = install(&d.0, "/opt/relayhub");

    let bin = d.0.join("opt/relayhub/bin/relayhub");
    let mode = std::fs::metadata(&bin).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o755, "{}", bin.display());
    let out = Command::new(&bin).arg("--version").output().unwrap();
    assert!(out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stdout).starts_with("relayhub "),
        "{out:?}"
    );

    let unit = std::fs::read_to_string(d.0.join("etc/systemd/system/relayhub.service")).unwrap();
    assert!(
        unit.lines()
            .any(|l| l == "ExecStart=/opt/relayhub/bin/relayhub run --keep-on-exit"),
        "{unit}"
    );
    let settings = d.0.join("etc/relayhub/relayhub.toml");
    let example = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../contrib/relayhub.toml"),
    )
    .unwrap();
    assert_eq!(std::fs::read_to_string(&settings).unwrap(), example);
    assert!(said.contains("systemctl daemon-reload"), "{said}");
    assert!(said.contains("systemctl enable --now relayhub"), "{said}");

    // Again, with the settings edited: they stay, the rest is replaced.
    std::fs::write(&settings, "port = 51999\n").unwrap();
    std::fs::write(&bin, b"old").unwrap();
    let said = install(&d.0, "/opt/relayhub");
    assert_eq!(
        std::fs::read_to_string(&settings).unwrap(),
        "port = 51999\n"
    );
    assert!(said.contains("kept "), "{said}");
    assert!(
        Command::new(&bin)
            .arg("--version")
            .output()
            .unwrap()
            .status
            .success()
    );
    // Nothing but these three files (no temporaries left behind).
    let mut files = Vec::new();
    let mut todo = vec![d.0.clone()];
    while let Some(dir) = todo.pop() {
        for e in std::fs::read_dir(dir).unwrap().flatten() {
            if e.path().is_dir() {
                todo.push(e.path());
            } else {
                files.push(e.path().strip_prefix(&d.0).unwrap().display().to_string());
            }
        }
    }
    files.sort();
    assert_eq!(
        files,
        [
            "etc/relayhub/relayhub.toml",
            "etc/systemd/system/relayhub.service",
            "opt/relayhub/bin/relayhub"
        ]
    );
}

#[test]
fn relative_prefix_is_refused() {
    let d = Dir(std::env::temp_dir().join(format!("relayhub-install-rel-{}", std::process::id())));
    let out = Command::new(env!("CARGO_BIN_EXE_xtask"))
        .arg("install")
        .arg("--destdir")
        .arg(&d.0)
        .args(["--prefix", "usr/local"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--prefix usr/local is not absolute"), "{err}");
    assert!(!d.0.exists());
}
