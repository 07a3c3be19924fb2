//! Persistent state: the state directory and the files in it, each written
//! through one state-file layer (lock, atomic replace, fsync); or, for the
//! registry, policy and tokens, etcd shared by several hubs (`backend`
//! picks one with `--store`).

pub mod backend;
pub mod dir;
pub mod etcd;
pub mod file;
pub mod policy;
pub mod registry;
pub mod token;

pub use backend::{Store, StoreSpec};
