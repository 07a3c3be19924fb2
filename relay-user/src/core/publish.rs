//! Published services, sans IO: what a service is (a port on the hub and
//! the spoke ports behind it), how backends are judged healthy, and which
//! one takes the next connection.
//!
//! The hub proxies: a client's connection ends at the hub, which opens a
//! new one to a backend over its own WireGuard (source 10.88.0.1). So a
//! service reaches exactly the `SPOKE:PORT`s it names and nothing else,
//! and spoke-to-spoke relay is not involved at all.

use std::fmt;
use std::str::FromStr;

/// Transport of a service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Proto {
    Tcp,
    Udp,
}

impl Proto {
    pub fn label(self) -> &'static str {
        match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        }
    }
}

/// `--listen tcp/PORT` or `udp/PORT`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Listen {
    pub proto: Proto,
    pub port: u16,
}

impl FromStr for Listen {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("{s:?} is not PROTO/PORT, for example tcp/8080 or udp/5353");
        let (proto, port) = s.split_once('/').ok_or_else(bad)?;
        let proto = match proto.to_ascii_lowercase().as_str() {
            "tcp" => Proto::Tcp,
            "udp" => Proto::Udp,
            _ => return Err(bad()),
        };
        match port.parse::<u16>() {
            Ok(port) if port != 0 => Ok(Listen { proto, port }),
            _ => Err(bad()),
        }
    }
}

impl fmt::Display for Listen {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.proto.label(), self.port)
    }
}

/// `--to SPOKE:PORT`: one backend.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Target {
    pub spoke: String,
    pub port: u16,
}

impl FromStr for Target {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("{s:?} is not SPOKE:PORT, for example web1:8080");
        let (spoke, port) = s.rsplit_once(':').ok_or_else(bad)?;
        match port.parse::<u16>() {
            Ok(port) if port != 0 && !spoke.is_empty() => Ok(Target {
                spoke: spoke.to_owned(),
                port,
            }),
            _ => Err(bad()),
        }
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.spoke, self.port)
    }
}

/// A published service as the registry keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Service {
    pub name: String,
    pub listen: Listen,
    pub backends: Vec<Target>,
    /// UDP only: the payload of the health probe; a backend is healthy
    /// while it answers it. Without one, a UDP backend is as healthy as
    /// its spoke's WireGuard (heard from within a keepalive interval).
    pub udp_probe: Option<Vec<u8>>,
}

/// Parses `--udp-probe HEX` (even number of hex digits, 1..=512 bytes).
pub fn parse_probe(hex: &str) -> Result<Vec<u8>, String> {
    let bad = || format!("{hex:?} is not a probe payload in hex (1 to 512 bytes, e.g. 70696e67)");
    if hex.is_empty() || !hex.len().is_multiple_of(2) || hex.len() > 1024 {
        return Err(bad());
    }
    (0..hex.len())
        .step_by(2)
        .map(|i| {
            hex.get(i..i + 2)
                .and_then(|b| u8::from_str_radix(b, 16).ok())
                .ok_or_else(bad)
        })
        .collect()
}

pub fn probe_hex(p: &[u8]) -> String {
    p.iter().map(|b| format!("{b:02x}")).collect()
}

/// Consecutive failed checks that take a healthy backend out.
pub const FALL: u8 = 2;
/// Consecutive good checks that bring a failed backend back.
pub const RISE: u8 = 2;
/// One check per backend this often; each may take at most
/// [`CHECK_TIMEOUT`]. A backend that dies is out after at most
/// FALL x (interval + timeout) = 4 s.
pub const CHECK_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);
pub const CHECK_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(1);

/// A backend's health from its checks: up or down with hysteresis, so one
/// lost probe does not flap it. Unknown until the first check, which
/// decides alone (a hub that starts should not wait two rounds).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Health {
    up: Option<bool>,
    /// Consecutive results that disagree with `up`.
    streak: u8,
}

impl Health {
    pub fn is_up(&self) -> bool {
        self.up == Some(true)
    }

