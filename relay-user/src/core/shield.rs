//! Handshake flood shield, sans-IO: token buckets deciding when the hub
//! demands cookies (see [`crate::core::cookie`]) and how much mac1 scanning and
//! cookie replying it may do. Time is passed in.
//!
//! The policy, applied by [`crate::core::router::Router`] to every initiation
//! copy when a [`Shield`] is set:
//!
//! - **load**: the hub is under load for an initiation when the global
//!   initiation rate, the rate from its source endpoint, or (after mac1
//!   matching) the rate to its destination spoke exceeds its bucket. Under
//!   load only initiations with a valid mac2 (a cookie the hub issued to
//!   that source address) are forwarded; the others get a cookie reply on
//!   behalf of the destination spoke (bounded per source and globally) or
//!   are dropped. A source that proved its address is still limited
//!   ([`Limits::proven_per_source`]).
//! - **strangers under load**: an initiation from an endpoint that is not a
//!   spoke's authenticated endpoint can never be forwarded before the hub's
//!   WireGuard authenticates it; under load it is dropped at once (no mac1
//!   scan, no cookie reply). An attacker must therefore spoof a live
//!   spoke endpoint to cost the hub anything beyond the bucket checks, and
//!   each spoofed endpoint has its own small budgets.
//! - **mac1 scan budget**: trying every registered key is the expensive
//!   step (N BLAKE2s). Candidates the source recently initiated to are
//!   free; a full scan takes N tokens from a key-check bucket. Sources that
//!   proved their address may empty it, authenticated spokes may take it
//!   down to [`Limits::scan_reserve_known`], strangers only down to
//!   [`Limits::scan_reserve_unknown`]: a flood of strangers cannot starve
//!   spokes' first contacts.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use relay_common::Endpoint;

/// A sustained rate and a burst.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Rate {
    pub per_sec: f64,
    pub burst: f64,
}

impl Rate {
    pub const fn new(per_sec: f64, burst: f64) -> Self {
        Self { per_sec, burst }
    }
}

/// A token bucket (starts full).
#[derive(Clone, Copy, Debug)]
pub struct TokenBucket {
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    pub fn full(rate: &Rate, now: Instant) -> Self {
        Self {
            tokens: rate.burst,
            last: now,
        }
    }

    fn refill(&mut self, rate: &Rate, now: Instant) {
        let dt = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + dt * rate.per_sec).min(rate.burst);
        self.last = self.last.max(now);
    }

    /// Tokens available now.
    pub fn level(&mut self, rate: &Rate, now: Instant) -> f64 {
        self.refill(rate, now);
        self.tokens
    }

    /// Take `n` tokens if at least `floor + n` are there.
    pub fn take_above(&mut self, rate: &Rate, n: f64, floor: f64, now: Instant) -> bool {
        self.refill(rate, now);
        if self.tokens - n >= floor {
            self.tokens -= n;
            true
        } else {
            false
        }
    }

    /// Take `n` tokens if there are that many.
    pub fn take(&mut self, rate: &Rate, n: f64, now: Instant) -> bool {
        self.take_above(rate, n, 0.0, now)
    }

    /// Take one token, going at most one token into debt: false when the
    /// rate is over (the count still registers, so a steady flood keeps
    /// the bucket empty).
    pub fn count(&mut self, rate: &Rate, now: Instant) -> bool {
        self.refill(rate, now);
        self.tokens -= 1.0;
        if self.tokens < 0.0 {
            self.tokens = self.tokens.max(-1.0);
            false
        } else {
            true
        }
    }
}

