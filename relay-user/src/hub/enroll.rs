//! Enrollment: a node joins with a token (`relayhub token create`) over
//! TLS on the hub's public address (`--enroll-port`, default 51821/tcp).
//!
//! - `GET /v1/join.sh`: `contrib/spoke/relayhub-join`, with this hub's
//!   address (as the node asked for it) and TLS pin filled in.
//! - `POST /v1/join` (form: `token`, `public_key`, `name`, optional
//!   `family`): registers the node's public key under `name` and answers
//!   its wg-quick file with a placeholder where the node puts its private
//!   key, which never leaves the node. A node that asks over IPv6 gets
//!   the hub's IPv6 endpoint unless it sends `family=ipv4`.
//!
//! The certificate is self-signed; join commands carry the SHA-256 of its
//! public key and curl checks it (`--pinnedpubkey`), so no CA is needed.
//! Attempts are rate-limited per source address and in total
//! (`core::join::JoinLimiter`); a refused request registers nothing.
//! Enrollments run one at a time: the token's use is taken first, then
//! the spoke is registered, and a registration that fails gives the use
//! back. A hub that dies between the two has used the token up without a
//! spoke (the safe side: a token never admits more nodes than it says).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime};

use axum::Router;
use axum::extract::rejection::FormRejection;
use axum::extract::{ConnectInfo, DefaultBodyLimit, Form, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use tokio::net::TcpListener;

use crate::core::join::{JoinLimiter, JoinLimits};
use crate::core::policy::Policy;
use crate::core::registry::{Family, Registry, TunnelNet, parse_key, validate_name};
use crate::hub::Hub;
use crate::provision::spoke::{self as provision, SpokeCtx};
use crate::store::Store;
use crate::store::dir::StateDir;
use crate::store::token::TokenStore;

/// Default TCP port of the enrollment endpoint.
pub const DEFAULT_ENROLL_PORT: u16 = 51821;
/// The largest join request body: a token, a key and a name fit in a
/// tenth of it.
pub const MAX_JOIN_BODY: usize = 2048;
/// The join script the hub serves (and ships in contrib/spoke).
pub const JOIN_SCRIPT: &str = include_str!("../../../contrib/spoke/relayhub-join");

/// What enrollment needs besides the running hub.
pub(crate) struct Enroller {
    pub(crate) state: StateDir,
    /// Where tokens, registry and policy are (maybe shared with other hubs).
    pub(crate) store: Store,
    pub(crate) net: TunnelNet,
    /// The hub's WireGuard port (for endpoints without one).
    pub(crate) port: u16,
    pub(crate) keepalive: u16,
    /// `--endpoint`, if given.
    pub(crate) endpoint: Option<String>,
    /// `--hub-name`: in a mesh, nodes that join here are homed here.
    pub(crate) hub_name: Option<String>,
    pub(crate) pin: String,
    pub(crate) limiter: Mutex<JoinLimiter>,
    /// One enrollment at a time.
    pub(crate) serial: tokio::sync::Mutex<()>,
    /// Weak: a connection still open at shutdown must not keep the hub
    /// (its interface, its XDP program) alive.
    pub(crate) hub: std::sync::Weak<Mutex<Hub>>,
}

type Shared = Arc<Enroller>;

/// A refusal: the status and the one line the node prints.
#[derive(Debug)]
struct Refusal(StatusCode, String);

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        text(self.0, format!("{}\n", self.1))
    }
}

impl From<crate::store::token::TokenStoreError> for Refusal {
    fn from(e: crate::store::token::TokenStoreError) -> Self {
        internal("update its tokens", e)
    }
}

fn text(status: StatusCode, body: String) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        body,
    )
        .into_response()
}

/// The routes of the enrollment server.
pub(crate) fn router(e: Shared) -> Router {
    Router::new()
        .route("/v1/join", post(join))
        .route("/v1/join.sh", get(script))
        .layer(DefaultBodyLimit::max(MAX_JOIN_BODY))
        .fallback(|| async {
            Refusal(
                StatusCode::NOT_FOUND,
                "not found: this is relayhub's enrollment endpoint (POST /v1/join, GET /v1/join.sh)"
                    .into(),
            )
        })
        .with_state(e)
}

/// The join script with this hub's address (as the node reached it) and
/// pin as defaults.
async fn script(State(e): State<Shared>, headers: HeaderMap) -> Response {
    // Only characters of a host[:port] go into the script.
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .filter(|h| {
            !h.is_empty()
                && h.len() <= 255
                && h.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b".:-[]".contains(&b))
        });
    let Some(host) = host else {
        return Refusal(StatusCode::BAD_REQUEST, "no usable Host header".into()).into_response();
    };
    let mut out = String::with_capacity(JOIN_SCRIPT.len() + 200);
    let mut lines = JOIN_SCRIPT.lines();
    if let Some(shebang) = lines.next() {
        out.push_str(shebang);
        out.push('\n');
    }
    out.push_str(&format!(
        "# Served by the hub: its address and TLS pin.\n: \"${{RELAYHUB_HUB:={host}}}\"\n: \"${{RELAYHUB_PIN:={}}}\"\n",
        e.pin
    ));
    for l in lines {
        out.push_str(l);
        out.push('\n');
    }
    text(StatusCode::OK, out)
}

