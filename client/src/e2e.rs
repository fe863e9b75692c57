//! End-to-end encryption of relayed messages: Olm (the double ratchet of Signal's design, as
//! Matrix uses it), implemented by `vodozemac`, Matrix's audited Rust implementation. Servers
//! carry and keep only ciphertext (`docs/messaging.md`).
//!
//! Keys. Each user has an Olm account: a Curve25519 identity key and a *fallback* key. Both go
//! in the user's own UserInfo record (extra fields `OlmIdentity` and `OlmFallback`), which the
//! user's ed25519 Gossip key signs and every server replicates and verifies like the rest of
//! the record. Fallback keys rather than one-time keys: every server hands out the same key,
//! so two servers giving it to two senders at once cannot break a session (there is no key to
//! claim). The price, as in Matrix, is that a session's first message depends on a key that is
//! not single-use until the recipient rotates it.
//!
//! Rotation. Once a sender has used the fallback key and it is [`FALLBACK_ROTATION`] (30 days,
//! the servers' mailbox lifetime) old, a new one is made and published; Olm keeps the one
//! before, so a message encrypted to it still opens. It is forgotten at the next rotation, at
//! least 30 days after it stopped being published, when any message made for it has expired
//! from the mailboxes. A stolen device then no longer opens first messages older than that.
//!
//! Authenticity. A pre-key message carries the sender's Curve25519 identity key; the recipient
//! accepts it only if it is the one in the sender's signed UserInfo. The relay envelope is also
//! signed by the sender's ed25519 key. Altered ciphertext fails Olm's MAC; a replayed one finds
//! its message key already used and fails too.
//!
//! State. The account and the sessions are kept by the client, in its message database
//! ([`crate::history`], `messages.db` in the profile, mode 0600), never by a server.

use std::collections::HashMap;
use std::path::Path;

use crate::history::{History, HistoryError};

use gossip_common::{UserId, UserInfo};
use serde::{Deserialize, Serialize};
use vodozemac::olm::{Account, AccountPickle, OlmMessage, Session, SessionConfig, SessionPickle};
use vodozemac::Curve25519PublicKey;

/// The UserInfo field holding the Olm identity key (base64).
pub const IDENTITY_FIELD: &str = "OlmIdentity";
/// The UserInfo field holding the Olm fallback key (base64).
pub const FALLBACK_FIELD: &str = "OlmFallback";

/// How old a used fallback key gets before it is replaced: the servers' mailbox lifetime, so the
/// key before the current one, which Olm keeps, outlives every message made for it.
pub const FALLBACK_ROTATION: std::time::Duration = std::time::Duration::from_secs(30 * 24 * 3600);

/// Why a message could not be encrypted or opened.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum E2eError {
    /// The other user has published no encryption keys (an older client).
    #[error("{0} has not published encryption keys yet (they need a client with encryption)")]
    NoKeys(UserId),
    /// The message is not an Olm message.
    #[error("not an encrypted message")]
    Malformed,
    /// A pre-key message from a key other than the sender's published one.
    #[error("the message was not encrypted by {0}'s published key")]
    WrongSender(UserId),
    /// Olm refused it: altered, replayed, or for a session this client does not have.
    #[error("cannot decrypt: {0}")]
    Decrypt(String),
    /// The state could not be read or written.
    #[error(transparent)]
    Store(#[from] HistoryError),
    /// The saved state does not parse.
    #[error("the saved encryption state is damaged: {0}")]
    Damaged(String),
}

#[derive(Serialize, Deserialize)]
struct Saved {
    account: AccountPickle,
    #[serde(default)]
    sessions: Vec<(u64, SessionPickle)>,
    /// When the current fallback key was made (Unix seconds; 0 in saves from before rotation).
    #[serde(default)]
    fallback_made: u64,
    /// Whether a sender has used the current fallback key.
    #[serde(default)]
    fallback_used: bool,
}

/// A user's Olm account and sessions.
pub struct E2e {
    account: Account,
    sessions: HashMap<UserId, Vec<Session>>,
    fallback_made: u64,
    fallback_used: bool,
    store: History,
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl std::fmt::Debug for E2e {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "E2e({:?})", self.store)
    }
}

