//! Relay-state replication between an active and a standby hub, sans IO.
//!
//! The standby keeps a copy of the active's relay tables (authenticated
//! endpoint per slot, and every session entry, including those the XDP
//! program learned from responses), so that once the shared address moves
//! to it, its XDP program relays the next frame of every existing
//! spoke-to-spoke session.
//!
//! The active sees its own tables only by reading its maps, so
//! [`Publisher`] diffs consecutive reads (every [`TICK`]) against what it
//! last sent on the connection. A connection starts with a snapshot (all
//! entries, between [`Kind::SnapshotBegin`] and [`Kind::SnapshotEnd`]);
//! then deltas, and a heartbeat on ticks with nothing to send, so the
//! standby can tell a quiet active from a dead link. [`Replica`] on the
//! standby applies them to its desired tables and returns the map writes
//! ([`MapOp`]); a snapshot after a reconnect is diffed against what the
//! standby already has, so its maps are never emptied while it resyncs.
//!
//! Wire format (version [`VERSION`]), after the [`Handshake`]:
//! `header (16) | body (<= MAX_BODY) | tag (16)`, the header being
//! `version u8, kind u8, 0u16, body length u32 LE, sequence u64 LE`, the
//! tag BLAKE2s-128 over header and body keyed with the connection key.
//! Sequence numbers count messages on one connection from 0; any gap,
//! repeat or bad tag is an error and the standby reconnects (a fresh
//! snapshot), so reordering or duplicates can never be applied.
//!
//! Session values travel without `last_seen_ns` (another host's clock, and
//! it changes about once a second for every live session): the standby
//! stamps its own time when it installs an entry and leaves expiry to the
//! active, whose sweeps arrive as removals.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use relay_common::{Endpoint, SessionKey};

use crate::core::keys::{ct_eq, keyed_mac};

/// Protocol version in every header and the handshake.
pub const VERSION: u8 = 1;
pub const HEADER_LEN: usize = 16;
pub const TAG_LEN: usize = 16;
/// Largest body: about 2,600 endpoint or 4,000 session records.
pub const MAX_BODY: usize = 64 * 1024;
/// Largest message on the wire.
pub const MAX_MESSAGE: usize = HEADER_LEN + MAX_BODY + TAG_LEN;
/// How often the active reads its maps and sends what changed.
pub const TICK: Duration = Duration::from_millis(200);
/// Records one tick sends at most; the rest goes with the next ticks (the
/// diff is against what was sent, so nothing is lost).
pub const MAX_RECORDS_PER_TICK: usize = 32 * 1024;
pub const NONCE_LEN: usize = 16;

const MAGIC: &[u8; 3] = b"RHR";
const LABEL_BASE: &[u8] = b"relayhub replica v1";

const REC_ENDPOINT: u8 = 1;
const REC_NO_ENDPOINT: u8 = 2;
const REC_SESSION: u8 = 3;
const REC_NO_SESSION: u8 = 4;
/// tag + slot + addr + port + family.
const ENDPOINT_REC_LEN: usize = 1 + 4 + 16 + 2 + 1;
const NO_ENDPOINT_REC_LEN: usize = 1 + 4;
const SESSION_REC_LEN: usize = 1 + 8 + 8;
const NO_SESSION_REC_LEN: usize = 1 + 8;
const MAX_REC_LEN: usize = ENDPOINT_REC_LEN;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ReplicaError {
    #[error(
        "replication: protocol version {0}, this hub speaks {VERSION} (run the same relayhub on both hubs)"
    )]
    Version(u8),
    #[error("replication: bad handshake (not a relayhub replica stream)")]
    Magic,
    #[error("replication: authentication failed (do both hubs have the same hub.key?)")]
    Auth,
    #[error("replication: message of {0} bytes exceeds the limit")]
    TooLong(usize),
    #[error("replication: unknown message kind {0}")]
    Kind(u8),
    #[error("replication: malformed record at byte {0}")]
    Record(usize),
    #[error("replication: sequence {got}, expected {expected} (resync)")]
    Sequence { expected: u64, got: u64 },
    #[error("replication: {0} outside a snapshot")]
    Unexpected(&'static str),
}

/// Message kinds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Kind {
    SnapshotBegin = 1,
    SnapshotEnd = 2,
    Records = 3,
    Heartbeat = 4,
}

impl Kind {
    fn from_u8(b: u8) -> Result<Self, ReplicaError> {
        Ok(match b {
            1 => Kind::SnapshotBegin,
            2 => Kind::SnapshotEnd,
            3 => Kind::Records,
            4 => Kind::Heartbeat,
            k => return Err(ReplicaError::Kind(k)),
        })
    }
}

