//! Userspace fallback: a cross-family frame the fast path cannot rebuild
//! (the driver refused `bpf_xdp_adjust_head`, or an IPv4 frame without the
//! UDP checksum IPv6 requires) goes whole to the controller, which sends it
//! on from its raw sockets.
//!
//! `bpf_perf_event_output` with the frame length in the flags' upper half
//! (BPF_F_CTXLEN_MASK) appends the frame bytes to the sample in the kernel:
//! no copy loop here, and it works on 5.15 (a ring buffer would need
//! `bpf_xdp_load_bytes`, 5.18).

use aya_ebpf::{
    EbpfContext, bindings::BPF_F_CURRENT_CPU, helpers::generated::bpf_perf_event_output,
    programs::XdpContext,
};
use core::{ffi::c_void, mem::MaybeUninit, ptr::addr_of_mut};
use relay_common::{Endpoint, FallbackMeta};

use crate::{maps::FALLBACK, mem};

/// Hand the whole (unmodified) frame to the controller with its
/// destination `dst` and `reason`. False if the perf buffer of this CPU is
/// full or has no reader.
// Own BPF function: the sample header lives in its own stack frame.
#[inline(never)]
pub fn queue(ctx: &XdpContext, dst: &Endpoint, reason: u32) -> bool {
    let frame_len = (ctx.data_end() - ctx.data()) as u32;
    let mut meta = MaybeUninit::<FallbackMeta>::uninit();
    let m = meta.as_mut_ptr();
    // SAFETY: every field of the uninitialised header is written; `dst` is
    // a map value of 20 bytes.
    unsafe {
        mem::copy(
            addr_of_mut!((*m).dst).cast::<u8>(),
            (dst as *const Endpoint).cast::<u8>(),
            core::mem::size_of::<Endpoint>(),
        );
        addr_of_mut!((*m).reason).write(reason);
        addr_of_mut!((*m).frame_len).write(frame_len);
    }
    let flags = (u64::from(frame_len) << 32) | BPF_F_CURRENT_CPU;
    // SAFETY: the map pointer is the perf event array's definition
    // (PerfEventArray is repr(transparent) over it); the sample header is
    // initialised above.
    unsafe {
        bpf_perf_event_output(
            ctx.as_ptr(),
            (&raw const FALLBACK).cast_mut().cast::<c_void>(),
            flags,
            m.cast::<c_void>(),
            core::mem::size_of::<FallbackMeta>() as u64,
        ) == 0
    }
}
