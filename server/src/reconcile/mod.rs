//! Range-based set reconciliation: two servers find the records one holds newer than the other
//! by comparing fingerprints of ranges of the UserID space, recursing only into ranges that
//! differ, instead of sending each other every (UserID, event count) they hold.
//!
//! After Meyer's "Range-Based Set Reconciliation" and hoytech's negentropy, shaped for this
//! data: the ranges are the nodes of a fixed 16-ary tree over a 64-bit *key* (a bijective mix of
//! the UserID, so keys are spread evenly whatever UserIDs are in use), a node's fingerprint is
//! the wrapping sum of its items' 128-bit hashes plus their count, and the store keeps the sums
//! of the top levels up to date on every write ([`crate::store`]), so a reconciliation costs
//! O(d log n) work as well as bytes. An *item* is one stored record: (kind, UserID, event count,
//! signature). Once a range is small, the two sides list their (UserID, event count) pairs for
//! it and apply the event-count merge join of [`crate::sync::to_send`] to that range alone,
//! so the records that cross are exactly those the spec's `eventCounts` exchange would send.
//!
//! This module is the pure protocol: [`Reconciler`] is a state machine fed the peer's entries
//! and asked for its next round; the link driver (`federation::resync`) moves its rounds.
//! Every peer input is bounded: answers must be about ranges this side asked about (once
//! each), rounds and listed items are capped, and a breach aborts the reconciliation (the link
//! then falls back to `eventCounts`).

pub mod wire;

use std::collections::HashSet;

use gossip_common::message::EcEntry;
use gossip_common::{EventCount, UserId};

use crate::sync::to_send;

/// Children per tree node (4 bits of key per level).
pub const FANOUT: usize = 16;
/// The deepest level: a node there is one key.
pub const MAX_LEVEL: u8 = 16;
/// A side lists its items for a differing range once it holds at most this many there;
/// above, it splits the range. Sixteen children of 10 bytes each cost about what 12 items do,
/// and listing saves the rounds of splitting further.
pub const LIST_AT: u64 = 24;
/// Rounds (both directions) one reconciliation may take. The tree is 16 levels deep and each
/// pair of rounds descends at least one, so an honest reconciliation needs at most 36.
pub const MAX_ROUNDS: u32 = 40;
/// Items and wanted UserIDs a peer may list in one reconciliation: each costs a lookup here.
/// Four million is twice the records of a million users; beyond, `eventCounts` is cheaper.
pub const MAX_ITEMS: usize = 4 << 20;

/// The position of a UserID in the reconciliation order: the splitmix64 finaliser, a bijection
/// (so distinct UserIDs never share a key) that spreads sequential UserIDs evenly over the key
/// space, keeping the tree balanced.
pub fn key(uid: UserId) -> u64 {
    let mut z = uid.0;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// An item's 128-bit hash: kind (`b'u'` UserInfo, `b'c'` ContactList), UserID, event count and
/// the record's signature (so two different records claiming one event count still differ).
pub fn item_hash(kind: u8, uid: UserId, ec: EventCount, signature: &[u8]) -> u128 {
    let mut h = xxhash_rust::xxh3::Xxh3::new();
    h.update(&[kind]);
    h.update(&uid.0.to_be_bytes());
    h.update(&ec.count.to_be_bytes());
    h.update(&[u8::from(ec.rollover)]);
    h.update(signature);
    h.digest128()
}

/// A range of the key space: the keys whose top `4 × level` bits are `prefix`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Node {
    /// Depth, 0 (every key) to [`MAX_LEVEL`] (one key).
    pub level: u8,
    /// The keys' top `4 × level` bits.
    pub prefix: u64,
}

impl Node {
    /// The whole key space.
    pub const ROOT: Node = Node {
        level: 0,
        prefix: 0,
    };

    /// A node, if `prefix` fits `level`.
    pub fn new(level: u8, prefix: u64) -> Option<Node> {
        let fits = match level {
            0 => prefix == 0,
            1..=15 => prefix >> (4 * u32::from(level)) == 0,
            MAX_LEVEL => true,
            _ => false,
        };
        fits.then_some(Node { level, prefix })
    }

    /// The node at `level` holding `key`.
    pub fn of(key: u64, level: u8) -> Node {
        let prefix = if level == 0 {
            0
        } else {
            key >> (64 - 4 * u32::from(level))
        };
        Node { level, prefix }
    }

