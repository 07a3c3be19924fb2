//! The controller empties a source's cached "stranger" entries when it
//! installs the endpoint (in the kernel, no pins): the relay program, run
//! on a frame from an endpoint no spoke has, remembers it as a stranger
//! on this CPU; `set_spoke_endpoint` must forget that at once, or the new
//! spoke's frames would pass up the stack for the entry's lifetime.

use std::net::Ipv4Addr;

use aya::{TestRun, TestRunOptions, programs::Xdp};
use relay_common::{Endpoint, NO_SLOT, PROG_RELAY, SourceCache};
use relay_user::datapath::{Capacity, Datapath};
use testkit::{
    Addr, Csum, Frame,
    wg::transport,
    xdp::{pin_to_cpu0, xdp_md},
};

const PORT: u16 = 51820;

fn is_root() -> bool {
    // SAFETY: plain syscall.
    unsafe { libc::geteuid() == 0 }
}

#[test]
fn installing_an_endpoint_forgets_it_as_a_stranger() {
    if !is_root() {
        return;
    }
    pin_to_cpu0();
    let mut dp = Datapath::load(relay_user::EBPF_OBJECT, &Capacity::default(), PORT, 0, None)
        .expect("load the relay program");
    let x = Endpoint::v4([203, 0, 113, 50], 40050);
    let frame = Frame {
        eth_dst: [2, 0, 0, 0, 0, 1],
        eth_src: [2, 0, 0, 0, 0, 2],
        src: Addr::V4(Ipv4Addr::new(203, 0, 113, 50)),
        dst: Addr::V4(Ipv4Addr::new(198, 51, 100, 1)),
        ttl: 57,
        sport: 40050,
        dport: PORT,
        payload: transport(0x1234_5678, 16),
        csum: Csum::Full,
    }
    .build();
    let ctx = xdp_md(frame.len(), 1);
    let mut out = vec![0u8; frame.len() + 256];
    let prog: &Xdp = dp
        .ebpf_mut()
        .program(PROG_RELAY)
        .unwrap()
        .try_into()
        .unwrap();
    let r = prog
        .test_run(TestRunOptions {
            data_in: Some(&frame),
            data_out: Some(&mut out),
            ctx_in: Some(&ctx),
            ..Default::default()
        })
        .expect("test run");
    assert_eq!(r.return_value, 2, "a stranger's frame passes");
    let strangers = |dp: &Datapath| {
        dp.source_entries(&x)
            .into_iter()
            .filter(|e| e.slot == NO_SLOT && e.endpoint == x)
            .count()
    };
    assert_eq!(strangers(&dp), 1, "remembered as a stranger on one CPU");

    dp.set_spoke_endpoint(1, None, Some(x)).unwrap();
    assert_eq!(strangers(&dp), 0, "forgotten when installed");
    assert!(
        dp.source_entries(&x)
            .iter()
            .all(|e| *e == SourceCache::default()),
        "every CPU's entry emptied"
    );
}
