//! Join tokens and enrollment rules, sans IO.
//!
//! A token is `rhj1.<id>.<secret>`: `id` (8 hex digits) names its record,
//! `secret` (32 hex digits, 128 random bits) proves it. Only a hash of the
//! secret is stored, so the token file alone cannot be used to join. A
//! token carries a number of uses, an expiry and optionally a policy
//! group; each successful enrollment takes one use, so a token sniffed
//! after its last use is worthless.
//!
//! [`JoinLimiter`] bounds enrollment attempts per source address and in
//! total: the enrollment endpoint faces the Internet.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Version prefix of every token.
pub const TOKEN_PREFIX: &str = "rhj1";
/// The token file format version this build reads and writes.
pub const TOKENS_VERSION: u64 = 1;
/// Tokens in one store (a bound on the file and on `token list`).
pub const MAX_TOKENS: usize = 10_000;

const ID_HEX: usize = 8;
const SECRET_HEX: usize = 32;
/// Domain separation for the stored hash.
const HASH_CONTEXT: &[u8] = b"relayhub join token v1\0";

/// Why a presented token does not admit a node. The messages are what
/// the joining node prints, so they say what to do.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error(
        "malformed join token: expected {TOKEN_PREFIX}.<8 hex digits>.<32 hex digits>, as `relayhub token create` prints it"
    )]
    Malformed,
    /// Unknown id, or a wrong secret for a known id: not told apart, so
    /// probing ids teaches nothing.
    #[error("unknown join token: ask the hub's operator for a new one (`relayhub token create`)")]
    Unknown,
    #[error("join token {id} expired; ask the hub's operator for a new one")]
    Expired { id: String },
    #[error(
        "join token {id} is used up ({uses} of {uses} uses); ask the hub's operator for a new one"
    )]
    Exhausted { id: String, uses: u32 },
    #[error("join token {id} was revoked")]
    Revoked { id: String },
}

/// A token as stored: never the secret itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenRecord {
    pub id: String,
    /// Hex SHA-256 of the secret (see [`hash_secret`]).
    pub hash: String,
    pub created_unix: u64,
    /// `None`: never expires.
    pub expires_unix: Option<u64>,
    pub max_uses: u32,
    pub uses: u32,
    /// Policy group a joined node is added to.
    #[serde(default)]
    pub group: Option<String>,
    #[serde(default)]
    pub revoked: bool,
    /// Names of the spokes that joined with it.
    #[serde(default)]
    pub joined: Vec<String>,
}

impl TokenRecord {
    /// Why this record admits nobody at `now_unix`, if it does not.
    fn refuses(&self, now_unix: u64) -> Option<TokenError> {
        let id = self.id.clone();
        if self.revoked {
            Some(TokenError::Revoked { id })
        } else if self.expires_unix.is_some_and(|t| now_unix >= t) {
            Some(TokenError::Expired { id })
        } else if self.uses >= self.max_uses {
            Some(TokenError::Exhausted {
                id,
                uses: self.max_uses,
            })
        } else {
            None
        }
    }

    /// `active`, `expired`, `used up` or `revoked`, for `token list`.
    pub fn state(&self, now_unix: u64) -> &'static str {
        match self.refuses(now_unix) {
            None => "active",
            Some(TokenError::Revoked { .. }) => "revoked",
            Some(TokenError::Expired { .. }) => "expired",
            Some(_) => "used up",
        }
    }
}

/// A presented token, split.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Presented<'a> {
    pub id: &'a str,
    pub secret: &'a str,
}

fn is_lower_hex(s: &str, len: usize) -> bool {
    s.len() == len && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// Split a token into id and secret, checking its shape only.
pub fn parse_token(text: &str) -> Result<Presented<'_>, TokenError> {
    let mut parts = text.trim().split('.');
    let (Some(prefix), Some(id), Some(secret), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(TokenError::Malformed);
    };
    if prefix != TOKEN_PREFIX || !is_lower_hex(id, ID_HEX) || !is_lower_hex(secret, SECRET_HEX) {
        return Err(TokenError::Malformed);
    }
    Ok(Presented { id, secret })
}

