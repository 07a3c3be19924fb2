//! Baseline (mode 3): a userspace WireGuard index relay, the design the
//! known userspace relays use, with relayhub's routing rules: source
//! endpoint -> slot, (source slot, receiver index) -> destination slot,
//! initiations routed by mac1 (installing the reverse entry), responses
//! teaching the initiator's entry. recvmmsg/sendmmsg in batches of 64, one
//! thread.
//!
//! Table file lines: `ep IP PORT SLOT`, `sess SRC RECEIVER DST`,
//! `key SLOT BASE64_PUBLIC_KEY`.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;

use anyhow::Context;
use base64::Engine;
use relay_common::wire::{
    INITIATION_LEN, MSG_COOKIE_REPLY, MSG_INITIATION, MSG_RESPONSE, MSG_TRANSPORT, RECEIVER_OFF,
    RESPONSE_LEN, RESPONSE_RECEIVER_OFF, SENDER_OFF, TRANSPORT_MIN_LEN,
};
use relay_user::core::keys::Mac1Key;

/// A multiplicative hasher: the baseline should not lose on SipHash.
#[derive(Default)]
struct Fx(u64);

impl Hasher for Fx {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.write_u64(*b as u64);
        }
    }
    fn write_u32(&mut self, i: u32) {
        self.write_u64(i as u64);
    }
    fn write_u16(&mut self, i: u16) {
        self.write_u64(i as u64);
    }
    fn write_u64(&mut self, i: u64) {
        self.0 = (self.0.rotate_left(5) ^ i).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }
}

type Fast<K, V> = HashMap<K, V, BuildHasherDefault<Fx>>;

#[derive(Default)]
struct Tables {
    by_ep: Fast<(u32, u16), u32>,
    ep_of: Fast<u32, (u32, u16)>,
    sessions: Fast<(u32, u32), u32>,
    keys: Vec<(u32, Mac1Key)>,
}

fn le32(b: &[u8], off: usize) -> u32 {
    u32::from_le_bytes([b[off], b[off + 1], b[off + 2], b[off + 3]])
}

impl Tables {
    fn parse(text: &str) -> anyhow::Result<Self> {
        let mut t = Tables::default();
        for l in text.lines() {
            let w: Vec<&str> = l.split_whitespace().collect();
            match w.as_slice() {
                ["ep", ip, port, slot] => {
                    let ip: Ipv4Addr = ip.parse()?;
                    let ep = (u32::from(ip), port.parse()?);
                    let slot: u32 = slot.parse()?;
                    t.by_ep.insert(ep, slot);
                    t.ep_of.insert(slot, ep);
                }
                ["sess", s, r, d] => {
                    t.sessions.insert((s.parse()?, r.parse()?), d.parse()?);
                }
                ["key", slot, k] => {
                    let k: [u8; 32] = base64::engine::general_purpose::STANDARD
                        .decode(k)?
                        .try_into()
                        .map_err(|_| anyhow::anyhow!("key length"))?;
                    t.keys.push((slot.parse()?, Mac1Key::for_public_key(&k)));
                }
                [] => {}
                _ => anyhow::bail!("bad table line: {l}"),
            }
        }
        Ok(t)
    }

    /// Where a datagram from `src` goes, if anywhere.
    fn route(&mut self, src: (u32, u16), msg: &[u8]) -> Option<(u32, u16)> {
        let slot = *self.by_ep.get(&src)?;
        if msg.len() < 16 || msg[1..4] != [0, 0, 0] {
            return None;
        }
        let dst = match msg[0] {
            MSG_TRANSPORT if msg.len() >= TRANSPORT_MIN_LEN => {
                *self.sessions.get(&(slot, le32(msg, RECEIVER_OFF)))?
            }
            MSG_COOKIE_REPLY => *self.sessions.get(&(slot, le32(msg, RECEIVER_OFF)))?,
            MSG_RESPONSE if msg.len() == RESPONSE_LEN => {
                let d = *self
                    .sessions
                    .get(&(slot, le32(msg, RESPONSE_RECEIVER_OFF)))?;
                self.sessions.insert((d, le32(msg, SENDER_OFF)), slot);
                d
            }
            MSG_INITIATION if msg.len() == INITIATION_LEN => {
                let frame: &[u8; INITIATION_LEN] = msg.try_into().ok()?;
                let d = self
                    .keys
                    .iter()
                    .find(|(_, k)| k.matches(frame))
                    .map(|(s, _)| *s)?;
                self.sessions.insert((d, le32(msg, SENDER_OFF)), slot);
                d
            }
            _ => return None,
        };
        if dst == slot {
            return None;
        }
        self.ep_of.get(&dst).copied()
    }
}

