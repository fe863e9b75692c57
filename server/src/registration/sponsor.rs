//! Registration certificates: every new user has a sponsor, and every sponsor a budget.
//!
//! Anyone may run a server, and a server may create users: before this, one member created
//! 260,319 valid, correctly signed users in a minute, and every honest server stored them all.
//! Now the server that registers a user signs a certificate — its name, the time, the UserID and
//! the user's key — that the client puts in its first record (the UserInfo field `Sponsor`:
//! `host:port issued key signature`) and keeps in every later one, so it travels with every
//! copy of the record. A server that meets a UserID it does not hold admits it only if
//! the certificate verifies against the key bound to the sponsor's name, and only
//! [`Sponsors::per_minute`] a minute per sponsoring key (with a burst of ten minutes' worth). The
//! rest are refused for now, logged and counted; the link-up and repair exchanges offer them
//! again, so an honest server's burst of registrations is delayed, never lost.
//!
//! Users from before certificates (a UserID whose registration second is before
//! [`CUTOFF`], 2026-12-02) are admitted without one, by a budget per peer server large enough
//! for a new server's first sync of a large federation ([`LEGACY`]). A UserID from after it
//! without a certificate is refused.

use gossip_common::{PublicKey, Signed, UserId, UserInfo};
use parking_lot::Mutex;
use std::sync::Arc;
use tokio::time::Instant;

use crate::federation::Federation;
use crate::mst::{id_string, parse_id, ServerId};
use crate::ratelimit::{Limiter, Rate};

/// The UserInfo field that carries the certificate.
pub const FIELD: &str = "Sponsor";

/// Registration seconds (since 2000, the high 32 bits of a UserID) before which a user may
/// have no certificate: 2026-12-02 00:00 UTC, when certificates began.
pub const CUTOFF: u64 = 849_484_800;

/// Users without a certificate (from before [`CUTOFF`]) one peer may bring: a new server's
/// first sync of a federation of a million users, then a thousand a minute.
pub const LEGACY: Rate = Rate {
    burst: 1_000_000.0,
    per_second: 1_000.0 / 60.0,
};

/// Sponsors (and peers) whose budget is tracked at once.
const TRACKED: usize = crate::federation::MAX_SERVERS;

/// The bytes a sponsor signs (domain `ServerControl`).
pub fn certificate_bytes(uid: UserId, user: &PublicKey, server: &str, issued: u64) -> Vec<u8> {
    format!("sponsor\n{}\n{user}\n{server}\n{issued}\n", uid.0).into_bytes()
}

/// A certificate as the `Sponsor` field carries it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Certificate {
    /// The registering server.
    pub server: ServerId,
    /// When it registered the user (Unix seconds).
    pub issued: u64,
    /// Its identity key (hex).
    pub key: String,
    /// Its signature (hex).
    pub sig: String,
}

impl Certificate {
    /// Parses `host:port issued key signature`.
    pub fn parse(text: &str) -> Option<Certificate> {
        let mut parts = text.split_ascii_whitespace();
        let server = parse_id(parts.next()?).ok()?;
        let issued = parts.next()?.parse().ok()?;
        let key = parts.next()?.to_owned();
        let sig = parts.next()?.to_owned();
        parts.next().is_none().then_some(Certificate {
            server,
            issued,
            key,
            sig,
        })
    }

    /// The field's text.
    pub fn to_text(&self) -> String {
        format!(
            "{} {} {} {}",
            id_string(&self.server),
            self.issued,
            self.key,
            self.sig
        )
    }
}

/// The certificate in `record`, if it has a `Sponsor` field.
pub fn of(record: &UserInfo) -> Option<&str> {
    record
        .extra
        .iter()
        .find(|(name, _)| name == FIELD)
        .map(|(_, v)| v.as_str())
}

/// Why a new user from a peer was not admitted (now).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum NotAdmitted {
    /// Its certificate does not parse or verify, or is for another UserID or key.
    #[error("its registration certificate does not verify")]
    BadCertificate,
    /// Registered after certificates began, without one.
    #[error("registered without a registration certificate")]
    Unsponsored,
    /// Its sponsor (or, for an old user, the peer) is over its budget: offered again later.
    #[error("its sponsor is over its budget of new users; deferred")]
    OverBudget,
}

/// Issues certificates for this server's registrations and admits peers' new users.
pub struct Sponsors {
    federation: Arc<Federation>,
    /// New users admitted per sponsoring key.
    budget: Mutex<Limiter<PublicKey>>,
    /// Old, uncertified users admitted per peer.
    legacy: Mutex<Limiter<ServerId>>,
    per_minute: f64,
}

