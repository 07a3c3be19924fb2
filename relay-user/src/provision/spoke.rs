//! The `relayhub spoke ...` subcommands. Each returns the text to print on
//! stdout; the registry change (if any) is already stored when it returns.

use anyhow::{Context, bail};
use wireguard_control::Key;

pub use crate::core::registry::Family;
use crate::core::registry::{Registry, Spoke, TunnelNet, parse_key};
use crate::io::netinfo;
use crate::provision::render::{HubInfo, render_spoke};
use crate::store::Store;
use crate::store::dir::StateDir;

/// What every spoke subcommand needs.
#[derive(Debug, Clone, Copy)]
pub struct SpokeCtx<'a> {
    /// The hub's key and the endpoints last given (local to each hub).
    pub state: &'a StateDir,
    /// The registry and the policy (the state directory, or shared).
    pub store: &'a Store,
    pub net: &'a TunnelNet,
    /// `--endpoint HOST[:PORT]`; `None` guesses it with [`netinfo::default_endpoint`].
    pub endpoint: Option<&'a str>,
    /// The hub's UDP port, used when the endpoint has none.
    pub port: u16,
    /// PersistentKeepalive for every peer in printed configs (0 = off).
    pub keepalive: u16,
}

fn is_v6_endpoint(ep: &str) -> bool {
    netinfo::endpoint_ip(ep).is_some_and(|ip| ip.is_ipv6())
}

impl SpokeCtx<'_> {
    /// The hub's IPv6 endpoint: `--endpoint` (remembered), else the one
    /// given last, else the best IPv6 address of this host (with a note).
    /// An IPv4 `--endpoint` is an error with an explicit `--family ipv6`;
    /// for a spoke remembered as IPv6 it only updates the IPv4 endpoint.
    fn hub_endpoint6(&self, explicit: bool) -> anyhow::Result<(String, Option<String>)> {
        if let Some(given) = self.endpoint {
            let ep = netinfo::normalize_endpoint(given, self.port)?;
            if !netinfo::endpoint_ip(&ep).is_some_and(|ip| ip.is_ipv4()) {
                self.store.save_endpoint(true, &ep)?;
                return Ok((ep, None));
            }
            if explicit {
                bail!(
                    "--family ipv6 with the IPv4 --endpoint {ep}: give the hub's IPv6 address or name"
                );
            }
            self.store.save_endpoint(false, &ep)?;
        }
        if let Some(saved) = self.store.saved_endpoint(true)? {
            return Ok((saved, None));
        }
        if let Some(saved) = self.store.saved_endpoint(false)?
            && is_v6_endpoint(&saved)
        {
            return Ok((saved, None));
        }
        let ep = netinfo::default_endpoint6(self.port)?;
        let note = format!(
            "# Endpoint {ep} was guessed from this hub's IPv6 addresses; if spokes reach\n\
             # the hub by another address or name, rerun with --endpoint [IPV6]:PORT.\n"
        );
        Ok((ep, Some(note)))
    }

    /// The hub as spokes of `family` see it, plus a note when the endpoint
    /// was guessed.
    fn hub_info_for(
        &self,
        family: Option<Family>,
        explicit: bool,
    ) -> anyhow::Result<(HubInfo, Option<String>)> {
        if family != Some(Family::Ipv6) {
            return self.hub_info();
        }
        let (endpoint, note) = self.hub_endpoint6(explicit)?;
        self.hub_at(endpoint, note)
    }

    /// The hub as spokes dialling `endpoint` see it.
    fn hub_at(
        &self,
        endpoint: String,
        note: Option<String>,
    ) -> anyhow::Result<(HubInfo, Option<String>)> {
        let public_key = self.state.hub_public_key()?;
        // On a shared store every hub must be the same WireGuard peer:
        // a file naming another key would fail over to a hub it cannot reach.
        self.store.check_shared(
            crate::store::backend::Shared::HubPublicKey,
            &public_key.to_base64(),
        )?;
        Ok((
            HubInfo {
                public_key,
                endpoint,
                address: self.net.hub,
                prefix: self.net.prefix,
                net6: self.net.v6,
            },
            note,
        ))
    }

    /// The hub as spokes see it, plus a note when the endpoint was guessed.
    fn hub_info(&self) -> anyhow::Result<(HubInfo, Option<String>)> {
        let (endpoint, note) = match self.endpoint {
            Some(given) => {
                let ep = netinfo::normalize_endpoint(given, self.port)?;
                self.store.save_endpoint(false, &ep)?;
                if is_v6_endpoint(&ep) {
                    self.store.save_endpoint(true, &ep)?;
                }
                (ep, None)
            }
            None if let Some(saved) = self.store.saved_endpoint(false)? => (saved, None),
            None => {
                let ep = netinfo::default_endpoint(self.port)?;
                let note = format!(
                    "# Endpoint {ep} was guessed from this hub's default-route interface; if spokes\n\
                     # reach the hub through NAT or by name, rerun with --endpoint HOST[:PORT].\n"
                );
                (ep, Some(note))
            }
        };
        self.hub_at(endpoint, note)
    }

    fn render(
        &self,
        registry: &Registry,
        name: &str,
        private_key: Option<&Key>,
        family: Option<Family>,
        explicit: bool,
    ) -> anyhow::Result<String> {
        let spoke = registry
            .get(name)
            .with_context(|| format!("spoke {name:?} vanished from the registry"))?;
        // In a mesh every peer is reached through the spoke's home hub.
        let (hub, note) = match spoke.home.as_deref().and_then(|h| registry.hub(h)) {
            Some(home) => self.hub_at(home.endpoint.to_string(), None)?,
            None => self.hub_info_for(family, explicit)?,
        };
        // Only the peers the hub's policy lets this spoke reach.
        let policy = self.store.policy().load()?;
        let peers: Vec<&Spoke> = registry
            .spokes()
            .iter()
            .filter(|s| s.id != spoke.id)
            .filter(|s| {
                policy
                    .as_ref()
                    .is_none_or(|p| p.allows(&spoke.name, &s.name))
            })
            .collect();
        let mut text = note.unwrap_or_default();
        text.push_str(&render_spoke(
            spoke,
            private_key,
            &hub,
            &peers,
            self.keepalive,
        ));
        Ok(text)
    }
}

