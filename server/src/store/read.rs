//! Reading the store: records, counts, the event-count lists sync starts from, and the
//! database digest. Reads take the state's read lock briefly and copy what they return
//! (records are reference-counted, so a copy is a count).

use std::collections::HashMap;

use gossip_common::message::EcEntry;
use gossip_common::{ContactList, PublicKey, Signed, UserId, UserInfo, Versioned};

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

    /// Waits (at most `limit`) until user `uid`'s record is held here; whether it is. For what
    /// may overtake a new user's first record on another path (a relayed message, a held
    /// will): it waits for the record rather than being refused. Woken by each new user's
    /// store, not by polling.
    pub async fn await_user(&self, uid: UserId, limit: std::time::Duration) -> bool {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            // Made before the check: a user stored between the two still wakes it.
            let added = self.user_added.notified();
            if self.contains_user(uid) {
                return true;
            }
            tokio::select! {
                _ = added => {}
                _ = tokio::time::sleep_until(deadline) => return self.contains_user(uid),
            }
        }
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

    /// The users `query` finds (see [`crate::directory`]), at most `limit`, best first. Bounded
    /// work under the read lock: a search visits at most `directory::MAX_SCAN` entries.
    pub fn search(&self, query: &crate::directory::Query, limit: usize) -> Vec<Signed<UserInfo>> {
        let state = self.state.read();
        let users = &state.users;
        state
            .directory
            .search(query, limit, |u| users.get(&u).map(|s| &*s.record))
            .into_iter()
            .filter_map(|u| users.get(&u).map(|s| s.record.clone()))
            .collect()
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

    /// A digest of the whole database: the root range fingerprint (the wrapping sum of a
    /// 128-bit xxh3 hash of every record's kind, UserID, event count and signature; see
    /// [`crate::reconcile`]) and the record counts. Two servers holding the same records have
    /// equal digests; different records give equal digests only by a 2^-128 accident, which is
    /// what tests and `prodserver status` rely on. Kept up to date on every write, so reading
    /// it costs nothing. Not a security check: a server could fake its own.
    pub fn digest(&self) -> String {
        let state = self.state.read();
        format!(
            "{:032x}-{}-{}",
            state.fp.root().sum,
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
