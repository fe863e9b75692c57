//! Every message of the Gossip protocol as a typed Rust value, with XML encoding and decoding.
//!
//! On the wire a message is one XML element whose *name is the message type* (the spec: "this
//! spec forces a different tag for each message") and whose attributes are the envelope:
//!
//! ```xml
//! <UserInfo version="1" ipaddr="::ffff:192.0.2.1" id="7"><record sig="…">…</record></UserInfo>
//! ```
//!
//! * `version` — protocol version of the sender (this is version 1);
//! * `ipaddr` — the sender's own idea of its address, IPv6 form. Informational only: receivers
//!   use the socket's peer address for anything that matters (UserID allocation, blacklists);
//! * `id` — optional request id chosen by the sender of a request;
//! * `re` — on a reply (`ok`, `error`, `challenge`, …), the `id` of the request it answers.
//!   Replies carry `re` because unsolicited pushes may arrive between a request and its answer.
//!
//! Decoding is two passes over one frame: a quick-xml reader pass that checks UTF-8 and
//! well-formedness and reads the envelope (so errors are precise: malformed XML, unknown message
//! type, unsupported version), then serde deserialisation of the body into the typed struct.
//! [`GenericMessage`] is the spec's "multimap with special keys" view; nothing in the server or
//! client uses it (only a round-trip test does).

use std::net::Ipv6Addr;

use quick_xml::events::Event;
use quick_xml::Reader;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::crypto::{PublicKey, Signature};
use crate::event_count::EventCount;
use crate::record::{ChatMessage, ContactList, Signed, UserInfo};
use crate::user_id::UserId;

/// The protocol version this crate speaks.
pub const PROTOCOL_VERSION: u32 = 1;

/// Deepest element nesting accepted; real messages are at most 3 deep.
const MAX_DEPTH: usize = 16;

/// Why bytes could not become a [`Message`].
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

/// The envelope attributes every message carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// Sender's protocol version.
    pub version: u32,
    /// Sender's own address (informational, see module docs).
    pub ipaddr: Ipv6Addr,
    /// Request id, chosen by the requester.
    pub id: Option<u64>,
    /// The request id this message answers.
    pub re: Option<u64>,
}

impl Header {
    /// A header for a message from `ipaddr`, no request id.
    pub fn new(ipaddr: Ipv6Addr) -> Self {
        Header {
            version: PROTOCOL_VERSION,
            ipaddr,
            id: None,
            re: None,
        }
    }
}

/// A decoded message: envelope plus typed body.
#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    /// The envelope.
    pub header: Header,
    /// The typed body; its variant is the message type.
    pub body: Body,
}

/// An event count on the wire: `<current count="5" rollover="0"/>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct WireEventCount {
    /// Counter.
    #[serde(rename = "@count")]
    pub count: u32,
    /// Rollover bit as 0/1.
    #[serde(rename = "@rollover")]
    pub rollover: u8,
}

impl From<EventCount> for WireEventCount {
    fn from(ec: EventCount) -> Self {
        WireEventCount {
            count: ec.count,
            rollover: u8::from(ec.rollover),
        }
    }
}

impl From<WireEventCount> for EventCount {
    fn from(w: WireEventCount) -> Self {
        EventCount::new(w.count, w.rollover != 0)
    }
}

// ---------------------------------------------------------------------------------------------
// Client -> server

/// `authenticate` (client→server): "I am this user"; the server answers with a `challenge`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Authenticate {
    /// The user logging in.
    pub uid: UserId,
}

/// `challenge` (server→client): a fresh nonce to sign, naming the server so a response cannot be
/// replayed to another server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Challenge {
    /// 32 random bytes, hex.
    pub nonce: String,
    /// The server's canonical identity, `host:port`.
    pub server: String,
}

/// `challengeResponse` (client→server): the signature over the login challenge, see
/// [`crate::login_challenge_bytes`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChallengeResponse {
    /// The user logging in (must match the `authenticate`).
    pub uid: UserId,
    /// Signature with the user's key.
    pub signature: Signature,
}

