//! Egress through the hub, the IO half: installs `core::egress`'s table
//! with `nft -f -` and turns forwarding on while it exists (IPv6 too
//! while exit users have IPv6 twins).
//!
//! By hand rather than through a netlink crate: nft's script format is
//! nftables' documented, stable interface and applies a whole table as one
//! transaction; the Rust nftables crates drive the same binary (JSON) or
//! expose raw netlink batches with far more code for the same effect.

use std::io::Write as _;
use std::process::{Command, Stdio};

use anyhow::{Context as _, bail};

use crate::core::egress::{Egress, table_name};

const IP_FORWARD: &str = "/proc/sys/net/ipv4/ip_forward";
/// With forwarding on, Linux ignores router advertisements on interfaces
/// with accept_ra=1 (README: set accept_ra=2 on a hub that uses SLAAC).
const IP6_FORWARD: &str = "/proc/sys/net/ipv6/conf/all/forwarding";

/// A forwarding switch, turned on while needed and put back as it was.
struct Forwarding {
    path: &'static str,
    /// Its value before this hub turned it on (`None`: not turned on).
    was: Option<String>,
}

impl Forwarding {
    fn on(&mut self) -> anyhow::Result<()> {
        if self.was.is_some() {
            return Ok(());
        }
        let path = self.path;
        let was = std::fs::read_to_string(path).with_context(|| format!("reading {path}"))?;
        if was.trim() != "1" {
            std::fs::write(path, "1").with_context(|| format!("turning forwarding on ({path})"))?;
            tracing::info!(%path, "egress: forwarding turned on (off again when nobody may exit)");
        }
        self.was = Some(was.trim().to_owned());
        Ok(())
    }

    fn restore(&mut self) {
        if let Some(was) = self.was.take()
            && was != "1"
            && let Err(e) = std::fs::write(self.path, &was)
        {
            tracing::warn!(error = %e, path = self.path, "egress: restoring forwarding");
        }
    }
}

/// relayhub's egress table for one hub WireGuard interface. Dropping it
/// deletes the table and puts IPv4 forwarding back as it was.
pub struct EgressTable {
    table: String,
    /// What is installed (`None`: no table).
    current: Option<Egress>,
    forward: Forwarding,
    forward6: Forwarding,
}

impl EgressTable {
    pub fn new(wg_iface: &str) -> Self {
        let t = Self {
            table: table_name(wg_iface),
            current: None,
            forward: Forwarding {
                path: IP_FORWARD,
                was: None,
            },
            forward6: Forwarding {
                path: IP6_FORWARD,
                was: None,
            },
        };
        // A table left by a hub that was killed: gone until asked for.
        let _ = nft(&format!("table inet {0}\ndelete table inet {0}\n", t.table));
        t
    }

    pub fn name(&self) -> &str {
        &self.table
    }

    /// How many spokes may exit now.
    pub fn users(&self) -> usize {
        self.current.as_ref().map_or(0, |e| e.users.len())
    }

    /// Make the table say `want` (nothing is done when it already does).
    pub fn apply(&mut self, want: Egress) -> anyhow::Result<()> {
        if self.current.as_ref() == Some(&want) || (self.current.is_none() && want.users.is_empty())
        {
            return Ok(());
        }
        match want.script(&self.table) {
            Some(script) => {
                // Table first, then forwarding: a packet forwarded in
                // between would leave unfiltered, and its flow would stay
                // un-masqueraded for good (NAT binds on a flow's first
                // packet). Found by gateway_e2e: a tunnel address seen on
                // the internet side, 1 run in 10.
                nft(&script)
                    .with_context(|| format!("installing nftables table {}", self.table))?;
                let users = want.users.len();
                let six = !want.users6.is_empty();
                self.current = Some(want);
                self.forward.on()?;
                if six {
                    self.forward6.on()?;
                } else {
                    self.forward6.restore();
                }
                tracing::info!(table = %self.table, exit_users = users, "egress: table installed");
            }
            None => {
                self.remove();
                tracing::info!(table = %self.table, "egress: nobody may exit; table removed");
            }
        }
        Ok(())
    }

    fn remove(&mut self) {
        // Forwarding off before the filter goes, for the same reason.
        self.forward.restore();
        self.forward6.restore();
        if self.current.take().is_some()
            && let Err(e) = nft(&format!("delete table inet {}\n", self.table))
        {
            tracing::warn!(table = %self.table, error = %e, "egress: removing the table");
        }
    }
}

impl Drop for EgressTable {
    fn drop(&mut self) {
        self.remove();
    }
}

/// Run `nft -f -` with `script`.
fn nft(script: &str) -> anyhow::Result<()> {
    let mut child = Command::new("nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("running nft (install nftables)")?;
    child
        .stdin
        .take()
        .context("nft stdin")?
        .write_all(script.as_bytes())?;
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!(
            "nft failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}
