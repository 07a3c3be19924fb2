//! The XDP datapath: load the relay program, attach it to the underlay NIC,
//! and read and write its maps.

//!
//! Restarts: with a pin directory (on bpffs) the maps and the XDP link are
//! pinned under `<pin root>/<interface key>/`, so the program keeps relaying
//! while no controller runs and a new controller adopts the maps (the
//! session table, counters) and swaps its freshly loaded program onto the
//! pinned link atomically (`bpf_link_update`): a restart and an upgrade are
//! the same operation.

mod batch;
pub use batch::read_sessions_batch;
pub mod perf;
mod pins;

pub use pins::{IfaceLock, LOCK_DIR, PIN_LAYOUT, PinDir};
use pins::{PINNED_MAPS, incompatible, map_specs};

use std::collections::HashMap as StdHashMap;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::os::fd::AsFd as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use aya::maps::perf::PerfEventArrayBuffer;
use aya::maps::{
    Array, HashMap, MapData, MapInfo, PerCpuArray, PerCpuValues, PerfEventArray, RingBuf,
};
use aya::programs::links::{FdLink, PinnedLink};
use aya::programs::xdp::XdpLink;
use aya::programs::{ProgramError, Xdp, XdpMode};
use aya::{Ebpf, EbpfLoader};
use relay_common::{
    CROSS_VIA_USERSPACE, Endpoint, FALLBACK_PAGES_PER_CPU, HUB_V4_SET, HUB_V6_SET, HubConfig,
    MAP_CONFIG, MAP_COUNTERS, MAP_ENDPOINT_SLOTS, MAP_FALLBACK, MAP_INITIATIONS, MAP_MESH_DROPS,
    MAP_MESH_HUBS, MAP_PROOFS, MAP_SESSIONS, MAP_SLOT_COUNTERS, MAP_SLOTS, MAP_SOURCE_CACHE,
    MAX_MESH_PEERS, MeshDrops, PROG_RELAY, SLOT_ACTIVE, SLOT_MESH_SHIFT, SLOT_REMOTE, SessionKey,
    SessionValue, SlotCounters, SourceCache, SpokeSlot, counter, source_cache_index,
};

#[derive(Debug, thiserror::Error)]
pub enum DatapathError {
    #[error("loading the XDP program failed: {0}")]
    Load(#[from] aya::EbpfError),
    #[error("XDP program: {0}")]
    Program(#[from] ProgramError),
    #[error("BPF map {name}: {source}")]
    Map {
        name: &'static str,
        source: aya::maps::MapError,
    },
    #[error("BPF map {0} missing from the object (stale build? run `cargo xtask build`)")]
    MissingMap(&'static str),
    #[error(
        "interface {iface} already has an XDP program (another relayhub?). Stop it, or detach with `ip link set dev {iface} xdp off`"
    )]
    Busy { iface: String },
    #[error("network interface {0} not found (pick one with --iface; `ip link` lists them)")]
    NoInterface(String),
    #[error("XDP attach to {iface} in {mode} mode failed: {source}")]
    Attach {
        iface: String,
        mode: &'static str,
        source: ProgramError,
    },
    #[error("userspace fallback (cross-family relay): {0}")]
    Fallback(String),
    #[error("reading the possible CPUs (/sys/devices/system/cpu/possible): {0}")]
    Cpus(std::io::Error),
    #[error("slot {slot} is beyond the map capacity {max} (raise --max-spokes)")]
    SlotRange { slot: u32, max: u32 },
    #[error("pinning under {path}: {source}")]
    Pin {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("pinned XDP link {path}: {detail}")]
    Link { path: PathBuf, detail: String },
    #[error(
        "another relayhub is running on {iface} (lock {path} held{holder}). Stop it first; two hubs cannot share an interface"
    )]
    Locked {
        iface: String,
        path: PathBuf,
        holder: String,
    },
}

fn map_err(name: &'static str) -> impl FnOnce(aya::maps::MapError) -> DatapathError {
    move |source| DatapathError::Map { name, source }
}

/// How to attach: `auto` tries native (driver) mode first and falls back
/// to generic (skb) mode.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum AttachMode {
    Auto,
    Native,
    Generic,
}

/// Which path relays frames between IPv4 and IPv6 spokes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum CrossPath {
    /// The XDP program rebuilds the headers (bpf_xdp_adjust_head); a frame
    /// it cannot rebuild still takes the userspace fallback.
    #[default]
    Xdp,
    /// Every cross-family frame goes through the controller (for drivers
    /// that mishandle bpf_xdp_adjust_head; slower).
    Userspace,
}

pub struct Capacity {
    pub slots: u32,
    pub sessions: u32,
}

impl Default for Capacity {
    fn default() -> Self {
        Self {
            slots: relay_common::MAX_SLOTS,
            sessions: relay_common::MAX_SESSIONS,
        }
    }
}

