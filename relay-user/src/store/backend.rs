//! Which store holds the registry, the policy and the join tokens
//! (`--store`): the state directory (the embedded default, one hub) or
//! etcd (shared by several hubs). The hub's key and the enrollment TLS
//! identity always stay in the state directory.

use std::fmt;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::str::FromStr;

use crate::core::join::Tokens;
use crate::core::policy::PolicyError;
use crate::core::registry::{Registry, RegistryError};
use crate::store::dir::StateDir;
use crate::store::etcd::{self, EtcdError, EtcdStore};
use crate::store::policy::{PolicyFile, PolicyStore};
use crate::store::registry::{FileStore, RegistryStore};
use crate::store::token::{TokenFile, TokenStore, TokenStoreError};

/// `--store`: `dir`, or `etcd://HOST[:PORT][,HOST[:PORT]...][/PREFIX]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreSpec {
    Dir,
    Etcd {
        /// `HOST:PORT` each (IPv6 hosts in brackets).
        endpoints: Vec<String>,
        /// Starts and ends with `/`.
        prefix: String,
    },
}

const SPEC_HINT: &str = "use `dir` (the state directory) or etcd://HOST:PORT[,HOST:PORT...][/PREFIX], \
     for example etcd://10.0.0.5:2379";

fn endpoint(s: &str) -> Result<String, String> {
    let bad = |why: &str| Err(format!("etcd endpoint {s:?}: {why}; {SPEC_HINT}"));
    let (host, port) = if let Some(rest) = s.strip_prefix('[') {
        let Some((h, after)) = rest.split_once(']') else {
            return bad("no closing ]");
        };
        if h.parse::<std::net::Ipv6Addr>().is_err() {
            return bad("not an IPv6 address in brackets");
        }
        match after {
            "" => (format!("[{h}]"), None),
            p => match p.strip_prefix(':') {
                Some(p) => (format!("[{h}]"), Some(p)),
                None => return bad("expected :PORT after ]"),
            },
        }
    } else {
        match s.split_once(':') {
            Some((h, p)) => (h.to_owned(), Some(p)),
            None => (s.to_owned(), None),
        }
    };
    let host_ok = !host.is_empty()
        && host.len() <= 253
        && (host.starts_with('[')
            || host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-' || b == b'_'));
    if !host_ok {
        return bad("not a host name or address");
    }
    let port = match port {
        None => etcd::DEFAULT_PORT,
        Some(p) => match p.parse::<u16>() {
            Ok(p) if p != 0 => p,
            _ => return bad("the port is not a number from 1 to 65535"),
        },
    };
    Ok(format!("{host}:{port}"))
}

impl FromStr for StoreSpec {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        if s == "dir" {
            return Ok(StoreSpec::Dir);
        }
        let Some(rest) = s.strip_prefix("etcd://") else {
            return Err(format!("{s:?} is not a store; {SPEC_HINT}"));
        };
        let (hosts, path) = match rest.find('/') {
            Some(i) => rest.split_at(i),
            None => (rest, ""),
        };
        let endpoints = hosts
            .split(',')
            .map(endpoint)
            .collect::<Result<Vec<_>, _>>()?;
        let path = path.trim_matches('/');
        if path.bytes().any(|b| !b.is_ascii_graphic()) {
            return Err(format!(
                "key prefix {path:?}: use printable ASCII without spaces; {SPEC_HINT}"
            ));
        }
        let prefix = if path.is_empty() {
            etcd::DEFAULT_PREFIX.to_owned()
        } else {
            format!("/{path}/")
        };
        Ok(StoreSpec::Etcd { endpoints, prefix })
    }
}

impl fmt::Display for StoreSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreSpec::Dir => f.write_str("dir"),
            StoreSpec::Etcd { endpoints, prefix } => {
                write!(f, "etcd://{}{prefix}", endpoints.join(","))
            }
        }
    }
}

/// The state directory's files.
#[derive(Debug, Clone)]
pub struct DirStore {
    /// The directory itself (the saved endpoints).
    pub state: StateDir,
    pub registry: FileStore,
    pub policy: PolicyFile,
    pub tokens: TokenFile,
}

