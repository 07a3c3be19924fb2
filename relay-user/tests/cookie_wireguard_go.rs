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
use std::process::Command;
use std::time::{Duration, Instant};

use relay_common::wire::{INITIATION_LEN, INITIATION_MAC2_OFF};
use relay_common::{Endpoint, InitiationEvent, NO_SLOT};
use relay_user::cookie::mac2;
use relay_user::handshake::{Action, Outcome, Router};
use relay_user::ratelimit::{Limits, Rate};
use wireguard_control::Key;

struct Netns(String);

impl Netns {
    fn new(name: String) -> Self {
        let _ = Command::new("ip").args(["netns", "del", &name]).status();
        run(&["ip", "netns", "add", &name]);
        let ns = Self(name);
        run(&["ip", "-n", &ns.0, "link", "set", "lo", "up"]);
        ns
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "pids", &self.0])
            .output()
            .map(|o| {
                for pid in String::from_utf8_lossy(&o.stdout).split_whitespace() {
                    let _ = Command::new("kill").arg(pid).status();
                }
            });
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

fn run(args: &[&str]) {
    let st = Command::new(args[0])
        .args(&args[1..])
        .status()
        .expect(args[0]);
    assert!(st.success(), "{args:?} failed");
}

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
    let tag = format!("{:04x}", std::process::id() & 0xffff);
    let ns = Netns::new(format!("rhc-{tag}"));
    let ifname = format!("rhc{tag}");

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
    let ns_name = ns.0.clone();
    let (port_tx, port_rx) = std::sync::mpsc::channel();
    let (cfg_tx, cfg_rx) = std::sync::mpsc::channel::<()>();
    let worker = std::thread::spawn(move || {
        let f = std::fs::File::open(format!("/var/run/netns/{ns_name}")).expect("netns file");
        nix::sched::setns(f, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
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
    let keyfile = std::env::temp_dir().join(format!("rhc-{tag}.key"));
    std::fs::write(&keyfile, initiator.to_base64()).unwrap();
    run(&["ip", "netns", "exec", &ns.0, "wireguard-go", &ifname]);
    run(&[
        "ip",
        "netns",
        "exec",
        &ns.0,
        "wg",
        "set",
        &ifname,
        "private-key",
        keyfile.to_str().unwrap(),
        "peer",
        &responder.to_base64(),
        "endpoint",
        &format!("127.0.0.1:{port}"),
        "allowed-ips",
        "10.99.0.2/32",
        "persistent-keepalive",
        "1",
    ]);
    let _ = std::fs::remove_file(&keyfile);
    run(&["ip", "-n", &ns.0, "link", "set", &ifname, "up"]);
    cfg_tx.send(()).unwrap();
    let res = worker.join();
    drop(ns);
    if let Err(e) = res {
        std::panic::resume_unwind(e);
    }
}
