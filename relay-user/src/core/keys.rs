//! The keys and MACs of WireGuard's handshake that anyone who knows a
//! responder's public key can compute (linux drivers/net/wireguard/cookie.c):
//! mac1 (which spoke an initiation is for), the cookie-reply key, mac2.
//! The hub uses them to route initiations and to answer floods on behalf
//! of spokes; it never holds a spoke's private key.

use blake2::digest::{FixedOutput, Update, consts::U16};
use blake2::{Blake2s256, Blake2sMac, Digest};
use chacha20poly1305::aead::{AeadInPlace, KeyInit};
use chacha20poly1305::{Tag, XChaCha20Poly1305, XNonce};
use relay_common::wire::{
    COOKIE_ENC_OFF, COOKIE_NONCE_LEN, COOKIE_NONCE_OFF, COOKIE_REPLY_LEN, INITIATION_LEN,
    INITIATION_MAC1_OFF, INITIATION_MAC2_OFF, KEY_LEN, LABEL_COOKIE, LABEL_MAC1, MAC_LEN,
    MSG_COOKIE_REPLY, RECEIVER_OFF, SENDER_OFF,
};

/// `BLAKE2s-256(label || public key)`: how WireGuard derives both the mac1
/// key and the cookie key from a responder's public key.
fn labelled_hash(label: &[u8], public_key: &[u8; KEY_LEN]) -> [u8; 32] {
    let mut h = Blake2s256::new();
    Digest::update(&mut h, label);
    Digest::update(&mut h, public_key);
    h.finalize().into()
}

/// `BLAKE2s-256("mac1----" || public key)`: precomputed once per spoke.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Mac1Key([u8; 32]);

impl Mac1Key {
    pub fn for_public_key(public_key: &[u8; KEY_LEN]) -> Self {
        Self(labelled_hash(LABEL_MAC1, public_key))
    }

    /// mac1 over `msg` (the message up to the mac1 field).
    pub fn mac(&self, msg: &[u8]) -> [u8; MAC_LEN] {
        keyed_mac(&self.0, &[msg])
    }

    /// Whether `initiation` (a whole 148-byte message) carries this key's mac1.
    pub fn matches(&self, initiation: &[u8; INITIATION_LEN]) -> bool {
        let want = self.mac(&initiation[..INITIATION_MAC1_OFF]);
        // Not secret-dependent in a useful way (mac1 is public), but keep it
        // branch-free anyway.
        ct_eq(&want, mac1(initiation))
    }
}

/// A cookie (and the mac2 key): 16 bytes.
pub type Cookie = [u8; MAC_LEN];

/// `BLAKE2s-256("cookie--" || public key)`: the key a responder's cookie
/// replies are encrypted under.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct CookieKey([u8; 32]);

impl CookieKey {
    pub fn for_public_key(public_key: &[u8; KEY_LEN]) -> Self {
        Self(labelled_hash(LABEL_COOKIE, public_key))
    }

    fn cipher(&self) -> XChaCha20Poly1305 {
        XChaCha20Poly1305::new(&self.0.into())
    }

    /// A cookie reply to the initiation `frame` carrying `cookie`.
    pub fn seal(
        &self,
        frame: &[u8; INITIATION_LEN],
        cookie: &Cookie,
        nonce: &[u8; COOKIE_NONCE_LEN],
    ) -> [u8; COOKIE_REPLY_LEN] {
        let mut out = [0u8; COOKIE_REPLY_LEN];
        out[0] = MSG_COOKIE_REPLY;
        out[RECEIVER_OFF..RECEIVER_OFF + 4].copy_from_slice(&frame[SENDER_OFF..SENDER_OFF + 4]);
        out[COOKIE_NONCE_OFF..COOKIE_NONCE_OFF + COOKIE_NONCE_LEN].copy_from_slice(nonce);
        let mut buf = *cookie;
        let tag = self
            .cipher()
            .encrypt_in_place_detached(XNonce::from_slice(nonce), mac1(frame), &mut buf)
            .expect("16-byte plaintext");
        out[COOKIE_ENC_OFF..COOKIE_ENC_OFF + MAC_LEN].copy_from_slice(&buf);
        out[COOKIE_ENC_OFF + MAC_LEN..].copy_from_slice(&tag);
        out
    }

    /// The cookie in `reply`, if it was sealed under this key for an
    /// initiation with this `mac1` (what an initiator does).
    pub fn open(&self, reply: &[u8; COOKIE_REPLY_LEN], mac1: &[u8]) -> Option<Cookie> {
        if reply[0] != MSG_COOKIE_REPLY {
            return None;
        }
        let nonce = XNonce::from_slice(&reply[COOKIE_NONCE_OFF..COOKIE_ENC_OFF]);
        let mut buf: Cookie = reply[COOKIE_ENC_OFF..COOKIE_ENC_OFF + MAC_LEN]
            .try_into()
            .expect("16 bytes");
        let tag = Tag::from_slice(&reply[COOKIE_ENC_OFF + MAC_LEN..]);
        self.cipher()
            .decrypt_in_place_detached(nonce, mac1, &mut buf, tag)
            .ok()?;
        Some(buf)
    }
}

pub(crate) fn mac1(frame: &[u8; INITIATION_LEN]) -> &[u8] {
    &frame[INITIATION_MAC1_OFF..INITIATION_MAC1_OFF + MAC_LEN]
}

/// BLAKE2s-128 keyed with `key` (16 or 32 bytes) over `parts`.
pub(crate) fn keyed_mac(key: &[u8], parts: &[&[u8]]) -> [u8; MAC_LEN] {
    let mut m = <Blake2sMac<U16>>::new_from_slice(key).expect("key of at most 32 bytes");
    for p in parts {
        Update::update(&mut m, p);
    }
    m.finalize_fixed().into()
}

/// mac2 of an initiation (over everything before the mac2 field).
pub fn mac2(cookie: &Cookie, frame: &[u8; INITIATION_LEN]) -> [u8; MAC_LEN] {
    keyed_mac(cookie, &[&frame[..INITIATION_MAC2_OFF]])
}

pub(crate) fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