/// `register` (client→server): asks for a new UserID for this public key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Register {
    /// The new user's public key.
    pub publickey: PublicKey,
}

/// `userID` (server→client): the UserID reserved (locked network-wide) for a registration.
/// The client signs its first UserInfo with it and sends `newuser` before `expires_s` passes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserIdGrant {
    /// The reserved UserID.
    pub uid: UserId,
    /// Seconds the reservation lasts.
    pub expires_s: u64,
}

/// `newuser`: the first UserInfo of a new user (client→server to complete a registration,
/// server→server to announce it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewUser {
    /// The signed record; its key becomes bound to the UserID.
    pub record: Signed<UserInfo>,
}

/// `UserInfo`: a signed user record — an update (client→server), a presence push
/// (server→client) or propagation (server→server).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserInfoMsg {
    /// The signed record.
    pub record: Signed<UserInfo>,
}

/// `ChangeCL`: a signed contact list — an update (client→server) or propagation
/// (server→server).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChangeCl {
    /// The signed list.
    pub record: Signed<ContactList>,
}

/// `lastWill` (client→server): a pre-signed UserInfo (status offline, next event count) the
/// server publishes if the connection drops before the client publishes something newer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LastWill {
    /// The signed record to publish on disconnect.
    pub record: Signed<UserInfo>,
}

/// `reqUserInfo` (client→server): asks for the stored UserInfo of these users.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReqUserInfo {
    /// The users asked about.
    #[serde(rename = "uid", default)]
    pub uids: Vec<UserId>,
}

/// `reqContactList` (client→server): asks for the own contact list (answered by `contactlist`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReqContactList {}

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

// ---------------------------------------------------------------------------------------------
// Server -> client

/// `ok` (server→client): the request named by `re` succeeded (and, for updates, is durable).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ok {
    /// For updates: the event count now stored.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub current: Option<WireEventCount>,
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

/// `contactlist` (server→client): the user's own signed contact list and the UserInfo of every
/// contact the server knows (IP and port are in the records of those online).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContactListMsg {
    /// The owner's list, if they ever stored one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub own: Option<Signed<ContactList>>,
    /// One record per known contact.
    #[serde(rename = "contact", default)]
    pub contacts: Vec<Signed<UserInfo>>,
}

/// `servermsg` (server→client): a notice from the server or its admin.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerMsg {
    /// The notice.
    pub text: String,
}

// ---------------------------------------------------------------------------------------------
// Server <-> server

/// A server's canonical identity: (name, client port).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ServerAddr {
    /// Host name as configured.
    #[serde(rename = "@host")]
    pub host: String,
    /// Client (base) port.
    #[serde(rename = "@port")]
    pub port: u16,
    /// The server's ed25519 identity key (hex), when the sender knows it: a receiver that has
    /// no key bound to this name yet binds this one.
    #[serde(rename = "@key", default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
}

impl std::fmt::Display for ServerAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.host, self.port)
    }
}

/// `serverID`: the first message on every server link, naming the sender.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerIdMsg {
    /// Sender's host name.
    pub host: String,
    /// Sender's base port.
    pub port: u16,
    /// Sync methods the sender offers beyond the spec's `eventCounts`, space-separated
    /// (`range1`: range-based reconciliation, the `reconcile` message). Servers that predate it
    /// send none and ignore it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sync: Option<String>,
}

/// `serverlist`: every server the sender knows.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerList {
    /// The servers.
    #[serde(rename = "server", default)]
    pub servers: Vec<ServerAddr>,
}

/// `reqServerlist`: asks for a `serverlist`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReqServerList {}

/// `addServer`: a server joined the network.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AddServer {
    /// Host name.
    pub host: String,
    /// Base port.
    pub port: u16,
    /// Its identity key (hex), as proven on the sender's link to it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
}