/// The stored form of a secret.
pub fn hash_secret(secret: &str) -> String {
    let mut h = Sha256::new();
    h.update(HASH_CONTEXT);
    h.update(secret.as_bytes());
    hex(&h.finalize())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Compare without an early exit, so timing does not tell how much of a
/// guessed hash (or token) matched.
pub fn same(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

/// Everything the hub stores about tokens.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tokens {
    pub version: u64,
    pub tokens: Vec<TokenRecord>,
}

/// What `token create` asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewToken {
    pub max_uses: u32,
    /// `None`: never expires.
    pub expires_in: Option<Duration>,
    pub group: Option<String>,
}

impl Tokens {
    pub fn new() -> Self {
        Tokens {
            version: TOKENS_VERSION,
            tokens: Vec::new(),
        }
    }

    /// Parse the stored JSON; `what` names the file in errors.
    pub fn from_json(text: &str) -> Result<Self, String> {
        let t: Tokens = serde_json::from_str(text)
            .map_err(|e| format!("line {}, column {}: {e}", e.line(), e.column()))?;
        if t.version != TOKENS_VERSION {
            return Err(format!(
                "token file version {} is not {TOKENS_VERSION}, the version this relayhub reads",
                t.version
            ));
        }
        Ok(t)
    }

    pub fn to_json(&self) -> String {
        let mut s = serde_json::to_string_pretty(self).expect("tokens serialize");
        s.push('\n');
        s
    }

    pub fn get(&self, id: &str) -> Option<&TokenRecord> {
        self.tokens.iter().find(|t| t.id == id)
    }

    /// Add a token; returns the token text (shown once, never stored).
    /// `random` supplies 20 bytes: 4 for the id, 16 for the secret.
    pub fn create(
        &mut self,
        new: &NewToken,
        now_unix: u64,
        random: [u8; 20],
    ) -> Result<String, String> {
        if new.max_uses == 0 {
            return Err("--uses must be at least 1".into());
        }
        if self.tokens.len() >= MAX_TOKENS {
            return Err(format!(
                "{MAX_TOKENS} tokens stored; revoke or prune old ones first (`relayhub token prune`)"
            ));
        }
        let id = hex(&random[..4]);
        if self.get(&id).is_some() {
            return Err("token id collision; try again".into());
        }
        let secret = hex(&random[4..]);
        self.tokens.push(TokenRecord {
            id: id.clone(),
            hash: hash_secret(&secret),
            created_unix: now_unix,
            expires_unix: new
                .expires_in
                .map(|d| now_unix.saturating_add(d.as_secs().max(1))),
            max_uses: new.max_uses,
            uses: 0,
            group: new.group.clone(),
            revoked: false,
            joined: Vec::new(),
        });
        Ok(format!("{TOKEN_PREFIX}.{id}.{secret}"))
    }

    /// The record a presented token names, if it admits a node now.
    pub fn check(&self, token: &str, now_unix: u64) -> Result<&TokenRecord, TokenError> {
        let p = parse_token(token)?;
        let rec = self.get(p.id).ok_or(TokenError::Unknown)?;
        if !same(&rec.hash, &hash_secret(p.secret)) {
            return Err(TokenError::Unknown);
        }
        match rec.refuses(now_unix) {
            Some(e) => Err(e),
            None => Ok(rec),
        }
    }

    /// Take one use of `token` for the spoke `name`.
    pub fn redeem(
        &mut self,
        token: &str,
        name: &str,
        now_unix: u64,
    ) -> Result<TokenRecord, TokenError> {
        let id = self.check(token, now_unix)?.id.clone();
        let rec = self
            .tokens
            .iter_mut()
            .find(|t| t.id == id)
            .ok_or(TokenError::Unknown)?;
        rec.uses += 1;
        rec.joined.push(name.to_owned());
        Ok(rec.clone())
    }

    /// Give back the use `name` took (its registration failed after the
    /// token was redeemed).
    pub fn refund(&mut self, id: &str, name: &str) {
        if let Some(rec) = self.tokens.iter_mut().find(|t| t.id == id)
            && let Some(i) = rec.joined.iter().rposition(|n| n == name)
        {
            rec.joined.remove(i);
            rec.uses = rec.uses.saturating_sub(1);
        }
    }