pub struct Datapath {
    // Field order matters on drop: maps and the link go with `ebpf`.
    endpoint_slots: HashMap<MapData, Endpoint, u32>,
    slots: Array<MapData, SpokeSlot>,
    sessions: HashMap<MapData, SessionKey, SessionValue>,
    counters: PerCpuArray<MapData, u64>,
    slot_counters: PerCpuArray<MapData, SlotCounters>,
    /// The program's per-CPU source cache (see [`Datapath::forget_source`]).
    source_cache: PerCpuArray<MapData, SourceCache>,
    /// Possible CPUs (per-CPU values come in this many).
    ncpus: usize,
    initiations: Option<RingBuf<MapData>>,
    proofs: Option<RingBuf<MapData>>,
    config: Array<MapData, HubConfig>,
    port: u16,
    cross: CrossPath,
    /// `HubConfig::init_pass_per_sec`.
    init_budget: u32,
    hub_addrs: (Option<Ipv4Addr>, Option<Ipv6Addr>),
    /// Hub mesh: the first mesh port (0: none) and the slots homed on
    /// peer hubs with their home's drop-counter index (written with
    /// `SLOT_REMOTE` and the index in the flags).
    mesh_base: u16,
    remote: std::collections::HashMap<u32, u32>,
    /// Hub mesh: the local spokes' mesh indices (in their slot flags).
    local_mesh: std::collections::HashMap<u32, u16>,
    /// Hub mesh: drops by reason per peer hub (see [`MeshPeers`]).
    mesh: MeshPeers,
    max_slots: u32,
    mode: &'static str,
    iface: String,
    pins: Option<PinDir>,
    /// Maps found pinned and reused (names).
    adopted_maps: Vec<&'static str>,
    /// The XDP link was found pinned and our program swapped onto it.
    adopted_link: bool,
    /// Leave pins (and so the attached program) behind when dropped.
    keep_on_drop: bool,
    link: Option<XdpLink>,
    ebpf: Ebpf,
}

impl Datapath {
    /// Load the program (not attached yet). `log_level` is the most
    /// verbose aya-log level the program may emit (0 = none, 1 = error ..
    /// 5 = trace); disabled levels cost a load and a compare. With `pins`,
    /// compatible pinned maps are reused (the session table and counters
    /// survive) and the others are created and pinned there.
    pub fn load(
        object: &[u8],
        cap: &Capacity,
        port: u16,
        log_level: u8,
        pins: Option<PinDir>,
    ) -> Result<Self, DatapathError> {
        let mut adopted_maps = Vec::new();
        let mut loader = EbpfLoader::new();
        loader
            .override_global("AYA_LOG_LEVEL", &log_level, false)
            .map_max_entries(MAP_SLOTS, cap.slots)
            .map_max_entries(MAP_SLOT_COUNTERS, cap.slots)
            .map_max_entries(MAP_ENDPOINT_SLOTS, cap.slots)
            .map_max_entries(MAP_SESSIONS, cap.sessions);
        if let Some(p) = &pins {
            let dir = p.maps_dir();
            std::fs::create_dir_all(&dir).map_err(|source| DatapathError::Pin {
                path: dir.clone(),
                source,
            })?;
            for spec in map_specs(cap) {
                let path = p.map(spec.name);
                if !path.exists() {
                    continue;
                }
                match MapInfo::from_pin(&path) {
                    Ok(info) => match incompatible(&info, &spec) {
                        None => adopted_maps.push(spec.name),
                        Some(why) => {
                            tracing::warn!(map = spec.name, %why, "pinned map not adoptable; starting it empty");
                            let _ = std::fs::remove_file(&path);
                        }
                    },
                    Err(e) => {
                        tracing::warn!(map = spec.name, error = %e, "unreadable pin; replacing it");
                        let _ = std::fs::remove_file(&path);
                    }
                }
            }
            for name in PINNED_MAPS {
                loader.map_pin_path(name, p.map(name));
            }
        }
        let mut ebpf = loader.load(object)?;
        if let Some(p) = &pins {
            // Pins of other layouts: the program still attached keeps its
            // own references; the names go.
            let current = p.maps_dir();
            if let Ok(rd) = std::fs::read_dir(&p.dir) {
                for e in rd.flatten() {
                    let path = e.path();
                    if path.is_dir() && path != current {
                        tracing::info!(dir = %path.display(), "removing pins of another map layout");
                        if let Ok(inner) = std::fs::read_dir(&path) {
                            for m in inner.flatten() {
                                let _ = std::fs::remove_file(m.path());
                            }
                        }
                        let _ = std::fs::remove_dir(&path);
                    }
                }
            }
            if !adopted_maps.is_empty() {
                tracing::info!(dir = %current.display(), maps = ?adopted_maps, "adopted pinned maps");
            }
        }
        let mut take =
            |name: &'static str| ebpf.take_map(name).ok_or(DatapathError::MissingMap(name));
        let endpoint_slots =
            HashMap::try_from(take(MAP_ENDPOINT_SLOTS)?).map_err(map_err(MAP_ENDPOINT_SLOTS))?;
        let slots = Array::try_from(take(MAP_SLOTS)?).map_err(map_err(MAP_SLOTS))?;
        let sessions = HashMap::try_from(take(MAP_SESSIONS)?).map_err(map_err(MAP_SESSIONS))?;
        let counters = PerCpuArray::try_from(take(MAP_COUNTERS)?).map_err(map_err(MAP_COUNTERS))?;
        let slot_counters =
            PerCpuArray::try_from(take(MAP_SLOT_COUNTERS)?).map_err(map_err(MAP_SLOT_COUNTERS))?;
        let source_cache =
            PerCpuArray::try_from(take(MAP_SOURCE_CACHE)?).map_err(map_err(MAP_SOURCE_CACHE))?;
        let initiations =
            RingBuf::try_from(take(MAP_INITIATIONS)?).map_err(map_err(MAP_INITIATIONS))?;
        let proofs = RingBuf::try_from(take(MAP_PROOFS)?).map_err(map_err(MAP_PROOFS))?;
        let mesh = MeshPeers {
            hubs: HashMap::try_from(take(MAP_MESH_HUBS)?).map_err(map_err(MAP_MESH_HUBS))?,
            drops: PerCpuArray::try_from(take(MAP_MESH_DROPS)?).map_err(map_err(MAP_MESH_DROPS))?,
            index: Default::default(),
            carried: Default::default(),
        };
        let mut config: Array<MapData, HubConfig> =
            Array::try_from(take(MAP_CONFIG)?).map_err(map_err(MAP_CONFIG))?;
        // An adopted config keeps the hub addresses until
        // set_hub_addresses: the running program must not see port 0.
        let keep_config =
            adopted_maps.contains(&MAP_CONFIG) && config.get(&0, 0).is_ok_and(|c| c.port == port);
        if !keep_config {
            config
                .set(
                    0,
                    HubConfig {
                        port,
                        ..Default::default()
                    },
                    0,
                )
                .map_err(map_err(MAP_CONFIG))?;
        }
        let prog: &mut Xdp = ebpf
            .program_mut(PROG_RELAY)
            .ok_or(DatapathError::MissingMap(PROG_RELAY))?
            .try_into()?;
        prog.load()?;
        let keep_on_drop = !adopted_maps.is_empty();
        Ok(Self {
            endpoint_slots,
            slots,
            sessions,
            counters,
            slot_counters,
            source_cache,
            ncpus: aya::util::nr_cpus().map_err(|(_, e)| DatapathError::Cpus(e))?,
            initiations: Some(initiations),
            proofs: Some(proofs),
            config,
            port,
            cross: CrossPath::Xdp,
            init_budget: 0,
            hub_addrs: (None, None),
            mesh_base: 0,
            remote: Default::default(),
            local_mesh: Default::default(),
            mesh,
            max_slots: cap.slots,
            mode: "detached",
            iface: String::new(),
            pins,
            adopted_maps,
            adopted_link: false,
            keep_on_drop,
            link: None,
            ebpf,
        })
    }

