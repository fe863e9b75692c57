//! User records: `UserInfo`, `ContactList` and client-to-client `ChatMessage`, and the
//! [`Signed`] wrapper that carries a record's exact bytes together with the owner's signature.
//!
//! The owner (a client) is the only party that ever *encodes* a record. Servers parse records to
//! read them, but store and forward the owner's bytes verbatim, so re-serialisation can never
//! break a signature and a server admin cannot alter a record without the change being detected.

use std::fmt;
use std::net::Ipv6Addr;
use std::sync::Arc;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::crypto::{CryptoError, Domain, Keypair, PublicKey, Signature};
use crate::event_count::EventCount;
use crate::user_id::UserId;
use crate::xml::{self, Field};

/// Largest record accepted, in bytes of its XML. Escaped inside a message it still fits the
/// default 64 KiB frame limit.
pub const MAX_RECORD_BYTES: usize = 32 * 1024;

/// The status a client publishes when it goes offline; any other status counts as online.
pub const STATUS_OFFLINE: &str = "offline";

/// Why a record was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum RecordError {
    /// The record's XML is not a well-formed flat record of the expected kind.
    #[error("malformed {kind} record: {detail}")]
    Malformed {
        /// Record kind (root element name).
        kind: &'static str,
        /// What is wrong.
        detail: String,
    },
    /// A required field is absent.
    #[error("{kind} record is missing <{field}>")]
    MissingField {
        /// Record kind.
        kind: &'static str,
        /// The missing element.
        field: &'static str,
    },
    /// A field holds a value of the wrong shape.
    #[error("{kind} record has an invalid <{field}>: {detail}")]
    InvalidField {
        /// Record kind.
        kind: &'static str,
        /// The element.
        field: String,
        /// What is wrong.
        detail: String,
    },
    /// Larger than [`MAX_RECORD_BYTES`].
    #[error("record of {0} bytes exceeds the {MAX_RECORD_BYTES}-byte limit")]
    TooLarge(usize),
    /// The signature does not verify against the owner's key.
    #[error("record signature does not verify")]
    BadSignature,
    /// The key used is not the key bound to this UserID.
    #[error("record for {uid} is signed with a different key than the one bound to it")]
    KeyMismatch {
        /// Whose record.
        uid: UserId,
    },
}

impl From<CryptoError> for RecordError {
    fn from(_: CryptoError) -> Self {
        RecordError::BadSignature
    }
}

/// A kind of signed record.
pub trait Record: Sized + Send + Sync + 'static {
    /// Root element name, e.g. `UserInfo`.
    const KIND: &'static str;
    /// What signatures over this kind are for (kept apart so one kind's signature can never
    /// pass as another's).
    const DOMAIN: Domain = Domain::Record;
    /// Canonical encoding, produced by the owner before signing.
    fn to_xml(&self) -> String;
    /// Builds the typed view from the parsed fields.
    fn from_fields(fields: Vec<Field>) -> Result<Self, RecordError>;
    /// Whose record this is: the key that must have signed it.
    fn owner(&self) -> UserId;
}

/// Records that servers store and sync, ordered by their event count.
pub trait Versioned: Record {
    /// The record's event count.
    fn event_count(&self) -> EventCount;
}

/// A user's public information, as the spec lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserInfo {
    /// The user's id.
    pub user_id: UserId,
    /// Short display name.
    pub nick_name: String,
    /// Full name.
    pub name: String,
    /// E-mail address.
    pub email: String,
    /// Free-form location ("Cambridge, UK").
    pub location: String,
    /// Home page.
    pub website: String,
    /// Presence: `online`, `away`, `busy`, `offline`, or anything else the client chooses.
    pub status: String,
    /// Free-form status text.
    pub status_message: String,
    /// Where the client accepts direct client-to-client messages, while online.
    pub ip_addr: Option<Ipv6Addr>,
    /// Port for direct messages, while online.
    pub port: Option<u16>,
    /// Version of this record.
    pub event_count: EventCount,
    /// The user's key; immutable once the UserID is bound to it.
    pub public_key: PublicKey,
    /// Fields this version does not know, kept so a newer client's data survives an older
    /// client editing the record (the spec asks to "leave space in database for more fields").
    pub extra: Vec<(String, String)>,
}

