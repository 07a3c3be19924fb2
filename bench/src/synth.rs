//! Synthetic spokes: endpoints and sessions installed directly in the
//! relay's tables (the product's XDP object loaded by the bench, or the
//! userspace baseline fed the same table), and the frames they send.

use std::net::Ipv4Addr;

use aya::programs::{Xdp, XdpMode};
use aya::{Ebpf, EbpfLoader};
use relay_common::{Endpoint, PROG_RELAY, SESSION_FROM_INITIATION};
use testkit::frame::udp4_frame;
use testkit::wg::transport_with_counter;
use testkit::xdp::RelayMaps;

pub const HUB_PORT: u16 = 51820;
pub const HUB_IP: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 1);

/// `n` synthetic spokes in pairs (1,2), (3,4), ...: slot, address, port.
#[derive(Clone, Copy, Debug)]
pub struct Spoke {
    pub slot: u32,
    pub ip: Ipv4Addr,
    pub port: u16,
}

pub fn spokes(n: u32) -> Vec<Spoke> {
    (1..=n)
        .map(|i| Spoke {
            slot: i,
            ip: Ipv4Addr::new(10, 200, (i / 200) as u8, (i % 200 + 1) as u8),
            port: 40000 + i as u16,
        })
        .collect()
}

pub fn peer(slot: u32) -> u32 {
    if slot % 2 == 1 { slot + 1 } else { slot - 1 }
}

/// Receiver index spoke `slot` uses towards its peer.
pub fn receiver(slot: u32) -> u32 {
    0x5000_0000 ^ slot.wrapping_mul(0x9e37_79b9)
}

/// Frames every spoke sends to the hub (one per spoke).
pub fn frames(sp: &[Spoke], hub_mac: [u8; 6], gen_mac: [u8; 6], payload: usize) -> Vec<Vec<u8>> {
    sp.iter()
        .map(|s| {
            udp4_frame(
                hub_mac,
                gen_mac,
                s.ip,
                s.port,
                HUB_IP,
                HUB_PORT,
                &transport_with_counter(receiver(s.slot), 1, payload),
                false,
            )
        })
        .collect()
}

/// The userspace baseline's table file: `ep IP PORT SLOT` and
/// `sess SRC_SLOT RECEIVER DST_SLOT` lines.
pub fn table(sp: &[Spoke]) -> String {
    let mut t = String::new();
    for s in sp {
        t += &format!("ep {} {} {}\n", s.ip, s.port, s.slot);
    }
    for s in sp {
        t += &format!("sess {} {} {}\n", s.slot, receiver(s.slot), peer(s.slot));
    }
    t
}

/// The product's XDP object, loaded and filled by the bench (no controller).
pub struct XdpHub {
    pub ebpf: Ebpf,
    maps: RelayMaps,
    /// Kernel memory (memlock) per map name, at default capacities.
    pub memlock: std::collections::HashMap<String, u64>,
}

/// A slot registered for the BPF_PROG_TEST_RUN fixed point (see `test_run`).
pub const FIX_SLOT: u32 = 16000;
const FIX_DST: u32 = 16001;
const FIX_RX: u32 = 0x0f1e_0001;
const FIX_IP: Ipv4Addr = Ipv4Addr::new(10, 201, 0, 1);

impl XdpHub {
    /// Load and fill; call from a thread in the hub's namespace.
    pub fn load(sp: &[Spoke]) -> anyhow::Result<Self> {
        Self::load_object(relay_user::EBPF_OBJECT, sp)
    }

    /// [`load`](Self::load) with another build of the object (profiling
    /// variants, `relay-bench prof --object`).
    pub fn load_object(object: &[u8], sp: &[Spoke]) -> anyhow::Result<Self> {
        Self::load_with(EbpfLoader::new().load(object)?, sp)
    }

    /// The product's object with `slots` spoke slots and `sessions`
    /// session entries, as `relayhub run --max-spokes --max-sessions`
    /// sizes them, and no synthetic spokes but the fixed point.
    pub fn load_sized(slots: u32, sessions: u32) -> anyhow::Result<Self> {
        let ebpf = EbpfLoader::new()
            .map_max_entries(relay_common::MAP_SLOTS, slots)
            .map_max_entries(relay_common::MAP_SLOT_COUNTERS, slots)
            .map_max_entries(relay_common::MAP_ENDPOINT_SLOTS, slots)
            .map_max_entries(relay_common::MAP_SESSIONS, sessions)
            .load(relay_user::EBPF_OBJECT)?;
        Self::load_with(ebpf, &[])
    }

