//! `mailbox.log`: its lines, the writer that appends them in `fdatasync`ed batches before a
//! put is acknowledged (and tells the table where each message's line landed, so its body
//! can leave memory), and the rewrite that compacts it to the live messages.

use std::fs::File;
use std::io::{self, BufRead, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use gossip_common::message::{Delivered, Relay};
use gossip_common::UserId;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};

use super::table::{Id, MailTable, Origin, Place, Snapshot, UNCERTIFIED};
use super::{now_ms, Sender, State};

/// A line to write: its bytes, the message it holds (for a put) and who waits for it to be
/// on disk.
pub(super) struct Pending {
    pub(super) line: Vec<u8>,
    pub(super) put: Option<Id>,
    pub(super) done: Option<oneshot::Sender<bool>>,
}

/// One line of `mailbox.log`.
#[derive(Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(super) enum Line {
    /// A held message (lines from before origins were kept: a contact's, uncertified).
    Put(Relay),
    /// A held message, with what it counts against.
    Keep(Kept),
    /// Delivered (an id only: lines from before notices were kept).
    Gone(String),
    /// Delivered, with the recipient's signed notice.
    Done(Delivered),
    /// A delivery notice kept for its sender, and when.
    Receipt(u64, Delivered),
    /// The sender was told.
    Told(UserId),
}

/// A held message and the shares it takes.
#[derive(Serialize, Deserialize)]
pub(super) struct Kept {
    pub(super) relay: Relay,
    #[serde(default)]
    pub(super) origin: Origin,
    #[serde(default)]
    pub(super) stranger: bool,
}

impl Line {
    pub(super) fn bytes(&self) -> Vec<u8> {
        let mut v = serde_json::to_vec(self).expect("plain values serialise");
        v.push(b'\n');
        v
    }
}

/// The held message in the line at `offset` (`len` bytes) of `file`, if it is message `id`.
pub(super) fn read_message(file: &File, offset: u64, len: u32, id: Id) -> io::Result<Relay> {
    let mut buf = vec![0; len as usize];
    file.read_exact_at(&mut buf, offset)?;
    let relay = match serde_json::from_slice::<Line>(&buf) {
        Ok(Line::Put(r)) => r,
        Ok(Line::Keep(k)) => k.relay,
        _ => return Err(io::Error::other("not a message line")),
    };
    if super::table::parse_id(&relay.id) != Some(id) {
        return Err(io::Error::other("the line holds another message"));
    }
    Ok(relay)
}

/// The end of `mailbox.log` that batches are appended to.
pub(super) struct Appender {
    file: File,
    /// Its length: where the next line goes.
    end: u64,
}

impl Appender {
    pub(super) fn open(path: &Path) -> io::Result<Appender> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)?;
        let end = file.metadata()?.len();
        Ok(Appender { file, end })
    }

    /// Appends `batch` and `fdatasync`s it; on failure the file is cut back to where it was,
    /// so the next batch does not follow a torn line.
    fn append(&mut self, batch: &[u8], fsync: &prometheus::Histogram) -> io::Result<()> {
        let written = self.file.write_all(batch).and_then(|()| {
            let t = std::time::Instant::now();
            self.file.sync_data()?;
            crate::metrics::observe(fsync, t);
            Ok(())
        });
        match written {
            Ok(()) => {
                self.end += batch.len() as u64;
                Ok(())
            }
            Err(e) => {
                let _ = self.file.set_len(self.end);
                Err(e)
            }
        }
    }
}

/// Replays `path` into a table: every line read, each held message's place noted. A torn last
/// line (a crash mid-append) is cut off. Returns the table and how many lines the file holds.
pub(super) fn replay(path: &Path, now: u64) -> io::Result<(MailTable, usize)> {
    let mut table = MailTable::default();
    let Ok(f) = File::open(path) else {
        return Ok((table, 0));
    };
    let mut reader = io::BufReader::new(f);
    let (mut offset, mut lines, mut buf) = (0u64, 0usize, Vec::new());
    loop {
        buf.clear();
        let n = reader.read_until(b'\n', &mut buf)?;
        if n == 0 {
            break;
        }
        if buf.last() != Some(&b'\n') {
            tracing::warn!(offset, "mailbox.log ends in a torn line; cut off");
            std::fs::OpenOptions::new()
                .write(true)
                .open(path)?
                .set_len(offset)?;
            break;
        }
        let place = Place::Disk {
            offset,
            len: n as u32,
        };
        offset += n as u64;
        lines += 1;
        // A line that does not parse (written by a newer version, or damaged) is skipped.
        let Ok(line) = serde_json::from_slice::<Line>(&buf) else {
            continue;
        };
        match line {
            Line::Put(r) => {
                let _ = table.restore(&r, now, (Sender::Contact, UNCERTIFIED), place);
            }
            Line::Keep(k) => {
                let sender = if k.stranger {
                    Sender::Stranger
                } else {
                    Sender::Contact
                };
                let _ = table.restore(&k.relay, now, (sender, k.origin), place);
            }
            Line::Gone(id) => {
                table.delivered(&id, None);
            }
            Line::Done(d) => {
                table.delivered(&d.id.clone(), Some(d));
            }
            Line::Receipt(at, d) => table.add_receipt(d, at),
            Line::Told(uid) => {
                table.take_receipts(uid);
            }
        }
    }
    Ok((table, lines))
}