/// What a session entry says apart from its clock.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Session {
    pub dst_slot: u32,
    pub flags: u32,
}

/// One change to the replicated tables.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Record {
    Endpoint(u32, Endpoint),
    NoEndpoint(u32),
    Session(SessionKey, Session),
    NoSession(SessionKey),
}

/// The relay tables being replicated.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Tables {
    pub endpoints: HashMap<u32, Endpoint>,
    pub sessions: HashMap<SessionKey, Session>,
}

/// A write the standby makes to its maps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MapOp {
    /// Move `slot` from `old` to `new` (as `Datapath::set_spoke_endpoint`).
    Endpoint {
        slot: u32,
        old: Option<Endpoint>,
        new: Option<Endpoint>,
    },
    Session(SessionKey, Session),
    NoSession(SessionKey),
}

/// The key both hubs derive from the hub's private key (they share it, so
/// a failover presents the same WireGuard peer).
pub fn base_key(hub_private_key: &[u8; 32]) -> [u8; 32] {
    use blake2::{Blake2s256, Digest};
    let mut h = Blake2s256::new();
    h.update(LABEL_BASE);
    h.update(hub_private_key);
    h.finalize().into()
}

/// The connection handshake: the active challenges with a nonce, the
/// standby answers with its own and a MAC over both, proving it holds the
/// hub key before the active sends anything; the stream is then keyed by
/// both nonces, so a recorded stream or hello cannot be replayed.
pub struct Handshake;

/// `MAGIC | version | nonce`.
pub const CHALLENGE_LEN: usize = 4 + NONCE_LEN;
/// `MAGIC | version | nonce | tag`.
pub const HELLO_LEN: usize = 4 + NONCE_LEN + TAG_LEN;

impl Handshake {
    /// The active's first bytes.
    pub fn challenge(nonce_a: &[u8; NONCE_LEN]) -> [u8; CHALLENGE_LEN] {
        let mut out = [0u8; CHALLENGE_LEN];
        out[..3].copy_from_slice(MAGIC);
        out[3] = VERSION;
        out[4..].copy_from_slice(nonce_a);
        out
    }

    /// The standby's answer to `challenge`, and the connection key.
    pub fn hello(
        base: &[u8; 32],
        challenge: &[u8; CHALLENGE_LEN],
        nonce_s: &[u8; NONCE_LEN],
    ) -> Result<([u8; HELLO_LEN], [u8; TAG_LEN]), ReplicaError> {
        let nonce_a = check_preamble(challenge)?;
        let mut out = [0u8; HELLO_LEN];
        out[..3].copy_from_slice(MAGIC);
        out[3] = VERSION;
        out[4..4 + NONCE_LEN].copy_from_slice(nonce_s);
        out[4 + NONCE_LEN..].copy_from_slice(&keyed_mac(base, &[b"hello", nonce_a, nonce_s]));
        Ok((out, keyed_mac(base, &[b"stream", nonce_a, nonce_s])))
    }

    /// The active checks the standby's hello: the connection key, or why not.
    pub fn accept(
        base: &[u8; 32],
        nonce_a: &[u8; NONCE_LEN],
        hello: &[u8; HELLO_LEN],
    ) -> Result<[u8; TAG_LEN], ReplicaError> {
        let nonce_s = check_preamble(&hello[..4 + NONCE_LEN])?;
        let want = keyed_mac(base, &[b"hello", nonce_a, nonce_s]);
        if !ct_eq(&want, &hello[4 + NONCE_LEN..]) {
            return Err(ReplicaError::Auth);
        }
        Ok(keyed_mac(base, &[b"stream", nonce_a, nonce_s]))
    }
}

fn check_preamble(b: &[u8]) -> Result<&[u8], ReplicaError> {
    if &b[..3] != MAGIC {
        return Err(ReplicaError::Magic);
    }
    if b[3] != VERSION {
        return Err(ReplicaError::Version(b[3]));
    }
    Ok(&b[4..4 + NONCE_LEN])
}

/// Builds messages into one reusable buffer (no allocation once it grew).
pub struct Encoder {
    key: [u8; TAG_LEN],
    seq: u64,
    buf: Vec<u8>,
    /// Start of the message being filled, if any.
    open: Option<(usize, Kind)>,
}

impl Encoder {
    pub fn new(key: [u8; TAG_LEN]) -> Self {
        Self {
            key,
            seq: 0,
            buf: Vec::with_capacity(MAX_MESSAGE),
            open: None,
        }
    }

