//! Types shared by the relayhub XDP program (`relay-ebpf`) and its controller
//! (`relay-user`): WireGuard wire constants, map names, map keys and values.
//!
//! Everything here is `#[repr(C)]`, explicitly padded, and free of
//! implicit padding so that the kernel and userspace agree byte for byte.
//! The `user` feature implements `aya::Pod` for the map types.
#![no_std]

pub mod maps;
pub mod wire;

pub use maps::*;