/// An open store.
#[derive(Debug, Clone)]
pub enum Store {
    /// Boxed: three paths each, against one Arc for etcd.
    Dir(Box<DirStore>),
    Etcd(EtcdStore),
}

/// The token store of either backend (its `update` is generic, so no
/// trait object).
pub enum TokensRef<'a> {
    File(&'a TokenFile),
    Etcd(&'a etcd::EtcdTokens),
}

impl TokenStore for TokensRef<'_> {
    fn load(&self) -> Result<Tokens, TokenStoreError> {
        match self {
            TokensRef::File(t) => t.load(),
            TokensRef::Etcd(t) => t.load(),
        }
    }

    fn update<T, E: From<TokenStoreError>>(
        &self,
        f: impl FnMut(&mut Tokens) -> Result<T, E>,
    ) -> Result<T, E> {
        match self {
            TokensRef::File(t) => t.update(f),
            TokensRef::Etcd(t) => t.update(f),
        }
    }
}

/// What the running hub has seen of the store: one stamp per document
/// (the etcd key's mod_revision, or a value from the file), 0 = none.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stamps {
    pub registry: u64,
    pub policy: u64,
}

/// One poll: the current stamps, and each document that changed since
/// the stamps given (a registry that does not parse is an error the hub
/// reports while keeping the previous one).
#[derive(Debug)]
pub struct Polled {
    pub stamps: Stamps,
    pub registry: Option<Result<Registry, RegistryError>>,
    pub policy: Option<Result<Option<String>, PolicyError>>,
    /// The literal IPs of the hub's saved endpoints (every poll: two short
    /// texts): which of the interface's addresses is the hub's.
    pub endpoint_ips: Vec<std::net::IpAddr>,
}

/// The literal IP addresses among `endpoints` (`HOST:PORT` texts).
fn literal_ips(endpoints: &[Option<String>]) -> Vec<std::net::IpAddr> {
    endpoints
        .iter()
        .filter_map(|e| crate::io::netinfo::endpoint_ip(e.as_deref()?))
        .collect()
}

fn text_stamp(text: Option<&str>) -> u64 {
    let Some(t) = text else { return 0 };
    let mut h = DefaultHasher::new();
    t.hash(&mut h);
    h.finish().max(1)
}

impl Store {
    /// The state directory's files.
    pub fn dir(state: &StateDir) -> Store {
        Store::Dir(Box::new(DirStore {
            state: state.clone(),
            registry: state.registry(),
            policy: state.policy(),
            tokens: state.tokens(),
        }))
    }

    /// Opens the store `spec` names (the state directory for `dir`).
    pub fn open(spec: &StoreSpec, state: &StateDir) -> Result<Store, EtcdError> {
        match spec {
            StoreSpec::Dir => Ok(Store::dir(state)),
            StoreSpec::Etcd { endpoints, prefix } => {
                Ok(Store::Etcd(EtcdStore::connect(endpoints, prefix)?))
            }
        }
    }

    pub fn registry(&self) -> &dyn RegistryStore {
        match self {
            Store::Dir(d) => &d.registry,
            Store::Etcd(e) => &e.registry,
        }
    }

    pub fn policy(&self) -> &dyn PolicyStore {
        match self {
            Store::Dir(d) => &d.policy,
            Store::Etcd(e) => &e.policy,
        }
    }

