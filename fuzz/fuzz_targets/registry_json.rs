//! The registry file parser: any text either parses into a registry that
//! round-trips exactly through `to_json`, or gives an error; never a panic.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use relay_user::core::registry::{MAX_SPOKE_ID, Registry, TunnelNet, validate_name};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let path = Path::new("/var/lib/relayhub/registry.json");
    match Registry::from_json(text, path) {
        Ok(reg) => {
            for s in reg.spokes() {
                assert!(validate_name(&s.name).is_ok(), "invalid name accepted");
                assert!((1..=MAX_SPOKE_ID).contains(&s.id), "id {} accepted", s.id);
            }
            let json = reg.to_json();
            let again = Registry::from_json(&json, path).expect("to_json output parses");
            assert_eq!(again, reg, "round trip");
            assert_eq!(again.to_json(), json, "to_json is stable");
            let _ = reg.check_net(&TunnelNet::default());
        }
        Err(e) => {
            let msg = e.to_string();
            assert!(
                msg.contains("registry.json"),
                "error does not name the file: {msg}"
            );
        }
    }
});
