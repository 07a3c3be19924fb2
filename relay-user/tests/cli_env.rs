//! The environment variables of the command line, through the real binary
//! (each child has its own environment; a test setting variables in its
//! own process would race the other tests' threads).

use std::path::PathBuf;
use std::process::{Command, Output};

/// A fresh state directory (mode 0700, as the hub makes it), removed on drop.
struct State(PathBuf);

impl State {
    fn new(name: &str) -> Self {
        use std::os::unix::fs::PermissionsExt as _;
        let dir =
            std::env::temp_dir().join(format!("relayhub-cli-env-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).unwrap();
        State(dir)
    }
}

impl Drop for State {
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

#[test]
fn variables_set_what_the_flags_set() {
    let s = State::new("vars");
    let dir = s.0.to_str().unwrap();
    let out = relayhub(
        &["spoke", "add", "a"],
        &[
            ("RELAYHUB_STATE_DIR", dir),
            ("RELAYHUB_ENDPOINT", "hub.example.net"),
            ("RELAYHUB_PORT", "51999"),
            ("RELAYHUB_KEEPALIVE", "7"),
            ("RELAYHUB_NETWORK", "10.77.0.0/24"),
        ],
    );
    let conf = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for line in [
        "Address = 10.77.0.2/24",
        "AllowedIPs = 10.77.0.1/32",
        "Endpoint = hub.example.net:51999",
        "PersistentKeepalive = 7",
    ] {
        assert!(conf.lines().any(|l| l == line), "no {line:?} in:\n{conf}");
    }
    // A flag beats its variable.
    let out = relayhub(
        &["spoke", "config", "a", "--keepalive", "9", "--port", "5000"],
        &[
            ("RELAYHUB_STATE_DIR", dir),
            ("RELAYHUB_ENDPOINT", "hub.example.net"),
            ("RELAYHUB_PORT", "51999"),
            ("RELAYHUB_KEEPALIVE", "7"),
            ("RELAYHUB_NETWORK", "10.77.0.0/24"),
        ],
    );
    let conf = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(conf.contains("Endpoint = hub.example.net:5000\n"), "{conf}");
    assert!(conf.contains("PersistentKeepalive = 9\n"), "{conf}");
}

/// A bad value in a variable is a usage error naming the option and the
/// value (exit status 2, nothing written), not a panic.
#[test]
fn bad_variables_are_usage_errors() {
    let s = State::new("bad");
    let dir = s.0.to_str().unwrap();
    for (var, value, flag) in [
        ("RELAYHUB_PORT", "abc", "--port"),
        ("RELAYHUB_NETWORK", "10.88.0.0/31", "--network"),
        ("RELAYHUB_KEEP_ON_EXIT", "maybe", "--keep-on-exit"),
        ("RELAYHUB_XDP_MODE", "fast", "--xdp-mode"),
    ] {
        // Should parsing ever accept the value, the invalid WireGuard
        // interface name stops the hub before it changes anything on the
        // system (it would write its key to the state directory, which
        // fails the check below).
        let out = relayhub(
            &["run", "--wg-iface", "not/valid", "--iface", "rhcli-none0"],
            &[("RELAYHUB_STATE_DIR", dir), (var, value)],
        );
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{var}={value}: {err}");
        assert!(
            err.contains(flag) && err.contains(value) && !err.contains("panicked"),
            "{var}={value}: {err}"
        );
    }
    assert_eq!(std::fs::read_dir(&s.0).unwrap().count(), 0, "wrote state");
}
