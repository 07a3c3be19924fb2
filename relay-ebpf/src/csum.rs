//! Internet checksum arithmetic (RFC 1071): on words as they lie in memory
//! for the relay's rewrite, on big-endian 16-bit words for the
//! cross-family rebuild.

use crate::mem;

/// Fold a 32-bit one's complement accumulator to 16 bits.
#[inline(always)]
pub fn fold(mut acc: u32) -> u16 {
    acc = (acc & 0xffff) + (acc >> 16);
    acc = (acc & 0xffff) + (acc >> 16);
    acc as u16
}

/// Sum of the `n` big-endian 16-bit words at `p` (complemented words when
/// `not`, i.e. subtracting them), in host order: for the cross-family
/// rebuild, which mixes sums over the two families' headers.
///
/// # Safety
/// `p` readable for `2 * n` bytes.
#[inline(always)]
pub unsafe fn sum_words(p: *const u8, n: usize, not: bool) -> u32 {
    let mut acc = 0u32;
    for i in 0..n {
        // SAFETY: caller's range.
        let w = unsafe { mem::load_be16(p.add(2 * i)) };
        acc += if not { !w } else { w } as u32;
    }
    acc
}

/// One's complement sum of the `n` 32-bit words at `p`, as loaded (host
/// order). The sum is byte-order independent (RFC 1071, 2.B): words summed
/// as loaded fold to the checksum as it lies in memory, with no swaps.
///
/// # Safety
/// `p` readable for `4 * n` bytes.
#[inline(always)]
pub unsafe fn sum32(p: *const u8, n: usize) -> u64 {
    let mut acc = 0u64;
    for i in 0..n {
        // SAFETY: caller's range; misaligned access is allowed.
        acc += u64::from(unsafe { core::ptr::read_unaligned(p.add(4 * i).cast::<u32>()) });
    }
    acc
}

/// Fold a 64-bit accumulator of [`sum32`] words to 16 bits.
#[inline(always)]
pub fn fold64(acc: u64) -> u16 {
    let mut a = (acc & 0xffff_ffff) + (acc >> 32);
    a = (a & 0xffff_ffff) + (a >> 32);
    // Now at most 2^32 (one's complement: 2^32 is 1).
    a = (a & 0xffff_ffff) + (a >> 32);
    fold(a as u32)
}
