//! BPF map names, sizes, keys and values.
//!
//! Slots: every registered spoke has a slot number (its registry id), stable
//! across restarts and independent of which hub serves it. Slot 0 is never
//! used so that a zeroed value can mean "none".

/// `HashMap<Endpoint, u32>`: authenticated spoke endpoint -> slot.
pub const MAP_ENDPOINT_SLOTS: &str = "ENDPOINT_SLOTS";
/// `Array<SpokeSlot>` indexed by slot: the spoke's current endpoint.
pub const MAP_SLOTS: &str = "SLOTS";
/// `LruHashMap<SessionKey, SessionValue>`: relay sessions.
pub const MAP_SESSIONS: &str = "SESSIONS";
/// `Array<HubConfig>` with one entry.
pub const MAP_CONFIG: &str = "CONFIG";
/// `PerCpuArray<SlotCounters>` indexed by slot.
pub const MAP_SLOT_COUNTERS: &str = "SLOT_COUNTERS";
/// `PerCpuArray<u64>` indexed by [`counter`] ids.
pub const MAP_COUNTERS: &str = "COUNTERS";
/// `RingBuf` of [`InitiationEvent`]s for the controller.
pub const MAP_INITIATIONS: &str = "INITIATIONS";
/// `PerfEventArray` of [`FallbackMeta`] + frame samples: frames the fast
/// path hands to the controller's userspace relay. Not pinned: its
/// entries are the reading process's perf buffers.
pub const MAP_FALLBACK: &str = "FALLBACK";

/// `PerCpuArray<NextHop>`: a per-CPU cache of `bpf_fib_lookup` results,
/// indexed by destination slot modulo [`NEXTHOP_ENTRIES`]. Not pinned.
pub const MAP_NEXTHOPS: &str = "NEXTHOPS";
/// Source address (an [`Endpoint`] with port 0) -> [`PassWindow`]: the
/// per-source budget of initiations passed to the hub's own WireGuard
/// (soft state, not pinned).
pub const MAP_INIT_BUDGET: &str = "INIT_BUDGET";
/// Source address (port 0) -> [`PassWindow`]: the per-source budget of
/// initiations copied to the controller (soft state, not pinned).
pub const MAP_COPY_BUDGET: &str = "COPY_BUDGET";
/// Hub mesh: a peer hub's address (an [`Endpoint`] with port 0) -> its
/// index in [`MAP_MESH_DROPS`] (1..[`MAX_MESH_PEERS`]), written by the
/// controller from the registry (soft state, not pinned).
pub const MAP_MESH_HUBS: &str = "MESH_HUBS";
/// `PerCpuArray<MeshDrops>` indexed by peer hub index (0: the source is no
/// registered hub): mesh frames dropped, by reason, per peer hub. Not
/// pinned: the controller assigns the indices at start.
pub const MAP_MESH_DROPS: &str = "MESH_DROPS";
/// Peer hubs with their own drop counters (more share index 0).
pub const MAX_MESH_PEERS: u32 = 64;
/// Initiations from one source address copied to the controller per
/// second. Far above what spokes send, even many behind one NAT address (a
/// rekey per peer per two minutes: 512/s is 60k peer sessions), and below
/// the flood shield's global rate, so a flood from a few addresses can
/// neither fill the ring nor put the whole hub under load: other spokes'
/// handshakes are routed at once, without waiting for a cookie round trip.
pub const INITIATION_COPIES_PER_SEC: u32 = 512;
/// `RingBuf` of [`ProofEvent`]s: frames from unknown sources that may
/// show a spoke's new endpoint (soft state, not pinned).
pub const MAP_PROOFS: &str = "PROOFS";
/// Source address (port 0) -> [`PassWindow`]: the per-source budget of
/// [`ProofEvent`]s (soft state, not pinned).
pub const MAP_PROOF_BUDGET: &str = "PROOF_BUDGET";
/// [`ProofEvent`]s one source address may cause per second. A roaming
/// spoke needs one; the rest only bounds what strangers cost the
/// controller.
pub const PROOF_REPORTS_PER_SEC: u32 = 8;
pub const PROOFS_RING_BYTES: u32 = 64 * 1024;
/// `PerCpuArray<SourceCache>`: a per-CPU cache of [`MAP_ENDPOINT_SLOTS`]
/// lookups, indexed by a hash of the source endpoint. Not pinned.
pub const MAP_SOURCE_CACHE: &str = "SOURCE_CACHE";
/// Entries of [`MAP_SOURCE_CACHE`] per CPU (direct-mapped, as the next-hop
/// cache).
pub const SOURCE_CACHE_ENTRIES: u32 = 4096;
/// A cached source slot is used for this long, then looked up again.
pub const SOURCE_CACHE_TTL_NS: u64 = 1_000_000_000;
/// A cached "no spoke has this endpoint" is used for this long. The
/// controller empties an endpoint's entries when it installs the endpoint
/// ([`source_cache_index`]), so this only bounds a race with that.
pub const SOURCE_CACHE_STRANGER_TTL_NS: u64 = 10_000_000;

