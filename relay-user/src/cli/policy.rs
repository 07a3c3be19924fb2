//! The `relayhub policy ...` subcommands. Each returns the text to print on
//! stdout; a change is stored whole (or not at all) when it returns.

use std::path::Path;

use anyhow::Context as _;

use crate::core::policy::{Policy, PolicyError, Term};
use crate::core::registry::Registry;
use crate::store::Store;

const APPLY_NOTE: &str = "the running hub applies it within a second: it drops initiations between denied \
     spokes and closes their relayed sessions; `relayhub spoke config NAME` prints spoke files that \
     list only the peers each spoke may reach\n";

/// `relayhub policy show`: the rules and who may reach whom.
pub fn show(store: &Store) -> anyhow::Result<String> {
    let registry = store.registry().load()?;
    Ok(match store.policy().load()? {
        None => format!(
            "no policy ({} does not exist): every registered spoke may reach every other\n",
            store.policy().location()
        ),
        Some(p) => summary(store, &p, &registry),
    })
}

/// `relayhub policy set FILE`: validate FILE and make it the policy.
pub fn set(store: &Store, file: &Path) -> anyhow::Result<String> {
    let text = std::fs::read_to_string(file)
        .with_context(|| format!("{}: cannot read the policy file", file.display()))?;
    let policy = store.policy().set_text(&text, file)?;
    let registry = store.registry().load()?;
    Ok(format!(
        "policy set from {}\n{}{APPLY_NOTE}",
        file.display(),
        summary(store, &policy, &registry)
    ))
}

/// `relayhub policy allow A B`.
pub fn allow(store: &Store, a: &str, b: &str) -> anyhow::Result<String> {
    let (a, b) = (term(a)?, term(b)?);
    change(store, &mut |cur| {
        // Without a policy everything was allowed: listing pairs starts
        // from nothing allowed.
        let mut p = cur.unwrap_or_default();
        p.allow_pair(a.clone(), b.clone())?;
        Ok(p)
    })
}

/// `relayhub policy deny A B`.
pub fn deny(store: &Store, a: &str, b: &str) -> anyhow::Result<String> {
    let (a, b) = (term(a)?, term(b)?);
    change(store, &mut |cur| {
        // Without a policy everything was allowed, and still is but A <-> B.
        let mut p = cur.unwrap_or_else(Policy::allow_all);
        p.deny_pair(a.clone(), b.clone())?;
        Ok(p)
    })
}

/// `relayhub policy group NAME [SPOKE...]`.
pub fn group(store: &Store, name: &str, members: &[String]) -> anyhow::Result<String> {
    change(store, &mut |cur| {
        let mut p = cur.unwrap_or_else(Policy::allow_all);
        p.set_group(name, members)?;
        Ok(p)
    })
}

/// `relayhub policy exit allow|deny TERM`: who may use the hub as exit.
pub fn exit(store: &Store, allow: bool, t: &str) -> anyhow::Result<String> {
    let t = term(t)?;
    change(store, &mut |cur| {
        // Without a policy every pair stays allowed; exit users start empty.
        let mut p = cur.unwrap_or_else(Policy::allow_all);
        if allow {
            p.allow_exit(t.clone())?;
        } else {
            p.deny_exit(&t)?;
        }
        Ok(p)
    })
}

/// `relayhub policy reset`: remove the policy (every pair allowed).
pub fn reset(store: &Store) -> anyhow::Result<String> {
    Ok(if store.policy().remove()? {
        format!(
            "removed {}: every registered spoke may reach every other again\n{APPLY_NOTE}",
            store.policy().location()
        )
    } else {
        "no policy to remove: every registered spoke may reach every other\n".to_owned()
    })
}

fn term(s: &str) -> anyhow::Result<Term> {
    Term::parse(s).map_err(|e| PolicyError::Usage(e).into())
}

fn change(
    store: &Store,
    f: &mut dyn FnMut(Option<Policy>) -> Result<Policy, PolicyError>,
) -> anyhow::Result<String> {
    let policy = store.policy().update(f).context("policy not changed")?;
    let registry = store.registry().load()?;
    Ok(format!(
        "policy updated\n{}{APPLY_NOTE}",
        summary(store, &policy, &registry)
    ))
}

