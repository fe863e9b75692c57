//! The keyring: which ed25519 identity key each server name (`host:port`) is bound to, which
//! keys an admin refused, and the admission policy. Pure: claims in, verdicts out; the caller
//! persists it (`servers.keys` in the data directory) and logs.
//!
//! A name is bound to the first key seen for it anywhere (a link's handshake, or a key carried
//! by `addServer`, `serverlist` or a signed row), as a UserID is bound to its first public key,
//! and the binding is kept for good: a different key for a known name is refused. Only this
//! server's admin changes a binding (`prodserver trust`, key rotation), and an admin can pin a
//! key before the server is ever seen, so a name cannot be claimed first by a stranger.
//!
//! Admission: `open` (any server with a valid key may join: the spec's model) or `allowlist`
//! (only listed keys; a listed key still binds its name on first sight). Refused keys are
//! refused in both.

use std::collections::{BTreeMap, BTreeSet};

use gossip_common::PublicKey;
use serde::{Deserialize, Serialize};

use crate::mst::{id_string, ServerId};

/// Who may join the federation through this server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Admission {
    /// Any server with a valid identity key (names still bind to their first key).
    #[default]
    Open,
    /// Only the keys listed in `allowed_keys`.
    Allowlist,
}

/// What the keyring says of a (name, key) claim.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// The name is bound to this key.
    Known,
    /// The name has no key yet: binding this one is allowed.
    FirstSight,
    /// The name is bound to another key.
    Mismatch {
        /// The key it is bound to.
        bound: PublicKey,
    },
    /// An admin refused this key.
    Refused,
    /// Allowlist mode, and this key is not on it.
    NotAllowed,
}

impl Verdict {
    /// Whether the claim may be acted on (bind it if new).
    pub(crate) fn accepted(&self) -> bool {
        matches!(self, Verdict::Known | Verdict::FirstSight)
    }

    /// Why a claim is refused, for logs and admin output.
    pub(crate) fn why(&self) -> &'static str {
        match self {
            Verdict::Known | Verdict::FirstSight => "accepted",
            Verdict::Mismatch { .. } => "its name is bound to another key",
            Verdict::Refused => "its key is refused here",
            Verdict::NotAllowed => "its key is not on this server's allowlist",
        }
    }
}

/// The persisted form.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Saved {
    /// `host:port` → key (hex).
    #[serde(default)]
    bound: BTreeMap<String, String>,
    /// Refused keys (hex).
    #[serde(default)]
    refused: BTreeSet<String>,
}

/// Bindings, refusals and the admission policy.
#[derive(Debug, Default)]
pub(crate) struct Keyring {
    bound: BTreeMap<ServerId, PublicKey>,
    refused: BTreeSet<PublicKey>,
    admission: Admission,
    allowed: BTreeSet<PublicKey>,
    /// Most bindings kept: one per known server at most, so the same bound as the server list.
    max: usize,
}

impl Keyring {
    /// An empty keyring with this policy, keeping at most `max` bindings.
    pub(crate) fn new(admission: Admission, allowed: BTreeSet<PublicKey>, max: usize) -> Keyring {
        Keyring {
            admission,
            allowed,
            max,
            ..Keyring::default()
        }
    }

    /// The verdict on `name` presenting `key`.
    pub(crate) fn check(&self, name: &ServerId, key: &PublicKey) -> Verdict {
        if self.refused.contains(key) {
            return Verdict::Refused;
        }
        if self.admission == Admission::Allowlist && !self.allowed.contains(key) {
            return Verdict::NotAllowed;
        }
        match self.bound.get(name) {
            Some(b) if b == key => Verdict::Known,
            Some(b) => Verdict::Mismatch { bound: *b },
            None => Verdict::FirstSight,
        }
    }

    /// Checks the claim and binds it on first sight (if there is room); returns the verdict
    /// and whether a binding was added (to persist).
    pub(crate) fn claim(&mut self, name: &ServerId, key: &PublicKey) -> (Verdict, bool) {
        let v = self.check(name, key);
        let added = v == Verdict::FirstSight && self.bound.len() < self.max && {
            self.bound.insert(name.clone(), *key);
            true
        };
        (v, added)
    }

    /// The key bound to `name`.
    pub(crate) fn key_of(&self, name: &ServerId) -> Option<&PublicKey> {
        self.bound.get(name)
    }

    /// An admin binds `name` to `key` (pinning it before first sight, or accepting a rotation);
    /// returns the key it replaces.
    pub(crate) fn pin(&mut self, name: &ServerId, key: PublicKey) -> Option<PublicKey> {
        self.refused.remove(&key);
        self.bound
            .insert(name.clone(), key)
            .filter(|old| *old != key)
    }

