//! The write path: a record from any source verified, checked against the stored one (newer
//! event count, same key), appended and awaited until durable, with the in-memory maps and
//! the fingerprint tree updated under the write lock.

use std::sync::atomic::Ordering;

use gossip_common::{
    ContactList, EventCount, PublicKey, RecordError, Signed, UserId, UserInfo, Versioned,
};
use tokio::sync::oneshot;

use super::fingerprint::{hash_of, LIST, USER};
use super::writer::{Command, FileKind};
use super::*;

impl Store {
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
            let old_words = previous.as_ref().map(|p| &*p.0);
            state.directory.replace(uid, old_words, Some(&record));
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
        if previous.is_none() {
            self.user_added.notify_waiters();
        }
        announce(&record);
        let durable = self
            .await_durable(done, uid, &record, previous.clone(), USER, |s| {
                (&mut s.users, &mut s.fp)
            })
            .await;
        if durable.is_err() {
            // The record was put back (or a newer one stored meanwhile): the directory follows
            // what is stored now.
            let mut state = self.state.write();
            let State {
                users, directory, ..
            } = &mut *state;
            directory.replace(uid, Some(&record), None);
            if let Some(now) = users.get(&uid) {
                directory.replace(uid, None, Some(&now.record));
            }
        }
        durable?;
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
}

/// The key a record carries, if its kind carries one (only UserInfo does).
pub(super) trait BoundKey {
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
