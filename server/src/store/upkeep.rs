//! Keeping the store: waiting for durability, compacting a datafile (encoded on the writer
//! thread from a snapshot, so no lock is held while a whole file is written) and closing.

use std::collections::HashMap;
use std::io;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use gossip_common::{Signed, UserId, Versioned};
use tokio::sync::oneshot;

use super::writer::{Command, FileKind};
use super::{datafile, Store, Stored, COMPACT_MIN_BYTES, COMPACT_RATIO};

impl Store {
    /// The datafiles (users, contact lists, the transaction log) cut at one moment for an
    /// online backup: each path, an open handle and its length then. Everything acknowledged
    /// before this call is within those lengths.
    pub async fn snapshot_files(
        &self,
    ) -> io::Result<Vec<(std::path::PathBuf, std::fs::File, u64)>> {
        let (done, rx) = oneshot::channel();
        self.writer.send(Command::Snapshot { done });
        rx.await
            .map_err(|_| io::Error::other("the datafile writer has stopped"))?
    }

    /// Waits until everything accepted so far is on disk.
    pub async fn flush(&self) -> io::Result<()> {
        let (done, rx) = oneshot::channel();
        self.writer.send(Command::Flush { done });
        rx.await
            .unwrap_or_else(|_| Err(io::Error::other("datafile writer stopped")))
    }

    /// Rewrites both datafiles with only their live entries.
    pub async fn compact(&self) -> io::Result<()> {
        for kind in [FileKind::Users, FileKind::Lists] {
            self.compact_file(kind).await?;
        }
        Ok(())
    }

    async fn compact_file(&self, kind: FileKind) -> io::Result<()> {
        let (done, rx) = oneshot::channel();
        {
            // Holding the read lock while queueing keeps appends (which need the write lock)
            // from slipping between the snapshot and the compaction command.
            let state = self.state.read();
            let lines = match kind {
                FileKind::Users => snapshot_lines(&state.users),
                FileKind::Lists => snapshot_lines(&state.lists),
            };
            self.writer.send(Command::Compact { kind, lines, done });
        }
        let len = rx
            .await
            .unwrap_or_else(|_| Err(io::Error::other("datafile writer stopped")))?;
        let mut state = self.state.write();
        let bytes = match kind {
            FileKind::Users => &mut state.users_bytes,
            FileKind::Lists => &mut state.lists_bytes,
        };
        bytes.total = len.max(bytes.live);
        tracing::info!(?kind, bytes = len, "datafile compacted");
        Ok(())
    }

    pub(super) async fn maybe_compact(&self, kind: FileKind) {
        let needed = {
            let state = self.state.read();
            let b = match kind {
                FileKind::Users => &state.users_bytes,
                FileKind::Lists => &state.lists_bytes,
            };
            b.total > COMPACT_MIN_BYTES && b.total > COMPACT_RATIO * b.live
        };
        if needed && !self.compacting.swap(true, Ordering::AcqRel) {
            // The update that crossed the threshold pays for the rewrite; it holds no lock
            // while waiting, so everyone else carries on.
            if let Err(e) = self.compact_file(kind).await {
                tracing::warn!(error = %e, "compaction failed; datafile left as it was");
            }
            self.compacting.store(false, Ordering::Release);
        }
    }

    /// Flushes and stops the writer thread. Call once, at shutdown, after every other user of
    /// the store has finished.
    pub async fn close(self: Arc<Self>) -> io::Result<()> {
        self.flush().await?;
        let thread = self.thread.lock().take();
        drop(self);
        if let Some(t) = thread {
            // The thread exits when the last `Store` (and its writer handle) is gone; if some
            // other clone is still alive, the flush above already made everything durable.
            if t.is_finished() {
                let _ = t.join();
            }
        }
        Ok(())
    }
}

/// The live lines of a datafile, encoded lazily (on the writer thread) from a snapshot taken
/// now: cloning the records is a reference count each, so the lock is held for microseconds per
/// thousand records, not for the encoding of the whole database.
fn snapshot_lines<T: Versioned + Send + Sync + 'static>(
    map: &HashMap<UserId, Stored<T>>,
) -> Box<dyn Iterator<Item = Vec<u8>> + Send> {
    let snapshot: Vec<(UserId, Signed<T>)> = map
        .iter()
        .map(|(uid, s)| (*uid, s.record.clone()))
        .collect();
    Box::new(
        snapshot
            .into_iter()
            .map(|(uid, r)| datafile::encode_line(uid, r.event_count(), &r)),
    )
}