/// `relayhub spoke add NAME [--pubkey KEY]`: registers the spoke and prints
/// its wg-quick file. Without `pubkey` a key pair is generated; the private
/// key is printed once and never stored.
pub fn add(ctx: &SpokeCtx, name: &str, pubkey: Option<&str>) -> anyhow::Result<String> {
    add_in(ctx, name, pubkey, None)
}

/// [`add`] with `--family`: `Some(Ipv6)` prints (and remembers for later
/// `spoke config` calls) the hub's IPv6 endpoint.
pub fn add_in(
    ctx: &SpokeCtx,
    name: &str,
    pubkey: Option<&str>,
    family: Option<Family>,
) -> anyhow::Result<String> {
    add_homed(ctx, name, pubkey, family, None)
}

/// [`add_in`] with `--hub`: the spoke's home hub in a mesh (required once
/// the store has hubs; its file then names that hub's endpoint).
pub fn add_homed(
    ctx: &SpokeCtx,
    name: &str,
    pubkey: Option<&str>,
    family: Option<Family>,
    home: Option<&str>,
) -> anyhow::Result<String> {
    add_with(ctx, name, pubkey, family, home, false)
}

/// [`add_homed`] with `--exit`: the file routes internet traffic to the
/// hub (which forwards it if the policy lets the spoke exit).
pub fn add_with(
    ctx: &SpokeCtx,
    name: &str,
    pubkey: Option<&str>,
    family: Option<Family>,
    home: Option<&str>,
    exit: bool,
) -> anyhow::Result<String> {
    let (public_key, private_key) = match pubkey {
        Some(text) => {
            let Some(k) = parse_key(text) else {
                bail!(
                    "--pubkey {text:?} is not a WireGuard public key (44 base64 characters, as `wg pubkey` prints)"
                );
            };
            (k, None)
        }
        None => {
            let private = Key::generate_private();
            (private.get_public(), Some(private))
        }
    };
    // Everything that can fail without changing the registry comes first, so
    // a failed add leaves nothing behind.
    ctx.hub_info_for(family, true)?;
    ctx.store.policy().load()?;
    let hub_public = ctx.state.hub_public_key()?;
    let registry = ctx
        .store
        .registry()
        .update(&mut |r| {
            if home.is_none() && !r.hubs().is_empty() {
                let names: Vec<&str> = r.hubs().iter().map(|h| h.name.as_str()).collect();
                return Err(crate::core::registry::RegistryError::Other(format!(
                    "the store has a hub mesh ({}): say which hub the spoke dials with --hub",
                    names.join(", ")
                )));
            }
            r.add_spoke(name, public_key.clone(), ctx.net, Some(&hub_public))?;
            if let Some(h) = home {
                r.set_home(name, h)?;
            }
            r.set_exit(name, exit)?;
            r.set_family(name, family.unwrap_or_default())
        })
        .with_context(|| format!("cannot add spoke {name:?}"))?;
    let mut out = exit_note(ctx, name, exit)?;
    out.push_str(&ctx.render(&registry, name, private_key.as_ref(), family, true)?);
    Ok(out)
}