/// The Olm keys a UserInfo publishes: (identity, fallback).
pub fn published_keys(u: &UserInfo) -> Option<(Curve25519PublicKey, Curve25519PublicKey)> {
    let field = |name: &str| {
        u.extra
            .iter()
            .find(|(n, _)| n == name)
            .and_then(|(_, v)| Curve25519PublicKey::from_base64(v).ok())
    };
    Some((field(IDENTITY_FIELD)?, field(FALLBACK_FIELD)?))
}

/// Whether `me` carries every one of `keys` (from [`E2e::published`]).
pub fn publishes(me: &UserInfo, keys: &[(String, String)]) -> bool {
    keys.iter()
        .all(|(n, v)| me.extra.iter().any(|(en, ev)| en == n && ev == v))
}

/// Sets `keys` (from [`E2e::published`]) in `me`, other extra fields kept.
pub fn publish_into(me: &mut UserInfo, keys: &[(String, String)]) {
    me.extra.retain(|(n, _)| !keys.iter().any(|(k, _)| k == n));
    me.extra.extend(keys.iter().cloned());
}

impl E2e {
    /// Opens the message database at `path` and loads the account from it, or makes a new
    /// account (with its fallback key) there.
    pub fn open(path: &Path) -> Result<E2e, E2eError> {
        let store = History::open(path)?;
        match store.load_olm()? {
            Some(bytes) => {
                let saved: Saved =
                    serde_json::from_slice(&bytes).map_err(|e| E2eError::Damaged(e.to_string()))?;
                let mut sessions: HashMap<UserId, Vec<Session>> = HashMap::new();
                for (uid, p) in saved.sessions {
                    sessions
                        .entry(UserId(uid))
                        .or_default()
                        .push(Session::from_pickle(p));
                }
                let mut e2e = E2e {
                    account: Account::from_pickle(saved.account),
                    sessions,
                    // A save from before rotation: its key's age counts from now.
                    fallback_made: match saved.fallback_made {
                        0 => unix_now(),
                        t => t,
                    },
                    fallback_used: saved.fallback_used,
                    store,
                };
                e2e.rotate_if_due(unix_now())?;
                Ok(e2e)
            }
            None => {
                let mut account = Account::new();
                // Left "unpublished" in vodozemac's sense, so `fallback_key()` keeps returning
                // it: the UserInfo that publishes it can be rebuilt at any time.
                account.generate_fallback_key();
                let e2e = E2e {
                    account,
                    sessions: HashMap::new(),
                    fallback_made: unix_now(),
                    fallback_used: false,
                    store,
                };
                e2e.save()?;
                Ok(e2e)
            }
        }
    }

    /// The message database the state lives in (the conversation history).
    pub fn history(&self) -> &History {
        &self.store
    }

    /// The keys to publish in the own UserInfo: (field, value) pairs.
    pub fn published(&self) -> Vec<(String, String)> {
        let fallback = self
            .account
            .fallback_key()
            .values()
            .next()
            .map(|k| k.to_base64())
            .unwrap_or_default();
        vec![
            (
                IDENTITY_FIELD.to_owned(),
                self.account.curve25519_key().to_base64(),
            ),
            (FALLBACK_FIELD.to_owned(), fallback),
        ]
    }

    /// Replaces the fallback key if a sender has used it and it is [`FALLBACK_ROTATION`] old
    /// (`now` in Unix seconds); true if it did, and the keys must be published again.
    pub fn rotate_if_due(&mut self, now: u64) -> Result<bool, E2eError> {
        if !self.fallback_used
            || now.saturating_sub(self.fallback_made) < FALLBACK_ROTATION.as_secs()
        {
            return Ok(false);
        }
        // The current key becomes the previous one (still accepted); the one before goes.
        self.account.generate_fallback_key();
        self.fallback_made = now;
        self.fallback_used = false;
        self.save()?;
        Ok(true)
    }

    /// Whether `me` already publishes this account's keys.
    pub fn is_published_in(&self, me: &UserInfo) -> bool {
        publishes(me, &self.published())
    }

    /// `me` with this account's keys set (other extra fields kept).
    pub fn publish_into(&self, me: &mut UserInfo) {
        publish_into(me, &self.published());
    }