    pub fn tokens(&self) -> TokensRef<'_> {
        match self {
            Store::Dir(d) => TokensRef::File(&d.tokens),
            Store::Etcd(e) => TokensRef::Etcd(&e.tokens),
        }
    }

    /// `dir` or `etcd` (the metrics' backend label).
    pub fn backend(&self) -> &'static str {
        match self {
            Store::Dir(_) => "dir",
            Store::Etcd(_) => "etcd",
        }
    }

    /// Where it is: the state directory's path, or `etcd://.../PREFIX/`.
    pub fn describe(&self) -> String {
        match self {
            Store::Dir(d) => d
                .registry
                .path()
                .parent()
                .map(|p| p.display().to_string())
                .unwrap_or_default(),
            Store::Etcd(e) => e.name().to_owned(),
        }
    }

    /// The hub's endpoint last given with `--endpoint` (`v6`: its IPv6
    /// one). In the state directory for a single hub; shared on etcd, where
    /// every hub answers on the same address and must know it (which of an
    /// interface's addresses is the hub's: keepalived adds the shared
    /// one beside the host's own).
    pub fn saved_endpoint(&self, v6: bool) -> anyhow::Result<Option<String>> {
        Ok(match (self, v6) {
            (Store::Dir(d), false) => d.state.saved_endpoint()?,
            (Store::Dir(d), true) => d.state.saved_endpoint6()?,
            (Store::Etcd(e), _) => e
                .read(endpoint_key(v6))?
                .map(|(t, _)| t.trim().to_owned())
                .filter(|t| !t.is_empty()),
        })
    }

    /// Remember `endpoint` as the hub's (`v6`: its IPv6 one).
    pub fn save_endpoint(&self, v6: bool, endpoint: &str) -> anyhow::Result<()> {
        match (self, v6) {
            (Store::Dir(d), false) => d.state.save_endpoint(endpoint)?,
            (Store::Dir(d), true) => d.state.save_endpoint6(endpoint)?,
            (Store::Etcd(e), _) => e.set(endpoint_key(v6), endpoint)?,
        }
        Ok(())
    }

    /// Every hub on a shared store must present the same `what` (the
    /// hub's public key, the enrollment pin): the first one stores it,
    /// the others are checked against it. No-op for the state directory.
    pub fn check_shared(&self, what: Shared, value: &str) -> anyhow::Result<()> {
        let Store::Etcd(e) = self else { return Ok(()) };
        match e.claim(what.key(), value)? {
            None => Ok(()),
            Some(other) => anyhow::bail!(
                "this host's {} ({value}) differs from the one the hubs on {} share ({other}); \
                 copy {} from a hub of that store into this host's state directory (mode 600)",
                what.label(),
                e.name(),
                what.file()
            ),
        }
    }

    /// What changed since `seen` (everything, without). `Err`: the store
    /// is unreachable (etcd); the state directory always answers.
    pub fn poll(&self, seen: Option<Stamps>) -> Result<Polled, EtcdError> {
        match self {
            Store::Dir(d) => {
                let (registry_stamp, registry) = match d.registry.stamp() {
                    Ok(s) if seen.is_some_and(|seen| seen.registry == s) => (s, None),
                    Ok(s) => (s, Some(d.registry.load())),
                    // Reported, and read again next time.
                    Err(e) => (0, Some(Err(e))),
                };
                let (policy_stamp, policy) = match d.policy.read_text() {
                    Ok(t) => {
                        let s = text_stamp(t.as_deref());
                        (
                            s,
                            (seen.is_none_or(|seen| seen.policy != s)).then_some(Ok(t)),
                        )
                    }
                    Err(e) => (0, Some(Err(e))),
                };
                Ok(Polled {
                    stamps: Stamps {
                        registry: registry_stamp,
                        policy: policy_stamp,
                    },
                    registry,
                    policy,
                    endpoint_ips: d.state.endpoint_ips(),
                })
            }
            Store::Etcd(e) => {
                let docs = e.read_many(&[
                    etcd::REGISTRY_KEY,
                    etcd::POLICY_KEY,
                    etcd::ENDPOINT_KEY,
                    etcd::ENDPOINT6_KEY,
                ])?;
                let endpoint_ips = literal_ips(
                    &docs[2..]
                        .iter()
                        .map(|d| d.as_ref().map(|(t, _)| t.trim().to_owned()))
                        .collect::<Vec<_>>(),
                );
                let stamp = |d: &Option<(String, i64)>| {
                    d.as_ref()
                        .map_or(0, |(_, r)| u64::try_from(*r).unwrap_or(0))
                };
                let stamps = Stamps {
                    registry: stamp(&docs[0]),
                    policy: stamp(&docs[1]),
                };
                let mut docs = docs.into_iter();
                let (reg, pol) = (docs.next().flatten(), docs.next().flatten());
                let registry =
                    seen.is_none_or(|s| s.registry != stamps.registry)
                        .then(|| match reg {
                            Some((text, _)) => Registry::from_json(
                                &text,
                                std::path::Path::new(&e.registry.location()),
                            ),
                            None => Ok(Registry::new()),
                        });
                let policy = seen
                    .is_none_or(|s| s.policy != stamps.policy)
                    .then(|| Ok(pol.map(|(t, _)| t)));
                Ok(Polled {
                    stamps,
                    registry,
                    policy,
                    endpoint_ips,
                })
            }
        }
    }
}

