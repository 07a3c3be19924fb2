//! Initiation outcomes: the one list of names that reach metrics for the
//! controller's handshake routing. `relayhub_handshakes_total{type="initiation"}`
//! is labelled with [`InitiationResult::label`], and the results that drop
//! the frame also count in `relayhub_dropped_frames_total{stage="controller"}`
//! under [`InitiationResult::drop_reason`]. A metric, a test or a dashboard
//! that lists results iterates [`InitiationResult::ALL`] instead of keeping
//! a copy.

/// The result of routing one initiation (the metric label), without the
/// per-initiation details [`crate::core::router::Outcome`] carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum InitiationResult {
    /// Sent to the destination spoke.
    Relayed,
    /// mac1 is the hub's own: its WireGuard already has the frame.
    ToHub,
    /// Waiting for an authenticated endpoint.
    Held,
    /// Held back: the opposite initiation was just forwarded.
    Delayed,
    /// No registered key matches mac1.
    NoMatch,
    /// The sender is not an authenticated spoke (after holding).
    UnknownSource,
    /// The destination has no authenticated endpoint (after holding).
    NoDestination,
    /// A spoke initiating to itself.
    Loop,
    /// Not a well-formed initiation.
    Malformed,
    /// Held queue overflow.
    Overflow,
    /// A held copy replaced by a retransmission.
    Superseded,
    /// Answered with a cookie reply on behalf of the destination.
    CookieSent,
    /// Dropped by the flood shield.
    RateLimited,
    /// The policy does not let the two spokes talk.
    Denied,
    /// The initiator's sender index is another pair's live receiver index
    /// at the destination: neither installed nor forwarded.
    IndexConflict,
}

impl InitiationResult {
    /// Every result, in the order the metrics list them.
    pub const ALL: [InitiationResult; 15] = [
        InitiationResult::Relayed,
        InitiationResult::ToHub,
        InitiationResult::Held,
        InitiationResult::Delayed,
        InitiationResult::NoMatch,
        InitiationResult::UnknownSource,
        InitiationResult::NoDestination,
        InitiationResult::Loop,
        InitiationResult::Malformed,
        InitiationResult::Overflow,
        InitiationResult::Superseded,
        InitiationResult::CookieSent,
        InitiationResult::RateLimited,
        InitiationResult::Denied,
        InitiationResult::IndexConflict,
    ];

    /// Position in [`Self::ALL`] (a counter array index).
    pub const fn index(self) -> usize {
        self as usize
    }

    /// The `result` label.
    pub const fn label(self) -> &'static str {
        match self {
            InitiationResult::Relayed => "relayed",
            InitiationResult::ToHub => "to_hub",
            InitiationResult::Held => "held",
            InitiationResult::Delayed => "delayed",
            InitiationResult::NoMatch => "no_match",
            InitiationResult::UnknownSource => "unknown_source",
            InitiationResult::NoDestination => "no_destination",
            InitiationResult::Loop => "loop",
            InitiationResult::Malformed => "malformed",
            InitiationResult::Overflow => "overflow",
            InitiationResult::Superseded => "superseded",
            InitiationResult::CookieSent => "cookie_sent",
            InitiationResult::RateLimited => "rate_limited",
            InitiationResult::Denied => "denied",
            InitiationResult::IndexConflict => "index_conflict",
        }
    }

    /// The `reason` label of the drop this result counts as, if it drops
    /// the initiation. Held and delayed initiations are not dropped (yet):
    /// they end as another result.
    pub const fn drop_reason(self) -> Option<&'static str> {
        match self {
            InitiationResult::Relayed
            | InitiationResult::ToHub
            | InitiationResult::Held
            | InitiationResult::Delayed => None,
            InitiationResult::NoMatch => Some("no_match"),
            InitiationResult::UnknownSource => Some("unknown_source"),
            InitiationResult::NoDestination => Some("no_destination"),
            InitiationResult::Loop => Some("loop"),
            InitiationResult::Malformed => Some("malformed"),
            // A held-queue overflow and the flood shield share a series:
            // both are load shedding.
            InitiationResult::Overflow | InitiationResult::RateLimited => Some("rate_limited"),
            InitiationResult::Superseded => Some("superseded"),
            InitiationResult::CookieSent => Some("cookie_required"),
            InitiationResult::Denied => Some("policy"),
            InitiationResult::IndexConflict => Some("index_conflict"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn all_lists_every_result_once_at_its_index() {
        for (i, r) in InitiationResult::ALL.iter().enumerate() {
            assert_eq!(r.index(), i, "{r:?}");
        }
        let labels: HashSet<_> = InitiationResult::ALL.iter().map(|r| r.label()).collect();
        assert_eq!(labels.len(), InitiationResult::ALL.len());
    }

    #[test]
    fn only_final_results_drop() {
        let kept: Vec<_> = InitiationResult::ALL
            .iter()
            .filter(|r| r.drop_reason().is_none())
            .map(|r| r.label())
            .collect();
        assert_eq!(kept, ["relayed", "to_hub", "held", "delayed"]);
    }
}
