//! Byte copies and zero fills that never turn into `memcpy` / `memset`
//! calls (LLVM's BPF backend leaves many of those as calls to aya-ebpf's
//! byte-loop fallbacks, which the verifier then has to walk as BPF-to-BPF
//! calls). Volatile stores keep them as plain stores.

use core::ptr::{read, write_volatile};

/// Copy `n` bytes.
///
/// # Safety
/// `src` readable and `dst` writable for `n` bytes; no overlap.
#[inline(always)]
pub unsafe fn copy(dst: *mut u8, src: *const u8, n: usize) {
    for i in 0..n {
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

/// Zero `n` bytes.
///
/// # Safety
/// `dst` writable for `n` bytes.
#[inline(always)]
pub unsafe fn zero(dst: *mut u8, n: usize) {
    for i in 0..n {
        unsafe { write_volatile(dst.add(i), 0) };
    }
}
