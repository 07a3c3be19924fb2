//! The shared store: etcd (`--store etcd://HOST:PORT[,HOST:PORT...][/PREFIX]`).
//!
//! One key per document under the prefix, holding the same JSON as the
//! state directory's file: `registry` (spokes.json), `policy`
//! (policy.json), `tokens` (tokens.json), plus `hub-public-key` and
//! `enroll-pin` (what every hub on this store must present). Every
//! read-modify-write is a transaction that compares the key's
//! mod_revision with the one read, retried on conflict, so concurrent
//! writers on several hubs never lose an update.
//!
//! The etcd client is async; this store owns a one-thread runtime and
//! callers block on it (the CLI, enrollment's blocking task, the hub's
//! polling task), every call bounded by [`CALL_TIMEOUT`]. Blocking on a
//! runtime of our own works from any thread, also from inside the hub's.

use std::future::Future;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use etcd_client::{Client, Compare, CompareOp, ConnectOptions, Txn, TxnOp, TxnOpResponse};

use crate::core::join::Tokens;
use crate::core::policy::{Policy, PolicyError};
use crate::core::registry::{Registry, RegistryError};
use crate::store::policy::PolicyStore;
use crate::store::registry::RegistryStore;
use crate::store::token::{TokenStore, TokenStoreError};

/// Every etcd call gives up after this long: the hub must not stall on a
/// store that went away, and the CLI must say so instead of hanging.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(2);
/// Conflicting writers each get this many tries; every round one of them
/// wins, so only a storm of writers runs out.
pub const MAX_ATTEMPTS: usize = 64;
/// The default key prefix.
pub const DEFAULT_PREFIX: &str = "/relayhub/";
/// The etcd client's default port.
pub const DEFAULT_PORT: u16 = 2379;

/// The keys under the prefix.
pub const REGISTRY_KEY: &str = "registry";
pub const POLICY_KEY: &str = "policy";
pub const TOKENS_KEY: &str = "tokens";
pub const HUB_PUBLIC_KEY: &str = "hub-public-key";
pub const ENROLL_PIN_KEY: &str = "enroll-pin";
/// The hub's endpoint as given to `--endpoint` (any family), and its IPv6
/// one: every hub of the store shares the address spokes dial.
pub const ENDPOINT_KEY: &str = "endpoint";
pub const ENDPOINT6_KEY: &str = "endpoint6";
/// One key per running hub below this (its lease keeps it).
pub const HUBS_PREFIX: &str = "hubs/";
/// A hub's key goes this many seconds after its last keepalive (a killed
/// hub leaves the list within it).
pub const MEMBER_TTL_SECS: i64 = 10;

/// A failure to talk to etcd (or a value there that is not text). One
/// line that names the store.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct EtcdError(pub String);

impl From<EtcdError> for RegistryError {
    fn from(e: EtcdError) -> Self {
        RegistryError::Other(e.0)
    }
}

impl From<EtcdError> for PolicyError {
    fn from(e: EtcdError) -> Self {
        PolicyError::Store(e.0)
    }
}

impl From<EtcdError> for TokenStoreError {
    fn from(e: EtcdError) -> Self {
        TokenStoreError::Store(e.0)
    }
}

/// The connection every view shares.
struct Conn {
    /// Shut down in the background on drop: the hub drops the store inside
    /// its own runtime, where a blocking shutdown would panic.
    rt: Option<tokio::runtime::Runtime>,
    handle: tokio::runtime::Handle,
    client: Client,
    prefix: String,
    /// `etcd://HOST:PORT,.../PREFIX`, for messages.
    name: String,
}

impl Drop for Conn {
    fn drop(&mut self) {
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

/// What a read-modify-write does with the key.
pub enum Write {
    Keep,
    Put(String),
    Delete,
}

/// A key's value and its mod_revision.
type Versioned = Option<(String, i64)>;

/// A handle on one etcd store (cheap to clone). Its views implement the
/// registry, policy and token stores.
#[derive(Clone)]
pub struct EtcdStore {
    conn: Arc<Conn>,
    pub registry: EtcdRegistry,
    pub policy: EtcdPolicy,
    pub tokens: EtcdTokens,
}

#[derive(Clone)]
pub struct EtcdRegistry(Arc<Conn>);
#[derive(Clone)]
pub struct EtcdPolicy(Arc<Conn>);
#[derive(Clone)]
pub struct EtcdTokens(Arc<Conn>);

impl std::fmt::Debug for EtcdStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.conn.name)
    }
}