/// The [`MAP_SOURCE_CACHE`] entry of `ep`: its five words (as they lie in
/// memory) folded and spread by a multiplicative hash. The XDP program and
/// the controller (which empties entries) must agree on it.
pub const fn source_cache_index(ep: &Endpoint) -> u32 {
    source_cache_index_of(ep.words())
}

/// [`source_cache_index`] of an endpoint's [`Endpoint::words`].
pub const fn source_cache_index_of(w: [u32; 5]) -> u32 {
    let x = w[0] ^ w[1] ^ w[2] ^ w[3] ^ w[4];
    x.wrapping_mul(0x9e37_79b1) >> (32 - SOURCE_CACHE_ENTRIES.trailing_zeros())
}
/// Entries of [`MAP_NEXTHOPS`] per CPU (direct-mapped: slots that share an
/// entry evict each other, which only costs a lookup).
pub const NEXTHOP_ENTRIES: u32 = 1024;
/// A cached next hop is used for this long, then looked up again (route
/// and neighbour changes take effect within this time).
pub const NEXTHOP_TTL_NS: u64 = 1_000_000_000;

/// Name of the relay XDP program in the object file.
pub const PROG_RELAY: &str = "relay";
/// A program that only returns XDP_PASS: attached to the peer of a veth so
/// that XDP_TX frames are delivered (tests and benchmarks).
pub const PROG_PASS: &str = "xdp_pass";

/// Default capacities; the loader may override them.
pub const MAX_SLOTS: u32 = 16384;
pub const MAX_ENDPOINTS: u32 = 16384;
pub const MAX_SESSIONS: u32 = 131072;
pub const INITIATIONS_RING_BYTES: u32 = 256 * 1024;
/// Pages per CPU of the fallback perf buffers (a power of two): 128 x 4 KiB
/// holds ~350 full-size frames per CPU between two reads (iperf3 through
/// the fallback on the 2-core test VM overflowed 64 pages for 0.3% of its
/// frames).
pub const FALLBACK_PAGES_PER_CPU: usize = 128;

/// "No slot": an unknown source.
pub const NO_SLOT: u32 = u32::MAX;

pub const FAMILY_V4: u8 = 4;
pub const FAMILY_V6: u8 = 6;

/// An IPv4 or IPv6 UDP endpoint. IPv4 addresses sit in `addr[0..4]`, the
/// rest zero, so one key type serves both families.
///
/// Aligned to 4 (the layout is the same: 20 bytes, no padding) so that the
/// XDP program may move it in 32-bit words on its stack, where the verifier
/// rejects misaligned access.
#[repr(C, align(4))]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct Endpoint {
    /// Network byte order.
    pub addr: [u8; 16],
    /// Host byte order.
    pub port: u16,
    /// [`FAMILY_V4`], [`FAMILY_V6`], or 0 for "unset".
    pub family: u8,
    pub _pad: u8,
}

impl Endpoint {
    pub const fn v4(addr: [u8; 4], port: u16) -> Self {
        let mut a = [0u8; 16];
        a[0] = addr[0];
        a[1] = addr[1];
        a[2] = addr[2];
        a[3] = addr[3];
        Self {
            addr: a,
            port,
            family: FAMILY_V4,
            _pad: 0,
        }
    }

    pub const fn v6(addr: [u8; 16], port: u16) -> Self {
        Self {
            addr,
            port,
            family: FAMILY_V6,
            _pad: 0,
        }
    }

