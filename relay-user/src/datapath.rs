//! The XDP datapath: load the relay program, attach it to the underlay NIC,
//! and read and write its maps.

use std::net::{Ipv4Addr, Ipv6Addr};
use std::time::Duration;

use aya::maps::{Array, HashMap, MapData, PerCpuArray, RingBuf};
use aya::programs::{ProgramError, Xdp, XdpMode};
use aya::{Ebpf, EbpfLoader};
use relay_common::{
    Endpoint, HUB_V4_SET, HUB_V6_SET, HubConfig, MAP_CONFIG, MAP_COUNTERS, MAP_ENDPOINT_SLOTS,
    MAP_INITIATIONS, MAP_SESSIONS, MAP_SLOT_COUNTERS, MAP_SLOTS, PROG_RELAY, SLOT_ACTIVE,
    SessionKey, SessionValue, SlotCounters, SpokeSlot, counter,
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
    #[error("slot {slot} is beyond the map capacity {max} (raise --max-spokes)")]
    SlotRange { slot: u32, max: u32 },
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
    initiations: Option<RingBuf<MapData>>,
    config: Array<MapData, HubConfig>,
    port: u16,
    max_slots: u32,
    mode: &'static str,
    iface: String,
    ebpf: Ebpf,
}

impl Datapath {
    /// Load the program (not attached yet). `log_level` is the most
    /// verbose aya-log level the program may emit (0 = none, 1 = error ..
    /// 5 = trace); disabled levels cost a load and a compare.
    pub fn load(
        object: &[u8],
        cap: &Capacity,
        port: u16,
        log_level: u8,
    ) -> Result<Self, DatapathError> {
        let mut ebpf = EbpfLoader::new()
            .override_global("AYA_LOG_LEVEL", &log_level, false)
            .map_max_entries(MAP_SLOTS, cap.slots)
            .map_max_entries(MAP_SLOT_COUNTERS, cap.slots)
            .map_max_entries(MAP_ENDPOINT_SLOTS, cap.slots)
            .map_max_entries(MAP_SESSIONS, cap.sessions)
            .load(object)?;
        let mut take =
            |name: &'static str| ebpf.take_map(name).ok_or(DatapathError::MissingMap(name));
        let endpoint_slots =
            HashMap::try_from(take(MAP_ENDPOINT_SLOTS)?).map_err(map_err(MAP_ENDPOINT_SLOTS))?;
        let slots = Array::try_from(take(MAP_SLOTS)?).map_err(map_err(MAP_SLOTS))?;
        let sessions = HashMap::try_from(take(MAP_SESSIONS)?).map_err(map_err(MAP_SESSIONS))?;
        let counters = PerCpuArray::try_from(take(MAP_COUNTERS)?).map_err(map_err(MAP_COUNTERS))?;
        let slot_counters =
            PerCpuArray::try_from(take(MAP_SLOT_COUNTERS)?).map_err(map_err(MAP_SLOT_COUNTERS))?;
        let initiations =
            RingBuf::try_from(take(MAP_INITIATIONS)?).map_err(map_err(MAP_INITIATIONS))?;
        let mut config: Array<MapData, HubConfig> =
            Array::try_from(take(MAP_CONFIG)?).map_err(map_err(MAP_CONFIG))?;
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
        let prog: &mut Xdp = ebpf
            .program_mut(PROG_RELAY)
            .ok_or(DatapathError::MissingMap(PROG_RELAY))?
            .try_into()?;
        prog.load()?;
        Ok(Self {
            endpoint_slots,
            slots,
            sessions,
            counters,
            slot_counters,
            initiations: Some(initiations),
            config,
            port,
            max_slots: cap.slots,
            mode: "detached",
            iface: String::new(),
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
        self.config
            .set(0, hub_config(self.port, v4, v6), 0)
            .map_err(map_err(MAP_CONFIG))
    }

    /// Attach to `iface`. The program stays attached until `self` drops.
    pub fn attach(&mut self, iface: &str, mode: AttachMode) -> Result<(), DatapathError> {
        let ifindex = nix::net::if_::if_nametoindex(iface)
            .map_err(|_| DatapathError::NoInterface(iface.to_string()))?;
        if let Some(id) = attached_program(ifindex) {
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
                Ok(_) => {
                    self.mode = name;
                    self.iface = iface.to_string();
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
            .and_then(attached_program)
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
                SpokeSlot {
                    endpoint: ep,
                    flags: SLOT_ACTIVE,
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

    /// All session entries (for expiry and the live-session gauge).
    pub fn sessions(&self) -> Vec<(SessionKey, SessionValue)> {
        self.sessions.iter().filter_map(Result::ok).collect()
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

    /// A slot's counters summed over CPUs (timestamps: the latest).
    pub fn slot_counters(&self, slot: u32) -> SlotCounters {
        let mut s = SlotCounters::default();
        if let Ok(values) = self.slot_counters.get(&slot, 0) {
            for c in values.iter() {
                s.rx_packets += c.rx_packets;
                s.rx_bytes += c.rx_bytes;
                s.tx_packets += c.tx_packets;
                s.tx_bytes += c.tx_bytes;
                s.rx_keepalives += c.rx_keepalives;
                s.hub_packets += c.hub_packets;
                s.hub_keepalives += c.hub_keepalives;
                s.last_rx_ns = s.last_rx_ns.max(c.last_rx_ns);
                s.last_keepalive_ns = s.last_keepalive_ns.max(c.last_keepalive_ns);
            }
        }
        s
    }
}

/// The [`HubConfig`] for `port` and the hub's addresses.
pub fn hub_config(port: u16, v4: Option<Ipv4Addr>, v6: Option<Ipv6Addr>) -> HubConfig {
    let mut c = HubConfig {
        port,
        ..Default::default()
    };
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

/// Id of the XDP program attached to `ifindex`, if any (any mode).
fn attached_program(ifindex: u32) -> Option<u32> {
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
        xdp.get("prog")
            .and_then(|p| p.get("id"))
            .or_else(|| {
                xdp.get("attached")?
                    .as_array()?
                    .first()?
                    .get("prog")?
                    .get("id")
            })
            .and_then(|v| v.as_u64())
            .map(|v| v as u32)
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

/// CLOCK_MONOTONIC in ns: the clock of `bpf_ktime_get_ns()`.
pub fn ktime_ns() -> u64 {
    let ts =
        nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC).expect("monotonic clock");
    ts.tv_sec() as u64 * 1_000_000_000 + ts.tv_nsec() as u64
}
