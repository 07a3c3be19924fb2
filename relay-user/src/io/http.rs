//! The hub's HTTP server: /metrics, /healthz and the status API. Routes
//! are axum's; connections are served by hyper's HTTP/1.1 builder, which
//! bounds what a client can make the hub hold: a request head of at most
//! [`MAX_REQUEST_HEAD`] bytes, read within [`HEAD_TIMEOUT`], one request
//! per connection (scrapes are rare; nothing to keep alive).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;

use crate::core::join::same;

/// hyper's smallest read buffer; a longer request head is refused.
pub const MAX_REQUEST_HEAD: usize = 8192;
/// A client that has not sent its request head by then is dropped.
pub const HEAD_TIMEOUT: Duration = Duration::from_secs(5);

/// What the server asks of the hub.
pub trait Api: Send + Sync + 'static {
    fn metrics(&self) -> String;
    /// JSON of [`crate::hub::HubStatus`].
    fn hub(&self) -> String;
    /// JSON array of [`crate::hub::SpokeStatus`].
    fn spokes(&self) -> String;
    /// JSON array of [`crate::hub::ServiceStatus`].
    fn services(&self) -> String;
    /// JSON array of [`crate::core::history::Point`].
    fn history(&self) -> String;
    /// The console page (HTML).
    fn console(&self) -> String;
    /// Ok while the hub relays: `Some(why)` when it does but is degraded
    /// (its store does not answer); `Err(why)` when it does not relay.
    fn health(&self) -> Result<Option<String>, String>;
}

type Shared = Arc<dyn Api>;

const TEXT: &str = "text/plain; charset=utf-8";
const JSON: &str = "application/json";
const HTML: &str = "text/html; charset=utf-8";
const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
const PROMETHEUS: &str = "text/plain; version=0.0.4; charset=utf-8";

fn reply(status: StatusCode, content_type: &'static str, body: String) -> Response {
    (status, [(header::CONTENT_TYPE, content_type)], body).into_response()
}

/// Who may read what. Without a token everything is open (an API bound
/// to loopback only); with one, the console and `/v1/*` need it, and
/// `/metrics` and `/healthz` too unless `metrics_open`.
#[derive(Clone, Default)]
pub struct Auth {
    pub token: Option<Arc<str>>,
    pub metrics_open: bool,
}

impl Auth {
    /// Everything open (an API on loopback).
    pub fn open() -> Self {
        Auth::default()
    }
}

/// The cookie a browser keeps the token in after `/?token=...`.
const COOKIE: &str = "relayhub_token";

fn presented(headers: &HeaderMap, token: &str) -> bool {
    let bearer = headers
        .get_all(header::AUTHORIZATION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .filter_map(|v| v.strip_prefix("Bearer "))
        .any(|t| same(t.trim(), token));
    let cookie = headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().strip_prefix(COOKIE)?.strip_prefix('='))
        .any(|t| same(t, token));
    bearer || cookie
}

async fn guard(
    State(auth): State<Auth>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let Some(token) = auth.token.as_deref() else {
        return next.run(req).await;
    };
    let path = req.uri().path();
    if auth.metrics_open && (path == "/metrics" || path == "/healthz") {
        return next.run(req).await;
    }
    if presented(req.headers(), token) {
        return next.run(req).await;
    }
    // The console's login link: `/?token=T` keeps T in a cookie and sends
    // the browser on to `/` (the token leaves the address bar).
    if path == "/"
        && let Some(t) = req
            .uri()
            .query()
            .into_iter()
            .flat_map(|q| q.split('&'))
            .find_map(|kv| kv.strip_prefix("token="))
        && same(t, token)
    {
        return (
            StatusCode::SEE_OTHER,
            [
                (header::LOCATION, "/".to_owned()),
                (
                    header::SET_COOKIE,
                    format!("{COOKIE}={token}; Path=/; HttpOnly; SameSite=Strict"),
                ),
            ],
        )
            .into_response();
    }
    (
        StatusCode::UNAUTHORIZED,
        [
            (header::WWW_AUTHENTICATE, "Bearer realm=\"relayhub\""),
            (header::CONTENT_TYPE, TEXT),
        ],
        "this hub's API needs its token: `relayhub status --token` on the hub prints it; \
         send it as `Authorization: Bearer TOKEN`, or open /?token=TOKEN in a browser\n",
    )
        .into_response()
}

