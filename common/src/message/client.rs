//! Client ↔ server messages: registration (`register`, `userID`, `newuser`), login
//! (`authenticate`, `challenge`, `challengeResponse`), the user's records (`UserInfo`,
//! `ChangeCL`, `lastWill`) and the queries and pushes about them (`reqUserInfo`,
//! `reqContactList`, `contactlist`, the directory search `searchUsers`), server notices (`servermsg`), and the client ↔ client
//! chat message `txt`.

use serde::{Deserialize, Serialize};

use crate::crypto::{PublicKey, Signature};
use crate::record::{ChatMessage, ContactList, Signed, UserInfo};
use crate::user_id::UserId;

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
    /// The registering server's certificate for this UserID and the registered key
    /// (`host:port issued key signature`): the client puts it, verbatim, in its first record as
    /// the UserInfo field `Sponsor` (and keeps it in every later one). Other servers admit a
    /// new UserID only with it. Absent from servers that predate certificates.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sponsor: Option<String>,
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

/// `searchUsers` (client→server): finds people in the server's copy of the public records.
/// `text` is one or more words; a user matches when every word is the start of a word of
/// their nickname, name, e-mail or location (case-insensitive). Answered like `reqUserInfo`:
/// one `UserInfo` per match (at most `limit`, and at most the server's own cap), then `ok`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SearchUsers {
    /// What to look for, e.g. `bob` or `alice example.org`.
    pub text: String,
    /// How many matches at most (the server caps it; absent: the server's cap).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<u32>,
}

/// `reqContactList` (client→server): asks for the own contact list (answered by `contactlist`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReqContactList {}

// ---------------------------------------------------------------------------------------------
// Server -> client

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
// Client -> client

/// `txt` (client→client): a chat message, signed by the sender.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Txt {
    /// The signed message.
    pub record: Signed<ChatMessage>,
}
