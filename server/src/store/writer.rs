//! The datafile writer: one OS thread that owns the files and makes appends durable.
//!
//! Group commit: the thread takes every append queued since its last round, writes them all,
//! calls `fdatasync` once per touched file, and only then acknowledges them. Under load one
//! fsync covers hundreds of updates; with no load an update waits for exactly one fsync.
//! Blocking file I/O never runs on the async runtime's worker threads.
//!
//! The queue is an unbounded channel; what bounds it is upstream. A client session handles one
//! request at a time and a link applies one propagated record at a time, each waiting for its
//! acknowledgement, so each queues at most one append. Sync queues a whole `changedEntries`
//! batch at once (one frame of records), with at most `SYNC_BATCHES_IN_FLIGHT` batches per
//! link. `Store::audit` lines are not awaited but come only from admin commands. A slow disk
//! therefore delays acknowledgements rather than growing the queue without limit, but the bound
//! grows with clients and links.

use std::fs::File;
use std::io::{self, Write};
use std::path::PathBuf;
use std::sync::mpsc;
use std::thread;

use tokio::sync::oneshot;

use super::datafile;

/// Which datafile an append goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FileKind {
    /// `users.udb`.
    Users,
    /// `contacts.cl`.
    Lists,
}

pub(crate) enum Command {
    Append {
        kind: FileKind,
        line: Vec<u8>,
        txlog: String,
        done: oneshot::Sender<io::Result<()>>,
    },
    /// Replace a datafile with these live lines (see `datafile::write_compacted`). The lines
    /// are encoded here, on the writer thread, from a snapshot of the records: the store's lock
    /// is held only while the snapshot (reference-counted records) is taken.
    Compact {
        kind: FileKind,
        lines: Box<dyn Iterator<Item = Vec<u8>> + Send>,
        done: oneshot::Sender<io::Result<u64>>,
    },
    /// Audit entry only (admin actions), no datafile change.
    Log { txlog: String },
    /// Acknowledged once everything queued before it is durable.
    Flush {
        done: oneshot::Sender<io::Result<()>>,
    },
    /// The datafiles as they stand after everything queued before (written, not synced):
    /// each opened anew with its length then, a consistent cut for an online backup. Reading
    /// each up to its length gives that moment's files whatever is appended or compacted
    /// later (a compaction replaces the file by a rename; the open handle keeps the old one).
    Snapshot {
        done: oneshot::Sender<io::Result<Vec<(PathBuf, File, u64)>>>,
    },
}

pub(crate) struct Paths {
    pub(crate) users: PathBuf,
    pub(crate) lists: PathBuf,
    pub(crate) txlog: PathBuf,
    pub(crate) users_header: &'static str,
    pub(crate) lists_header: &'static str,
    /// `fdatasync` durations of the users' and the contact lists' datafiles.
    pub(crate) fsync: [prometheus::Histogram; 2],
}

/// Handle to the writer thread; dropping every clone stops the thread after it drains.
#[derive(Clone)]
pub(crate) struct Writer {
    tx: mpsc::Sender<Command>,
}

impl Writer {
    pub(crate) fn start(paths: Paths) -> io::Result<(Writer, thread::JoinHandle<()>)> {
        let users = datafile::open_append(&paths.users)?;
        let lists = datafile::open_append(&paths.lists)?;
        let txlog = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&paths.txlog)?;
        let (tx, rx) = mpsc::channel();
        let handle = thread::Builder::new()
            .name("gossip-datafile-writer".into())
            .spawn(move || run(rx, paths, users, lists, txlog))?;
        Ok((Writer { tx }, handle))
    }

    pub(crate) fn send(&self, cmd: Command) {
        // The thread only exits when every sender is gone, so this cannot fail while `self`
        // exists; if it ever did, the dropped `done` sender reports the failure to the caller.
        let _ = self.tx.send(cmd);
    }
}

