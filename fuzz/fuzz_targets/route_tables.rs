//! The /proc/net/route and /proc/net/ipv6_route parsers (default-route
//! interface for guessing the hub's endpoint).
#![no_main]

use libfuzzer_sys::fuzz_target;
use relay_user::io::netinfo::{parse_ipv4_default_route, parse_ipv6_default_route};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    for iface in [
        parse_ipv4_default_route(text),
        parse_ipv6_default_route(text),
    ]
    .into_iter()
    .flatten()
    {
        assert!(!iface.is_empty() && iface != "lo");
        assert!(!iface.contains(char::is_whitespace));
    }
});