/// The shield's thresholds and budgets.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Limits {
    /// All initiations; over it, every initiation needs a cookie.
    pub global: Rate,
    /// Initiations from one source endpoint; over it, that source needs a
    /// cookie.
    pub per_source: Rate,
    /// Initiations (mac1) for one spoke; over it, initiations to that spoke
    /// need a cookie.
    pub per_destination: Rate,
    /// Initiations with a valid mac2 from one source endpoint (forwarded
    /// at most this fast; the rest dropped).
    pub proven_per_source: Rate,
    /// Cookie replies, all together.
    pub cookie_replies: Rate,
    /// Cookie replies to one source endpoint.
    pub cookie_replies_per_source: Rate,
    /// mac1 key checks of full scans (candidates of recent destinations
    /// are free).
    pub scan_keys: Rate,
    /// Fraction of the scan bucket only sources with a valid mac2 may use.
    pub scan_reserve_known: f64,
    /// Fraction of the scan bucket strangers may not use.
    pub scan_reserve_unknown: f64,
    /// Source endpoints tracked at once; beyond it new sources count as
    /// over their rate (they need cookies).
    pub max_sources: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            global: Rate::new(2000.0, 4000.0),
            per_source: Rate::new(20.0, 50.0),
            per_destination: Rate::new(20.0, 50.0),
            proven_per_source: Rate::new(20.0, 50.0),
            cookie_replies: Rate::new(20_000.0, 20_000.0),
            cookie_replies_per_source: Rate::new(10.0, 20.0),
            // A mac1 check costs about 0.5 us (BLAKE2s over 116 bytes), so
            // this is about 15% of one core: 25 full scans per second with
            // 10k spokes (see relay-user/tests/scan_budget.rs).
            scan_keys: Rate::new(250_000.0, 500_000.0),
            scan_reserve_known: 0.25,
            scan_reserve_unknown: 0.5,
            max_sources: 65_536,
        }
    }
}

/// Who is asking for a mac1 scan.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Standing {
    /// Valid mac2: the source proved its address.
    Proven,
    /// A spoke's authenticated endpoint.
    Known,
    Stranger,
}

struct Source {
    load: TokenBucket,
    proven: TokenBucket,
    cookies: TokenBucket,
    last: Instant,
}

/// Sources idle this long are forgotten (their buckets would be full).
const SOURCE_IDLE: Duration = Duration::from_secs(5);
const SWEEP_EVERY: Duration = Duration::from_secs(1);

/// Counts the shield keeps (cumulative).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ShieldStats {
    pub mac2_valid: u64,
    pub mac2_invalid: u64,
    pub cookies_sent: u64,
    /// Dropped: scan budget spent.
    pub scan_denied: u64,
    /// Dropped: cookie reply budget spent.
    pub cookie_denied: u64,
    /// Dropped: a proven source over its rate.
    pub proven_denied: u64,
    /// Dropped: a stranger while under load.
    pub stranger_denied: u64,
}

/// The rate-limiting state.
pub struct Shield {
    pub limits: Limits,
    global: TokenBucket,
    scan: TokenBucket,
    cookies: TokenBucket,
    sources: HashMap<Endpoint, Source>,
    destinations: HashMap<u32, TokenBucket>,
    last_sweep: Instant,
    pub stats: ShieldStats,
}

impl Shield {
    pub fn new(limits: Limits, now: Instant) -> Self {
        Self {
            global: TokenBucket::full(&limits.global, now),
            scan: TokenBucket::full(&limits.scan_keys, now),
            cookies: TokenBucket::full(&limits.cookie_replies, now),
            limits,
            sources: HashMap::new(),
            destinations: HashMap::new(),
            last_sweep: now,
            stats: ShieldStats::default(),
        }
    }

    fn source(&mut self, src: &Endpoint, now: Instant) -> Option<&mut Source> {
        if !self.sources.contains_key(src) {
            if self.sources.len() >= self.limits.max_sources
                && now.saturating_duration_since(self.last_sweep) >= SWEEP_EVERY
            {
                self.last_sweep = now;
                self.sources
                    .retain(|_, s| now.saturating_duration_since(s.last) < SOURCE_IDLE);
            }
            if self.sources.len() >= self.limits.max_sources {
                return None;
            }
            let l = &self.limits;
            self.sources.insert(
                *src,
                Source {
                    load: TokenBucket::full(&l.per_source, now),
                    proven: TokenBucket::full(&l.proven_per_source, now),
                    cookies: TokenBucket::full(&l.cookie_replies_per_source, now),
                    last: now,
                },
            );
        }
        let s = self.sources.get_mut(src)?;
        s.last = now;
        Some(s)
    }

