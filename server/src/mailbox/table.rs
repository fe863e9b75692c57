//! The held messages, pure: no I/O, time passed in. Every bound of the mailbox is kept here.

use std::collections::{BTreeMap, HashMap};

use gossip_common::message::{Delivered, Relay};
use gossip_common::UserId;

use super::{
    id_hash, Digest, Refused, Sender, MAX_BODY, MAX_BYTES, MAX_BYTES_PER_RECIPIENT,
    MAX_BYTES_PER_SENDER, MAX_GONE, MAX_HELD, MAX_PER_RECIPIENT, MAX_PER_STRANGER,
    MAX_STRANGERS_PER_RECIPIENT, MAX_STRANGER_BYTES_PER_RECIPIENT, TTL,
};

/// The held messages (pure: no I/O, time passed in).
#[derive(Default)]
pub struct MailTable {
    pub(super) by_id: HashMap<String, Relay>,
    /// [`Digest::sum`] of `by_id`.
    sum: u128,
    /// Recipient → ids in arrival order.
    by_to: HashMap<UserId, Vec<String>>,
    bytes_to: HashMap<UserId, usize>,
    /// Bytes of bodies held, all together and per sender.
    bytes: usize,
    bytes_from: HashMap<UserId, usize>,
    /// The held messages that came from someone not in the recipient's contacts, with what
    /// they take of each recipient's room (messages, bytes) and per sender and recipient.
    strangers: std::collections::HashSet<String>,
    strangers_to: HashMap<UserId, (usize, usize)>,
    stranger_pairs: HashMap<(UserId, UserId), usize>,
    /// Delivered ids (with their sender, for receipts), oldest first.
    pub(super) gone: BTreeMap<u64, String>,
    /// Delivered ids, with their signed notice when known (to hand a peer that still holds
    /// the message: see [`MailTable::notice`]).
    gone_set: HashMap<String, Option<Delivered>>,
    gone_seq: u64,
    /// [`Digest::delivered`] and [`Digest::delivered_sum`] of `gone_set`.
    noticed: u64,
    noticed_sum: u128,
    /// Delivery notices for senders who were not here to be told, with when they were made.
    pub(super) receipts: HashMap<UserId, std::collections::VecDeque<(u64, Delivered)>>,
}

/// Delivery notices kept per sender (the oldest are dropped past it).
pub const MAX_RECEIPTS_PER_SENDER: usize = 1_000;

impl MailTable {
    /// [`Self::put_as`] for a message from a contact (or one taken before: a replayed log).
    pub fn put(&mut self, r: Relay, now_ms: u64) -> Result<bool, Refused> {
        self.put_as(r, now_ms, Sender::Contact)
    }

    /// Takes `r` from `sender` if it is new, within bounds and not expired at `now_ms`.
    /// `Ok(false)`: already held or already delivered. The bounds: the body's size, the
    /// server's messages and bytes, the sender's bytes, the recipient's messages and bytes, and
    /// for a stranger (not in the recipient's contacts) the strangers' share of the recipient's
    /// room and the share of each stranger: whatever strangers send, most of a recipient's room
    /// stays free for their contacts.
    pub fn put_as(&mut self, r: Relay, now_ms: u64, sender: Sender) -> Result<bool, Refused> {
        if r.body.len() > MAX_BODY {
            return Err(Refused::TooLarge);
        }
        let ttl = TTL.as_millis() as u64;
        if r.sent + ttl < now_ms || r.sent > now_ms + ttl {
            return Err(Refused::Expired);
        }
        if self.by_id.contains_key(&r.id) || self.gone_set.contains_key(&r.id) {
            return Ok(false);
        }
        let len = r.body.len();
        if self.by_id.len() >= MAX_HELD || self.bytes + len > MAX_BYTES {
            return Err(Refused::Full);
        }
        if self.bytes_from.get(&r.from).copied().unwrap_or(0) + len > MAX_BYTES_PER_SENDER {
            return Err(Refused::SenderFull);
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
            let share = self.strangers_to.entry(r.to).or_default();
            share.0 += 1;
            share.1 += len;
            *self.stranger_pairs.entry((r.from, r.to)).or_default() += 1;
            self.strangers.insert(r.id.clone());
        }
        self.by_to.entry(r.to).or_default().push(r.id.clone());
        *self.bytes_to.entry(r.to).or_default() += len;
        *self.bytes_from.entry(r.from).or_default() += len;
        self.bytes += len;
        self.sum = self.sum.wrapping_add(id_hash(&r.id));
        self.by_id.insert(r.id.clone(), r);
        Ok(true)
    }