impl UserInfo {
    /// A fresh record for `user_id` with every optional field empty and status `offline`.
    pub fn new(user_id: UserId, public_key: PublicKey) -> Self {
        UserInfo {
            user_id,
            nick_name: String::new(),
            name: String::new(),
            email: String::new(),
            location: String::new(),
            website: String::new(),
            status: STATUS_OFFLINE.into(),
            status_message: String::new(),
            ip_addr: None,
            port: None,
            event_count: EventCount::ZERO,
            public_key,
            extra: Vec::new(),
        }
    }

    /// Whether the user presents as reachable (any status but `offline`).
    pub fn is_online(&self) -> bool {
        !self.status.eq_ignore_ascii_case(STATUS_OFFLINE)
    }

    fn text_fields(&self) -> [(&'static str, &str); 8] {
        [
            ("NickName", &self.nick_name),
            ("Name", &self.name),
            ("E-mail", &self.email),
            ("Location", &self.location),
            ("Website", &self.website),
            ("Status", &self.status),
            ("StatusMessage", &self.status_message),
            ("", ""),
        ]
    }
}

fn push_event_count(out: &mut String, ec: EventCount) {
    out.push_str("<EventCount rollover=\"");
    out.push(if ec.rollover { '1' } else { '0' });
    out.push_str("\">");
    out.push_str(&ec.count.to_string());
    out.push_str("</EventCount>");
}

fn parse_event_count(kind: &'static str, f: &Field) -> Result<EventCount, RecordError> {
    let invalid = |detail: String| RecordError::InvalidField {
        kind,
        field: "EventCount".into(),
        detail,
    };
    let count = f
        .text
        .trim()
        .parse::<u32>()
        .map_err(|e| invalid(e.to_string()))?;
    let rollover = match f.attr("rollover").unwrap_or("0") {
        "0" | "false" => false,
        "1" | "true" => true,
        other => return Err(invalid(format!("rollover must be 0 or 1, not {other:?}"))),
    };
    Ok(EventCount::new(count, rollover))
}

fn parse_uid(kind: &'static str, field: &str, text: &str) -> Result<UserId, RecordError> {
    text.parse()
        .map_err(|e: std::num::ParseIntError| RecordError::InvalidField {
            kind,
            field: field.into(),
            detail: e.to_string(),
        })
}

/// Fills `slot` once; a second occurrence of a known field is an error, because two servers
/// could otherwise read different values out of the same signed bytes.
fn once<T>(
    slot: &mut Option<T>,
    kind: &'static str,
    name: &str,
    value: T,
) -> Result<(), RecordError> {
    if slot.replace(value).is_some() {
        return Err(RecordError::InvalidField {
            kind,
            field: name.into(),
            detail: "appears twice".into(),
        });
    }
    Ok(())
}

impl Record for UserInfo {
    const KIND: &'static str = "UserInfo";

    fn to_xml(&self) -> String {
        let mut out = String::with_capacity(256);
        out.push_str("<UserInfo>");
        xml::push_leaf(&mut out, "UserID", &self.user_id.to_string());
        for (name, value) in self.text_fields().iter().filter(|(n, _)| !n.is_empty()) {
            xml::push_leaf(&mut out, name, value);
        }
        let ip = self.ip_addr.map(|ip| ip.to_string()).unwrap_or_default();
        xml::push_leaf(&mut out, "IPaddr", &ip);
        let port = self.port.map(|p| p.to_string()).unwrap_or_default();
        xml::push_leaf(&mut out, "Port", &port);
        push_event_count(&mut out, self.event_count);
        xml::push_leaf(&mut out, "PublicKey", &self.public_key.to_string());
        for (name, value) in &self.extra {
            xml::push_leaf(&mut out, name, value);
        }
        out.push_str("</UserInfo>");
        out
    }

