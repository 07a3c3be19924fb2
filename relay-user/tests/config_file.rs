//! The settings file through the real binary, with variables in each
//! child's own environment: flag, then variable, then file, then default.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// A temporary directory (mode 0700, as the hub makes its state
/// directory), removed on drop.
struct Dir(PathBuf);

impl Dir {
    fn new(name: &str) -> Self {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = std::env::temp_dir().join(format!(
            "relayhub-config-file-it-{}-{name}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).unwrap();
        Dir(dir)
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// `relayhub ARGS` with only `env` of the RELAYHUB_* variables set.
fn relayhub(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_relayhub"));
    for (k, _) in std::env::vars() {
        if k.starts_with("RELAYHUB_") {
            c.env_remove(k);
        }
    }
    c.args(args).envs(env.iter().copied()).output().unwrap()
}

fn stdout_ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn write(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap();
}

#[test]
fn flag_then_variable_then_file_then_default() {
    let d = Dir::new("order");
    let state = d.0.join("state");
    let file = d.0.join("relayhub.toml");
    write(
        &file,
        &format!(
            "state-dir = {:?}\nendpoint = \"file.example\"\nport = 51001\nkeepalive = 11\n",
            state.to_str().unwrap()
        ),
    );
    let f = file.to_str().unwrap();
    // The file alone (named by the variable): its values, the default network.
    let conf = stdout_ok(&relayhub(&["spoke", "add", "a"], &[("RELAYHUB_CONFIG", f)]));
    assert!(conf.contains("Endpoint = file.example:51001\n"), "{conf}");
    assert!(conf.contains("PersistentKeepalive = 11\n"), "{conf}");
    assert!(conf.contains("Address = 10.88.0.2/16\n"), "{conf}");
    assert!(state.is_dir(), "the file's state-dir is not used");
    // A variable beats the file.
    let conf = stdout_ok(&relayhub(
        &["--config", f, "spoke", "config", "a"],
        &[("RELAYHUB_PORT", "51002")],
    ));
    assert!(conf.contains("Endpoint = file.example:51002\n"), "{conf}");
    assert!(conf.contains("PersistentKeepalive = 11\n"), "{conf}");
    // A flag beats the variable and the file.
    let conf = stdout_ok(&relayhub(
        &["--config", f, "spoke", "config", "a", "--port", "51003"],
        &[("RELAYHUB_PORT", "51002")],
    ));
    assert!(conf.contains("Endpoint = file.example:51003\n"), "{conf}");
    // --config beats RELAYHUB_CONFIG: an empty file leaves the defaults
    // (and so the default state directory, which has no spoke `a`).
    let empty = d.0.join("empty.toml");
    write(&empty, "# nothing\n");
    let out = relayhub(
        &[
            "--config",
            empty.to_str().unwrap(),
            "--state-dir",
            state.to_str().unwrap(),
            "--endpoint",
            "x.example",
            "spoke",
            "config",
            "a",
        ],
        &[("RELAYHUB_CONFIG", f)],
    );
    let conf = stdout_ok(&out);
    assert!(conf.contains("Endpoint = x.example:51820\n"), "{conf}");
    assert!(conf.contains("PersistentKeepalive = 25\n"), "{conf}");
}

/// A bad file is a usage error (exit 2) naming FILE:LINE, before anything
/// is written; a named file that is missing is an error too.
#[test]
fn bad_files_are_usage_errors() {
    let d = Dir::new("bad");
    let state = d.0.join("state");
    let file = d.0.join("relayhub.toml");
    let f = file.to_str().unwrap();
    for (text, says) in [
        (
            "port = 51820\nwg-interface = \"x\"\n",
            ":2: unknown key `wg-interface`: did you mean `wg-iface`?",
        ),
        ("\nport = \"51820\"\n", ":2: `port` must be an integer"),
        (
            "xdp-mode = \"fast\"\n",
            ":1: `xdp-mode = \"fast\"`: invalid value 'fast' for '--xdp-mode",
        ),
        ("[run]\nport = 1\n", ":1: [run]: there are no sections"),
    ] {
        write(&file, text);
        let out = relayhub(
            &["--state-dir", state.to_str().unwrap(), "spoke", "add", "a"],
            &[("RELAYHUB_CONFIG", f)],
        );
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{text:?}: {err}");
        assert!(
            err.contains(&format!("{f}{says}")) && !err.contains("panicked"),
            "{text:?}: {err}"
        );
        assert!(out.stdout.is_empty(), "{text:?}");
        assert!(!state.exists(), "{text:?}: wrote state");
    }
    let out = relayhub(
        &["--config", "/nonexistent/relayhub.toml", "spoke", "list"],
        &[],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("/nonexistent/relayhub.toml: cannot read the settings file"),
        "{err}"
    );
}