/// `relayhub spoke set NAME --exit|--no-exit`: change how its file routes
/// internet traffic; prints the new file (no private key).
pub fn set_exit(ctx: &SpokeCtx, name: &str, exit: bool) -> anyhow::Result<String> {
    let registry = ctx
        .store
        .registry()
        .update(&mut |r| r.set_exit(name, exit))
        .with_context(|| format!("cannot change spoke {name:?}"))?;
    let mut out = format!(
        "# spoke {name}: internet traffic {} now; install this file on it.\n",
        if exit {
            "goes through the hub"
        } else {
            "leaves directly"
        }
    );
    out.push_str(&exit_note(ctx, name, exit)?);
    out.push_str(&ctx.render(&registry, name, None, None, false)?);
    Ok(out)
}

/// A comment line when an exit spoke may not exit yet (the policy
/// decides; the file alone only sends the traffic to the hub).
fn exit_note(ctx: &SpokeCtx, name: &str, exit: bool) -> anyhow::Result<String> {
    let allowed = ctx.store.policy().load()?.is_some_and(|p| p.may_exit(name));
    Ok(if exit && !allowed {
        format!(
            "# note: the policy does not let {name} exit through the hub yet, so the hub drops its internet\n\
             # traffic: `relayhub policy exit allow {name}` (or a group it is in).\n"
        )
    } else {
        String::new()
    })
}

/// `relayhub spoke config NAME`: the current wg-quick file, without a private key.
pub fn config(ctx: &SpokeCtx, name: &str) -> anyhow::Result<String> {
    config_in(ctx, name, None)
}

/// [`config`] with `--family`; without it, the family the spoke was added
/// with.
pub fn config_in(ctx: &SpokeCtx, name: &str, family: Option<Family>) -> anyhow::Result<String> {
    let registry = load(ctx)?;
    let Some(spoke) = registry.get(name) else {
        return Err(crate::core::registry::RegistryError::NotFound(name.to_owned()).into());
    };
    let explicit = family.is_some();
    let family = match family {
        Some(f) => Some(f),
        None if spoke.family == Family::Ipv6 => Some(Family::Ipv6),
        None => None,
    };
    ctx.render(&registry, name, None, family, explicit)
}

/// `relayhub spoke move NAME --hub HUB`: home the spoke on another mesh
/// hub; prints its new file (no private key), whose Endpoint lines all
/// name that hub.
pub fn move_to(ctx: &SpokeCtx, name: &str, hub: &str) -> anyhow::Result<String> {
    let registry = ctx
        .store
        .registry()
        .update(&mut |r| r.set_home(name, hub))
        .with_context(|| format!("cannot move spoke {name:?}"))?;
    let mut out = format!(
        "# spoke {name} is homed on hub {hub} now: the hubs relay for it there within a second;\n\
         # install this file on it (its peers' Endpoint is the new hub).\n"
    );
    out.push_str(&ctx.render(&registry, name, None, None, false)?);
    Ok(out)
}

