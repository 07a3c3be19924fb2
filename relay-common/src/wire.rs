//! WireGuard wire facts (linux drivers/net/wireguard/messages.h, cookie.c).
//!
//! All multi-byte fields are little-endian; byte 0 is the message type and
//! bytes 1..4 are zero.

pub const MSG_INITIATION: u8 = 1;
pub const MSG_RESPONSE: u8 = 2;
pub const MSG_COOKIE_REPLY: u8 = 3;
pub const MSG_TRANSPORT: u8 = 4;

pub const INITIATION_LEN: usize = 148;
pub const RESPONSE_LEN: usize = 92;
pub const COOKIE_REPLY_LEN: usize = 64;
/// Header (16) plus the Poly1305 tag (16) of an empty payload.
pub const TRANSPORT_MIN_LEN: usize = 32;
/// A keepalive is a transport message with an empty payload.
pub const KEEPALIVE_LEN: usize = TRANSPORT_MIN_LEN;

pub const MAC_LEN: usize = 16;
pub const KEY_LEN: usize = 32;

/// Sender index of an initiation or response.
pub const SENDER_OFF: usize = 4;
/// Receiver index of a response.
pub const RESPONSE_RECEIVER_OFF: usize = 8;
/// Receiver index of a cookie reply or transport message.
pub const RECEIVER_OFF: usize = 4;

pub const INITIATION_MAC1_OFF: usize = 116;
pub const INITIATION_MAC2_OFF: usize = 132;
pub const RESPONSE_MAC1_OFF: usize = 60;
pub const RESPONSE_MAC2_OFF: usize = 76;
pub const COOKIE_NONCE_OFF: usize = 8;
pub const COOKIE_NONCE_LEN: usize = 24;
pub const COOKIE_ENC_OFF: usize = 32;

pub const LABEL_MAC1: &[u8; 8] = b"mac1----";
pub const LABEL_COOKIE: &[u8; 8] = b"cookie--";

/// WireGuard protocol timers, in seconds.
pub const REKEY_AFTER_SECS: u64 = 120;
pub const REJECT_AFTER_SECS: u64 = 180;
pub const REKEY_TIMEOUT_SECS: u64 = 5;
pub const KEEPALIVE_TIMEOUT_SECS: u64 = 10;
/// PersistentKeepalive the hub writes into the spoke files it prints.
pub const DEFAULT_PERSISTENT_KEEPALIVE_SECS: u16 = 25;

/// The UDP port relayhub and its own WireGuard share by default.
pub const DEFAULT_PORT: u16 = 51820;

/// Expected exact length of a handshake message, `None` for transport
/// (variable) and unknown types.
pub const fn handshake_len(msg_type: u8) -> Option<usize> {
    match msg_type {
        MSG_INITIATION => Some(INITIATION_LEN),
        MSG_RESPONSE => Some(RESPONSE_LEN),
        MSG_COOKIE_REPLY => Some(COOKIE_REPLY_LEN),
        _ => None,
    }
}