async fn join(
    State(e): State<Shared>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    form: Result<Form<HashMap<String, String>>, FormRejection>,
) -> Response {
    // An IPv4 client on the dual-stack socket arrives as ::ffff:a.b.c.d.
    let source = peer.ip().to_canonical();
    let admitted = e
        .limiter
        .lock()
        .expect("limiter lock")
        .admit(source, Instant::now());
    if let Err(retry) = admitted {
        let secs = retry.as_secs().max(1);
        let mut r = Refusal(
            StatusCode::TOO_MANY_REQUESTS,
            format!("too many join attempts from {source}; retry in {secs} s"),
        )
        .into_response();
        if let Ok(v) = secs.to_string().parse() {
            r.headers_mut().insert(header::RETRY_AFTER, v);
        }
        return r;
    }
    let form = match form {
        Ok(Form(f)) => f,
        Err(rej) => {
            let status = rej.status();
            return Refusal(status, format!("not a join request: {}", rej.body_text()))
                .into_response();
        }
    };
    let mut request = match JoinRequest::from_form(&form) {
        Ok(r) => r,
        Err(why) => return Refusal(StatusCode::BAD_REQUEST, why).into_response(),
    };
    if request.family.is_none() && source.is_ipv6() {
        // A node that came over IPv6 may have nothing else: its file names
        // the hub's IPv6 endpoint unless it asked otherwise.
        request.family = Some(Family::Ipv6);
        request.family_from_source = true;
    }
    let _one_at_a_time = e.serial.lock().await;
    let worker = e.clone();
    let result = tokio::task::spawn_blocking(move || worker.enroll(&request)).await;
    match result {
        Ok(Ok(Enrolled {
            conf,
            registry,
            stamp,
            policy,
            name,
        })) => {
            tracing::info!(%peer, name, "spoke joined with a token");
            let Some(hub) = e.hub.upgrade() else {
                return Refusal(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "the hub is stopping".into(),
                )
                .into_response();
            };
            let mut h = hub.lock().expect("hub lock");
            // Applied now, not at the next registry poll: the node comes up
            // right after this answer and its first handshake must find
            // the hub's WireGuard knowing it.
            h.registry_stamp = stamp;
            if let Err(err) = h.apply_registry(&registry) {
                tracing::error!(error = %err, "applying the registry after a join");
            }
            // A token's group changed the policy: the node's first peer
            // list must follow it too.
            h.offer_policy(policy);
            text(StatusCode::OK, conf)
        }
        Ok(Err(Refusal(status, why))) => {
            tracing::info!(%peer, status = status.as_u16(), reason = %why, "join refused");
            Refusal(status, why).into_response()
        }
        Err(err) => {
            tracing::error!(error = %err, "enrollment task");
            Refusal(
                StatusCode::INTERNAL_SERVER_ERROR,
                "enrollment failed".into(),
            )
            .into_response()
        }
    }
}

/// A join that went through: the node's file, and the store's registry
/// (with its stamp) and policy text read after it, which the hub applies
/// at once.
struct Enrolled {
    conf: String,
    registry: Registry,
    stamp: Option<u64>,
    policy: Result<Option<String>, crate::core::policy::PolicyError>,
    name: String,
}

/// A join request, checked for shape.
#[derive(Debug, Clone)]
struct JoinRequest {
    token: String,
    public_key: wireguard_control::Key,
    name: String,
    family: Option<Family>,
    /// `family` was not asked for but follows from the request's source.
    family_from_source: bool,
}

