//! Pins and locks: where one interface's maps and XDP link are pinned on
//! bpffs, whether pinned maps may be adopted by this build, and the
//! per-interface lock that keeps a second hub off.

use std::os::fd::AsRawFd as _;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};

use aya::maps::{MapInfo, MapType};
use relay_common::{
    Endpoint, HubConfig, INITIATIONS_RING_BYTES, MAP_CONFIG, MAP_COUNTERS, MAP_ENDPOINT_SLOTS,
    MAP_INITIATIONS, MAP_SESSIONS, MAP_SLOT_COUNTERS, MAP_SLOTS, SessionKey, SessionValue,
    SlotCounters, SpokeSlot, counter,
};

use super::{Capacity, DatapathError};

/// Version of the pinned maps' layout (key/value meaning). Bump it when a
/// map's key or value changes meaning without changing size: a new version
/// starts from fresh maps instead of misreading old ones.
pub const PIN_LAYOUT: u32 = 1;
/// The link's pin inside the interface's pin directory.
pub(super) const LINK_PIN: &str = "link";
/// Where the per-interface lock files live.
pub const LOCK_DIR: &str = "/run/relayhub";

/// Maps that are pinned (everything the controller and program share;
/// not aya-log's buffer or the program's global data).
pub(super) const PINNED_MAPS: [&str; 7] = [
    MAP_ENDPOINT_SLOTS,
    MAP_SLOTS,
    MAP_SESSIONS,
    MAP_CONFIG,
    MAP_SLOT_COUNTERS,
    MAP_COUNTERS,
    MAP_INITIATIONS,
];

/// Where one interface's maps and link are pinned, and what was found there.
#[derive(Debug, Clone)]
pub struct PinDir {
    /// `<pin root>/<interface key>`.
    pub dir: PathBuf,
}

impl PinDir {
    /// The pin directory for `iface` under `root`, or `None` (with a
    /// warning) when `root` is not on a BPF filesystem: then nothing is
    /// pinned and a restart loses the session table.
    pub fn for_iface(root: &Path, iface: &str) -> Option<PinDir> {
        if !on_bpffs(root) {
            tracing::warn!(
                pin_dir = %root.display(),
                "not on a BPF filesystem (mount one: `mount -t bpf bpf /sys/fs/bpf`, or pick --pin-dir); \
                 maps are not pinned, so a controller restart loses the relay session table"
            );
            return None;
        }
        Some(PinDir {
            dir: root.join(iface_key(iface)),
        })
    }

    pub(super) fn maps_dir(&self) -> PathBuf {
        self.dir.join(format!("maps-v{PIN_LAYOUT}"))
    }

    pub(super) fn map(&self, name: &str) -> PathBuf {
        self.maps_dir().join(name)
    }

    pub(super) fn link(&self) -> PathBuf {
        self.dir.join(LINK_PIN)
    }

    /// Remove every pin (maps of all layouts, the link) and the directory.
    pub fn remove(&self) {
        let Ok(rd) = std::fs::read_dir(&self.dir) else {
            return;
        };
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                if let Ok(inner) = std::fs::read_dir(&p) {
                    for m in inner.flatten() {
                        let _ = std::fs::remove_file(m.path());
                    }
                }
                let _ = std::fs::remove_dir(&p);
            } else {
                let _ = std::fs::remove_file(&p);
            }
        }
        let _ = std::fs::remove_dir(&self.dir);
        if let Some(root) = self.dir.parent() {
            // Only if empty: other interfaces' pins stay.
            let _ = std::fs::remove_dir(root);
        }
    }
}

/// The init network namespace's inode number (the kernel's
/// PROC_NET_INIT_INO, fixed since Linux 3.8).
const INIT_NET_INO: u64 = 0xEFFF_FFF9;

/// `iface`, qualified by the network namespace unless it is the init
/// one: interface names are only unique per namespace.
fn iface_key(iface: &str) -> String {
    let ino = |p: &str| std::fs::metadata(p).map(|m| m.ino()).ok();
    // Without access to pid 1 (relayhub.service has no CAP_SYS_PTRACE) the
    // init namespace is known by its fixed inode, so the service and a hub
    // run by hand agree on the pins and the lock.
    let init = ino("/proc/1/ns/net").or(Some(INIT_NET_INO));
    match (ino("/proc/self/ns/net"), init) {
        (Some(me), init) if init != Some(me) => format!("{iface}@netns{me}"),
        _ => iface.to_string(),
    }
}

fn on_bpffs(path: &Path) -> bool {
    // The nearest existing ancestor decides (the directory itself may not
    // exist yet).
    let mut p = Some(path);
    while let Some(d) = p {
        if d.exists() {
            return nix::sys::statfs::statfs(d)
                .map(|s| s.filesystem_type().0 as u64 == libc::BPF_FS_MAGIC as u64)
                .unwrap_or(false);
        }
        p = d.parent();
    }
    false
}