    /// Whether `key` is in this range.
    pub fn contains(self, key: u64) -> bool {
        Node::of(key, self.level) == self
    }

    /// Child `i` (0..16). Not for nodes at [`MAX_LEVEL`].
    pub fn child(self, i: usize) -> Node {
        debug_assert!(self.level < MAX_LEVEL && i < FANOUT);
        Node {
            level: self.level + 1,
            prefix: self.prefix << 4 | i as u64,
        }
    }

    /// Which child of this node `key` falls in. Not for nodes at [`MAX_LEVEL`].
    pub fn child_index(self, key: u64) -> usize {
        (key >> (60 - 4 * u32::from(self.level)) & 0xf) as usize
    }

    /// The smallest and largest key in the range.
    pub fn bounds(self) -> (u64, u64) {
        if self.level == 0 {
            return (0, u64::MAX);
        }
        let shift = 64 - 4 * u32::from(self.level);
        let lo = self.prefix << shift;
        (
            lo,
            lo | u64::MAX.checked_shr(4 * u32::from(self.level)).unwrap_or(0),
        )
    }
}

/// A range's fingerprint: the wrapping sum of its items' hashes, and their number.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Fingerprint {
    /// Sum of [`item_hash`]es.
    pub sum: u128,
    /// Items in the range.
    pub count: u64,
}

impl Fingerprint {
    /// Adds an item.
    pub fn add(&mut self, hash: u128) {
        self.sum = self.sum.wrapping_add(hash);
        self.count += 1;
    }

    /// Takes an item out.
    pub fn remove(&mut self, hash: u128) {
        self.sum = self.sum.wrapping_sub(hash);
        self.count = self.count.saturating_sub(1);
    }

    /// The 64 bits sent on the wire (a mismatch between honest peers goes unnoticed with
    /// probability 2^-64 per comparison; the count is compared too).
    pub fn fp64(&self) -> u64 {
        self.sum as u64
    }
}

/// The (UserID, event count) pairs of a range, each list sorted by UserID.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Items {
    /// UserInfo records.
    pub users: Vec<EcEntry>,
    /// ContactList records.
    pub lists: Vec<EcEntry>,
}

/// What reconciliation needs of a database (the store implements it; tests use a map).
pub trait ItemSource {
    /// The fingerprint of one range.
    fn fingerprint(&self, node: Node) -> Fingerprint;
    /// The fingerprints of a range's 16 children.
    fn children(&self, node: Node) -> [Fingerprint; FANOUT];
    /// The items of a range.
    fn items(&self, node: Node) -> Items;
}

/// One entry of a round.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Entry {
    /// "My fingerprint of this range is…" — only the opening round sends one (the root).
    Fingerprint {
        /// The range.
        node: Node,
        /// [`Fingerprint::fp64`].
        fp: u64,
        /// Items in it.
        count: u64,
    },
    /// "Ours differ here; my fingerprints of its 16 children are…"
    Children {
        /// The range split.
        node: Node,
        /// (fp64, count) per child.
        children: Box<[(u64, u64); FANOUT]>,
    },
    /// "Ours differ here; these are my items in it" (the answer is a [`Entry::Want`]).
    Items {
        /// The range.
        node: Node,
        /// UserInfo (UserID, event count), sorted.
        users: Vec<EcEntry>,
        /// ContactList (UserID, event count), sorted.
        lists: Vec<EcEntry>,
    },
    /// "Send me these records of the range (you hold them newer, or I lack them)."
    Want {
        /// The range the items came from.
        node: Node,
        /// UserInfo records wanted.
        users: Vec<UserId>,
        /// ContactList records wanted.
        lists: Vec<UserId>,
    },
    /// "I hold nothing in this range: send me all of it."
    WantAll {
        /// The range.
        node: Node,
    },
}

impl Entry {
    /// Whether this entry expects an answer (so a round holding one is not the last).
    pub fn asks(&self) -> bool {
        matches!(
            self,
            Entry::Fingerprint { .. } | Entry::Children { .. } | Entry::Items { .. }
        )
    }
}