fn run(rx: mpsc::Receiver<Command>, paths: Paths, users: File, lists: File, txlog: File) {
    let mut users = io::BufWriter::with_capacity(1 << 16, users);
    let mut lists = io::BufWriter::with_capacity(1 << 16, lists);
    let mut txlog = io::BufWriter::with_capacity(1 << 16, txlog);
    let mut batch = Vec::new();
    while let Ok(first) = rx.recv() {
        batch.push(first);
        while let Ok(more) = rx.try_recv() {
            batch.push(more);
            if batch.len() >= 4096 {
                break;
            }
        }
        let mut acks = Vec::new();
        let mut flushes = Vec::new();
        let (mut dirty_users, mut dirty_lists) = (false, false);
        let mut failed: Option<io::ErrorKind> = None;
        for cmd in batch.drain(..) {
            match cmd {
                Command::Append {
                    kind,
                    line,
                    txlog: entry,
                    done,
                } => {
                    let target = match kind {
                        FileKind::Users => {
                            dirty_users = true;
                            &mut users
                        }
                        FileKind::Lists => {
                            dirty_lists = true;
                            &mut lists
                        }
                    };
                    if let Err(e) = target.write_all(&line) {
                        failed.get_or_insert(e.kind());
                    }
                    let _ = txlog.write_all(entry.as_bytes());
                    acks.push(done);
                }
                Command::Log { txlog: entry } => {
                    let _ = txlog.write_all(entry.as_bytes());
                }
                Command::Flush { done } => flushes.push(done),
                Command::Snapshot { done } => {
                    let cut = (|| {
                        users.flush()?;
                        lists.flush()?;
                        txlog.flush()?;
                        [&paths.users, &paths.lists, &paths.txlog]
                            .into_iter()
                            .map(|p| {
                                let f = File::open(p)?;
                                let len = f.metadata()?.len();
                                Ok((p.clone(), f, len))
                            })
                            .collect()
                    })();
                    let _ = done.send(cut);
                }
                Command::Compact { kind, lines, done } => {
                    // Everything queued earlier must reach the old file first.
                    let result = sync_all(&mut users, &mut lists, true, true, &paths.fsync)
                        .and_then(|()| {
                            let (path, header, target) = match kind {
                                FileKind::Users => (&paths.users, paths.users_header, &mut users),
                                FileKind::Lists => (&paths.lists, paths.lists_header, &mut lists),
                            };
                            let len = datafile::write_compacted(path, header, lines)?;
                            *target =
                                io::BufWriter::with_capacity(1 << 16, datafile::open_append(path)?);
                            Ok(len)
                        });
                    let _ = done.send(result);
                }
            }
        }
        let synced = sync_all(
            &mut users,
            &mut lists,
            dirty_users,
            dirty_lists,
            &paths.fsync,
        );
        let _ = txlog.flush();
        let outcome =
            |failed: Option<io::ErrorKind>, synced: &io::Result<()>| match (failed, synced) {
                (Some(kind), _) => Err(io::Error::new(kind, "datafile write failed")),
                (None, Err(e)) => Err(io::Error::new(e.kind(), e.to_string())),
                (None, Ok(())) => Ok(()),
            };
        for done in acks.into_iter().chain(flushes) {
            let _ = done.send(outcome(failed, &synced));
        }
    }
    // Channel closed: final flush for a clean shutdown.
    let _ = sync_all(&mut users, &mut lists, true, true, &paths.fsync);
    let _ = txlog.flush();
}

fn sync_all(
    users: &mut io::BufWriter<File>,
    lists: &mut io::BufWriter<File>,
    dirty_users: bool,
    dirty_lists: bool,
    fsync: &[prometheus::Histogram; 2],
) -> io::Result<()> {
    for (dirty, file, h) in [
        (dirty_users, users, &fsync[0]),
        (dirty_lists, lists, &fsync[1]),
    ] {
        if dirty {
            file.flush()?;
            let t = std::time::Instant::now();
            file.get_ref().sync_data()?;
            crate::metrics::observe(h, t);
        }
    }
    Ok(())
}
