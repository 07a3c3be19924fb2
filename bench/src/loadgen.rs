//! AF_PACKET load generator (sendmmsg, PACKET_QDISC_BYPASS) and a
//! ping-pong latency probe. Sockets are opened in the calling thread's
//! network namespace.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

use anyhow::bail;

const PACKET_QDISC_BYPASS: i32 = 20;
const PACKET_IGNORE_OUTGOING: i32 = 23;
const ETH_P_ALL: u16 = 0x0003;

pub struct PacketSocket {
    fd: OwnedFd,
}

impl PacketSocket {
    /// Bound to `iface`; `rx` also receives (ETH_P_ALL, not our own frames).
    pub fn open(iface: &str, rx: bool) -> anyhow::Result<Self> {
        let proto = if rx { ETH_P_ALL.to_be() } else { 0 };
        // SAFETY: plain syscalls on a new fd.
        unsafe {
            let fd = libc::socket(libc::AF_PACKET, libc::SOCK_RAW, proto as i32);
            if fd < 0 {
                bail!("AF_PACKET socket: {}", std::io::Error::last_os_error());
            }
            let fd = OwnedFd::from_raw_fd(fd);
            let c = std::ffi::CString::new(iface)?;
            let ifindex = libc::if_nametoindex(c.as_ptr());
            if ifindex == 0 {
                bail!("no interface {iface}");
            }
            let mut sll: libc::sockaddr_ll = std::mem::zeroed();
            sll.sll_family = libc::AF_PACKET as u16;
            sll.sll_protocol = proto;
            sll.sll_ifindex = ifindex as i32;
            if libc::bind(
                fd.as_raw_fd(),
                (&sll as *const libc::sockaddr_ll).cast(),
                size_of::<libc::sockaddr_ll>() as u32,
            ) != 0
            {
                bail!(
                    "bind AF_PACKET to {iface}: {}",
                    std::io::Error::last_os_error()
                );
            }
            let one: i32 = 1;
            let opt = if rx {
                PACKET_IGNORE_OUTGOING
            } else {
                PACKET_QDISC_BYPASS
            };
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_PACKET,
                opt,
                (&one as *const i32).cast(),
                4,
            );
            if !rx {
                let buf: i32 = 4 << 20;
                libc::setsockopt(
                    fd.as_raw_fd(),
                    libc::SOL_SOCKET,
                    libc::SO_SNDBUF,
                    (&buf as *const i32).cast(),
                    4,
                );
            }
            Ok(Self { fd })
        }
    }

    /// Send `frames` (cycled) at `pps` for `dur`, in batches. Returns the
    /// number of frames the kernel accepted and the elapsed time.
    pub fn blast(&self, frames: &[Vec<u8>], pps: f64, dur: Duration) -> (u64, Duration) {
        const BATCH: usize = 64;
        let mut iovs: Vec<libc::iovec> = Vec::with_capacity(frames.len() * 2);
        // Two copies so any window of BATCH consecutive frames is contiguous.
        for f in frames.iter().chain(frames.iter()) {
            iovs.push(libc::iovec {
                iov_base: f.as_ptr() as *mut _,
                iov_len: f.len(),
            });
        }
        // SAFETY: zeroed mmsghdr is valid; pointers set below stay alive.
        let mut msgs: Vec<libc::mmsghdr> = (0..iovs.len())
            .map(|i| unsafe {
                let mut m: libc::mmsghdr = std::mem::zeroed();
                m.msg_hdr.msg_iov = iovs.as_ptr().add(i) as *mut _;
                m.msg_hdr.msg_iovlen = 1;
                m
            })
            .collect();
        let n = frames.len();
        let start = Instant::now();
        let mut sent: u64 = 0;
        let mut pos = 0usize;
        loop {
            let el = start.elapsed();
            if el >= dur {
                break;
            }
            let due = (pps * el.as_secs_f64()) as u64;
            if sent >= due {
                let ahead = (sent - due) as f64 / pps;
                if ahead > 0.000_2 {
                    std::thread::sleep(Duration::from_secs_f64(ahead.min(0.001)));
                } else {
                    std::hint::spin_loop();
                }
                continue;
            }
            let want = ((due - sent) as usize).min(BATCH).min(n.max(BATCH));
            let want = want.min(msgs.len() - pos);
            // SAFETY: msgs[pos..pos+want] are valid mmsghdrs.
            let r = unsafe {
                libc::sendmmsg(
                    self.fd.as_raw_fd(),
                    msgs.as_mut_ptr().add(pos),
                    want as u32,
                    0,
                )
            };
            if r > 0 {
                sent += r as u64;
                pos = (pos + r as usize) % n;
            } else {
                // ENOBUFS and friends: the device is full; retry.
                std::hint::spin_loop();
            }
        }
        (sent, start.elapsed())
    }

    /// Send one frame.
    pub fn send(&self, frame: &[u8]) -> bool {
        // SAFETY: valid buffer.
        unsafe { libc::send(self.fd.as_raw_fd(), frame.as_ptr().cast(), frame.len(), 0) > 0 }
    }

    /// Receive the next frame for which `matches` is true within `timeout`.
    pub fn recv_match(
        &self,
        buf: &mut [u8],
        timeout: Duration,
        matches: impl Fn(&[u8]) -> bool,
    ) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            let mut pfd = libc::pollfd {
                fd: self.fd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one valid pollfd.
            let r = unsafe { libc::poll(&mut pfd, 1, left.as_millis().max(1) as i32) };
            if r <= 0 {
                continue;
            }
            // SAFETY: valid buffer.
            let n = unsafe {
                libc::recv(
                    self.fd.as_raw_fd(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                    libc::MSG_DONTWAIT,
                )
            };
            if n > 0 && matches(&buf[..n as usize]) {
                return true;
            }
        }
    }
}

