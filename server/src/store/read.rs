//! Reading the store: records, counts, the event-count lists sync starts from, and the
//! database digest. Reads take the state's read lock briefly and copy what they return
//! (records are reference-counted, so a copy is a count).

use std::collections::HashMap;

use gossip_common::message::EcEntry;
use gossip_common::{
    ContactList, EventCount, PublicKey, Signature, Signed, UserId, UserInfo, Versioned,
};

use super::{Store, Stored};

impl Store {
    /// The stored UserInfo of `uid`.
    pub fn user(&self, uid: UserId) -> Option<Signed<UserInfo>> {
        self.state.read().users.get(&uid).map(|s| s.record.clone())
    }

    /// The key bound to `uid`.
    pub fn public_key(&self, uid: UserId) -> Option<PublicKey> {
        self.state
            .read()
            .users
            .get(&uid)
            .map(|s| s.record.public_key)
    }

    /// The stored ContactList of `uid`.
    pub fn contact_list(&self, uid: UserId) -> Option<Signed<ContactList>> {
        self.state.read().lists.get(&uid).map(|s| s.record.clone())
    }

    /// Whether `uid` is bound to a key here.
    pub fn contains_user(&self, uid: UserId) -> bool {
        self.state.read().users.contains_key(&uid)
    }

    /// Number of UserInfo records.
    pub fn user_count(&self) -> usize {
        self.state.read().users.len()
    }

    /// Number of ContactList records.
    pub fn list_count(&self) -> usize {
        self.state.read().lists.len()
    }

    /// Every UserInfo event count, sorted by UserID (for `eventCounts`).
    pub fn user_event_counts(&self) -> Vec<EcEntry> {
        sorted_counts(&self.state.read().users)
    }

    /// Every ContactList event count, sorted by UserID.
    pub fn list_event_counts(&self) -> Vec<EcEntry> {
        sorted_counts(&self.state.read().lists)
    }

    /// Every stored UserInfo (snapshot; clones are reference-counted).
    pub fn all_users(&self) -> Vec<Signed<UserInfo>> {
        self.state
            .read()
            .users
            .values()
            .map(|s| s.record.clone())
            .collect()
    }

    /// A digest of the whole database (UserIDs, event counts, signatures): a 128-bit hash
    /// (xxh3-128) and the record counts. Two servers holding the same records have equal
    /// digests; different records give equal digests only by a 2^-128 accident, which is what
    /// tests and `prodserver status` rely on (a 32-bit CRC made that a real chance at a
    /// million records). Not a security check: a server could fake its own.
    pub fn digest(&self) -> String {
        let state = self.state.read();
        let mut h = xxhash_rust::xxh3::Xxh3::new();
        for (tag, entries) in [
            (b'u', collect_sigs(&state.users)),
            (b'c', collect_sigs(&state.lists)),
        ] {
            for (uid, ec, sig) in entries {
                h.update(&[tag]);
                h.update(&uid.0.to_be_bytes());
                h.update(&ec.count.to_be_bytes());
                h.update(&[u8::from(ec.rollover)]);
                h.update(&sig.to_bytes());
            }
        }
        format!(
            "{:032x}-{}-{}",
            h.digest128(),
            state.users.len(),
            state.lists.len()
        )
    }
}

pub(super) fn sorted_counts<T: Versioned>(map: &HashMap<UserId, Stored<T>>) -> Vec<EcEntry> {
    let mut v: Vec<EcEntry> = map
        .iter()
        .map(|(uid, s)| EcEntry::new(*uid, s.record.event_count()))
        .collect();
    v.sort_unstable_by_key(|e| e.uid);
    v
}

pub(super) fn collect_sigs<T: Versioned>(
    map: &HashMap<UserId, Stored<T>>,
) -> Vec<(UserId, EventCount, Signature)> {
    let mut v: Vec<_> = map
        .iter()
        .map(|(uid, s)| (*uid, s.record.event_count(), *s.record.signature()))
        .collect();
    v.sort_unstable_by_key(|e| e.0);
    v
}