/// `relayhub spoke list`: a table of the registered spokes, by id.
pub fn list(ctx: &SpokeCtx) -> anyhow::Result<String> {
    let registry = load(ctx)?;
    if registry.is_empty() {
        return Ok("no spokes registered; add one with `relayhub spoke add NAME`\n".to_owned());
    }
    if !registry.hubs().is_empty() {
        let rows: Vec<[String; 5]> = registry
            .spokes()
            .iter()
            .map(|s| {
                [
                    s.name.clone(),
                    s.address.to_string(),
                    s.public_key.to_base64(),
                    s.id.to_string(),
                    s.home.clone().unwrap_or_else(|| "-".into()),
                ]
            })
            .collect();
        return Ok(table(["NAME", "ADDRESS", "PUBLIC KEY", "ID", "HUB"], &rows));
    }
    let rows: Vec<[String; 4]> = registry
        .spokes()
        .iter()
        .map(|s| {
            [
                s.name.clone(),
                s.address.to_string(),
                s.public_key.to_base64(),
                s.id.to_string(),
            ]
        })
        .collect();
    Ok(table(["NAME", "ADDRESS", "PUBLIC KEY", "ID"], &rows))
}

/// `relayhub spoke remove NAME`.
pub fn remove(ctx: &SpokeCtx, name: &str) -> anyhow::Result<String> {
    let mut removed = None;
    let registry = ctx
        .store
        .registry()
        .update(&mut |r| {
            removed = Some(r.remove(name)?);
            Ok(())
        })
        .with_context(|| format!("cannot remove spoke {name:?}"))?;
    let s = removed.context("spoke removal did not happen")?;
    let mut out = format!(
        "removed spoke {} (address {}, id {})\n",
        s.name, s.address, s.id
    );
    if !registry.is_empty() {
        out.push_str(&format!(
            "the running hub stops relaying for it within a second and drops it from the peer lists \
             it serves; the other {} spoke(s) forget it on their next `relayhub-sync` (contrib/spoke, \
             every 30 s with its timer)\n",
            registry.len()
        ));
    }
    Ok(out)
}

fn load(ctx: &SpokeCtx) -> anyhow::Result<Registry> {
    let registry = ctx.store.registry().load()?;
    registry.check_net(ctx.net)?;
    Ok(registry)
}