    /// The hub's own addresses, the source of frames relayed across
    /// families: `v4` for IPv6 -> IPv4 spokes, `v6` for IPv4 -> IPv6. A
    /// family left `None` makes such frames pass (counted as
    /// `pass_cross_family`).
    pub fn set_hub_addresses(
        &mut self,
        v4: Option<Ipv4Addr>,
        v6: Option<Ipv6Addr>,
    ) -> Result<(), DatapathError> {
        self.hub_addrs = (v4, v6);
        self.write_config()
    }

    /// The whole configuration entry, in one write (the program reads it
    /// per frame).
    fn write_config(&mut self) -> Result<(), DatapathError> {
        let (v4, v6) = self.hub_addrs;
        let config = HubConfig {
            init_pass_per_sec: self.init_budget,
            mesh_base: self.mesh_base,
            ..hub_config(self.port, v4, v6, self.cross)
        };
        self.config.set(0, config, 0).map_err(map_err(MAP_CONFIG))
    }

    /// Hub mesh: relay frames to ports from `base` up (0: none).
    pub fn set_mesh_base(&mut self, base: u16) -> Result<(), DatapathError> {
        self.mesh_base = base;
        self.write_config()
    }

    pub fn mesh_base(&self) -> u16 {
        self.mesh_base
    }

    /// Hub mesh: the slots homed on peer hubs (slot -> its home's index
    /// from [`set_mesh_peers`](Self::set_mesh_peers)), from the next
    /// endpoint written for each (their endpoints change with their
    /// placement).
    pub fn set_remote_slots(&mut self, slots: std::collections::HashMap<u32, u32>) {
        self.remote = slots;
    }

