//! [`ContactList`], the people a user wants presence updates about, and its canonical XML.

use super::fields::{once, parse_event_count, parse_uid, push_event_count};
use super::{Record, RecordError, Versioned};
use crate::event_count::EventCount;
use crate::user_id::UserId;
use crate::xml::{self, Field};

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::parse_record;

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
}