    /// The 20 bytes as five words, as they lie in memory (the XDP program
    /// reads them so).
    pub const fn words(&self) -> [u32; 5] {
        let a = &self.addr;
        let p = self.port.to_ne_bytes();
        [
            u32::from_ne_bytes([a[0], a[1], a[2], a[3]]),
            u32::from_ne_bytes([a[4], a[5], a[6], a[7]]),
            u32::from_ne_bytes([a[8], a[9], a[10], a[11]]),
            u32::from_ne_bytes([a[12], a[13], a[14], a[15]]),
            u32::from_ne_bytes([p[0], p[1], self.family, self._pad]),
        ]
    }

    pub const fn is_set(&self) -> bool {
        self.family != 0
    }
}

/// Value of [`MAP_SLOTS`].
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct SpokeSlot {
    pub endpoint: Endpoint,
    /// `SLOT_ACTIVE` when the spoke may send and receive relayed frames.
    pub flags: u32,
}

pub const SLOT_ACTIVE: u32 = 1;
/// Hub mesh: the spoke is homed on a peer hub, and the slot's endpoint is
/// that hub's address and the spoke's mesh port there. Frames to it leave
/// from this hub's mesh port of their source spoke; frames from it arrive
/// on a mesh port.
pub const SLOT_REMOTE: u32 = 2;
/// Hub mesh: bits 16.. of a slot's flags. A local spoke's: its mesh
/// index, so its frames to a peer hub leave from port `mesh_base + index`
/// (which names it there). A remote spoke's: its home hub's index in
/// [`MAP_MESH_DROPS`] (0: none), so drops count per peer hub without a
/// lookup.
pub const SLOT_MESH_SHIFT: u32 = 16;

/// Bits 16.. of a slot's flags (see [`SLOT_MESH_SHIFT`]).
pub const fn slot_mesh(flags: u32) -> u32 {
    flags >> SLOT_MESH_SHIFT
}

/// Value of [`MAP_MESH_DROPS`]: mesh frames dropped for one peer hub.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct MeshDrops {
    /// To a mesh port from the hub's address, but not from the mesh port of
    /// a spoke homed there (`drop_mesh_source`).
    pub source: u64,
    /// From a spoke homed there to one homed on a third hub
    /// (`drop_mesh_transit`).
    pub transit: u64,
    /// From a spoke homed there, with no relay session
    /// (`drop_mesh_no_session`).
    pub no_session: u64,
}

impl MeshDrops {
    /// Add another CPU's values.
    pub fn accumulate(&mut self, o: &MeshDrops) {
        self.source += o.source;
        self.transit += o.transit;
        self.no_session += o.no_session;
    }
}

/// The mesh port of `slot` on a hub whose mesh ports start at `base`
/// (`None`: past the port range, or no mesh).
pub const fn mesh_port(base: u16, slot: u32) -> Option<u16> {
    if base == 0 || slot > (u16::MAX - base) as u32 {
        return None;
    }
    Some(base + slot as u16)
}

/// The slot a mesh port names on a hub whose mesh ports start at `base`
/// and whose hub port is `hub_port` (`None`: not a mesh port).
pub const fn mesh_slot(base: u16, hub_port: u16, port: u16) -> Option<u32> {
    if base == 0 || port < base || port == hub_port {
        return None;
    }
    Some((port - base) as u32)
}

/// Key of [`MAP_SESSIONS`]: who sent the frame and the receiver index in
/// it. Indices are unique only per receiving host, so the sender is part
/// of the key.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct SessionKey {
    pub src_slot: u32,
    /// As read from the frame (little-endian on the wire, host u32 here).
    pub receiver: u32,
}

/// Value of [`MAP_SESSIONS`].
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct SessionValue {
    pub dst_slot: u32,
    /// `SESSION_*` bits.
    pub flags: u32,
    /// `bpf_ktime_get_coarse_ns()` when a frame last used the entry (refreshed at
    /// most about once a second to keep the cache line quiet).
    pub last_seen_ns: u64,
}

/// Installed by the controller when it routed an initiation.
pub const SESSION_FROM_INITIATION: u32 = 1;
/// Learned by the XDP program from a relayed response.
pub const SESSION_FROM_RESPONSE: u32 = 2;