/// Run the relay on UDP `port` until killed.
pub fn run(port: u16, table: &str) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(table).with_context(|| format!("read {table}"))?;
    let mut t = Tables::parse(&text)?;
    let sock = std::net::UdpSocket::bind(("0.0.0.0", port)).context("bind the relay port")?;
    let fd = sock.as_raw_fd();
    for opt in [libc::SO_RCVBUF, libc::SO_SNDBUF] {
        let v: i32 = 8 << 20;
        // SAFETY: valid option pointer.
        unsafe { libc::setsockopt(fd, libc::SOL_SOCKET, opt, (&v as *const i32).cast(), 4) };
    }
    eprintln!(
        "urelay: {} endpoints, {} sessions, {} keys on :{port}",
        t.by_ep.len(),
        t.sessions.len(),
        t.keys.len()
    );
    println!("ready");
    const N: usize = 64;
    const BUF: usize = 2048;
    let mut bufs = vec![[0u8; BUF]; N];
    // SAFETY: zeroed sockaddr/iovec/mmsghdr are valid; pointers set below.
    let mut addrs: Vec<libc::sockaddr_in> = vec![unsafe { std::mem::zeroed() }; N];
    let mut out_addrs: Vec<libc::sockaddr_in> = vec![unsafe { std::mem::zeroed() }; N];
    let mut iovs: Vec<libc::iovec> = bufs
        .iter_mut()
        .map(|b| libc::iovec {
            iov_base: b.as_mut_ptr().cast(),
            iov_len: BUF,
        })
        .collect();
    let mut out_iovs: Vec<libc::iovec> = iovs.clone();
    let mut msgs: Vec<libc::mmsghdr> = (0..N).map(|_| unsafe { std::mem::zeroed() }).collect();
    let mut out: Vec<libc::mmsghdr> = (0..N).map(|_| unsafe { std::mem::zeroed() }).collect();
    loop {
        for i in 0..N {
            msgs[i].msg_hdr.msg_name = (&mut addrs[i] as *mut libc::sockaddr_in).cast();
            msgs[i].msg_hdr.msg_namelen = size_of::<libc::sockaddr_in>() as u32;
            msgs[i].msg_hdr.msg_iov = &mut iovs[i];
            msgs[i].msg_hdr.msg_iovlen = 1;
        }
        // SAFETY: N valid mmsghdrs with buffers.
        let n = unsafe {
            libc::recvmmsg(
                fd,
                msgs.as_mut_ptr(),
                N as u32,
                libc::MSG_WAITFORONE,
                std::ptr::null_mut(),
            )
        };
        if n <= 0 {
            continue;
        }
        let mut k = 0;
        for i in 0..n as usize {
            let len = msgs[i].msg_len as usize;
            let a = &addrs[i];
            let src = (u32::from_be(a.sin_addr.s_addr), u16::from_be(a.sin_port));
            if let Some((ip, port)) = t.route(src, &bufs[i][..len]) {
                out_addrs[k] = libc::sockaddr_in {
                    sin_family: libc::AF_INET as u16,
                    sin_port: port.to_be(),
                    sin_addr: libc::in_addr { s_addr: ip.to_be() },
                    sin_zero: [0; 8],
                };
                out_iovs[k] = libc::iovec {
                    iov_base: bufs[i].as_mut_ptr().cast(),
                    iov_len: len,
                };
                out[k].msg_hdr.msg_name = (&mut out_addrs[k] as *mut libc::sockaddr_in).cast();
                out[k].msg_hdr.msg_namelen = size_of::<libc::sockaddr_in>() as u32;
                out[k].msg_hdr.msg_iov = &mut out_iovs[k];
                out[k].msg_hdr.msg_iovlen = 1;
                k += 1;
            }
        }
        let mut done = 0;
        while done < k {
            // SAFETY: out[done..k] are valid.
            let r = unsafe { libc::sendmmsg(fd, out.as_mut_ptr().add(done), (k - done) as u32, 0) };
            if r <= 0 {
                break; // dropped, like a full socket buffer would
            }
            done += r as usize;
        }
    }
}