    /// Revoke by id (or by the whole token text); false if unknown.
    pub fn revoke(&mut self, id_or_token: &str) -> bool {
        let id = parse_token(id_or_token).map_or(id_or_token.trim(), |p| p.id);
        match self.tokens.iter_mut().find(|t| t.id == id) {
            Some(t) => {
                t.revoked = true;
                true
            }
            None => false,
        }
    }

    /// Drop tokens that admit nobody any more; how many.
    pub fn prune(&mut self, now_unix: u64) -> usize {
        let before = self.tokens.len();
        self.tokens.retain(|t| t.refuses(now_unix).is_none());
        before - self.tokens.len()
    }
}

/// Bounds on enrollment attempts (successful or not).
#[derive(Debug, Clone, Copy)]
pub struct JoinLimits {
    /// Attempts per source address per window.
    pub per_address: u32,
    /// Attempts in total per window.
    pub total: u32,
    pub window: Duration,
    /// Source addresses tracked at once (the oldest windows are dropped).
    pub max_addresses: usize,
}

impl Default for JoinLimits {
    fn default() -> Self {
        JoinLimits {
            per_address: 10,
            total: 120,
            window: Duration::from_secs(60),
            max_addresses: 4096,
        }
    }
}

/// Fixed windows of attempts, per source address and in total.
#[derive(Debug)]
pub struct JoinLimiter {
    limits: JoinLimits,
    per_address: HashMap<IpAddr, (Instant, u32)>,
    total: Option<(Instant, u32)>,
}

impl JoinLimiter {
    pub fn new(limits: JoinLimits) -> Self {
        JoinLimiter {
            limits,
            per_address: HashMap::new(),
            total: None,
        }
    }

