//! A relayhub mesh ready for traffic: spokes registered with the real hub,
//! their wg-quick files fetched, the hub's WireGuard knowing them, and the
//! spokes up and talking to each other.

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use anyhow::Context;

use crate::wg::WgQuick;
use crate::{Hub, Topology, cmd};

pub struct Mesh {
    pub names: Vec<String>,
    /// Spoke i, up (wg-quick down on drop).
    pub spokes: Vec<Option<WgQuick>>,
    pub addrs: Vec<Ipv4Addr>,
}

impl Mesh {
    /// Register one spoke per topology spoke (named s1, s2, ...), bring
    /// them all up and wait until every ordered pair pings (bounded).
    pub fn up(topo: &Topology, hub: &mut Hub<'_>) -> anyhow::Result<Mesh> {
        Self::up_first(topo, hub, topo.spokes.len())
    }

    /// [`Mesh::up`] for the first `n` topology spokes only: the others'
    /// namespaces stay idle for spokes a test adds later.
    pub fn up_first(topo: &Topology, hub: &mut Hub<'_>, n: usize) -> anyhow::Result<Mesh> {
        anyhow::ensure!(
            n <= topo.spokes.len(),
            "{n} spokes, topology has {}",
            topo.spokes.len()
        );
        let names: Vec<String> = (1..=n).map(|i| format!("s{i}")).collect();
        let mut added = Vec::new();
        for name in &names {
            added.push(
                hub.add_spoke(name)
                    .with_context(|| format!("spoke add {name}"))?,
            );
        }
        let mut texts = Vec::new();
        for (name, add_text) in names.iter().zip(&added) {
            texts.push(hub.current_config(name, add_text)?);
        }
        let keys: Vec<String> = texts
            .iter()
            .map(|t| crate::wg::conf_public_key(t))
            .collect::<anyhow::Result<_>>()?;
        hub.wait_for_peers(&keys)?;
        let mut spokes = Vec::new();
        for (i, text) in texts.iter().enumerate() {
            spokes.push(Some(topo.spoke_up(i, text)?));
        }
        let addrs: Vec<Ipv4Addr> = texts
            .iter()
            .map(|t| crate::wg::conf_address(t))
            .collect::<anyhow::Result<_>>()?;
        let t0 = Instant::now();
        for (a, s) in topo.spokes.iter().take(n).enumerate() {
            for (b, dst) in addrs.iter().enumerate() {
                if a == b {
                    continue;
                }
                let dst = dst.to_string();
                cmd::wait_for(
                    &format!("{} to ping {dst}", names[a]),
                    Duration::from_secs(15),
                    Duration::from_millis(10),
                    || Ok(s.ns.ping_once(&dst).then_some(())),
                )?;
            }
        }
        eprintln!(
            "[mesh] all pairs reachable {:?} after the spokes came up",
            t0.elapsed()
        );
        Ok(Mesh {
            names,
            spokes,
            addrs,
        })
    }

    /// Take spoke `i` down (wg-quick down, wireguard-go gone).
    pub fn down(&mut self, i: usize) {
        if let Some(mut s) = self.spokes[i].take() {
            s.down();
        }
    }
}