/// A one-line reason from the client's error: the status code, its
/// message and the causes under it (tonic's Display of a status spans its
/// metadata; "tcp connect error" alone does not say why).
fn reason(e: &etcd_client::Error) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut source: Option<&dyn std::error::Error> = match e {
        etcd_client::Error::GRpcStatus(s) => {
            parts.push(format!("{:?}", s.code()));
            parts.push(s.message().trim().to_owned());
            std::error::Error::source(s)
        }
        other => {
            parts.push(other.to_string());
            std::error::Error::source(other)
        }
    };
    while let Some(s) = source {
        parts.push(s.to_string());
        source = s.source();
    }
    let mut out: Vec<String> = Vec::new();
    for p in parts {
        let p = p.replace('\n', " ");
        // Layers often repeat the message below them.
        if !p.is_empty() && !out.iter().any(|o| o.contains(&p)) {
            out.push(p);
        }
    }
    out.join(": ")
}

impl EtcdStore {
    /// A store on `endpoints` (`HOST:PORT`) under `prefix` (starts and
    /// ends with `/`). Connecting is lazy: an unreachable etcd shows in
    /// the first call.
    pub fn connect(endpoints: &[String], prefix: &str) -> Result<Self, EtcdError> {
        let name = format!("etcd://{}{prefix}", endpoints.join(","));
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("relayhub-etcd")
            .enable_all()
            .build()
            .map_err(|e| EtcdError(format!("{name}: cannot start the etcd client: {e}")))?;
        let urls: Vec<String> = endpoints.iter().map(|e| format!("http://{e}")).collect();
        let options = ConnectOptions::new()
            .with_connect_timeout(CALL_TIMEOUT)
            .with_timeout(CALL_TIMEOUT);
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        // The client spawns its channel's workers: build it on its runtime.
        rt.spawn(async move {
            let _ = tx.send(Client::connect(urls, Some(options)).await);
        });
        let client = rx
            .recv()
            .map_err(|_| EtcdError(format!("{name}: the etcd client stopped")))?
            .map_err(|e| EtcdError(format!("{name} (--store): {}", reason(&e))))?;
        let conn = Arc::new(Conn {
            handle: rt.handle().clone(),
            rt: Some(rt),
            client,
            prefix: prefix.to_owned(),
            name,
        });
        Ok(EtcdStore {
            registry: EtcdRegistry(conn.clone()),
            policy: EtcdPolicy(conn.clone()),
            tokens: EtcdTokens(conn.clone()),
            conn,
        })
    }

    /// `etcd://HOST:PORT,.../PREFIX`.
    pub fn name(&self) -> &str {
        &self.conn.name
    }

    /// The full key of `name`.
    pub fn key(&self, name: &str) -> String {
        self.conn.key(name)
    }

    /// The value and mod_revision of `name`.
    pub fn read(&self, name: &str) -> Result<Versioned, EtcdError> {
        self.conn.read(name)
    }

    /// Several keys at one revision (a transaction of gets).
    pub fn read_many(&self, names: &[&str]) -> Result<Vec<Versioned>, EtcdError> {
        let ops: Vec<TxnOp> = names
            .iter()
            .map(|n| TxnOp::get(self.key(n), None))
            .collect();
        let resp = self.conn.txn(Txn::new().and_then(ops))?;
        let mut out = Vec::with_capacity(names.len());
        for (name, r) in names.iter().zip(resp.op_responses()) {
            out.push(match r {
                TxnOpResponse::Get(g) => self.conn.versioned(name, g.kvs().first())?,
                _ => None,
            });
        }
        Ok(out)
    }

    /// Write every `(name, text)` in one transaction if none of the keys
    /// exists yet (or regardless, with `force`). `Err(names)`: the keys
    /// that exist, nothing written.
    pub fn put_all(
        &self,
        docs: &[(&str, String)],
        force: bool,
    ) -> Result<Result<(), Vec<String>>, EtcdError> {
        let puts: Vec<TxnOp> = docs
            .iter()
            .map(|(n, t)| TxnOp::put(self.key(n), t.as_str(), None))
            .collect();
        let when: Vec<Compare> = if force {
            Vec::new()
        } else {
            docs.iter()
                .map(|(n, _)| Compare::create_revision(self.key(n), CompareOp::Equal, 0))
                .collect()
        };
        let resp = self.conn.txn(Txn::new().when(when).and_then(puts))?;
        if resp.succeeded() {
            return Ok(Ok(()));
        }
        let names: Vec<&str> = docs.iter().map(|(n, _)| *n).collect();
        let existing = self
            .read_many(&names)?
            .into_iter()
            .zip(names)
            .filter(|(v, _)| v.is_some())
            .map(|(_, n)| self.key(n))
            .collect();
        Ok(Err(existing))
    }

