//! Tiny XDP programs assembled by hand, so the bench needs no second eBPF
//! crate: the reflector (mode 5: swap addresses, XDP_TX, no lookup), a
//! sink that drops IPv4 (the far end of the hub link during packet-rate
//! runs) and a pass program (veth peers need *some* XDP program for
//! XDP_TX frames to arrive). Loaded with BPF_PROG_LOAD, attached with a
//! BPF link (detached when [`XdpLink`] drops).

use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

use anyhow::{Context, bail};

const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_LINK_CREATE: libc::c_long = 28;
const BPF_PROG_TYPE_XDP: u32 = 6;
const BPF_XDP: u32 = 37;
pub const XDP_FLAGS_DRV_MODE: u32 = 4;

/// One eBPF instruction.
#[derive(Clone, Copy)]
struct Insn(u8, u8, i16, i32);

const R0: u8 = 0;
const R1: u8 = 1;
const R2: u8 = 2;
const R3: u8 = 3;
const R4: u8 = 4;
const R5: u8 = 5;
const R6: u8 = 6;

fn ldx(size: u8, dst: u8, src: u8, off: i16) -> Insn {
    Insn(0x61 | size, (src << 4) | dst, off, 0)
}
fn stx(size: u8, dst: u8, src: u8, off: i16) -> Insn {
    Insn(0x63 | size, (src << 4) | dst, off, 0)
}
const W: u8 = 0x00;
const H: u8 = 0x08;
const B: u8 = 0x10;
fn mov_imm(dst: u8, imm: i32) -> Insn {
    Insn(0xb7, dst, 0, imm)
}
fn mov_reg(dst: u8, src: u8) -> Insn {
    Insn(0xbf, (src << 4) | dst, 0, 0)
}
fn add_imm(dst: u8, imm: i32) -> Insn {
    Insn(0x07, dst, 0, imm)
}
/// if dst > src goto +off
fn jgt_reg(dst: u8, src: u8, off: i16) -> Insn {
    Insn(0x2d, (src << 4) | dst, off, 0)
}
/// if dst != imm goto +off
fn jne_imm(dst: u8, imm: i32, off: i16) -> Insn {
    Insn(0x55, dst, off, imm)
}
fn exit() -> Insn {
    Insn(0x95, 0, 0, 0)
}

/// Swap `size`-wide fields at `a` and `b` of the packet at r2.
fn swap(v: &mut Vec<Insn>, size: u8, a: i16, b: i16) {
    v.push(ldx(size, R5, R2, a));
    v.push(ldx(size, R6, R2, b));
    v.push(stx(size, R2, R6, a));
    v.push(stx(size, R2, R5, b));
}

/// IPv4/UDP to `port` (IHL 5): swap MACs, IPs and ports, XDP_TX. Checksums
/// stay valid (the sums are symmetric). Anything else: XDP_PASS.
pub fn reflector(port: u16) -> Vec<u8> {
    let mut v = vec![
        ldx(W, R2, R1, 0),
        ldx(W, R3, R1, 4),
        mov_reg(R4, R2),
        add_imm(R4, 42),
    ];
    let checks_at = v.len();
    // Placeholders for the jumps to `pass`, patched below.
    v.push(jgt_reg(R4, R3, 0));
    v.push(ldx(H, R5, R2, 12));
    v.push(jne_imm(R5, 0x0008, 0)); // ethertype 0x0800, read little-endian
    v.push(ldx(B, R5, R2, 14));
    v.push(jne_imm(R5, 0x45, 0));
    v.push(ldx(B, R5, R2, 23));
    v.push(jne_imm(R5, 17, 0));
    v.push(ldx(H, R5, R2, 36));
    v.push(jne_imm(R5, port.swap_bytes() as i32, 0));
    swap(&mut v, W, 0, 6);
    swap(&mut v, H, 4, 10);
    swap(&mut v, W, 26, 30);
    swap(&mut v, H, 34, 36);
    v.push(mov_imm(R0, 3));
    v.push(exit());
    let pass = v.len();
    v.push(mov_imm(R0, 2));
    v.push(exit());
    for (i, insn) in v.iter_mut().enumerate().skip(checks_at).take(9) {
        if insn.0 == 0x2d || insn.0 == 0x55 {
            insn.2 = (pass - i - 1) as i16;
        }
    }
    encode(&v)
}

