//! relayhub's controller: loads the XDP relay, routes handshakes, keeps the
//! spoke registry and exports metrics.

pub mod registry;
pub mod render;
pub mod state;

/// The compiled XDP object (built by build.rs with aya-build).
pub static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/relay"));