    /// Drops message `id` (delivered); returns whether that is news (not known delivered
    /// before) and the message if it was held. Remembered as delivered either way, so a late
    /// copy is not stored again.
    pub fn delivered(&mut self, id: &str, notice: Option<Delivered>) -> (bool, Option<Relay>) {
        let news = !self.gone_set.contains_key(id);
        let entry = self.gone_set.entry(id.to_owned()).or_insert(None);
        if notice.is_some() {
            if entry.is_none() {
                self.noticed += 1;
                self.noticed_sum = self.noticed_sum.wrapping_add(id_hash(id));
            }
            *entry = notice;
        }
        if news {
            self.gone_seq += 1;
            self.gone.insert(self.gone_seq, id.to_owned());
            while self.gone.len() > MAX_GONE {
                if let Some((_, old)) = self.gone.pop_first() {
                    if let Some(Some(_)) = self.gone_set.remove(&old) {
                        self.noticed -= 1;
                        self.noticed_sum = self.noticed_sum.wrapping_sub(id_hash(&old));
                    }
                }
            }
        }
        (news, self.remove(id))
    }

    /// Whether message `id` is known delivered.
    pub fn is_gone(&self, id: &str) -> bool {
        self.gone_set.contains_key(id)
    }

    /// The signed delivery notice of message `id`, if it was delivered and the notice is known.
    pub fn notice(&self, id: &str) -> Option<&Delivered> {
        self.gone_set.get(id).and_then(Option::as_ref)
    }

    pub(super) fn remove(&mut self, id: &str) -> Option<Relay> {
        let r = self.by_id.remove(id)?;
        self.sum = self.sum.wrapping_sub(id_hash(id));
        if let Some(ids) = self.by_to.get_mut(&r.to) {
            ids.retain(|i| i != id);
            if ids.is_empty() {
                self.by_to.remove(&r.to);
            }
        }
        let len = r.body.len();
        if let Some(b) = self.bytes_to.get_mut(&r.to) {
            *b -= len;
            if *b == 0 {
                self.bytes_to.remove(&r.to);
            }
        }
        if let Some(b) = self.bytes_from.get_mut(&r.from) {
            *b -= len;
            if *b == 0 {
                self.bytes_from.remove(&r.from);
            }
        }
        self.bytes -= len;
        if self.strangers.remove(id) {
            if let Some(share) = self.strangers_to.get_mut(&r.to) {
                share.0 -= 1;
                share.1 -= len;
                if share.0 == 0 {
                    self.strangers_to.remove(&r.to);
                }
            }
            if let Some(pair) = self.stranger_pairs.get_mut(&(r.from, r.to)) {
                *pair -= 1;
                if *pair == 0 {
                    self.stranger_pairs.remove(&(r.from, r.to));
                }
            }
        }
        Some(r)
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

    /// Messages waiting for `to`, oldest first.
    pub fn for_recipient(&self, to: UserId) -> Vec<Relay> {
        self.by_to
            .get(&to)
            .into_iter()
            .flatten()
            .filter_map(|id| self.by_id.get(id).cloned())
            .collect()
    }

    /// Drops messages older than [`TTL`] at `now_ms`; returns their ids.
    pub fn expire(&mut self, now_ms: u64) -> Vec<String> {
        let ttl = TTL.as_millis() as u64;
        let old: Vec<String> = self
            .by_id
            .values()
            .filter(|r| r.sent + ttl < now_ms)
            .map(|r| r.id.clone())
            .collect();
        for id in &old {
            self.remove(id);
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
        self.by_id.keys().cloned().collect()
    }

    /// The ids of the held messages whose [`id_hash`] is not in `seen`.
    pub fn ids_except(&self, seen: &std::collections::HashSet<u128>) -> Vec<String> {
        self.by_id
            .keys()
            .filter(|id| !seen.contains(&id_hash(id)))
            .cloned()
            .collect()
    }

    /// Message `id`, if held.
    pub fn get(&self, id: &str) -> Option<&Relay> {
        self.by_id.get(id)
    }

    /// The ids of the delivered messages whose notice is known.
    pub fn noticed_ids(&self) -> Vec<String> {
        self.gone_set
            .iter()
            .filter(|(_, n)| n.is_some())
            .map(|(id, _)| id.clone())
            .collect()
    }

    /// The known notices whose id's [`id_hash`] is not in `seen`.
    pub fn notices_except(&self, seen: &std::collections::HashSet<u128>) -> Vec<Delivered> {
        self.gone_set
            .iter()
            .filter(|(id, _)| !seen.contains(&id_hash(id)))
            .filter_map(|(_, n)| n.clone())
            .collect()
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
