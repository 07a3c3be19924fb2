//! Where join tokens are kept: [`TokenStore`], and its embedded backend
//! (`tokens.json` in the state directory, hashes only; see
//! `core::join`).

use std::path::{Path, PathBuf};

use crate::core::join::Tokens;
use crate::store::file::{FileError, StateFile};

/// The token file inside the state directory.
pub const TOKENS_FILE: &str = "tokens.json";

#[derive(Debug, thiserror::Error)]
pub enum TokenStoreError {
    #[error("{path}: {detail}; fix or remove the file (removing it revokes every token)")]
    Corrupt { path: PathBuf, detail: String },
    #[error("{}: {}; check that the state directory exists and is writable by this user", .0.path.display(), .0.source)]
    File(FileError),
    /// A shared store's own failure (etcd unreachable, ...), one line.
    #[error("{0}")]
    Store(String),
}

impl From<FileError> for TokenStoreError {
    fn from(e: FileError) -> Self {
        TokenStoreError::File(e)
    }
}

/// Where tokens are kept. Implementations make `update` atomic with
/// respect to every other user of the same store (a token's last use is
/// taken once, whoever asks).
pub trait TokenStore {
    fn load(&self) -> Result<Tokens, TokenStoreError>;
    /// Read-modify-write under the store's lock; nothing is stored when `f`
    /// fails. Returns `f`'s value. `f` may run more than once (a shared
    /// store retries on a concurrent write); only its last run counts.
    fn update<T, E: From<TokenStoreError>>(
        &self,
        f: impl FnMut(&mut Tokens) -> Result<T, E>,
    ) -> Result<T, E>;
}

/// The embedded store: one JSON file, atomic replace under a lock.
#[derive(Debug, Clone)]
pub struct TokenFile {
    file: StateFile,
}

impl TokenFile {
    pub fn new(path: impl Into<PathBuf>) -> Self {
        TokenFile {
            file: StateFile::new(path),
        }
    }

    pub fn path(&self) -> &Path {
        self.file.path()
    }
}

impl TokenStore for TokenFile {
    fn load(&self) -> Result<Tokens, TokenStoreError> {
        match self.file.read()? {
            None => Ok(Tokens::new()),
            Some(text) => Tokens::from_json(&text).map_err(|detail| TokenStoreError::Corrupt {
                path: self.path().to_owned(),
                detail,
            }),
        }
    }

    fn update<T, E: From<TokenStoreError>>(
        &self,
        mut f: impl FnMut(&mut Tokens) -> Result<T, E>,
    ) -> Result<T, E> {
        let lock = self.file.lock().map_err(TokenStoreError::from)?;
        let before = self.load()?;
        let mut after = before.clone();
        let out = f(&mut after)?;
        if after != before {
            self.file
                .replace(&after.to_json(), &lock)
                .map_err(TokenStoreError::from)?;
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::join::NewToken;
    use crate::store::dir::test_support::TempDir;

    #[test]
    fn update_is_stored_and_failures_store_nothing() {
        let tmp = TempDir::new("tokens");
        let store = TokenFile::new(tmp.path().join(TOKENS_FILE));
        assert!(store.load().unwrap().tokens.is_empty());
        let new = NewToken {
            max_uses: 1,
            expires_in: None,
            group: None,
        };
        let tok = store
            .update(|t| {
                t.create(&new, 10, [7; 20])
                    .map_err(|d| TokenStoreError::Corrupt {
                        path: "x".into(),
                        detail: d,
                    })
            })
            .unwrap();
        store
            .update(|t| {
                t.redeem(&tok, "n1", 11).unwrap();
                Err::<(), _>(TokenStoreError::Corrupt {
                    path: "x".into(),
                    detail: "abort".into(),
                })
            })
            .unwrap_err();
        // The aborted redemption left the use in place.
        assert!(store.load().unwrap().check(&tok, 12).is_ok());
        std::fs::write(store.path(), "{").unwrap();
        let e = store.load().unwrap_err().to_string();
        assert!(e.contains("tokens.json: line 1"), "{e}");
    }
}
