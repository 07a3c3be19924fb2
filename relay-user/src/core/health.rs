//! Spoke health from the hub alone, sans-IO: counter snapshots and times
//! in, keepalive interval, missed keepalives, roams and a state out.
//!
//! Every spoke peers with the hub with PersistentKeepalive (PK), so a live
//! spoke sends the hub *something* at least every PK seconds: data, a
//! handshake, or a 32-byte keepalive when idle. The thresholds follow from
//! that and WireGuard's timers:
//!
//! - **up**: a frame within PK + REKEY_TIMEOUT (one interval plus the slack
//!   WireGuard allows itself for a handshake retry);
//! - **stale**: no frame for longer than that, but within 3 x PK +
//!   REKEY_TIMEOUT (up to two keepalives missed: loss or a NAT hiccup);
//! - **down**: silent for longer, or never heard from since the hub started.

use std::collections::VecDeque;
use std::time::Duration;

use relay_common::wire::REKEY_TIMEOUT_SECS;
use relay_common::{Endpoint, SlotCounters};

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    Up,
    Stale,
    Down,
}

impl State {
    pub fn label(self) -> &'static str {
        match self {
            State::Up => "up",
            State::Stale => "stale",
            State::Down => "down",
        }
    }
}

/// Time since a frame seen at `last_ns` (0: never), at `now_ns` (both on
/// the kernel's monotonic clock, as the slot counters keep them).
pub fn silence(last_ns: u64, now_ns: u64) -> Option<Duration> {
    (last_ns != 0).then(|| Duration::from_nanos(now_ns.saturating_sub(last_ns)))
}

/// Thresholds for one PersistentKeepalive setting.
#[derive(Clone, Copy, Debug)]
pub struct Thresholds {
    pub keepalive: Duration,
}

impl Thresholds {
    pub fn new(keepalive_secs: u16) -> Self {
        Self {
            keepalive: Duration::from_secs(u64::from(keepalive_secs.max(1))),
        }
    }

    pub fn up_within(&self) -> Duration {
        self.keepalive + Duration::from_secs(REKEY_TIMEOUT_SECS)
    }

    pub fn down_after(&self) -> Duration {
        3 * self.keepalive + Duration::from_secs(REKEY_TIMEOUT_SECS)
    }

    /// `silence`: time since the last frame from the spoke, None if never.
    pub fn classify(&self, silence: Option<Duration>) -> State {
        match silence {
            Some(s) if s <= self.up_within() => State::Up,
            Some(s) if s <= self.down_after() => State::Stale,
            _ => State::Down,
        }
    }

    /// Keepalive intervals that passed without a frame.
    pub fn missed(&self, silence: Option<Duration>) -> u64 {
        match silence {
            Some(s) => (s.as_nanos() / self.keepalive.as_nanos()) as u64,
            None => 0,
        }
    }
}

/// What the hub learned about one spoke over time.
#[derive(Clone, Debug, Default)]
pub struct SpokeHealth {
    prev: SlotCounters,
    /// (controller time ns, keepalive count) whenever the count rose; the
    /// interval is measured across the window, so the sampling period's
    /// jitter divides by the number of keepalives in it.
    samples: VecDeque<(u64, u64)>,
    observed: bool,
    endpoint: Option<Endpoint>,
    roams: u64,
}

/// Keepalive observations kept per spoke.
const WINDOW: usize = 8;

impl SpokeHealth {
    /// Feed a counter snapshot taken at `now_ns`.
    pub fn observe(&mut self, c: &SlotCounters, now_ns: u64) {
        if c.hub_keepalives < self.prev.hub_keepalives {
            // Counters restarted (new datapath): this snapshot is a new baseline.
            self.samples.clear();
        } else if self.observed && c.hub_keepalives > self.prev.hub_keepalives {
            // A keepalive arrived since the last snapshot: a timed sample.
            // (The very first snapshot is only a baseline: what it shows
            // may have arrived any time before.)
            if self.samples.len() == WINDOW {
                self.samples.pop_front();
            }
            self.samples.push_back((now_ns, c.hub_keepalives));
        }
        self.observed = true;
        self.prev = *c;
    }