    /// An admin refuses `key`; returns whether it was new.
    pub(crate) fn refuse(&mut self, key: PublicKey) -> bool {
        self.refused.insert(key)
    }

    /// An admin lifts a refusal; returns whether there was one.
    pub(crate) fn unrefuse(&mut self, key: &PublicKey) -> bool {
        self.refused.remove(key)
    }

    /// Refused keys.
    pub(crate) fn refused(&self) -> impl Iterator<Item = &PublicKey> {
        self.refused.iter()
    }

    /// The admission policy.
    pub(crate) fn admission(&self) -> Admission {
        self.admission
    }

    /// The file form.
    pub(crate) fn to_json(&self) -> String {
        let saved = Saved {
            bound: self
                .bound
                .iter()
                .map(|(k, v)| (id_string(k), v.to_string()))
                .collect(),
            refused: self.refused.iter().map(|k| k.to_string()).collect(),
        };
        serde_json::to_string_pretty(&saved).expect("plain maps serialise")
    }

    /// Loads bindings and refusals from the file form, skipping entries that do not parse
    /// (returned, for the log).
    pub(crate) fn load_json(&mut self, text: &str) -> Result<Vec<String>, serde_json::Error> {
        let saved: Saved = serde_json::from_str(text)?;
        let mut skipped = Vec::new();
        for (name, key) in saved.bound {
            match (crate::mst::parse_id(&name).ok(), key.parse::<PublicKey>()) {
                (Some(n), Ok(k)) => {
                    self.bound.insert(n, k);
                }
                _ => skipped.push(name),
            }
        }
        for key in saved.refused {
            match key.parse::<PublicKey>() {
                Ok(k) => {
                    self.refused.insert(k);
                }
                Err(_) => skipped.push(key),
            }
        }
        Ok(skipped)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use gossip_common::Keypair;

    fn name(n: u16) -> ServerId {
        ("10.0.0.1".into(), n)
    }

    #[test]
    fn a_name_binds_to_its_first_key_and_refuses_another() {
        let (a, b) = (Keypair::generate().public(), Keypair::generate().public());
        let mut ring = Keyring::new(Admission::Open, BTreeSet::new(), 100);
        assert_eq!(ring.claim(&name(1), &a), (Verdict::FirstSight, true));
        assert_eq!(ring.claim(&name(1), &a), (Verdict::Known, false));
        assert_eq!(
            ring.claim(&name(1), &b),
            (Verdict::Mismatch { bound: a }, false)
        );
        assert_eq!(ring.key_of(&name(1)), Some(&a));
        // One key may serve two names (a host with two ports is two servers to the tree).
        assert_eq!(ring.claim(&name(2), &a).0, Verdict::FirstSight);
    }

    #[test]
    fn an_admin_rotates_pins_and_refuses() {
        let (a, b) = (Keypair::generate().public(), Keypair::generate().public());
        let mut ring = Keyring::new(Admission::Open, BTreeSet::new(), 100);
        ring.claim(&name(1), &a);
        assert_eq!(ring.pin(&name(1), b), Some(a));
        assert_eq!(ring.check(&name(1), &b), Verdict::Known);
        assert!(!ring.check(&name(1), &a).accepted());
        // Pinned before first sight: a stranger cannot claim the name first.
        ring.pin(&name(3), a);
        assert!(!ring.claim(&name(3), &b).0.accepted());
        assert!(ring.refuse(b));
        assert_eq!(ring.check(&name(1), &b), Verdict::Refused);
        assert_eq!(ring.check(&name(9), &b), Verdict::Refused);
        assert!(ring.unrefuse(&b));
        assert_eq!(ring.check(&name(1), &b), Verdict::Known);
    }

    #[test]
    fn the_allowlist_admits_only_listed_keys() {
        let (a, b) = (Keypair::generate().public(), Keypair::generate().public());
        let mut ring = Keyring::new(Admission::Allowlist, [a].into(), 100);
        assert_eq!(ring.claim(&name(1), &b).0, Verdict::NotAllowed);
        assert_eq!(ring.claim(&name(1), &a).0, Verdict::FirstSight);
    }

    #[test]
    fn bindings_are_bounded_and_survive_a_reload() {
        let keys: Vec<PublicKey> = (0..4).map(|_| Keypair::generate().public()).collect();
        let mut ring = Keyring::new(Admission::Open, BTreeSet::new(), 3);
        for (i, k) in keys.iter().enumerate() {
            ring.claim(&name(i as u16), k);
        }
        assert_eq!(ring.bound.len(), 3);
        ring.refuse(keys[3]);
        let mut again = Keyring::new(Admission::Open, BTreeSet::new(), 3);
        assert!(again.load_json(&ring.to_json()).unwrap().is_empty());
        assert_eq!(again.bound, ring.bound);
        assert_eq!(again.refused, ring.refused);
    }
}