/// `deleteServer`: a server leaves the federation. Only a statement signed by the leaving
/// server's own key (`key`, `seq`, `sig`) removes it anywhere; without a valid signature it is
/// a hint to re-measure that server, never a tombstone.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeleteServer {
    /// Host name.
    pub host: String,
    /// Base port.
    pub port: u16,
    /// The leaving server's identity key (hex).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// When it left, in its clock's milliseconds: a removal older than a row it published
    /// since (it was re-added) is stale.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seq: Option<u64>,
    /// Its signature (hex, domain `gossip-server-control-v1`) over `delete\n{host}:{port}\n{seq}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sig: Option<String>,
}

/// One measured round trip.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RttEntry {
    /// Measured server's host.
    #[serde(rename = "@host")]
    pub host: String,
    /// Measured server's base port.
    #[serde(rename = "@port")]
    pub port: u16,
    /// Mean RTT in milliseconds; absent when the server is dead (no reply within the timeout).
    #[serde(rename = "@ms", skip_serializing_if = "Option::is_none", default)]
    pub ms: Option<f64>,
}

/// `updateRTTs`: the RTTs one server measured to the others. Flooded along the tree; `seq`
/// (the measuring server's clock in milliseconds when it published) lets every server keep only
/// the newest row of each measurer and stop the flood.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UpdateRtts {
    /// Measuring server's host.
    pub host: String,
    /// Measuring server's base port.
    pub port: u16,
    /// Publication number of this row; higher is newer.
    #[serde(default)]
    pub seq: u64,
    /// Its measurements.
    #[serde(rename = "rtt", default)]
    pub rtts: Vec<RttEntry>,
    /// The measuring server's identity key (hex).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// The measurer's signature (hex, domain `gossip-server-control-v1`) over the row's
    /// canonical form (see `docs/protocol.md`); rows are forwarded verbatim, so no other server
    /// can forge, alter or freeze one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sig: Option<String>,
}

/// One `(uid, event count)` pair of an `eventCounts` list: `<e u="42" c="7" r="0"/>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct EcEntry {
    /// Whose record.
    #[serde(rename = "@u")]
    pub uid: UserId,
    /// Counter.
    #[serde(rename = "@c")]
    pub count: u32,
    /// Rollover bit, 0/1.
    #[serde(rename = "@r")]
    pub rollover: u8,
}

impl EcEntry {
    /// Builds an entry.
    pub fn new(uid: UserId, ec: EventCount) -> Self {
        EcEntry {
            uid,
            count: ec.count,
            rollover: u8::from(ec.rollover),
        }
    }

    /// The event count.
    pub fn event_count(&self) -> EventCount {
        EventCount::new(self.count, self.rollover != 0)
    }
}

/// A list of event counts.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EcList {
    /// Entries.
    #[serde(rename = "e", default)]
    pub entries: Vec<EcEntry>,
}

/// `eventCounts`: what the sender holds, so the receiver can send back only what it lacks.
/// Large databases are split over several messages; the last has `last="1"`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventCounts {
    /// Whether this is the final part.
    #[serde(rename = "@last")]
    pub last: u8,
    /// UserInfo event counts.
    #[serde(default)]
    pub userdb: EcList,
    /// ContactList event counts.
    #[serde(default)]
    pub contactlist: EcList,
}

/// `changedEntries`: the records the other side lacks or holds older copies of.
/// Sent in parts; the last has `last="1"`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChangedEntries {
    /// Whether this is the final part.
    #[serde(rename = "@last")]
    pub last: u8,
    /// UserInfo records.
    #[serde(rename = "userinfo", default)]
    pub userinfo: Vec<Signed<UserInfo>>,
    /// ContactList records.
    #[serde(rename = "contactlist", default)]
    pub contactlists: Vec<Signed<ContactList>>,
}

/// `heldWill` (S↔S): a logged-in user's last will, held by the server they are logged in to
/// (`host`, `port`) and replicated so that the others publish it if that server dies.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeldWill {
    /// The home server's host name.
    pub host: String,
    /// The home server's base port.
    pub port: u16,
    /// The will: the user's offline record, signed by the user.
    pub record: Signed<UserInfo>,
}