/// Percentile of sorted `v` (0..=100).
pub fn percentile(v: &[f64], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    let i = ((p / 100.0) * (v.len() - 1) as f64).round() as usize;
    v[i.min(v.len() - 1)]
}

/// The fast generator: BPF_PROG_TEST_RUN live frames (XDP_TX from the
/// router's end of the link), `chunk` copies of one frame per call,
/// cycling through `frames`, paced to `pps`. Open in the router namespace.
pub struct LiveGen {
    prog: OwnedFd,
    ifindex: u32,
}

impl LiveGen {
    pub fn open(iface: &str) -> anyhow::Result<Self> {
        let c = std::ffi::CString::new(iface)?;
        // SAFETY: valid C string.
        let ifindex = unsafe { libc::if_nametoindex(c.as_ptr()) };
        if ifindex == 0 {
            bail!("no interface {iface}");
        }
        Ok(Self {
            prog: crate::bpfraw::load("gen_tx", &crate::bpfraw::tx())?,
            ifindex,
        })
    }

    pub fn blast(
        &self,
        frames: &[Vec<u8>],
        pps: f64,
        dur: Duration,
    ) -> anyhow::Result<(u64, Duration)> {
        const CHUNK: u64 = 128;
        let start = Instant::now();
        let mut sent = 0u64;
        let mut i = 0usize;
        loop {
            let el = start.elapsed();
            if el >= dur {
                break;
            }
            let due = (pps * el.as_secs_f64()) as u64;
            if sent >= due {
                let ahead = (sent - due) as f64 / pps;
                if ahead > 0.000_2 {
                    std::thread::sleep(Duration::from_secs_f64(ahead.min(0.001)));
                }
                continue;
            }
            let n = (due - sent).min(CHUNK);
            crate::bpfraw::live_frames(
                &self.prog,
                &frames[i % frames.len()],
                self.ifindex,
                n as u32,
            )
            .map_err(|e| anyhow::anyhow!("BPF_PROG_TEST_RUN live frames: {e}"))?;
            i += 1;
            sent += n;
        }
        Ok((sent, start.elapsed()))
    }
}
