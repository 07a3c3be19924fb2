//! Byte copies, zero fills and header loads/stores that never turn into
//! `memcpy` / `memset` calls (LLVM's BPF backend leaves many of those as
//! calls to aya-ebpf's byte-loop fallbacks, which the verifier then has to
//! walk as BPF-to-BPF calls). Volatile stores keep them as plain stores.
//!
//! They move whole 32-bit words where they can: the object is built with
//! misaligned access allowed (see relay-user's build.rs), so a word at any
//! frame offset is one load or store, where LLVM would otherwise split it
//! into bytes, shifts and ors.

use core::{
    intrinsics::unaligned_volatile_store,
    ptr::{read, read_unaligned, write_volatile},
};

/// Copy `n` bytes (a constant at every call site: the loops unroll).
///
/// # Safety
/// `src` readable and `dst` writable for `n` bytes; no overlap. Neither is
/// on the BPF stack unless 4-byte aligned: the verifier rejects misaligned
/// stack access whatever the architecture ([`copy16`], [`copy_bytes`]).
#[inline(always)]
pub unsafe fn copy(dst: *mut u8, src: *const u8, n: usize) {
    let mut i = 0;
    while i + 4 <= n {
        // SAFETY: within both ranges; misaligned access is allowed.
        unsafe {
            let w = read_unaligned(src.add(i).cast::<u32>());
            unaligned_volatile_store(dst.add(i).cast::<u32>(), w);
        }
        i += 4;
    }
    if i + 2 <= n {
        // SAFETY: as above.
        unsafe {
            let w = read_unaligned(src.add(i).cast::<u16>());
            unaligned_volatile_store(dst.add(i).cast::<u16>(), w);
        }
        i += 2;
    }
    if i < n {
        // SAFETY: as above.
        unsafe { write_volatile(dst.add(i), read(src.add(i))) };
    }
}

/// Copy `n` bytes (even) as 16-bit words: for 2-byte aligned fields on
/// the stack (the MAC addresses of `bpf_fib_lookup`).
///
/// # Safety
/// As [`copy`], with 2-byte alignment.
#[inline(always)]
pub unsafe fn copy16(dst: *mut u8, src: *const u8, n: usize) {
    let mut i = 0;
    while i + 2 <= n {
        // SAFETY: within both ranges.
        unsafe {
            let w = read_unaligned(src.add(i).cast::<u16>());
            unaligned_volatile_store(dst.add(i).cast::<u16>(), w);
        }
        i += 2;
    }
}

/// Copy `n` bytes one by one: for byte arrays on the stack.
///
/// # Safety
/// `src` readable and `dst` writable for `n` bytes; no overlap.
#[inline(always)]
pub unsafe fn copy_bytes(dst: *mut u8, src: *const u8, n: usize) {
    for i in 0..n {
        // SAFETY: within both ranges.
        unsafe { write_volatile(dst.add(i), read(src.add(i))) };
    }
}

/// Zero `n` 32-bit words.
///
/// # Safety
/// `dst` 4-byte aligned and writable for `4 * n` bytes.
#[inline(always)]
pub unsafe fn zero32(dst: *mut u32, n: usize) {
    for i in 0..n {
        unsafe { write_volatile(dst.add(i), 0) };
    }
}

/// Zero `n` bytes (a multiple of 4 at every call site but one tail).
///
/// # Safety
/// `dst` writable for `n` bytes.
#[inline(always)]
pub unsafe fn zero(dst: *mut u8, n: usize) {
    let mut i = 0;
    while i + 4 <= n {
        // SAFETY: within the range; misaligned access is allowed.
        unsafe { unaligned_volatile_store(dst.add(i).cast::<u32>(), 0) };
        i += 4;
    }
    while i < n {
        // SAFETY: within the range.
        unsafe { write_volatile(dst.add(i), 0) };
        i += 1;
    }
}

/// The big-endian 16-bit field at `p`, in host order.
///
/// # Safety
/// `p` readable for 2 bytes.
#[inline(always)]
pub unsafe fn load_be16(p: *const u8) -> u16 {
    // SAFETY: caller's range; misaligned access is allowed.
    u16::from_be(unsafe { read_unaligned(p.cast::<u16>()) })
}

/// Store `v` (host order) big-endian at `p`.
///
/// # Safety
/// `p` writable for 2 bytes.
#[inline(always)]
pub unsafe fn store_be16(p: *mut u8, v: u16) {
    // SAFETY: caller's range; misaligned access is allowed.
    unsafe { unaligned_volatile_store(p.cast::<u16>(), v.to_be()) };
}

/// The 16-bit word at `p` as it lies in memory (for checksums, which work
/// on words as loaded: see `csum::sum32`).
///
/// # Safety
/// `p` readable for 2 bytes.
#[inline(always)]
pub unsafe fn load16(p: *const u8) -> u16 {
    // SAFETY: caller's range; misaligned access is allowed.
    unsafe { read_unaligned(p.cast::<u16>()) }
}

/// Store the 16-bit word `v` as it lies in memory (see [`load16`]).
///
/// # Safety
/// `p` writable for 2 bytes.
#[inline(always)]
pub unsafe fn store16(p: *mut u8, v: u16) {
    // SAFETY: caller's range; misaligned access is allowed.
    unsafe { unaligned_volatile_store(p.cast::<u16>(), v) };
}
