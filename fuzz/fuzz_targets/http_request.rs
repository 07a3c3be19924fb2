//! The HTTP API's routing: any method and request target that makes a
//! valid request gets one of the API's statuses, and only GET/HEAD succeed.
#![no_main]

use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use relay_user::io::http::{Api, respond};

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
    fn services(&self) -> String {
        "[]".into()
    }
    fn history(&self) -> String {
        "[]".into()
    }
    fn console(&self) -> String {
        "<!doctype html>".into()
    }
    fn health(&self) -> Result<Option<String>, String> {
        Err("down".into())
    }
}

fuzz_target!(|data: &[u8]| {
    // "METHOD TARGET": hyper has already parsed the bytes this far when
    // the router sees them; requests it could not build never get here.
    let Some(space) = data.iter().position(|&b| b == b' ') else {
        return;
    };
    let Ok(method) = axum::http::Method::from_bytes(&data[..space]) else {
        return;
    };
    let Ok(uri) = axum::http::Uri::try_from(&data[space + 1..]) else {
        return;
    };
    let Ok(req) = axum::http::Request::builder()
        .method(method.clone())
        .uri(uri)
        .body(axum::body::Body::empty())
    else {
        return;
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    let (status, _, _) = rt.block_on(respond(Arc::new(Fake), req));
    let status = status.as_u16();
    assert!(matches!(status, 200 | 404 | 405 | 503), "status {status}");
    if method != axum::http::Method::GET && method != axum::http::Method::HEAD {
        assert_eq!(status, 405, "{method}");
    }
});