/// Value of [`MAP_CONFIG`] (index 0).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct HubConfig {
    /// The hub's UDP port, host byte order. 0 = not configured: pass all.
    pub port: u16,
    /// Hub mesh: the first mesh port (host order); 0 = no mesh. Peer hubs
    /// send a spoke's frames to port `mesh_base + slot` of its home hub,
    /// and this hub sends a local spoke's frames to a remote one from port
    /// `mesh_base + source slot` (see [`SLOT_REMOTE`]).
    pub mesh_base: u16,
    /// `HUB_V4_SET` / `HUB_V6_SET`: which of the addresses below are set.
    pub flags: u32,
    /// The hub's IPv4 address (network order): the source of frames relayed
    /// from an IPv6 spoke to an IPv4 spoke.
    pub hub_v4: [u8; 4],
    /// The hub's IPv6 address (network order): the source of frames relayed
    /// from an IPv4 spoke to an IPv6 spoke.
    pub hub_v6: [u8; 16],
    /// Initiations per second one source address may pass to the hub's own
    /// WireGuard (every one is still copied to the controller); the rest
    /// are dropped. 0 = no limit.
    pub init_pass_per_sec: u32,
}

/// Value of [`MAP_INIT_BUDGET`]: initiations one source address passed to
/// the stack in the second that began at `start_ns`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct PassWindow {
    /// `bpf_ktime_get_coarse_ns()` when the window began.
    pub start_ns: u64,
    pub count: u32,
    pub _pad: u32,
}

/// [`HubConfig::hub_v4`] is set: IPv6 -> IPv4 relay is possible.
pub const HUB_V4_SET: u32 = 1;
/// [`HubConfig::hub_v6`] is set: IPv4 -> IPv6 relay is possible.
pub const HUB_V6_SET: u32 = 2;
/// Cross-family frames always take the userspace fallback
/// (`--cross-family-path userspace`): for NICs whose drivers mishandle
/// `bpf_xdp_adjust_head`, and for testing the fallback.
pub const CROSS_VIA_USERSPACE: u32 = 4;

/// Value of [`MAP_SLOT_COUNTERS`], per CPU. "rx" = from the spoke, "tx" =
/// relayed to the spoke. Bytes are UDP payload bytes (the WireGuard
/// message), the same for both address families.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct SlotCounters {
    pub rx_packets: u64,
    pub rx_bytes: u64,
    pub tx_packets: u64,
    pub tx_bytes: u64,
    /// Keepalives from this spoke relayed to another spoke.
    pub rx_keepalives: u64,
    /// Frames from this spoke passed to the hub's own WireGuard.
    pub hub_packets: u64,
    /// Keepalives from this spoke to the hub's own WireGuard.
    pub hub_keepalives: u64,
    /// `bpf_ktime_get_coarse_ns()` of the last frame from this spoke.
    pub last_rx_ns: u64,
    /// `bpf_ktime_get_coarse_ns()` of the last keepalive from this spoke.
    pub last_keepalive_ns: u64,
}

impl SlotCounters {
    /// Add another CPU's values: counts are summed, timestamps take the
    /// latest.
    pub fn accumulate(&mut self, o: &SlotCounters) {
        self.rx_packets += o.rx_packets;
        self.rx_bytes += o.rx_bytes;
        self.tx_packets += o.tx_packets;
        self.tx_bytes += o.tx_bytes;
        self.rx_keepalives += o.rx_keepalives;
        self.hub_packets += o.hub_packets;
        self.hub_keepalives += o.hub_keepalives;
        self.last_rx_ns = self.last_rx_ns.max(o.last_rx_ns);
        self.last_keepalive_ns = self.last_keepalive_ns.max(o.last_keepalive_ns);
    }
}

