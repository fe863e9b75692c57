//! [`UserInfo`], a user's public record (presence, contact details, direct address, key), and
//! its canonical XML.

use std::net::Ipv6Addr;

use super::fields::{once, parse_event_count, parse_uid, push_event_count};
use super::{Record, RecordError, Versioned, STATUS_OFFLINE};
use crate::crypto::PublicKey;
use crate::event_count::EventCount;
use crate::user_id::UserId;
use crate::xml::{self, Field};

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

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::crypto::Keypair;
    use crate::record::parse_record;

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
}
