//! The userspace side of the cross-family fallback: one task per CPU's
//! perf buffer hands each frame to the hub, which sends it on.

use std::sync::{Arc, Mutex};

use aya::maps::MapData;
use tokio::io::unix::AsyncFd;

use crate::core::fallback_frame::SAMPLE_MAX;
use crate::datapath::perf;
use crate::hub::Hub;

/// Relay what one CPU's fallback perf buffer delivers, until aborted.
pub(crate) async fn fallback_reader(
    mut fd: AsyncFd<aya::maps::perf::PerfEventArrayBuffer<MapData>>,
    hub: Arc<Mutex<Hub>>,
) {
    let mut scratch = Box::new([0u8; SAMPLE_MAX]);
    loop {
        let mut guard = match fd.readable_mut().await {
            Ok(g) => g,
            Err(e) => {
                tracing::error!(error = %e, "fallback perf buffer; cross-family frames the fast path cannot rebuild are dropped");
                return;
            }
        };
        // Cleared before draining (see the initiation ring).
        guard.clear_ready();
        let mut h = hub.lock().expect("hub lock");
        perf::drain(guard.get_inner_mut(), &mut scratch, |ev| match ev {
            perf::Event::Sample(s) => h.relay_fallback(s),
            perf::Event::Lost(n) => h.metrics.fallback.lost += n,
        });
    }
}
