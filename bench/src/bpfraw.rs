//! Tiny XDP programs assembled by hand, so the bench needs no second eBPF
//! crate: the reflector (mode 5: swap addresses, XDP_TX, no lookup), a
//! sink that counts the relayed frames it expects and drops IPv4 (the far
//! end of the hub link during packet-rate runs), the far end of
//! `relay-bench cores`' relay loop that answers as the destination spoke
//! ([`mirror`]) and a pass program (veth peers need *some* XDP program for
//! XDP_TX frames to arrive). Loaded with
//! BPF_PROG_LOAD, attached with a BPF link (detached when [`XdpLink`] drops).

use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

use anyhow::{Context, bail};

const BPF_MAP_CREATE: libc::c_long = 0;
const BPF_MAP_LOOKUP_ELEM: libc::c_long = 1;
const BPF_MAP_UPDATE_ELEM: libc::c_long = 2;
const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_MAP_TYPE_ARRAY: u32 = 2;
const BPF_MAP_TYPE_PERCPU_ARRAY: u32 = 6;
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
const R7: u8 = 7;
const R8: u8 = 8;
const R9: u8 = 9;
const R10: u8 = 10;

fn ldx(size: u8, dst: u8, src: u8, off: i16) -> Insn {
    Insn(0x61 | size, (src << 4) | dst, off, 0)
}
fn stx(size: u8, dst: u8, src: u8, off: i16) -> Insn {
    Insn(0x63 | size, (src << 4) | dst, off, 0)
}
const W: u8 = 0x00;
const H: u8 = 0x08;
const B: u8 = 0x10;
const DW: u8 = 0x18;
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
/// if dst == imm goto +off
fn jeq_imm(dst: u8, imm: i32, off: i16) -> Insn {
    Insn(0x15, dst, off, imm)
}
/// if dst > imm goto +off (unsigned)
fn jgt_imm(dst: u8, imm: i32, off: i16) -> Insn {
    Insn(0x25, dst, off, imm)
}
/// if dst != src goto +off
fn jne_reg(dst: u8, src: u8, off: i16) -> Insn {
    Insn(0x5d, (src << 4) | dst, off, 0)
}
/// if (u32)dst != (u32)imm goto +off (no sign extension of the immediate)
fn jne32_imm(dst: u8, imm: u32, off: i16) -> Insn {
    Insn(0x56, dst, off, imm as i32)
}
fn alu64_imm(op: u8, dst: u8, imm: i32) -> Insn {
    Insn(0x07 | op, dst, 0, imm)
}
fn alu32_imm(op: u8, dst: u8, imm: u32) -> Insn {
    Insn(0x04 | op, dst, 0, imm as i32)
}
fn or_reg(dst: u8, src: u8) -> Insn {
    Insn(0x4f, (src << 4) | dst, 0, 0)
}
const MUL: u8 = 0x20;
const DIV: u8 = 0x30;
const LSH: u8 = 0x60;
const MOD: u8 = 0x90;
const XOR: u8 = 0xa0;
const OR: u8 = 0x40;
/// *(u32 *)(dst + off) = imm
fn st_w(dst: u8, off: i16, imm: i32) -> Insn {
    Insn(0x62, dst, off, imm)
}
/// dst = the map `fd` (two instruction slots; BPF_PSEUDO_MAP_FD)
fn ld_map_fd(dst: u8, fd: i32) -> [Insn; 2] {
    [Insn(0x18, (1 << 4) | dst, 0, fd), Insn(0, 0, 0, 0)]
}
fn call(helper: i32) -> Insn {
    Insn(0x85, 0, 0, helper)
}
/// lock *(u64 *)(dst + off) += src
fn atomic_add64(dst: u8, src: u8, off: i16) -> Insn {
    Insn(0xdb, (src << 4) | dst, off, 0)
}
const MAP_LOOKUP_ELEM: i32 = 1;
const KTIME_GET_NS: i32 = 5;

