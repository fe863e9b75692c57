//! The mailbox: relayed messages (`relay`) kept by every server until the recipient's client
//! has them (`delivered`), so a message reaches its recipient wherever and whenever they log in,
//! and survives the death of any one server (`docs/messaging.md`).
//!
//! Like the replicated wills, every server holds every undelivered message: the sender's
//! server stores it, floods it along the tree, and answers the sender once one other server
//! has stored it too. A server that is logged in to by the recipient pushes it; the
//! recipient's client answers `delivered`, which is flooded and drops the message everywhere.
//! Servers see only the envelope (who, to whom, when, how big): the body is the sender's
//! end-to-end ciphertext.
//!
//! Bounds: a body of at most [`MAX_BODY`] bytes (base64), [`MAX_PER_RECIPIENT`] messages and
//! [`MAX_BYTES_PER_RECIPIENT`] bytes waiting per recipient, [`MAX_HELD`] in all, and
//! [`TTL`] (30 days) after which an undelivered message is dropped.
//!
//! `mailbox.log` (JSON lines: `{"put":…}`, `{"done":<delivered notice>}`, `{"receipt":…}`,
//! `{"told":<uid>}`) is appended and `fdatasync`ed
//! in batches before a put is acknowledged, replayed at start (expired messages dropped), and
//! rewritten with the live messages when it holds four times more lines than that.

use std::collections::{BTreeMap, HashMap};
use std::io::{self, BufRead, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use gossip_common::message::{Delivered, Relay};
use gossip_common::UserId;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};

/// Largest body, base64: 64 KiB (≈ 48 KiB of ciphertext).
pub const MAX_BODY: usize = 64 * 1024;
/// Messages waiting for one recipient at most.
pub const MAX_PER_RECIPIENT: usize = 1_000;
/// Bytes of bodies waiting for one recipient at most.
pub const MAX_BYTES_PER_RECIPIENT: usize = 8 * 1024 * 1024;
/// Messages held in all.
pub const MAX_HELD: usize = 1_000_000;
/// An undelivered message is dropped after this.
pub const TTL: Duration = Duration::from_secs(30 * 24 * 3600);
/// Delivered ids remembered (so a late copy of a delivered message is not stored again).
pub const MAX_GONE: usize = 100_000;

const FILE: &str = "mailbox.log";

/// Why a message was not taken.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    /// The body is over [`MAX_BODY`].
    #[error("the message body is over {MAX_BODY} bytes")]
    TooLarge,
    /// The recipient's mailbox is full.
    #[error("the recipient has too many undelivered messages; try again later")]
    MailboxFull,
    /// The server holds [`MAX_HELD`] messages.
    #[error("this server holds too many undelivered messages; try again later")]
    Full,
    /// Older than [`TTL`] (or from too far in the future).
    #[error("the message is expired or dated in the future")]
    Expired,
    /// The disk write failed.
    #[error("the server could not store the message; try again")]
    Unstored,
}

/// The mailbox in brief: the held messages and the delivery notices known, each as a count
/// and the wrapping sum of their ids' 128-bit xxh3 hashes. Servers holding the same messages
/// and knowing the same notices have the same digest, whatever order things came in; kept up
/// to date on every change, so a link-up compares mailboxes in O(1) (`federation::mailsync`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Digest {
    /// Messages held.
    pub count: u64,
    /// Sum of [`id_hash`] over them.
    pub sum: u128,
    /// Delivered messages whose signed notice is known (the last [`MAX_GONE`]).
    pub delivered: u64,
    /// Sum of [`id_hash`] over them.
    pub delivered_sum: u128,
}

/// A message id's hash, as [`Digest`] sums it.
pub fn id_hash(id: &str) -> u128 {
    xxhash_rust::xxh3::xxh3_128(id.as_bytes())
}

/// The held messages (pure: no I/O, time passed in).
#[derive(Default)]
pub struct MailTable {
    by_id: HashMap<String, Relay>,
    /// [`Digest::sum`] of `by_id`.
    sum: u128,
    /// Recipient → ids in arrival order.
    by_to: HashMap<UserId, Vec<String>>,
    bytes_to: HashMap<UserId, usize>,
    /// Delivered ids (with their sender, for receipts), oldest first.
    gone: BTreeMap<u64, String>,
    /// Delivered ids, with their signed notice when known (to hand a peer that still holds
    /// the message: see [`MailTable::notice`]).
    gone_set: HashMap<String, Option<Delivered>>,
    gone_seq: u64,
    /// [`Digest::delivered`] and [`Digest::delivered_sum`] of `gone_set`.
    noticed: u64,
    noticed_sum: u128,
    /// Delivery notices for senders who were not here to be told, with when they were made.
    receipts: HashMap<UserId, std::collections::VecDeque<(u64, Delivered)>>,
}