fn endpoint_key(v6: bool) -> &'static str {
    if v6 {
        etcd::ENDPOINT6_KEY
    } else {
        etcd::ENDPOINT_KEY
    }
}

/// What all hubs on a shared store must have in common.
#[derive(Debug, Clone, Copy)]
pub enum Shared {
    /// The hub's WireGuard public key (spokes peer with it).
    HubPublicKey,
    /// The enrollment TLS pin (join lines carry it).
    EnrollPin,
}

impl Shared {
    fn key(self) -> &'static str {
        match self {
            Shared::HubPublicKey => etcd::HUB_PUBLIC_KEY,
            Shared::EnrollPin => etcd::ENROLL_PIN_KEY,
        }
    }

    fn label(self) -> &'static str {
        match self {
            Shared::HubPublicKey => "hub public key",
            Shared::EnrollPin => "enrollment TLS pin",
        }
    }

    fn file(self) -> &'static str {
        match self {
            Shared::HubPublicKey => crate::store::dir::HUB_KEY_FILE,
            Shared::EnrollPin => crate::store::dir::ENROLL_IDENTITY_FILE,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn etcd(endpoints: &[&str], prefix: &str) -> StoreSpec {
        StoreSpec::Etcd {
            endpoints: endpoints.iter().map(|s| s.to_string()).collect(),
            prefix: prefix.into(),
        }
    }

    #[test]
    fn spec_parses_and_prints() {
        for (text, want, shown) in [
            ("dir", StoreSpec::Dir, "dir"),
            (
                "etcd://127.0.0.1:2379",
                etcd(&["127.0.0.1:2379"], "/relayhub/"),
                "etcd://127.0.0.1:2379/relayhub/",
            ),
            (
                "etcd://h1,h2:4000/",
                etcd(&["h1:2379", "h2:4000"], "/relayhub/"),
                "etcd://h1:2379,h2:4000/relayhub/",
            ),
            (
                "etcd://[::1]:2379/site/a",
                etcd(&["[::1]:2379"], "/site/a/"),
                "etcd://[::1]:2379/site/a/",
            ),
            (
                "etcd://etcd.example.net/x/",
                etcd(&["etcd.example.net:2379"], "/x/"),
                "etcd://etcd.example.net:2379/x/",
            ),
        ] {
            let got: StoreSpec = text.parse().unwrap();
            assert_eq!(got, want, "{text}");
            assert_eq!(got.to_string(), shown);
            assert_eq!(shown.parse::<StoreSpec>().unwrap(), want, "round trip");
        }
    }

    #[test]
    fn bad_specs_say_why() {
        for (text, says) in [
            ("etcd", "is not a store"),
            ("http://127.0.0.1:2379", "is not a store"),
            ("etcd://", "not a host"),
            ("etcd://h:0", "port"),
            ("etcd://h:99999", "port"),
            ("etcd://h:x", "port"),
            ("etcd://h1,,h2", "not a host"),
            ("etcd://[::1", "closing ]"),
            ("etcd://[nope]:1", "IPv6"),
            ("etcd://h/a b", "printable"),
            ("etcd://ho st:1", "not a host"),
        ] {
            let e = text.parse::<StoreSpec>().unwrap_err();
            assert!(e.contains(says), "{text}: {e}");
            assert!(e.contains("etcd://HOST:PORT"), "{text}: {e}");
            assert!(!e.contains('\n'), "one line: {e}");
        }
    }
}