    /// Hub mesh: the spokes homed here, slot -> mesh index (their frames
    /// to peer hubs leave from `mesh_base + index`). Slots already in the
    /// maps get their flags rewritten now: their endpoints may have been
    /// written by another writer (a standby's replica) before the index
    /// was known, and nothing else would rewrite them.
    pub fn set_local_mesh(
        &mut self,
        indices: std::collections::HashMap<u32, u16>,
    ) -> Result<(), DatapathError> {
        if indices == self.local_mesh {
            return Ok(());
        }
        self.local_mesh = indices;
        for (slot, ep) in self.installed_endpoints() {
            let want = self.slot_flags(slot);
            if let Ok(cur) = self.slots.get(&slot, 0)
                && cur.endpoint == ep
                && cur.flags != want
                && cur.flags & SLOT_REMOTE == 0
            {
                let value = SpokeSlot {
                    endpoint: ep,
                    flags: want,
                };
                self.slots.set(slot, value, 0).map_err(map_err(MAP_SLOTS))?;
            }
        }
        Ok(())
    }

    /// What the map holds for `slot` (diagnostics, tests).
    pub fn slot(&self, slot: u32) -> Option<SpokeSlot> {
        self.slots.get(&slot, 0).ok()
    }

    /// The flags an active slot with an endpoint gets: remote (with its
    /// home hub's drop index) or local (with its mesh index).
    fn slot_flags(&self, slot: u32) -> u32 {
        match self.remote.get(&slot) {
            Some(&peer) => SLOT_ACTIVE | SLOT_REMOTE | (peer << SLOT_MESH_SHIFT),
            None => {
                let index = self.local_mesh.get(&slot).copied().unwrap_or(0);
                SLOT_ACTIVE | (u32::from(index) << SLOT_MESH_SHIFT)
            }
        }
    }

    /// Hub mesh: the peer hubs (name, address) whose mesh frames are
    /// counted apart. A hub keeps its index while it stays in the mesh,
    /// so the remote slots' flags stay right; a hub that leaves has its
    /// counts carried in userspace and its index freed.
    pub fn set_mesh_peers(
        &mut self,
        peers: &[(String, std::net::IpAddr)],
    ) -> Result<(), DatapathError> {
        self.mesh.set(peers)
    }

    /// The drop-counter index of peer hub `name` (0: none).
    pub fn mesh_peer(&self, name: &str) -> u32 {
        self.mesh.index.get(name).map_or(0, |(i, _, _)| *i)
    }

    /// Hub mesh: mesh frames dropped per peer hub, by reason (hubs that
    /// left the mesh included: their counts are kept).
    pub fn mesh_drops(&self) -> std::collections::BTreeMap<String, MeshDrops> {
        self.mesh.totals()
    }

    /// Initiations/s one source address may pass to the hub's own WireGuard
    /// (0 = no limit). Takes effect with the next
    /// [`Datapath::set_hub_addresses`], like the cross-family path.
    pub fn set_initiation_budget(&mut self, per_sec: u32) {
        self.init_budget = per_sec;
    }

    pub fn cross_path(&self) -> CrossPath {
        self.cross
    }

    /// The hub addresses last set with [`Datapath::set_hub_addresses`].
    pub fn hub_addresses(&self) -> (Option<Ipv4Addr>, Option<Ipv6Addr>) {
        self.hub_addrs
    }

    /// Which path relays cross-family frames. Takes effect with the next
    /// [`Datapath::set_hub_addresses`] (one configuration write: an adopted,
    /// running program never sees a configuration without addresses).
    pub fn set_cross_path(&mut self, cross: CrossPath) {
        self.cross = cross;
    }

    /// Open the userspace fallback's perf buffers, one per online CPU
    /// (taken once). Until they are open, frames for the fallback are
    /// dropped and counted as `drop_fallback_full`.
    pub fn open_fallback(&mut self) -> Result<Vec<PerfEventArrayBuffer<MapData>>, DatapathError> {
        let map = self
            .ebpf
            .take_map(MAP_FALLBACK)
            .ok_or(DatapathError::MissingMap(MAP_FALLBACK))?;
        let mut perf = PerfEventArray::try_from(map).map_err(map_err(MAP_FALLBACK))?;
        let cpus = aya::util::online_cpus()
            .map_err(|(_, source)| DatapathError::Fallback(source.to_string()))?;
        cpus.into_iter()
            .map(|cpu| {
                perf.open(cpu, Some(FALLBACK_PAGES_PER_CPU))
                    .map_err(|e| DatapathError::Fallback(format!("perf buffer of CPU {cpu}: {e}")))
            })
            .collect()
    }