    /// Count one initiation from `src`; true when the global or this
    /// source's rate is over its threshold (a cookie is required).
    pub fn observe_source(&mut self, src: &Endpoint, now: Instant) -> bool {
        let global_ok = self.global.count(&self.limits.global, now);
        let rate = self.limits.per_source;
        let source_ok = match self.source(src, now) {
            Some(s) => s.load.count(&rate, now),
            None => false,
        };
        !(global_ok && source_ok)
    }

    /// Count one initiation for spoke `dst`; true when its rate is over.
    pub fn observe_destination(&mut self, dst: u32, now: Instant) -> bool {
        let rate = self.limits.per_destination;
        !self
            .destinations
            .entry(dst)
            .or_insert_with(|| TokenBucket::full(&rate, now))
            .count(&rate, now)
    }

    /// A spoke left the registry.
    pub fn forget_destination(&mut self, dst: u32) {
        self.destinations.remove(&dst);
    }

    /// May an initiation with a valid mac2 from `src` go on?
    pub fn admit_proven(&mut self, src: &Endpoint, now: Instant) -> bool {
        let rate = self.limits.proven_per_source;
        let ok = self
            .source(src, now)
            .is_some_and(|s| s.proven.take(&rate, 1.0, now));
        if !ok {
            self.stats.proven_denied += 1;
        }
        ok
    }

    /// May a full scan over `keys` registered keys run for this source?
    pub fn allow_scan(&mut self, keys: usize, standing: Standing, now: Instant) -> bool {
        let l = &self.limits;
        let floor = l.scan_keys.burst
            * match standing {
                Standing::Proven => 0.0,
                Standing::Known => l.scan_reserve_known,
                Standing::Stranger => l.scan_reserve_unknown,
            };
        // A scan bigger than the whole bucket may run when it is full.
        let n = (keys as f64).min(l.scan_keys.burst - floor);
        let ok = self.scan.take_above(&l.scan_keys, n, floor, now);
        if !ok {
            self.stats.scan_denied += 1;
        }
        ok
    }

    /// May a cookie reply go to `src`?
    pub fn allow_cookie(&mut self, src: &Endpoint, now: Instant) -> bool {
        let per = self.limits.cookie_replies_per_source;
        let global = self.limits.cookie_replies;
        let ok = self
            .source(src, now)
            .is_some_and(|s| s.cookies.level(&per, now) >= 1.0)
            && self.cookies.take(&global, 1.0, now)
            && self
                .source(src, now)
                .is_some_and(|s| s.cookies.take(&per, 1.0, now));
        if ok {
            self.stats.cookies_sent += 1;
        } else {
            self.stats.cookie_denied += 1;
        }
        ok
    }

    /// A stranger's initiation dropped under load.
    pub fn deny_stranger(&mut self) {
        self.stats.stranger_denied += 1;
    }