impl Sponsors {
    /// Admits `per_minute` new users a minute per sponsor, with a burst of ten minutes' worth.
    pub(crate) fn new(federation: Arc<Federation>, per_minute: f64) -> Sponsors {
        let rate = Rate {
            burst: per_minute * 10.0,
            per_second: per_minute / 60.0,
        };
        Sponsors {
            federation,
            budget: Mutex::new(Limiter::new(rate, TRACKED)),
            legacy: Mutex::new(Limiter::new(LEGACY, TRACKED)),
            per_minute,
        }
    }

    /// New users admitted a minute per sponsor.
    pub fn per_minute(&self) -> f64 {
        self.per_minute
    }

    /// The certificate for this server's registration of `uid` with key `user`, as the
    /// `Sponsor` field's text.
    pub(crate) fn certify(&self, uid: UserId, user: &PublicKey) -> String {
        let me = id_string(self.federation.me());
        let issued = super::unix_now();
        let (key, sig) = self
            .federation
            .sign_statement(&certificate_bytes(uid, user, &me, issued));
        Certificate {
            server: self.federation.me().clone(),
            issued,
            key,
            sig,
        }
        .to_text()
    }

    /// Whether `record` carries a certificate this server issued for its UserID and key (what
    /// a client must put in its first record).
    pub(crate) fn is_ours(&self, record: &UserInfo) -> bool {
        let Some(cert) = of(record).and_then(Certificate::parse) else {
            return false;
        };
        cert.server == *self.federation.me()
            && self
                .federation
                .verify_statement(
                    &cert.server,
                    None,
                    &certificate_bytes(
                        record.user_id,
                        &record.public_key,
                        &id_string(&cert.server),
                        cert.issued,
                    ),
                    Some(&cert.sig),
                )
                .is_ok()
    }

    /// The certificate `text` of `record`, checked: its server and the key that signed it.
    fn verified(
        &self,
        record: &UserInfo,
        text: &str,
    ) -> Result<(Certificate, PublicKey), NotAdmitted> {
        let cert = Certificate::parse(text).ok_or(NotAdmitted::BadCertificate)?;
        let bytes = certificate_bytes(
            record.user_id,
            &record.public_key,
            &id_string(&cert.server),
            cert.issued,
        );
        let sponsor = self
            .federation
            .verify_statement(&cert.server, Some(&cert.key), &bytes, Some(&cert.sig))
            .map_err(|_| NotAdmitted::BadCertificate)?;
        Ok((cert, sponsor))
    }

    /// Which origin a user's mail counts against (`mailbox::MAX_BYTES_PER_ORIGIN`): a tag of
    /// the key that sponsored their registration, checked here (a user cannot name another
    /// server's key: the certificate binds their UserID and key), or
    /// [`crate::mailbox::UNCERTIFIED`].
    pub(crate) fn origin_of(&self, record: &UserInfo) -> crate::mailbox::Origin {
        of(record)
            .and_then(|text| self.verified(record, text).ok())
            .map_or(crate::mailbox::UNCERTIFIED, |(_, key)| {
                xxhash_rust::xxh3::xxh3_64(key.as_bytes()) | 1
            })
    }

    /// Whether a record of a UserID this server does not hold, from `peer`, may be stored:
    /// certified by a sponsor within its budget, or from before certificates within the peer's.
    pub(crate) fn admit(
        &self,
        record: &Signed<UserInfo>,
        peer: &ServerId,
    ) -> Result<(), NotAdmitted> {
        let now = Instant::now();
        let Some(text) = of(record) else {
            if (record.user_id.0 >> 32) >= CUTOFF {
                return Err(NotAdmitted::Unsponsored);
            }
            return self
                .legacy
                .lock()
                .take(peer, now)
                .map_err(|_| NotAdmitted::OverBudget);
        };
        // A sponsor over its budget is refused before its certificate is checked: a flood
        // past the budget costs the parse, not a signature check per user. (Peeking at the
        // key the certificate claims spends nothing: only a verified certificate takes a
        // token.)
        if let Some(claimed) =
            Certificate::parse(text).and_then(|c| c.key.parse::<PublicKey>().ok())
        {
            if !self.budget.lock().has_token(&claimed, now) {
                return Err(NotAdmitted::OverBudget);
            }
        }
        let (cert, sponsor) = self.verified(record, text)?;
        if cert.server == *self.federation.me() {
            return Ok(()); // our own registration, back from a peer
        }
        self.budget
            .lock()
            .take(&sponsor, now)
            .map_err(|_| NotAdmitted::OverBudget)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_certificate_reads_back_and_names_a_server() {
        let c = Certificate {
            server: ("a.example".into(), 1024),
            issued: 1_795_430_400,
            key: "ab".repeat(32),
            sig: "cd".repeat(64),
        };
        assert_eq!(Certificate::parse(&c.to_text()), Some(c));
        assert_eq!(Certificate::parse("a.example:1024 12 k"), None);
        assert_eq!(Certificate::parse("not a server 12 k s"), None);
        assert_eq!(Certificate::parse("a.example:1024 12 k s extra"), None);
    }
}
