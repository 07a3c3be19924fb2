//! The relay program in the kernel without a NIC: relay_user::EBPF_OBJECT
//! loaded (verifier included) with its maps, run on frames with
//! BPF_PROG_TEST_RUN, and its counters read back.

use std::collections::BTreeMap;

use aya::{
    Ebpf, EbpfLoader, TestRun, TestRunOptions,
    maps::{Array, HashMap, MapData, MapError, PerCpuArray, PerCpuValues, RingBuf},
    programs::{ProgramError, Xdp},
};
use relay_common::{
    Endpoint, HubConfig, InitiationEvent, MAP_CONFIG, MAP_COPY_BUDGET, MAP_COUNTERS,
    MAP_ENDPOINT_SLOTS, MAP_INITIATIONS, MAP_MESH_DROPS, MAP_MESH_HUBS, MAP_PROOF_BUDGET,
    MAP_PROOFS, MAP_SESSIONS, MAP_SLOT_COUNTERS, MAP_SLOTS, MAP_SOURCE_CACHE, MeshDrops,
    PROG_RELAY, PassWindow, ProofEvent, SLOT_ACTIVE, SessionKey, SessionValue, SlotCounters,
    SourceCache, SpokeSlot, counter, source_cache_index,
};

pub const XDP_ABORTED: u32 = 0;
pub const XDP_DROP: u32 = 1;
pub const XDP_PASS: u32 = 2;
pub const XDP_TX: u32 = 3;
pub const XDP_REDIRECT: u32 = 4;

/// A slot's counts without its timestamps (what a case expects to change).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SlotDelta {
    pub rx_packets: u64,
    pub rx_bytes: u64,
    pub tx_packets: u64,
    pub tx_bytes: u64,
    pub rx_keepalives: u64,
    pub hub_packets: u64,
    pub hub_keepalives: u64,
}

impl SlotDelta {
    /// What changed since `before` (counters only grow).
    pub fn since(&self, before: &SlotDelta) -> SlotDelta {
        SlotDelta {
            rx_packets: self.rx_packets - before.rx_packets,
            rx_bytes: self.rx_bytes - before.rx_bytes,
            tx_packets: self.tx_packets - before.tx_packets,
            tx_bytes: self.tx_bytes - before.tx_bytes,
            rx_keepalives: self.rx_keepalives - before.rx_keepalives,
            hub_packets: self.hub_packets - before.hub_packets,
            hub_keepalives: self.hub_keepalives - before.hub_keepalives,
        }
    }
}

/// A slot's per-CPU values summed ([`SlotCounters::accumulate`]): the
/// counts, `last_rx_ns` and `last_keepalive_ns`.
pub fn slot_totals<'a>(
    per_cpu: impl IntoIterator<Item = &'a SlotCounters>,
) -> (SlotDelta, u64, u64) {
    let mut c = SlotCounters::default();
    for v in per_cpu {
        c.accumulate(v);
    }
    let d = SlotDelta {
        rx_packets: c.rx_packets,
        rx_bytes: c.rx_bytes,
        tx_packets: c.tx_packets,
        tx_bytes: c.tx_bytes,
        rx_keepalives: c.rx_keepalives,
        hub_packets: c.hub_packets,
        hub_keepalives: c.hub_keepalives,
    };
    (d, c.last_rx_ns, c.last_keepalive_ns)
}

/// CLOCK_MONOTONIC_COARSE in ns: the clock of bpf_ktime_get_coarse_ns.
pub fn ktime_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid out pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC_COARSE, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Lift RLIMIT_MEMLOCK; EPERM is fine here (memcg accounting).
pub fn raise_memlock() {
    let lim = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: plain syscall with a valid pointer.
    unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &lim) };
}

/// Pin this thread to CPU 0: per-CPU maps (the program's caches) are
/// filled and read on the CPU a test run executes on.
pub fn pin_to_cpu0() {
    // SAFETY: plain syscalls on this thread's own affinity mask.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(0, &mut set);
        assert_eq!(
            libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set),
            0,
            "pin to CPU 0"
        );
    }
}

/// An empty source-cache entry for every CPU.
fn empty_source_entries() -> Result<PerCpuValues<SourceCache>, MapError> {
    let ncpus = aya::util::nr_cpus().map_err(|(_, e)| MapError::IoError(e))?;
    PerCpuValues::try_from(vec![SourceCache::default(); ncpus]).map_err(MapError::IoError)
}