    pub fn label(&self) -> &'static str {
        match self.up {
            None => "unknown",
            Some(true) => "up",
            Some(false) => "down",
        }
    }

    /// Records one check (or a connection attempt: a refused connect is a
    /// failed check). True when the state changed.
    pub fn record(&mut self, ok: bool) -> bool {
        match self.up {
            None => {
                self.up = Some(ok);
                self.streak = 0;
                true
            }
            Some(up) if up == ok => {
                self.streak = 0;
                false
            }
            Some(_) => {
                self.streak += 1;
                if self.streak >= if ok { RISE } else { FALL } {
                    self.up = Some(ok);
                    self.streak = 0;
                    true
                } else {
                    false
                }
            }
        }
    }

    /// Forces a state (a UDP backend without a probe follows its spoke).
    pub fn set(&mut self, up: bool) -> bool {
        let changed = self.up != Some(up);
        self.up = Some(up);
        self.streak = 0;
        changed
    }
}

/// Round robin over the healthy backends.
#[derive(Debug, Clone, Default)]
pub struct Balancer {
    pub health: Vec<Health>,
    next: usize,
}

impl Balancer {
    pub fn new(backends: usize) -> Self {
        Balancer {
            health: vec![Health::default(); backends],
            next: 0,
        }
    }

    /// The next healthy backend not in `tried` (a connection that failed
    /// on one tries the others); `None` when there is none.
    pub fn pick(&mut self, tried: &[usize]) -> Option<usize> {
        let n = self.health.len();
        for k in 0..n {
            let i = (self.next + k) % n;
            if self.health[i].is_up() && !tried.contains(&i) {
                self.next = (i + 1) % n;
                return Some(i);
            }
        }
        None
    }

    pub fn healthy(&self) -> usize {
        self.health.iter().filter(|h| h.is_up()).count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_listen_target_probe() {
        assert_eq!(
            "tcp/8080".parse::<Listen>().unwrap(),
            Listen {
                proto: Proto::Tcp,
                port: 8080
            }
        );
        assert_eq!("UDP/53".parse::<Listen>().unwrap().proto, Proto::Udp);
        for bad in ["8080", "tcp/0", "sctp/1", "tcp/65536", "tcp/", "/80"] {
            assert!(bad.parse::<Listen>().is_err(), "{bad}");
        }
        let t: Target = "web.eu-1:443".parse().unwrap();
        assert_eq!((t.spoke.as_str(), t.port), ("web.eu-1", 443));
        assert_eq!(t.to_string(), "web.eu-1:443");
        for bad in ["web", ":80", "web:0", "web:x"] {
            assert!(bad.parse::<Target>().is_err(), "{bad}");
        }
        assert_eq!(parse_probe("70696E67").unwrap(), b"ping");
        assert_eq!(probe_hex(b"ping"), "70696e67");
        for bad in ["", "7", "zz", &"00".repeat(513)] {
            assert!(parse_probe(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn health_has_hysteresis() {
        let mut h = Health::default();
        assert_eq!(h.label(), "unknown");
        assert!(!h.is_up());
        // The first check decides alone.
        assert!(h.record(true));
        assert!(h.is_up());
        // One failure is not enough, a success in between resets.
        assert!(!h.record(false));
        assert!(!h.record(true));
        assert!(!h.record(false));
        assert!(h.is_up());
        assert!(h.record(false));
        assert_eq!(h.label(), "down");
        // Back after RISE good checks.
        assert!(!h.record(true));
        assert!(h.record(true));
        assert!(h.is_up());
        assert!(!h.set(true));
        assert!(h.set(false));
    }

    #[test]
    fn round_robin_over_healthy_backends() {
        let mut b = Balancer::new(3);
        assert_eq!(b.pick(&[]), None, "nothing is healthy before a check");
        for h in &mut b.health {
            h.record(true);
        }
        let picks: Vec<_> = (0..6).map(|_| b.pick(&[]).unwrap()).collect();
        assert_eq!(picks, [0, 1, 2, 0, 1, 2]);
        // Backend 1 goes down: the others alternate.
        b.health[1].record(false);
        b.health[1].record(false);
        assert_eq!(b.healthy(), 2);
        let picks: Vec<_> = (0..4).map(|_| b.pick(&[]).unwrap()).collect();
        assert_eq!(picks, [0, 2, 0, 2]);
        // A retry skips what was tried.
        assert_eq!(b.pick(&[0]), Some(2));
        assert_eq!(b.pick(&[0, 2]), None);
    }
}