    fn from_fields(fields: Vec<Field>) -> Result<Self, RecordError> {
        const K: &str = "UserInfo";
        let mut uid = None;
        let mut texts: [Option<String>; 7] = Default::default();
        let mut ip = None;
        let mut port = None;
        let mut ec = None;
        let mut key = None;
        let mut extra = Vec::new();
        let invalid = |field: &str, detail: String| RecordError::InvalidField {
            kind: K,
            field: field.into(),
            detail,
        };
        for f in fields {
            let text_slot = [
                "NickName",
                "Name",
                "E-mail",
                "Location",
                "Website",
                "Status",
                "StatusMessage",
            ]
            .iter()
            .position(|n| *n == f.name);
            match (f.name.as_str(), text_slot) {
                (_, Some(i)) => once(&mut texts[i], K, &f.name, f.text)?,
                ("UserID", _) => {
                    let v = parse_uid(K, "UserID", &f.text)?;
                    once(&mut uid, K, "UserID", v)?
                }
                ("IPaddr", _) => {
                    let v = match f.text.trim() {
                        "" => None,
                        t => Some(
                            t.parse::<std::net::IpAddr>()
                                .map(crate::user_id::to_ipv6)
                                .map_err(|e| invalid("IPaddr", e.to_string()))?,
                        ),
                    };
                    once(&mut ip, K, "IPaddr", v)?
                }
                ("Port", _) => {
                    let v = match f.text.trim() {
                        "" => None,
                        t => Some(
                            t.parse::<u16>()
                                .map_err(|e| invalid("Port", e.to_string()))?,
                        ),
                    };
                    once(&mut port, K, "Port", v)?
                }
                ("EventCount", _) => {
                    let v = parse_event_count(K, &f)?;
                    once(&mut ec, K, "EventCount", v)?
                }
                ("PublicKey", _) => {
                    let v = f
                        .text
                        .parse::<PublicKey>()
                        .map_err(|e| invalid("PublicKey", e.to_string()))?;
                    once(&mut key, K, "PublicKey", v)?
                }
                _ => extra.push((f.name, f.text)),
            }
        }
        let [nick_name, name, email, location, website, status, status_message] =
            texts.map(Option::unwrap_or_default);
        Ok(UserInfo {
            user_id: uid.ok_or(RecordError::MissingField {
                kind: K,
                field: "UserID",
            })?,
            nick_name,
            name,
            email,
            location,
            website,
            status,
            status_message,
            ip_addr: ip.flatten(),
            port: port.flatten(),
            event_count: ec.ok_or(RecordError::MissingField {
                kind: K,
                field: "EventCount",
            })?,
            public_key: key.ok_or(RecordError::MissingField {
                kind: K,
                field: "PublicKey",
            })?,
            extra,
        })
    }

    fn owner(&self) -> UserId {
        self.user_id
    }
}

impl Versioned for UserInfo {
    fn event_count(&self) -> EventCount {
        self.event_count
    }
}

/// The people a user wants presence updates about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContactList {
    /// Whose list this is.
    pub owner: UserId,
    /// Version of this list.
    pub event_count: EventCount,
    /// The contacts, without duplicates, in the owner's order.
    pub contacts: Vec<UserId>,
}

impl ContactList {
    /// A list, dropping duplicate contacts (first occurrence kept).
    pub fn new(owner: UserId, event_count: EventCount, contacts: Vec<UserId>) -> Self {
        let mut seen = std::collections::HashSet::with_capacity(contacts.len());
        let contacts = contacts.into_iter().filter(|u| seen.insert(*u)).collect();
        ContactList {
            owner,
            event_count,
            contacts,
        }
    }
}

impl Record for ContactList {
    const KIND: &'static str = "ContactList";

    fn to_xml(&self) -> String {
        let mut out = String::with_capacity(64 + self.contacts.len() * 32);
        out.push_str("<ContactList>");
        xml::push_leaf(&mut out, "UserID", &self.owner.to_string());
        push_event_count(&mut out, self.event_count);
        for c in &self.contacts {
            xml::push_leaf(&mut out, "Contact", &c.to_string());
        }
        out.push_str("</ContactList>");
        out
    }

