//! The hub's state directory, the embedded store of a single hub: `hub.key`
//! (the hub's WireGuard private key), the spoke registry (`spokes.json`,
//! see [`FileStore`]), the policy (`policy.json`, see [`PolicyStore`]) and
//! the endpoints last given with `--endpoint`, join tokens (`tokens.json`,
//! hashes only) and the enrollment endpoint's TLS identity (`enroll.pem`).
//! Spoke private keys are never stored here.

use std::fs::{self, DirBuilder, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use wireguard_control::Key;

use crate::core::registry::parse_key;
use crate::store::file::{FileError, StateFile};
use crate::store::policy::PolicyFile;
use crate::store::registry::FileStore;

/// The hub's private key file inside the state directory.
pub const HUB_KEY_FILE: &str = "hub.key";
/// The registry file inside the state directory.
pub const REGISTRY_FILE: &str = "spokes.json";
/// The enrollment endpoint's TLS key and self-signed certificate (PEM).
pub const ENROLL_IDENTITY_FILE: &str = "enroll.pem";
/// The hub endpoint last given with `--endpoint` (text, one line).
pub const ENDPOINT_FILE: &str = "endpoint";
/// The API token (the console and /v1/* when the API is bound beyond
/// loopback): 64 hex digits, mode 0600.
pub const API_TOKEN_FILE: &str = "api.token";
/// The hub's IPv6 endpoint last given with `--endpoint` (text, one line),
/// for spokes added with `--family ipv6`.
pub const ENDPOINT6_FILE: &str = "endpoint6";

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error(
        "state directory {0}: exists but is not a directory; pass another --state-dir or move it away"
    )]
    NotADirectory(PathBuf),
    #[error("{path}: {source}; check the path and that this user may create and write it")]
    Io { path: PathBuf, source: io::Error },
    #[error(
        "{path}: not a WireGuard private key (one line of 44 base64 characters, as `wg genkey` writes); \
         restore the file from a backup, or delete it to make the hub generate a new key \
         (then every spoke needs its config re-issued with `relayhub spoke config NAME`)"
    )]
    CorruptKey { path: PathBuf },
    #[error(
        "{path}: {detail}; delete the file to make the hub generate a new TLS identity \
         (then print new join commands: the pin changes)"
    )]
    CorruptIdentity { path: PathBuf, detail: String },
}

/// The enrollment endpoint's TLS identity and the pin join commands carry.
#[derive(Debug)]
pub struct EnrollIdentity {
    pub cert: rustls::pki_types::CertificateDer<'static>,
    pub key: rustls::pki_types::PrivateKeyDer<'static>,
    /// `sha256//BASE64`: SHA-256 of the certificate's public key
    /// (SubjectPublicKeyInfo), the form curl's --pinnedpubkey takes.
    pub pin: String,
}

impl StateError {
    fn io(path: &Path, source: io::Error) -> Self {
        StateError::Io {
            path: path.to_owned(),
            source,
        }
    }
}

/// An opened (and if needed created) state directory.
#[derive(Debug, Clone)]
pub struct StateDir {
    path: PathBuf,
}

