//! The userspace fallback's perf samples (`fallback::parse`): never a
//! panic; what parses names a real family and a payload inside the sample,
//! and the datagram the controller would send from it carries valid
//! checksums (recomputed from scratch by testkit, not by the sender's own
//! checksum code).
#![no_main]

use libfuzzer_sys::fuzz_target;
use relay_common::{Endpoint, FAMILY_V4, FAMILY_V6};
use relay_user::core::fallback_frame::parse;
use relay_user::io::sender::{build_v4, build_v6};
use testkit::Addr;
use testkit::checksum::{fold, sum16, udp_ok};

fuzz_target!(|data: &[u8]| {
    let Ok(r) = parse(data) else {
        return;
    };
    assert!(matches!(r.to.family, FAMILY_V4 | FAMILY_V6));
    assert!(matches!(r.from_family, FAMILY_V4 | FAMILY_V6));
    let (base, end) = (data.as_ptr() as usize, data.as_ptr() as usize + data.len());
    let p = r.payload.as_ptr() as usize;
    assert!(
        p >= base && p + r.payload.len() <= end,
        "payload outside the sample"
    );

    let hub = match r.to.family {
        FAMILY_V4 => Endpoint::v4([198, 51, 100, 1], r.hub.port),
        _ => Endpoint::v6(
            [0x20, 1, 0xd, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1],
            r.hub.port,
        ),
    };
    let mut buf = Vec::new();
    if r.to.family == FAMILY_V4 {
        build_v4(&mut buf, &hub, &r.to, r.payload);
        assert_eq!(fold(sum16(&buf[..20], 0)), 0xffff, "IPv4 header checksum");
        let (s, d): ([u8; 4], [u8; 4]) = (
            buf[12..16].try_into().unwrap(),
            buf[16..20].try_into().unwrap(),
        );
        assert!(
            udp_ok(Addr::V4(s.into()), Addr::V4(d.into()), &buf[20..]),
            "UDP checksum"
        );
    } else {
        build_v6(&mut buf, &hub, &r.to, r.payload);
        let (s, d): ([u8; 16], [u8; 16]) = (
            buf[8..24].try_into().unwrap(),
            buf[24..40].try_into().unwrap(),
        );
        assert!(
            udp_ok(Addr::V6(s.into()), Addr::V6(d.into()), &buf[40..]),
            "UDP checksum"
        );
    }
    assert_eq!(&buf[buf.len() - r.payload.len()..], r.payload);
});
