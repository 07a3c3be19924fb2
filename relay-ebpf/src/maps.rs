//! Map declarations. Names, key and value types come from `relay-common`;
//! the static names are the map names the loader looks up.

use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, LruHashMap, PerCpuArray, PerfEventArray, RingBuf},
};
use relay_common::{
    Endpoint, FallbackMeta, HubConfig, INITIATIONS_RING_BYTES, MAX_ENDPOINTS, MAX_MESH_PEERS,
    MAX_SESSIONS, MAX_SLOTS, MeshDrops, NEXTHOP_ENTRIES, NextHop, PROOFS_RING_BYTES, PassWindow,
    SOURCE_CACHE_ENTRIES, SessionKey, SessionValue, SlotCounters, SourceCache, SpokeSlot, counter,
};

/// Authenticated spoke endpoint -> slot.
#[map]
pub static ENDPOINT_SLOTS: HashMap<Endpoint, u32> = HashMap::with_max_entries(MAX_ENDPOINTS, 0);

/// Slot -> the spoke's current endpoint and flags.
#[map]
pub static SLOTS: Array<SpokeSlot> = Array::with_max_entries(MAX_SLOTS, 0);

/// (sender slot, receiver index) -> destination slot.
#[map]
pub static SESSIONS: LruHashMap<SessionKey, SessionValue> =
    LruHashMap::with_max_entries(MAX_SESSIONS, 0);

/// Index 0: the hub configuration.
#[map]
pub static CONFIG: Array<HubConfig> = Array::with_max_entries(1, 0);

/// Per slot, per CPU traffic counters.
#[map]
pub static SLOT_COUNTERS: PerCpuArray<SlotCounters> = PerCpuArray::with_max_entries(MAX_SLOTS, 0);

/// Global per CPU counters indexed by `relay_common::counter`.
#[map]
pub static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(counter::COUNT, 0);

/// Copies of initiations for the controller.
#[map]
pub static INITIATIONS: RingBuf = RingBuf::with_byte_size(INITIATIONS_RING_BYTES, 0);

/// Frames for the controller's userspace relay (one perf buffer per CPU).
#[map]
pub static FALLBACK: PerfEventArray<FallbackMeta> = PerfEventArray::new(0);

/// Per-CPU cache of source endpoint -> slot (see relay-common
/// `SourceCache`).
#[map]
pub static SOURCE_CACHE: PerCpuArray<SourceCache> =
    PerCpuArray::with_max_entries(SOURCE_CACHE_ENTRIES, 0);

/// Per-CPU next-hop cache (see relay-common `NextHop`).
#[map]
pub static NEXTHOPS: PerCpuArray<NextHop> = PerCpuArray::with_max_entries(NEXTHOP_ENTRIES, 0);

/// Source address -> initiations it passed to the stack this second (the
/// budget of `HubConfig::init_pass_per_sec`). LRU: a flood of fresh
/// addresses evicts old windows, never legitimate state.
#[map]
pub static INIT_BUDGET: LruHashMap<Endpoint, PassWindow> =
    LruHashMap::with_max_entries(MAX_ENDPOINTS, 0);

/// Frames from unknown sources for the controller's endpoint proofs.
#[map]
pub static PROOFS: RingBuf = RingBuf::with_byte_size(PROOFS_RING_BYTES, 0);

/// Source address -> proof reports this second (`PROOF_REPORTS_PER_SEC`).
#[map]
pub static PROOF_BUDGET: LruHashMap<Endpoint, PassWindow> =
    LruHashMap::with_max_entries(MAX_ENDPOINTS, 0);

/// Source address -> initiations copied to the controller this second
/// (`INITIATION_COPIES_PER_SEC`).
#[map]
pub static COPY_BUDGET: LruHashMap<Endpoint, PassWindow> =
    LruHashMap::with_max_entries(MAX_ENDPOINTS, 0);

/// Hub mesh: peer hub address (port 0) -> its index in `MESH_DROPS`.
#[map]
pub static MESH_HUBS: HashMap<Endpoint, u32> = HashMap::with_max_entries(MAX_MESH_PEERS, 0);

/// Hub mesh: per peer hub, per CPU, mesh frames dropped by reason.
#[map]
pub static MESH_DROPS: PerCpuArray<MeshDrops> = PerCpuArray::with_max_entries(MAX_MESH_PEERS, 0);