impl StateDir {
    /// Opens `path`, creating it (mode 0700) if missing.
    pub fn open(path: &Path) -> Result<Self, StateError> {
        match fs::metadata(path) {
            Ok(m) if m.is_dir() => {
                if m.permissions().mode() & 0o077 != 0 {
                    tracing::warn!(
                        path = %path.display(),
                        mode = format_args!("{:o}", m.permissions().mode() & 0o777),
                        "state directory is accessible to other users; chmod 700 it"
                    );
                }
            }
            Ok(_) => return Err(StateError::NotADirectory(path.to_owned())),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                DirBuilder::new()
                    .recursive(true)
                    .mode(0o700)
                    .create(path)
                    .map_err(|e| StateError::io(path, e))?;
            }
            Err(e) => return Err(StateError::io(path, e)),
        }
        Ok(StateDir {
            path: path.to_owned(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn hub_key_path(&self) -> PathBuf {
        self.path.join(HUB_KEY_FILE)
    }

    /// The hub's private key, generated (mode 0600) on first call. A file
    /// that does not hold a key is an error, never silently replaced.
    pub fn hub_key(&self) -> Result<Key, StateError> {
        let path = self.hub_key_path();
        match read_key(&path)? {
            Some(key) => Ok(key),
            None => self.generate_hub_key(&path),
        }
    }

    /// The hub's public key (generating the key pair on first use).
    pub fn hub_public_key(&self) -> Result<Key, StateError> {
        Ok(self.hub_key()?.get_public())
    }

    /// The endpoint last given with `--endpoint`, so later `spoke config`
    /// calls print the same one without repeating the flag.
    pub fn saved_endpoint(&self) -> Result<Option<String>, StateError> {
        self.read_line(ENDPOINT_FILE)
    }

    pub fn save_endpoint(&self, endpoint: &str) -> Result<(), StateError> {
        self.write_line(ENDPOINT_FILE, endpoint)
    }

    /// The IPv6 endpoint last given with `--endpoint`.
    pub fn saved_endpoint6(&self) -> Result<Option<String>, StateError> {
        self.read_line(ENDPOINT6_FILE)
    }

    pub fn save_endpoint6(&self, endpoint: &str) -> Result<(), StateError> {
        self.write_line(ENDPOINT6_FILE, endpoint)
    }

    /// The literal IP addresses of the endpoints given with `--endpoint`.
    pub fn endpoint_ips(&self) -> Vec<std::net::IpAddr> {
        [self.saved_endpoint(), self.saved_endpoint6()]
            .into_iter()
            .filter_map(|e| crate::io::netinfo::endpoint_ip(&e.ok()??))
            .collect()
    }

    /// A small text file of the state directory, trimmed; `None` if
    /// missing or empty.
    fn read_line(&self, file: &str) -> Result<Option<String>, StateError> {
        let text = StateFile::new(self.path.join(file))
            .read()
            .map_err(|e| StateError::io(&e.path, e.source))?;
        Ok(text.map(|t| t.trim().to_string()).filter(|t| !t.is_empty()))
    }

    /// Replace `file` with `text` (unless it already holds it), through
    /// the state-file layer: locked, atomic, synced.
    fn write_line(&self, file: &str, text: &str) -> Result<(), StateError> {
        let f = StateFile::new(self.path.join(file));
        let io = |e: FileError| StateError::io(&e.path, e.source);
        let lock = f.lock().map_err(io)?;
        if self.read_line(file)?.as_deref() == Some(text) {
            return Ok(());
        }
        f.replace(&format!("{text}\n"), &lock).map_err(io)
    }

    /// The spoke policy kept in this directory.
    pub fn policy(&self) -> PolicyFile {
        PolicyFile::in_dir(&self.path)
    }

    /// The join tokens kept in this directory.
    pub fn tokens(&self) -> crate::store::token::TokenFile {
        crate::store::token::TokenFile::new(self.path.join(crate::store::token::TOKENS_FILE))
    }

    /// The enrollment endpoint's TLS identity, generated on first use (a
    /// self-signed certificate: join commands pin its public key, so no CA
    /// is involved).
    pub fn enroll_identity(&self) -> Result<EnrollIdentity, StateError> {
        let path = self.path.join(ENROLL_IDENTITY_FILE);
        let text = match fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                let ck = rcgen::generate_simple_self_signed(vec!["relayhub".to_owned()]).map_err(
                    |e| StateError::CorruptIdentity {
                        path: path.clone(),
                        detail: format!("generating a TLS identity: {e}"),
                    },
                )?;
                let pem = format!("{}{}", ck.key_pair.serialize_pem(), ck.cert.pem());
                self.create_private(&path, &pem)?;
                tracing::info!(path = %path.display(), "generated the enrollment endpoint's TLS identity");
                fs::read_to_string(&path).map_err(|e| StateError::io(&path, e))?
            }
            Err(e) => return Err(StateError::io(&path, e)),
        };
        parse_identity(&text).map_err(|detail| StateError::CorruptIdentity { path, detail })
    }

    /// The API token, generated on first use (`relayhub status --token`
    /// prints it).
    pub fn api_token(&self) -> Result<String, StateError> {
        let path = self.path.join(API_TOKEN_FILE);
        if let Some(t) = self.read_line(API_TOKEN_FILE)? {
            return Ok(t);
        }
        let bytes: [u8; 32] = rand::random();
        let token: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        if self.create_private(&path, &format!("{token}\n"))? {
            tracing::info!(path = %path.display(), "generated the API token (relayhub status --token)");
        }
        // Whoever created it first, this is the one.
        self.read_line(API_TOKEN_FILE)?
            .ok_or_else(|| StateError::io(&path, io::ErrorKind::NotFound.into()))
    }

    /// The API token if one was generated (the CLI never creates it).
    pub fn saved_api_token(&self) -> Result<Option<String>, StateError> {
        self.read_line(API_TOKEN_FILE)
    }

    /// Create `path` with `text`, mode 0600, atomically: written under a
    /// private name, then hard-linked into place, so a concurrent creator
    /// loses the race cleanly (the first file stays) and nobody ever sees
    /// a half-written file. False if the file existed already.
    fn create_private(&self, path: &Path, text: &str) -> Result<bool, StateError> {
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
        let tmp = self
            .path
            .join(format!(".{name}.{}.tmp", std::process::id()));
        let result = (|| {
            let mut f = OpenOptions::new()
                .create(true)
                .truncate(true)
                .write(true)
                .mode(0o600)
                .open(&tmp)?;
            f.write_all(text.as_bytes())?;
            f.sync_all()?;
            fs::hard_link(&tmp, path)
        })();
        let _ = fs::remove_file(&tmp);
        match result {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(false),
            Err(e) => Err(StateError::io(path, e)),
        }
    }

    /// The spoke registry kept in this directory.
    pub fn registry(&self) -> FileStore {
        FileStore::new(self.path.join(REGISTRY_FILE))
    }

    fn generate_hub_key(&self, path: &Path) -> Result<Key, StateError> {
        let key = Key::generate_private();
        if self.create_private(path, &format!("{}\n", key.to_base64()))? {
            tracing::info!(path = %path.display(), "generated the hub's WireGuard key");
            return Ok(key);
        }
        // A concurrent generator won: its key is the hub's.
        read_key(path)?.ok_or_else(|| StateError::CorruptKey {
            path: path.to_owned(),
        })
    }
}

/// Key and certificate from one PEM text, and the pin.
fn parse_identity(text: &str) -> Result<EnrollIdentity, String> {
    use base64::Engine as _;
    use rustls::pki_types::pem::PemObject as _;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    use sha2::Digest as _;
    let key = PrivateKeyDer::from_pem_slice(text.as_bytes())
        .map_err(|e| format!("no private key: {e}"))?;
    let cert = CertificateDer::from_pem_slice(text.as_bytes())
        .map_err(|e| format!("no certificate: {e}"))?;
    let pair = rcgen::KeyPair::from_pem(text).map_err(|e| format!("private key: {e}"))?;
    let spki = sha2::Sha256::digest(pair.public_key_der());
    let pin = format!(
        "sha256//{}",
        base64::engine::general_purpose::STANDARD.encode(spki)
    );
    Ok(EnrollIdentity { cert, key, pin })
}

/// Reads a key file: `None` if missing.
fn read_key(path: &Path) -> Result<Option<Key>, StateError> {
    let text = match fs::read(path) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(StateError::io(path, e)),
    };
    if let Ok(m) = fs::metadata(path)
        && m.permissions().mode() & 0o077 != 0
    {
        tracing::warn!(path = %path.display(), "hub key is readable by other users; chmod 600 it");
    }
    let key = std::str::from_utf8(&text).ok().and_then(parse_key);
    key.map(Some).ok_or_else(|| StateError::CorruptKey {
        path: path.to_owned(),
    })
}