    fn from_fields(fields: Vec<Field>) -> Result<Self, RecordError> {
        const K: &str = "ContactList";
        let mut owner = None;
        let mut ec = None;
        let mut contacts = Vec::new();
        for f in fields {
            match f.name.as_str() {
                "UserID" => {
                    let v = parse_uid(K, "UserID", &f.text)?;
                    once(&mut owner, K, "UserID", v)?
                }
                "EventCount" => {
                    let v = parse_event_count(K, &f)?;
                    once(&mut ec, K, "EventCount", v)?
                }
                "Contact" => contacts.push(parse_uid(K, "Contact", &f.text)?),
                _ => {}
            }
        }
        Ok(ContactList::new(
            owner.ok_or(RecordError::MissingField {
                kind: K,
                field: "UserID",
            })?,
            ec.ok_or(RecordError::MissingField {
                kind: K,
                field: "EventCount",
            })?,
            contacts,
        ))
    }

    fn owner(&self) -> UserId {
        self.owner
    }
}

impl Versioned for ContactList {
    fn event_count(&self) -> EventCount {
        self.event_count
    }
}

/// A client-to-client text message, signed by the sender so the receiver can check who sent it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChatMessage {
    /// Sender.
    pub from: UserId,
    /// Recipient.
    pub to: UserId,
    /// Sender's clock, milliseconds since the Unix epoch; with `from` it identifies the message,
    /// so a replayed copy can be recognised.
    pub sent_ms: u64,
    /// The text.
    pub text: String,
}

impl Record for ChatMessage {
    const KIND: &'static str = "ChatMessage";
    const DOMAIN: Domain = Domain::Chat;

    fn to_xml(&self) -> String {
        let mut out = String::with_capacity(96 + self.text.len());
        out.push_str("<ChatMessage>");
        xml::push_leaf(&mut out, "From", &self.from.to_string());
        xml::push_leaf(&mut out, "To", &self.to.to_string());
        xml::push_leaf(&mut out, "Sent", &self.sent_ms.to_string());
        xml::push_leaf(&mut out, "Text", &self.text);
        out.push_str("</ChatMessage>");
        out
    }

    fn from_fields(fields: Vec<Field>) -> Result<Self, RecordError> {
        const K: &str = "ChatMessage";
        let (mut from, mut to, mut sent, mut text) = (None, None, None, None);
        for f in fields {
            match f.name.as_str() {
                "From" => {
                    let v = parse_uid(K, "From", &f.text)?;
                    once(&mut from, K, "From", v)?
                }
                "To" => {
                    let v = parse_uid(K, "To", &f.text)?;
                    once(&mut to, K, "To", v)?
                }
                "Sent" => {
                    let v =
                        f.text
                            .trim()
                            .parse::<u64>()
                            .map_err(|e| RecordError::InvalidField {
                                kind: K,
                                field: "Sent".into(),
                                detail: e.to_string(),
                            })?;
                    once(&mut sent, K, "Sent", v)?
                }
                "Text" => once(&mut text, K, "Text", f.text)?,
                _ => {}
            }
        }
        let missing = |field| RecordError::MissingField { kind: K, field };
        Ok(ChatMessage {
            from: from.ok_or(missing("From"))?,
            to: to.ok_or(missing("To"))?,
            sent_ms: sent.ok_or(missing("Sent"))?,
            text: text.unwrap_or_default(),
        })
    }

    fn owner(&self) -> UserId {
        self.from
    }
}

/// Parses a record's XML, checking size and characters first.
pub fn parse_record<T: Record>(raw: &str) -> Result<T, RecordError> {
    if raw.len() > MAX_RECORD_BYTES {
        return Err(RecordError::TooLarge(raw.len()));
    }
    if raw.bytes().any(|b| b < 0x20 || b == 0x7f) {
        return Err(RecordError::Malformed {
            kind: T::KIND,
            detail: "raw control characters (they must be escaped)".into(),
        });
    }
    let fields = xml::parse_flat(raw, T::KIND).map_err(|detail| RecordError::Malformed {
        kind: T::KIND,
        detail,
    })?;
    T::from_fields(fields)
}

struct SignedInner<T> {
    raw: Box<str>,
    signature: Signature,
    value: T,
}

