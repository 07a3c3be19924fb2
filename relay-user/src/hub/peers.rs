//! The spokes' peer lists, served over the tunnel: `GET /v1/peers` on the
//! hub's tunnel address (plain HTTP, port `--peers-port`).
//!
//! WireGuard authenticates the request: the listener is bound to the hub's
//! WireGuard interface (SO_BINDTODEVICE), and a frame only comes out of
//! that interface with source address A if it was decrypted with the key
//! of the peer whose AllowedIPs hold A. So the source address names the
//! spoke (innernet works the same way), and each spoke gets the list the
//! policy gives it, nothing else.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Mutex;

use axum::Router;
use axum::extract::{ConnectInfo, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use tokio::net::{TcpListener, TcpSocket};

use crate::core::registry::Spoke;
use crate::hub::Hub;
use crate::provision::render::render_peer_list;

/// Default TCP port of the peer list on the hub's tunnel address.
pub const DEFAULT_PEERS_PORT: u16 = 51822;

/// Weak: a connection still open at shutdown must not keep the hub alive.
type Shared = std::sync::Weak<Mutex<Hub>>;

impl Hub {
    /// The peer list of the spoke whose tunnel address is `addr`, if one
    /// has it.
    pub(crate) fn peer_list_for(&self, addr: Ipv4Addr) -> Option<String> {
        let spoke = self.registry.spokes().iter().find(|s| s.address == addr)?;
        let policy = self.policy.current();
        let peers: Vec<&Spoke> = self
            .registry
            .spokes()
            .iter()
            .filter(|s| s.id != spoke.id)
            .filter(|s| policy.is_none_or(|p| p.allows(&spoke.name, &s.name)))
            .collect();
        Some(render_peer_list(
            spoke,
            &self.facts.hub_public_key,
            &self.facts.net,
            &peers,
            self.facts.keepalive,
        ))
    }
}

/// The routes of the tunnel-side server.
pub(crate) fn router(hub: Shared) -> Router {
    Router::new()
        .route("/v1/peers", get(peers))
        .fallback(|| async {
            (
                StatusCode::NOT_FOUND,
                "not found: the hub's tunnel address serves GET /v1/peers\n",
            )
        })
        .with_state(hub)
}

async fn peers(State(hub): State<Shared>, ConnectInfo(peer): ConnectInfo<SocketAddr>) -> Response {
    let ip = match peer.ip() {
        IpAddr::V4(ip) => Some(ip),
        IpAddr::V6(ip) => ip.to_ipv4_mapped(),
    };
    let Some(hub) = hub.upgrade() else {
        return (StatusCode::SERVICE_UNAVAILABLE, "the hub is stopping\n").into_response();
    };
    let list = ip.and_then(|ip| hub.lock().expect("hub lock").peer_list_for(ip));
    match list {
        Some(text) => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            text,
        )
            .into_response(),
        None => (
            StatusCode::FORBIDDEN,
            format!(
                "no spoke has the tunnel address {}; the peer list is for registered spokes, over the tunnel\n",
                peer.ip()
            ),
        )
            .into_response(),
    }
}

/// Listen on the hub's tunnel address, on its WireGuard interface only.
pub(crate) fn bind(wg_iface: &str, addr: Ipv4Addr, port: u16) -> anyhow::Result<TcpListener> {
    use anyhow::Context as _;
    let at = SocketAddr::from((addr, port));
    let socket = TcpSocket::new_v4()?;
    socket.set_reuseaddr(true)?;
    socket
        .bind_device(Some(wg_iface.as_bytes()))
        .with_context(|| format!("binding the peer-list server to interface {wg_iface}"))?;
    socket.bind(at).with_context(|| {
        format!("peer-list server on {at} (--peers-port; 0 turns it off): is the port taken?")
    })?;
    Ok(socket.listen(64)?)
}