/// `reconcile`: one frame of a round of range-based reconciliation (`docs/federation.md`).
/// The text is the round's entries in a compact binary form, base64-encoded.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reconcile {
    /// The round's number (1 is the opening round).
    #[serde(rename = "@round")]
    pub round: u32,
    /// Whether this is the round's final frame.
    #[serde(rename = "@last")]
    pub last: u8,
    /// Whether the round asks nothing, so it ends the reconciliation (on its final frame).
    #[serde(rename = "@done", default)]
    pub done: u8,
    /// The entries (binary, base64).
    #[serde(rename = "$text", default)]
    pub data: String,
}

/// `lockUID`: asks every reachable server to reserve a UserID for a registration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockUid {
    /// The UserID.
    pub uid: UserId,
    /// The registration taking the lock: the registering server's identity and 128 random bits,
    /// `host:port/<32 hex digits>`, so no other server can name it. Locks are taken, answered
    /// and released under it.
    pub holder: String,
    /// Seconds until the lock expires by itself.
    pub expires_s: u64,
}

/// `lockResult`: a server's answer to `lockUID`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockResult {
    /// The UserID.
    pub uid: UserId,
    /// 1 when the lock was granted.
    pub granted: u8,
    /// The `holder` of the `lockUID` being answered, copied back whether granted or not, so the
    /// requester can match the answer. It does not name whoever holds a conflicting lock. A
    /// result without it is ignored.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub holder: Option<String>,
}

/// `unlockUID`: releases a lock (registration done or aborted).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnlockUid {
    /// The UserID.
    pub uid: UserId,
    /// The holder whose lock is released (a lock held by someone else stays).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub holder: Option<String>,
}

// ---------------------------------------------------------------------------------------------
// Relayed messages (client -> server -> federation -> server -> client)

/// `relay`: a message from one user to another, carried by the servers and kept until the
/// recipient's client has it. The body is opaque to servers (the sender's client encrypts it
/// end to end); the envelope is signed by the sender, so no server can forge or alter one, or
/// send one in a user's name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Relay {
    /// Sender-chosen id, 32 hex digits (128 random bits): names the message network-wide.
    pub id: String,
    /// The sender.
    pub from: UserId,
    /// The recipient.
    pub to: UserId,
    /// The sender's clock when sent, milliseconds since the Unix epoch.
    pub sent: u64,
    /// The body, base64 (opaque to servers).
    pub body: String,
    /// The sender's signature (hex, domain `gossip-relay-v1`) over
    /// `relay\n{id}\n{from}\n{to}\n{sent}\n{body}`.
    pub sig: String,
    /// Server → client only: 1 when the sender is not in the recipient's contact list (a
    /// message request, to show apart).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request: Option<u8>,
}

/// `delivered`: the recipient's client has message `id`. Client → its server (which then drops
/// it), flooded between servers (every server drops it), and server → the sender's client.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delivered {
    /// The message id.
    pub id: String,
    /// Its sender.
    pub from: UserId,
    /// Its recipient.
    pub to: UserId,
    /// The recipient's signature (hex, domain `gossip-relay-v1`) over
    /// `delivered\n{id}\n{from}\n{to}`:
    /// only the recipient can make a message disappear from the servers.
    pub sig: String,
}

/// `stored` (server → server): a relayed message `id` is on this server's disk; the sender's
/// server acknowledges the message to its client once one other server has it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stored {
    /// The message id.
    pub id: String,
}

/// `mailboxDigest` (server → server, at link-up): the sender's mailbox in brief, the messages
/// it holds and the delivery notices it knows. A peer whose own digest differs answers with its
/// ids (`mailboxIds`), so that each side sends the other only what it lacks; equal digests mean
/// nothing crosses.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MailboxDigest {
    /// Messages held.
    #[serde(rename = "@count")]
    pub count: u64,
    /// The wrapping sum of their ids' 128-bit xxh3 hashes, 32 hex digits.
    #[serde(rename = "@sum")]
    pub sum: String,
    /// Delivered messages whose signed notice the sender knows.
    #[serde(rename = "@delivered", default)]
    pub delivered: u64,
    /// The wrapping sum of their ids' hashes, 32 hex digits.
    #[serde(rename = "@dsum", default)]
    pub dsum: String,
}

