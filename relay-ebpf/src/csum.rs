//! Internet checksum arithmetic (RFC 1071), on words as they lie in memory.

/// Fold a 32-bit one's complement accumulator to 16 bits.
#[inline(always)]
pub fn fold(mut acc: u32) -> u16 {
    acc = (acc & 0xffff) + (acc >> 16);
    acc = (acc & 0xffff) + (acc >> 16);
    acc as u16
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