    /// Record the spoke's authenticated endpoint; a move from one endpoint
    /// to another is a roam (first contact and going silent are not).
    pub fn on_endpoint(&mut self, endpoint: Option<Endpoint>) {
        if let (Some(old), Some(new)) = (self.endpoint, endpoint)
            && old != new
        {
            self.roams += 1;
        }
        if endpoint.is_some() {
            self.endpoint = endpoint;
        }
    }

    pub fn roams(&self) -> u64 {
        self.roams
    }

    /// Observed keepalive interval (seconds): across the kept window, once
    /// two keepalives were timed.
    pub fn keepalive_interval(&self) -> Option<f64> {
        let (&(t0, n0), &(t1, n1)) = (self.samples.front()?, self.samples.back()?);
        (n1 > n0 && t1 > t0).then(|| (t1 - t0) as f64 / 1e9 / (n1 - n0) as f64)
    }

    pub fn counters(&self) -> &SlotCounters {
        &self.prev
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000_000;

    #[test]
    fn thresholds_follow_the_keepalive() {
        let t = Thresholds::new(25);
        assert_eq!(t.up_within(), Duration::from_secs(30));
        assert_eq!(t.down_after(), Duration::from_secs(80));
        assert_eq!(t.classify(Some(Duration::from_secs(29))), State::Up);
        assert_eq!(t.classify(Some(Duration::from_secs(31))), State::Stale);
        assert_eq!(t.classify(Some(Duration::from_secs(80))), State::Stale);
        assert_eq!(t.classify(Some(Duration::from_secs(81))), State::Down);
        assert_eq!(t.classify(None), State::Down);
        assert_eq!(t.missed(Some(Duration::from_secs(60))), 2);
        assert_eq!(t.missed(Some(Duration::from_secs(10))), 0);
        // A zero keepalive would make every spoke down at once: clamp.
        assert_eq!(Thresholds::new(0).keepalive, Duration::from_secs(1));
    }

    #[test]
    fn interval_from_keepalive_counts() {
        let mut h = SpokeHealth::default();
        let mut c = SlotCounters {
            hub_keepalives: 7, // from before the hub looked: a baseline only
            ..Default::default()
        };
        h.observe(&c, 0);
        c.hub_keepalives = 8;
        h.observe(&c, 3 * S);
        assert_eq!(h.keepalive_interval(), None, "one keepalive is no interval");
        c.hub_keepalives = 9;
        h.observe(&c, 28 * S);
        assert_eq!(h.keepalive_interval(), Some(25.0));
        // Two at once over 50 s: still 25 s each.
        c.hub_keepalives = 11;
        h.observe(&c, 78 * S);
        assert_eq!(h.keepalive_interval(), Some(25.0));
        // A slower one moves the window's average part of the way.
        c.hub_keepalives = 12;
        h.observe(&c, 113 * S);
        assert_eq!(h.keepalive_interval(), Some(27.5));
        // Only the newest WINDOW samples count.
        for k in 13..40u64 {
            c.hub_keepalives = k;
            h.observe(&c, (113 + (k - 12) * 2) * S);
        }
        assert_eq!(h.keepalive_interval(), Some(2.0));
        // A restarted datapath starts over without a bogus sample.
        c.hub_keepalives = 1;
        h.observe(&c, 1000 * S);
        assert_eq!(h.keepalive_interval(), None);
    }

    #[test]
    fn roams_count_endpoint_moves_only() {
        let a = Endpoint::v4([203, 0, 113, 1], 1000);
        let b = Endpoint::v4([203, 0, 113, 1], 1001);
        let mut h = SpokeHealth::default();
        h.on_endpoint(None);
        h.on_endpoint(Some(a));
        h.on_endpoint(Some(a));
        assert_eq!(h.roams(), 0);
        h.on_endpoint(None); // went quiet: not a roam
        h.on_endpoint(Some(b));
        assert_eq!(h.roams(), 1);
        h.on_endpoint(Some(a));
        assert_eq!(h.roams(), 2);
    }
}
