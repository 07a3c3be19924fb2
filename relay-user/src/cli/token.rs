//! `relayhub token ...`: join tokens (see `core::join` and `hub::enroll`).

use std::time::{Duration, SystemTime};

use anyhow::Context as _;

use crate::core::join::{NewToken, TokenRecord};
use crate::core::registry::validate_name;
use crate::io::netinfo;
use crate::provision::spoke::SpokeCtx;
use crate::store::Store;
use crate::store::backend::Shared;
use crate::store::token::TokenStore as _;

/// `--expires`: a duration, or never.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Expiry(pub Option<Duration>);

pub fn parse_expiry(s: &str) -> Result<Expiry, String> {
    if s.eq_ignore_ascii_case("never") {
        return Ok(Expiry(None));
    }
    match humantime::parse_duration(s) {
        Ok(d) if d >= Duration::from_secs(1) => Ok(Expiry(Some(d))),
        Ok(_) => Err("an expiry of less than a second admits nobody".into()),
        Err(e) => Err(format!("{s:?}: {e} (examples: 30m, 24h, 7d, never)")),
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn when(unix: u64) -> String {
    humantime::format_rfc3339_seconds(SystemTime::UNIX_EPOCH + Duration::from_secs(unix))
        .to_string()
}

/// The enrollment URL's authority: the host spokes dial (from the hub's
/// endpoint), with the enrollment port.
fn enroll_authority(ctx: &SpokeCtx, enroll_port: u16) -> anyhow::Result<(String, Option<String>)> {
    let (endpoint, note) = match ctx.endpoint {
        Some(given) => {
            let ep = netinfo::normalize_endpoint(given, ctx.port)?;
            // Remembered for the files joined nodes get; an IPv6 address
            // only as the IPv6 endpoint (IPv4 nodes keep theirs).
            if netinfo::endpoint_ip(&ep).is_some_and(|ip| ip.is_ipv6()) {
                ctx.store.save_endpoint(true, &ep)?;
            } else {
                ctx.store.save_endpoint(false, &ep)?;
            }
            (ep, None)
        }
        None => match ctx.store.saved_endpoint(false)? {
            Some(saved) => (saved, None),
            None => {
                let ep = netinfo::default_endpoint(ctx.port)?;
                let note = format!(
                    "note: the hub's address {ep} was guessed from the default-route interface; if nodes \
                     reach the hub through NAT or by name, rerun with --endpoint HOST"
                );
                (ep, Some(note))
            }
        },
    };
    // HOST:PORT or [V6]:PORT: keep the host, swap the port.
    let host = endpoint
        .rsplit_once(':')
        .map(|(h, _)| h)
        .filter(|h| !h.is_empty())
        .with_context(|| format!("hub endpoint {endpoint:?} has no host"))?;
    Ok((format!("{host}:{enroll_port}"), note))
}

/// `relayhub token create`: stores the token's hash and prints the line a
/// node runs to join (stdout), with what it allows (stderr).
pub fn create(
    ctx: &SpokeCtx,
    enroll_port: u16,
    uses: u32,
    expires: Expiry,
    group: Option<&str>,
) -> anyhow::Result<String> {
    anyhow::ensure!(
        enroll_port != 0,
        "the enrollment endpoint is off (--enroll-port 0): nodes could not use a token"
    );
    if let Some(g) = group {
        validate_name(g).map_err(|e| anyhow::anyhow!("--group: {e}"))?;
    }
    let (authority, note) = enroll_authority(ctx, enroll_port)?;
    let pin = ctx.state.enroll_identity()?.pin;
    // The line must work on whichever hub of a shared store answers it.
    ctx.store.check_shared(Shared::EnrollPin, &pin)?;
    let new = NewToken {
        max_uses: uses,
        expires_in: expires.0,
        group: group.map(str::to_owned),
    };
    let now = unix_now();
    let token = ctx.store.tokens().update(|t| {
        t.create(&new, now, rand::random())
            .map_err(|e| anyhow::anyhow!(e))
    })?;
    let expiry = match expires.0 {
        Some(d) => format!("expires {}", when(now + d.as_secs())),
        None => "never expires".to_owned(),
    };
    let group = group
        .map(|g| format!(", joins group {g}"))
        .unwrap_or_default();
    if let Some(n) = note {
        eprintln!("{n}");
    }
    eprintln!(
        "join token for {uses} node(s), {expiry}{group}; on a node with curl and wg-quick, as root:"
    );
    Ok(format!(
        "curl -fsS --proto =https --pinnedpubkey '{pin}' -k https://{authority}/v1/join.sh | sh -s -- {token}\n"
    ))
}

fn row(t: &TokenRecord, now: u64) -> [String; 6] {
    [
        t.id.clone(),
        t.state(now).to_owned(),
        format!("{}/{}", t.uses, t.max_uses),
        t.expires_unix.map_or("never".to_owned(), when),
        t.group.clone().unwrap_or_else(|| "-".into()),
        if t.joined.is_empty() {
            "-".into()
        } else {
            t.joined.join(",")
        },
    ]
}

/// `relayhub token list`.
pub fn list(store: &Store) -> anyhow::Result<String> {
    let tokens = store.tokens().load()?;
    if tokens.tokens.is_empty() {
        return Ok("no join tokens; make one with `relayhub token create`\n".into());
    }
    let now = unix_now();
    let rows: Vec<[String; 6]> = tokens.tokens.iter().map(|t| row(t, now)).collect();
    Ok(crate::provision::spoke::table(
        ["ID", "STATE", "USES", "EXPIRES", "GROUP", "JOINED"],
        &rows,
    ))
}

/// `relayhub token revoke ID`.
pub fn revoke(store: &Store, id: &str) -> anyhow::Result<String> {
    let found = store
        .tokens()
        .update(|t| Ok::<_, anyhow::Error>(t.revoke(id)))?;
    anyhow::ensure!(
        found,
        "no join token {id:?}; `relayhub token list` shows the ids"
    );
    Ok(format!(
        "revoked join token {}; nodes that joined with it stay registered (remove them with `relayhub spoke remove NAME`)\n",
        id.split('.').nth(1).unwrap_or(id)
    ))
}

/// `relayhub token prune`.
pub fn prune(store: &Store) -> anyhow::Result<String> {
    let now = unix_now();
    let n = store
        .tokens()
        .update(|t| Ok::<_, anyhow::Error>(t.prune(now)))?;
    Ok(format!(
        "removed {n} join token(s) that admit nobody any more\n"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::registry::TunnelNet;
    use crate::store::dir::test_support::TempDir;

    #[test]
    fn expiry_forms() {
        assert_eq!(parse_expiry("never").unwrap(), Expiry(None));
        assert_eq!(
            parse_expiry("24h").unwrap(),
            Expiry(Some(Duration::from_secs(86400)))
        );
        assert_eq!(
            parse_expiry("7d").unwrap(),
            Expiry(Some(Duration::from_secs(7 * 86400)))
        );
        assert!(parse_expiry("0s").is_err());
        assert!(parse_expiry("soon").unwrap_err().contains("examples"));
    }

    #[test]
    fn create_list_revoke() {
        let tmp = TempDir::new("token-cli");
        let dir = crate::store::dir::StateDir::open(&tmp.path().join("state")).unwrap();
        let store = Store::dir(&dir);
        let state = &store;
        let net = TunnelNet::default();
        let ctx = SpokeCtx {
            state: &dir,
            store: &store,
            net: &net,
            endpoint: Some("hub.example.net"),
            port: 51820,
            keepalive: 25,
        };
        let line = create(&ctx, 51821, 2, Expiry(None), Some("web")).unwrap();
        assert!(
            line.starts_with("curl -fsS --proto =https --pinnedpubkey 'sha256//"),
            "{line}"
        );
        assert!(
            line.contains(" -k https://hub.example.net:51821/v1/join.sh | sh -s -- rhj1."),
            "{line}"
        );
        // The pin is stable: the identity is generated once.
        let again = create(&ctx, 51821, 1, Expiry(None), None).unwrap();
        let pin = |l: &str| l.split('\'').nth(1).unwrap().to_owned();
        assert_eq!(pin(&line), pin(&again));
        let table = list(state).unwrap();
        assert!(table.contains("active  0/2"), "{table}");
        assert!(table.contains("web"), "{table}");
        let token = line.trim().rsplit(' ').next().unwrap();
        let id = token.split('.').nth(1).unwrap();
        assert!(revoke(state, token).unwrap().contains(id));
        assert!(list(state).unwrap().contains("revoked"));
        assert!(revoke(state, "ffffffff").is_err());
        assert!(prune(state).unwrap().starts_with("removed 1 "));
        assert!(create(&ctx, 0, 1, Expiry(None), None).is_err());
        assert!(create(&ctx, 51821, 1, Expiry(None), Some("no spaces")).is_err());
        assert!(create(&ctx, 51821, 0, Expiry(None), None).is_err());
    }
}