/// The control maps the controller fills (endpoints, slots, sessions,
/// config), taken out of a loaded object.
pub struct RelayMaps {
    pub endpoint_slots: HashMap<MapData, Endpoint, u32>,
    /// Absent from objects built before the source cache (`--object`).
    pub source_cache: Option<PerCpuArray<MapData, SourceCache>>,
    pub slots: Array<MapData, SpokeSlot>,
    pub sessions: HashMap<MapData, SessionKey, SessionValue>,
    pub config: Array<MapData, HubConfig>,
}

impl RelayMaps {
    pub fn take(ebpf: &mut Ebpf) -> anyhow::Result<Self> {
        let source_cache = match ebpf.take_map(MAP_SOURCE_CACHE) {
            Some(m) => Some(PerCpuArray::try_from(m)?),
            None => None,
        };
        let mut take = |n: &str| {
            ebpf.take_map(n)
                .ok_or_else(|| anyhow::anyhow!("map {n} missing"))
        };
        Ok(Self {
            source_cache,
            endpoint_slots: HashMap::try_from(take(MAP_ENDPOINT_SLOTS)?)?,
            slots: Array::try_from(take(MAP_SLOTS)?)?,
            sessions: HashMap::try_from(take(MAP_SESSIONS)?)?,
            config: Array::try_from(take(MAP_CONFIG)?)?,
        })
    }

    /// The hub port, nothing else configured.
    pub fn set_port(&mut self, port: u16) -> Result<(), MapError> {
        self.config.set(
            0,
            HubConfig {
                port,
                ..Default::default()
            },
            0,
        )
    }

    /// Empty every source-cache entry on every CPU.
    pub fn clear_source_cache(&mut self) -> Result<(), MapError> {
        let Some(cache) = self.source_cache.as_mut() else {
            return Ok(());
        };
        for i in 0..relay_common::SOURCE_CACHE_ENTRIES {
            cache.set(i, empty_source_entries()?, 0)?;
        }
        Ok(())
    }

    /// Empty `ep`'s source-cache entry on every CPU, as the controller
    /// does when it installs an endpoint.
    pub fn forget_source(&mut self, ep: &Endpoint) -> Result<(), MapError> {
        let Some(cache) = self.source_cache.as_mut() else {
            return Ok(());
        };
        cache.set(source_cache_index(ep), empty_source_entries()?, 0)
    }

    /// Slot `slot` with endpoint `ep` (also indexed in ENDPOINT_SLOTS).
    pub fn set_spoke(&mut self, slot: u32, ep: Endpoint, active: bool) -> Result<(), MapError> {
        self.endpoint_slots.insert(ep, slot, 0)?;
        self.forget_source(&ep)?;
        self.set_slot(slot, ep, active)
    }

    /// [`Harness::set_spoke`] with explicit slot flags (`SLOT_REMOTE` for a
    /// spoke homed on a peer hub).
    pub fn set_spoke_flags(&mut self, slot: u32, ep: Endpoint, flags: u32) -> Result<(), MapError> {
        self.endpoint_slots.insert(ep, slot, 0)?;
        self.forget_source(&ep)?;
        self.slots.set(
            slot,
            SpokeSlot {
                endpoint: ep,
                flags,
            },
            0,
        )
    }

    /// Slot `slot` only (not indexed by its endpoint).
    pub fn set_slot(
        &mut self,
        slot: u32,
        endpoint: Endpoint,
        active: bool,
    ) -> Result<(), MapError> {
        self.slots.set(
            slot,
            SpokeSlot {
                endpoint,
                flags: if active { SLOT_ACTIVE } else { 0 },
            },
            0,
        )
    }

    /// Session (`src_slot`, `receiver`) -> `dst_slot`.
    pub fn set_session(
        &mut self,
        src_slot: u32,
        receiver: u32,
        dst_slot: u32,
        flags: u32,
        last_seen_ns: u64,
    ) -> Result<(), MapError> {
        self.sessions.insert(
            SessionKey { src_slot, receiver },
            SessionValue {
                dst_slot,
                flags,
                last_seen_ns,
            },
            0,
        )
    }

    pub fn session(&self, src_slot: u32, receiver: u32) -> Option<SessionValue> {
        self.sessions
            .get(&SessionKey { src_slot, receiver }, 0)
            .ok()
    }

    /// Every session entry.
    pub fn session_entries(&self) -> Vec<(SessionKey, SessionValue)> {
        self.sessions.iter().map(|r| r.expect("iterate")).collect()
    }

