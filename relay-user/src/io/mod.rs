//! Adapters to the system: raw sockets, the hub's own WireGuard interface,
//! interface and route facts, the HTTP server.

pub mod egress;
pub mod http;
pub mod hub_wg;
pub mod netinfo;
pub mod sender;
