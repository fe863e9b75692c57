//! The user database: every UserInfo and ContactList this server holds, in memory for reads and
//! in append-only datafiles for durability.
//!
//! Rules enforced here, for every path a record can arrive by (client, peer, sync, disk):
//! * the signature is verified before anything is stored — on load too, since the spec's threat
//!   model includes an admin editing the files;
//! * a UserID's key is immutable: a record signed by any other key is refused;
//! * only a strictly newer event count replaces a stored record;
//! * an update is acknowledged only after it is on disk (`fdatasync`, group commit).
//!
//! Locking: one `RwLock` over the maps, never held across an `.await` or a signature check.
//! Appends are queued to the writer thread while the write lock is held, so the file order of
//! two updates to one record matches the order they were accepted in.

mod apply;
mod datafile;
mod fingerprint;
mod load;
mod read;
mod upkeep;
mod writer;

use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use gossip_common::{
    ContactList, ErrorCode, EventCount, Record, RecordError, Signed, UserId, UserInfo,
};
use parking_lot::{Mutex, RwLock};

use apply::BoundKey;
use fingerprint::{hash_of, FpTree, LIST, USER};
use load::{load, verify_all, verify_signed_bytes};
use writer::{Command, Writer};

const USERS_FILE: &str = "users.udb";
const LISTS_FILE: &str = "contacts.cl";
const TXLOG_FILE: &str = "transactions.log";
const LOCK_FILE: &str = "LOCK";

/// The store's files in a data directory (what a backup copies of it).
pub(crate) const DATAFILES: &[&str] = &[USERS_FILE, LISTS_FILE, TXLOG_FILE];

/// Makes a rename or create of `path` durable by syncing its directory.
pub(crate) fn sync_parent(path: &Path) -> io::Result<()> {
    datafile::sync_dir(path)
}
const USERS_HEADER: &str = "#gossip-udb v1";
const LISTS_HEADER: &str = "#gossip-cl v1";

/// Compact a datafile once it is this many times larger than its live entries…
const COMPACT_RATIO: u64 = 3;
/// …and at least this large (small files are not worth the rewrite).
const COMPACT_MIN_BYTES: u64 = 8 << 20;

/// Why an update was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// Bad signature, wrong key, malformed record.
    #[error(transparent)]
    Record(#[from] RecordError),
    /// The stored copy is as new or newer.
    #[error("stale event count {got:?}: stored copy is {current:?}")]
    Stale {
        /// Event count stored.
        current: EventCount,
        /// Event count offered.
        got: EventCount,
    },
    /// No UserInfo is stored for this UserID (so nothing to update or verify against).
    #[error("unknown user {0}")]
    UnknownUser(UserId),
    /// A registration for a UserID that is already bound.
    #[error("user {0} already exists")]
    Exists(UserId),
    /// The datafile could not be written; the update did not happen.
    #[error("datafile I/O: {0}")]
    Io(#[from] io::Error),
}

impl StoreError {
    /// The protocol error code reporting this refusal.
    pub fn code(&self) -> ErrorCode {
        match self {
            StoreError::Record(RecordError::BadSignature) => ErrorCode::BadSignature,
            StoreError::Record(RecordError::KeyMismatch { .. }) => ErrorCode::KeyMismatch,
            StoreError::Record(RecordError::TooLarge(_)) => ErrorCode::TooLarge,
            StoreError::Record(_) => ErrorCode::Malformed,
            StoreError::Stale { .. } => ErrorCode::StaleEventCount,
            StoreError::UnknownUser(_) => ErrorCode::UnknownUser,
            StoreError::Exists(_) => ErrorCode::UidTaken,
            StoreError::Io(_) => ErrorCode::Internal,
        }
    }
}

/// How a UserInfo arrived, which decides whether the UserID may be new.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Update by a logged-in client: the user must exist.
    Update,
    /// Registration: the user must not exist yet; its key becomes bound.
    Create,
    /// From another server (propagation or sync): either.
    Replicate,
}