    /// Encrypts `plaintext` for `to`, whose signed UserInfo is `theirs`: over the session
    /// with them if there is one, else a new one from their published keys.
    pub fn encrypt(
        &mut self,
        to: UserId,
        theirs: &UserInfo,
        plaintext: &[u8],
    ) -> Result<Vec<u8>, E2eError> {
        let sessions = self.sessions.entry(to).or_default();
        if sessions.is_empty() {
            let (identity, fallback) = published_keys(theirs).ok_or(E2eError::NoKeys(to))?;
            let session = self
                .account
                .create_outbound_session(SessionConfig::version_1(), identity, fallback)
                .map_err(|e| E2eError::Decrypt(e.to_string()))?;
            sessions.push(session);
        }
        let message = sessions[0]
            .encrypt(plaintext)
            .map_err(|e| E2eError::Decrypt(e.to_string()))?;
        self.save()?;
        let (kind, bytes) = message.to_parts();
        let mut out = Vec::with_capacity(1 + bytes.len());
        out.push(kind as u8);
        out.extend_from_slice(&bytes);
        Ok(out)
    }

    /// Decrypts `body` from `from`, whose signed UserInfo is `theirs`.
    pub fn decrypt(
        &mut self,
        from: UserId,
        theirs: &UserInfo,
        body: &[u8],
    ) -> Result<Vec<u8>, E2eError> {
        let (&kind, bytes) = body.split_first().ok_or(E2eError::Malformed)?;
        let message =
            OlmMessage::from_parts(kind as usize, bytes).map_err(|_| E2eError::Malformed)?;
        let sessions = self.sessions.entry(from).or_default();
        let plaintext = match &message {
            OlmMessage::Normal(_) => sessions
                .iter_mut()
                .find_map(|s| s.decrypt(&message).ok())
                .ok_or_else(|| {
                    E2eError::Decrypt(
                        "no session of ours decrypts it (altered or replayed?)".into(),
                    )
                })?,
            OlmMessage::PreKey(pre) => {
                let (identity, _) = published_keys(theirs).ok_or(E2eError::NoKeys(from))?;
                if pre.identity_key() != identity {
                    return Err(E2eError::WrongSender(from));
                }
                if let Some(s) = sessions
                    .iter_mut()
                    .find(|s| s.session_id() == pre.session_id())
                {
                    // A session we have: the message is decrypted by it (a replay fails here).
                    s.decrypt(&message)
                        .map_err(|e| E2eError::Decrypt(e.to_string()))?
                } else {
                    let current = self.account.fallback_key().values().next().copied();
                    let created = self
                        .account
                        .create_inbound_session(SessionConfig::version_1(), identity, pre)
                        .map_err(|e| E2eError::Decrypt(e.to_string()))?;
                    if current == Some(pre.one_time_key()) {
                        self.fallback_used = true;
                    }
                    // The newest session first: replies go over it.
                    sessions.insert(0, created.session);
                    created.plaintext
                }
            }
        };
        if !self.rotate_if_due(unix_now())? {
            self.save()?;
        }
        Ok(plaintext)
    }