/// A record with the exact bytes its owner signed and the signature over them.
///
/// Cheap to clone (one `Arc`), because one change is fanned out to many connections.
pub struct Signed<T>(Arc<SignedInner<T>>);

impl<T> Clone for Signed<T> {
    fn clone(&self) -> Self {
        Signed(Arc::clone(&self.0))
    }
}

impl<T: Record> Signed<T> {
    /// Encodes and signs `value` with the owner's key. Refuses text fields holding characters
    /// that XML cannot carry.
    pub fn sign(value: T, key: &Keypair) -> Result<Self, RecordError> {
        let raw = value.to_xml();
        if !xml::is_allowed_escaped(&raw) {
            return Err(RecordError::Malformed {
                kind: T::KIND,
                detail: "text contains control characters XML cannot carry".into(),
            });
        }
        if raw.len() > MAX_RECORD_BYTES {
            return Err(RecordError::TooLarge(raw.len()));
        }
        let signature = key.sign(T::DOMAIN, raw.as_bytes());
        Ok(Signed(Arc::new(SignedInner {
            raw: raw.into_boxed_str(),
            signature,
            value,
        })))
    }

    /// Rebuilds a signed record received from the wire or read from disk. Parses the bytes but
    /// does **not** verify the signature: that needs the key bound to the owner, see
    /// [`Signed::verify`].
    pub fn from_parts(raw: impl Into<Box<str>>, signature: Signature) -> Result<Self, RecordError> {
        let raw = raw.into();
        let value = parse_record::<T>(&raw)?;
        Ok(Signed(Arc::new(SignedInner {
            raw,
            signature,
            value,
        })))
    }

    /// Checks the signature against `key`, the key bound to the record's owner.
    pub fn verify(&self, key: &PublicKey) -> Result<(), RecordError> {
        key.verify(T::DOMAIN, self.0.raw.as_bytes(), &self.0.signature)?;
        Ok(())
    }

    /// The exact signed bytes.
    pub fn raw(&self) -> &str {
        &self.0.raw
    }

    /// The owner's signature over [`Signed::raw`].
    pub fn signature(&self) -> &Signature {
        &self.0.signature
    }

    /// The parsed record.
    pub fn value(&self) -> &T {
        &self.0.value
    }
}

impl Signed<UserInfo> {
    /// Verifies a UserInfo against the key it carries. Whether that key is the one *bound* to
    /// the UserID is the store's decision ([`RecordError::KeyMismatch`]).
    pub fn verify_self(&self) -> Result<(), RecordError> {
        self.verify(&self.value().public_key)
    }
}

impl<T: Record> std::ops::Deref for Signed<T> {
    type Target = T;
    fn deref(&self) -> &T {
        self.value()
    }
}

impl<T: Record + fmt::Debug> fmt::Debug for Signed<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Signed").field(self.value()).finish()
    }
}

impl<T: Record> PartialEq for Signed<T> {
    fn eq(&self, other: &Self) -> bool {
        self.raw() == other.raw() && self.signature() == other.signature()
    }
}

impl<T: Record> Eq for Signed<T> {}

/// Wire form of a signed record: `<record sig="hex">escaped record XML</record>`.
#[derive(Serialize)]
struct RecordXmlRef<'a> {
    #[serde(rename = "@sig")]
    sig: &'a Signature,
    #[serde(rename = "$text")]
    raw: &'a str,
}

#[derive(Deserialize)]
struct RecordXml {
    #[serde(rename = "@sig")]
    sig: Signature,
    #[serde(rename = "$text", default)]
    raw: String,
}

impl<T: Record> Serialize for Signed<T> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        RecordXmlRef {
            sig: self.signature(),
            raw: self.raw(),
        }
        .serialize(s)
    }
}

