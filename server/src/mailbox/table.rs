//! The held messages, pure: no I/O, time passed in. Every bound of the mailbox is kept here.
//!
//! A held message is kept in memory as its envelope and where its line lies in `mailbox.log`
//! ([`Place`]): its body and signature are read back from the file when it is sent on. Until
//! the writer has appended its line, the whole message is held ([`Place::Pending`]).

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};

use gossip_common::message::{Delivered, Relay};
use gossip_common::UserId;

use super::{
    id_hash, Digest, Refused, Sender, MAX_BODY, MAX_BYTES, MAX_BYTES_PER_ORIGIN,
    MAX_BYTES_PER_RECIPIENT, MAX_BYTES_PER_SENDER, MAX_GONE, MAX_HELD, MAX_PER_RECIPIENT,
    MAX_PER_STRANGER, MAX_STRANGERS_PER_RECIPIENT, MAX_STRANGER_BYTES_PER_RECIPIENT, TTL,
};

/// A message id (32 lowercase hex digits) as a number: 16 bytes, not a 56-byte string.
pub type Id = u128;

/// The id `text` names, if it is 32 lowercase hex digits (the only ids a message may have).
pub fn parse_id(text: &str) -> Option<Id> {
    let hex = text.len() == 32
        && text
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    hex.then(|| Id::from_str_radix(text, 16).ok()).flatten()
}

/// `id` as its text (the inverse of [`parse_id`]).
pub fn id_text(id: Id) -> String {
    format!("{id:032x}")
}

/// Which server's users a message's sender is one of, for the per-origin byte bound: a tag
/// of the key that sponsored the sender's registration, or [`UNCERTIFIED`].
pub type Origin = u64;

/// The origin of senders without a registration certificate (users from before
/// certificates): they share one origin's room.
pub const UNCERTIFIED: Origin = 0;

/// Where a held message's body is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Place {
    /// In memory, whole, until the writer appends its line.
    Pending(Box<Relay>),
    /// In `mailbox.log`: its line's first byte and length.
    Disk {
        /// Where the line starts.
        offset: u64,
        /// Its bytes, newline included.
        len: u32,
    },
}

/// A held message's envelope: what every bound and lookup needs, without its body.
#[derive(Debug, Clone)]
pub struct Held {
    /// The sender.
    pub from: UserId,
    /// The recipient.
    pub to: UserId,
    /// The sender's clock when sent, ms since the Unix epoch.
    pub sent: u64,
    /// Bytes of its body (base64).
    pub len: u32,
    /// The sender's origin, whose bytes it counts against.
    pub origin: Origin,
    /// Whether it takes a share of the recipient's room for strangers.
    pub stranger: bool,
    /// Where its body is.
    pub place: Place,
}

impl Held {
    /// `r`'s envelope from `sender` of `origin`, its body at `place`.
    fn of(r: &Relay, (sender, origin): (Sender, Origin), place: Place) -> Held {
        Held {
            from: r.from,
            to: r.to,
            sent: r.sent,
            len: r.body.len() as u32,
            origin,
            stranger: sender == Sender::Stranger,
            place,
        }
    }
}

/// The held messages (pure: no I/O, time passed in).
#[derive(Default)]
pub struct MailTable {
    by_id: HashMap<Id, Held>,
    /// [`Digest::sum`] of `by_id`.
    sum: u128,
    /// Recipient → ids in arrival order.
    by_to: HashMap<UserId, Vec<Id>>,
    bytes_to: HashMap<UserId, usize>,
    /// Bytes of bodies held, all together, per sender and per origin.
    bytes: usize,
    bytes_from: HashMap<UserId, usize>,
    bytes_origin: HashMap<Origin, usize>,
    /// What messages from strangers (senders not in the recipient's contacts) take of each
    /// recipient's room (messages, bytes), and per sender and recipient.
    strangers_to: HashMap<UserId, (usize, usize)>,
    stranger_pairs: HashMap<(UserId, UserId), usize>,
    /// Delivered ids, oldest first.
    gone: BTreeMap<u64, Id>,
    /// Delivered ids, with their signed notice when known (to hand a peer that still holds
    /// the message: see [`MailTable::notice`]).
    gone_set: HashMap<Id, Option<Delivered>>,
    gone_seq: u64,
    /// [`Digest::delivered`] and [`Digest::delivered_sum`] of `gone_set`.
    noticed: u64,
    noticed_sum: u128,
    /// Delivery notices for senders who were not here to be told, with when they were made.
    receipts: HashMap<UserId, VecDeque<(u64, Delivered)>>,
}

