//! Connection control: the messages every link carries, client ↔ server and server ↔ server
//! alike — keepalive (`ping`/`pong`), a deliberate `disconnect`, and the generic `ok` reply.

use serde::{Deserialize, Serialize};

use super::WireEventCount;

/// `ping`: keepalive probe; the peer answers `pong` with `re` set.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ping {}

/// `pong`: answer to `ping`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pong {}

/// `disconnect`: the sender is closing the connection on purpose.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Disconnect {
    /// Why, for the peer's log.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// `ok` (server→client): the request named by `re` succeeded (and, for updates, is durable).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ok {
    /// For updates: the event count now stored.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub current: Option<WireEventCount>,
}
