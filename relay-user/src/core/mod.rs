//! The sans-IO core: protocol logic and tables that take bytes and `now`
//! and return decisions, tested without sockets, maps or files.

pub mod cookie;
pub mod egress;
pub mod fallback_frame;
pub mod health;
pub mod history;
pub mod join;
pub mod keys;
pub mod mesh;
pub mod names;
pub mod outcome;
pub mod policy;
pub mod proof;
pub mod publish;
pub mod reconcile;
pub mod registry;
pub mod replica;
pub mod role;
pub mod router;
pub mod sessions;
pub mod shield;