/// Delivery notices kept per sender (the oldest are dropped past it).
pub const MAX_RECEIPTS_PER_SENDER: usize = 1_000;

/// What a rewrite of `mailbox.log` must write: every held message's place, the known
/// notices, the kept receipts (see [`MailTable::snapshot`]).
pub struct Snapshot {
    /// Every held message.
    pub messages: Vec<(Id, Held)>,
    /// The known delivery notices, oldest first.
    pub notices: Vec<Delivered>,
    /// The kept receipts, with when they were made.
    pub receipts: Vec<(u64, Delivered)>,
}

fn give_back<K: std::hash::Hash + Eq>(map: &mut HashMap<K, usize>, key: K, n: usize) {
    if let Some(v) = map.get_mut(&key) {
        *v -= n;
        if *v == 0 {
            map.remove(&key);
        }
    }
}

impl MailTable {
    /// [`Self::put_as`] for a message from a contact of an uncertified origin (tests, and
    /// lines from before origins were kept).
    pub fn put(&mut self, r: Relay, now_ms: u64) -> Result<bool, Refused> {
        self.put_as(r, now_ms, Sender::Contact, UNCERTIFIED)
    }

    /// Takes `r` from `sender` (of `origin`) if it is new, within bounds and not expired at
    /// `now_ms`; held whole until [`Self::on_disk`]. `Ok(false)`: already held or already
    /// delivered. The bounds: the body's size, the server's messages and bytes, the sender's
    /// and the origin's bytes, the recipient's messages and bytes, and for a stranger (not in
    /// the recipient's contacts) the strangers' share of the recipient's room and the share of
    /// each stranger: whatever strangers send, most of a recipient's room stays free for their
    /// contacts.
    pub fn put_as(
        &mut self,
        r: Relay,
        now_ms: u64,
        sender: Sender,
        origin: Origin,
    ) -> Result<bool, Refused> {
        let Some(id) = self.admits(&r, now_ms, sender, origin)? else {
            return Ok(false);
        };
        let mut held = Held::of(&r, (sender, origin), Place::Disk { offset: 0, len: 0 });
        held.place = Place::Pending(Box::new(r));
        self.insert(id, held);
        Ok(true)
    }

    /// Takes `r` as [`Self::put_as`] does, its line already in the file at `place` (a log
    /// being replayed).
    pub fn restore(
        &mut self,
        r: &Relay,
        now_ms: u64,
        (sender, origin): (Sender, Origin),
        place: Place,
    ) -> Result<bool, Refused> {
        let Some(id) = self.admits(r, now_ms, sender, origin)? else {
            return Ok(false);
        };
        self.insert(id, Held::of(r, (sender, origin), place));
        Ok(true)
    }

    /// Checks every bound for `r`; `Ok(None)`: known already.
    fn admits(
        &self,
        r: &Relay,
        now_ms: u64,
        sender: Sender,
        origin: Origin,
    ) -> Result<Option<Id>, Refused> {
        let id = parse_id(&r.id).ok_or(Refused::BadId)?;
        if r.body.len() > MAX_BODY {
            return Err(Refused::TooLarge);
        }
        let ttl = TTL.as_millis() as u64;
        if r.sent + ttl < now_ms || r.sent > now_ms + ttl {
            return Err(Refused::Expired);
        }
        if self.by_id.contains_key(&id) || self.gone_set.contains_key(&id) {
            return Ok(None);
        }
        let len = r.body.len();
        if self.by_id.len() >= MAX_HELD || self.bytes + len > MAX_BYTES {
            return Err(Refused::Full);
        }
        if self.bytes_from.get(&r.from).copied().unwrap_or(0) + len > MAX_BYTES_PER_SENDER {
            return Err(Refused::SenderFull);
        }
        if self.bytes_origin.get(&origin).copied().unwrap_or(0) + len > MAX_BYTES_PER_ORIGIN {
            return Err(Refused::OriginFull);
        }
        let n = self.by_to.get(&r.to).map_or(0, Vec::len);
        let bytes = self.bytes_to.get(&r.to).copied().unwrap_or(0);
        if n >= MAX_PER_RECIPIENT || bytes + len > MAX_BYTES_PER_RECIPIENT {
            return Err(Refused::MailboxFull);
        }
        if sender == Sender::Stranger {
            let (count, taken) = self.strangers_to.get(&r.to).copied().unwrap_or((0, 0));
            let pair = self
                .stranger_pairs
                .get(&(r.from, r.to))
                .copied()
                .unwrap_or(0);
            if count >= MAX_STRANGERS_PER_RECIPIENT
                || taken + len > MAX_STRANGER_BYTES_PER_RECIPIENT
                || pair >= MAX_PER_STRANGER
            {
                return Err(Refused::StrangerQuota);
            }
        }
        Ok(Some(id))
    }