/// `mailboxIds` (server → server): a part of the sender's list of held message ids, then of the
/// delivered ones whose notice it knows, sent when the digests differed. The receiver sends
/// back every message it holds and every notice it knows that the whole list lacks, and the
/// notice of every listed held message it knows was delivered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MailboxIds {
    /// Whether this is the list's last part.
    #[serde(rename = "@last")]
    pub last: u8,
    /// 1 when these are ids of delivered messages whose notice the sender knows (they follow
    /// the held ones); absent for held messages.
    #[serde(
        rename = "@delivered",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub delivered: Option<u8>,
    /// Message ids (32 hex digits each), space-separated; at most 1,000 per part.
    #[serde(rename = "$text", default)]
    pub ids: String,
}

// ---------------------------------------------------------------------------------------------
// Client -> client

/// `txt` (client→client): a chat message, signed by the sender.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Txt {
    /// The signed message.
    pub record: Signed<ChatMessage>,
}

macro_rules! bodies {
    ($( $variant:ident($ty:ty) = $tag:literal ),* $(,)?) => {
        /// The typed body of a message; the variant is the message type.
        #[derive(Debug, Clone, PartialEq)]
        #[allow(missing_docs)]
        pub enum Body {
            $( $variant($ty), )*
        }

        /// Every message type, as it appears on the wire.
        pub const MSGTYPES: &[&str] = &[$( $tag ),*];

        impl Body {
            /// Whether this message, sent as a reply (`re`), closes the request: `ok`, `error`,
            /// `challenge`, `userID` and `pong` do; `UserInfo` and `contactlist` replies are
            /// parts of a longer answer that one of those closes.
            pub fn ends_request(&self) -> bool {
                matches!(
                    self,
                    Body::Ok(_) | Body::Error(_) | Body::Challenge(_) | Body::UserIdGrant(_) | Body::Pong(_) | Body::ServerList(_)
                )
            }

            /// The message type: the root element name on the wire.
            pub fn msgtype(&self) -> &'static str {
                match self { $( Body::$variant(_) => $tag, )* }
            }

            fn decode_as(msgtype: &str, xml: &str) -> Result<Body, ProtocolError> {
                match msgtype {
                    $( $tag => de::<$ty>($tag, xml).map(Body::$variant), )*
                    other => Err(ProtocolError::UnknownMsgType(other.to_owned())),
                }
            }

            fn encode_xml(&self) -> String {
                match self {
                    $( Body::$variant(b) => se($tag, b), )*
                }
            }
        }

        $(
            impl From<$ty> for Body {
                fn from(b: $ty) -> Body { Body::$variant(b) }
            }
        )*
    };
}

bodies! {
    Authenticate(Authenticate) = "authenticate",
    Challenge(Challenge) = "challenge",
    ChallengeResponse(ChallengeResponse) = "challengeResponse",
    Register(Register) = "register",
    UserIdGrant(UserIdGrant) = "userID",
    NewUser(NewUser) = "newuser",
    UserInfo(UserInfoMsg) = "UserInfo",
    ChangeCl(ChangeCl) = "ChangeCL",
    LastWill(LastWill) = "lastWill",
    ReqUserInfo(ReqUserInfo) = "reqUserInfo",
    ReqContactList(ReqContactList) = "reqContactList",
    Ping(Ping) = "ping",
    Pong(Pong) = "pong",
    Disconnect(Disconnect) = "disconnect",
    Ok(Ok) = "ok",
    Error(Error) = "error",
    ContactList(ContactListMsg) = "contactlist",
    ServerMsg(ServerMsg) = "servermsg",
    ServerId(ServerIdMsg) = "serverID",
    ServerList(ServerList) = "serverlist",
    ReqServerList(ReqServerList) = "reqServerlist",
    AddServer(AddServer) = "addServer",
    DeleteServer(DeleteServer) = "deleteServer",
    UpdateRtts(UpdateRtts) = "updateRTTs",
    EventCounts(EventCounts) = "eventCounts",
    ChangedEntries(ChangedEntries) = "changedEntries",
    Reconcile(Reconcile) = "reconcile",
    HeldWill(HeldWill) = "heldWill",
    LockUid(LockUid) = "lockUID",
    LockResult(LockResult) = "lockResult",
    UnlockUid(UnlockUid) = "unlockUID",
    Txt(Txt) = "txt",
    Relay(Relay) = "relay",
    Delivered(Delivered) = "delivered",
    Stored(Stored) = "stored",
    MailboxDigest(MailboxDigest) = "mailboxDigest",
    MailboxIds(MailboxIds) = "mailboxIds",
}

