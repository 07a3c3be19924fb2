//! Small text parsers of configuration and CLI input: the tunnel network
//! (`TunnelNet::from_str`), `--endpoint` (`normalize_endpoint`,
//! `endpoint_ip`), WireGuard keys (`parse_key`) and spoke names.
#![no_main]

use std::net::Ipv4Addr;

use libfuzzer_sys::fuzz_target;
use relay_user::io::netinfo::{endpoint_ip, normalize_endpoint};
use relay_user::core::registry::{TunnelNet, parse_key, validate_name};

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };

    if let Ok(net) = s.parse::<TunnelNet>() {
        assert!(net.prefix <= 30);
        assert_eq!(
            net.to_string().parse::<TunnelNet>(),
            Ok(net),
            "display round trip"
        );
        assert!(
            net.contains(net.hub) && net.contains(net.network) && net.contains(net.broadcast())
        );
        assert!(!net.is_spoke_host(net.hub));
        assert!(net.spoke_capacity() >= 1);
        let _ = net.netmask();
        for a in [0u32, 1, u32::MAX, u32::from(net.hub) + 1] {
            let _ = net.is_spoke_host(Ipv4Addr::from(a));
        }
    }

    if let Ok(e) = normalize_endpoint(s, 51820) {
        assert_eq!(
            normalize_endpoint(&e, 51820).ok().as_deref(),
            Some(e.as_str()),
            "normalize_endpoint is not idempotent on {s:?}"
        );
        assert!(!e.chars().any(|c| c.is_whitespace() || c == '#'));
        let _ = endpoint_ip(&e);
    }
    let _ = endpoint_ip(s);

    if let Some(k) = parse_key(s) {
        assert_eq!(k.to_base64(), s.trim(), "key is not canonical");
    }

    if validate_name(s).is_ok() {
        assert!((1..=32).contains(&s.len()));
        assert!(
            s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
        );
    }
});
