//! Shared foundations of Gossip: the XML wire protocol, signed user records with event counts,
//! user ids and the cryptography that keeps server admins from forging or altering records.
//!
//! Layers, bottom up:
//! * [`codec`] — bytes ↔ frames (one XML element each), incremental, size-limited;
//! * [`message`] — frames ↔ typed [`Message`]s (encode and decode side by side);
//! * [`record`] — `UserInfo`, `ContactList`, `ChatMessage` and the [`Signed`] wrapper that keeps
//!   the owner's exact bytes;
//! * [`event_count`], [`user_id`], [`crypto`] — the small value types everything else uses.

pub mod admin;
pub mod codec;
pub mod crypto;
pub mod event_count;
pub mod message;
pub mod name;
pub mod record;
pub mod rtt;
pub mod secure;
pub mod user_id;
pub mod xml;

pub use codec::XmlFrameCodec;
pub use crypto::{CryptoError, Domain, Keypair, PublicKey, Signature};
pub use event_count::EventCount;
pub use message::{Body, ErrorCode, Header, Message, ProtocolError};
pub use record::{ChatMessage, ContactList, Record, RecordError, Signed, UserInfo, Versioned};
pub use user_id::UserId;

/// The bytes a sender signs (domain [`Domain::Relay`]) for a relayed message's envelope.
pub fn relay_bytes(r: &message::Relay) -> Vec<u8> {
    format!(
        "relay\n{}\n{}\n{}\n{}\n{}",
        r.id, r.from, r.to, r.sent, r.body
    )
    .into_bytes()
}

/// The bytes a recipient `to` signs (domain [`Domain::Relay`]) to say it has message `id`
/// from `from`.
pub fn delivered_bytes(id: &str, from: UserId, to: UserId) -> Vec<u8> {
    format!("delivered\n{id}\n{from}\n{to}").into_bytes()
}

/// The bytes a client signs (domain [`Domain::Login`]) to answer a login challenge: the nonce,
/// the server's canonical identity and the UserID. Naming the server means a response captured
/// by one (possibly rogue) server cannot be replayed to another; the nonce is single-use, so it
/// cannot be replayed to the same one either.
pub fn login_challenge_bytes(nonce: &str, server: &str, uid: UserId) -> Vec<u8> {
    format!("{nonce}\n{server}\n{uid}").into_bytes()
}