fn de<T: DeserializeOwned>(msgtype: &str, xml: &str) -> Result<T, ProtocolError> {
    quick_xml::de::from_str(xml).map_err(|e| {
        let text = e.to_string();
        // serde reports a missing field as "missing field `name`".
        if let Some(rest) = text.strip_prefix("missing field `") {
            let field = rest.trim_end_matches('`').to_owned();
            return ProtocolError::MissingField {
                msgtype: msgtype.to_owned(),
                field,
            };
        }
        ProtocolError::InvalidField {
            msgtype: msgtype.to_owned(),
            detail: text,
        }
    })
}

fn se<T: Serialize>(msgtype: &str, body: &T) -> String {
    // The body types are plain structs of strings, numbers and lists: serialisation cannot fail.
    quick_xml::se::to_string_with_root(msgtype, body)
        .unwrap_or_else(|e| panic!("serialising <{msgtype}> failed: {e}"))
}

impl Message {
    /// A message with a fresh header from `ipaddr`.
    pub fn new(ipaddr: Ipv6Addr, body: impl Into<Body>) -> Self {
        Message {
            header: Header::new(ipaddr),
            body: body.into(),
        }
    }

    /// Sets the request id.
    #[must_use]
    pub fn with_id(mut self, id: u64) -> Self {
        self.header.id = Some(id);
        self
    }

    /// Marks this message as the answer to request `re`.
    #[must_use]
    pub fn in_reply_to(mut self, re: Option<u64>) -> Self {
        self.header.re = re;
        self
    }

    /// The message type.
    pub fn msgtype(&self) -> &'static str {
        self.body.msgtype()
    }

    /// Encodes to one XML element (one frame).
    pub fn to_xml(&self) -> String {
        let body = self.body.encode_xml();
        let tag = self.msgtype();
        // `body` starts with `<tag`; the envelope attributes go right after the name.
        let mut attrs = format!(
            " version=\"{}\" ipaddr=\"{}\"",
            self.header.version, self.header.ipaddr
        );
        if let Some(id) = self.header.id {
            attrs.push_str(&format!(" id=\"{id}\""));
        }
        if let Some(re) = self.header.re {
            attrs.push_str(&format!(" re=\"{re}\""));
        }
        let split = 1 + tag.len();
        debug_assert_eq!(&body[1..split], tag);
        let mut out = String::with_capacity(body.len() + attrs.len());
        out.push_str(&body[..split]);
        out.push_str(&attrs);
        out.push_str(&body[split..]);
        out
    }

    /// Decodes one frame.
    pub fn decode(frame: &[u8]) -> Result<Message, ProtocolError> {
        let xml =
            std::str::from_utf8(frame).map_err(|e| ProtocolError::BadUtf8(e.valid_up_to()))?;
        let envelope = Envelope::scan(xml)?;
        let header = envelope.header()?;
        let body = Body::decode_as(&envelope.msgtype, xml)?;
        Ok(Message { header, body })
    }
}

/// Root element name and envelope attributes, read without touching the body.
struct Envelope {
    msgtype: String,
    version: Option<String>,
    ipaddr: Option<String>,
    id: Option<String>,
    re: Option<String>,
}

