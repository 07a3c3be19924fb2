//! End-to-end test harness for relayhub.
//!
//! Everything here is a guard: namespaces, veths, background processes,
//! WireGuard interfaces and the hub are removed when dropped, also when a
//! test panics. Every name carries a per-test prefix (`rh` + 4 hex digits)
//! so concurrent tests and leftovers never collide.
//!
//! - [`topology::Topology`]: hub behind a router, spokes behind NATs.
//! - [`hub::Hub`]: the real relayhub binary, or wireguard-go as a decrypting
//!   hub ([`hub::HubKind`]).
//! - [`wg::WgQuick`]: a stock wg-quick/wireguard-go spoke.
//! - [`capture::Capture`]: tcpdump; [`prom::Metrics`]: /metrics parser.

pub mod capture;
pub mod cmd;
pub mod hub;
pub mod inject;
pub mod mesh;
pub mod netns;
pub mod prom;
pub mod topology;
pub mod wg;

pub use hub::{Hub, HubKind};
pub use topology::Topology;

impl Topology {
    /// Bring up spoke `i` (0-based) with the wg-quick file `text`, as
    /// interface `<prefix><spoke name>` (unique machine-wide).
    pub fn spoke_up(&self, i: usize, text: &str) -> anyhow::Result<wg::WgQuick> {
        let s = &self.spokes[i];
        wg::WgQuick::up(
            &s.ns,
            &format!("{}{}", self.prefix, s.name),
            text,
            &self.workdir,
        )
    }
}