/// Indices of [`MAP_COUNTERS`], their metric labels and, for frames the
/// hub does not relay, the drop reason they count under: one row per
/// counter, so the kernel side, the metrics and the tests cannot drift.
pub mod counter {
    /// One row per counter: `NAME = "event label"` (the `event` label of
    /// `relayhub_xdp_events_total`), then `drop "reason"` for counters that
    /// are also a `reason` of `relayhub_dropped_frames_total{stage="xdp"}`.
    /// Indices follow the order of the rows.
    macro_rules! counters {
        ($($(#[$doc:meta])* $name:ident = $label:literal $(drop $reason:literal)?;)*) => {
            #[allow(non_camel_case_types, clippy::upper_case_acronyms)]
            #[repr(u32)]
            enum Index { $($name,)* __COUNT }
            $($(#[$doc])* pub const $name: u32 = Index::$name as u32;)*
            /// Number of counters.
            pub const COUNT: u32 = Index::__COUNT as u32;
            /// Metric label for each counter index.
            pub const NAMES: [&str; COUNT as usize] = [$($label),*];
            /// Drop reason for each counter index (None: not a drop).
            pub const DROP_REASONS: [Option<&str>; COUNT as usize] = [$(counters!(@reason $($reason)?)),*];
        };
        (@reason) => { None };
        (@reason $r:literal) => { Some($r) };
    }

    counters! {
        /// UDP frames to the hub port that the program looked at.
        SEEN = "seen";
        RELAYED_PACKETS = "relayed_packets";
        /// UDP payload bytes relayed.
        RELAYED_BYTES = "relayed_bytes";
        RELAYED_TRANSPORT = "relayed_transport";
        RELAYED_RESPONSE = "relayed_response";
        RELAYED_COOKIE = "relayed_cookie";
        RELAYED_KEEPALIVES = "relayed_keepalives";
        /// A relayed response taught the reverse session entry.
        RESPONSE_LEARNED = "response_learned";
        /// Initiations copied to the controller.
        INITIATIONS_QUEUED = "initiations_queued";
        /// Initiations not copied because the ring buffer was full.
        INITIATIONS_RING_FULL = "initiations_ring_full" drop "ring_full";
        /// Passed: source is not an authenticated spoke endpoint.
        PASS_UNKNOWN_SOURCE = "pass_unknown_source" drop "unknown_source";
        /// Passed: no relay session (the hub's own WireGuard session).
        PASS_NO_SESSION = "pass_no_session";
        /// Passed: not a well-formed WireGuard message.
        PASS_MALFORMED = "pass_malformed" drop "malformed";
        /// Passed: IP options, fragments or IPv6 extension headers.
        PASS_UNSUPPORTED = "pass_unsupported" drop "unsupported";
        /// Dropped: session points at a spoke without a current endpoint.
        DROP_NO_DESTINATION = "drop_no_destination" drop "no_destination";
        /// Dropped: no route or neighbour for the destination.
        DROP_NO_ROUTE = "drop_no_route" drop "no_route";
        /// Dropped: session would send the frame back to its sender.
        DROP_LOOP = "drop_loop" drop "loop";
        /// bpf_fib_lookup said forwarding is disabled; frame sent back to the
        /// L2 neighbour it came from.
        FIB_FALLBACK = "fib_fallback";
        /// Passed: cross-family relay (IPv4 <-> IPv6) to a family in which the
        /// hub has no address configured (see `HubConfig::flags`).
        PASS_CROSS_FAMILY = "pass_cross_family" drop "cross_family";
        /// Passed to the hub's own WireGuard, by message type (responses and
        /// cookie replies addressed to the hub's handshakes).
        HUB_RESPONSE = "hub_response";
        HUB_COOKIE = "hub_cookie";
        /// Relayed packets by (source spoke family -> destination spoke family).
        RELAYED_V4_TO_V4 = "relayed_v4_to_v4";
        RELAYED_V4_TO_V6 = "relayed_v4_to_v6";
        RELAYED_V6_TO_V4 = "relayed_v6_to_v4";
        RELAYED_V6_TO_V6 = "relayed_v6_to_v6";
        /// A cross-family relay needed bpf_xdp_adjust_head and the driver
        /// refused it: the frame took the userspace fallback.
        ADJUST_HEAD_FAILED = "adjust_head_failed";
        /// IPv4 -> IPv6 relay of a frame without UDP checksum (IPv6 needs one;
        /// the fast path does not sum payloads): the frame took the userspace
        /// fallback.
        NO_CHECKSUM = "no_checksum";
        /// Dropped: the frame does not fit the outgoing MTU (bpf_fib_lookup
        /// FRAG_NEEDED; an IPv4 frame grows by 20 bytes as IPv6).
        DROP_TOO_BIG = "drop_too_big" drop "too_big";
        /// Passed: to the hub port but not to the hub's address (the hub only
        /// routes it); relaying it would send frames from a foreign source.
        PASS_NOT_FOR_HUB = "pass_not_for_hub" drop "not_for_hub";
        /// Frames handed to the controller's userspace relay (cross-family
        /// frames the fast path cannot rebuild, see [`super::FallbackMeta`]).
        USERSPACE_FALLBACK = "userspace_fallback";
        /// Dropped: the userspace fallback had no room (perf buffer full or no
        /// reader).
        DROP_FALLBACK_FULL = "drop_fallback_full" drop "fallback_full";
        /// A relayed response's sender index is the receiver index of another
        /// pair's live session from the same initiator: not learned (the
        /// response itself is relayed).
        LEARN_CONFLICT = "learn_conflict";
        /// Initiations over their source address's budget
        /// ([`super::HubConfig::init_pass_per_sec`]): copied to the controller,
        /// not passed to the hub's own WireGuard.
        INITIATIONS_NOT_PASSED = "initiations_not_passed" drop "initiation_budget";
        /// Frames from unknown sources reported to the controller as
        /// possible evidence of a moved endpoint ([`super::ProofEvent`]).
        PROOF_REPORTED = "proof_reported";
        /// Not reported: the proof ring buffer was full.
        PROOF_RING_FULL = "proof_ring_full";
        /// Initiations over their source address's copy budget
        /// ([`super::INITIATION_COPIES_PER_SEC`]): not copied to the
        /// controller (the frame itself goes on as any initiation).
        INITIATIONS_NOT_COPIED = "initiations_not_copied";
        /// Dropped: a frame to a mesh port whose source is not the endpoint
        /// of a spoke homed on a peer hub (mesh frames are accepted only
        /// from registered hub addresses).
        DROP_MESH_SOURCE = "drop_mesh_source" drop "mesh_source";
        /// Dropped: a frame from a remote spoke to another remote spoke (a
        /// frame crosses at most its two spokes' home hubs).
        DROP_MESH_TRANSIT = "drop_mesh_transit" drop "mesh_transit";
        /// Dropped: a frame from a peer hub with no relay session (nothing
        /// on a mesh port is for this hub's own WireGuard).
        DROP_MESH_NO_SESSION = "drop_mesh_no_session" drop "mesh_no_session";
        /// Relayed frames that arrived from a peer hub / left for one.
        MESH_IN = "mesh_in";
        MESH_OUT = "mesh_out";
        /// Dropped: a frame towards a spoke homed on a peer hub from a
        /// spoke that has no mesh port here (not homed on this hub).
        DROP_MESH_UNHOMED = "drop_mesh_unhomed" drop "mesh_unhomed";
    }

    /// The `RELAYED_*_TO_*` counter of a relay from `from` to `to`
    /// (`FAMILY_V4` / `FAMILY_V6`).
    pub const fn relayed_family(from: u8, to: u8) -> u32 {
        let f = (from == crate::FAMILY_V6) as u32;
        let t = (to == crate::FAMILY_V6) as u32;
        RELAYED_V4_TO_V4 + 2 * f + t
    }
}

/// Value of [`MAP_NEXTHOPS`]: where frames to `dst` went when they came in
/// on `in_ifindex`. Valid while `stamp_ns` is younger than
/// [`NEXTHOP_TTL_NS`], for IP packets of at most `max_len` bytes (the MTU
/// check of the lookup that filled it).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct NextHop {
    /// `bpf_ktime_get_coarse_ns()` of the lookup; 0 = empty.
    pub stamp_ns: u64,
    /// Destination address (IPv4 in the first 4 bytes).
    pub dst: [u8; 16],
    pub in_ifindex: u32,
    pub out_ifindex: u32,
    pub max_len: u16,
    /// `FAMILY_V4` / `FAMILY_V6`.
    pub family: u8,
    pub _pad: u8,
    pub dmac: [u8; 6],
    pub smac: [u8; 6],
}

/// Value of [`MAP_SOURCE_CACHE`]: frames from `endpoint` came from `slot`
/// (or from no spoke: [`NO_SLOT`]), as `ENDPOINT_SLOTS` said at
/// `stamp_ns`. A spoke hit still needs the slot active with that very
/// endpoint in `SLOTS`, so a spoke that moved or left stops matching at
/// once; only an endpoint handed from one slot to another while the first
/// still names it (a NAT reusing a mapping) can be seen as the old slot's,
/// for at most [`SOURCE_CACHE_TTL_NS`]. A stranger entry holds for
/// [`SOURCE_CACHE_STRANGER_TTL_NS`] and remembers until when the address's
/// proof-report budget is spent, so a flood from one address costs neither
/// hash lookup.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct SourceCache {
    /// `bpf_ktime_get_coarse_ns()` of the lookup; 0 = empty.
    pub stamp_ns: u64,
    /// Strangers: no proof reports before this (the budget's window end).
    pub quiet_until_ns: u64,
    pub endpoint: Endpoint,
    pub slot: u32,
}

/// Ring buffer record: a copy of an initiation for the controller.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct InitiationEvent {
    /// Where it came from.
    pub src: Endpoint,
    /// The hub address and port it was sent to.
    pub dst: Endpoint,
    /// The sender's slot as the XDP program saw it, or [`NO_SLOT`].
    pub src_slot: u32,
    pub ifindex: u32,
    pub frame: [u8; crate::wire::INITIATION_LEN],
}

/// Ring buffer record: the start of a frame from a source that is not an
/// authenticated spoke endpoint, for the controller to prove a moved
/// endpoint (transport frames: the header names the receiver's session;
/// responses: the whole message, which may answer the hub's probe).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ProofEvent {
    pub src: Endpoint,
    /// The hub address and port it was sent to.
    pub dst: Endpoint,
    /// WireGuard message length (may exceed `frame`).
    pub len: u32,
    /// The first `min(len, RESPONSE_LEN)` bytes of the message.
    pub frame: [u8; crate::wire::RESPONSE_LEN],
}

