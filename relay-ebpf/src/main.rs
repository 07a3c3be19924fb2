//! relayhub's XDP program.
//!
//! `relay` fast-paths WireGuard frames between spokes by receiver index
//! (see DESIGN.md, "Data path"); everything it does not relay goes up the
//! stack with XDP_PASS. `xdp_pass` only passes (attached to veth peers so
//! that XDP_TX frames are delivered).
#![no_std]
#![no_main]
// `unaligned_volatile_store` (see mem.rs).
#![allow(internal_features)]
#![feature(core_intrinsics)]

mod counters;
mod cross;
mod csum;
mod fallback;
mod forward;
mod initiation;
mod lookup;
mod maps;
mod mem;
mod parse;
mod proof;
mod rewrite;

use aya_ebpf::{
    bindings::xdp_action::{XDP_DROP, XDP_PASS, XDP_TX},
    helpers::generated::bpf_ktime_get_coarse_ns,
    macros::xdp,
    programs::XdpContext,
};
use core::mem::MaybeUninit;
use relay_common::{
    CROSS_VIA_USERSPACE, Endpoint, FAMILY_V4, INITIATION_COPIES_PER_SEC, NO_SLOT, SLOT_REMOTE,
    counter, mesh_port, slot_mesh,
    wire::{
        KEEPALIVE_LEN, MSG_COOKIE_REPLY, MSG_INITIATION, MSG_RESPONSE, MSG_TRANSPORT, RECEIVER_OFF,
        RESPONSE_RECEIVER_OFF, SENDER_OFF,
    },
};

use crate::{
    counters::inc,
    forward::Next,
    lookup::MeshDrop,
    maps::{CONFIG, COPY_BUDGET},
    parse::{ETH_LEN, ETH_P_IP, ETH_P_IPV6, Ip, L3, Ports, V4, V6, fill_endpoint},
};

#[xdp]
pub fn relay(ctx: XdpContext) -> u32 {
    // Err: the frame is shorter than a header we had to read.
    try_relay(&ctx).unwrap_or(XDP_PASS)
}

#[xdp]
pub fn xdp_pass(_ctx: XdpContext) -> u32 {
    XDP_PASS
}

#[inline(always)]
fn try_relay(ctx: &XdpContext) -> Result<u32, ()> {
    let eth = parse::check(ctx, 0, ETH_LEN)?;
    // SAFETY: the Ethernet header was checked.
    match unsafe { mem::load_be16(eth.add(12)) } {
        ETH_P_IP => relay_ip::<V4>(ctx),
        ETH_P_IPV6 => relay_ip::<V6>(ctx),
        _ => Ok(XDP_PASS),
    }
}

/// The little-endian 32-bit field at `off` of the WireGuard header `h`
/// (16 bytes checked).
#[inline(always)]
fn le32(h: *const u8, off: usize) -> u32 {
    // SAFETY: every caller's offset + 4 is within the 16 checked bytes;
    // misaligned access is allowed.
    u32::from_le(unsafe { core::ptr::read_unaligned(h.add(off).cast::<u32>()) })
}

