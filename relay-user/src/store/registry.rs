//! Where the spoke registry is kept: [`RegistryStore`], and its embedded
//! backend [`FileStore`] (`spokes.json` in the state directory).
//!
//! Releases up to 0.1.0 kept the address family of IPv6 spokes in a side
//! file, `ipv6-spokes` (one name a line). [`FileStore`] reads it as part of
//! the registry and, on its next write, moves it into the spokes' records
//! and removes it: old state directories load unchanged.

use std::fs;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use crate::core::registry::{Family, Registry, RegistryError};
use crate::store::file::{FileError, StateFile};

/// The side file of earlier releases (see the module docs).
pub const LEGACY_IPV6_SPOKES_FILE: &str = "ipv6-spokes";

/// Where the registry is kept. Implementations make `update` atomic with
/// respect to every other user of the same store.
pub trait RegistryStore {
    /// The current registry (empty if none was stored yet).
    fn load(&self) -> Result<Registry, RegistryError>;
    /// Read-modify-write under the store's lock. Nothing is stored when `f`
    /// fails. Returns the registry as stored afterwards.
    fn update(
        &self,
        f: &mut dyn FnMut(&mut Registry) -> Result<(), RegistryError>,
    ) -> Result<Registry, RegistryError>;
    /// A cheap value that changes whenever the stored registry changes
    /// (it may also change when it did not). Polled by the running hub.
    fn stamp(&self) -> Result<u64, RegistryError>;
}

/// The embedded store: one JSON file (see [`StateFile`]: atomic replace
/// under a lock; the modification time moves on every write, which is
/// what [`RegistryStore::stamp`] polls).
#[derive(Debug, Clone)]
pub struct FileStore {
    file: StateFile,
    /// `ipv6-spokes` next to the file (earlier releases).
    legacy_ipv6: PathBuf,
}

impl From<FileError> for RegistryError {
    fn from(e: FileError) -> Self {
        RegistryError::io(&e.path, e.source)
    }
}

impl FileStore {
    /// A store kept in the file `path` (for example `<state_dir>/spokes.json`).
    pub fn new(path: impl Into<PathBuf>) -> Self {
        let file = StateFile::new(path);
        let legacy_ipv6 = file
            .path()
            .parent()
            .unwrap_or(Path::new("."))
            .join(LEGACY_IPV6_SPOKES_FILE);
        FileStore { file, legacy_ipv6 }
    }

    pub fn path(&self) -> &Path {
        self.file.path()
    }
}