impl Envelope {
    /// Checks the whole frame is well-formed XML with exactly one root, and reads the envelope.
    fn scan(xml: &str) -> Result<Envelope, ProtocolError> {
        let mut reader = Reader::from_str(xml);
        let mut depth = 0usize;
        let mut envelope: Option<Envelope> = None;
        let mut closed = false;
        let malformed = |reader: &Reader<&[u8]>, what: String| {
            ProtocolError::MalformedXml(format!("{what} (at byte {})", reader.buffer_position()))
        };
        loop {
            let event = reader
                .read_event()
                .map_err(|e| malformed(&reader, e.to_string()))?;
            match event {
                Event::Start(ref start) | Event::Empty(ref start) => {
                    if closed {
                        return Err(malformed(&reader, "second root element".into()));
                    }
                    if envelope.is_none() {
                        envelope = Some(Envelope::from_root(start)?);
                    }
                    if matches!(event, Event::Start(_)) {
                        depth += 1;
                        if depth > MAX_DEPTH {
                            return Err(malformed(&reader, "elements nested too deeply".into()));
                        }
                    } else if depth == 0 {
                        closed = true;
                    }
                }
                Event::End(_) => {
                    depth -= 1;
                    if depth == 0 {
                        closed = true;
                    }
                }
                Event::Text(ref t) if depth == 0 && !t.iter().all(u8::is_ascii_whitespace) => {
                    return Err(malformed(&reader, "text outside the root element".into()));
                }
                Event::DocType(_) => {
                    return Err(malformed(&reader, "DOCTYPE is not allowed".into()));
                }
                Event::Eof => break,
                _ => {}
            }
        }
        match envelope {
            Some(e) if closed => Ok(e),
            Some(_) => Err(ProtocolError::MalformedXml(
                "root element not closed".into(),
            )),
            None => Err(ProtocolError::MalformedXml("no element".into())),
        }
    }

    fn from_root(start: &quick_xml::events::BytesStart<'_>) -> Result<Envelope, ProtocolError> {
        let msgtype = std::str::from_utf8(start.name().as_ref())
            .map_err(|e| ProtocolError::MalformedXml(e.to_string()))?
            .to_owned();
        if !MSGTYPES.contains(&msgtype.as_str()) {
            return Err(ProtocolError::UnknownMsgType(msgtype));
        }
        let mut env = Envelope {
            msgtype,
            version: None,
            ipaddr: None,
            id: None,
            re: None,
        };
        for attr in start.attributes() {
            let attr = attr.map_err(|e| ProtocolError::MalformedXml(e.to_string()))?;
            let value = || -> Result<String, ProtocolError> {
                Ok(attr
                    .unescape_value()
                    .map_err(|e| ProtocolError::MalformedXml(e.to_string()))?
                    .into_owned())
            };
            match attr.key.as_ref() {
                b"version" => env.version = Some(value()?),
                b"ipaddr" => env.ipaddr = Some(value()?),
                b"id" => env.id = Some(value()?),
                b"re" => env.re = Some(value()?),
                _ => {}
            }
        }
        Ok(env)
    }

    fn header(&self) -> Result<Header, ProtocolError> {
        let missing = |field: &str| ProtocolError::MissingField {
            msgtype: self.msgtype.clone(),
            field: field.into(),
        };
        let invalid = |detail: String| ProtocolError::InvalidField {
            msgtype: self.msgtype.clone(),
            detail,
        };
        let version_text = self.version.as_deref().ok_or_else(|| missing("version"))?;
        // "1" or "1.x": the major version must match; minor revisions only add fields.
        let major = version_text.split('.').next().unwrap_or("");
        let version: u32 = major
            .parse()
            .map_err(|_| ProtocolError::UnsupportedVersion(version_text.to_owned()))?;
        if version != PROTOCOL_VERSION {
            return Err(ProtocolError::UnsupportedVersion(version_text.to_owned()));
        }
        let ip_text = self.ipaddr.as_deref().ok_or_else(|| missing("ipaddr"))?;
        let ipaddr = ip_text
            .parse::<std::net::IpAddr>()
            .map(crate::user_id::to_ipv6)
            .map_err(|e| invalid(format!("ipaddr {ip_text:?}: {e}")))?;
        let num = |name: &str, v: &Option<String>| -> Result<Option<u64>, ProtocolError> {
            v.as_deref()
                .map(|s| {
                    s.parse::<u64>()
                        .map_err(|e| invalid(format!("{name} {s:?}: {e}")))
                })
                .transpose()
        };
        Ok(Header {
            version,
            ipaddr,
            id: num("id", &self.id)?,
            re: num("re", &self.re)?,
        })
    }
}

