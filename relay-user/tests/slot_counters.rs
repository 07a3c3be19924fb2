//! The health pass reads every spoke's counters with one batch lookup
//! (in the kernel, no pins): it must see what a lookup per slot sees,
//! summed over CPUs the same way, up to the range asked and no further.

use aya::maps::{Map, MapData, PerCpuArray, PerCpuValues};
use relay_common::SlotCounters;
use relay_user::datapath::{Capacity, Datapath, SlotTable};

fn is_root() -> bool {
    // SAFETY: plain syscall.
    unsafe { libc::geteuid() == 0 }
}

fn counters(slot: u32, cpu: usize) -> SlotCounters {
    let x = u64::from(slot) * 1000 + cpu as u64;
    SlotCounters {
        rx_packets: x + 1,
        rx_bytes: x * 100,
        tx_packets: x + 2,
        tx_bytes: x * 50,
        rx_keepalives: 3,
        hub_packets: 4,
        hub_keepalives: x % 7,
        last_rx_ns: 1_000_000 + x,
        last_keepalive_ns: 2_000_000 - x,
    }
}

#[test]
fn batch_read_equals_per_slot_lookups() {
    if !is_root() {
        return;
    }
    let cap = Capacity::default();
    let dp = Datapath::load(relay_user::EBPF_OBJECT, &cap, 51820, 0, None).expect("load");
    let id = dp.slot_counters_map_id().expect("map id");
    let data = MapData::from_id(id).expect("second handle");
    let mut map: PerCpuArray<MapData, SlotCounters> =
        PerCpuArray::try_from(Map::PerCpuArray(data)).expect("per-CPU array");
    let ncpus = aya::util::nr_cpus().expect("possible CPUs");
    let written = [0u32, 1, 7, 500, cap.slots - 1];
    for &slot in &written {
        let v: Vec<SlotCounters> = (0..ncpus).map(|c| counters(slot, c)).collect();
        map.set(slot, PerCpuValues::try_from(v).unwrap(), 0)
            .expect("write counters");
    }

    let mut table = SlotTable::default();
    dp.read_slot_counters(501, &mut table);
    for slot in 0..501 {
        assert_eq!(table.get(slot), dp.slot_counters(slot), "slot {slot}");
    }
    // Summed over CPUs, timestamps the latest.
    let s = table.get(500);
    let n = ncpus as u64;
    assert_eq!(s.rx_packets, (0..n).map(|c| 500_000 + c + 1).sum::<u64>());
    assert_eq!(s.last_rx_ns, 1_000_000 + 500_000 + n - 1);
    assert_eq!(s.last_keepalive_ns, 2_000_000 - 500_000);
    assert_ne!(table.get(7), SlotCounters::default());
    // Beyond the range read: zero, although the map has counters there.
    assert_eq!(table.get(501), SlotCounters::default());
    assert_eq!(table.get(cap.slots - 1), SlotCounters::default());
    // A range past the map's end stops at it; the last slot is read.
    dp.read_slot_counters(cap.slots + 100, &mut table);
    assert_eq!(table.get(cap.slots - 1), dp.slot_counters(cap.slots - 1));
    assert_ne!(table.get(cap.slots - 1), SlotCounters::default());
    // The table is reused: a smaller read forgets the rest.
    dp.read_slot_counters(2, &mut table);
    assert_eq!(table.get(7), SlotCounters::default());
    assert_eq!(table.get(1), dp.slot_counters(1));
    dp.read_slot_counters(0, &mut table);
    assert_eq!(table.get(0), SlotCounters::default());
}
