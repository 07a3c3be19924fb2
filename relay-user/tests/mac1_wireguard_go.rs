//! mac1 matching against a frame produced by real WireGuard: wireguard-go
//! in a private network namespace initiates to a peer whose endpoint is a
//! UDP socket of this test; the captured initiation must match the peer's
//! key (and only it), and the router must route it there.
//!
//! Needs root and wireguard-go (`cargo xtask test` provides both).

use std::net::UdpSocket;
use std::time::{Duration, Instant};

use relay_common::wire::INITIATION_LEN;
use relay_common::{Endpoint, InitiationEvent, NO_SLOT};
use relay_user::core::keys::Mac1Key;
use relay_user::core::router::{Action, Outcome, Router};
use wireguard_control::Key;

use testkit::netns::WgGoNs;

#[test]
fn mac1_of_a_wireguard_go_initiation() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "needs root (network namespaces, wireguard-go): run `cargo xtask test`"
    );
    let ns = WgGoNs::new("rhm");

    // Our "responder": a UDP socket inside the namespace.
    let (port_tx, port_rx) = std::sync::mpsc::channel();
    let catcher = ns.spawn_inside(move || {
        let sock = UdpSocket::bind("127.0.0.1:0").expect("bind");
        port_tx.send(sock.local_addr().unwrap().port()).unwrap();
        sock.set_read_timeout(Some(Duration::from_millis(500)))
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(15);
        let mut buf = [0u8; 2048];
        while Instant::now() < deadline {
            if let Ok((n, from)) = sock.recv_from(&mut buf)
                && n == INITIATION_LEN
                && buf[0] == 1
            {
                return Some((buf[..n].to_vec(), from));
            }
        }
        None
    });
    let port = port_rx.recv().unwrap();

    let initiator = Key::generate_private();
    let responder = Key::generate_private().get_public();
    let other = Key::generate_private().get_public();
    ns.initiate(
        &initiator.to_base64(),
        &responder.to_base64(),
        &format!("127.0.0.1:{port}"),
    );

    let (frame, from) = catcher
        .join()
        .unwrap()
        .expect("wireguard-go sent no initiation within 15 s");
    let frame: [u8; INITIATION_LEN] = frame.try_into().unwrap();

    assert!(Mac1Key::for_public_key(&responder.0).matches(&frame));
    assert!(!Mac1Key::for_public_key(&other.0).matches(&frame));
    assert!(!Mac1Key::for_public_key(&initiator.get_public().0).matches(&frame));

    // The router sends it to the responder's slot.
    let hub = Key::generate_private().get_public();
    let mut r = Router::new(&hub.0);
    r.set_spoke(1, &initiator.get_public().0);
    r.set_spoke(2, &responder.0);
    r.set_spoke(3, &other.0);
    let src = Endpoint::v4([127, 0, 0, 1], from.port());
    let dst_ep = Endpoint::v4([203, 0, 113, 2], 4000);
    r.set_endpoint(1, Some(src));
    r.set_endpoint(2, Some(dst_ep));
    let ev = InitiationEvent {
        src,
        dst: Endpoint::v4([127, 0, 0, 1], port),
        src_slot: NO_SLOT,
        ifindex: 1,
        frame,
    };
    let (o, a) = r.on_initiation(&ev, Instant::now());
    assert_eq!(o, Outcome::Relayed { src: 1, dst: 2 });
    let Some(Action::Forward { to, session, .. }) = a else {
        panic!("expected a forward, got {a:?}")
    };
    assert_eq!(to, dst_ep);
    let sender = u32::from_le_bytes(frame[4..8].try_into().unwrap());
    assert_eq!((session.0.src_slot, session.0.receiver), (2, sender));
    drop(ns);
}
