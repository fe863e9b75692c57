//! [`Signed`]: a record together with the exact bytes its owner signed and the signature over
//! them, and its wire form `<record sig="hex">escaped record XML</record>`. Servers store and
//! forward these bytes verbatim; only the owner ever encodes a record.

use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::{parse_record, Record, RecordError, UserInfo, MAX_RECORD_BYTES};
use crate::crypto::{Keypair, PublicKey, Signature};
use crate::xml;

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
    use crate::record::user_info::tests::sample_user;

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
}