    pub fn tracked_sources(&self) -> usize {
        self.sources.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ep(last: u8) -> Endpoint {
        Endpoint::v4([203, 0, 113, last], 4000)
    }

    #[test]
    fn bucket_refills_at_its_rate_up_to_the_burst() {
        let r = Rate::new(10.0, 5.0);
        let t = Instant::now();
        let mut b = TokenBucket::full(&r, t);
        for _ in 0..5 {
            assert!(b.take(&r, 1.0, t));
        }
        assert!(!b.take(&r, 1.0, t));
        assert!(b.take(&r, 1.0, t + Duration::from_millis(100)));
        assert!(!b.take(&r, 1.0, t + Duration::from_millis(100)));
        assert_eq!(b.level(&r, t + Duration::from_secs(10)), 5.0);
        // Time going backwards changes nothing.
        assert_eq!(b.level(&r, t), 5.0);
    }

    #[test]
    fn steady_flood_keeps_the_source_over() {
        let t = Instant::now();
        let mut s = Shield::new(Limits::default(), t);
        let burst = Limits::default().per_source.burst as usize;
        for i in 0..burst {
            assert!(!s.observe_source(&ep(1), t), "{i}");
        }
        assert!(s.observe_source(&ep(1), t));
        // Another source is unaffected.
        assert!(!s.observe_source(&ep(2), t));
        // 1000/s from ep(1) for a second: over all along.
        let mut over = 0;
        for i in 0..1000 {
            if s.observe_source(&ep(1), t + Duration::from_millis(i)) {
                over += 1;
            }
        }
        assert!(over >= 970, "{over}");
        // Quiet for a while: under again.
        assert!(!s.observe_source(&ep(1), t + Duration::from_secs(5)));
    }

    #[test]
    fn global_rate_puts_everyone_under_load() {
        let t = Instant::now();
        let l = Limits {
            global: Rate::new(100.0, 10.0),
            ..Limits::default()
        };
        let mut s = Shield::new(l, t);
        for i in 0..10 {
            assert!(!s.observe_source(&ep(i), t));
        }
        assert!(s.observe_source(&ep(50), t));
    }

    #[test]
    fn destination_and_cookie_budgets() {
        let t = Instant::now();
        let mut s = Shield::new(Limits::default(), t);
        for _ in 0..50 {
            assert!(!s.observe_destination(7, t));
        }
        assert!(s.observe_destination(7, t));
        assert!(!s.observe_destination(8, t));
        for _ in 0..20 {
            assert!(s.allow_cookie(&ep(1), t));
        }
        assert!(!s.allow_cookie(&ep(1), t));
        assert!(s.allow_cookie(&ep(2), t));
        assert_eq!(s.stats.cookies_sent, 21);
        assert_eq!(s.stats.cookie_denied, 1);
    }

    #[test]
    fn scan_budget_is_reserved_for_better_standing() {
        let t = Instant::now();
        let l = Limits {
            scan_keys: Rate::new(1000.0, 1000.0),
            ..Limits::default()
        };
        let mut s = Shield::new(l, t);
        // Strangers take it down to half.
        assert!(s.allow_scan(400, Standing::Stranger, t));
        assert!(!s.allow_scan(400, Standing::Stranger, t));
        // Spokes down to a quarter, proven sources to zero.
        assert!(s.allow_scan(300, Standing::Known, t));
        assert!(!s.allow_scan(300, Standing::Known, t));
        assert!(s.allow_scan(300, Standing::Proven, t));
        assert!(!s.allow_scan(1, Standing::Proven, t));
        assert_eq!(s.stats.scan_denied, 3);
        // A scan bigger than the bucket still runs from a full bucket.
        let mut s = Shield::new(l, t);
        assert!(s.allow_scan(10_000, Standing::Proven, t));
        assert!(!s.allow_scan(10_000, Standing::Proven, t));
    }

    #[test]
    fn source_table_is_bounded() {
        let t = Instant::now();
        let l = Limits {
            max_sources: 4,
            ..Limits::default()
        };
        let mut s = Shield::new(l, t);
        for i in 0..4 {
            assert!(!s.observe_source(&ep(i), t));
        }
        // Full: a fifth source counts as over.
        assert!(s.observe_source(&ep(9), t));
        assert_eq!(s.tracked_sources(), 4);
        // Once the others went idle they are swept.
        assert!(!s.observe_source(&ep(9), t + SOURCE_IDLE));
        assert_eq!(s.tracked_sources(), 1);
    }
}