    /// Attach to `iface`. With pins, a pinned link that is live on `iface`
    /// is adopted: our program replaces the running one atomically
    /// (`bpf_link_update`; every frame sees one program or the other).
    /// Otherwise the program is attached fresh and, with pins, the link is
    /// pinned. The program stays attached until `self` drops (and, pinned,
    /// after that unless [`Datapath::set_keep_on_drop`] says otherwise).
    pub fn attach(&mut self, iface: &str, mode: AttachMode) -> Result<(), DatapathError> {
        let ifindex = nix::net::if_::if_nametoindex(iface)
            .map_err(|_| DatapathError::NoInterface(iface.to_string()))?;
        if let Some(p) = self.pins.clone()
            && p.link().exists()
            && self.adopt_link(&p, ifindex)?
        {
            self.iface = iface.to_string();
            return Ok(());
        }
        if let Some((id, _)) = attached_xdp(ifindex) {
            tracing::debug!(iface, prog_id = id, "existing XDP program");
            return Err(DatapathError::Busy {
                iface: iface.to_string(),
            });
        }
        let prog: &mut Xdp = self
            .ebpf
            .program_mut(PROG_RELAY)
            .ok_or(DatapathError::MissingMap(PROG_RELAY))?
            .try_into()?;
        let tries: &[(XdpMode, &'static str)] = match mode {
            AttachMode::Auto => &[(XdpMode::Driver, "native"), (XdpMode::Skb, "generic")],
            AttachMode::Native => &[(XdpMode::Driver, "native")],
            AttachMode::Generic => &[(XdpMode::Skb, "generic")],
        };
        let mut last = None;
        for &(m, name) in tries {
            match prog.attach_to_if_index(ifindex, m) {
                Ok(id) => {
                    // Netlink attachments (kernels without XDP links) cannot be pinned.
                    let is_fd_link = format!("{id:?}").contains("FdLink");
                    let link = prog.take_link(id)?;
                    self.mode = name;
                    self.iface = iface.to_string();
                    self.link = Some(match (&self.pins, is_fd_link) {
                        (Some(p), true) => pin_link(link, &p.link())?,
                        (Some(_), false) => {
                            tracing::warn!(
                                iface,
                                "XDP attached through netlink (no BPF link support): not pinned, a restart detaches it"
                            );
                            link
                        }
                        (None, _) => link,
                    });
                    return Ok(());
                }
                Err(e) if is_busy(&e) => {
                    return Err(DatapathError::Busy {
                        iface: iface.to_string(),
                    });
                }
                Err(e) => {
                    tracing::warn!(iface, mode = name, error = %e, "XDP attach failed");
                    last = Some((name, e));
                }
            }
        }
        let (mode, source) = last.expect("at least one mode tried");
        Err(DatapathError::Attach {
            iface: iface.to_string(),
            mode,
            source,
        })
    }

    /// Swap our program onto the pinned link if that link is the one
    /// attached to `ifindex`; false (and the stale pin removed) if not.
    fn adopt_link(&mut self, p: &PinDir, ifindex: u32) -> Result<bool, DatapathError> {
        let path = p.link();
        let link_err = |detail: String| DatapathError::Link {
            path: path.clone(),
            detail,
        };
        let fd: FdLink = match PinnedLink::from_pin(&path) {
            Ok(l) => l.into(),
            Err(e) => {
                tracing::warn!(pin = %path.display(), error = %e, "unusable pinned XDP link; removing it");
                let _ = std::fs::remove_file(&path);
                return Ok(false);
            }
        };
        let old_prog = fd.info().map_err(|e| link_err(e.to_string()))?.program_id();
        let Some((_, mode)) = attached_xdp(ifindex).filter(|&(id, _)| id == old_prog) else {
            // The interface went away (a defunct link) or someone detached us.
            tracing::warn!(pin = %path.display(), "pinned XDP link is not attached to this interface; removing it");
            let _ = std::fs::remove_file(&path);
            return Ok(false);
        };
        let link = XdpLink::try_from(fd).map_err(|e| link_err(e.to_string()))?;
        let prog: &mut Xdp = self
            .ebpf
            .program_mut(PROG_RELAY)
            .ok_or(DatapathError::MissingMap(PROG_RELAY))?
            .try_into()?;
        let id = prog.attach_to_link(link)?;
        self.link = Some(prog.take_link(id)?);
        self.mode = mode;
        self.adopted_link = true;
        self.keep_on_drop = true;
        let new_prog = prog.info().map(|i| i.id()).unwrap_or(0);
        tracing::info!(
            pin = %path.display(),
            old_prog,
            new_prog,
            mode,
            "adopted the pinned XDP link: program replaced atomically"
        );
        Ok(true)
    }

    /// Whether pinned state (maps or the link) from a previous controller
    /// was adopted.
    pub fn adopted(&self) -> bool {
        self.adopted_link || !self.adopted_maps.is_empty()
    }

    pub fn adopted_link(&self) -> bool {
        self.adopted_link
    }

    /// Whether the maps and link are pinned (survive this process).
    pub fn pinned(&self) -> bool {
        self.pins.is_some()
    }

    /// On drop: leave the pins, so the program keeps relaying and the next
    /// controller adopts it (`true`), or remove them and detach (`false`).
    /// Defaults to `true` only when pinned state was adopted, so a failed
    /// start never destroys what a previous controller left.
    pub fn set_keep_on_drop(&mut self, keep: bool) {
        self.keep_on_drop = keep;
    }

    /// Active slots and their endpoints as the (possibly adopted) maps have
    /// them: the starting point for reconciling with the registry.
    pub fn installed_endpoints(&mut self) -> StdHashMap<u32, Endpoint> {
        let mut out = StdHashMap::new();
        let keys: Vec<(Endpoint, u32)> =
            self.endpoint_slots.iter().filter_map(Result::ok).collect();
        for (ep, slot) in keys {
            match self.slots.get(&slot, 0) {
                Ok(s) if s.flags & SLOT_ACTIVE != 0 && s.endpoint == ep => {
                    out.insert(slot, ep);
                }
                _ => {
                    // A reverse entry without its slot: stale.
                    let _ = self.endpoint_slots.remove(&ep);
                }
            }
        }
        out
    }

    pub fn mode(&self) -> &'static str {
        self.mode
    }

