//! Egress through the hub, the IO half: installs `core::egress`'s table
//! with `nft -f -` and turns IPv4 forwarding on while it exists.
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

/// relayhub's egress table for one hub WireGuard interface. Dropping it
/// deletes the table and puts IPv4 forwarding back as it was.
pub struct EgressTable {
    table: String,
    /// What is installed (`None`: no table).
    current: Option<Egress>,
    /// `ip_forward` before this hub turned it on.
    forward_was: Option<String>,
}

impl EgressTable {
    pub fn new(wg_iface: &str) -> Self {
        let t = Self {
            table: table_name(wg_iface),
            current: None,
            forward_was: None,
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
                self.current = Some(want);
                self.forwarding_on()?;
                tracing::info!(table = %self.table, exit_users = users, "egress: table installed");
            }
            None => {
                self.remove();
                tracing::info!(table = %self.table, "egress: nobody may exit; table removed");
            }
        }
        Ok(())
    }

    fn forwarding_on(&mut self) -> anyhow::Result<()> {
        if self.forward_was.is_some() {
            return Ok(());
        }
        let was =
            std::fs::read_to_string(IP_FORWARD).with_context(|| format!("reading {IP_FORWARD}"))?;
        if was.trim() != "1" {
            std::fs::write(IP_FORWARD, "1")
                .with_context(|| format!("turning IPv4 forwarding on ({IP_FORWARD})"))?;
            tracing::info!("egress: IPv4 forwarding turned on (off again when nobody may exit)");
        }
        self.forward_was = Some(was.trim().to_owned());
        Ok(())
    }

    fn remove(&mut self) {
        // Forwarding off before the filter goes, for the same reason.
        if let Some(was) = self.forward_was.take()
            && was != "1"
            && let Err(e) = std::fs::write(IP_FORWARD, &was)
        {
            tracing::warn!(error = %e, "egress: restoring {IP_FORWARD}");
        }
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
