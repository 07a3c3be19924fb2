//! Which side of replication a hub is on, and what each role change asks
//! of the hub (sans IO). keepalived, not this code, decides who is active
//! (VRRP elects; nothing here votes): its notify scripts send SIGUSR1
//! (promote) and SIGUSR2 (demote), and this turns them into steps for the
//! shell (`hub::replica`) to carry out.
//!
//! A hub may be configured for both sides at once (`--replica-listen` and
//! `--standby-of`), as both hubs of a pair are for fail-back: it serves the
//! stream only while active, since only an active hub's tables are the
//! truth, and follows the other hub only while standby.

/// A hub's role.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Role {
    /// No replication configured and no role requested: a single hub.
    #[default]
    Off,
    /// Owns its tables: reconciler, sweep and proofs write the maps.
    Active,
    /// Leaves its maps to the replica of the active's tables.
    Standby,
}

impl Role {
    pub fn label(self) -> &'static str {
        match self {
            Role::Off => "off",
            Role::Active => "active",
            Role::Standby => "standby",
        }
    }
}

/// A role change asked for from outside (keepalived's notify scripts).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Request {
    Promote,
    Demote,
}

/// What the hub must do for one role change, in this order: stop following,
/// adopt the tables, start following. Serving needs no step: the serving
/// side checks [`Roles::serves`] on every accept and tick.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Steps {
    /// Stop following the other hub: its stream would write its (stale or
    /// missing) tables over this hub's.
    pub stop_following: bool,
    /// Take the tables in the maps as this hub's own and have its
    /// WireGuard initiate to every spoke with a known endpoint.
    pub adopt: bool,
    /// Follow the (now) active hub. The maps were this hub's own until
    /// now: the replica diffs the first snapshot against what they hold,
    /// not against what it last wrote.
    pub start_following: bool,
}

/// The role, what is configured, and the promotions so far.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Roles {
    role: Role,
    /// `--replica-listen`: this hub can serve the stream.
    can_serve: bool,
    /// `--standby-of`: this hub can follow another.
    can_follow: bool,
    takeovers: u64,
}

impl Roles {
    /// The role at start: a hub that can follow starts as a standby (the
    /// safe side: it writes nothing of its own into its maps until told it
    /// is active); one that can only serve is active; one with neither is
    /// a single hub.
    pub fn new(can_serve: bool, can_follow: bool) -> Roles {
        let role = match (can_serve, can_follow) {
            (_, true) => Role::Standby,
            (true, false) => Role::Active,
            (false, false) => Role::Off,
        };
        Roles {
            role,
            can_serve,
            can_follow,
            takeovers: 0,
        }
    }

    pub fn role(&self) -> Role {
        self.role
    }

    /// Promotions since the start.
    pub fn takeovers(&self) -> u64 {
        self.takeovers
    }

    /// Whether the hub's own reconciler and sweep write the maps.
    pub fn owns_tables(&self) -> bool {
        self.role != Role::Standby
    }

    /// Whether the hub should be following the other one now.
    pub fn follows(&self) -> bool {
        self.role == Role::Standby && self.can_follow
    }

    /// Whether the hub may serve its tables to a standby now.
    pub fn serves(&self) -> bool {
        self.role == Role::Active && self.can_serve
    }

    /// Apply a request. `None` when it changes nothing: keepalived repeats
    /// notifies, and a repeated promotion must not initiate to every spoke
    /// again.
    pub fn request(&mut self, r: Request) -> Option<Steps> {
        let before = *self;
        let to = match r {
            Request::Promote => Role::Active,
            Request::Demote => Role::Standby,
        };
        if self.role == to {
            return None;
        }
        self.role = to;
        if to == Role::Active {
            self.takeovers += 1;
        }
        Some(Steps {
            stop_following: before.follows() && !self.follows(),
            adopt: to == Role::Active,
            start_following: !before.follows() && self.follows(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_starting_role_follows_from_what_is_configured() {
        let r = Roles::new(false, false);
        assert_eq!(r.role(), Role::Off);
        assert!(r.owns_tables() && !r.follows() && !r.serves());
        let r = Roles::new(true, false);
        assert_eq!(r.role(), Role::Active);
        assert!(r.owns_tables() && r.serves() && !r.follows());
        // Both sides configured (a fail-back pair): standby until told.
        for serve in [false, true] {
            let r = Roles::new(serve, true);
            assert_eq!(r.role(), Role::Standby);
            assert!(!r.owns_tables() && r.follows() && !r.serves());
        }
    }

    #[test]
    fn promotion_stops_following_adopts_and_serves() {
        let mut r = Roles::new(true, true);
        let s = r.request(Request::Promote).expect("a change");
        assert_eq!(
            s,
            Steps {
                stop_following: true,
                adopt: true,
                start_following: false,
            }
        );
        assert_eq!(r.role(), Role::Active);
        assert!(r.serves() && !r.follows() && r.owns_tables());
        assert_eq!(r.takeovers(), 1);
    }

    #[test]
    fn repeated_requests_change_nothing() {
        let mut r = Roles::new(true, true);
        assert!(r.request(Request::Demote).is_none());
        assert!(r.request(Request::Promote).is_some());
        assert!(r.request(Request::Promote).is_none());
        assert_eq!(r.takeovers(), 1);
    }

    #[test]
    fn demotion_follows_again() {
        let mut r = Roles::new(true, true);
        r.request(Request::Promote);
        let s = r.request(Request::Demote).expect("a change");
        assert_eq!(
            s,
            Steps {
                stop_following: false,
                adopt: false,
                start_following: true,
            }
        );
        assert!(r.follows() && !r.serves() && !r.owns_tables());
        // And back: the second takeover is counted.
        r.request(Request::Promote);
        assert_eq!(r.takeovers(), 2);
    }

    #[test]
    fn an_active_only_hub_demoted_has_no_one_to_follow() {
        let mut r = Roles::new(true, false);
        let s = r.request(Request::Demote).expect("a change");
        assert_eq!(s, Steps::default());
        assert_eq!(r.role(), Role::Standby);
        // A standby serves nothing: its tables are a copy at best.
        assert!(!r.serves() && !r.follows());
    }

    #[test]
    fn a_single_hub_can_be_promoted_and_demoted() {
        let mut r = Roles::new(false, false);
        let s = r.request(Request::Promote).expect("a change");
        assert!(s.adopt && !s.start_following && !s.stop_following);
        assert_eq!(r.role(), Role::Active);
        assert!(!r.serves());
        let s = r.request(Request::Demote).expect("a change");
        assert_eq!(s, Steps::default());
        assert!(!r.owns_tables());
    }
}