    pub fn iface(&self) -> &str {
        &self.iface
    }

    /// Whether our program is still the one attached to the interface.
    pub fn is_attached(&self) -> bool {
        if self.iface.is_empty() {
            return false;
        }
        nix::net::if_::if_nametoindex(self.iface.as_str())
            .ok()
            .and_then(attached_xdp)
            .is_some()
    }

    /// Cumulative run time and run count of the relay program; zero
    /// unless BPF run-time statistics are enabled (`--bpf-stats`).
    pub fn prog_stats(&self) -> Option<(Duration, u64)> {
        let prog: &Xdp = self.ebpf.program(PROG_RELAY)?.try_into().ok()?;
        let info = prog.info().ok()?;
        Some((info.run_time(), info.run_count()))
    }

    pub fn ebpf_mut(&mut self) -> &mut Ebpf {
        &mut self.ebpf
    }

    /// The initiation ring buffer, for the async reader (taken once).
    pub fn take_initiations(&mut self) -> Option<RingBuf<MapData>> {
        self.initiations.take()
    }

    /// The ring buffer of [`relay_common::ProofEvent`]s (once).
    pub fn take_proofs(&mut self) -> Option<RingBuf<MapData>> {
        self.proofs.take()
    }

    /// `ep`'s source-cache entry on every CPU (diagnostics, tests).
    pub fn source_entries(&self, ep: &Endpoint) -> Vec<SourceCache> {
        self.source_cache
            .get(&source_cache_index(ep), 0)
            .map(|v| v.iter().copied().collect())
            .unwrap_or_default()
    }

    /// Empty `ep`'s source-cache entry on every CPU, so that frames from a
    /// just-installed endpoint are not taken for a stranger's (an entry
    /// would say so for at most `SOURCE_CACHE_STRANGER_TTL_NS` anyway,
    /// which is what a failure here costs).
    fn forget_source(&mut self, ep: &Endpoint) {
        let empty = vec![SourceCache::default(); self.ncpus];
        if let Ok(values) = PerCpuValues::try_from(empty) {
            let _ = self.source_cache.set(source_cache_index(ep), values, 0);
        }
    }

    /// Point `slot` at `endpoint` (or deactivate it), keeping the reverse
    /// map consistent. `old` is the endpoint previously installed.
    pub fn set_spoke_endpoint(
        &mut self,
        slot: u32,
        old: Option<Endpoint>,
        new: Option<Endpoint>,
    ) -> Result<(), DatapathError> {
        if slot >= self.max_slots {
            return Err(DatapathError::SlotRange {
                slot,
                max: self.max_slots,
            });
        }
        if let Some(old) = old
            && Some(old) != new
            && self.endpoint_slots.get(&old, 0).ok() == Some(slot)
        {
            let _ = self.endpoint_slots.remove(&old);
        }
        let value = match new {
            Some(ep) => {
                self.endpoint_slots
                    .insert(ep, slot, 0)
                    .map_err(map_err(MAP_ENDPOINT_SLOTS))?;
                self.forget_source(&ep);
                SpokeSlot {
                    endpoint: ep,
                    flags: self.slot_flags(slot),
                }
            }
            None => SpokeSlot::default(),
        };
        self.slots.set(slot, value, 0).map_err(map_err(MAP_SLOTS))?;
        Ok(())
    }

    pub fn insert_session(
        &mut self,
        key: SessionKey,
        value: SessionValue,
    ) -> Result<(), DatapathError> {
        self.sessions
            .insert(key, value, 0)
            .map_err(map_err(MAP_SESSIONS))
    }

    /// The session entry of `key`, if any.
    pub fn session(&self, key: &SessionKey) -> Option<SessionValue> {
        self.sessions.get(key, 0).ok()
    }

    /// All session entries (for expiry and the live-session gauge).
    pub fn sessions(&self) -> Vec<(SessionKey, SessionValue)> {
        self.sessions.iter().filter_map(Result::ok).collect()
    }

    /// The kernel's id of the session table, for another handle on it
    /// (`MapData::from_id`).
    pub fn sessions_map_id(&self) -> Result<u32, DatapathError> {
        use aya::maps::IterableMap as _;
        map_id(self.sessions.map(), MAP_SESSIONS)
    }

