//! `relayhub store ...`: which store holds the registry, policy and tokens,
//! and moving a state directory into etcd.

use crate::core::join::Tokens;
use crate::store::backend::{DirStore, Shared, Store, StoreSpec};
use crate::store::dir::{ENROLL_IDENTITY_FILE, HUB_KEY_FILE, StateDir};
use crate::store::etcd::{self, EtcdStore};
use crate::store::policy::PolicyStore as _;
use crate::store::registry::RegistryStore as _;
use crate::store::token::TokenStore as _;

/// `relayhub store show`: the backend and what it holds.
pub fn show(store: &Store) -> anyhow::Result<String> {
    let registry = store.registry().load()?;
    let policy = store.policy().read_text()?;
    let tokens = store.tokens().load()?;
    let mut out = match store {
        Store::Dir(_) => format!("store: state directory {}\n", store.describe()),
        Store::Etcd(e) => format!("store: {}\n", e.name()),
    };
    out.push_str(&format!(
        "registry: {} spoke(s)\npolicy: {}\ntokens: {} join token(s)\n",
        registry.len(),
        if policy.is_some() {
            "set"
        } else {
            "none (every spoke may reach every other)"
        },
        tokens.tokens.len()
    ));
    if let Store::Etcd(e) = store {
        out.push_str("keys (mod_revision):\n");
        let names = [
            etcd::REGISTRY_KEY,
            etcd::POLICY_KEY,
            etcd::TOKENS_KEY,
            etcd::HUB_PUBLIC_KEY,
            etcd::ENROLL_PIN_KEY,
        ];
        for (name, v) in names.iter().zip(e.read_many(&names)?) {
            let shown = match v {
                Some((text, rev)) if name.contains('-') => format!("{rev}  {}", text.trim()),
                Some((text, rev)) => format!("{rev}  {} bytes", text.len()),
                None => "-".to_owned(),
            };
            out.push_str(&format!("  {}  {shown}\n", e.key(name)));
        }
    }
    Ok(out)
}

/// `relayhub store hubs`: the hubs registered on a shared store.
pub fn hubs(store: &Store) -> anyhow::Result<String> {
    let Store::Etcd(e) = store else {
        return Ok(
            "the state directory is one hub's store; hubs list themselves on etcd (--store etcd://...)\n"
                .to_owned(),
        );
    };
    let hubs = e.hubs()?;
    if hubs.is_empty() {
        return Ok(format!("no hub runs on {}\n", e.name()));
    }
    let rows: Vec<[String; 5]> = hubs
        .iter()
        .map(|(name, info)| {
            let v: serde_json::Value = serde_json::from_str(info).unwrap_or_default();
            let field = |k: &str| match &v[k] {
                serde_json::Value::String(s) => s.clone(),
                serde_json::Value::Null => "-".to_owned(),
                other => other.to_string(),
            };
            let started = v["started_unix"].as_u64().map_or("-".to_owned(), |t| {
                humantime::format_rfc3339_seconds(
                    std::time::UNIX_EPOCH + std::time::Duration::from_secs(t),
                )
                .to_string()
            });
            [
                name.clone(),
                field("endpoint"),
                field("metrics_addr"),
                field("version"),
                started,
            ]
        })
        .collect();
    Ok(crate::provision::spoke::table(
        ["NAME", "ENDPOINT", "API", "VERSION", "STARTED"],
        &rows,
    ))
}

/// `relayhub store migrate --to etcd://...`: copy the state directory's
/// registry, policy and tokens (the same JSON as the files) into etcd in
/// one transaction, refusing keys that exist unless `force`.
pub fn migrate(state: &StateDir, to: &StoreSpec, force: bool) -> anyhow::Result<String> {
    let StoreSpec::Etcd { endpoints, prefix } = to else {
        anyhow::bail!(
            "--to {to}: migrate copies the state directory into etcd; give etcd://HOST:PORT"
        );
    };
    let files = DirStore {
        state: state.clone(),
        registry: state.registry(),
        policy: state.policy(),
        tokens: state.tokens(),
    };
    let mut docs: Vec<(&str, String)> = Vec::new();
    let mut lines = Vec::new();
    let mut absent = Vec::new();
    // Through the store, so a legacy side file is folded in (as the hub reads it).
    let registry = files.registry.load()?;
    if files.registry.path().exists() || !registry.is_empty() {
        docs.push((etcd::REGISTRY_KEY, registry.to_json()));
        lines.push(format!(
            "registry  {} spoke(s) from {}",
            registry.len(),
            files.registry.path().display()
        ));
    } else {
        absent.push("registry");
    }
    // Verbatim (as `policy set` stores it), once it is known to be valid.
    match files.policy.read_text()? {
        Some(text) => {
            files.policy.load()?;
            docs.push((etcd::POLICY_KEY, text));
            lines.push(format!("policy    from {}", files.policy.path().display()));
        }
        None => absent.push("policy"),
    }
    let token_path = files.tokens.path();
    match std::fs::read_to_string(token_path) {
        Ok(text) => {
            let tokens = Tokens::from_json(&text)
                .map_err(|d| anyhow::anyhow!("{}: {d}", token_path.display()))?;
            docs.push((etcd::TOKENS_KEY, text));
            lines.push(format!(
                "tokens    {} join token(s) from {}",
                tokens.tokens.len(),
                token_path.display()
            ));
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => absent.push("tokens"),
        Err(e) => return Err(anyhow::anyhow!("{}: {e}", token_path.display())),
    }
    // The endpoints spokes dial: every hub of the store answers there.
    for (key, saved) in [
        (etcd::ENDPOINT_KEY, state.saved_endpoint()?),
        (etcd::ENDPOINT6_KEY, state.saved_endpoint6()?),
    ] {
        if let Some(ep) = saved {
            lines.push(format!("{key:<9} {ep}"));
            docs.push((key, ep));
        }
    }
    let etcd = EtcdStore::connect(endpoints, prefix)?;
    let target = Store::Etcd(etcd.clone());
    // The identities are not copied, only their public halves, so hubs
    // with other files are refused (see `Store::check_shared`).
    if state.hub_key_path().exists() {
        target.check_shared(Shared::HubPublicKey, &state.hub_public_key()?.to_base64())?;
    }
    if state.path().join(ENROLL_IDENTITY_FILE).exists() {
        target.check_shared(Shared::EnrollPin, &state.enroll_identity()?.pin)?;
    }
    if let Err(existing) = etcd.put_all(&docs, force)? {
        anyhow::bail!(
            "{}: {} exist(s) already; nothing copied. Pass --force to overwrite (what is there now is lost)",
            etcd.name(),
            existing.join(", ")
        );
    }
    let mut out = format!("copied into {}:\n", etcd.name());
    for l in &lines {
        out.push_str(&format!("  {l}\n"));
    }
    if lines.is_empty() {
        out.push_str("  nothing: the state directory holds no registry, policy or tokens\n");
    }
    if !absent.is_empty() {
        out.push_str(&format!(
            "not in the state directory, so not copied: {}\n",
            absent.join(", ")
        ));
    }
    out.push_str(&format!(
        "next: run every hub with --store {to}; copy {HUB_KEY_FILE} and {ENROLL_IDENTITY_FILE} from {} \
         to each other hub's state directory (mode 600): they are not in etcd\n",
        state.path().display()
    ));
    Ok(out)
}