    /// Bytes ready to write; call [`Encoder::clear`] once written.
    pub fn bytes(&mut self) -> &[u8] {
        self.close();
        &self.buf
    }

    pub fn clear(&mut self) {
        self.close();
        self.buf.clear();
    }

    /// A message without records.
    pub fn empty(&mut self, kind: Kind) {
        self.close();
        self.begin(kind);
        self.close();
    }

    /// Append `r` to the open records message (a new one if full).
    pub fn record(&mut self, r: &Record) {
        match self.open {
            Some((start, Kind::Records))
                if self.buf.len() - start - HEADER_LEN + MAX_REC_LEN <= MAX_BODY => {}
            _ => {
                self.close();
                self.begin(Kind::Records);
            }
        }
        encode_record(r, &mut self.buf);
    }

    fn begin(&mut self, kind: Kind) {
        let start = self.buf.len();
        self.buf.extend_from_slice(&[VERSION, kind as u8, 0, 0]);
        self.buf.extend_from_slice(&[0; 4]);
        self.buf.extend_from_slice(&self.seq.to_le_bytes());
        self.seq += 1;
        self.open = Some((start, kind));
    }

    fn close(&mut self) {
        let Some((start, _)) = self.open.take() else {
            return;
        };
        let body = (self.buf.len() - start - HEADER_LEN) as u32;
        self.buf[start + 4..start + 8].copy_from_slice(&body.to_le_bytes());
        let tag = keyed_mac(&self.key, &[&self.buf[start..]]);
        self.buf.extend_from_slice(&tag);
    }
}

fn encode_record(r: &Record, out: &mut Vec<u8>) {
    match *r {
        Record::Endpoint(slot, ep) => {
            out.push(REC_ENDPOINT);
            out.extend_from_slice(&slot.to_le_bytes());
            out.extend_from_slice(&ep.addr);
            out.extend_from_slice(&ep.port.to_le_bytes());
            out.push(ep.family);
        }
        Record::NoEndpoint(slot) => {
            out.push(REC_NO_ENDPOINT);
            out.extend_from_slice(&slot.to_le_bytes());
        }
        Record::Session(k, s) => {
            out.push(REC_SESSION);
            out.extend_from_slice(&k.src_slot.to_le_bytes());
            out.extend_from_slice(&k.receiver.to_le_bytes());
            out.extend_from_slice(&s.dst_slot.to_le_bytes());
            out.extend_from_slice(&s.flags.to_le_bytes());
        }
        Record::NoSession(k) => {
            out.push(REC_NO_SESSION);
            out.extend_from_slice(&k.src_slot.to_le_bytes());
            out.extend_from_slice(&k.receiver.to_le_bytes());
        }
    }
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// The records of a body, or where it is malformed.
pub fn records(body: &[u8]) -> impl Iterator<Item = Result<Record, ReplicaError>> + '_ {
    let mut at = 0;
    std::iter::from_fn(move || {
        if at >= body.len() {
            return None;
        }
        let rest = &body[at..];
        let len = match rest[0] {
            REC_ENDPOINT => ENDPOINT_REC_LEN,
            REC_NO_ENDPOINT => NO_ENDPOINT_REC_LEN,
            REC_SESSION => SESSION_REC_LEN,
            REC_NO_SESSION => NO_SESSION_REC_LEN,
            _ => 0,
        };
        if len == 0 || rest.len() < len {
            let bad = at;
            at = body.len();
            return Some(Err(ReplicaError::Record(bad)));
        }
        at += len;
        let key = |o: usize| SessionKey {
            src_slot: u32_at(rest, o),
            receiver: u32_at(rest, o + 4),
        };
        Some(Ok(match rest[0] {
            REC_ENDPOINT => {
                let mut addr = [0u8; 16];
                addr.copy_from_slice(&rest[5..21]);
                let ep = Endpoint {
                    addr,
                    port: u16::from_le_bytes([rest[21], rest[22]]),
                    family: rest[23],
                    _pad: 0,
                };
                Record::Endpoint(u32_at(rest, 1), ep)
            }
            REC_NO_ENDPOINT => Record::NoEndpoint(u32_at(rest, 1)),
            REC_SESSION => Record::Session(
                key(1),
                Session {
                    dst_slot: u32_at(rest, 9),
                    flags: u32_at(rest, 13),
                },
            ),
            _ => Record::NoSession(key(1)),
        }))
    })
}

/// One verified message.
#[derive(Debug, PartialEq, Eq)]
pub struct Message<'a> {
    pub kind: Kind,
    pub seq: u64,
    pub body: &'a [u8],
}