pub fn table<const N: usize>(header: [&str; N], rows: &[[String; N]]) -> String {
    let mut widths = header.map(str::len);
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.len());
        }
    }
    let mut out = String::new();
    let mut line = |cells: [&str; N]| {
        let mut l = String::new();
        for (i, (cell, w)) in cells.iter().zip(widths).enumerate() {
            if i + 1 == N {
                l.push_str(cell);
            } else {
                l.push_str(&format!("{cell:<w$}  "));
            }
        }
        out.push_str(l.trim_end());
        out.push('\n');
    };
    line(header);
    for row in rows {
        line(row.each_ref().map(String::as_str));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::dir::test_support::TempDir;
    use std::path::Path;

    struct Fixture {
        _tmp: TempDir,
        state: StateDir,
        store: Store,
        net: TunnelNet,
    }

    impl Fixture {
        fn new(tag: &str) -> Self {
            let tmp = TempDir::new(tag);
            let state = StateDir::open(&tmp.path().join("state")).unwrap();
            Fixture {
                _tmp: tmp,
                store: Store::dir(&state),
                state,
                net: TunnelNet::default(),
            }
        }

        fn ctx(&self) -> SpokeCtx<'_> {
            SpokeCtx {
                state: &self.state,
                store: &self.store,
                net: &self.net,
                endpoint: Some("hub.example.net"),
                port: 51820,
                keepalive: 25,
            }
        }
    }

    fn value<'a>(text: &'a str, key: &str) -> Vec<&'a str> {
        text.lines()
            .filter_map(|l| l.strip_prefix(&format!("{key} = ")))
            .collect()
    }

    #[test]
    fn add_generates_key_and_prints_it_once() {
        let f = Fixture::new("cmd-add");
        let out = add(&f.ctx(), "alpha", None).unwrap();
        let private = value(&out, "PrivateKey");
        assert_eq!(private.len(), 1, "{out}");
        let private = parse_key(private[0]).unwrap();
        let reg = f.store.registry().load().unwrap();
        let spoke = reg.get("alpha").unwrap();
        assert_eq!(spoke.public_key, private.get_public());
        assert_eq!(value(&out, "Address"), ["10.88.0.2/16"]);
        assert_eq!(value(&out, "Endpoint"), ["hub.example.net:51820"]);
        assert_eq!(
            value(&out, "PublicKey"),
            [f.state.hub_public_key().unwrap().to_base64()]
        );
        assert_eq!(value(&out, "AllowedIPs"), ["10.88.0.1/32"]);
        assert_eq!(value(&out, "PersistentKeepalive"), ["25"]);
    }

    /// Neither the base64 text nor the raw bytes of any spoke private key
    /// may appear in any file of the state directory.
    #[test]
    fn no_private_key_is_written_to_the_state_dir() {
        let f = Fixture::new("cmd-nopriv");
        let mut secrets = Vec::new();
        for name in ["a", "b", "c"] {
            let out = add(&f.ctx(), name, None).unwrap();
            let k = parse_key(value(&out, "PrivateKey")[0]).unwrap();
            secrets.push(k);
        }
        remove(&f.ctx(), "b").unwrap();
        let mut files = 0;
        let mut stack = vec![f.state.path().to_owned()];
        while let Some(dir) = stack.pop() {
            for entry in std::fs::read_dir(&dir).unwrap() {
                let p = entry.unwrap().path();
                if p.is_dir() {
                    stack.push(p);
                    continue;
                }
                files += 1;
                let bytes = std::fs::read(&p).unwrap();
                for k in &secrets {
                    let b64 = k.to_base64();
                    assert!(
                        !bytes.windows(b64.len()).any(|w| w == b64.as_bytes()),
                        "{}",
                        p.display()
                    );
                    assert!(
                        !bytes.windows(32).any(|w| w == k.as_bytes()),
                        "{}",
                        p.display()
                    );
                }
            }
        }
        assert!(files >= 2, "hub.key and spokes.json were checked");
    }

    #[test]
    fn add_with_pubkey_then_config_is_consistent() {
        let f = Fixture::new("cmd-pubkey");
        let own = Key::generate_private().get_public();
        let out = add(&f.ctx(), "mine", Some(&own.to_base64())).unwrap();
        assert!(value(&out, "PrivateKey").is_empty());
        assert!(out.contains(&format!(
            "# PrivateKey = <fill in this spoke's private key, the one whose public key is {}>",
            own.to_base64()
        )));
        assert_eq!(config(&f.ctx(), "mine").unwrap(), out);

        // With a generated key, config is the add output minus the private key line.
        let out2 = add(&f.ctx(), "gen", None).unwrap();
        let cfg2 = config(&f.ctx(), "gen").unwrap();
        let strip = |s: &str| {
            s.lines()
                .filter(|l| !l.contains("PrivateKey"))
                .collect::<Vec<_>>()
                .join("\n")
        };
        assert_eq!(strip(&out2), strip(&cfg2));
        assert!(value(&cfg2, "PrivateKey").is_empty());

        // The earlier spoke's config now lists the new one, and vice versa.
        let cfg1 = config(&f.ctx(), "mine").unwrap();
        assert!(cfg1.contains("# gen\n"));
        assert!(cfg2.contains("# mine\n"));
        assert_eq!(value(&cfg1, "AllowedIPs"), ["10.88.0.1/32", "10.88.0.3/32"]);
        assert_eq!(value(&cfg2, "AllowedIPs"), ["10.88.0.1/32", "10.88.0.2/32"]);
        assert!(
            value(&cfg1, "Endpoint")
                .iter()
                .all(|e| *e == "hub.example.net:51820")
        );
    }

    #[test]
    fn add_rejects_bad_input_and_stores_nothing() {
        let f = Fixture::new("cmd-bad");
        let ctx = f.ctx();
        for bad in [
            "",
            "short",
            "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAB=",
            "!!!",
        ] {
            let e = add(&ctx, "x", Some(bad)).unwrap_err().to_string();
            assert!(e.contains("is not a WireGuard public key"), "{e}");
        }
        let hub = f.state.hub_public_key().unwrap().to_base64();
        let e = format!("{:#}", add(&ctx, "x", Some(&hub)).unwrap_err());
        assert!(e.contains("hub's own key"), "{e}");
        let e = format!("{:#}", add(&ctx, "bad name", None).unwrap_err());
        assert!(e.contains("invalid spoke name"), "{e}");
        let bad_ep = SpokeCtx {
            endpoint: Some("a b"),
            ..ctx
        };
        assert!(add(&bad_ep, "x", None).is_err());
        assert!(f.store.registry().load().unwrap().is_empty());
        add(&ctx, "x", None).unwrap();
        let e = format!("{:#}", add(&ctx, "x", None).unwrap_err());
        assert!(e.contains("already exists"), "{e}");
        let k = f
            .store
            .registry()
            .load()
            .unwrap()
            .get("x")
            .unwrap()
            .public_key
            .to_base64();
        let e = format!("{:#}", add(&ctx, "y", Some(&k)).unwrap_err());
        assert!(
            e.contains("spoke \"x\" already uses this public key"),
            "{e}"
        );
        assert_eq!(f.store.registry().load().unwrap().len(), 1);
    }

    #[test]
    fn config_lists_only_the_peers_the_policy_allows() {
        let f = Fixture::new("cmd-policy");
        let ctx = f.ctx();
        for n in ["a", "b", "c"] {
            add(&ctx, n, None).unwrap();
        }
        let policy = f.state.path().join("policy.json");
        std::fs::write(&policy, r#"{"allow": [["a", "b"]]}"#).unwrap();
        let peers = |n: &str| value(&config(&ctx, n).unwrap(), "AllowedIPs").join(" ");
        assert_eq!(peers("a"), "10.88.0.1/32 10.88.0.3/32");
        assert_eq!(peers("b"), "10.88.0.1/32 10.88.0.2/32");
        assert_eq!(peers("c"), "10.88.0.1/32");
        // A new spoke is reachable by nobody until a rule names it.
        assert_eq!(
            value(&add(&ctx, "d", None).unwrap(), "AllowedIPs"),
            ["10.88.0.1/32"]
        );
        // An invalid policy fails the command (and stores nothing) rather
        // than printing a wrong peer list.
        std::fs::write(&policy, "{\"allow\": [[\"a\"]]}").unwrap();
        let e = format!("{:#}", config(&ctx, "a").unwrap_err());
        assert!(e.contains("policy.json:1:"), "{e}");
        assert!(add(&ctx, "e", None).is_err());
        assert!(f.store.registry().load().unwrap().get("e").is_none());
    }

    #[test]
    fn list_and_remove() {
        let f = Fixture::new("cmd-list");
        let ctx = f.ctx();
        assert!(list(&ctx).unwrap().starts_with("no spokes registered"));
        let k1 = Key([1; 32]).to_base64();
        let k2 = Key([2; 32]).to_base64();
        add(&ctx, "alpha", Some(&k1)).unwrap();
        add(&ctx, "b", Some(&k2)).unwrap();
        let expected = format!(
            "NAME   ADDRESS    PUBLIC KEY                                    ID\n\
             alpha  10.88.0.2  {k1}  1\n\
             b      10.88.0.3  {k2}  2\n"
        );
        assert_eq!(list(&ctx).unwrap(), expected);
        let out = remove(&ctx, "alpha").unwrap();
        assert!(
            out.starts_with("removed spoke alpha (address 10.88.0.2, id 1)\n"),
            "{out}"
        );
        let e = format!("{:#}", remove(&ctx, "alpha").unwrap_err());
        assert!(e.contains("no spoke named \"alpha\""), "{e}");
        let e = format!("{:#}", config(&ctx, "alpha").unwrap_err());
        assert!(e.contains("no spoke named \"alpha\""), "{e}");
        assert_eq!(
            remove(&ctx, "b").unwrap(),
            "removed spoke b (address 10.88.0.3, id 2)\n"
        );
    }

    #[test]
    fn changed_net_is_reported() {
        let f = Fixture::new("cmd-net");
        add(&f.ctx(), "a", None).unwrap();
        let other: TunnelNet = "10.99.0.0/24".parse().unwrap();
        let ctx = SpokeCtx {
            net: &other,
            ..f.ctx()
        };
        let e = format!("{:#}", list(&ctx).unwrap_err());
        assert!(
            e.contains("not a usable host of the tunnel network 10.99.0.0/24"),
            "{e}"
        );
        assert!(add(&ctx, "b", None).is_err());
        assert!(config(&ctx, "a").is_err());
    }

    #[test]
    fn corrupt_registry_fails_every_command() {
        let f = Fixture::new("cmd-corrupt");
        let path = f.state.path().join("spokes.json");
        std::fs::write(&path, "{\"version\": 1, \"spokes\": [}").unwrap();
        let ctx = f.ctx();
        for e in [
            list(&ctx).unwrap_err(),
            add(&ctx, "a", None).unwrap_err(),
            config(&ctx, "a").unwrap_err(),
        ] {
            let msg = format!("{e:#}");
            assert!(
                msg.contains(&path.display().to_string()) && msg.contains("line 1 column"),
                "{msg}"
            );
        }
        assert!(Path::new(&path).exists());
    }

    #[test]
    fn family_ipv6_uses_and_remembers_the_ipv6_endpoint() {
        let f = Fixture::new("cmd-fam6");
        // An IPv4 endpoint first (remembered for IPv4 spokes).
        let v4 = SpokeCtx {
            endpoint: Some("192.0.2.1"),
            ..f.ctx()
        };
        let out = add(&v4, "four", None).unwrap();
        assert_eq!(value(&out, "Endpoint"), ["192.0.2.1:51820"]);
        let v6 = SpokeCtx {
            endpoint: Some("2001:db8::1"),
            ..f.ctx()
        };
        let out = add_in(&v6, "six", None, Some(Family::Ipv6)).unwrap();
        assert!(
            value(&out, "Endpoint")
                .iter()
                .all(|e| *e == "[2001:db8::1]:51820"),
            "{out}"
        );
        let bare = SpokeCtx {
            endpoint: None,
            ..f.ctx()
        };
        // Later calls without flags: each spoke keeps its family.
        let six = config(&bare, "six").unwrap();
        assert_eq!(
            value(&six, "Endpoint"),
            ["[2001:db8::1]:51820", "[2001:db8::1]:51820"]
        );
        let four = config(&bare, "four").unwrap();
        assert_eq!(
            value(&four, "Endpoint"),
            ["192.0.2.1:51820", "192.0.2.1:51820"]
        );
        // --family overrides per call; a new IPv6 spoke reuses the saved one.
        // An IPv4 --endpoint on a remembered IPv6 spoke keeps its IPv6 one.
        let six_v4 = config(&v4, "six").unwrap();
        assert!(
            six_v4.contains("Endpoint = [2001:db8::1]:51820"),
            "{six_v4}"
        );
        let four6 = config_in(&bare, "four", Some(Family::Ipv6)).unwrap();
        assert!(four6.contains("Endpoint = [2001:db8::1]:51820"));
        let out = add_in(&bare, "six2", None, Some(Family::Ipv6)).unwrap();
        assert!(out.contains("Endpoint = [2001:db8::1]:51820"), "{out}");
        // An IPv4 --endpoint cannot be an IPv6 spoke's endpoint.
        let e = add_in(&v4, "bad", None, Some(Family::Ipv6)).unwrap_err();
        assert!(e.to_string().contains("IPv6"), "{e}");
        assert!(f.store.registry().load().unwrap().get("bad").is_none());
        // Removing and re-adding without --family forgets the family.
        remove(&bare, "six").unwrap();
        let again = add(&bare, "six", None).unwrap();
        assert!(again.contains("Endpoint = 192.0.2.1:51820"), "{again}");
    }

    #[test]
    fn ipv6_endpoint_and_guess_note() {
        let f = Fixture::new("cmd-v6");
        let ctx = SpokeCtx {
            endpoint: Some("2001:db8::7"),
            port: 4500,
            ..f.ctx()
        };
        let out = add(&ctx, "a", None).unwrap();
        assert_eq!(value(&out, "Endpoint"), ["[2001:db8::7]:4500"]);
        // Later calls without --endpoint reuse the one given last.
        let again = SpokeCtx {
            endpoint: None,
            ..f.ctx()
        };
        assert_eq!(
            value(&config(&again, "a").unwrap(), "Endpoint"),
            ["[2001:db8::7]:4500"]
        );
        // With none ever given, the address is guessed (if this sandbox has
        // a default route) and the file says so.
        let g = Fixture::new("cmd-guess");
        add(
            &SpokeCtx {
                endpoint: Some("192.0.2.9"),
                ..g.ctx()
            },
            "b",
            None,
        )
        .unwrap();
        std::fs::remove_file(g.ctx().state.path().join(crate::store::dir::ENDPOINT_FILE)).unwrap();
        let guess = SpokeCtx {
            endpoint: None,
            ..g.ctx()
        };
        match config(&guess, "b") {
            Ok(out) => assert!(out.starts_with("# Endpoint ") && out.contains("--endpoint")),
            Err(e) => assert!(e.to_string().contains("--endpoint"), "{e}"),
        }
    }
}