/// Instructions with forward jumps to named labels, resolved at the end.
#[derive(Default)]
struct Asm {
    v: Vec<Insn>,
    jumps: Vec<(usize, &'static str)>,
    labels: Vec<(&'static str, usize)>,
}

impl Asm {
    fn op(&mut self, i: Insn) -> &mut Self {
        self.v.push(i);
        self
    }
    /// A jump (offset filled in by [`finish`](Self::finish)) to `label`.
    fn jump(&mut self, i: Insn, label: &'static str) -> &mut Self {
        self.jumps.push((self.v.len(), label));
        self.v.push(i);
        self
    }
    fn label(&mut self, name: &'static str) -> &mut Self {
        self.labels.push((name, self.v.len()));
        self
    }
    /// [`finish`](Self::finish) after the "drop" (XDP_DROP) and "pass"
    /// (XDP_PASS) exits; what comes before falls through into "drop".
    fn finish_with_exits(&mut self) -> Vec<u8> {
        self.label("drop")
            .op(mov_imm(R0, 1))
            .op(exit())
            .label("pass")
            .op(mov_imm(R0, 2))
            .op(exit());
        self.finish()
    }

    fn finish(&mut self) -> Vec<u8> {
        for &(at, name) in &self.jumps {
            let (_, to) = self
                .labels
                .iter()
                .find(|(n, _)| *n == name)
                .expect("jump to a defined label");
            self.v[at].2 = (to - at - 1) as i16;
        }
        encode(&self.v)
    }
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

/// Emit: r0 = the value at key 0 of `map` (a pointer), or to `if_none`
/// when the lookup fails. Clobbers r1-r5 (a helper call).
fn lookup_key0(a: &mut Asm, map: &Counter, if_none: &'static str) {
    let [l0, l1] = ld_map_fd(R1, map.fd.as_raw_fd());
    a.op(l0)
        .op(l1)
        .op(st_w(R10, -4, 0))
        .op(mov_reg(R2, R10))
        .op(add_imm(R2, -4))
        .op(call(MAP_LOOKUP_ELEM))
        .jump(jeq_imm(R0, 0, 0), if_none);
}

/// Emit: data in r2 and its end in r3 (from the context in `ctx`); not
/// IPv4: to "pass"; IPv4 but not a UDP frame of at least `len` bytes from
/// `hub_ip`:`hub_port` (IHL 5) carrying a WireGuard transport header: to
/// "drop". Clobbers r4 and r5.
fn transport_from_hub(a: &mut Asm, ctx: u8, len: i32, hub_ip: std::net::Ipv4Addr, hub_port: u16) {
    a.op(ldx(W, R2, ctx, 0))
        .op(ldx(W, R3, ctx, 4))
        .op(mov_reg(R4, R2))
        .op(add_imm(R4, 14))
        .jump(jgt_reg(R4, R3, 0), "pass")
        .op(ldx(H, R5, R2, 12))
        .jump(jne_imm(R5, 0x0008, 0), "pass") // ethertype 0x0800, little-endian
        .op(mov_reg(R4, R2))
        .op(add_imm(R4, len))
        .jump(jgt_reg(R4, R3, 0), "drop")
        .op(ldx(B, R5, R2, 14))
        .jump(jne_imm(R5, 0x45, 0), "drop")
        .op(ldx(B, R5, R2, 23))
        .jump(jne_imm(R5, 17, 0), "drop")
        .op(ldx(W, R5, R2, 26))
        .jump(
            jne32_imm(R5, u32::from_le_bytes(hub_ip.octets()), 0),
            "drop",
        )
        .op(ldx(H, R5, R2, 34))
        .jump(jne_imm(R5, hub_port.swap_bytes() as i32, 0), "drop")
        .op(ldx(W, R5, R2, 42))
        .jump(jne_imm(R5, 4, 0), "drop"); // type 4, reserved bytes zero
}

/// What a relayed frame must look like to count as delivered.
pub struct Expect {
    /// The hub's address and port: the source of every relayed frame.
    pub hub_ip: std::net::Ipv4Addr,
    pub hub_port: u16,
    /// Synthetic spokes 1..=n ([`crate::synth::spokes`]).
    pub spokes: u32,
    /// Frames go back to their sender (the reflector), not to its peer.
    pub reflected: bool,
}

/// The far end of the hub link during packet-rate runs: count in `counter`
/// the IPv4 frames that are what the relay must deliver and XDP_DROP every
/// IPv4 frame (pass the rest; ARP keeps working). A frame counts if it is a
/// type 4 WireGuard frame from the hub's address and port to a synthetic
/// spoke's endpoint carrying the receiver index of that spoke's peer (or,
/// `reflected`, its own): what [`crate::synth`] sends, rewritten as the
/// relay must. Any other frame that reaches the interface is not a relay.
pub fn count_relayed(counter: &Counter, e: &Expect) -> Vec<u8> {
    let mut a = Asm::default();
    transport_from_hub(&mut a, R1, 50, e.hub_ip, e.hub_port);
    // d = destination port - 40000: the destination spoke's slot.
    a.op(ldx(B, R6, R2, 36))
        .op(alu64_imm(LSH, R6, 8))
        .op(ldx(B, R7, R2, 37))
        .op(or_reg(R6, R7))
        .op(add_imm(R6, -40000))
        .jump(jeq_imm(R6, 0, 0), "drop")
        .jump(jgt_imm(R6, e.spokes as i32, 0), "drop")
        // Its address: 10.200.(d / 200).(d % 200 + 1).
        .op(mov_reg(R7, R6))
        .op(alu64_imm(DIV, R7, 200))
        .op(alu64_imm(LSH, R7, 16))
        .op(mov_reg(R8, R6))
        .op(alu64_imm(MOD, R8, 200))
        .op(add_imm(R8, 1))
        .op(alu64_imm(LSH, R8, 24))
        .op(or_reg(R7, R8))
        .op(alu64_imm(OR, R7, 10 | (200 << 8)))
        .op(ldx(W, R8, R2, 30))
        .jump(jne_reg(R8, R7, 0), "drop");
    if !e.reflected {
        // The sender is the destination's peer: ((d - 1) ^ 1) + 1.
        a.op(add_imm(R6, -1))
            .op(alu64_imm(XOR, R6, 1))
            .op(add_imm(R6, 1));
    }
    // The sender's receiver index (synth::receiver), in 32 bits.
    a.op(alu32_imm(MUL, R6, 0x9e37_79b9))
        .op(alu32_imm(XOR, R6, 0x5000_0000))
        .op(ldx(W, R7, R2, 46))
        .jump(jne_reg(R7, R6, 0), "drop");
    lookup_key0(&mut a, counter, "drop");
    a.op(mov_imm(R1, 1)).op(atomic_add64(R0, R1, 0));
    a.finish_with_exits()
}

/// The spokes' side of `relay-bench cores`' closed loop, on the far end
/// of the hub link: a WireGuard transport frame from the hub (`hub_ip`,
/// `hub_port`) to a synthetic spoke's endpoint is answered as that spoke
/// would: addresses and ports swapped, the receiver index set to the
/// spoke's own ([`crate::synth::receiver`] of the slot its port names),
/// XDP_TX back to the hub, counted in the per-CPU `counter`. Such frames
/// are dropped instead once `stop` holds a non-zero value (the bench ends
/// a loop), or once past the deadline the frame's 64-bit WireGuard counter
/// carries (CLOCK_MONOTONIC ns), so a loop stops by itself even if the
/// bench dies. Other IPv4 frames are dropped, anything else passed. The UDP checksum
/// is left alone: the loop's frames carry none (zero, valid over IPv4).
pub fn mirror(
    counter: &Counter,
    stop: &Counter,
    hub_ip: std::net::Ipv4Addr,
    hub_port: u16,
) -> Vec<u8> {
    let mut a = Asm::default();
    a.op(mov_reg(R6, R1))
        .op(call(KTIME_GET_NS))
        .op(mov_reg(R7, R0))
        .op(mov_imm(R8, 0));
    lookup_key0(&mut a, stop, "no_stop");
    a.op(ldx(DW, R8, R0, 0)).label("no_stop");
    // Through the WireGuard counter (the deadline).
    transport_from_hub(&mut a, R6, 58, hub_ip, hub_port);
    a.jump(jne_imm(R8, 0, 0), "drop") // stopped
        .op(ldx(DW, R5, R2, 50))
        .jump(jgt_reg(R7, R5, 0), "drop") // past the deadline
        // The spoke's receiver index: its slot is the port - 40000.
        .op(ldx(B, R8, R2, 36))
        .op(alu64_imm(LSH, R8, 8))
        .op(ldx(B, R9, R2, 37))
        .op(or_reg(R8, R9))
        .op(add_imm(R8, -40000))
        .op(alu32_imm(MUL, R8, 0x9e37_79b9))
        .op(alu32_imm(XOR, R8, 0x5000_0000))
        .op(stx(W, R2, R8, 46));
    let mut v = Vec::new();
    swap(&mut v, W, 0, 6);
    swap(&mut v, H, 4, 10);
    swap(&mut v, W, 26, 30);
    swap(&mut v, H, 34, 36);
    for i in v {
        a.op(i);
    }
    lookup_key0(&mut a, counter, "tx");
    a.op(ldx(DW, R1, R0, 0))
        .op(add_imm(R1, 1))
        .op(stx(DW, R0, R1, 0))
        .label("tx")
        .op(mov_imm(R0, 3))
        .op(exit());
    a.finish_with_exits()
}

/// A one-entry BPF array holding a u64, counted into by an XDP program:
/// shared ([`Counter::new`], atomic adds) or one per CPU
/// ([`Counter::per_cpu`], plain adds: nothing shared between CPUs).
pub struct Counter {
    fd: OwnedFd,
    per_cpu: bool,
}

impl Counter {
    pub fn new(name: &str) -> anyhow::Result<Counter> {
        Self::create(name, false)
    }

    pub fn per_cpu(name: &str) -> anyhow::Result<Counter> {
        Self::create(name, true)
    }

    fn create(name: &str, per_cpu: bool) -> anyhow::Result<Counter> {
        let kind = if per_cpu {
            BPF_MAP_TYPE_PERCPU_ARRAY
        } else {
            BPF_MAP_TYPE_ARRAY
        };
        let mut a = [0u8; 128];
        a[0..4].copy_from_slice(&kind.to_ne_bytes());
        a[4..8].copy_from_slice(&4u32.to_ne_bytes());
        a[8..12].copy_from_slice(&8u32.to_ne_bytes());
        a[12..16].copy_from_slice(&1u32.to_ne_bytes());
        let n = name.len().min(15);
        a[28..28 + n].copy_from_slice(&name.as_bytes()[..n]);
        let fd = bpf(BPF_MAP_CREATE, &mut a).with_context(|| format!("create map {name}"))?;
        // SAFETY: a new fd owned by nobody else.
        Ok(Counter {
            fd: unsafe { OwnedFd::from_raw_fd(fd) },
            per_cpu,
        })
    }

    /// Set a shared counter's value (a flag for a program).
    pub fn set(&self, value: u64) -> anyhow::Result<()> {
        let key = 0u32;
        let mut a = [0u8; 128];
        a[0..4].copy_from_slice(&(self.fd.as_raw_fd() as u32).to_ne_bytes());
        a[8..16].copy_from_slice(&(&key as *const u32 as u64).to_ne_bytes());
        a[16..24].copy_from_slice(&(&value as *const u64 as u64).to_ne_bytes());
        bpf(BPF_MAP_UPDATE_ELEM, &mut a).context("write a flag map")?;
        Ok(())
    }

    /// The count (summed over CPUs for a per-CPU counter).
    pub fn get(&self) -> anyhow::Result<u64> {
        Ok(self.per_cpu_values()?.iter().sum())
    }

    /// One value per possible CPU (one value for a shared counter).
    pub fn per_cpu_values(&self) -> anyhow::Result<Vec<u64>> {
        // A per-CPU value holds one slot per possible CPU.
        let n = if self.per_cpu {
            aya::util::nr_cpus().map_err(|(what, e)| anyhow::anyhow!("{what}: {e}"))?
        } else {
            1
        };
        let key = 0u32;
        let mut values = vec![0u64; n];
        let mut a = [0u8; 128];
        a[0..4].copy_from_slice(&(self.fd.as_raw_fd() as u32).to_ne_bytes());
        a[8..16].copy_from_slice(&(&key as *const u32 as u64).to_ne_bytes());
        a[16..24].copy_from_slice(&(values.as_mut_ptr() as u64).to_ne_bytes());
        bpf(BPF_MAP_LOOKUP_ELEM, &mut a).context("read a counter map")?;
        Ok(values)
    }
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
    test_run_out(prog, frame, ifindex, repeat).map(|(ns, action, _)| (ns, action))
}

/// [`test_run`], also returning the frame as the last run left it.
pub fn test_run_out(
    prog: BorrowedFd<'_>,
    frame: &[u8],
    ifindex: u32,
    repeat: u32,
) -> std::io::Result<(f64, u32, Vec<u8>)> {
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
    let len = u32::from_ne_bytes(a[12..16].try_into().expect("4 bytes")) as usize;
    let duration = u32::from_ne_bytes(a[36..40].try_into().expect("4 bytes"));
    out.truncate(len);
    Ok((duration as f64, retval, out))
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;
    use std::os::fd::AsFd;

    use testkit::frame::udp4_frame;
    use testkit::wg::transport_with_counter;

    use super::*;
    use crate::synth::{self, HUB_IP, HUB_PORT};

    const MAC: [u8; 6] = [2, 0, 0, 0, 0, 1];

    /// The sink's action on `frame` and whether it counted it.
    fn sink(reflected: bool, frame: &[u8]) -> (u32, u64) {
        testkit::cmd::require_root();
        let c = Counter::new("sink_test").expect("map");
        let e = Expect {
            hub_ip: HUB_IP,
            hub_port: HUB_PORT,
            spokes: 64,
            reflected,
        };
        let p = load("sink_test", &count_relayed(&c, &e)).expect("load");
        let (_, action) = test_run(p.as_fd(), frame, 1, 1).expect("test run");
        (action, c.get().expect("counter"))
    }

    /// A transport frame with `receiver` from `src` to `dst`.
    fn frame(src: (Ipv4Addr, u16), dst: (Ipv4Addr, u16), receiver: u32) -> Vec<u8> {
        let m = transport_with_counter(receiver, 1, 64);
        udp4_frame(MAC, MAC, src.0, src.1, dst.0, dst.1, &m, false)
    }

    /// BPF_PROG_TEST_RUN once: (action, the frame as the program left it).
    fn run_out(prog: &OwnedFd, frame: &[u8]) -> (u32, Vec<u8>) {
        let (_, action, out) = test_run_out(prog.as_fd(), frame, 1, 1).expect("test run");
        (action, out)
    }

    /// The loop's far end answers a relayed frame as its destination spoke,
    /// until the frame's deadline; nothing else is answered.
    #[test]
    fn mirror_answers_as_the_destination_until_the_deadline() {
        testkit::cmd::require_root();
        let c = Counter::per_cpu("mirror_test").expect("map");
        let stop = Counter::new("mirror_stop").expect("map");
        let p = load("mirror_test", &mirror(&c, &stop, HUB_IP, HUB_PORT)).expect("load");
        let sp = synth::spokes(64);
        let (a, b) = (sp[2], sp[3]);
        let hub = (HUB_IP, HUB_PORT);
        let far = u64::MAX / 2;
        let at = |src: (Ipv4Addr, u16), dst: (Ipv4Addr, u16), receiver, deadline| {
            let m = transport_with_counter(receiver, deadline, 64);
            udp4_frame(
                MAC,
                [2, 0, 0, 0, 0, 2],
                src.0,
                src.1,
                dst.0,
                dst.1,
                &m,
                true,
            )
        };
        let relayed = at(hub, (b.ip, b.port), synth::receiver(a.slot), far);
        let (action, out) = run_out(&p, &relayed);
        assert_eq!(action, 3, "XDP_TX");
        // B's answer: B's address and port to the hub, B's receiver index,
        // the Ethernet addresses swapped; the rest as it came.
        let want = udp4_frame(
            [2, 0, 0, 0, 0, 2],
            MAC,
            b.ip,
            b.port,
            HUB_IP,
            HUB_PORT,
            &transport_with_counter(synth::receiver(b.slot), far, 64),
            true,
        );
        assert_eq!(out, want);
        assert_eq!(c.get().expect("counter"), 1);
        for (what, f) in [
            (
                "past its deadline",
                at(hub, (b.ip, b.port), synth::receiver(a.slot), 1),
            ),
            (
                "not from the hub's port",
                at((HUB_IP, 1), (b.ip, b.port), synth::receiver(a.slot), far),
            ),
            (
                "from a spoke",
                at((a.ip, a.port), hub, synth::receiver(a.slot), far),
            ),
        ] {
            assert_eq!(run_out(&p, &f).0, 1, "{what}: XDP_DROP");
        }
        assert_eq!(c.get().expect("counter"), 1, "only the answer counted");
        stop.set(1).expect("stop");
        assert_eq!(run_out(&p, &relayed).0, 1, "stopped: XDP_DROP");
        stop.set(0).expect("go on");
        assert_eq!(run_out(&p, &relayed).0, 3, "going on: XDP_TX");
        let mut arp = relayed.clone();
        arp[12..14].copy_from_slice(&[0x08, 0x06]);
        assert_eq!(run_out(&p, &arp).0, 2, "ARP: XDP_PASS");
    }

    #[test]
    fn sink_counts_only_the_expected_relay() {
        let sp = synth::spokes(64);
        let (a, b) = (sp[2], sp[3]); // a pair: slots 3 and 4
        let hub = (HUB_IP, HUB_PORT);
        let relayed = frame(hub, (b.ip, b.port), synth::receiver(a.slot));
        let reflected = frame(hub, (a.ip, a.port), synth::receiver(a.slot));
        const DROP: u32 = 1;
        assert_eq!(sink(false, &relayed), (DROP, 1), "a relayed frame");
        assert_eq!(sink(true, &reflected), (DROP, 1), "a reflected frame");
        // What the generator sent, unchanged, is no relay; nor is a frame
        // sent back to its sender, or one from another source.
        for (what, f) in [
            ("input", frame((a.ip, a.port), hub, synth::receiver(a.slot))),
            ("back to sender", reflected.clone()),
            (
                "wrong source port",
                frame((HUB_IP, 1), (b.ip, b.port), synth::receiver(a.slot)),
            ),
            (
                "wrong receiver",
                frame(hub, (b.ip, b.port), synth::receiver(b.slot)),
            ),
        ] {
            assert_eq!(sink(false, &f), (DROP, 0), "{what}");
        }
        assert_eq!(
            sink(true, &relayed),
            (DROP, 0),
            "relayed, for the reflector"
        );
        // Not IPv4: passed (ARP), not counted.
        let mut arp = relayed.clone();
        arp[12..14].copy_from_slice(&[0x08, 0x06]);
        assert_eq!(sink(false, &arp), (2, 0), "ARP");
    }
}