impl FileStore {
    /// The registry file alone.
    fn load_file(&self) -> Result<Registry, RegistryError> {
        match self.file.read() {
            Ok(Some(text)) => Registry::from_json(&text, self.path()),
            Ok(None) => Ok(Registry::new()),
            Err(e) if e.source.kind() == io::ErrorKind::InvalidData => {
                Err(RegistryError::Corrupt {
                    path: e.path,
                    detail: "is not UTF-8 text".to_owned(),
                })
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Names listed in the legacy side file (`None`: no file).
    fn legacy_ipv6_names(&self) -> Result<Option<Vec<String>>, RegistryError> {
        match fs::read_to_string(&self.legacy_ipv6) {
            Ok(t) => Ok(Some(
                t.lines()
                    .map(str::trim)
                    .filter(|l| !l.is_empty())
                    .map(str::to_owned)
                    .collect(),
            )),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(RegistryError::io(&self.legacy_ipv6, e)),
        }
    }

    /// The registry with the legacy side file applied; whether there was one.
    fn load_merged(&self) -> Result<(Registry, bool), RegistryError> {
        let mut reg = self.load_file()?;
        let Some(names) = self.legacy_ipv6_names()? else {
            return Ok((reg, false));
        };
        for name in names {
            // A name the registry no longer has was removed meanwhile.
            if reg.get(&name).is_some() {
                reg.set_family(&name, Family::Ipv6)?;
            }
        }
        Ok((reg, true))
    }
}

impl RegistryStore for FileStore {
    fn load(&self) -> Result<Registry, RegistryError> {
        Ok(self.load_merged()?.0)
    }

    fn update(
        &self,
        f: &mut dyn FnMut(&mut Registry) -> Result<(), RegistryError>,
    ) -> Result<Registry, RegistryError> {
        let lock = self.file.lock()?;
        let (before, legacy) = self.load_merged()?;
        let mut after = before.clone();
        f(&mut after)?;
        if after != before || legacy {
            self.file.replace(&after.to_json(), &lock)?;
        }
        if legacy {
            // Its content is in the registry file now.
            match fs::remove_file(&self.legacy_ipv6) {
                Ok(()) => tracing::info!(
                    file = %self.legacy_ipv6.display(),
                    "moved the IPv6 spokes' family into the registry"
                ),
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(RegistryError::io(&self.legacy_ipv6, e)),
            }
        }
        Ok(after)
    }

    fn stamp(&self) -> Result<u64, RegistryError> {
        let m = match fs::metadata(self.path()) {
            Ok(m) => m,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
            Err(e) => return Err(RegistryError::io(self.path(), e)),
        };
        let mut h = DefaultHasher::new();
        (
            m.dev(),
            m.ino(),
            m.size(),
            m.mtime(),
            m.mtime_nsec(),
            m.ctime(),
            m.ctime_nsec(),
        )
            .hash(&mut h);
        // 0 is reserved for "no registry stored".
        Ok(h.finish().max(1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::registry::TunnelNet;
    use crate::core::registry::tests::key;
    use crate::store::dir::test_support::TempDir;

    #[test]
    fn file_store_round_trip_and_stamp() {
        let dir = TempDir::new("store");
        let store = FileStore::new(dir.path().join("spokes.json"));
        assert!(store.load().unwrap().is_empty());
        assert_eq!(store.stamp().unwrap(), 0);
        let n = TunnelNet::default();
        let mut stamps = vec![0];
        for i in 1..=5u8 {
            let r = store
                .update(&mut |r| r.add(&format!("s{i}"), key(i), &n).map(|_| ()))
                .unwrap();
            assert_eq!(r.len(), usize::from(i));
            let s = store.stamp().unwrap();
            assert!(!stamps.contains(&s), "stamp changed on every write");
            stamps.push(s);
        }
        let s = store.stamp().unwrap();
        assert_eq!(store.stamp().unwrap(), s, "stable without writes");
        // A failing update stores nothing.
        let e = store
            .update(&mut |r| r.remove("nope").map(|_| ()))
            .unwrap_err();
        assert!(matches!(e, RegistryError::NotFound(_)));
        // A no-op update does not rewrite.
        store.update(&mut |_| Ok(())).unwrap();
        assert_eq!(store.stamp().unwrap(), s);
        assert_eq!(store.load().unwrap().len(), 5);
        // Remove then add of the same size still changes the stamp.
        store.update(&mut |r| r.remove("s5").map(|_| ())).unwrap();
        store
            .update(&mut |r| r.add("s9", key(5), &n).map(|_| ()))
            .unwrap();
        assert_ne!(store.stamp().unwrap(), s);
        let mode = fs::metadata(store.path()).unwrap().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert!(!dir.path().join("spokes.json.tmp").exists());
    }

    #[test]
    fn file_store_corrupt_file_is_an_error() {
        let dir = TempDir::new("corrupt");
        let path = dir.path().join("spokes.json");
        fs::write(&path, "{\"version\": 1, \"spokes\": [\n  {oops}\n]}\n").unwrap();
        let store = FileStore::new(&path);
        let e = store.load().unwrap_err().to_string();
        assert!(
            e.starts_with(&format!("{}: is not valid JSON", path.display())),
            "{e}"
        );
        assert!(e.contains("line 2 column 4"), "{e}");
        // update refuses too, and leaves the file alone.
        assert!(store.update(&mut |_| Ok(())).is_err());
        assert!(fs::read_to_string(&path).unwrap().contains("oops"));
        fs::write(&path, [0xff, 0xfe, 0x00]).unwrap();
        assert!(store.load().unwrap_err().to_string().contains("not UTF-8"));
    }

    #[test]
    fn two_stores_concurrent_updates_keep_everything() {
        let dir = TempDir::new("concurrent");
        let path = dir.path().join("spokes.json");
        let n = TunnelNet::default();
        let threads: Vec<_> = (0..2u8)
            .map(|t| {
                let store = FileStore::new(&path);
                std::thread::spawn(move || {
                    for i in 0..20u8 {
                        let k = key(t * 100 + i + 1);
                        store
                            .update(&mut |r| r.add(&format!("t{t}-{i}"), k.clone(), &n).map(|_| ()))
                            .unwrap();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let r = FileStore::new(&path).load().unwrap();
        assert_eq!(r.len(), 40);
        let ids: Vec<u32> = r.spokes().iter().map(|s| s.id).collect();
        assert_eq!(ids, (1..=40).collect::<Vec<_>>());
    }

    #[test]
    fn legacy_ipv6_side_file_is_read_then_moved_into_the_records() {
        let dir = TempDir::new("legacy-ipv6");
        let store = FileStore::new(dir.path().join("spokes.json"));
        let n = TunnelNet::default();
        store
            .update(&mut |r| {
                r.add("four", key(1), &n)?;
                r.add("six", key(2), &n).map(|_| ())
            })
            .unwrap();
        let before = fs::read_to_string(store.path()).unwrap();
        assert!(
            !before.contains("family"),
            "IPv4 records as 0.1.0 wrote them"
        );
        // What 0.1.0 wrote for `spoke add six --family ipv6`, plus a name
        // removed since.
        let legacy = dir.path().join(LEGACY_IPV6_SPOKES_FILE);
        fs::write(&legacy, "six\ngone\n").unwrap();
        let r = store.load().unwrap();
        assert_eq!(r.get("six").unwrap().family, Family::Ipv6);
        assert_eq!(r.get("four").unwrap().family, Family::Ipv4);
        // Reading changes nothing on disk.
        assert!(legacy.exists());
        assert_eq!(fs::read_to_string(store.path()).unwrap(), before);
        // The next write moves it: even a no-op update.
        store.update(&mut |_| Ok(())).unwrap();
        assert!(!legacy.exists());
        let text = fs::read_to_string(store.path()).unwrap();
        assert_eq!(text.matches("\"family\": \"ipv6\"").count(), 1, "{text}");
        assert_eq!(store.load().unwrap(), r);
    }
}