    /// Counts `h` everywhere and holds it.
    fn insert(&mut self, id: Id, h: Held) {
        let len = h.len as usize;
        if h.stranger {
            let share = self.strangers_to.entry(h.to).or_default();
            share.0 += 1;
            share.1 += len;
            *self.stranger_pairs.entry((h.from, h.to)).or_default() += 1;
        }
        self.by_to.entry(h.to).or_default().push(id);
        *self.bytes_to.entry(h.to).or_default() += len;
        *self.bytes_from.entry(h.from).or_default() += len;
        *self.bytes_origin.entry(h.origin).or_default() += len;
        self.bytes += len;
        self.sum = self.sum.wrapping_add(hash_of(id));
        self.by_id.insert(id, h);
    }

    /// Message `id`'s line is in the file now, at `offset`, `len` bytes long.
    pub fn on_disk(&mut self, id: Id, offset: u64, len: u32) {
        if let Some(h) = self.by_id.get_mut(&id) {
            h.place = Place::Disk { offset, len };
        }
    }

    /// Drops message `id` (delivered); returns whether that is news (not known delivered
    /// before) and the message's envelope if it was held. Remembered as delivered either way,
    /// so a late copy is not stored again. An id that is not one (not 32 lowercase hex digits)
    /// names nothing: no news.
    pub fn delivered(&mut self, id: &str, notice: Option<Delivered>) -> (bool, Option<Held>) {
        let Some(id) = parse_id(id) else {
            return (false, None);
        };
        let news = !self.gone_set.contains_key(&id);
        let entry = self.gone_set.entry(id).or_insert(None);
        if notice.is_some() {
            if entry.is_none() {
                self.noticed += 1;
                self.noticed_sum = self.noticed_sum.wrapping_add(hash_of(id));
            }
            *entry = notice;
        }
        if news {
            self.gone_seq += 1;
            self.gone.insert(self.gone_seq, id);
            while self.gone.len() > MAX_GONE {
                if let Some((_, old)) = self.gone.pop_first() {
                    if let Some(Some(_)) = self.gone_set.remove(&old) {
                        self.noticed -= 1;
                        self.noticed_sum = self.noticed_sum.wrapping_sub(hash_of(old));
                    }
                }
            }
        }
        (news, self.remove(id))
    }

    /// Whether message `id` is known delivered.
    pub fn is_gone(&self, id: &str) -> bool {
        parse_id(id).is_some_and(|id| self.gone_set.contains_key(&id))
    }

    /// The signed delivery notice of message `id`, if it was delivered and the notice is known.
    pub fn notice(&self, id: &str) -> Option<&Delivered> {
        let id = parse_id(id)?;
        self.gone_set.get(&id).and_then(Option::as_ref)
    }

    /// Drops message `id` and gives back what it took of every bound.
    pub fn remove(&mut self, id: Id) -> Option<Held> {
        let h = self.by_id.remove(&id)?;
        self.sum = self.sum.wrapping_sub(hash_of(id));
        if let Some(ids) = self.by_to.get_mut(&h.to) {
            ids.retain(|i| *i != id);
            if ids.is_empty() {
                self.by_to.remove(&h.to);
            }
        }
        let len = h.len as usize;
        give_back(&mut self.bytes_to, h.to, len);
        give_back(&mut self.bytes_from, h.from, len);
        give_back(&mut self.bytes_origin, h.origin, len);
        self.bytes -= len;
        if h.stranger {
            if let Some(share) = self.strangers_to.get_mut(&h.to) {
                share.0 -= 1;
                share.1 -= len;
                if share.0 == 0 {
                    self.strangers_to.remove(&h.to);
                }
            }
            give_back(&mut self.stranger_pairs, (h.from, h.to), 1);
        }
        Some(h)
    }