/// XDP_DROP every IPv4 frame, pass the rest (ARP keeps working).
pub fn drop_ipv4() -> Vec<u8> {
    encode(&[
        ldx(W, R2, R1, 0),
        ldx(W, R3, R1, 4),
        mov_reg(R4, R2),
        add_imm(R4, 14),
        jgt_reg(R4, R3, 4),
        ldx(H, R5, R2, 12),
        jne_imm(R5, 0x0008, 2),
        mov_imm(R0, 1),
        exit(),
        mov_imm(R0, 2),
        exit(),
    ])
}

/// XDP_PASS.
pub fn pass() -> Vec<u8> {
    encode(&[mov_imm(R0, 2), exit()])
}

fn encode(v: &[Insn]) -> Vec<u8> {
    let mut out = Vec::with_capacity(v.len() * 8);
    for i in v {
        out.push(i.0);
        out.push(i.1);
        out.extend(i.2.to_le_bytes());
        out.extend(i.3.to_le_bytes());
    }
    out
}

fn bpf(cmd: libc::c_long, attr: &mut [u8; 128]) -> std::io::Result<i32> {
    // SAFETY: bpf(2) with a zero-padded attribute buffer of the size we pass.
    let r = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr.as_mut_ptr(), attr.len()) };
    if r < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(r as i32)
    }
}

/// Load `insns` as an XDP program named `name`.
pub fn load(name: &str, insns: &[u8]) -> anyhow::Result<OwnedFd> {
    let license = b"GPL\0";
    let mut log = vec![0u8; 64 * 1024];
    let mut a = [0u8; 128];
    a[0..4].copy_from_slice(&BPF_PROG_TYPE_XDP.to_ne_bytes());
    a[4..8].copy_from_slice(&((insns.len() / 8) as u32).to_ne_bytes());
    a[8..16].copy_from_slice(&(insns.as_ptr() as u64).to_ne_bytes());
    a[16..24].copy_from_slice(&(license.as_ptr() as u64).to_ne_bytes());
    a[24..28].copy_from_slice(&1u32.to_ne_bytes());
    a[28..32].copy_from_slice(&(log.len() as u32).to_ne_bytes());
    a[32..40].copy_from_slice(&(log.as_mut_ptr() as u64).to_ne_bytes());
    let n = name.len().min(15);
    a[48..48 + n].copy_from_slice(&name.as_bytes()[..n]);
    a[68..72].copy_from_slice(&BPF_XDP.to_ne_bytes());
    match bpf(BPF_PROG_LOAD, &mut a) {
        // SAFETY: a new fd owned by nobody else.
        Ok(fd) => Ok(unsafe { OwnedFd::from_raw_fd(fd) }),
        Err(e) => {
            let end = log.iter().position(|&b| b == 0).unwrap_or(0);
            bail!(
                "BPF_PROG_LOAD {name}: {e}\n{}",
                String::from_utf8_lossy(&log[..end])
            )
        }
    }
}

/// An XDP program attached through a BPF link; detached on drop.
pub struct XdpLink {
    _link: OwnedFd,
    _prog: OwnedFd,
}

