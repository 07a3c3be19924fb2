//! The `relayhub hub ...` subcommands: the hub mesh's members, kept in the
//! registry (one document, so spokes and their home hubs change together).

use anyhow::Context as _;

use crate::core::registry::{DEFAULT_MESH_BASE, MeshHub};
use crate::io::netinfo;
use crate::provision::spoke::table;
use crate::store::Store;

/// `relayhub hub add NAME --endpoint IP[:PORT] [--mesh-base PORT]`: add
/// (or update) a mesh member. The endpoint is where its spokes dial it and
/// where peer hubs send to: a literal address (the XDP program matches
/// frames by it).
pub fn add(
    store: &Store,
    name: &str,
    endpoint: &str,
    port: u16,
    mesh_base: Option<u16>,
) -> anyhow::Result<String> {
    let ep = netinfo::normalize_endpoint(endpoint, port)?;
    let addr: std::net::SocketAddr = ep.parse().map_err(|_| {
        anyhow::anyhow!(
            "--endpoint {endpoint}: a mesh hub needs a literal IP address (peer hubs match frames by it), not a name"
        )
    })?;
    let hub = MeshHub {
        name: name.to_owned(),
        endpoint: addr,
        mesh_base: mesh_base.unwrap_or(DEFAULT_MESH_BASE),
    };
    let reg = store
        .registry()
        .update(&mut |r| r.set_hub(hub.clone()))
        .with_context(|| format!("cannot add hub {name:?}"))?;
    Ok(format!(
        "hub {name} at {addr}, mesh ports {}-{} ({} hub(s) in the mesh)\n\
         run it with `relayhub run --hub-name {name} ...` on the same store; spokes homed there: \
         `relayhub spoke add NAME --hub {name}`\n",
        hub.mesh_base,
        u16::MAX,
        reg.hubs().len()
    ))
}

/// `relayhub hub list`.
pub fn list(store: &Store) -> anyhow::Result<String> {
    let reg = store.registry().load()?;
    if reg.hubs().is_empty() {
        return Ok(
            "no hub mesh: every hub of this store serves every spoke; add members with `relayhub hub add NAME --endpoint IP:PORT`\n"
                .to_owned(),
        );
    }
    let rows: Vec<[String; 4]> = reg
        .hubs()
        .iter()
        .map(|h| {
            let homed = reg
                .spokes()
                .iter()
                .filter(|s| s.home.as_deref() == Some(&h.name))
                .count();
            [
                h.name.clone(),
                h.endpoint.to_string(),
                h.mesh_base.to_string(),
                homed.to_string(),
            ]
        })
        .collect();
    Ok(table(["NAME", "ENDPOINT", "MESH BASE", "SPOKES"], &rows))
}

/// `relayhub hub remove NAME` (refused while spokes are homed there).
pub fn remove(store: &Store, name: &str) -> anyhow::Result<String> {
    let mut gone = None;
    store
        .registry()
        .update(&mut |r| {
            gone = Some(r.remove_hub(name)?);
            Ok(())
        })
        .with_context(|| format!("cannot remove hub {name:?}"))?;
    let h = gone.context("hub removal did not happen")?;
    Ok(format!("removed hub {} ({})\n", h.name, h.endpoint))
}