/// A stored change.
#[derive(Debug, Clone)]
pub struct Applied<T: Record> {
    /// The record now stored.
    pub record: Signed<T>,
    /// The copy it replaced, if any.
    pub previous: Option<Signed<T>>,
}

/// Per-record outcomes of [`Store::apply_replicated`], in input order.
#[derive(Debug, Default)]
pub struct Replicated {
    /// The UserInfo records.
    pub users: Vec<Result<Applied<UserInfo>, StoreError>>,
    /// The ContactList records.
    pub lists: Vec<Result<Applied<ContactList>, StoreError>>,
}

/// What opening the store found on disk.
#[derive(Debug, Default, Clone)]
pub struct LoadReport {
    /// UserInfo records loaded.
    pub users: usize,
    /// ContactList records loaded.
    pub lists: usize,
    /// Bytes of torn last entries cut off (crash during a write).
    pub torn_bytes: u64,
    /// Entries skipped for a bad checksum.
    pub corrupt_lines: usize,
    /// Entries dropped because their signature did not verify (tampered files).
    pub bad_signatures: usize,
    /// Contact lists dropped because their owner's UserInfo is missing.
    pub orphan_lists: usize,
}

struct Stored<T> {
    record: Signed<T>,
    line_len: u64,
}

#[derive(Default)]
struct FileBytes {
    total: u64,
    live: u64,
}

#[derive(Default)]
struct State {
    users: HashMap<UserId, Stored<UserInfo>>,
    lists: HashMap<UserId, Stored<ContactList>>,
    users_bytes: FileBytes,
    lists_bytes: FileBytes,
    /// Range fingerprints over both maps, for reconciliation and the digest.
    fp: FpTree,
    /// The users' words, for finding people (see [`crate::directory`]).
    directory: crate::directory::Directory,
}

/// The user database. Cheap to share (`Arc<Store>`).
pub struct Store {
    /// Held (flock) for the store's lifetime: two servers appending to the same datafiles
    /// would interleave lines and break each other's in-memory view.
    _lock: std::fs::File,
    state: RwLock<State>,
    writer: Writer,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
    compacting: AtomicBool,
    /// Set by the simulator: see [`Store::on_paused_clock`].
    paused_clock: AtomicBool,
    /// Woken whenever a user not stored before is stored (see [`Store::await_user`]).
    user_added: tokio::sync::Notify,
    dir: PathBuf,
    /// `fdatasync` durations of the two datafiles, for the node's metrics.
    fsync: [prometheus::Histogram; 2],
}