/// Splits a byte stream into verified messages. Feed it what was read;
/// the buffer never holds more than one message plus one read.
pub struct Decoder {
    key: [u8; TAG_LEN],
    buf: Vec<u8>,
    /// Bytes of `buf` already handed out as messages.
    consumed: usize,
}

impl Decoder {
    pub fn new(key: [u8; TAG_LEN]) -> Self {
        Self {
            key,
            buf: Vec::with_capacity(2 * MAX_MESSAGE),
            consumed: 0,
        }
    }

    pub fn push(&mut self, bytes: &[u8]) {
        if self.consumed > 0 {
            self.buf.drain(..self.consumed);
            self.consumed = 0;
        }
        self.buf.extend_from_slice(bytes);
    }

    /// The next whole message, `None` until one is complete.
    pub fn next_message(&mut self) -> Result<Option<Message<'_>>, ReplicaError> {
        let b = &self.buf[self.consumed..];
        if b.len() < HEADER_LEN {
            return Ok(None);
        }
        if b[0] != VERSION {
            return Err(ReplicaError::Version(b[0]));
        }
        let kind = Kind::from_u8(b[1])?;
        let body = u32_at(b, 4) as usize;
        if body > MAX_BODY {
            return Err(ReplicaError::TooLong(body));
        }
        let total = HEADER_LEN + body + TAG_LEN;
        if b.len() < total {
            return Ok(None);
        }
        let tag = keyed_mac(&self.key, &[&b[..HEADER_LEN + body]]);
        if !ct_eq(&tag, &b[HEADER_LEN + body..total]) {
            return Err(ReplicaError::Auth);
        }
        let mut seq = [0u8; 8];
        seq.copy_from_slice(&b[8..16]);
        let start = self.consumed;
        self.consumed += total;
        Ok(Some(Message {
            kind,
            seq: u64::from_le_bytes(seq),
            body: &self.buf[start + HEADER_LEN..start + HEADER_LEN + body],
        }))
    }
}

/// The active's side of one connection: what the standby has been sent.
#[derive(Default)]
pub struct Publisher {
    sent: Tables,
    snapshot_sent: bool,
    /// Records sent, for the metric.
    pub records: u64,
}

impl Publisher {
    pub fn new() -> Self {
        Self::default()
    }

    /// One tick: encode into `enc` what `now` (the maps as just read)
    /// differs in from what was sent, at most [`MAX_RECORDS_PER_TICK`]
    /// records; the first tick sends the snapshot (whole, however large:
    /// the standby applies it only once complete). Returns the number of
    /// records.
    pub fn tick(&mut self, now: &Tables, enc: &mut Encoder) -> usize {
        let first = !self.snapshot_sent;
        let budget = if first {
            usize::MAX
        } else {
            MAX_RECORDS_PER_TICK
        };
        if first {
            enc.empty(Kind::SnapshotBegin);
        }
        let mut n = 0;
        let sent = &mut self.sent;
        for (&slot, ep) in &now.endpoints {
            if n == budget {
                break;
            }
            if sent.endpoints.get(&slot) != Some(ep) {
                enc.record(&Record::Endpoint(slot, *ep));
                sent.endpoints.insert(slot, *ep);
                n += 1;
            }
        }
        sent.endpoints.retain(|slot, _| {
            if n == budget || now.endpoints.contains_key(slot) {
                return true;
            }
            enc.record(&Record::NoEndpoint(*slot));
            n += 1;
            false
        });
        for (k, s) in &now.sessions {
            if n == budget {
                break;
            }
            if sent.sessions.get(k) != Some(s) {
                enc.record(&Record::Session(*k, *s));
                sent.sessions.insert(*k, *s);
                n += 1;
            }
        }
        sent.sessions.retain(|k, _| {
            if n == budget || now.sessions.contains_key(k) {
                return true;
            }
            enc.record(&Record::NoSession(*k));
            n += 1;
            false
        });
        if first {
            enc.empty(Kind::SnapshotEnd);
            self.snapshot_sent = true;
        } else if n == 0 {
            enc.empty(Kind::Heartbeat);
        }
        self.records += n as u64;
        n
    }
}

/// The standby's replicated tables.
#[derive(Default)]
pub struct Replica {
    /// What the standby's maps hold (as written by this replica).
    have: Tables,
    /// A snapshot being received.
    incoming: Option<Tables>,
    /// The next sequence number; `None` before a connection's first message.
    next_seq: Option<u64>,
    /// Whether a snapshot completed on this connection.
    synced: bool,
    /// When the last message was applied.
    last_applied: Option<Instant>,
    pub stats: ReplicaStats,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReplicaStats {
    pub snapshots: u64,
    pub records: u64,
    pub connects: u64,
}

impl Replica {
    pub fn new() -> Self {
        Self::default()
    }

