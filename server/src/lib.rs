//! gossipd: the Gossip server.
//!
//! The library holds the whole server so tests can run nodes in-process; `main.rs` only parses
//! flags, sets up logging and signals.

pub mod store;
