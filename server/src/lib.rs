//! gossipd: the Gossip server.
//!
//! The library is the whole server, so tests can run nodes in-process on real loopback sockets;
//! `main.rs` only parses flags, sets up logging and waits for signals. [`start`] binds the
//! node's three ports and assembles its services; [`RunningNode::stop`] shuts everything down
//! and flushes the datafiles.
//!
//! Where things live. Two doors, one room per concern; a service holds the few handles it
//! needs (given at assembly), never the whole node:
//! * `lifecycle`: start and stop, and the one `assemble` that builds every service;
//! * `session/` — the client door (P): handshake and admission, reader and writer, login and
//!   registration, a logged-in session's requests;
//! * `peer/` — the server door (P+1): the link handshake, the reader and the dispatcher that
//!   routes each message to its owner, the writer;
//! * `federation/`: membership, RTT rows, keyring, the tree, links and flooding, probing and
//!   dialling (the transport seam the simulator replaces);
//! * `records`: where a stored record goes (local watchers and the tree); `presence`: who
//!   watches whom, and the fan-out rule;
//! * `replication/`: records from peers, sync batches and the link-up resync (over
//!   `reconcile/` and `sync`);
//! * `wills/`: replicated last wills; `registration/`: UserID reservation, local and
//!   network-wide; `relay/` and `mailbox/`: relayed messages and where they wait;
//! * `store/`: the datafiles, and `directory`: the index people are found by; `admin`, `metrics`, `trace`, `applog`, `logring`: operators;
//! * `net`: listeners, accept loops, the echo on P+2; `lab`: emulated link delays; `sim/`:
//!   the cluster simulator; `config`, `blacklist`, `ratelimit`, `budget`, `tasks`, `mst`.

mod admin;
mod applog;
pub mod backup;
pub mod blacklist;
pub mod budget;
pub mod config;
pub mod directory;
pub mod federation;
mod http;
mod lab;
mod lifecycle;
pub mod logring;
pub mod mailbox;
pub mod metrics;
pub mod mst;
mod net;
mod peer;
pub mod presence;
pub mod ratelimit;
pub mod reconcile;
pub mod records;
pub mod registration;
pub mod relay;
pub(crate) mod replication;
pub mod server_keys;
mod session;
pub mod sim;
pub mod store;
pub mod sync;
pub mod tasks;
pub mod trace;
pub mod wills;

pub use config::{Config, ConfigError, FileConfig};
pub use lifecycle::{start, Node, RunningNode, StartError};
pub use net::{BindError, PORTS_FILE};
