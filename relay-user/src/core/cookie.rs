//! WireGuard cookies, issued by the hub on behalf of spokes (sans-IO).
//!
//! Under load a WireGuard responder answers an initiation with a cookie
//! reply instead of processing it; the initiator's next initiation carries
//! mac2, a MAC keyed with that cookie, which proves it can receive at its
//! source address. Everything a responder needs for this is public except
//! its cookie secret: the reply is encrypted under
//! BLAKE2s-256("cookie--" || responder public key) with the initiation's
//! mac1 as associated data. So the hub can play the responder's part for
//! every spoke (linux drivers/net/wireguard/cookie.c, wireguard-go
//! device/cookie.go):
//!
//! - cookie = BLAKE2s-128(key = secret, src ip || src port (big-endian)),
//!   the secret rotating every [`SECRET_LIFETIME`];
//! - reply = type 3, receiver = the initiation's sender index, a random
//!   24-byte nonce, XChaCha20Poly1305(cookie key, nonce, AD = mac1, cookie);
//! - mac2 = BLAKE2s-128(key = cookie, msg[..132]).

use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{RngCore, SeedableRng};
use relay_common::wire::{
    COOKIE_NONCE_LEN, COOKIE_REPLY_LEN, INITIATION_LEN, INITIATION_MAC2_OFF, MAC_LEN,
};
use relay_common::{Endpoint, FAMILY_V6};

use crate::core::keys::{Cookie, CookieKey, ct_eq, keyed_mac, mac2};

/// How long a cookie secret is used (WireGuard's COOKIE_SECRET_MAX_AGE).
pub const SECRET_LIFETIME: Duration = Duration::from_secs(120);

/// What an initiation's mac2 says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mac2 {
    /// All zero: the initiator holds no cookie for this responder.
    Absent,
    /// Made with a cookie the hub issued to this source (current or
    /// previous secret).
    Valid,
    /// Anything else (a forgery, an expired cookie, or the destination
    /// spoke's own cookie).
    Invalid,
}

/// The hub's cookie secret (current and previous) and nonce source.
pub struct CookieJar {
    current: [u8; 32],
    previous: Option<[u8; 32]>,
    born: Instant,
    rng: StdRng,
}

impl CookieJar {
    pub fn new(now: Instant) -> Self {
        Self::with_rng(StdRng::from_entropy(), now)
    }

    /// Deterministic secrets and nonces (tests).
    pub fn with_rng(mut rng: StdRng, now: Instant) -> Self {
        let mut current = [0u8; 32];
        rng.fill_bytes(&mut current);
        Self {
            current,
            previous: None,
            born: now,
            rng,
        }
    }

    fn rotate(&mut self, now: Instant) {
        let age = now.saturating_duration_since(self.born);
        if age < SECRET_LIFETIME {
            return;
        }
        // After two lifetimes of silence the old secret is worthless too.
        self.previous = (age < 2 * SECRET_LIFETIME).then_some(self.current);
        self.rng.fill_bytes(&mut self.current);
        self.born = now;
    }

    fn cookie_with(secret: &[u8; 32], src: &Endpoint) -> Cookie {
        let addr: &[u8] = if src.family == FAMILY_V6 {
            &src.addr
        } else {
            &src.addr[..4]
        };
        keyed_mac(secret, &[addr, &src.port.to_be_bytes()])
    }

    /// The cookie for `src` under the current secret.
    pub fn cookie(&mut self, src: &Endpoint, now: Instant) -> Cookie {
        self.rotate(now);
        Self::cookie_with(&self.current, src)
    }

    /// Check an initiation's mac2 against the cookies of `src`.
    pub fn check(&mut self, src: &Endpoint, frame: &[u8; INITIATION_LEN], now: Instant) -> Mac2 {
        let got = &frame[INITIATION_MAC2_OFF..INITIATION_MAC2_OFF + MAC_LEN];
        if got.iter().all(|&b| b == 0) {
            return Mac2::Absent;
        }
        self.rotate(now);
        for secret in std::iter::once(&self.current).chain(self.previous.as_ref()) {
            let want = mac2(&Self::cookie_with(secret, src), frame);
            if ct_eq(&want, got) {
                return Mac2::Valid;
            }
        }
        Mac2::Invalid
    }

