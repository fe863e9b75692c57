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
//! [`MAX_BYTES_PER_RECIPIENT`] bytes waiting per recipient, of which strangers (senders not in
//! the recipient's contacts) may take [`MAX_STRANGERS_PER_RECIPIENT`] messages and
//! [`MAX_STRANGER_BYTES_PER_RECIPIENT`] bytes, each stranger [`MAX_PER_STRANGER`];
//! [`MAX_BYTES_PER_SENDER`] bytes per sender; [`MAX_BYTES_PER_ORIGIN`] per origin (the server
//! that sponsored the sender's registration); [`MAX_HELD`] messages and [`MAX_BYTES`] in all;
//! and [`TTL`] (30 days) after which an undelivered message is dropped.
//!
//! Bodies live on disk: memory holds each message's envelope and where its line is in the file
//! (about a hundred bytes a message with the indexes), and a message is read back when it is
//! sent on — to its recipient at login, or to a peer that lacks it.
//!
//! `mailbox.log` (JSON lines: `{"keep":{"relay":…,"origin":…,"stranger":…}}` (`{"put":…}` from
//! older versions), `{"done":<delivered notice>}`, `{"receipt":…}`, `{"told":<uid>}`) is
//! appended and `fdatasync`ed in batches before a put is acknowledged, replayed at start
//! (expired messages dropped), and rewritten with the live messages when it holds four times
//! more lines than that (by the writer, off the lock: the held lines are copied from the old
//! file).

mod log;
mod table;

use std::collections::HashMap;
use std::io;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use gossip_common::message::{Delivered, Relay};
use gossip_common::UserId;
use parking_lot::Mutex;
use tokio::sync::{mpsc, oneshot};

use log::{Line, Pending};
pub use table::{
    id_text, parse_id, Held, Id, MailTable, Origin, Place, MAX_RECEIPTS_PER_SENDER, UNCERTIFIED,
};

/// Largest body, base64: 64 KiB (≈ 48 KiB of ciphertext).
pub const MAX_BODY: usize = 64 * 1024;
/// Messages waiting for one recipient at most.
pub const MAX_PER_RECIPIENT: usize = 1_000;
/// Bytes of bodies waiting for one recipient at most.
pub const MAX_BYTES_PER_RECIPIENT: usize = 8 * 1024 * 1024;
/// Messages held in all.
pub const MAX_HELD: usize = 1_000_000;
/// Bytes of bodies held in all: 2 GiB.
pub const MAX_BYTES: usize = 2 << 30;
/// Bytes of bodies one sender may have waiting, all recipients together: 16 MiB.
pub const MAX_BYTES_PER_SENDER: usize = 16 << 20;
/// Bytes of bodies the users of one origin (the server that sponsored their registration)
/// may have waiting, all together: 512 MiB, a quarter of [`MAX_BYTES`], so one server's users
/// (a member's sybils) cannot fill the mailboxes of everyone else's. Users from before
/// registration certificates share one origin.
pub const MAX_BYTES_PER_ORIGIN: usize = 512 << 20;
/// Messages from strangers (senders not in the recipient's contact list) waiting for one
/// recipient, all strangers together; the rest of [`MAX_PER_RECIPIENT`] is kept for contacts.
pub const MAX_STRANGERS_PER_RECIPIENT: usize = 100;
/// Bytes from strangers waiting for one recipient; the rest of [`MAX_BYTES_PER_RECIPIENT`] is
/// kept for contacts.
pub const MAX_STRANGER_BYTES_PER_RECIPIENT: usize = 1 << 20;
/// Messages one stranger may have waiting for one recipient.
pub const MAX_PER_STRANGER: usize = 10;

/// Who a message is from, as its recipient sees it: which share of their room it takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sender {
    /// In the recipient's contact list.
    Contact,
    /// Anyone else (the message arrives marked as a request).
    Stranger,
}
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
    /// The recipient's room for messages from people not in their contacts is taken (or this
    /// sender's part of it).
    #[error("the recipient has too many undelivered messages from people who are not their contacts; ask them to add you, or try again later")]
    StrangerQuota,
    /// The sender has [`MAX_BYTES_PER_SENDER`] waiting.
    #[error("you have too many undelivered bytes waiting; try again once some are delivered")]
    SenderFull,
    /// The users of the sender's origin have [`MAX_BYTES_PER_ORIGIN`] waiting.
    #[error("the users of your server have too many undelivered bytes waiting; try again later")]
    OriginFull,
    /// The id is not 32 lowercase hex digits.
    #[error("the message id must be 32 lowercase hex digits")]
    BadId,
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

