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
//!
//! Where things live, by protocol area (every type is re-exported here, so
//! `gossip_common::message::X` names each of them):
//! * this module — the envelope ([`Header`], [`Message`]), the [`Body`] enum of every message
//!   type and the encode/decode dispatch over it;
//! * `control` — what every link carries: `ok`, `ping`/`pong`, `disconnect`;
//! * `error` — [`ProtocolError`], [`ErrorCode`] and the `error` message;
//! * `client` — client ↔ server: registration, login, records, contact lists, notices, and
//!   the client ↔ client `txt`;
//! * `federation` — server ↔ server: identities, the server list, RTT rows, sync, UserID locks,
//!   held wills;
//! * `relay` — relayed messages, delivery notices and the mailbox exchange between servers;
//! * `envelope` — the first decoding pass (well-formedness and the envelope attributes);
//! * `generic` — [`GenericMessage`].

mod client;
mod control;
mod envelope;
mod error;
mod federation;
mod generic;
mod relay;

pub use self::client::{
    Authenticate, Challenge, ChallengeResponse, ChangeCl, ContactListMsg, LastWill, NewUser,
    Register, ReqContactList, ReqUserInfo, SearchUsers, ServerMsg, Txt, UserIdGrant, UserInfoMsg,
};
pub use self::control::{Disconnect, Ok, Ping, Pong};
pub use self::error::{Error, ErrorCode, ProtocolError};
pub use self::federation::{
    lock_bytes, unlock_bytes, AddServer, ChangedEntries, DeleteServer, EcEntry, EcList,
    EventCounts, HeldWill, LockResult, LockUid, Reconcile, ReqServerList, RttEntry, ServerAddr,
    ServerIdMsg, ServerList, UnlockUid, UpdateRtts, WillDigest,
};
pub use self::generic::GenericMessage;
pub use self::relay::{Delivered, MailboxDigest, MailboxIds, Relay, Stored};

use std::net::Ipv6Addr;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use self::envelope::Envelope;
use crate::event_count::EventCount;

/// The protocol version this crate speaks.
pub const PROTOCOL_VERSION: u32 = 1;

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
    SearchUsers(SearchUsers) = "searchUsers",
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
    WillDigest(WillDigest) = "willDigest",
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
        xml_safe(out)
    }

    /// Decodes one frame.
    pub fn decode(frame: &[u8]) -> Result<Message, ProtocolError> {
        let xml =
            std::str::from_utf8(frame).map_err(|e| ProtocolError::BadUtf8(e.valid_up_to()))?;
        if let Some(at) = forbidden_char(frame) {
            return Err(ProtocolError::MalformedXml(format!(
                "a character XML does not allow at byte {at} (a control character, U+FFFE or U+FFFF)"
            )));
        }
        let envelope = Envelope::scan(xml)?;
        let header = envelope.header()?;
        let body = Body::decode_as(&envelope.msgtype, xml)?;
        body.check_names()?;
        Ok(Message { header, body })
    }
}

/// Whether XML 1.0 allows `c` in a document (its `Char` production).
fn xml_char(c: u32) -> bool {
    matches!(c, 0x9 | 0xA | 0xD | 0x20..=0xD7FF | 0xE000..=0xFFFD | 0x10000..=0x10FFFF)
}

/// Where `xml` (valid UTF-8) holds a character XML 1.0 does not allow, raw or as a character
/// reference (`&#1;`, `&#x1b;`): a control character other than tab, newline and carriage
/// return, or U+FFFE/U+FFFF; or whitespace as a character reference (`&#9;`). One pass over the bytes; every frame is checked, so such a
/// character can neither reach a parser nor be stored.
fn forbidden_char(xml: &[u8]) -> Option<usize> {
    let mut i = 0;
    while i < xml.len() {
        match xml[i] {
            b'\t' | b'\n' | b'\r' => {}
            b if b < 0x20 => return Some(i),
            0xEF if xml.get(i + 1) == Some(&0xBF)
                && matches!(xml.get(i + 2), Some(0xBE | 0xBF)) =>
            {
                return Some(i)
            }
            b'&' if xml.get(i + 1) == Some(&b'#') => {
                let (digits, radix) = match xml.get(i + 2) {
                    Some(b'x') => (&xml[(i + 3).min(xml.len())..], 16),
                    _ => (&xml[i + 2..], 10),
                };
                let end = digits
                    .iter()
                    .position(|&b| b == b';')
                    .unwrap_or(digits.len());
                let code = std::str::from_utf8(&digits[..end.min(12)])
                    .ok()
                    .and_then(|d| u32::from_str_radix(d, radix).ok());
                // Whitespace by reference is refused too: text is trimmed at its ends as it
                // is read, so a referenced tab there would not survive being sent on.
                if code.is_none_or(|c| !xml_char(c) || matches!(c, 0x9 | 0xA | 0xD | 0x20)) {
                    return Some(i);
                }
            }
            _ => {}
        }
        i += 1;
    }
    None
}

/// `xml` with every character XML 1.0 does not allow replaced by U+FFFD, so that no frame this
/// side encodes is one its peer must refuse. Records cannot hold such characters (they are
/// refused at signing); a message's own text (a notice, an error's explanation) could.
fn xml_safe(xml: String) -> String {
    if xml.chars().all(|c| xml_char(c as u32)) {
        return xml;
    }
    xml.chars()
        .map(|c| if xml_char(c as u32) { c } else { '\u{FFFD}' })
        .collect()
}