/// The routes (HEAD is answered wherever GET is), behind `auth`.
pub fn router(api: Shared, auth: Auth) -> Router {
    Router::new()
        .route("/", get(|State(api): State<Shared>| async move { reply(StatusCode::OK, HTML, api.console()) }))
        .route("/v1/history", get(|State(api): State<Shared>| async move { reply(StatusCode::OK, JSON, api.history()) }))
        .route("/metrics", get(metrics))
        .route("/v1/hub", get(|State(api): State<Shared>| async move { reply(StatusCode::OK, JSON, api.hub()) }))
        .route("/v1/spokes", get(|State(api): State<Shared>| async move { reply(StatusCode::OK, JSON, api.spokes()) }))
        .route("/v1/services", get(|State(api): State<Shared>| async move { reply(StatusCode::OK, JSON, api.services()) }))
        .route("/healthz", get(health))
        .method_not_allowed_fallback(|| async { not_get() })
        .fallback(not_found)
        .with_state(api)
        .layer(axum::middleware::from_fn_with_state(auth, guard))
}

/// Prometheus text by default (what promtool and older scrapers parse);
/// OpenMetrics when the scraper asks for it.
async fn metrics(State(api): State<Shared>, headers: HeaderMap) -> Response {
    let body = api.metrics();
    let wants_openmetrics = headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|a| a.contains("application/openmetrics-text"));
    if wants_openmetrics {
        reply(StatusCode::OK, OPENMETRICS, body)
    } else {
        reply(
            StatusCode::OK,
            PROMETHEUS,
            crate::hub::metrics::to_prometheus_text(&body),
        )
    }
}

async fn health(State(api): State<Shared>) -> Response {
    match api.health() {
        Ok(None) => reply(StatusCode::OK, TEXT, "ok\n".into()),
        // Still 200: the hub relays, and a load balancer must not move
        // spokes away from it for a store outage.
        Ok(Some(why)) => reply(StatusCode::OK, TEXT, format!("degraded: {why}\n")),
        Err(why) => reply(StatusCode::SERVICE_UNAVAILABLE, TEXT, format!("{why}\n")),
    }
}

fn not_get() -> Response {
    reply(
        StatusCode::METHOD_NOT_ALLOWED,
        TEXT,
        "only GET is supported\n".into(),
    )
}

async fn not_found(method: Method) -> Response {
    if method != Method::GET && method != Method::HEAD {
        return not_get();
    }
    reply(
        StatusCode::NOT_FOUND,
        TEXT,
        "not found: try /, /metrics, /healthz, /v1/hub, /v1/spokes, /v1/services or /v1/history\n"
            .into(),
    )
}

pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

/// Serve `api` on `listener` behind `auth` until the task is aborted.
pub async fn serve(listener: TcpListener, api: Shared, auth: Auth) {
    serve_app(listener, router(api, auth), None).await
}

/// Connections served at once; more wait in the listen backlog.
pub const MAX_CONNECTIONS: usize = 256;

/// Serve the routes `app` on `listener` (over TLS with `tls`) with the
/// limits above, until the task is aborted. Handlers may extract
/// `ConnectInfo<SocketAddr>`.
pub async fn serve_app(listener: TcpListener, app: Router, tls: Option<tokio_rustls::TlsAcceptor>) {
    let mut http = hyper::server::conn::http1::Builder::new();
    http.keep_alive(false)
        .max_buf_size(MAX_REQUEST_HEAD)
        .timer(TokioTimer::new())
        .header_read_timeout(HEAD_TIMEOUT);
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        let Ok(permit) = slots.clone().acquire_owned().await else {
            return;
        };
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                tracing::warn!(error = %e, "http accept");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let service = TowerToHyperService::new(
            app.clone()
                .layer(axum::Extension(axum::extract::ConnectInfo(peer))),
        );
        let http = http.clone();
        let tls = tls.clone();
        tokio::spawn(async move {
            // A connection may not outlive its whole budget: the head
            // timeout bounds only the request head.
            let served = tokio::time::timeout(CONNECTION_TIMEOUT, async move {
                match tls {
                    Some(acceptor) => match acceptor.accept(stream).await {
                        Ok(s) => http.serve_connection(TokioIo::new(s), service).await,
                        Err(e) => {
                            tracing::debug!(%peer, error = %e, "TLS handshake");
                            Ok(())
                        }
                    },
                    None => http.serve_connection(TokioIo::new(stream), service).await,
                }
            })
            .await;
            match served {
                Ok(Err(e)) => tracing::debug!(%peer, error = %e, "http connection"),
                Err(_) => tracing::debug!(%peer, "http connection timed out"),
                Ok(Ok(())) => {}
            }
            drop(permit);
        });
    }
}