/// Delivery notices kept per sender (the oldest are dropped past it).
pub const MAX_RECEIPTS_PER_SENDER: usize = 1_000;

impl MailTable {
    /// Takes `r` if it is new, within bounds and not expired at `now_ms`. `Ok(false)`: already
    /// held or already delivered.
    pub fn put(&mut self, r: Relay, now_ms: u64) -> Result<bool, Refused> {
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
        if self.by_id.len() >= MAX_HELD {
            return Err(Refused::Full);
        }
        let n = self.by_to.get(&r.to).map_or(0, Vec::len);
        let bytes = self.bytes_to.get(&r.to).copied().unwrap_or(0);
        if n >= MAX_PER_RECIPIENT || bytes + r.body.len() > MAX_BYTES_PER_RECIPIENT {
            return Err(Refused::MailboxFull);
        }
        self.by_to.entry(r.to).or_default().push(r.id.clone());
        *self.bytes_to.entry(r.to).or_default() += r.body.len();
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

    /// The signed delivery notice of message `id`, if it was delivered and the notice is known.
    pub fn notice(&self, id: &str) -> Option<&Delivered> {
        self.gone_set.get(id).and_then(Option::as_ref)
    }

    fn remove(&mut self, id: &str) -> Option<Relay> {
        let r = self.by_id.remove(id)?;
        self.sum = self.sum.wrapping_sub(id_hash(id));
        if let Some(ids) = self.by_to.get_mut(&r.to) {
            ids.retain(|i| i != id);
            if ids.is_empty() {
                self.by_to.remove(&r.to);
            }
        }
        if let Some(b) = self.bytes_to.get_mut(&r.to) {
            *b -= r.body.len();
            if *b == 0 {
                self.bytes_to.remove(&r.to);
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

    /// Messages held.
    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    /// Whether none is held.
    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }
}

/// One line of `mailbox.log`.
#[derive(Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Line {
    Put(Relay),
    /// Delivered (an id only: lines from before notices were kept).
    Gone(String),
    /// Delivered, with the recipient's signed notice.
    Done(Delivered),
    /// A delivery notice kept for its sender, and when.
    Receipt(u64, Delivered),
    /// The sender was told.
    Told(UserId),
}

impl Line {
    fn bytes(&self) -> Vec<u8> {
        let mut v = serde_json::to_vec(self).expect("plain values serialise");
        v.push(b'\n');
        v
    }
}

/// A held message's write to `mailbox.log`, to wait for.
pub struct DiskWrite {
    wait: oneshot::Receiver<bool>,
    id: String,
    table: Arc<Mutex<MailTable>>,
}

impl DiskWrite {
    /// Waits until the message is on disk; if the write failed, it is dropped from memory too.
    pub async fn done(self) -> Result<(), Refused> {
        if self.wait.await == Ok(true) {
            Ok(())
        } else {
            self.table.lock().remove(&self.id);
            Err(Refused::Unstored)
        }
    }
}

/// A line to write and who waits for it to be on disk.
type Pending = (Vec<u8>, Option<oneshot::Sender<bool>>);

/// The mailbox and its file.
pub struct Mailbox {
    table: Arc<Mutex<MailTable>>,
    file: mpsc::Sender<Pending>,
    /// Sends waiting for a peer's `stored`, by message id (closed ones are swept).
    stored_waiters: Mutex<HashMap<String, oneshot::Sender<()>>>,
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl Mailbox {
    /// Replays `mailbox.log` in `dir`, rewrites it with the live messages, starts its writer.
    pub fn open(
        dir: &Path,
        tasks: &tokio_util::task::TaskTracker,
        shutdown: &tokio_util::sync::CancellationToken,
    ) -> io::Result<Mailbox> {
        let path = dir.join(FILE);
        let mut table = MailTable::default();
        let now = now_ms();
        if let Ok(f) = std::fs::File::open(&path) {
            for line in io::BufReader::new(f).lines() {
                let Ok(line) = line else { break };
                match serde_json::from_str::<Line>(&line) {
                    Ok(Line::Put(r)) => {
                        let _ = table.put(r, now);
                    }
                    Ok(Line::Gone(id)) => {
                        table.delivered(&id, None);
                    }
                    Ok(Line::Done(d)) => {
                        table.delivered(&d.id.clone(), Some(d));
                    }
                    Ok(Line::Receipt(at, d)) => table.add_receipt(d, at),
                    Ok(Line::Told(uid)) => {
                        table.take_receipts(uid);
                    }
                    Err(_) => continue, // a torn last line
                }
            }
        }
        let table = Arc::new(Mutex::new(table));
        rewrite(&path, &table.lock())?;
        let (file, rx) = mpsc::channel(4096);
        tasks.spawn(writer(path, rx, Arc::clone(&table), shutdown.clone()));
        Ok(Mailbox {
            table,
            file,
            stored_waiters: Mutex::new(HashMap::new()),
        })
    }

    /// Holds `r` (the caller checked its signature) and queues it for the disk. `Ok(None)`:
    /// already held or delivered. `Ok(Some(disk))`: new; `disk` says when it is on disk
    /// (`true`) or could not be written (`false`, and it is dropped again). Callers forward a
    /// new message at once and wait for `disk` only before they vouch for it.
    pub fn hold(&self, r: Relay) -> Result<Option<DiskWrite>, Refused> {
        let id = r.id.clone();
        let line = Line::Put(r.clone()).bytes();
        if !self.table.lock().put(r, now_ms())? {
            return Ok(None);
        }
        let (done, wait) = oneshot::channel();
        if self.file.try_send((line, Some(done))).is_err() {
            self.table.lock().remove(&id);
            return Err(Refused::Unstored);
        }
        Ok(Some(DiskWrite {
            wait,
            id,
            table: Arc::clone(&self.table),
        }))
    }

    /// [`Self::hold`], then waits for the disk. `Ok(true)`: new and durable.
    pub async fn put(&self, r: Relay) -> Result<bool, Refused> {
        match self.hold(r)? {
            None => Ok(false),
            Some(disk) => disk.done().await.map(|()| true),
        }
    }

    /// A receiver that fires when a peer says it stored message `id` (see `stored`).
    pub fn await_stored(&self, id: &str) -> oneshot::Receiver<()> {
        let (tx, rx) = oneshot::channel();
        let mut w = self.stored_waiters.lock();
        w.retain(|_, tx| !tx.is_closed());
        w.insert(id.to_owned(), tx);
        rx
    }

    /// A peer stored message `id`.
    pub fn stored(&self, id: &str) {
        if let Some(tx) = self.stored_waiters.lock().remove(id) {
            let _ = tx.send(());
        }
    }

    /// Message `id` was delivered: dropped here (and from the file). Returns whether that is
    /// news, and the message if it was held.
    pub fn delivered(&self, d: &Delivered) -> (bool, Option<Relay>) {
        let r = self.table.lock().delivered(&d.id, Some(d.clone()));
        if r.0 {
            let _ = self.file.try_send((Line::Done(d.clone()).bytes(), None));
        }
        r
    }

    /// The signed delivery notice of message `id`, if it was delivered.
    pub fn notice(&self, id: &str) -> Option<Delivered> {
        self.table.lock().notice(id).cloned()
    }

    /// Keeps delivery notice `d` for its sender, who is not here to be told now.
    pub fn keep_receipt(&self, d: Delivered) {
        let now = now_ms();
        let line = Line::Receipt(now, d.clone()).bytes();
        self.table.lock().add_receipt(d, now);
        let _ = self.file.try_send((line, None));
    }

    /// Takes the delivery notices kept for `from` (who is being told now).
    pub fn take_receipts(&self, from: UserId) -> Vec<Delivered> {
        let taken = self.table.lock().take_receipts(from);
        if !taken.is_empty() {
            let _ = self.file.try_send((Line::Told(from).bytes(), None));
        }
        taken
    }

    /// Messages waiting for `to`.
    pub fn for_recipient(&self, to: UserId) -> Vec<Relay> {
        self.table.lock().for_recipient(to)
    }

    /// The held set in brief (see [`Digest`]).
    pub fn digest(&self) -> Digest {
        self.table.lock().digest()
    }

    /// The ids of every held message.
    pub fn ids(&self) -> Vec<String> {
        self.table.lock().ids()
    }

    /// The ids of held messages whose hash is not in `seen` (what a peer's list lacked).
    pub fn ids_except(&self, seen: &std::collections::HashSet<u128>) -> Vec<String> {
        self.table.lock().ids_except(seen)
    }

    /// Of `ids` (a part of a peer's list), the hashes of those held here, and the delivery
    /// notices of those known delivered. One lock for the lot.
    pub fn named(&self, ids: &[&str]) -> (Vec<u128>, Vec<Delivered>) {
        let t = self.table.lock();
        let mut held = Vec::new();
        let mut notices = Vec::new();
        for id in ids {
            if t.get(id).is_some() {
                held.push(id_hash(id));
            } else if let Some(d) = t.notice(id) {
                notices.push(d.clone());
            }
        }
        (held, notices)
    }

    /// The ids of the delivered messages whose notice is known.
    pub fn noticed_ids(&self) -> Vec<String> {
        self.table.lock().noticed_ids()
    }

    /// The known notices whose id's hash is not in `seen` (what a peer's list lacked).
    pub fn notices_except(&self, seen: &std::collections::HashSet<u128>) -> Vec<Delivered> {
        self.table.lock().notices_except(seen)
    }

    /// Message `id`, if held.
    pub fn get(&self, id: &str) -> Option<Relay> {
        self.table.lock().get(id).cloned()
    }

    /// Messages held.
    pub fn len(&self) -> usize {
        self.table.lock().len()
    }

    /// Whether none is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Appends queued lines, one `fdatasync` per batch, then tells the waiting puts; drops expired
/// messages and rewrites the file when it holds four times more lines than live messages.
async fn writer(
    path: PathBuf,
    mut rx: mpsc::Receiver<Pending>,
    table: Arc<Mutex<MailTable>>,
    shutdown: tokio_util::sync::CancellationToken,
) {
    let mut lines = table.lock().len();
    loop {
        let Some(items) = crate::applog::next_batch(&mut rx, &shutdown, Duration::ZERO).await
        else {
            return;
        };
        lines += items.len();
        let mut batch = Vec::new();
        let mut waiters: Vec<oneshot::Sender<bool>> = Vec::new();
        for (line, w) in items {
            batch.extend_from_slice(&line);
            waiters.extend(w);
        }
        table.lock().expire(now_ms());
        let live = table.lock().len();
        let compact = crate::applog::worth_compacting(lines, live);
        let rewrite = compact.then(|| {
            let table = Arc::clone(&table);
            Box::new(move |p: &Path| rewrite(p, &table.lock())) as crate::applog::Rewrite
        });
        let written = crate::applog::write_batch(&path, batch, rewrite).await;
        let ok = matches!(written, Some(Ok(())));
        if compact && ok {
            lines = live;
        }
        if !ok {
            tracing::error!(
                ?written,
                "mailbox file write failed; messages held in memory only"
            );
        }
        for w in waiters {
            let _ = w.send(ok);
        }
        if written.is_none() {
            return;
        }
    }
}

/// Writes the live messages to a new file, syncs it and renames it over the old one.
fn rewrite(path: &Path, table: &MailTable) -> io::Result<()> {
    let tmp = path.with_extension("log.tmp");
    let mut f = io::BufWriter::new(std::fs::File::create(&tmp)?);
    for r in table.by_id.values() {
        f.write_all(&Line::Put(r.clone()).bytes())?;
    }
    for id in table.gone.values() {
        if let Some(d) = table.notice(id) {
            f.write_all(&Line::Done(d.clone()).bytes())?;
        }
    }
    for q in table.receipts.values() {
        for (at, d) in q {
            f.write_all(&Line::Receipt(*at, d.clone()).bytes())?;
        }
    }
    let f = f.into_inner().map_err(|e| e.into_error())?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(id: &str, to: u64, body: usize, sent: u64) -> Relay {
        Relay {
            id: id.into(),
            from: UserId(1),
            to: UserId(to),
            sent,
            body: "A".repeat(body),
            sig: String::new(),
            request: None,
        }
    }

    #[test]
    fn held_until_delivered_and_never_stored_again() {
        let mut t = MailTable::default();
        let now = 1_000_000;
        assert_eq!(t.put(msg("a", 2, 10, now), now), Ok(true));
        assert_eq!(t.put(msg("a", 2, 10, now), now), Ok(false));
        assert_eq!(t.put(msg("b", 2, 10, now), now), Ok(true));
        assert_eq!(
            t.for_recipient(UserId(2))
                .iter()
                .map(|r| r.id.as_str())
                .collect::<Vec<_>>(),
            ["a", "b"]
        );
        assert!(t.delivered("a", None).0);
        assert_eq!(t.delivered("a", None), (false, None), "told twice: no news");
        assert_eq!(t.put(msg("a", 2, 10, now), now), Ok(false), "late copy");
        assert_eq!(t.len(), 1);
    }

    #[test]
    fn the_digest_is_the_mailbox_whatever_the_order() {
        let now = 1_000_000;
        let (mut a, mut b) = (MailTable::default(), MailTable::default());
        assert_eq!(a.digest(), b.digest());
        for id in ["x", "y", "z"] {
            a.put(msg(id, 2, 10, now), now).unwrap();
        }
        for id in ["z", "w", "x", "y"] {
            b.put(msg(id, 3, 10, now), now).unwrap();
        }
        assert_ne!(a.digest(), b.digest());
        b.delivered("w", None);
        assert_eq!(
            a.digest(),
            b.digest(),
            "a delivery without its notice is not counted"
        );
        assert_eq!(a.digest().count, 3);
        let notice = Delivered {
            id: "y".into(),
            from: UserId(1),
            to: UserId(2),
            sig: String::new(),
        };
        a.delivered("y", Some(notice.clone()));
        assert_ne!(a.digest(), b.digest(), "a known notice counts");
        b.delivered("y", Some(notice.clone()));
        assert_eq!(a.digest(), b.digest());
        assert_eq!(a.digest().delivered, 1);
        assert_eq!(a.noticed_ids(), ["y"]);
        assert_eq!(a.notices_except(&Default::default()), [notice]);
        a.expire(now + TTL.as_millis() as u64 + 1);
        assert_eq!((a.digest().count, a.digest().sum), (0, 0));
        let seen = ["x"].iter().map(|id| id_hash(id)).collect();
        assert_eq!(b.ids_except(&seen), ["z"]);
    }

    #[test]
    fn receipts_wait_for_their_sender_bounded_and_in_time() {
        let mut t = MailTable::default();
        let d = |i: usize| Delivered {
            id: format!("m{i}"),
            from: UserId(1),
            to: UserId(2),
            sig: String::new(),
        };
        for i in 0..MAX_RECEIPTS_PER_SENDER + 5 {
            t.add_receipt(d(i), 10);
        }
        t.add_receipt(d(MAX_RECEIPTS_PER_SENDER + 4), 10);
        let got = t.take_receipts(UserId(1));
        assert_eq!(got.len(), MAX_RECEIPTS_PER_SENDER, "bounded, no duplicates");
        assert_eq!(got[0].id, "m5", "the oldest dropped");
        assert!(t.take_receipts(UserId(1)).is_empty());
        t.add_receipt(d(0), 10);
        t.expire(10 + TTL.as_millis() as u64 + 1);
        assert!(t.take_receipts(UserId(1)).is_empty(), "expired");
    }

    #[test]
    fn bounded_per_recipient_in_size_and_in_time() {
        let mut t = MailTable::default();
        let now = TTL.as_millis() as u64 * 2;
        assert_eq!(
            t.put(msg("big", 2, MAX_BODY + 1, now), now),
            Err(Refused::TooLarge)
        );
        for i in 0..MAX_PER_RECIPIENT {
            t.put(msg(&format!("m{i}"), 2, 1, now), now).unwrap();
        }
        assert_eq!(
            t.put(msg("one-more", 2, 1, now), now),
            Err(Refused::MailboxFull)
        );
        assert_eq!(t.put(msg("other", 3, 1, now), now), Ok(true));
        let old = now - TTL.as_millis() as u64 - 1;
        assert_eq!(t.put(msg("old", 3, 1, old), now), Err(Refused::Expired));
        // Time passes: everything expires.
        assert_eq!(
            t.expire(now + TTL.as_millis() as u64 + 1).len(),
            MAX_PER_RECIPIENT + 1
        );
        assert!(t.is_empty());
    }

    #[tokio::test]
    async fn a_message_survives_a_restart_until_delivered() {
        let dir = tempfile::tempdir().unwrap();
        let (tasks, stop) = (
            tokio_util::task::TaskTracker::new(),
            tokio_util::sync::CancellationToken::new(),
        );
        let now = now_ms();
        {
            let m = Mailbox::open(dir.path(), &tasks, &stop).unwrap();
            assert_eq!(m.put(msg("x", 2, 5, now)).await, Ok(true));
            assert_eq!(m.put(msg("y", 2, 5, now)).await, Ok(true));
            let notice = Delivered {
                id: "y".into(),
                from: UserId(1),
                to: UserId(2),
                sig: "s".into(),
            };
            assert!(m.delivered(&notice).1.is_some());
            assert_eq!(m.notice("y"), Some(notice));
        }
        stop.cancel();
        tasks.close();
        tasks.wait().await;
        let (tasks, stop) = (
            tokio_util::task::TaskTracker::new(),
            tokio_util::sync::CancellationToken::new(),
        );
        let m = Mailbox::open(dir.path(), &tasks, &stop).unwrap();
        let ids: Vec<String> = m
            .for_recipient(UserId(2))
            .into_iter()
            .map(|r| r.id)
            .collect();
        assert_eq!(ids, ["x"]);
        stop.cancel();
    }
}
