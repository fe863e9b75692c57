//! Append-only logs the server keeps beside its datafiles (`wills.log`, `mailbox.log`): one
//! batch of lines appended and `fdatasync`ed at a time, or the file rewritten whole when it has
//! grown too far past what is live. Done off the async threads.

use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// The next batch of queued items: waits for one (at shutdown, takes one only if queued), lets
/// `gather` pass (not at shutdown) so a burst shares one write and one `fdatasync`, then takes
/// everything queued. `None` once nothing more will come.
pub(crate) async fn next_batch<T>(
    rx: &mut mpsc::Receiver<T>,
    shutdown: &CancellationToken,
    gather: Duration,
) -> Option<Vec<T>> {
    let first = tokio::select! {
        item = rx.recv() => item,
        _ = shutdown.cancelled() => rx.try_recv().ok(),
    }?;
    if !gather.is_zero() && !shutdown.is_cancelled() {
        tokio::time::sleep(gather).await;
    }
    let mut batch = vec![first];
    while let Ok(more) = rx.try_recv() {
        batch.push(more);
    }
    Some(batch)
}

/// Whether a log holding `lines` lines for `live` live entries should be rewritten.
pub(crate) fn worth_compacting(lines: usize, live: usize) -> bool {
    lines > 4 * live + 10_000
}

/// How a batch is written: appended, or the file replaced by `rewrite`.
pub(crate) type Rewrite = Box<dyn FnOnce(&Path) -> io::Result<()> + Send>;

/// Appends `batch` to `path` and `fdatasync`s it, or, when `rewrite` is given, runs it instead
/// (it writes the live lines). `None` when the blocking pool is gone (shutting down).
pub(crate) async fn write_batch(
    path: &Path,
    batch: Vec<u8>,
    rewrite: Option<Rewrite>,
    fsync: &prometheus::Histogram,
) -> Option<io::Result<()>> {
    let fsync = fsync.clone();
    let path: PathBuf = path.to_owned();
    tokio::task::spawn_blocking(move || {
        if let Some(rewrite) = rewrite {
            return rewrite(&path);
        }
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)?;
        f.write_all(&batch)?;
        let t = std::time::Instant::now();
        f.sync_data()?;
        crate::metrics::observe(&fsync, t);
        Ok(())
    })
    .await
    .ok()
}