/// The spec's generic view of a parsed message: special keys `msgtype`, `ipaddr`, `version`,
/// then one `(tag, data)` pair per child element, in order (a multimap: tags may repeat).
/// Children with structure of their own keep their inner XML as the data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GenericMessage {
    /// Message type.
    pub msgtype: String,
    /// `version` attribute as sent.
    pub version: Option<String>,
    /// `ipaddr` attribute as sent.
    pub ipaddr: Option<String>,
    /// Child elements as (tag, data).
    pub fields: Vec<(String, String)>,
}

impl GenericMessage {
    /// Parses any well-formed frame, known message type or not.
    pub fn parse(frame: &[u8]) -> Result<GenericMessage, ProtocolError> {
        let xml =
            std::str::from_utf8(frame).map_err(|e| ProtocolError::BadUtf8(e.valid_up_to()))?;
        let mut reader = Reader::from_str(xml);
        let mut out: Option<GenericMessage> = None;
        let mut depth = 0usize;
        let mut child: Option<(String, usize)> = None; // (tag, start offset of inner content)
        loop {
            let before = reader.buffer_position() as usize;
            let event = reader
                .read_event()
                .map_err(|e| ProtocolError::MalformedXml(e.to_string()))?;
            let after = reader.buffer_position() as usize;
            match event {
                Event::Start(start) | Event::Empty(start) if depth == 0 => {
                    let name = String::from_utf8_lossy(start.name().as_ref()).into_owned();
                    let attr = |k: &[u8]| {
                        start
                            .try_get_attribute(k)
                            .ok()
                            .flatten()
                            .and_then(|a| a.unescape_value().ok().map(|v| v.into_owned()))
                    };
                    out = Some(GenericMessage {
                        msgtype: name,
                        version: attr(b"version"),
                        ipaddr: attr(b"ipaddr"),
                        fields: Vec::new(),
                    });
                    if xml[before..after].ends_with("/>") {
                        break;
                    }
                    depth = 1;
                }
                Event::Start(start) => {
                    if depth == 1 {
                        child = Some((
                            String::from_utf8_lossy(start.name().as_ref()).into_owned(),
                            after,
                        ));
                    }
                    depth += 1;
                }
                Event::Empty(start) if depth == 1 => {
                    let name = String::from_utf8_lossy(start.name().as_ref()).into_owned();
                    let data = xml[before..after].to_owned();
                    let fields = &mut out.as_mut().expect("root seen").fields;
                    // Attributes-only children keep their markup so no data is lost.
                    fields.push((
                        name,
                        if data.contains('=') {
                            data
                        } else {
                            String::new()
                        },
                    ));
                }
                Event::End(_) => {
                    depth -= 1;
                    if depth == 1 {
                        if let Some((name, start)) = child.take() {
                            let inner = &xml[start..before];
                            let data = if inner.contains('<') {
                                inner.to_owned()
                            } else {
                                quick_xml::escape::unescape(inner)
                                    .map(|c| c.into_owned())
                                    .unwrap_or_else(|_| inner.to_owned())
                            };
                            out.as_mut().expect("root seen").fields.push((name, data));
                        }
                    } else if depth == 0 {
                        break;
                    }
                }
                Event::Eof => break,
                _ => {}
            }
        }
        out.ok_or_else(|| ProtocolError::MalformedXml("no element".into()))
    }

    /// The first value for `key` (`msgtype`, `ipaddr` and `version` included).
    pub fn get(&self, key: &str) -> Option<&str> {
        match key {
            "msgtype" => Some(&self.msgtype),
            "version" => self.version.as_deref(),
            "ipaddr" => self.ipaddr.as_deref(),
            _ => self
                .fields
                .iter()
                .find(|(k, _)| k == key)
                .map(|(_, v)| v.as_str()),
        }
    }
}
