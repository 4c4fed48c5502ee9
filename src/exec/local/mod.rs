//! The local executor: steps as processes on the server's own host, each in its own
//! process group, confined by Landlock.

pub mod process;
pub mod sandbox;
