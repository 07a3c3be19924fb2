//! A state directory written by relayhub 0.1.0 (tests/fixtures/state-0.1.0)
//! loads unchanged: the current binary prints the same spokes, peers,
//! keys and policy for it (the expected configs follow today's file format:
//! the tunnel prefix in Address and the relayhub-sync note, since issue
//! 17; since issue 18 the /16 default network, which holds every address
//! 0.1.0 gave out, and PersistentKeepalive on the hub peer only), and its
//! first write moves the old `ipv6-spokes` side
//! file into the registry records without changing what it prints.

use std::path::{Path, PathBuf};
use std::process::Command;

const FIXTURE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/state-0.1.0");

/// A copy of the fixture's state directory (mode 0700, as the hub makes
/// it), removed on drop.
struct StateCopy(PathBuf);

impl StateCopy {
    fn new() -> Self {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = std::env::temp_dir().join(format!(
            "relayhub-state-compat-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).unwrap();
        for e in std::fs::read_dir(Path::new(FIXTURE).join("state")).unwrap() {
            let e = e.unwrap();
            std::fs::copy(e.path(), dir.join(e.file_name())).unwrap();
        }
        StateCopy(dir)
    }

    fn relayhub(&self, args: &[&str]) -> String {
        let out = Command::new(env!("CARGO_BIN_EXE_relayhub"))
            .arg("--state-dir")
            .arg(&self.0)
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "relayhub {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    fn file(&self, name: &str) -> Option<String> {
        std::fs::read_to_string(self.0.join(name)).ok()
    }
}

impl Drop for StateCopy {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn expected(name: &str, state: &StateCopy) -> String {
    std::fs::read_to_string(Path::new(FIXTURE).join(name))
        .unwrap()
        .replace("STATE_DIR", &state.0.display().to_string())
}

fn assert_prints_as_0_1_0(state: &StateCopy) {
    for spoke in ["web1", "db1", "six"] {
        assert_eq!(
            state.relayhub(&["spoke", "config", spoke]),
            expected(&format!("config-{spoke}.conf"), state),
            "spoke config {spoke}"
        );
    }
    assert_eq!(
        state.relayhub(&["spoke", "list"]),
        expected("spoke-list.txt", state)
    );
    assert_eq!(
        state.relayhub(&["policy", "show"]),
        expected("policy-show.txt", state)
    );
}

#[test]
fn state_dir_of_0_1_0_loads_unchanged() {
    let state = StateCopy::new();
    let key = state.file("hub.key").unwrap();
    let registry = state.file("spokes.json").unwrap();
    assert_prints_as_0_1_0(&state);
    // Reading wrote nothing.
    assert_eq!(state.file("spokes.json").unwrap(), registry);
    assert!(state.file("ipv6-spokes").is_some());

    // The first registry write migrates the side file...
    let added = state.relayhub(&["spoke", "add", "new1"]);
    assert!(added.contains("Address = 10.88.0.5/16"), "{added}");
    assert!(state.file("ipv6-spokes").is_none());
    let migrated = state.file("spokes.json").unwrap();
    assert_eq!(
        migrated.matches("\"family\": \"ipv6\"").count(),
        1,
        "{migrated}"
    );
    // ...and the old spokes print exactly as before (plus the new peer).
    let six = state.relayhub(&["spoke", "config", "six"]);
    assert!(
        six.starts_with(&expected("config-six.conf", &state)),
        "{six}"
    );
    assert!(six.contains("# new1\n"), "{six}");
    assert!(six.contains("Endpoint = [2001:db8::10]:51820"));
    state.relayhub(&["spoke", "remove", "new1"]);
    assert_prints_as_0_1_0(&state);
    assert_eq!(
        state.file("hub.key").unwrap(),
        key,
        "the hub key is never rewritten"
    );
}