impl Store {
    /// Opens (or creates) the datafiles in `dir`, recovering from any crash and verifying every
    /// record's signature.
    pub fn open(dir: &Path) -> io::Result<(Arc<Store>, LoadReport)> {
        std::fs::create_dir_all(dir)?;
        let lock = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(dir.join(LOCK_FILE))?;
        lock.try_lock().map_err(|_| {
            io::Error::new(
                io::ErrorKind::WouldBlock,
                format!("{} is in use by another gossipd", dir.display()),
            )
        })?;
        let users_path = dir.join(USERS_FILE);
        let lists_path = dir.join(LISTS_FILE);
        let mut report = LoadReport::default();
        let mut state = State::default();

        let (users, rep) = load::<UserInfo>(&users_path, USERS_HEADER)?;
        report.torn_bytes += rep.torn_tail_bytes;
        report.corrupt_lines += rep.corrupt;
        state.users_bytes.total = rep.len;
        let (users, bad) = verify_all(users, |r| Some(r.public_key));
        report.bad_signatures += bad;
        for (uid, stored) in users {
            state.users_bytes.live += stored.line_len;
            state.fp.add(uid, hash_of(USER, uid, &stored.record));
            state.directory.replace(uid, None, Some(&stored.record));
            state.users.insert(uid, stored);
        }

        let (lists, rep) = load::<ContactList>(&lists_path, LISTS_HEADER)?;
        report.torn_bytes += rep.torn_tail_bytes;
        report.corrupt_lines += rep.corrupt;
        state.lists_bytes.total = rep.len;
        let before = lists.len();
        let lists: Vec<_> = lists
            .into_iter()
            .filter(|(uid, _)| state.users.contains_key(uid))
            .collect();
        report.orphan_lists = before - lists.len();
        let users_ref = &state.users;
        let (lists, bad) = verify_all(lists, |r| {
            users_ref.get(&r.owner).map(|u| u.record.public_key)
        });
        report.bad_signatures += bad;
        for (uid, stored) in lists {
            state.lists_bytes.live += stored.line_len;
            state.fp.add(uid, hash_of(LIST, uid, &stored.record));
            state.lists.insert(uid, stored);
        }
        report.users = state.users.len();
        report.lists = state.lists.len();

        let fsync = [
            crate::metrics::fsync_histogram("users"),
            crate::metrics::fsync_histogram("contactlists"),
        ];
        let (writer, thread) = Writer::start(writer::Paths {
            users: users_path,
            lists: lists_path,
            txlog: dir.join(TXLOG_FILE),
            users_header: USERS_HEADER,
            lists_header: LISTS_HEADER,
            fsync: fsync.clone(),
        })?;
        let store = Arc::new(Store {
            _lock: lock,
            state: RwLock::new(state),
            writer,
            thread: Mutex::new(Some(thread)),
            compacting: AtomicBool::new(false),
            paused_clock: AtomicBool::new(false),
            user_added: tokio::sync::Notify::new(),
            dir: dir.to_owned(),
            fsync,
        });
        Ok((store, report))
    }

    /// The `fdatasync` durations of the users' and the contact lists' datafiles.
    pub fn fsync_histograms(&self) -> [prometheus::Histogram; 2] {
        self.fsync.clone()
    }

    /// The directory holding the datafiles.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Marks this store as running under tokio's paused clock (the simulator). That clock jumps
    /// to the next timer whenever every task waits, except while `spawn_blocking` work runs.
    /// The writer is a thread of its own, so a node awaiting its `fdatasync` looked idle, and
    /// simulated seconds passed during real milliseconds of disk time: under CPU load, a
    /// handshake's deadline fired in a cluster that was merely writing. Here each write is
    /// awaited from the blocking pool instead, which holds the clock. In production that would
    /// cost a pool thread per pending write, so it is the simulator's only.
    pub(crate) fn on_paused_clock(&self) {
        self.paused_clock.store(true, Ordering::Relaxed);
    }

    /// Records an admin action (or other non-record change) in the transaction log.
    pub fn audit(&self, origin: &str, what: &str) {
        self.writer.send(Command::Log {
            txlog: format!("{} {origin} {what}\n", now_rfc3339()),
        });
    }
}

/// Writes a fresh data directory holding exactly `users` and `lists`: a bulk import, used by
/// the benchmark to seed nodes with millions of pre-signed records without a million round
/// trips. Nothing is verified here because [`Store::open`] verifies every record it loads;
/// a directory that already has datafiles is refused rather than overwritten.
pub fn write_datafiles<'a>(
    dir: &Path,
    users: impl IntoIterator<Item = &'a Signed<UserInfo>>,
    lists: impl IntoIterator<Item = &'a Signed<ContactList>>,
) -> io::Result<()> {
    std::fs::create_dir_all(dir)?;
    for name in [USERS_FILE, LISTS_FILE] {
        if dir.join(name).exists() {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!("{} already has {name}", dir.display()),
            ));
        }
    }
    let user_lines = users
        .into_iter()
        .map(|r| datafile::encode_line(r.user_id, r.event_count, r));
    datafile::write_new(&dir.join(USERS_FILE), USERS_HEADER, user_lines)?;
    let list_lines = lists
        .into_iter()
        .map(|r| datafile::encode_line(r.owner, r.event_count, r));
    datafile::write_new(&dir.join(LISTS_FILE), LISTS_HEADER, list_lines)?;
    Ok(())
}

fn now_rfc3339() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| "-".into())
}

#[cfg(test)]
mod tests;
