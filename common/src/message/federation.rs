//! Server ↔ server messages: a link's opening (`serverID`), the server list (`serverlist`,
//! `reqServerlist`, `addServer`, `deleteServer`), measured round trips (`updateRTTs`), record
//! sync (`eventCounts`, `changedEntries`, `reconcile`), network-wide UserID locks (`lockUID`,
//! `lockResult`, `unlockUID`) and replicated last wills (`heldWill`).

use serde::{Deserialize, Serialize};

use crate::event_count::EventCount;
use crate::record::{ContactList, Signed, UserInfo};
use crate::user_id::UserId;

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
    /// The `seq` of the newest RTT row the sender holds from this server (`0`: none), sent on
    /// a repair check's opening instead of the rows themselves: the receiver answers with the
    /// rows it holds that are newer.
    #[serde(rename = "@seq", default, skip_serializing_if = "Option::is_none")]
    pub seq: Option<u64>,
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

/// `reqServerlist`: asks for a `serverlist`. On a repair check it carries the digest of the
/// RTT rows the sender holds (`rows`, `rsum`): a receiver whose digest is the same does not
/// answer; one whose digest differs answers with its list and each row's `seq`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReqServerList {
    /// Signed rows the sender holds.
    #[serde(rename = "@rows", default, skip_serializing_if = "Option::is_none")]
    pub rows: Option<u64>,
    /// The wrapping sum of the 128-bit xxh3 hashes of `host:port#seq` over those rows, 32 hex
    /// digits.
    #[serde(rename = "@rsum", default, skip_serializing_if = "Option::is_none")]
    pub rsum: Option<String>,
}

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

/// `willDigest` (S↔S, on a repair check): the last wills the sender holds for the sessions of
/// one home server (`host`, `port`), in brief: how many, and the wrapping sum of the 128-bit
/// xxh3 hashes of their signatures. Each end of a check sends its own sessions' digest instead
/// of the wills themselves; a receiver whose digest for that home differs answers with its own
/// and `want="1"`, and gets the home's wills as `heldWill`s.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WillDigest {
    /// The home server's host name.
    #[serde(rename = "@host")]
    pub host: String,
    /// The home server's base port.
    #[serde(rename = "@port")]
    pub port: u16,
    /// Wills held for it.
    #[serde(rename = "@count")]
    pub count: u64,
    /// The wrapping sum of their signatures' 128-bit xxh3 hashes, 32 hex digits.
    #[serde(rename = "@sum")]
    pub sum: String,
    /// 1: the sender's digest differs from the one it answers; send the home's wills.
    #[serde(rename = "@want", default, skip_serializing_if = "Option::is_none")]
    pub want: Option<u8>,
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
    /// When the registering server made the request (Unix seconds): a request older than the
    /// receiver's lock lifetime is refused, so a copy cannot be replayed long after.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issued: Option<u64>,
    /// The registering server's identity key (hex), bound to the server the holder names.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// That key's signature (hex, domain `gossip-server-control-v1`) over
    /// [`lock_bytes`]: every server charges the lock to the server that signed it, so no one
    /// can spend another server's share by naming it. Unsigned requests are refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sig: Option<String>,
}

/// The bytes a registering server signs for a `lockUID`.
pub fn lock_bytes(uid: UserId, holder: &str, expires_s: u64, issued: u64) -> Vec<u8> {
    format!("lock-uid\n{}\n{holder}\n{expires_s}\n{issued}\n", uid.0).into_bytes()
}

/// The bytes a registering server signs for an `unlockUID`.
pub fn unlock_bytes(uid: UserId, holder: &str) -> Vec<u8> {
    format!("unlock-uid\n{}\n{holder}\n", uid.0).into_bytes()
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
    /// The signature (hex, domain `gossip-server-control-v1`) over [`unlock_bytes`] by the key
    /// the lock was taken with: only the registering server releases its locks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sig: Option<String>,
}

impl super::Body {
    /// Refuses a server-to-server message that names a host which is not one (a control
    /// character, markup, an endless name…): it would reach logs, operators' tables and other
    /// servers' lists. See [`crate::name`].
    pub(super) fn check_names(&self) -> Result<(), super::ProtocolError> {
        use super::Body;
        let hosts: Vec<&str> = match self {
            Body::ServerId(m) => vec![&m.host],
            Body::ServerList(l) => l.servers.iter().map(|s| s.host.as_str()).collect(),
            Body::AddServer(a) => vec![&a.host],
            Body::DeleteServer(d) => vec![&d.host],
            Body::UpdateRtts(u) => std::iter::once(u.host.as_str())
                .chain(u.rtts.iter().map(|e| e.host.as_str()))
                .collect(),
            Body::HeldWill(h) => vec![&h.host],
            _ => return Ok(()),
        };
        match hosts.into_iter().find(|h| !crate::name::is_host(h)) {
            None => Ok(()),
            Some(bad) => Err(super::ProtocolError::InvalidField {
                msgtype: self.msgtype().to_owned(),
                detail: format!(
                    "host {:?} is not a host name or IP address",
                    crate::name::printable(&bad.chars().take(64).collect::<String>())
                ),
            }),
        }
    }
}