    /// Keeps notice `d` for its sender (told at their next login here).
    pub fn add_receipt(&mut self, d: Delivered, now_ms: u64) {
        let q = self.receipts.entry(d.from).or_default();
        if q.iter().any(|(_, x)| x.id == d.id) {
            return;
        }
        q.push_back((now_ms, d));
        while q.len() > MAX_RECEIPTS_PER_SENDER {
            q.pop_front();
        }
    }

    /// Takes the delivery notices kept for `from`.
    pub fn take_receipts(&mut self, from: UserId) -> Vec<Delivered> {
        self.receipts
            .remove(&from)
            .map(|q| q.into_iter().map(|(_, d)| d).collect())
            .unwrap_or_default()
    }

    /// The ids of the messages waiting for `to`, oldest first.
    pub fn for_recipient(&self, to: UserId) -> Vec<Id> {
        self.by_to.get(&to).cloned().unwrap_or_default()
    }

    /// Drops messages older than [`TTL`] at `now_ms`; returns their ids.
    pub fn expire(&mut self, now_ms: u64) -> Vec<Id> {
        let ttl = TTL.as_millis() as u64;
        let old: Vec<Id> = self
            .by_id
            .iter()
            .filter(|(_, h)| h.sent + ttl < now_ms)
            .map(|(id, _)| *id)
            .collect();
        for id in &old {
            self.remove(*id);
        }
        self.receipts.retain(|_, q| {
            q.retain(|(at, _)| at + ttl >= now_ms);
            !q.is_empty()
        });
        old
    }

    /// The held set in brief.
    pub fn digest(&self) -> Digest {
        Digest {
            count: self.by_id.len() as u64,
            sum: self.sum,
            delivered: self.noticed,
            delivered_sum: self.noticed_sum,
        }
    }

    /// The ids of every held message.
    pub fn ids(&self) -> Vec<String> {
        self.by_id.keys().map(|id| id_text(*id)).collect()
    }

    /// The ids of the held messages whose [`id_hash`] is not in `seen`.
    pub fn ids_except(&self, seen: &HashSet<u128>) -> Vec<String> {
        self.by_id
            .keys()
            .map(|id| id_text(*id))
            .filter(|id| !seen.contains(&id_hash(id)))
            .collect()
    }

    /// Message `id`'s envelope, if held.
    pub fn get(&self, id: &str) -> Option<&Held> {
        self.by_id.get(&parse_id(id)?)
    }

    /// The ids of the delivered messages whose notice is known.
    pub fn noticed_ids(&self) -> Vec<String> {
        self.gone_set
            .iter()
            .filter(|(_, n)| n.is_some())
            .map(|(id, _)| id_text(*id))
            .collect()
    }

    /// The known notices whose id's [`id_hash`] is not in `seen`.
    pub fn notices_except(&self, seen: &HashSet<u128>) -> Vec<Delivered> {
        self.gone_set
            .iter()
            .filter(|(id, _)| !seen.contains(&hash_of(**id)))
            .filter_map(|(_, n)| n.clone())
            .collect()
    }

    /// What a rewrite of the file must keep: each held message (where its line is now), the
    /// known notices oldest first, the kept receipts.
    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            messages: self.by_id.iter().map(|(id, h)| (*id, h.clone())).collect(),
            notices: self
                .gone
                .values()
                .filter_map(|id| self.gone_set.get(id).cloned().flatten())
                .collect(),
            receipts: self
                .receipts
                .values()
                .flat_map(|q| q.iter().cloned())
                .collect(),
        }
    }

    /// Bytes of bodies held.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Messages held.
    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    /// Whether none is held.
    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }
}

/// [`id_hash`] of an id held as a number.
fn hash_of(id: Id) -> u128 {
    id_hash(&id_text(id))
}