    fn load_with(mut ebpf: Ebpf, sp: &[Spoke]) -> anyhow::Result<Self> {
        let memlock: std::collections::HashMap<String, u64> = ebpf
            .maps()
            .map(|(n, m)| (n.to_string(), map_memlock(m)))
            .collect();
        let mut maps = RelayMaps::take(&mut ebpf)?;
        maps.set_port(HUB_PORT)?;
        let mut hub = Self {
            ebpf,
            maps,
            memlock,
        };
        for s in sp {
            hub.spoke(s.slot, Endpoint::v4(s.ip.octets(), s.port), true)?;
        }
        for s in sp {
            hub.session(s.slot, receiver(s.slot), peer(s.slot))?;
        }
        // Fixed point for repeated test runs: FIX_IP:51820 is slot FIX_SLOT;
        // FIX_DST's endpoint is the same address, so the relayed frame is
        // again a frame from FIX_SLOT with the same receiver index.
        let fix = Endpoint::v4(FIX_IP.octets(), HUB_PORT);
        hub.spoke(FIX_SLOT, fix, true)?;
        hub.maps.set_slot(FIX_DST, fix, true)?;
        hub.session(FIX_SLOT, FIX_RX, FIX_DST)?;
        let prog: &mut Xdp = hub
            .ebpf
            .program_mut(PROG_RELAY)
            .ok_or_else(|| anyhow::anyhow!("no relay program"))?
            .try_into()?;
        prog.load()?;
        Ok(hub)
    }

    pub fn spoke(&mut self, slot: u32, ep: Endpoint, active: bool) -> anyhow::Result<()> {
        Ok(self.maps.set_spoke(slot, ep, active)?)
    }

    pub fn session(&mut self, src_slot: u32, receiver: u32, dst_slot: u32) -> anyhow::Result<()> {
        Ok(self
            .maps
            .set_session(src_slot, receiver, dst_slot, SESSION_FROM_INITIATION, 0)?)
    }

    fn prog(&mut self) -> anyhow::Result<&mut Xdp> {
        Ok(self
            .ebpf
            .program_mut(PROG_RELAY)
            .ok_or_else(|| anyhow::anyhow!("no relay program"))?
            .try_into()?)
    }

    /// Attach to `iface` (calling thread's namespace), native or generic.
    pub fn attach(&mut self, iface: &str, native: bool) -> anyhow::Result<()> {
        let flags = if native {
            XdpMode::Driver
        } else {
            XdpMode::Skb
        };
        self.prog()?.attach(iface, flags)?;
        Ok(())
    }

    /// (run_time_ns, run_cnt) from the kernel's BPF run-time statistics.
    pub fn run_stats(&mut self) -> (u64, u64) {
        match self.prog().and_then(|p| Ok(p.info()?)) {
            Ok(i) => (i.run_time().as_nanos() as u64, i.run_count()),
            Err(_) => (0, 0),
        }
    }

    /// The relay program's fd (loaded).
    pub fn prog_fd(&mut self) -> anyhow::Result<std::os::fd::BorrowedFd<'_>> {
        use std::os::fd::AsFd;
        Ok(self.prog()?.fd()?.as_fd())
    }

    /// The relay program's kernel id (for bpftool).
    pub fn prog_id(&mut self) -> anyhow::Result<u32> {
        Ok(self.prog()?.info()?.id())
    }

    /// ns per frame via BPF_PROG_TEST_RUN with `repeat`, for a hit (the
    /// relay path including bpf_fib_lookup, frame rewritten and XDP_TX),
    /// two misses (unknown source; known source, no session: both
    /// XDP_PASS) and, last, the hand-assembled XDP_PASS program on the hit
    /// frame: BPF_PROG_TEST_RUN's own cost per repeat. `ifindex`: the hub
    /// NIC in the calling thread's namespace.
    pub fn test_run(
        &mut self,
        ifindex: u32,
        payload: usize,
        repeat: u32,
    ) -> anyhow::Result<[(f64, u32); 4]> {
        let frames = test_frames(payload);
        let pass = crate::bpfraw::load("pass", &crate::bpfraw::pass())?;
        let mut out = Vec::new();
        let fd = self.prog_fd()?;
        for f in &frames {
            out.push(crate::bpfraw::test_run(fd, f, ifindex, repeat)?);
        }
        {
            use std::os::fd::AsFd;
            out.push(crate::bpfraw::test_run(
                pass.as_fd(),
                &frames[0],
                ifindex,
                repeat,
            )?);
        }
        Ok([out[0], out[1], out[2], out[3]])
    }
}

/// Hub mesh fixed point (see [`XdpHub::enable_mesh`]).
pub const MESH_BASE: u16 = 40000;
const MESH_IP: Ipv4Addr = Ipv4Addr::new(10, 201, 0, 2);
const MESH_X: u32 = 16002;
const MESH_Y: u32 = 16003;
const MESH_X_REMOTE: u32 = 16004;
const MESH_RX: u32 = 0x0f1e_0002;