impl<'de, T: Record> Deserialize<'de> for Signed<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let wire = RecordXml::deserialize(d)?;
        Signed::from_parts(wire.raw, wire.sig).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn sample_user(key: &Keypair) -> UserInfo {
        let mut u = UserInfo::new(UserId(42), key.public());
        u.nick_name = "ned".into();
        u.name = "Ned <Nobody> & Co".into();
        u.email = "ned@example.org".into();
        u.location = "Cambridge, UK".into();
        u.status = "online".into();
        u.status_message = "line one\nline two\t'quoted'".into();
        u.ip_addr = Some("::ffff:192.0.2.1".parse().unwrap());
        u.port = Some(4000);
        u.event_count = EventCount::new(7, true);
        u.extra.push(("Password".into(), "ignored by us".into()));
        u
    }

    #[test]
    fn user_info_round_trips() {
        let key = Keypair::generate();
        let u = sample_user(&key);
        let raw = u.to_xml();
        assert!(!raw.bytes().any(|b| b < 0x20), "{raw}");
        assert_eq!(parse_record::<UserInfo>(&raw).unwrap(), u);
    }

    #[test]
    fn contact_list_round_trips_and_dedups() {
        let cl = ContactList::new(
            UserId(1),
            EventCount::new(3, false),
            vec![UserId(5), UserId(2), UserId(5)],
        );
        assert_eq!(cl.contacts, vec![UserId(5), UserId(2)]);
        assert_eq!(parse_record::<ContactList>(&cl.to_xml()).unwrap(), cl);
    }

    #[test]
    fn signature_covers_every_byte() {
        let key = Keypair::generate();
        let signed = Signed::sign(sample_user(&key), &key).unwrap();
        signed.verify_self().unwrap();
        let raw = signed.raw();
        // Flip each byte of the record in turn (where the result still parses).
        for i in 0..raw.len() {
            let mut bytes = raw.as_bytes().to_vec();
            bytes[i] = if bytes[i] == b'1' { b'2' } else { b'1' };
            let Ok(text) = String::from_utf8(bytes) else {
                continue;
            };
            if let Ok(altered) = Signed::<UserInfo>::from_parts(text, *signed.signature()) {
                assert_eq!(
                    altered.verify(&key.public()),
                    Err(RecordError::BadSignature),
                    "byte {i} altered but still verifies"
                );
            }
        }
    }

    #[test]
    fn forged_signature_is_rejected() {
        let owner = Keypair::generate();
        let forger = Keypair::generate();
        // The forger signs a record that claims the owner's key.
        let forged = Signed::sign(sample_user(&owner), &forger).unwrap();
        assert_eq!(forged.verify_self(), Err(RecordError::BadSignature));
    }

    #[test]
    fn control_characters_are_refused_at_signing() {
        let key = Keypair::generate();
        let mut u = sample_user(&key);
        u.nick_name = "bell\u{7}".into();
        assert!(Signed::sign(u, &key).is_err());
    }

    #[test]
    fn missing_and_duplicate_fields() {
        let err = parse_record::<UserInfo>("<UserInfo><UserID>1</UserID></UserInfo>").unwrap_err();
        assert!(
            matches!(
                err,
                RecordError::MissingField {
                    field: "EventCount",
                    ..
                }
            ),
            "{err}"
        );
        let err = parse_record::<ContactList>(
            "<ContactList><UserID>1</UserID><UserID>2</UserID></ContactList>",
        )
        .unwrap_err();
        assert!(matches!(err, RecordError::InvalidField { .. }), "{err}");
        let big = format!(
            "<ContactList>{}</ContactList>",
            "<Contact>1</Contact>".repeat(2000)
        );
        assert!(matches!(
            parse_record::<ContactList>(&big),
            Err(RecordError::TooLarge(_))
        ));
    }

    #[test]
    fn chat_message_round_trips() {
        let m = ChatMessage {
            from: UserId(1),
            to: UserId(2),
            sent_ms: 1_700_000_000_000,
            text: "hi <there> & bye".into(),
        };
        let key = Keypair::generate();
        let s = Signed::sign(m.clone(), &key).unwrap();
        s.verify(&key.public()).unwrap();
        assert_eq!(s.value(), &m);
        // A chat signature is not a record signature: it cannot be passed off as one.
        assert!(key
            .public()
            .verify(Domain::Record, s.raw().as_bytes(), s.signature())
            .is_err());
    }
}
