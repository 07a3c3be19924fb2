//! A small HTTP/1.1 server for /metrics and /healthz. Requests are tiny
//! and rare (scrapes), so one short-lived task per connection and
//! `Connection: close` keep it simple.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// What the server asks of the hub.
pub trait Api: Send + Sync + 'static {
    fn metrics(&self) -> String;
    /// JSON of [`crate::cli::status::HubStatus`].
    fn hub(&self) -> String;
    /// JSON array of [`crate::cli::status::SpokeStatus`].
    fn spokes(&self) -> String;
    /// Ok while healthy, else the reason.
    fn health(&self) -> Result<(), String>;
}

pub struct Response {
    pub status: u16,
    pub content_type: &'static str,
    pub body: String,
}

/// Route one request line. Sans-IO so it can be tested directly.
pub fn route(api: &dyn Api, method: &str, path: &str) -> Response {
    route_accepting(api, method, path, None)
}

/// [`route`], honouring the request's Accept header: /metrics is served
/// as OpenMetrics when the scraper asks for it, else in the classic
/// Prometheus text format (what promtool and older scrapers parse).
pub fn route_accepting(api: &dyn Api, method: &str, path: &str, accept: Option<&str>) -> Response {
    let text = |status, body: String| Response {
        status,
        content_type: "text/plain; charset=utf-8",
        body,
    };
    let path = path.split('?').next().unwrap_or(path);
    match (method, path) {
        ("GET", "/metrics") => {
            let body = api.metrics();
            if accept.is_some_and(|a| a.contains("application/openmetrics-text")) {
                Response {
                    status: 200,
                    content_type: "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    body,
                }
            } else {
                Response {
                    status: 200,
                    content_type: "text/plain; version=0.0.4; charset=utf-8",
                    body: crate::hub::metrics::to_prometheus_text(&body),
                }
            }
        }
        ("GET", "/v1/hub") => Response {
            status: 200,
            content_type: "application/json",
            body: api.hub(),
        },
        ("GET", "/v1/spokes") => Response {
            status: 200,
            content_type: "application/json",
            body: api.spokes(),
        },
        ("GET", "/healthz") => match api.health() {
            Ok(()) => text(200, "ok\n".into()),
            Err(why) => text(503, format!("{why}\n")),
        },
        ("GET", _) => text(
            404,
            "not found: try /metrics, /healthz, /v1/hub or /v1/spokes\n".into(),
        ),
        _ => text(405, "only GET is supported\n".into()),
    }
}

/// Method and path of an HTTP/1.x request head; None if it is not one.
pub fn parse_request_line(head: &[u8]) -> Option<(&str, &str)> {
    let end = head.iter().position(|&b| b == b'\n').unwrap_or(head.len());
    let line = std::str::from_utf8(&head[..end])
        .ok()?
        .trim_end_matches('\r');
    let mut parts = line.split(' ');
    let (method, path, version) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some()
        || !version.starts_with("HTTP/1.")
        || method.is_empty()
        || !method.bytes().all(|b| b.is_ascii_uppercase())
        || !path.starts_with('/')
    {
        return None;
    }
    Some((method, path))
}

/// The value of header `name` (case-insensitive) in a request head.
pub fn header<'a>(head: &'a [u8], name: &str) -> Option<&'a str> {
    let text = std::str::from_utf8(head).ok()?;
    text.split('\n').skip(1).find_map(|line| {
        let (k, v) = line.split_once(':')?;
        k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        503 => "Service Unavailable",
        _ => "",
    }
}

const MAX_REQUEST: usize = 8192;

async fn handle(api: Arc<dyn Api>, mut stream: TcpStream) -> std::io::Result<()> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    // Read the request head, bounded in size and time.
    let head = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            let n = stream.read(&mut chunk).await?;
            if n == 0 {
                return Ok::<_, std::io::Error>(None);
            }
            buf.extend_from_slice(&chunk[..n]);
            if buf.windows(4).any(|w| w == b"\r\n\r\n") || buf.windows(2).any(|w| w == b"\n\n") {
                return Ok(Some(()));
            }
            if buf.len() > MAX_REQUEST {
                return Ok(None);
            }
        }
    })
    .await;
    let resp = match head {
        Ok(Ok(Some(()))) => match parse_request_line(&buf) {
            Some((m, p)) => route_accepting(api.as_ref(), m, p, header(&buf, "accept")),
            None => Response {
                status: 400,
                content_type: "text/plain",
                body: "bad request\n".into(),
            },
        },
        _ => return Ok(()),
    };
    let head = format!(
        "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        resp.status,
        reason(resp.status),
        resp.content_type,
        resp.body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(resp.body.as_bytes()).await?;
    stream.shutdown().await
}

pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

pub async fn serve(listener: TcpListener, api: Arc<dyn Api>) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                let api = api.clone();
                tokio::spawn(async move {
                    if let Err(e) = handle(api, stream).await {
                        tracing::debug!(error = %e, "http connection");
                    }
                });
            }
            Err(e) => {
                tracing::warn!(error = %e, "http accept");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Fake(bool);
    impl Api for Fake {
        fn metrics(&self) -> String {
            "m 1\n".into()
        }
        fn health(&self) -> Result<(), String> {
            if self.0 {
                Ok(())
            } else {
                Err("xdp detached".into())
            }
        }
        fn hub(&self) -> String {
            "{}".into()
        }
        fn spokes(&self) -> String {
            "[]".into()
        }
    }

    #[test]
    fn request_lines() {
        assert_eq!(
            parse_request_line(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"),
            Some(("GET", "/metrics"))
        );
        assert_eq!(
            parse_request_line(b"GET /healthz HTTP/1.0\n\n"),
            Some(("GET", "/healthz"))
        );
        for bad in [
            &b""[..],
            b"GET\r\n",
            b"GET /x\r\n",
            b"GET x HTTP/1.1\r\n",
            b"get /x HTTP/1.1\r\n",
            b"GET /x HTTP/2 extra\r\n",
            b"\xff\xfe /x HTTP/1.1\r\n",
        ] {
            assert_eq!(parse_request_line(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn headers_and_metrics_formats() {
        let head = b"GET /metrics HTTP/1.1\r\nHost: x\r\nACCEPT: application/openmetrics-text;version=1.0.0\r\n\r\n";
        assert_eq!(
            header(head, "accept"),
            Some("application/openmetrics-text;version=1.0.0")
        );
        assert_eq!(header(head, "user-agent"), None);
        let om = route_accepting(&Fake(true), "GET", "/metrics", header(head, "accept"));
        assert!(om.content_type.starts_with("application/openmetrics-text"));
        let plain = route(&Fake(true), "GET", "/metrics");
        assert!(plain.content_type.starts_with("text/plain; version=0.0.4"));
    }

    #[test]
    fn routes() {
        assert_eq!(route(&Fake(true), "GET", "/metrics").body, "m 1\n");
        assert_eq!(route(&Fake(true), "GET", "/healthz").status, 200);
        let r = route(&Fake(false), "GET", "/healthz?x=1");
        assert_eq!((r.status, r.body.as_str()), (503, "xdp detached\n"));
        assert_eq!(route(&Fake(true), "GET", "/nope").status, 404);
        let r = route(&Fake(true), "GET", "/v1/spokes");
        assert_eq!(
            (r.status, r.content_type, r.body.as_str()),
            (200, "application/json", "[]")
        );
        assert_eq!(route(&Fake(true), "POST", "/metrics").status, 405);
    }
}
