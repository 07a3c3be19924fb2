//! The hub's DNS server on its tunnel address (10.88.0.1:53, UDP and
//! TCP): hickory-server carries the queries, [`crate::core::names`]
//! decides the answers. Only spokes reach it (it binds the tunnel
//! address), and it answers for its zone only: it is no resolver.

use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use hickory_proto::op::{Metadata, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA, SOA};
use hickory_proto::rr::{LowerName, Name, RData, Record, RecordType};
use hickory_server::net::runtime::Time;
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::zone_handler::MessageResponseBuilder;

use crate::core::names::{Answer, QType, Zone};

/// The TTL of every answer: names follow `spoke add/remove` within a few
/// seconds, and negative answers are cached no longer either.
pub const TTL: u32 = 5;
/// TCP clients that send nothing are dropped after this.
const TCP_IDLE: Duration = Duration::from_secs(5);

/// The zone the server answers from, replaced whole when the registry
/// changes (queries read it under a short read lock).
#[derive(Clone)]
pub struct Names(Arc<RwLock<Served>>);

struct Served {
    zone: Zone,
    /// SOA serial: bumped whenever the zone's content changes.
    serial: u32,
}

impl Names {
    pub fn new(zone: Zone) -> Self {
        Names(Arc::new(RwLock::new(Served { zone, serial: 1 })))
    }

    /// Replaces the zone; a zone equal to the served one changes nothing.
    pub fn update(&self, zone: Zone) {
        let mut s = self.0.write().expect("names lock");
        if s.zone != zone {
            s.zone = zone;
            s.serial = s.serial.wrapping_add(1);
        }
    }
}

struct Handler(Names);

fn qtype(t: RecordType) -> QType {
    match t {
        RecordType::A => QType::A,
        RecordType::AAAA => QType::Aaaa,
        RecordType::ANY => QType::Any,
        RecordType::SOA => QType::Soa,
        _ => QType::Other,
    }
}

impl Served {
    fn soa(&self) -> Option<Record> {
        let origin = Name::from_ascii(format!("{}.", self.zone.origin())).ok()?;
        let mname = Name::from_ascii("hub").ok()?.append_domain(&origin).ok()?;
        let rname = Name::from_ascii("hostmaster")
            .ok()?
            .append_domain(&origin)
            .ok()?;
        Some(Record::from_rdata(
            origin,
            TTL,
            RData::SOA(SOA::new(mname, rname, self.serial, 60, 30, 3600, TTL)),
        ))
    }
}

#[async_trait::async_trait]
impl RequestHandler for Handler {
    async fn handle_request<R: ResponseHandler, T: Time>(
        &self,
        request: &Request,
        mut response: R,
    ) -> ResponseInfo {
        let builder = MessageResponseBuilder::from_message_request(request);
        let reply = |code| {
            let mut m = Metadata::response_from_request(&request.metadata);
            m.response_code = code;
            m
        };
        // One question per query (as every resolver sends); anything else,
        // updates and notifies included, is refused.
        let info = match request.request_info() {
            Ok(i) if i.metadata.op_code == hickory_proto::op::OpCode::Query => i,
            _ => {
                let msg = builder.error_msg(&request.metadata, ResponseCode::Refused);
                return send(&mut response, msg, &request.metadata).await;
            }
        };
        let qname: &LowerName = info.query.name();
        let (answer, soa) = {
            let served = self.0.0.read().expect("names lock");
            let answer = served
                .zone
                .answer(&qname.to_string(), qtype(info.query.query_type()));
            (answer, served.soa())
        };
        let name = Name::from(qname.clone());
        let (code, answers, authority): (ResponseCode, Vec<Record>, Vec<Record>) = match answer {
            Answer::Refused => (ResponseCode::Refused, vec![], vec![]),
            Answer::Records(addrs) => (
                ResponseCode::NoError,
                addrs
                    .into_iter()
                    .map(|a| {
                        let data = match a {
                            std::net::IpAddr::V4(a) => RData::A(A(a)),
                            std::net::IpAddr::V6(a) => RData::AAAA(AAAA(a)),
                        };
                        Record::from_rdata(name.clone(), TTL, data)
                    })
                    .collect(),
                vec![],
            ),
            Answer::Soa => (ResponseCode::NoError, soa.into_iter().collect(), vec![]),
            Answer::NoData => (ResponseCode::NoError, vec![], soa.into_iter().collect()),
            Answer::NxDomain => (ResponseCode::NXDomain, vec![], soa.into_iter().collect()),
        };
        let mut meta = reply(code);
        meta.authoritative = code != ResponseCode::Refused;
        let msg = builder.build(meta, answers.iter(), authority.iter(), [], []);
        send(&mut response, msg, &request.metadata).await
    }
}

async fn send<'a, R: ResponseHandler>(
    response: &mut R,
    msg: hickory_server::zone_handler::MessageResponse<
        '_,
        'a,
        impl Iterator<Item = &'a Record> + Send + 'a,
        impl Iterator<Item = &'a Record> + Send + 'a,
        impl Iterator<Item = &'a Record> + Send + 'a,
        impl Iterator<Item = &'a Record> + Send + 'a,
    >,
    request: &Metadata,
) -> ResponseInfo {
    match response.send_response(msg).await {
        Ok(info) => info,
        Err(e) => {
            tracing::debug!(error = %e, "sending a DNS answer");
            let mut m = Metadata::response_from_request(request);
            m.response_code = ResponseCode::ServFail;
            hickory_proto::op::Header {
                metadata: m,
                counts: Default::default(),
            }
            .into()
        }
    }
}

/// Serves `names` on `addr` (UDP and TCP) until the returned server is
/// shut down or dropped. The hub's WireGuard (with the tunnel address) is
/// up before this runs.
pub async fn serve(
    addr: SocketAddr,
    names: Names,
) -> anyhow::Result<hickory_server::Server<impl RequestHandler>> {
    let udp = tokio::net::UdpSocket::bind(addr).await.map_err(|e| {
        anyhow::anyhow!("DNS on {addr} (UDP): {e}; pick another --dns-port or 0 to turn DNS off")
    })?;
    let tcp = tokio::net::TcpListener::bind(addr).await.map_err(|e| {
        anyhow::anyhow!("DNS on {addr} (TCP): {e}; pick another --dns-port or 0 to turn DNS off")
    })?;
    let mut server = hickory_server::Server::new(Handler(names));
    server.register_socket(udp);
    server.register_listener(tcp, TCP_IDLE, 64 * 1024);
    Ok(server)
}