    /// A new connection: its first message must begin a snapshot. What the
    /// maps hold stays until that snapshot says otherwise.
    pub fn reconnect(&mut self) {
        self.incoming = None;
        self.next_seq = None;
        self.synced = false;
        self.stats.connects += 1;
    }

    /// The maps hold `maps` now (read from them): a hub that was active,
    /// or that kept its pinned maps across a restart, wrote them itself, so
    /// the next snapshot must be diffed against this, not against what
    /// this replica wrote last.
    pub fn rebase(&mut self, maps: Tables) {
        self.have = maps;
        self.incoming = None;
        self.next_seq = None;
        self.synced = false;
    }

    /// The tables as the maps hold them.
    pub fn tables(&self) -> &Tables {
        &self.have
    }

    /// Whether a snapshot completed on the current connection.
    pub fn synced(&self) -> bool {
        self.synced
    }

    /// Seconds since the last message was applied (`None`: never). With
    /// the active's heartbeat every [`TICK`], this bounds how stale the
    /// copy may be.
    pub fn lag(&self, now: Instant) -> Option<Duration> {
        self.last_applied.map(|t| now.saturating_duration_since(t))
    }

    /// Apply one message; map writes go to `ops`. On an error nothing of
    /// the message is applied and the connection must be dropped.
    pub fn on_message(
        &mut self,
        m: &Message<'_>,
        now: Instant,
        ops: &mut Vec<MapOp>,
    ) -> Result<(), ReplicaError> {
        let expected = self.next_seq.unwrap_or(0);
        if m.seq != expected {
            return Err(ReplicaError::Sequence {
                expected,
                got: m.seq,
            });
        }
        // Check the whole body before touching anything.
        if let Some(Err(e)) = records(m.body).find(Result::is_err) {
            return Err(e);
        }
        match m.kind {
            Kind::SnapshotBegin => {
                if self.next_seq.is_some() {
                    return Err(ReplicaError::Unexpected("a second snapshot"));
                }
                self.incoming = Some(Tables::default());
            }
            Kind::Records => {
                if let Some(t) = self.incoming.as_mut() {
                    records(m.body).flatten().for_each(|r| apply(t, r));
                } else if self.synced {
                    for r in records(m.body).flatten() {
                        self.write(r, ops);
                    }
                } else {
                    return Err(ReplicaError::Unexpected("records"));
                }
                self.stats.records += records(m.body).count() as u64;
            }
            Kind::SnapshotEnd => {
                let Some(t) = self.incoming.take() else {
                    return Err(ReplicaError::Unexpected("snapshot end"));
                };
                self.resync(t, ops);
                self.synced = true;
                self.stats.snapshots += 1;
            }
            Kind::Heartbeat => {
                if !self.synced {
                    return Err(ReplicaError::Unexpected("heartbeat"));
                }
            }
        }
        self.next_seq = Some(expected + 1);
        if self.synced {
            self.last_applied = Some(now);
        }
        Ok(())
    }

    /// Apply one record to the maps' copy, emitting the write.
    fn write(&mut self, r: Record, ops: &mut Vec<MapOp>) {
        match r {
            Record::Endpoint(slot, ep) => {
                let old = self.have.endpoints.insert(slot, ep);
                if old != Some(ep) {
                    ops.push(MapOp::Endpoint {
                        slot,
                        old,
                        new: Some(ep),
                    });
                }
            }
            Record::NoEndpoint(slot) => {
                if let Some(old) = self.have.endpoints.remove(&slot) {
                    ops.push(MapOp::Endpoint {
                        slot,
                        old: Some(old),
                        new: None,
                    });
                }
            }
            Record::Session(k, s) => {
                if self.have.sessions.insert(k, s) != Some(s) {
                    ops.push(MapOp::Session(k, s));
                }
            }
            Record::NoSession(k) => {
                if self.have.sessions.remove(&k).is_some() {
                    ops.push(MapOp::NoSession(k));
                }
            }
        }
    }

