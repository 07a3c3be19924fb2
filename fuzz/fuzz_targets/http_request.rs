//! The HTTP request-line parser and router of the metrics/API server.
#![no_main]

use libfuzzer_sys::fuzz_target;
use relay_user::io::http::{Api, parse_request_line, route};

struct Fake;

impl Api for Fake {
    fn metrics(&self) -> String {
        "m 1\n".into()
    }
    fn hub(&self) -> String {
        "{}".into()
    }
    fn spokes(&self) -> String {
        "[]".into()
    }
    fn health(&self) -> Result<(), String> {
        Err("down".into())
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((method, path)) = parse_request_line(data) else {
        return;
    };
    assert!(!method.is_empty() && method.bytes().all(|b| b.is_ascii_uppercase()));
    assert!(path.starts_with('/'));
    assert!(!path.contains(' ') && !path.contains('\n'));
    let r = route(&Fake, method, path);
    assert!(
        matches!(r.status, 200 | 404 | 405 | 503),
        "status {}",
        r.status
    );
    if method != "GET" {
        assert_eq!(r.status, 405);
    }
});
