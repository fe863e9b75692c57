//! The store's reconciliation index: range fingerprints over every stored record, kept up to
//! date on each write, so answering a reconciliation costs O(d log n), never a scan of the
//! database (see [`crate::reconcile`]).
//!
//! The top [`CACHED_LEVELS`] levels of the 16-ary key tree hold running sums (4,369 nodes, 140
//! KB whatever the database size); each of the 4,096 nodes of the lowest cached level also lists
//! the UserIDs in it. A fingerprint below that level is summed from its leaf's UserIDs: at a
//! million users a leaf holds about 250 of them, a scan of microseconds, done only for ranges
//! that differ. A write updates four sums under the store's write lock it already holds.

use gossip_common::message::EcEntry;
use gossip_common::{Signed, UserId, Versioned};

use super::{State, Store};
use crate::reconcile::{item_hash, key, Fingerprint, ItemSource, Items, Node, FANOUT};

/// Levels 0..=3 are summed.
pub(super) const CACHED_LEVELS: u8 = 3;
const LEAVES: usize = 1 << (4 * CACHED_LEVELS as usize);

/// Kind bytes of the item hash.
pub(super) const USER: u8 = b'u';
pub(super) const LIST: u8 = b'c';

/// An item's hash, from the record as stored.
pub(super) fn hash_of<T: Versioned>(kind: u8, uid: UserId, r: &Signed<T>) -> u128 {
    item_hash(kind, uid, r.event_count(), &r.signature().to_bytes())
}

pub(super) struct FpTree {
    /// Level by level: 1 root, 16, 256, 4,096 nodes.
    sums: Vec<Fingerprint>,
    /// Per lowest-level node: its UserIDs, each with the number of its records (1 or 2).
    leaves: Vec<Vec<(UserId, u8)>>,
}

impl Default for FpTree {
    fn default() -> Self {
        FpTree {
            sums: vec![Fingerprint::default(); offset(CACHED_LEVELS + 1)],
            leaves: vec![Vec::new(); LEAVES],
        }
    }
}

/// Index in `sums` of a level's first node.
fn offset(level: u8) -> usize {
    ((1usize << (4 * level as usize)) - 1) / 15
}

impl FpTree {
    pub(super) fn add(&mut self, uid: UserId, hash: u128) {
        let k = key(uid);
        for level in 0..=CACHED_LEVELS {
            self.sums[offset(level) + Node::of(k, level).prefix as usize].add(hash);
        }
        let leaf = &mut self.leaves[Node::of(k, CACHED_LEVELS).prefix as usize];
        match leaf.iter_mut().find(|(u, _)| *u == uid) {
            Some((_, n)) => *n += 1,
            None => leaf.push((uid, 1)),
        }
    }

    pub(super) fn remove(&mut self, uid: UserId, hash: u128) {
        let k = key(uid);
        for level in 0..=CACHED_LEVELS {
            self.sums[offset(level) + Node::of(k, level).prefix as usize].remove(hash);
        }
        let leaf = &mut self.leaves[Node::of(k, CACHED_LEVELS).prefix as usize];
        if let Some(i) = leaf.iter().position(|(u, _)| *u == uid) {
            leaf[i].1 -= 1;
            if leaf[i].1 == 0 {
                leaf.swap_remove(i);
            }
        }
    }

    /// Replaces one item's hash (`old` absent for a new item).
    pub(super) fn replace(&mut self, uid: UserId, old: Option<u128>, new: u128) {
        if let Some(old) = old {
            self.remove(uid, old);
        }
        self.add(uid, new);
    }

    pub(super) fn root(&self) -> Fingerprint {
        self.sums[0]
    }

    fn cached(&self, node: Node) -> Option<Fingerprint> {
        (node.level <= CACHED_LEVELS).then(|| self.sums[offset(node.level) + node.prefix as usize])
    }

    /// The UserIDs in `node`.
    fn uids(&self, node: Node) -> impl Iterator<Item = UserId> + '_ {
        let (first, n) = if node.level <= CACHED_LEVELS {
            let span = 1usize << (4 * (CACHED_LEVELS - node.level) as usize);
            (node.prefix as usize * span, span)
        } else {
            let shift = 4 * u32::from(node.level - CACHED_LEVELS);
            ((node.prefix >> shift) as usize, 1)
        };
        self.leaves[first..first + n]
            .iter()
            .flatten()
            .map(|(u, _)| *u)
            .filter(move |u| node.level <= CACHED_LEVELS || node.contains(key(*u)))
    }
}

impl State {
    /// The hash of everything stored for `uid` (its UserInfo and ContactList).
    fn uid_hashes(&self, uid: UserId, f: &mut Fingerprint) {
        if let Some(s) = self.users.get(&uid) {
            f.add(hash_of(USER, uid, &s.record));
        }
        if let Some(s) = self.lists.get(&uid) {
            f.add(hash_of(LIST, uid, &s.record));
        }
    }
}

impl ItemSource for Store {
    fn fingerprint(&self, node: Node) -> Fingerprint {
        let state = self.state.read();
        if let Some(f) = state.fp.cached(node) {
            return f;
        }
        let mut f = Fingerprint::default();
        for uid in state.fp.uids(node) {
            state.uid_hashes(uid, &mut f);
        }
        f
    }

    fn children(&self, node: Node) -> [Fingerprint; FANOUT] {
        let state = self.state.read();
        if node.level < CACHED_LEVELS {
            return std::array::from_fn(|i| state.fp.cached(node.child(i)).unwrap_or_default());
        }
        // Below the cached levels: one pass over the leaf, each UserID summed into its child.
        let mut out = [Fingerprint::default(); FANOUT];
        for uid in state.fp.uids(node) {
            state.uid_hashes(uid, &mut out[node.child_index(key(uid))]);
        }
        out
    }

    fn items(&self, node: Node) -> Items {
        let state = self.state.read();
        let mut items = Items::default();
        for uid in state.fp.uids(node) {
            if let Some(s) = state.users.get(&uid) {
                items.users.push(EcEntry::new(uid, s.record.event_count()));
            }
            if let Some(s) = state.lists.get(&uid) {
                items.lists.push(EcEntry::new(uid, s.record.event_count()));
            }
        }
        drop(state);
        items.users.sort_unstable_by_key(|e| e.uid);
        items.lists.sort_unstable_by_key(|e| e.uid);
        items
    }
}