/// Why a reconciliation was abandoned (the link falls back to `eventCounts`).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Abort {
    /// An answer about a range this side did not ask about, or a second answer about one.
    #[error("peer answered a range it was not asked about (level {}, prefix {:#x})", .0.level, .0.prefix)]
    Unasked(Node),
    /// The opening round was not one root fingerprint.
    #[error("the opening round must be one root fingerprint")]
    BadOpening,
    /// A round that says it asks nothing asked something.
    #[error("a final round carried questions")]
    QuestionsAfterDone,
    /// The peer sent a round after the reconciliation ended.
    #[error("a round after the reconciliation ended")]
    AfterDone,
    /// Over [`MAX_ROUNDS`].
    #[error("more than {MAX_ROUNDS} rounds")]
    TooManyRounds,
    /// Over [`MAX_ITEMS`].
    #[error("more than {MAX_ITEMS} items listed")]
    TooManyItems,
    /// A round's bytes did not decode.
    #[error("undecodable round: {0}")]
    Wire(#[from] wire::WireError),
}

/// What a finished incoming round leads to.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct RoundOut {
    /// The round to send back (`None`: the peer's round was its last, nothing goes back).
    pub entries: Option<Vec<Entry>>,
    /// Whether that round is this side's last (it asks nothing).
    pub done: bool,
    /// UserInfo records to send the peer, sorted, without duplicates.
    pub users: Vec<UserId>,
    /// ContactList records to send the peer, sorted, without duplicates.
    pub lists: Vec<UserId>,
}

/// One side of one reconciliation.
#[derive(Debug, Default)]
pub struct Reconciler {
    /// Ranges whose fingerprint this side's last round sent (answered by children, items or
    /// want-all, or not at all when equal).
    asked_fp: HashSet<Node>,
    /// Ranges whose items this side's last round listed (answered by a want, or not at all).
    asked_items: HashSet<Node>,
    /// The responder, before the opening round.
    awaiting_opening: bool,
    next: Vec<Entry>,
    next_fp: HashSet<Node>,
    next_items: HashSet<Node>,
    send_users: Vec<UserId>,
    send_lists: Vec<UserId>,
    rounds_sent: u32,
    rounds_received: u32,
    items_in: usize,
    done: bool,
}

impl Reconciler {
    /// The initiating side, and its opening round: the root fingerprint.
    pub fn initiate(src: &impl ItemSource) -> (Reconciler, Vec<Entry>) {
        let fp = src.fingerprint(Node::ROOT);
        let mut r = Reconciler::default();
        r.asked_fp.insert(Node::ROOT);
        r.rounds_sent = 1;
        let opening = vec![Entry::Fingerprint {
            node: Node::ROOT,
            fp: fp.fp64(),
            count: fp.count,
        }];
        (r, opening)
    }

    /// The responding side, waiting for the opening round.
    pub fn respond() -> Reconciler {
        Reconciler {
            awaiting_opening: true,
            ..Reconciler::default()
        }
    }

    /// Whether the reconciliation has ended (this side sent or received a final round).
    pub fn is_done(&self) -> bool {
        self.done
    }

    /// Rounds this side sent.
    pub fn rounds_sent(&self) -> u32 {
        self.rounds_sent
    }

    /// Takes the entries of one frame of the peer's current round.
    pub fn receive(&mut self, src: &impl ItemSource, entries: Vec<Entry>) -> Result<(), Abort> {
        if self.done {
            return Err(Abort::AfterDone);
        }
        for entry in entries {
            self.entry(src, entry)?;
        }
        Ok(())
    }

    fn entry(&mut self, src: &impl ItemSource, entry: Entry) -> Result<(), Abort> {
        match entry {
            Entry::Fingerprint { node, fp, count } => {
                if !self.awaiting_opening || node != Node::ROOT {
                    return Err(Abort::BadOpening);
                }
                self.awaiting_opening = false;
                self.compare(src, node, (fp, count), src.fingerprint(node));
            }
            Entry::Children { node, children } => {
                self.take(node, false)?;
                if node.level == MAX_LEVEL {
                    return Err(Abort::Unasked(node));
                }
                let mine = src.children(node);
                for (i, (theirs, mine)) in children.iter().copied().zip(mine).enumerate() {
                    self.compare(src, node.child(i), theirs, mine);
                }
            }
            Entry::Items { node, users, lists } => {
                self.take(node, false)?;
                self.count_items(users.len() + lists.len())?;
                let theirs = Items {
                    users: normalise(node, users),
                    lists: normalise(node, lists),
                };
                let mine = src.items(node);
                self.send_users.extend(to_send(&mine.users, &theirs.users));
                self.send_lists.extend(to_send(&mine.lists, &theirs.lists));
                let users = to_send(&theirs.users, &mine.users);
                let lists = to_send(&theirs.lists, &mine.lists);
                if !users.is_empty() || !lists.is_empty() {
                    self.next.push(Entry::Want { node, users, lists });
                }
            }
            Entry::Want { node, users, lists } => {
                self.take(node, true)?;
                self.count_items(users.len() + lists.len())?;
                let inside = |u: &UserId| node.contains(key(*u));
                self.send_users.extend(users.into_iter().filter(inside));
                self.send_lists.extend(lists.into_iter().filter(inside));
            }
            Entry::WantAll { node } => {
                self.take(node, false)?;
                self.send_all(src, node);
            }
        }
        Ok(())
    }