impl XdpHub {
    /// Make the loaded program a mesh member whose two roles feed each
    /// other, so repeated BPF_PROG_TEST_RUN alternates them on one frame:
    /// as hub G it relays local spoke X (MESH_IP:hub port, mesh index 1)
    /// to spoke Y homed on a peer hub (endpoint MESH_IP:base+2) from X's
    /// mesh port; that output, seen as hub H, comes from remote X
    /// (MESH_IP:base+1)
    /// on Y's mesh port and is relayed to its local destination, which is
    /// X's endpoint again: the input frame. Every odd run is G's relay,
    /// every even run H's; the hub port's own relay is unchanged.
    pub fn enable_mesh(&mut self) -> anyhow::Result<()> {
        self.maps.config.set(
            0,
            relay_common::HubConfig {
                port: HUB_PORT,
                mesh_base: MESH_BASE,
                ..Default::default()
            },
            0,
        )?;
        let at = |port| Endpoint::v4(MESH_IP.octets(), port);
        let remote = relay_common::SLOT_ACTIVE | relay_common::SLOT_REMOTE;
        // Mesh indices: X's here (1), Y's on the peer hub (2).
        let port = |index| relay_common::mesh_port(MESH_BASE, index).expect("in range");
        let local = relay_common::SLOT_ACTIVE | (1 << relay_common::SLOT_MESH_SHIFT);
        self.maps.set_spoke_flags(MESH_X, at(HUB_PORT), local)?;
        self.maps.set_spoke_flags(MESH_Y, at(port(2)), remote)?;
        self.maps
            .set_spoke_flags(MESH_X_REMOTE, at(port(1)), remote)?;
        self.session(MESH_X, MESH_RX, MESH_Y)?;
        self.session(MESH_X_REMOTE, MESH_RX, MESH_X)?;
        Ok(())
    }

    /// The global counter `i` summed over CPUs (`relay_common::counter`).
    pub fn counter(&self, i: u32) -> anyhow::Result<u64> {
        let m = self
            .ebpf
            .map(relay_common::MAP_COUNTERS)
            .ok_or_else(|| anyhow::anyhow!("no COUNTERS map"))?;
        let a = aya::maps::PerCpuArray::<_, u64>::try_from(m)?;
        Ok(a.get(&i, 0)?.iter().sum())
    }
}

/// The mesh fixed point's frame (see [`XdpHub::enable_mesh`]).
pub fn mesh_frame(payload: usize) -> Vec<u8> {
    let mac = [2, 0, 0, 0, 0, 1];
    udp4_frame(
        mac,
        mac,
        MESH_IP,
        HUB_PORT,
        MESH_IP,
        HUB_PORT,
        &transport_with_counter(MESH_RX, 1, payload),
        false,
    )
}

/// The BPF_PROG_TEST_RUN frames: a hit on the fixed point (relayed back to
/// itself, so every repeat is a hit), a frame from an unknown source and
/// one from a known source with an unknown receiver index.
pub fn test_frames(payload: usize) -> [Vec<u8>; 3] {
    let mac = [2, 0, 0, 0, 0, 1];
    let hit = udp4_frame(
        mac,
        mac,
        FIX_IP,
        HUB_PORT,
        FIX_IP,
        HUB_PORT,
        &transport_with_counter(FIX_RX, 1, payload),
        false,
    );
    let stranger = udp4_frame(
        mac,
        mac,
        Ipv4Addr::new(10, 202, 0, 1),
        40000,
        HUB_IP,
        HUB_PORT,
        &transport_with_counter(FIX_RX, 1, payload),
        false,
    );
    let no_session = udp4_frame(
        mac,
        mac,
        FIX_IP,
        HUB_PORT,
        HUB_IP,
        HUB_PORT,
        &transport_with_counter(0xdead_beef, 1, payload),
        false,
    );
    [hit, stranger, no_session]
}

/// `memlock:` of a map's fd from /proc/self/fdinfo (bytes the kernel
/// charges for it).
fn map_memlock(m: &aya::maps::Map) -> u64 {
    use aya::maps::Map;
    use std::os::fd::{AsFd, AsRawFd};
    let d = match m {
        Map::HashMap(d)
        | Map::LruHashMap(d)
        | Map::Array(d)
        | Map::PerCpuArray(d)
        | Map::RingBuf(d) => d,
        _ => return 0,
    };
    let fd = d.fd().as_fd().as_raw_fd();
    std::fs::read_to_string(format!("/proc/self/fdinfo/{fd}"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("memlock:")?.trim().parse().ok())
        .unwrap_or(0)
}