    /// Bring the maps from `have` to `want` (a complete snapshot): removals
    /// first, so a moved endpoint never has two slots.
    fn resync(&mut self, want: Tables, ops: &mut Vec<MapOp>) {
        let gone_eps: Vec<u32> = self
            .have
            .endpoints
            .keys()
            .filter(|s| !want.endpoints.contains_key(s))
            .copied()
            .collect();
        for slot in gone_eps {
            self.write(Record::NoEndpoint(slot), ops);
        }
        let gone: Vec<SessionKey> = self
            .have
            .sessions
            .keys()
            .filter(|k| !want.sessions.contains_key(k))
            .copied()
            .collect();
        for k in gone {
            self.write(Record::NoSession(k), ops);
        }
        for (slot, ep) in want.endpoints {
            self.write(Record::Endpoint(slot, ep), ops);
        }
        for (k, s) in want.sessions {
            self.write(Record::Session(k, s), ops);
        }
    }
}

fn apply(t: &mut Tables, r: Record) {
    match r {
        Record::Endpoint(slot, ep) => {
            t.endpoints.insert(slot, ep);
        }
        Record::NoEndpoint(slot) => {
            t.endpoints.remove(&slot);
        }
        Record::Session(k, s) => {
            t.sessions.insert(k, s);
        }
        Record::NoSession(k) => {
            t.sessions.remove(&k);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: [u8; TAG_LEN] = [7; TAG_LEN];

    fn key(src_slot: u32, receiver: u32) -> SessionKey {
        SessionKey { src_slot, receiver }
    }

    fn sess(dst_slot: u32) -> Session {
        Session {
            dst_slot,
            flags: relay_common::SESSION_FROM_RESPONSE,
        }
    }

    fn tables(eps: &[(u32, u16)], ss: &[(u32, u32, u32)]) -> Tables {
        Tables {
            endpoints: eps
                .iter()
                .map(|&(s, p)| (s, Endpoint::v4([198, 51, 100, s as u8], p)))
                .collect(),
            sessions: ss.iter().map(|&(a, r, b)| (key(a, r), sess(b))).collect(),
        }
    }

    /// Feed everything `enc` holds to `rep`: the map writes.
    fn deliver(
        enc: &mut Encoder,
        dec: &mut Decoder,
        rep: &mut Replica,
    ) -> Result<Vec<MapOp>, ReplicaError> {
        dec.push(enc.bytes());
        enc.clear();
        let mut ops = Vec::new();
        while let Some(m) = dec.next_message()? {
            rep.on_message(&m, Instant::now(), &mut ops)?;
        }
        Ok(ops)
    }

    #[test]
    fn snapshot_then_deltas_converge() {
        let mut p = Publisher::new();
        let mut enc = Encoder::new(KEY);
        let mut dec = Decoder::new(KEY);
        let mut r = Replica::new();
        let t1 = tables(&[(1, 1000), (2, 2000)], &[(1, 0xaa, 2), (2, 0xbb, 1)]);
        p.tick(&t1, &mut enc);
        let ops = deliver(&mut enc, &mut dec, &mut r).unwrap();
        assert_eq!(ops.len(), 4);
        assert_eq!(r.tables(), &t1);
        assert!(r.synced());
        // Spoke 2 roams, a session ends, another is learned.
        let t2 = tables(
            &[(1, 1000), (2, 2222), (3, 3000)],
            &[(1, 0xaa, 2), (3, 0xcc, 1)],
        );
        assert_eq!(p.tick(&t2, &mut enc), 4);
        let ops = deliver(&mut enc, &mut dec, &mut r).unwrap();
        assert_eq!(r.tables(), &t2);
        assert!(ops.contains(&MapOp::NoSession(key(2, 0xbb))));
        assert!(ops.contains(&MapOp::Endpoint {
            slot: 2,
            old: Some(Endpoint::v4([198, 51, 100, 2], 2000)),
            new: Some(Endpoint::v4([198, 51, 100, 2], 2222)),
        }));
        // Nothing changed: a heartbeat, no writes, lag restarts.
        assert_eq!(p.tick(&t2, &mut enc), 0);
        assert!(deliver(&mut enc, &mut dec, &mut r).unwrap().is_empty());
        assert!(r.lag(Instant::now()).unwrap() < Duration::from_secs(1));
    }

    #[test]
    fn a_rebased_replica_removes_what_its_own_maps_hold_extra() {
        // A hub that was active (or kept pinned maps across a restart) has
        // entries of its own; following again, the snapshot must remove
        // those the active does not have, and rewrite a moved endpoint
        // from where the maps have it.
        let mut r = Replica::new();
        let own = tables(&[(1, 1000), (5, 5000)], &[(1, 0xaa, 2), (5, 0xee, 1)]);
        r.rebase(own);
        let active = tables(&[(1, 1111)], &[(1, 0xaa, 2)]);
        let mut p = Publisher::new();
        let mut enc = Encoder::new(KEY);
        let mut dec = Decoder::new(KEY);
        p.tick(&active, &mut enc);
        let ops = deliver(&mut enc, &mut dec, &mut r).unwrap();
        assert_eq!(r.tables(), &active);
        assert!(ops.contains(&MapOp::NoSession(key(5, 0xee))));
        assert!(ops.contains(&MapOp::Endpoint {
            slot: 5,
            old: Some(Endpoint::v4([198, 51, 100, 5], 5000)),
            new: None,
        }));
        assert!(ops.contains(&MapOp::Endpoint {
            slot: 1,
            old: Some(Endpoint::v4([198, 51, 100, 1], 1000)),
            new: Some(Endpoint::v4([198, 51, 100, 1], 1111)),
        }));
        // The session both have is not rewritten.
        assert!(!ops.contains(&MapOp::Session(key(1, 0xaa), sess(2))));
        assert_eq!(ops.len(), 3);
    }

    #[test]
    fn large_snapshot_spans_messages_and_deltas_are_bounded() {
        let mut p = Publisher::new();
        let mut enc = Encoder::new(KEY);
        let mut dec = Decoder::new(KEY);
        let mut r = Replica::new();
        let mut t = Tables::default();
        for i in 0..50_000u32 {
            t.sessions.insert(key(i % 100, i), sess(i % 7));
        }
        p.tick(&t, &mut enc);
        assert!(enc.bytes().len() > MAX_MESSAGE);
        deliver(&mut enc, &mut dec, &mut r).unwrap();
        assert_eq!(r.tables(), &t);
        // A burst larger than one tick's budget drains over several ticks.
        for i in 50_000..(50_000 + MAX_RECORDS_PER_TICK as u32 + 10) {
            t.sessions.insert(key(1, i), sess(2));
        }
        assert_eq!(p.tick(&t, &mut enc), MAX_RECORDS_PER_TICK);
        deliver(&mut enc, &mut dec, &mut r).unwrap();
        assert_ne!(r.tables(), &t);
        assert_eq!(p.tick(&t, &mut enc), 10);
        deliver(&mut enc, &mut dec, &mut r).unwrap();
        assert_eq!(r.tables(), &t);
    }

    #[test]
    fn duplicates_and_gaps_are_rejected_without_effect() {
        let mut p = Publisher::new();
        let mut enc = Encoder::new(KEY);
        let mut r = Replica::new();
        p.tick(&tables(&[(1, 1)], &[]), &mut enc);
        let snap = enc.bytes().to_vec();
        enc.clear();
        p.tick(&tables(&[(1, 1)], &[(1, 5, 2)]), &mut enc);
        let delta = enc.bytes().to_vec();
        enc.clear();
        let mut dec = Decoder::new(KEY);
        dec.push(&snap);
        let mut ops = Vec::new();
        while let Some(m) = dec.next_message().unwrap() {
            r.on_message(&m, Instant::now(), &mut ops).unwrap();
        }
        let before = r.tables().clone();
        // The delta twice: the second is a repeat.
        dec.push(&delta);
        dec.push(&delta);
        let m = dec.next_message().unwrap().unwrap();
        r.on_message(&m, Instant::now(), &mut ops).unwrap();
        let after = r.tables().clone();
        assert_ne!(before, after);
        let m = dec.next_message().unwrap().unwrap();
        assert!(matches!(
            r.on_message(&m, Instant::now(), &mut ops),
            Err(ReplicaError::Sequence { .. })
        ));
        assert_eq!(r.tables(), &after);
        // A delta on a fresh connection without its snapshot.
        let mut r2 = Replica::new();
        let mut dec = Decoder::new(KEY);
        dec.push(&delta);
        let m = dec.next_message().unwrap().unwrap();
        assert!(r2.on_message(&m, Instant::now(), &mut ops).is_err());
        assert_eq!(r2.tables(), &Tables::default());
    }

    #[test]
    fn reconnect_resyncs_without_emptying_the_maps() {
        let mut r = Replica::new();
        let t1 = tables(&[(1, 1), (2, 2)], &[(1, 5, 2), (2, 6, 1)]);
        let mut p = Publisher::new();
        let mut enc = Encoder::new(KEY);
        p.tick(&t1, &mut enc);
        deliver(&mut enc, &mut dec_of(), &mut r).unwrap();
        // The link drops; meanwhile one session ended, one began.
        r.reconnect();
        let t2 = tables(&[(1, 1), (2, 2)], &[(1, 5, 2), (2, 7, 1)]);
        let mut p = Publisher::new();
        let mut enc = Encoder::new([9; TAG_LEN]);
        p.tick(&t2, &mut enc);
        let ops = deliver(&mut enc, &mut Decoder::new([9; TAG_LEN]), &mut r).unwrap();
        // Only the difference is written: nothing that stayed is removed.
        assert_eq!(
            ops,
            vec![
                MapOp::NoSession(key(2, 6)),
                MapOp::Session(key(2, 7), sess(1))
            ]
        );
        assert_eq!(r.tables(), &t2);
        assert_eq!(r.stats.snapshots, 2);
    }

    fn dec_of() -> Decoder {
        Decoder::new(KEY)
    }

    #[test]
    fn malformed_input_is_an_error_never_a_panic() {
        let mut p = Publisher::new();
        let mut enc = Encoder::new(KEY);
        p.tick(&tables(&[(1, 1), (2, 2)], &[(1, 5, 2)]), &mut enc);
        let good = enc.bytes().to_vec();
        // Every single-byte corruption and every truncation.
        for i in 0..good.len() {
            for flip in [0x01u8, 0x80, 0xff] {
                let mut bad = good.clone();
                bad[i] ^= flip;
                let mut dec = Decoder::new(KEY);
                let mut r = Replica::new();
                dec.push(&bad);
                let res: Result<(), ReplicaError> = (|| {
                    let mut ops = Vec::new();
                    while let Some(m) = dec.next_message()? {
                        r.on_message(&m, Instant::now(), &mut ops)?;
                    }
                    Ok(())
                })();
                assert!(res.is_err() || !r.synced(), "byte {i} ^ {flip:#x} accepted");
            }
        }
        for n in 0..good.len() {
            let mut dec = Decoder::new(KEY);
            dec.push(&good[..n]);
            while let Ok(Some(_)) = dec.next_message() {}
        }
        // Garbage records under a valid tag are refused before any write.
        let mut enc = Encoder::new(KEY);
        enc.empty(Kind::SnapshotBegin);
        enc.begin(Kind::Records);
        enc.buf.extend_from_slice(&[REC_SESSION, 1, 2]);
        let mut dec = Decoder::new(KEY);
        dec.push(enc.bytes());
        let mut r = Replica::new();
        let mut ops = Vec::new();
        let m = dec.next_message().unwrap().unwrap();
        r.on_message(&m, Instant::now(), &mut ops).unwrap();
        let m = dec.next_message().unwrap().unwrap();
        assert_eq!(
            r.on_message(&m, Instant::now(), &mut ops),
            Err(ReplicaError::Record(0))
        );
        // A length beyond the bound is refused before it is buffered.
        let mut hdr = [0u8; HEADER_LEN];
        hdr[0] = VERSION;
        hdr[1] = Kind::Records as u8;
        hdr[4..8].copy_from_slice(&(MAX_BODY as u32 + 1).to_le_bytes());
        let mut dec = Decoder::new(KEY);
        dec.push(&hdr);
        assert!(matches!(dec.next_message(), Err(ReplicaError::TooLong(_))));
    }

    #[test]
    fn wrong_key_is_refused() {
        let mut p = Publisher::new();
        let mut enc = Encoder::new(KEY);
        p.tick(&tables(&[(1, 1)], &[]), &mut enc);
        let mut dec = Decoder::new([8; TAG_LEN]);
        dec.push(enc.bytes());
        assert_eq!(dec.next_message(), Err(ReplicaError::Auth));
    }

    #[test]
    fn handshake_needs_the_hub_key_and_binds_both_nonces() {
        let base = base_key(&[1; 32]);
        let other = base_key(&[2; 32]);
        let na = [3; NONCE_LEN];
        let ns = [4; NONCE_LEN];
        let ch = Handshake::challenge(&na);
        let (hello, k_standby) = Handshake::hello(&base, &ch, &ns).unwrap();
        assert_eq!(Handshake::accept(&base, &na, &hello), Ok(k_standby));
        // A standby with another key, or a hello replayed to a new challenge.
        let (bad, _) = Handshake::hello(&other, &ch, &ns).unwrap();
        assert_eq!(Handshake::accept(&base, &na, &bad), Err(ReplicaError::Auth));
        assert_eq!(
            Handshake::accept(&base, &[5; NONCE_LEN], &hello),
            Err(ReplicaError::Auth)
        );
        let mut v2 = ch;
        v2[3] = 2;
        assert_eq!(
            Handshake::hello(&base, &v2, &ns).map(|_| ()),
            Err(ReplicaError::Version(2))
        );
        let mut junk = ch;
        junk[0] = b'G';
        assert_eq!(
            Handshake::hello(&base, &junk, &ns).map(|_| ()),
            Err(ReplicaError::Magic)
        );
    }
}