    /// Store `value` under `name` (a small text every hub shares).
    pub fn set(&self, name: &str, value: &str) -> Result<(), EtcdError> {
        self.conn.update(
            name,
            |e| e,
            |cur| {
                Ok::<_, EtcdError>(match cur {
                    Some(v) if v.trim() == value => Write::Keep,
                    _ => Write::Put(value.to_owned()),
                })
            },
        )?;
        Ok(())
    }

    /// Store `value` under `name` unless another value is there: `None`
    /// when `value` is (now) stored, else the other value. For what every
    /// hub on the store must share (the hub's public key, the pin).
    pub fn claim(&self, name: &str, value: &str) -> Result<Option<String>, EtcdError> {
        let mut other = None;
        self.conn.update(
            name,
            |e| e,
            |cur| {
                Ok::<_, EtcdError>(match cur {
                    None => Write::Put(value.to_owned()),
                    Some(v) if v.trim() == value => Write::Keep,
                    Some(v) => {
                        other = Some(v.trim().to_owned());
                        Write::Keep
                    }
                })
            },
        )?;
        Ok(other)
    }
}

/// A hub's registration under `hubs/`: kept alive on the store's runtime
/// (and re-made after an outage) while this lives; removed on drop.
pub struct Membership {
    conn: Arc<Conn>,
    name: String,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Membership {
    fn drop(&mut self) {
        self.task.abort();
        // Gone from the list at once on a clean stop (else after the TTL).
        let mut c = self.conn.client.clone();
        let key = self.conn.key(&format!("{HUBS_PREFIX}{}", self.name));
        let _ = self
            .conn
            .call("removing the hub's registration", async move {
                c.delete(key, None).await
            });
    }
}

impl EtcdStore {
    /// Register this hub as `hubs/NAME` with `info` (JSON) under a lease.
    pub fn register(&self, name: &str, info: String) -> Membership {
        let key = self.key(&format!("{HUBS_PREFIX}{name}"));
        let client = self.conn.client.clone();
        let store = self.conn.name.clone();
        let task = self.conn.handle.spawn(async move {
            let mut logged = false;
            loop {
                let mut c = client.clone();
                let r = async {
                    let lease = c.lease_grant(MEMBER_TTL_SECS, None).await?.id();
                    let opts = etcd_client::PutOptions::new().with_lease(lease);
                    c.put(key.as_str(), info.as_str(), Some(opts)).await?;
                    let (mut keeper, mut answers) = c.lease_keep_alive(lease).await?;
                    loop {
                        tokio::time::sleep(Duration::from_secs(MEMBER_TTL_SECS as u64 / 3)).await;
                        keeper.keep_alive().await?;
                        match tokio::time::timeout(CALL_TIMEOUT, answers.message()).await {
                            // A TTL of 0: the lease expired meanwhile (an outage).
                            Ok(Ok(Some(a))) if a.ttl() > 0 => {}
                            _ => return Ok::<(), etcd_client::Error>(()),
                        }
                    }
                }
                .await;
                if let Err(e) = r
                    && !logged
                {
                    tracing::debug!(store, error = %reason(&e), "hub registration; retrying");
                    logged = true;
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        });
        Membership {
            conn: self.conn.clone(),
            name: name.to_owned(),
            task,
        }
    }

    /// The registered hubs: (name, info) by name.
    pub fn hubs(&self) -> Result<Vec<(String, String)>, EtcdError> {
        let mut c = self.conn.client.clone();
        let prefix = self.key(HUBS_PREFIX);
        let p = prefix.clone();
        let resp = self.conn.call("listing the hubs", async move {
            c.get(p, Some(etcd_client::GetOptions::new().with_prefix()))
                .await
        })?;
        Ok(resp
            .kvs()
            .iter()
            .filter_map(|kv| {
                let name = kv.key_str().ok()?.strip_prefix(&prefix)?.to_owned();
                Some((name, kv.value_str().ok()?.to_owned()))
            })
            .collect())
    }
}

impl Conn {
    fn key(&self, name: &str) -> String {
        format!("{}{name}", self.prefix)
    }

    fn err(&self, what: &str, detail: impl std::fmt::Display) -> EtcdError {
        EtcdError(format!(
            "{} (--store): {what}: {detail}; check that etcd runs there and this host reaches it",
            self.name
        ))
    }

    /// Run `fut` on the store's runtime and wait for it, at most
    /// [`CALL_TIMEOUT`].
    fn call<T, F>(&self, what: &str, fut: F) -> Result<T, EtcdError>
    where
        T: Send + 'static,
        F: Future<Output = Result<T, etcd_client::Error>> + Send + 'static,
    {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        self.handle.spawn(async move {
            let _ = tx.send(tokio::time::timeout(CALL_TIMEOUT, fut).await);
        });
        match rx.recv() {
            Ok(Ok(Ok(v))) => Ok(v),
            Ok(Ok(Err(e))) => Err(self.err(what, reason(&e))),
            Ok(Err(_)) => Err(self.err(
                what,
                format_args!("no answer within {} s", CALL_TIMEOUT.as_secs()),
            )),
            Err(_) => Err(self.err(what, "the etcd client stopped")),
        }
    }

    fn txn(&self, txn: Txn) -> Result<etcd_client::TxnResponse, EtcdError> {
        let mut c = self.client.clone();
        self.call("transaction", async move { c.txn(txn).await })
    }

    fn versioned(
        &self,
        name: &str,
        kv: Option<&etcd_client::KeyValue>,
    ) -> Result<Versioned, EtcdError> {
        let Some(kv) = kv else { return Ok(None) };
        let text = kv.value_str().map_err(|_| {
            EtcdError(format!(
                "{}{name}: the value is not UTF-8 text; rewrite it (relayhub store migrate --force, or etcdctl put)",
                self.name
            ))
        })?;
        Ok(Some((text.to_owned(), kv.mod_revision())))
    }

    fn read(&self, name: &str) -> Result<Versioned, EtcdError> {
        let mut c = self.client.clone();
        let key = self.key(name);
        let resp = self.call(
            &format!("reading {key}"),
            async move { c.get(key, None).await },
        )?;
        self.versioned(name, resp.kvs().first())
    }

    /// Read-modify-write of one key: `f` sees the current text (`None`:
    /// no key) and says what to write; the write happens only if the key
    /// still has the revision read, else `f` runs again on the new value.
    fn update<E>(
        &self,
        name: &str,
        lift: impl Fn(EtcdError) -> E,
        mut f: impl FnMut(Option<&str>) -> Result<Write, E>,
    ) -> Result<(), E> {
        let key = self.key(name);
        let mut current = self.read(name).map_err(&lift)?;
        for _ in 0..MAX_ATTEMPTS {
            let revision = current.as_ref().map_or(0, |c| c.1);
            let op = match f(current.as_ref().map(|c| c.0.as_str()))? {
                Write::Keep => return Ok(()),
                Write::Put(text) => TxnOp::put(key.as_str(), text, None),
                Write::Delete => TxnOp::delete(key.as_str(), None),
            };
            // A missing key compares as revision 0.
            let txn = Txn::new()
                .when([Compare::mod_revision(
                    key.as_str(),
                    CompareOp::Equal,
                    revision,
                )])
                .and_then([op])
                .or_else([TxnOp::get(key.as_str(), None)]);
            let resp = self.txn(txn).map_err(&lift)?;
            if resp.succeeded() {
                return Ok(());
            }
            // Someone wrote in between: the failure branch read the new value.
            current = match resp.op_responses().into_iter().next() {
                Some(TxnOpResponse::Get(g)) => self.versioned(name, g.kvs().first()),
                _ => self.read(name),
            }
            .map_err(&lift)?;
        }
        Err(lift(EtcdError(format!(
            "{key}: {MAX_ATTEMPTS} conflicting writes in a row; nothing changed, try again"
        ))))
    }
}

impl EtcdRegistry {
    fn parse(&self, text: Option<&str>) -> Result<Registry, RegistryError> {
        match text {
            Some(t) => Registry::from_json(t, Path::new(&self.location())),
            None => Ok(Registry::new()),
        }
    }

    /// `etcd://.../PREFIX/registry`, where errors point.
    pub fn location(&self) -> String {
        format!("{}{REGISTRY_KEY}", self.0.name)
    }

    /// The registry's text and mod_revision.
    pub fn read(&self) -> Result<Versioned, EtcdError> {
        self.0.read(REGISTRY_KEY)
    }
}

impl RegistryStore for EtcdRegistry {
    fn load(&self) -> Result<Registry, RegistryError> {
        let cur = self.0.read(REGISTRY_KEY)?;
        self.parse(cur.as_ref().map(|c| c.0.as_str()))
    }

    fn update(
        &self,
        f: &mut dyn FnMut(&mut Registry) -> Result<(), RegistryError>,
    ) -> Result<Registry, RegistryError> {
        let mut after = None;
        self.0.update(REGISTRY_KEY, RegistryError::from, |text| {
            let before = self.parse(text)?;
            let mut next = before.clone();
            f(&mut next)?;
            let write = if next != before {
                Write::Put(next.to_json())
            } else {
                Write::Keep
            };
            after = Some(next);
            Ok::<_, RegistryError>(write)
        })?;
        after.ok_or_else(|| RegistryError::Other("registry update did not run".into()))
    }

    /// The key's mod_revision (0: no registry stored).
    fn stamp(&self) -> Result<u64, RegistryError> {
        Ok(self
            .0
            .read(REGISTRY_KEY)?
            .map_or(0, |c| u64::try_from(c.1).unwrap_or(0)))
    }
}

impl PolicyStore for EtcdPolicy {
    fn location(&self) -> String {
        format!("{}{POLICY_KEY}", self.0.name)
    }

    fn read_text(&self) -> Result<Option<String>, PolicyError> {
        Ok(self.0.read(POLICY_KEY)?.map(|c| c.0))
    }

    fn set_text(&self, text: &str, source: &Path) -> Result<Policy, PolicyError> {
        let policy = Policy::from_json(text, source)?;
        // A whole new policy replaces whatever is there: no compare needed.
        let mut c = self.0.client.clone();
        let (key, value) = (self.0.key(POLICY_KEY), text.to_owned());
        self.0.call("writing the policy", async move {
            c.put(key, value, None).await
        })?;
        Ok(policy)
    }

    fn update(
        &self,
        f: &mut dyn FnMut(Option<Policy>) -> Result<Policy, PolicyError>,
    ) -> Result<Policy, PolicyError> {
        let mut after = None;
        let location = self.location();
        self.0.update(POLICY_KEY, PolicyError::from, |text| {
            let cur = text
                .map(|t| Policy::from_json(t, Path::new(&location)))
                .transpose()?;
            let next = f(cur)?;
            let write = Write::Put(next.to_json());
            after = Some(next);
            Ok::<_, PolicyError>(write)
        })?;
        after.ok_or_else(|| PolicyError::Store("policy update did not run".into()))
    }

    fn remove(&self) -> Result<bool, PolicyError> {
        let mut c = self.0.client.clone();
        let key = self.0.key(POLICY_KEY);
        let resp = self.0.call(
            "removing the policy",
            async move { c.delete(key, None).await },
        )?;
        Ok(resp.deleted() > 0)
    }
}

impl EtcdTokens {
    fn parse(&self, text: Option<&str>) -> Result<Tokens, TokenStoreError> {
        match text {
            None => Ok(Tokens::new()),
            Some(t) => Tokens::from_json(t).map_err(|detail| TokenStoreError::Corrupt {
                path: format!("{}{TOKENS_KEY}", self.0.name).into(),
                detail,
            }),
        }
    }
}

impl TokenStore for EtcdTokens {
    fn load(&self) -> Result<Tokens, TokenStoreError> {
        let cur = self.0.read(TOKENS_KEY)?;
        self.parse(cur.as_ref().map(|c| c.0.as_str()))
    }

    fn update<T, E: From<TokenStoreError>>(
        &self,
        mut f: impl FnMut(&mut Tokens) -> Result<T, E>,
    ) -> Result<T, E> {
        let mut out = None;
        self.0.update(
            TOKENS_KEY,
            |e| E::from(e.into()),
            |text| {
                let before = self.parse(text)?;
                let mut next = before.clone();
                out = Some(f(&mut next)?);
                Ok::<_, E>(if next != before {
                    Write::Put(next.to_json())
                } else {
                    Write::Keep
                })
            },
        )?;
        out.ok_or_else(|| TokenStoreError::Store("token update did not run".into()).into())
    }
}
