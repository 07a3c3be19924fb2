//! What a spoke is given: its registration and its wg-quick file, whether
//! an operator asks (`relayhub spoke ...`) or a node enrolls itself with a
//! join token (`hub::enroll`). Both paths share this code so a joined node
//! gets exactly the file `spoke add --pubkey` would print.

pub mod mesh;
pub mod render;
pub mod spoke;
