//! Map reads by `BPF_MAP_LOOKUP_BATCH` (Linux 5.6), written by hand
//! because aya 0.14 has no batch operations: many entries per syscall
//! instead of one or two syscalls per entry. The replication tick reads the
//! whole session table this way, and the health pass every spoke's
//! counters (one lookup per spoke was the largest share of a big idle
//! hub's controller: 10,000 syscalls a second at 10,000 spokes).

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};

use aya::maps::MapData;
use relay_common::{SessionKey, SessionValue};

/// `enum bpf_cmd`: BPF_MAP_LOOKUP_BATCH.
const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;

/// Entries one session-table call returns at most.
const BATCH: usize = 4096;

/// The `batch` member of `union bpf_attr` (uapi/linux/bpf.h). Its size is
/// what the syscall is given, so the kernel sees no trailing fields.
#[repr(C)]
#[derive(Default)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

/// One call: up to `keys.len()` entries after the cursor `in_batch` (the
/// first entries: `None`) into `keys` and `values` (`per_key` values per
/// key: the CPUs of a per-CPU map), the next cursor into `out_batch`.
/// Returns the entries filled and whether the walk reached the end.
fn lookup_batch<K, V, C>(
    fd: BorrowedFd<'_>,
    in_batch: Option<&C>,
    out_batch: &mut C,
    keys: &mut [K],
    values: &mut [V],
    per_key: usize,
) -> io::Result<(usize, bool)> {
    let count = keys.len().min(values.len() / per_key.max(1));
    let mut attr = BatchAttr {
        in_batch: in_batch.map_or(0, |c| c as *const C as u64),
        // NULL faults as soon as an entry was read.
        out_batch: out_batch as *mut C as u64,
        keys: keys.as_mut_ptr() as u64,
        values: values.as_mut_ptr() as u64,
        count: u32::try_from(count).unwrap_or(u32::MAX),
        map_fd: fd.as_raw_fd() as u32,
        ..Default::default()
    };
    // SAFETY: `keys` and `values` hold `count` keys and `count * per_key`
    // values of the map's types (the callers' maps are typed by aya), the
    // cursors have room for the map's cursor (a key, or a hash bucket
    // number); all outlive the call, whose size is attr's own.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_MAP_LOOKUP_BATCH,
            &mut attr as *mut BatchAttr,
            size_of::<BatchAttr>() as u32,
        )
    };
    let n = (attr.count as usize).min(count);
    if rc < 0 {
        let e = io::Error::last_os_error();
        // ENOENT: the walk is complete; `count` says what this call filled.
        return match e.raw_os_error() {
            Some(libc::ENOENT) => Ok((n, true)),
            _ => Err(e),
        };
    }
    Ok((n, false))
}

/// Every entry of the session table `map` into `out` (about 4,096 per
/// syscall), which is what makes reading a 100k-entry table every
/// replication tick cheap (`replica_churn` measures both). An entry may be
/// missed or seen twice if the program changes the table during the walk,
/// as with any walk; the next read catches up.
pub fn read_sessions_batch(
    map: &MapData,
    out: &mut Vec<(SessionKey, SessionValue)>,
) -> io::Result<()> {
    out.clear();
    let mut keys = vec![SessionKey::default(); BATCH];
    let mut values = vec![SessionValue::default(); BATCH];
    // The hash maps' cursor is a bucket number (u32); room for more.
    let (mut cursor, mut next) = ([0u64; 2], [0u64; 2]);
    let mut first = true;
    loop {
        let from = (!first).then_some(&cursor);
        let (n, end) = lookup_batch(map.fd().as_fd(), from, &mut next, &mut keys, &mut values, 1)?;
        out.extend(keys[..n].iter().copied().zip(values[..n].iter().copied()));
        if end {
            return Ok(());
        }
        cursor = next;
        first = false;
    }
}

/// Reusable buffers for [`lookup_percpu`] (a pass allocates nothing once
/// they have grown).
#[derive(Default)]
pub struct Scratch<V> {
    keys: Vec<u32>,
    values: Vec<V>,
}

/// Entries `0..end` of the per-CPU array `fd` whose values are `V` on
/// `ncpus` possible CPUs, in one call: `f(index, per-CPU values)` for each
/// entry read, in index order. Returns how many were read.
///
/// `V`'s size must be a multiple of 8 (the kernel lays per-CPU values out
/// at 8-byte strides); the caller asserts it at compile time.
pub fn lookup_percpu<V: aya::Pod + Default>(
    fd: BorrowedFd<'_>,
    end: u32,
    ncpus: usize,
    scratch: &mut Scratch<V>,
    mut f: impl FnMut(u32, &[V]),
) -> io::Result<usize> {
    debug_assert!(size_of::<V>().is_multiple_of(8));
    if end == 0 || ncpus == 0 {
        return Ok(0);
    }
    let n = end as usize;
    scratch.keys.resize(n, 0);
    scratch.values.resize(n * ncpus, V::default());
    let mut next = 0u32;
    let (got, _) = lookup_batch(
        fd,
        None,
        &mut next,
        &mut scratch.keys,
        &mut scratch.values,
        ncpus,
    )?;
    for (i, &key) in scratch.keys[..got].iter().enumerate() {
        f(key, &scratch.values[i * ncpus..(i + 1) * ncpus]);
    }
    Ok(got)
}