    /// The session table as (src_slot, receiver) -> (dst_slot, flags).
    pub fn session_table(&self) -> BTreeMap<(u32, u32), (u32, u32)> {
        self.sessions
            .iter()
            .map(|r| {
                let (k, v) = r.expect("session entry");
                ((k.src_slot, k.receiver), (v.dst_slot, v.flags))
            })
            .collect()
    }
}

/// The `struct xdp_md` context of a test run: data, data_end, data_meta,
/// ingress_ifindex, rx_queue_index, egress_ifindex.
pub fn xdp_md(frame_len: usize, ingress_ifindex: u32) -> [u8; 24] {
    let md: [u32; 6] = [0, frame_len as u32, 0, ingress_ifindex, 0, 0];
    let mut ctx = [0u8; 24];
    for (i, w) in md.iter().enumerate() {
        ctx[4 * i..4 * i + 4].copy_from_slice(&w.to_ne_bytes());
    }
    ctx
}

/// The relay program, verified, with its maps, run with ingress
/// `ifindex`. Fields are public for what a test does beyond the helpers.
pub struct Harness {
    pub ebpf: Ebpf,
    pub maps: RelayMaps,
    pub counters: PerCpuArray<MapData, u64>,
    pub slot_counters: PerCpuArray<MapData, SlotCounters>,
    pub initiations: RingBuf<MapData>,
    pub proofs: RingBuf<MapData>,
    pub proof_budget: HashMap<MapData, Endpoint, PassWindow>,
    pub copy_budget: HashMap<MapData, Endpoint, PassWindow>,
    pub mesh_hubs: HashMap<MapData, Endpoint, u32>,
    pub mesh_drops: PerCpuArray<MapData, MeshDrops>,
    pub ifindex: u32,
    out: Vec<u8>,
}

impl std::ops::Deref for Harness {
    type Target = RelayMaps;
    fn deref(&self) -> &RelayMaps {
        &self.maps
    }
}

impl std::ops::DerefMut for Harness {
    fn deref_mut(&mut self) -> &mut RelayMaps {
        &mut self.maps
    }
}

impl Harness {
    /// relay_user::EBPF_OBJECT, maps at their default sizes.
    pub fn load(ifindex: u32) -> Self {
        Self::load_with(ifindex, |_| {})
    }

    /// relay_user::EBPF_OBJECT with the loader adjusted by `configure`
    /// (map sizes); panics unless the verifier accepts the program.
    pub fn load_with(ifindex: u32, configure: impl FnOnce(&mut EbpfLoader)) -> Self {
        raise_memlock();
        let mut loader = EbpfLoader::new();
        configure(&mut loader);
        let mut ebpf = loader.load(relay_user::EBPF_OBJECT).expect("load object");
        let prog: &mut Xdp = ebpf
            .program_mut(PROG_RELAY)
            .expect("relay program")
            .try_into()
            .expect("xdp");
        prog.load().expect("verifier accepts the relay program");
        if let Ok(info) = prog.info() {
            eprintln!(
                "relay: {:?} instructions verified, {:?} bytes translated",
                info.verified_instruction_count(),
                info.size_translated()
            );
        }
        let maps = RelayMaps::take(&mut ebpf).expect("relay maps");
        let mut take = |n: &str| ebpf.take_map(n).unwrap_or_else(|| panic!("map {n}"));
        let counters = PerCpuArray::try_from(take(MAP_COUNTERS)).unwrap();
        let slot_counters = PerCpuArray::try_from(take(MAP_SLOT_COUNTERS)).unwrap();
        let initiations = RingBuf::try_from(take(MAP_INITIATIONS)).unwrap();
        let proofs = RingBuf::try_from(take(MAP_PROOFS)).unwrap();
        let proof_budget = HashMap::try_from(take(MAP_PROOF_BUDGET)).unwrap();
        let copy_budget = HashMap::try_from(take(MAP_COPY_BUDGET)).unwrap();
        let mesh_hubs = HashMap::try_from(take(MAP_MESH_HUBS)).unwrap();
        let mesh_drops = PerCpuArray::try_from(take(MAP_MESH_DROPS)).unwrap();
        Self {
            ebpf,
            maps,
            counters,
            slot_counters,
            initiations,
            proofs,
            proof_budget,
            copy_budget,
            mesh_hubs,
            mesh_drops,
            ifindex,
            out: vec![0; 4096],
        }
    }

    fn prog(&self) -> &Xdp {
        self.ebpf.program(PROG_RELAY).unwrap().try_into().unwrap()
    }

