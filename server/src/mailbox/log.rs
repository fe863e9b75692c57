//! `mailbox.log`: its lines, the writer that appends them in `fdatasync`ed batches before a
//! put is acknowledged, and the rewrite that compacts it to the live messages.

use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use gossip_common::message::{Delivered, Relay};
use gossip_common::UserId;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};

use super::{now_ms, MailTable};

/// A line to write and who waits for it to be on disk.
pub(super) type Pending = (Vec<u8>, Option<oneshot::Sender<bool>>);

/// One line of `mailbox.log`.
#[derive(Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(super) enum Line {
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
    pub(super) fn bytes(&self) -> Vec<u8> {
        let mut v = serde_json::to_vec(self).expect("plain values serialise");
        v.push(b'\n');
        v
    }
}

/// Appends queued lines, one `fdatasync` per batch, then tells the waiting puts; drops expired
/// messages and rewrites the file when it holds four times more lines than live messages.
pub(super) async fn writer(
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
pub(super) fn rewrite(path: &Path, table: &MailTable) -> io::Result<()> {
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