impl JoinRequest {
    fn from_form(form: &HashMap<String, String>) -> Result<Self, String> {
        for k in form.keys() {
            if !matches!(k.as_str(), "token" | "public_key" | "name" | "family") {
                return Err(format!(
                    "unknown field {k:?}; a join request has token, public_key, name and optionally family"
                ));
            }
        }
        let field = |k: &str| {
            form.get(k)
                .map(|v| v.trim())
                .filter(|v| !v.is_empty())
                .ok_or_else(|| format!("missing field {k:?}"))
        };
        let token = field("token")?.to_owned();
        let key_text = field("public_key")?;
        let public_key = parse_key(key_text).ok_or_else(|| {
            "public_key is not a WireGuard public key (44 base64 characters, as `wg pubkey` prints)"
                .to_owned()
        })?;
        let name = field("name")?.to_owned();
        validate_name(&name).map_err(|e| format!("name: {e}"))?;
        let family = match form.get("family").map(|f| f.trim()) {
            None | Some("") => None,
            Some("ipv4") => Some(Family::Ipv4),
            Some("ipv6") => Some(Family::Ipv6),
            Some(other) => return Err(format!("family {other:?} is not ipv4 or ipv6")),
        };
        Ok(JoinRequest {
            token,
            public_key,
            name,
            family,
            family_from_source: false,
        })
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn internal(what: &str, e: impl std::fmt::Display) -> Refusal {
    tracing::error!(error = %e, "{what}");
    Refusal(
        StatusCode::INTERNAL_SERVER_ERROR,
        format!("the hub could not {what}; its log says why"),
    )
}

impl Enroller {
    /// `from_source`: the family follows from the request's source, so an
    /// IPv4 `--endpoint` does not apply (the hub's IPv6 endpoint is the
    /// one saved, or guessed from its addresses).
    fn ctx(&self, from_source: bool) -> SpokeCtx<'_> {
        SpokeCtx {
            state: &self.state,
            store: &self.store,
            net: &self.net,
            endpoint: if from_source {
                None
            } else {
                self.endpoint.as_deref()
            },
            port: self.port,
            keepalive: self.keepalive,
        }
    }

    /// Check, take a use, register.
    fn enroll(&self, req: &JoinRequest) -> Result<Enrolled, Refusal> {
        let now = unix_now();
        let tokens = self.store.tokens();
        let all = tokens.load().map_err(|e| internal("read its tokens", e))?;
        let group = all
            .check(&req.token, now)
            .map_err(|e| Refusal(StatusCode::FORBIDDEN, e.to_string()))?
            .group
            .clone();
        let registry = self
            .store
            .registry()
            .load()
            .map_err(|e| internal("read its registry", e))?;
        if let Some(s) = registry.get_by_key(&req.public_key) {
            return Err(Refusal(
                StatusCode::CONFLICT,
                format!(
                    "this public key is already registered as spoke {:?}",
                    s.name
                ),
            ));
        }
        if registry.get(&req.name).is_some() {
            return Err(Refusal(
                StatusCode::CONFLICT,
                format!(
                    "a spoke named {:?} is already registered; join with another name (--name or RELAYHUB_NAME)",
                    req.name
                ),
            ));
        }
        let rec = tokens.update(|t| {
            t.redeem(&req.token, &req.name, now)
                .map_err(|e| Refusal(StatusCode::FORBIDDEN, e.to_string()))
        })?;
        let refund = || {
            let r = tokens.update(|t| {
                t.refund(&rec.id, &req.name);
                Ok::<_, crate::store::token::TokenStoreError>(())
            });
            if let Err(e) = r {
                tracing::error!(error = %e, token = rec.id, "giving a token's use back");
            }
        };
        let key = req.public_key.to_base64();
        let mut conf = match provision::add_homed(
            &self.ctx(req.family_from_source),
            &req.name,
            Some(&key),
            req.family,
            self.hub_name.as_deref(),
        ) {
            Ok(c) => c,
            Err(e) => {
                refund();
                return Err(Refusal(StatusCode::CONFLICT, format!("{e:#}")));
            }
        };
        if let Some(g) = &group {
            let added = self.store.policy().update(&mut |cur| {
                let mut p = cur.unwrap_or_else(Policy::allow_all);
                let mut members = p.groups.get(g).cloned().unwrap_or_default();
                members.push(req.name.clone());
                p.set_group(g, &members)?;
                Ok(p)
            });
            if let Err(e) = added {
                // Without its group the node would get the wrong peers.
                let _ = provision::remove(&self.ctx(false), &req.name);
                refund();
                return Err(internal("add the spoke to its token's group", e));
            }
            // Rendered again: the peers follow the group just joined.
            conf = provision::config_in(&self.ctx(req.family_from_source), &req.name, req.family)
                .map_err(|e| internal("render the spoke's file", format!("{e:#}")))?;
        }
        // Stamp first: a write in between makes the hub read it again.
        let stamp = self.store.registry().stamp().ok();
        let registry = self
            .store
            .registry()
            .load()
            .map_err(|e| internal("read its registry", e))?;
        Ok(Enrolled {
            conf,
            registry,
            stamp,
            policy: self.store.policy().read_text(),
            name: req.name.clone(),
        })
    }
}

/// Listen on every address of the hub (IPv6 and IPv4 on one socket where
/// the system allows it).
pub async fn bind(port: u16) -> anyhow::Result<TcpListener> {
    use anyhow::Context as _;
    match TcpListener::bind(SocketAddr::from((std::net::Ipv6Addr::UNSPECIFIED, port))).await {
        Ok(l) => Ok(l),
        // No IPv6 on this host.
        Err(_) => TcpListener::bind(SocketAddr::from((std::net::Ipv4Addr::UNSPECIFIED, port)))
            .await
            .with_context(|| {
                format!("enrollment endpoint on port {port}/tcp (--enroll-port; 0 turns it off): is the port taken?")
            }),
    }
}

/// The TLS side: rustls with the state directory's identity.
pub fn tls_acceptor(state: &StateDir) -> anyhow::Result<(tokio_rustls::TlsAcceptor, String)> {
    use anyhow::Context as _;
    let id = state.enroll_identity()?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?
        .with_no_client_auth()
        .with_single_cert(vec![id.cert], id.key)
        .context("the enrollment endpoint's TLS identity")?;
    Ok((tokio_rustls::TlsAcceptor::from(Arc::new(config)), id.pin))
}

/// `JoinLimits` for the hub (see `core::join`).
pub fn limiter() -> Mutex<JoinLimiter> {
    Mutex::new(JoinLimiter::new(JoinLimits::default()))
}