    /// Run the program `repeat` times on `frame`: (action, output frame).
    pub fn run_n(&self, frame: &[u8], repeat: u32) -> Result<(u32, Vec<u8>), ProgramError> {
        let ctx = xdp_md(frame.len(), self.ifindex);
        let mut out = vec![0u8; frame.len() + 256];
        let r = self.prog().test_run(TestRunOptions {
            data_in: Some(frame),
            data_out: Some(&mut out),
            ctx_in: Some(&ctx),
            repeat,
            ..Default::default()
        })?;
        out.truncate(r.data_size_out as usize);
        Ok((r.return_value, out))
    }

    /// Run the program once on `frame` into a reused buffer: (action,
    /// output) or the kernel's refusal.
    pub fn run_once(&mut self, frame: &[u8]) -> Result<(u32, &[u8]), ProgramError> {
        let ctx = xdp_md(frame.len(), self.ifindex);
        let prog: &Xdp = self.ebpf.program(PROG_RELAY).unwrap().try_into().unwrap();
        let r = prog.test_run(TestRunOptions {
            data_in: Some(frame),
            data_out: Some(&mut self.out),
            ctx_in: Some(&ctx),
            ..Default::default()
        })?;
        Ok((r.return_value, &self.out[..r.data_size_out as usize]))
    }

    /// Global counter `i`, summed over CPUs.
    pub fn counter(&self, i: u32) -> u64 {
        self.counters.get(&i, 0).unwrap().iter().sum()
    }

    /// Mesh drops of peer hub index `i`, summed over CPUs.
    pub fn mesh_drop_totals(&self, i: u32) -> MeshDrops {
        let mut t = MeshDrops::default();
        for c in self.mesh_drops.get(&i, 0).unwrap().iter() {
            t.accumulate(c);
        }
        t
    }

    /// Every global counter, summed over CPUs.
    pub fn counter_totals(&self) -> Vec<u64> {
        (0..counter::COUNT).map(|i| self.counter(i)).collect()
    }

    /// Slots `0..n`: [`slot_totals`].
    pub fn slot_snapshot(&self, n: u32) -> Vec<(SlotDelta, u64, u64)> {
        (0..n)
            .map(|i| slot_totals(self.slot_counters.get(&i, 0).unwrap().iter()))
            .collect()
    }

    /// The initiation events waiting in the ring buffer.
    pub fn drain_events(&mut self) -> Vec<InitiationEvent> {
        let mut v = Vec::new();
        while let Some(item) = self.initiations.next() {
            assert_eq!(item.len(), size_of::<InitiationEvent>());
            // SAFETY: repr(C) plain data of exactly this size.
            v.push(unsafe { std::ptr::read_unaligned(item.as_ptr().cast::<InitiationEvent>()) });
        }
        v
    }
}

impl Harness {
    /// The proof events waiting in the ring buffer.
    pub fn drain_proofs(&mut self) -> Vec<ProofEvent> {
        let mut v = Vec::new();
        while let Some(item) = self.proofs.next() {
            assert_eq!(item.len(), size_of::<ProofEvent>());
            // SAFETY: repr(C) plain data of exactly this size.
            v.push(unsafe { std::ptr::read_unaligned(item.as_ptr().cast::<ProofEvent>()) });
        }
        v
    }

    /// Forget every source's proof budget window, and the source cache,
    /// whose stranger entries remember spent budgets.
    pub fn clear_proof_budget(&mut self) {
        let keys: Vec<Endpoint> = self.proof_budget.keys().filter_map(Result::ok).collect();
        for k in keys {
            let _ = self.proof_budget.remove(&k);
        }
        self.maps
            .clear_source_cache()
            .expect("clear the source cache");
    }

    /// Forget every source's initiation copy budget window.
    pub fn clear_copy_budget(&mut self) {
        let keys: Vec<Endpoint> = self.copy_budget.keys().filter_map(Result::ok).collect();
        for k in keys {
            let _ = self.copy_budget.remove(&k);
        }
    }

