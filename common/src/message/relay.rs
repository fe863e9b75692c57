//! Relayed messages, carried user to user through the servers (client → server → federation →
//! server → client): the signed message (`relay`), the recipient's delivery notice
//! (`delivered`), and what servers tell each other about the mailbox (`stored`,
//! `mailboxDigest`, `mailboxIds`).

use serde::{Deserialize, Serialize};

use crate::user_id::UserId;

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