/// A held message's write to `mailbox.log`, to wait for.
pub struct DiskWrite {
    wait: oneshot::Receiver<bool>,
    id: Id,
    state: Arc<Mutex<State>>,
}

impl DiskWrite {
    /// Waits until the message is on disk; if the write failed, it is dropped from memory too.
    pub async fn done(self) -> Result<(), Refused> {
        if self.wait.await == Ok(true) {
            Ok(())
        } else {
            self.state.lock().table.remove(self.id);
            Err(Refused::Unstored)
        }
    }
}

/// What the mailbox's lock guards: the table and the file its places point into (swapped with
/// the places when the file is rewritten, so a reader always gets a matching pair).
pub(super) struct State {
    pub(super) table: MailTable,
    pub(super) reader: Arc<std::fs::File>,
}

/// The mailbox and its file.
pub struct Mailbox {
    state: Arc<Mutex<State>>,
    file: mpsc::Sender<Pending>,
    /// Sends waiting for a peer's `stored`, by message id (closed ones are swept).
    stored_waiters: Mutex<HashMap<String, oneshot::Sender<()>>>,
    /// `fdatasync` durations of `mailbox.log`.
    fsync: prometheus::Histogram,
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl Mailbox {
    /// Replays `mailbox.log` in `dir` (rewriting it if it is mostly dead lines), starts its
    /// writer.
    pub fn open(
        dir: &Path,
        tasks: &tokio_util::task::TaskTracker,
        shutdown: &tokio_util::sync::CancellationToken,
    ) -> io::Result<Mailbox> {
        let path = dir.join(FILE);
        let (mut table, mut lines) = log::replay(&path, now_ms())?;
        table.expire(now_ms());
        let mut appender = log::Appender::open(&path)?;
        let mut reader = std::fs::File::open(&path)?;
        if crate::applog::worth_compacting(lines, table.len()) {
            let r = log::rewrite(&path, table.snapshot(), &reader)?;
            for (id, offset, len) in r.moved {
                table.on_disk(id, offset, len);
            }
            (appender, reader, lines) = (r.appender, r.reader, r.lines);
        }
        let state = Arc::new(Mutex::new(State {
            table,
            reader: Arc::new(reader),
        }));
        let (file, rx) = mpsc::channel(4096);
        let fsync = crate::metrics::fsync_histogram("mailbox");
        tasks.spawn(log::writer(
            path,
            rx,
            Arc::clone(&state),
            appender,
            lines,
            shutdown.clone(),
            fsync.clone(),
        ));
        Ok(Mailbox {
            state,
            file,
            stored_waiters: Mutex::new(HashMap::new()),
            fsync,
        })
    }

    /// The `fdatasync` durations of `mailbox.log`.
    pub fn fsync_histogram(&self) -> prometheus::Histogram {
        self.fsync.clone()
    }

    /// Holds `r` from `sender` of `origin` (the caller checked its signature) and queues it
    /// for the disk. `Ok(None)`: already held or delivered. `Ok(Some(disk))`: new; `disk` says
    /// when it is on disk (`true`) or could not be written (`false`, and it is dropped again).
    /// Callers forward a new message at once and wait for `disk` only before they vouch for
    /// it.
    pub fn hold(
        &self,
        r: Relay,
        sender: Sender,
        origin: Origin,
    ) -> Result<Option<DiskWrite>, Refused> {
        let id = table::parse_id(&r.id).ok_or(Refused::BadId)?;
        let line = Line::Keep(log::Kept {
            relay: r.clone(),
            origin,
            stranger: sender == Sender::Stranger,
        })
        .bytes();
        if !self
            .state
            .lock()
            .table
            .put_as(r, now_ms(), sender, origin)?
        {
            return Ok(None);
        }
        let (done, wait) = oneshot::channel();
        let pending = Pending {
            line,
            put: Some(id),
            done: Some(done),
        };
        if self.file.try_send(pending).is_err() {
            self.state.lock().table.remove(id);
            return Err(Refused::Unstored);
        }
        Ok(Some(DiskWrite {
            wait,
            id,
            state: Arc::clone(&self.state),
        }))
    }

    /// [`Self::hold`] as a contact's message of no certified origin, then waits for the disk.
    /// `Ok(true)`: new and durable.
    pub async fn put(&self, r: Relay) -> Result<bool, Refused> {
        match self.hold(r, Sender::Contact, UNCERTIFIED)? {
            None => Ok(false),
            Some(disk) => disk.done().await.map(|()| true),
        }
    }

    /// Queues a line that no one waits for.
    fn note(&self, line: Line) {
        let _ = self.file.try_send(Pending {
            line: line.bytes(),
            put: None,
            done: None,
        });
    }

    /// Whether message `id` is held here or known delivered.
    pub fn knows(&self, id: &str) -> bool {
        let s = self.state.lock();
        s.table.get(id).is_some() || s.table.is_gone(id)
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
    /// news, and the message's envelope if it was held.
    pub fn delivered(&self, d: &Delivered) -> (bool, Option<Held>) {
        let r = self.state.lock().table.delivered(&d.id, Some(d.clone()));
        if r.0 {
            self.note(Line::Done(d.clone()));
        }
        r
    }

    /// The signed delivery notice of message `id`, if it was delivered.
    pub fn notice(&self, id: &str) -> Option<Delivered> {
        self.state.lock().table.notice(id).cloned()
    }

    /// Keeps delivery notice `d` for its sender, who is not here to be told now.
    pub fn keep_receipt(&self, d: Delivered) {
        let now = now_ms();
        let line = Line::Receipt(now, d.clone());
        self.state.lock().table.add_receipt(d, now);
        self.note(line);
    }

    /// Takes the delivery notices kept for `from` (who is being told now).
    pub fn take_receipts(&self, from: UserId) -> Vec<Delivered> {
        let taken = self.state.lock().table.take_receipts(from);
        if !taken.is_empty() {
            self.note(Line::Told(from));
        }
        taken
    }

    /// The ids of the messages waiting for `to`, oldest first (read each with [`Self::get`]:
    /// a full mailbox is 8 MiB, not read at once).
    pub fn for_recipient(&self, to: UserId) -> Vec<String> {
        let s = self.state.lock();
        s.table
            .for_recipient(to)
            .into_iter()
            .map(table::id_text)
            .collect()
    }

    /// The held set in brief (see [`Digest`]).
    pub fn digest(&self) -> Digest {
        self.state.lock().table.digest()
    }

    /// The ids of every held message.
    pub fn ids(&self) -> Vec<String> {
        self.state.lock().table.ids()
    }

    /// The ids of held messages whose hash is not in `seen` (what a peer's list lacked).
    pub fn ids_except(&self, seen: &std::collections::HashSet<u128>) -> Vec<String> {
        self.state.lock().table.ids_except(seen)
    }

    /// Of `ids` (a part of a peer's list), the hashes of those held here, and the delivery
    /// notices of those known delivered. One lock for the lot.
    pub fn named(&self, ids: &[&str]) -> (Vec<u128>, Vec<Delivered>) {
        let s = self.state.lock();
        let mut held = Vec::new();
        let mut notices = Vec::new();
        for id in ids {
            if s.table.get(id).is_some() {
                held.push(id_hash(id));
            } else if let Some(d) = s.table.notice(id) {
                notices.push(d.clone());
            }
        }
        (held, notices)
    }

    /// The ids of the delivered messages whose notice is known.
    pub fn noticed_ids(&self) -> Vec<String> {
        self.state.lock().table.noticed_ids()
    }

    /// The known notices whose id's hash is not in `seen` (what a peer's list lacked).
    pub fn notices_except(&self, seen: &std::collections::HashSet<u128>) -> Vec<Delivered> {
        self.state.lock().table.notices_except(seen)
    }

    /// Message `id`, if held: from memory if its line is not written yet, else read back from
    /// the file (off the async threads). A line that cannot be read is logged and the message
    /// treated as not held.
    pub async fn get(&self, id: &str) -> Option<Relay> {
        let (place, reader) = {
            let s = self.state.lock();
            (s.table.get(id)?.place.clone(), Arc::clone(&s.reader))
        };
        let (offset, len) = match place {
            Place::Pending(r) => return Some(*r),
            Place::Disk { offset, len } => (offset, len),
        };
        let want = table::parse_id(id)?;
        let read =
            tokio::task::spawn_blocking(move || log::read_message(&reader, offset, len, want))
                .await
                .ok()?;
        match read {
            Ok(r) => Some(r),
            Err(e) => {
                tracing::error!(%id, offset, error = %e, "held message could not be read from mailbox.log");
                None
            }
        }
    }

    /// Messages held.
    pub fn len(&self) -> usize {
        self.state.lock().table.len()
    }

    /// Bytes of bodies held.
    pub fn bytes(&self) -> usize {
        self.state.lock().table.bytes()
    }

    /// Whether none is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests;
