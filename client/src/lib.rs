//! Async client library for Gossip, used by the `gossip` CLI, the integration tests and the
//! benchmark.
//!
//! A [`GossipClient`] owns one server connection. A reader task routes every incoming message:
//! replies (they carry `re`, the id of our request) go to the request waiting for them;
//! everything else — presence pushes, server notices, chat messages — goes to the [`Events`]
//! stream. That is the spec's "message buffer", as an async stream: unsolicited messages may
//! arrive between a request and its answer and nothing is lost or misrouted.
//!
//! The client keeps its own signed records: every update increments the event count, is signed
//! locally, and is followed by a fresh *last will* (the same record, offline, next event count)
//! that the server publishes if this connection dies.
//!
//! Where things live: [`GossipClient`] is defined here, and its methods are spread over one
//! `impl` block per area:
//! * `connection` — connecting (TCP, Noise, server key pinning, the nearest of several
//!   servers), requests, and the reader task that routes every incoming message;
//! * `login` — registration and login, and taking in what a login returns;
//! * `record` — the own UserInfo record: updates, status, going online, the last will, logout;
//! * `contacts` — the contact list and other users' records;
//! * `directory` — finding people: the directory search, contact cards, fingerprints;
//! * `relay` — messages relayed through the servers, and their end-to-end encryption;
//! * `direct` — direct client-to-client messages (the spec's path);
//! * `events` — [`Event`] and the [`Events`] stream; `error` — [`ClientError`];
//!   `state` — what the client knows about its own user and contacts.
//!
//! The public modules: [`e2e`] (Olm encryption), [`failover`] (a session that survives its
//! server's death), [`history`] (the message database), [`profile`] (key and settings on disk).

mod connection;
mod contacts;
mod direct;
pub mod directory;
pub mod e2e;
mod error;
mod events;
pub mod failover;
pub mod history;
mod login;
pub mod profile;
mod record;
mod relay;
mod state;

use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

use gossip_common::{Keypair, Message, PublicKey};
use tokio::sync::mpsc;

pub use direct::DirectListener;
pub use error::ClientError;
pub use events::{Event, Events};

use connection::Pending;
use state::State;

// `std::sync::Mutex` is enough: it is only ever held for a few map operations, never across an
// `.await`.
use std::sync::Mutex;

/// Server identity keys pinned per server address (`host:port`, base port).
pub type Pins = std::collections::BTreeMap<String, PublicKey>;

/// One connection to a Gossip server.
pub struct GossipClient {
    key: Keypair,
    server: String,
    out: mpsc::Sender<Message>,
    pending: Pending,
    next_id: AtomicU64,
    state: Arc<Mutex<State>>,
    events_tx: mpsc::Sender<Event>,
    /// Where this client accepts direct messages, advertised in its UserInfo.
    direct_addr: Mutex<Option<SocketAddr>>,
    /// Whether the server holds a last will for this connection, which every update makes
    /// stale and so must be followed by a fresh one.
    will_active: std::sync::atomic::AtomicBool,
    /// Cancelled by the reader task when the connection ends, so a request made after that
    /// fails at once instead of waiting out its timeout.
    closed: tokio_util::sync::CancellationToken,
    request_timeout: Duration,
    /// The identity key the server proved.
    server_key: PublicKey,
}