    /// Count an attempt from `addr`; `Err(retry_after)` when over a bound.
    pub fn admit(&mut self, addr: IpAddr, now: Instant) -> Result<(), Duration> {
        let window = self.limits.window;
        let fresh = |w: &Option<(Instant, u32)>| {
            w.is_none_or(|(start, _)| now.saturating_duration_since(start) >= window)
        };
        if self.per_address.len() >= self.limits.max_addresses {
            self.per_address
                .retain(|_, (start, _)| now.saturating_duration_since(*start) < window);
        }
        let mine = self.per_address.get(&addr).copied();
        let retry = |start: Instant| window.saturating_sub(now.saturating_duration_since(start));
        if !fresh(&mine)
            && let Some((start, n)) = mine
            && n >= self.limits.per_address
        {
            return Err(retry(start));
        }
        if !fresh(&self.total)
            && let Some((start, n)) = self.total
            && n >= self.limits.total
        {
            return Err(retry(start));
        }
        if self.per_address.len() >= self.limits.max_addresses && mine.is_none() {
            // Still full after dropping old windows: a spread-out flood.
            return Err(window);
        }
        let bump = |w: Option<(Instant, u32)>| match w {
            Some((start, n)) if now.saturating_duration_since(start) < window => (start, n + 1),
            _ => (now, 1),
        };
        self.per_address.insert(addr, bump(mine));
        self.total = Some(bump(self.total));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one_use() -> NewToken {
        NewToken {
            max_uses: 1,
            expires_in: Some(Duration::from_secs(3600)),
            group: None,
        }
    }

    fn rnd(n: u8) -> [u8; 20] {
        let mut r = [0u8; 20];
        for (i, b) in r.iter_mut().enumerate() {
            *b = n.wrapping_mul(31).wrapping_add(i as u8);
        }
        r
    }

    #[test]
    fn a_token_admits_as_often_as_it_says() {
        let mut t = Tokens::new();
        let tok = t.create(&one_use(), 1000, rnd(1)).unwrap();
        assert!(tok.starts_with("rhj1."));
        assert_eq!(tok.len(), 4 + 1 + 8 + 1 + 32);
        // The secret is not stored.
        let secret = tok.rsplit('.').next().unwrap();
        assert!(!t.to_json().contains(secret));
        assert!(t.check(&tok, 1001).is_ok());
        let rec = t.redeem(&tok, "n1", 1001).unwrap();
        assert_eq!((rec.uses, rec.joined.clone()), (1, vec!["n1".to_string()]));
        // Sniffed after its last use: worthless.
        assert!(matches!(
            t.redeem(&tok, "n2", 1002),
            Err(TokenError::Exhausted { uses: 1, .. })
        ));
        // A refund (the registration failed) makes the use available again.
        t.refund(&rec.id, "n1");
        assert!(t.redeem(&tok, "n2", 1003).is_ok());
    }

    #[test]
    fn refusals() {
        let mut t = Tokens::new();
        let tok = t.create(&one_use(), 1000, rnd(2)).unwrap();
        assert_eq!(t.check("nope", 1000).unwrap_err(), TokenError::Malformed);
        assert_eq!(
            t.check(&format!("{tok}0"), 1000).unwrap_err(),
            TokenError::Malformed
        );
        assert_eq!(
            t.check(&tok.to_uppercase(), 1000).unwrap_err(),
            TokenError::Malformed
        );
        // A wrong secret for a known id looks like an unknown token.
        let mut wrong = tok.clone();
        let last = wrong.pop().unwrap();
        wrong.push(if last == '0' { '1' } else { '0' });
        assert_eq!(t.check(&wrong, 1000).unwrap_err(), TokenError::Unknown);
        let other = Tokens::new().create(&one_use(), 1000, rnd(3)).unwrap();
        assert_eq!(t.check(&other, 1000).unwrap_err(), TokenError::Unknown);
        // Expiry is exclusive of its second.
        assert!(t.check(&tok, 1000 + 3599).is_ok());
        assert!(matches!(
            t.check(&tok, 1000 + 3600),
            Err(TokenError::Expired { .. })
        ));
        let id = t.tokens[0].id.clone();
        assert!(t.revoke(&id));
        assert!(matches!(
            t.check(&tok, 1001),
            Err(TokenError::Revoked { .. })
        ));
        assert!(!t.revoke("ffffffff"));
        assert_eq!(t.prune(1001), 1);
        assert!(t.tokens.is_empty());
        assert!(
            t.create(
                &NewToken {
                    max_uses: 0,
                    ..one_use()
                },
                1,
                rnd(4)
            )
            .is_err()
        );
    }

    #[test]
    fn round_trips_and_rejects_other_versions() {
        let mut t = Tokens::new();
        t.create(
            &NewToken {
                max_uses: 3,
                expires_in: None,
                group: Some("web".into()),
            },
            5,
            rnd(5),
        )
        .unwrap();
        assert_eq!(Tokens::from_json(&t.to_json()).unwrap(), t);
        let e = Tokens::from_json(r#"{"version": 2, "tokens": []}"#).unwrap_err();
        assert!(e.contains("version 2"), "{e}");
        let e = Tokens::from_json("{\n  \"version\": 1,\n  \"tokens\": 7\n}").unwrap_err();
        assert!(e.starts_with("line 3"), "{e}");
    }

    #[test]
    fn limiter_bounds_per_address_and_total() {
        let limits = JoinLimits {
            per_address: 2,
            total: 3,
            window: Duration::from_secs(60),
            max_addresses: 2,
        };
        let mut l = JoinLimiter::new(limits);
        let now = Instant::now();
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        let c: IpAddr = "192.0.2.3".parse().unwrap();
        assert!(l.admit(a, now).is_ok());
        assert!(l.admit(a, now).is_ok());
        let retry = l.admit(a, now + Duration::from_secs(10)).unwrap_err();
        assert_eq!(retry, Duration::from_secs(50));
        assert!(l.admit(b, now).is_ok());
        // Total bound reached.
        assert!(l.admit(b, now).is_err());
        // Address table full with live windows.
        assert!(l.admit(c, now).is_err());
        // A new window.
        let later = now + Duration::from_secs(60);
        assert!(l.admit(a, later).is_ok());
        assert!(l.admit(c, later).is_ok());
    }
}
