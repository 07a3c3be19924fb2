//! The userspace fallback's perf samples (`fallback::parse`): never a
//! panic; what parses names a real family and a payload inside the sample,
//! and the datagram the controller would send from it carries valid
//! checksums.
#![no_main]

use libfuzzer_sys::fuzz_target;
use relay_common::{Endpoint, FAMILY_V4, FAMILY_V6};
use relay_user::core::fallback_frame::parse;
use relay_user::io::sender::{build_v4, build_v6, csum_add, csum_fold};

fuzz_target!(|data: &[u8]| {
    let Ok(r) = parse(data) else {
        return;
    };
    assert!(matches!(r.to.family, FAMILY_V4 | FAMILY_V6));
    assert!(matches!(r.from_family, FAMILY_V4 | FAMILY_V6));
    let (base, end) = (data.as_ptr() as usize, data.as_ptr() as usize + data.len());
    let p = r.payload.as_ptr() as usize;
    assert!(p >= base && p + r.payload.len() <= end, "payload outside the sample");

    let hub = match r.to.family {
        FAMILY_V4 => Endpoint::v4([198, 51, 100, 1], r.hub.port),
        _ => Endpoint::v6([0x20, 1, 0xd, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1], r.hub.port),
    };
    let mut buf = Vec::new();
    if r.to.family == FAMILY_V4 {
        build_v4(&mut buf, &hub, &r.to, r.payload);
        assert_eq!(csum_fold(csum_add(0, &buf[..20])), 0, "IPv4 header checksum");
        let mut pseudo = csum_add(0, &buf[12..20]);
        pseudo += 17 + (buf.len() as u32 - 20);
        assert_eq!(csum_fold(csum_add(pseudo, &buf[20..])), 0, "UDP checksum");
    } else {
        build_v6(&mut buf, &hub, &r.to, r.payload);
        let mut pseudo = csum_add(0, &buf[8..40]);
        pseudo += 17 + (buf.len() as u32 - 40);
        assert_eq!(csum_fold(csum_add(pseudo, &buf[40..])), 0, "UDP checksum");
    }
    assert_eq!(&buf[buf.len() - r.payload.len()..], r.payload);
});