/// An exclusive lock on the interface, held while the hub runs (released
/// by the kernel if the process dies). Adopting pins removes the "XDP
/// already attached" signal, so this is what keeps a second hub off.
pub struct IfaceLock {
    file: std::fs::File,
    path: PathBuf,
}

impl IfaceLock {
    pub fn acquire(iface: &str) -> Result<IfaceLock, DatapathError> {
        use std::io::{Read as _, Seek as _, Write as _};
        let path = Path::new(LOCK_DIR).join(format!("{}.lock", iface_key(iface)));
        let pin_err = |source| DatapathError::Pin {
            path: path.clone(),
            source,
        };
        std::fs::create_dir_all(LOCK_DIR).map_err(pin_err)?;
        loop {
            let mut file = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(&path)
                .map_err(pin_err)?;
            // SAFETY: flock on an fd we own.
            let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
            if rc != 0 {
                let mut holder = String::new();
                let _ = file.read_to_string(&mut holder);
                let holder = holder.trim();
                return Err(DatapathError::Locked {
                    iface: iface.to_string(),
                    path,
                    holder: if holder.is_empty() {
                        String::new()
                    } else {
                        format!(" by pid {holder}")
                    },
                });
            }
            // The previous holder may have unlinked the file between our
            // open and flock: then lock the new one.
            let same = std::fs::metadata(&path)
                .ok()
                .zip(file.metadata().ok())
                .is_some_and(|(a, b)| a.ino() == b.ino() && a.dev() == b.dev());
            if !same {
                continue;
            }
            let _ = file.set_len(0);
            let _ = file.rewind();
            let _ = writeln!(file, "{}", std::process::id());
            return Ok(IfaceLock { file, path });
        }
    }
}

impl Drop for IfaceLock {
    fn drop(&mut self) {
        // Unlink while still locked; the lock goes with the fd.
        let _ = std::fs::remove_file(&self.path);
        let _ = &self.file;
    }
}

/// What a map must look like to be adopted.
pub(super) struct MapSpec {
    pub(super) name: &'static str,
    pub(super) kind: MapType,
    pub(super) key: u32,
    pub(super) value: u32,
    pub(super) max: u32,
}

pub(super) fn map_specs(cap: &Capacity) -> [MapSpec; 7] {
    use std::mem::size_of;
    let spec = |name, kind, key: usize, value: usize, max| MapSpec {
        name,
        kind,
        key: key as u32,
        value: value as u32,
        max,
    };
    [
        spec(
            MAP_ENDPOINT_SLOTS,
            MapType::Hash,
            size_of::<Endpoint>(),
            4,
            cap.slots,
        ),
        spec(
            MAP_SLOTS,
            MapType::Array,
            4,
            size_of::<SpokeSlot>(),
            cap.slots,
        ),
        spec(
            MAP_SESSIONS,
            MapType::LruHash,
            size_of::<SessionKey>(),
            size_of::<SessionValue>(),
            cap.sessions,
        ),
        spec(MAP_CONFIG, MapType::Array, 4, size_of::<HubConfig>(), 1),
        spec(
            MAP_SLOT_COUNTERS,
            MapType::PerCpuArray,
            4,
            size_of::<SlotCounters>(),
            cap.slots,
        ),
        spec(MAP_COUNTERS, MapType::PerCpuArray, 4, 8, counter::COUNT),
        spec(
            MAP_INITIATIONS,
            MapType::RingBuf,
            0,
            0,
            INITIATIONS_RING_BYTES,
        ),
    ]
}

/// Why a pinned map cannot be adopted, if it cannot.
pub(super) fn incompatible(info: &MapInfo, spec: &MapSpec) -> Option<String> {
    let kind = info.map_type().ok();
    let have = (info.key_size(), info.value_size(), info.max_entries());
    let want = (spec.key, spec.value, spec.max);
    if kind != Some(spec.kind) || have != want {
        Some(format!(
            "pinned {:?} key/value/entries {have:?}, this build wants {:?} {want:?}",
            kind, spec.kind
        ))
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// In the init namespace the key is the bare name whether or not pid 1
    /// is readable (it is not for a sandboxed service, nor for root on some
    /// machines: this one's pid 1 refuses even root).
    #[test]
    fn init_namespace_key_is_the_bare_name() {
        let me = std::fs::metadata("/proc/self/ns/net").map(|m| m.ino());
        if me.ok() == Some(INIT_NET_INO) {
            assert_eq!(iface_key("eth0"), "eth0");
        }
    }
}