    /// The kernel's id of the slot counters, for another handle on them.
    pub fn slot_counters_map_id(&self) -> Result<u32, DatapathError> {
        use aya::maps::IterableMap as _;
        map_id(self.slot_counters.map(), MAP_SLOT_COUNTERS)
    }

    pub fn remove_session(&mut self, key: &SessionKey) {
        let _ = self.sessions.remove(key);
    }

    /// Sum of a global counter over CPUs.
    pub fn counter(&self, index: u32) -> u64 {
        self.counters
            .get(&index, 0)
            .map(|v| v.iter().copied().fold(0u64, u64::wrapping_add))
            .unwrap_or(0)
    }

    pub fn counters(&self) -> [u64; counter::COUNT as usize] {
        let mut out = [0u64; counter::COUNT as usize];
        for (i, v) in out.iter_mut().enumerate() {
            *v = self.counter(i as u32);
        }
        out
    }

    /// Every slot's counters below `end` into `table`: one batch read
    /// where the kernel has it, a lookup per slot where not.
    pub fn read_slot_counters(&self, end: u32, table: &mut SlotTable) {
        const { assert!(size_of::<SlotCounters>().is_multiple_of(8)) };
        let end = end.min(self.max_slots);
        table.sums.clear();
        table.sums.resize(end as usize, SlotCounters::default());
        let fd = aya::maps::IterableMap::map(&self.slot_counters)
            .fd()
            .as_fd();
        let sums = &mut table.sums;
        let read = batch::lookup_percpu(fd, end, self.ncpus, &mut table.scratch, |i, cpus| {
            if let Some(s) = sums.get_mut(i as usize) {
                for c in cpus {
                    s.accumulate(c);
                }
            }
        });
        if let Err(e) = read {
            if !table.warned {
                table.warned = true;
                tracing::warn!(error = %e, "batch read of the slot counters failed; reading them one by one");
            }
            for (slot, s) in table.sums.iter_mut().enumerate() {
                *s = self.slot_counters(slot as u32);
            }
        }
    }

    /// A slot's counters summed over CPUs (timestamps: the latest).
    pub fn slot_counters(&self, slot: u32) -> SlotCounters {
        let mut s = SlotCounters::default();
        if let Ok(values) = self.slot_counters.get(&slot, 0) {
            for c in values.iter() {
                s.accumulate(c);
            }
        }
        s
    }
}

/// The kernel's id of `map` (named `name` in errors).
fn map_id(map: &MapData, name: &'static str) -> Result<u32, DatapathError> {
    map.info().map(|i| i.id()).map_err(map_err(name))
}

/// Every slot's counters from one [`Datapath::read_slot_counters`], and
/// the buffers it reuses.
#[derive(Default)]
pub struct SlotTable {
    sums: Vec<SlotCounters>,
    scratch: batch::Scratch<SlotCounters>,
    warned: bool,
}

impl SlotTable {
    /// `slot`'s counters summed over CPUs (zero beyond the range read).
    pub fn get(&self, slot: u32) -> SlotCounters {
        self.sums.get(slot as usize).copied().unwrap_or_default()
    }
}

/// The [`HubConfig`] for `port`, the hub's addresses and the cross-family
/// path.
pub fn hub_config(
    port: u16,
    v4: Option<Ipv4Addr>,
    v6: Option<Ipv6Addr>,
    cross: CrossPath,
) -> HubConfig {
    let mut c = HubConfig {
        port,
        ..Default::default()
    };
    if cross == CrossPath::Userspace {
        c.flags |= CROSS_VIA_USERSPACE;
    }
    if let Some(a) = v4 {
        c.hub_v4 = a.octets();
        c.flags |= HUB_V4_SET;
    }
    if let Some(a) = v6 {
        c.hub_v6 = a.octets();
        c.flags |= HUB_V6_SET;
    }
    c
}

/// Pin `link` at `path` (replacing a stale pin) and hand it back.
fn pin_link(link: XdpLink, path: &Path) -> Result<XdpLink, DatapathError> {
    let link_err = |detail: String| DatapathError::Link {
        path: path.to_path_buf(),
        detail,
    };
    let _ = std::fs::remove_file(path);
    let fd = FdLink::try_from(link).map_err(|e| link_err(e.to_string()))?;
    let pinned = fd.pin(path).map_err(|e| link_err(e.to_string()))?;
    let fd: FdLink = pinned.into();
    let link = XdpLink::try_from(fd).map_err(|e| link_err(e.to_string()))?;
    tracing::info!(pin = %path.display(), "XDP link pinned");
    Ok(link)
}

impl Drop for Datapath {
    fn drop(&mut self) {
        let Some(p) = &self.pins else { return };
        if self.keep_on_drop {
            tracing::info!(
                pins = %p.dir.display(),
                "leaving the XDP program attached and its maps pinned for the next relayhub"
            );
        } else {
            // The link detaches when its fd closes (right after this).
            p.remove();
        }
    }
}