    /// Compares the peer's fingerprint of `node` with ours and decides what it takes.
    fn compare(
        &mut self,
        src: &impl ItemSource,
        node: Node,
        (fp, count): (u64, u64),
        mine: Fingerprint,
    ) {
        if mine.fp64() == fp && mine.count == count {
            return;
        }
        if count == 0 {
            // The peer holds nothing here: everything of ours is news to it.
            self.send_all(src, node);
        } else if mine.count == 0 {
            self.next.push(Entry::WantAll { node });
        } else if mine.count <= LIST_AT || node.level == MAX_LEVEL {
            let Items { users, lists } = src.items(node);
            self.next.push(Entry::Items { node, users, lists });
            self.next_items.insert(node);
        } else {
            let children = Box::new(src.children(node).map(|f| (f.fp64(), f.count)));
            self.next.push(Entry::Children { node, children });
            self.next_fp.extend((0..FANOUT).map(|i| node.child(i)));
        }
    }

    fn send_all(&mut self, src: &impl ItemSource, node: Node) {
        let Items { users, lists } = src.items(node);
        self.send_users.extend(users.iter().map(|e| e.uid));
        self.send_lists.extend(lists.iter().map(|e| e.uid));
    }

    /// Checks that `node` was asked about (by fingerprint, or by items) and takes it, so each
    /// question gets at most one answer.
    fn take(&mut self, node: Node, items: bool) -> Result<(), Abort> {
        let asked = if items {
            &mut self.asked_items
        } else {
            &mut self.asked_fp
        };
        if asked.remove(&node) {
            Ok(())
        } else {
            Err(Abort::Unasked(node))
        }
    }

    fn count_items(&mut self, n: usize) -> Result<(), Abort> {
        self.items_in = self.items_in.saturating_add(n);
        if self.items_in > MAX_ITEMS {
            return Err(Abort::TooManyItems);
        }
        Ok(())
    }

    /// The peer's round ended (`peer_done`: it said the round asks nothing). Returns this side's
    /// answer and the records to send.
    pub fn end_round(&mut self, peer_done: bool) -> Result<RoundOut, Abort> {
        if self.done {
            return Err(Abort::AfterDone);
        }
        if self.awaiting_opening {
            return Err(Abort::BadOpening);
        }
        self.rounds_received += 1;
        let mut out = RoundOut {
            users: take_sorted(&mut self.send_users),
            lists: take_sorted(&mut self.send_lists),
            ..RoundOut::default()
        };
        if peer_done {
            // A last round holds only wants: anything that needs an answer is a lie.
            if !self.next.is_empty() {
                return Err(Abort::QuestionsAfterDone);
            }
            self.done = true;
            return Ok(out);
        }
        if self.rounds_sent + self.rounds_received >= MAX_ROUNDS {
            return Err(Abort::TooManyRounds);
        }
        self.asked_fp = std::mem::take(&mut self.next_fp);
        self.asked_items = std::mem::take(&mut self.next_items);
        let entries = std::mem::take(&mut self.next);
        out.done = !entries.iter().any(Entry::asks);
        self.done = out.done;
        self.rounds_sent += 1;
        out.entries = Some(entries);
        Ok(out)
    }
}

fn take_sorted(v: &mut Vec<UserId>) -> Vec<UserId> {
    let mut v = std::mem::take(v);
    v.sort_unstable();
    v.dedup();
    v
}

/// A peer's item list restricted to its range, sorted by UserID, one entry per UserID (the
/// merge join needs that; an honest peer sends it so already).
fn normalise(node: Node, mut items: Vec<EcEntry>) -> Vec<EcEntry> {
    items.retain(|e| node.contains(key(e.uid)));
    items.sort_unstable_by_key(|e| e.uid);
    items.dedup_by_key(|e| e.uid);
    items
}

#[cfg(test)]
mod tests;
