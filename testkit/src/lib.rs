//! relayhub's test toolkit, shared by relay-user's tests, the end-to-end
//! harness (`tests/`), the benchmark (`bench/`) and the fuzz targets
//! (`fuzz/`):
//!
//! - [`checksum`]: Internet checksums computed from scratch (never by an
//!   incremental update, so they check the program's);
//! - [`frame`]: Ethernet / IPv4 / IPv6 / UDP frame builders;
//! - [`wg`]: WireGuard message builders (initiations with a valid mac1,
//!   responses, cookie replies, transport messages and keepalives);
//! - [`netns`]: network namespace guards that clean up on drop;
//! - [`etcd`]: a throwaway etcd member for the shared-store tests;
//! - [`xdp`]: the in-kernel harness for the relay program
//!   (BPF_PROG_TEST_RUN) and its per-slot counters.
//!
//! Builders only: what a frame *should* become is each test's business
//! (the golden cases' expectations and xdp_fuzz's reference model stay
//! apart).

pub mod checksum;
pub mod cmd;
pub mod etcd;
pub mod frame;
pub mod netns;
pub mod wg;
pub mod xdp;

pub use frame::{Addr, Csum, Frame};
