//! Who named which server that never showed itself. A peer's `addServer` and `serverlist` can
//! name servers nobody has heard from; each introducing key may have at most
//! [`MAX_INTRODUCED`] of those at a time, so one stranger's key introduces a handful of names,
//! not thousands. A name stops counting against its introducer once it shows it exists (a
//! signed row, a link, an answered probe, an admin) or is forgotten. Pure bookkeeping.

use std::collections::{BTreeSet, HashMap};

use gossip_common::PublicKey;

use crate::mst::ServerId;

/// Unproven servers one key may have introduced at once. Honest servers rarely name more than
/// a few servers nobody has shown yet (a joining server's list arrives with every listed
/// server's signed row, which proves it); the rest is learned from rows.
pub(crate) const MAX_INTRODUCED: usize = 16;

/// The unproven servers each key introduced.
#[derive(Debug, Default)]
pub(crate) struct Introductions {
    by_key: HashMap<PublicKey, BTreeSet<ServerId>>,
    of: HashMap<ServerId, PublicKey>,
}

impl Introductions {
    /// Whether `by` may introduce one more unproven server.
    pub(crate) fn admits(&self, by: &PublicKey) -> bool {
        self.count(by) < MAX_INTRODUCED
    }

    /// How many unproven servers `by` introduced.
    pub(crate) fn count(&self, by: &PublicKey) -> usize {
        self.by_key.get(by).map_or(0, BTreeSet::len)
    }

    /// `s` was learned on `by`'s word.
    pub(crate) fn record(&mut self, s: ServerId, by: PublicKey) {
        self.by_key.entry(by).or_default().insert(s.clone());
        self.of.insert(s, by);
    }

    /// `s` showed it exists, or was forgotten: it no longer counts against its introducer.
    pub(crate) fn settle(&mut self, s: &ServerId) {
        if let Some(by) = self.of.remove(s) {
            if let Some(set) = self.by_key.get_mut(&by) {
                set.remove(s);
                if set.is_empty() {
                    self.by_key.remove(&by);
                }
            }
        }
    }
}
