//! Where the policy is kept: `policy.json` in the state directory
//! ([`PolicyStore`]), and the running hub's polled view of it
//! ([`PolicyWatch`]).

use std::io;
use std::path::{Path, PathBuf};

use crate::core::policy::{POLICY_FILE, Policy, PolicyError};
use crate::store::file::{FileError, StateFile};

/// The policy file (see [`StateFile`]: atomic replace under a lock).
#[derive(Debug, Clone)]
pub struct PolicyStore {
    file: StateFile,
}

impl From<FileError> for PolicyError {
    fn from(e: FileError) -> Self {
        PolicyError::io(&e.path, e.source)
    }
}

impl PolicyStore {
    pub fn new(path: impl Into<PathBuf>) -> Self {
        PolicyStore {
            file: StateFile::new(path),
        }
    }

    /// `<dir>/policy.json`.
    pub fn in_dir(dir: &Path) -> Self {
        Self::new(dir.join(POLICY_FILE))
    }

    pub fn path(&self) -> &Path {
        self.file.path()
    }

    /// The file's text; `None` if there is no file.
    pub fn read_text(&self) -> Result<Option<String>, PolicyError> {
        self.file.read().map_err(|e| {
            if e.source.kind() == io::ErrorKind::InvalidData {
                PolicyError::Invalid {
                    path: e.path,
                    line: 1,
                    column: 1,
                    detail: "the file is not UTF-8 text; write it as JSON".to_owned(),
                }
            } else {
                e.into()
            }
        })
    }

    /// The policy; `None` without a file (every pair allowed).
    pub fn load(&self) -> Result<Option<Policy>, PolicyError> {
        self.read_text()?
            .map(|t| Policy::from_json(&t, self.path()))
            .transpose()
    }

    /// Validates `text` (errors name `source`) and stores it verbatim, so
    /// later errors point at the lines the user wrote.
    pub fn set_text(&self, text: &str, source: &Path) -> Result<Policy, PolicyError> {
        let policy = Policy::from_json(text, source)?;
        let lock = self.file.lock()?;
        self.file.replace(text, &lock)?;
        Ok(policy)
    }

    /// Read-modify-write under the lock; nothing is written when `f` fails.
    /// `f` gets the current policy, or `None` when there is no file.
    pub fn update(
        &self,
        f: impl FnOnce(Option<Policy>) -> Result<Policy, PolicyError>,
    ) -> Result<Policy, PolicyError> {
        let lock = self.file.lock()?;
        let after = f(self.load()?)?;
        self.file.replace(&after.to_json(), &lock)?;
        Ok(after)
    }

    /// Removes the file: every pair allowed again.
    pub fn remove(&self) -> Result<bool, PolicyError> {
        let lock = self.file.lock()?;
        Ok(self.file.remove(&lock)?)
    }
}

/// The running hub's view of the policy file: polled, applied whole or
/// not at all.
pub struct PolicyWatch {
    store: PolicyStore,
    /// The text last seen (`None`: no file).
    seen: Option<String>,
    current: Option<Policy>,
}

impl PolicyWatch {
    /// Loads the policy; an invalid file is an error (the hub does not
    /// start with a policy it cannot read).
    pub fn open(store: PolicyStore) -> Result<Self, PolicyError> {
        let seen = store.read_text()?;
        let current = seen
            .as_deref()
            .map(|t| Policy::from_json(t, store.path()))
            .transpose()?;
        Ok(PolicyWatch {
            store,
            seen,
            current,
        })
    }

    pub fn store(&self) -> &PolicyStore {
        &self.store
    }

    /// The policy in force (`None`: no file, every pair allowed).
    pub fn current(&self) -> Option<&Policy> {
        self.current.as_ref()
    }

    /// Re-reads the file. `Ok(true)` when the policy in force changed. An
    /// invalid file is reported once (per content) and the previous policy
    /// stays in force.
    pub fn poll(&mut self) -> Result<bool, PolicyError> {
        let text = self.store.read_text()?;
        if text == self.seen {
            return Ok(false);
        }
        let parsed = text
            .as_deref()
            .map(|t| Policy::from_json(t, self.store.path()))
            .transpose();
        self.seen = text;
        let policy = parsed?;
        let changed = policy != self.current;
        self.current = policy;
        Ok(changed)
    }
}

#[cfg(test)]
mod tests {
    use std::fs;

    use super::*;
    use crate::core::policy::tests::{EXAMPLE, p, t};
    use crate::store::dir::test_support::TempDir;

    #[test]
    fn store_and_watch() {
        let tmp = TempDir::new("policy-store");
        let store = PolicyStore::in_dir(tmp.path());
        assert!(store.load().unwrap().is_none());
        let mut watch = PolicyWatch::open(store.clone()).unwrap();
        assert!(watch.current().is_none());
        assert!(!watch.poll().unwrap());
        // A valid file is applied.
        let src = tmp.path().join("mine.json");
        store.set_text(EXAMPLE, &src).unwrap();
        assert_eq!(fs::read_to_string(store.path()).unwrap(), EXAMPLE);
        assert!(watch.poll().unwrap());
        assert!(!watch.poll().unwrap());
        assert_eq!(watch.current(), Some(&p(EXAMPLE).unwrap()));
        // set_text refuses an invalid file and names the source; nothing changes.
        let e = store.set_text("{\"allow\": 1}", &src).unwrap_err();
        assert!(
            e.to_string().starts_with(&format!("{}:1:", src.display())),
            "{e}"
        );
        assert_eq!(fs::read_to_string(store.path()).unwrap(), EXAMPLE);
        // A bad edit by hand: reported once, previous policy kept.
        fs::write(store.path(), "{").unwrap();
        assert!(watch.poll().is_err());
        assert!(!watch.poll().unwrap());
        assert_eq!(watch.current(), Some(&p(EXAMPLE).unwrap()));
        // update() rewrites in the canonical format; failing updates write nothing.
        fs::write(store.path(), EXAMPLE).unwrap();
        let after = store
            .update(|cur| {
                let mut pol = cur.unwrap();
                pol.deny_pair(t("s1"), t("s5"))?;
                Ok(pol)
            })
            .unwrap();
        assert_eq!(store.load().unwrap(), Some(after));
        let before = fs::read_to_string(store.path()).unwrap();
        assert!(
            store
                .update(|_| Err(PolicyError::Usage("no".into())))
                .is_err()
        );
        assert_eq!(fs::read_to_string(store.path()).unwrap(), before);
        assert!(watch.poll().unwrap());
        // Removing the file allows everything again.
        assert!(store.remove().unwrap());
        assert!(!store.remove().unwrap());
        assert!(watch.poll().unwrap());
        assert!(watch.current().is_none());
        // A hub does not start with an unreadable policy.
        fs::write(store.path(), "nope").unwrap();
        assert!(PolicyWatch::open(store).is_err());
    }
}
