//! Reading the fallback perf buffers (one per CPU): samples in order,
//! reassembled when they wrap the ring, without allocating.

use aya::maps::{MapData, perf::PerfEvent, perf::PerfEventArrayBuffer};

use crate::core::fallback_frame::SAMPLE_MAX;

/// An event of a perf buffer.
pub enum Event<'a> {
    Sample(&'a [u8]),
    /// The kernel dropped this many samples (buffer full).
    Lost(u64),
}

/// Hand every event waiting in `buf` to `f`. A sample that wraps the ring
/// is reassembled in `scratch` (no allocation); one larger than `scratch`
/// is reported as `Lost(1)`.
pub fn drain(
    buf: &mut PerfEventArrayBuffer<MapData>,
    scratch: &mut [u8; SAMPLE_MAX],
    mut f: impl FnMut(Event<'_>),
) {
    buf.for_each(|ev| match ev {
        PerfEvent::Sample { head, tail: [] } => f(Event::Sample(head)),
        PerfEvent::Sample { head, tail } => {
            let n = head.len() + tail.len();
            if n > scratch.len() {
                f(Event::Lost(1));
                return;
            }
            scratch[..head.len()].copy_from_slice(head);
            scratch[head.len()..n].copy_from_slice(tail);
            f(Event::Sample(&scratch[..n]));
        }
        PerfEvent::Lost { count } => f(Event::Lost(count)),
    });
}
