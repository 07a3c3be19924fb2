//! The last minutes of relay throughput and drops, and each spoke's
//! relay rates, sans IO: cumulative counters in (a sample every
//! [`SAMPLE_EVERY`]), rates out. The console draws its chart from these,
//! so a hub needs no Prometheus to show what it did lately.

use std::collections::{HashMap, VecDeque};
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

/// One spoke's last sample and the rates from the one before it.
#[derive(Debug, Clone, Copy)]
struct SpokeSample {
    at: f64,
    /// Cumulative bytes relayed from and to it.
    bytes: (u64, u64),
    rates: (f64, f64),
}

#[derive(Debug, Clone, Default)]
pub struct History {
    samples: VecDeque<(f64, Totals)>,
    spokes: HashMap<String, SpokeSample>,
}

impl History {
    pub fn push(&mut self, at: f64, t: Totals) {
        if self.samples.len() == KEEP {
            self.samples.pop_front();
        }
        self.samples.push_back((at, t));
    }

    /// Records each spoke's cumulative relayed bytes (in = from it, out =
    /// to it); spokes not listed are forgotten.
    pub fn push_spokes<'a>(&mut self, at: f64, spokes: impl Iterator<Item = (&'a str, u64, u64)>) {
        // Updated in place: a big hub samples every spoke every 2 s, and a
        // fresh map cost it an allocation per spoke each time.
        for (name, i, o) in spokes {
            match self.spokes.get_mut(name) {
                Some(p) => {
                    p.rates = (rate(p.bytes.0, i, at - p.at), rate(p.bytes.1, o, at - p.at));
                    p.bytes = (i, o);
                    p.at = at;
                }
                None => {
                    let s = SpokeSample {
                        at,
                        bytes: (i, o),
                        rates: (0.0, 0.0),
                    };
                    self.spokes.insert(name.to_owned(), s);
                }
            }
        }
        self.spokes.retain(|_, s| s.at == at);
    }

    /// Bytes per second relayed from and to `spoke` over the last sample.
    pub fn spoke_rates(&self, spoke: &str) -> (f64, f64) {
        self.spokes.get(spoke).map_or((0.0, 0.0), |s| s.rates)
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
        let mut h = History::default();
        h.push_spokes(0.0, [("a", 0, 0), ("b", 10, 10)].into_iter());
        assert_eq!(h.spoke_rates("a"), (0.0, 0.0));
        h.push_spokes(2.0, [("a", 2000, 1000)].into_iter());
        assert_eq!(h.spoke_rates("a"), (1000.0, 500.0));
        // b is gone, and so are its rates.
        assert_eq!(h.spoke_rates("b"), (0.0, 0.0));
        // a keeps its series; b comes back from zero.
        h.push_spokes(4.0, [("a", 4000, 1000), ("b", 500, 0)].into_iter());
        assert_eq!(h.spoke_rates("a"), (1000.0, 0.0));
        assert_eq!(h.spoke_rates("b"), (0.0, 0.0));
        h.push_spokes(6.0, [("b", 1500, 0)].into_iter());
        assert_eq!(h.spoke_rates("b"), (500.0, 0.0));
        assert_eq!(h.spoke_rates("a"), (0.0, 0.0));
    }
}
