//! [`ChatMessage`], the client-to-client text message signed by its sender (its own signing
//! domain, so it can never pass as a stored record).

use super::fields::{once, parse_uid};
use super::{Record, RecordError};
use crate::crypto::Domain;
use crate::user_id::UserId;
use crate::xml::{self, Field};

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::Keypair;
    use crate::record::Signed;

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
