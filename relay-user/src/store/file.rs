//! A state file (the spoke registry, the policy): read whole, replaced
//! atomically (temp file, fsync, rename, directory fsync) under an
//! `flock`ed lock file next to it, mode 0600.
//!
//! Errors carry the path they concern; each store wraps them in its own
//! error type.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write as _};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use nix::fcntl::{Flock, FlockArg};

/// An IO error and the file it concerns.
#[derive(Debug)]
pub struct FileError {
    pub path: PathBuf,
    pub source: io::Error,
}

impl FileError {
    fn new(path: &Path, source: io::Error) -> Self {
        FileError {
            path: path.to_owned(),
            source,
        }
    }
}

/// The lock held while it lives.
pub type Lock = Flock<File>;

#[derive(Debug, Clone)]
pub struct StateFile {
    path: PathBuf,
    lock_path: PathBuf,
    tmp_path: PathBuf,
}

impl StateFile {
    /// The file `path`, its lock `path.lock`, its temp file `path.tmp`.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        let path = path.into();
        let with_suffix = |suffix: &str| {
            let mut p = path.clone().into_os_string();
            p.push(suffix);
            PathBuf::from(p)
        };
        StateFile {
            lock_path: with_suffix(".lock"),
            tmp_path: with_suffix(".tmp"),
            path,
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The text; `None` if there is no file. A file that is not UTF-8 is an
    /// error of kind `InvalidData`.
    pub fn read(&self) -> Result<Option<String>, FileError> {
        match fs::read_to_string(&self.path) {
            Ok(t) => Ok(Some(t)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(FileError::new(&self.path, e)),
        }
    }

    /// Take the exclusive lock (blocks while another writer holds it).
    pub fn lock(&self) -> Result<Lock, FileError> {
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(&self.lock_path)
            .map_err(|e| FileError::new(&self.lock_path, e))?;
        Flock::lock(file, FlockArg::LockExclusive)
            .map_err(|(_, errno)| FileError::new(&self.lock_path, errno.into()))
    }

    /// Replace the file with `text` (call under [`StateFile::lock`]). The
    /// modification time always moves forward, even within one clock tick,
    /// so pollers that compare it see every write.
    pub fn replace(&self, text: &str, _lock: &Lock) -> Result<(), FileError> {
        let previous = fs::metadata(&self.path).ok().map(|m| mtime(&m));
        let io_tmp = |e| FileError::new(&self.tmp_path, e);
        // Under the lock there is a single writer, so a fixed temp name is
        // safe; a leftover from a crash is simply truncated.
        let mut file = OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .mode(0o600)
            .open(&self.tmp_path)
            .map_err(io_tmp)?;
        file.write_all(text.as_bytes()).map_err(io_tmp)?;
        if let Some(prev) = previous {
            let mut next = SystemTime::now().max(prev + Duration::from_nanos(1));
            file.set_modified(next).map_err(io_tmp)?;
            let stored = mtime(&file.metadata().map_err(io_tmp)?);
            if stored <= prev {
                // Coarse timestamps on this file system.
                next = prev + Duration::from_secs(1);
                file.set_modified(next).map_err(io_tmp)?;
            }
        }
        file.sync_all().map_err(io_tmp)?;
        drop(file);
        fs::rename(&self.tmp_path, &self.path).map_err(|e| FileError::new(&self.path, e))?;
        if let Some(dir) = self.path.parent().filter(|d| !d.as_os_str().is_empty()) {
            File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(|e| FileError::new(dir, e))?;
        }
        Ok(())
    }

    /// Remove the file (call under [`StateFile::lock`]); false if there
    /// was none.
    pub fn remove(&self, _lock: &Lock) -> Result<bool, FileError> {
        match fs::remove_file(&self.path) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(FileError::new(&self.path, e)),
        }
    }
}

/// A file's modification time (the epoch if the file system has none).
pub fn mtime(m: &fs::Metadata) -> SystemTime {
    m.modified().unwrap_or(UNIX_EPOCH)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::dir::test_support::TempDir;
    use std::os::unix::fs::PermissionsExt as _;

    #[test]
    fn replace_read_remove() {
        let dir = TempDir::new("statefile");
        let f = StateFile::new(dir.path().join("x.json"));
        assert_eq!(f.read().unwrap(), None);
        let lock = f.lock().unwrap();
        f.replace("one", &lock).unwrap();
        let t1 = mtime(&fs::metadata(f.path()).unwrap());
        f.replace("two", &lock).unwrap();
        let t2 = mtime(&fs::metadata(f.path()).unwrap());
        assert!(t2 > t1, "mtime moves forward on every write");
        assert_eq!(f.read().unwrap().as_deref(), Some("two"));
        let mode = fs::metadata(f.path()).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert!(f.remove(&lock).unwrap());
        assert!(!f.remove(&lock).unwrap());
        assert_eq!(f.read().unwrap(), None);
    }

    #[test]
    fn not_utf8_is_invalid_data() {
        let dir = TempDir::new("statefile-utf8");
        let f = StateFile::new(dir.path().join("x.json"));
        fs::write(f.path(), [0xff, 0xfe]).unwrap();
        let e = f.read().unwrap_err();
        assert_eq!(e.source.kind(), io::ErrorKind::InvalidData);
        assert_eq!(e.path, f.path());
    }
}
