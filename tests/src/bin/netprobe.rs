//! Small network tools the e2e tests run inside namespaces (no netcat,
//! socat or dig on the test machines):
//!
//! - `serve-tcp ADDR:PORT NAME`: answers every connection with `NAME\n`
//!   and closes it;
//! - `serve-udp ADDR:PORT NAME`: answers every datagram with `NAME`;
//! - `tcp-get ADDR:PORT [TIMEOUT_MS]`: prints what the server sends
//!   until it closes (exit 1 on failure);
//! - `udp-get ADDR:PORT [TIMEOUT_MS]`: sends `hi`, prints the answer;
//! - `dns NAME SERVER[:PORT] [TYPE]`: one query (hickory-proto's message
//!   codec), prints `RCODE [ADDR...]`.
//!
//! Every wait is bounded; nothing runs longer than its timeout but the
//! servers, which the tests stop.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, ToSocketAddrs, UdpSocket};
use std::process::ExitCode;
use std::time::Duration;

use hickory_proto::op::{Message, Query};
use hickory_proto::rr::{Name, RData, RecordType};

fn addr(s: &str) -> Result<SocketAddr, String> {
    s.to_socket_addrs()
        .map_err(|e| format!("{s}: {e}"))?
        .next()
        .ok_or_else(|| format!("{s}: no address"))
}

fn timeout(arg: Option<&String>) -> Duration {
    Duration::from_millis(arg.and_then(|t| t.parse().ok()).unwrap_or(2000))
}

fn run(args: &[String]) -> Result<(), String> {
    let arg = |i: usize| args.get(i).ok_or("missing argument".to_string());
    match arg(0)?.as_str() {
        "serve-tcp" => {
            let l = TcpListener::bind(addr(arg(1)?)?).map_err(|e| e.to_string())?;
            let name = arg(2)?.clone();
            // Clients that vanish are of no concern to the others.
            for mut c in l.incoming().flatten() {
                let _ = c.write_all(format!("{name}\n").as_bytes());
            }
            Ok(())
        }
        "serve-udp" => {
            let s = UdpSocket::bind(addr(arg(1)?)?).map_err(|e| e.to_string())?;
            let name = arg(2)?.clone();
            let mut buf = [0u8; 2048];
            loop {
                if let Ok((_, from)) = s.recv_from(&mut buf) {
                    let _ = s.send_to(name.as_bytes(), from);
                }
            }
        }
        "tcp-get" => {
            let to = timeout(args.get(2));
            let mut s =
                TcpStream::connect_timeout(&addr(arg(1)?)?, to).map_err(|e| e.to_string())?;
            s.set_read_timeout(Some(to)).map_err(|e| e.to_string())?;
            let mut out = String::new();
            s.read_to_string(&mut out).map_err(|e| e.to_string())?;
            if out.is_empty() {
                return Err("closed without an answer".into());
            }
            print!("{out}");
            Ok(())
        }
        "udp-get" => {
            let to = timeout(args.get(2));
            let dst = addr(arg(1)?)?;
            let local: SocketAddr = if dst.is_ipv4() {
                "0.0.0.0:0".parse().unwrap()
            } else {
                "[::]:0".parse().unwrap()
            };
            let s = UdpSocket::bind(local).map_err(|e| e.to_string())?;
            s.set_read_timeout(Some(to)).map_err(|e| e.to_string())?;
            s.send_to(b"hi", dst).map_err(|e| e.to_string())?;
            let mut buf = [0u8; 2048];
            let (n, _) = s.recv_from(&mut buf).map_err(|e| e.to_string())?;
            println!("{}", String::from_utf8_lossy(&buf[..n]));
            Ok(())
        }
        "dns" => {
            let name = Name::from_ascii(arg(1)?).map_err(|e| e.to_string())?;
            let server = arg(2)?;
            let server = if server.contains(':') {
                addr(server)?
            } else {
                addr(&format!("{server}:53"))?
            };
            let rtype = match args.get(3).map(String::as_str) {
                None | Some("A") => RecordType::A,
                Some("AAAA") => RecordType::AAAA,
                Some("MX") => RecordType::MX,
                Some("SOA") => RecordType::SOA,
                Some(t) => return Err(format!("unknown type {t}")),
            };
            let mut q = Message::query();
            q.metadata.id = std::process::id() as u16;
            q.metadata.recursion_desired = true;
            q.add_query(Query::query(name, rtype));
            let s = UdpSocket::bind("0.0.0.0:0").map_err(|e| e.to_string())?;
            s.set_read_timeout(Some(Duration::from_secs(2)))
                .map_err(|e| e.to_string())?;
            s.send_to(&q.to_vec().map_err(|e| e.to_string())?, server)
                .map_err(|e| e.to_string())?;
            let mut buf = [0u8; 4096];
            let (n, _) = s.recv_from(&mut buf).map_err(|e| e.to_string())?;
            let r = Message::from_vec(&buf[..n]).map_err(|e| e.to_string())?;
            if r.metadata.id != q.metadata.id {
                return Err("answer to another query".into());
            }
            let mut line = format!("{:?}", r.metadata.response_code).to_uppercase();
            if r.metadata.authoritative {
                line.push_str(" aa");
            }
            for a in &r.answers {
                match &a.data {
                    RData::A(a) => line.push_str(&format!(" {}", a.0)),
                    RData::SOA(_) => line.push_str(" SOA"),
                    other => line.push_str(&format!(" {other}")),
                }
            }
            println!("{line}");
            Ok(())
        }
        other => Err(format!("unknown command {other}")),
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("netprobe: {e}");
            ExitCode::FAILURE
        }
    }
}