#[inline(always)]
fn relay_ip<I: Ip>(ctx: &XdpContext) -> Result<u32, ()> {
    let cfg = match CONFIG.get(0) {
        Some(c) if c.port != 0 => c,
        _ => return Ok(XDP_PASS),
    };
    let ports = Ports {
        hub: cfg.port,
        mesh_base: cfg.mesh_base,
    };
    let ip_payload_len = match I::parse(ctx, ports)? {
        L3::Ignore => return Ok(XDP_PASS),
        L3::Unsupported => {
            inc(counter::PASS_UNSUPPORTED);
            return Ok(XDP_PASS);
        }
        L3::Malformed => {
            inc(counter::SEEN);
            inc(counter::PASS_MALFORMED);
            return Ok(XDP_PASS);
        }
        L3::Udp { ip_payload_len } => ip_payload_len,
    };
    if !parse::to_hub::<I>(ctx, cfg)? {
        inc(counter::PASS_NOT_FOR_HUB);
        return Ok(XDP_PASS);
    }
    inc(counter::SEEN);
    let Some(msg) = parse::wireguard::<I>(ctx, ip_payload_len)? else {
        inc(counter::PASS_MALFORMED);
        return Ok(XDP_PASS);
    };

    // The source endpoint, built in place (it is a map key).
    let mut src_ep = MaybeUninit::<Endpoint>::uninit();
    let h = parse::check(ctx, 0, I::WG_OFF)?;
    // SAFETY: offsets inside the checked header.
    let (src_ep, dport) = unsafe {
        let udp = h.add(I::UDP_OFF);
        fill_endpoint::<I>(src_ep.as_mut_ptr(), h.add(I::SRC_OFF), mem::load_be16(udp));
        (src_ep.assume_init_ref(), mem::load_be16(udp.add(2)))
    };
    // From a peer hub: only for spokes homed there, never to this hub's
    // own WireGuard.
    let mesh = ports.is_mesh(dport);
    // The coarse clock (CLOCK_MONOTONIC at the last tick, <= 4 ms behind):
    // every consumer works in seconds (health, session idle, budgets per
    // second, the source and next-hop caches' 1 s), and it costs ~20 ns
    // less per frame than bpf_ktime_get_ns, whose rdtsc is slow in VMs.
    // SAFETY: plain helper call.
    let now = unsafe { bpf_ktime_get_coarse_ns() };
    let src_entry = lookup::source_entry(src_ep);
    let (src_slot, src_flags) = match lookup::source_slot(src_ep, src_entry, now) {
        Some((slot, flags)) => (Some(slot), flags),
        None => (None, 0),
    };
    let src_remote = src_flags & SLOT_REMOTE != 0;
    if mesh && !src_remote {
        inc(counter::DROP_MESH_SOURCE);
        lookup::mesh_drop(lookup::mesh_peer_of(src_ep), MeshDrop::Source);
        return Ok(XDP_DROP);
    }
    let src_counters = src_slot.and_then(counters::slot);
    if let Some(c) = src_counters {
        // SAFETY: per-CPU map value.
        unsafe { (*c).last_rx_ns = now };
    }

    if msg.kind == MSG_INITIATION {
        // A peer hub's initiations all come from its one address, on
        // behalf of all its spokes, and were budgeted per source there:
        // not held to one address's budget here.
        if mesh || initiation::take::<I>(ctx, &COPY_BUDGET, INITIATION_COPIES_PER_SEC, now)?.taken()
        {
            initiation::queue::<I>(ctx, src_slot.unwrap_or(NO_SLOT))?;
        } else {
            inc(counter::INITIATIONS_NOT_COPIED);
        }
        if mesh {
            // For a spoke here, from one on the peer hub: the controller
            // routes it; nothing listens on a mesh port.
            return Ok(XDP_DROP);
        }
        let budget = cfg.init_pass_per_sec;
        if budget != 0 && !initiation::may_pass::<I>(ctx, budget, now)? {
            inc(counter::INITIATIONS_NOT_PASSED);
            return Ok(XDP_DROP);
        }
        return Ok(XDP_PASS);
    }

    let Some(slot) = src_slot else {
        inc(counter::PASS_UNKNOWN_SOURCE);
        if (msg.kind == MSG_TRANSPORT || msg.kind == MSG_RESPONSE)
            && !lookup::quiet(src_entry, now)
            && let Some(until) = proof::report::<I>(ctx, msg.kind, msg.len, now)?
        {
            lookup::spent(src_entry, until);
        }
        return Ok(XDP_PASS);
    };
    // Types 2, 3 and 4 are at least 32 bytes long.
    let hdr = parse::check(ctx, I::WG_OFF, 16)?;
    let receiver = if msg.kind == MSG_RESPONSE {
        le32(hdr, RESPONSE_RECEIVER_OFF)
    } else {
        le32(hdr, RECEIVER_OFF)
    };
    let sender = le32(hdr, SENDER_OFF);
    let keepalive = msg.kind == MSG_TRANSPORT && msg.len == KEEPALIVE_LEN;

    let Some(session) = lookup::session(slot, receiver) else {
        if mesh {
            inc(counter::DROP_MESH_NO_SESSION);
            lookup::mesh_drop(slot_mesh(src_flags), MeshDrop::NoSession);
            return Ok(XDP_DROP);
        }
        // The hub's own WireGuard session.
        inc(counter::PASS_NO_SESSION);
        if msg.kind == MSG_RESPONSE {
            inc(counter::HUB_RESPONSE);
        } else if msg.kind == MSG_COOKIE_REPLY {
            inc(counter::HUB_COOKIE);
        }
        if let Some(c) = src_counters {
            counters::to_hub(c, keepalive, now);
        }
        return Ok(XDP_PASS);
    };
    // SAFETY: map value pointer from this run.
    let dst_slot = unsafe { (*session).dst_slot };
    if dst_slot == slot {
        inc(counter::DROP_LOOP);
        return Ok(XDP_DROP);
    }
    let Some(dst) = lookup::destination(dst_slot) else {
        inc(counter::DROP_NO_DESTINATION);
        return Ok(XDP_DROP);
    };
    let dst_ep = &dst.endpoint;
    let dst_remote = dst.flags & SLOT_REMOTE != 0;
    if src_remote && dst_remote {
        inc(counter::DROP_MESH_TRANSIT);
        lookup::mesh_drop(slot_mesh(src_flags), MeshDrop::Transit);
        return Ok(XDP_DROP);
    }
    // To a peer hub: from the source spoke's mesh port (its mesh index
    // here), which names it there; to a spoke: from the hub port its
    // peers' Endpoint names.
    let sport = if dst_remote {
        match mesh_port(cfg.mesh_base, slot_mesh(src_flags)) {
            Some(p) if slot_mesh(src_flags) != 0 => p,
            _ => {
                // Not homed here: no port names it on the peer hub.
                inc(counter::DROP_MESH_UNHOMED);
                return Ok(XDP_DROP);
            }
        }
    } else {
        cfg.port
    };
    lookup::touch(session, now);
    // Cross-family: the hub needs an address in the destination's family.
    let cross = if dst_ep.family != I::FAMILY {
        match cross::hub_config::<I>() {
            Some(c) => Some(c),
            None => {
                inc(counter::PASS_CROSS_FAMILY);
                return Ok(XDP_PASS);
            }
        }
    } else {
        None
    };
    if msg.kind == MSG_RESPONSE {
        match lookup::learn_response(dst_slot, sender, slot, now) {
            lookup::Learned::Yes => {
                inc(counter::RESPONSE_LEARNED);
                // Once per handshake, not per frame; skipped unless the
                // controller loaded the program with debug logging.
                aya_log_ebpf::debug!(ctx, "learned session: slot {} -> slot {}", dst_slot, slot);
            }
            lookup::Learned::Conflict => inc(counter::LEARN_CONFLICT),
            lookup::Learned::No => {}
        }
    }

    let next = match cross {
        None => {
            rewrite::rewrite::<I>(ctx, dst_ep, sport)?;
            // Whole IP packet length, for the MTU check.
            forward::forward::<I>(ctx, (ip_payload_len + I::IP_LEN) as u16, dst_slot, now)?
        }
        Some(cfg) => {
            let rebuilt = if cfg.flags & CROSS_VIA_USERSPACE != 0 {
                Err(counter::USERSPACE_FALLBACK)
            } else {
                cross::rebuild::<I>(ctx, dst_ep, cfg, ip_payload_len, sport)?
            };
            if let Err(why) = rebuilt {
                // The frame is untouched: the controller relays it.
                if why != counter::USERSPACE_FALLBACK {
                    inc(why);
                }
                if !fallback::queue(ctx, dst_ep, why) {
                    inc(counter::DROP_FALLBACK_FULL);
                    return Ok(XDP_DROP);
                }
                inc(counter::USERSPACE_FALLBACK);
                counters::spoke_relayed(msg.len as u64, keepalive, now, src_counters, dst_slot);
                return Ok(XDP_DROP);
            }
            if I::FAMILY == FAMILY_V4 {
                forward::forward::<V6>(ctx, (ip_payload_len + V6::IP_LEN) as u16, dst_slot, now)?
            } else {
                forward::forward::<V4>(ctx, (ip_payload_len + V4::IP_LEN) as u16, dst_slot, now)?
            }
        }
    };
    let action = match next {
        Next::Sent(action) => action,
        Next::BackToSender => {
            inc(counter::FIB_FALLBACK);
            XDP_TX
        }
        Next::NoRoute => {
            inc(counter::DROP_NO_ROUTE);
            return Ok(XDP_DROP);
        }
        Next::TooBig => {
            inc(counter::DROP_TOO_BIG);
            return Ok(XDP_DROP);
        }
    };

    if src_remote {
        inc(counter::MESH_IN);
    } else if dst_remote {
        inc(counter::MESH_OUT);
    }
    counters::relayed(
        msg.kind,
        msg.len as u64,
        keepalive,
        now,
        src_counters,
        dst_slot,
        counter::relayed_family(I::FAMILY, dst_ep.family),
    );
    Ok(action)
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}