/// The longest one connection is served (request, body and answer).
pub const CONNECTION_TIMEOUT: Duration = Duration::from_secs(15);

/// Answer one request without a socket (tests, fuzzing).
pub async fn respond(api: Shared, req: axum::http::Request<Body>) -> (StatusCode, String, String) {
    respond_with(api, Auth::open(), req).await
}

/// [`respond`] behind `auth`.
pub async fn respond_with(
    api: Shared,
    auth: Auth,
    req: axum::http::Request<Body>,
) -> (StatusCode, String, String) {
    use tower::ServiceExt as _;
    let resp = router(api, auth)
        .oneshot(req)
        .await
        .unwrap_or_else(|e| match e {});
    let status = resp.status();
    let content_type = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let body = axum::body::to_bytes(resp.into_body(), usize::MAX)
        .await
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default();
    (status, content_type, body)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read as _, Write as _};

    /// Healthy, degraded (`Some(false)`) or down.
    struct Fake(Option<bool>);
    impl Api for Fake {
        fn metrics(&self) -> String {
            "m 1\n".into()
        }
        fn health(&self) -> Result<Option<String>, String> {
            match self.0 {
                Some(true) => Ok(None),
                Some(false) => Ok(Some("store unreachable".into())),
                None => Err("xdp detached".into()),
            }
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
    }

    /// The answer to GET `uri` with `headers`, behind `auth`: (status,
    /// Location, Set-Cookie).
    fn guarded(auth: &Auth, uri: &str, headers: &[(&str, &str)]) -> (u16, String, String) {
        use tower::ServiceExt as _;
        let mut req = axum::http::Request::get(uri);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let resp = rt()
            .block_on(
                router(Arc::new(Fake(Some(true))), auth.clone())
                    .oneshot(req.body(Body::empty()).unwrap()),
            )
            .unwrap_or_else(|e| match e {});
        let h = |n| {
            resp.headers()
                .get(n)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_owned()
        };
        (
            resp.status().as_u16(),
            h(header::LOCATION),
            h(header::SET_COOKIE),
        )
    }

    #[test]
    fn token_guards_console_and_api_beyond_loopback() {
        let t = "ab".repeat(32);
        let mut auth = Auth {
            token: Some(t.clone().into()),
            metrics_open: true,
        };
        let bearer = format!("Bearer {t}");
        let cookie = format!("other=1; relayhub_token={t}");
        for path in ["/", "/v1/spokes", "/v1/hub", "/v1/history", "/nope"] {
            assert_eq!(guarded(&auth, path, &[]).0, 401, "{path}");
            assert_eq!(
                guarded(&auth, path, &[("authorization", "Bearer x")]).0,
                401
            );
        }
        assert_eq!(guarded(&auth, "/", &[("authorization", &bearer)]).0, 200);
        assert_eq!(guarded(&auth, "/v1/spokes", &[("cookie", &cookie)]).0, 200);
        // The login link sets the cookie and drops the token from the URL.
        let (code, loc, set) = guarded(&auth, &format!("/?token={t}"), &[]);
        assert_eq!((code, loc.as_str()), (303, "/"));
        assert!(set.starts_with(&format!("relayhub_token={t};")) && set.contains("HttpOnly"));
        assert_eq!(guarded(&auth, "/?token=wrong", &[]).0, 401);
        assert_eq!(guarded(&auth, &format!("/v1/hub?token={t}"), &[]).0, 401);
        // Scrapes stay open unless protected.
        assert_eq!(guarded(&auth, "/metrics", &[]).0, 200);
        assert_eq!(guarded(&auth, "/healthz", &[]).0, 200);
        auth.metrics_open = false;
        assert_eq!(guarded(&auth, "/metrics", &[]).0, 401);
        assert_eq!(
            guarded(&auth, "/metrics", &[("authorization", &bearer)]).0,
            200
        );
        // No token: all open (an API on loopback).
        assert_eq!(guarded(&Auth::open(), "/", &[]).0, 200);
        assert!(same("abc", "abc") && !same("abc", "abd") && !same("abc", "ab"));
    }

    fn rt() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    }

    fn ask(healthy: bool, method: &str, uri: &str, accept: Option<&str>) -> (u16, String, String) {
        ask_as(healthy.then_some(true), method, uri, accept)
    }

    fn ask_as(
        health: Option<bool>,
        method: &str,
        uri: &str,
        accept: Option<&str>,
    ) -> (u16, String, String) {
        let mut req = axum::http::Request::builder().method(method).uri(uri);
        if let Some(a) = accept {
            req = req.header("accept", a);
        }
        let req = req.body(Body::empty()).unwrap();
        let (s, t, b) = rt().block_on(respond(Arc::new(Fake(health)), req));
        (s.as_u16(), t, b)
    }

    #[test]
    fn routes() {
        assert_eq!(ask(true, "GET", "/metrics", None).2, "m 1\n");
        assert_eq!(ask(true, "GET", "/healthz", None).0, 200);
        let (s, _, b) = ask(false, "GET", "/healthz?x=1", None);
        assert_eq!((s, b.as_str()), (503, "xdp detached\n"));
        let (s, _, b) = ask_as(Some(false), "GET", "/healthz", None);
        assert_eq!((s, b.as_str()), (200, "degraded: store unreachable\n"));
        assert_eq!(ask(true, "GET", "/nope", None).0, 404);
        let (s, t, b) = ask(true, "GET", "/v1/spokes", None);
        assert_eq!((s, t.as_str(), b.as_str()), (200, "application/json", "[]"));
        assert_eq!(ask(true, "GET", "/v1/hub", None).2, "{}");
        assert_eq!(ask(true, "POST", "/metrics", None).0, 405);
        assert_eq!(ask(true, "DELETE", "/nope", None).0, 405);
        assert_eq!(ask(true, "HEAD", "/healthz", None).0, 200);
    }

    #[test]
    fn metrics_formats() {
        let (_, t, _) = ask(
            true,
            "GET",
            "/metrics",
            Some("application/openmetrics-text;version=1.0.0"),
        );
        assert!(t.starts_with("application/openmetrics-text"), "{t}");
        let (_, t, _) = ask(true, "GET", "/metrics", None);
        assert!(t.starts_with("text/plain; version=0.0.4"), "{t}");
    }

    /// The limits, over a real socket: a request head larger than the
    /// limit and one that never completes are both refused, and a normal
    /// request still works afterwards.
    #[test]
    fn limits_over_a_socket() {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let listener = rt.block_on(bind("127.0.0.1:0".parse().unwrap())).unwrap();
        let addr = listener.local_addr().unwrap();
        rt.spawn(serve(listener, Arc::new(Fake(Some(true))), Auth::open()));
        let exchange = |req: &[u8]| {
            let mut s = std::net::TcpStream::connect(addr).unwrap();
            s.set_read_timeout(Some(HEAD_TIMEOUT * 3)).unwrap();
            // The server may close while a large request is still being written.
            let _ = s.write_all(req);
            let mut out = Vec::new();
            let _ = s.read_to_end(&mut out);
            String::from_utf8_lossy(&out).into_owned()
        };
        let ok = exchange(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n");
        assert!(ok.starts_with("HTTP/1.1 200"), "{ok}");
        assert!(ok.ends_with("\r\n\r\nok\n"), "{ok}");
        let big = format!(
            "GET /metrics HTTP/1.1\r\nHost: x\r\nX-Pad: {}\r\n\r\n",
            "a".repeat(MAX_REQUEST_HEAD * 2)
        );
        let answer = exchange(big.as_bytes());
        assert!(!answer.contains(" 200 "), "oversized head served: {answer}");
        let started = std::time::Instant::now();
        let answer = exchange(b"GET /metrics HTTP/1.1\r\nHost: x\r\n");
        assert!(
            !answer.contains(" 200 "),
            "incomplete head served: {answer}"
        );
        assert!(
            started.elapsed() < HEAD_TIMEOUT * 2,
            "slow client held for {:?}",
            started.elapsed()
        );
        assert!(exchange(b"GET /metrics HTTP/1.0\r\n\r\n").contains("m 1"));
        // Not HTTP at all.
        assert!(!exchange(b"\xff\xfe nonsense\r\n\r\n").contains(" 200 "));
    }
}
