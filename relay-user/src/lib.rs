//! relayhub's controller: loads the XDP relay, routes handshakes, keeps the
//! spoke registry and exports metrics.

pub mod cli;
pub mod controller;
pub mod cookie;
pub mod datapath;
pub mod fallback;
pub mod handshake;
pub mod health;
pub mod http;
pub mod hubwg;
pub mod metrics;
pub mod netinfo;
pub mod policy;
pub mod policy_cmd;
pub mod ratelimit;
pub mod registry;
pub mod render;
pub mod sender;
pub mod sessions;
pub mod spoke_cmd;
pub mod state;
pub mod statefile;
pub mod status;

/// The compiled XDP object (built by build.rs with aya-build).
pub static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/relay"));
