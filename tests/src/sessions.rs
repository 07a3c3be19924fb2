//! The relay session table of a running hub, read and written with bpftool
//! (by the program attached to the hub's NIC), as the XDP program and the
//! controller see it: for checks that two hubs' tables match and for
//! entries a test plants as if the XDP program had learned them.

use std::collections::BTreeMap;

use anyhow::Context as _;
use serde_json::Value;

use crate::cmd;
use crate::netns::Netns;

/// (sender slot, receiver index) -> (destination slot, flags).
pub type Table = BTreeMap<(u32, u32), (u32, u32)>;

fn le32(v: &[Value], at: usize) -> anyhow::Result<u32> {
    let mut b = [0u8; 4];
    for (i, x) in b.iter_mut().enumerate() {
        let s = v
            .get(at + i)
            .and_then(Value::as_str)
            .context("bpftool byte")?;
        *x = u8::from_str_radix(s.trim_start_matches("0x"), 16)?;
    }
    Ok(u32::from_le_bytes(b))
}

/// bpftool's hex byte arguments.
fn bytes(parts: &[&[u8]]) -> Vec<String> {
    parts
        .iter()
        .flat_map(|p| p.iter())
        .map(|b| format!("0x{b:02x}"))
        .collect()
}

/// Id of the SESSIONS map of the program attached to `nic` in `ns`.
pub fn map_id(ns: &Netns, nic: &str) -> anyhow::Result<String> {
    let link: Value =
        serde_json::from_str(&ns.exec(&["ip", "-d", "-j", "link", "show", "dev", nic])?)?;
    let prog = link[0]["xdp"]["prog"]["id"]
        .as_u64()
        .with_context(|| format!("no XDP program on {nic}"))?
        .to_string();
    let prog: Value =
        serde_json::from_str(&cmd::run(&["bpftool", "-j", "prog", "show", "id", &prog])?)?;
    for id in prog["map_ids"].as_array().context("map_ids")? {
        let id = id.as_u64().context("map id")?.to_string();
        let m: Value =
            serde_json::from_str(&cmd::run(&["bpftool", "-j", "map", "show", "id", &id])?)?;
        if m["name"] == "SESSIONS" {
            return Ok(id);
        }
    }
    anyhow::bail!("the program on {nic} has no SESSIONS map")
}

/// Every entry of the map.
pub fn dump(map_id: &str) -> anyhow::Result<Table> {
    let v: Value =
        serde_json::from_str(&cmd::run(&["bpftool", "-j", "map", "dump", "id", map_id])?)?;
    let mut t = Table::new();
    for e in v.as_array().context("bpftool map dump")? {
        let k = e["key"].as_array().context("key")?;
        let val = e["value"].as_array().context("value")?;
        t.insert((le32(k, 0)?, le32(k, 4)?), (le32(val, 0)?, le32(val, 4)?));
    }
    Ok(t)
}

/// Write `(src, receiver) -> dst` as a learned entry, seen now.
pub fn plant(map_id: &str, src: u32, receiver: u32, dst: u32) -> anyhow::Result<()> {
    let mut argv: Vec<String> = ["bpftool", "map", "update", "id", map_id, "key"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    argv.extend(bytes(&[&src.to_le_bytes(), &receiver.to_le_bytes()]));
    argv.push("value".into());
    let seen = testkit::xdp::ktime_ns().to_le_bytes();
    argv.extend(bytes(&[
        &dst.to_le_bytes(),
        &relay_common::SESSION_FROM_RESPONSE.to_le_bytes(),
        &seen,
    ]));
    cmd::run(&argv).map(|_| ())
}

/// Delete `(src, receiver)`.
pub fn remove(map_id: &str, src: u32, receiver: u32) -> anyhow::Result<()> {
    let mut argv: Vec<String> = ["bpftool", "map", "delete", "id", map_id, "key"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    argv.extend(bytes(&[&src.to_le_bytes(), &receiver.to_le_bytes()]));
    cmd::run(&argv).map(|_| ())
}
