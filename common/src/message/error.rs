//! What can go wrong on the wire: [`ProtocolError`] (why bytes could not become a message),
//! the machine-readable [`ErrorCode`]s, and the `error` message that carries one back to the
//! peer. Kept together because a decoding failure maps straight to the code sent back
//! ([`ProtocolError::code`]).

use serde::{Deserialize, Serialize};

use super::{WireEventCount, PROTOCOL_VERSION};

/// Why bytes could not become a [`Message`](super::Message).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProtocolError {
    /// A frame grew past the configured maximum. The frame is skipped; the connection survives.
    #[error("frame of {size} bytes exceeds the {max}-byte limit")]
    FrameTooLarge {
        /// Bytes seen (at least).
        size: usize,
        /// The limit.
        max: usize,
    },
    /// The frame is not valid UTF-8.
    #[error("frame is not valid UTF-8 (first bad byte at offset {0})")]
    BadUtf8(usize),
    /// Not well-formed XML, or XML outside the protocol's shape.
    #[error("malformed XML: {0}")]
    MalformedXml(String),
    /// The root element names no known message type.
    #[error("unknown message type <{0}>")]
    UnknownMsgType(String),
    /// A required element or attribute is absent.
    #[error("<{msgtype}> is missing `{field}`")]
    MissingField {
        /// Message type.
        msgtype: String,
        /// Missing element or attribute.
        field: String,
    },
    /// A field is present but unusable (bad number, bad signature encoding, bad record…).
    #[error("<{msgtype}> has an invalid field: {detail}")]
    InvalidField {
        /// Message type.
        msgtype: String,
        /// What is wrong.
        detail: String,
    },
    /// The sender speaks a protocol version we do not.
    #[error("unsupported protocol version {0:?} (this server speaks {PROTOCOL_VERSION})")]
    UnsupportedVersion(String),
    /// The byte stream cannot be framed any more (garbage between frames, DOCTYPE, endless
    /// oversized frame); the connection must close.
    #[error("unrecoverable framing error: {0}")]
    Framing(String),
    /// Transport error.
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
}

impl ProtocolError {
    /// The `error` code to send back to the peer for this problem.
    pub fn code(&self) -> ErrorCode {
        match self {
            ProtocolError::FrameTooLarge { .. } => ErrorCode::TooLarge,
            ProtocolError::UnknownMsgType(_) => ErrorCode::UnknownMsgtype,
            ProtocolError::MissingField { .. } => ErrorCode::MissingField,
            ProtocolError::UnsupportedVersion(_) => ErrorCode::UnsupportedVersion,
            ProtocolError::BadUtf8(_)
            | ProtocolError::MalformedXml(_)
            | ProtocolError::InvalidField { .. }
            | ProtocolError::Framing(_)
            | ProtocolError::Io(_) => ErrorCode::Malformed,
        }
    }

    /// Whether the connection can go on after this error. Errors inside one well-delimited
    /// frame are recoverable; framing and I/O errors are not.
    pub fn is_fatal(&self) -> bool {
        matches!(self, ProtocolError::Framing(_) | ProtocolError::Io(_))
    }
}

/// Machine-readable reason carried by an `error` message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
#[non_exhaustive]
pub enum ErrorCode {
    /// The message could not be parsed.
    Malformed,
    /// Unknown message type.
    UnknownMsgtype,
    /// A required field is missing.
    MissingField,
    /// Frame or record too large.
    TooLarge,
    /// Protocol version not spoken here.
    UnsupportedVersion,
    /// A signature did not verify.
    BadSignature,
    /// Record signed with a key other than the one bound to the UserID.
    KeyMismatch,
    /// The event count is not newer than the stored one; `current` says what is stored.
    StaleEventCount,
    /// No such user.
    UnknownUser,
    /// The request needs a logged-in session.
    NotAuthenticated,
    /// Login failed (bad or replayed challenge response).
    AuthFailed,
    /// The UserID is taken or locked by another registration.
    UidTaken,
    /// The message type is not allowed on this kind of connection, or for this user.
    NotAllowed,
    /// The peer's address is blacklisted.
    Blacklisted,
    /// The server is at its connection limit.
    ServerFull,
    /// The peer did not read its messages fast enough.
    SlowConsumer,
    /// Something went wrong on the server; try again.
    Internal,
    /// A code from a newer protocol revision.
    #[serde(other)]
    Other,
}

/// `error`: the request named by `re` could not be met, or the peer sent something unusable.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Error {
    /// Machine-readable reason.
    pub code: ErrorCode,
    /// Human-readable explanation.
    pub text: String,
    /// For `stale-event-count`: the event count currently stored.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub current: Option<WireEventCount>,
}