    /// Writes the state to the database (one transaction, durable).
    fn save(&self) -> Result<(), E2eError> {
        let saved = Saved {
            account: self.account.pickle(),
            sessions: self
                .sessions
                .iter()
                .flat_map(|(u, ss)| ss.iter().map(move |s| (u.0, s.pickle())))
                .collect(),
            fallback_made: self.fallback_made,
            fallback_used: self.fallback_used,
        };
        let bytes = serde_json::to_vec(&saved).expect("pickles serialise");
        Ok(self.store.save_olm(&bytes)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use gossip_common::Keypair;

    fn user(uid: u64, e2e: &E2e) -> UserInfo {
        let mut u = UserInfo::new(UserId(uid), Keypair::generate().public());
        e2e.publish_into(&mut u);
        u
    }

    #[test]
    fn a_conversation_survives_restarts_and_refuses_replays_and_tampering() {
        let dir = tempfile::tempdir().unwrap();
        let (pa, pb) = (dir.path().join("a.db"), dir.path().join("b.db"));
        let mut alice = E2e::open(&pa).unwrap();
        let mut bob = E2e::open(&pb).unwrap();
        let (ua, ub) = (user(1, &alice), user(2, &bob));
        assert!(alice.is_published_in(&ua) && !alice.is_published_in(&ub));
        let c1 = alice.encrypt(UserId(2), &ub, b"hello bob").unwrap();
        assert!(!c1.windows(9).any(|w| w == b"hello bob"));
        assert_eq!(bob.decrypt(UserId(1), &ua, &c1).unwrap(), b"hello bob");
        // Replayed: refused.
        assert!(bob.decrypt(UserId(1), &ua, &c1).is_err());
        // Restart both sides: the sessions come back from disk.
        let mut alice = E2e::open(&pa).unwrap();
        let mut bob = E2e::open(&pb).unwrap();
        let c2 = bob.encrypt(UserId(1), &ua, b"hi alice").unwrap();
        assert_eq!(alice.decrypt(UserId(2), &ub, &c2).unwrap(), b"hi alice");
        let mut c3 = alice.encrypt(UserId(2), &ub, b"third").unwrap();
        let last = c3.len() - 1;
        c3[last] ^= 1;
        assert!(bob.decrypt(UserId(1), &ua, &c3).is_err(), "altered");
        // A pre-key message from someone else's key, claiming to be Alice: refused.
        let mut mallory = E2e::open(&dir.path().join("m.db")).unwrap();
        let forged = mallory.encrypt(UserId(2), &ub, b"I am alice").unwrap();
        assert!(matches!(
            bob.decrypt(UserId(1), &ua, &forged),
            Err(E2eError::WrongSender(_))
        ));
        let mode =
            std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&pa).unwrap().permissions());
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn a_used_fallback_key_is_rotated_when_old_and_the_one_before_still_opens() {
        let dir = tempfile::tempdir().unwrap();
        let pb = dir.path().join("b.db");
        let mut bob = E2e::open(&pb).unwrap();
        let ub0 = user(2, &bob);
        let month = FALLBACK_ROTATION.as_secs();
        let t0 = bob.fallback_made;
        // Unused: never rotated, however old.
        assert!(!bob.rotate_if_due(t0 + 10 * month).unwrap());
        // Alice uses it; Carol holds Bob's record too, but writes later.
        let mut alice = E2e::open(&dir.path().join("a.db")).unwrap();
        let mut carol = E2e::open(&dir.path().join("c.db")).unwrap();
        let (ua, uc) = (user(1, &alice), user(3, &carol));
        let first = alice.encrypt(UserId(2), &ub0, b"first").unwrap();
        assert_eq!(bob.decrypt(UserId(1), &ua, &first).unwrap(), b"first");
        // Used, but young: kept.
        assert!(!bob.rotate_if_due(t0 + month - 1).unwrap());
        // Used and a month old: replaced, and the state says so after a restart.
        assert!(bob.rotate_if_due(t0 + month).unwrap());
        let ub1 = user(2, &bob);
        assert!(
            !bob.is_published_in(&ub0),
            "a new fallback key is published"
        );
        let bob_reopened = E2e::open(&pb).unwrap();
        assert!(bob_reopened.is_published_in(&ub1));
        drop(bob_reopened);
        // Carol's message, made from the record before the rotation, still opens.
        let late = carol.encrypt(UserId(2), &ub0, b"from the mailbox").unwrap();
        assert_eq!(
            bob.decrypt(UserId(3), &uc, &late).unwrap(),
            b"from the mailbox"
        );
        // That used the previous key, not the current one: no rotation is due for it.
        assert!(!bob.rotate_if_due(t0 + 10 * month).unwrap());
        // The current key used and aged too: the oldest key is gone, and a message made for
        // it no longer opens; the conversation that started on it goes on.
        let mut dave = E2e::open(&dir.path().join("d.db")).unwrap();
        let ud = user(4, &dave);
        let to_current = dave.encrypt(UserId(2), &ub1, b"hi").unwrap();
        assert_eq!(bob.decrypt(UserId(4), &ud, &to_current).unwrap(), b"hi");
        assert!(bob.rotate_if_due(t0 + 2 * month).unwrap());
        let mut erin = E2e::open(&dir.path().join("e.db")).unwrap();
        let ue = user(5, &erin);
        let stale = erin.encrypt(UserId(2), &ub0, b"too late").unwrap();
        assert!(bob.decrypt(UserId(5), &ue, &stale).is_err());
        let more = alice.encrypt(UserId(2), &ub0, b"still talking").unwrap();
        assert_eq!(
            bob.decrypt(UserId(1), &ua, &more).unwrap(),
            b"still talking"
        );
    }
}