/// Perf sample header of the userspace fallback; the frame as received
/// (Ethernet header first, `frame_len` bytes) follows it in the sample.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct FallbackMeta {
    /// The destination spoke's endpoint when the frame was taken.
    pub dst: Endpoint,
    /// Why (a [`counter`] index): `ADJUST_HEAD_FAILED`, `NO_CHECKSUM`, or
    /// `USERSPACE_FALLBACK` when [`CROSS_VIA_USERSPACE`] is set.
    pub reason: u32,
    /// Bytes of frame after this header.
    pub frame_len: u32,
}

#[cfg(feature = "user")]
mod pod {
    use super::*;
    // SAFETY: all are repr(C), made of integers and byte arrays, with no
    // implicit padding (checked by the size assertions below).
    unsafe impl aya::Pod for Endpoint {}
    unsafe impl aya::Pod for SpokeSlot {}
    unsafe impl aya::Pod for SessionKey {}
    unsafe impl aya::Pod for SessionValue {}
    unsafe impl aya::Pod for HubConfig {}
    unsafe impl aya::Pod for PassWindow {}
    unsafe impl aya::Pod for SlotCounters {}
    unsafe impl aya::Pod for MeshDrops {}
    unsafe impl aya::Pod for SourceCache {}
}

const _: () = {
    assert!(core::mem::size_of::<Endpoint>() == 20);
    assert!(core::mem::size_of::<SpokeSlot>() == 24);
    assert!(core::mem::size_of::<SessionKey>() == 8);
    assert!(core::mem::size_of::<SessionValue>() == 16);
    assert!(core::mem::size_of::<HubConfig>() == 32);
    assert!(core::mem::size_of::<PassWindow>() == 16);
    assert!(core::mem::size_of::<SlotCounters>() == 72);
    assert!(core::mem::size_of::<MeshDrops>() == 24);
    assert!(core::mem::size_of::<InitiationEvent>() == 20 + 20 + 4 + 4 + 148);
    assert!(core::mem::size_of::<FallbackMeta>() == 28);
    assert!(core::mem::size_of::<ProofEvent>() == 20 + 20 + 4 + 92);
    assert!(core::mem::size_of::<NextHop>() == 48);
    assert!(core::mem::size_of::<SourceCache>() == 40);
};

#[cfg(test)]
mod tests {
    use super::*;

    /// The controller computes entries with `words`; the XDP program reads
    /// the key's memory.
    #[test]
    fn endpoint_words_are_its_memory() {
        for ep in [
            Endpoint::v4([203, 0, 113, 10], 40000),
            Endpoint::v6(
                [
                    0x20, 0x01, 0x0d, 0xb8, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0, 0xff, 0xfe,
                ],
                51820,
            ),
        ] {
            // SAFETY: Endpoint is 20 bytes of plain data, no padding.
            let mem: [u32; 5] = unsafe { core::mem::transmute(ep) };
            assert_eq!(ep.words(), mem);
            assert!(source_cache_index(&ep) < SOURCE_CACHE_ENTRIES);
        }
    }
}
