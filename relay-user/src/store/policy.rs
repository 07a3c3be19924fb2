//! Where the policy is kept: [`PolicyStore`], its embedded backend
//! `policy.json` in the state directory ([`PolicyFile`]), and the running
//! hub's view of it ([`PolicyWatch`]).

use std::io;
use std::path::{Path, PathBuf};

use crate::core::policy::{POLICY_FILE, Policy, PolicyError};
use crate::store::file::{FileError, StateFile};

/// Where the policy is kept. Implementations make `update` atomic with
/// respect to every other user of the same store.
pub trait PolicyStore {
    /// Where it is (a path, an etcd key), for messages.
    fn location(&self) -> String;
    /// The stored text; `None` without a policy.
    fn read_text(&self) -> Result<Option<String>, PolicyError>;
    /// The policy; `None` without one (every pair allowed).
    fn load(&self) -> Result<Option<Policy>, PolicyError> {
        let location = self.location();
        self.read_text()?
            .map(|t| Policy::from_json(&t, Path::new(&location)))
            .transpose()
    }
    /// Validates `text` (errors name `source`) and stores it verbatim, so
    /// later errors point at the lines the user wrote.
    fn set_text(&self, text: &str, source: &Path) -> Result<Policy, PolicyError>;
    /// Read-modify-write; nothing is written when `f` fails. `f` gets the
    /// current policy, or `None` when there is none, and may run more than
    /// once (a shared store retries on a concurrent write).
    fn update(
        &self,
        f: &mut dyn FnMut(Option<Policy>) -> Result<Policy, PolicyError>,
    ) -> Result<Policy, PolicyError>;
    /// Removes the policy: every pair allowed again. False if there was none.
    fn remove(&self) -> Result<bool, PolicyError>;
}

/// The policy file (see [`StateFile`]: atomic replace under a lock).
#[derive(Debug, Clone)]
pub struct PolicyFile {
    file: StateFile,
}

impl From<FileError> for PolicyError {
    fn from(e: FileError) -> Self {
        PolicyError::io(&e.path, e.source)
    }
}

impl PolicyFile {
    pub fn new(path: impl Into<PathBuf>) -> Self {
        PolicyFile {
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
}

impl PolicyStore for PolicyFile {
    fn location(&self) -> String {
        self.path().display().to_string()
    }

    fn read_text(&self) -> Result<Option<String>, PolicyError> {
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

    fn set_text(&self, text: &str, source: &Path) -> Result<Policy, PolicyError> {
        let policy = Policy::from_json(text, source)?;
        let lock = self.file.lock()?;
        self.file.replace(text, &lock)?;
        Ok(policy)
    }

    fn update(
        &self,
        f: &mut dyn FnMut(Option<Policy>) -> Result<Policy, PolicyError>,
    ) -> Result<Policy, PolicyError> {
        let lock = self.file.lock()?;
        let after = f(self.load()?)?;
        self.file.replace(&after.to_json(), &lock)?;
        Ok(after)
    }

    fn remove(&self) -> Result<bool, PolicyError> {
        let lock = self.file.lock()?;
        Ok(self.file.remove(&lock)?)
    }
}

/// The running hub's view of the policy: offered the stored text when it
/// changes, applied whole or not at all.
pub struct PolicyWatch {
    /// Where the text comes from, for errors and logs.
    location: String,
    /// The text last seen (`None`: no policy).
    seen: Option<String>,
    current: Option<Policy>,
}

impl PolicyWatch {
    /// Starts from `text` read at `location`; an invalid policy is an
    /// error (the hub does not start with a policy it cannot read).
    pub fn new(location: String, text: Option<String>) -> Result<Self, PolicyError> {
        let current = text
            .as_deref()
            .map(|t| Policy::from_json(t, Path::new(&location)))
            .transpose()?;
        Ok(PolicyWatch {
            location,
            seen: text,
            current,
        })
    }

    /// Reads `store` once.
    pub fn open(store: &dyn PolicyStore) -> Result<Self, PolicyError> {
        Self::new(store.location(), store.read_text()?)
    }

    pub fn location(&self) -> &str {
        &self.location
    }

    /// The policy in force (`None`: no policy, every pair allowed).
    pub fn current(&self) -> Option<&Policy> {
        self.current.as_ref()
    }

    /// Offers the stored text (as read now). `Ok(true)` when the policy in
    /// force changed. An invalid policy is reported once (per content) and
    /// the previous one stays in force.
    pub fn offer(&mut self, text: Option<String>) -> Result<bool, PolicyError> {
        if text == self.seen {
            return Ok(false);
        }
        let parsed = text
            .as_deref()
            .map(|t| Policy::from_json(t, Path::new(&self.location)))
            .transpose();
        self.seen = text;
        let policy = parsed?;
        let changed = policy != self.current;
        self.current = policy;
        Ok(changed)
    }

    /// Re-reads `store` and offers what it holds.
    pub fn poll(&mut self, store: &dyn PolicyStore) -> Result<bool, PolicyError> {
        self.offer(store.read_text()?)
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
        let store = PolicyFile::in_dir(tmp.path());
        assert!(store.load().unwrap().is_none());
        let mut watch = PolicyWatch::open(&store).unwrap();
        assert!(watch.current().is_none());
        assert!(!watch.poll(&store).unwrap());
        // A valid file is applied.
        let src = tmp.path().join("mine.json");
        store.set_text(EXAMPLE, &src).unwrap();
        assert_eq!(fs::read_to_string(store.path()).unwrap(), EXAMPLE);
        assert!(watch.poll(&store).unwrap());
        assert!(!watch.poll(&store).unwrap());
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
        assert!(watch.poll(&store).is_err());
        assert!(!watch.poll(&store).unwrap());
        assert_eq!(watch.current(), Some(&p(EXAMPLE).unwrap()));
        // update() rewrites in the canonical format; failing updates write nothing.
        fs::write(store.path(), EXAMPLE).unwrap();
        let after = store
            .update(&mut |cur| {
                let mut pol = cur.unwrap();
                pol.deny_pair(t("s1"), t("s5"))?;
                Ok(pol)
            })
            .unwrap();
        assert_eq!(store.load().unwrap(), Some(after));
        let before = fs::read_to_string(store.path()).unwrap();
        assert!(
            store
                .update(&mut |_| Err(PolicyError::Usage("no".into())))
                .is_err()
        );
        assert_eq!(fs::read_to_string(store.path()).unwrap(), before);
        assert!(watch.poll(&store).unwrap());
        // Removing the file allows everything again.
        assert!(store.remove().unwrap());
        assert!(!store.remove().unwrap());
        assert!(watch.poll(&store).unwrap());
        assert!(watch.current().is_none());
        // A hub does not start with an unreadable policy.
        fs::write(store.path(), "nope").unwrap();
        assert!(PolicyWatch::open(&store).is_err());
    }
}