#[cfg(test)]
pub(crate) mod test_support {
    use std::path::{Path, PathBuf};
    use std::sync::atomic::{AtomicU32, Ordering};

    /// A directory under the system temp dir, removed on drop.
    pub(crate) struct TempDir(PathBuf);

    impl TempDir {
        pub(crate) fn new(tag: &str) -> Self {
            static N: AtomicU32 = AtomicU32::new(0);
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.subsec_nanos())
                .unwrap_or(0);
            let path = std::env::temp_dir().join(format!(
                "relayhub-test-{tag}-{}-{}-{nanos}",
                std::process::id(),
                N.fetch_add(1, Ordering::Relaxed)
            ));
            std::fs::create_dir_all(&path).unwrap();
            TempDir(path)
        }

        pub(crate) fn path(&self) -> &Path {
            &self.0
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::test_support::TempDir;
    use super::*;

    #[test]
    fn open_creates_private_dir() {
        let tmp = TempDir::new("state-open");
        let p = tmp.path().join("a/b/state");
        let s = StateDir::open(&p).unwrap();
        assert_eq!(s.path(), p);
        assert_eq!(
            fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o700
        );
        // Opening again is fine.
        StateDir::open(&p).unwrap();
        let file = tmp.path().join("file");
        fs::write(&file, "x").unwrap();
        let e = StateDir::open(&file).unwrap_err();
        assert!(matches!(e, StateError::NotADirectory(_)));
        assert_eq!(s.registry().path(), p.join("spokes.json"));
    }

    #[test]
    fn hub_key_generated_once_and_private() {
        let tmp = TempDir::new("state-key");
        let s = StateDir::open(tmp.path()).unwrap();
        let k1 = s.hub_key().unwrap();
        let k2 = StateDir::open(tmp.path()).unwrap().hub_key().unwrap();
        assert_eq!(k1, k2);
        assert_eq!(s.hub_public_key().unwrap(), k1.get_public());
        let path = tmp.path().join("hub.key");
        assert_eq!(
            fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(
            fs::read_to_string(&path).unwrap(),
            format!("{}\n", k1.to_base64())
        );
        // Only hub.key is left behind.
        let names: Vec<_> = fs::read_dir(tmp.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["hub.key"]);
    }

    #[test]
    fn hub_key_reads_wg_genkey_format() {
        let tmp = TempDir::new("state-genkey");
        let k = Key::generate_private();
        fs::write(tmp.path().join("hub.key"), format!("{}\n", k.to_base64())).unwrap();
        assert_eq!(StateDir::open(tmp.path()).unwrap().hub_key().unwrap(), k);
    }

    #[test]
    fn corrupt_hub_key_is_an_error_and_kept() {
        let tmp = TempDir::new("state-corrupt");
        let path = tmp.path().join("hub.key");
        for bad in &[&b"not a key\n"[..], b"", &[0xff, 0xfe][..]] {
            fs::write(&path, bad).unwrap();
            let e = StateDir::open(tmp.path()).unwrap().hub_key().unwrap_err();
            let msg = e.to_string();
            assert!(msg.starts_with(&path.display().to_string()), "{msg}");
            assert!(msg.contains("delete it"), "{msg}");
            assert_eq!(fs::read(&path).unwrap(), *bad, "never replaced");
        }
    }
}
