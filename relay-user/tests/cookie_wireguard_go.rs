//! Cookie replies interoperate with real WireGuard: wireguard-go in a
//! private network namespace initiates to a peer whose endpoint is a UDP
//! socket of this test. The router, with the flood shield on and every
//! destination over its rate, answers with a cookie reply on behalf of that
//! peer; wireguard-go must accept it (decrypt it with the peer's cookie key
//! and its last mac1) and send its next initiation with a mac2 made from
//! that cookie, which the router then forwards with mac2 cleared.
//!
//! Needs root and wireguard-go (`cargo xtask test` provides both).

use std::net::UdpSocket;
use std::time::{Duration, Instant};

use relay_common::wire::{INITIATION_LEN, INITIATION_MAC2_OFF};
use relay_common::{Endpoint, InitiationEvent, NO_SLOT};
use relay_user::core::keys::mac2;
use relay_user::core::router::{Action, Outcome, Router};
use relay_user::core::shield::{Limits, Rate};
use wireguard_control::Key;

use testkit::netns::WgGoNs;

fn recv_initiation(sock: &UdpSocket, within: Duration) -> Option<([u8; INITIATION_LEN], u16)> {
    let deadline = Instant::now() + within;
    let mut buf = [0u8; 2048];
    while Instant::now() < deadline {
        if let Ok((n, from)) = sock.recv_from(&mut buf)
            && n == INITIATION_LEN
            && buf[0] == 1
        {
            return Some((buf[..n].try_into().unwrap(), from.port()));
        }
    }
    None
}

#[test]
fn wireguard_go_accepts_the_hubs_cookie_reply_and_sends_mac2() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "needs root (network namespaces, wireguard-go): run `cargo xtask test`"
    );
    let ns = WgGoNs::new("rhc");

    let initiator = Key::generate_private();
    let responder = Key::generate_private().get_public();
    let hub = Key::generate_private().get_public();
    let mut r = Router::new(&hub.0);
    r.set_spoke(1, &initiator.get_public().0);
    r.set_spoke(2, &responder.0);
    let dst_ep = Endpoint::v4([203, 0, 113, 2], 4000);
    r.set_endpoint(2, Some(dst_ep));
    // Every destination is over its rate: cookies are always required.
    r.enable_shield(
        Limits {
            per_destination: Rate::new(0.0, 0.0),
            ..Limits::default()
        },
        Instant::now(),
    );

    // The socket lives in the namespace; the test thread enters it.
    let (port_tx, port_rx) = std::sync::mpsc::channel();
    let (cfg_tx, cfg_rx) = std::sync::mpsc::channel::<()>();
    let worker = ns.spawn_inside(move || {
        let sock = UdpSocket::bind("127.0.0.1:0").expect("bind");
        let port = sock.local_addr().unwrap().port();
        port_tx.send(port).unwrap();
        cfg_rx.recv().unwrap();
        sock.set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        let here = Endpoint::v4([127, 0, 0, 1], port);
        let ev = |frame, from_port| InitiationEvent {
            src: Endpoint::v4([127, 0, 0, 1], from_port),
            dst: here,
            src_slot: NO_SLOT,
            ifindex: 1,
            frame,
        };

        // 1. The first initiation has no mac2; the router answers with a
        //    cookie reply on behalf of the responder.
        let (first, from) =
            recv_initiation(&sock, Duration::from_secs(15)).expect("no initiation within 15 s");
        assert_eq!(first[INITIATION_MAC2_OFF..], [0u8; 16]);
        let src = Endpoint::v4([127, 0, 0, 1], from);
        r.set_endpoint(1, Some(src));
        let (o, a) = r.on_initiation(&ev(first, from), Instant::now());
        assert_eq!(o, Outcome::CookieSent);
        let Some(Action::Reply {
            from: rf,
            to,
            frame,
        }) = a
        else {
            panic!("expected a cookie reply, got {a:?}")
        };
        assert_eq!((rf, to), (here, src));
        sock.send_to(&frame, ("127.0.0.1", from))
            .expect("send cookie reply");
        let cookie = r.cookie_for(&src, Instant::now()).unwrap();

        // 2. wireguard-go retries (REKEY_TIMEOUT, 5 s) with mac2 made from
        //    our cookie.
        let t = Instant::now();
        let (second, from2) =
            recv_initiation(&sock, Duration::from_secs(12)).expect("no retry within 12 s");
        assert_eq!(from2, from);
        assert_eq!(
            second[INITIATION_MAC2_OFF..],
            mac2(&cookie, &second),
            "the retry's mac2 is not made with the hub's cookie"
        );
        let (o, a) = r.on_initiation(&ev(second, from), Instant::now());
        assert_eq!(o, Outcome::Relayed { src: 1, dst: 2 });
        let Some(Action::Forward { to, frame, .. }) = a else {
            panic!("expected a forward, got {a:?}")
        };
        assert_eq!(to, dst_ep);
        assert_eq!(frame[..INITIATION_MAC2_OFF], second[..INITIATION_MAC2_OFF]);
        assert_eq!(frame[INITIATION_MAC2_OFF..], [0u8; 16], "mac2 not cleared");
        let st = r.shield_stats().unwrap();
        assert_eq!((st.cookies_sent, st.mac2_valid, st.mac2_invalid), (1, 1, 0));
        eprintln!(
            "wireguard-go retried {:?} after the cookie reply, with a valid mac2",
            t.elapsed()
        );
    });
    let port = port_rx.recv().unwrap();
    ns.initiate(
        &initiator.to_base64(),
        &responder.to_base64(),
        &format!("127.0.0.1:{port}"),
    );
    cfg_tx.send(()).unwrap();
    let res = worker.join();
    drop(ns);
    if let Err(e) = res {
        std::panic::resume_unwind(e);
    }
}