    /// A cookie reply to `frame` (from `src`) on behalf of the responder
    /// whose cookie key is `key`.
    pub fn reply(
        &mut self,
        key: &CookieKey,
        src: &Endpoint,
        frame: &[u8; INITIATION_LEN],
        now: Instant,
    ) -> [u8; COOKIE_REPLY_LEN] {
        let cookie = self.cookie(src, now);
        let mut nonce = [0u8; COOKIE_NONCE_LEN];
        self.rng.fill_bytes(&mut nonce);
        key.seal(frame, &cookie, &nonce)
    }
}

/// Zero an initiation's mac2 (before forwarding one the hub checked).
pub fn clear_mac2(frame: &mut [u8; INITIATION_LEN]) {
    frame[INITIATION_MAC2_OFF..INITIATION_MAC2_OFF + MAC_LEN].fill(0);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::keys::mac1;
    use relay_common::wire::{MSG_COOKIE_REPLY, MSG_INITIATION, RECEIVER_OFF, SENDER_OFF};

    fn frame(sender: u32) -> [u8; INITIATION_LEN] {
        let mut f = [0u8; INITIATION_LEN];
        f[0] = MSG_INITIATION;
        f[SENDER_OFF..SENDER_OFF + 4].copy_from_slice(&sender.to_le_bytes());
        for (i, b) in f[8..INITIATION_MAC2_OFF].iter_mut().enumerate() {
            *b = (i * 7) as u8;
        }
        f
    }

    fn jar(now: Instant) -> CookieJar {
        CookieJar::with_rng(StdRng::seed_from_u64(7), now)
    }

    #[test]
    fn reply_opens_with_the_responders_key_and_mac1_only() {
        let now = Instant::now();
        let mut j = jar(now);
        let src = Endpoint::v4([203, 0, 113, 6], 40000);
        let f = frame(0xabcd);
        let key = CookieKey::for_public_key(&[2; 32]);
        let r = j.reply(&key, &src, &f, now);
        assert_eq!(r[0], MSG_COOKIE_REPLY);
        assert_eq!(r[1..4], [0, 0, 0]);
        assert_eq!(r[RECEIVER_OFF..RECEIVER_OFF + 4], 0xabcdu32.to_le_bytes());
        let cookie = key.open(&r, mac1(&f)).expect("opens");
        assert_eq!(cookie, j.cookie(&src, now));
        assert!(key.open(&r, &[1; 16]).is_none());
        assert!(
            CookieKey::for_public_key(&[3; 32])
                .open(&r, mac1(&f))
                .is_none()
        );
        // Fresh nonce per reply.
        assert_ne!(j.reply(&key, &src, &f, now), r);
    }

    #[test]
    fn mac2_is_bound_to_the_source_and_survives_one_rotation() {
        let now = Instant::now();
        let mut j = jar(now);
        let src = Endpoint::v4([203, 0, 113, 6], 40000);
        let mut f = frame(1);
        assert_eq!(j.check(&src, &f, now), Mac2::Absent);
        let c = j.cookie(&src, now);
        let m = mac2(&c, &f);
        f[INITIATION_MAC2_OFF..].copy_from_slice(&m);
        assert_eq!(j.check(&src, &f, now), Mac2::Valid);
        assert_eq!(
            j.check(&Endpoint::v4([203, 0, 113, 6], 40001), &f, now),
            Mac2::Invalid
        );
        let mut g = f;
        g[10] ^= 1;
        assert_eq!(j.check(&src, &g, now), Mac2::Invalid);
        let later = now + SECRET_LIFETIME;
        assert_eq!(j.check(&src, &f, later), Mac2::Valid);
        assert_ne!(j.cookie(&src, later), c);
        assert_eq!(j.check(&src, &f, later + SECRET_LIFETIME), Mac2::Invalid);
        clear_mac2(&mut f);
        assert_eq!(j.check(&src, &f, later), Mac2::Absent);
    }

    #[test]
    fn cookie_covers_ipv6_address_and_port() {
        let now = Instant::now();
        let mut j = jar(now);
        let a = Endpoint::v6([0x20, 1, 0xd, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1], 5);
        let mut b = a;
        b.addr[15] = 2;
        assert_ne!(j.cookie(&a, now), j.cookie(&b, now));
        // IPv4 uses only the first four address bytes.
        let v4 = Endpoint::v4([1, 2, 3, 4], 5);
        let mut v4b = v4;
        v4b.addr[10] = 9;
        assert_eq!(j.cookie(&v4, now), j.cookie(&v4b, now));
    }
}