/// Id and mode ("native", "generic", "offload") of the XDP program
/// attached to `ifindex`, if any.
fn attached_xdp(ifindex: u32) -> Option<(u32, &'static str)> {
    // Walk loaded programs' links is heavy; the netlink query in aya is
    // private, so ask the kernel through `ip -j link`.
    let out = std::process::Command::new("ip")
        .args(["-d", "-j", "link", "show"])
        .output()
        .ok()?;
    let links: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
    links.as_array()?.iter().find_map(|l| {
        if l.get("ifindex")?.as_u64()? != u64::from(ifindex) {
            return None;
        }
        let xdp = l.get("xdp")?;
        let id = xdp
            .get("prog")
            .and_then(|p| p.get("id"))
            .or_else(|| {
                xdp.get("attached")?
                    .as_array()?
                    .first()?
                    .get("prog")?
                    .get("id")
            })
            .and_then(|v| v.as_u64())? as u32;
        // XDP_ATTACHED_DRV = 1, SKB = 2, HW = 3.
        let mode = match xdp.get("mode").and_then(|m| m.as_u64()) {
            Some(2) => "generic",
            Some(3) => "offload",
            _ => "native",
        };
        Some((id, mode))
    })
}

fn is_busy(e: &ProgramError) -> bool {
    match e {
        ProgramError::SyscallError(s) => {
            matches!(
                s.io_error.raw_os_error(),
                Some(libc::EBUSY) | Some(libc::EEXIST)
            )
        }
        _ => false,
    }
}

/// CLOCK_MONOTONIC_COARSE in ns: exactly the clock of
/// `bpf_ktime_get_coarse_ns()`, so times written by the program and by
/// the controller compare without a tick of skew.
pub fn ktime_ns() -> u64 {
    let ts = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC_COARSE)
        .expect("monotonic clock");
    ts.tv_sec() as u64 * 1_000_000_000 + ts.tv_nsec() as u64
}

/// Hub mesh: the peer hubs' drop counters (`MESH_HUBS`, `MESH_DROPS`).
struct MeshPeers {
    hubs: HashMap<MapData, Endpoint, u32>,
    drops: PerCpuArray<MapData, MeshDrops>,
    /// Peer hub name -> its index, address key, and the index's counts
    /// when it was assigned (an index freed by a hub that left is reused
    /// without writing every CPU's entry).
    index: std::collections::HashMap<String, (u32, Endpoint, MeshDrops)>,
    /// Counts of hubs that left.
    carried: std::collections::BTreeMap<String, MeshDrops>,
}

impl MeshPeers {
    fn set(&mut self, peers: &[(String, std::net::IpAddr)]) -> Result<(), DatapathError> {
        let addr = |ip: &std::net::IpAddr| match ip {
            std::net::IpAddr::V4(a) => Endpoint::v4(a.octets(), 0),
            std::net::IpAddr::V6(a) => Endpoint::v6(a.octets(), 0),
        };
        let gone: Vec<String> = self
            .index
            .iter()
            .filter(|(n, (_, a, _))| !peers.iter().any(|(pn, ip)| pn == *n && addr(ip) == *a))
            .map(|(n, _)| n.clone())
            .collect();
        for name in gone {
            let total = self.count(&name);
            let (_, a, _) = self.index.remove(&name).expect("listed");
            let _ = self.hubs.remove(&a);
            self.carried.entry(name).or_default().accumulate(&total);
        }
        for (name, ip) in peers {
            if self.index.contains_key(name) {
                continue;
            }
            // Index 0 counts sources that are no registered hub.
            let Some(free) =
                (1..MAX_MESH_PEERS).find(|i| self.index.values().all(|(u, _, _)| u != i))
            else {
                tracing::warn!(hub = %name, max = MAX_MESH_PEERS - 1, "too many peer hubs for drop counters of their own");
                continue;
            };
            self.hubs
                .insert(addr(ip), free, 0)
                .map_err(map_err(MAP_MESH_HUBS))?;
            self.index
                .insert(name.clone(), (free, addr(ip), self.read(free)));
        }
        Ok(())
    }

    /// All CPUs' counts at index `i`.
    fn read(&self, i: u32) -> MeshDrops {
        let mut t = MeshDrops::default();
        if let Ok(v) = self.drops.get(&i, 0) {
            for c in v.iter() {
                t.accumulate(c);
            }
        }
        t
    }

    /// What peer hub `name` counted since it got its index.
    fn count(&self, name: &str) -> MeshDrops {
        let Some((i, _, base)) = self.index.get(name) else {
            return MeshDrops::default();
        };
        let now = self.read(*i);
        MeshDrops {
            source: now.source.saturating_sub(base.source),
            transit: now.transit.saturating_sub(base.transit),
            no_session: now.no_session.saturating_sub(base.no_session),
        }
    }

    fn totals(&self) -> std::collections::BTreeMap<String, MeshDrops> {
        let mut out = self.carried.clone();
        for name in self.index.keys() {
            out.entry(name.clone())
                .or_default()
                .accumulate(&self.count(name));
        }
        out
    }
}