/// The policy's rules, then each registered spoke's reachable peers.
pub fn summary(store: &Store, p: &Policy, registry: &Registry) -> String {
    let mut out = format!("policy: {}\n", store.policy().location());
    out.push_str("groups:\n");
    if p.groups.is_empty() {
        out.push_str("  (none)\n");
    }
    for (g, members) in &p.groups {
        out.push_str(&format!("  @{g}: {}\n", members.join(" ")));
    }
    for (name, rules) in [("allow", &p.allow), ("deny", &p.deny)] {
        out.push_str(&format!("{name}:\n"));
        if rules.is_empty() {
            out.push_str("  (none)\n");
        }
        for r in rules {
            out.push_str(&format!("  {r}\n"));
        }
    }
    // Only with exit users: policies without them print as before.
    if !p.exit.is_empty() {
        let exit: Vec<String> = p.exit.iter().map(ToString::to_string).collect();
        out.push_str(&format!("exit through the hub: {}\n", exit.join(" ")));
    }
    out.push_str("registered spokes may reach:\n");
    if registry.is_empty() {
        out.push_str("  (no spokes registered)\n");
    }
    for s in registry.spokes() {
        let peers: Vec<&str> = registry
            .spokes()
            .iter()
            .filter(|o| o.id != s.id && p.allows(&s.name, &o.name))
            .map(|o| o.name.as_str())
            .collect();
        let peers = if peers.is_empty() {
            "(only the hub)".to_owned()
        } else {
            peers.join(" ")
        };
        out.push_str(&format!("  {}: {peers}\n", s.name));
    }
    let unknown: Vec<&str> = p
        .spoke_names()
        .into_iter()
        .filter(|n| registry.get(n).is_none())
        .collect();
    if !unknown.is_empty() {
        out.push_str(&format!(
            "note: not registered (yet): {}; their rules apply once spokes with these names are added\n",
            unknown.join(" ")
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::registry::TunnelNet;
    use crate::store::dir::StateDir;
    use crate::store::dir::test_support::TempDir;
    use wireguard_control::Key;

    fn state(tag: &str) -> (TempDir, StateDir, Store) {
        let tmp = TempDir::new(tag);
        let st = StateDir::open(&tmp.path().join("state")).unwrap();
        let store = Store::dir(&st);
        let net = TunnelNet::default();
        store
            .registry()
            .update(&mut |r| {
                for (i, n) in ["s1", "s2", "s3"].iter().enumerate() {
                    r.add(n, Key([i as u8 + 1; 32]), &net)?;
                }
                Ok(())
            })
            .unwrap();
        (tmp, st, store)
    }

    #[test]
    fn show_allow_deny_reset() {
        let (_tmp, _, st) = state("polcmd");
        assert!(show(&st).unwrap().starts_with("no policy ("));
        let out = allow(&st, "s1", "s2").unwrap();
        assert!(
            out.contains("  s1: s2\n  s2: s1\n  s3: (only the hub)\n"),
            "{out}"
        );
        let out = deny(&st, "s1", "s2").unwrap();
        assert!(out.contains("allow:\n  (none)\ndeny:\n  (none)\n"), "{out}");
        assert!(out.contains("  s1: (only the hub)\n"), "{out}");
        group(&st, "ops", &["s3".into(), "s9".into()]).unwrap();
        let out = allow(&st, "@ops", "*").unwrap();
        assert!(
            out.contains("  s1: s3\n") && out.contains("  s3: s1 s2\n"),
            "{out}"
        );
        assert!(out.contains("note: not registered (yet): s9;"), "{out}");
        let e = format!("{:#}", allow(&st, "x y", "s1").unwrap_err());
        assert!(
            e.contains("\"x y\" is not a spoke name, @group or *"),
            "{e}"
        );
        let e = format!("{:#}", allow(&st, "@nope", "s1").unwrap_err());
        assert!(
            e.starts_with("policy not changed: group @nope is not defined"),
            "{e}"
        );
        assert!(reset(&st).unwrap().starts_with("removed "));
        assert!(reset(&st).unwrap().starts_with("no policy to remove"));
        // deny on no policy keeps everything else allowed.
        let out = deny(&st, "s1", "s3").unwrap();
        assert!(out.contains("  s1: s2\n  s2: s1 s3\n  s3: s2\n"), "{out}");
    }

    #[test]
    fn set_validates_before_storing() {
        let (tmp, dir, st) = state("polset");
        let file = tmp.path().join("p.json");
        std::fs::write(&file, "{\"allow\": [[\"s1\", \"@g\"]]}").unwrap();
        let e = format!("{:#}", set(&st, &file).unwrap_err());
        assert!(
            e.starts_with(&format!("{}:1:", file.display()))
                && e.contains("group @g, which is not defined"),
            "{e}"
        );
        assert!(!dir.path().join("policy.json").exists());
        std::fs::write(&file, "{\"allow\": [[\"s1\", \"s3\"]]}").unwrap();
        let out = set(&st, &file).unwrap();
        assert!(out.contains("  s1: s3\n  s2: (only the hub)\n"), "{out}");
        assert_eq!(
            std::fs::read_to_string(dir.path().join("policy.json")).unwrap(),
            "{\"allow\": [[\"s1\", \"s3\"]]}"
        );
        let e = format!("{:#}", set(&st, &tmp.path().join("missing")).unwrap_err());
        assert!(e.contains("cannot read the policy file"), "{e}");
    }
}
