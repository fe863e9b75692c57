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
    ContactList, ErrorCode, EventCount, PublicKey, Record, RecordError, Signed, UserId, UserInfo,
    Versioned,
};
use parking_lot::{Mutex, RwLock};
use tokio::sync::oneshot;

use fingerprint::{hash_of, FpTree, LIST, USER};
use load::{load, verify_all, verify_signed_bytes};
use writer::{Command, FileKind, Writer};

const USERS_FILE: &str = "users.udb";
const LISTS_FILE: &str = "contacts.cl";
const TXLOG_FILE: &str = "transactions.log";
const LOCK_FILE: &str = "LOCK";
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
    dir: PathBuf,
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

        let (writer, thread) = Writer::start(writer::Paths {
            users: users_path,
            lists: lists_path,
            txlog: dir.join(TXLOG_FILE),
            users_header: USERS_HEADER,
            lists_header: LISTS_HEADER,
        })?;
        let store = Arc::new(Store {
            _lock: lock,
            state: RwLock::new(state),
            writer,
            thread: Mutex::new(Some(thread)),
            compacting: AtomicBool::new(false),
            paused_clock: AtomicBool::new(false),
            dir: dir.to_owned(),
        });
        Ok((store, report))
    }

    /// The directory holding the datafiles.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Stores a UserInfo if it is validly signed and newer; durable when this returns `Ok`.
    pub async fn apply_user_info(
        &self,
        record: Signed<UserInfo>,
        mode: Mode,
        origin: &str,
    ) -> Result<Applied<UserInfo>, StoreError> {
        self.apply_user_inner(record, mode, origin, false, |_| {})
            .await
    }

    /// [`Store::apply_user_info`], calling `announce` with the record as soon as it is
    /// verified and accepted (in memory, its write queued) instead of after the `fdatasync`.
    ///
    /// Used to push and forward changes without putting a disk flush on every hop of the
    /// tree: a peer or a watching client may safely see a record before it is durable here,
    /// because it is signed by its owner and valid on its own; what must wait for the disk is
    /// the acknowledgement to the client that sent it, which is this call's return. If the
    /// write then fails, the record is taken back here and comes back through sync.
    pub async fn apply_user_info_then(
        &self,
        record: Signed<UserInfo>,
        mode: Mode,
        origin: &str,
        announce: impl FnOnce(&Signed<UserInfo>),
    ) -> Result<Applied<UserInfo>, StoreError> {
        self.apply_user_inner(record, mode, origin, false, announce)
            .await
    }

    /// Applies a batch of records from a peer (sync): the same rules as
    /// [`Store::apply_user_info`] in [`Mode::Replicate`] and [`Store::apply_contact_list`], but
    /// the signatures are checked together by batch verification (about twice as fast), off the
    /// async threads, and every write is queued before any is awaited, so the batch shares one
    /// `fdatasync`. Users go first, so a list may belong to a user of the same batch.
    pub async fn apply_replicated(
        self: &Arc<Self>,
        users: Vec<Signed<UserInfo>>,
        lists: Vec<Signed<ContactList>>,
        origin: &str,
    ) -> Replicated {
        let list_keys: Vec<Option<PublicKey>> = {
            let in_batch: HashMap<UserId, PublicKey> =
                users.iter().map(|u| (u.user_id, u.public_key)).collect();
            lists
                .iter()
                .map(|l| {
                    self.public_key(l.owner)
                        .or_else(|| in_batch.get(&l.owner).copied())
                })
                .collect()
        };
        let verified = tokio::task::spawn_blocking(move || {
            // One verification over both kinds: a user's record and list share their key's
            // decompression in the batch verifier.
            let items = users
                .iter()
                .map(|u| (Some(u.public_key), u.raw().as_bytes(), u.signature()))
                .chain(
                    list_keys
                        .iter()
                        .zip(&lists)
                        .map(|(k, l)| (*k, l.raw().as_bytes(), l.signature())),
                )
                .collect();
            let mut user_ok = verify_signed_bytes(gossip_common::Domain::Record, items);
            let list_ok = user_ok.split_off(users.len());
            (users, lists, user_ok, list_ok, list_keys)
        })
        .await;
        let Ok((users, lists, user_ok, list_ok, list_keys)) = verified else {
            return Replicated::default();
        };
        let user_futs = users.into_iter().zip(user_ok).map(|(r, ok)| async move {
            if !ok {
                return Err(RecordError::BadSignature.into());
            }
            self.apply_user_inner(r, Mode::Replicate, origin, true, |_| {})
                .await
        });
        let list_futs = lists
            .into_iter()
            .zip(list_ok.into_iter().zip(list_keys))
            .map(|(r, (ok, key))| async move {
                if !ok {
                    return Err(RecordError::BadSignature.into());
                }
                self.apply_list_inner(r, origin, key).await
            });
        // `join!` polls the users' futures first, and each stores its record in memory before
        // its first await, so the lists find their owners.
        let (users, lists) = futures::join!(
            futures::future::join_all(user_futs),
            futures::future::join_all(list_futs)
        );
        Replicated { users, lists }
    }

    async fn apply_user_inner(
        &self,
        record: Signed<UserInfo>,
        mode: Mode,
        origin: &str,
        signature_checked: bool,
        announce: impl FnOnce(&Signed<UserInfo>),
    ) -> Result<Applied<UserInfo>, StoreError> {
        let uid = record.user_id;
        // Cheap checks under a read lock, the expensive signature check under none.
        {
            let state = self.state.read();
            match (state.users.get(&uid), mode) {
                (Some(_), Mode::Create) => return Err(StoreError::Exists(uid)),
                (None, Mode::Update) => return Err(StoreError::UnknownUser(uid)),
                (Some(stored), _) => check_newer_and_key(&stored.record, &record)?,
                (None, _) => {}
            }
        }
        if !signature_checked {
            record.verify_self()?;
        }
        let line = datafile::encode_line(uid, record.event_count, &record);
        let (done, previous) = {
            let mut state = self.state.write();
            // Re-check: another update may have won the race while we verified.
            let previous = state
                .users
                .get(&uid)
                .map(|s| (s.record.clone(), s.line_len));
            match (&previous, mode) {
                (Some(_), Mode::Create) => return Err(StoreError::Exists(uid)),
                (None, Mode::Update) => return Err(StoreError::UnknownUser(uid)),
                (Some((stored, _)), _) => check_newer_and_key(stored, &record)?,
                (None, _) => {}
            }
            let line_len = line.len() as u64;
            let bytes = &mut state.users_bytes;
            bytes.total += line_len;
            bytes.live = bytes.live + line_len - previous.as_ref().map_or(0, |p| p.1);
            let old = previous.as_ref().map(|p| hash_of(USER, uid, &p.0));
            state.fp.replace(uid, old, hash_of(USER, uid, &record));
            state.users.insert(
                uid,
                Stored {
                    record: record.clone(),
                    line_len,
                },
            );
            let done = self.append(
                FileKind::Users,
                line,
                origin,
                "UserInfo",
                uid,
                record.event_count,
            );
            (done, previous.map(|p| p.0))
        };
        announce(&record);
        self.await_durable(done, uid, &record, previous.clone(), USER, |s| {
            (&mut s.users, &mut s.fp)
        })
        .await?;
        self.maybe_compact(FileKind::Users).await;
        Ok(Applied { record, previous })
    }

    /// Stores a ContactList if its owner's key signed it and it is newer.
    pub async fn apply_contact_list(
        &self,
        record: Signed<ContactList>,
        origin: &str,
    ) -> Result<Applied<ContactList>, StoreError> {
        self.apply_list_inner(record, origin, None).await
    }

    /// `checked_with`: the key the signature was already verified with, if any; it counts only
    /// if it is the owner's bound key.
    async fn apply_list_inner(
        &self,
        record: Signed<ContactList>,
        origin: &str,
        checked_with: Option<PublicKey>,
    ) -> Result<Applied<ContactList>, StoreError> {
        let uid = record.owner;
        let key = self.public_key(uid).ok_or(StoreError::UnknownUser(uid))?;
        if let Some(stored) = self.contact_list(uid) {
            check_newer(stored.event_count, record.event_count)?;
        }
        if checked_with != Some(key) {
            record.verify(&key)?;
        }
        let line = datafile::encode_line(uid, record.event_count, &record);
        let (done, previous) = {
            let mut state = self.state.write();
            let previous = state
                .lists
                .get(&uid)
                .map(|s| (s.record.clone(), s.line_len));
            if let Some((stored, _)) = &previous {
                check_newer(stored.event_count, record.event_count)?;
            }
            let line_len = line.len() as u64;
            let bytes = &mut state.lists_bytes;
            bytes.total += line_len;
            bytes.live = bytes.live + line_len - previous.as_ref().map_or(0, |p| p.1);
            let old = previous.as_ref().map(|p| hash_of(LIST, uid, &p.0));
            state.fp.replace(uid, old, hash_of(LIST, uid, &record));
            state.lists.insert(
                uid,
                Stored {
                    record: record.clone(),
                    line_len,
                },
            );
            let done = self.append(
                FileKind::Lists,
                line,
                origin,
                "ContactList",
                uid,
                record.event_count,
            );
            (done, previous.map(|p| p.0))
        };
        self.await_durable(done, uid, &record, previous.clone(), LIST, |s| {
            (&mut s.lists, &mut s.fp)
        })
        .await?;
        self.maybe_compact(FileKind::Lists).await;
        Ok(Applied { record, previous })
    }

    fn append(
        &self,
        kind: FileKind,
        line: Vec<u8>,
        origin: &str,
        what: &str,
        uid: UserId,
        ec: EventCount,
    ) -> oneshot::Receiver<io::Result<()>> {
        let (done, rx) = oneshot::channel();
        let txlog = format!(
            "{} {origin} store {what} uid={uid} ec={}/{}\n",
            now_rfc3339(),
            ec.count,
            u8::from(ec.rollover)
        );
        self.writer.send(Command::Append {
            kind,
            line,
            txlog,
            done,
        });
        rx
    }

    /// Waits for the writer; if the write failed, puts the previous copy back (if ours is still
    /// the stored one) so memory never claims what the disk does not hold.
    async fn await_durable<T: Versioned>(
        &self,
        done: oneshot::Receiver<io::Result<()>>,
        uid: UserId,
        ours: &Signed<T>,
        previous: Option<Signed<T>>,
        kind: u8,
        map: impl FnOnce(&mut State) -> (&mut HashMap<UserId, Stored<T>>, &mut FpTree),
    ) -> Result<(), StoreError> {
        let result = if self.paused_clock.load(Ordering::Relaxed) {
            // Waited for on the blocking pool: see `on_paused_clock`.
            tokio::task::spawn_blocking(move || done.blocking_recv().ok())
                .await
                .ok()
                .flatten()
        } else {
            done.await.ok()
        };
        let result = result.unwrap_or_else(|| Err(io::Error::other("datafile writer stopped")));
        if let Err(e) = result {
            tracing::error!(%uid, error = %e, "datafile write failed; update not stored");
            let mut state = self.state.write();
            let (map, fp) = map(&mut state);
            // Only undo if nothing newer was stored meanwhile.
            if map.get(&uid).is_some_and(|s| &s.record == ours) {
                fp.remove(uid, hash_of(kind, uid, ours));
                if let Some(record) = &previous {
                    fp.add(uid, hash_of(kind, uid, record));
                }
                match previous {
                    Some(record) => {
                        map.insert(
                            uid,
                            Stored {
                                record,
                                line_len: 0,
                            },
                        );
                    }
                    None => {
                        map.remove(&uid);
                    }
                }
            }
            return Err(StoreError::Io(e));
        }
        Ok(())
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

/// The key a record carries, if its kind carries one (only UserInfo does).
trait BoundKey {
    fn bound_key(&self) -> Option<PublicKey>;
}

impl BoundKey for UserInfo {
    fn bound_key(&self) -> Option<PublicKey> {
        Some(self.public_key)
    }
}

impl BoundKey for ContactList {
    fn bound_key(&self) -> Option<PublicKey> {
        None
    }
}

fn check_newer(stored: EventCount, got: EventCount) -> Result<(), StoreError> {
    if got.is_newer_than(stored) {
        Ok(())
    } else {
        Err(StoreError::Stale {
            current: stored,
            got,
        })
    }
}

fn check_newer_and_key(
    stored: &Signed<UserInfo>,
    got: &Signed<UserInfo>,
) -> Result<(), StoreError> {
    if stored.public_key != got.public_key {
        return Err(RecordError::KeyMismatch { uid: got.user_id }.into());
    }
    check_newer(stored.event_count, got.event_count)
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