    /// Zero slots `0..n`'s `last_rx_ns` and `last_keepalive_ns` (counts
    /// kept): the program reads the coarse clock, which two runs within one
    /// tick see unchanged, so "written by this run" is "non-zero after".
    pub fn clear_slot_times(&mut self, n: u32) {
        for i in 0..n {
            let Ok(values) = self.slot_counters.get(&i, 0) else {
                continue;
            };
            let cleared: Vec<SlotCounters> = values
                .iter()
                .map(|c| SlotCounters {
                    last_rx_ns: 0,
                    last_keepalive_ns: 0,
                    ..*c
                })
                .collect();
            let values = aya::maps::PerCpuValues::try_from(cleared).expect("one value per CPU");
            self.slot_counters
                .set(i, values, 0)
                .expect("slot counters update");
        }
    }
}

/// The two-NIC hub of the in-kernel tests, in a namespace the test thread
/// entered ([`crate::netns::Entered`]): `<p>0` (MAC [`HUB_MAC`], peer `<p>0p`)
/// with 198.51.100.1/24 and 2001:db8:1::1/64, a gateway .254 / ::fe with a
/// PERMANENT neighbour ([`GW_MAC`]) towards 203.0.113.0/24 and
/// 2001:db8:99::/64, and a gateway without neighbour entry (.253) towards
/// 203.0.114.0/24; `<p>1` (MAC [`HUB2_MAC`], peer `<p>1p`, MTU `nic2_mtu`
/// if given) with 192.0.2.1/24 and a gateway .254 ([`GW2_MAC`]) towards
/// 100.64.0.0/24. Forwarding on both NICs as `forwarding` says (IPv6 only
/// where the MTU allows IPv6). Returns the two ifindexes.
pub mod topo {
    use crate::frame::mac;
    use crate::netns::Entered;

    pub const HUB_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];
    pub const PEER_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x02];
    /// The gateway towards the spokes (PERMANENT neighbour, v4 and v6).
    pub const GW_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0xfe];
    /// Second NIC (redirect target) and its gateway.
    pub const HUB2_MAC: [u8; 6] = [0x02, 0, 0, 0, 1, 0x01];
    pub const HUB2_PEER_MAC: [u8; 6] = [0x02, 0, 0, 0, 1, 0x02];
    pub const GW2_MAC: [u8; 6] = [0x02, 0, 0, 0, 1, 0xfe];

    /// See the module documentation.
    pub fn two_nics(
        ns: &Entered,
        p: &str,
        nic2_mtu: Option<usize>,
        forwarding: bool,
    ) -> (u32, u32) {
        let (n0, n1) = (format!("{p}0"), format!("{p}1"));
        ns.veth(&n0, HUB_MAC, &format!("{p}0p"), PEER_MAC);
        ns.veth(&n1, HUB2_MAC, &format!("{p}1p"), HUB2_PEER_MAC);
        if let Some(m) = nic2_mtu {
            ns.ip(&format!("link set {n1} mtu {m}"));
        }
        for dev in [
            "lo".to_string(),
            n0.clone(),
            format!("{p}0p"),
            n1.clone(),
            format!("{p}1p"),
        ] {
            ns.ip(&format!("link set {dev} up"));
        }
        ns.ip(&format!("addr add 198.51.100.1/24 dev {n0}"));
        ns.ip(&format!("addr add 2001:db8:1::1/64 dev {n0} nodad"));
        ns.ip(&format!("addr add 192.0.2.1/24 dev {n1}"));
        for (gw, dev, m) in [
            ("198.51.100.254", &n0, GW_MAC),
            ("2001:db8:1::fe", &n0, GW_MAC),
            ("192.0.2.254", &n1, GW2_MAC),
        ] {
            ns.ip(&format!(
                "neigh add {gw} lladdr {} nud permanent dev {dev}",
                mac(m)
            ));
        }
        ns.ip(&format!(
            "route add 203.0.113.0/24 via 198.51.100.254 dev {n0}"
        ));
        ns.ip(&format!(
            "route add 2001:db8:99::/64 via 2001:db8:1::fe dev {n0}"
        ));
        ns.ip(&format!("route add 100.64.0.0/24 via 192.0.2.254 dev {n1}"));
        // No neighbour entry for this gateway.
        ns.ip(&format!(
            "route add 203.0.114.0/24 via 198.51.100.253 dev {n0}"
        ));
        let f = if forwarding { "1" } else { "0" };
        for (dev, ipv6) in [(&n0, true), (&n1, nic2_mtu.is_none_or(|m| m >= 1280))] {
            ns.sysctl(&format!("net.ipv4.conf.{dev}.forwarding={f}"));
            if ipv6 {
                ns.sysctl(&format!("net.ipv6.conf.{dev}.forwarding={f}"));
            }
        }
        (ns.ifindex(&n0), ns.ifindex(&n1))
    }
}
