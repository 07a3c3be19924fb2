//! Pinned maps across controller restarts (in the kernel, on bpffs): a new
//! controller adopts the maps of its own layout version with their
//! contents, and never adopts pins of another layout, even when their
//! types and sizes match (a key or value whose meaning changed at the same
//! size would be misread): those are removed and fresh maps start.

use std::path::{Path, PathBuf};

use relay_common::{SESSION_FROM_INITIATION, SessionKey, SessionValue};
use relay_user::datapath::{Capacity, Datapath, PIN_LAYOUT, PinDir};

const ROOT: &str = "/sys/fs/bpf";

/// A pin root of our own on bpffs, removed on drop.
struct PinRoot(PathBuf);

impl PinRoot {
    fn new() -> Option<Self> {
        let root = Path::new(ROOT).join(format!("relayhub-test-pins-{}", std::process::id()));
        std::fs::create_dir_all(&root).ok()?;
        Some(PinRoot(root))
    }

    fn pins(&self) -> PinDir {
        PinDir::for_iface(&self.0, "pinlayout0").expect("bpffs")
    }
}

impl Drop for PinRoot {
    fn drop(&mut self) {
        self.pins().remove();
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn load(root: &PinRoot) -> Datapath {
    let cap = Capacity::default();
    let mut dp = Datapath::load(relay_user::EBPF_OBJECT, &cap, 51820, 0, Some(root.pins()))
        .expect("load the relay program with pins");
    // Leave the pins for the next "controller".
    dp.set_keep_on_drop(true);
    dp
}

#[test]
fn pins_of_another_layout_are_never_adopted() {
    if !nix::unistd::Uid::effective().is_root() {
        eprintln!("skipped: needs root (BPF, bpffs)");
        return;
    }
    let Some(root) = PinRoot::new() else {
        eprintln!("skipped: no bpffs at {ROOT}");
        return;
    };
    let key = SessionKey {
        src_slot: 3,
        receiver: 0xfeed_beef,
    };
    let value = SessionValue {
        dst_slot: 4,
        flags: SESSION_FROM_INITIATION,
        last_seen_ns: 1,
    };
    {
        let mut dp = load(&root);
        assert!(!dp.adopted(), "nothing pinned yet");
        assert!(dp.pinned());
        dp.insert_session(key, value).unwrap();
    }
    // A restart of the same release adopts the table, entry included.
    {
        let dp = load(&root);
        assert!(dp.adopted(), "same layout: adopted");
        assert_eq!(dp.session(&key), Some(value));
    }
    // The same maps, as if an older release with another layout had
    // pinned them: identical types and sizes, another layout version.
    let dir = root.pins().dir;
    let current = dir.join(format!("maps-v{PIN_LAYOUT}"));
    let older = dir.join(format!("maps-v{}", PIN_LAYOUT + 100));
    std::fs::rename(&current, &older).expect("rename pins on bpffs");
    {
        let dp = load(&root);
        assert!(
            !dp.adopted(),
            "pins of layout v{} adopted",
            PIN_LAYOUT + 100
        );
        assert_eq!(
            dp.session(&key),
            None,
            "an entry of another layout was read"
        );
        assert!(!older.exists(), "pins of another layout are removed");
        assert!(current.is_dir(), "fresh maps pinned under this layout");
    }
}