/// Appends queued lines, one `fdatasync` per batch, tells the table where each message's line
/// is, then tells the waiting puts; drops expired messages and rewrites the file when it
/// holds four times more lines than live messages. `lines`: what the file holds now.
pub(super) async fn writer(
    path: PathBuf,
    mut rx: mpsc::Receiver<Pending>,
    state: Arc<Mutex<State>>,
    mut appender: Appender,
    mut lines: usize,
    shutdown: tokio_util::sync::CancellationToken,
    fsync: prometheus::Histogram,
) {
    loop {
        let Some(items) = crate::applog::next_batch(&mut rx, &shutdown, Duration::ZERO).await
        else {
            return;
        };
        lines += items.len();
        let mut batch = Vec::new();
        let mut puts = Vec::new();
        let mut waiters: Vec<oneshot::Sender<bool>> = Vec::new();
        for p in items {
            if let Some(id) = p.put {
                puts.push((id, batch.len() as u64, p.line.len() as u32));
            }
            batch.extend_from_slice(&p.line);
            waiters.extend(p.done);
        }
        let base = appender.end;
        let h = fsync.clone();
        let Ok((back, written)) = tokio::task::spawn_blocking(move || {
            let r = appender.append(&batch, &h);
            (appender, r)
        })
        .await
        else {
            return; // shutting down
        };
        appender = back;
        let ok = written.is_ok();
        {
            let mut s = state.lock();
            if ok {
                for (id, at, len) in puts {
                    s.table.on_disk(id, base + at, len);
                }
            }
            s.table.expire(now_ms());
        }
        if let Err(e) = written {
            tracing::error!(error = %e, "mailbox file write failed; the batch's messages are refused");
        }
        for w in waiters {
            let _ = w.send(ok);
        }
        let live = state.lock().table.len();
        if ok && crate::applog::worth_compacting(lines, live) {
            let (snap, old) = {
                let s = state.lock();
                (s.table.snapshot(), Arc::clone(&s.reader))
            };
            let path2 = path.clone();
            let Ok(done) = tokio::task::spawn_blocking(move || rewrite(&path2, snap, &old)).await
            else {
                return;
            };
            match done {
                Ok(r) => {
                    lines = r.lines;
                    appender = r.appender;
                    let mut s = state.lock();
                    for (id, offset, len) in r.moved {
                        s.table.on_disk(id, offset, len);
                    }
                    s.reader = Arc::new(r.reader);
                }
                Err(e) => {
                    tracing::error!(error = %e, "mailbox file rewrite failed; kept as it was")
                }
            }
        }
    }
}

/// A rewritten file: where each message's line went, its handles, its line count.
pub(super) struct Rewritten {
    pub(super) moved: Vec<(Id, u64, u32)>,
    pub(super) reader: File,
    pub(super) appender: Appender,
    pub(super) lines: usize,
}

/// Writes the live messages (their lines copied from `old`, or written from memory), the known
/// notices and the kept receipts to a new file, syncs it and renames it over the old one.
pub(super) fn rewrite(path: &Path, snap: Snapshot, old: &File) -> io::Result<Rewritten> {
    let tmp = path.with_extension("log.tmp");
    let mut f = io::BufWriter::new(File::create(&tmp)?);
    let (mut at, mut lines) = (0u64, 0usize);
    let mut moved = Vec::with_capacity(snap.messages.len());
    let mut put = |f: &mut io::BufWriter<File>, line: &[u8]| -> io::Result<u64> {
        f.write_all(line)?;
        let start = at;
        at += line.len() as u64;
        lines += 1;
        Ok(start)
    };
    let mut buf = Vec::new();
    for (id, h) in snap.messages {
        match h.place {
            Place::Pending(r) => {
                let line = Line::Keep(Kept {
                    relay: *r,
                    origin: h.origin,
                    stranger: h.stranger,
                })
                .bytes();
                moved.push((id, put(&mut f, &line)?, line.len() as u32));
            }
            Place::Disk { offset, len } => {
                buf.resize(len as usize, 0);
                old.read_exact_at(&mut buf, offset)?;
                moved.push((id, put(&mut f, &buf)?, len));
            }
        }
    }
    for d in snap.notices {
        put(&mut f, &Line::Done(d).bytes())?;
    }
    for (when, d) in snap.receipts {
        put(&mut f, &Line::Receipt(when, d).bytes())?;
    }
    let f = f.into_inner().map_err(|e| e.into_error())?;
    f.sync_all()?;
    drop(f);
    std::fs::rename(&tmp, path)?;
    Ok(Rewritten {
        moved,
        reader: File::open(path)?,
        appender: Appender::open(path)?,
        lines,
    })
}