/// Attach `prog` to `iface` (resolved in the calling thread's network
/// namespace) with `flags` ([`XDP_FLAGS_DRV_MODE`] or [`XDP_FLAGS_SKB_MODE`]).
pub fn attach(prog: OwnedFd, iface: &str, flags: u32) -> anyhow::Result<XdpLink> {
    let c = std::ffi::CString::new(iface)?;
    // SAFETY: valid C string.
    let ifindex = unsafe { libc::if_nametoindex(c.as_ptr()) };
    if ifindex == 0 {
        bail!("no interface {iface} in this namespace");
    }
    let mut a = [0u8; 128];
    a[0..4].copy_from_slice(&(prog.as_raw_fd() as u32).to_ne_bytes());
    a[4..8].copy_from_slice(&ifindex.to_ne_bytes());
    a[8..12].copy_from_slice(&BPF_XDP.to_ne_bytes());
    a[12..16].copy_from_slice(&flags.to_ne_bytes());
    let fd = bpf(BPF_LINK_CREATE, &mut a).with_context(|| format!("attach XDP to {iface}"))?;
    Ok(XdpLink {
        // SAFETY: a new fd owned by nobody else.
        _link: unsafe { OwnedFd::from_raw_fd(fd) },
        _prog: prog,
    })
}

const BPF_PROG_TEST_RUN: libc::c_long = 10;
const BPF_F_TEST_XDP_LIVE_FRAMES: u32 = 1 << 1;

/// XDP_TX: the live-frames generator program.
pub fn tx() -> Vec<u8> {
    encode(&[mov_imm(R0, 3), exit()])
}

/// BPF_PROG_TEST_RUN in live-frames mode: run `prog` (returning XDP_TX)
/// `repeat` times on `frame` as if received on `ifindex`; every run
/// transmits the frame out of that interface (to its veth peer).
pub fn live_frames(prog: &OwnedFd, frame: &[u8], ifindex: u32, repeat: u32) -> std::io::Result<()> {
    let md: [u32; 6] = [0, frame.len() as u32, 0, ifindex, 0, 0];
    let mut a = [0u8; 128];
    a[0..4].copy_from_slice(&(prog.as_raw_fd() as u32).to_ne_bytes());
    a[8..12].copy_from_slice(&(frame.len() as u32).to_ne_bytes());
    a[16..24].copy_from_slice(&(frame.as_ptr() as u64).to_ne_bytes());
    a[32..36].copy_from_slice(&repeat.to_ne_bytes());
    a[40..44].copy_from_slice(&(size_of_val(&md) as u32).to_ne_bytes());
    a[48..56].copy_from_slice(&(md.as_ptr() as u64).to_ne_bytes());
    a[64..68].copy_from_slice(&BPF_F_TEST_XDP_LIVE_FRAMES.to_ne_bytes());
    bpf(BPF_PROG_TEST_RUN, &mut a).map(|_| ())
}

/// BPF_PROG_TEST_RUN of `prog` on `frame` (received on `ifindex`), `repeat`
/// times: (ns per run as the kernel measures it, return value). The frame
/// is not reset between repeats: what a run writes, the next run reads.
pub fn test_run(
    prog: BorrowedFd<'_>,
    frame: &[u8],
    ifindex: u32,
    repeat: u32,
) -> std::io::Result<(f64, u32)> {
    let md: [u32; 6] = [0, frame.len() as u32, 0, ifindex, 0, 0];
    let mut out = vec![0u8; frame.len() + 256];
    let mut a = [0u8; 128];
    a[0..4].copy_from_slice(&(prog.as_raw_fd() as u32).to_ne_bytes());
    a[8..12].copy_from_slice(&(frame.len() as u32).to_ne_bytes());
    a[12..16].copy_from_slice(&(out.len() as u32).to_ne_bytes());
    a[16..24].copy_from_slice(&(frame.as_ptr() as u64).to_ne_bytes());
    a[24..32].copy_from_slice(&(out.as_mut_ptr() as u64).to_ne_bytes());
    a[32..36].copy_from_slice(&repeat.to_ne_bytes());
    a[40..44].copy_from_slice(&(size_of_val(&md) as u32).to_ne_bytes());
    a[48..56].copy_from_slice(&(md.as_ptr() as u64).to_ne_bytes());
    bpf(BPF_PROG_TEST_RUN, &mut a)?;
    let retval = u32::from_ne_bytes(a[4..8].try_into().expect("4 bytes"));
    let duration = u32::from_ne_bytes(a[36..40].try_into().expect("4 bytes"));
    Ok((duration as f64, retval))
}
