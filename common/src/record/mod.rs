//! User records: `UserInfo`, `ContactList` and client-to-client `ChatMessage`, and the
//! [`Signed`] wrapper that carries a record's exact bytes together with the owner's signature.
//!
//! The owner (a client) is the only party that ever *encodes* a record. Servers parse records to
//! read them, but store and forward the owner's bytes verbatim, so re-serialisation can never
//! break a signature and a server admin cannot alter a record without the change being detected.
//!
//! Where things live: the [`Record`] and [`Versioned`] traits, [`RecordError`] and
//! [`parse_record`] here; one module per record kind (`user_info`, `contact_list`,
//! `chat_message`); the [`Signed`] wrapper and its wire form in `signed`; the field
//! encodings the kinds share (event counts, UserIDs, the no-duplicates rule) in `fields`.

mod chat_message;
mod contact_list;
mod fields;
mod signed;
mod user_info;

pub use self::chat_message::ChatMessage;
pub use self::contact_list::ContactList;
pub use self::signed::Signed;
pub use self::user_info::UserInfo;

use crate::crypto::{CryptoError, Domain};
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
