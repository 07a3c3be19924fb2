//! The last minutes of relay throughput and drops (a sample every
//! [`SAMPLE_EVERY`]), and each spoke's relay rates (a sample every health
//! pass), sans IO: cumulative counters in, rates out. The console draws
//! its chart from these, so a hub needs no Prometheus to show what it did
//! lately.

use std::collections::VecDeque;
use std::time::Duration;

/// How often the hub samples its counters for the console.
pub const SAMPLE_EVERY: Duration = Duration::from_secs(2);
/// Samples kept: 5 minutes.
pub const KEEP: usize = 150;

/// Cumulative counters at one moment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Totals {
    /// Frames and bytes relayed between spokes (all paths).
    pub packets: u64,
    pub bytes: u64,
    /// Frames dropped, by reason (the same reasons in every sample).
    pub drops: Vec<(&'static str, u64)>,
}

/// Rates between two samples, `at` seconds after the hub started.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Point {
    pub at: f64,
    pub packets_per_sec: f64,
    pub bytes_per_sec: f64,
    /// Drops per second by reason (reasons without drops in the whole
    /// window are left out).
    pub drops_per_sec: Vec<(&'static str, f64)>,
}

/// Per-second rate of a counter that went from `a` to `b` in `secs`; a
/// counter that went back (the datapath restarted) counts from zero.
fn rate(a: u64, b: u64, secs: f64) -> f64 {
    let d = if b >= a { b - a } else { b };
    if secs > 0.0 { d as f64 / secs } else { 0.0 }
}

/// One spoke's relayed bytes at its last sample and the rates since the
/// sample before. Kept with the spoke and updated in place by the health
/// pass: a map of every spoke by name, sampled on its own tick, cost a hub
/// of 10,000 idle spokes a sixth of its controller's time (hashing names).
#[derive(Debug, Clone, Copy, Default)]
pub struct SpokeRates {
    /// Seconds after the hub started; None before the first sample.
    at: Option<f64>,
    /// Cumulative bytes relayed from and to the spoke.
    bytes: (u64, u64),
    rates: (f64, f64),
}

impl SpokeRates {
    pub fn sample(&mut self, at: f64, bytes: (u64, u64)) {
        if let Some(prev) = self.at {
            let secs = at - prev;
            self.rates = (
                rate(self.bytes.0, bytes.0, secs),
                rate(self.bytes.1, bytes.1, secs),
            );
        }
        self.at = Some(at);
        self.bytes = bytes;
    }

    /// Bytes per second relayed from and to the spoke between the last
    /// two samples (zero until there are two).
    pub fn rates(&self) -> (f64, f64) {
        self.rates
    }
}

#[derive(Debug, Clone, Default)]
pub struct History {
    samples: VecDeque<(f64, Totals)>,
}

impl History {
    pub fn push(&mut self, at: f64, t: Totals) {
        if self.samples.len() == KEEP {
            self.samples.pop_front();
        }
        self.samples.push_back((at, t));
    }

    /// The rates between consecutive samples, oldest first.
    pub fn points(&self) -> Vec<Point> {
        let used: Vec<bool> = match (self.samples.front(), self.samples.back()) {
            (Some((_, a)), Some((_, b))) => a
                .drops
                .iter()
                .zip(&b.drops)
                .map(|((_, x), (_, y))| x != y)
                .collect(),
            _ => Vec::new(),
        };
        self.samples
            .iter()
            .zip(self.samples.iter().skip(1))
            .map(|((t0, a), (t1, b))| {
                let secs = t1 - t0;
                Point {
                    at: *t1,
                    packets_per_sec: rate(a.packets, b.packets, secs),
                    bytes_per_sec: rate(a.bytes, b.bytes, secs),
                    drops_per_sec: a
                        .drops
                        .iter()
                        .zip(&b.drops)
                        .zip(&used)
                        .filter(|(_, u)| **u)
                        .map(|(((r, x), (_, y)), _)| (*r, rate(*x, *y, secs)))
                        .collect(),
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(packets: u64, bytes: u64, drops: [u64; 2]) -> Totals {
        Totals {
            packets,
            bytes,
            drops: vec![("no_route", drops[0]), ("malformed", drops[1])],
        }
    }

    #[test]
    fn rates_between_samples() {
        let mut h = History::default();
        assert!(h.points().is_empty());
        h.push(0.0, t(0, 0, [0, 5]));
        h.push(2.0, t(200, 20_000, [4, 5]));
        h.push(4.0, t(300, 30_000, [4, 5]));
        let p = h.points();
        assert_eq!(p.len(), 2);
        assert_eq!(p[0].at, 2.0);
        assert_eq!(p[0].packets_per_sec, 100.0);
        assert_eq!(p[0].bytes_per_sec, 10_000.0);
        // Only reasons that dropped something in the window.
        assert_eq!(p[0].drops_per_sec, vec![("no_route", 2.0)]);
        assert_eq!(p[1].drops_per_sec, vec![("no_route", 0.0)]);
        // A restarted datapath counts from zero, never negative.
        h.push(6.0, t(10, 1000, [0, 0]));
        assert_eq!(h.points()[2].packets_per_sec, 5.0);
        // The window is bounded.
        for i in 0..2 * KEEP {
            h.push(8.0 + i as f64, Totals::default());
        }
        assert_eq!(h.points().len(), KEEP - 1);
    }

    #[test]
    fn spoke_rates_from_the_last_two_samples() {
        let mut r = SpokeRates::default();
        r.sample(0.0, (10, 10));
        assert_eq!(r.rates(), (0.0, 0.0), "one sample has no rate");
        r.sample(2.0, (2010, 1010));
        assert_eq!(r.rates(), (1000.0, 500.0));
        r.sample(4.0, (4010, 1010));
        assert_eq!(r.rates(), (1000.0, 0.0));
        // A restarted datapath counts from zero, never negative.
        r.sample(6.0, (500, 0));
        assert_eq!(r.rates(), (250.0, 0.0));
        // Two samples at the same moment: no rate rather than infinity.
        r.sample(6.0, (600, 0));
        assert_eq!(r.rates(), (0.0, 0.0));
    }
}
