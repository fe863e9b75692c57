//! [`ClientError`], what every client operation can fail with. One enum for the whole client so
//! that callers (the CLI, failover) can match on the kind of failure, whichever area it came from.

use std::time::Duration;

use gossip_common::{ErrorCode, EventCount, ProtocolError, PublicKey, UserId};

use crate::e2e;

/// Errors from client operations.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// Could not connect, or the connection failed.
    #[error("connection to {addr} failed: {source}")]
    Connect {
        /// Server address.
        addr: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The encrypted channel could not be set up (a server from before encryption, or not a
    /// Gossip server at all).
    #[error("cannot open an encrypted connection to {addr}: {source}")]
    Handshake {
        /// Server address.
        addr: String,
        /// Why.
        #[source]
        source: gossip_common::secure::SecureError,
    },
    /// The server proved a different identity key from the one pinned for it.
    #[error(
        "{addr} presented server key {presented}, but {pinned} was pinned for it at first \
         contact: it may be an impostor. If its admin rotated the key (they can confirm it with \
         `prodserver status`), accept the new one with `gossip trust-server {addr} {presented}`"
    )]
    ServerKeyChanged {
        /// Server address.
        addr: String,
        /// The key pinned.
        pinned: PublicKey,
        /// The key it presented.
        presented: PublicKey,
    },
    /// End-to-end encryption failed (no published keys, altered or replayed message…).
    #[error(transparent)]
    E2e(#[from] e2e::E2eError),
    /// The connection closed while a request was waiting.
    #[error("the server closed the connection")]
    Closed,
    /// The server refused the request.
    #[error("server refused: {code:?}: {text}")]
    Refused {
        /// Error code.
        code: ErrorCode,
        /// Server's explanation.
        text: String,
        /// For stale event counts: what the server holds.
        current: Option<EventCount>,
    },
    /// The server sent something this client did not expect.
    #[error("unexpected reply <{0}>")]
    Unexpected(&'static str),
    /// A request got no answer in time.
    #[error("no answer from the server within {0:?}")]
    Timeout(Duration),
    /// The operation needs a login first.
    #[error("not logged in")]
    NotLoggedIn,
    /// Building or checking a record failed.
    #[error(transparent)]
    Record(#[from] gossip_common::RecordError),
    /// Direct client-to-client delivery failed.
    #[error("cannot reach {uid} directly: {reason}")]
    Unreachable {
        /// Recipient.
        uid: UserId,
        /// Why.
        reason: String,
    },
    /// Protocol error.
    #[error(transparent)]
    Protocol(#[from] ProtocolError),
}
