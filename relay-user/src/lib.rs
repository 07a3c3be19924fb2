//! relayhub's controller: loads the XDP relay, routes handshakes, keeps the
//! spoke registry and exports metrics.
//!
//! One folder per layer (see ARCHITECTURE.md); a layer imports only the
//! layers below it:
//!
//! - [`cli`]: the command line (arguments, `spoke`, `policy`, `status`).
//! - [`hub`]: the running hub: setup, event loop, API, metrics,
//!   enrollment and the spokes' peer lists.
//! - [`provision`]: what a spoke is given (registration, wg-quick file),
//!   shared by `relayhub spoke` and enrollment.
//! - [`datapath`]: the XDP program and its maps (load, pin, attach).
//! - [`store`]: persistent state (state directory, registry and policy files).
//! - [`io`]: adapters to the system (raw sockets, the hub's WireGuard,
//!   interfaces and routes, HTTP).
//! - [`core`]: sans-IO logic (handshake routing, flood shield, sessions,
//!   health, policy, registry, reconciliation): bytes and time in,
//!   decisions out.

pub mod cli;
pub mod core;
pub mod datapath;
pub mod hub;
pub mod io;
pub mod provision;
pub mod store;

/// The compiled XDP object (built by build.rs).
pub static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/relay"));
