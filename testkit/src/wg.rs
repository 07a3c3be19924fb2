//! WireGuard messages (layout: relay_common::wire, after the Linux
//! driver's messages.h) with deterministic filler where the real ones carry
//! ciphertext, and the keys and endpoints of synthetic spokes.

use relay_common::wire::{
    COOKIE_REPLY_LEN, INITIATION_LEN, INITIATION_MAC1_OFF, INITIATION_MAC2_OFF, MAC_LEN,
    MSG_COOKIE_REPLY, MSG_INITIATION, MSG_RESPONSE, MSG_TRANSPORT, RESPONSE_LEN, TRANSPORT_MIN_LEN,
};
use relay_common::{Endpoint, InitiationEvent};
use relay_user::core::keys::Mac1Key;

/// Deterministic filler bytes.
pub fn filler(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

/// The 4-byte message header: type, three zero bytes.
pub fn wg_header(kind: u8) -> Vec<u8> {
    vec![kind, 0, 0, 0]
}

/// A handshake initiation with `sender` index (mac1 is filler: it matches
/// no key; see [`mac1_initiation`] for one that does).
pub fn initiation(sender: u32) -> Vec<u8> {
    let mut m = wg_header(MSG_INITIATION);
    m.extend(sender.to_le_bytes());
    m.extend(filler(1, 140));
    assert_eq!(m.len(), INITIATION_LEN);
    m
}

pub fn response(sender: u32, receiver: u32) -> Vec<u8> {
    let mut m = wg_header(MSG_RESPONSE);
    m.extend(sender.to_le_bytes());
    m.extend(receiver.to_le_bytes());
    m.extend(filler(2, 80));
    assert_eq!(m.len(), RESPONSE_LEN);
    m
}

pub fn cookie_reply(receiver: u32) -> Vec<u8> {
    let mut m = wg_header(MSG_COOKIE_REPLY);
    m.extend(receiver.to_le_bytes());
    m.extend(filler(3, 56));
    assert_eq!(m.len(), COOKIE_REPLY_LEN);
    m
}

/// Transport message with `data` bytes of ciphertext before the tag.
pub fn transport(receiver: u32, data: usize) -> Vec<u8> {
    transport_with_counter(receiver, 7, data)
}

/// Transport message with `counter` and `data` bytes of ciphertext before
/// the tag ([`TRANSPORT_MIN_LEN`] + `data` bytes in all).
pub fn transport_with_counter(receiver: u32, counter: u64, data: usize) -> Vec<u8> {
    let mut m = wg_header(MSG_TRANSPORT);
    m.extend(receiver.to_le_bytes());
    m.extend(counter.to_le_bytes());
    m.extend(filler(4, data + 16));
    debug_assert_eq!(m.len(), TRANSPORT_MIN_LEN + data);
    m
}

pub fn keepalive(receiver: u32) -> Vec<u8> {
    transport(receiver, 0)
}

/// Write the mac1 of initiation `m` for the responder whose public key
/// gave `key` (bytes before mac1 as they are).
pub fn set_mac1(m: &mut [u8], key: &Mac1Key) {
    let mac = key.mac(&m[..INITIATION_MAC1_OFF]);
    m[INITIATION_MAC1_OFF..INITIATION_MAC1_OFF + MAC_LEN].copy_from_slice(&mac);
}

/// A handshake initiation with `sender` index, filler derived from it, a
/// mac1 valid for the responder of `key` and mac2 zero.
pub fn mac1_initiation(key: &Mac1Key, sender: u32) -> [u8; INITIATION_LEN] {
    let mut f = [0u8; INITIATION_LEN];
    f[0] = MSG_INITIATION;
    f[4..8].copy_from_slice(&sender.to_le_bytes());
    for (i, b) in f[8..INITIATION_MAC1_OFF].iter_mut().enumerate() {
        *b = (i as u32 ^ sender) as u8;
    }
    set_mac1(&mut f, key);
    debug_assert!(f[INITIATION_MAC2_OFF..].iter().all(|&b| b == 0));
    f
}

/// The hub endpoint of synthetic initiation events.
pub const EVENT_HUB: Endpoint = Endpoint::v4([198, 51, 100, 1], 51820);

/// The ring-buffer record of initiation `frame` from `src` (slot
/// `src_slot`, or NO_SLOT) to [`EVENT_HUB`], ingress ifindex 1.
pub fn initiation_event(
    src: Endpoint,
    src_slot: u32,
    frame: [u8; INITIATION_LEN],
) -> InitiationEvent {
    InitiationEvent {
        src,
        dst: EVENT_HUB,
        src_slot,
        ifindex: 1,
        frame,
    }
}

/// Synthetic spoke `i`'s public key (distinct per `i`; the hub's:
/// `spoke_key(u32::MAX)`).
pub fn spoke_key(i: u32) -> [u8; 32] {
    let mut k = [0u8; 32];
    let mut x = (i as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    for c in k.chunks_mut(8) {
        x ^= x >> 29;
        x = x.wrapping_mul(0xbf58_476d_1ce4_e5b9);
        c.copy_from_slice(&x.to_le_bytes());
    }
    k
}

/// Synthetic spoke `i`'s endpoint: 10.x.y.z:40000 from `i`'s low 24 bits.
pub fn spoke_endpoint(i: u32) -> Endpoint {
    Endpoint::v4([10, (i >> 16) as u8, (i >> 8) as u8, i as u8], 40000)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_mac1() {
        assert_eq!(keepalive(9).len(), TRANSPORT_MIN_LEN);
        assert_eq!(transport_with_counter(9, 1, 100).len(), 132);
        let k = Mac1Key::for_public_key(&spoke_key(3));
        let m = mac1_initiation(&k, 5);
        assert!(k.matches(&m));
        assert!(!Mac1Key::for_public_key(&spoke_key(4)).matches(&m));
        assert_ne!(spoke_key(1), spoke_key(2));
    }
}
