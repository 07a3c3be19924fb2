//! Persistent state: the state directory and the files in it, each written
//! through one state-file layer (lock, atomic replace, fsync).

pub mod dir;
pub mod file;
pub mod policy;
pub mod registry;
pub mod token;
